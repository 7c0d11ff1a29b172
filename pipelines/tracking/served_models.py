"""The served models: pyfunc wrappers that take raw audio or raw text, logged with a signature
and pinned requirements, and loading a logged model back.

A model that cannot be used (no such registered model, alias or version; its artifact folder
or one of its files missing; a file damaged or truncated) raises `ModelError` naming the model
(URI, registered name and version) and what is wrong, from `load_served_model` (`predict`,
`evaluate`) and from `load_context` (`mlflow models serve`, whose server then fails to start).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array
from mlflow.utils.yaml_utils import read_yaml

from pipelines.errors import ModelError
from pipelines.serving import RequestTooLarge, SpeechPredictor, TextPredictor
from pipelines.tracking.registry import model_version_of
from pipelines.tracking.runs import check_tracking, connect

REGISTERED_MODEL_META = "registered_model_meta"  # written by MLflow beside MLmodel on download


def pinned_requirements(*distributions: str) -> list[str]:
    """`name==version` for installed distributions: given explicitly, MLflow skips the ~20 s
    requirement inference."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in distributions]


class RequestRefused(RequestTooLarge, MlflowException):
    """RequestTooLarge as MLflow's scoring server answers it: HTTP 400 with the message (and
    still a PipelineError, which `predict` reports as `error: ...`)."""

    def __init__(self, message: str):
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


def model_name(model_dir: Path) -> str:
    """How a message names the model in `model_dir`: registered name and version if known."""
    try:
        meta = read_yaml(str(model_dir), REGISTERED_MODEL_META)
        return f"model '{meta['model_name']}' version {meta['model_version']}"
    except (OSError, MlflowException, KeyError, TypeError):
        return f"the model at {model_dir}"


@contextlib.contextmanager
def named_model(context) -> Iterator[None]:
    """Prefixes a ModelError raised while loading a pyfunc model's artifacts with its name;
    the artifacts lie in `artifacts/` of the model's folder."""
    try:
        yield
    except ModelError as error:
        folder = Path(next(iter(context.artifacts.values()))).parent.parent
        raise ModelError(f"{model_name(folder)}: {error}") from None


class ServedModel(mlflow.pyfunc.PythonModel):
    """What both served models share: a predictor's answer, or the request refused whole."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:
            return self._predictor.predict(model_input)
        except RequestTooLarge as error:
            raise RequestRefused(str(error)) from None


class TextClassifierModel(ServedModel):
    """Raw review strings in; per review the label, every class probability and an error
    (None when the review was usable). See pipelines.serving.TextPredictor."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)

    def load_context(self, context):
        with named_model(context):
            self._predictor = TextPredictor.load(context.artifacts["classifier"], self.labels)


class SpeechClassifierModel(ServedModel):
    """Raw clips in (file bytes, or a waveform with its sample rate); per clip the label, every
    class probability and an error. See pipelines.serving.SpeechPredictor."""

    def load_context(self, context):
        with named_model(context):
            self._predictor = SpeechPredictor.load(context.artifacts["classifier"],
                                                   context.artifacts["config"])


def load_served_model(model_uri: str, tracking_uri: str | None, store_dir: str | Path):
    """Loads a logged or registered model (e.g. `models:/name@champion`) as pyfunc.

    Raises:
        SetupError: The tracking server does not answer.
        ModelError: No such model, alias or version, or its artifacts are missing or
            damaged; the message names the model and what is wrong.
    """
    check_tracking(tracking_uri)
    connect(tracking_uri, store_dir)
    try:
        version = model_version_of(model_uri)
    except MlflowException as error:
        raise ModelError(f"{model_uri}: no such model version ({error.message})") from None
    name = model_uri if version is None else (
        f"{model_uri} (model '{version.name}' version {version.version})")
    folder = None if version is None else local_artifact_folder(model_uri)
    if folder is not None and not folder.is_dir():
        raise ModelError(f"{name}: its artifact folder {folder} is missing")
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except ModelError as error:  # from load_context: names the version and the file
        raise ModelError(f"{model_uri}: {error}") from None
    except (MlflowException, OSError, pickle.UnpicklingError, EOFError) as error:
        message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        raise ModelError(f"{name}: cannot be loaded ({message})") from error


def local_artifact_folder(model_uri: str) -> Path | None:
    """The local folder holding a registered version's artifacts (None where they are not on
    this file system)."""
    location = urlparse(ModelsArtifactRepository.get_underlying_uri(model_uri))
    return Path(url2pathname(location.path)) if location.scheme in ("", "file") else None


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
