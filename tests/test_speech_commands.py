from __future__ import annotations

import logging
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import soundfile

from features.audio import AudioSpec
from features.errors import DataError, DataNotFoundError
from features.speech_commands import (
    COMMAND_WORDS,
    SILENCE_LABEL,
    UNKNOWN_LABEL,
    SplitConfig,
    load_speech_commands,
)
from features.speech_splits import speaker_of, which_set
from pipelines import speech
from tests.datasets import SPEAKERS, copy_clip, make_speech_commands, tone, write_wav

LOGGER = "features.speech_commands"
AUDIO = AudioSpec(16000, 1.0)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == LOGGER and record.levelno == logging.WARNING]


def test_lists_are_honoured(speech_dir: Path):
    data = load_speech_commands(speech_dir, SplitConfig(task="all-words"), AUDIO)
    assert data.split_method == "lists"
    assert {speaker_of(e.path) for e in data.examples["validation"]} == {SPEAKERS[4]}
    assert {speaker_of(e.path) for e in data.examples["test"]} == {SPEAKERS[5]}
    assert {speaker_of(e.path) for e in data.examples["train"]} == set(SPEAKERS[:4])


def test_hash_split_is_speaker_disjoint_and_deterministic(tmp_path: Path):
    root = make_speech_commands(tmp_path / "sc", with_lists=False, clips_per_speaker=2)
    first = load_speech_commands(
        root, SplitConfig(task="all-words", validation_pct=30, test_pct=30), AUDIO)
    second = load_speech_commands(
        root, SplitConfig(task="all-words", validation_pct=30, test_pct=30), AUDIO)
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
    data = load_speech_commands(
        speech_dir, SplitConfig(unknown_pct=10, silence_pct=20, data_seed=3, silence_rms_min=1e-3,
        silence_rms_max=0.3), AUDIO)
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
        speech_dir, SplitConfig(unknown_pct=10, silence_pct=20, data_seed=3, silence_rms_min=1e-3,
        silence_rms_max=0.3), AUDIO).examples


def test_unknown_is_capped_at_what_exists(speech_dir: Path):
    data = load_speech_commands(speech_dir, SplitConfig(unknown_pct=100), AUDIO)
    unknown = [e for e in data.examples["train"] if e.label == UNKNOWN_LABEL]
    assert len(unknown) == 2 * 4
    assert any("_unknown_ wanted" in note for note in data.notes)


def test_a_class_given_no_share_is_left_out_of_the_labels(speech_dir: Path):
    """A folder of the ten words alone, no noise: --silence-pct 0 --unknown-pct 0 trains them."""
    for folder in ("bed", "cat", "_background_noise_"):
        shutil.rmtree(speech_dir / folder)
    data = load_speech_commands(speech_dir, SplitConfig(unknown_pct=0, silence_pct=0), AUDIO)
    assert data.labels == COMMAND_WORDS
    assert {e.label for e in data.examples["train"]} == set(COMMAND_WORDS)
    kept = load_speech_commands(speech_dir, SplitConfig(unknown_pct=10, silence_pct=0), AUDIO)
    assert kept.labels == (UNKNOWN_LABEL, *COMMAND_WORDS)  # refused later: no _unknown_ clip


def test_all_words_task(speech_dir: Path):
    data = load_speech_commands(speech_dir, SplitConfig(task="all-words"), AUDIO)
    assert data.labels == tuple(sorted((*COMMAND_WORDS, "bed", "cat")))
    assert not any(e.is_silence for items in data.examples.values() for e in items)


