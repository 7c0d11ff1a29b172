"""The life of one run: the checks made before it opens, the MLflow run itself (its data logged
once, its model registered, its result), and the removal of its checkpoint folder once trained.

Everything that can stop a run is checked before any data or feature work (`prepare_run`): the
tracking server answers, the store, checkpoint and cache folders can be written, and a run to
resume exists and has a checkpoint (`pipelines.resume`). The run then ends FINISHED, FAILED or
KILLED (`tracking.open_run`); training saves a checkpoint after every epoch, deleted when the run
finishes and kept when it is interrupted, for `--resume`.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from features.errors import ConfigError, require_at_least
from features.splits import Lineage, Splits
from pipelines import checkpoints, descriptions, distribute, evaluation, resume, tracking
from pipelines.config import TaskConfig, validate_choices
from pipelines.errors import SetupError

log = logging.getLogger(__name__)


# the tasks' reference models (TensorFlow's tutorial CNN, the TF-IDF baseline): registered
# only where they become champion, so that they never crowd the registry
REFERENCE_MODELS = frozenset({"tutorial-cnn", "tfidf-logreg"})


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Run: the MLflow store and names, registration, checkpoints, --resume, --sweep, --strategy.
    """

    experiment: str = field(metadata={"help": "MLflow experiment"})
    registered_model: str = field(metadata={"help": "MLflow registered model name"})
    tracking_uri: str | None = field(default=None, metadata={
        "help": "MLflow tracking URI; unset: the SQLite store in --store-dir",
        "env": "MLFLOW_TRACKING_URI"})
    store_dir: str = field(default="mlruns", metadata={
        "help": "local MLflow store: mlflow.db and artifacts/"})
    run_name: str | None = field(default=None, metadata={
        "help": "MLflow run name; unset: task, model and seed (speech-crnn-bigru64-s0, "
                "sentiment-bigru128-ngrams-s0)"})
    register: bool = field(default=True, metadata={
        "help": "register the model and apply the champion rule"})
    checkpoint_dir: str = field(default=".cache/checkpoints", metadata={
        "help": "where each run saves its last epoch (<dir>/<run id>/) for --resume; deleted "
                "when the run finishes"})
    resume: str | None = field(default=None, metadata={
        "help": "continue the interrupted run with this id (KILLED, FAILED, or RUNNING with "
                "its process gone) from its last epoch checkpoint, into the same MLflow run, "
                "with the options it was started with"})
    sweep: int = field(default=0, metadata={
        "help": "run this many trials of the pipeline's search space (Optuna TPE) as nested "
                "MLflow runs under one parent, then register the trial with the best "
                "validation accuracy; 0: one ordinary run"})
    strategy: str = field(default="auto", metadata={
        "help": "tf.distribute strategy: mirrored over the GPUs when there are several "
                "(auto), the default single-device one (none), mirrored over every GPU or "
                "logical CPU device (mirrored), or MultiWorkerMirroredStrategy over the workers "
                "TF_CONFIG names, of which only the chief logs and registers (multi-worker)",
        "choices": distribute.STRATEGIES})

    def __post_init__(self):
        require_at_least(self, {"sweep": 0})
        refused = tracking.name_refusal(experiment=self.experiment)
        if refused:
            raise ConfigError(f"experiment {self.experiment[:40]!r}: {refused}")
        if self.register:
            refused = tracking.name_refusal(registered_model=self.registered_model)
            if refused:
                raise ConfigError(f"registered_model {self.registered_model[:40]!r}: {refused}")

    def writable_folders(self) -> dict[str, str]:
        return {"checkpoint folder": self.checkpoint_dir}


def prepare_run(config: TaskConfig, pipeline: str) -> TaskConfig:
    """Everything checked before a run opens and before any data or feature work: the options'
    choices (those the others leave without effect warned of: `TaskConfig.warn_unused`), the
    tracking server answers, the store, the checkpoint folder and the config's other
    `writable_folders()` can be written, and with `--resume` the interrupted run exists and
    has a checkpoint. With `--strategy multi-worker` it then joins the cluster.

    Args:
        config: The run's config.
        pipeline: "speech" or "sentiment" (what a resumed run must have been).

    Returns:
        The config to run: with `--resume`, the interrupted run's logged options (only the
        store options and `resume` come from the command line); on a worker that is not the
        chief, pointed at its throwaway store (`join_cluster`).

    Raises:
        ValueError: An option outside its choices.
        SetupError: An unreachable server, a folder that cannot be written, a run that
            cannot be resumed, or a multi-worker run without a usable TF_CONFIG.
    """
    validate_choices(config)
    if not (config.run.resume or tracking.open_run_id()):  # a sweep's trials: the sweep warned
        config.warn_unused()  # as typed (a resume names what it does not use)
    config = join_cluster(config)
    run = config.run
    tracking.check_tracking(run.tracking_uri)
    if run.resume:  # before anything could make a store where the run's is not
        config = resume.resumed_config(config, pipeline)
    database = tracking.store_database(run.tracking_uri, run.store_dir)
    if database is not None:  # a SQLite file (not a server, nor sqlite:// in memory)
        require_writable_dir(database.parent, "MLflow store folder")
        tracking.require_writable_store(run.tracking_uri, run.store_dir)
    for purpose, folder in config.writable_folders().items():
        require_writable_dir(folder, purpose)
    if run.strategy == distribute.MULTI_WORKER:
        # joins the cluster (waiting for every worker) once this worker's setup is known to
        # be good, and before any TensorFlow op runs, as MultiWorkerMirroredStrategy requires
        distribute.strategy_for(run.strategy)
    return config


