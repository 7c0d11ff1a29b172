"""The benchmark suite: every performance figure beside a reference measured in the same run.

Usage:
    python -m benchmarks [--quick] [--only SECTION[,SECTION...]] [--json PATH]
                         [--data-dir ../shared/data] [--store-dir mlruns] [--work-dir DIR]

Sections (in order): mfcc, cache, speech-training, sentiment-training, tracking, serving,
streaming, noise and tflite (they score the store's champion: the first of them trains a
default speech model into it when it has none),
memory, end-to-end, speech-accuracy, sentiment-accuracy (the accuracy sections train the default
pipelines over three seeds, about 50 minutes in all). Opt-in, run only when named in
`--only`: full-scale (a v0.02-sized generated folder and a TFDS dataset of that size, the
default speech pipeline for one epoch on each; about 25 minutes on two cores, 22 GB of disk,
and 9 GB of memory while the TFDS copy is written). Timings
are medians of repeated runs after a warm-up, except where a figure is one long run
(training, end to end), which says so.
`--quick` runs each section on a small slice of the data in a few minutes, to check that the
suite works; its figures are not the ones to report. Tests never assert times: this suite is
how figures are obtained. A section that fails is reported and the next one runs (a problem
with the data, the store or the options, which every section would meet, ends the suite).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from features.errors import PipelineError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class Figure:
    """One line of the table: a measured figure, its reference from the same run, the goal."""

    section: str
    name: str
    value: float
    unit: str
    reference: str = ""
    reference_value: float | None = None
    higher_is_better: bool = True
    goal: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.reference_value or self.value is None:
            return None
        return (self.value / self.reference_value if self.higher_is_better
                else self.reference_value / self.value)


@dataclass
class Options:
    data_dir: Path
    quick: bool
    work_dir: Path
    store_dir: Path | None = None  # MLflow store the sections log to and find the champion in

    def __post_init__(self):
        if self.store_dir is None:
            self.store_dir = self.work_dir / "mlruns"


@dataclass
class Child:
    """A finished child process (one that exited 0): combined output, own peak RSS, wall
    time."""

    output: str
    peak_rss_gb: float
    seconds: float

    def printed(self, label: str) -> float:
        """The last figure the child printed after `label` at the start of a line (a
        pipeline's summary: `test accuracy  0.9012`)."""
        found = re.findall(rf"^\s*{label}\s+([0-9.]+)", self.output, re.MULTILINE)
        if not found:
            raise RuntimeError(f"no '{label}' in the run's output:\n{self.output[-2000:]}")
        return float(found[-1])


def run_child(target: list[str], log: Path) -> Child:
    """Runs `python -m MODULE ARGS...` (target = [MODULE, *ARGS], or ["-c", CODE]) with its
    output in the file `log`, through benchmarks.peak, which records the child's own peak
    resident memory; raises if it fails."""
    peak_file = log.with_suffix(".peak")
    command = [sys.executable, "-m", "benchmarks.peak", str(peak_file), *target]
    started = time.perf_counter()
    with log.open("w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False,
                                cwd=Path(__file__).resolve().parents[1])
    seconds = time.perf_counter() - started
    output = log.read_text()
    if result.returncode:
        raise RuntimeError(f"python -m {' '.join(target)} exited with {result.returncode}:\n"
                           f"{output[-3000:]}")
    return Child(output, int(peak_file.read_text()) / 2**20, seconds)


def median_seconds(work: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


OPT_IN = ("full-scale",)  # sections run only when `--only` names them
# each section, in the order they run: its module in benchmarks/ and function (imported on use:
# the section modules import this one, and TensorFlow)
SECTIONS = {
    "mfcc": "features.mfcc_stage",
    "cache": "features.cached_run",
    "speech-training": "training.speech_training",
    "sentiment-training": "training.sentiment_training",
    "tracking": "tracking_overhead.tracking_overhead",
    "serving": "serving.served_inference",
    "streaming": "streaming.streaming",
    "noise": "noise.noise_robustness",
    "tflite": "tflite_export.tflite_export",
    "memory": "memory.bounded_memory",
    "end-to-end": "end_to_end.end_to_end",
    "speech-accuracy": "accuracy.speech_accuracy",
    "sentiment-accuracy": "accuracy.sentiment_accuracy",
    "full-scale": "full_scale.full_scale",
}


def section(name: str) -> Callable[[Options], list[Figure]]:
    """The function that runs section `name` (see SECTIONS)."""
    module, function = SECTIONS[name].rsplit(".", 1)
    return getattr(importlib.import_module(f"benchmarks.{module}"), function)


def format_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"
    return f"{text} {unit}".strip()


def format_ratio(ratio: float | None) -> str:
    """A ratio cut (not rounded) to two decimals, so that one just under its goal (0.7485
    against >= 0.75) never prints as the goal itself."""
    if ratio is None:
        return ""
    return f"{math.floor(ratio * 100 + 1e-9) / 100:.2f}x"


def print_table(figures: list[Figure], out=sys.stdout) -> None:
    rows = [("figure", "project", "reference", "ratio", "goal")]
    for figure in figures:
        reference = (f"{figure.reference}: {format_value(figure.reference_value, figure.unit)}"
                     if figure.reference else "")
        ratio = format_ratio(figure.ratio)
        goal = figure.goal + ("" if figure.met is None else (" met" if figure.met
                                                              else " MISSED"))
        rows.append((f"[{figure.section}] {figure.name}", format_value(figure.value,
                     figure.unit), reference, ratio, goal))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for number, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)),
              file=out)
        if number == 0:
            print("  ".join("-" * width for width in widths), file=out)
    for figure in figures:
        if figure.note:
            print(f"[{figure.section}] {figure.name}: {figure.note}", file=out)


