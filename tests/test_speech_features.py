from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from features.mfcc import MfccConfig
from features.speech_commands import load_speech_commands
from features.speech_features import split_features
from tests.datasets import tone, write_wav

CONFIG = MfccConfig()


def test_second_call_reads_the_cache_and_decodes_nothing(speech_dir: Path, tmp_path: Path):
    examples = load_speech_commands(speech_dir).examples["train"]
    cache = tmp_path / "cache"
    first = split_features(examples, speech_dir, CONFIG, cache)
    assert not first.from_cache and first.frames.shape == (len(examples), 98, 40)

    # Rewrite a clip with other audio but the same size and mtime: a cache hit must not see it.
    target = speech_dir / examples[0].path
    stat = target.stat()
    write_wav(target, tone(4000))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size

    second = split_features(examples, speech_dir, CONFIG, cache)
    assert second.from_cache
    assert np.array_equal(np.asarray(second.frames), first.frames)
    assert np.array_equal(second.kept, first.kept)

    third = split_features(examples, speech_dir, MfccConfig(n_mfcc=20), cache)
    assert not third.from_cache and third.frames.shape[-1] == 20


def test_touching_a_file_invalidates_the_cache(speech_dir: Path, tmp_path: Path):
    examples = load_speech_commands(speech_dir).examples["test"]
    cache = tmp_path / "cache"
    split_features(examples, speech_dir, CONFIG, cache)
    target = speech_dir / examples[0].path
    write_wav(target, tone(4000))
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert not split_features(examples, speech_dir, CONFIG, cache).from_cache


def test_undecodable_clip_is_skipped_and_counted(speech_dir: Path, tmp_path: Path):
    examples = load_speech_commands(speech_dir).examples["validation"]
    broken = examples[2]
    (speech_dir / broken.path).write_bytes(b"RIFF\x00\x00garbage")
    features = split_features(examples, speech_dir, CONFIG, tmp_path / "cache")
    assert [path for path, _ in features.skipped] == [broken.path]
    assert "not decodable audio" in features.skipped[0][1]
    assert 2 not in features.kept and len(features.kept) == len(examples) - 1
    assert features.frames.shape[0] == len(examples) - 1
    again = split_features(examples, speech_dir, CONFIG, tmp_path / "cache")
    assert again.from_cache and again.skipped == features.skipped


def test_silence_windows_reach_their_target_level(speech_dir: Path, tmp_path: Path):
    data = load_speech_commands(speech_dir, silence_rms=(0.2, 0.3))
    silence = [e for e in data.examples["train"] if e.is_silence]
    loud = split_features(silence, speech_dir, CONFIG, None)
    quiet = split_features(
        [e for e in load_speech_commands(speech_dir, silence_rms=(1e-4, 2e-4)).examples["train"]
         if e.is_silence], speech_dir, CONFIG, None)
    # c0 of the MFCC tracks log energy: louder silence has a clearly larger first coefficient
    assert loud.frames[..., 0].mean() > quiet.frames[..., 0].mean() + 50
