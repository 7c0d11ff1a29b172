"""The Large Movie Review Dataset (aclImdb): reviews, labels and stable splits.

Official layout: `train/{pos,neg}/<id>_<rating>.txt` and `test/{pos,neg}/<id>_<rating>.txt`,
plus unlabelled reviews in `train/unsup/<id>_0.txt` (read only when asked for: they feed the
encoder's pretraining, never a split). The validation split is carved out of `train`,
stratified by label and seeded, so the test split stays the release's own.

Review files are read whole, however long (the model truncates token ids to its sequence
length). A review that is empty, whitespace only, or nothing but HTML tags is skipped with its
reason; undecodable bytes are replaced and the file noted. Reviews with identical text are kept
once, test before train, and within a split the first by path; every dropped copy is skipped as
"duplicate of <kept path>". Duplicates are dropped before validation is carved out of train, so
no text is in two splits and the carve-out stays stratified over distinct reviews. An unlabelled
review is skipped the same way when its text is any labelled review's (so no test review enters
pretraining) or an earlier unlabelled one's; a missing `train/unsup/` means none.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

from sklearn.model_selection import train_test_split

from features.errors import ConfigError, DataError, require_folder, shown_name, utf8_name
from features.splits import drop_copies

LABELS = ("neg", "pos")
_FILE_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")
# a tag such as <br />, <i>, </i> or <a href="...">: a name right after "<" or "</", then
# attributes holding no "<" or ">", so that a "<" of the text ("the plot < the acting") keeps
# what follows it; the same pattern in RE2 (features.text's TensorFlow standardisation) and
# re, defined here, in a module without TensorFlow, so that the reader need not load it; the
# space after a tag's name is spelled out, as \s is Unicode whitespace in re and ASCII in RE2
HTML_TAG = r"</?[a-zA-Z][a-zA-Z0-9]*(?:[\t\n\f\r ][^<>]*)?/?>"
HTML_TAG_RE = re.compile(HTML_TAG)
APPLE_DOUBLE = "._"  # what macOS writes beside each file copied to a FAT or network drive
UNLABELLED = "unsup"  # train/unsup/: the release's unlabelled reviews (label "unsup")


@dataclass(frozen=True)
class Review:
    """One labelled review.

    Attributes:
        text: The review, decoded as UTF-8 (undecodable bytes replaced by U+FFFD).
        label: "neg" or "pos".
        path: Path relative to the dataset folder (or a source-specific id).
        rating: The star rating from the file name, or None where the name has none.
    """

    text: str
    label: str
    path: str
    rating: int | None = None


@dataclass
class ImdbData:
    """Reviews per split, plus what reading them skipped or repaired.

    Attributes:
        splits: "train", "validation", "test" -> reviews.
        skipped: (path, reason) of each review left out.
        replaced: Paths of reviews whose undecodable bytes were replaced.
        source: Where the reviews came from (folder or TFDS URL).
        split_method: How validation was made.
        unlabelled: Unlabelled reviews (label "unsup"), when they were read; in no split.
    """

    splits: dict[str, list[Review]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    source: str = ""
    split_method: str = ""
    labels: tuple[str, ...] = LABELS
    unlabelled: list[Review] = field(default_factory=list)

    def digest(self, split: str) -> str:
        """Content digest of a split: every review's id, label and text."""
        return reviews_digest(self.splits[split])

    def class_counts(self) -> dict[str, dict[str, int]]:
        counts = {}
        for split, reviews in self.splits.items():
            per_label = Counter(review.label for review in reviews)
            counts[split] = {label: per_label.get(label, 0) for label in self.labels}
        return counts


def reviews_digest(reviews: Iterable[Review]) -> str:
    """Content digest of reviews: every review's id, label and text, in order."""
    hasher = hashlib.sha256()
    for review in reviews:
        hasher.update(f"{review.path}|{review.label}|".encode())
        hasher.update(hashlib.sha256(review.text.encode()).digest())
    return hasher.hexdigest()[:16]


def rating_of(name: str) -> int | None:
    """The star rating in an official file name `<id>_<rating>.txt`, or None."""
    match = _FILE_NAME.match(name)
    return int(match.group(2)) if match else None


