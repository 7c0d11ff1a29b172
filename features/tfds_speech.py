"""Speech Commands through tensorflow-datasets (`speech_commands`, 12 classes, 16 kHz int16)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np

from features.audio import fix_length

TFDS_NAME = "speech_commands"
TFDS_SPLITS = {"train": "train", "validation": "validation", "test": "test"}


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither prepared locally nor downloadable."""


@dataclass
class TfdsSplit:
    """One split as waveforms and label names."""

    waveforms: np.ndarray
    labels: list[str]


def download_host() -> str:
    """Host the TFDS builder downloads the archives from."""
    from tensorflow_datasets.datasets.speech_commands import speech_commands_dataset_builder

    return urlparse(speech_commands_dataset_builder._DOWNLOAD_PATH).hostname


def can_reach(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to `host` opens within `timeout` seconds."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def speech_commands_builder(data_dir: str | None):
    """The TFDS builder, prepared: downloads only when the data is absent and the network is up.

    Raises:
        DatasetUnavailableError: The data is not prepared in `data_dir` and cannot be downloaded.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    host = download_host()
    if not can_reach(host):
        raise DatasetUnavailableError(
            f"tensorflow-datasets has no prepared '{TFDS_NAME}' in {builder.data_dir} and cannot "
            f"download it: {host} is unreachable from this machine. Either run once where the "
            "internet is reachable (it downloads ~2.3 GB into --tfds-data-dir), or train from a "
            "local copy in the official layout with --source folder --data-dir PATH (for "
            "example the extracted speech_commands_v0.02 archive)."
        )
    builder.download_and_prepare()
    return builder


def read_tfds_speech_commands(data_dir: str | None, clip_samples: int) -> dict[str, TfdsSplit]:
    """Reads every split as float32 waveforms in [-1, 1), padded/trimmed to `clip_samples`.

    Args:
        data_dir: TFDS data dir (None: TFDS' default).
        clip_samples: Samples per clip.

    Returns:
        The splits "train", "validation" and "test".
    """
    import tensorflow_datasets as tfds

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
    import tensorflow_datasets as tfds

    return str(tfds.builder(TFDS_NAME, data_dir=data_dir).info.version)
