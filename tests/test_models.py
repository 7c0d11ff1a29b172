from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from features.text import fit_vectorizer
from models.recurrent import (
    MaskedGlobalMaxPooling1D,
    build_classifier,
    build_text_classifier,
    text_to_probabilities,
)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_builds_uncompiled_bidirectional_classifier(cell: str):
    model = build_classifier((98, 40), 12, mean=np.zeros(40), variance=np.ones(40), cell=cell,
                             units=8, depth=2)
    assert model.input_shape == (None, 98, 40)
    assert model.output_shape == (None, 12)
    assert not model.compiled
    recurrent = [layer for layer in model.layers if layer.name.startswith(f"bi_{cell}")]
    assert len(recurrent) == 2
    probabilities = model.predict(np.random.default_rng(0).normal(size=(3, 98, 40)), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_normalisation_uses_the_training_statistics():
    mean, variance = np.arange(40.0), np.full(40, 4.0)
    model = build_classifier((98, 40), 3, mean=mean, variance=variance, units=4, depth=1)
    normalize = model.get_layer("normalize")
    out = normalize(np.broadcast_to(mean + 2.0, (1, 98, 40)).astype("float32"))
    np.testing.assert_allclose(np.asarray(out), 1.0, rtol=1e-5)


def test_unknown_cell_lists_the_choices():
    with pytest.raises(ValueError, match="unknown cell 'lstmm'; valid choices: gru, lstm"):
        build_classifier((98, 40), 12, mean=np.zeros(40), variance=np.ones(40), cell="lstmm")


def test_unknown_pooling_lists_the_choices():
    with pytest.raises(ValueError, match="valid choices: mean, max, mean-max"):
        build_classifier((98, 40), 12, mean=np.zeros(40), variance=np.ones(40), pooling="sum")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_builds_text_classifier_over_masked_token_ids(cell: str):
    model = build_text_classifier(50, 2, embedding_dim=8, cell=cell, units=4, depth=2,
                                  embedding_dropout=0.1, dense_units=4)
    assert model.input_shape == (None, None) and model.output_shape == (None, 2)
    assert not model.compiled
    assert model.get_layer("embedding").mask_zero
    assert len([layer for layer in model.layers if layer.name.startswith(f"bi_{cell}")]) == 2
    ids = np.array([[5, 6, 7, 0, 0, 0], [9, 1, 0, 0, 0, 0]], np.int32)
    probabilities = model.predict(ids, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # right padding is masked: more padding does not change the prediction
    padded = np.pad(ids, ((0, 0), (0, 10)))
    np.testing.assert_allclose(model.predict(padded, verbose=0), probabilities, atol=1e-5)


def test_text_classifier_rejects_unknown_cell():
    with pytest.raises(ValueError, match="unknown cell 'rnn'; valid choices: gru, lstm"):
        build_text_classifier(50, 2, cell="rnn")


def test_masked_max_pooling_ignores_padding_steps():
    values = np.array([[[-3.0], [-1.0], [0.0]]], np.float32)  # last step is padding
    mask = np.array([[True, True, False]])
    pooled = MaskedGlobalMaxPooling1D()(values, mask=mask)
    assert np.asarray(pooled).tolist() == [[-1.0]]
    assert np.asarray(MaskedGlobalMaxPooling1D()(values)).tolist() == [[0.0]]


def test_string_model_saves_and_loads_with_its_vocabulary(tmp_path: Path):
    vectorizer = fit_vectorizer(["good film", "bad film", "good good"], 20, 6)
    model = text_to_probabilities(vectorizer, build_text_classifier(20, 2, units=4))
    texts = tf.constant(["GOOD film<br />", "bad, bad film"])
    expected = model.predict(texts, verbose=0)
    model.save(tmp_path / "classifier.keras")
    restored = keras.saving.load_model(tmp_path / "classifier.keras")
    np.testing.assert_allclose(restored.predict(texts, verbose=0), expected, atol=1e-6)
    assert restored.get_layer("token_ids").get_vocabulary() == vectorizer.get_vocabulary()
