from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from features.text import encode_reviews, fit_ngram_vectorizer, fit_vectorizer
from models.cnn import build_tutorial_cnn
from models.ngram import BlendProbabilities, blended_text_classifier, ngram_branch
from models.recurrent import AttentionPooling, MaskedGlobalMaxPooling1D, text_to_probabilities
from tests.builders import frame_classifier, text_classifier


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_builds_uncompiled_bidirectional_classifier(cell: str):
    model = frame_classifier((98, 40), 12, mean=np.zeros(40), variance=np.ones(40), cell=cell,
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
    model = frame_classifier((98, 40), 3, mean=mean, variance=variance, units=4, depth=1)
    normalize = model.get_layer("normalize")
    out = normalize(np.broadcast_to(mean + 2.0, (1, 98, 40)).astype("float32"))
    np.testing.assert_allclose(np.asarray(out), 1.0, rtol=1e-5)


def test_unknown_cell_lists_the_choices():
    with pytest.raises(ValueError, match="unknown cell 'lstmm'; valid choices: gru, lstm"):
        frame_classifier((98, 40), 12, mean=np.zeros(40), variance=np.ones(40), cell="lstmm")


def test_unknown_pooling_lists_the_choices():
    with pytest.raises(ValueError, match="valid choices: mean, max, mean-max, attention"):
        frame_classifier((98, 40), 12, mean=np.zeros(40), variance=np.ones(40), pooling="sum")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_builds_text_classifier_over_masked_token_ids(cell: str):
    model = text_classifier(50, 2, embedding_dim=8, cell=cell, units=4, depth=2,
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
        text_classifier(50, 2, cell="rnn")


def test_masked_max_pooling_ignores_padding_steps():
    values = np.array([[[-3.0], [-1.0], [0.0]]], np.float32)  # last step is padding
    mask = np.array([[True, True, False]])
    pooled = MaskedGlobalMaxPooling1D()(values, mask=mask)
    assert np.asarray(pooled).tolist() == [[-1.0]]
    assert np.asarray(MaskedGlobalMaxPooling1D()(values)).tolist() == [[0.0]]


def test_string_model_saves_and_loads_with_its_vocabulary(tmp_path: Path):
    vectorizer = fit_vectorizer(["good film", "bad film", "good good"], 20, 6)
    classifier = text_classifier(20, 2, units=4, pooling="mean-max")
    model = text_to_probabilities(vectorizer, classifier)
    # a review of no tokens is one unknown token, as training encodes it (masked pooling over
    # no step at all would give NaN)
    texts = ["GOOD film<br />", "bad, bad film", "!!!", "<br /><br />"]
    expected = model.predict(tf.constant(texts), verbose=0)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(
        expected, classifier.predict(encode_reviews(vectorizer, texts), verbose=0), atol=1e-6)
    model.save(tmp_path / "classifier.keras")
    restored = keras.saving.load_model(tmp_path / "classifier.keras")
    np.testing.assert_allclose(restored.predict(tf.constant(texts), verbose=0), expected,
                               atol=1e-6)
    assert restored.get_layer("token_ids").get_vocabulary() == vectorizer.get_vocabulary()


def test_crnn_with_attention_pooling_halves_the_frame_rate_and_round_trips(tmp_path: Path):
    model = frame_classifier((98, 40), 12, mean=np.zeros(40), variance=np.ones(40), units=8,
                             depth=1, front_end="conv", conv_filters=8, pooling="attention")
    assert model.get_layer("conv_pool").output.shape[1] == 49
    assert model.get_layer("bi_gru_1").output.shape[1] == 49
    assert isinstance(model.get_layer("attention_pool"), AttentionPooling)
    frames = np.random.default_rng(0).normal(size=(2, 98, 40)).astype("float32")
    expected = model.predict(frames, verbose=0)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=1e-5)
    model.save(tmp_path / "crnn.keras")
    restored = keras.saving.load_model(tmp_path / "crnn.keras")
    np.testing.assert_allclose(restored.predict(frames, verbose=0), expected, atol=1e-6)


def test_unknown_front_end_lists_the_choices():
    with pytest.raises(ValueError, match="unknown front_end 'cnn'; valid choices: none, conv"):
        frame_classifier((98, 40), 12, mean=np.zeros(40), variance=np.ones(40), front_end="cnn")


def test_attention_pooling_weights_only_unmasked_steps():
    layer = AttentionPooling()
    values = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], np.float32)
    mask = np.array([[True, True, False]])
    pooled = np.asarray(layer(values, mask=mask))
    # a convex combination of the unmasked steps only
    assert 1.0 <= pooled[0, 0] <= 3.0 and 2.0 <= pooled[0, 1] <= 4.0
    assert np.asarray(layer(values)).max() > 4.0  # unmasked, the last step counts


