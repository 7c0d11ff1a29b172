"""Reader for the official Speech Commands layout (v0.01 and v0.02).

Layout: `<word>/<speaker>_nohash_<n>.wav`, `_background_noise_/*.wav`, and optionally
`validation_list.txt` / `testing_list.txt`. The standard 12-class task keeps the ten command
words, maps every other word to `_unknown_` and cuts `_silence_` clips from the background noise.

What a damaged or unusual folder does (each note is also logged as a warning):

- an empty word folder is left out and noted, unless the task needs the word (a command word of
  the 12-class task), which is a `ValueError` naming the folder;
- a missing split list is noted once; the clips it would have placed are split by speaker hash;
- listed files that do not exist are counted, and the first `MAX_LISTED_PATHS` kept by name;
- a clip on both lists goes to test (noted);
- clips with identical bytes are kept once, test before validation before train, and within a
  split the first by path; every dropped copy is in `skipped` as "duplicate of <kept path>", as
  a copy of a test clip in train would leak the test set into training.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

log = logging.getLogger(__name__)

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
MAX_LISTED_PATHS = 20  # listed-but-missing paths kept by name (all are counted)
SPLIT_PRIORITY = ("test", "validation", "train")  # which split keeps a duplicated clip


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
    """A task's examples per split, its label names and where they came from.

    Attributes:
        data_dir: The folder read.
        labels: Class names in model output order.
        examples: "train", "validation", "test" -> examples.
        split_method: "lists", "hash", or "lists+hash" (one list missing).
        listed_missing: How many names on the split lists have no file.
        notes: What reading the folder noticed (left-out folders, missing lists, ...).
        listed_missing_paths: The first `MAX_LISTED_PATHS` of those names, sorted.
        skipped: (path, reason) of each clip left out, e.g. a duplicate's dropped copy.
    """

    data_dir: Path
    labels: tuple[str, ...]
    examples: dict[str, list[Example]]
    split_method: str
    listed_missing: int = 0
    notes: list[str] = field(default_factory=list)
    listed_missing_paths: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

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
    """Lists `<word>/*.wav` clips as paths relative to `data_dir`; a word folder without clips
    maps to an empty list (the task decides whether it can do without it).

    Raises:
        FileNotFoundError: `data_dir` does not exist.
        ValueError: there are no word folders, or none holds a WAV file.
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
    clips = {word_dir.name: sorted(f"{word_dir.name}/{p.name}" for p in word_dir.glob("*.wav"))
             for word_dir in words}
    if not any(clips.values()):
        raise ValueError(f"{data_dir}: no word folder holds .wav files (expected <word>/*.wav)")
    return clips


def read_list(path: Path) -> set[str] | None:
    """Reads a split list (one relative path per line); None when the file is absent."""
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


@dataclass
class SplitAssignment:
    """Clips per split and what the split lists said about the folder.

    Attributes:
        clips: "train", "validation", "test" -> clip paths.
        method: "lists", "hash", or "lists+hash" (one list missing).
        missing_lists: Names of the absent list files.
        listed_missing: Listed names without a file, sorted.
        listed_twice: Clips on both lists (placed in test), sorted.
    """

    clips: dict[str, list[str]]
    method: str
    missing_lists: list[str]
    listed_missing: list[str]
    listed_twice: list[str]


def assign_splits(
    data_dir: Path, clips: list[str], validation_pct: float, test_pct: float
) -> SplitAssignment:
    """Splits clips by the official lists where present, by speaker hash otherwise; a clip on
    both lists goes to test."""
    lists = {split: read_list(data_dir / name) for split, name in LIST_FILES.items()}
    present = set(clips)
    listed = [names for names in lists.values() if names is not None]
    listed_missing = sorted(set().union(*listed) - present)
    listed_twice = (sorted(lists["validation"] & lists["test"] & present)
                    if len(listed) == 2 else [])
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    for clip in clips:
        hashed = None
        split = "train"
        for name in ("test", "validation"):
            if lists[name] is not None:
                if clip in lists[name]:
                    split = name
                    break
            else:
                hashed = hashed or which_set(clip, validation_pct, test_pct)
                if hashed == name:
                    split = name
                    break
        splits[split].append(clip)
    missing_lists = [LIST_FILES[name] for name, names in lists.items() if names is None]
    method = ("lists" if not missing_lists
              else "hash" if len(missing_lists) == 2 else "lists+hash")
    return SplitAssignment(splits, method, missing_lists, listed_missing, listed_twice)


def content_hashes(data_dir: Path, clips: list[str]) -> dict[str, str]:
    """SHA-256 of the bytes of each clip that shares its file size with another clip (only
    those can be exact copies); the other clips are left out."""
    by_size: dict[int, list[str]] = {}
    for clip in clips:
        by_size.setdefault((data_dir / clip).stat().st_size, []).append(clip)
    hashes = {}
    for group in by_size.values():
        if len(group) < 2:
            continue
        for clip in group:
            with open(data_dir / clip, "rb") as handle:
                hashes[clip] = hashlib.file_digest(handle, "sha256").hexdigest()
    return hashes