def test_flac_ogg_and_upper_case_clips_are_read_other_entries_counted(speech_dir: Path):
    write_wav(speech_dir / "yes" / "f1ac0000_nohash_0.flac", tone(300), subtype="PCM_16")
    soundfile.write(speech_dir / "yes" / "0gg00000_nohash_0.ogg", tone(310), 16000,
                    format="OGG", subtype="VORBIS")
    write_wav(speech_dir / "no" / "CAPS0000_NOHASH_0.WAV", tone(320))
    write_wav(speech_dir / "no" / "session" / "deep0000_nohash_0.wav", tone(330))
    (speech_dir / "no" / "README.txt").write_text("recorded in a quiet room")
    data = load_speech_commands(speech_dir, SplitConfig(task="all-words"), AUDIO)
    paths = {e.path for items in data.examples.values() for e in items}
    assert {"yes/f1ac0000_nohash_0.flac", "yes/0gg00000_nohash_0.ogg",
            "no/CAPS0000_NOHASH_0.WAV"} <= paths
    assert not any("session" in path or path.endswith(".txt") for path in paths)
    [note] = [note for note in data.notes if "not clips" in note]
    assert note.startswith("2 entries of word folders are not clips and were not read (clips "
                           "are .wav/.flac/.ogg/.mp3 files directly in <word>/, named in "
                           "UTF-8), e.g. no/README.txt, no/session/")


def test_clips_and_folders_named_in_bytes_that_are_not_utf8_are_counted_not_read(
        speech_dir: Path):
    clip = speech_dir / "yes" / sorted(os.listdir(speech_dir / "yes"))[0]
    bad_clip = os.path.join(os.fsencode(speech_dir / "yes"), b"bad\xffname_nohash_0.wav")
    shutil.copy(clip, bad_clip)
    os.makedirs(os.path.join(os.fsencode(speech_dir), b"w\xe9rd"))
    shutil.copy(clip, os.path.join(os.fsencode(speech_dir), b"w\xe9rd", b"c0de0000_nohash_0.wav"))
    noise = os.fsencode(speech_dir / "_background_noise_")
    shutil.copy(os.path.join(noise, b"white_noise.wav"), os.path.join(noise, b"caf\xe9.wav"))
    data = load_speech_commands(speech_dir, SplitConfig(), AUDIO)  # 12 classes: noise is read
    assert not any("bad" in e.path or e.path.startswith("w")
                   for items in data.examples.values() for e in items)
    assert ("_background_noise_/caf\\xe9.wav", "file name is not UTF-8") in data.skipped
    [note] = [note for note in data.notes if "not clips" in note]
    assert note.startswith("2 entries of word folders are not clips") and note.endswith(
        "e.g. w\\xe9rd/, yes/bad\\xffname_nohash_0.wav")
    assert len(data.digest()) == 16  # every path it hashes can be encoded


def test_missing_directory_names_the_path(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError, match=(
            f"^Speech Commands data folder not found: {re.escape(str(missing))}")):
        load_speech_commands(missing, SplitConfig(), AUDIO)


def test_empty_folder_of_a_word_the_task_can_do_without_is_left_out_and_noted(
        speech_dir: Path, caplog: pytest.LogCaptureFixture):
    (speech_dir / "wow").mkdir()
    caplog.set_level(logging.WARNING, LOGGER)
    data = load_speech_commands(speech_dir, SplitConfig(), AUDIO)
    expected = f"{speech_dir / 'wow'}: word folder holds no audio clips; left out"
    assert expected in data.notes and expected in warnings_of(caplog)
    assert data.labels == (SILENCE_LABEL, UNKNOWN_LABEL, *COMMAND_WORDS)

    for path in (speech_dir / "yes").iterdir():
        path.unlink()
    all_words = load_speech_commands(speech_dir, SplitConfig(task="all-words"), AUDIO)
    assert "wow" not in all_words.labels and "yes" not in all_words.labels
    assert f"{speech_dir / 'yes'}: word folder holds no audio clips; left out" in all_words.notes


def test_empty_command_word_folder_is_an_error_for_the_twelve_class_task(speech_dir: Path):
    for path in (speech_dir / "stop").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=r"stop: command word folder holds no audio clips"):
        load_speech_commands(speech_dir, SplitConfig(), AUDIO)


def test_folder_without_any_clip_is_an_error(tmp_path: Path):
    (tmp_path / "sc" / "yes").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"sc: no word folder holds audio clips"):
        load_speech_commands(tmp_path / "sc", SplitConfig(task="all-words"), AUDIO)


