"""Reader for the official Speech Commands layout (v0.01 and v0.02).

Layout: `<word>/<speaker>_nohash_<n>.wav`, `_background_noise_/*.wav`, and optionally
`validation_list.txt` / `testing_list.txt`. The standard 12-class task keeps the ten command
words, maps every other word to `_unknown_` and cuts `_silence_` clips from the background noise.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

COMMAND_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE_LABEL = "_silence_"
UNKNOWN_LABEL = "_unknown_"
# label ids of the 12-class task, in this order
TWELVE_CLASS_LABELS = (SILENCE_LABEL, UNKNOWN_LABEL, *COMMAND_WORDS)
BACKGROUND_NOISE_DIR = "_background_noise_"
SPLITS = ("train", "validation", "test")
TASKS = ("12-class", "all-words")
LIST_FILES = {"validation": "validation_list.txt", "test": "testing_list.txt"}
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1  # as in TensorFlow's speech_commands example


@dataclass(frozen=True)
class Example:
    """One item of a split.

    Attributes:
        label: Class name.
        path: Clip path relative to the data directory, or for silence the noise recording.
        offset: For silence windows, the start sample in the noise recording; -1 otherwise.
        rms: For silence windows, the RMS level the window is scaled to.
    """

    label: str
    path: str
    offset: int = -1
    rms: float = 0.0

    @property
    def is_silence(self) -> bool:
        return self.offset >= 0


@dataclass(frozen=True)
class SpeechCommandsData:
    """A task's examples per split, its label names and where they came from."""

    data_dir: Path
    labels: tuple[str, ...]
    examples: dict[str, list[Example]]
    split_method: str
    listed_missing: int = 0
    notes: list[str] = field(default_factory=list)

    def digest(self, splits: tuple[str, ...] = SPLITS) -> str:
        """A content digest of the given splits: file names, sizes, labels and silence windows."""
        hasher = hashlib.sha256()
        for split in splits:
            for example in self.examples[split]:
                size = (self.data_dir / example.path).stat().st_size
                hasher.update(
                    f"{split}|{example.label}|{example.path}|{size}|{example.offset}|"
                    f"{example.rms:.6g}\n".encode()
                )
        return hasher.hexdigest()[:16]

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Number of examples per class for each split."""
        return {
            split: {label: sum(e.label == label for e in items) for label in self.labels}
            for split, items in self.examples.items()
        }


def speaker_of(filename: str) -> str:
    """The speaker part of a clip name: everything before `_nohash_`."""
    return re.sub(r"_nohash_.*$", "", Path(filename).name)


def which_set(filename: str, validation_pct: float, test_pct: float) -> str:
    """Assigns a clip to a split by hashing its speaker, as TensorFlow's example does.

    Args:
        filename: Clip file name or path.
        validation_pct: Share of speakers for validation, in percent.
        test_pct: Share of speakers for test, in percent.

    Returns:
        "train", "validation" or "test"; all clips of one speaker land in the same split.
    """
    hashed = hashlib.sha1(speaker_of(filename).encode()).hexdigest()
    percentage = (int(hashed, 16) % (MAX_NUM_WAVS_PER_CLASS + 1)) * (
        100.0 / MAX_NUM_WAVS_PER_CLASS
    )
    if percentage < validation_pct:
        return "validation"
    if percentage < validation_pct + test_pct:
        return "test"
    return "train"


def list_word_clips(data_dir: Path) -> dict[str, list[str]]:
    """Lists `<word>/*.wav` clips as paths relative to `data_dir`.

    Raises:
        FileNotFoundError: `data_dir` does not exist.
        ValueError: there are no word folders, or a word folder holds no WAV files.
    """
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"Speech Commands directory not found: {data_dir} (pass --data-dir or set "
            "SPEECH_COMMANDS_DIR to a folder in the official "
            "<word>/<speaker>_nohash_<n>.wav layout)"
        )
    words = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("_"))
    if not words:
        raise ValueError(f"{data_dir}: no word folders found (expected <word>/*.wav)")
    clips = {}
    for word_dir in words:
        files = sorted(f"{word_dir.name}/{p.name}" for p in word_dir.glob("*.wav"))
        if not files:
            raise ValueError(f"{word_dir}: word folder holds no .wav files")
        clips[word_dir.name] = files
    return clips


def read_list(path: Path) -> set[str] | None:
    """Reads a split list (one relative path per line); None when the file is absent."""
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def assign_splits(
    data_dir: Path, clips: list[str], validation_pct: float, test_pct: float
) -> tuple[dict[str, list[str]], str, int]:
    """Splits clips by the official lists where present, by speaker hash otherwise.

    Returns:
        (clips per split, the method used, how many listed files do not exist).
    """
    lists = {split: read_list(data_dir / name) for split, name in LIST_FILES.items()}
    present = set(clips)
    listed_missing = sum(
        len(listed - present) for listed in lists.values() if listed is not None
    )
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    for clip in clips:
        hashed = None
        split = "train"
        for name in ("test", "validation"):
            listed = lists[name]
            if listed is not None:
                if clip in listed:
                    split = name
                    break
            else:
                hashed = hashed or which_set(clip, validation_pct, test_pct)
                if hashed == name:
                    split = name
                    break
        splits[split].append(clip)
    present_lists = [name for name, listed in lists.items() if listed is not None]
    method = "lists" if len(present_lists) == 2 else "hash" if not present_lists else "lists+hash"
    return splits, method, listed_missing


def noise_recordings(data_dir: Path, sample_rate: int) -> dict[str, int]:
    """Maps each `_background_noise_` recording (relative path) to its length at `sample_rate`."""
    noise_dir = data_dir / BACKGROUND_NOISE_DIR
    lengths = {}
    for path in sorted(noise_dir.glob("*.wav")):
        info = soundfile.info(str(path))
        lengths[f"{BACKGROUND_NOISE_DIR}/{path.name}"] = int(info.duration * sample_rate)
    return lengths


def silence_examples(
    count: int,
    noise: dict[str, int],
    clip_samples: int,
    rms_range: tuple[float, float],
    rng: np.random.Generator,
) -> list[Example]:
    """Cuts `count` one-clip windows from noise recordings at log-uniform random RMS levels.

    The official test release's `_silence_` clips range from near digital silence to louder than
    most speech (RMS up to about 0.33), far above the raw noise recordings, so the level is drawn
    over that whole range rather than kept at the recordings' own.
    """
    usable = [name for name, length in noise.items() if length >= clip_samples]
    if count and not usable:
        raise ValueError(
            f"_silence_ needs {BACKGROUND_NOISE_DIR}/*.wav recordings of at least one clip length;"
            " none found"
        )
    low, high = np.log(rms_range[0]), np.log(rms_range[1])
    examples = []
    for _ in range(count):
        name = usable[rng.integers(len(usable))]
        offset = int(rng.integers(noise[name] - clip_samples + 1))
        rms = float(np.exp(rng.uniform(low, high)))
        examples.append(Example(SILENCE_LABEL, name, offset, rms))
    return examples


def load_speech_commands(
    data_dir: str | Path,
    *,
    task: str = "12-class",
    validation_pct: float = 10.0,
    test_pct: float = 10.0,
    unknown_pct: float = 10.0,
    silence_pct: float = 10.0,
    silence_rms: tuple[float, float] = (1e-4, 0.4),
    sample_rate: int = 16000,
    clip_samples: int = 16000,
    seed: int = 0,
) -> SpeechCommandsData:
    """Lists a Speech Commands folder and composes the task's splits.

    Args:
        data_dir: Folder in the official layout.
        task: "12-class" (ten words, `_silence_`, `_unknown_`) or "all-words".
        validation_pct: Validation share for the hash split (used when a list is absent).
        test_pct: Test share for the hash split (used when a list is absent).
        unknown_pct: `_unknown_` examples per split, in percent of that split's command words.
        silence_pct: `_silence_` examples per split, in percent of that split's command words.
        silence_rms: Range of RMS levels for silence windows (drawn log-uniformly).
        sample_rate: Sample rate clips are converted to.
        clip_samples: Samples per clip.
        seed: Seed for the unknown subsample and the silence windows.

    Returns:
        The examples per split, with labels in model output order.

    Raises:
        FileNotFoundError: `data_dir` does not exist.
        ValueError: Unknown task, or an empty word folder.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid choices: {', '.join(TASKS)}")
    data_dir = Path(data_dir)
    clips = list_word_clips(data_dir)
    all_clips = [clip for files in clips.values() for clip in files]
    split_clips, method, listed_missing = assign_splits(
        data_dir, all_clips, validation_pct, test_pct
    )
    notes = []
    if task == "all-words":
        labels = tuple(clips)
        examples = {
            split: [Example(clip.split("/")[0], clip) for clip in items]
            for split, items in split_clips.items()
        }
        return SpeechCommandsData(data_dir, labels, examples, method, listed_missing, notes)

    missing_words = [word for word in COMMAND_WORDS if word not in clips]
    if missing_words:
        raise ValueError(f"{data_dir}: command word folders missing: {', '.join(missing_words)}")
    labels = TWELVE_CLASS_LABELS
    noise = noise_recordings(data_dir, sample_rate)
    examples = {}
    for index, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, index])
        words = [c for c in split_clips[split] if c.split("/")[0] in COMMAND_WORDS]
        others = [c for c in split_clips[split] if c.split("/")[0] not in COMMAND_WORDS]
        wanted = math.ceil(len(words) * unknown_pct / 100)
        if wanted > len(others):
            notes.append(f"{split}: {wanted} _unknown_ wanted, {len(others)} available")
        unknown = [others[i] for i in rng.permutation(len(others))[:wanted]]
        silence_count = math.ceil(len(words) * silence_pct / 100)
        examples[split] = (
            [Example(c.split("/")[0], c) for c in words]
            + [Example(UNKNOWN_LABEL, c) for c in sorted(unknown)]
            + silence_examples(silence_count, noise, clip_samples, silence_rms, rng)
        )
    return SpeechCommandsData(data_dir, labels, examples, method, listed_missing, notes)


