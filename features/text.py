"""Reviews to token ids with Keras' TextVectorization (`standardize_review`, one vocabulary),
and the TF-IDF baseline's own standardisation (`strip_html_lower`).

The vocabulary is fitted on the training split (with pretraining, on it and the unlabelled
reviews: `pipelines.pretraining`), never on validation or test. Id 0 is padding and id 1 the
out-of-vocabulary token; sequences are truncated or right-padded to a fixed length, which keeps
masked recurrent layers cuDNN-eligible.

Any text is accepted (`review_text`): bytes are decoded as UTF-8 with replacement (as the
IMDB reader does), lone surrogates (which TensorFlow cannot encode) become U+FFFD, which the
standardisation turns into a space like any symbol. A review that standardises to no tokens at
all (empty, whitespace, only HTML such as "<br /><br />", only punctuation) is encoded as one
OOV token, so the model answers it with its prior rather than failing; rejecting empty
reviews is the server's job (pipelines.serving).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import scipy.sparse
import tensorflow as tf

from features.errors import ConfigError, require_at_least
from features.imdb import HTML_TAG, HTML_TAG_RE, decode_review
from features.splits import Splits

PADDING_ID = 0
OOV_ID = 1
OOV_TOKEN = "[UNK]"
ENCODE_BATCH = 1024
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a str may hold them; UTF-8 cannot


@dataclass(frozen=True)
class TokenConfig:
    """Token ids: the vocabulary, the ids kept per review, and length-bucketed batches."""

    vocabulary_size: int = field(default=20000, metadata={
        "help": "most tokens kept, padding and OOV ids included"})
    sequence_length: int = field(default=800, metadata={
        "help": "token ids per review after truncation/right padding"})
    bucketing: bool = field(default=True, metadata={
        "help": "batch reviews of similar length together, padding each batch only to its "
                "bucket's length"})
    buckets: int = field(default=8, metadata={"help": "length buckets for --bucketing"})

    def __post_init__(self):  # the padding id, the OOV id and one token at least
        require_at_least(self, {"vocabulary_size": 3, "sequence_length": 1, "buckets": 1})


def review_text(text: str | bytes) -> str:
    """A review as text TensorFlow can encode: bytes decoded as UTF-8 with replacement, lone
    surrogates (e.g. "\\udcff" from a JSON escape) replaced by U+FFFD."""
    if isinstance(text, bytes | bytearray):
        return decode_review(bytes(text))[0]  # as the reader decodes a review file
    return _LONE_SURROGATE.sub("\ufffd", text)


def review_tensor(texts: Sequence[str | bytes]):
    """A tf.string tensor of `texts`, each passed through `review_text`."""
    return tf.constant([review_text(text) for text in texts], tf.string)


@keras.saving.register_keras_serializable(package="features")
def standardize_review(text: tf.Tensor) -> tf.Tensor:
    """Lower-cases, removes HTML tags such as `<br />`, drops apostrophes inside words
    ("don't" -> "dont") and invisible format characters, and turns all other punctuation,
    symbols, control characters and Unicode separators into spaces.

    Registered with Keras so a saved model carries it by name.
    """
    text = tf.strings.lower(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, HTML_TAG, " ")
    text = tf.strings.regex_replace(text, r"['\x{2019}\p{Cf}]", "")
    # Control characters and Unicode separators (\x85, \u2028, \v, ...) become spaces too: a
    # token holding one would be cut in two when Keras reads its saved vocabulary back
    # (IndexLookup.load_assets uses str.splitlines), and the saved model would not load.
    return tf.strings.regex_replace(text, r"[\pP\pS\p{Cc}\pZ]", " ")


def make_vectorizer(vocabulary_size: int, sequence_length: int,
                    vocabulary: Sequence[str] | None = None
                    ) -> keras.layers.TextVectorization:
    """A TextVectorization layer with the project's standardisation.

    Args:
        vocabulary_size: Most tokens kept, padding and OOV included.
        sequence_length: Ids per review after truncation/right padding.
        vocabulary: A fitted vocabulary in id order (as `get_vocabulary()` or
            `load_vocabulary` return it) to restore; None for an unfitted layer.
    """
    if vocabulary_size < 3:
        raise ConfigError(f"vocabulary_size must be at least 3, got {vocabulary_size}")
    if sequence_length < 1:
        raise ConfigError(f"sequence_length must be at least 1, got {sequence_length}")
    if vocabulary is not None:  # the layer adds padding and OOV itself
        vocabulary = [str(token) for token in vocabulary if token not in ("", OOV_TOKEN)]
    return keras.layers.TextVectorization(
        max_tokens=vocabulary_size, standardize=standardize_review, split="whitespace",
        output_mode="int", output_sequence_length=sequence_length, vocabulary=vocabulary,
        name="token_ids")


def fit_vectorizer(train_texts: Sequence[str], vocabulary_size: int, sequence_length: int
                   ) -> keras.layers.TextVectorization:
    """Fits the vocabulary on the training texts (the most frequent tokens)."""
    vectorizer = make_vectorizer(vocabulary_size, sequence_length)
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(review_tensor(train_texts))
                     .batch(ENCODE_BATCH))
    return vectorizer


@keras.saving.register_keras_serializable(package="features")
class EmptyAsUnknown(keras.layers.Layer):
    """Right-padded token ids with a review of no tokens at all ("", "!!!", "<br />") given one
    OOV token, so that masked layers always see at least one step (a row of padding only is
    masked whole, and masked pooling over no step gives NaN): in `encode_reviews` and inside a
    model over raw strings (`models.recurrent.text_to_probabilities`)."""

    def call(self, ids):
        first = keras.ops.arange(keras.ops.shape(ids)[1])[None, :] == 0
        empty = ids[:, :1] == PADDING_ID
        return keras.ops.where(first & empty, keras.ops.cast(OOV_ID, ids.dtype), ids)


def encode_reviews(vectorizer: keras.layers.TextVectorization, texts: Sequence[str | bytes]
                   ) -> np.ndarray:
    """Token ids (reviews, sequence_length) as int32, right-padded with PADDING_ID.

    A review that standardises to no tokens at all ("", "!!!", "<br />") is encoded as one OOV
    token, so that masked layers always see at least one step. Bytes and lone surrogates are
    handled as `review_text` says.
    """
    sequence_length = vectorizer.get_config()["output_sequence_length"]
    if not len(texts):
        return np.zeros((0, sequence_length), np.int32)
    unknown = EmptyAsUnknown()
    batches = [unknown(vectorizer(review_tensor(texts[start:start + ENCODE_BATCH]))).numpy()
               for start in range(0, len(texts), ENCODE_BATCH)]
    return np.concatenate(batches).astype(np.int32)


def encode_splits(texts: Splits, tokens: TokenConfig,
                  vectorizer: keras.layers.TextVectorization | None = None
                  ) -> tuple[keras.layers.TextVectorization, Splits]:
    """Encodes every split with `vectorizer`, or with a vocabulary fitted on the training texts
    only.

    Returns:
        The TextVectorization, and the splits with token ids in place of texts.
    """
    if vectorizer is None:
        vectorizer = fit_vectorizer(texts.x["train"], tokens.vocabulary_size,
                                    tokens.sequence_length)
    return vectorizer, texts.with_inputs(
        {split: encode_reviews(vectorizer, reviews) for split, reviews in texts.x.items()})


def vectorizer_summary(vectorizer: keras.layers.TextVectorization) -> dict:
    """How token ids are made, as the run records it (`feature_config.json`)."""
    vocabulary = vectorizer.get_vocabulary()
    return {"vocabulary_size": len(vocabulary),
            "sequence_length": vectorizer.get_config()["output_sequence_length"],
            "padding_id": PADDING_ID, "oov_id": OOV_ID, "oov_token": vocabulary[OOV_ID],
            "padding": "post", "standardize": "features.text.standardize_review"}


def fit_ngram_vectorizer(train_texts: Sequence[str], max_tokens: int, max_ngram: int
                         ) -> keras.layers.TextVectorization:
    """A bag of word n-grams (1 to `max_ngram` words) fitted on the training texts: the
    `max_tokens` most frequent n-grams, each present (1) or absent (0) in a review, as a sparse
    (reviews, max_tokens) output. Same standardisation and split as the token ids."""
    if max_tokens < 2:
        raise ConfigError(f"max_tokens must be at least 2, got {max_tokens}")
    if max_ngram < 1:
        raise ConfigError(f"max_ngram must be at least 1, got {max_ngram}")
    vectorizer = keras.layers.TextVectorization(
        max_tokens=max_tokens, standardize=standardize_review, split="whitespace",
        ngrams=max_ngram, output_mode="multi_hot", sparse=True, name="ngram_bag")
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(review_tensor(train_texts))
                     .batch(ENCODE_BATCH))
    return vectorizer


def ngram_matrix(vectorizer: keras.layers.TextVectorization, texts: Sequence[str]):
    """The bag of n-grams of `texts` as a scipy CSR matrix (reviews, n-grams) of 0/1."""
    width = vectorizer.vocabulary_size()
    blocks = [scipy.sparse.csr_matrix((0, width), dtype=np.float32)]
    for start in range(0, len(texts), ENCODE_BATCH):
        bag = vectorizer(review_tensor(texts[start:start + ENCODE_BATCH]))
        rows, columns = bag.indices.numpy().T
        blocks.append(scipy.sparse.csr_matrix(
            (bag.values.numpy().astype(np.float32), (rows, columns)),
            shape=tuple(bag.dense_shape.numpy())))
    return scipy.sparse.vstack(blocks).tocsr()


def log_count_ratio(bags, labels: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Naive-Bayes log-count ratio per feature (Wang & Manning 2012, NBSVM):
    log((alpha + count in positive reviews) / |.|_1) - log((alpha + count in negative) / |.|_1),
    with label 1 positive. Scaling binary n-gram features by it before a linear classifier is
    what makes NBSVM/NB-LR strong on sentiment."""
    labels = np.asarray(labels)
    positive = alpha + np.asarray(bags[labels == 1].sum(axis=0)).ravel()
    negative = alpha + np.asarray(bags[labels == 0].sum(axis=0)).ravel()
    return (np.log(positive / positive.sum()) - np.log(negative / negative.sum())).astype(
        np.float32)


