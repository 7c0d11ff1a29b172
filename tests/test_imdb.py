from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from features.imdb import (
    UNLABELLED,
    Review,
    carve_validation,
    composed_imdb,
    load_imdb,
    rating_of,
    read_split_folder,
)

ONE_MEGABYTE_REVIEW = ("A slow but great film. " * 50_000)[:2**20]  # read whole, not cut


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


def test_undecodable_bytes_are_replaced_and_empty_or_unreadable_reviews_skipped(imdb_dir: Path):
    (imdb_dir / "train" / "pos" / "100_9.txt").write_bytes(b"Caf\xe9 scenes were great")
    (imdb_dir / "train" / "neg" / "101_2.txt").write_text("  \n\t ")
    (imdb_dir / "test" / "neg" / "102_1.txt").write_bytes(b"")
    (imdb_dir / "test" / "neg" / "103_2.txt").mkdir()  # a folder named as a review: unreadable
    data = load_imdb(imdb_dir, validation_pct=25, seed=0)
    assert data.skipped == [("train/neg/101_2.txt", "empty review"),
                            ("test/neg/102_1.txt", "empty review"),
                            ("test/neg/103_2.txt", "cannot be read (Is a directory)")]
    assert data.replaced == ["train/pos/100_9.txt"]
    texts = [r.text for split in ("train", "validation") for r in data.splits[split]]
    assert "Caf\ufffd scenes were great" in texts


def test_names_in_any_case_are_read_and_names_that_are_not_utf8_skipped(imdb_dir: Path):
    (imdb_dir / "train" / "pos" / "500_9.TXT").write_text("Upper-case names are reviews too.")
    os.makedirs(os.fsencode(imdb_dir / "train" / "neg"), exist_ok=True)
    with open(os.path.join(os.fsencode(imdb_dir / "train" / "neg"), b"99\xff_1.txt"), "wb") as f:
        f.write(b"A review whose file name is Latin-1.")
    data = load_imdb(imdb_dir, validation_pct=25, seed=0)
    paths = {r.path for split in ("train", "validation") for r in data.splits[split]}
    assert "train/pos/500_9.TXT" in paths
    assert data.skipped == [("train/neg/99\\xff_1.txt", "file name is not UTF-8")]
    assert len(data.digest("train")) == 16


