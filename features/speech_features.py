"""Turns a split's examples into MFCC frames, once, and caches them on disk.

A cache entry is keyed by a hash of the example list (paths, sizes, modification times, silence
windows) and the feature configuration, so a second run with the same data and config reads the
arrays back and decodes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.audio import AudioDecodeError, AudioSpec, decode_clip, decode_recording
from features.mfcc import MfccConfig, feature_shape, mfcc_frames
from features.speech_commands import Example

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the way features are computed changes
BATCH_CLIPS = 256


@dataclass
class SplitFeatures:
    """Features of one split.

    Attributes:
        frames: float32 array (clips, frames, n_mfcc); memory-mapped when read from the cache.
        kept: Indices into the split's example list of the clips that decoded.
        skipped: (path, reason) of each clip that could not be decoded.
        from_cache: Whether the arrays were read from the cache.
    """

    frames: np.ndarray
    kept: np.ndarray
    skipped: list[tuple[str, str]]
    from_cache: bool


def cache_key(examples: Sequence[Example], data_dir: Path, config: MfccConfig) -> str:
    """Hash of the example list (with file sizes and mtimes) and the feature config."""
    hasher = hashlib.sha256()
    hasher.update(json.dumps([CACHE_FORMAT, dataclasses.asdict(config)]).encode())
    for example in examples:
        stat = (data_dir / example.path).stat()
        hasher.update(
            f"{example.path}|{stat.st_size}|{stat.st_mtime_ns}|{example.offset}|"
            f"{example.rms!r}\n".encode()
        )
    return hasher.hexdigest()[:24]


def silence_window(noise: np.ndarray, example: Example, clip_samples: int) -> np.ndarray:
    """Cuts a silence example's window from its noise recording and scales it to its RMS."""
    window = noise[example.offset : example.offset + clip_samples]
    rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
    scaled = window * (example.rms / rms) if rms > 0 else window
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


def decode_examples(
    examples: Sequence[Example], data_dir: Path, spec: AudioSpec
) -> Iterator[tuple[int, np.ndarray | None, str]]:
    """Yields (index, waveform or None, error) for each example, decoding noise files once."""
    noise_cache: dict[str, np.ndarray] = {}
    for index, example in enumerate(examples):
        path = data_dir / example.path
        try:
            if example.is_silence:
                if example.path not in noise_cache:
                    noise_cache[example.path] = decode_recording(path, spec.sample_rate)
                waveform = silence_window(noise_cache[example.path], example, spec.clip_samples)
            else:
                waveform = decode_clip(path, spec)
        except AudioDecodeError as error:
            yield index, None, str(error)
            continue
        yield index, waveform, ""


def compute_features(
    examples: Sequence[Example], data_dir: Path, config: MfccConfig, desc: str = "MFCC"
) -> SplitFeatures:
    """Decodes every example and computes MFCC frames in batches, skipping undecodable clips."""
    from tqdm.auto import tqdm

    spec = AudioSpec(config.sample_rate, config.clip_seconds)
    frames = np.empty((len(examples), *feature_shape(config)), np.float32)
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    batch: list[np.ndarray] = []
    with tqdm(total=len(examples), desc=desc, unit="clip") as progress:
        for index, waveform, error in decode_examples(examples, data_dir, spec):
            if waveform is None:
                log.warning("skipped %s", error)
                skipped.append((examples[index].path, error))
            else:
                batch.append(waveform)
                kept.append(index)
            if len(batch) == BATCH_CLIPS or index == len(examples) - 1:
                if batch:
                    start = len(kept) - len(batch)
                    frames[start : len(kept)] = mfcc_frames(np.stack(batch), config)
                    progress.update(len(batch))
                batch = []
            if waveform is None:
                progress.update(1)
    return SplitFeatures(frames[: len(kept)], np.asarray(kept, np.int64), skipped, False)


class FeatureCache:
    """A folder of `<key>.npy` feature arrays with `<key>.json` metadata written last."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def load(self, key: str) -> SplitFeatures | None:
        """Returns the cached entry, or None if absent or incomplete."""
        meta_path = self.directory / f"{key}.json"
        data_path = self.directory / f"{key}.npy"
        if not (meta_path.is_file() and data_path.is_file()):
            return None
        meta = json.loads(meta_path.read_text())
        frames = np.load(data_path, mmap_mode="r")
        if list(frames.shape) != meta["shape"]:
            log.warning("feature cache %s has shape %s, expected %s; rebuilding",
                        data_path, list(frames.shape), meta["shape"])
            return None
        skipped = [tuple(item) for item in meta["skipped"]]
        return SplitFeatures(frames, np.asarray(meta["kept"], np.int64), skipped, True)

    def store(self, key: str, features: SplitFeatures) -> None:
        """Writes an entry atomically: arrays first, then the metadata that marks it complete."""
        self.directory.mkdir(parents=True, exist_ok=True)
        data_path = self.directory / f"{key}.npy"
        tmp = self.directory / f".{key}.{os.getpid()}.npy"
        np.save(tmp, features.frames)
        os.replace(tmp, data_path)
        meta = {
            "shape": list(features.frames.shape),
            "kept": features.kept.tolist(),
            "skipped": [list(item) for item in features.skipped],
        }
        tmp_meta = self.directory / f".{key}.{os.getpid()}.json"
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, self.directory / f"{key}.json")


def waveform_features(waveforms: np.ndarray, config: MfccConfig, desc: str = "MFCC") -> np.ndarray:
    """MFCC frames for an array of equal-length waveforms, in batches, with a progress bar."""
    from tqdm.auto import tqdm

    frames = np.empty((len(waveforms), *feature_shape(config)), np.float32)
    with tqdm(total=len(waveforms), desc=desc, unit="clip") as progress:
        for start in range(0, len(waveforms), BATCH_CLIPS):
            stop = min(start + BATCH_CLIPS, len(waveforms))
            frames[start:stop] = mfcc_frames(waveforms[start:stop], config)
            progress.update(stop - start)
    return frames


def cached_features(cache_dir: str | Path | None, key: str, compute) -> SplitFeatures:
    """Returns the cache entry `key`, or calls `compute()` and stores its result."""
    if cache_dir is None:
        return compute()
    cache = FeatureCache(cache_dir)
    cached = cache.load(key)
    if cached is not None:
        log.info("%d clips read from feature cache %s", len(cached.kept), key)
        return cached
    features = compute()
    cache.store(key, features)
    return features


def split_features(
    examples: Sequence[Example],
    data_dir: str | Path,
    config: MfccConfig,
    cache_dir: str | Path | None,
    desc: str = "MFCC",
) -> SplitFeatures:
    """MFCC frames for a split, from the cache when the same data and config were seen before.

    Args:
        examples: The split's examples.
        data_dir: Folder the example paths are relative to.
        config: Feature configuration.
        cache_dir: Cache folder; None disables caching.
        desc: Label of the progress bar.

    Returns:
        The split's features, with the indices of kept examples and the skipped ones.
    """
    data_dir = Path(data_dir)
    key = cache_key(examples, data_dir, config) if cache_dir is not None else ""
    return cached_features(
        cache_dir, key, lambda: compute_features(examples, data_dir, config, desc))
