"""The sentiment task's pretraining stage: in-domain word vectors for the recurrent encoder's
embedding, trained self-supervised (skip-gram word2vec, `models.word_vectors`) on the training
split's reviews and the unlabelled ones, in an MLflow run of its own (tag
`pipeline=sentiment-pretrain`), and found again by what it was made from.

A pretraining run is keyed (tag `pretrain_key`) by everything that decides its vectors: the
corpus's content digest, the vocabulary size, the embedding width and the pretraining options.
`--pretrain auto` (the default) reuses the newest FINISHED run of that key in the experiment
whose encoder loads (one whose files were removed or damaged is passed over, with a warning),
or pretrains; `always` pretrains anew (a sweep: once, by its first trial that pretrains);
`never` skips the stage (the classifier's embedding starts random, its vocabulary fitted on the
training split alone). A pretraining run that is interrupted ends KILLED and is pretrained anew
next time (a few minutes of work). The classifier run tags the pretraining run's id
(`pretrain_run_id`) as lineage and takes its vocabulary, fitted on the same corpus.

The pretraining run logs its options, the corpus (train and unlabelled digests and counts), the
loss per token of every epoch (`word_vector_loss`), its times, the vocabulary
(`vocabulary.txt`), the encoder (`encoder/encoder.keras`, ids to vectors, with
`encoder/vocabulary.txt`) and the nearest words of a few probe words (`nearest_words.json`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from features.errors import ConfigError, require_at_least, require_seed
from features.review_data import Corpus
from features.text import (
    ENCODE_BATCH,
    encode_reviews,
    fit_vectorizer,
    load_vocabulary,
    make_vectorizer,
    save_vocabulary,
    vocabulary_text,
)
from models.word_vectors import (
    embedding_encoder,
    encoder_vectors,
    nearest_words,
    train_word_vectors,
    write_corpus,
)
from pipelines import descriptions, interrupts, tracking
from pipelines.errors import SetupError
from pipelines.lifecycle import RunConfig

log = logging.getLogger(__name__)

PIPELINE = "sentiment-pretrain"
MODES = ("auto", "always", "never")
KEY_TAG = "pretrain_key"
WAIT_SECONDS = 5.0  # between looks at a pretraining run of the same key in another process
WAIT_NOTE_LOOKS = 60  # looks between notes that the run still waits (5 minutes)
MOST_TOKENS = 1000  # of a review the word vectors read: all of 99 % of IMDB's reviews
PROBE_WORDS = ("great", "awful", "boring", "masterpiece", "funny", "disappointing", "actor")
C_INT_MAX = 2**31 - 1
# what a damaged or missing artifact of a pretraining run raises as it is downloaded and loaded
UNLOADABLE = (SetupError, OSError, ValueError, KeyError, zipfile.BadZipFile)
MADE: list[str] = []  # the pretraining runs this process made, in order (`once_per_sweep`)
FORMAT = 1  # of the encoder artifact and the key; a change leaves every earlier run unmatched


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining: in-domain word vectors for the encoder, from the training and unlabelled
    reviews."""

    pretrain: str = field(default="auto", metadata={
        "help": "start the recurrent model's embedding from word vectors pretrained on the "
                "training and unlabelled reviews (train/unsup/), in a run of their own: auto "
                "reuses a finished pretraining run of the same data, vocabulary, width and "
                "options from the experiment, always pretrains anew, never starts from random "
                "vectors", "choices": MODES})
    word_vector_epochs: int = field(default=5, metadata={
        "help": "epochs of skip-gram word2vec over the corpus"})
    word_vector_window: int = field(default=5, metadata={
        "help": "words on each side that a word predicts"})
    negative_samples: int = field(default=10, metadata={
        "help": "negative samples per prediction"})
    pretrain_seed: int = field(default=0, metadata={
        "help": "seed of pretraining; kept apart from --seed so runs with other seeds share "
                "one pretrained encoder"})

    def __post_init__(self):
        require_at_least(self, {"word_vector_epochs": 1, "word_vector_window": 1,
                                "negative_samples": 1})
        require_seed(self, ["pretrain_seed"])
        for name in ("word_vector_window", "negative_samples"):  # gensim's C ints: a larger
            # value stops its worker threads, and its training waits for them forever
            if getattr(self, name) > C_INT_MAX:
                raise ConfigError(f"{name} must be at most {C_INT_MAX}, got "
                                  f"{getattr(self, name)}")


@dataclass(frozen=True)
class Pretrained:
    """A pretrained encoder ready for a classifier.

    Attributes:
        encoder: Ids to vectors (`models.word_vectors.embedding_encoder`).
        vocabulary: The ids' vocabulary, in id order (padding and OOV first).
        run_id: The pretraining run.
        reused: Whether it was found (True) or pretrained by this call (False).
        seconds: What finding or pretraining it took.
    """

    encoder: keras.Model
    vocabulary: list[str]
    run_id: str
    reused: bool
    seconds: float

    def vectorizer(self, sequence_length: int) -> keras.layers.TextVectorization:
        """A TextVectorization of the encoder's vocabulary, `sequence_length` ids per text."""
        return make_vectorizer(len(self.vocabulary), sequence_length, self.vocabulary)

    def lineage(self) -> dict[str, str]:
        """What the classifier run tags: where its encoder came from."""
        return {"pretrain_run_id": self.run_id, "pretrain_reused": str(self.reused)}

    def result(self) -> dict:
        """What the classifier run's result says of its encoder."""
        return {"pretrain_run_id": self.run_id, "pretrain_reused": self.reused,
                "pretrain_seconds": self.seconds}


