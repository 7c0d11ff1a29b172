"""The bag-of-n-grams branch of the sentiment model: fitting it (NB-LR), choosing its blend
weight with the Bi-RNN, and the Keras model joining the two."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from features.errors import ConfigError, require_at_least, require_positive
from features.splits import Splits
from features.text import fit_ngram_vectorizer, log_count_ratio, ngram_matrix

BLEND_WEIGHTS = np.linspace(0, 1, 21)  # the n-gram branch's weights tried, in steps of 0.05
BLEND_SPACES = ("logit", "probability")
PROBABILITY_FLOOR = 1e-7  # keeps log(p) finite for a recurrent model sure of a class


@dataclass(frozen=True)
class NgramConfig:
    """Bag-of-n-grams branch: NB-weighted logistic regression blended with the Bi-RNN."""

    ngram_features: int = field(default=500_000, metadata={
        "help": "most frequent word n-grams in the bag-of-n-grams branch blended with the "
                "recurrent model (0: no branch)"})
    ngram_order: int = field(default=3, metadata={"help": "longest n-gram of that branch (words)"})
    ngram_c: float = field(default=0.1, metadata={
        "help": "inverse L2 regularisation of the branch's naive-Bayes-weighted logistic "
                "regression (NBSVM-style)"})

    def __post_init__(self):
        require_at_least(self, {"ngram_order": 1})
        require_positive(self, ["ngram_c"])
        if self.ngram_features == 1 or self.ngram_features < 0:  # a vocabulary holds the OOV
            raise ConfigError("ngram_features must be 0 (no branch) or at least 2, got "
                              f"{self.ngram_features}")


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


def blend_probabilities(logit, recurrent, weight: float, space: str = "logit"):
    """The blend of the n-gram branch's logit of class 1 (batch, 1) and the recurrent model's
    probabilities (batch, 2), the n-gram branch weighted `weight`, as (batch, 2) probabilities:

    - "logit": sigmoid(weight * logit + (1 - weight) * log(p1 / p0)), a weighted product of
      the two models' odds, so a confident model is not averaged away;
    - "probability": weight * [1 - sigmoid(logit), sigmoid(logit)] + (1 - weight) * recurrent.

    Tensors or NumPy arrays (training picks the weight with this same function).

    Raises:
        ValueError: `space` is not one of BLEND_SPACES.
    """
    if space == "probability":
        positive = keras.ops.sigmoid(logit)
        ngram = keras.ops.concatenate([1.0 - positive, positive], axis=-1)
        return weight * ngram + (1.0 - weight) * recurrent
    if space != "logit":
        raise ConfigError(f"unknown blend space {space!r}; valid choices: "
                          f"{', '.join(BLEND_SPACES)}")
    recurrent = keras.ops.clip(keras.ops.convert_to_tensor(recurrent, "float32"),
                               PROBABILITY_FLOOR, 1.0)
    odds = keras.ops.log(recurrent[:, 1:2]) - keras.ops.log(recurrent[:, 0:1])
    positive = keras.ops.sigmoid(weight * keras.ops.cast(logit, "float32")
                                 + (1.0 - weight) * odds)
    return keras.ops.concatenate([1.0 - positive, positive], axis=-1)


@keras.saving.register_keras_serializable(package="models")
class BlendProbabilities(keras.layers.Layer):
    """The blended model's output layer: `blend_probabilities` with a fixed weight, in the
    given space ("logit", as `blended_text_classifier` builds it, or "probability")."""

    def __init__(self, weight: float, space: str, **kwargs):
        super().__init__(**kwargs)
        self.weight = float(weight)
        self.space = space

    def call(self, inputs):
        logit, recurrent = inputs
        return blend_probabilities(logit, recurrent, self.weight, self.space)

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        return super().get_config() | {"weight": self.weight, "space": self.space}

    @classmethod
    def from_config(cls, config):
        # a model saved without a space blends probabilities
        return cls(**{"space": "probability"} | config)


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
    n-gram branch's logit, in logit space (BlendProbabilities). Binary tasks only.

    Raises:
        ValueError: `weight` outside [0, 1] or a recurrent model without two outputs.
    """
    if not 0 <= weight <= 1:
        raise ConfigError(f"blend weight must be within [0, 1], got {weight}")
    if recurrent.output_shape[-1] != 2:
        raise ConfigError("the n-gram branch serves binary classifiers only; the recurrent "
                         f"model has {recurrent.output_shape[-1]} outputs")
    texts = keras.Input(shape=(), dtype="string", name="text")
    blended = BlendProbabilities(weight, "logit", name="blend")([ngrams(texts),
                                                                 recurrent(texts)])
    return keras.Model(texts, blended, name="blended_text_classifier")


@dataclass
class FittedBranch:
    """The fitted n-gram branch: vectorizer, folded weights, its logits per split, and what
    fitting it measured (`ngram_features`, `ngram_seconds`, `ngram_<split>_accuracy`)."""

    vectorizer: keras.layers.TextVectorization
    coefficients: np.ndarray
    intercept: float
    logits: dict[str, np.ndarray]
    metrics: dict[str, float]

    def model(self) -> keras.Model:
        """The branch as a Keras model over raw strings (`ngram_branch`)."""
        return ngram_branch(self.vectorizer, self.coefficients, self.intercept)


def fit_ngram_branch(texts: Splits, config: NgramConfig) -> FittedBranch:
    """Fits the branch on the training texts: binary 1..ngram_order-gram bags, scaled by the
    naive-Bayes log-count ratio, then an L2 logistic regression (liblinear; NBSVM's NB-LR
    variant). The scaling is folded into the coefficients, so the branch is one linear layer.

    Raises:
        ValueError: The task is not binary.
    """
    if len(texts.labels) != 2:
        raise ConfigError(f"the n-gram branch needs two classes, got {len(texts.labels)}; "
                         "pass --ngram-features 0")
    started = time.perf_counter()
    vectorizer = fit_ngram_vectorizer(texts.x["train"], config.ngram_features,
                                      config.ngram_order)
    bags = {split: ngram_matrix(vectorizer, reviews) for split, reviews in texts.x.items()}
    ratio = log_count_ratio(bags["train"], texts.y["train"])
    classifier = LogisticRegression(C=config.ngram_c, solver="liblinear", max_iter=1000)
    classifier.fit(bags["train"].multiply(ratio[None, :]).tocsr(), texts.y["train"])
    coefficients = (ratio * classifier.coef_[0]).astype(np.float32)
    intercept = float(classifier.intercept_[0])
    logits = {split: bag @ coefficients + intercept for split, bag in bags.items()}
    metrics = {
        "ngram_features": vectorizer.vocabulary_size(),
        "ngram_seconds": time.perf_counter() - started,
        **{f"ngram_{split}_accuracy": float(((logits[split] > 0) == texts.y[split]).mean())
           for split in ("validation", "test")},
    }
    return FittedBranch(vectorizer, coefficients, intercept, logits, metrics)


def blend(logits: np.ndarray, recurrent: np.ndarray, weight: float) -> np.ndarray:
    """The blended model's probabilities (`blend_probabilities`, in logit space) as NumPy."""
    return np.asarray(blend_probabilities(logits[:, None], recurrent, weight))


def choose_blend_weight(logits: np.ndarray, recurrent: np.ndarray, y: np.ndarray) -> float:
    """The weight of the n-gram branch (one of BLEND_WEIGHTS) whose blend has the lowest
    validation log-loss."""
    losses = [log_loss(y, blend(logits, recurrent, w), labels=[0, 1]) for w in BLEND_WEIGHTS]
    return float(BLEND_WEIGHTS[int(np.argmin(losses))])
