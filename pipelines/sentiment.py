"""IMDB sentiment: reviews -> token ids -> Bi-LSTM/GRU (or a TF-IDF baseline) -> MLflow.

Usage: `python -m pipelines.sentiment --data-dir PATH [options]`; `--help` lists every option.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.imdb import ImdbData, load_imdb
from features.tfds_source import DatasetUnavailableError
from pipelines.config import TrainingConfig, config_parser, option, validate_choices
from pipelines.runner import PreparedData, commands_epilog

log = logging.getLogger("pipelines.sentiment")

SOURCES = ("folder", "tfds")
MODELS = ("recurrent", "tfidf-logreg")


@dataclass(frozen=True)
class SentimentConfig(TrainingConfig):
    """Every option of a sentiment run; logged whole as the run's parameters.

    The training defaults are re-tuned for IMDB on two CPU cores (see the README).
    """

    depth: int = option(1, "number of bidirectional recurrent layers")
    epochs: int = option(2, "maximum number of epochs (the cosine schedule spans them all)")
    batch_size: int = option(512, "examples per training step (large batches: fewer, longer "
                             "recurrent steps, 1.4x the reviews/s of 64 on 2 cores)")
    learning_rate: float = option(6e-3, "peak Adam learning rate (cosine decay after warm-up)")
    weight_decay: float = option(1e-2, "AdamW decoupled weight decay (0: plain Adam)")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy loss")
    warmup_epochs: int = option(0, "epochs of linear learning-rate warm-up")
    patience: int = option(1, "early-stopping patience in epochs (validation loss)")
    data_dir: str | None = option(None, "aclImdb folder in the official layout",
                                  env="IMDB_DATA_DIR")
    source: str = option("folder", "where reviews come from: a folder (--data-dir) or "
                         "tensorflow-datasets' imdb_reviews", SOURCES)
    tfds_data_dir: str | None = option(None, "tensorflow-datasets data dir for --source tfds")
    model: str = option("recurrent", "bidirectional recurrent network, or the TF-IDF + "
                        "logistic-regression baseline", MODELS)
    validation_pct: float = option(10.0, "share of train held out for validation (stratified)")
    data_seed: int = option(0, "seed of the validation carve-out; kept apart from --seed so "
                            "runs with other seeds share their splits")
    vocabulary_size: int = option(20000, "most tokens kept, padding and OOV ids included")
    sequence_length: int = option(400, "token ids per review after truncation/right padding")
    embedding_dim: int = option(64, "token embedding width")
    embedding_dropout: float = option(0.2, "dropout of whole embedding channels in training")
    dense_units: int = option(0, "hidden units of the dense head (0: none)")
    ngram_features: int = option(500_000, "most frequent word n-grams in the bag-of-n-grams "
                                 "branch blended with the recurrent model (0: no branch)")
    ngram_order: int = option(3, "longest n-gram of that branch (words)")
    ngram_c: float = option(0.1, "inverse L2 regularisation of the branch's naive-Bayes-"
                            "weighted logistic regression (NBSVM-style)")
    bucketing: bool = option(True, "batch reviews of similar length together, padding each "
                             "batch only to its bucket's length")
    buckets: int = option(8, "length buckets for --bucketing")
    max_ngram: int = option(2, "tfidf-logreg: longest word n-gram")
    min_df: int = option(2, "tfidf-logreg: drop n-grams in fewer training reviews")
    logreg_c: float = option(10.0, "tfidf-logreg: inverse L2 regularisation strength")
    experiment: str = option("imdb-sentiment", "MLflow experiment")
    registered_model: str = option("imdb-sentiment", "MLflow registered model name")


def read_reviews(config: SentimentConfig) -> ImdbData:
    """Reads the reviews from the configured source, validation carved out of train."""
    if config.source == "tfds":
        from features.tfds_imdb import read_tfds_imdb

        return read_tfds_imdb(config.tfds_data_dir, validation_pct=config.validation_pct,
                              seed=config.data_seed)
    if not config.data_dir:
        raise ValueError("no data folder: pass --data-dir or set IMDB_DATA_DIR")
    return load_imdb(config.data_dir, validation_pct=config.validation_pct,
                     seed=config.data_seed)


def prepare_data(imdb: ImdbData) -> PreparedData:
    """Texts and label ids per split (texts are turned into ids by the chosen model)."""
    index = {label: i for i, label in enumerate(imdb.labels)}
    data = PreparedData(imdb.labels, {}, {}, {}, imdb.source, list(imdb.skipped))
    for split, reviews in imdb.splits.items():
        data.x[split] = [review.text for review in reviews]
        data.y[split] = np.asarray([index[review.label] for review in reviews], np.int32)
        data.digests[split] = imdb.digest(split)
    data.summary = {
        "source": imdb.source,
        "split_method": imdb.split_method,
        "class_counts": imdb.class_counts(),
        "skipped": [{"path": path, "reason": reason} for path, reason in imdb.skipped],
        "undecodable_bytes_replaced": imdb.replaced,
    }
    return data


def encode_splits(config: SentimentConfig, data: PreparedData):
    """Fits the vocabulary on train only and replaces every split's texts by token ids.

    Returns:
        The fitted TextVectorization layer.
    """
    from features.text import encode_reviews, fit_vectorizer, token_lengths, vocabulary_text
    from pipelines import tracking

    started = time.perf_counter()
    vectorizer = fit_vectorizer(data.x["train"], config.vocabulary_size, config.sequence_length)
    for split in data.x:
        data.x[split] = encode_reviews(vectorizer, data.x[split])
    lengths = token_lengths(data.x["train"])
    vocabulary = vectorizer.get_vocabulary()
    tracking.log_text(vocabulary_text(vectorizer), "vocabulary.txt")
    tracking.log_dict({
        "vocabulary_size": len(vocabulary), "sequence_length": config.sequence_length,
        "padding_id": 0, "oov_id": 1, "oov_token": vocabulary[1], "padding": "post",
        "standardize": "features.text.standardize_review",
    }, "feature_config.json")
    tracking.log_metrics({
        "vocabulary_size": len(vocabulary),
        "train_tokens_mean": float(lengths.mean()),
        "train_truncated_share": float((lengths >= config.sequence_length).mean()),
        "feature_seconds": time.perf_counter() - started,
    })
    return vectorizer


def training_datasets(config: SentimentConfig, data: PreparedData):
    """(train, validation) tf.data batches: length-bucketed when configured."""
    from features.text import token_lengths
    from pipelines import distribute, training

    if not config.bucketing:
        return None, None
    return tuple(
        training.bucketed_dataset(
            data.x[split], token_lengths(data.x[split]), data.y[split],
            distribute.global_batch_size(config.batch_size, config.strategy),
            len(data.labels), buckets=config.buckets, shuffle=split == "train",
            seed=config.seed)
        for split in ("train", "validation"))


def build_model(config: SentimentConfig, vocabulary_size: int, num_classes: int):
    """The configured (uncompiled) recurrent classifier over token ids."""
    from models.recurrent import build_text_classifier

    return build_text_classifier(
        vocabulary_size, num_classes,
        sequence_length=None if config.bucketing else config.sequence_length,
        embedding_dim=config.embedding_dim, cell=config.cell, units=config.units,
        depth=config.depth, dropout=config.dropout,
        embedding_dropout=config.embedding_dropout, pooling=config.pooling,
        dense_units=config.dense_units)


@dataclass
class NgramBranch:
    """The fitted bag-of-n-grams branch: vectorizer, folded weights, and its logits per split."""

    vectorizer: object
    coefficients: np.ndarray
    intercept: float
    logits: dict[str, np.ndarray]
    metrics: dict[str, float]


def fit_ngram_branch(config: SentimentConfig, data: PreparedData) -> NgramBranch:
    """Fits the n-gram branch on the training texts: binary 1..ngram_order-gram bags, scaled by
    the naive-Bayes log-count ratio, then an L2 logistic regression (liblinear; NBSVM's NB-LR
    variant). The scaling is folded into the coefficients, so the branch is one linear layer.

    Raises:
        ValueError: The task is not binary.
    """
    from sklearn.linear_model import LogisticRegression

    from features.text import fit_ngram_vectorizer, log_count_ratio, ngram_matrix
    from pipelines import tracking

    if len(data.labels) != 2:
        raise ValueError(f"the n-gram branch needs two classes, got {len(data.labels)}; "
                         "pass --ngram-features 0")
    started = time.perf_counter()
    vectorizer = fit_ngram_vectorizer(data.x["train"], config.ngram_features, config.ngram_order)
    bags = {split: ngram_matrix(vectorizer, texts) for split, texts in data.x.items()}
    ratio = log_count_ratio(bags["train"], data.y["train"])
    classifier = LogisticRegression(C=config.ngram_c, solver="liblinear", max_iter=1000)
    classifier.fit(bags["train"].multiply(ratio[None, :]).tocsr(), data.y["train"])
    coefficients = (ratio * classifier.coef_[0]).astype(np.float32)
    intercept = float(classifier.intercept_[0])
    logits = {split: bag @ coefficients + intercept for split, bag in bags.items()}
    metrics = {
        "ngram_features": vectorizer.vocabulary_size(),
        "ngram_seconds": time.perf_counter() - started,
        **{f"ngram_{split}_accuracy": float(((logits[split] > 0) == data.y[split]).mean())
           for split in ("validation", "test")},
    }
    tracking.log_metrics(metrics)
    return NgramBranch(vectorizer, coefficients, intercept, logits, metrics)


def blend(logits: np.ndarray, recurrent: np.ndarray, weight: float) -> np.ndarray:
    """The blended model's probabilities (models.ngram.blend_probabilities) as NumPy."""
    from models.ngram import blend_probabilities

    return np.asarray(blend_probabilities(logits[:, None], recurrent, weight))


