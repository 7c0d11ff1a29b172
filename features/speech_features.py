"""Turns a split's examples into MFCC frames, once, and caches them on disk.

The feature stage works in chunks of clips on worker threads, one more than there are cores
(at most MAX_WORKERS): a worker decodes its chunk and computes the chunk's MFCC frames (one
compiled call), and the frames are streamed to the cache file in order as chunks finish: memory
stays bounded by a few chunks, however many clips there are. A compiled call keeps about one
core busy (on 2 cores, one call with both threads runs 1.3x as fast as with one), so chunks
computed side by side use the machine where one call at a time would leave a core waiting, and
the extra worker keeps the cores computing while another decodes (much of decoding holds the
GIL).

A cache entry (features.feature_cache) is keyed by a hash of the example list (paths, the
files' content hashes where the reader gives them, else their sizes and modification times,
silence windows), the feature configuration and the decoding and feature libraries' versions,
so a second run with the same data and config reads the frames back (memory-mapped) and decodes
nothing. The module
also caches the decoded waveforms of a split (`split_waveforms`), which training with
augmentation computes its MFCC frames from afresh each epoch; their entry is keyed by the
sample rate and clip length alone (`entry_settings`), so other MFCC options reuse it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile
import soxr
import tensorflow as tf
from tqdm.auto import tqdm

from features.audio import AudioDecodeError, AudioSpec, decode_clip, decode_recording
from features.feature_cache import RowSink, SplitFeatures, cached_features
from features.mfcc import MfccConfig, extractor, feature_shape
from features.speech_commands import Example

log = logging.getLogger(__name__)

CACHE_FORMAT = 4  # bump when the way features are computed or stored changes
MAX_WORKERS = 4  # feature-stage threads on a machine with many cores
# clips a feature-stage worker decodes and computes at a time: a compiled call's rate per clip
# peaks at 64 clips (docs/performance.md, item 1)
STAGE_CHUNK_CLIPS = 64


@functools.cache
def library_versions() -> dict[str, str]:
    """The versions of what decodes, resamples and computes the features (libsndfile, soxr,
    librosa's filters, TensorFlow's maths): an upgrade may change a value, so it is a new
    entry."""
    return {"libsndfile": soundfile.__libsndfile_version__, "soxr": soxr.__version__,
            "librosa": librosa.__version__, "tensorflow": tf.__version__}


def entry_settings(config: MfccConfig, kind: str) -> dict:
    """What an entry's content depends on besides its clips: the whole feature config for
    "mfcc" frames, only the sample rate and clip length for decoded "waveforms" (so other
    MFCC options reuse the decoded clips), and the libraries' versions."""
    settings = dataclasses.asdict(config.audio if kind == "waveforms" else config)
    return settings | {"libraries": library_versions()}


def cache_key(examples: Sequence[Example], data_dir: Path, config: MfccConfig,
              kind: str = "mfcc", content: Mapping[str, str] | None = None) -> str:
    """Hash of the example list, the settings the entry depends on (`entry_settings`) and what
    it holds (`kind`: "mfcc" frames or decoded "waveforms").

    Each file counts by its `content` hash (path -> SHA-256 of its bytes) where given, so a
    clip rewritten in place is a new entry whatever its size and mtime; by its size and mtime
    otherwise.
    """
    content = content or {}
    hasher = hashlib.sha256()
    hasher.update(json.dumps([CACHE_FORMAT, kind, entry_settings(config, kind)]).encode())
    for example in examples:
        identity = content.get(example.path)
        if identity is None:
            stat = (data_dir / example.path).stat()
            identity = f"{stat.st_size}|{stat.st_mtime_ns}"
        hasher.update(
            f"{example.path}|{identity}|{example.offset}|{example.rms!r}\n".encode())
    return hasher.hexdigest()[:24]


def source_cache_key(source: str, config: MfccConfig, kind: str = "mfcc") -> str:
    """Hash of a versioned source's name (a TFDS dataset's name, config, version, split and
    size: its content is fixed by them), the settings the entry depends on and what it holds."""
    hasher = hashlib.sha256()
    hasher.update(json.dumps([CACHE_FORMAT, kind, entry_settings(config, kind),
                              source]).encode())
    return hasher.hexdigest()[:24]


def silence_window(noise: np.ndarray, example: Example, clip_samples: int, source: Path
                   ) -> np.ndarray:
    """Cuts a silence example's window from its noise recording (`source`) and scales it to
    its RMS.

    Raises:
        AudioDecodeError: The recording decodes shorter than its header said (a cut file),
            so the window runs past its end.
    """
    if example.offset + clip_samples > len(noise):
        raise AudioDecodeError(
            f"{source}: decodes to {len(noise)} samples, too few for the window at sample "
            f"{example.offset} that its header's length allowed (a cut or damaged recording)")
    window = noise[example.offset : example.offset + clip_samples]
    rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
    scaled = window * (example.rms / rms) if rms > 0 else window
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


