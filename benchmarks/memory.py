"""Bounded memory at full-dataset scale: >= 100,000 clips (real clips, time-shifted and mixed
with background noise) through the feature stage, then one epoch of the default speech run's
training over them, as the pipeline trains a split too large to hold.

The clips' waveforms and MFCC frames go to files, as the feature cache holds them, and the
epoch is made by the pipeline's own `pipelines.speech.training_batches` (the default's
augmentation, waveforms read from their file batch by batch) and `pipelines.training.fit`.
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
from features.audio import decode_clip
from features.augment import mix_noise, time_shift
from features.speech_commands import TWELVE_CLASS_LABELS, load_speech_commands
from features.speech_data import SpeechData, background_noise
from features.speech_features import STAGE_CHUNK_CLIPS, DecodedChunk, extract_features
from features.splits import Lineage, Splits
from pipelines import training
from pipelines.speech import SpeechConfig, build_model, training_batches

SHIFT_SECONDS = 0.1
NOISE_PROBABILITY, NOISE_VOLUME = 0.8, 0.1  # as TensorFlow's speech_commands example
VALIDATION_CLIPS = 512


def variant_chunk(base: np.ndarray, labels: np.ndarray, noise: list[np.ndarray], start: int,
                  stop: int, sample_rate: int) -> tuple[DecodedChunk, np.ndarray]:
    """Clips start..stop-1: a base clip each (by seeded choice), shifted by up to +-100 ms and
    mixed with a random stretch of background noise (`features.augment`'s own steps)."""
    rng = np.random.default_rng(start)
    picks = rng.integers(len(base), size=stop - start)
    clips = time_shift(base[picks], int(SHIFT_SECONDS * sample_rate), rng)
    clips = mix_noise(clips, noise, NOISE_PROBABILITY, NOISE_VOLUME, rng)
    return DecodedChunk(clips.astype(np.float32), list(range(start, stop)), []), labels[picks]


def run(clips: int, work_dir: Path, data_dir: Path) -> dict:
    speech_dir = data_dir / "speech_commands"
    config = SpeechConfig.from_options(data_dir=str(speech_dir))  # its background noise
    mfcc = config.features
    examples = [e for e in load_speech_commands(speech_dir, config.splits, mfcc.audio)
                .examples["train"] if not e.is_silence]
    base = np.stack([decode_clip(speech_dir / e.path, mfcc.audio) for e in examples])
    index = {label: i for i, label in enumerate(TWELVE_CLASS_LABELS)}
    labels = np.asarray([index[e.label] for e in examples], np.int32)
    noise = background_noise(config.source, mfcc.sample_rate)
    y = np.empty(clips, np.int32)
    waveform_file = work_dir / "waveforms.f32"
    row_bytes = mfcc.clip_samples * np.dtype(np.float32).itemsize
    fd = os.open(waveform_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)

    def chunks():
        for start in range(0, clips, STAGE_CHUNK_CLIPS):
            stop = min(start + STAGE_CHUNK_CLIPS, clips)

            def task(start=start, stop=stop):
                chunk, chunk_labels = variant_chunk(base, labels, noise, start, stop,
                                                    mfcc.sample_rate)
                y[start:stop] = chunk_labels
                # written, not mapped: pages of a written map would count as this process's
                data = chunk.waveforms.tobytes()
                if os.pwrite(fd, data, start * row_bytes) != len(data):
                    raise OSError(f"{waveform_file}: short write at clip {start} (disk full?)")
                return chunk
            yield task

    started = time.perf_counter()
    try:
        features = extract_features(chunks(), clips, mfcc, out=work_dir / "frames.f32",
                                    desc="MFCC variants")
    finally:
        os.close(fd)
    feature_seconds = time.perf_counter() - started
    rss_after_features = peak_rss_kb() / 2**20
    waveforms = np.memmap(waveform_file, np.float32, "r", shape=(clips, mfcc.clip_samples))

    # one epoch of the default run's training (validation: the first clips' frames)
    keras.utils.set_random_seed(config.optim.seed)
    validation = np.asarray(features.rows[:VALIDATION_CLIPS])
    data = SpeechData(
        Splits(TWELVE_CLASS_LABELS, {"train": features.rows, "validation": validation},
               {"train": y, "validation": y[:VALIDATION_CLIPS]}),
        Lineage(str(speech_dir), {}), features.mean, features.variance, waveforms)
    batches = training_batches(config, data)
    started = time.perf_counter()
    fitted = training.fit(
        lambda: build_model(config, len(TWELVE_CLASS_LABELS), features.mean,
                            features.variance),
        batches, dataclasses.replace(config.optim, epochs=1), strategy="none", verbose=0)
    train_seconds = time.perf_counter() - started
    limit = config.source.stream_over_bytes
    return {
        "clips": clips,
        "cache_gb": features.rows.nbytes / 2**30,
        "waveforms_gb": waveforms.nbytes / 2**30,
        "streamed": waveforms.nbytes > limit,
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
    note = (f"{clips:,} clips, {figures['cache_gb']:.2f} GB of float32 frames and "
            f"{figures['waveforms_gb']:.2f} GB of waveforms in files; waveforms streamed: "
            f"{figures['streamed']}; peak RSS after the feature stage "
            f"{figures['peak_rss_gb_after_features']:.2f} GB")
    return [
        Figure("memory", f"peak RSS, build + 1 epoch over {clips:,} clips",
               figures["peak_rss_gb"], "GB", "the frames themselves", figures["cache_gb"],
               higher_is_better=False, goal="<= 3 GB", met=figures["peak_rss_gb"] <= 3,
               note=note),
        Figure("memory", "feature stage on generated variants", figures[
            "feature_clips_per_second"], "clips/s"),
        Figure("memory", "training, one augmented epoch streamed from the waveforms",
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