def join_cluster(config: TaskConfig) -> TaskConfig:
    """With `--strategy multi-worker`, decides from TF_CONFIG who logs (see
    pipelines.distribute): the chief runs `config` itself; any other worker runs it pointed at
    a throwaway store, registering nothing.

    Raises:
        SetupError: No usable TF_CONFIG, or --resume/--sweep, which run in one process.
    """
    run = config.run
    if run.strategy != distribute.MULTI_WORKER:
        return config
    if run.resume:
        raise SetupError("--resume continues a single-process run; a multi-worker run keeps "
                         "no checkpoint (start it again)")
    if run.sweep:
        raise SetupError("--sweep runs its trials in one process; sweep with --strategy "
                         "auto, mirrored or none")
    worker = distribute.worker(run.strategy)
    if worker.is_chief:
        log.info("%s: the chief, logging to MLflow", worker)
        return config
    scratch = distribute.throwaway_store()
    return config.replace(tracking_uri=None, store_dir=str(scratch / "mlruns"),
                          checkpoint_dir=str(scratch / "checkpoints"), run_name=None,
                          register=False)


def require_writable_dir(path: str | Path, purpose: str) -> None:
    """Checks that `path` can be written, or created and written, without creating anything:
    a probe file is opened (and dropped) in the folder or its nearest existing ancestor.

    Raises:
        SetupError: The folder (or the ancestor it would be made in) is not a writable
            folder, naming it and why.
    """
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a "
                                     f"{'link to nothing' if existing.is_symlink() else 'file'}")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise SetupError(f"{purpose} {path} is not writable ({error.strerror or error}); "
                         "choose another with its option or fix its permissions") from error


@dataclass
class TrackedRun:
    """The open MLflow run of a task: what the pipeline logs its data, registration and result
    through (`tracked_run` opens it)."""

    config: TaskConfig
    pipeline: str
    run_id: str
    started: float
    name: str = ""
    labels: tuple[str, ...] = ()

    @property
    def resuming(self) -> bool:
        """Whether this run continues an interrupted one from its checkpoint."""
        return bool(self.config.run.resume)

    @property
    def checkpoint(self) -> Path | None:
        """The run's checkpoint folder; None for a multi-worker run, which cannot be resumed
        (`join_cluster`) and so keeps none."""
        if self.config.run.strategy == distribute.MULTI_WORKER:
            return None
        return checkpoints.run_folder(self.config.run.checkpoint_dir, self.run_id)

    def completed_epochs(self) -> int:
        """Epochs the interrupted run completed (0 for a new run)."""
        return checkpoints.completed_epochs(self.checkpoint) if self.resuming else 0

    def log_data(self, splits: Splits, lineage: Lineage, dataset_name: str) -> None:
        """Logs the options as parameters, the data lineage, example counts and the label map
        (a resumed run logged them when it started). Under `--strategy multi-worker` the
        workers then check that they agree (`distribute.check_workers_agree`).

        Raises:
            ValueError: The workers of a multi-worker run differ.
            WorkerLost: A worker of a multi-worker run stopped before they compared.
        """
        digest, options = lineage.data_digest, self.config.options()
        self.labels = tuple(splits.labels)
        if not self.resuming:  # a resumed run's data was checked before it reopened
            tracking.set_tags({"data_digest": digest})
            tracking.log_params(options)
            tracking.log_dataset(dataset_name, lineage.source, lineage.digests,
                                 splits.split_tags(), lineage.summary)
            tracking.log_metrics({f"examples_{split}": n for split, n in splits.counts().items()}
                                 | {"skipped_examples": len(lineage.skipped)})
            tracking.log_dict({"labels": list(splits.labels),
                               "metric_names": evaluation.metric_names(splits.labels)},
                              "label_map.json")
        distribute.check_workers_agree(self.config.run.strategy, options, digest)

    def log_batches(self, metrics: Mapping[str, float]) -> None:
        """Logs how the fit is batched (`TrainingBatches.metrics`, the scheduled epochs); a
        resumed run logged them when it started (its global batch was checked before it
        reopened: `resume.require_same_footing`)."""
        if not self.resuming:
            tracking.log_metrics(metrics)

    def logged_model(self) -> str | None:
        """For a resumed run that logged its model (whole) before it was stopped, that model's
        URI (the run logs no second copy; `register` registers it, or gives its version its
        decision back); else None."""
        return tracking.finished_model_uri(self.run_id) if self.resuming else None

    def register(self, model_uri: str, metrics: Mapping[str, float], *, test_digest: str,
                 data_digest: str) -> dict:
        """Registers the model (unless `--no-register`) and applies the champion rule; a
        reference model (REFERENCE_MODELS) stays registered only if it becomes champion. The
        registered model's description names the classes (the run's, or for a sweep's parent
        run, which reads no data, the model's).

        Returns:
            The data digests, and unless registration is off, registered_version (None when
            not kept registered), champion and promotion_reason.
        """
        digests = {"test_data_digest": test_digest, "data_digest": data_digest}
        if not self.config.run.register:
            return digests
        name = self.config.run.registered_model
        classes = self.labels or tracking.model_labels(model_uri)
        promotion = tracking.register_and_promote(
            model_uri, name, metrics=metrics, test_digest=test_digest, data_digest=data_digest,
            classes=classes, only_if_champion=self.config.model.model in REFERENCE_MODELS,
            model_description=descriptions.model_description(self.pipeline, name, classes))
        return digests | {"registered_version": promotion.version,
                          "champion": promotion.promoted, "promotion_reason": promotion.reason}

    def result(self, values: dict) -> dict:
        """The run's result: `values` with its run id and the seconds since the run opened
        (logged as `total_seconds`), as this worker reports it (`distribute.worker_result`)."""
        seconds = time.perf_counter() - self.started
        tracking.log_metrics({"total_seconds": seconds})
        tracking.set_description(descriptions.run_description(self.name, values))
        return distribute.worker_result(self.config.run.strategy, values | {
            "run_id": self.run_id, "total_seconds": seconds})


