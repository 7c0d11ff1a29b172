from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile

from features.errors import DataError
from features.feature_cache import META_CHECKSUM, FeatureCache
from features.mfcc import MfccConfig
from features.speech_commands import SplitConfig, load_speech_commands
from features.speech_data import SpeechSourceConfig, prepare_speech_data
from features.speech_features import (
    compute_features,
    extract_features,
    split_features,
    split_waveforms,
    waveform_chunks,
)
from tests.datasets import tone, write_wav

CONFIG = MfccConfig()
AUDIO = CONFIG.audio


def test_second_call_reads_the_cache_and_decodes_nothing(speech_dir: Path, tmp_path: Path):
    examples = load_speech_commands(speech_dir, SplitConfig(), AUDIO).examples["train"]
    cache = tmp_path / "cache"
    first = split_features(examples, speech_dir, CONFIG, cache)
    assert not first.from_cache and first.rows.shape == (len(examples), 98, 40)

    # Rewrite a clip with other audio but the same size and mtime: keyed by sizes and mtimes,
    # a cache hit does not see it ...
    target = speech_dir / examples[0].path
    stat = target.stat()
    write_wav(target, tone(4000))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size

    second = split_features(examples, speech_dir, CONFIG, cache)
    assert second.from_cache
    assert np.array_equal(np.asarray(second.rows), first.rows)
    assert np.array_equal(second.kept, first.kept)
    # ... but keyed by content hashes, as the pipelines key it, the rewritten clip is seen
    hashes = load_speech_commands(speech_dir, SplitConfig(), AUDIO).content_hashes
    rewritten = split_features(examples, speech_dir, CONFIG, cache, content=hashes)
    assert not rewritten.from_cache
    assert not np.array_equal(np.asarray(rewritten.rows[0]), first.rows[0])
    assert split_features(examples, speech_dir, CONFIG, cache, content=hashes).from_cache

    third = split_features(examples, speech_dir, MfccConfig(n_mfcc=20), cache)
    assert not third.from_cache and third.rows.shape[-1] == 20

    # decoded waveforms depend on the sample rate and clip length only
    waveforms = split_waveforms(examples, speech_dir, CONFIG, cache)
    assert not waveforms.from_cache and waveforms.rows.shape == (len(examples), 16000)
    assert split_waveforms(examples, speech_dir, MfccConfig(n_mfcc=20, top_db=60), cache
                           ).from_cache
    assert not split_waveforms(examples, speech_dir, MfccConfig(clip_seconds=0.5), cache
                               ).from_cache


def test_touching_a_file_invalidates_the_cache(speech_dir: Path, tmp_path: Path):
    examples = load_speech_commands(speech_dir, SplitConfig(), AUDIO).examples["test"]
    cache = tmp_path / "cache"
    split_features(examples, speech_dir, CONFIG, cache)
    target = speech_dir / examples[0].path
    write_wav(target, tone(4000))
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert not split_features(examples, speech_dir, CONFIG, cache).from_cache


def test_undecodable_clip_is_skipped_and_counted(speech_dir: Path, tmp_path: Path):
    examples = load_speech_commands(speech_dir, SplitConfig(), AUDIO).examples["validation"]
    broken = examples[2]
    (speech_dir / broken.path).write_bytes(b"RIFF\x00\x00garbage")
    features = split_features(examples, speech_dir, CONFIG, tmp_path / "cache")
    assert [path for path, _ in features.skipped] == [broken.path]
    assert "not decodable audio" in features.skipped[0][1]
    assert 2 not in features.kept and len(features.kept) == len(examples) - 1
    assert features.rows.shape[0] == len(examples) - 1
    again = split_features(examples, speech_dir, CONFIG, tmp_path / "cache")
    assert again.from_cache and again.skipped == features.skipped


