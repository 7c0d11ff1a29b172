"""The reference keyword classifier: the small CNN of TensorFlow's audio tutorial."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np


def build_tutorial_cnn(
    input_shape: tuple[int, int],
    num_classes: int,
    *,
    mean: Sequence[float] | np.ndarray,
    variance: Sequence[float] | np.ndarray,
) -> keras.Model:
    """The CNN of TensorFlow's "Simple audio recognition" tutorial, over MFCC frames.

    As in the tutorial: the (frames, coefficients) image is resized to 32x32 and normalised,
    then Conv2D(32, 3) -> Conv2D(64, 3) -> max-pool -> dropout 0.25 -> Dense(128) -> dropout
    0.5 -> softmax. (The tutorial feeds an STFT spectrogram and normalises with statistics
    adapted per pixel; here the input is the same MFCC frames the recurrent model sees,
    normalised per coefficient with the training statistics, before resizing.)

    Args:
        input_shape: (frames, coefficients) of one example.
        num_classes: Number of output classes.
        mean: Per-coefficient mean fitted on the training split.
        variance: Per-coefficient variance fitted on the training split.

    Returns:
        An uncompiled Functional model mapping (batch, frames, coefficients) to class
        probabilities.
    """
    inputs = keras.Input(shape=input_shape, name="mfcc")
    x = keras.layers.Normalization(axis=-1, mean=np.asarray(mean), variance=np.asarray(variance),
                                   name="normalize")(inputs)
    x = keras.layers.Reshape((*input_shape, 1), name="as_image")(x)
    x = keras.layers.Resizing(32, 32, name="resize")(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv_1")(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", name="conv_2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.25, name="dropout_1")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(0.5, name="dropout_2")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="tutorial_cnn")
