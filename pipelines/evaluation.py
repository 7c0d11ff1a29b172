"""Scoring a classifier: test metrics, the classification report and plots, logged to the run;
and evaluating a logged model through its served path on labelled raw inputs."""

from __future__ import annotations

import argparse
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    RocCurveDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from features.splits import LabelledInputs, Splits
from pipelines import descriptions, request_bounds, tracking
from pipelines.errors import DataError
from pipelines.request_bounds import RequestTooLarge


@dataclass
class Evaluation:
    """Test-split results of a classifier."""

    metrics: dict[str, float]
    report: dict
    report_text: str
    confusion: np.ndarray
    probabilities: np.ndarray


def metric_names(labels: Sequence[str]) -> dict[str, str]:
    """A name MLflow accepts in a metric name for each class label: ASCII letters, digits and
    `_.-` (accents dropped, anything else `_`), made unique with a `_<n>` suffix; a label with
    nothing usable is `class<i>`. The run's `label_map.json` records the mapping."""
    names: dict[str, str] = {}
    for index, label in enumerate(labels):
        ascii_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
        name = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_.-]", "_", ascii_label)).strip("_")
        name = name if name.strip(".") else f"class{index}"
        unique, suffix = name, 2
        while unique in names.values():
            unique, suffix = f"{name}_{suffix}", suffix + 1
        names[label] = unique
    return names


def evaluate_probabilities(
    probabilities: np.ndarray, y: np.ndarray, labels: tuple[str, ...]
) -> Evaluation:
    """Accuracy, macro-F1, per-class precision/recall (named by `metric_names`), the confusion
    matrix and, for two classes, ROC-AUC of the positive (second) class, from predicted class
    probabilities."""
    probabilities = np.asarray(probabilities)
    predicted = probabilities.argmax(axis=1)
    indices = list(range(len(labels)))
    report = classification_report(
        y, predicted, labels=indices, target_names=labels, output_dict=True, zero_division=0
    )
    metrics = {
        "test_accuracy": float(accuracy_score(y, predicted)),
        "test_macro_f1": float(f1_score(y, predicted, labels=indices, average="macro",
                                        zero_division=0)),
    }
    if len(labels) == 2 and len(np.unique(y)) == 2:
        metrics["test_roc_auc"] = float(roc_auc_score(y, probabilities[:, 1]))
    for label, name in metric_names(labels).items():
        metrics[f"test_precision_{name}"] = float(report[label]["precision"])
        metrics[f"test_recall_{name}"] = float(report[label]["recall"])
    text = classification_report(
        y, predicted, labels=indices, target_names=labels, digits=3, zero_division=0
    )
    confusion = confusion_matrix(y, predicted, labels=indices)
    return Evaluation(metrics, report, text, confusion, probabilities)


def confusion_matrix_figure(confusion: np.ndarray, labels: tuple[str, ...]) -> Figure:
    """A labelled confusion-matrix plot (rows: true class, columns: predicted)."""
    size = max(5.0, 0.55 * len(labels) + 2)
    figure = Figure(figsize=(size, size), layout="constrained")
    axes = figure.subplots()
    ConfusionMatrixDisplay(confusion, display_labels=labels).plot(
        ax=axes, colorbar=False, xticks_rotation=60, values_format="d"
    )
    axes.set_title("Test confusion matrix")
    return figure


def roc_curve_figure(probabilities: np.ndarray, y: np.ndarray, labels: tuple[str, ...]
                     ) -> Figure:
    """ROC curve of the positive (second) class of a binary classifier, with its AUC."""
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    RocCurveDisplay.from_predictions(y, np.asarray(probabilities)[:, 1], pos_label=1,
                                     name=f"{labels[1]} vs {labels[0]}", ax=axes,
                                     plot_chance_level=True)
    # scikit-learn's axis labels name the positive class by its index ("Positive label: 1")
    axes.set_xlabel(f"False positive rate (positive: {labels[1]})")
    axes.set_ylabel(f"True positive rate (positive: {labels[1]})")
    axes.set_title("Test ROC curve")
    return figure


