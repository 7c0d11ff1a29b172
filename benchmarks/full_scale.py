"""The default speech pipeline on a Speech Commands v0.02-sized folder: feature stage, one
epoch, peak resident memory; and the peak memory of `--source tfds` on a TFDS dataset of the
release's size.

    python -m benchmarks.full_scale --work-dir DIR [--data-dir GENERATED] [--clips N]
        [--skip-tfds]

generates the folder with `benchmarks.full_dataset` (reused when `--data-dir` already holds
one), runs `python -m pipelines.speech` on it with its defaults (augmentation on) in a child
process, stops it with SIGTERM once its first epoch has ended (the run ends KILLED; its
checkpoint is deleted), then does the same with `--source tfds` on a TFDS `speech_commands`
written from the folder (`benchmarks.tfds_dataset`), and prints one JSON line of figures. In
the suite (`python -m benchmarks --only full-scale`), FULL_DATASET_DIR names a generated
folder to reuse; a given folder's TFDS copy is kept beside it (`<folder>_tfds`) and reused.
The peak is the child's own VmHWM (read from /proc while it runs, since an interrupted run
exits without the interpreter's teardown).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import full_dataset, tfds_dataset
from benchmarks.peak import peak_rss_kb
from benchmarks.suite import Figure, Options

REPO = Path(__file__).resolve().parents[1]
EPOCH_START = re.compile(r"^Epoch (\d+)/\d+")
EPOCH_END = re.compile(r"^\d+/\d+ - \d+s ")  # Keras' one line per epoch (verbose 2)
POLL_SECONDS = 0.2
TIMELINE_SECONDS = 10  # the peak so far is noted this often
GOAL_GB = 4.0
STOPPED = 143  # the exit status of a run ended by SIGTERM (pipelines.interrupts)


def watch(command: list[str], log: Path, *, stop_after_epochs: int | None = None,
          env: dict | None = None) -> dict:
    """Runs `command`, its output to `log`, polling its peak memory; with `stop_after_epochs`,
    sends SIGTERM when Keras reports that many epochs ended. Returns the exit status, the peak
    (GB), when the first epoch started and how long each epoch took (s)."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, cwd=REPO, env=env, bufsize=1)
    lines: queue.Queue[tuple[float, str]] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put((time.perf_counter() - started, line))
                                              for line in child.stdout], daemon=True)
    reader.start()
    peak, epochs, first_epoch_at, epoch_began, timeline = 0, [], None, None, []
    with log.open("w") as out:
        while child.poll() is None or reader.is_alive() or not lines.empty():
            peak = max(peak, peak_rss_kb(child.pid) or 0)
            if time.perf_counter() - started >= TIMELINE_SECONDS * len(timeline):
                timeline.append((round(time.perf_counter() - started), round(peak / 2**20, 2)))
            try:
                at, line = lines.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            out.write(line)
            if EPOCH_START.match(line):
                epoch_began = at
                first_epoch_at = first_epoch_at or at
            elif EPOCH_END.match(line) and epoch_began is not None:
                epochs.append(at - epoch_began)
                if stop_after_epochs and len(epochs) == stop_after_epochs:
                    child.send_signal(signal.SIGTERM)
    return {"status": child.wait(), "peak_rss_gb": peak / 2**20,
            "first_epoch_at_s": first_epoch_at, "epoch_seconds": epochs,
            "seconds": time.perf_counter() - started, "peak_timeline_gb": timeline}


def folder_size_gb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**30


def logged_metrics(store_dir: Path) -> dict:
    """The metrics and status of the one run in an MLflow store."""
    from mlflow.tracking import MlflowClient  # on use: only the summary needs MLflow

    from pipelines.tracking.stores import DB_NAME, local_store_uri

    client = MlflowClient(tracking_uri=local_store_uri(store_dir)
                          if (store_dir / DB_NAME).exists() else str(store_dir))
    runs = [run for experiment in client.search_experiments()
            for run in client.search_runs([experiment.experiment_id])]
    if len(runs) != 1:
        return {}
    return dict(runs[0].data.metrics) | {"run_status": runs[0].info.status}


