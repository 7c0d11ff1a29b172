"""IMDB sentiment: reviews -> token ids -> Bi-LSTM/GRU (its embedding pretrained as word
vectors on the training and unlabelled reviews), blended with a bag-of-n-grams branch (or a
TF-IDF baseline) -> MLflow.

`run(config)` is the whole run, in order: read the reviews, find or pretrain the encoder (a run
of its own), then in the classifier's run fit the n-gram branch, encode token ids, log the data,
fit, choose the blend, evaluate, log the model, register. Usage:
`python -m pipelines.sentiment --data-dir PATH [options]`; `--help` lists every option,
grouped by stage.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from optuna.distributions import CategoricalDistribution as OneOf
from optuna.distributions import FloatDistribution, IntDistribution

from features.errors import require_at_least, require_data_dir, require_fraction
from features.imdb import ImdbData
from features.input_pipelines import (
    TrainingBatches,
    bucketed_dataset,
    make_dataset,
)
from features.review_data import (
    IMDB_ENV,
    ReviewData,
    ReviewSourceConfig,
    read_reviews,
    review_data,
)
from features.splits import Splits
from features.text import (
    TokenConfig,
    encode_splits,
    token_lengths,
    truncated_share,
    vectorizer_summary,
    vocabulary_text,
)
from models.baseline import TfidfConfig
from models.ngram import (
    FittedBranch,
    NgramConfig,
    blend,
    blended_text_classifier,
    choose_blend_weight,
    fit_ngram_branch,
)
from models.recurrent import RecurrentConfig, build_text_classifier, text_to_probabilities
from models.word_vectors import load_encoder_weights
from pipelines import cli, distribute, evaluation, lifecycle, pretraining, sweep, tracking, training
from pipelines.config import TaskConfig
from pipelines.errors import ConfigError
from pipelines.interrupts import at_batch_end, exit_process
from pipelines.lifecycle import RunConfig
from pipelines.pretraining import PretrainConfig, Pretrained
from pipelines.review_inputs import read_labelled_reviews, read_texts
from pipelines.text_baseline import require_fittable, run_baseline
from pipelines.text_baseline import search_space as baseline_search_space
from pipelines.training import OptimConfig

PIPELINE = "sentiment"
DATASET = "aclImdb"
MODELS = ("recurrent", "tfidf-logreg")


@dataclass(frozen=True)
class TextModelConfig:
    """Model: the recurrent classifier's token embedding, or the TF-IDF baseline."""

    model: str = field(default="recurrent", metadata={
        "help": "bidirectional recurrent network, or the TF-IDF + logistic-regression baseline",
        "choices": MODELS})
    embedding_dim: int = field(default=128, metadata={"help": "token embedding width"})
    embedding_dropout: float = field(default=0.2, metadata={
        "help": "dropout of whole embedding channels in training"})

    def __post_init__(self):
        require_at_least(self, {"embedding_dim": 1})
        require_fraction(self, ["embedding_dropout"])


@dataclass(frozen=True)
class SentimentConfig(TaskConfig):
    """Every option of a sentiment run, by stage; logged whole (flat) as the run's parameters.

    The defaults are tuned for IMDB on two CPU cores (docs/results.md): word vectors pretrained
    on the training and unlabelled reviews, one Bi-GRU-128 layer over up to 800 ids per review
    in length-bucketed batches of 128, three epochs, blended with the n-gram branch.
    """

    source: ReviewSourceConfig = ReviewSourceConfig()
    tokens: TokenConfig = TokenConfig()
    pretrain: PretrainConfig = PretrainConfig()
    model: TextModelConfig = TextModelConfig()
    recurrent: RecurrentConfig = RecurrentConfig(units=128, depth=1, pooling="mean-max",
                                                 dense_units=0)
    ngram: NgramConfig = NgramConfig()
    baseline: TfidfConfig = TfidfConfig()
    optim: OptimConfig = OptimConfig(epochs=3, example_budget=0, batch_size=128,
                                     learning_rate=3e-3, weight_decay=1e-2, label_smoothing=0.0,
                                     warmup_epochs=0, patience=3, average_from=0.0)
    run: RunConfig = RunConfig(experiment="imdb-sentiment", registered_model="imdb-sentiment")

    def unused_options(self) -> dict[str, list[str]]:
        """The options the chosen model, pretraining or source leaves without effect, by what
        leaves them so."""
        source = self.source.source
        unused = {f"--source {source}": ["data_dir"] if source == "tfds" else ["tfds_data_dir"]}
        if self.model.model == "tfidf-logreg":  # it reads the reviews and --seed only
            unused["--model tfidf-logreg"] = [name for name in self.stage_options(
                "tokens", "pretrain", "model", "recurrent", "ngram", "optim")
                if name not in ("model", "seed")]
            return unused
        unused["--model recurrent"] = self.stage_options("baseline")
        if not self.ngram.ngram_features:
            unused["--ngram-features 0"] = ["ngram_order", "ngram_c"]
        if not pretrains(self):
            unused["--pretrain never"] = [name for name in self.stage_options("pretrain")
                                          if name != "pretrain"]
        return unused


