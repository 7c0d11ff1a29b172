"""Everything MLflow: the store, runs, logging, the model registry and the champion rule.

This is the only module that imports mlflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import HTTPDatasetSource, LocalArtifactDatasetSource
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

from pipelines.errors import SetupError

log = logging.getLogger(__name__)

CHAMPION = "champion"
DB_NAME = "mlflow.db"
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def local_store_uri(store_dir: str | Path) -> str:
    """The SQLite tracking URI of a local store folder (`<store_dir>/mlflow.db`)."""
    return f"sqlite:///{Path(store_dir).resolve() / DB_NAME}"


def connect(tracking_uri: str | None, store_dir: str | Path) -> str:
    """Points MLflow at `tracking_uri`, or at the local SQLite store in `store_dir`.

    MLflow also writes the URI into os.environ (for subprocesses); that is undone, so the
    process environment keeps meaning what the user set.

    Returns:
        The tracking URI in use.
    """
    if tracking_uri:
        uri = tracking_uri
    else:
        Path(store_dir).mkdir(parents=True, exist_ok=True)
        uri = local_store_uri(store_dir)
    saved = {name: os.environ.get(name) for name in URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return uri


def check_tracking(tracking_uri: str | None, timeout: float = 5.0) -> None:
    """Fails fast when an HTTP tracking server does not answer, instead of MLflow's retries
    (minutes) after the data and features were prepared.

    The server must answer its `/health` endpoint (every `mlflow server` does, without
    authentication) within `timeout` seconds.

    Raises:
        SetupError: No connection, no answer in time, or an answer that is not an MLflow
            server's.
    """
    if not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    url = f"{tracking_uri.rstrip('/')}/health"
    try:
        answer = requests.get(url, timeout=timeout)
    except requests.RequestException as error:
        raise SetupError(
            f"cannot reach the MLflow tracking server at {tracking_uri} "
            f"({type(error).__name__}: {error}); start it, or unset MLFLOW_TRACKING_URI / "
            "--tracking-uri to use the local store") from error
    if not answer.ok:
        raise SetupError(f"{tracking_uri} is not an MLflow tracking server: {url} answered "
                         f"HTTP {answer.status_code}; check MLFLOW_TRACKING_URI / --tracking-uri")


def interrupted_run(run_id: str, tracking_uri: str | None, store_dir: str | Path):
    """The run `--resume` continues: its logged parameters and tags.

    Returns:
        (params, tags) of the run.

    Raises:
        SetupError: No such run, or it is still RUNNING or already FINISHED.
    """
    connect(tracking_uri, store_dir)
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as error:
        raise SetupError(f"--resume {run_id}: no such run in {tracking_uri or store_dir} "
                         f"({error.message})") from error
    if run.info.status not in ("KILLED", "FAILED"):
        raise SetupError(f"--resume {run_id}: the run is {run.info.status}; only KILLED or "
                         "FAILED runs can be resumed")
    return dict(run.data.params), dict(run.data.tags)


def ensure_experiment(name: str, store_dir: str | Path, local: bool) -> str:
    """Returns the experiment id, creating the experiment (artifacts under the store) if new."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (Path(store_dir).resolve() / "artifacts").as_uri() if local else None
    return mlflow.create_experiment(name, artifact_location=location)


@contextlib.contextmanager
def tracked_run(
    experiment: str,
    *,
    tracking_uri: str | None,
    store_dir: str | Path,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    resume_run_id: str | None = None,
) -> Iterator[str]:
    """Opens an MLflow run and yields its id; opened while another run is active (a sweep's
    parent), it is nested under that run. With `resume_run_id`, that (interrupted) run is
    reopened instead.

    The run ends FINISHED on success, KILLED on Ctrl-C or SIGTERM (see `Terminated`) and
    FAILED on any other exception, which is re-raised.
    """
    connect(tracking_uri, store_dir)
    if resume_run_id:
        run = mlflow.start_run(run_id=resume_run_id)
    else:
        experiment_id = ensure_experiment(experiment, store_dir, local=not tracking_uri)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                               tags=dict(tags or {}), nested=mlflow.active_run() is not None)
    try:
        yield run.info.run_id
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def log_config(config: Any) -> None:
    """Logs every field of a config dataclass as a run parameter."""
    mlflow.log_params({key: str(value) for key, value in dataclasses.asdict(config).items()})