def blend_weight(logits: np.ndarray, recurrent: np.ndarray, y: np.ndarray) -> float:
    """The weight of the n-gram branch (0 to 1 in steps of 0.05) whose blend has the lowest
    validation log-loss."""
    from sklearn.metrics import log_loss

    weights = np.linspace(0, 1, 21)
    losses = [log_loss(y, blend(logits, recurrent, w), labels=[0, 1]) for w in weights]
    return float(weights[int(np.argmin(losses))])


def blended_predictions(data: PreparedData, branch: NgramBranch, chosen: dict):
    """`fit_and_evaluate`'s `predict`: the fitted recurrent model's probabilities blended with
    the n-gram branch's, the weight chosen on validation (stored in `chosen["weight"]`)."""
    from pipelines import training

    def predict(model) -> tuple[np.ndarray, dict]:
        recurrent, metrics = {}, {}
        for split in ("validation", "test"):
            batches = training.make_dataset(data.x[split], data.y[split], 256, 2, shuffle=False)
            recurrent[split] = model.predict(batches, verbose=0)
            metrics[f"recurrent_{split}_accuracy"] = float(
                (recurrent[split].argmax(1) == data.y[split]).mean())
        weight = blend_weight(branch.logits["validation"], recurrent["validation"],
                              data.y["validation"])
        chosen["weight"] = weight
        mixed = {split: blend(branch.logits[split], recurrent[split], weight)
                 for split in recurrent}
        metrics |= {"blend_weight": weight, "model_val_accuracy": float(
            (mixed["validation"].argmax(1) == data.y["validation"]).mean())}
        return mixed["test"], metrics

    return predict