def token_lengths(ids: np.ndarray) -> np.ndarray:
    """Tokens per right-padded row of ids (padding excluded)."""
    return np.count_nonzero(ids != PADDING_ID, axis=1)


def truncated_share(texts: Sequence[str | bytes], ids: np.ndarray) -> float:
    """The share of reviews with more tokens than their right-padded rows of `ids` hold (cut
    at the sequence length; a review exactly that long is not)."""
    full = np.flatnonzero(ids[:, -1] != PADDING_ID)  # every id used: cut, or exactly that long
    if not len(full):
        return 0.0
    tokens = tf.strings.split(standardize_review(review_tensor([texts[i] for i in full])))
    return float(np.count_nonzero(tokens.row_lengths().numpy() > ids.shape[1]) / len(ids))


def vocabulary_text(vectorizer: keras.layers.TextVectorization) -> str:
    """The vocabulary, one token per line in id order (line 1: padding, line 2: OOV)."""
    return "\n".join(vectorizer.get_vocabulary()) + "\n"


def save_vocabulary(vectorizer: keras.layers.TextVectorization, path: str | Path) -> Path:
    """Writes `vocabulary_text` to `path`."""
    path = Path(path)
    path.write_text(vocabulary_text(vectorizer), encoding="utf-8")
    return path


def load_vocabulary(path: str | Path) -> list[str]:
    """Reads a vocabulary written by `save_vocabulary`."""
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]


def strip_html_lower(text: str) -> str:
    """Plain-Python preprocessing for scikit-learn vectorizers: HTML tags out, lower case
    (their tokenizer handles punctuation)."""
    return HTML_TAG_RE.sub(" ", text).lower()
