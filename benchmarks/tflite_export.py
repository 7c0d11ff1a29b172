"""The speech champion exported to TensorFlow Lite (`pipelines.export`) in each quantisation:
file size, label agreement with the Keras model and the largest probability difference on the
whole test split (`int8` calibrated on training clips, as the export command calibrates), and
per-clip latency of the interpreter against the Keras model's compiled call, one clip at a time
on 2 cores."""

from __future__ import annotations

import time

import numpy as np

from benchmarks.streaming import trained_predictor
from benchmarks.suite import Figure, Options
from features.speech_commands import SplitConfig, load_speech_commands
from features.speech_features import ExampleDecoder
from pipelines.export import QUANTIZATIONS, TfliteClassifier, convert, exportable, training_draw


def per_clip_ms(call, clips: np.ndarray, repeats: int = 100) -> float:
    """Median milliseconds of one clip through `call`, after a warm-up."""
    call(clips[:1])
    times = []
    for index in range(repeats):
        started = time.perf_counter()
        call(clips[index % len(clips)][None])
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def tflite_export(options: Options) -> list[Figure]:
    speech_dir = options.data_dir / "speech_commands"
    predictor = exportable(trained_predictor(options), "models:/speech-commands@champion")
    data = load_speech_commands(speech_dir, SplitConfig(), predictor.spec)
    test = data.examples["test"][:100] if options.quick else data.examples["test"]
    clips = ExampleDecoder(test, speech_dir, predictor.spec).chunk(0, len(test)).waveforms
    calibration = training_draw(data.examples["train"], speech_dir, predictor.spec)
    expected = predictor.clip_probabilities(clips)
    keras_ms = per_clip_ms(predictor.clip_probabilities, clips)
    figures = []
    for quantize in QUANTIZATIONS:
        content = convert(predictor.model, quantize, calibration)
        lite = TfliteClassifier(content)
        got = lite(clips)
        agreement = 100 * float((got.argmax(1) == expected.argmax(1)).mean())
        difference = float(np.abs(got - expected).max())
        goal = {"int8": ">= 99 %"}.get(quantize, "")
        figures += [
            Figure("tflite", f"{quantize}: label agreement with Keras ({len(clips)} test "
                   "clips)", agreement, "%", goal=goal,
                   met=agreement >= 99 if goal else None,
                   note=f"largest probability difference {difference:.4f}"),
            Figure("tflite", f"{quantize}: file size", len(content) / 2**20, "MiB",
                   higher_is_better=False),
            Figure("tflite", f"{quantize}: per-clip latency", per_clip_ms(lite, clips), "ms",
                   "the Keras model's compiled call, one clip", keras_ms,
                   higher_is_better=False),
        ]
    return figures