@dataclass
class DecodedChunk:
    """Waveforms of a run of examples that decoded, and the ones that did not."""

    waveforms: np.ndarray
    kept: list[int]
    skipped: list[tuple[str, str]]


class ExampleDecoder:
    """Decodes examples into training-ready waveforms; noise recordings (the source of
    `_silence_` windows) are decoded once and shared by every chunk."""

    def __init__(self, examples: Sequence[Example], data_dir: Path, spec: AudioSpec):
        self.examples = examples
        self.data_dir = Path(data_dir)
        self.spec = spec
        self.noise: dict[str, np.ndarray | AudioDecodeError] = {}
        for path in sorted({example.path for example in examples if example.is_silence}):
            try:
                self.noise[path] = decode_recording(self.data_dir / path, spec.sample_rate)
            except AudioDecodeError as error:
                self.noise[path] = error

    def waveform(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """One example's waveform, written into `out` (a (clip_samples,) float32 row) when
        given.

        Raises:
            AudioDecodeError: The clip (or its noise recording) is not decodable audio.
        """
        example = self.examples[index]
        if example.is_silence:
            noise = self.noise[example.path]
            if isinstance(noise, AudioDecodeError):
                raise noise
            window = silence_window(noise, example, self.spec.clip_samples,
                                    self.data_dir / example.path)
            if out is None:
                return window
            out[:] = window
            return out
        return decode_clip(os.path.join(self.data_dir, example.path), self.spec, out=out)

    def chunk(self, start: int, stop: int) -> DecodedChunk:
        """Decodes examples[start:stop], setting the undecodable ones aside with the reason."""
        waveforms = np.empty((stop - start, self.spec.clip_samples), np.float32)
        kept, skipped = [], []
        for index in range(start, stop):
            try:
                self.waveform(index, out=waveforms[len(kept)])
                kept.append(index)
            except AudioDecodeError as error:
                skipped.append((self.examples[index].path, str(error)))
        return DecodedChunk(waveforms[:len(kept)], kept, skipped)

    def chunks(self, size: int = STAGE_CHUNK_CLIPS) -> Iterator[Callable[[], DecodedChunk]]:
        """Deferred decoding of consecutive chunks of `size` examples."""
        for start in range(0, len(self.examples), size):
            yield functools.partial(self.chunk, start, min(start + size, len(self.examples)))


def decode_examples(
    examples: Sequence[Example], data_dir: Path, spec: AudioSpec
) -> Iterator[tuple[int, np.ndarray | None, str]]:
    """Yields (index, waveform or None, error) for each example, decoding noise files once."""
    decoder = ExampleDecoder(examples, data_dir, spec)
    for index in range(len(examples)):
        try:
            yield index, decoder.waveform(index), ""
        except AudioDecodeError as error:
            yield index, None, str(error)


def waveform_chunks(waveforms: np.ndarray, size: int = STAGE_CHUNK_CLIPS
                    ) -> Iterator[Callable[[], DecodedChunk]]:
    """Chunks of an array of ready waveforms, in the form `extract_features` takes."""
    for start in range(0, len(waveforms), size):
        stop = min(start + size, len(waveforms))
        yield lambda a=start, b=stop: DecodedChunk(
            np.asarray(waveforms[a:b], np.float32), list(range(a, b)), [])


class Moments:
    """Running per-coefficient mean and variance (Chan et al.'s parallel update, float64)."""

    def __init__(self, width: int):
        self.count = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)

    def update(self, frames: np.ndarray) -> None:
        values = frames.reshape(-1, frames.shape[-1])
        if not len(values):
            return
        # float64 sums of the float32 rows, without a float64 copy of the block
        count, mean = len(values), values.mean(axis=0, dtype=np.float64)
        deviations = values - mean.astype(values.dtype)
        m2 = np.einsum("ij,ij->j", deviations, deviations, dtype=np.float64)
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + m2 + np.square(delta) * self.count * count / total
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)