def run(config: SentimentConfig, reviews: ImdbData | None = None) -> dict:
    """Trains, evaluates, tracks and (by the champion rule) registers one sentiment model (or,
    with `--sweep N`, the best of N trials).

    Args:
        config: The run's options.
        reviews: Reviews already read (a slice, say); None reads the configured source.

    Returns:
        Test metrics plus run id, registered version and the champion decision.

    Raises:
        ValueError: An invalid option value or unusable data folder.
        FileNotFoundError: The data folder does not exist.
        DatasetUnavailableError: --source tfds without prepared data, offline.
        SetupError: An unreachable tracking server, a folder that cannot be written, or a run
            that cannot be resumed (all checked before any data is read).
    """
    config = prepare_run(config, reviews)
    if config.run.sweep:  # the reviews are read once, for every trial, before the sweep's run
        # opens, as before a single run's: unusable data leaves no FAILED sweep behind
        if reviews is None:
            reviews = read_reviews(config.source, unlabelled=pretrains(config))
        review_data(reviews)  # raises for reviews that cannot train a model
        return sweep.run_sweep(config, pretraining.once_per_sweep(lambda t: run(t, reviews)),
                               search_space(config.model.model), PIPELINE)
    data, read = read_data(config, reviews)
    if config.model.model == "tfidf-logreg":
        require_fittable(config.baseline, data)
    pretrained = pretrained_encoder(config, data)
    with lifecycle.tracked_run(config, PIPELINE, data.lineage.data_digest) as tracked:
        tracking.log_metrics({"read_seconds": read["read_seconds"]})
        if config.model.model == "tfidf-logreg":
            return tracked.result(
                read | run_baseline(config.baseline, config.optim.seed, data, tracked, DATASET))
        keras.utils.set_random_seed(config.optim.seed)
        branch = fit_branch(config, data.splits)
        vectorizer, ids = encode(config, data.splits, pretrained)
        tracked.log_data(data.splits, data.lineage, DATASET)
        if pretrained is not None:
            tracking.set_tags(pretrained.lineage())

        batches = training_batches(config, ids)
        optim = training.scheduled(config.optim, len(ids.y["train"]))
        tracked.log_batches(batches.metrics | {"scheduled_epochs": optim.epochs})
        fitted = training.fit(lambda: build_model(config, vectorizer.vocabulary_size(),
                                                  len(ids.labels), pretrained),
                              batches, optim, strategy=config.run.strategy,
                              checkpoint_dir=tracked.checkpoint, resuming=tracked.resuming,
                              callbacks=[tracking.EpochMetricsLogger()])

        probabilities, weight, scores = blended_scores(fitted.model, ids, branch)
        fit_metrics = fitted.metrics(len(ids.y["train"])) | scores
        tracking.log_metrics(fit_metrics)
        test = evaluation.log_evaluation(probabilities, ids.y["test"], ids.labels,
                                         fitted.history)
        metrics = (branch.metrics if branch else {}) | test.metrics | fit_metrics
        model_uri = tracked.logged_model() or log_model(
            vectorizer, fitted.model, branch, weight, ids.labels)
        registered = tracked.register(model_uri, metrics, test_digest=data.lineage.test_digest,
                                      data_digest=data.lineage.data_digest)
        return tracked.result(read | metrics | registered
                              | (pretrained.result() if pretrained else {})
                              | {"model_uri": model_uri})


def prepare_run(config: SentimentConfig, reviews: ImdbData | None) -> SentimentConfig:
    """The run's checks before any data work (`lifecycle.prepare_run`, a resumable model, no
    pretraining under multi-worker training, a data folder unless the reviews are given)."""
    if pretrains(config) and config.run.strategy == distribute.MULTI_WORKER:
        raise ConfigError("--strategy multi-worker trains the classifier only, and only the "
                          "chief sees the store its pretrained encoder would be found in: pass "
                          "--pretrain never")
    config = lifecycle.prepare_run(config, PIPELINE)
    if config.run.resume and config.model.model != "recurrent":
        raise ConfigError(f"--resume: {config.model.model} fits in one step, with no epochs to "
                         "continue; start a new run")
    if config.source.source == "folder" and reviews is None:
        require_data_dir(config.source.data_dir, IMDB_ENV, "IMDB")
    return config