def decode_review(raw: bytes) -> tuple[str, bool]:
    """A review's bytes as UTF-8 text, and whether undecodable bytes had to be replaced.

    Long reviews are not cut here: the model truncates token ids to its sequence length.
    """
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def unusable(text: str) -> str | None:
    """Why a review cannot be trained or scored on (no text, or none outside HTML tags such as
    `<br />`), or None."""
    if not text.strip():
        return "empty review"
    if not HTML_TAG_RE.sub(" ", text).strip():
        return "no text outside HTML tags"
    return None


def read_split_folder(data_dir: Path, split: str, *, drop_duplicates: bool = True
                      ) -> tuple[list[Review], list[tuple[str, str]], list[str]]:
    """Reads `<data_dir>/<split>/{neg,pos}/*.txt`.

    Args:
        data_dir: Folder holding `<split>/`.
        split: "train" or "test".
        drop_duplicates: Skip a review whose text repeats one earlier by path.

    Returns:
        (reviews sorted by path, skipped (path, reason), paths with replaced bytes). A review
        with no text, or none outside HTML tags such as `<br />`, is skipped.

    Raises:
        ValueError: A label folder is missing or holds no .txt files.
    """
    reviews, skipped, replaced = [], [], []
    for label in LABELS:
        folder = data_dir / split / label
        if not folder.is_dir():
            raise DataError(
                f"{folder} is missing; expected the aclImdb layout "
                f"<data-dir>/{{train,test}}/{{neg,pos}}/<id>_<rating>.txt")
        files = review_files(folder)
        if not files:
            raise DataError(f"{folder} holds no .txt reviews")
        read_review_files(data_dir, files, label, reviews, skipped, replaced)
    if not drop_duplicates:
        return reviews, skipped, replaced
    distinct, duplicates = drop_copies({split: reviews}, attrgetter("text"), attrgetter("path"))
    return distinct[split], skipped + duplicates, replaced


def review_files(folder: Path) -> list[Path]:
    """The `.txt` files (in any case) of a label folder, sorted."""
    return sorted(path for path in folder.iterdir()
                  if path.suffix.lower() == ".txt")


def read_review_files(data_dir: Path, files: Iterable[Path], label: str, reviews: list[Review],
                      skipped: list[tuple[str, str]], replaced: list[str]) -> None:
    """Appends each file's review to `reviews`, or its (path, reason) to `skipped` when it
    cannot be read or has no text (empty, or nothing outside HTML tags); paths with replaced
    bytes go to `replaced`. Paths are relative to `data_dir`."""
    for path in files:
        relative = path.relative_to(data_dir).as_posix()
        if not utf8_name(path.name):
            skipped.append((shown_name(relative), "file name is not UTF-8"))
            continue
        if path.name.startswith(APPLE_DOUBLE):
            skipped.append((relative, "macOS metadata (a ._ file), not a review"))
            continue
        try:
            raw = path.read_bytes()
        except OSError as error:  # unreadable (permissions), or a folder named *.txt
            skipped.append((relative, f"cannot be read ({error.strerror or error})"))
            continue
        add_review(raw, label, relative, reviews, skipped, replaced, rating_of(path.name))


def add_review(raw: bytes, label: str, review_id: str, reviews: list[Review],
               skipped: list[tuple[str, str]], replaced: list[str],
               rating: int | None = None) -> None:
    """Appends a review's text (`decode_review`) to `reviews`, or `(review_id, reason)` to
    `skipped` when it has none (`unusable`); an id whose bytes were not all UTF-8 goes to
    `replaced` too. The one rule of both readers: the folder's and TFDS's."""
    text, was_replaced = decode_review(raw)
    reason = unusable(text)
    if reason:
        skipped.append((review_id, reason))
        return
    if was_replaced:
        replaced.append(review_id)
    reviews.append(Review(text, label, review_id, rating))


