"""Reader for the official Speech Commands layout (v0.01 and v0.02).

Layout: `<word>/<speaker>_nohash_<n>.wav`, `_background_noise_/*.wav`, and optionally
`validation_list.txt` / `testing_list.txt`; clips and recordings may also be FLAC, Ogg or MP3
files (AUDIO_SUFFIXES, in any case). The standard 12-class task keeps the ten command words,
maps every other word to `_unknown_` and cuts `_silence_` clips from the background noise
(`--unknown-pct 0` / `--silence-pct 0` leave either class out of the labels).

What a damaged or unusual folder does (each note is also logged as a warning):

- an empty word folder is left out and noted, unless the task needs the word (a command word of
  the 12-class task), which is a `ValueError` naming the folder; entries of a word folder that
  are not clips (subfolders, other files, names that are not UTF-8) are counted in a note;
- a background-noise recording that does not decode is left out, in `skipped` and noted;
- a missing split list is noted once; the clips it would have placed are split by speaker hash;
- listed files that do not exist are counted, and the first `MAX_LISTED_PATHS` kept by name;
- a clip on both lists goes to test (noted);
- clips with identical bytes are kept once, test before validation before train, and within a
  split the first by path; every dropped copy is in `skipped` as "duplicate of <kept path>", as
  a copy of a test clip in train would leak the test set into training; copies filed under
  another word than the clip kept are noted apart (a labelling error?).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features.audio import AudioDecodeError, AudioSpec, audio_info
from features.errors import (
    ConfigError,
    DataError,
    require_at_least,
    require_folder,
    shown_name,
    utf8_name,
)
from features.speech_splits import (
    assign_splits,
    content_hashes,
    drop_duplicate_clips,
    split_list_notes,
)
from features.splits import SPLITS, copy_kept

log = logging.getLogger(__name__)

COMMAND_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE_LABEL = "_silence_"
UNKNOWN_LABEL = "_unknown_"
# label ids of the 12-class task, in this order
TWELVE_CLASS_LABELS = (SILENCE_LABEL, UNKNOWN_LABEL, *COMMAND_WORDS)
BACKGROUND_NOISE_DIR = "_background_noise_"
SPEECH_COMMANDS_ENV = "SPEECH_COMMANDS_DIR"  # the variable that may name the data folder
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")  # clip files read (libsndfile's formats)
TASKS = ("12-class", "all-words")
MAX_LISTED_PATHS = 20  # listed-but-missing paths kept by name (all are counted)


@dataclass(frozen=True)
class SplitConfig:
    """Split composition: the task's classes and how many examples of each a split gets."""

    task: str = field(default="12-class", metadata={
        "help": "ten words + _silence_ + _unknown_, or every word", "choices": TASKS})
    validation_pct: float = field(default=10.0, metadata={
        "help": "validation share when validation_list.txt is absent"})
    test_pct: float = field(default=10.0, metadata={
        "help": "test share when testing_list.txt is absent"})
    unknown_pct: float = field(default=10.0, metadata={
        "help": "_unknown_ examples per split, % of its command words (0: no _unknown_ class); "
                "--source folder only (tfds holds its own)"})
    silence_pct: float = field(default=10.0, metadata={
        "help": "_silence_ examples per split, % of its command words (0: no _silence_ class); "
                "--source folder only (tfds holds its own)"})
    data_seed: int = field(default=0, metadata={
        "help": "seed of the _unknown_ subsample and _silence_ windows; kept apart from --seed "
                "so runs with other seeds share test data"})
    silence_rms_min: float = field(default=1e-4, metadata={
        "help": "quietest _silence_ level (RMS, full scale = 1)"})
    silence_rms_max: float = field(default=0.4, metadata={
        "help": "loudest _silence_ level (RMS, full scale = 1)"})

    def __post_init__(self):
        for name in ("validation_pct", "test_pct"):
            if not 0 <= getattr(self, name) < 100:
                raise ConfigError(f"{name} must be within [0, 100), got {getattr(self, name)}")
        # the seed only keys NumPy generators (default_rng([data_seed, index])): any size an
        # option takes (64 bits)
        require_at_least(self, {"unknown_pct": 0, "silence_pct": 0, "data_seed": 0})
        if not 0 < self.silence_rms_min <= self.silence_rms_max < math.inf:
            raise ConfigError("silence_rms_min and silence_rms_max must be levels with 0 < min "
                              f"<= max, got {self.silence_rms_min} and {self.silence_rms_max}")


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
        content_hashes: Path -> SHA-256 of the bytes of each kept clip and noise
            recording, for the digests.
    """

    data_dir: Path
    labels: tuple[str, ...]
    examples: dict[str, list[Example]]
    split_method: str
    listed_missing: int = 0
    notes: list[str] = field(default_factory=list)
    listed_missing_paths: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    content_hashes: dict[str, str] = field(default_factory=dict)

    def digest(self, splits: tuple[str, ...] = SPLITS) -> str:
        """A content digest of the given splits (`examples_digest`)."""
        return examples_digest({split: self.examples[split] for split in splits},
                               self.content_hashes)

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Number of examples per class for each split."""
        return {
            split: {label: sum(e.label == label for e in items) for label in self.labels}
            for split, items in self.examples.items()
        }