@pytest.mark.parametrize(("removed", "method"), [
    (("validation_list.txt",), "lists+hash"),
    (("testing_list.txt",), "lists+hash"),
    (("validation_list.txt", "testing_list.txt"), "hash"),
])
def test_missing_split_list_falls_back_to_the_speaker_hash_with_one_warning(
        speech_dir: Path, caplog: pytest.LogCaptureFixture, removed: tuple[str, ...],
        method: str):
    for name in removed:
        (speech_dir / name).unlink()
    caplog.set_level(logging.WARNING, LOGGER)
    data = load_speech_commands(
        speech_dir, SplitConfig(task="all-words", validation_pct=30, test_pct=30), AUDIO)
    assert data.split_method == method
    [warning] = [message for message in warnings_of(caplog) if "not found" in message]
    assert all(name in warning for name in removed) and "speaker hash" in warning
    assert warning in data.notes
    for split in ("validation", "test"):
        if f"{'testing' if split == 'test' else split}_list.txt" in removed:
            assert all(which_set(e.path, 30, 30) == split for e in data.examples[split])
        else:
            assert {speaker_of(e.path) for e in data.examples[split]} == {
                SPEAKERS[4 if split == "validation" else 5]}


def test_listed_files_that_do_not_exist_are_counted_logged_and_named(
        speech_dir: Path, caplog: pytest.LogCaptureFixture):
    ghosts = [f"yes/ffff{n:04d}_nohash_0.wav" for n in range(25)]
    with (speech_dir / "validation_list.txt").open("a") as handle:
        handle.write("\n".join(ghosts) + "\n")
    caplog.set_level(logging.WARNING, LOGGER)
    data = load_speech_commands(speech_dir, SplitConfig(), AUDIO)
    assert data.listed_missing == 25
    assert data.listed_missing_paths == ghosts[:20]
    [warning] = [message for message in warnings_of(caplog) if "do not exist" in message]
    assert "25 files" in warning and ghosts[0] in warning and str(speech_dir) in warning


def test_a_split_list_that_is_not_utf8_text_is_named(speech_dir: Path):
    listed = speech_dir / "testing_list.txt"
    listed.write_bytes(b"yes/\xff\xfe_nohash_0.wav\n")
    with pytest.raises(DataError, match=f"^{listed}: cannot be read as a list of clip paths, "
                       r"one per line in UTF-8 \('utf-8' codec can't decode byte 0xff"):
        load_speech_commands(speech_dir, SplitConfig(), AUDIO)


def test_split_lists_from_other_editors_name_the_same_clips(speech_dir: Path):
    """A byte-order mark, Windows separators and `./` prefixes name the clips they would on
    Linux: no listed test clip goes to train."""
    listed = speech_dir / "testing_list.txt"
    lines = listed.read_text().splitlines()
    before = load_speech_commands(speech_dir, SplitConfig(), AUDIO).examples["test"]
    edited = [line.replace("/", "\\") if n % 2 else f"./{line}" for n, line in enumerate(lines)]
    listed.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(edited).encode())
    data = load_speech_commands(speech_dir, SplitConfig(), AUDIO)
    assert data.examples["test"] == before and data.listed_missing == 0


def test_clip_on_both_lists_goes_to_test_and_is_noted(speech_dir: Path):
    both = f"no/{SPEAKERS[5]}_nohash_0.wav"
    with (speech_dir / "validation_list.txt").open("a") as handle:
        handle.write(both + "\n")
    data = load_speech_commands(speech_dir, SplitConfig(task="all-words"), AUDIO)
    assert both in {e.path for e in data.examples["test"]}
    assert both not in {e.path for e in data.examples["validation"]}
    assert any(note.startswith("1 clips listed in both") and both in note for note in data.notes)


