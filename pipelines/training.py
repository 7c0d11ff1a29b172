"""Compiling and fitting Keras classifiers, with a resumable checkpoint after every epoch.

Nothing here knows of MLflow: `fit` returns the fitted model and its history, and callers add
the callbacks that record them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import models.ngram  # noqa: F401  (registers custom layers: checkpoints load them)
import models.recurrent  # noqa: F401
from features.errors import disk_space_errors
from features.input_pipelines import TrainingBatches
from pipelines import distribute, interrupts

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """Optimisation: AdamW, warm-up then cosine decay, early stopping; each task sets its own."""

    epochs: int = field(metadata={
        "help": "most epochs to train (the cosine schedule spans the epochs scheduled: see "
                "--example-budget)"})
    example_budget: int = field(metadata={
        "help": "training examples to show the model in all: a run is scheduled for "
                "min(--epochs, ceil(this / training examples)) epochs, so a larger dataset "
                "gets fewer epochs of more steps; 0: always --epochs"})
    batch_size: int = field(metadata={
        "help": "examples per training step on each replica (the global batch is this times "
                "the replicas of --strategy)"})
    learning_rate: float = field(metadata={
        "help": "peak Adam learning rate (cosine decay after warm-up)"})
    weight_decay: float = field(metadata={
        "help": "AdamW decoupled weight decay (0: plain Adam)"})
    label_smoothing: float = field(metadata={
        "help": "label smoothing of the cross-entropy loss"})
    warmup_epochs: int = field(metadata={"help": "epochs of linear learning-rate warm-up"})
    patience: int = field(metadata={
        "help": "early-stopping patience in epochs (validation loss)"})
    seed: int = field(default=0, metadata={
        "help": "random seed for weights, shuffling and dropout"})


def scheduled(config: OptimConfig, train_examples: int) -> OptimConfig:
    """`config` with the epochs a run on `train_examples` training examples is scheduled for:
    `epochs`, or fewer when `example_budget` is shown in fewer (at least one)."""
    if not config.example_budget or not train_examples:
        return config
    epochs = min(config.epochs, max(1, math.ceil(config.example_budget / train_examples)))
    return dataclasses.replace(config, epochs=epochs)


def learning_rate_schedule(config: OptimConfig, steps_per_epoch: int):
    """Linear warm-up to `learning_rate`, then cosine decay over the remaining epochs."""
    warmup = config.warmup_epochs * steps_per_epoch
    total = max(config.epochs * steps_per_epoch - warmup, 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10 if warmup else config.learning_rate,
        decay_steps=total,
        alpha=0.01,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def compile_classifier(model: keras.Model, config: OptimConfig, steps_per_epoch: int) -> None:
    """Adam(W) with the warm-up/cosine schedule, cross-entropy (optionally label-smoothed)."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    optimizer = (keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
                 if config.weight_decay else keras.optimizers.Adam(schedule))
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    # Built here, the optimizer's slots exist before `fit` traces its train step; left to the
    # first trace, they make tf.function trace that step a second time (about 2 s a fit).
    optimizer.build(model.trainable_variables)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to each epoch's logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))


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
    optimizer state), that epoch (0-based), the history so far, early stopping's state and
    whether it had stopped the fit."""

    model: keras.Model
    epoch: int
    history: dict[str, list[float]]
    stopper: StopperState
    stopped: bool = False  # early stopping ended the fit at `epoch`: nothing is left to train


CHECKPOINT_PREFIX = "epoch-"  # <run checkpoint folder>/epoch-0012/: a complete checkpoint
PARTIAL_PREFIX = ".partial-"  # a checkpoint being written; never read


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves a resumable checkpoint into `directory` after every epoch, as one unit.

    Each epoch's checkpoint is a folder, `epoch-NNNN/`: `last.keras` (model and optimizer
    state), `best.npz` (early stopping's best weights) and `state.json` (epoch, history,
    early-stopping counters). It is written as `.partial-NNNN/`, its files flushed to disk,
    and renamed into place in one step; only then are older checkpoints removed. A process
    killed, or a disk filling, part-way leaves the previous epoch's checkpoint whole, never
    epoch-N weights beside epoch-(N-1) state.

    Raises:
        DiskFullError: The disk (or a file-size limit) ran out while writing; the partial
            folder is removed and the previous checkpoint kept.
    """

    def __init__(self, directory: str | Path, stopper: keras.callbacks.EarlyStopping,
                 history: dict[str, list[float]] | None = None):
        super().__init__()
        self.directory = Path(directory)
        self.stopper = stopper
        self.history = {key: list(values) for key, values in (history or {}).items()}
        self._best_saved: tuple[Path, int] | None = None  # (folder, best epoch) of best.npz

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        stopper = self.stopper
        state = {"epoch": epoch, "history": self.history,
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
        if self._best_saved is not None:
            self._best_saved = final, self._best_saved[1]
        for older in self.directory.iterdir():
            if older != final:
                shutil.rmtree(older, ignore_errors=True)

    def write_files(self, folder: Path, state: dict) -> None:
        """The checkpoint's files, each flushed to disk, `best.npz` linked from the previous
        checkpoint when early stopping's best epoch has not changed since it was written."""
        self.model.save(folder / "last.keras")
        stopper = self.stopper
        if stopper.best_weights is not None:
            if self._best_saved is not None and self._best_saved[1] == stopper.best_epoch:
                os.link(self._best_saved[0] / "best.npz", folder / "best.npz")
            else:
                np.savez(folder / "best.npz", *stopper.best_weights)
            self._best_saved = folder, stopper.best_epoch
        (folder / "state.json").write_text(json.dumps(state))
        for path in folder.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint folder in a run's checkpoint folder, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    complete = sorted(path for path in directory.glob(f"{CHECKPOINT_PREFIX}*")
                      if (path / "state.json").is_file())
    return complete[-1] if complete else None


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "state.json").read_text())


