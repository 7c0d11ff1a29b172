"""MLflow runs: opening and ending them (tied to `mlflow run`'s own), logging to them,
reading them back."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import HTTPDatasetSource, LocalArtifactDatasetSource
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import _validate_experiment_name, _validate_model_name

from features.errors import shown_name
from pipelines.errors import SetupError
from pipelines.tracking import leases
from pipelines.tracking.stores import artifact_root, connect, redact

# `mlflow run` starts its entry point with the id of a run of its own in this variable
PROJECT_RUN_VARIABLE = "MLFLOW_RUN_ID"
PROJECT_RUN_TAG = "project_run_id"
MAX_ERROR_CHARS = 4000  # of a failed run's error kept in its tags (a tag holds 8,000)

log = logging.getLogger(__name__)
DESCRIPTION_TAG = "mlflow.note.content"  # a run's description in the MLflow UI


def ensure_experiment(name: str, artifacts: Path | None) -> str:
    """Returns the experiment id, creating the experiment if new (its artifacts in the folder
    `artifacts`, or where the tracking server puts them when None); another process creating
    it at the same moment is fine.

    Raises:
        SetupError: The experiment exists but was deleted (its runs could not be written).
    """
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = artifacts.as_uri() if artifacts is not None else None
        try:
            return mlflow.create_experiment(name, artifact_location=location)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = mlflow.get_experiment_by_name(name)  # created by another run
    if experiment.lifecycle_stage == "deleted":
        raise SetupError(f"experiment {name!r} (id {experiment.experiment_id}) is deleted: "
                         f"restore it (mlflow experiments restore --experiment-id "
                         f"{experiment.experiment_id}) or pass another --experiment")
    return experiment.experiment_id


@contextlib.contextmanager
def project_run_hidden() -> Iterator[str | None]:
    """Hides PROJECT_RUN_VARIABLE from MLflow while the body runs; yields its value.

    `mlflow.start_run` reopens the run that variable names instead of starting a new one, so
    under `mlflow run` the first run a process opened would take over the project's own run,
    and end it; `mlflow.start_run` and `mlflow.end_run` also delete the variable. It is
    restored afterwards, for the process's later runs.
    """
    saved = os.environ.pop(PROJECT_RUN_VARIABLE, None)
    try:
        yield saved
    finally:
        if saved is not None:
            os.environ[PROJECT_RUN_VARIABLE] = saved


def project_link(project_run_id: str | None, experiment_id: str
                 ) -> tuple[dict[str, str], str | None]:
    """How a new top-level run in `experiment_id` is tied to the run of the `mlflow run` that
    started this process (`project_run_id`, from PROJECT_RUN_VARIABLE).

    When that run is in the connected store, the new run gets its id as tag PROJECT_RUN_TAG;
    when it is also in `experiment_id`, it is the new run's parent (the UI nests runs only
    within an experiment). Outside `mlflow run`, or when that run is in another store, the run
    stands alone.

    Returns:
        (tags for the new run, parent run id or None).
    """
    if not project_run_id:
        return {}, None
    try:
        project = MlflowClient().get_run(project_run_id)
    except MlflowException:
        log.info("%s=%s is not a run of this tracking store; the run is not linked to it",
                 PROJECT_RUN_VARIABLE, project_run_id)
        return {}, None
    same_experiment = project.info.experiment_id == experiment_id
    return {PROJECT_RUN_TAG: project_run_id}, project_run_id if same_experiment else None


@contextlib.contextmanager
def open_run(
    experiment: str,
    *,
    tracking_uri: str | None,
    store_dir: str | Path,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    resume_run_id: str | None = None,
) -> Iterator[str]:
    """Opens a new MLflow run and yields its id; opened while another run is active (a sweep's
    parent), it is nested under that run. With `resume_run_id`, that (interrupted) run is
    reopened instead.

    Under `mlflow run` (PROJECT_RUN_VARIABLE set), a run opened while no other is active is
    linked to the project's run (`project_link`); that run is never reopened, and the variable
    is hidden while the run is open (`project_run_hidden`).

    The run ends FINISHED on success, KILLED on Ctrl-C or SIGTERM (see `Terminated`) and
    FAILED on any other exception, which is noted on the run (`note_failure`) and re-raised.
    While it is open, its process holds the run's lease (`leases.Heartbeat`), so that a process
    that dies without ending the run can be told from one still running.
    """
    connect(tracking_uri, store_dir)
    with project_run_hidden() as project_run_id:
        if resume_run_id:
            run = leases.take_over(resume_run_id, tracking_uri, store_dir)
        else:
            experiment_id = ensure_experiment(experiment, artifact_root(tracking_uri, store_dir))
            nested = mlflow.active_run() is not None
            link, parent = project_link(None if nested else project_run_id, experiment_id)
            run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                                   tags=dict(tags or {}) | link, nested=nested,
                                   parent_run_id=parent)
        try:
            with leases.Heartbeat(run.info.run_id):
                yield run.info.run_id
        except KeyboardInterrupt:
            fail_unfinished_models(run.info.run_id)
            end_run("KILLED")
            raise
        except BaseException as error:
            note_failure(run.info.run_id, error)  # (MLflow fails a model it was logging)
            end_run("FAILED")
            raise
        end_run("FINISHED")


def end_run(status: str) -> None:
    """Ends the active run as `status`. A tracking server's links to it, which MLflow prints
    ("View run ... at: http://..."), go to stderr with the other progress lines: stdout holds
    the command's result alone."""
    with contextlib.redirect_stdout(sys.stderr):
        mlflow.end_run(status=status)


