"""Bounded memory at full-dataset scale: a feature cache of >= 100,000 clips (real clips,
time-shifted and mixed with background noise) built and trained on for one epoch.

The suite runs this module in a child process so that its peak resident memory is its own:
    python -m benchmarks.memory --clips 100000 --work-dir DIR --data-dir ../shared/data
prints one JSON line of figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np

from benchmarks.peak import peak_rss_kb
from benchmarks.suite import Figure, Options, run_child
from features.audio import decode_clip, decode_recording
from features.input_pipelines import TrainingBatches, make_dataset, steps_per_epoch
from features.speech_commands import TWELVE_CLASS_LABELS, load_speech_commands
from features.speech_features import STAGE_CHUNK_CLIPS, DecodedChunk, extract_features
from pipelines import training
from pipelines.speech import SpeechConfig, build_model

SHIFT_SECONDS = 0.1
NOISE_PROBABILITY, NOISE_VOLUME = 0.8, 0.1  # as TensorFlow's speech_commands example


def variant_chunk(base: np.ndarray, labels: np.ndarray, noise: list[np.ndarray], start: int,
                  stop: int, sample_rate: int):
    """Clips start..stop-1: a base clip each (by seeded choice), shifted by up to +-100 ms and
    mixed with a random stretch of background noise."""
    rng = np.random.default_rng(start)
    picks = rng.integers(len(base), size=stop - start)
    limit = int(SHIFT_SECONDS * sample_rate)
    clips = np.zeros((stop - start, base.shape[1]), np.float32)
    for row, pick in enumerate(picks):
        shift = int(rng.integers(-limit, limit + 1))
        source = base[pick]
        if shift >= 0:
            clips[row, shift:] = source[:len(source) - shift]
        else:
            clips[row, :shift] = source[-shift:]
        if rng.random() < NOISE_PROBABILITY:
            recording = noise[int(rng.integers(len(noise)))]
            offset = int(rng.integers(len(recording) - base.shape[1]))
            clips[row] += rng.uniform(0, NOISE_VOLUME) * recording[offset:offset + base.shape[1]]
    np.clip(clips, -1, 1, out=clips)
    return DecodedChunk(clips, list(range(start, stop)), []), labels[picks]


def run(clips: int, work_dir: Path, data_dir: Path) -> dict:
    config = SpeechConfig()
    mfcc = config.features
    speech_dir = data_dir / "speech_commands"
    examples = [e for e in load_speech_commands(speech_dir, config.splits, mfcc.audio)
                .examples["train"] if not e.is_silence]
    base = np.stack([decode_clip(speech_dir / e.path, mfcc.audio) for e in examples])
    index = {label: i for i, label in enumerate(TWELVE_CLASS_LABELS)}
    labels = np.asarray([index[e.label] for e in examples], np.int32)
    noise = [decode_recording(path, mfcc.sample_rate) for path in
             sorted((speech_dir / "_background_noise_").glob("*.wav"))]
    y = np.empty(clips, np.int32)

    def chunks():
        for start in range(0, clips, STAGE_CHUNK_CLIPS):
            stop = min(start + STAGE_CHUNK_CLIPS, clips)

            def task(start=start, stop=stop):
                chunk, chunk_labels = variant_chunk(base, labels, noise, start, stop,
                                                    mfcc.sample_rate)
                y[start:stop] = chunk_labels
                return chunk
            yield task

    started = time.perf_counter()
    features = extract_features(chunks(), clips, mfcc, out=work_dir / "frames.f32",
                                desc="MFCC variants")
    feature_seconds = time.perf_counter() - started
    rss_after_features = peak_rss_kb() / 2**20

    # one epoch of the default model and optimiser, streamed from the cache file as the
    # pipeline streams a split larger than --in-memory-mb (validation: the first 512 clips)
    keras.utils.set_random_seed(config.optim.seed)
    limit, classes = config.source.stream_over_bytes, len(TWELVE_CLASS_LABELS)
    batch = config.optim.batch_size
    batches = TrainingBatches(
        make_dataset(features.frames, y, batch, classes, shuffle_seed=config.optim.seed,
                     stream_over_bytes=limit),
        make_dataset(np.asarray(features.frames[:512]), y[:512], batch, classes),
        steps_per_epoch(clips, batch))
    started = time.perf_counter()
    fitted = training.fit(
        lambda: build_model(config, classes, features.mean, features.variance), batches,
        dataclasses.replace(config.optim, epochs=1), strategy="none", verbose=0)
    train_seconds = time.perf_counter() - started
    return {
        "clips": clips,
        "cache_gb": features.frames.nbytes / 2**30,
        "streamed": features.frames.nbytes > limit,
        "feature_clips_per_second": clips / feature_seconds,
        "train_samples_per_second": clips / train_seconds,
        "train_accuracy": float(fitted.history["accuracy"][-1]),
        "peak_rss_gb_after_features": rss_after_features,
    }


def bounded_memory(options: Options) -> list[Figure]:
    clips = 5000 if options.quick else 100_000
    child = run_child(["benchmarks.memory", "--clips", str(clips), "--work-dir",
                       str(options.work_dir), "--data-dir", str(options.data_dir)],
                      options.work_dir / "memory.log")
    figures = json.loads(child.output.strip().splitlines()[-1])
    figures["peak_rss_gb"] = child.peak_rss_gb
    note = (f"{clips:,} clips, {figures['cache_gb']:.2f} GB of float32 frames in the cache; "
            f"streamed: {figures['streamed']}; peak RSS after building the cache "
            f"{figures['peak_rss_gb_after_features']:.2f} GB")
    return [
        Figure("memory", f"peak RSS, build + 1 epoch over {clips:,} clips",
               figures["peak_rss_gb"], "GB", "the frames themselves", figures["cache_gb"],
               higher_is_better=False, goal="<= 3 GB", met=figures["peak_rss_gb"] <= 3,
               note=note),
        Figure("memory", "feature stage on generated variants", figures[
            "feature_clips_per_second"], "clips/s"),
        Figure("memory", "training, one epoch streamed from the cache",
               figures["train_samples_per_second"], "samples/s"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=100_000)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(args.clips, args.work_dir, args.data_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
