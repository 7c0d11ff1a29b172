"""IMDB reviews through tensorflow-datasets (`imdb_reviews/plain_text`).

Each review's id is `<split>/<index>` in the TFDS split. Reviews are decoded and skipped as the
folder reader decodes and skips them (`features.imdb.decode_review` and `unusable`): UTF-8 with
undecodable bytes replaced (noted); empty ones, and those with no text outside HTML tags,
skipped. The splits are composed as the
folder reader's (`features.imdb.composed_imdb`): reviews with identical text are kept once,
test before train, and within a split the first by id (in string order); every dropped copy is
skipped as "duplicate of <kept id>", before validation is carved out of train, so that no text
is in two splits. The `unsupervised` split (50,000 unlabelled reviews) is read only when asked
for, as the folder reader reads `train/unsup/`.
"""

from __future__ import annotations

import logging

from features.imdb import UNLABELLED, ImdbData, add_review, composed_imdb
from features.tfds_source import (
    prepared_builder,
    prepared_version,
    reading_copy,
    require_splits,
)

log = logging.getLogger(__name__)

TFDS_NAME = "imdb_reviews"


def download_url() -> str:
    """URL the TFDS builder downloads the aclImdb archive from."""
    # on use, like tensorflow_datasets itself
    from tensorflow_datasets.datasets.imdb_reviews import imdb_reviews_dataset_builder

    return imdb_reviews_dataset_builder._DOWNLOAD_URL


def imdb_builder(data_dir: str | None):
    """The prepared TFDS builder.

    Raises:
        DatasetUnavailableError: Not prepared in `data_dir` and the download host is unreachable.
    """
    return prepared_builder(
        TFDS_NAME, data_dir, download_url(), size="~80 MB",
        alternative="train from a local copy with --source folder --data-dir PATH (the "
        "extracted aclImdb_v1.tar.gz archive)")


def read_tfds_imdb(data_dir: str | None, *, validation_pct: float, seed: int,
                   unlabelled: bool = False) -> ImdbData:
    """Reads `train` and `test`, drops duplicate reviews and carves validation out of
    `train`, as the folder reader does (see the module docstring); with `unlabelled`, the
    `unsupervised` split too (copies of labelled reviews dropped).

    Raises:
        DatasetUnavailableError: Not prepared in `data_dir` and the download host is unreachable.
        DataError: The prepared copy lacks a split or one of its files.
    """
    import tensorflow_datasets as tfds  # on use: seconds to import, only --source tfds

    builder = imdb_builder(data_dir)
    names = builder.info.features["label"].names
    splits, skipped, replaced = {}, [], []
    if unlabelled and "unsupervised" not in builder.info.splits:
        log.warning("%s has no 'unsupervised' split: pretraining reads the training reviews "
                    "only", builder.data_dir)
        unlabelled = False
    read = ("train", "test", *(("unsupervised",) if unlabelled else ()))
    require_splits(builder, read)
    with reading_copy(builder):
        for split in read:
            reviews = []
            for index, example in enumerate(tfds.as_numpy(builder.as_dataset(split=split))):
                label = (UNLABELLED if split == "unsupervised"
                         else names[int(example["label"])])
                add_review(example["text"], label, f"{split}/{index}", reviews, skipped,
                           replaced)
            splits[split] = reviews
    return composed_imdb(
        splits["train"], splits["test"], splits.get("unsupervised", []), skipped=skipped,
        replaced=replaced, source=f"tfds://{TFDS_NAME}/{prepared_version(TFDS_NAME, data_dir)}",
        validation_pct=validation_pct, seed=seed)
