"""Compiling and fitting Keras classifiers, with a resumable checkpoint after every epoch
(`checkpoints`) and the weights kept at the end: early stopping's or an average
(`weight_averaging`).

Nothing here knows of MLflow: `fit` returns the fitted model and its history, and callers add
the callbacks that record them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import tensorflow as tf

from features.errors import (
    ConfigError,
    require_at_least,
    require_fraction,
    require_positive,
    require_seed,
)
from features.input_pipelines import TrainingBatches
from pipelines import distribute, interrupts, weight_averaging
from pipelines.checkpoints import (
    CheckpointState,
    EpochCheckpoint,
    ResumableEarlyStopping,
    load_checkpoint,
)
from pipelines.errors import DivergedError
from pipelines.weight_averaging import WeightAverage

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """Optimisation: AdamW, warm-up then cosine decay, early stopping, weight averaging; each
    task sets its own."""

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
    warmup_epochs: int = field(metadata={
        "help": "epochs of linear learning-rate warm-up (at most all epochs but the last)"})
    patience: int = field(metadata={
        "help": "early-stopping patience in epochs (validation loss)"})
    average_from: float = field(metadata={
        "help": "keep the mean of the weights of every epoch from this fraction of the "
                "scheduled epochs on (0.5: the second half) instead of those of early "
                "stopping's lowest-validation-loss epoch (still kept when early stopping ends "
                "the fit before that point); 0: no averaging"})
    seed: int = field(default=0, metadata={
        "help": "random seed for weights, shuffling and dropout"})

    def __post_init__(self):
        require_at_least(self, {"epochs": 1, "batch_size": 1, "example_budget": 0,
                                "weight_decay": 0, "warmup_epochs": 0, "patience": 0})
        require_positive(self, ["learning_rate"])
        if self.learning_rate > tf.float32.max:  # the optimizer holds it as a float32
            raise ConfigError(f"learning_rate must be at most {tf.float32.max:.3g} (float32), "
                              f"got {self.learning_rate:g}")
        if self.learning_rate * self.weight_decay >= 1:  # AdamW: weights *= 1 - their product
            raise ConfigError(f"learning_rate x weight_decay must be under 1 (AdamW scales the "
                              f"weights by 1 minus their product each step), got "
                              f"{self.learning_rate:g} x {self.weight_decay:g}")
        require_fraction(self, ["average_from", "label_smoothing"])
        require_seed(self, ["seed"])


def scheduled(config: OptimConfig, train_examples: int) -> OptimConfig:
    """`config` with the epochs a run on `train_examples` training examples is scheduled for:
    `epochs`, or fewer when `example_budget` is shown in fewer (at least one)."""
    if not config.example_budget or not train_examples:
        return config
    epochs = min(config.epochs, max(1, math.ceil(config.example_budget / train_examples)))
    return dataclasses.replace(config, epochs=epochs)


def learning_rate_schedule(config: OptimConfig, steps_per_epoch: int):
    """Linear warm-up to `learning_rate`, then cosine decay over the remaining epochs; a run
    scheduled for no more epochs than `warmup_epochs` warms up for all but its last (none for a
    run of one epoch), so that every run decays."""
    warmup = min(config.warmup_epochs, config.epochs - 1) * steps_per_epoch
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
    average: WeightAverage | None = None,
) -> tuple[dict[str, list[float]], int]:
    """Fits with early stopping on validation loss, restoring the best weights (or, with
    `average`, keeping the average of the epochs it averaged).

    Args:
        model: The compiled model (for a resumed fit, `resume.model`).
        train: Training batches.
        validation: Validation batches.
        config: Epochs and patience.
        callbacks: More Keras callbacks, called after early stopping.
        verbose: Keras verbosity; default a progress bar on a terminal, one line per epoch
            otherwise (on stderr either way).
        checkpoint_dir: Save a resumable checkpoint here after every epoch (EpochCheckpoint).
        resume: An interrupted fit to continue from the epoch after its last one.
        average: Weight averaging, called after early stopping (its sums saved with each
            checkpoint).

    Returns:
        The history per epoch, a resumed fit's earlier epochs included, and early
        stopping's best epoch (0-based; the one whose weights it restores).
    """
    if verbose is None:
        verbose = 1 if sys.stderr.isatty() else 2
    stopper = ResumableEarlyStopping(monitor="val_loss", patience=config.patience,
                                     restore_best_weights=True,
                                     state=resume.stopper if resume else None)
    earlier = resume.history if resume else {}
    # the order matters: WeightAverage runs after early stopping (it averages from the
    # weights early stopping restores at the end) and before EpochCheckpoint (which saves
    # the sums that include the epoch just ended)
    extra = [average] if average else []
    if checkpoint_dir:
        extra.append(EpochCheckpoint(checkpoint_dir, stopper, earlier, average,
                                     resume.seconds if resume else 0.0))
    for callback in callbacks or []:  # those that record epochs get the checkpoint's
        if resume is not None and hasattr(callback, "resumed_from"):
            callback.resumed_from(earlier)
    # a fit that early stopping had ended trains no more (and sets the weights it keeps)
    initial_epoch = 0 if resume is None else (
        config.epochs if resume.stopped else resume.epoch + 1)
    # Keras prints its progress on stdout: it goes to stderr, beside the other progress lines,
    # so that stdout holds the command's results alone
    with contextlib.redirect_stdout(sys.stderr):
        history = interrupts.at_batch_end(  # a signal stops training at a batch end
            model.fit,
            train,
            validation_data=validation,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            shuffle=False,  # the tf.data pipeline reshuffles each epoch
            callbacks=[LearningRateLogger(), stopper, *extra, *(callbacks or [])],
            verbose=verbose,
        )
    return ({key: list(earlier.get(key, [])) + list(history.history.get(key, []))
             for key in {**earlier, **history.history}}, stopper.best_epoch)


@dataclass
class Fitted:
    """A fitted model and how its fit went.

    Attributes:
        model: The fitted model, with the weights the fit keeps (the average of
            `averaged_epochs` epochs, or early stopping's best); outside any strategy after a
            multi-worker fit (`distribute.standalone`).
        history: Per-epoch logs (loss, accuracy, val_*, learning_rate), a resumed fit's earlier
            epochs included.
        seconds: Wall time of the fit: a resumed fit's earlier epochs' time (as its
            checkpoint recorded it) plus this process's.
        averaged_epochs: Epochs whose weights the model averages (0: early stopping's).
        averaged_val_accuracy: The averaged model's validation accuracy.
        best_epoch: Early stopping's best epoch (0-based), whose weights the model has when
            it averages none.
    """

    model: keras.Model
    history: dict[str, list[float]]
    seconds: float
    averaged_epochs: int = 0
    averaged_val_accuracy: float | None = None
    best_epoch: int = 0

    def metrics(self, train_examples: int) -> dict[str, float]:
        """What the fit measured: its time, epochs, throughput and the kept model's score."""
        epochs = len(self.history["loss"])
        return {
            "train_seconds": self.seconds,
            "epochs_trained": epochs,
            "train_samples_per_second": train_examples * epochs / self.seconds,
            # not "val_accuracy": that name holds the per-epoch curve
            "model_val_accuracy": self.averaged_val_accuracy if self.averaged_epochs
            else self.history["val_accuracy"][self.best_epoch],
            "best_epoch": self.best_epoch + 1,
            "averaged_epochs": self.averaged_epochs,
        }


def require_finite_weights(model: keras.Model, history: dict[str, list[float]]) -> None:
    """Raises DivergedError when the fitted model's weights are not all finite (no finite
    epoch to keep), naming the first epoch whose training loss was not finite."""
    if weight_averaging.finite(model.get_weights()):
        return
    losses = history.get("loss", [])
    first = next((n for n, loss in enumerate(losses) if not math.isfinite(loss)), None)
    when = f"the training loss was not finite from epoch {first + 1}" if first is not None \
        else "no epoch ended with finite weights"
    raise DivergedError(f"the fit diverged: its weights are not finite at its end ({when}, "
                        "and no epoch before it could be kept); lower --learning-rate")


def weight_average(config: OptimConfig, resume: CheckpointState | None) -> WeightAverage | None:
    """The fit's weight averaging (None when `config` has none), continuing a resumed
    checkpoint's sums. A checkpoint written without averaging that has trained past the first
    averaged epoch cannot be averaged as configured (its epochs were not summed): that fit
    keeps early stopping's weights, with a warning."""
    start = weight_averaging.first_averaged_epoch(config.average_from, config.epochs)
    if start is None:
        return None
    if resume is not None and resume.average is None and resume.epoch >= start:
        log.warning("the checkpoint holds no weight average and is past epoch %d, where "
                    "averaging starts: the run keeps early stopping's weights", start + 1)
        return None
    return WeightAverage(start, resume.average if resume else None)


def fit(build: Callable[[], keras.Model], batches: TrainingBatches, config: OptimConfig, *,
        strategy: str, checkpoint_dir: str | Path | None = None, resuming: bool = False,
        callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int | None = None
        ) -> Fitted:
    """Builds (inside the strategy's scope), compiles and fits a classifier, or continues the
    checkpoint in `checkpoint_dir`.

    Args:
        build: Makes the uncompiled Keras classifier.
        batches: Training and validation batches, and the steps of an epoch.
        config: Optimiser, schedule, epochs, early stopping and weight averaging.
        strategy: The `--strategy` to train under (`distribute.strategy_for`).
        checkpoint_dir: Save a resumable checkpoint here after every epoch (None: none).
        resuming: Continue the checkpoint in `checkpoint_dir` (the model, compiled with its
            optimizer state, from the epoch after its last) instead of building a new model.
        callbacks: More Keras callbacks, called after early stopping and the checkpoint.
        verbose: Keras verbosity (see `fit_classifier`).

    Returns:
        The fitted model with the weights it keeps, its history and time, and which epochs
        its weights come from (`Fitted`).

    Raises:
        DivergedError: The fit ends with weights that are not finite (no epoch to keep).
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
    average = weight_average(config, state)
    started = time.perf_counter()
    with distribute.reporting_lost_workers(strategy):
        history, best_epoch = fit_classifier(
            model, batches.train, batches.validation, config, list(callbacks), verbose,
            checkpoint_dir=checkpoint_dir, resume=state, average=average)
        seconds = time.perf_counter() - started + (state.seconds if state else 0.0)
        require_finite_weights(model, history)
        averaged = average.count if average else 0
        accuracy = None  # of the averaged model; early stopping's epoch has it in `history`
        if averaged:
            accuracy = interrupts.at_batch_end(model.evaluate, batches.validation, verbose=0,
                                               return_dict=True)["accuracy"]
    return Fitted(distribute.standalone(model, strategy), history, seconds, averaged, accuracy,
                  best_epoch)
