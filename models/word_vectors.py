"""In-domain word vectors: skip-gram word2vec (gensim) on token ids, the pretrained embedding of
the recurrent text classifier's encoder.

The vectors are trained epoch by epoch on a corpus file of token ids, one text per line
(gensim's corpus_file mode: multi-threaded, and the corpus never sits in memory as Python
strings), the learning rate decaying linearly over all epochs as in word2vec's own schedule, so
that each epoch's loss can be reported. The padding id never occurs in a text; an id that never
occurs keeps a small random vector. gensim's worker threads make two runs differ a little even
with the same seed.

The encoder that carries the vectors to a classifier is a Keras model from ids to vectors: the
classifier's embedding layer, same name and shape (`embedding_encoder`, `load_encoder_weights`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import keras
import numpy as np
from gensim.models import Word2Vec

from features.errors import ConfigError
from features.text import PADDING_ID

EMBEDDING = "embedding"  # the embedding layer's name in the encoder and the text classifier
START_ALPHA, END_ALPHA = 0.025, 1e-4  # word2vec's default learning-rate schedule


def write_corpus(batches: Iterable[np.ndarray], path: str | Path) -> int:
    """Writes right-padded id rows as a corpus file, one text's ids per line (padding left
    out, empty texts skipped); returns the tokens written."""
    tokens = 0
    with open(path, "w", encoding="ascii") as handle:
        for batch in batches:
            for row in batch:
                ids = row[row != PADDING_ID]
                if len(ids):
                    handle.write(" ".join(map(str, ids.tolist())) + "\n")
                    tokens += len(ids)
    return tokens


def train_word_vectors(corpus_file: str | Path, vocabulary_size: int, dim: int, *, epochs: int,
                       window: int, negative: int, seed: int, workers: int = 2,
                       on_epoch: Callable[[int, float], None] | None = None) -> np.ndarray:
    """Skip-gram word vectors with negative sampling (Mikolov et al. 2013) of the ids in a
    corpus file (`write_corpus`), as an embedding matrix.

    Args:
        corpus_file: One text's token ids per line.
        vocabulary_size: Rows of the matrix (ids 0 .. vocabulary_size - 1).
        dim: Vector width.
        epochs: Passes over the corpus.
        window: Words on each side that a word predicts.
        negative: Negative samples per prediction.
        seed: Seed of the initial vectors and of the sampling.
        workers: Training threads.
        on_epoch: Called after each epoch with its index and its loss per token (of the share
            of the corpus one worker trained on: gensim's corpus-file training keeps the last
            worker's running loss, not the sum of the workers'; the shares are equal parts of
            the file, so this is the corpus's loss per token within their spread).

    Returns:
        float32 (vocabulary_size, dim); padding's row is zero.

    Raises:
        ConfigError: The corpus holds no token, or `epochs` < 1.
    """
    if epochs < 1:
        raise ConfigError(f"word vectors need at least 1 epoch, got {epochs}")
    model = Word2Vec(vector_size=dim, window=window, min_count=1, sg=1, negative=negative,
                     seed=seed, workers=workers)
    model.build_vocab(corpus_file=str(corpus_file))
    if not model.corpus_total_words:
        raise ConfigError("word vectors need text: the corpus holds no token")
    for epoch in range(epochs):
        model.train(corpus_file=str(corpus_file), total_words=model.corpus_total_words,
                    total_examples=model.corpus_count, epochs=1, compute_loss=True,
                    start_alpha=START_ALPHA - (START_ALPHA - END_ALPHA) * epoch / epochs,
                    end_alpha=START_ALPHA - (START_ALPHA - END_ALPHA) * (epoch + 1) / epochs)
        if on_epoch is not None:
            share = model.corpus_total_words / workers  # the words one worker trained on
            on_epoch(epoch, model.get_latest_training_loss() / share)
    vectors = np.random.default_rng(seed).normal(0.0, 0.05, (vocabulary_size, dim))
    vectors = vectors.astype(np.float32)
    for token, index in model.wv.key_to_index.items():
        if int(token) < vocabulary_size:
            vectors[int(token)] = model.wv.vectors[index]
    vectors[PADDING_ID] = 0.0
    return vectors


def embedding_encoder(vectors: np.ndarray) -> keras.Model:
    """The pretrained encoder: int32 (batch, time) ids to (batch, time, dim) vectors, masked on
    padding, through an embedding layer named as the classifier's."""
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    embedding = keras.layers.Embedding(*vectors.shape, mask_zero=True, name=EMBEDDING)
    encoder = keras.Model(ids, embedding(ids), name="word_vector_encoder")
    embedding.set_weights([vectors])
    return encoder


def encoder_vectors(encoder: keras.Model) -> np.ndarray:
    """The (vocabulary, dim) vectors an encoder holds."""
    return keras.ops.convert_to_numpy(encoder.get_layer(EMBEDDING).embeddings)


def load_encoder_weights(classifier: keras.Model, encoder: keras.Model) -> None:
    """Starts a text classifier's embedding from a pretrained encoder's vectors.

    Raises:
        ConfigError: The two differ in vocabulary or embedding width.
    """
    vectors = encoder_vectors(encoder)
    target = classifier.get_layer(EMBEDDING)
    wanted = (target.input_dim, target.output_dim)
    if vectors.shape != wanted:
        raise ConfigError(f"the pretrained encoder's vectors {vectors.shape} do not fit the "
                          f"classifier's embedding {wanted}: pretrain with the classifier's "
                          "vocabulary and --embedding-dim")
    target.set_weights([vectors])


def nearest_words(vectors: np.ndarray, vocabulary: Sequence[str], probes: Sequence[str],
                  count: int) -> dict[str, list[str]]:
    """The `count` words nearest (cosine) to each probe word in the vocabulary: a look at what
    the vectors learned (probes not in the vocabulary are left out)."""
    index = {word: i for i, word in enumerate(vocabulary)}
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.maximum(norms, 1e-12)
    nearest = {}
    for word in probes:
        if word not in index:
            continue
        scores = unit @ unit[index[word]]
        scores[[index[word], PADDING_ID]] = -np.inf
        nearest[word] = [vocabulary[i] for i in np.argsort(-scores)[:count]]
    return nearest