def test_silence_from_a_cut_noise_recording_is_skipped_and_counted(speech_dir: Path):
    """An MP3 cut short keeps its full length in its header: the windows past what it decodes
    to are skipped, each naming the recording, and the run goes on."""
    noise_dir = speech_dir / "_background_noise_"
    (noise_dir / "white_noise.wav").unlink()
    mp3 = noise_dir / "noise.mp3"
    rng = np.random.default_rng(0)
    soundfile.write(mp3, (0.05 * rng.standard_normal(30 * 16000)).astype(np.float32), 16000,
                    format="MP3")
    mp3.write_bytes(mp3.read_bytes()[: mp3.stat().st_size // 5])
    examples = load_speech_commands(speech_dir, SplitConfig(silence_pct=100), AUDIO
                                    ).examples["train"]
    silence = [example for example in examples if example.is_silence]
    features = split_features(silence, speech_dir, CONFIG, None)
    assert features.skipped and len(features.kept) + len(features.skipped) == len(silence)
    assert all(path == "_background_noise_/noise.mp3" and str(mp3) in reason
               and "too few for the window" in reason for path, reason in features.skipped)
    assert features.rows.shape[0] == len(features.kept) > 0


def test_silence_windows_reach_their_target_level(speech_dir: Path, tmp_path: Path):
    data = load_speech_commands(
        speech_dir, SplitConfig(silence_rms_min=0.2, silence_rms_max=0.3), AUDIO)
    silence = [e for e in data.examples["train"] if e.is_silence]
    loud = split_features(silence, speech_dir, CONFIG, None)
    quiet_data = load_speech_commands(
        speech_dir, SplitConfig(silence_rms_min=1e-4, silence_rms_max=2e-4), AUDIO)
    quiet = split_features([e for e in quiet_data.examples["train"] if e.is_silence],
                           speech_dir, CONFIG, None)
    # c0 of the MFCC tracks log energy: louder silence has a clearly larger first coefficient
    assert loud.rows[..., 0].mean() > quiet.rows[..., 0].mean() + 50


def test_streamed_cache_file_equals_in_memory_features_and_carries_moments(
        shared_speech_dir: Path, tmp_path: Path):
    examples = load_speech_commands(shared_speech_dir, SplitConfig(), AUDIO).examples["validation"]
    in_memory = compute_features(examples, shared_speech_dir, CONFIG)
    cached = split_features(examples, shared_speech_dir, CONFIG, tmp_path / "cache")
    assert isinstance(cached.rows, np.memmap) and not isinstance(in_memory.rows, np.memmap)
    assert np.array_equal(np.asarray(cached.rows), in_memory.rows)
    assert np.array_equal(cached.kept, in_memory.kept)
    flat = in_memory.rows.reshape(-1, CONFIG.n_mfcc).astype(np.float64)
    np.testing.assert_allclose(cached.mean, flat.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(cached.variance, flat.var(axis=0), rtol=1e-7)
    reread = split_features(examples, shared_speech_dir, CONFIG, tmp_path / "cache")
    assert reread.from_cache
    np.testing.assert_array_equal(reread.mean, cached.mean)


def test_the_model_is_normalised_by_the_training_splits_moments(speech_dir: Path,
                                                                 tmp_path: Path):
    source = SpeechSourceConfig(data_dir=str(speech_dir), cache_dir=str(tmp_path / "cache"))
    data = prepare_speech_data(source, SplitConfig(), CONFIG, waveforms=False)
    flat = {split: np.asarray(rows).reshape(-1, CONFIG.n_mfcc).astype(np.float64)
            for split, rows in data.splits.x.items()}
    np.testing.assert_allclose(data.mean, flat["train"].mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(data.variance, flat["train"].var(axis=0), rtol=1e-5)
    for other in ("validation", "test"):  # other words and speakers: other moments
        assert not np.allclose(data.mean, flat[other].mean(axis=0), rtol=1e-3)


def truncate(data_file: Path, meta_file: Path) -> Path:
    with data_file.open("r+b") as handle:
        handle.truncate(data_file.stat().st_size - 100)
    return data_file


def flip_middle_byte(data_file: Path, meta_file: Path) -> Path:
    with data_file.open("r+b") as handle:
        handle.seek(data_file.stat().st_size // 2)
        byte = handle.read(1)[0]
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte ^ 0x10]))
    return data_file


def garble_metadata(data_file: Path, meta_file: Path) -> Path:
    meta_file.write_text(meta_file.read_text()[:-40])
    return meta_file


def drop_metadata_key(data_file: Path, meta_file: Path) -> Path:
    meta = json.loads(meta_file.read_text())
    del meta["kept"]
    meta_file.write_text(json.dumps(meta))
    return meta_file


def drop_checksums(data_file: Path, meta_file: Path) -> Path:
    """An entry as one written without checksums would be: not trusted."""
    meta = json.loads(meta_file.read_text())
    del meta["crc32"], meta[META_CHECKSUM]
    meta_file.write_text(json.dumps(meta))
    return meta_file


def flip_a_kept_index(data_file: Path, meta_file: Path) -> Path:
    text = meta_file.read_text()
    meta_file.write_text(text.replace('"kept": [0, 1,', '"kept": [0, 0,', 1))
    assert meta_file.read_text() != text  # a bit flipped in a digit: still valid JSON
    return meta_file


@pytest.mark.parametrize("damage", [truncate, flip_middle_byte, garble_metadata,
                                    drop_metadata_key, drop_checksums, flip_a_kept_index])
def test_damaged_cache_entry_is_logged_and_rebuilt_not_used(
        speech_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage):
    examples = load_speech_commands(speech_dir, SplitConfig(), AUDIO).examples["train"]
    cache_dir = tmp_path / "cache"
    split_features(examples, speech_dir, CONFIG, cache_dir)
    [data_file] = cache_dir.glob("*.f32")
    meta_file = data_file.with_suffix(".json")
    # the checksum streamed while writing is the file's
    assert json.loads(meta_file.read_text())["crc32"] == zlib.crc32(data_file.read_bytes())
    size = data_file.stat().st_size

    damaged = damage(data_file, meta_file)
    caplog.set_level(logging.WARNING, "features.feature_cache")
    assert FeatureCache(cache_dir).load(data_file.stem) is None
    assert any(str(damaged) in record.getMessage() and "rebuilding" in record.getMessage()
               for record in caplog.records)
    rebuilt = split_features(examples, speech_dir, CONFIG, cache_dir)
    assert not rebuilt.from_cache
    fresh = compute_features(examples, speech_dir, CONFIG)
    assert np.array_equal(np.asarray(rebuilt.rows), fresh.rows)
    assert np.array_equal(rebuilt.kept, fresh.kept)
    assert data_file.stat().st_size == size
    again = split_features(examples, speech_dir, CONFIG, cache_dir)
    assert again.from_cache and np.array_equal(np.asarray(again.rows), fresh.rows)


@pytest.mark.parametrize("suffix", [".f32", ".json"])
def test_a_folder_in_a_cache_entrys_place_is_named_not_replaced(speech_dir: Path,
                                                                 tmp_path: Path, suffix: str):
    examples = load_speech_commands(speech_dir, SplitConfig(), AUDIO).examples["train"]
    cache_dir = tmp_path / "cache"
    split_features(examples, speech_dir, CONFIG, cache_dir)
    [data_file] = cache_dir.glob("*.f32")
    entry = data_file.with_suffix(suffix)
    entry.unlink()
    (entry / "mine").mkdir(parents=True)
    with pytest.raises(DataError, match=f"^{entry}: a folder where the feature cache keeps a "
                       "file; move it away, or give another --cache-dir"):
        split_features(examples, speech_dir, CONFIG, cache_dir)
    assert (entry / "mine").is_dir()


def test_decoding_runs_ahead_on_threads_and_keeps_example_order(tmp_path: Path):
    """Chunks finish out of order on the worker threads; frames stay in input order."""

    clips = np.stack([tone(200 + 40 * index, seed=index) for index in range(23)])
    threads = set()

    def slow_first(chunks):
        for number, task in enumerate(chunks):
            def run(task=task, number=number):
                threads.add(threading.current_thread().name)
                time.sleep(0.2 if number == 0 else 0)
                return task()
            yield run

    streamed = extract_features(slow_first(waveform_chunks(clips, size=4)), len(clips), CONFIG,
                                out=tmp_path / "frames.f32", workers=3)
    assert len(threads) > 1 and all(name.startswith("features") for name in threads)
    assert np.array_equal(streamed.kept, np.arange(len(clips)))
    expected = extract_features(waveform_chunks(clips), len(clips), CONFIG)
    assert np.array_equal(np.asarray(streamed.rows), expected.rows)


def test_files_of_a_build_killed_part_way_are_removed_by_the_next_build(
        speech_dir: Path, tmp_path: Path):
    """A build killed by SIGKILL (the OOM killer) never reaches its cleanup; the next build of
    the entry removes what it left, and leaves alone a build of this host that is running."""
    examples = load_speech_commands(speech_dir, SplitConfig(), AUDIO).examples["train"]
    cache_dir = tmp_path / "cache"
    split_features(examples, speech_dir, CONFIG, cache_dir)
    [data_file] = cache_dir.glob("*.f32")
    key = data_file.stem
    for path in (data_file, data_file.with_suffix(".json")):
        path.unlink()
    prefix = FeatureCache.temporary_prefix(key)
    dead = subprocess.Popen(["true"])  # a process that has ended
    dead.wait()
    left = {cache_dir / f"{prefix}.{dead.pid}.f32", cache_dir / f"{prefix}.{dead.pid}.json"}
    running = cache_dir / f"{prefix}.{os.getppid()}.f32"  # a live process of this host
    for path in (*left, running):
        path.write_bytes(b"partial")
    assert set(FeatureCache(cache_dir).abandoned_files(key)) == left
    rebuilt = split_features(examples, speech_dir, CONFIG, cache_dir)
    assert not rebuilt.from_cache and not any(path.exists() for path in left)
    assert running.exists()
