"""What tracking adds to a run: logging the model, registering it and moving the alias."""

from __future__ import annotations

import statistics
import time

import mlflow
import numpy as np

from benchmarks.suite import Figure, Options
from features.speech_commands import TWELVE_CLASS_LABELS
from pipelines import tracking
from pipelines.serving import SpeechPredictor
from pipelines.speech import SpeechConfig, build_model, serving_input_example
from pipelines.tracking import model_code


def tracking_overhead(options: Options) -> list[Figure]:
    """`log_model` + register + alias on the default speech model: the pipeline's way
    (signature, input example, pinned requirements) vs the same call letting MLflow infer the
    requirements (it loads the model in a subprocess to see what it imports)."""
    config = SpeechConfig()
    mfcc = config.features
    model = build_model(config, len(TWELVE_CLASS_LABELS), np.zeros(mfcc.n_mfcc),
                        np.ones(mfcc.n_mfcc))
    folder = options.work_dir
    model.save(folder / "classifier.keras")
    config_path = SpeechPredictor(model, TWELVE_CLASS_LABELS, mfcc).save_config(
        folder / "config.json")
    example = serving_input_example(mfcc.sample_rate)
    store = folder / "mlruns"
    metrics = {"test_accuracy": 0.5}

    def pipeline_way(number: int) -> float:
        # a run logs one model per process: each call walks the code and pins the
        # requirements afresh, as each run does
        model_code.closure.cache_clear()
        model_code.pinned_requirements.cache_clear()
        with tracking.open_run("tracking-benchmark", tracking_uri=None, store_dir=store):
            started = time.perf_counter()
            uri = tracking.log_speech_classifier(folder / "classifier.keras", config_path,
                                                 TWELVE_CLASS_LABELS, example)
            tracking.register_and_promote(uri, "pipeline-way", metrics=metrics,
                                          test_digest="t", data_digest=f"d{number}")
            return time.perf_counter() - started

    def mlflow_default() -> float:
        with tracking.open_run("tracking-benchmark", tracking_uri=None, store_dir=store):
            started = time.perf_counter()
            uri = tracking.log_speech_classifier(folder / "classifier.keras", config_path,
                                                 TWELVE_CLASS_LABELS, example,
                                                 infer_requirements=True)
            version = mlflow.register_model(uri, "mlflow-default")
            mlflow.MlflowClient().set_registered_model_alias("mlflow-default", "champion",
                                                             version.version)
            return time.perf_counter() - started

    pipeline_way(0)  # warm-up: creates the experiment and the registered model
    repeats = 2 if options.quick else 5
    ours = statistics.median(pipeline_way(n + 1) for n in range(repeats))
    naive = mlflow_default()
    return [Figure("tracking", "log_model + register + alias per run", ours, "s",
                   "the same, requirements inferred by MLflow", naive,
                   higher_is_better=False, goal="<= 3 s", met=ours <= 3,
                   note=f"median of {repeats} after a warm-up; the reference is one call")]
