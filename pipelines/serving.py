"""Predictors behind the served models: raw audio or raw text in, labels and probabilities out.

They use training's feature code (features.audio, then the MFCC maths of features.mfcc_layer
inside the Keras model; the saved TextVectorization for text), so a served model sees what the
trained one saw. MLflow only wraps them (pipelines.tracking); they work without it.

Each input row is answered on its own: a row that cannot be used (not decodable audio, a clip
longer than MAX_AUDIO_SECONDS, a waveform with a sample rate out of range or NaN/Inf values,
an empty review or one longer than MAX_TEXT_CHARS) gets None for its label and probabilities
and a message in `error`; the other rows of the request are answered normally.

A request as a whole is bounded too, before any row is decoded (pipelines.request_bounds): a
request over a bound is refused whole with `RequestTooLarge`, which names the bound and the
request's size.

Artifacts that are missing or damaged raise `ModelError` naming the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import joblib
import keras
import numpy as np
import pandas as pd
import tensorflow as tf

import models.ngram  # noqa: F401  (registers the n-gram branch's layers)
import models.recurrent  # noqa: F401  (registers the model's custom layers)
from features.audio import (
    EMPTY,
    AudioDecodeError,
    audio_info,
    check_sample_rate,
    check_samples,
    decode_clip,
    fix_length,
    resample,
)
from features.batching import padded_calls
from features.mfcc import MfccConfig, mfcc_frames
from features.text import encode_reviews, review_text  # also registers the standardisation
from pipelines.errors import ModelError
from pipelines.request_bounds import (
    SPEECH_MAX_REQUEST_BYTES,
    TEXT_MAX_REQUEST_BYTES,
    check_request,
    is_waveform,
    speech_row_bytes,
    text_bytes,
)
from pipelines.request_rows import file_bytes, is_empty_cell, request_rows

ERROR_COLUMN = "error"
DIRECT_CALL_MAX = 64  # inputs per compiled call
MAX_AUDIO_SECONDS = 60  # longest clip a request may send (only the first clip_seconds are used)
MAX_TEXT_CHARS = 100_000  # longest review a request may send (the longest IMDB one is ~14k)
def load_artifact(path: str | Path, load: Callable[[Path], Any], kind: str) -> Any:
    """`load(path)` for one of a model's artifact files.

    Raises:
        ModelError: The file is missing, or it could not be loaded (damaged, truncated, or
            not a `kind`); the message names the file and why.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"artifact {path.name} is missing (no file at {path})")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):  # Keras says "File not found"
        raise ModelError(f"artifact {path.name} could not be loaded: not a .keras zip archive "
                         f"({path.stat().st_size:,} bytes; truncated or damaged?) at {path}")
    try:
        return load(path)
    except Exception as error:  # a failure to deserialise is taken for the file's; the
        # loader's own error stays chained for a caller who needs its traceback
        raise ModelError(f"artifact {path.name} could not be loaded as {kind} "
                         f"({type(error).__name__}: {error}); damaged or truncated? "
                         f"at {path}") from error


class FastPredict:
    """A Keras model's predictions, fast for one input as well as for many.

    Keras' `predict` builds a data iterator on every call (tens of milliseconds), which would
    dominate the latency of one clip or one review. Inputs go instead through an XLA-compiled
    call of the model (about 10x faster than the plain graph for these recurrent stacks on
    CPU) in chunks of DIRECT_CALL_MAX, each padded to a power of two so that at most a handful
    of shapes are ever compiled.
    """

    def __init__(self, model):
        self.model = model

        def call(inputs):
            return model(inputs, training=False)

        spec = tf.TensorSpec(model.input.shape, model.input.dtype)
        self._call = tf.function(call, input_signature=[spec], jit_compile=True,
                                 autograph=False)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return padded_calls(self._call, inputs, DIRECT_CALL_MAX)


def result_frame(labels: Sequence[str], probabilities: np.ndarray, errors: Sequence[str | None]
                 ) -> pd.DataFrame:
    """One row per input: `label`, `probability_<label>` per class, and `error` (None when the
    input was usable; for a failed input the label and probabilities are None)."""
    probabilities = np.asarray(probabilities, np.float64)
    names = [None if error is not None else labels[int(row.argmax())]
             for row, error in zip(probabilities, errors, strict=True)]
    frame = pd.DataFrame({"label": pd.Series(names, dtype=object)})
    for index, label in enumerate(labels):
        column = pd.Series(probabilities[:, index])
        if any(error is not None for error in errors):  # null, not NaN (not JSON) if failed
            column = column.astype(object).where(column.notna(), None)
        frame[f"probability_{label}"] = column
    frame[ERROR_COLUMN] = pd.Series(list(errors), dtype=object)
    return frame