def pretrains(config: SentimentConfig) -> bool:
    """Whether the run's recurrent model starts from a pretrained encoder."""
    return config.model.model == "recurrent" and config.pretrain.pretrain != "never"


def read_data(config: SentimentConfig, reviews: ImdbData | None) -> tuple[ReviewData, dict]:
    """The reviews (read from the configured source unless given; the unlabelled ones too when
    the encoder is pretrained) and what reading them took (`read_seconds`) and skipped."""
    started = time.perf_counter()
    if reviews is None:
        reviews = read_reviews(config.source, unlabelled=pretrains(config))
    data = review_data(reviews)
    return data, {"read_seconds": time.perf_counter() - started,
                  "skipped_examples": len(data.lineage.skipped), "model": config.model.model}


def pretrained_encoder(config: SentimentConfig, data: ReviewData) -> Pretrained | None:
    """The pretrained encoder the classifier starts from (`pipelines.pretraining`); None with
    `--pretrain never` or the TF-IDF baseline."""
    if not pretrains(config):
        return None
    return pretraining.pretrained_encoder(
        config.pretrain, data.corpus, config.run, vocabulary_size=config.tokens.vocabulary_size,
        embedding_dim=config.model.embedding_dim)


def fit_branch(config: SentimentConfig, texts: Splits) -> FittedBranch | None:
    """The bag-of-n-grams branch fitted on the training texts (its metrics logged); None when
    `--ngram-features 0` turns it off."""
    if not config.ngram.ngram_features:
        return None
    branch = fit_ngram_branch(texts, config.ngram)
    tracking.log_metrics(branch.metrics)
    return branch


def encode(config: SentimentConfig, texts: Splits, pretrained: Pretrained | None
           ) -> tuple[keras.layers.Layer, Splits]:
    """Encodes every split as token ids, with the pretrained encoder's vocabulary or one fitted
    on train only, and logs the vocabulary, the encoding and its statistics."""
    started = time.perf_counter()
    vectorizer, ids = encode_splits(
        texts, config.tokens,
        pretrained.vectorizer(config.tokens.sequence_length) if pretrained else None)
    tracking.log_text(vocabulary_text(vectorizer), "vocabulary.txt")
    tracking.log_dict(vectorizer_summary(vectorizer), "feature_config.json")
    tracking.log_metrics({
        "vocabulary_size": vectorizer.vocabulary_size(),
        "train_tokens_mean": float(token_lengths(ids.x["train"]).mean()),
        "train_truncated_share": truncated_share(texts.x["train"], ids.x["train"]),
        "feature_seconds": time.perf_counter() - started,
    })
    return vectorizer, ids


def training_batches(config: SentimentConfig, ids: Splits) -> TrainingBatches:
    """Training and validation batches at the global batch size: length-bucketed when
    configured."""
    strategy, classes = config.run.strategy, len(ids.labels)
    batch = distribute.global_batch_size(config.optim.batch_size, strategy)

    def batches(split: str, seed: int | None):  # a tf.data.Dataset; only training shuffles
        x, y = ids.x[split], ids.y[split]
        if config.tokens.bucketing:
            return bucketed_dataset(x, token_lengths(x), y, batch, classes,
                                    buckets=config.tokens.buckets, shuffle_seed=seed)
        return make_dataset(x, y, batch, classes, shuffle_seed=seed)
    train, validation = batches("train", config.optim.seed), batches("validation", None)
    # the epoch's batches as the dataset counts them: with buckets, each bucket's last batch
    # may be partial, so up to `buckets` more than examples / batch size
    return TrainingBatches(train, validation, int(train.cardinality()),
                           distribute.layout(config.optim.batch_size, strategy))


def build_model(config: SentimentConfig, vocabulary_size: int, num_classes: int,
                pretrained: Pretrained | None = None) -> keras.Model:
    """The configured (uncompiled) recurrent classifier over token ids, its encoder's weights
    the pretrained encoder's when given."""
    model = build_text_classifier(
        vocabulary_size, num_classes, config.recurrent, embedding_dim=config.model.embedding_dim,
        embedding_dropout=config.model.embedding_dropout,
        sequence_length=None if config.tokens.bucketing else config.tokens.sequence_length)
    if pretrained is not None:
        load_encoder_weights(model, pretrained.encoder)
    return model


