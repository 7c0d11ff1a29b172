"""The on-disk cache of per-split features, and the rows a feature stage writes into it.

A folder of entries: `<key>.f32` (raw float32 rows: MFCC frames, or decoded waveforms) and
`<key>.json` (shape, kept and skipped examples, the frames' per-coefficient moments, the row
file's CRC-32, and a CRC-32 of those values), the metadata written last so that it marks a
complete entry. The row file's CRC-32, computed while the rows are streamed, is checked on every
load: an entry whose metadata is unreadable or fails its own checksum, or whose row file has
another size or checksum, is logged and rebuilt, never used.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from features.errors import DataError, disk_space_errors

log = logging.getLogger(__name__)

DTYPE = np.float32
CHECKSUM_BLOCK = 1 << 20  # bytes read at a time when verifying a cache file
META_KEYS = ("shape", "kept", "skipped", "mean", "variance", "crc32")
META_CHECKSUM = "meta_crc32"  # of the other values, as `meta_checksum` writes them


@dataclass
class SplitFeatures:
    """Features of one split.

    Attributes:
        rows: float32 array, a row per kept clip: (clips, frames, n_mfcc) MFCC frames, or
            (clips, samples) waveforms; memory-mapped when it lives in the cache.
        kept: Indices into the split's example list of the clips that decoded.
        skipped: (path, reason) of each clip that could not be decoded.
        from_cache: Whether the arrays were read from the cache.
        mean: Per-coefficient mean over all kept clips and frames (for input normalisation);
            empty for waveforms.
        variance: Per-coefficient variance, as `mean`.
        crc32: CRC-32 of the bytes streamed to the cache file; None when held in memory.
    """

    rows: np.ndarray
    kept: np.ndarray
    skipped: list[tuple[str, str]]
    from_cache: bool
    mean: np.ndarray
    variance: np.ndarray
    crc32: int | None = None


class RowSink:
    """Where a stage's output rows go, block by block: streamed to the raw float32 file `out`
    (so that no more than a block is held), or, with no file, into an array of up to `total`
    rows. `rows()` then gives what was written: memory-mapped from `out`, or the array. The
    CRC-32 of the bytes written to `out` is kept as they go (`crc32`), so that the cache need
    not read the file again to checksum it."""

    def __init__(self, out: Path | None, total: int, row_shape: tuple[int, ...]):
        self.out = out
        self.row_shape = tuple(row_shape)
        self.count = 0
        self.crc32 = 0 if out is not None else None
        self.array = np.empty((total, *self.row_shape), DTYPE) if out is None else None
        self.handle = None

    def __enter__(self) -> RowSink:
        if self.out is not None:
            self.handle = open(self.out, "wb")  # noqa: SIM115 (closed in __exit__)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.handle is not None:
            self.handle.close()

    def write(self, block: np.ndarray) -> None:
        if self.handle is not None:
            data = memoryview(np.ascontiguousarray(block, DTYPE)).cast("B")
            self.handle.write(data)
            self.crc32 = zlib.crc32(data, self.crc32)
        else:
            self.array[self.count : self.count + len(block)] = block
        self.count += len(block)

    def rows(self) -> np.ndarray:
        if self.out is None:
            return self.array[: self.count]
        if not self.count:
            return np.zeros((0, *self.row_shape), DTYPE)
        return np.memmap(self.out, DTYPE, "r", shape=(self.count, *self.row_shape))


def meta_checksum(values: dict) -> int:
    """CRC-32 of an entry's metadata values (JSON, keys sorted), so that a changed index or
    moment is detected as a changed row is."""
    return zlib.crc32(json.dumps(values, sort_keys=True).encode())


def file_crc32(path: Path) -> int:
    """CRC-32 of a file, read in `CHECKSUM_BLOCK` blocks."""
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(CHECKSUM_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


class FeatureCache:
    """A folder of entries: `<key>.f32` (raw float32 frames) and `<key>.json` (shape, kept and
    skipped examples, moments, the frame file's CRC-32), the metadata written last so that it
    marks a complete entry."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def data_path(self, key: str) -> Path:
        return self.directory / f"{key}.f32"

    def meta_path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def read_meta(self, key: str) -> dict | None:
        """The entry's metadata with its values typed (shape a tuple of ints, crc32 an int,
        kept, mean and variance arrays, skipped pairs), or None, with a warning, when it is
        unreadable, incomplete or malformed."""
        meta_path = self.meta_path(key)
        try:
            meta = json.loads(meta_path.read_text())
            missing = [name for name in META_KEYS if name not in meta]
            if missing:
                log.warning("feature cache metadata %s lacks %s; rebuilding", meta_path,
                            ", ".join(missing))
                return None
            checksum = meta.pop(META_CHECKSUM, None)
            if checksum != meta_checksum(meta) or len(meta["kept"]) != meta["shape"][0]:
                log.warning("feature cache metadata %s fails its checksum (corrupted); "
                            "rebuilding", meta_path)
                return None
            return meta | {
                "shape": tuple(int(size) for size in meta["shape"]),
                "crc32": int(meta["crc32"]),
                "kept": np.asarray(meta["kept"], np.int64),
                "skipped": [tuple(item) for item in meta["skipped"]],
                "mean": np.asarray(meta["mean"], np.float64),
                "variance": np.asarray(meta["variance"], np.float64),
            }
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError,
                ValueError) as error:
            log.warning("feature cache metadata %s is unreadable (%s); rebuilding", meta_path,
                        error)
            return None

    def verify(self, key: str, meta: dict) -> bool:
        """Whether the frame file has the size and CRC-32 the metadata records (warns if not)."""
        data_path = self.data_path(key)
        expected = int(np.prod(meta["shape"])) * np.dtype(DTYPE).itemsize
        if data_path.stat().st_size != expected:
            log.warning("feature cache %s holds %d bytes, expected %d for shape %s; rebuilding",
                        data_path, data_path.stat().st_size, expected, list(meta["shape"]))
            return False
        try:
            actual = file_crc32(data_path)
        except OSError as error:  # another user's entry, not readable by this one
            log.warning("feature cache %s is unreadable (%s); rebuilding", data_path,
                        error.strerror or error)
            return False
        if actual != meta["crc32"]:
            log.warning("feature cache %s has CRC-32 %08x, expected %08x (corrupted); "
                        "rebuilding", data_path, actual, meta["crc32"])
            return False
        return True

    def entry(self, key: str, meta: dict, from_cache: bool) -> SplitFeatures:
        """The entry described by typed metadata (`read_meta`), its frames memory-mapped."""
        shape = meta["shape"]
        frames = (np.memmap(self.data_path(key), DTYPE, "r", shape=shape) if shape[0]
                  else np.zeros(shape, DTYPE))
        return SplitFeatures(frames, meta["kept"], meta["skipped"], from_cache, meta["mean"],
                             meta["variance"], meta["crc32"])

    def load(self, key: str) -> SplitFeatures | None:
        """Returns the cached entry (frames memory-mapped) after checking the frame file's size
        and CRC-32; None if it is absent, incomplete or damaged (damage is logged).

        Raises:
            DataError: A folder where the entry keeps a file (it would not be replaced).
        """
        for path in (self.meta_path(key), self.data_path(key)):
            if path.is_dir():
                raise DataError(f"{path}: a folder where the feature cache keeps a file; move "
                                "it away, or give another --cache-dir")
        if not (self.meta_path(key).is_file() and self.data_path(key).is_file()):
            return None
        meta = self.read_meta(key)
        if meta is None or not self.verify(key, meta):
            return None
        return self.entry(key, meta, from_cache=True)

    @staticmethod
    def temporary_prefix(key: str) -> str:
        """How a build's temporary files start: `.<key>.<host>` (then `.<pid>.f32` or
        `.<pid>.json`), so that a process can tell its own host's abandoned files."""
        return f".{key}.{socket.gethostname()}"

    def abandoned_files(self, key: str) -> list[Path]:
        """Temporary files of entry `key` whose process, on this host, is gone (a build
        killed part-way, e.g. by the OOM killer, never reaches its cleanup)."""
        prefix = self.temporary_prefix(key)
        found = []
        for path in self.directory.glob(f"{glob.escape(prefix)}.*"):
            start, pid, _ = path.name.rsplit(".", 2)
            if start == prefix and pid.isdigit() and not psutil.pid_exists(int(pid)):
                found.append(path)
        return found

    def build(self, key: str, compute: Callable[[Path], SplitFeatures]) -> SplitFeatures:
        """Runs `compute(path)`, which streams the frames to a temporary file (and checksums
        them as it goes), then moves the file into place and writes the metadata that marks the
        entry complete.

        Raises:
            DiskFullError: The disk (or a file-size limit) ran out; the partial file is
                removed and no entry is left.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.abandoned_files(key):
            log.info("removing %s, left by a cache build whose process is gone", stale)
            stale.unlink(missing_ok=True)
        tmp = self.directory / f"{self.temporary_prefix(key)}.{os.getpid()}.f32"
        tmp_meta = self.directory / f"{self.temporary_prefix(key)}.{os.getpid()}.json"
        try:
            with disk_space_errors(self.directory, tmp):
                features = compute(tmp)
                if not len(features.kept):
                    tmp.write_bytes(b"")
                crc32 = features.crc32 if features.crc32 is not None else file_crc32(tmp)
                meta = {"shape": tuple(features.rows.shape), "kept": features.kept,
                        "skipped": features.skipped, "mean": features.mean,
                        "variance": features.variance, "crc32": crc32}  # as read_meta types it
                values = {name: value.tolist() if isinstance(value, np.ndarray) else value
                          for name, value in meta.items()}
                values = json.loads(json.dumps(values))  # as read back: tuples are lists
                with disk_space_errors(self.directory, tmp_meta):
                    tmp_meta.write_text(json.dumps(
                        values | {META_CHECKSUM: meta_checksum(values)}))
            os.replace(tmp, self.data_path(key))
            os.replace(tmp_meta, self.meta_path(key))  # the entry is complete
        finally:
            tmp.unlink(missing_ok=True)
            tmp_meta.unlink(missing_ok=True)
        # mapped again from its final path (the map of the temporary name is dropped)
        return self.entry(key, meta, from_cache=False)


def cached_features(cache_dir: str | Path | None, key: str,
                    compute: Callable[[Path | None], SplitFeatures]) -> SplitFeatures:
    """Returns the cache entry `key`, or builds it with `compute(out)`, which streams the frames
    to the file `out` (None when caching is off: the frames stay in memory)."""
    if cache_dir is None:
        return compute(None)
    cache = FeatureCache(cache_dir)
    cached = cache.load(key)
    if cached is not None:
        log.info("%d clips read from feature cache %s", len(cached.kept), key)
        return cached
    return cache.build(key, compute)
