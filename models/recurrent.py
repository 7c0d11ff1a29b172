"""Bidirectional LSTM/GRU stacks and the classifiers built on them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np

from features.errors import ConfigError, require_at_least, require_fraction

CELLS = ("gru", "lstm")
POOLINGS = ("mean", "max", "mean-max", "attention")
FRONT_ENDS = ("none", "conv")


@dataclass(frozen=True, kw_only=True)
class RecurrentConfig:
    """Recurrent classifier: the bidirectional stack, its pooling over time and the head.

    Both tasks build on it; each sets its own depth, pooling and head width.
    """

    cell: str = field(default="gru", metadata={
        "help": "recurrent cell of the bidirectional layers", "choices": CELLS})
    units: int = field(metadata={"help": "units per direction in each recurrent layer"})
    depth: int = field(metadata={"help": "number of bidirectional recurrent layers"})
    dropout: float = field(default=0.3, metadata={
        "help": "dropout after each recurrent layer and before the head"})
    pooling: str = field(metadata={"help": "pooling over time", "choices": POOLINGS})
    dense_units: int = field(metadata={"help": "hidden units of the dense head (0: none)"})

    def __post_init__(self):
        require_at_least(self, {"units": 1, "depth": 1, "dense_units": 0})
        require_fraction(self, ["dropout"])


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
        raise ConfigError(f"unknown cell {cell!r}; valid choices: {', '.join(CELLS)}")
    return keras.layers.Bidirectional(layer, name=name)


def conv_front_end(x: keras.KerasTensor, *, filters: int, kernel_size: int = 5,
                   layers: int = 2) -> keras.KerasTensor:
    """The convolutional front of a CRNN: `layers` x (Conv1D over time, batch norm, ReLU), then
    max-pooling by 2 in time, so the recurrent layers see local patterns at half the frame rate
    (and run twice as fast)."""
    for index in range(layers):
        x = keras.layers.Conv1D(filters, kernel_size, padding="same", use_bias=False,
                                name=f"conv_{index + 1}")(x)
        x = keras.layers.BatchNormalization(name=f"conv_{index + 1}_norm")(x)
        x = keras.layers.ReLU(name=f"conv_{index + 1}_relu")(x)
    return keras.layers.MaxPooling1D(2, name="conv_pool")(x)


def recurrent_stack(
    x: keras.KerasTensor, *, cell: str, units: int, depth: int, dropout: float
) -> keras.KerasTensor:
    """`depth` bidirectional layers, each followed by dropout; returns the full sequence."""
    if depth < 1:
        raise ConfigError(f"depth must be at least 1, got {depth}")
    for index in range(depth):
        x = recurrent_layer(cell, units, name=f"bi_{cell}_{index + 1}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout_{index + 1}")(x)
    return x


@keras.saving.register_keras_serializable(package="models")
class MaskedGlobalMaxPooling1D(keras.layers.Layer):
    """Max over time that ignores masked (padding) steps; Keras' GlobalMaxPooling1D does not."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is not None:
            lowest = keras.ops.full_like(inputs, float(np.finfo(np.float32).min))
            inputs = keras.ops.where(keras.ops.expand_dims(mask, -1), inputs, lowest)
        return keras.ops.max(inputs, axis=1)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


@keras.saving.register_keras_serializable(package="models")
class AttentionPooling(keras.layers.Layer):
    """Weighted mean over time with learned weights (additive attention, Bahdanau-style):
    score_t = v . tanh(W h_t + b), weights = softmax over the unmasked steps."""

    def __init__(self, units: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.supports_masking = True

    def build(self, input_shape):
        units = self.units or input_shape[-1]
        self.project = keras.layers.Dense(units, activation="tanh", name="project")
        self.project.build(input_shape)
        self.score = keras.layers.Dense(1, use_bias=False, name="score")
        self.score.build((*input_shape[:-1], units))

    def call(self, inputs, mask=None):
        scores = self.score(self.project(inputs))[..., 0]
        if mask is not None:
            scores = keras.ops.where(mask, scores, keras.ops.full_like(scores, -1e9))
        weights = keras.ops.softmax(scores, axis=1)
        return keras.ops.sum(inputs * keras.ops.expand_dims(weights, -1), axis=1)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return super().get_config() | {"units": self.units}


def pool_over_time(x: keras.KerasTensor, pooling: str) -> keras.KerasTensor:
    """Pools a (batch, time, features) sequence into (batch, features); masks are honoured."""
    if pooling == "attention":
        return AttentionPooling(name="attention_pool")(x)
    if pooling == "mean":
        return keras.layers.GlobalAveragePooling1D(name="mean_pool")(x)
    if pooling == "max":
        return MaskedGlobalMaxPooling1D(name="max_pool")(x)
    if pooling == "mean-max":
        return keras.layers.Concatenate(name="mean_max_pool")(
            [
                keras.layers.GlobalAveragePooling1D(name="mean_pool")(x),
                MaskedGlobalMaxPooling1D(name="max_pool")(x),
            ]
        )
    raise ConfigError(f"unknown pooling {pooling!r}; valid choices: {', '.join(POOLINGS)}")


def classification_head(x: keras.KerasTensor, num_classes: int, *, dense_units: int,
                        dropout: float) -> keras.KerasTensor:
    """Optional ReLU dense layer with dropout, then the softmax layer named `probabilities`."""
    if dense_units:
        x = keras.layers.Dense(dense_units, activation="relu", name="head_dense")(x)
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)


