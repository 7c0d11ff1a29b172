"""Resumable training: early stopping whose state carries over, and a checkpoint after every
epoch written as one unit, read back to continue an interrupted fit exactly."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

import models.ngram  # noqa: F401  (registers custom layers: checkpoints load them)
import models.recurrent  # noqa: F401
from features.errors import disk_space_errors
from pipelines import weight_averaging
from pipelines.errors import SetupError
from pipelines.weight_averaging import AverageState, WeightAverage

log = logging.getLogger(__name__)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping whose state (best value, epochs waited, best weights) can be carried
    over from an interrupted fit, so a resumed run stops exactly where it would have."""

    def __init__(self, *args, state: StopperState | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resumed = state

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resumed is not None:
            self.wait = self.resumed.wait
            self.best = self.resumed.best
            self.best_epoch = self.resumed.best_epoch
            self.best_weights = self.resumed.best_weights


@dataclass
class StopperState:
    """What early stopping knows after an epoch."""

    wait: int
    best: float | None
    best_epoch: int
    best_weights: list[np.ndarray] | None


@dataclass
class CheckpointState:
    """An interrupted fit: the model after its last completed epoch (compiled, with its
    optimizer state), that epoch (0-based), the history so far, early stopping's state,
    whether it had stopped the fit and the weights averaged so far."""

    model: keras.Model
    epoch: int
    history: dict[str, list[float]]
    stopper: StopperState
    stopped: bool = False  # early stopping ended the fit at `epoch`: nothing is left to train
    average: AverageState | None = None  # None: the fit was not averaging weights
    seconds: float = 0.0  # training time up to the end of `epoch`, over every process


CHECKPOINT_PREFIX = "epoch-"  # <run checkpoint folder>/epoch-0012/: a complete checkpoint
PARTIAL_PREFIX = ".partial-"  # a checkpoint being written; never read


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves a resumable checkpoint into `directory` after every epoch, as one unit.

    Each epoch's checkpoint is a folder, `epoch-NNNN/`: `last.keras` (model and optimizer
    state), `best.npz` (early stopping's best weights), `average.npz` (the sums of
    `WeightAverage`, once it has any) and `state.json` (epoch, history, early-stopping and
    averaging counters, the training time so far: `seconds` of the fits before this one, a
    resumed fit's, plus this fit's). It is written as `.partial-NNNN/`, its files flushed to disk,
    and renamed into place in one step, the rename flushed too; only then are older
    checkpoints removed. A process killed, or a disk filling, part-way leaves the previous
    epoch's checkpoint whole, never epoch-N weights beside epoch-(N-1) state.

    Raises:
        DiskFullError: The disk (or a file-size limit) ran out while writing; the partial
            folder is removed and the previous checkpoint kept.
    """

    def __init__(self, directory: str | Path, stopper: keras.callbacks.EarlyStopping,
                 history: dict[str, list[float]] | None = None,
                 average: WeightAverage | None = None, seconds: float = 0.0):
        super().__init__()
        self.earlier_seconds = seconds
        self.started = time.perf_counter()
        self.directory = Path(directory)
        self.stopper = stopper
        self.average = average
        self.history = {key: list(values) for key, values in (history or {}).items()}
        self._best_saved: tuple[Path, int] | None = None  # (folder, best epoch) of best.npz

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        stopper = self.stopper
        state = {"epoch": epoch, "history": self.history,
                 "seconds": self.earlier_seconds + time.perf_counter() - self.started,
                 "stopped": bool(self.model.stop_training and stopper.wait >= stopper.patience),
                 "stopper": {"wait": stopper.wait, "best_epoch": stopper.best_epoch,
                             "best": None if stopper.best is None else float(stopper.best)}}
        partial = self.directory / f"{PARTIAL_PREFIX}{epoch:04d}"
        final = self.directory / f"{CHECKPOINT_PREFIX}{epoch:04d}"
        with disk_space_errors(self.directory, partial):
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
            self.write_files(partial, state)
            os.rename(partial, final)
            fsync_directory(self.directory)
        if stopper.best_weights is not None:
            self._best_saved = final, stopper.best_epoch
        for older in self.directory.iterdir():
            if older == final:
                continue
            try:
                shutil.rmtree(older)
            except OSError as error:  # one left behind costs disk only: resuming reads the latest
                log.warning("cannot remove the older checkpoint %s (%s)", older, error)

    def write_files(self, folder: Path, state: dict) -> None:
        """The checkpoint's files, each flushed to disk, `best.npz` linked from the previous
        checkpoint when early stopping's best epoch has not changed since it was written."""
        self.model.save(folder / "last.keras")
        stopper = self.stopper
        unchanged = self._best_saved is not None and self._best_saved[1] == stopper.best_epoch
        if stopper.best_weights is not None and not (
                unchanged and hard_linked(self._best_saved[0] / "best.npz", folder / "best.npz")):
            np.savez(folder / "best.npz", *stopper.best_weights)
        if self.average is not None:
            state = {**state, "average": self.average.save(folder)}
        (folder / "state.json").write_text(json.dumps(state))
        for path in folder.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def hard_linked(source: Path, link: Path) -> bool:
    """Links `link` to `source`; False where the filesystem has no hard links."""
    try:
        os.link(source, link)
    except OSError as error:
        if error.errno in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.EMLINK):
            return False
        raise
    return True


