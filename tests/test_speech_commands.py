from __future__ import annotations

import math
from pathlib import Path

import pytest

from features.speech_commands import (
    COMMAND_WORDS,
    SILENCE_LABEL,
    UNKNOWN_LABEL,
    load_speech_commands,
    speaker_of,
    which_set,
)
from tests.datasets import SPEAKERS, make_speech_commands


def test_lists_are_honoured(speech_dir: Path):
    data = load_speech_commands(speech_dir, task="all-words")
    assert data.split_method == "lists"
    assert {speaker_of(e.path) for e in data.examples["validation"]} == {SPEAKERS[4]}
    assert {speaker_of(e.path) for e in data.examples["test"]} == {SPEAKERS[5]}
    assert {speaker_of(e.path) for e in data.examples["train"]} == set(SPEAKERS[:4])


def test_hash_split_is_speaker_disjoint_and_deterministic(tmp_path: Path):
    root = make_speech_commands(tmp_path / "sc", with_lists=False, clips_per_speaker=2)
    first = load_speech_commands(root, task="all-words", validation_pct=30, test_pct=30)
    second = load_speech_commands(root, task="all-words", validation_pct=30, test_pct=30)
    assert first.split_method == "hash"
    assert first.examples == second.examples
    speakers = {split: {speaker_of(e.path) for e in items}
                for split, items in first.examples.items()}
    assert not speakers["train"] & speakers["validation"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["validation"] & speakers["test"]
    for split, items in first.examples.items():
        for example in items:
            assert which_set(example.path, 30, 30) == split


def test_which_set_uses_the_speaker_part_only():
    first = which_set("yes/abc123_nohash_0.wav", 10, 10)
    assert first == which_set("no/abc123_nohash_7.wav", 10, 10)
    shares = [which_set(f"w/{i:08x}_nohash_0.wav", 20, 20) for i in range(2000)]
    assert 0.15 < shares.count("validation") / 2000 < 0.25
    assert 0.15 < shares.count("test") / 2000 < 0.25


def test_twelve_class_composition(speech_dir: Path):
    data = load_speech_commands(speech_dir, unknown_pct=10, silence_pct=20, seed=3,
                                silence_rms=(1e-3, 0.3))
    assert data.labels == (SILENCE_LABEL, UNKNOWN_LABEL, *COMMAND_WORDS)
    train = data.examples["train"]
    words = [e for e in train if e.label in COMMAND_WORDS]
    assert len(words) == 10 * 4
    unknown = [e for e in train if e.label == UNKNOWN_LABEL]
    assert len(unknown) == math.ceil(0.10 * 40)
    assert {e.path.split("/")[0] for e in unknown} <= {"bed", "cat"}
    silence = [e for e in train if e.label == SILENCE_LABEL]
    assert len(silence) == math.ceil(0.20 * 40)
    for example in silence:
        assert example.path == "_background_noise_/white_noise.wav"
        assert 0 <= example.offset <= 3 * 16000 - 16000
        assert 1e-3 <= example.rms <= 0.3
    assert data.examples == load_speech_commands(
        speech_dir, unknown_pct=10, silence_pct=20, seed=3, silence_rms=(1e-3, 0.3)).examples


def test_unknown_is_capped_at_what_exists(speech_dir: Path):
    data = load_speech_commands(speech_dir, unknown_pct=100)
    unknown = [e for e in data.examples["train"] if e.label == UNKNOWN_LABEL]
    assert len(unknown) == 2 * 4
    assert any("_unknown_ wanted" in note for note in data.notes)


def test_all_words_task(speech_dir: Path):
    data = load_speech_commands(speech_dir, task="all-words")
    assert data.labels == tuple(sorted((*COMMAND_WORDS, "bed", "cat")))
    assert not any(e.is_silence for items in data.examples.values() for e in items)


def test_missing_directory_names_the_path(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_speech_commands(missing)


def test_empty_word_folder_names_the_path(speech_dir: Path):
    (speech_dir / "wow").mkdir()
    with pytest.raises(ValueError, match=r"wow: word folder holds no \.wav files"):
        load_speech_commands(speech_dir)


def test_unknown_task_lists_choices(speech_dir: Path):
    with pytest.raises(ValueError, match="12-class, all-words"):
        load_speech_commands(speech_dir, task="twelve")


def test_digest_changes_with_the_data(speech_dir: Path):
    data = load_speech_commands(speech_dir)
    before = data.digest(("test",))
    assert before == load_speech_commands(speech_dir).digest(("test",))
    target = speech_dir / data.examples["test"][0].path
    target.write_bytes(target.read_bytes() + b"\0\0")
    assert load_speech_commands(speech_dir).digest(("test",)) != before