def read_unlabelled(data_dir: Path) -> tuple[list[Review], list[tuple[str, str]], list[str]]:
    """Reads `<data_dir>/train/unsup/*.txt`, the release's unlabelled reviews (none when the
    folder is absent).

    Returns:
        (reviews sorted by path, skipped (path, reason), paths with replaced bytes); an empty
        or HTML-only review is skipped.
    """
    folder = data_dir / "train" / UNLABELLED
    reviews, skipped, replaced = [], [], []
    if folder.is_dir():
        read_review_files(data_dir, review_files(folder), UNLABELLED, reviews, skipped,
                          replaced)
    return reviews, skipped, replaced


def carve_validation(reviews: Sequence[Review], validation_pct: float, seed: int
                     ) -> tuple[list[Review], list[Review]]:
    """Splits off a stratified, seeded validation share of `reviews`.

    Returns:
        (train, validation), each in the input order.

    Raises:
        ValueError: `validation_pct` is not in (0, 100), or a label has too few reviews.
    """
    if not 0 < validation_pct < 100:
        raise ConfigError(f"validation_pct must be between 0 and 100, got {validation_pct}")
    indices = list(range(len(reviews)))
    try:
        train, validation = train_test_split(
            indices, test_size=validation_pct / 100, random_state=seed,
            stratify=[review.label for review in reviews])
    except ValueError as error:
        raise DataError(f"cannot carve a {validation_pct} % stratified validation split out of "
                         f"{len(reviews)} training reviews: {error}") from error
    return [reviews[i] for i in sorted(train)], [reviews[i] for i in sorted(validation)]


def load_imdb(data_dir: str | Path, *, validation_pct: float, seed: int,
              unlabelled: bool = False) -> ImdbData:
    """Reads an aclImdb folder into train/validation/test reviews.

    Args:
        data_dir: Folder holding `train/` and `test/`.
        validation_pct: Share of `train` held out for validation (stratified by label).
        seed: Seed of the validation carve-out.
        unlabelled: Read `train/unsup/` too (`read_unlabelled`).

    Returns:
        The reviews per split (and the unlabelled ones); `skipped` lists empty or tag-only
        reviews and dropped duplicates.

    Raises:
        FileNotFoundError: `data_dir` is not a folder (DataNotFoundError).
        ValueError: The layout is not aclImdb's.
    """
    data_dir = require_folder(data_dir, "IMDB data folder")
    train, skipped, replaced = read_split_folder(data_dir, "train", drop_duplicates=False)
    test, test_skipped, test_replaced = read_split_folder(data_dir, "test")
    extra, extra_skipped, extra_replaced = read_unlabelled(data_dir) if unlabelled else \
        ([], [], [])
    return composed_imdb(train, test, extra, skipped=skipped + test_skipped + extra_skipped,
                         replaced=replaced + test_replaced + extra_replaced,
                         source=str(data_dir.resolve()), validation_pct=validation_pct,
                         seed=seed)


def composed_imdb(train: list[Review], test: list[Review], unlabelled: list[Review], *,
                  skipped: list[tuple[str, str]], replaced: list[str], source: str,
                  validation_pct: float, seed: int) -> ImdbData:
    """The splits of the reviews a source (the folder, TFDS) read: copies of one text dropped
    across train and test at once (so that each names a kept copy; test's kept first), a
    stratified, seeded validation share carved out of train, and the unlabelled reviews without
    copies of a labelled or an earlier unlabelled one (no test review enters pretraining).

    Args:
        train, test, unlabelled: The reviews read.
        skipped: (path, reason) of each review the reading left out; the dropped copies are
            added, each as "duplicate of <kept path>".
        replaced: Paths with replaced bytes.
        source: Where the reviews came from (the lineage's source).
        validation_pct: Share of `train` held out for validation.
        seed: Seed of the validation carve-out.
    """
    distinct, duplicates = drop_copies(  # unlabelled reviews after the labelled splits
        {"train": train, "test": test, UNLABELLED: unlabelled}, attrgetter("text"),
        attrgetter("path"))
    train, validation = carve_validation(distinct["train"], validation_pct, seed)
    return ImdbData(
        {"train": train, "validation": validation, "test": distinct["test"]},
        skipped + duplicates, replaced, source,
        f"stratified {validation_pct:g} % of train (duplicates dropped first), seed {seed}",
        unlabelled=sorted(distinct[UNLABELLED], key=attrgetter("path")))
