"""Bidirectional LSTM/GRU stacks and the classifiers built on them."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

CELLS = ("gru", "lstm")
POOLINGS = ("mean", "max", "mean-max")


def recurrent_layer(cell: str, units: int, name: str) -> keras.layers.Layer:
    """One bidirectional recurrent layer in its cuDNN-eligible configuration.

    The defaults (tanh, sigmoid recurrent activation, no recurrent dropout, no unrolling,
    `reset_after=True` for GRU) are what the fused cuDNN kernel requires, so they are left alone;
    dropout is applied between layers instead.

    Raises:
        ValueError: `cell` is not one of CELLS.
    """
    if cell == "gru":
        layer = keras.layers.GRU(units, return_sequences=True, name=f"{name}_gru")
    elif cell == "lstm":
        layer = keras.layers.LSTM(units, return_sequences=True, name=f"{name}_lstm")
    else:
        raise ValueError(f"unknown cell {cell!r}; valid choices: {', '.join(CELLS)}")
    return keras.layers.Bidirectional(layer, name=name)


def recurrent_stack(
    x: keras.KerasTensor, *, cell: str, units: int, depth: int, dropout: float
) -> keras.KerasTensor:
    """`depth` bidirectional layers, each followed by dropout; returns the full sequence."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    for index in range(depth):
        x = recurrent_layer(cell, units, name=f"bi_{cell}_{index + 1}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout_{index + 1}")(x)
    return x


def pool_over_time(x: keras.KerasTensor, pooling: str) -> keras.KerasTensor:
    """Pools a (batch, time, features) sequence into (batch, features); masks are honoured."""
    if pooling == "mean":
        return keras.layers.GlobalAveragePooling1D(name="mean_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling1D(name="max_pool")(x)
    if pooling == "mean-max":
        return keras.layers.Concatenate(name="mean_max_pool")(
            [
                keras.layers.GlobalAveragePooling1D(name="mean_pool")(x),
                keras.layers.GlobalMaxPooling1D(name="max_pool")(x),
            ]
        )
    raise ValueError(f"unknown pooling {pooling!r}; valid choices: {', '.join(POOLINGS)}")


def build_classifier(
    input_shape: tuple[int, int],
    num_classes: int,
    *,
    mean: Sequence[float] | np.ndarray,
    variance: Sequence[float] | np.ndarray,
    cell: str = "gru",
    units: int = 64,
    depth: int = 2,
    dropout: float = 0.2,
    pooling: str = "mean-max",
    dense_units: int = 64,
    input_noise: float = 0.0,
) -> keras.Model:
    """Classifier over frame sequences (e.g. MFCC frames): normalise, Bi-RNN stack, pool, softmax.

    Args:
        input_shape: (frames, coefficients) of one example.
        num_classes: Number of output classes.
        mean: Per-coefficient mean fitted on the training split.
        variance: Per-coefficient variance fitted on the training split.
        cell: "gru" or "lstm".
        units: Units per direction in each recurrent layer.
        depth: Number of bidirectional layers.
        dropout: Dropout after each recurrent layer and before the head.
        pooling: "mean", "max" or "mean-max" pooling over time.
        dense_units: Width of the hidden dense layer of the head (0 for none).
        input_noise: Standard deviation of Gaussian noise added to the normalised input during
            training only (0 for none); a cheap regulariser for small datasets.

    Returns:
        An uncompiled Functional model mapping (batch, frames, coefficients) to class
        probabilities.

    Raises:
        ValueError: An unknown cell or pooling name, or depth < 1.
    """
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; valid choices: {', '.join(CELLS)}")
    inputs = keras.Input(shape=input_shape, name="mfcc")
    x = keras.layers.Normalization(
        axis=-1, mean=np.asarray(mean), variance=np.asarray(variance), name="normalize"
    )(inputs)
    if input_noise:
        x = keras.layers.GaussianNoise(input_noise, name="input_noise")(x)
    x = recurrent_stack(x, cell=cell, units=units, depth=depth, dropout=dropout)
    x = pool_over_time(x, pooling)
    if dense_units:
        x = keras.layers.Dense(dense_units, activation="relu", name="head_dense")(x)
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"bi_{cell}_classifier")