def drop_duplicate_clips(data_dir: Path, split_clips: dict[str, list[str]]
                         ) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Keeps one copy of each set of byte-identical clips: the one in the first split of
    `SPLIT_PRIORITY` that holds a copy, and within that split the first by path.

    Returns:
        (the clips per split without the dropped copies, (path, "duplicate of <kept>") of each).
    """
    hashes = content_hashes(data_dir, [c for clips in split_clips.values() for c in clips])
    kept_by_hash: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for split in SPLIT_PRIORITY:
        for clip in sorted(split_clips[split]):
            digest = hashes.get(clip)
            if digest is None:
                continue
            if digest in kept_by_hash:
                dropped[clip] = kept_by_hash[digest]
            else:
                kept_by_hash[digest] = clip
    kept = {split: [c for c in clips if c not in dropped] for split, clips in split_clips.items()}
    skipped = [(clip, f"duplicate of {original}") for clip, original in sorted(dropped.items())]
    return kept, skipped


def add_note(notes: list[str], message: str) -> None:
    """Records a note about the folder and logs it as a warning."""
    notes.append(message)
    log.warning("%s", message)


def drop_empty_words(data_dir: Path, clips: dict[str, list[str]], task: str,
                     notes: list[str]) -> dict[str, list[str]]:
    """Leaves out (and notes) word folders without clips.

    Raises:
        ValueError: The folder of a word the task needs (a 12-class command word) is empty.
    """
    empty = [word for word, files in clips.items() if not files]
    needed = [word for word in empty if task == "12-class" and word in COMMAND_WORDS]
    if needed:
        raise ValueError(
            f"{', '.join(str(data_dir / word) for word in needed)}: command word folder holds "
            "no .wav files (the 12-class task needs <word>/*.wav clips of every command word)")
    for word in empty:
        add_note(notes, f"{data_dir / word}: word folder holds no .wav files; left out")
    return {word: files for word, files in clips.items() if files}


def report_split_lists(data_dir: Path, assignment: SplitAssignment, validation_pct: float,
                       test_pct: float, notes: list[str]) -> None:
    """Notes missing split lists and clips on both lists; logs listed files that do not exist."""
    if assignment.missing_lists:
        add_note(notes, f"{data_dir}: {' and '.join(assignment.missing_lists)} not found; "
                 f"the clips they would list are split by speaker hash ({validation_pct:g} % "
                 f"validation, {test_pct:g} % test)")
    if assignment.listed_twice:
        add_note(notes, f"{len(assignment.listed_twice)} clips listed in both "
                 f"{LIST_FILES['validation']} and {LIST_FILES['test']} were put in test, e.g. "
                 f"{', '.join(assignment.listed_twice[:3])}")
    if assignment.listed_missing:
        log.warning("%s: %d files named in the split lists do not exist, e.g. %s", data_dir,
                    len(assignment.listed_missing), ", ".join(assignment.listed_missing[:3]))


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
        The examples per split, with labels in model output order, and what was left out.

    Raises:
        FileNotFoundError: `data_dir` does not exist.
        ValueError: Unknown task, no clips at all, or a command word folder of the 12-class
            task is missing or empty.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid choices: {', '.join(TASKS)}")
    data_dir = Path(data_dir)
    notes: list[str] = []
    clips = drop_empty_words(data_dir, list_word_clips(data_dir), task, notes)
    assignment = assign_splits(
        data_dir, [clip for files in clips.values() for clip in files], validation_pct, test_pct)
    report_split_lists(data_dir, assignment, validation_pct, test_pct, notes)
    split_clips, skipped = drop_duplicate_clips(data_dir, assignment.clips)
    if skipped:
        add_note(notes, f"{len(skipped)} clips are byte-identical copies of others and were "
                 f"left out (kept: test, then validation, then train), e.g. {skipped[0][0]} "
                 f"({skipped[0][1]})")
    found = {"data_dir": data_dir, "split_method": assignment.method,
             "listed_missing": len(assignment.listed_missing), "notes": notes,
             "listed_missing_paths": assignment.listed_missing[:MAX_LISTED_PATHS],
             "skipped": skipped}
    if task == "all-words":
        examples = {
            split: [Example(clip.split("/")[0], clip) for clip in items]
            for split, items in split_clips.items()
        }
        return SpeechCommandsData(labels=tuple(clips), examples=examples, **found)

    missing_words = [word for word in COMMAND_WORDS if word not in clips]
    if missing_words:
        raise ValueError(f"{data_dir}: command word folders missing: {', '.join(missing_words)}")
    noise = noise_recordings(data_dir, sample_rate)
    examples = {}
    for index, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, index])
        words = [c for c in split_clips[split] if c.split("/")[0] in COMMAND_WORDS]
        others = [c for c in split_clips[split] if c.split("/")[0] not in COMMAND_WORDS]
        wanted = math.ceil(len(words) * unknown_pct / 100)
        if wanted > len(others):
            add_note(notes, f"{split}: {wanted} _unknown_ wanted, {len(others)} available")
        unknown = [others[i] for i in rng.permutation(len(others))[:wanted]]
        silence_count = math.ceil(len(words) * silence_pct / 100)
        examples[split] = (
            [Example(c.split("/")[0], c) for c in words]
            + [Example(UNKNOWN_LABEL, c) for c in sorted(unknown)]
            + silence_examples(silence_count, noise, clip_samples, silence_rms, rng)
        )
    return SpeechCommandsData(labels=TWELVE_CLASS_LABELS, examples=examples, **found)


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
