from __future__ import annotations

import numpy as np
import pytest

from models.recurrent import build_classifier


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