class SpeechPredictor:
    """Raw clips -> Keras classifier over (clips, samples) waveforms (its first layer the MFCC
    stage), or over MFCC frames computed here with training's code -> labels."""

    INPUT_COLUMNS = ("audio", "waveform", "sample_rate")

    def __init__(self, model, labels: Sequence[str], mfcc: MfccConfig):
        self.model = model
        self.labels = list(labels)
        self.mfcc = mfcc
        self._predict = FastPredict(model) if model is not None else None
        self.spec = mfcc.audio
        self.takes_waveforms = model is not None and len(model.input.shape) == 2

    @classmethod
    def load(cls, model_path: str | Path, config_path: str | Path) -> SpeechPredictor:
        """Loads the .keras classifier and the JSON written by `save_config`.

        Raises:
            ModelError: A file is missing or damaged.
        """
        config = load_artifact(config_path, read_speech_config, "the labels and MFCC settings")
        return cls(load_artifact(model_path, keras.saving.load_model, "a Keras model"),
                   *config)

    def save_config(self, path: str | Path) -> Path:
        """Writes the labels and the feature configuration the model needs."""
        path = Path(path)
        path.write_text(json.dumps({"labels": self.labels,
                                    "mfcc": dataclasses.asdict(self.mfcc)}, indent=2))
        return path

    def waveform(self, row: dict) -> np.ndarray:
        """One input as a training-ready clip: WAV (or any soundfile format) bytes, or a 1-D
        float waveform with its sample rate; mixed to mono, resampled, padded/trimmed.

        Raises:
            AudioDecodeError: Nothing usable in the row, or the clip is out of bounds.
        """
        audio, waveform = row.get("audio"), row.get("waveform")
        if isinstance(audio, bytes | bytearray) and len(audio):
            audio = file_bytes(bytes(audio))
            seconds = audio_info(audio, "audio").duration  # the header only: nothing decoded
            self.check_duration("audio", seconds)
            return decode_clip(audio, self.spec, name="audio")
        if not is_empty_cell(waveform):
            return self.waveform_clip(waveform, row.get("sample_rate"))
        if isinstance(audio, bytes | bytearray):
            raise AudioDecodeError(f"audio: {EMPTY}")
        if not is_empty_cell(audio):
            raise AudioDecodeError(f"audio: expected a file's bytes (base64 in JSON), got "
                                   f"{type(audio).__name__}")
        raise AudioDecodeError("expected 'audio' (file bytes) or 'waveform' with 'sample_rate'")

    def waveform_clip(self, waveform: Any, rate: Any) -> np.ndarray:
        """A `waveform` row (samples at `rate` Hz) as a training-ready clip; its length is
        checked (from `len`) before it is converted to an array."""
        if isinstance(rate, bool) or not isinstance(rate, int | float | np.number) or not rate > 0:
            raise AudioDecodeError("waveform: needs a positive sample_rate (Hz)")
        rate = check_sample_rate(float(rate), "waveform")
        if not is_waveform(waveform):
            raise AudioDecodeError("waveform: expected a 1-D array of numbers")
        self.check_duration("waveform", len(waveform) / rate)
        try:
            samples = np.asarray(waveform, np.float32)
        except (TypeError, ValueError) as error:
            raise AudioDecodeError("waveform: expected a 1-D array of numbers") from error
        if samples.ndim != 1 or samples.size == 0:
            raise AudioDecodeError(
                f"waveform: expected a non-empty 1-D array of samples, got shape "
                f"{samples.shape}")
        check_samples(samples, "waveform")
        resampled = resample(samples, rate, self.spec.sample_rate)
        return fix_length(resampled, self.spec.clip_samples).astype(np.float32, copy=False)

    @staticmethod
    def check_duration(label: str, seconds: float) -> None:
        """Raises AudioDecodeError for a clip longer than MAX_AUDIO_SECONDS."""
        if seconds > MAX_AUDIO_SECONDS:
            raise AudioDecodeError(f"{label}: {seconds:.1f} s long, longer than the "
                                   f"{MAX_AUDIO_SECONDS} s a request may send")

    def clips(self, rows: Sequence[dict]) -> tuple[np.ndarray, list[str | None]]:
        """The usable rows as (clips, samples) waveforms at the model's rate, and per row its
        error (None when usable)."""
        clips, errors = [], []
        for row in rows:
            try:
                clips.append(self.waveform(row))
                errors.append(None)
            except AudioDecodeError as error:
                errors.append(str(error))
        return np.array(clips, np.float32).reshape(-1, self.spec.clip_samples), errors

    def model_inputs(self, clips: np.ndarray) -> np.ndarray:
        """What the model takes for (clips, samples) waveforms: the waveforms, or for a model
        over MFCC frames their frames (training's code, compiled, on every core)."""
        clips = np.ascontiguousarray(clips, np.float32)
        return clips if self.takes_waveforms or not len(clips) else mfcc_frames(clips, self.mfcc)

    def predict(self, model_input: Any) -> pd.DataFrame:
        """Labels and probabilities per row.

        Raises:
            RequestTooLarge: The request is over MAX_REQUEST_ROWS or SPEECH_MAX_REQUEST_BYTES.
        """
        rows = request_rows(model_input, self.INPUT_COLUMNS, (bytes, bytearray))
        check_request([speech_row_bytes(row) for row in rows], SPEECH_MAX_REQUEST_BYTES,
                      "audio")
        clips, errors = self.clips(rows)
        return result_frame(self.labels, scatter(self.clip_probabilities(clips), errors,
                                                 len(self.labels)), errors)

    def clip_probabilities(self, clips: np.ndarray) -> np.ndarray:
        """Class probabilities of (clips, samples) waveforms at the model's rate."""
        return self.probabilities(self.model_inputs(clips))

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities of the model's own inputs (`model_inputs`)."""
        return self._predict(inputs) if len(inputs) else np.zeros((0, len(self.labels)))


