"""Predictors behind the served models: raw audio or raw text in, labels and probabilities out.

They use the same feature code as training (features.audio + features.mfcc for speech, the
saved TextVectorization for text), so a served model sees exactly what the trained one saw.
MLflow only wraps them (pipelines.tracking); they are usable and testable without it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.audio import AudioDecodeError, AudioSpec, decode_clip, fix_length, resample
from features.batching import padded_calls
from features.mfcc import MfccConfig, mfcc_frames

ERROR_COLUMN = "error"
DIRECT_CALL_MAX = 64  # inputs per compiled call


class FastPredict:
    """A Keras model's predictions, fast for one input as well as for many.

    Keras' `predict` builds a data iterator on every call (tens of milliseconds), which would
    dominate the latency of one clip or one review. Inputs go instead through an XLA-compiled
    call of the model (about 10x faster than the plain graph for these recurrent stacks on
    CPU) in chunks of DIRECT_CALL_MAX, each padded to a power of two so that at most a handful
    of shapes are ever compiled.
    """

    def __init__(self, model):
        import tensorflow as tf

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
    names = [None if error else labels[int(row.argmax())]
             for row, error in zip(probabilities, errors, strict=True)]
    frame = pd.DataFrame({"label": pd.Series(names, dtype=object)})
    for index, label in enumerate(labels):
        column = pd.Series(probabilities[:, index])
        if any(errors):  # null, not NaN (which is not JSON), where an input failed
            column = column.astype(object).where(column.notna(), None)
        frame[f"probability_{label}"] = column
    frame[ERROR_COLUMN] = pd.Series(list(errors), dtype=object)
    return frame


def rows_of(model_input: Any, columns: Sequence[str]) -> list[dict]:
    """Normalises pyfunc input (DataFrame, dict of columns, list of values) to row dicts."""
    if isinstance(model_input, pd.DataFrame):
        frame = model_input
    elif isinstance(model_input, dict):
        frame = pd.DataFrame({key: list(value) if isinstance(value, list | tuple | np.ndarray)
                              and not isinstance(value, bytes) else [value]
                              for key, value in model_input.items()})
    else:
        frame = pd.DataFrame({columns[0]: list(model_input)})
    if not set(columns) & set(frame.columns):
        frame = frame.rename(columns={frame.columns[0]: columns[0]})
    return frame.to_dict("records")


class SpeechPredictor:
    """Raw clips -> MFCC frames (training's code) -> Keras classifier -> labels."""

    INPUT_COLUMNS = ("audio", "waveform", "sample_rate")

    def __init__(self, model, labels: Sequence[str], mfcc: MfccConfig):
        self.model = model
        self.labels = list(labels)
        self.mfcc = mfcc
        self._predict = FastPredict(model) if model is not None else None
        self.spec = AudioSpec(mfcc.sample_rate, mfcc.clip_seconds)

    @classmethod
    def load(cls, model_path: str | Path, config_path: str | Path) -> SpeechPredictor:
        """Loads the .keras classifier and the JSON written by `save_config`."""
        import keras

        import models.recurrent  # noqa: F401  (registers the model's custom layers)

        config = json.loads(Path(config_path).read_text())
        return cls(keras.saving.load_model(model_path), config["labels"],
                   MfccConfig(**config["mfcc"]))

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
            AudioDecodeError: Nothing usable in the row.
        """
        audio, waveform = row.get("audio"), row.get("waveform")
        if isinstance(audio, bytes | bytearray) and len(audio):
            return decode_clip(bytes(audio), self.spec, name="audio")
        if waveform is not None and not (isinstance(waveform, float) and np.isnan(waveform)):
            samples = np.asarray(waveform, np.float32)
            if samples.ndim != 1 or samples.size == 0:
                raise AudioDecodeError(
                    f"waveform: expected a non-empty 1-D array of samples, got shape "
                    f"{samples.shape}")
            rate = row.get("sample_rate")
            if rate is None or (isinstance(rate, float) and np.isnan(rate)) or int(rate) <= 0:
                raise AudioDecodeError("waveform: needs a positive sample_rate (Hz)")
            resampled = resample(samples, int(rate), self.spec.sample_rate)
            return fix_length(resampled, self.spec.clip_samples).astype(np.float32, copy=False)
        raise AudioDecodeError("expected 'audio' (file bytes) or 'waveform' with 'sample_rate'")

    def features(self, rows: Sequence[dict]) -> tuple[np.ndarray, list[str | None]]:
        """MFCC frames of the usable rows, and per row its error (None when usable)."""
        clips, errors = [], []
        for row in rows:
            try:
                clips.append(self.waveform(row))
                errors.append(None)
            except AudioDecodeError as error:
                errors.append(str(error))
        if not clips:
            return np.zeros((0, self.mfcc.num_frames, self.mfcc.n_mfcc), np.float32), errors
        return mfcc_frames(np.stack(clips), self.mfcc), errors  # compiled, on every core

    def predict(self, model_input: Any) -> pd.DataFrame:
        rows = rows_of(model_input, self.INPUT_COLUMNS)
        frames, errors = self.features(rows)
        return result_frame(self.labels, scatter(self.probabilities(frames), errors,
                                                 len(self.labels)), errors)

    def probabilities(self, frames: np.ndarray) -> np.ndarray:
        if not len(frames):
            return np.zeros((0, len(self.labels)), np.float32)
        return self._predict(frames)


class TextPredictor:
    """Raw reviews -> the saved TextVectorization + classifier (or a scikit-learn pipeline)."""

    INPUT_COLUMNS = ("text",)

    def __init__(self, labels: Sequence[str], keras_model=None, sklearn_model=None):
        self.labels = list(labels)
        self.keras_model = keras_model
        self.sklearn_model = sklearn_model
        self.blend = self.ngrams = None
        if keras_model is not None:  # strings -> token_ids layer -> classifier (a sub-model)
            import keras

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
        """Loads a .keras string-input model or a joblib scikit-learn pipeline."""
        if str(classifier_path).endswith(".keras"):
            import keras

            import features.text  # noqa: F401  (registers the standardisation with Keras)
            import models.ngram  # noqa: F401  (registers the n-gram branch's layers)
            import models.recurrent  # noqa: F401  (registers the model's custom layers)

            return cls(labels, keras_model=keras.saving.load_model(classifier_path))
        import joblib

        return cls(labels, sklearn_model=joblib.load(classifier_path))

    def predict(self, model_input: Any) -> pd.DataFrame:
        texts, errors = [], []
        for text in self.texts_of(model_input):
            if not isinstance(text, str) or not text.strip():
                errors.append("text: expected a non-empty review string")
                continue
            texts.append(text)
            errors.append(None)
        return result_frame(self.labels, scatter(self.probabilities(texts), errors,
                                                 len(self.labels)), errors)

    def texts_of(self, model_input: Any) -> list:
        """The `text` value of each input row. MLflow turns a dict of lists such as
        {"text": ["a", "b"]} into one row holding a list; such lists are spread into rows."""
        texts = []
        for row in rows_of(model_input, self.INPUT_COLUMNS):
            text = row.get("text")
            if isinstance(text, list | tuple | np.ndarray):
                texts.extend(text)
            else:
                texts.append(text)
        return texts

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), np.float32)
        if self.keras_model is not None:
            from features.text import encode_reviews  # the ids training computed

            recurrent = self._predict(encode_reviews(self.vectorizer, list(texts)))
            if self.blend is None:
                return recurrent
            return np.asarray(self.blend([self.ngram_logits(texts), recurrent]))
        return self.sklearn_model.predict_proba(list(texts))

    def ngram_logits(self, texts: Sequence[str], chunk: int = 256) -> np.ndarray:
        """The n-gram branch's logit per text (sparse bags, so computed in chunks)."""
        import tensorflow as tf

        return np.concatenate([np.asarray(self.ngrams(tf.constant(list(texts[i:i + chunk]))))
                               for i in range(0, len(texts), chunk)])


def scatter(probabilities: np.ndarray, errors: Sequence[str | None], classes: int
            ) -> np.ndarray:
    """Spreads the usable rows' probabilities back to every input row (NaN where it failed)."""
    full = np.full((len(errors), classes), np.nan)
    usable = [index for index, error in enumerate(errors) if error is None]
    full[usable] = probabilities
    return full