def blended_scores(model: keras.Model, ids: Splits, branch: FittedBranch | None
                   ) -> tuple[np.ndarray, float | None, dict[str, float]]:
    """The test probabilities of the model to register: the recurrent model's alone, or
    blended with the n-gram branch's at the weight whose validation log-loss is lowest.

    Returns:
        (test probabilities, the blend weight or None, the blend's metrics: each branch's
        accuracy alone, `blend_weight` and the blend's `model_val_accuracy`).
    """
    recurrent = {split: at_batch_end(model.predict, make_dataset(ids.x[split], ids.y[split], 256,
                                                                 len(ids.labels)), verbose=0)
                 for split in (("validation", "test") if branch else ("test",))}
    if branch is None:
        return recurrent["test"], None, {}
    metrics = {f"recurrent_{split}_accuracy": float((scores.argmax(1) == ids.y[split]).mean())
               for split, scores in recurrent.items()}
    weight = choose_blend_weight(branch.logits["validation"], recurrent["validation"],
                                 ids.y["validation"])
    mixed = {split: blend(branch.logits[split], scores, weight)
             for split, scores in recurrent.items()}
    return mixed["test"], weight, metrics | {
        "blend_weight": weight, "recurrent_blend_weight": 1.0 - weight,
        "model_val_accuracy": float((mixed["validation"].argmax(1) == ids.y["validation"]).mean())}


def log_model(vectorizer: keras.layers.Layer, model: keras.Model, branch: FittedBranch | None,
              weight: float | None, labels: tuple[str, ...]) -> str:
    """Logs one Keras model over raw strings (token ids -> the recurrent model, blended with the
    n-gram branch when there is one) as the served model; returns its URI."""
    served = text_to_probabilities(vectorizer, model)
    if branch is not None:
        served = blended_text_classifier(served, branch.model(), weight)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "classifier.keras"
        served.save(path)
        return tracking.log_text_classifier(path, labels)


def search_space(model: str) -> dict:
    """What `--sweep N` searches: ids, shape, regularisation, schedule; the baseline's own."""
    if model == "tfidf-logreg":
        return baseline_search_space()
    return {
        "sequence_length": OneOf([400, 600, 800]),
        "units": IntDistribution(32, 128, step=32),
        "pooling": OneOf(["mean-max", "attention"]),
        "embedding_dropout": FloatDistribution(0.0, 0.4),
        "dropout": FloatDistribution(0.1, 0.5),
        "ngram_features": OneOf([0, 200_000, 500_000]),
        "ngram_c": FloatDistribution(0.03, 1.0, log=True),
        "learning_rate": FloatDistribution(2e-3, 1e-2, log=True),
        "label_smoothing": FloatDistribution(0.0, 0.1),
    }


def summary_lines(result: dict) -> list[str]:
    """The few lines a user reads at the end of a run (the registry lines follow)."""
    return [
        f"model             {result['model']}",
        f"test accuracy     {result['test_accuracy']:.4f}",
        *([f"test ROC-AUC      {result['test_roc_auc']:.4f}"]  # none for a one-class test
          if "test_roc_auc" in result else []),
        *([f"  recurrent alone {result['recurrent_test_accuracy']:.4f}",
           f"  n-grams alone   {result['ngram_test_accuracy']:.4f}",
           f"  blend weights   {result['recurrent_blend_weight']:.2f} recurrent, "
           f"{result['blend_weight']:.2f} n-grams (chosen on validation)"]
          if "blend_weight" in result else []),
        *([f"pretrained        run {result['pretrain_run_id']} ("
           + ("reused" if result["pretrain_reused"] else
              f"pretrained in {result['pretrain_seconds']:.0f} s") + ")"]
          if "pretrain_run_id" in result else []),
        f"skipped reviews   {result['skipped_examples']}" + (
            " (labelled and unlabelled: data/summary.json)" if "pretrain_run_id" in result
            else " (data/summary.json)"),
        f"training          {result['train_seconds']:.1f} s"
        + (f", {result['epochs_trained']} epoch{'s' if result['epochs_trained'] != 1 else ''}"
           if "epochs_trained" in result else ""),
    ]


COMMANDS = cli.TaskCommands(
    pipeline=PIPELINE,
    description="Train a bidirectional LSTM/GRU (or a TF-IDF baseline) sentiment classifier on "
                "IMDB reviews and track it in MLflow.",
    config=SentimentConfig, run=run, summary=summary_lines, dataset=DATASET,
    predict=cli.Command("TEXT [...] [--file F]", "Label reviews with a logged sentiment model "
                        "(default: the champion).", read_texts),
    evaluate=cli.Command("--data-dir DIR", "Evaluate a logged sentiment model on the "
                         "test/{neg,pos} reviews of an aclImdb folder.", read_labelled_reviews),
)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: `predict ...`, `evaluate ...`, or (no command) train with the flags."""
    return cli.main(COMMANDS, argv)


if __name__ == "__main__":
    exit_process(main())