class TextPredictor:
    """Raw reviews -> the saved TextVectorization + classifier (or a scikit-learn pipeline)."""

    INPUT_COLUMNS = ("text",)

    def __init__(self, labels: Sequence[str], keras_model=None, sklearn_model=None):
        self.labels = list(labels)
        self.keras_model = keras_model
        self.sklearn_model = sklearn_model
        self.blend = self.ngrams = None
        if keras_model is not None:  # strings -> token_ids layer -> classifier (a sub-model)
            text_model = keras_model
            if "blend" in {layer.name for layer in keras_model.layers}:
                # strings -> [n-gram branch, string recurrent model] -> blend
                self.blend = keras_model.get_layer("blend")
                self.ngrams = keras_model.get_layer("ngram_classifier")
                text_model = keras_model.get_layer("text_classifier")
            self.vectorizer = text_model.get_layer("token_ids")
            self.classifier = next(layer for layer in text_model.layers
                                   if isinstance(layer, keras.Model))
            self._predict = FastPredict(self.classifier)

    @classmethod
    def load(cls, classifier_path: str | Path, labels: Sequence[str]) -> TextPredictor:
        """Loads a .keras string-input model or a joblib scikit-learn pipeline.

        Raises:
            ModelError: The file is missing or damaged.
        """
        if str(classifier_path).endswith(".keras"):
            return cls(labels, keras_model=load_artifact(classifier_path,
                                                         keras.saving.load_model, "a Keras model"))
        return cls(labels, sklearn_model=load_artifact(classifier_path, joblib.load,
                                                       "a scikit-learn pipeline"))

    def predict(self, model_input: Any) -> pd.DataFrame:
        """Labels and probabilities per review.

        Raises:
            RequestTooLarge: The request is over MAX_REQUEST_ROWS or TEXT_MAX_REQUEST_BYTES.
        """
        values = [row.get("text") for row in request_rows(model_input, self.INPUT_COLUMNS,
                                                          (str, bytes))]
        check_request([text_bytes(value) for value in values], TEXT_MAX_REQUEST_BYTES,
                      "review text")
        texts, errors = [], []
        for value in values:
            text, error = usable_review(value)
            if text is not None:
                texts.append(text)
            errors.append(error)
        return result_frame(self.labels, scatter(self.probabilities(texts), errors,
                                                 len(self.labels)), errors)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), np.float32)
        if self.keras_model is not None:
            recurrent = self._predict(encode_reviews(self.vectorizer, list(texts)))
            if self.blend is None:
                return recurrent
            return np.asarray(self.blend([self.ngram_logits(texts), recurrent]))
        return self.sklearn_model.predict_proba(list(texts))

    def ngram_logits(self, texts: Sequence[str], chunk: int = 256) -> np.ndarray:
        """The n-gram branch's logit per text (sparse bags, so computed in chunks)."""
        return np.concatenate([np.asarray(self.ngrams(tf.constant(list(texts[i:i + chunk]))))
                               for i in range(0, len(texts), chunk)])


def read_speech_config(path: Path) -> tuple[list[str], MfccConfig]:
    """The labels and MFCC settings `SpeechPredictor.save_config` wrote."""
    config = json.loads(path.read_text())
    return list(config["labels"]), MfccConfig(**config["mfcc"])


def usable_review(value: Any) -> tuple[str | None, str | None]:
    """(review, None) for a usable review, else (None, the error for its row). Bytes are
    decoded as UTF-8 with replacement, as training reads files (features.imdb.decode_review),
    and lone surrogates replaced (features.text.review_text). A review that standardises to
    no tokens (only HTML, only punctuation) is usable: it is encoded as one unknown token, as
    in training."""
    if not is_empty_cell(value) and not isinstance(value, str | bytes):
        return None, f"text: expected a review string, got {type(value).__name__}"
    if is_empty_cell(value) or not value.strip():
        return None, "text: expected a non-empty review string"
    text = review_text(value)
    if len(text) > MAX_TEXT_CHARS:
        return None, (f"text: {len(text)} characters long, longer than the {MAX_TEXT_CHARS} "
                      f"a review may be")
    return text, None


def scatter(probabilities: np.ndarray, errors: Sequence[str | None], classes: int
            ) -> np.ndarray:
    """Spreads the usable rows' probabilities back to every input row (NaN where it failed)."""
    full = np.full((len(errors), classes), np.nan)
    usable = [index for index, error in enumerate(errors) if error is None]
    full[usable] = probabilities
    return full
