"""The sentiment task's reference run (`--model tfidf-logreg`): TF-IDF + logistic regression
(`models.baseline`) fitted on the same splits as the recurrent model, evaluated and logged like
it, and registered only when it would become champion."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import joblib
from optuna.distributions import CategoricalDistribution as OneOf
from optuna.distributions import FloatDistribution, IntDistribution

from features.errors import ConfigError
from features.review_data import ReviewData
from models.baseline import TfidfConfig, build_tfidf_logreg
from pipelines import evaluation, tracking
from pipelines.lifecycle import TrackedRun


def search_space() -> dict:
    """What `--sweep N` searches with `--model tfidf-logreg`: its n-grams and regularisation."""
    return {
        "max_ngram": OneOf([1, 2, 3]),
        "min_df": IntDistribution(1, 5),
        "logreg_c": FloatDistribution(0.3, 30.0, log=True),
    }


def require_fittable(config: TfidfConfig, data: ReviewData) -> None:
    """Raises ConfigError, before the run opens, where `--min-df` asks for more training
    reviews than there are (scikit-learn would stop the fit with a traceback)."""
    reviews = len(data.splits.y["train"])
    if config.min_df > reviews:
        raise ConfigError(f"--min-df {config.min_df}: a word n-gram must be in that many "
                          f"training reviews, and the training split holds {reviews}")


def run_baseline(config: TfidfConfig, seed: int, data: ReviewData, tracked: TrackedRun,
                 dataset: str) -> dict:
    """Fits, evaluates, logs and (only as champion) registers the baseline in the open run.

    Returns:
        Test and fit metrics, the model URI and the registration decision.
    """
    tracked.log_data(data.splits, data.lineage, dataset)
    splits = data.splits
    classifier = build_tfidf_logreg(config, seed=seed)
    started = time.perf_counter()
    try:
        classifier.fit(splits.x["train"], splits.y["train"])
    except ValueError as error:
        if "no terms remain" not in str(error):
            raise
        raise ConfigError(f"no word n-gram is in --min-df {config.min_df} of the "
                          f"{len(splits.y['train'])} training reviews: lower --min-df"
                          ) from error  # a ConfigError: in a sweep, it fails its trial only
    train_seconds = time.perf_counter() - started
    validation_accuracy = float(
        (classifier.predict(splits.x["validation"]) == splits.y["validation"]).mean())
    test = evaluation.log_evaluation(classifier.predict_proba(splits.x["test"]),
                                     splits.y["test"], splits.labels)
    fit_metrics = {"train_seconds": train_seconds, "val_accuracy": validation_accuracy,
                   "model_val_accuracy": validation_accuracy,
                   "tfidf_features": len(classifier.named_steps["tfidf"].vocabulary_)}
    tracking.log_metrics(fit_metrics)
    metrics = test.metrics | fit_metrics
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "classifier.joblib"
        joblib.dump(classifier, path)
        model_uri = tracking.log_text_classifier(path, splits.labels)
    return metrics | {"model_uri": model_uri} | tracked.register(
        model_uri, metrics, test_digest=data.lineage.test_digest,
        data_digest=data.lineage.data_digest)
