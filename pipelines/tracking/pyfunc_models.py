"""The served models' pyfunc classes: raw audio or raw text in, per row the label, every class
probability and an error.

A logged model ships this module with the project modules it imports (`model_code`), so it
loads where only the model's own requirements are installed. A model that cannot be used (an
artifact file missing, damaged or truncated) raises `ModelError` from `load_context`, naming
the model (registered name and version) and the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.utils.yaml_utils import read_yaml

from pipelines.errors import ModelError
from pipelines.request_bounds import NoInputColumns, RequestTooLarge
from pipelines.serving import SpeechPredictor, TextPredictor

REGISTERED_MODEL_META = "registered_model_meta"  # written by MLflow beside MLmodel on download


ECHO_CHARS = 300  # of the request's text MLflow puts before a refusal's message


class Refusal(MlflowException):
    """A request refused whole, as MLflow's scoring server answers it: HTTP 400 with the
    message. The server puts the request's text before the message of an MlflowException
    raised by `predict` (for the `inputs` JSON form, every value in it): a refusal keeps the
    first ECHO_CHARS characters of that text, so a request refused for its size is not sent
    back whole."""

    def __init__(self, message: str):
        self.reason = message
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, text: str) -> None:
        echo = len(text) - len(self.reason)
        if text.endswith(self.reason) and echo > 2 * ECHO_CHARS:
            text = (f"{text[:ECHO_CHARS]} ... [{echo - ECHO_CHARS:,} more characters of the "
                    f"request left out]\nError: {self.reason}")
        self._message = text


class RequestRefused(Refusal, RequestTooLarge):
    """RequestTooLarge as a Refusal (and still a PipelineError, which `predict` reports as
    `error: ...`)."""


class InputsRefused(Refusal, NoInputColumns):
    """NoInputColumns as a Refusal."""


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

    @property
    def predictor(self) -> SpeechPredictor | TextPredictor:
        """What answers the requests (loaded by `load_context`)."""
        return self._predictor

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:
            return self._predictor.predict(model_input)
        except RequestTooLarge as error:
            raise RequestRefused(str(error)) from None
        except NoInputColumns as error:
            raise InputsRefused(str(error)) from None


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