def extract_features(
    chunks: Iterable[Callable[[], DecodedChunk]],
    total: int,
    config: MfccConfig,
    out: Path | None = None,
    desc: str = "MFCC",
    workers: int | None = None,
) -> SplitFeatures:
    """The feature stage: chunks decoded and turned into MFCC frames on worker threads, side
    by side, and written in order.

    Args:
        chunks: Deferred decoders of consecutive chunks (`ExampleDecoder.chunks`,
            `waveform_chunks`); they run on `workers` threads, a few chunks ahead, each thread
            computing the frames of the chunk it decoded.
        total: Number of examples the chunks cover (for the progress bar and the output).
        config: Feature configuration.
        out: File the frames are streamed to (raw float32, C order), so that no more than a
            few chunks are ever in memory; None keeps them in memory.
        desc: Label of the progress bar.
        workers: Worker threads (default: one more than the cores, at most MAX_WORKERS: while
            one worker decodes, which holds the GIL for much of it, the others keep the
            cores computing; each holds a chunk's waveforms and frames).

    Returns:
        The frames (memory-mapped from `out` when given), kept indices, skipped examples and
        the per-coefficient moments.
    """
    compute = extractor(config)
    shape = feature_shape(config)
    workers = workers or min((os.cpu_count() or 1) + 1, MAX_WORKERS)

    def frames_of(task: Callable[[], DecodedChunk]) -> tuple[DecodedChunk, np.ndarray | None]:
        chunk = task()
        return chunk, compute(chunk.waveforms) if len(chunk.kept) else None

    moments = Moments(shape[1])
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    with (RowSink(out, total, shape) as sink,
          ThreadPoolExecutor(workers, thread_name_prefix="features") as pool,
          tqdm(total=total, desc=desc, unit="clip") as progress):
        source = iter(chunks)  # the workers stay `workers + 1` chunks ahead
        pending = deque(pool.submit(frames_of, task)
                        for task in itertools.islice(source, workers + 1))
        while pending:
            chunk, block = pending.popleft().result()
            task = next(source, None)
            if task is not None:
                pending.append(pool.submit(frames_of, task))
            for path, reason in chunk.skipped:
                log.warning("skipped %s", reason if path in reason else f"{path}: {reason}")
            skipped += chunk.skipped
            if block is not None:
                moments.update(block)
                sink.write(block)
                kept += chunk.kept
            progress.update(len(chunk.kept) + len(chunk.skipped))
    frames = sink.rows()
    return SplitFeatures(frames, np.asarray(kept, np.int64), skipped, from_cache=False,
                         mean=moments.mean, variance=moments.variance, crc32=sink.crc32)


def compute_features(
    examples: Sequence[Example], data_dir: Path, config: MfccConfig, desc: str = "MFCC",
    out: Path | None = None,
) -> SplitFeatures:
    """Decodes every example and computes its MFCC frames, skipping undecodable clips."""
    decoder = ExampleDecoder(examples, Path(data_dir), config.audio)
    return extract_features(decoder.chunks(), len(examples), config, out, desc)


def compute_waveforms(
    examples: Sequence[Example], data_dir: Path, spec: AudioSpec, out: Path | None = None
) -> SplitFeatures:
    """Decodes every example into a (clips, samples) float32 array, streamed to `out` when
    given, skipping undecodable clips exactly as the feature stage does (so row i of the
    waveforms and of the MFCC frames are the same clip). The moments are left empty."""
    decoder = ExampleDecoder(examples, Path(data_dir), spec)
    return store_waveforms(decoder.chunks(), len(examples), spec.clip_samples, out)


def store_waveforms(
    chunks: Iterable[Callable[[], DecodedChunk]], total: int, clip_samples: int,
    out: Path | None = None,
) -> SplitFeatures:
    """The waveforms of `chunks` (as `extract_features` takes them) as one (clips, samples)
    float32 array, streamed to `out` when given; the moments are left empty."""
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    with RowSink(out, total, (clip_samples,)) as sink:
        for task in chunks:
            chunk = task()
            skipped += chunk.skipped  # the feature stage's own skips, which it logs
            sink.write(chunk.waveforms)
            kept += chunk.kept
    empty = np.zeros(0)
    return SplitFeatures(sink.rows(), np.asarray(kept, np.int64), skipped, from_cache=False,
                         mean=empty, variance=empty, crc32=sink.crc32)


def split_features(
    examples: Sequence[Example],
    data_dir: str | Path,
    config: MfccConfig,
    cache_dir: str | Path | None,
    desc: str = "MFCC",
    content: Mapping[str, str] | None = None,
) -> SplitFeatures:
    """MFCC frames for a split, from the cache when the same data and config were seen before.

    Args:
        examples: The split's examples.
        data_dir: Folder the example paths are relative to.
        config: Feature configuration.
        cache_dir: Cache folder; None disables caching (the frames are then held in memory).
        desc: Label of the progress bar.
        content: SHA-256 of each file's bytes by path, what the cache entry is keyed by
            (size and mtime for a file not in it; see `cache_key`).

    Returns:
        The split's features, with the indices of kept examples and the skipped ones.
    """
    data_dir = Path(data_dir)
    key = cache_key(examples, data_dir, config, content=content) if cache_dir is not None else ""
    return cached_features(
        cache_dir, key, lambda out: compute_features(examples, data_dir, config, desc, out))


def split_waveforms(
    examples: Sequence[Example], data_dir: str | Path, config: MfccConfig,
    cache_dir: str | Path | None, content: Mapping[str, str] | None = None,
) -> SplitFeatures:
    """Decoded waveforms of a split (for augmentation, which needs audio, not frames), cached
    like the frames (`content` as there); `frames` holds the (clips, samples) waveforms, rows
    aligned with `split_features`' rows."""
    data_dir = Path(data_dir)
    spec = config.audio
    key = (cache_key(examples, data_dir, config, "waveforms", content)
           if cache_dir is not None else "")
    return cached_features(
        cache_dir, key, lambda out: compute_waveforms(examples, data_dir, spec, out))