def test_blended_model_serves_strings_and_carries_the_ngram_weights(tmp_path: Path):
    texts = ["good film", "bad film", "good good", "bad bad film"]
    words = fit_vectorizer(texts, 20, 6)
    bags = fit_ngram_vectorizer(texts, 50, 2)
    vocabulary = bags.get_vocabulary()
    weights = np.zeros(len(vocabulary), np.float32)
    weights[vocabulary.index("good")], weights[vocabulary.index("bad")] = 3.0, -3.0
    ngrams = ngram_branch(bags, weights, 0.5)
    logits = ngrams.predict(tf.constant(["good film", "bad", "unseen"]), verbose=0)[:, 0]
    np.testing.assert_allclose(logits, [3.5, -2.5, 0.5], rtol=1e-6)
    recurrent = text_to_probabilities(words, text_classifier(20, 2, units=4))
    model = blended_text_classifier(recurrent, ngrams, 0.75)
    strings = tf.constant(["good film", "bad bad film"])
    alone = recurrent.predict(strings, verbose=0)
    odds = np.log(alone[:, 1] / alone[:, 0])  # a weighted product of the two models' odds
    positive = 1 / (1 + np.exp(-(0.75 * np.array([3.5, -2.5]) + 0.25 * odds)))
    blended = model.predict(strings, verbose=0)
    np.testing.assert_allclose(blended, np.stack([1 - positive, positive], axis=1), rtol=1e-5)
    model.save(tmp_path / "blended.keras")
    restored = keras.saving.load_model(tmp_path / "blended.keras")
    np.testing.assert_allclose(restored.predict(strings, verbose=0), blended, atol=1e-6)
    # a blend layer saved without a space (older models) averages the probabilities
    config = model.get_layer("blend").get_config()
    config.pop("space")
    legacy = BlendProbabilities.from_config(config)
    sigmoid = 1 / (1 + np.exp(-np.array([[3.5], [-2.5]], np.float32)))
    np.testing.assert_allclose(
        np.asarray(legacy([np.log(sigmoid / (1 - sigmoid)), alone])),
        0.75 * np.hstack([1 - sigmoid, sigmoid]) + 0.25 * alone, rtol=1e-5)


def test_blend_rejects_a_weight_outside_zero_to_one():
    words = fit_vectorizer(["a b"], 20, 4)
    recurrent = text_to_probabilities(words, text_classifier(20, 2, units=4))
    bags = fit_ngram_vectorizer(["a b"], 10, 1)
    ngrams = ngram_branch(bags, np.zeros(bags.vocabulary_size()), 0.0)
    with pytest.raises(ValueError, match="blend weight must be within"):
        blended_text_classifier(recurrent, ngrams, 1.5)
    with pytest.raises(ValueError, match="7 coefficients for 3 n-grams"):
        ngram_branch(bags, np.zeros(7), 0.0)


def test_tutorial_cnn_reference_maps_frames_to_probabilities():
    model = build_tutorial_cnn((98, 40), 12, mean=np.zeros(40), variance=np.ones(40))
    assert [layer.name for layer in model.layers if "conv" in layer.name] == ["conv_1", "conv_2"]
    assert model.get_layer("resize").output.shape[1:3] == (32, 32)
    probabilities = model.predict(np.zeros((2, 98, 40), np.float32), verbose=0)
    assert probabilities.shape == (2, 12)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_both_default_models_keep_their_recurrent_layers_on_the_cudnn_path(cell: str):
    """On a GPU, Keras runs a GRU/LSTM as one fused cuDNN kernel only with tanh, a sigmoid
    recurrent activation, a bias, no unrolling, no recurrent dropout and (GRU) reset_after;
    any other setting silently falls back to the step loop, several times slower."""
    from pipelines import sentiment, speech

    speech_config = speech.SpeechConfig().replace(cell=cell)
    text_config = sentiment.SentimentConfig().replace(cell=cell)
    models = [speech.build_model(speech_config, 12, np.zeros(40), np.ones(40)),
              sentiment.build_model(text_config, 1000, 2)]
    layers = [layer.forward_layer for model in models for layer in model.layers
              if isinstance(layer, keras.layers.Bidirectional)]
    assert len(layers) == speech_config.recurrent.depth + text_config.recurrent.depth
    for layer in layers:
        config = layer.get_config()
        assert type(layer).__name__ == cell.upper()
        assert (config["activation"], config["recurrent_activation"]) == ("tanh", "sigmoid")
        assert config["use_bias"] and not config["unroll"]
        assert config["recurrent_dropout"] == 0 and layer.use_cudnn in ("auto", True)
        assert config.get("reset_after", True)  # GRU only
