"""The speech task's data stage: a Speech Commands folder or tensorflow-datasets' release in,
MFCC frames per split (computed once, cached) with their labels and lineage out.

The training split also yields its per-coefficient moments (the model's normalisation, computed
by the feature stage in the same pass) and, when augmentation needs them, its decoded waveforms,
row for row with its frames. `evaluation_inputs` reads a folder for `evaluate`: the test split of
the training layout, or every clip of the official test-release layout (one folder per class).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features import tfds_speech
from features.audio import AudioDecodeError, decode_recording
from features.errors import (
    ConfigError,
    DataError,
    require_at_least,
    require_data_dir,
    require_folder,
    shown_name,
)
from features.feature_cache import cached_features
from features.mfcc import MfccConfig
from features.speech_commands import (
    BACKGROUND_NOISE_DIR,
    SILENCE_LABEL,
    SPEECH_COMMANDS_ENV,
    TWELVE_CLASS_LABELS,
    UNKNOWN_LABEL,
    Example,
    SplitConfig,
    audio_files,
    examples_digest,
    load_speech_commands,
)
from features.speech_features import (
    decode_examples,
    extract_features,
    source_cache_key,
    split_features,
    split_waveforms,
    store_waveforms,
)
from features.splits import SPLITS, LabelledInputs, Lineage, Splits, require_usable_splits
from features.tfds_source import SOURCES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeechSourceConfig:
    """Data source: where the clips come from, and where their features are kept."""

    data_dir: str | None = field(default=None, metadata={
        "help": "Speech Commands folder in the official layout", "env": SPEECH_COMMANDS_ENV})
    source: str = field(default="folder", metadata={
        "help": "where clips come from: a folder (--data-dir) or tensorflow-datasets' "
                "speech_commands", "choices": SOURCES})
    tfds_data_dir: str | None = field(default=None, metadata={
        "help": "tensorflow-datasets data dir for --source tfds"})
    cache_dir: str = field(default=".cache/features", metadata={
        "help": "feature cache folder"})
    cache: bool = field(default=True, metadata={"help": "read/write the feature cache"})
    in_memory_mb: int = field(default=512, metadata={
        "help": "cached splits with more feature data than this (MB) are streamed from the "
                "cache file during training, not loaded"})

    def __post_init__(self):
        require_at_least(self, {"in_memory_mb": 0})

    @property
    def stream_over_bytes(self) -> int:
        """Memory-mapped splits larger than this are streamed from their file."""
        return self.in_memory_mb * 2**20

    @property
    def cache_folder(self) -> str | None:
        """The feature cache, or None when caching is off."""
        return self.cache_dir if self.cache else None

    def writable_folders(self) -> dict[str, str]:
        return {"feature cache folder": self.cache_dir} if self.cache else {}


@dataclass(frozen=True)
class SpeechData:
    """MFCC frames and labels per split, their lineage, and what training needs besides.

    Attributes:
        splits: Frames (clips, frames, coefficients) and label ids per split.
        lineage: Source, per-split digests, skipped clips and the data summary.
        mean: Per-coefficient mean of the training frames (the model's normalisation).
        variance: Per-coefficient variance of the training frames.
        train_waveforms: The training clips as (clips, samples) waveforms, rows aligned with
            the training frames, for augmentation; None when not asked for.
    """

    splits: Splits
    lineage: Lineage
    mean: np.ndarray
    variance: np.ndarray
    train_waveforms: np.ndarray | None = None


def prepare_speech_data(source: SpeechSourceConfig, splits: SplitConfig, mfcc: MfccConfig,
                        *, waveforms: bool) -> SpeechData:
    """The configured source's splits as MFCC frames (computed, or read from the cache).

    Args:
        source: Where the clips come from and the feature cache.
        splits: How the task's splits are composed.
        mfcc: Feature geometry.
        waveforms: Also return the training split's decoded waveforms.

    Raises:
        ValueError: No data folder, or options the source cannot honour.
        FileNotFoundError: The data folder is missing or not a folder (DataNotFoundError).
        DatasetUnavailableError: --source tfds without prepared data, offline.
    """
    if source.source == "tfds":
        return prepare_tfds(source, splits, mfcc, waveforms=waveforms)
    return prepare_folder(source, splits, mfcc, waveforms=waveforms)


def prepare_folder(source: SpeechSourceConfig, splits: SplitConfig, mfcc: MfccConfig,
                   *, waveforms: bool) -> SpeechData:
    """Reads a Speech Commands folder and computes (or loads cached) MFCC frames per split."""
    require_data_dir(source.data_dir, SPEECH_COMMANDS_ENV, "Speech Commands")
    data = load_speech_commands(source.data_dir, splits, mfcc.audio)  # logs its notes
    counts = data.class_counts()
    leave_out = {UNKNOWN_LABEL: "--unknown-pct 0", SILENCE_LABEL: "--silence-pct 0"}
    none_at_all = [label for label in data.labels if label in leave_out
                   and not any(counts[split].get(label) for split in SPLITS)]
    require_usable_splits(source.data_dir, counts, "".join(
        f"the folder gives no {label} example ({leave_out[label]} trains without that "
        "class); " for label in none_at_all)
        + "give validation_list.txt and testing_list.txt naming clips of the folder, or "
        "change --validation-pct / --test-pct (the speaker-hash split of clips the lists do "
        "not name)")
    index = {label: i for i, label in enumerate(data.labels)}
    x, y, digests, cached = {}, {}, {}, []
    skipped = list(data.skipped)  # dropped duplicates
    train_waveforms = None
    for split in SPLITS:
        examples = data.examples[split]
        features = split_features(examples, data.data_dir, mfcc, source.cache_folder,
                                  desc=f"MFCC {split}", content=data.content_hashes)
        x[split] = features.rows
        y[split] = np.asarray([index[examples[i].label] for i in features.kept], np.int32)
        digests[split] = data.digest((split,))
        skipped += features.skipped
        cached.append(features.from_cache)
        if split == "train":
            moments = features.mean, features.variance
            if waveforms:
                decoded = split_waveforms(examples, data.data_dir, mfcc, source.cache_folder,
                                          data.content_hashes)
                if not np.array_equal(decoded.kept, features.kept):
                    raise DataError("decoded waveforms and cached MFCC frames of the "
                                    "training split disagree on the usable clips; clear "
                                    f"{source.cache_dir} and run again")
                train_waveforms = decoded.rows
    folder = str(data.data_dir.resolve())
    summary = {
        "source": folder,
        "split_method": data.split_method,
        "listed_files_missing": data.listed_missing,
        "listed_files_missing_paths": data.listed_missing_paths,
        "class_counts": data.class_counts(),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "notes": data.notes,
    }
    return SpeechData(Splits(data.labels, x, y),
                      Lineage(folder, digests, tuple(skipped), summary, all(cached)),
                      *moments, train_waveforms)


def prepare_tfds(source: SpeechSourceConfig, splits: SplitConfig, mfcc: MfccConfig,
                 *, waveforms: bool) -> SpeechData:
    """Reads tensorflow-datasets' speech_commands and computes (or loads cached) MFCC frames.

    Each split is streamed from TFDS into the cache in chunks, never held whole; a cache
    entry is keyed by the split's TFDS name (dataset, config, version, split), size and
    labels, and the feature config. The training waveforms augmentation needs are cached the
    same way (keyed by the sample rate and clip length instead of the whole feature config),
    and memory-mapped like the frames.

    Raises:
        ConfigError: Options --source tfds cannot honour.
        DatasetUnavailableError: No prepared dataset, offline.
    """
    if splits.task != "12-class":
        raise ConfigError("--source tfds provides the 12-class task only; use --source "
                          "folder for --task all-words")
    if mfcc.sample_rate != 16000:
        raise ConfigError("--source tfds holds 16 kHz audio; keep --sample-rate 16000")
    releases = tfds_speech.read_tfds_speech_commands(source.tfds_data_dir)
    labels = TWELVE_CLASS_LABELS
    index = {label: i for i, label in enumerate(labels)}
    origin = (f"tfds://{tfds_speech.TFDS_NAME}/"
              f"{tfds_speech.tfds_version(source.tfds_data_dir)}")
    x, y, digests, cached = {}, {}, {}, []
    train_waveforms = None
    for split, data in releases.items():
        digests[split] = data.digest
        name = f"tfds|{data.name}|{digests[split]}"
        features = cached_features(
            source.cache_folder, source_cache_key(name, mfcc),
            lambda out, d=data, s=split: extract_features(
                d.waveform_chunks(mfcc.clip_samples), len(d), mfcc, out, f"MFCC {s}"))
        x[split] = features.rows
        y[split] = np.asarray([index[label] for label in data.labels], np.int32)
        cached.append(features.from_cache)
        if split == "train":
            moments = features.mean, features.variance
            if waveforms:
                train_waveforms = cached_features(
                    source.cache_folder, source_cache_key(name, mfcc, "waveforms"),
                    lambda out, d=data: store_waveforms(
                        d.waveform_chunks(mfcc.clip_samples), len(d), mfcc.clip_samples,
                        out)).rows
    summary = {
        "source": origin,
        "split_method": "tfds",
        "class_counts": {split: {label: data.labels.count(label) for label in labels}
                         for split, data in releases.items()},
        "skipped": [],
    }
    return SpeechData(Splits(labels, x, y), Lineage(origin, digests, (), summary, all(cached)),
                      *moments, train_waveforms)


def background_noise(source: SpeechSourceConfig, sample_rate: int) -> list[np.ndarray]:
    """The `_background_noise_` recordings of a folder source (none for tfds, whose release
    does not ship them), decoded at `sample_rate`; one that does not decode is left out, with
    a warning (the data's notes name it too)."""
    if source.source != "folder":
        return []
    recordings = []
    for path in audio_files(Path(source.data_dir) / BACKGROUND_NOISE_DIR)[0]:
        try:
            recordings.append(decode_recording(path, sample_rate))
        except AudioDecodeError as error:
            log.warning("not mixing in %s", error)
    return recordings


def evaluation_inputs(data_dir: str, splits: SplitConfig, mfcc: MfccConfig,
                      classes: Sequence[str]) -> LabelledInputs:
    """Labelled model inputs from a test-release folder (every clip of the model's `classes`,
    labelled by its folder; the folders of classes a model lacks, such as `_unknown_` for one
    trained with `--unknown-pct 0` or on every word, left out and named in the layout) or a
    training-layout folder (its test split, composed as training composes it).

    Clips go in as file bytes; `_silence_` windows cut from the noise recordings go in as
    waveforms.
    """
    root = Path(data_dir)
    if is_test_release(root):
        examples, layout = test_release_examples(root), "test release (one folder per class)"
        left_out = Counter(e.label for e in examples if e.label not in classes)
        if left_out:
            examples = [example for example in examples if example.label in classes]
            layout = (f"test release (one folder per class) without "
                      f"{', '.join(f'{label}/' for label in sorted(left_out))} "
                      f"({sum(left_out.values())} clips): not classes of the model")
            if not examples:
                raise DataError(f"{root}: no clip of the model's classes "
                                f"({', '.join(classes)}) in its class folders")
        digest = None  # of the bytes read below
    else:
        data = load_speech_commands(root, splits, mfcc.audio, unreadable_ok=True)
        examples, layout = data.examples["test"], "training layout, test split"
        digest = data.digest(("test",))  # a training run's test digest of the same split
    silence = decode_examples([e for e in examples if e.is_silence], root, mfcc.audio)
    rows, hashes, failed = [], {}, {}
    for example in examples:
        if example.is_silence:
            _, waveform, error = next(silence)
            if waveform is None:
                failed[len(rows)] = error
            rows.append({"audio": None, "sample_rate": mfcc.sample_rate,
                         "waveform": None if waveform is None else waveform.tolist()})
            continue
        try:
            audio = (root / example.path).read_bytes()
        except OSError as error:
            audio, failed[len(rows)] = None, (f"{root / example.path}: cannot be read "
                                              f"({error.strerror or error})")
        if digest is None:
            hashes[example.path] = hashlib.sha256(audio or b"").hexdigest()
        rows.append({"audio": audio, "waveform": None,
                     "sample_rate": None if audio is None else mfcc.sample_rate})
    names = [str(root / example.path) if not example.is_silence
             else f"{root / example.path}@{example.offset}" for example in examples]
    return LabelledInputs(pd.DataFrame(rows, columns=["audio", "waveform", "sample_rate"]),
                          [example.label for example in examples], names,
                          digest or examples_digest({"test": examples}, hashes),
                          str(root.resolve()), layout, failed)


def is_test_release(data_dir: str | Path) -> bool:
    """Whether a folder is in the official test-release layout: one folder per class, a
    `_silence_/` or `_unknown_/` folder among them, and no `_background_noise_/`."""
    data_dir = Path(data_dir)
    return ((data_dir / SILENCE_LABEL).is_dir() or (data_dir / UNKNOWN_LABEL).is_dir()) and \
        not (data_dir / BACKGROUND_NOISE_DIR).is_dir()


def test_release_examples(data_dir: str | Path) -> list[Example]:
    """Every clip of a test-release folder, labelled by its folder (`_unknown_/` files may be
    named `<word>_<speaker>_nohash_<n>.wav`).

    Raises:
        FileNotFoundError: `data_dir` is not a folder (DataNotFoundError).
        ValueError: A folder is not one of the 12 classes, or there are no clips.
    """
    data_dir = require_folder(data_dir, "Speech Commands test folder")
    classes = set(TWELVE_CLASS_LABELS)
    examples, unread = [], []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        if folder.name not in classes:
            raise DataError(f"{folder}: not one of the 12 test-release classes "
                             f"({', '.join(sorted(classes))})")
        audio, other = audio_files(folder)
        examples += [Example(folder.name, path.relative_to(data_dir).as_posix())
                     for path in audio]
        unread += [shown_name(path.relative_to(data_dir).as_posix()) for path in other]
    if unread:
        log.warning("%s: %d entries of class folders are not clips and were not read, e.g. %s",
                    data_dir, len(unread), ", ".join(unread[:3]))
    if not examples:
        raise DataError(f"{data_dir}: no audio clips in its class folders")
    return examples
