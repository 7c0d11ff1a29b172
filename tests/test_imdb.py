from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from features.imdb import carve_validation, load_imdb, rating_of


def test_reads_the_official_layout_and_ignores_unsup(imdb_dir: Path):
    data = load_imdb(imdb_dir, validation_pct=25, seed=0)
    assert {split: len(reviews) for split, reviews in data.splits.items()} == {
        "train": 30, "validation": 10, "test": 12}
    paths = [r.path for reviews in data.splits.values() for r in reviews]
    assert not any("unsup" in path for path in paths)
    review = data.splits["test"][0]
    assert review.path == "test/neg/0_1.txt" and review.label == "neg" and review.rating == 1
    assert "<br />" in review.text  # raw text; standardisation belongs to the features stage
    assert data.class_counts()["test"] == {"neg": 6, "pos": 6}


def test_validation_is_stratified_seeded_and_disjoint_from_train(imdb_dir: Path):
    first = load_imdb(imdb_dir, validation_pct=25, seed=3)
    again = load_imdb(imdb_dir, validation_pct=25, seed=3)
    other = load_imdb(imdb_dir, validation_pct=25, seed=4)
    validation = [r.path for r in first.splits["validation"]]
    assert validation == [r.path for r in again.splits["validation"]]
    assert validation != [r.path for r in other.splits["validation"]]
    assert Counter(r.label for r in first.splits["validation"]) == {"neg": 5, "pos": 5}
    assert not set(validation) & {r.path for r in first.splits["train"]}
    assert first.digest("validation") == again.digest("validation")
    assert first.digest("validation") != other.digest("validation")
    assert first.digest("test") == other.digest("test")


def test_undecodable_bytes_are_replaced_and_empty_reviews_skipped(imdb_dir: Path):
    (imdb_dir / "train" / "pos" / "100_9.txt").write_bytes(b"Caf\xe9 scenes were great")
    (imdb_dir / "train" / "neg" / "101_2.txt").write_text("  \n\t ")
    (imdb_dir / "test" / "neg" / "102_1.txt").write_bytes(b"")
    data = load_imdb(imdb_dir, validation_pct=25)
    assert data.skipped == [("train/neg/101_2.txt", "empty review"),
                            ("test/neg/102_1.txt", "empty review")]
    assert data.replaced == ["train/pos/100_9.txt"]
    texts = [r.text for split in ("train", "validation") for r in data.splits[split]]
    assert "Caf\ufffd scenes were great" in texts


def test_missing_or_wrong_layout_names_the_path(tmp_path: Path, imdb_dir: Path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_imdb(tmp_path / "nowhere")
    for path in (imdb_dir / "test" / "pos").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=r"test/pos holds no \.txt reviews"):
        load_imdb(imdb_dir)
    (imdb_dir / "test" / "pos").rmdir()
    with pytest.raises(ValueError, match=r"test/pos is missing; expected the aclImdb layout"):
        load_imdb(imdb_dir)


def test_validation_share_must_be_a_percentage(imdb_dir: Path):
    reviews = load_imdb(imdb_dir).splits["test"]
    with pytest.raises(ValueError, match="between 0 and 100"):
        carve_validation(reviews, 0, seed=0)


def test_rating_comes_from_the_file_name():
    assert rating_of("123_7.txt") == 7
    assert rating_of("notes.txt") is None