def test_byte_identical_clips_are_kept_once_test_first(speech_dir: Path):
    train, validation, test = SPEAKERS[0], SPEAKERS[4], SPEAKERS[5]
    test_clip, validation_clip = f"yes/{test}_nohash_0.wav", f"no/{validation}_nohash_0.wav"
    leaks = [
        copy_clip(speech_dir, test_clip, f"yes/{train}_nohash_7.wav"),
        copy_clip(speech_dir, test_clip, f"bed/{validation}_nohash_7.wav", "validation_list.txt"),
        copy_clip(speech_dir, validation_clip, f"no/{train}_nohash_7.wav"),
    ]
    # within one split the first by path is kept, here the copy
    train_clip = f"up/{SPEAKERS[1]}_nohash_0.wav"
    early = copy_clip(speech_dir, train_clip, f"up/{train}_nohash_7.wav")
    repeat_in_test = copy_clip(speech_dir, test_clip, f"yes/{test}_nohash_7.wav",
                               "testing_list.txt")

    data = load_speech_commands(speech_dir, SplitConfig(task="all-words"), AUDIO)
    assert sorted(data.skipped) == sorted([
        (leaks[0], f"duplicate of {test_clip}"),
        (leaks[1], f"duplicate of {test_clip}"),
        (leaks[2], f"duplicate of {validation_clip}"),
        (train_clip, f"duplicate of {early}"),
        (repeat_in_test, f"duplicate of {test_clip}"),
    ])
    paths = {split: {e.path for e in items} for split, items in data.examples.items()}
    assert test_clip in paths["test"] and validation_clip in paths["validation"]
    assert early in paths["train"]
    assert not {path for path, _ in data.skipped} & set().union(*paths.values())
    assert any(note.startswith("5 clips are byte-identical copies") for note in data.notes)
    assert (f"1 of those copies are in another word folder than the clip kept, which keeps its "
            f"own folder's label: a labelling error? e.g. {leaks[1]} (duplicate of {test_clip})"
            ) in data.notes
    assert load_speech_commands(speech_dir, SplitConfig(), AUDIO).skipped == data.skipped


def test_unknown_task_lists_choices(speech_dir: Path):
    with pytest.raises(ValueError, match="12-class, all-words"):
        load_speech_commands(speech_dir, SplitConfig(task="twelve"), AUDIO)


def test_digest_changes_with_the_data(speech_dir: Path):
    data = load_speech_commands(speech_dir, SplitConfig(), AUDIO)
    before = data.digest(("test",))
    assert before == load_speech_commands(speech_dir, SplitConfig(), AUDIO).digest(("test",))
    target = speech_dir / data.examples["test"][0].path
    samples, rate = soundfile.read(target, dtype="int16")
    samples[100] ^= 1  # re-processed audio: the same path, size and header, other content
    size = target.stat().st_size
    soundfile.write(target, samples, rate, subtype="PCM_16")
    assert target.stat().st_size == size
    assert load_speech_commands(speech_dir, SplitConfig(), AUDIO).digest(("test",)) != before


