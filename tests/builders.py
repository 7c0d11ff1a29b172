"""Small models for tests: the project's builders with test-sized settings by default, the
served predictors over untrained tiny models, and a registered tiny speech model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from features.mfcc import MfccConfig, feature_shape
from models.recurrent import (
    RecurrentConfig,
    build_classifier,
    build_text_classifier,
    text_to_probabilities,
)
from pipelines.serving import SpeechPredictor, TextPredictor

SMALL_STACK = {"units": 64, "depth": 1, "pooling": "mean-max", "dense_units": 0}


def frame_classifier(input_shape, num_classes, *, mean, variance, front_end="none",
                     conv_filters=8, input_noise=0.0, **stack):
    """`build_classifier` with a small recurrent stack; `stack` overrides its options."""
    return build_classifier(input_shape, num_classes, RecurrentConfig(**SMALL_STACK | stack),
                            mean=mean, variance=variance, front_end=front_end,
                            conv_filters=conv_filters, input_noise=input_noise)


def text_classifier(vocabulary_size, num_classes, *, embedding_dim=8, embedding_dropout=0.0,
                    sequence_length=None, **stack):
    """`build_text_classifier` with a small recurrent stack; `stack` overrides its options."""
    return build_text_classifier(vocabulary_size, num_classes,
                                 RecurrentConfig(**SMALL_STACK | stack),
                                 embedding_dim=embedding_dim,
                                 embedding_dropout=embedding_dropout,
                                 sequence_length=sequence_length)


def untrained_speech_predictor(labels: Sequence[str]) -> SpeechPredictor:
    """The served speech predictor over an untrained tiny model of MFCC frames."""
    mfcc = MfccConfig()
    model = frame_classifier(feature_shape(mfcc), len(labels), mean=np.zeros(mfcc.n_mfcc),
                             variance=np.ones(mfcc.n_mfcc), units=4, depth=1, dense_units=0)
    return SpeechPredictor(model, labels, mfcc)


def untrained_text_predictor(vectorizer, vocabulary_size: int) -> TextPredictor:
    """The served sentiment predictor over `vectorizer` and an untrained tiny classifier."""
    classifier = text_classifier(vocabulary_size, 2, units=2, embedding_dim=4)
    return TextPredictor(("neg", "pos"), keras_model=text_to_probabilities(vectorizer,
                                                                          classifier))


def register_tiny_speech_model(store: Path, name: str) -> None:
    """Logs an untrained two-label speech model in a SQLite store and registers it as
    `name`'s champion (version 1)."""
    from pipelines import speech, tracking  # the pipelines import TensorFlow and MLflow

    mfcc = MfccConfig()
    model = frame_classifier(feature_shape(mfcc), 2, mean=np.zeros(mfcc.n_mfcc),
                             variance=np.ones(mfcc.n_mfcc), units=4, depth=1)
    with tracking.open_run("artifacts", tracking_uri=None, store_dir=store):
        model_uri = speech.log_model(model, ("yes", "no"), mfcc)
        tracking.register_and_promote(model_uri, name, metrics={"test_accuracy": 0.5},
                                      test_digest="test", data_digest="data")