def completed_epochs(directory: str | Path) -> int:
    """Epochs the newest checkpoint in a run's checkpoint folder holds (0 when none)."""
    checkpoint = latest_checkpoint(directory)
    return read_state(checkpoint)["epoch"] + 1 if checkpoint is not None else 0


def load_checkpoint(directory: str | Path) -> CheckpointState:
    """Reads the newest checkpoint EpochCheckpoint saved in a run's checkpoint folder.

    Raises:
        FileNotFoundError: No complete checkpoint in `directory`.
    """
    checkpoint = latest_checkpoint(directory)
    if checkpoint is None:
        raise FileNotFoundError(f"no training checkpoint in {directory} ({CHECKPOINT_PREFIX}"
                                "NNNN/ folders are written after each completed epoch)")
    state = read_state(checkpoint)
    best_weights = None
    if (checkpoint / "best.npz").is_file():
        with np.load(checkpoint / "best.npz") as saved:
            best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    stopper = state["stopper"]
    return CheckpointState(keras.saving.load_model(checkpoint / "last.keras"), state["epoch"],
                           state["history"],
                           StopperState(stopper["wait"], stopper["best"], stopper["best_epoch"],
                                        best_weights), state.get("stopped", False))


def fit_classifier(
    model: keras.Model,
    train: tf.data.Dataset,
    validation: tf.data.Dataset,
    config: OptimConfig,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: CheckpointState | None = None,
) -> dict[str, list[float]]:
    """Fits with early stopping on validation loss, restoring the best weights.

    Args:
        model: The compiled model (for a resumed fit, `resume.model`).
        train: Training batches.
        validation: Validation batches.
        config: Epochs and patience.
        callbacks: More Keras callbacks, called after early stopping.
        verbose: Keras verbosity; default a progress bar on a terminal, one line per epoch
            otherwise.
        checkpoint_dir: Save a resumable checkpoint here after every epoch (EpochCheckpoint).
        resume: An interrupted fit to continue from the epoch after its last one.

    Returns:
        The history per epoch, a resumed fit's earlier epochs included.
    """
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    stopper = ResumableEarlyStopping(monitor="val_loss", patience=config.patience,
                                     restore_best_weights=True,
                                     state=resume.stopper if resume else None)
    earlier = resume.history if resume else {}
    extra = [EpochCheckpoint(checkpoint_dir, stopper, earlier)] if checkpoint_dir else []
    with interrupts.deferred():  # a signal stops training at a batch end
        history = model.fit(
            train,
            validation_data=validation,
            epochs=config.epochs,
            # a fit that early stopping had ended trains no more (and restores the best weights)
            initial_epoch=(config.epochs if resume.stopped else resume.epoch + 1) if resume
            else 0,
            shuffle=False,  # the tf.data pipeline reshuffles each epoch
            callbacks=[interrupts.InterruptCallback(), LearningRateLogger(), stopper, *extra,
                       *(callbacks or [])],
            verbose=verbose,
        )
    return {key: list(earlier.get(key, [])) + list(history.history.get(key, []))
            for key in {**earlier, **history.history}}


