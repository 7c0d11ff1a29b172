"""The bag-of-n-grams branch of the sentiment model and the model joining it to the Bi-RNN."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="models")
class SparseLinear(keras.layers.Layer):
    """x . w + b over a (possibly sparse) bag of n-grams: one logit per review.

    The weights are fitted outside Keras (a convex problem, solved exactly by a linear solver)
    and stored in the layer, so the saved model carries them.
    """

    def __init__(self, features: int, **kwargs):
        super().__init__(**kwargs)
        self.features = features

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(self.features, 1), initializer="zeros",
                                      trainable=False, name="kernel")
        self.bias = self.add_weight(shape=(1,), initializer="zeros", trainable=False,
                                    name="bias")

    def call(self, bags):
        bags = tf.cast(bags, self.kernel.dtype)
        if isinstance(bags, tf.SparseTensor):
            return tf.sparse.sparse_dense_matmul(bags, self.kernel) + self.bias
        return tf.matmul(bags, self.kernel) + self.bias

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        return super().get_config() | {"features": self.features}


def blend_probabilities(logit, recurrent, weight: float):
    """sigmoid(n-gram logit) as P(class 1), blended with the recurrent model's probabilities:
    weight * [1 - p, p] + (1 - weight) * recurrent. `logit` is (batch, 1), `recurrent`
    (batch, 2); tensors or NumPy arrays (training picks the weight with this same function)."""
    positive = keras.ops.sigmoid(logit)
    ngram = keras.ops.concatenate([1.0 - positive, positive], axis=-1)
    return weight * ngram + (1.0 - weight) * recurrent


@keras.saving.register_keras_serializable(package="models")
class BlendProbabilities(keras.layers.Layer):
    """The blended model's output layer: `blend_probabilities` with a fixed weight."""

    def __init__(self, weight: float, **kwargs):
        super().__init__(**kwargs)
        self.weight = float(weight)

    def call(self, inputs):
        logit, recurrent = inputs
        return blend_probabilities(logit, recurrent, self.weight)

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        return super().get_config() | {"weight": self.weight}


def ngram_branch(vectorizer: keras.layers.Layer, coefficients: Sequence[float] | np.ndarray,
                 intercept: float) -> keras.Model:
    """Raw strings -> bag of n-grams -> one logit of class 1, with fitted linear weights.

    Args:
        vectorizer: A fitted multi-hot TextVectorization (features.text.fit_ngram_vectorizer).
        coefficients: One weight per n-gram (NB-scaled coefficients folded into one vector).
        intercept: The bias.
    """
    coefficients = np.asarray(coefficients, np.float32)
    if coefficients.shape != (vectorizer.vocabulary_size(),):
        raise ValueError(f"{len(coefficients)} coefficients for "
                         f"{vectorizer.vocabulary_size()} n-grams")
    texts = keras.Input(shape=(), dtype="string", name="text")
    linear = SparseLinear(len(coefficients), name="ngram_logit")
    logit = linear(vectorizer(texts))
    linear.set_weights([coefficients[:, None], np.asarray([intercept], np.float32)])
    return keras.Model(texts, logit, name="ngram_classifier")


def blended_text_classifier(recurrent: keras.Model, ngrams: keras.Model, weight: float
                            ) -> keras.Model:
    """One model over raw strings: the recurrent string model's probabilities blended with the
    n-gram branch's (BlendProbabilities). Binary tasks only.

    Raises:
        ValueError: `weight` outside [0, 1] or a recurrent model without two outputs.
    """
    if not 0 <= weight <= 1:
        raise ValueError(f"blend weight must be within [0, 1], got {weight}")
    if recurrent.output_shape[-1] != 2:
        raise ValueError("the n-gram branch serves binary classifiers only; the recurrent "
                         f"model has {recurrent.output_shape[-1]} outputs")
    texts = keras.Input(shape=(), dtype="string", name="text")
    blended = BlendProbabilities(weight, name="blend")([ngrams(texts), recurrent(texts)])
    return keras.Model(texts, blended, name="blended_text_classifier")