def fsync_directory(directory: Path) -> None:
    """Flushes a folder's entries (a rename into it) to disk."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def run_folder(checkpoint_dir: str | Path, run_id: str) -> Path:
    """Where a run's per-epoch checkpoints live: `<checkpoint_dir>/<run id>` (absolute, so
    `--resume` finds it from any working directory)."""
    return Path(checkpoint_dir).resolve() / run_id


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint folder in a run's checkpoint folder, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    complete = sorted((path for path in directory.glob(f"{CHECKPOINT_PREFIX}*")
                       if (path / "state.json").is_file()),
                      key=lambda path: (len(path.name), path.name))  # epoch-10000 after 9999
    return complete[-1] if complete else None


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "state.json").read_text())


def completed_epochs(directory: str | Path) -> int:
    """Epochs the newest checkpoint in a run's checkpoint folder holds (0 when none)."""
    checkpoint = latest_checkpoint(directory)
    return read_state(checkpoint)["epoch"] + 1 if checkpoint is not None else 0


def damage(checkpoint: Path) -> str | None:
    """What makes a complete checkpoint folder unreadable, or None: a `state.json` that is not
    the saved state, a missing `last.keras` (or `best.npz`, where the state has a best epoch,
    or `average.npz`, where it counts averaged epochs), or an archive (.keras, .npz) that fails
    its CRC check."""
    try:
        state = read_state(checkpoint)
        stopper, average = ((state.get("stopper") or {}, state.get("average") or {})
                            if isinstance(state, dict) else (None, None))
        if not (isinstance(stopper, dict) and isinstance(average, dict)):
            return "state.json does not hold a checkpoint's state"
        needed = ["last.keras"]
        if stopper.get("best") is not None:  # early stopping's best
            needed.append("best.npz")
        if average.get("count"):
            needed.append(weight_averaging.AVERAGE_FILE)
        for name in dict.fromkeys([*needed, *(path.name for path in checkpoint.glob("*.npz"))]):
            with zipfile.ZipFile(checkpoint / name) as archive:
                broken = archive.testzip()
            if broken is not None:
                return f"{name}: {broken} fails its CRC check"
    except (OSError, ValueError, zipfile.BadZipFile) as error:  # JSON errors are ValueErrors
        return f"{type(error).__name__}: {error}"
    return None


def load_checkpoint(directory: str | Path) -> CheckpointState:
    """Reads the newest checkpoint EpochCheckpoint saved in a run's checkpoint folder.

    Raises:
        FileNotFoundError: No complete checkpoint in `directory`.
        SetupError: The checkpoint cannot be read back (a damaged file, or one saved by a
            version of Keras that cannot load it).
    """
    checkpoint = latest_checkpoint(directory)
    if checkpoint is None:
        raise FileNotFoundError(f"no training checkpoint in {directory} ({CHECKPOINT_PREFIX}"
                                "NNNN/ folders are written after each completed epoch)")
    try:  # what is read from disk; what it is made into is not a damaged checkpoint's error
        state = read_state(checkpoint)
        stopper = {name: state["stopper"][name] for name in ("wait", "best", "best_epoch")}
        epoch, history = state["epoch"], state["history"]
        best = checkpoint / "best.npz"
        best_weights = weight_averaging.read_arrays(best) if best.is_file() else None
        model = keras.saving.load_model(checkpoint / "last.keras")
        average = weight_averaging.load_state(checkpoint, state.get("average"))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise SetupError(f"the checkpoint {checkpoint} cannot be loaded ({type(error).__name__}:"
                         f" {error}); start a new run") from error
    return CheckpointState(model, epoch, history,
                           StopperState(**stopper, best_weights=best_weights),
                           state.get("stopped", False), average, state.get("seconds", 0.0))
