"""MFCC feature stage vs per-clip and batched librosa; the cached second run."""

from __future__ import annotations

import time
from pathlib import Path

import librosa
import numpy as np

from benchmarks.suite import Figure, Options, median_seconds
from features.audio import decode_clip
from features.mfcc import MfccConfig, librosa_kwargs, mfcc_frames
from features.speech_commands import SplitConfig, load_speech_commands
from features.speech_data import prepare_speech_data
from features.speech_features import STAGE_CHUNK_CLIPS, compute_features
from pipelines.speech import SpeechConfig


def real_clips(speech_dir: Path, count: int):
    """The first `count` real word clips of the folder (every split, no silence windows)."""
    data = load_speech_commands(speech_dir, SplitConfig(), MfccConfig().audio)
    examples = sorted((e for split in data.examples.values() for e in split
                       if not e.is_silence), key=lambda e: e.path)
    return examples[:count]


def mfcc_stage(options: Options) -> list[Figure]:
    """Files -> MFCC frames on the same real clips: the project's stage vs librosa."""
    speech_dir = options.data_dir / "speech_commands"
    # every word clip of the folder: with fewer, the stage's fixed costs (threads, cache file)
    # weigh on a rate that is about its steady state
    count, repeats = (300, 1) if options.quick else (100_000, 3)
    fast_repeats = 1 if options.quick else 7  # the stage and the graph take under 1 s a call
    examples = real_clips(speech_dir, count)
    count = len(examples)
    paths = [speech_dir / e.path for e in examples]
    config = MfccConfig()
    kwargs = librosa_kwargs(config)
    out = options.work_dir / "frames.f32"

    def stage():
        return compute_features(examples, speech_dir, config, out=out)

    def per_clip_loop():
        return np.stack([librosa.feature.mfcc(
            y=librosa.util.fix_length(librosa.load(path, sr=config.sample_rate)[0],
                                      size=config.clip_samples), **kwargs).T
            for path in paths])

    def batched_librosa():
        clips = np.stack([decode_clip(path, config.audio) for path in paths])
        return librosa.feature.mfcc(y=clips, **kwargs)

    decoded = np.stack([decode_clip(path, config.audio) for path in paths])
    stage_seconds = median_seconds(stage, fast_repeats)
    loop_seconds = median_seconds(per_clip_loop, repeats)
    batched_seconds = median_seconds(batched_librosa, repeats)
    graph_seconds = median_seconds(lambda: mfcc_frames(decoded, config), fast_repeats)
    math_loop_seconds = median_seconds(
        lambda: [librosa.feature.mfcc(y=clip, **kwargs) for clip in decoded], repeats)
    difference = float(np.max(np.abs(np.asarray(stage().rows) - per_clip_loop())))
    rate, graph_rate = count / stage_seconds, count / graph_seconds
    return [
        Figure("mfcc", f"feature stage, {count} real clips (files -> frames)", rate, "clips/s",
               "per-clip librosa.load + librosa.feature.mfcc loop", count / loop_seconds,
               goal=">= 6,000 clips/s and >= 5x", met=rate >= 6000
               and rate >= 5 * count / loop_seconds),
        Figure("mfcc", "feature stage (files -> frames) vs the compiled maths alone", rate,
               "clips/s", "the compiled MFCC graph on decoded clips", graph_rate,
               goal=">= 0.75x", met=rate >= 0.75 * graph_rate),
        Figure("mfcc", "feature stage vs one batched librosa.feature.mfcc call", rate,
               "clips/s", "decode + one batched librosa call", count / batched_seconds),
        Figure("mfcc", "MFCC of decoded clips alone: the compiled graph", count / graph_seconds,
               "clips/s", "librosa.feature.mfcc per clip", count / math_loop_seconds),
        Figure("mfcc", "max |stage - per-clip librosa|", difference, "", higher_is_better=False,
               goal="<= 1e-3", met=difference <= 1e-3),
    ]


def cached_run(options: Options) -> list[Figure]:
    """Feature time of a first run (empty cache) and a second one (same data and config), as
the default speech run prepares its data (training waveforms included)."""
    config = SpeechConfig.from_options(data_dir=str(options.data_dir / "speech_commands"),
                                       cache_dir=str(options.work_dir / "cache"))
    # the MFCC graph compiled first, so the first run's time is the same whether or not a
    # section before this one compiled it
    mfcc_frames(np.zeros((STAGE_CHUNK_CLIPS, config.features.clip_samples), np.float32),
                config.features)
    times = []
    for _ in range(2):
        started = time.perf_counter()
        data = prepare_speech_data(config.source, config.splits, config.features,
                                   waveforms=config.augment.active)
        times.append(time.perf_counter() - started)
    clips = sum(len(y) for y in data.splits.y.values())
    if not data.lineage.from_cache:
        raise RuntimeError("the second run did not read the feature cache")
    return [Figure("cache", f"features of a second run ({clips} clips, all splits)", times[1],
                   "s", "first run, empty cache", times[0], higher_is_better=False,
                   goal="~0 s", note="one run each, the MFCC graph compiled before both; the "
                   "second run lists the folder, hashes each clip's bytes (duplicates, "
                   "digests) and maps the cached frames")]