def run_models(run_id: str) -> list[Any]:
    """The logged models of run `run_id`, newest first."""
    client = MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    models = client.search_logged_models([experiment],
                                         filter_string=f"source_run_id = '{run_id}'")
    return sorted(models, key=lambda model: model.creation_timestamp, reverse=True)


def finished_model_uri(run_id: str) -> str | None:
    """`models:/<id>` of the newest model run `run_id` logged whole (READY), or None."""
    ready = [model for model in run_models(run_id) if model.status == LoggedModelStatus.READY]
    return f"models:/{ready[0].model_id}" if ready else None


def fail_unfinished_models(run_id: str) -> None:
    """Marks FAILED the models of run `run_id` still being logged (PENDING) as it ends on
    Ctrl-C or SIGTERM: MLflow does so itself for an exception only. A store that cannot be
    reached for it is named; what ended the run is raised."""
    try:
        for model in run_models(run_id):
            if model.status == LoggedModelStatus.PENDING:
                MlflowClient().finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
    except MlflowException as error:
        log.warning("could not mark the models run %s was logging as failed: %s", run_id,
                    error.message)


def open_run_id() -> str | None:
    """The id of the run open in this process (a sweep's parent, under which a new run
    nests), or None."""
    active = mlflow.active_run()
    return active.info.run_id if active else None


def note_failure(run_id: str, error: BaseException) -> None:
    """Says on a failed run what failed: the tag `error` and the run's description (shown on
    its page) hold the exception's type and message, passwords in URIs hidden (`redact`)."""
    text = logged_text(f"{type(error).__name__}: {error}")[:MAX_ERROR_CHARS]
    client = MlflowClient()
    try:
        client.set_tag(run_id, "error", text)
        client.set_tag(run_id, DESCRIPTION_TAG, f"**failed**: `{text}`")
    except MlflowException as tag_error:  # the store may be what failed; the error is raised
        log.warning("run %s failed and could not be tagged with why: %s", run_id, tag_error)


