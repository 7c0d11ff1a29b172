"""Helpers for tests that start real processes on loopback: a port to give them, and waiting
for what they print or serve."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def free_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check: Callable[[], bool], what: str, process: subprocess.Popen, log: Path,
               timeout: float = 120, interval: float = 0.5) -> None:
    """Polls `check` until it holds; fails with the end of `log` when `process` ends first or
    `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:g} s or at the process's "
                        f"exit (status {process.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(interval)


def fresh_environment(requirements: Path, folder: Path) -> Path:
    """A new virtual environment in `folder` with only the packages `requirements` lists
    (installed with uv, from its cache when it has them); returns its Python."""
    subprocess.run([sys.executable, "-m", "uv", "venv", "-q", "--python", sys.executable,
                    str(folder)], check=True)
    python = folder / "bin" / "python"
    subprocess.run([sys.executable, "-m", "uv", "pip", "install", "-q", "--python", str(python),
                    "-r", str(requirements)], check=True)
    return python


def interrupt_when(ready: Callable[[], bool], settle: float = 0.0, timeout: float = 120,
                   interval: float = 0.05) -> threading.Thread:
    """Starts a thread that raises SIGINT in this process (as Ctrl-C would) once `ready()`
    holds, `settle` seconds later; it gives up after `timeout` seconds. Join it after the
    interrupted call."""
    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                time.sleep(settle)
                signal.raise_signal(signal.SIGINT)
                return
            time.sleep(interval)

    watcher = threading.Thread(target=watch)
    watcher.start()
    return watcher