def train_recurrent(config: SentimentConfig, data: PreparedData) -> dict:
    """Token ids -> bidirectional RNN, blended with the bag-of-n-grams branch unless it is off;
    logs one model that takes raw review strings."""
    import keras

    from models.ngram import blended_text_classifier, ngram_branch
    from models.recurrent import text_to_probabilities
    from pipelines import runner, tracking

    keras.utils.set_random_seed(config.seed)
    branch = fit_ngram_branch(config, data) if config.ngram_features else None
    vectorizer = encode_splits(config, data)
    runner.log_data(config, data, "aclImdb")
    train, validation = training_datasets(config, data)
    chosen: dict = {}
    predict = blended_predictions(data, branch, chosen) if branch else None
    trained = runner.fit_and_evaluate(
        config, lambda: build_model(config, vectorizer.vocabulary_size(), len(data.labels)),
        data, train, validation, predict=predict)
    served = text_to_probabilities(vectorizer, trained.model)
    if branch:
        served = blended_text_classifier(
            served, ngram_branch(branch.vectorizer, branch.coefficients, branch.intercept),
            chosen["weight"])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "classifier.keras"
        served.save(path)
        model_uri = tracking.log_text_classifier(path, data.labels)
    return dict(branch.metrics if branch else {}, **trained.metrics,
                model_uri=model_uri) | runner.register(config, model_uri, trained.metrics, data)


