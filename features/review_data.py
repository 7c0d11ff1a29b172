"""The sentiment task's data stage: an aclImdb folder or tensorflow-datasets' imdb_reviews in,
review texts and label ids per split with their lineage out (validation carved out of train),
and the corpus that pretraining reads (the training split's texts and the unlabelled reviews)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features import tfds_imdb
from features.errors import require_data_dir, require_seed
from features.imdb import ImdbData, load_imdb, read_split_folder, reviews_digest
from features.splits import LabelledInputs, Lineage, Splits, require_usable_splits
from features.tfds_source import SOURCES

log = logging.getLogger(__name__)

IMDB_ENV = "IMDB_DATA_DIR"  # the variable that may name the data folder



@dataclass(frozen=True)
class ReviewSourceConfig:
    """Data source: where the reviews come from, and how validation is carved out of train."""

    data_dir: str | None = field(default=None, metadata={
        "help": "aclImdb folder in the official layout", "env": IMDB_ENV})
    source: str = field(default="folder", metadata={
        "help": "where reviews come from: a folder (--data-dir) or tensorflow-datasets' "
                "imdb_reviews", "choices": SOURCES})
    tfds_data_dir: str | None = field(default=None, metadata={
        "help": "tensorflow-datasets data dir for --source tfds"})
    validation_pct: float = field(default=10.0, metadata={
        "help": "share of train held out for validation (stratified)"})
    data_seed: int = field(default=0, metadata={
        "help": "seed of the validation carve-out; kept apart from --seed so runs with other "
                "seeds share their splits"})

    def __post_init__(self):
        require_seed(self, ["data_seed"])


@dataclass(frozen=True)
class Corpus:
    """The texts pretraining reads: the training split's reviews, then the unlabelled ones
    (never a validation or test review).

    Attributes:
        texts: The reviews, training split first.
        digests: "train" and "unlabelled" -> content digest.
        counts: "train" and "unlabelled" -> reviews.
        source: Folder or URL they came from.
    """

    texts: list[str]
    digests: dict[str, str]
    counts: dict[str, int]
    source: str

    @property
    def digest(self) -> str:
        """One digest of both parts: what a pretrained encoder was made from."""
        return "-".join(self.digests.values())


@dataclass(frozen=True)
class ReviewData:
    """Review texts and label ids per split, their lineage, and the pretraining corpus."""

    splits: Splits
    lineage: Lineage
    corpus: Corpus


def read_reviews(source: ReviewSourceConfig, *, unlabelled: bool = False) -> ImdbData:
    """Reads the reviews from the configured source, validation carved out of train, and with
    `unlabelled` the unlabelled reviews too.

    Raises:
        ValueError: No data folder, or a layout that is not aclImdb's.
        FileNotFoundError: The data folder is missing or not a folder (DataNotFoundError).
        DatasetUnavailableError: --source tfds without prepared data, offline.
    """
    if source.source == "tfds":
        return tfds_imdb.read_tfds_imdb(source.tfds_data_dir,
                                        validation_pct=source.validation_pct,
                                        seed=source.data_seed, unlabelled=unlabelled)
    require_data_dir(source.data_dir, IMDB_ENV, "IMDB")
    return load_imdb(source.data_dir, validation_pct=source.validation_pct,
                     seed=source.data_seed, unlabelled=unlabelled)


def review_data(imdb: ImdbData) -> ReviewData:
    """Texts and label ids per split, with the digests and skipped reviews of the reading, and
the pretraining corpus.

    Raises:
        DataError: A split lacks what a run needs (`require_usable_splits`).
    """
    require_usable_splits(imdb.source, imdb.class_counts(),
                          "add reviews, or change --validation-pct (the share of train held "
                          "out for validation)")
    for path, reason in imdb.skipped:
        log.debug("skipped %s: %s", path, reason)
    if imdb.skipped:
        kinds = Counter(reason.split(" of ")[0] for _, reason in imdb.skipped)
        log.warning("skipped %d reviews (%s); each with its reason in data/summary.json",
                    len(imdb.skipped), ", ".join(f"{count} {kind}" for kind, count in
                                                 kinds.most_common()))
    index = {label: i for i, label in enumerate(imdb.labels)}
    x = {split: [review.text for review in reviews] for split, reviews in imdb.splits.items()}
    y = {split: np.asarray([index[review.label] for review in reviews], np.int32)
         for split, reviews in imdb.splits.items()}
    summary = {
        "source": imdb.source,
        "split_method": imdb.split_method,
        "class_counts": imdb.class_counts(),
        "skipped": [{"path": path, "reason": reason} for path, reason in imdb.skipped],
        "undecodable_bytes_replaced": imdb.replaced,
        "unlabelled_reviews": len(imdb.unlabelled),
    }
    digests = {split: imdb.digest(split) for split in imdb.splits}
    corpus = Corpus(
        [*x["train"], *(review.text for review in imdb.unlabelled)],
        {"train": digests["train"], "unlabelled": reviews_digest(imdb.unlabelled)},
        {"train": len(x["train"]), "unlabelled": len(imdb.unlabelled)}, imdb.source)
    return ReviewData(Splits(imdb.labels, x, y),
                      Lineage(imdb.source, digests, tuple(imdb.skipped), summary), corpus)


def evaluation_inputs(data_dir: str) -> LabelledInputs:
    """The `test/{neg,pos}` reviews of an aclImdb folder as labelled model inputs, with the
    reviews skipped (empty, only HTML, duplicates) and their reasons.

    Raises:
        ValueError: A label folder is missing or holds no reviews.
    """
    reviews, skipped, _ = read_split_folder(Path(data_dir), "test")
    return LabelledInputs(
        pd.DataFrame({"text": [review.text for review in reviews]}),
        [review.label for review in reviews], [review.path for review in reviews],
        ImdbData({"test": reviews}).digest("test"), str(Path(data_dir).resolve()),
        "aclImdb test split", skipped=list(skipped))
