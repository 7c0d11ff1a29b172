from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile

from benchmarks.full_dataset import (
    V002_CLIPS,
    V002_SPEAKERS,
    V002_WORD_COUNTS,
    generate,
    plan_folder,
    word_counts,
)
from features.audio import AudioSpec
from features.errors import ConfigError, DataError
from features.speech_commands import SplitConfig, load_speech_commands
from features.speech_splits import which_set

CLIP_NAME = re.compile(r"^[0-9a-f]{8}_nohash_\d+\.wav$")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_full_size_plan_has_the_release_proportions(shared_speech_dir: Path):
    plan = plan_folder(shared_speech_dir)
    counts = {word: 0 for word in V002_WORD_COUNTS}
    for clip in plan.clips:
        counts[clip.path.split("/")[0]] += 1
    assert counts == V002_WORD_COUNTS and len(plan.clips) == V002_CLIPS
    assert len(plan.speakers) == V002_SPEAKERS
    for split in ("validation", "test"):
        assert 7 < 100 * len(plan.lists[split]) / V002_CLIPS < 13
    # a test clip is made from a real test clip wherever the source has one of its word
    tests = set(plan.lists["test"])
    real_tests = set((shared_speech_dir / "testing_list.txt").read_text().split())
    from_test = [c.source in real_tests for c in plan.clips
                 if c.path in tests and c.path.startswith("yes/")]
    assert from_test and all(from_test)


def test_scaled_down_counts_keep_the_proportions():
    counts = word_counts(350)
    assert sum(counts.values()) == 350
    for word, count in counts.items():
        assert abs(count - V002_WORD_COUNTS[word] * 350 / V002_CLIPS) < 1
    with pytest.raises(ConfigError, match="at least 35"):
        word_counts(34)


def test_writes_a_folder_the_reader_keeps_whole(shared_speech_dir: Path, tmp_path: Path):
    out = tmp_path / "speech_commands"
    plan = generate(out, 350, source=shared_speech_dir, workers=2)
    words = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert words == sorted(V002_WORD_COUNTS)
    assert sorted(p.name for p in (out / "_background_noise_").iterdir()) == sorted(
        p.name for p in (shared_speech_dir / "_background_noise_").iterdir())
    clips = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.wav")
                   if not p.parent.name.startswith("_"))
    assert clips == sorted(c.path for c in plan.clips)
    assert {w: sum(c.startswith(f"{w}/") for c in clips) for w in words} == word_counts(350)
    assert all(CLIP_NAME.match(Path(clip).name) for clip in clips)
    info = soundfile.info(out / clips[0])
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (
        16000, 1, 16000, "PCM_16")
    # the lists name exactly the clips the official hash rule puts in each split
    for split, name in (("validation", "validation_list.txt"), ("test", "testing_list.txt")):
        listed = (out / name).read_text().split()
        assert listed == [c for c in clips if which_set(c, 10, 10) == split]
    # every clip is a varied copy: unlike its source and every other clip
    first = plan.clips[0]
    assert digest(out / first.path) != digest(shared_speech_dir / first.source)
    source, copy = (soundfile.read(path, dtype="float32")[0]
                    for path in (shared_speech_dir / first.source, out / first.path))
    assert np.abs(copy).max() > 0.01 and not np.allclose(copy, source[:16000], atol=1e-3)
    data = load_speech_commands(out, SplitConfig(task="all-words"), AudioSpec(16000, 1.0))
    assert data.skipped == [] and data.split_method == "lists"
    assert sum(len(examples) for examples in data.examples.values()) == 350


def test_reuses_a_finished_folder_and_refuses_another(shared_speech_dir: Path,
                                                      tmp_path: Path):
    out = tmp_path / "speech_commands"
    generate(out, 40, source=shared_speech_dir, workers=1)
    stamp = (out / "yes").stat().st_mtime_ns, (out / "generated.json").stat().st_mtime_ns
    generate(out, 40, source=shared_speech_dir, workers=1)
    assert ((out / "yes").stat().st_mtime_ns, (out / "generated.json").stat().st_mtime_ns) == stamp
    with pytest.raises(DataError, match="not empty"):
        generate(out, 41, source=shared_speech_dir)
    with pytest.raises(DataError, match="source folder not found: .*missing"):
        generate(tmp_path / "other", 40, source=tmp_path / "missing")
