from __future__ import annotations

from pathlib import Path

import pytest
import tensorflow_datasets as tfds
from mlflow.tracking import MlflowClient

from features.errors import DataError
from features.tfds_imdb import read_tfds_imdb
from features.tfds_source import DatasetUnavailableError
from pipelines import sentiment
from pipelines.sentiment import SentimentConfig
from tests.datasets import review_text


def write_tfds_imdb(data_dir: Path, per_label: dict[str, int], *, copies: bool = False,
                    html_only: bool = False) -> None:
    """Writes a small `imdb_reviews/plain_text` in TFDS' own on-disk format (TFRecord +
    metadata), using the registered builder's feature spec so tfds.builder() reads it as
    prepared. The first train review is empty and the second holds an undecodable byte; with
    `html_only`, the seventh is HTML tags only; with `copies`, the third train review is a copy
    of the first test review and the fourth and fifth are the same review twice."""
    features = tfds.builder("imdb_reviews", data_dir=str(data_dir)).info.features
    splits = {}
    for split, count in per_label.items():
        examples = []
        for label_index, label in enumerate(("neg", "pos")):
            for n in range(count):
                seed = n * 2 + label_index + {"test": 1000, "unsupervised": 2000}.get(split, 0)
                text = review_text(label, seed=seed).encode()
                examples.append((f"{split}-{label}-{n}", {"text": text, "label": label_index}))
        splits[split] = examples
    splits["train"][0] = ("empty", {"text": b"   ", "label": 0})
    splits["train"][1] = ("bad-byte", {"text": b"Awful \xff film", "label": 0})
    if html_only:
        splits["train"][6] = ("html-only", {"text": b"<br /><br />", "label": 0})
    if copies:
        splits["train"][2] = ("test-copy", splits["test"][0][1])
        splits["train"][4] = ("train-copy", splits["train"][3][1])
    if "unsupervised" in splits:  # its first review is a copy of a test review
        splits["unsupervised"] = [(key, {"text": example["text"], "label": -1})
                                  for key, example in splits["unsupervised"]]
        splits["unsupervised"][0] = ("unsup-copy", {"text": splits["test"][1][1]["text"],
                                                    "label": -1})
    tfds.dataset_builders.store_as_tfds_dataset(
        name="imdb_reviews", config="plain_text", version="1.0.0", features=features,
        split_datasets=splits, data_dir=str(data_dir))


def test_reads_the_tfds_format(tmp_path: Path):
    write_tfds_imdb(tmp_path / "tfds", {"train": 10, "test": 4}, html_only=True)
    data = read_tfds_imdb(str(tmp_path / "tfds"), validation_pct=20, seed=0)
    assert {split: len(r) for split, r in data.splits.items()} == {
        "train": 14, "validation": 4, "test": 8}
    assert data.class_counts()["test"] == {"neg": 4, "pos": 4}
    assert sorted(reason for _, reason in data.skipped) == ["empty review",
                                                            "no text outside HTML tags"]
    assert len(data.replaced) == 1 and data.replaced[0].startswith("train/")
    texts = [r.text for split in ("train", "validation") for r in data.splits[split]]
    assert "Awful \ufffd film" in texts
    assert data.source == "tfds://imdb_reviews/1.0.0"


def test_a_partial_copy_is_refused_naming_what_it_lacks(tmp_path: Path):
    """TFDS takes a copy with its metadata for prepared: a split or a file it lacks is named."""
    write_tfds_imdb(tmp_path / "train-only", {"train": 10})
    with pytest.raises(DataError, match=r"imdb_reviews/plain_text/1.0.0 has no test split "
                       r"\(it has train\)"):
        read_tfds_imdb(str(tmp_path / "train-only"), validation_pct=20, seed=0)
    write_tfds_imdb(tmp_path / "tfds", {"train": 10, "test": 4})
    (shard,) = (tmp_path / "tfds").rglob("imdb_reviews-test.tfrecord-*")
    shard.unlink()  # an interrupted copy
    with pytest.raises(DataError, match=f"lacks 1 of the test split's 1 files \\({shard.name}\\)"):
        read_tfds_imdb(str(tmp_path / "tfds"), validation_pct=20, seed=0)