def run_tags(run_id: str) -> dict[str, str]:
    return dict(MlflowClient().get_run(run_id).data.tags)


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return None if run is None else run.info.run_id


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    mlflow.set_tags({key: str(value) for key, value in tags.items()})


class EpochMetricsLogger(keras.callbacks.Callback):
    """Logs Keras' per-epoch logs (loss, accuracy, val_*, learning_rate) to the active run."""

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            log_metrics(logs, step=epoch)


def log_dataset(
    name: str,
    source: str,
    digests: Mapping[str, str],
    split_tags: Mapping[str, Mapping[str, Any]],
    summary: Mapping[str, Any],
) -> None:
    """Records data lineage: one input per split (source, digest, tags) plus a JSON summary.

    Args:
        name: Dataset name shown in the UI.
        source: Local folder, or a URL for remote sources.
        digests: Content digest per split.
        split_tags: Per split, tags for its input (example and per-class counts, skips).
        summary: Anything else worth keeping (skipped files, split method, notes).
    """
    dataset_source = (
        HTTPDatasetSource(source) if "://" in source else LocalArtifactDatasetSource(source)
    )
    for split, digest in digests.items():
        dataset = MetaDataset(dataset_source, name=f"{name}-{split}", digest=digest)
        tags = {key: str(value) for key, value in split_tags[split].items()}
        mlflow.log_input(dataset, context=split, tags=tags)
    mlflow.log_dict(dict(summary), "data/summary.json")


def log_figure(figure, path: str) -> None:
    mlflow.log_figure(figure, path)


def log_dict(data: Mapping[str, Any], path: str) -> None:
    mlflow.log_dict(dict(data), path)


def log_params(params: Mapping[str, Any]) -> None:
    mlflow.log_params({key: str(value) for key, value in params.items()})


def log_table(table, path: str) -> None:
    """Logs a pandas DataFrame as a table artifact (shown in the UI's evaluation view)."""
    mlflow.log_table(table, path)


def log_text(text: str, path: str) -> None:
    mlflow.log_text(text, path)


def pinned_requirements(*distributions: str) -> list[str]:
    """`name==version` for installed distributions: given explicitly, MLflow skips the ~20 s
    requirement inference."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in distributions]


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    """Raw review strings in; per review the label, every class probability and an error
    (None when the review was usable). See pipelines.serving.TextPredictor."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)

    def load_context(self, context):
        from pipelines.serving import TextPredictor

        self._predictor = TextPredictor.load(context.artifacts["classifier"], self.labels)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self._predictor.predict(model_input)