@dataclass
class Fitted:
    """A fitted model and how its fit went.

    Attributes:
        model: The fitted model, with early stopping's best weights; outside any strategy
            after a multi-worker fit (`distribute.standalone`).
        history: Per-epoch logs (loss, accuracy, val_*, learning_rate), a resumed fit's earlier
            epochs included.
        seconds: Wall time of this process's fit.
        resumed_epochs: Epochs a resumed fit continued from (0 for a new fit).
    """

    model: keras.Model
    history: dict[str, list[float]]
    seconds: float
    resumed_epochs: int = 0

    @property
    def best_epoch(self) -> int:
        """The epoch (0-based) whose weights early stopping kept: the lowest validation loss."""
        return int(np.argmin(self.history["val_loss"]))

    def metrics(self, train_examples: int) -> dict[str, float]:
        """What the fit measured: its time, epochs, throughput and the kept model's score."""
        epochs = len(self.history["loss"])
        return {
            "train_seconds": self.seconds,
            "epochs_trained": epochs,
            # epochs of this process: a resumed run trained the others earlier
            "train_samples_per_second": train_examples * (epochs - self.resumed_epochs)
            / self.seconds,
            # not "val_accuracy": that name holds the per-epoch curve
            "model_val_accuracy": self.history["val_accuracy"][self.best_epoch],
            "best_epoch": self.best_epoch + 1,
        }


def fit(build: Callable[[], keras.Model], batches: TrainingBatches, config: OptimConfig, *,
        strategy: str, checkpoint_dir: str | Path | None = None, resuming: bool = False,
        callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int | None = None
        ) -> Fitted:
    """Builds (inside the strategy's scope), compiles and fits a classifier, or continues the
    checkpoint in `checkpoint_dir`.

    Args:
        build: Makes the uncompiled Keras classifier.
        batches: Training and validation batches, and the steps of an epoch.
        config: Optimiser, schedule, epochs and early stopping.
        strategy: The `--strategy` to train under (`distribute.strategy_for`).
        checkpoint_dir: Save a resumable checkpoint here after every epoch (None: none).
        resuming: Continue the checkpoint in `checkpoint_dir` (the model, compiled with its
            optimizer state, from the epoch after its last) instead of building a new model.
        callbacks: More Keras callbacks, called after early stopping and the checkpoint.
        verbose: Keras verbosity (see `fit_classifier`).

    Raises:
        FileNotFoundError: `resuming` without a complete checkpoint.
        WorkerLost: A multi-worker fit lost a worker.
    """
    with distribute.strategy_for(strategy).scope():
        state = load_checkpoint(checkpoint_dir) if resuming else None
        if state is not None:
            model = state.model  # compiled, with the optimizer's state
            log.info("resuming from %s after epoch %d", checkpoint_dir, state.epoch + 1)
        else:
            model = build()
            compile_classifier(model, config, batches.steps_per_epoch)
    started = time.perf_counter()
    with distribute.reporting_lost_workers(strategy):
        history = fit_classifier(model, batches.train, batches.validation, config,
                                 list(callbacks), verbose, checkpoint_dir=checkpoint_dir,
                                 resume=state)
    seconds = time.perf_counter() - started
    return Fitted(distribute.standalone(model, strategy), history, seconds,
                  state.epoch + 1 if state else 0)
