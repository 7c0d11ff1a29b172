"""Speech Commands through tensorflow-datasets (`speech_commands`, 12 classes, 16 kHz int16)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.audio import fix_length
from features.tfds_source import prepared_builder, prepared_version

TFDS_NAME = "speech_commands"
TFDS_SPLITS = {"train": "train", "validation": "validation", "test": "test"}


@dataclass
class TfdsSplit:
    """One split as waveforms and label names."""

    waveforms: np.ndarray
    labels: list[str]


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


def read_tfds_speech_commands(data_dir: str | None, clip_samples: int) -> dict[str, TfdsSplit]:
    """Reads every split as float32 waveforms in [-1, 1), padded/trimmed to `clip_samples`.

    Args:
        data_dir: TFDS data dir (None: TFDS' default).
        clip_samples: Samples per clip.

    Returns:
        The splits "train", "validation" and "test".
    """
    import tensorflow_datasets as tfds  # on use: seconds to import, only --source tfds

    builder = speech_commands_builder(data_dir)
    names = builder.info.features["label"].names
    splits = {}
    for split, tfds_split in TFDS_SPLITS.items():
        waveforms, labels = [], []
        for example in tfds.as_numpy(builder.as_dataset(split=tfds_split)):
            audio = example["audio"].astype(np.float32) / 32768.0
            waveforms.append(fix_length(audio, clip_samples))
            labels.append(names[int(example["label"])])
        stacked = np.stack(waveforms) if waveforms else np.zeros((0, clip_samples), np.float32)
        splits[split] = TfdsSplit(stacked, labels)
    return splits


def tfds_version(data_dir: str | None) -> str:
    """The version of the prepared dataset, for lineage and cache keys."""
    return prepared_version(TFDS_NAME, data_dir)