def test_macos_metadata_files_beside_the_reviews_are_skipped_not_read(imdb_dir: Path):
    # a folder copied by macOS to a FAT or network drive: "._<name>" beside each file
    (imdb_dir / "train" / "pos" / "._0_9.txt").write_bytes(
        b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02" + b"\x00" * 40)
    data = load_imdb(imdb_dir, validation_pct=25, seed=0)
    assert data.skipped == [("train/pos/._0_9.txt", "macOS metadata (a ._ file), not a review")]
    assert "train/pos/._0_9.txt" not in {
        r.path for split in ("train", "validation") for r in data.splits[split]}


@pytest.mark.parametrize(("content", "skip_reason", "replaced"), [
    (b"", "empty review", False),
    (b"  \n\t \r\n", "empty review", False),
    (b"<br /><br />", "no text outside HTML tags", False),
    (b" <br /> <i></i>\n", "no text outside HTML tags", False),
    (b"Caf\xe9 scenes were great", None, True),
    (ONE_MEGABYTE_REVIEW.encode(), None, False),
], ids=["empty", "whitespace", "html-only", "html-and-spaces", "non-utf8", "one-megabyte"])
def test_each_kind_of_review_file_is_read_or_skipped_with_its_reason(
        imdb_dir: Path, content: bytes, skip_reason: str | None, replaced: bool):
    (imdb_dir / "train" / "pos" / "100_9.txt").write_bytes(content)
    data = load_imdb(imdb_dir, validation_pct=25, seed=0)
    reviews = {r.path: r for split in ("train", "validation") for r in data.splits[split]}
    if skip_reason is not None:
        assert data.skipped == [("train/pos/100_9.txt", skip_reason)]
        assert "train/pos/100_9.txt" not in reviews
    else:
        assert data.skipped == []
        text = reviews["train/pos/100_9.txt"].text
        assert text == content.decode("utf-8", errors="replace")
        assert data.replaced == (["train/pos/100_9.txt"] if replaced else [])


def test_identical_reviews_are_kept_once_test_first_then_by_path(imdb_dir: Path):
    def copy(source: str, target: str) -> None:
        (imdb_dir / target).write_bytes((imdb_dir / source).read_bytes())

    copy("test/neg/0_1.txt", "train/neg/50_1.txt")  # a test review in train, twice, once with
    copy("test/neg/0_1.txt", "train/pos/51_9.txt")  # the other label
    copy("test/pos/1_9.txt", "test/pos/70_9.txt")
    copy("train/pos/0_8.txt", "train/pos/60_8.txt")
    copy("train/neg/5_2.txt", "train/neg/10_2.txt")  # "10_2" < "5_2": the copy is kept
    expected = [("train/neg/50_1.txt", "duplicate of test/neg/0_1.txt"),
                ("train/pos/51_9.txt", "duplicate of test/neg/0_1.txt"),
                ("test/pos/70_9.txt", "duplicate of test/pos/1_9.txt"),
                ("train/pos/60_8.txt", "duplicate of train/pos/0_8.txt"),
                ("train/neg/5_2.txt", "duplicate of train/neg/10_2.txt")]
    data = load_imdb(imdb_dir, validation_pct=25, seed=1)
    assert sorted(data.skipped) == sorted(expected)
    texts = {split: [r.text for r in reviews] for split, reviews in data.splits.items()}
    assert sum(len(items) for items in texts.values()) == len(set().union(*texts.values()))
    assert {split: len(items) for split, items in texts.items()} == {
        "train": 30, "validation": 10, "test": 12}
    assert Counter(r.label for r in data.splits["validation"]) == {"neg": 5, "pos": 5}
    again = load_imdb(imdb_dir, validation_pct=25, seed=1)
    assert again.skipped == data.skipped
    # reading the test split alone (as `evaluate` does) gives the same test reviews
    test, skipped, _ = read_split_folder(imdb_dir, "test")
    assert test == data.splits["test"]
    assert skipped == [("test/pos/70_9.txt", "duplicate of test/pos/1_9.txt")]
    assert again.digest("validation") == data.digest("validation")


def test_missing_or_wrong_layout_names_the_path(tmp_path: Path, imdb_dir: Path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_imdb(tmp_path / "nowhere", validation_pct=10, seed=0)
    for path in (imdb_dir / "test" / "pos").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=r"test/pos holds no \.txt reviews"):
        load_imdb(imdb_dir, validation_pct=10, seed=0)
    (imdb_dir / "test" / "pos").rmdir()
    with pytest.raises(ValueError, match=r"test/pos is missing; expected the aclImdb layout"):
        load_imdb(imdb_dir, validation_pct=10, seed=0)


def test_validation_share_must_be_a_percentage(imdb_dir: Path):
    reviews = load_imdb(imdb_dir, validation_pct=10, seed=0).splits["test"]
    for share in (0, 100, -5, 150):
        with pytest.raises(ValueError, match=f"between 0 and 100, got {share}"):
            carve_validation(reviews, share, seed=0)


def test_rating_comes_from_the_file_name():
    assert rating_of("123_7.txt") == 7
    assert rating_of("notes.txt") is None


def test_unlabelled_reviews_are_read_on_request_without_copies_of_labelled_ones(
        imdb_dir: Path):
    unsup = imdb_dir / "train" / "unsup"
    (unsup / "1_0.txt").write_bytes((imdb_dir / "test" / "pos" / "1_9.txt").read_bytes())
    (unsup / "2_0.txt").write_bytes((imdb_dir / "train" / "neg" / "3_4.txt").read_bytes())
    (unsup / "3_0.txt").write_text("A film I keep thinking about.")
    (unsup / "4_0.txt").write_text("A film I keep thinking about.")  # a copy inside unsup
    (unsup / "5_0.txt").write_text("<br /><br />")
    (unsup / "6_0.txt").write_bytes(b"Caf\xe9 scenes")
    assert load_imdb(imdb_dir, validation_pct=25, seed=0).unlabelled == []  # not asked for
    data = load_imdb(imdb_dir, validation_pct=25, seed=0, unlabelled=True)
    assert [(r.path, r.label) for r in data.unlabelled] == [
        ("train/unsup/0_0.txt", "unsup"), ("train/unsup/3_0.txt", "unsup"),
        ("train/unsup/6_0.txt", "unsup")]
    assert data.unlabelled[2].text == "Caf\ufffd scenes"
    assert ("train/unsup/1_0.txt", "duplicate of test/pos/1_9.txt") in data.skipped
    assert ("train/unsup/2_0.txt", "duplicate of train/neg/3_4.txt") in data.skipped
    assert ("train/unsup/4_0.txt", "duplicate of train/unsup/3_0.txt") in data.skipped
    assert ("train/unsup/5_0.txt", "no text outside HTML tags") in data.skipped
    assert "train/unsup/6_0.txt" in data.replaced
    # the labelled splits are what they are without the unlabelled reviews
    plain = load_imdb(imdb_dir, validation_pct=25, seed=0)
    assert all(data.digest(split) == plain.digest(split) for split in data.splits)


def test_a_folder_without_unsup_has_no_unlabelled_reviews(imdb_dir: Path):
    shutil.rmtree(imdb_dir / "train" / "unsup")
    assert load_imdb(imdb_dir, validation_pct=25, seed=0, unlabelled=True).unlabelled == []


def test_unlabelled_reviews_come_back_in_path_order_whatever_order_they_were_read_in():
    """Their order is part of the pretraining corpus's digest (the key pretrained vectors are
    found by): TFDS ids read in index order are put in path (string) order, as the folder's."""
    def review(path: str, label: str) -> Review:
        return Review(f"text of {path}", label, path)

    labelled = [review(f"train/{n}", label) for n, label in enumerate(["neg", "pos"] * 5)]
    unlabelled = [review(f"unsupervised/{n}", UNLABELLED) for n in range(12)]
    data = composed_imdb(labelled, [review("test/0", "neg"), review("test/1", "pos")],
                         unlabelled, skipped=[], replaced=[], source="s", validation_pct=20,
                         seed=0)
    assert [r.path for r in data.unlabelled] == sorted(r.path for r in unlabelled)
    assert [r.path for r in data.unlabelled][:4] == [
        "unsupervised/0", "unsupervised/1", "unsupervised/10", "unsupervised/11"]
