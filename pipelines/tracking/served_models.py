"""The served models: pyfunc wrappers that take raw audio or raw text, logged with a signature
and pinned requirements, and loading a logged model back."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

from pipelines.serving import SpeechPredictor, TextPredictor
from pipelines.tracking.runs import check_tracking, connect


def pinned_requirements(*distributions: str) -> list[str]:
    """`name==version` for installed distributions: given explicitly, MLflow skips the ~20 s
    requirement inference."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in distributions]


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    """Raw review strings in; per review the label, every class probability and an error
    (None when the review was usable). See pipelines.serving.TextPredictor."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)

    def load_context(self, context):
        self._predictor = TextPredictor.load(context.artifacts["classifier"], self.labels)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self._predictor.predict(model_input)


class SpeechClassifierModel(mlflow.pyfunc.PythonModel):
    """Raw clips in (file bytes, or a waveform with its sample rate); per clip the label, every
    class probability and an error. See pipelines.serving.SpeechPredictor."""

    def load_context(self, context):
        self._predictor = SpeechPredictor.load(context.artifacts["classifier"],
                                               context.artifacts["config"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self._predictor.predict(model_input)


def load_served_model(model_uri: str, tracking_uri: str | None, store_dir: str | Path):
    """Loads a logged or registered model (e.g. `models:/name@champion`) as pyfunc.

    Raises:
        SetupError: The tracking server does not answer.
    """
    check_tracking(tracking_uri)
    connect(tracking_uri, store_dir)
    return mlflow.pyfunc.load_model(model_uri)


def output_schema(labels: Sequence[str]) -> Schema:
    return Schema([ColSpec("string", "label")]
                  + [ColSpec("double", f"probability_{label}") for label in labels]
                  + [ColSpec("string", "error", required=False)])


INPUT_EXAMPLE_TEXTS = ("A moving, beautifully acted film.", "Two hours I will never get back.")


def log_text_classifier(classifier_path: str | Path, labels: Sequence[str]) -> str:
    """Logs a text classifier as a pyfunc model that takes raw strings.

    Args:
        classifier_path: A .keras model taking strings, or a joblib scikit-learn pipeline.
        labels: Class names in output order.

    Returns:
        The logged model's URI.
    """
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=TextClassifierModel(labels),
        artifacts={"classifier": str(classifier_path)},
        signature=ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                                 outputs=output_schema(labels)),
        input_example=pd.DataFrame({"text": list(INPUT_EXAMPLE_TEXTS)}),
        pip_requirements=pinned_requirements(
            "tensorflow", "keras", "mlflow", "scikit-learn", "pandas"),
    )
    return info.model_uri


def log_speech_classifier(model_path: str | Path, config_path: str | Path,
                          labels: Sequence[str], input_example: pd.DataFrame, *,
                          infer_requirements: bool = False) -> str:
    """Logs a speech classifier as a pyfunc model that takes raw audio.

    Args:
        model_path: The .keras classifier over MFCC frames.
        config_path: Labels and feature configuration (SpeechPredictor.save_config).
        labels: Class names in output order.
        input_example: A few rows of `audio` bytes and/or `waveform` + `sample_rate`.
        infer_requirements: Let MLflow infer the pip requirements, which loads the model in a
            subprocess (~20 s), instead of pinning the installed versions of what it needs.

    Returns:
        The logged model's URI.
    """
    inputs = Schema([ColSpec("binary", "audio", required=False),
                     ColSpec(Array(DataType.double), "waveform", required=False),
                     ColSpec("long", "sample_rate", required=False)])
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=SpeechClassifierModel(),
        artifacts={"classifier": str(model_path), "config": str(config_path)},
        signature=ModelSignature(inputs=inputs, outputs=output_schema(labels)),
        input_example=input_example,
        pip_requirements=None if infer_requirements else pinned_requirements(
            "tensorflow", "keras", "mlflow", "librosa", "soundfile", "pandas"),
    )
    return info.model_uri