def audio_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The audio files directly in `folder` (by AUDIO_SUFFIXES, in any case), sorted, and its
    other entries (files of other kinds, subfolders, names that are not UTF-8), which are not
    read; none for a folder that does not exist."""
    audio, other = [], []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        is_audio = (path.suffix.lower() in AUDIO_SUFFIXES and utf8_name(path.name)
                    and not path.is_dir())
        (audio if is_audio else other).append(path)
    return audio, other


def list_word_clips(data_dir: Path, notes: list[str]) -> dict[str, list[str]]:
    """Lists the audio clips of each `<word>/` folder as paths relative to `data_dir`; a word
    folder without clips maps to an empty list (the task decides whether it can do without
    it); what else the word folders hold is counted in `notes`.

    Raises:
        FileNotFoundError: `data_dir` is not a folder (DataNotFoundError).
        ValueError: there are no word folders, or none holds an audio clip.
    """
    require_folder(data_dir, "Speech Commands data folder", f"pass --data-dir or set "
                   f"{SPEECH_COMMANDS_ENV} to a folder in the official "
                   "<word>/<speaker>_nohash_<n>.wav layout")
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("_"))
    words = [folder for folder in folders if utf8_name(folder.name)]
    unread = [f"{shown_name(folder.name)}/" for folder in folders if folder not in words]
    if not words:
        raise DataError(f"{data_dir}: no word folders found (expected <word>/<clip>.wav)")
    clips = {}
    for word_dir in words:
        audio, other = audio_files(word_dir)
        clips[word_dir.name] = [f"{word_dir.name}/{path.name}" for path in audio]
        unread += [f"{word_dir.name}/{shown_name(path.name)}{'/' if path.is_dir() else ''}"
                   for path in other]
    if unread:
        add_note(notes, f"{len(unread)} entries of word folders are not clips and were not read "
                 f"(clips are {'/'.join(AUDIO_SUFFIXES)} files directly in <word>/, named in "
                 f"UTF-8), e.g. {', '.join(unread[:3])}")
    if not any(clips.values()):
        raise DataError(f"{data_dir}: no word folder holds audio clips (expected "
                        "<word>/<clip>.wav)")
    return clips


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
        raise DataError(
            f"{', '.join(str(data_dir / word) for word in needed)}: command word folder holds "
            "no audio clips (the 12-class task needs <word>/*.wav clips of every command word)")
    for word in empty:
        add_note(notes, f"{data_dir / word}: word folder holds no audio clips; left out")
    return {word: files for word, files in clips.items() if files}


def noise_recordings(data_dir: Path, sample_rate: int, skipped: list[tuple[str, str]]
                     ) -> dict[str, int]:
    """Maps each `_background_noise_` recording (relative path) to its length at `sample_rate`;
    one that does not decode, or whose name is not UTF-8, goes to `skipped` as (path, reason)
    instead."""
    noise_dir = data_dir / BACKGROUND_NOISE_DIR
    lengths = {}
    audio, other = audio_files(noise_dir)
    skipped += [(f"{BACKGROUND_NOISE_DIR}/{shown_name(path.name)}", "file name is not UTF-8")
                for path in other if path.suffix.lower() in AUDIO_SUFFIXES
                and not utf8_name(path.name)]
    for path in audio:
        name = f"{BACKGROUND_NOISE_DIR}/{path.name}"
        try:
            lengths[name] = int(audio_info(path).duration * sample_rate)
        except AudioDecodeError as error:
            skipped.append((name, str(error)))
    return lengths


def silence_examples(
    count: int,
    noise: dict[str, int],
    clip_samples: int,
    rms_range: tuple[float, float],
    rng: np.random.Generator,
    noise_dir: Path,
) -> list[Example]:
    """Cuts `count` one-clip windows from noise recordings at log-uniform random RMS levels.

    The official test release's `_silence_` clips range from near digital silence to louder than
    most speech (RMS up to about 0.33), far above the raw noise recordings, so the level is drawn
    over that whole range rather than kept at the recordings' own.
    """
    usable = [name for name, length in noise.items() if length >= clip_samples]
    if count and not usable:
        found = f"all {len(noise)} are shorter" if noise else "it holds none that decodes"
        raise DataError(f"{noise_dir}: _silence_ needs audio recordings of at least one clip "
                        f"length; {found} (a model trained with --silence-pct 0 has no "
                        "_silence_ class)")
    low, high = np.log(rms_range[0]), np.log(rms_range[1])
    examples = []
    for _ in range(count):
        name = usable[rng.integers(len(usable))]
        offset = int(rng.integers(noise[name] - clip_samples + 1))
        rms = float(np.exp(rng.uniform(low, high)))
        examples.append(Example(SILENCE_LABEL, name, offset, rms))
    return examples


def examples_digest(examples: Mapping[str, Sequence[Example]], content_hashes: Mapping[str, str]
                    ) -> str:
    """A content digest of examples per split: each example's label, path and the SHA-256 of
    its bytes (`content_hashes`; for silence, of the noise recording, with the window's offset
    and level), so re-processed audio at the same paths is other data."""
    hasher = hashlib.sha256()
    for split, items in examples.items():
        for example in items:
            hasher.update(f"{split}|{example.label}|{example.path}|"
                          f"{content_hashes[example.path]}|{example.offset}|"
                          f"{example.rms:.6g}\n".encode())
    return hasher.hexdigest()[:16]


def load_speech_commands(data_dir: str | Path, splits: SplitConfig, audio: AudioSpec, *,
                         unreadable_ok: bool = False) -> SpeechCommandsData:
    """Lists a Speech Commands folder and composes the task's splits.

    Args:
        data_dir: Folder in the official layout.
        splits: The task ("12-class": ten words, `_silence_`, `_unknown_`; or "all-words"),
            the hash-split shares used where a list is absent, the `_unknown_` and `_silence_`
            shares of each split (in percent of its command words), the RMS range silence
            windows are drawn from (log-uniformly) and the seed of both draws.
        audio: Sample rate and length of a clip (for the silence windows).
        unreadable_ok: Keep a clip that cannot be read (as evaluation does: whatever reads
            it later names it) rather than refuse the folder.

    Returns:
        The examples per split, with labels in model output order, and what was left out.

    Raises:
        FileNotFoundError: `data_dir` is not a folder (DataNotFoundError).
        ValueError: Unknown task, no clips at all, or a command word folder of the 12-class
            task is missing or empty.
    """
    task = splits.task
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; valid choices: {', '.join(TASKS)}")
    data_dir = Path(data_dir)
    notes: list[str] = []
    clips = drop_empty_words(data_dir, list_word_clips(data_dir, notes), task, notes)
    assignment = assign_splits(
        data_dir, [clip for files in clips.values() for clip in files], splits.validation_pct,
        splits.test_pct)
    for note in split_list_notes(data_dir, assignment, splits.validation_pct, splits.test_pct):
        add_note(notes, note)
    if assignment.listed_missing:
        log.warning("%s: %d files named in the split lists do not exist, e.g. %s", data_dir,
                    len(assignment.listed_missing), ", ".join(assignment.listed_missing[:3]))
    split_clips, skipped, hashes = drop_duplicate_clips(data_dir, assignment.clips,
                                                        unreadable_ok=unreadable_ok)
    if skipped:
        add_note(notes, f"{len(skipped)} clips are byte-identical copies of others and were "
                 f"left out (kept: test, then validation, then train), e.g. {skipped[0][0]} "
                 f"({skipped[0][1]})")
    relabelled = [(path, reason) for path, reason in skipped if (kept := copy_kept(reason))
                  and path.split("/")[0] != kept.split("/")[0]]
    if relabelled:
        add_note(notes, f"{len(relabelled)} of those copies are in another word folder than "
                 "the clip kept, which keeps its own folder's label: a labelling error? e.g. "
                 f"{relabelled[0][0]} ({relabelled[0][1]})")
    found = {"data_dir": data_dir, "split_method": assignment.method,
             "listed_missing": len(assignment.listed_missing), "notes": notes,
             "listed_missing_paths": assignment.listed_missing[:MAX_LISTED_PATHS],
             "skipped": skipped, "content_hashes": hashes}
    if task == "all-words":
        examples = {
            split: [Example(clip.split("/")[0], clip) for clip in items]
            for split, items in split_clips.items()
        }
        return SpeechCommandsData(labels=tuple(clips), examples=examples, **found)

    missing_words = [word for word in COMMAND_WORDS if word not in clips]
    if missing_words:
        raise DataError(f"{data_dir}: command word folders missing: {', '.join(missing_words)} "
                        "(--task all-words trains on the word folders there are)")
    bad_noise: list[tuple[str, str]] = []
    noise = noise_recordings(data_dir, audio.sample_rate, bad_noise)
    if bad_noise:
        skipped += bad_noise
        add_note(notes, f"{len(bad_noise)} {BACKGROUND_NOISE_DIR} recordings do not decode and "
                 f"were left out, e.g. {bad_noise[0][1]}")
    hashes.update(content_hashes(data_dir, list(noise)))  # the _silence_ windows' sources
    examples = twelve_class_examples(split_clips, noise, splits, audio,
                                     data_dir / BACKGROUND_NOISE_DIR, notes)
    left_out = {SILENCE_LABEL: splits.silence_pct == 0, UNKNOWN_LABEL: splits.unknown_pct == 0}
    labels = tuple(label for label in TWELVE_CLASS_LABELS if not left_out.get(label))
    return SpeechCommandsData(labels=labels, examples=examples, **found)


def twelve_class_examples(split_clips: dict[str, list[str]], noise: dict[str, int],
                          splits: SplitConfig, audio: AudioSpec, noise_dir: Path,
                          notes: list[str]) -> dict[str, list[Example]]:
    """Each split's examples of the 12-class task: its command-word clips, a random share of
    its other words' clips as `_unknown_`, and `_silence_` windows cut from the noise
    recordings (each split drawn from its own generator of `--data-seed`); a split with fewer
    other words than its `_unknown_` share is noted."""
    silence_rms = (splits.silence_rms_min, splits.silence_rms_max)
    examples = {}
    for index, split in enumerate(SPLITS):
        rng = np.random.default_rng([splits.data_seed, index])
        words = [c for c in split_clips[split] if c.split("/")[0] in COMMAND_WORDS]
        others = [c for c in split_clips[split] if c.split("/")[0] not in COMMAND_WORDS]
        wanted = math.ceil(len(words) * splits.unknown_pct / 100)
        if wanted > len(others):
            add_note(notes, f"{split}: {wanted} _unknown_ wanted, {len(others)} available")
        unknown = [others[i] for i in rng.permutation(len(others))[:wanted]]
        silence_count = math.ceil(len(words) * splits.silence_pct / 100)
        examples[split] = (
            [Example(c.split("/")[0], c) for c in words]
            + [Example(UNKNOWN_LABEL, c) for c in sorted(unknown)]
            + silence_examples(silence_count, noise, audio.clip_samples, silence_rms, rng,
                               noise_dir)
        )
    return examples

