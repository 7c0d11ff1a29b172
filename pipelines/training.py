"""Compiling, fitting and evaluating Keras classifiers; shared by every pipeline."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

from pipelines import interrupts
from pipelines.config import TrainingConfig

IN_MEMORY_BYTES = 512 * 2**20  # larger memory-mapped inputs are streamed from their file


class RowReader:
    """Reads rows of a memory-mapped array with positioned file reads.

    The rows pass through the OS page cache instead of the process's address space: every page
    of a memory map that an epoch touches stays counted in the process's resident memory, so
    iterating a map of the whole training set would grow to its size.
    """

    def __init__(self, array: np.memmap):
        if not isinstance(array, np.memmap) or array.filename is None:
            raise TypeError("RowReader needs a np.memmap backed by a file")
        self.path = array.filename
        self.offset = array.offset
        self.dtype = array.dtype
        self.row_shape = array.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape)) * array.dtype.itemsize
        self.rows = len(array)

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        """The rows at `indices`, in that order."""
        out = np.empty((len(indices), *self.row_shape), self.dtype)
        buffer = memoryview(out).cast("B")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for position, row in enumerate(indices):
                if not 0 <= row < self.rows:
                    raise IndexError(f"row {row} outside {self.path} ({self.rows} rows)")
                start = position * self.row_bytes
                read = os.preadv(fd, [buffer[start:start + self.row_bytes]],
                                 self.offset + int(row) * self.row_bytes)
                if read != self.row_bytes:
                    raise OSError(f"{self.path}: short read of row {row} ({read} of "
                                  f"{self.row_bytes} bytes); the feature file was truncated")
        finally:
            os.close(fd)
        return out


def make_dataset(
    x, y, batch_size: int, num_classes: int, *, shuffle: bool, seed: int = 0,
    in_memory_bytes: int | None = None,
) -> tf.data.Dataset:
    """Batches (x, one-hot y) through tf.data, reshuffled each epoch when training, prefetched.

    Labels are one-hot so that the loss can apply label smoothing. A memory-mapped `x` larger
    than `in_memory_bytes` (None: IN_MEMORY_BYTES) is streamed: only a shuffled index list is
    held, and each batch's rows are read from the file by parallel tf.data map calls, so memory
    stays bounded by a few batches however large the split.
    """
    limit = IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes
    if isinstance(x, np.memmap) and x.nbytes > limit:
        return streamed_dataset(x, y, batch_size, num_classes, shuffle=shuffle, seed=seed)
    dataset = tf.data.Dataset.from_tensor_slices((np.asarray(x), y))
    if shuffle:
        dataset = dataset.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return (dataset.batch(batch_size)
            .map(lambda features, labels: (features, tf.one_hot(labels, num_classes)))
            .prefetch(tf.data.AUTOTUNE))


def streamed_dataset(
    x: np.memmap, y, batch_size: int, num_classes: int, *, shuffle: bool, seed: int = 0
) -> tf.data.Dataset:
    """Batches of rows read from the file behind the memory map `x` (see make_dataset)."""
    reader = RowReader(x)
    labels = tf.constant(np.asarray(y))
    row_shape = x.shape[1:]
    dataset = tf.data.Dataset.range(len(y))
    if shuffle:
        dataset = dataset.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)

    def load(indices):
        rows = tf.numpy_function(reader, [indices], tf.as_dtype(x.dtype), stateful=False)
        rows.set_shape([None, *row_shape])
        return rows, tf.one_hot(tf.gather(labels, indices), num_classes)

    return (dataset.batch(batch_size)
            .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


class AugmentedBatches:
    """Training batches made fresh each epoch: shuffled rows of raw inputs (waveforms) passed
    through `augment(rows, rng)`. Epoch e draws from its own generator seeded by (seed, e), so a
    run is reproducible and every epoch sees different perturbations; a resumed fit starts at
    `first_epoch`.

    With `shards` > 1 (one input pipeline of a multi-worker run), each batch of `batch_size`
    rows is cut into `shards` pieces and only piece `shard` is made, so that the workers share
    the augmentation work instead of each making every batch: the shuffle is the same on every
    worker (seeded by (seed, e)), the perturbations are drawn per piece (seeded by (seed, e,
    shard + 1)), and a last batch too small to give every piece a row is left out.
    """

    def __init__(self, inputs: np.ndarray, y: np.ndarray, batch_size: int, num_classes: int,
                 augment, seed: int = 0, in_memory_bytes: int | None = None,
                 first_epoch: int = 0, shard: int = 0, shards: int = 1):
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} is not one of {shards} shards")
        limit = IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes
        streamed = isinstance(inputs, np.memmap) and inputs.nbytes > limit
        self.rows = RowReader(inputs) if streamed else np.asarray(inputs).__getitem__
        self.y = np.asarray(y)
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.augment = augment
        self.seed = seed
        self.epoch = first_epoch
        self.shard = shard
        self.shards = shards

    def __len__(self) -> int:
        batches = steps_per_epoch(len(self.y), self.batch_size)
        last = len(self.y) - (batches - 1) * self.batch_size
        return batches - (last < self.shards)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        draws = rng if self.shards == 1 else np.random.default_rng(
            [self.seed, self.epoch, self.shard + 1])
        self.epoch += 1
        order = rng.permutation(len(self.y))
        eye = np.eye(self.num_classes, dtype=np.float32)
        for step in range(len(self)):
            rows = order[step * self.batch_size:(step + 1) * self.batch_size]
            rows = np.array_split(rows, self.shards)[self.shard]
            yield self.augment(self.rows(rows), draws).astype(np.float32), eye[self.y[rows]]

    def dataset(self, feature_shape: tuple[int, ...]) -> tf.data.Dataset:
        """The batches as a tf.data pipeline, prepared one batch ahead of training."""
        signature = (tf.TensorSpec((None, *feature_shape), tf.float32),
                     tf.TensorSpec((None, self.num_classes), tf.float32))
        return (tf.data.Dataset.from_generator(lambda: iter(self), output_signature=signature)
                .apply(tf.data.experimental.assert_cardinality(len(self)))
                .prefetch(2))


def bucketed_dataset(
    ids: np.ndarray, lengths: np.ndarray, y: np.ndarray, batch_size: int, num_classes: int, *,
    buckets: int, shuffle: bool, seed: int = 0
) -> tf.data.Dataset:
    """Batches right-padded id sequences by length: each batch is padded only up to its
    bucket's length, so short reviews do not pay for the longest one.

    Args:
        ids: (examples, max_length) right-padded token ids.
        lengths: Tokens per example (padding excluded), at least 1.
        y: Label ids.
        batch_size: Examples per batch.
        num_classes: For one-hot labels.
        buckets: Number of equal-width length buckets up to max_length.
        shuffle: Reshuffle examples each epoch (training).
        seed: Shuffle seed.
    """
    max_length = ids.shape[1]
    lengths = np.maximum(lengths, 1)
    step = math.ceil(max_length / buckets)
    boundaries = sorted({min(step * i, max_length) + 1 for i in range(1, buckets + 1)})
    # bucket membership depends on length only, so the batch count is the same every epoch
    per_bucket = np.bincount(np.searchsorted(boundaries, lengths, side="right"))
    batches = int(sum(math.ceil(count / batch_size) for count in per_bucket))
    dataset = tf.data.Dataset.from_tensor_slices((ids, lengths, y))
    if shuffle:
        dataset = dataset.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return (dataset.map(lambda row, length, label: (row[:length], label))
            .bucket_by_sequence_length(
                element_length_func=lambda sequence, _: tf.shape(sequence)[0],
                bucket_boundaries=boundaries,
                bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
                pad_to_bucket_boundary=True)
            .map(lambda features, labels: (features, tf.one_hot(labels, num_classes)))
            .apply(tf.data.experimental.assert_cardinality(batches))
            .prefetch(tf.data.AUTOTUNE))


def learning_rate_schedule(config: TrainingConfig, steps_per_epoch: int):
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


def compile_classifier(model: keras.Model, config: TrainingConfig, steps_per_epoch: int) -> None:
    """Adam(W) with the warm-up/cosine schedule, cross-entropy (optionally label-smoothed)."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    optimizer = (keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
                 if config.weight_decay else keras.optimizers.Adam(schedule))
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


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
    optimizer state), that epoch (0-based), the history so far and early stopping's state."""

    model: keras.Model
    epoch: int
    history: dict[str, list[float]]
    stopper: StopperState


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves a resumable checkpoint into `directory` after every epoch.

    Files: `last.keras` (model and optimizer state), `best.npz` (early stopping's best
    weights, written when they change) and `state.json` (epoch, history, early-stopping
    counters), each written to a temporary name and renamed, `state.json` last, so a
    checkpoint interrupted half-way leaves the previous epoch's complete.
    """

    def __init__(self, directory: str | Path, stopper: keras.callbacks.EarlyStopping,
                 history: dict[str, list[float]] | None = None):
        super().__init__()
        self.directory = Path(directory)
        self.stopper = stopper
        self.history = {key: list(values) for key, values in (history or {}).items()}
        self._saved_best_epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.replace("last.keras", self.model.save)
        stopper = self.stopper
        if stopper.best_weights is not None and stopper.best_epoch != self._saved_best_epoch:
            self.replace("best.npz", lambda path: np.savez(path, *stopper.best_weights))
            self._saved_best_epoch = stopper.best_epoch
        state = {"epoch": epoch, "history": self.history,
                 "stopper": {"wait": stopper.wait, "best_epoch": stopper.best_epoch,
                             "best": None if stopper.best is None else float(stopper.best)}}
        self.replace("state.json", lambda path: path.write_text(json.dumps(state)))

    def replace(self, name: str, write) -> None:
        """`write(path)` to a temporary name with the same suffix, then renamed to `name`."""
        final = self.directory / name
        temporary = final.with_name(f".{final.stem}.tmp{final.suffix}")
        write(temporary)
        os.replace(temporary, final)


def load_checkpoint(directory: str | Path) -> CheckpointState:
    """Reads what EpochCheckpoint saved.

    Raises:
        FileNotFoundError: No complete checkpoint in `directory`.
    """
    directory = Path(directory)
    state_path = directory / "state.json"
    if not state_path.is_file() or not (directory / "last.keras").is_file():
        raise FileNotFoundError(f"no training checkpoint in {directory} (state.json and "
                                "last.keras are written after each completed epoch)")
    import models.ngram  # noqa: F401  (registers the project's custom layers)
    import models.recurrent  # noqa: F401

    state = json.loads(state_path.read_text())
    best_weights = None
    if (directory / "best.npz").is_file():
        with np.load(directory / "best.npz") as saved:
            best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    stopper = state["stopper"]
    return CheckpointState(keras.saving.load_model(directory / "last.keras"), state["epoch"],
                           state["history"],
                           StopperState(stopper["wait"], stopper["best"], stopper["best_epoch"],
                                        best_weights))


def fit_classifier(
    model: keras.Model,
    train: tf.data.Dataset,
    validation: tf.data.Dataset,
    config: TrainingConfig,
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
            initial_epoch=resume.epoch + 1 if resume else 0,
            shuffle=False,  # the tf.data pipeline reshuffles each epoch
            callbacks=[interrupts.InterruptCallback(), LearningRateLogger(), stopper, *extra,
                       *(callbacks or [])],
            verbose=verbose,
        )
    return {key: list(earlier.get(key, [])) + list(history.history.get(key, []))
            for key in {**earlier, **history.history}}


@dataclass
class Evaluation:
    """Test-split results of a classifier."""

    metrics: dict[str, float]
    report: dict
    report_text: str
    confusion: np.ndarray
    probabilities: np.ndarray


def evaluate_probabilities(
    probabilities: np.ndarray, y: np.ndarray, labels: tuple[str, ...]
) -> Evaluation:
    """Accuracy, macro-F1, per-class precision/recall, the confusion matrix and, for two
    classes, ROC-AUC of the positive (second) class, from predicted class probabilities."""
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        f1_score,
        roc_auc_score,
    )

    probabilities = np.asarray(probabilities)
    predicted = probabilities.argmax(axis=1)
    indices = list(range(len(labels)))
    report = classification_report(
        y, predicted, labels=indices, target_names=labels, output_dict=True, zero_division=0
    )
    metrics = {
        "test_accuracy": float(accuracy_score(y, predicted)),
        "test_macro_f1": float(f1_score(y, predicted, labels=indices, average="macro",
                                        zero_division=0)),
    }
    if len(labels) == 2 and len(np.unique(y)) == 2:
        metrics["test_roc_auc"] = float(roc_auc_score(y, probabilities[:, 1]))
    for label in labels:
        metrics[f"test_precision_{label}"] = float(report[label]["precision"])
        metrics[f"test_recall_{label}"] = float(report[label]["recall"])
    text = classification_report(
        y, predicted, labels=indices, target_names=labels, digits=3, zero_division=0
    )
    confusion = confusion_matrix(y, predicted, labels=indices)
    return Evaluation(metrics, report, text, confusion, probabilities)


def confusion_matrix_figure(confusion: np.ndarray, labels: tuple[str, ...]) -> Figure:
    """A labelled confusion-matrix plot (rows: true class, columns: predicted)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(5.0, 0.55 * len(labels) + 2)
    figure = Figure(figsize=(size, size), layout="constrained")
    axes = figure.subplots()
    ConfusionMatrixDisplay(confusion, display_labels=labels).plot(
        ax=axes, colorbar=False, xticks_rotation=60, values_format="d"
    )
    axes.set_title("Test confusion matrix")
    return figure


def roc_curve_figure(probabilities: np.ndarray, y: np.ndarray, labels: tuple[str, ...]
                     ) -> Figure:
    """ROC curve of the positive (second) class of a binary classifier, with its AUC."""
    from sklearn.metrics import RocCurveDisplay

    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    RocCurveDisplay.from_predictions(y, np.asarray(probabilities)[:, 1], pos_label=1,
                                     name=f"{labels[1]} vs {labels[0]}", ax=axes,
                                     plot_chance_level=True)
    axes.set_title("Test ROC curve")
    return figure


def training_curves_figure(history: dict[str, list[float]]) -> Figure:
    """Loss and accuracy per epoch for the training and validation splits."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    epochs = range(1, len(history["loss"]) + 1)
    for axes, key in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(epochs, history[key], label="train")
        if f"val_{key}" in history:
            axes.plot(epochs, history[f"val_{key}"], label="validation")
        axes.set_xlabel("epoch")
        axes.set_ylabel(key)
        axes.legend()
        axes.grid(alpha=0.3)
    return figure


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Number of batches in one pass over `num_examples`."""
    return max(1, math.ceil(num_examples / batch_size))