def train_baseline(config: SentimentConfig, data: PreparedData) -> dict:
    """TF-IDF + logistic regression on the same splits; registered only if it becomes champion.
    """
    import joblib

    from models.baseline import build_tfidf_logreg
    from pipelines import runner, tracking

    runner.log_data(config, data, "aclImdb")
    classifier = build_tfidf_logreg(max_ngram=config.max_ngram, min_df=config.min_df,
                                    c=config.logreg_c, seed=config.seed)
    started = time.perf_counter()
    classifier.fit(data.x["train"], data.y["train"])
    train_seconds = time.perf_counter() - started
    validation_accuracy = float(
        (classifier.predict(data.x["validation"]) == data.y["validation"]).mean())
    metrics = runner.log_evaluation(classifier.predict_proba(data.x["test"]), data).metrics | {
        "train_seconds": train_seconds, "val_accuracy": validation_accuracy,
        "model_val_accuracy": validation_accuracy,
        "tfidf_features": len(classifier.named_steps["tfidf"].vocabulary_),
    }
    tracking.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "classifier.joblib"
        joblib.dump(classifier, path)
        model_uri = tracking.log_text_classifier(path, data.labels)
    return dict(metrics, model_uri=model_uri) | runner.register(
        config, model_uri, metrics, data, only_if_champion=True)


