"""The Large Movie Review Dataset (aclImdb): reviews, labels and stable splits.

Official layout: `train/{pos,neg}/<id>_<rating>.txt` and `test/{pos,neg}/<id>_<rating>.txt`;
`train/unsup/` (unlabelled) is ignored. The validation split is carved out of `train`,
stratified by label and seeded, so the test split stays the release's own.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

LABELS = ("neg", "pos")
_FILE_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")


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
    """

    splits: dict[str, list[Review]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    source: str = ""
    split_method: str = ""
    labels: tuple[str, ...] = LABELS

    def digest(self, split: str) -> str:
        """Content digest of a split: every review's id, label and text."""
        hasher = hashlib.sha256()
        for review in self.splits[split]:
            hasher.update(f"{review.path}|{review.label}|".encode())
            hasher.update(hashlib.sha256(review.text.encode()).digest())
        return hasher.hexdigest()[:16]

    def class_counts(self) -> dict[str, dict[str, int]]:
        counts = {}
        for split, reviews in self.splits.items():
            per_label = Counter(review.label for review in reviews)
            counts[split] = {label: per_label.get(label, 0) for label in self.labels}
        return counts


def rating_of(name: str) -> int | None:
    """The star rating in an official file name `<id>_<rating>.txt`, or None."""
    match = _FILE_NAME.match(name)
    return int(match.group(2)) if match else None


def read_review(path: Path) -> tuple[str, bool]:
    """The text of a review file and whether undecodable bytes had to be replaced."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def read_split_folder(data_dir: Path, split: str) -> tuple[list[Review], list[tuple[str, str]],
                                                             list[str]]:
    """Reads `<data_dir>/<split>/{neg,pos}/*.txt`.

    Returns:
        (reviews sorted by path, skipped (path, reason), paths with replaced bytes).

    Raises:
        ValueError: A label folder is missing or holds no .txt files.
    """
    reviews, skipped, replaced = [], [], []
    for label in LABELS:
        folder = data_dir / split / label
        if not folder.is_dir():
            raise ValueError(
                f"{folder} is missing; expected the aclImdb layout "
                f"<data-dir>/{{train,test}}/{{neg,pos}}/<id>_<rating>.txt")
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise ValueError(f"{folder} holds no .txt reviews")
        for path in files:
            relative = path.relative_to(data_dir).as_posix()
            text, was_replaced = read_review(path)
            if not text.strip():
                skipped.append((relative, "empty review"))
                continue
            if was_replaced:
                replaced.append(relative)
            reviews.append(Review(text, label, relative, rating_of(path.name)))
    return reviews, skipped, replaced


def carve_validation(reviews: Sequence[Review], validation_pct: float, seed: int
                     ) -> tuple[list[Review], list[Review]]:
    """Splits off a stratified, seeded validation share of `reviews`.

    Returns:
        (train, validation), each in the input order.

    Raises:
        ValueError: `validation_pct` is not in (0, 100), or a label has too few reviews.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < validation_pct < 100:
        raise ValueError(f"validation_pct must be between 0 and 100, got {validation_pct}")
    indices = list(range(len(reviews)))
    try:
        train, validation = train_test_split(
            indices, test_size=validation_pct / 100, random_state=seed,
            stratify=[review.label for review in reviews])
    except ValueError as error:
        raise ValueError(f"cannot carve a {validation_pct} % stratified validation split out of "
                         f"{len(reviews)} training reviews: {error}") from error
    return [reviews[i] for i in sorted(train)], [reviews[i] for i in sorted(validation)]


def load_imdb(data_dir: str | Path, *, validation_pct: float = 10.0, seed: int = 0) -> ImdbData:
    """Reads an aclImdb folder into train/validation/test reviews.

    Args:
        data_dir: Folder holding `train/` and `test/`.
        validation_pct: Share of `train` held out for validation (stratified by label).
        seed: Seed of the validation carve-out.

    Raises:
        FileNotFoundError: `data_dir` does not exist.
        ValueError: The layout is not aclImdb's.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"IMDB data folder {data_dir} does not exist")
    train, skipped, replaced = read_split_folder(data_dir, "train")
    test, test_skipped, test_replaced = read_split_folder(data_dir, "test")
    train, validation = carve_validation(train, validation_pct, seed)
    return ImdbData(
        {"train": train, "validation": validation, "test": test},
        skipped + test_skipped, replaced + test_replaced, str(data_dir.resolve()),
        f"stratified {validation_pct:g} % of train, seed {seed}")