def test_splits_a_run_cannot_use_are_refused_before_any_feature_work(tmp_path: Path, capsys):
    """Clips from the official test release have speakers that hash to `test`: without split
    lists, validation comes out empty (and train nearly so)."""
    speakers = [s for s in (f"{n:08x}" for n in range(2000))
                if which_set(f"{s}_nohash_0.wav", 10, 10) == "test"][:3]
    root = tmp_path / "speech_commands"
    for w, word in enumerate((*COMMAND_WORDS, "bed")):
        for s, speaker in enumerate(speakers):
            write_wav(root / word / f"{speaker}_nohash_0.wav", tone(300 + 150 * w, seed=s))
    write_wav(root / "_background_noise_" / "noise.wav", tone(50, seconds=2))
    code = speech.main(["--data-dir", str(root), "--store-dir", str(tmp_path / "mlruns"),
                        "--cache-dir", str(tmp_path / "cache")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{root}: the splits cannot train and evaluate a model (train 0, validation 0, " in err
    assert "train is empty; validation is empty; give validation_list.txt" in err
    assert "--validation-pct" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()  # no feature was computed
    # a folder of the ten words alone: what leaves _unknown_ out is named first
    shutil.rmtree(root / "bed")
    assert speech.main(["--data-dir", str(root), "--store-dir", str(tmp_path / "mlruns"),
                        "--cache-dir", str(tmp_path / "cache")]) == 2
    assert ("train is empty; validation is empty; the folder gives no _unknown_ example "
            "(--unknown-pct 0 trains without that class); give validation_list.txt"
            ) in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--silence-rms-min", "0"], "silence_rms_min and silence_rms_max must be levels with 0 < "
                                 "min <= max, got 0.0 and 0.4"),
    (["--silence-rms-min", "0.5", "--silence-rms-max", "0.1"], "got 0.5 and 0.1"),
    (["--unknown-pct", "-5"], "unknown_pct must be a number >= 0, got -5.0"),
    (["--silence-pct", "nan"], "silence_pct must be a number >= 0, got nan"),
    (["--test-pct", "100"], "test_pct must be within [0, 100), got 100.0"),
])
def test_split_options_out_of_range_are_refused(flags: list[str], message: str,
                                                tmp_path: Path, capsys):
    code = speech.main(["--data-dir", str(tmp_path), "--store-dir", str(tmp_path / "mlruns"),
                        *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_damaged_noise_recording_is_left_out_listed_and_noted(speech_dir: Path):
    (speech_dir / "_background_noise_" / "broken.wav").write_bytes(b"RIFF not really a wav")
    data = load_speech_commands(speech_dir, SplitConfig(), AUDIO)
    [(path, reason)] = [item for item in data.skipped if "broken" in item[0]]
    assert path == "_background_noise_/broken.wav"
    assert reason.startswith(f"{speech_dir / path}: not decodable audio")
    assert any(note.startswith("1 _background_noise_ recordings do not decode and were left "
                               "out") for note in data.notes)
    silence = {e.path for split in data.examples.values() for e in split if e.is_silence}
    assert silence == {"_background_noise_/white_noise.wav"}

    (speech_dir / "_background_noise_" / "white_noise.wav").unlink()  # none usable is refused
    with pytest.raises(DataError, match=f"^{speech_dir / '_background_noise_'}: _silence_ needs "
                       r"audio recordings of at least one clip length; it holds none that "
                       "decodes"):
        load_speech_commands(speech_dir, SplitConfig(), AUDIO)


def test_missing_command_words_point_at_the_task_that_trains_without_them(speech_dir: Path):
    for clip in (speech_dir / "up").iterdir():
        clip.unlink()
    (speech_dir / "up").rmdir()
    with pytest.raises(DataError, match=r"command word folders missing: up \(--task all-words "
                       r"trains on the word folders there are\)"):
        load_speech_commands(speech_dir, SplitConfig(), AUDIO)


def test_a_clip_on_the_one_list_present_stays_in_its_split_whatever_its_hash(
        speech_dir: Path):
    """With testing_list.txt missing, a clip validation_list.txt names is validation data even
    where its speaker hashes into the test share."""
    (speech_dir / "testing_list.txt").unlink()
    speaker = next(s for s in (f"{n:08x}" for n in range(2000))
                   if which_set(f"{s}_nohash_0.wav", 30, 30) == "test")
    listed = f"yes/{speaker}_nohash_0.wav"
    write_wav(speech_dir / listed, tone(700, seed=99))
    with open(speech_dir / "validation_list.txt", "a") as lists:
        lists.write(listed + "\n")
    (speech_dir / "no" / "folder.wav").mkdir()  # a folder named like a clip is no clip
    data = load_speech_commands(
        speech_dir, SplitConfig(task="all-words", validation_pct=30, test_pct=30), AUDIO)
    assert listed in {e.path for e in data.examples["validation"]}
    assert listed not in {e.path for split in ("train", "test") for e in data.examples[split]}
    assert all("folder.wav" not in e.path for split in data.examples.values() for e in split)