def is_test_release(data_dir: str | Path) -> bool:
    """Whether a folder is in the official test-release layout: one folder per class, with
    `_silence_/` and `_unknown_/` holding clips, and no `_background_noise_/`."""
    data_dir = Path(data_dir)
    return ((data_dir / SILENCE_LABEL).is_dir() or (data_dir / UNKNOWN_LABEL).is_dir()) and \
        not (data_dir / "_background_noise_").is_dir()


def test_release_examples(data_dir: str | Path) -> list[Example]:
    """Every clip of a test-release folder, labelled by its folder (`_unknown_/` files may be
    named `<word>_<speaker>_nohash_<n>.wav`).

    Raises:
        FileNotFoundError: `data_dir` does not exist.
        ValueError: A folder is not one of the 12 classes, or there are no clips.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Speech Commands test folder not found: {data_dir}")
    classes = set(TWELVE_CLASS_LABELS)
    examples = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        if folder.name not in classes:
            raise ValueError(f"{folder}: not one of the 12 test-release classes "
                             f"({', '.join(sorted(classes))})")
        examples += [Example(folder.name, path.relative_to(data_dir).as_posix())
                     for path in sorted(folder.glob("*.wav"))]
    if not examples:
        raise ValueError(f"{data_dir}: no .wav clips in its class folders")
    return examples
