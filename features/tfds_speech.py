"""Speech Commands through tensorflow-datasets (`speech_commands`, 12 classes, 16 kHz int16).

A split is never held whole: its labels are read first without decoding any audio, and its
clips are then read in chunks, padded or trimmed to the clip length inside the tf.data
pipeline, for the feature stage to stream into the cache. A prepared TFDS dataset is
versioned, so a split is named (for cache keys and lineage) by the dataset's full name
(name, config, version), the split, its size on disk and its labels: no audio is hashed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from features.speech_features import STAGE_CHUNK_CLIPS, DecodedChunk
from features.tfds_source import (
    prepared_builder,
    prepared_version,
    reading_copy,
    require_splits,
)

TFDS_NAME = "speech_commands"
TFDS_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
LABEL_BATCH = 8192  # labels read per step of the label pass


@dataclass(frozen=True)
class TfdsSplit:
    """One split of a prepared TFDS dataset: where it is and its labels, not its audio.

    Attributes:
        builder: The prepared TFDS builder.
        split: The TFDS split name.
        labels: Label name of each example, in the split's order.
        num_bytes: Size of the split's files, from the dataset's metadata.
    """

    builder: Any
    split: str
    labels: list[str]
    num_bytes: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def name(self) -> str:
        """`<name>[/<config>]/<version>/<split>`: what fixes the split's content."""
        return f"{self.builder.info.full_name}/{self.split}"

    @property
    def digest(self) -> str:
        """Digest of the split's name, size and labels (the cache key and lineage use it)."""
        hasher = hashlib.sha256(f"{self.name}|{len(self)}|{self.num_bytes}|".encode())
        hasher.update("|".join(self.labels).encode())
        return hasher.hexdigest()[:16]

    def waveform_chunks(self, clip_samples: int, size: int = STAGE_CHUNK_CLIPS
                        ) -> Iterator[Callable[[], DecodedChunk]]:
        """The split's clips as float32 in [-1, 1), zero-padded or trimmed at the end to
        `clip_samples`, in chunks of `size` (the form `extract_features` takes): each chunk
        is read when the next one is asked for, so no more than a few are in memory."""
        import tensorflow_datasets as tfds  # on use: seconds to import, only --source tfds

        def fixed_length(example):
            audio = tf.cast(example["audio"][:clip_samples], tf.float32) / 32768.0
            audio = tf.pad(audio, [[0, clip_samples - tf.shape(audio)[0]]])
            return tf.ensure_shape(audio, [clip_samples])

        dataset = (self.builder.as_dataset(split=self.split, shuffle_files=False)
                   .map(fixed_length, num_parallel_calls=tf.data.AUTOTUNE)
                   .batch(size).prefetch(1))
        start = 0
        with reading_copy(self.builder):
            for waveforms in tfds.as_numpy(dataset):
                chunk = DecodedChunk(waveforms, list(range(start, start + len(waveforms))), [])
                start += len(waveforms)
                yield lambda chunk=chunk: chunk


def download_url() -> str:
    """URL the TFDS builder downloads the archives from."""
    # on use, like tensorflow_datasets itself
    from tensorflow_datasets.datasets.speech_commands import speech_commands_dataset_builder

    return speech_commands_dataset_builder._DOWNLOAD_PATH


def speech_commands_builder(data_dir: str | None):
    """The prepared TFDS builder.

    Raises:
        DatasetUnavailableError: Not prepared in `data_dir` and the download host is unreachable.
    """
    return prepared_builder(
        TFDS_NAME, data_dir, download_url(), size="~2.3 GB",
        alternative="train from a local copy in the official layout with --source folder "
        "--data-dir PATH (for example the extracted speech_commands_v0.02 archive)")


def split_labels(builder, split: str) -> list[str]:
    """The label names of a split, in order, read without decoding its audio."""
    import tensorflow_datasets as tfds  # on use: seconds to import, only --source tfds

    names = builder.info.features["label"].names
    dataset = (builder.as_dataset(split=split, shuffle_files=False,
                                  decoders={"audio": tfds.decode.SkipDecoding()})
               .map(lambda example: example["label"]).batch(LABEL_BATCH))
    with reading_copy(builder):
        return [names[int(label)] for batch in tfds.as_numpy(dataset) for label in batch]


def read_tfds_speech_commands(data_dir: str | None) -> dict[str, TfdsSplit]:
    """The splits "train", "validation" and "test" of the prepared dataset, with their labels
    (the audio is read later, in chunks: `TfdsSplit.waveform_chunks`).

    Args:
        data_dir: TFDS data dir (None: TFDS' default).

    Raises:
        DatasetUnavailableError: Not prepared in `data_dir` and the download host is unreachable.
        DataError: The prepared copy lacks a split or one of its files.
    """
    builder = speech_commands_builder(data_dir)
    require_splits(builder, list(TFDS_SPLITS.values()))
    return {split: TfdsSplit(builder, tfds_split, split_labels(builder, tfds_split),
                             int(builder.info.splits[tfds_split].num_bytes))
            for split, tfds_split in TFDS_SPLITS.items()}


def tfds_version(data_dir: str | None) -> str:
    """The version of the prepared dataset, for lineage and cache keys."""
    return prepared_version(TFDS_NAME, data_dir)