def test_a_damaged_copy_is_refused_naming_it(tmp_path: Path):
    """A shard cut short (a copy interrupted), or metadata that does not parse."""
    write_tfds_imdb(tmp_path / "tfds", {"train": 10, "test": 4})
    (shard,) = (tmp_path / "tfds").rglob("imdb_reviews-train.tfrecord-*")
    whole = shard.read_bytes()
    for cut, reason in ((len(whole) - 5, r"truncated record at \d+' failed with Read less bytes "
                         r"than requested"),
                        (0, "Input dataset was expected to contain 20 elements but contained "
                         "only 0 elements.")):
        shard.write_bytes(whole[:cut])
        with pytest.raises(DataError, match=f"copy in {shard.parent} cannot be read "
                           f"\\({reason}\\): copy it whole again"):
            read_tfds_imdb(str(tmp_path / "tfds"), validation_pct=20, seed=0)
    (info,) = (tmp_path / "tfds").rglob("dataset_info.json")
    info.write_text("{bad")
    with pytest.raises(DataError, match=f"copy in {tmp_path / 'tfds'} cannot be read \\(Failed "
                       "to construct dataset"):
        read_tfds_imdb(str(tmp_path / "tfds"), validation_pct=20, seed=0)


def test_reads_the_unsupervised_split_on_request(tmp_path: Path):
    write_tfds_imdb(tmp_path / "tfds", {"train": 10, "test": 4, "unsupervised": 3})
    plain = read_tfds_imdb(str(tmp_path / "tfds"), validation_pct=20, seed=0)
    assert plain.unlabelled == []
    data = read_tfds_imdb(str(tmp_path / "tfds"), validation_pct=20, seed=0, unlabelled=True)
    assert len(data.unlabelled) == 5 and {r.label for r in data.unlabelled} == {"unsup"}
    assert all(r.path.startswith("unsupervised/") for r in data.unlabelled)
    (copy,) = [(path, reason) for path, reason in data.skipped if path.startswith("unsup")]
    assert copy[1].startswith("duplicate of test/")
    assert data.digest("train") == plain.digest("train")


def test_duplicate_reviews_are_kept_once_test_first(tmp_path: Path):
    write_tfds_imdb(tmp_path / "tfds", {"train": 10, "test": 4}, copies=True)
    data = read_tfds_imdb(str(tmp_path / "tfds"), validation_pct=20, seed=0)
    reviews = {review.path: review.text for split in data.splits.values() for review in split}
    assert len(reviews) == 15 + 4 - 2 + 8 and len(set(reviews.values())) == len(reviews)
    dropped = {path: reason.removeprefix("duplicate of ") for path, reason in data.skipped
               if reason.startswith("duplicate of ")}
    assert len(dropped) == 2 and all(path.startswith("train/") for path in dropped)
    kept = sorted(dropped.values())
    assert kept[0].startswith("test/") and kept[1].startswith("train/")
    assert kept[1] < next(path for path in dropped if dropped[path] == kept[1])  # first by id
    assert all(kept_id in reviews for kept_id in kept)


def test_pipeline_trains_from_tfds(tmp_path: Path):
    write_tfds_imdb(tmp_path / "tfds", {"train": 12, "test": 4})
    config = SentimentConfig.from_options(
        source="tfds", tfds_data_dir=str(tmp_path / "tfds"), store_dir=str(tmp_path / "mlruns"),
        validation_pct=25, units=4, embedding_dim=4, vocabulary_size=100, sequence_length=16,
        epochs=1, batch_size=8)
    result = sentiment.run(config)
    run = MlflowClient().get_run(result["run_id"])
    assert run.data.metrics["examples_train"] == 17 and run.data.metrics["skipped_examples"] == 1
    contexts = {tag.value for i in run.inputs.dataset_inputs for tag in i.tags
                if tag.key == "mlflow.data.context"}
    assert contexts == {"train", "validation", "test"}
    assert all(i.dataset.source and "tfds://imdb_reviews/1.0.0" in i.dataset.source
               for i in run.inputs.dataset_inputs)


def test_offline_without_prepared_data_fails_at_once_naming_data_dir(tmp_path: Path, capsys):
    with pytest.raises(DatasetUnavailableError, match="--data-dir"):
        read_tfds_imdb(str(tmp_path / "empty"), validation_pct=10, seed=0)
    assert not (tmp_path / "empty" / "downloads").exists()  # failed before any download
    code = sentiment.main(["--source", "tfds", "--tfds-data-dir", str(tmp_path / "empty"),
                           "--store-dir", str(tmp_path / "mlruns")])
    error = capsys.readouterr().err
    assert code == 2 and "ai.stanford.edu is unreachable" in error
    assert "--source folder --data-dir" in error
    assert not (tmp_path / "mlruns").exists()  # no FAILED run left behind