def recurrent_classifier(x: keras.KerasTensor, num_classes: int, config: RecurrentConfig
                         ) -> keras.KerasTensor:
    """The Bi-RNN stack, pooling over time and softmax head of `config`, applied to `x`."""
    x = recurrent_stack(x, cell=config.cell, units=config.units, depth=config.depth,
                        dropout=config.dropout)
    x = pool_over_time(x, config.pooling)
    return classification_head(x, num_classes, dense_units=config.dense_units,
                               dropout=config.dropout)


def build_classifier(
    input_shape: tuple[int, int],
    num_classes: int,
    config: RecurrentConfig,
    *,
    mean: Sequence[float] | np.ndarray,
    variance: Sequence[float] | np.ndarray,
    front_end: str,
    conv_filters: int,
    input_noise: float,
) -> keras.Model:
    """Classifier over frame sequences (e.g. MFCC frames): normalise, optional convolutional
    front end (a CRNN), Bi-RNN stack, pool, softmax.

    Args:
        input_shape: (frames, coefficients) of one example.
        num_classes: Number of output classes.
        config: The recurrent stack (cell, units, depth, dropout), its pooling over time
            ("mean", "max", "mean-max" or "attention") and the head's hidden units.
        mean: Per-coefficient mean fitted on the training split.
        variance: Per-coefficient variance fitted on the training split.
        front_end: "none", or "conv" for two Conv1D layers and 2x time pooling (conv_front_end).
        conv_filters: Filters of each convolution of the "conv" front end.
        input_noise: Standard deviation of Gaussian noise added to the normalised input during
            training only (0 for none); a cheap regulariser for small datasets.

    Returns:
        An uncompiled Functional model mapping (batch, frames, coefficients) to class
        probabilities.

    Raises:
        ValueError: An unknown cell, pooling or front-end name, or depth < 1.
    """
    if front_end not in FRONT_ENDS:
        raise ConfigError(f"unknown front_end {front_end!r}; valid choices: "
                         f"{', '.join(FRONT_ENDS)}")
    inputs = keras.Input(shape=input_shape, name="mfcc")
    x = keras.layers.Normalization(
        axis=-1, mean=np.asarray(mean), variance=np.asarray(variance), name="normalize"
    )(inputs)
    if input_noise:
        x = keras.layers.GaussianNoise(input_noise, name="input_noise")(x)
    if front_end == "conv":
        x = conv_front_end(x, filters=conv_filters)
    outputs = recurrent_classifier(x, num_classes, config)
    prefix = "conv_" if front_end == "conv" else ""
    return keras.Model(inputs, outputs, name=f"{prefix}bi_{config.cell}_classifier")


def build_text_classifier(
    vocabulary_size: int,
    num_classes: int,
    config: RecurrentConfig,
    *,
    embedding_dim: int,
    embedding_dropout: float,
    sequence_length: int | None = None,
) -> keras.Model:
    """Classifier over token ids: masked embedding, Bi-RNN stack, pooling, softmax.

    Id 0 is padding: the embedding masks it, so the recurrent layers skip padded steps and the
    pooling ignores them. Padding must be on the right to keep the layers cuDNN-eligible.

    Args:
        vocabulary_size: Number of token ids (padding and OOV included).
        num_classes: Number of output classes.
        config: The recurrent stack, its pooling over time and the head's hidden units.
        embedding_dim: Width of the token embedding.
        embedding_dropout: Dropout of whole embedding channels (SpatialDropout1D), 0 for none.
        sequence_length: Ids per example, or None for batches of any length.

    Returns:
        An uncompiled Functional model mapping int32 (batch, length) ids to class probabilities.

    Raises:
        ValueError: An unknown cell or pooling name, or depth < 1.
    """
    inputs = keras.Input(shape=(sequence_length,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocabulary_size, embedding_dim, mask_zero=True,
                               name="embedding")(inputs)
    if embedding_dropout:
        x = keras.layers.SpatialDropout1D(embedding_dropout, name="embedding_dropout")(x)
    outputs = recurrent_classifier(x, num_classes, config)
    return keras.Model(inputs, outputs, name=f"bi_{config.cell}_text_classifier")


def text_to_probabilities(vectorizer: keras.layers.Layer, classifier: keras.Model
                          ) -> keras.Model:
    """Joins a fitted TextVectorization and a token-id classifier: raw strings in,
    probabilities out (a review of no tokens as one unknown token, as training encodes it).
    Saved as one .keras file, it carries the vocabulary with it."""
    # imported here: the text stage needs SciPy, scikit-learn and pandas, which the speech
    # model, loaded in Keras with this module's layers, does not
    from features.text import EmptyAsUnknown

    texts = keras.Input(shape=(), dtype="string", name="text")
    ids = EmptyAsUnknown(name="empty_as_unknown")(vectorizer(texts))
    return keras.Model(texts, classifier(ids), name="text_classifier")
