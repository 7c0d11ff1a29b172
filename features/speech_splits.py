"""Which split each clip of a Speech Commands folder belongs to, and which copies are dropped.

The official `validation_list.txt` / `testing_list.txt` place the clips they name; a clip on
both goes to test. Where a list is absent, its clips are split by hashing the speaker part of
the file name (TensorFlow's `which_set`), so a speaker never crosses splits. Clips with
identical bytes are kept once: test before validation before train, and within a split the
first by path, as a copy of a test clip in train would leak the test set into training.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from features.errors import DataError
from features.splits import SPLITS, drop_copies

LIST_FILES = {"validation": "validation_list.txt", "test": "testing_list.txt"}
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1  # as in TensorFlow's speech_commands example
UNREADABLE = "unreadable: "  # in place of the hash of a clip that cannot be read


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


def read_list(path: Path) -> set[str] | None:
    """Reads a split list (one relative path per line); None when the file is absent.

    A byte-order mark is read, as Windows editors write one; `\\` separators and a leading
    `./` are read as the `/`-separated relative paths TensorFlow's lists hold.

    Raises:
        DataError: The file cannot be read, or is not UTF-8 text, named.
    """
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise DataError(f"{path}: cannot be read as a list of clip paths, one per line in "
                        f"UTF-8 ({reason})") from None
    return {listed_path(line) for line in text.splitlines() if line.strip()}


def listed_path(line: str) -> str:
    """A split list's line as the clip path it names: stripped, `/`-separated, no `./`."""
    path = line.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


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
        listed_in = [name for name in ("test", "validation")
                     if lists[name] is not None and clip in lists[name]]
        if listed_in:  # test first, for a clip on both lists
            split = listed_in[0]
        else:  # the hash places clips only in a split whose list is missing
            hashed = which_set(clip, validation_pct, test_pct)
            split = hashed if hashed != "train" and lists[hashed] is None else "train"
        splits[split].append(clip)
    missing_lists = [LIST_FILES[name] for name, names in lists.items() if names is None]
    method = ("lists" if not missing_lists
              else "hash" if len(missing_lists) == 2 else "lists+hash")
    return SplitAssignment(splits, method, missing_lists, listed_missing, listed_twice)


def content_hashes(data_dir: Path, clips: list[str], *, unreadable_ok: bool = False
                   ) -> dict[str, str]:
    """SHA-256 of the bytes of each clip (hex): what duplicate removal compares and the data
    digests are made of. With `unreadable_ok`, a clip that cannot be read has UNREADABLE and
    its path in place of a hash (equal to no other clip's), for what reads it later to name.

    Raises:
        DataError: A clip cannot be read (permissions, a folder named like a clip), named;
            unless `unreadable_ok`.
    """
    hashes = {}
    for clip in clips:
        try:
            with open(data_dir / clip, "rb") as handle:
                hashes[clip] = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as error:
            if not unreadable_ok:
                raise DataError(f"{data_dir / clip}: cannot be read "
                                f"({error.strerror or error})") from None
            hashes[clip] = f"{UNREADABLE}{clip}"
    return hashes


def drop_duplicate_clips(data_dir: Path, split_clips: dict[str, list[str]], *,
                         unreadable_ok: bool = False
                         ) -> tuple[dict[str, list[str]], list[tuple[str, str]], dict[str, str]]:
    """Keeps one copy of each set of byte-identical clips (`features.splits.drop_copies`: test,
    then validation, then train; the first by path within a split); `unreadable_ok` as
    `content_hashes` takes it.

    Returns:
        The clips per split without the dropped copies, (path, "duplicate of <kept>") of
        each dropped copy by path, and the SHA-256 of every kept clip.
    """
    hashes = content_hashes(data_dir, [c for clips in split_clips.values() for c in clips],
                            unreadable_ok=unreadable_ok)
    kept, skipped = drop_copies(split_clips, hashes.__getitem__, str)
    return kept, sorted(skipped), {clip: hashes[clip] for clips in kept.values() for clip in clips}


def split_list_notes(data_dir: Path, assignment: SplitAssignment, validation_pct: float,
                     test_pct: float) -> list[str]:
    """What a folder's split lists leave to note: lists that are missing, clips on both."""
    notes = []
    if assignment.missing_lists:
        notes.append(f"{data_dir}: {' and '.join(assignment.missing_lists)} not found; the "
                     f"clips they would list are split by speaker hash ({validation_pct:g} % "
                     f"validation, {test_pct:g} % test)")
    if assignment.listed_twice:
        notes.append(f"{len(assignment.listed_twice)} clips listed in both "
                     f"{LIST_FILES['validation']} and {LIST_FILES['test']} were put in test, "
                     f"e.g. {', '.join(assignment.listed_twice[:3])}")
    return notes