def run(config: SentimentConfig, reviews: ImdbData | None = None) -> dict:
    """Trains, evaluates, tracks and (by the champion rule) registers one sentiment model.

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
    from pipelines import runner, tracking

    config = runner.prepare_run(config, "sentiment")
    validate_choices(config)
    if config.resume and config.model != "recurrent":
        raise ValueError(f"--resume: {config.model} fits in one step, with no epochs to "
                         "continue; start a new run")
    if config.source == "folder" and reviews is None:
        runner.require_data_dir(config.data_dir, "IMDB_DATA_DIR", "IMDB")
    if config.sweep:
        from pipelines.sweep import run_sweep

        return run_sweep(config, lambda trial: run(trial, reviews), search_space(),
                         "sentiment")

    def work(run_id: str) -> dict:
        started = time.perf_counter()
        imdb = read_reviews(config) if reviews is None else reviews
        data = prepare_data(imdb)
        for path, reason in imdb.skipped:
            log.warning("skipped %s: %s", path, reason)
        result = {"read_seconds": time.perf_counter() - started,
                  "skipped_examples": len(data.skipped), "model": config.model}
        tracking.log_metrics({"read_seconds": result["read_seconds"]})
        if config.model == "tfidf-logreg":
            return result | train_baseline(config, data)
        return result | train_recurrent(config, data)

    return runner.tracked_pipeline(config, "sentiment", work)


def search_space() -> dict:
    """What `--sweep N` searches: sequence length, model shape, regularisation, schedule."""
    from optuna.distributions import CategoricalDistribution as OneOf
    from optuna.distributions import FloatDistribution, IntDistribution

    return {
        "sequence_length": OneOf([300, 400, 600]),
        "units": IntDistribution(32, 128, step=32),
        "pooling": OneOf(["mean-max", "attention"]),
        "embedding_dropout": FloatDistribution(0.0, 0.4),
        "dropout": FloatDistribution(0.1, 0.5),
        "ngram_features": OneOf([0, 200_000, 500_000]),
        "ngram_c": FloatDistribution(0.03, 1.0, log=True),
        "learning_rate": FloatDistribution(2e-3, 1e-2, log=True),
        "label_smoothing": FloatDistribution(0.0, 0.1),
    }


def format_summary(result: dict) -> str:
    """The few lines a user reads at the end of a run."""
    from pipelines.runner import registry_lines

    lines = [
        f"model             {result['model']}",
        f"test accuracy     {result['test_accuracy']:.4f}",
        f"test ROC-AUC      {result['test_roc_auc']:.4f}",
        *([f"  recurrent alone {result['recurrent_test_accuracy']:.4f}",
           f"  n-grams alone   {result['ngram_test_accuracy']:.4f}",
           f"  blend weight    {result['blend_weight']:.2f} on the n-gram branch (chosen on "
           "validation)"] if "blend_weight" in result else []),
        f"skipped reviews   {result['skipped_examples']}",
        f"training          {result['train_seconds']:.1f} s"
        + (f", {result['epochs_trained']} epochs" if "epochs_trained" in result else ""),
        *registry_lines(result),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    return config_parser(
        "python -m pipelines.sentiment",
        "Train a bidirectional LSTM/GRU (or a TF-IDF baseline) sentiment classifier on IMDB "
        "reviews and track it in MLflow.",
        SentimentConfig,
        epilog=commands_epilog("python -m pipelines.sentiment", "TEXT [...] [--file F]"))


def predict_main(argv: Sequence[str]) -> int:
    """`predict "text" ... [--file reviews.txt]`: label and probability per review."""
    import pandas as pd

    from pipelines import runner, tracking

    parser = runner.model_parser(
        "python -m pipelines.sentiment predict",
        "Label reviews with a logged sentiment model (default: the champion).",
        SentimentConfig.registered_model)
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="reviews to label")
    parser.add_argument("--file", help="a UTF-8 file with one review per line")
    args = parser.parse_args(argv)
    texts = list(args.texts)
    if args.file:
        try:
            lines = Path(args.file).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as error:
            print(f"error: cannot read {args.file} ({error.strerror})", file=sys.stderr)
            return 2
        texts += [line for line in lines if line.strip()]
    if not texts:
        parser.error("give reviews as arguments or --file")
    model = tracking.load_served_model(args.model_uri, args.tracking_uri, args.store_dir)
    answer = model.predict(pd.DataFrame({"text": texts}))
    return runner.print_predictions([runner.short_name(text) for text in texts], answer, {})


def evaluate_main(argv: Sequence[str]) -> int:
    """`evaluate --data-dir DIR [--model-uri URI]`: accuracy, macro-F1, ROC-AUC and confusion
    matrix of a logged model on an aclImdb folder's test split, recorded as an evaluation run
    linked to the model version."""
    import pandas as pd

    from features.imdb import ImdbData, read_split_folder
    from pipelines import runner

    parser = runner.evaluation_parser(
        "python -m pipelines.sentiment evaluate",
        "Evaluate a logged sentiment model on the test/{neg,pos} reviews of an aclImdb folder.",
        SentimentConfig.registered_model, SentimentConfig.experiment)
    args = parser.parse_args(argv)
    runner.require_data_dir(args.data_dir, "IMDB_DATA_DIR", "IMDB")
    reviews, skipped, _ = read_split_folder(Path(args.data_dir), "test")
    for path, reason in skipped:
        print(f"{path}: skipped: {reason}", file=sys.stderr)
    result = runner.evaluate_served(
        args, pipeline="sentiment", inputs=pd.DataFrame({"text": [r.text for r in reviews]}),
        truth=[r.label for r in reviews], names=[r.path for r in reviews],
        source=str(Path(args.data_dir).resolve()),
        digest=ImdbData({"test": reviews}).digest("test"), dataset_name="aclImdb-evaluation")
    return runner.print_evaluation(result)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: `predict ...`, `evaluate ...`, or (no command) train with the flags."""
    from pipelines.runner import run_cli

    return run_cli(build_parser(), SentimentConfig, run, format_summary, argv,
                   (ValueError, FileNotFoundError, DatasetUnavailableError),
                   {"predict": predict_main, "evaluate": evaluate_main})


if __name__ == "__main__":
    from pipelines.interrupts import exit_process

    exit_process(main())