def pretraining_key(config: PretrainConfig, corpus: Corpus, *, vocabulary_size: int,
                    embedding_dim: int) -> str:
    """What pretrained vectors were made from, as a short digest: the corpus, the vocabulary
    size, the width, the pretraining options (all but the mode) and the artifact format."""
    made_from = {"corpus": corpus.digest, "vocabulary_size": vocabulary_size,
                 "embedding_dim": embedding_dim, "most_tokens": MOST_TOKENS,
                 "pretraining": {name: value for name, value in dataclasses.asdict(config).items()
                                 if name != "pretrain"},
                 # a change to standardize_review's rules must bump FORMAT: only the name is
                 # hashed here
                 "standardize": "features.text.standardize_review", "format": FORMAT}
    return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()[:24]


def pretrained_encoder(config: PretrainConfig, corpus: Corpus, run: RunConfig, *,
                       vocabulary_size: int, embedding_dim: int) -> Pretrained | None:
    """The encoder a classifier starts from, as `config.pretrain` says: None (`never`), the
    resumed run's own (`run.resume`, by its tag `pretrain_run_id`), one found in the experiment
    by its key (`auto`), or one pretrained now in a run of its own.

    Args:
        config: The pretraining options.
        corpus: The texts to pretrain on.
        run: The task's store and experiment (pretraining runs beside the task's runs).
        vocabulary_size: Most token ids, padding and OOV included (the classifier's).
        embedding_dim: The classifier's embedding width.
    """
    if config.pretrain == "never":
        return None
    started = time.perf_counter()
    if run.resume:
        tags = tracking.run_tags(run.resume)
        if tags.get("pretrain_run_id"):  # its own encoder, as found or made when it started
            return load_pretrained(tags["pretrain_run_id"], started,
                                   reused=tags.get("pretrain_reused") != "False")
    key = pretraining_key(config, corpus, vocabulary_size=vocabulary_size,
                          embedding_dim=embedding_dim)
    if config.pretrain == "auto":
        tracking.connect(run.tracking_uri, run.store_dir)
        for finished in finished_pretraining(run.experiment, key):
            try:
                pretrained = load_pretrained(finished, started)
            except SetupError as error:  # its files removed or damaged: an older one, or anew
                log.warning("%s; not reused", error)
                continue
            log.info("reusing the pretrained encoder of run %s (key %s)", finished, key)
            return pretrained
    return pretrain(config, corpus, run, key, vocabulary_size=vocabulary_size,
                    embedding_dim=embedding_dim)


def once_per_sweep(run_trial: Callable[[Any], dict]) -> Callable[[Any], dict]:
    """`run_trial` (a trial's config -> its result) for a sweep's trials, which pretrain for
    the sweep, not each for itself: with `--pretrain always`, the trials up to the first that
    pretrains (whether or not it then finishes) pretrain anew, and the later ones reuse its
    encoder (`auto`)."""
    pretrained = False

    def trial_run(trial: Any) -> dict:
        nonlocal pretrained
        if pretrained and trial.pretrain.pretrain == "always":
            trial = trial.replace(pretrain="auto")
        made = len(MADE)
        try:
            return run_trial(trial)
        finally:
            pretrained = pretrained or len(MADE) > made

    return trial_run


def finished_pretraining(experiment: str, key: str) -> list[str]:
    """The finished pretraining runs of `key` in `experiment`, newest first; while there is
    none and one of that key is running in a live process (runs of several seeds started one
    after another), it is waited for, rather than the same vectors made twice."""
    started, looks = time.monotonic(), 0
    while True:
        runs = tracking.find_runs(experiment, {"pipeline": PIPELINE, KEY_TAG: key})
        finished = [run_id for run_id, status, _ in runs if status == "FINISHED"]
        running = tracking.running_elsewhere(runs)
        if finished or not running:
            return finished
        if looks % WAIT_NOTE_LOOKS == 0:  # at first, then every few minutes
            log.info("waiting for pretraining run %s, which makes the same word vectors (key "
                     "%s; %.0f s so far): stop that process to pretrain here, or pass "
                     "--pretrain always", running[0], key, time.monotonic() - started)
        looks += 1
        time.sleep(WAIT_SECONDS)