def training_curves_figure(history: dict[str, list[float]]) -> Figure:
    """Loss and accuracy per epoch for the training and validation splits."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    epochs = range(1, len(history["loss"]) + 1)
    for axes, key in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(epochs, history[key], label="train")
        if f"val_{key}" in history:
            axes.plot(epochs, history[f"val_{key}"], label="validation")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.25
        axes.set_ylabel(key)
        axes.legend()
        axes.grid(alpha=0.3)
    return figure


def log_evaluation(probabilities: np.ndarray, y: np.ndarray, labels: tuple[str, ...],
                   history: dict[str, list[float]] | None = None) -> Evaluation:
    """Scores test-split probabilities and logs the metrics, report and plots.

    Plots: the confusion matrix, the ROC curve for two classes when both are present (as for
    the ROC AUC), and the training curves when there is a Keras history.
    """
    evaluation = evaluate_probabilities(probabilities, y, labels)
    tracking.log_metrics(evaluation.metrics)
    tracking.log_figure(confusion_matrix_figure(evaluation.confusion, labels),
                        "plots/confusion_matrix.png")
    if "test_roc_auc" in evaluation.metrics:
        tracking.log_figure(roc_curve_figure(probabilities, y, labels), "plots/roc_curve.png")
    if history:
        tracking.log_figure(training_curves_figure(history), "plots/training_curves.png")
    tracking.log_text(evaluation.report_text, "classification_report.txt")
    tracking.log_dict(evaluation.report, "classification_report.json")
    return evaluation


EVALUATE_CHUNK = 256
EVALUATE_CHUNK_BYTES = 16 * 2**20  # under the served models' bounds on one request


def evaluate_served(args: argparse.Namespace, labelled: LabelledInputs, *, pipeline: str,
                    dataset_name: str) -> dict:
    """Evaluates a logged model on labelled raw inputs through its served (pyfunc) path and
    records an evaluation run linked to the model (and its registered version).

    Args:
        args: The `evaluate` command's options: model_uri (as given, which names the run
            and its description), evaluated_uri (the version it names, pinned by
            `tracking.evaluated_model`: what is loaded and tagged), tracking_uri, store_dir,
            experiment and run_name (None: `descriptions.evaluation_run_name`).
        labelled: The inputs, their true labels, names, digest and source.
        pipeline: Pipeline name for the run's tags.
        dataset_name: Dataset name shown in the UI.

    Returns:
        Metrics, labels, confusion matrix, failed inputs, run id and evaluated version.

    Raises:
        ValueError: A true label is not one of the model's classes, or no input can be
            evaluated (DataError; no run is opened).
    """
    if not len(labelled.inputs):
        raise DataError(f"no input of {labelled.source} could be evaluated: the reader left "
                        "none (every one was skipped, as listed above)")
    model = tracking.load_served_model(args.evaluated_uri, args.tracking_uri, args.store_dir,
                                       sends=list(labelled.inputs.columns))
    labels = tracking.model_labels(args.evaluated_uri)
    columns = [f"probability_{label}" for label in labels]
    unknown = sorted(set(labelled.truth) - set(labels))
    if unknown:
        raise DataError(f"labels {unknown} of {labelled.source} are not classes of the model "
                         f"({', '.join(labels)})")
    evaluated = tracking.model_version_of(args.evaluated_uri)
    name = args.run_name or descriptions.evaluation_run_name(args.model_uri, evaluated)
    answer = predict_in_groups(model, labelled.inputs, labelled.failed)
    usable = answer["error"].isna().to_numpy()
    failed = [(labelled.names[i], answer.loc[i, "error"]) for i in np.flatnonzero(~usable)]
    if not usable.any():
        examples = "; ".join(f"{path}: {error}" for path, error in failed[:3])
        raise DataError(f"no input of {labelled.source} could be evaluated: all {len(failed)} "
                        f"failed, e.g. {examples}")
    with tracking.open_run(args.experiment, tracking_uri=args.tracking_uri,
                           store_dir=args.store_dir, run_name=name,
                           tags={"pipeline": pipeline, "run_type": "evaluation"}) as run_id:
        y = np.asarray([labels.index(label) for label in labelled.truth], np.int32)[usable]
        tracking.log_dataset(
            dataset_name, labelled.source, {"test": labelled.digest},
            Splits(labels, {}, {"test": y}).split_tags(),
            {"source": labelled.source, "model_uri": args.model_uri,
             "failed_inputs": [{"path": p, "error": e} for p, e in failed],
             "skipped_inputs": [{"path": p, "reason": r} for p, r in labelled.skipped]})
        probabilities = answer.loc[usable, columns].to_numpy(np.float64)
        evaluation = log_evaluation(probabilities, y, labels)
        tracking.log_metrics({"evaluated_examples": int(usable.sum()),
                              "failed_inputs": len(failed),
                              "skipped_inputs": len(labelled.skipped)})
        version = tracking.link_evaluation(
            args.model_uri, evaluated, run_id,
            f"test_accuracy={evaluation.metrics['test_accuracy']:.4f} on {labelled.source}")
        tracking.set_description(descriptions.evaluation_description(
            name, evaluation.metrics, labelled.source, int(usable.sum()), len(failed),
            len(labelled.skipped), args.model_uri))
    return {"metrics": evaluation.metrics, "labels": labels, "confusion": evaluation.confusion,
            "failed": failed, "run_id": run_id, "version": version}


def predict_in_groups(model, inputs: pd.DataFrame, failed: Mapping[int, str] | None = None
                      ) -> pd.DataFrame:
    """Predicts rows in chunks, each chunk holding rows that fill the same columns (a column
    of None in a chunk would fail the model's schema), and returns answers in input order.

    The rows in `failed` (inputs that could not be read) are answered with their reason, as
    is a row over the request bounds on its own (`request_chunks` gives it a chunk of its
    own): the other rows are answered all the same.
    """
    failed = failed or {}
    groups: dict[tuple, list[int]] = {}
    for index, row in enumerate(inputs.notna().itertuples(index=False)):
        if index not in failed:
            groups.setdefault(tuple(row), []).append(index)
    parts = [pd.DataFrame({"label": None, "error": list(failed.values())},
                          index=pd.Index(list(failed)))] if failed else []
    for key, indices in groups.items():
        columns = [column for column, present in zip(inputs.columns, key, strict=True)
                   if present]
        records = inputs.iloc[indices][columns].to_dict("records")
        for chunk in request_chunks(records):
            rows = pd.DataFrame([records[i] for i in chunk])
            try:
                answer = model.predict(rows)
            except RequestTooLarge as error:
                if len(chunk) > 1:  # request_chunks keeps chunks of several rows in bounds
                    raise
                answer = pd.DataFrame({"label": [None], "error": [str(error)]})
            parts.append(answer.set_index(pd.Index([indices[i] for i in chunk])))
    return pd.concat(parts).sort_index()


def request_chunks(records: list[dict]) -> list[list[int]]:
    """Positions of `records` in consecutive chunks of at most EVALUATE_CHUNK rows and
    EVALUATE_CHUNK_BYTES of payload (counted as the served models count it,
    `request_bounds.row_bytes`), inside the bounds they set on one request."""
    chunks: list[list[int]] = [[]]
    size = 0
    for position, record in enumerate(records):
        row = request_bounds.row_bytes(record)
        if chunks[-1] and (len(chunks[-1]) == EVALUATE_CHUNK
                           or size + row > EVALUATE_CHUNK_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(position)
        size += row
    return [chunk for chunk in chunks if chunk]