class SpeechClassifierModel(mlflow.pyfunc.PythonModel):
    """Raw clips in (file bytes, or a waveform with its sample rate); per clip the label, every
    class probability and an error. See pipelines.serving.SpeechPredictor."""

    def load_context(self, context):
        from pipelines.serving import SpeechPredictor

        self._predictor = SpeechPredictor.load(context.artifacts["classifier"],
                                               context.artifacts["config"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self._predictor.predict(model_input)


def load_served_model(model_uri: str, tracking_uri: str | None, store_dir: str | Path):
    """Loads a logged or registered model (e.g. `models:/name@champion`) as pyfunc.

    Raises:
        SetupError: The tracking server does not answer.
    """
    check_tracking(tracking_uri)
    connect(tracking_uri, store_dir)
    return mlflow.pyfunc.load_model(model_uri)


def model_version_of(model_uri: str) -> Any | None:
    """The registered version a `models:/NAME@ALIAS` or `models:/NAME/VERSION` URI points at;
    None for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    name, _, rest = model_uri[len("models:/"):].partition("/")
    client = MlflowClient()
    if "@" in name:
        name, alias = name.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    if rest.isdigit():
        return client.get_model_version(name, rest)
    return None


def link_evaluation(model_uri: str, run_id: str, summary: str) -> str | None:
    """Tags the evaluation run with the model it evaluated and, for a registered version, the
    version with `evaluation.<run_id>`; returns the version number (None if unregistered)."""
    version = model_version_of(model_uri)
    tags = {"evaluated_model_uri": model_uri}
    if version is not None:
        MlflowClient().set_model_version_tag(version.name, version.version,
                                             f"evaluation.{run_id}", summary)
        tags |= {"evaluated_model": version.name, "evaluated_version": version.version,
                 "evaluated_model_run_id": version.run_id}
    set_tags(tags)
    return None if version is None else str(version.version)


def output_schema(labels: Sequence[str]) -> Schema:
    return Schema([ColSpec("string", "label")]
                  + [ColSpec("double", f"probability_{label}") for label in labels]
                  + [ColSpec("string", "error", required=False)])


INPUT_EXAMPLE_TEXTS = ("A moving, beautifully acted film.", "Two hours I will never get back.")


def log_text_classifier(classifier_path: str | Path, labels: Sequence[str]) -> str:
    """Logs a text classifier as a pyfunc model that takes raw strings.

    Args:
        classifier_path: A .keras model taking strings, or a joblib scikit-learn pipeline.
        labels: Class names in output order.

    Returns:
        The logged model's URI.
    """
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=TextClassifierModel(labels),
        artifacts={"classifier": str(classifier_path)},
        signature=ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                                 outputs=output_schema(labels)),
        input_example=pd.DataFrame({"text": list(INPUT_EXAMPLE_TEXTS)}),
        pip_requirements=pinned_requirements(
            "tensorflow", "keras", "mlflow", "scikit-learn", "pandas"),
    )
    return info.model_uri


def log_speech_classifier(model_path: str | Path, config_path: str | Path,
                          labels: Sequence[str], input_example: pd.DataFrame, *,
                          infer_requirements: bool = False) -> str:
    """Logs a speech classifier as a pyfunc model that takes raw audio.

    Args:
        model_path: The .keras classifier over MFCC frames.
        config_path: Labels and feature configuration (SpeechPredictor.save_config).
        labels: Class names in output order.
        input_example: A few rows of `audio` bytes and/or `waveform` + `sample_rate`.
        infer_requirements: Let MLflow infer the pip requirements, which loads the model in a
            subprocess (~20 s), instead of pinning the installed versions of what it needs.

    Returns:
        The logged model's URI.
    """
    inputs = Schema([ColSpec("binary", "audio", required=False),
                     ColSpec(Array(DataType.double), "waveform", required=False),
                     ColSpec("long", "sample_rate", required=False)])
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=SpeechClassifierModel(),
        artifacts={"classifier": str(model_path), "config": str(config_path)},
        signature=ModelSignature(inputs=inputs, outputs=output_schema(labels)),
        input_example=input_example,
        pip_requirements=None if infer_requirements else pinned_requirements(
            "tensorflow", "keras", "mlflow", "librosa", "soundfile", "pandas"),
    )
    return info.model_uri


@dataclass(frozen=True)
class Promotion:
    """Outcome of registering a model version."""

    version: str | None
    promoted: bool
    reason: str


def champion_decision(
    candidate_accuracy: float, test_digest: str, champion: Any | None
) -> tuple[bool, str]:
    """The champion rule: promote only on better test accuracy on the same test data."""
    if champion is None:
        return True, "no champion yet"
    champion_digest = champion.tags.get("test_data_digest")
    if champion_digest != test_digest:
        return False, (
            f"champion v{champion.version} was evaluated on different test data "
            f"(digest {champion_digest} vs {test_digest}); not comparable"
        )
    champion_accuracy = float(champion.tags.get("test_accuracy", "nan"))
    if candidate_accuracy > champion_accuracy:
        return True, (
            f"test accuracy {candidate_accuracy:.4f} beats champion v{champion.version}'s "
            f"{champion_accuracy:.4f}"
        )
    return False, (
        f"test accuracy {candidate_accuracy:.4f} does not beat champion v{champion.version}'s "
        f"{champion_accuracy:.4f}"
    )


def current_champion(client: MlflowClient, name: str) -> Any | None:
    """The version holding the champion alias, or None."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


PROMOTION_STATE = "promotion_state"  # version tag: "pending" until its champion decision
PENDING, DECIDED = "pending", "decided"
STALE_PENDING_SECONDS = 300  # a pending version older than this was left by a dead process
QUEUE_POLL_SECONDS = 0.2


def wait_for_earlier_promotions(client: MlflowClient, name: str, version: int) -> None:
    """Waits until no lower-numbered version of `name` is still pending its champion decision.

    The store numbers a registered model's versions atomically, so a version number is a
    ticket: promotions are decided one at a time, in version order, even by processes on
    different machines sharing one tracking server. A pending version older than
    STALE_PENDING_SECONDS (its process died mid-decision) is no longer waited for.
    """
    while True:
        now_ms = time.time() * 1000
        earlier = [v for v in client.search_model_versions(f"name='{name}'")
                   if int(v.version) < version and v.tags.get(PROMOTION_STATE) == PENDING
                   and now_ms - v.creation_timestamp < STALE_PENDING_SECONDS * 1000]
        if not earlier:
            return
        log.info("waiting for the champion decision of %s v%s", name,
                 ", v".join(str(v.version) for v in earlier))
        time.sleep(QUEUE_POLL_SECONDS)


def register_and_promote(
    model_uri: str,
    name: str,
    *,
    metrics: Mapping[str, float],
    test_digest: str,
    data_digest: str,
    only_if_champion: bool = False,
) -> Promotion:
    """Registers `model_uri` under `name`, tags it and moves `champion` to it if it wins.

    The version is registered first, marked pending: its number is its place in the queue of
    promotions (`wait_for_earlier_promotions`). Once the versions before it are decided, the
    current champion is read, compared and, if beaten, replaced, so two runs finishing at the
    same time never leave the worse model as champion. The version is tagged with its test
    metrics and dataset digests; the run records the decision and its reason.

    Args:
        only_if_champion: Keep the model registered only if it becomes champion (for
            baselines, which should not crowd the registry): otherwise its queued version is
            deleted again.

    Returns:
        The outcome; `version` is None when the model was not kept registered.
    """
    client = MlflowClient()
    tags = {key: f"{value:.6f}" for key, value in metrics.items() if key in
            ("test_accuracy", "test_macro_f1", "test_roc_auc")}
    tags.update(test_data_digest=test_digest, data_digest=data_digest)
    version = mlflow.register_model(model_uri, name, tags=tags | {PROMOTION_STATE: PENDING})
    number = str(version.version)
    kept = True
    try:
        wait_for_earlier_promotions(client, name, int(number))
        promoted, reason = champion_decision(
            metrics["test_accuracy"], test_digest, current_champion(client, name))
        if only_if_champion and not promoted:
            client.delete_model_version(name, number)
            kept = False
            set_tags({"registered_version": "", "champion": False,
                      "promotion_reason": f"not registered: {reason}"})
            log.info("not registering in %s: %s", name, reason)
            return Promotion(None, False, f"not registered: {reason}")
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, number)
        client.set_model_version_tag(name, number, "promotion", reason)
    finally:  # also on failure, so that later promotions do not wait for this one
        if kept:
            client.set_model_version_tag(name, number, PROMOTION_STATE, DECIDED)
    set_tags({"registered_version": number, "champion": promoted, "promotion_reason": reason})
    log.info("registered %s v%s; champion: %s (%s)", name, number, promoted, reason)
    return Promotion(number, promoted, reason)