def load_pretrained(run_id: str, started: float, reused: bool = True) -> Pretrained:
    """The encoder and vocabulary a finished pretraining run logged (`started`: when finding it
    began, by time.perf_counter; `reused`: what the classifier run tags).

    Raises:
        SetupError: The run's `encoder/` files are missing or damaged, or disagree, naming
            the run.
    """
    try:
        with tempfile.TemporaryDirectory() as folder:
            local = tracking.download_artifacts(run_id, "encoder", folder)
            encoder = keras.saving.load_model(local / "encoder.keras")
            vocabulary = load_vocabulary(local / "vocabulary.txt")
    except UNLOADABLE as error:
        raise SetupError(f"pretraining run {run_id}: its encoder (artifacts encoder/"
                         f"encoder.keras, encoder/vocabulary.txt) cannot be loaded: "
                         f"{type(error).__name__}: {error}") from error
    rows = encoder_vectors(encoder).shape[0]
    if rows != len(vocabulary):
        raise SetupError(f"pretraining run {run_id}: its encoder holds {rows} vectors but its "
                         f"vocabulary {len(vocabulary)} words (damaged artifacts)")
    return Pretrained(encoder, vocabulary, run_id, reused, time.perf_counter() - started)


def pretrain(config: PretrainConfig, corpus: Corpus, run: RunConfig, key: str, *,
             vocabulary_size: int, embedding_dim: int) -> Pretrained:
    """Pretrains word vectors in a run of its own: the vocabulary fitted on the corpus, the
    corpus written as ids, then skip-gram epochs, each one's loss logged."""
    started, name = time.perf_counter(), descriptions.pretraining_run_name(embedding_dim)
    with tracking.open_run(run.experiment, tracking_uri=run.tracking_uri,
                           store_dir=run.store_dir, run_name=name,
                           tags={"pipeline": PIPELINE, KEY_TAG: key}) as run_id:
        tracking.log_params(dataclasses.asdict(config) | {
            "vocabulary_size": vocabulary_size, "embedding_dim": embedding_dim,
            "most_tokens": MOST_TOKENS})
        log_corpus(corpus)
        log.info("pretraining word vectors in run %s on %d reviews: the vocabulary, then %d "
                 "skip-gram epochs (a few minutes on 2 cores; later runs reuse them)", run_id,
                 len(corpus.texts), config.word_vector_epochs)
        vectorizer = fit_vectorizer(corpus.texts, vocabulary_size, MOST_TOKENS)
        vocabulary = vectorizer.get_vocabulary()
        with tempfile.TemporaryDirectory() as folder:
            corpus_file = Path(folder) / "corpus.txt"
            tokens = write_corpus((encode_reviews(vectorizer, corpus.texts[i:i + ENCODE_BATCH])
                                   for i in range(0, len(corpus.texts), ENCODE_BATCH)),
                                  corpus_file)
            tracking.log_metrics({"corpus_tokens": tokens,
                                  "vocabulary_seconds": time.perf_counter() - started})
            trained = time.perf_counter()
            with interrupts.deferred():  # a signal stops the word vectors at an epoch's end
                vectors = train_word_vectors(
                    corpus_file, len(vocabulary), embedding_dim,
                    epochs=config.word_vector_epochs, window=config.word_vector_window,
                    negative=config.negative_samples, seed=config.pretrain_seed,
                    on_epoch=epoch_ended)
        encoder = embedding_encoder(vectors)
        log_encoder(encoder, vectorizer)
        tracking.log_dict(nearest_words(vectors, vocabulary, PROBE_WORDS, 8),
                          "nearest_words.json")
        tracking.log_metrics({"word_vector_seconds": time.perf_counter() - trained,
                              "pretrain_seconds": time.perf_counter() - started})
        tracking.set_description(descriptions.pretraining_description(
            name, len(corpus.texts), config.word_vector_epochs, tokens))
    MADE.append(run_id)
    return Pretrained(encoder, vocabulary, run_id, False, time.perf_counter() - started)


def epoch_ended(epoch: int, loss: float) -> None:
    """Logs a word-vector epoch's loss per token, then raises a signal received during it."""
    tracking.log_metrics({"word_vector_loss": loss}, step=epoch + 1)  # as the classifier's
    log.info("word vectors: epoch %d done, loss %.4f per token", epoch + 1, loss)
    interrupts.raise_pending()


def log_corpus(corpus: Corpus) -> None:
    """The pretraining corpus as the run's data lineage."""
    tracking.log_dataset(
        "aclImdb-pretraining", corpus.source, corpus.digests,
        {part: {"examples": str(count)} for part, count in corpus.counts.items()},
        {"source": corpus.source, "reviews": corpus.counts,
         "what": "the training split's reviews and the unlabelled reviews (train/unsup/); "
                 "no validation or test review"})
    tracking.log_metrics({f"corpus_{part}": count for part, count in corpus.counts.items()})


def log_encoder(encoder: keras.Model, vectorizer: keras.layers.TextVectorization) -> None:
    """Logs the vocabulary (`vocabulary.txt`) and the encoder with it (`encoder/`)."""
    with tempfile.TemporaryDirectory() as folder:
        encoder.save(Path(folder) / "encoder.keras")
        save_vocabulary(vectorizer, Path(folder) / "vocabulary.txt")
        tracking.log_artifacts(folder, "encoder")
    tracking.log_text(vocabulary_text(vectorizer), "vocabulary.txt")
