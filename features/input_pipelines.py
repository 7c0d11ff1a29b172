"""tf.data input pipelines: the batches a Keras fit, evaluation or prediction reads.

Labels are one-hot, so that the loss can apply label smoothing. Training inputs are reshuffled
every epoch from a seed; evaluation inputs keep their order. A memory-mapped split larger than
a given size is streamed from its file instead of loaded (`make_dataset`). Every pipeline runs
with tf.data's autotuning off (`untuned`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class TrainingBatches:
    """What a fit reads: training and validation batches, the training batches of an epoch
    (for the learning-rate schedule), and what a run records about them.

    Attributes:
        train: Training batches of the global batch size (a distributed dataset when each
            worker of a multi-worker run makes its own share).
        validation: Validation batches, in order.
        steps_per_epoch: Training batches per epoch.
        metrics: Figures about the batches a run logs (replicas, global batch size, ...).
    """

    train: tf.data.Dataset | tf.distribute.DistributedDataset
    validation: tf.data.Dataset
    steps_per_epoch: int
    metrics: dict[str, float] = field(default_factory=dict)


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


def untuned(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with tf.data's autotuning off.

    With autotuning on, a Keras fit on 2 CPU cores often runs the model's step on little more
    than one core (1.1-1.4 CPU-s per second of wall time against 1.9 with it off, in most
    processes though not all), so recurrent training runs 1.3-1.7x slower; the pipelines here
    are light enough that their fixed settings (AUTOTUNE parallelism falls back to the number
    of cores, prefetch buffers to their own adaptive size) keep the model fed.
    docs/performance.md gives the measurements.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def streams(x, stream_over_bytes: int | None) -> bool:
    """Whether `x` is read from its file batch by batch: a memory map of more than
    `stream_over_bytes` (None: never)."""
    return (stream_over_bytes is not None and isinstance(x, np.memmap)
            and x.nbytes > stream_over_bytes)


def make_dataset(
    x, y, batch_size: int, num_classes: int, *, shuffle_seed: int | None = None,
    stream_over_bytes: int | None = None,
) -> tf.data.Dataset:
    """Batches (x, one-hot y) through tf.data, prefetched.

    Args:
        x: Inputs, one row per example (an array or a memory map).
        y: Label ids.
        batch_size: Examples per batch.
        num_classes: Width of the one-hot labels.
        shuffle_seed: Reshuffle the examples every epoch from this seed (training); None keeps
            their order.
        stream_over_bytes: A memory-mapped `x` larger than this is streamed: only a shuffled
            index list is held, and each batch's rows are read from the file by parallel
            tf.data map calls, so memory stays bounded by a few batches however large the
            split. None loads it.
    """
    if streams(x, stream_over_bytes):
        return streamed_dataset(x, y, batch_size, num_classes, shuffle_seed=shuffle_seed)
    dataset = tf.data.Dataset.from_tensor_slices((np.asarray(x), y))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(y), seed=shuffle_seed, reshuffle_each_iteration=True)
    return untuned(dataset.batch(batch_size)
                   .map(lambda features, labels: (features, tf.one_hot(labels, num_classes)))
                   .prefetch(tf.data.AUTOTUNE))


def streamed_dataset(
    x: np.memmap, y, batch_size: int, num_classes: int, *, shuffle_seed: int | None
) -> tf.data.Dataset:
    """Batches of rows read from the file behind the memory map `x` (see make_dataset)."""
    reader = RowReader(x)
    labels = tf.constant(np.asarray(y))
    row_shape = x.shape[1:]
    dataset = tf.data.Dataset.range(len(y))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(y), seed=shuffle_seed, reshuffle_each_iteration=True)

    def load(indices):
        rows = tf.numpy_function(reader, [indices], tf.as_dtype(x.dtype), stateful=False)
        rows.set_shape([None, *row_shape])
        return rows, tf.one_hot(tf.gather(labels, indices), num_classes)

    return untuned(dataset.batch(batch_size)
                   .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                   .prefetch(tf.data.AUTOTUNE))


class AugmentedBatches:
    """Training batches made fresh each epoch: shuffled rows of raw inputs (waveforms) passed
    through `augment(rows, rng)`. Epoch e draws from its own generator seeded by
    (shuffle_seed, e), so a run is reproducible and every epoch sees different perturbations; a
    resumed fit starts at `first_epoch`.

    With `shards` > 1 (one input pipeline of a multi-worker run), each batch of `batch_size`
    rows is cut into `shards` pieces and only piece `shard` is made, so that the workers share
    the augmentation work instead of each making every batch: the shuffle is the same on every
    worker (seeded by (seed, e)), the perturbations are drawn per piece (seeded by (seed, e,
    shard + 1)), and a last batch too small to give every piece a row is left out.
    """

    def __init__(self, inputs: np.ndarray, y: np.ndarray, batch_size: int, num_classes: int,
                 augment, *, shuffle_seed: int, stream_over_bytes: int | None = None,
                 first_epoch: int = 0, shard: int = 0, shards: int = 1):
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} is not one of {shards} shards")
        streamed = streams(inputs, stream_over_bytes)
        self.rows = RowReader(inputs) if streamed else np.asarray(inputs).__getitem__
        self.y = np.asarray(y)
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.augment = augment
        self.seed = shuffle_seed
        self.epoch = first_epoch
        self.shard = shard
        self.shards = shards

    def __len__(self) -> int:
        return steps_per_epoch(len(self.y), self.batch_size, self.shards)

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
        return untuned(
            tf.data.Dataset.from_generator(lambda: iter(self), output_signature=signature)
            .apply(tf.data.experimental.assert_cardinality(len(self)))
            .prefetch(2))


def bucketed_dataset(
    ids: np.ndarray, lengths: np.ndarray, y: np.ndarray, batch_size: int, num_classes: int, *,
    buckets: int, shuffle_seed: int | None = None
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
        shuffle_seed: Reshuffle the examples every epoch from this seed (training); None keeps
            them in order.
    """
    max_length = ids.shape[1]
    lengths = np.maximum(lengths, 1)
    step = math.ceil(max_length / buckets)
    # past max_length buckets (a step of one), the boundaries repeat: not counted out
    boundaries = sorted({min(step * i, max_length) + 1
                         for i in range(1, min(buckets, max_length) + 1)})
    # bucket membership depends on length only, so the batch count is the same every epoch
    per_bucket = np.bincount(np.searchsorted(boundaries, lengths, side="right"))
    batches = int(sum(math.ceil(count / batch_size) for count in per_bucket))
    dataset = tf.data.Dataset.from_tensor_slices((ids, lengths, y))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(y), seed=shuffle_seed, reshuffle_each_iteration=True)
    return untuned(dataset.map(lambda row, length, label: (row[:length], label))
                   .bucket_by_sequence_length(
                       element_length_func=lambda sequence, _: tf.shape(sequence)[0],
                       bucket_boundaries=boundaries,
                       bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
                       pad_to_bucket_boundary=True)
                   .map(lambda features, labels: (features, tf.one_hot(labels, num_classes)))
                   .apply(tf.data.experimental.assert_cardinality(batches))
                   .prefetch(tf.data.AUTOTUNE))


def steps_per_epoch(num_examples: int, batch_size: int, shards: int = 1) -> int:
    """Number of batches in one pass over `num_examples`; with `shards` input pipelines
    each making its share of every batch, a last batch of fewer examples than shards is
    left out (every shard needs one) unless it is the only batch."""
    batches = max(1, math.ceil(num_examples / batch_size))
    last = num_examples - (batches - 1) * batch_size
    return batches - (batches > 1 and last < shards)