@contextlib.contextmanager
def work_folder(work_dir: Path | None) -> Iterator[Path]:
    """The suite's scratch folder: a new `run-<time>-<suffix>` folder in the folder
    `work_dir`, kept, or a temporary folder, removed at the end."""
    if work_dir is None:
        with tempfile.TemporaryDirectory() as folder:
            yield Path(folder)
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"),
                                   dir=work_dir.resolve()))
    print(f"-- stores, caches and logs in {folder}", file=sys.stderr, flush=True)
    yield folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED,
                        help="folder holding speech_commands/ and aclImdb/")
    parser.add_argument("--quick", action="store_true", help="a short version of every section")
    parser.add_argument("--only", help="comma-separated sections to run: "
                        f"{', '.join(SECTIONS)}; {', '.join(OPT_IN)} runs only when named")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--work-dir", type=Path,
                        help="folder in which a run-<time> folder keeps each section's stores, "
                             "caches and child logs (default: a temporary folder, removed)")
    parser.add_argument("--store-dir", type=Path,
                        help="MLflow store the accuracy sections log to and whose champion "
                             "streaming, noise and tflite score, e.g. the project's mlruns "
                             "(default: one in the scratch folder, shared by the sections)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported, by the sections
    chosen = ([name for name in SECTIONS if name not in OPT_IN] if args.only is None else
              list(dict.fromkeys(name.strip() for name in args.only.split(",") if name.strip())))
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown or not chosen:
        parser.error(f"{'unknown section(s) ' + ', '.join(unknown) if unknown else 'no section'}"
                     f" in --only; choose from {', '.join(SECTIONS)}")
    for name in ("speech_commands", "aclImdb"):
        if not (args.data_dir / name).is_dir():
            parser.error(f"{args.data_dir / name} not found: --data-dir must hold "
                         "speech_commands/ and aclImdb/ (see ../shared/data/README)")
    from pipelines.cli import require_writable_folder  # TensorFlow and MLflow: after --help
    for option, folder in (("--work-dir", args.work_dir), ("--store-dir", args.store_dir)):
        if folder is not None:  # checked now, not after the sections before the first to use it
            require_writable_folder(parser, folder, option)
    if args.json:
        if args.json.exists() or args.json.is_symlink():
            parser.error(f"--json {args.json} exists: it is not replaced; name a new file")
        if not args.json.parent.is_dir():
            parser.error(f"--json {args.json}: there is no folder {args.json.parent}")
        require_writable_folder(parser, args.json.parent, "--json's folder")
    logging.basicConfig(level=logging.WARNING)
    with work_folder(args.work_dir) as folder:
        store = args.store_dir.resolve() if args.store_dir else folder / "mlruns"
        figures: list[Figure] = []
        started, status = time.perf_counter(), 0
        for name in chosen:
            began = time.perf_counter()
            print(f"-- {name}", file=sys.stderr, flush=True)
            section_dir = folder / name
            section_dir.mkdir()
            try:
                new = section(name)(Options(args.data_dir.resolve(), args.quick, section_dir,
                                              store))
            except PipelineError as error:  # the data, store or options, named; not a bug
                print(f"error: {name}: {error}", file=sys.stderr)
                status = 2  # the sections after it are not run; those before are reported
                break
            except Exception:  # a failed child run or a bug: the other sections still run
                print(f"error: {name} failed:\n{traceback.format_exc()}", file=sys.stderr)
                status = 1
                continue
            figures += new
            print_table(new, sys.stderr)
            print(f"-- {name} took {time.perf_counter() - began:.0f} s", file=sys.stderr,
                  flush=True)
    print(f"\nbenchmarks ({'quick' if args.quick else 'full'}; {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}; "
          f"{time.perf_counter() - started:.0f} s)")
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(
            {"quick": args.quick, "cores": os.cpu_count(),
             "figures": [asdict(f) | {"ratio": f.ratio} for f in figures]}, indent=2))
    return status