def speech_full_scale(source: list[str], work_dir: Path, epochs: int = 1) -> dict:
    """One default speech run on `source` (its data options: `--data-dir DIR`, or `--source
    tfds --tfds-data-dir DIR`), stopped after `epochs` epochs; its figures."""
    work_dir.mkdir(parents=True, exist_ok=True)
    store, checkpoints, cache = (work_dir / name for name in ("mlruns", "checkpoints", "cache"))
    command = [sys.executable, "-m", "pipelines.speech", *source,
               "--store-dir", str(store), "--checkpoint-dir", str(checkpoints),
               "--cache-dir", str(cache), "--no-register"]
    env = os.environ | {"TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    log = work_dir / "speech.log"
    figures = watch(command, log, stop_after_epochs=epochs, env=env)
    if figures["status"] not in (0, STOPPED):
        raise RuntimeError(f"{' '.join(command)} exited with {figures['status']}:\n"
                           f"{log.read_text()[-3000:]}")
    metrics = logged_metrics(store)
    if checkpoints.exists():  # the KILLED run's checkpoint (a finished run removed its own)
        shutil.rmtree(checkpoints)
    train = metrics.get("examples_train")
    return figures | {
        "cache_gb": folder_size_gb(cache) if cache.exists() else None,
        "feature_seconds": metrics.get("feature_seconds"),
        "examples": {split: metrics.get(f"examples_{split}")
                     for split in ("train", "validation", "test")},
        "feature_clips_per_second": (sum(metrics[f"examples_{s}"] for s in ("train",
                                     "validation", "test")) / metrics["feature_seconds"]
                                     if "feature_seconds" in metrics else None),
        "train_samples_per_second": (train / figures["epoch_seconds"][0]
                                     if train and figures["epoch_seconds"] else None),
        "run_status": metrics.get("run_status"),
        "val_accuracy": metrics.get("val_accuracy"),
    }


def run(work_dir: Path, data_dir: Path | None, clips: int, tfds: bool) -> dict:
    """Generates (or reuses) the folder, then measures the folder run and the TFDS run."""
    tfds_dir = data_dir.with_name(f"{data_dir.name}_tfds") if data_dir else work_dir / "tfds"
    data_dir = data_dir or work_dir / "speech_commands_full"
    started = time.perf_counter()
    plan = full_dataset.generate(data_dir, clips)
    figures = {"dataset": full_dataset.summary(plan),
               "generate_seconds": time.perf_counter() - started,
               "dataset_gb": folder_size_gb(data_dir)}
    figures["speech"] = speech_full_scale(["--data-dir", str(data_dir)], work_dir / "speech")
    if tfds:
        figures["tfds_examples"] = tfds_dataset.write(data_dir, tfds_dir)
        figures["tfds"] = speech_full_scale(["--source", "tfds", "--tfds-data-dir",
                                             str(tfds_dir)], work_dir / "speech_tfds")
    return figures


def full_scale(options: Options) -> list[Figure]:
    """The suite's `full-scale` section (opt-in: `--only full-scale`): see the module."""
    given = os.environ.get("FULL_DATASET_DIR")
    clips = 5_000 if options.quick else full_dataset.V002_CLIPS
    figures = run(options.work_dir, Path(given) if given else None, clips, tfds=True)
    speech, tfds = figures["speech"], figures["tfds"]
    tfds_clips = sum(figures["tfds_examples"].values())
    note = (f"{figures['dataset']['clips']:,} generated clips, "
            f"{figures['dataset']['speakers']:,} speakers; run exit {speech['status']} "
            f"({speech['run_status']}); feature cache {speech['cache_gb']:.2f} GB on disk")
    return [
        Figure("full-scale", "peak RSS, default speech run: features + 1 epoch",
               speech["peak_rss_gb"], "GB", higher_is_better=False, goal=f"<= {GOAL_GB:g} GB",
               met=speech["peak_rss_gb"] <= GOAL_GB, note=note),
        Figure("full-scale", "feature stage", speech["feature_clips_per_second"], "clips/s"),
        Figure("full-scale", "first epoch (augmented)", speech["epoch_seconds"][0]
               if speech["epoch_seconds"] else None, "s", higher_is_better=False),
        Figure("full-scale", "feature cache on disk", speech["cache_gb"], "GB",
               higher_is_better=False),
        Figure("full-scale", f"peak RSS, --source tfds ({tfds_clips:,} clips): features + "
               "1 epoch", tfds["peak_rss_gb"], "GB", higher_is_better=False,
               goal=f"<= {GOAL_GB:g} GB", met=tfds["peak_rss_gb"] <= GOAL_GB),
        Figure("full-scale", "--source tfds feature stage", tfds["feature_clips_per_second"],
               "clips/s"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.full_scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path,
                        help="generated folder to (re)use, its TFDS copy beside it in "
                             "<folder>_tfds (default: both in --work-dir)")
    parser.add_argument("--clips", type=int, default=full_dataset.V002_CLIPS)
    parser.add_argument("--skip-tfds", action="store_true",
                        help="measure the folder run only")
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(args.work_dir, args.data_dir, args.clips, not args.skip_tfds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
