"""Shared plumbing for tensorflow-datasets sources: prepare once, fail fast when offline."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator, Sequence
from urllib.parse import urlparse

from features.errors import DataError, PipelineError

SOURCES = ("folder", "tfds")  # where a task's data comes from: a folder, or tensorflow-datasets


class DatasetUnavailableError(PipelineError, RuntimeError):
    """The dataset is neither prepared locally nor downloadable."""


def can_reach(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to `host` opens within `timeout` seconds."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def prepared_builder(name: str, data_dir: str | None, download_url: str, *, size: str,
                     alternative: str):
    """A TFDS builder, prepared: downloads only when the data is absent and the network is up.

    Args:
        name: Registered TFDS dataset name.
        data_dir: TFDS data dir (None: TFDS' default).
        download_url: Where the builder downloads its archive from; its host is probed first so
            that an offline machine fails in seconds instead of retrying for minutes.
        size: Download size, for the error message.
        alternative: How to train from a local copy instead, for the error message.

    Raises:
        DatasetUnavailableError: The data is not prepared in `data_dir` and cannot be downloaded.
    """
    builder = copy_builder(name, data_dir)
    if builder.is_prepared():
        return builder
    url = urlparse(download_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    if not can_reach(url.hostname, port):
        raise DatasetUnavailableError(
            f"tensorflow-datasets has no prepared '{name}' in {builder.data_dir} and cannot "
            f"download it: {url.hostname} is unreachable from this machine. Either run once "
            f"where the internet is reachable (it downloads {size} into --tfds-data-dir), or "
            f"{alternative}."
        )
    builder.download_and_prepare()
    return builder


def require_splits(builder, splits: Sequence[str]) -> None:
    """Checks that a prepared dataset holds `splits` with every file of each (a partial copy
    passes TFDS' own check, which reads only its metadata).

    Raises:
        DataError: A split is not in the dataset, or one of its files is not on disk, naming
            the dataset's folder.
    """
    present = builder.info.splits
    missing = [split for split in splits if split not in present]
    if missing:
        raise DataError(f"the tensorflow-datasets copy in {builder.data_dir} has no "
                        f"{', '.join(missing)} split (it has {', '.join(present) or 'none'}): "
                        "copy it whole, or remove it to prepare it again")
    for split in splits:
        absent = [path.name for path in present[split].filepaths if not path.exists()]
        if absent:
            raise DataError(f"the tensorflow-datasets copy in {builder.data_dir} lacks "
                            f"{len(absent)} of the {split} split's {present[split].num_shards} "
                            f"files ({absent[0]}{', ...' if len(absent) > 1 else ''}): copy it "
                            "whole, or remove it to prepare it again")


def prepared_version(name: str, data_dir: str | None) -> str:
    """The version of a prepared dataset, for lineage and cache keys."""
    return str(copy_builder(name, data_dir).info.version)


def copy_builder(name: str, data_dir: str | None):
    """`tfds.builder(name, data_dir=data_dir)`, a copy's damaged metadata as DataError."""
    import tensorflow_datasets as tfds  # on use: seconds to import, only --source tfds
    from google.protobuf.json_format import ParseError

    try:
        return tfds.builder(name, data_dir=data_dir)
    except ParseError as error:  # its dataset_info.json
        raise damaged_copy(data_dir or "tensorflow-datasets' default folder", error) from None


@contextlib.contextmanager
def reading_copy(builder) -> Iterator[None]:
    """Reading a prepared copy's examples: a shard cut short or damaged (TensorFlow's
    DataLossError, or fewer examples than its metadata counts) raised as DataError naming
    the copy."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.DataLossError, tf.errors.FailedPreconditionError) as error:
        raise damaged_copy(builder.data_dir, error) from None


def damaged_copy(folder, error: Exception) -> DataError:
    reason = str(getattr(error, "message", error)).strip().splitlines()[-1]
    reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", reason)[:300]  # TensorFlow's op names
    return DataError(f"the tensorflow-datasets copy in {folder} cannot be read ({reason}): "
                     "copy it whole again, or remove it to prepare it again")
