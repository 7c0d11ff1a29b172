"""Runs a Python module (or `-c CODE`) and writes its peak resident memory to a file.

    python -m benchmarks.peak OUT_FILE MODULE [ARGS...]
    python -m benchmarks.peak OUT_FILE -c CODE

The figure is VmHWM from /proc/self/status: the high-water mark of this process's own
address space. getrusage's ru_maxrss would not do: the kernel folds into it the peak of the
address space the process had before exec, which for a child of a large Python process
(spawned with vfork) is the parent's.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def peak_rss_kb(pid: int | str = "self") -> int | None:
    """VmHWM of process `pid` (this one by default) in KiB; None once that process has
    exited (its status is gone, or has no memory lines while it waits to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    if pid == "self":
        raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")
    return None


def main() -> None:
    out, target, *rest = sys.argv[1:]
    try:
        if target == "-c":
            sys.argv = ["-c"]
            exec(compile(rest[0], "<-c>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = [target, *rest]
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    finally:
        Path(out).write_text(str(peak_rss_kb()))


if __name__ == "__main__":
    main()