def store_options(run: RunConfig) -> str:
    """The options that name `run`'s store on a command line (none for the default store; a
    tracking URI's password redacted), for the `--resume` command a stopped run suggests."""
    if run.tracking_uri:
        return f" --tracking-uri {shlex.quote(tracking.redact(run.tracking_uri))}"
    if Path(run.store_dir).resolve() != Path(RunConfig.store_dir).resolve():  # the default
        return f" --store-dir {shlex.quote(str(Path(run.store_dir).resolve()))}"
    return ""


@contextlib.contextmanager
def tracked_run(config: TaskConfig, pipeline: str, data_digest: str | None = None
                ) -> Iterator[TrackedRun]:
    """Opens an MLflow run in the config's experiment (or reopens `--resume`'s, once it is
    known to go on from the same data, `data_digest`, and global batch) for the pipeline's
    work; the caller has checked the config (`prepare_run`) so that bad options open no run.
    On success the run's checkpoint and its tag `checkpoint` are deleted; on Ctrl-C or SIGTERM
    they are kept and the command that continues the run is logged."""
    started = time.perf_counter()
    run, name = config.run, descriptions.run_name(config, pipeline)
    if run.resume:
        resume.require_same_footing(config, data_digest)
    sweep_run_id = tracking.open_run_id()  # the run is a trial of that sweep
    with tracking.open_run(run.experiment, tracking_uri=run.tracking_uri,
                           store_dir=run.store_dir, run_name=name,
                           tags={"pipeline": pipeline}, resume_run_id=run.resume) as run_id:
        tracked = TrackedRun(config, pipeline, run_id, started, name)
        checkpoint = tracked.checkpoint
        resumable = checkpoint is not None and not sweep_run_id and not pipeline.endswith(
            "-sweep")  # a sweep and its trials are run again, never resumed
        if resumable:  # on resume too: --checkpoint-dir may have moved it
            tracking.set_tags({"checkpoint": str(checkpoint)})
        try:
            yield tracked
        except KeyboardInterrupt:
            if pipeline.endswith("-sweep"):  # also when stopped choosing or registering
                log.warning("sweep run %s interrupted: a sweep is not continued by --resume; "
                            "run the sweep again", run_id)
            elif sweep_run_id:
                log.warning("run %s, a trial of sweep run %s, interrupted: a sweep is not "
                            "continued by --resume; run the sweep again", run_id, sweep_run_id)
            elif checkpoint is not None and checkpoints.latest_checkpoint(checkpoint) is not None:
                log.warning("run %s interrupted; its last epoch checkpoint is in %s. Continue "
                            "it with: python -m pipelines.%s --resume %s%s", run_id, checkpoint,
                            pipeline, run_id, store_options(run))
            raise
        finally:
            if sweep_run_id and checkpoint is not None:  # a trial, which nothing resumes
                discard(checkpoint)
        if resumable:  # tagged above
            tracking.delete_tag("checkpoint")  # the folder goes next: the tag would name nothing
    if checkpoint is not None and checkpoint.is_dir():
        shutil.rmtree(checkpoint)


def discard(checkpoint: Path) -> None:
    """Removes a sweep trial's checkpoint folder, however the trial ended; one that cannot be
    removed is named (what ended the trial is what is raised)."""
    try:
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint)
    except OSError as error:
        log.warning("could not remove the trial's checkpoint folder %s: %s", checkpoint, error)