def run_tags(run_id: str, missing_ok: bool = False) -> dict[str, str]:
    """The tags run `run_id` holds (none, with `missing_ok`, for a run not in the store)."""
    try:
        return dict(MlflowClient().get_run(run_id).data.tags)
    except MlflowException as error:
        if missing_ok and error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of each metric run `run_id` logged."""
    return dict(MlflowClient().get_run(run_id).data.metrics)


def run_params(run_id: str) -> dict[str, str]:
    """The parameters run `run_id` logged (a pipeline run's options)."""
    return dict(MlflowClient().get_run(run_id).data.params)


def find_runs(experiment: str, tags: Mapping[str, str]) -> list[tuple[str, str, dict]]:
    """The runs of `experiment` (none if it does not exist) that carry all of `tags`, newest
    first, as (run id, status, tags)."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    runs = MlflowClient().search_runs([found.experiment_id], query,
                                      order_by=["attributes.start_time DESC"])
    return [(run.info.run_id, run.info.status, dict(run.data.tags)) for run in runs]


def download_artifacts(run_id: str, path: str, folder: str | Path) -> Path:
    """Copies a run's artifact (file or folder) `path` into `folder`; returns its local path.

    Raises:
        SetupError: The run has no such artifact (or it cannot be read), naming both.
    """
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                        dst_path=str(folder)))
    except MlflowException as error:
        raise SetupError(f"run {run_id}: its artifact {path} cannot be downloaded "
                         f"({error.message})") from error


def log_artifacts(folder: str | Path, path: str) -> None:
    """Logs the files of `folder` as the active run's artifact folder `path`."""
    mlflow.log_artifacts(str(folder), path)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Logs numbers (as floats) to the open run, at `step` when given."""
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)


def set_description(text: str) -> None:
    """Sets the open run's description (Markdown), which the MLflow UI shows on its page."""
    set_tags({DESCRIPTION_TAG: text})


def set_tags(tags: Mapping[str, Any]) -> None:
    """Tags the open run, each value as `logged_text`."""
    mlflow.set_tags({key: logged_text(value) for key, value in tags.items()})


def logged_text(value: Any) -> str:
    """A value as the runs' params and tags hold it: text with any URI password redacted
    (`redact`) and the bytes of a file name that are not UTF-8 as `\\xNN` (`shown_name`; a
    tracking database holds UTF-8 only)."""
    return shown_name(redact(str(value)))


def delete_tag(key: str) -> None:
    """Deletes the active run's tag `key` (which it has)."""
    mlflow.delete_tag(key)


class EpochMetricsLogger(keras.callbacks.Callback):
    """Logs Keras' per-epoch logs (loss, accuracy, val_*, learning_rate) to the active run,
    epoch N (as Keras prints it, `best_epoch` names it and the training curves plot it) at
    step N: MLflow shows a run's step-0 metrics on its logged model's page as the model's, and
    those are the test figures, not the first epoch's."""

    first_step = 1  # the first epoch's step

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            log_metrics(logs, step=epoch + self.first_step)

    def resumed_from(self, history: Mapping[str, Sequence[float]]) -> None:
        """Logs the epochs of a resumed fit's checkpoint (`history`, per metric) that the run
        lacks: a process killed after writing an epoch's checkpoint and before logging the
        epoch left it out, and the resumed fit starts after it. A run whose first epoch is at
        step 0 (logged so by an earlier version of this class) goes on in that numbering."""
        run_id = mlflow.active_run().info.run_id
        logged = {metric.step for metric in MlflowClient().get_metric_history(run_id, "loss")}
        self.first_step = 0 if 0 in logged else 1
        for epoch in range(len(history.get("loss", []))):
            if epoch + self.first_step not in logged:
                log_metrics({key: values[epoch] for key, values in history.items()
                             if epoch < len(values)}, step=epoch + self.first_step)


# a database's words for a row that is there already (SQLite, PostgreSQL, MySQL)
DUPLICATE_ROW = ("unique constraint", "duplicate entry")


def log_dataset(
    name: str,
    source: str,
    digests: Mapping[str, str],
    split_tags: Mapping[str, Mapping[str, Any]],
    summary: Mapping[str, Any],
) -> None:
    """Records data lineage: one input per split (source, digest, tags) plus a JSON summary.

    An experiment's store keeps one dataset per name and digest, with the source it was first
    logged from: each input's tag `source` names the folder or URL this run read.

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
        tags = {"source": logged_text(source)} | {
            key: str(value) for key, value in split_tags[split].items()}
        try:
            mlflow.log_input(dataset, context=split, tags=tags)
        except MlflowException as error:  # another run stored the same dataset between
            # MLflow's lookup and its insert (runs of one data folder started together):
            # found now, it is linked
            if not any(text in str(error).lower() for text in DUPLICATE_ROW):
                raise
            mlflow.log_input(dataset, context=split, tags=tags)
    mlflow.log_dict(dict(summary), "data/summary.json")


def log_figure(figure, path: str) -> None:
    mlflow.log_figure(figure, path)


def log_dict(data: Mapping[str, Any], path: str) -> None:
    mlflow.log_dict(dict(data), path)


def log_params(params: Mapping[str, Any]) -> None:
    """Logs parameters to the open run, each value as `logged_text`."""
    mlflow.log_params({key: logged_text(value) for key, value in params.items()})


def log_table(table, path: str) -> None:
    """Logs a pandas DataFrame as a table artifact (shown in the UI's evaluation view)."""
    mlflow.log_table(table, path)


def log_text(text: str, path: str) -> None:
    mlflow.log_text(text, path)


def name_refusal(*, experiment: str | None = None, registered_model: str | None = None
                 ) -> str | None:
    """Why MLflow would refuse an experiment or registered-model name (its own rules, the
    validators its stores run), or None: checked before a run does any work."""
    try:
        if experiment is not None:
            _validate_experiment_name(experiment)
        if registered_model is not None:
            _validate_model_name(registered_model)
    except MlflowException as error:
        return error.message
    return None
