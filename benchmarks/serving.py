"""Served-inference latency and throughput through `mlflow.pyfunc` (issue 4's figures).

Usage:
    python -m benchmarks.serving [--speech-model-uri URI] [--sentiment-model-uri URI]
                                 [--data-dir ../shared/data] [--json out.json]

Without model URIs it logs models of the default architectures (untrained: latency does not
depend on the weights) into a temporary store and loads them back, so it runs anywhere. It
times `predict` on one real clip / one real review at a time (p50, p99 over repeated calls after
a warm-up) and on one batch of MAX_REQUEST_ROWS (512, the most a request may send; median of
repeats), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from benchmarks.suite import Figure
from features.imdb import LABELS as REVIEW_LABELS
from features.speech_commands import TWELVE_CLASS_LABELS
from features.text import fit_vectorizer
from models.recurrent import text_to_probabilities
from pipelines import sentiment, speech, tracking
from pipelines.request_bounds import MAX_REQUEST_ROWS
from pipelines.serving import SpeechPredictor

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_single(predict, inputs: list[pd.DataFrame], calls: int, warmup: int = 10
                ) -> list[float]:
    """Milliseconds per call, one input per call, cycling through `inputs`."""
    for index in range(warmup):
        predict(inputs[index % len(inputs)])
    times = []
    for index in range(calls):
        started = time.perf_counter()
        predict(inputs[index % len(inputs)])
        times.append((time.perf_counter() - started) * 1000)
    return times


def time_batch(predict, batch: pd.DataFrame, repeats: int) -> float:
    """Median inputs per second over `repeats` calls on the whole batch (after one warm-up)."""
    predict(batch)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict(batch)
        rates.append(len(batch) / (time.perf_counter() - started))
    return statistics.median(rates)


def default_models(store: Path, data_dir: Path) -> tuple[str, str]:
    """Logs default-architecture speech and sentiment models; returns their model URIs."""
    text, voice = sentiment.SentimentConfig(), speech.SpeechConfig()
    mfcc = voice.features
    labels = TWELVE_CLASS_LABELS
    keras.utils.set_random_seed(0)
    speech_model = speech.build_model(voice, len(labels), np.zeros(mfcc.n_mfcc),
                                      np.ones(mfcc.n_mfcc))
    reviews = [p.read_text(encoding="utf-8") for p in
               sorted((data_dir / "aclImdb" / "train" / "pos").glob("*.txt"))[:2000]]
    vectorizer = fit_vectorizer(reviews, text.tokens.vocabulary_size,
                                text.tokens.sequence_length)
    text_model = sentiment.build_model(text, vectorizer.vocabulary_size(), 2)
    folder = store.parent
    with tracking.open_run("serving-benchmark", tracking_uri=None, store_dir=store):
        speech_model.save(folder / "speech.keras")
        config = SpeechPredictor(speech_model, labels, mfcc).save_config(folder / "speech.json")
        speech_uri = tracking.log_speech_classifier(
            folder / "speech.keras", config, labels,
            speech.serving_input_example(mfcc.sample_rate))
    with tracking.open_run("serving-benchmark", tracking_uri=None, store_dir=store):
        text_to_probabilities(vectorizer, text_model).save(folder / "text.keras")
        text_uri = tracking.log_text_classifier(folder / "text.keras", REVIEW_LABELS)
    return speech_uri, text_uri


def measure(speech, text, data_dir: Path, calls: int, batch_size: int, repeats: int
            ) -> dict[str, dict[str, float]]:
    """p50/p99 milliseconds of one real clip / review per call, and inputs per second in a
    batch of `batch_size`, for loaded pyfunc models."""
    clips = [p.read_bytes() for p in
             sorted((data_dir / "speech_commands").glob("*/*_nohash_*.wav"))]
    reviews = [p.read_text(encoding="utf-8") for p in
               sorted((data_dir / "aclImdb" / "test" / "pos").glob("*.txt"))]
    clip_batch = pd.DataFrame({"audio": (clips * (batch_size // len(clips) + 1))[:batch_size]})
    review_batch = pd.DataFrame({"text": reviews[:batch_size]})
    figures = {}
    for name, model, singles, batch in (
            ("clip", speech, [pd.DataFrame({"audio": [c]}) for c in clips[:100]], clip_batch),
            ("review", text, [pd.DataFrame({"text": [r]}) for r in reviews[:100]],
             review_batch)):
        times = time_single(model.predict, singles, calls)
        figures[name] = {
            "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
            "batch_per_second": time_batch(model.predict, batch, repeats),
            "batch_size": len(batch),
        }
    return figures


def served_inference(options) -> list:
    """The suite's section: default-architecture models through mlflow.pyfunc; the reference
    for a batch is the same model answering the inputs one call at a time."""
    store = options.work_dir / "mlruns"
    speech_uri, text_uri = default_models(store, options.data_dir)
    speech = tracking.load_served_model(speech_uri, None, store)
    text = tracking.load_served_model(text_uri, None, store)
    calls, repeats = (50, 1) if options.quick else (200, 3)
    figures = measure(speech, text, options.data_dir, calls, MAX_REQUEST_ROWS, repeats)
    rows = []
    for name, unit in (("clip", "clips/s"), ("review", "reviews/s")):
        figure = figures[name]
        rows += [
            Figure("serving", f"p50 latency, one {name} per call", figure["p50_ms"], "ms",
                   higher_is_better=False, note=f"p99 {figure['p99_ms']:.1f} ms over {calls} "
                   "calls"),
            Figure("serving", f"batch of {figure['batch_size']} {name}s", figure[
                "batch_per_second"], unit, "one per call (1000 ms / p50)",
                1000 / figure["p50_ms"]),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speech-model-uri")
    parser.add_argument("--sentiment-model-uri")
    parser.add_argument("--tracking-uri", help="for model URIs in a remote store")
    parser.add_argument("--store-dir", default="mlruns")
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--calls", type=int, default=200, help="single-input calls timed")
    parser.add_argument("--batch", type=int, default=MAX_REQUEST_ROWS,
                        help="inputs per batch call (at most MAX_REQUEST_ROWS)")
    parser.add_argument("--repeats", type=int, default=3, help="batch calls timed")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not 1 <= args.batch <= MAX_REQUEST_ROWS:
        parser.error(f"--batch must be in 1..{MAX_REQUEST_ROWS} (MAX_REQUEST_ROWS, the most "
                     f"a request may send), not {args.batch}")

    with tempfile.TemporaryDirectory() as folder:
        speech_uri, text_uri = args.speech_model_uri, args.sentiment_model_uri
        given = (args.tracking_uri, args.store_dir)  # where the URIs given are found
        built = (None, Path(folder) / "mlruns")  # where the models built here are
        speech_from, text_from = (given if speech_uri else built), (given if text_uri else built)
        if not (speech_uri and text_uri):
            speech_built, text_built = default_models(built[1], args.data_dir)
            speech_uri, text_uri = speech_uri or speech_built, text_uri or text_built
        speech = tracking.load_served_model(speech_uri, *speech_from)
        text = tracking.load_served_model(text_uri, *text_from)
        figures = measure(speech, text, args.data_dir, args.calls, args.batch, args.repeats)
    print(f"{'input':8} {'p50 ms':>8} {'p99 ms':>8} {'batch/s':>9}  (model URIs: "
          f"{speech_uri}, {text_uri})")
    for name, figure in figures.items():
        print(f"{name:8} {figure['p50_ms']:8.1f} {figure['p99_ms']:8.1f} "
              f"{figure['batch_per_second']:9.0f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
