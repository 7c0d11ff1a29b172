"""The part of a run every pipeline shares once its data is ready: log the data, fit,
evaluate, log the results, register; plus the run wrapper and the CLI plumbing."""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import config_from_args, config_from_params
from pipelines.errors import SetupError, Terminated, WorkerLost
from pipelines.interrupts import WORKER_LOST, exit_status, handle_interrupts

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Model inputs and integer labels per split, with everything needed for data lineage.

    Attributes:
        labels: Class names in label-id order.
        x: Split -> model input array.
        y: Split -> label ids.
        digests: Split -> content digest of the raw data.
        source: Folder or URL the data came from.
        skipped: (path, reason) of each example left out.
        summary: Anything else worth keeping with the run (split method, notes).
        from_cache: Whether the features were read from a cache.
        normalization: Per-feature (mean, variance) of the training inputs, when the feature
            stage computed them.
        raw_train: The training split before feature extraction (speech: waveforms), rows
            aligned with x["train"], for augmentation that must happen before it; or None.
    """

    labels: tuple[str, ...]
    x: dict[str, Any]
    y: dict[str, np.ndarray]
    digests: dict[str, str]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    from_cache: bool = False
    normalization: tuple[np.ndarray, np.ndarray] | None = None
    raw_train: Any = None

    def counts(self) -> dict[str, int]:
        return {split: len(labels) for split, labels in self.y.items()}

    def split_tags(self) -> dict[str, dict[str, str]]:
        """Per split: example count and per-class counts, for the dataset inputs of a run."""
        tags = {}
        for split, y in self.y.items():
            per_class = np.bincount(y, minlength=len(self.labels))
            tags[split] = {"examples": str(len(y)), "class_counts": json.dumps(
                dict(zip(self.labels, per_class.tolist(), strict=True)))}
        return tags


@dataclass
class Trained:
    """What fitting and evaluating produced."""

    metrics: dict[str, float]
    history: dict[str, list[float]]
    model: Any = None


def log_data(config: Any, data: PreparedData, dataset_name: str) -> None:
    """Logs the config as parameters, the data lineage, example counts and the label map.

    A resumed run logged them when it started; it only checks that its data is the same.

    Raises:
        SetupError: A resumed run's data differs from what the run started with.
    """
    from pipelines import tracking

    digest = lineage(data)["data_digest"]
    if config.resume:
        tags = tracking.run_tags(config.resume)
        if tags.get("data_digest") != digest:
            raise SetupError(f"--resume {config.resume}: the data changed since the run "
                             f"started (digest {digest}, the run's {tags.get('data_digest')});"
                             " start a new run")
        return
    tracking.set_tags({"data_digest": digest})
    tracking.log_config(config)
    tracking.log_dataset(dataset_name, data.source, data.digests, data.split_tags(),
                         data.summary)
    tracking.log_metrics({f"examples_{split}": n for split, n in data.counts().items()}
                         | {"skipped_examples": len(data.skipped)})
    tracking.log_dict({"labels": list(data.labels)}, "label_map.json")


def fit_and_evaluate(config: Any, build: Callable[[], Any], data: PreparedData, train=None,
                     validation=None, in_memory_bytes: int | None = None,
                     predict: Callable[[Any], tuple[np.ndarray, dict]] | None = None
                     ) -> Trained:
    """Builds (inside the strategy's scope), compiles and fits a Keras model, evaluates it on
    the test split and logs the results; with `config.resume`, the model comes from the run's
    checkpoint instead. Under `--strategy multi-worker` the workers first check that they
    agree (`check_workers_agree`), and evaluate a local copy of the fitted model.

    Args:
        config: A TrainingConfig (optimiser, schedule, epochs, batch size, early stopping).
        build: Makes the uncompiled Keras classifier.
        data: Prepared splits; test is evaluated in one pass.
        train: tf.data training batches; None batches `data` with `training.make_dataset`.
        validation: tf.data validation batches, as `train`.
        in_memory_bytes: Memory-mapped splits larger than this are streamed from their file
            (default: training.IN_MEMORY_BYTES).
        predict: `predict(fitted model) -> (test probabilities, metrics)` when the evaluated
            classifier is more than the fitted model (a blend); its metrics (e.g. its own
            model_val_accuracy) replace those derived from the Keras history.
    """
    from pipelines import distribute, tracking, training

    if config.strategy == "multi-worker":
        check_workers_agree(config, data)
    classes = len(data.labels)
    batch = distribute.global_batch_size(config.batch_size, config.strategy)
    if train is None:
        train = training.make_dataset(data.x["train"], data.y["train"], batch,
                                      classes, shuffle=True, seed=config.seed,
                                      in_memory_bytes=in_memory_bytes)
    if validation is None:
        validation = training.make_dataset(data.x["validation"], data.y["validation"],
                                           batch, classes, shuffle=False,
                                           in_memory_bytes=in_memory_bytes)
    steps = training.steps_per_epoch(len(data.y["train"]), batch)
    tracking.log_metrics({"replicas": distribute.replicas(config.strategy),
                          "global_batch_size": batch,
                          "workers": distribute.worker(config.strategy).workers})
    with distribute.strategy_for(config.strategy).scope():
        resume = training.load_checkpoint(checkpoint_path(config)) if config.resume else None
        if resume:
            model = resume.model  # compiled, with the optimizer's state
            log.info("resuming run %s after epoch %d", config.resume, resume.epoch + 1)
        else:
            model = build()
            training.compile_classifier(model, config, steps)
    started = time.perf_counter()
    multi_worker = config.strategy == "multi-worker"
    with distribute.reporting_lost_workers(config.strategy):
        history = training.fit_classifier(
            model, train, validation, config, callbacks=[tracking.EpochMetricsLogger()],
            # a multi-worker run cannot be resumed (prepare_run): no checkpoint to keep
            checkpoint_dir=None if multi_worker else checkpoint_path(config), resume=resume)
    train_seconds = time.perf_counter() - started
    if multi_worker:  # from here on, each worker goes on alone: no collective ops
        model = distribute.local_copy(model)
    epochs = len(history["loss"])
    best_epoch = int(np.argmin(history["val_loss"]))  # the weights early stopping kept
    extra: dict = {}
    if predict is None:
        test = training.make_dataset(data.x["test"], data.y["test"], 256, classes,
                                     shuffle=False, in_memory_bytes=in_memory_bytes)
        probabilities = model.predict(test, verbose=0)
    else:
        probabilities, extra = predict(model)
    metrics = log_evaluation(probabilities, data, history).metrics | {
        "train_seconds": train_seconds,
        "epochs_trained": epochs,
        # epochs of this process: a resumed run trained the others earlier
        "train_samples_per_second": len(data.y["train"]) * (
            epochs - (resume.epoch + 1 if resume else 0)) / train_seconds,
        # not "val_accuracy": that name holds the per-epoch curve
        "model_val_accuracy": history["val_accuracy"][best_epoch],
        "best_epoch": best_epoch + 1,
    } | extra
    tracking.log_metrics(metrics)
    return Trained(metrics, history, model)


# options that may differ between the workers of one multi-worker run: where each finds its
# data and writes its files (a worker that is not the chief has its own store: join_cluster)
LOCAL_OPTIONS = {"tracking_uri", "store_dir", "run_name", "register", "checkpoint_dir",
                 "data_dir", "tfds_data_dir", "cache_dir", "cache", "in_memory_mb"}


def check_workers_agree(config: Any, data: PreparedData) -> None:
    """Checks that every worker of a multi-worker run has the chief's options (but
    LOCAL_OPTIONS) and data: otherwise their training steps would not line up, or would train
    a model other than the one the chief logs.

    Raises:
        ValueError: On every worker, when any worker differs.
    """
    from pipelines import distribute

    shared = {key: value for key, value in asdict(config).items() if key not in LOCAL_OPTIONS}
    digest = lineage(data)["data_digest"]
    mine, anyone = distribute.differing_workers(
        config.strategy, json.dumps(shared, sort_keys=True, default=str) + digest)
    if anyone:
        who = "this worker's" if mine else "another worker's"
        raise ValueError(f"{distribute.worker(config.strategy)}: {who} options or data differ "
                         f"from the chief's (data digest here: {digest}); run every worker "
                         "with the same options on the same data")


def log_evaluation(probabilities: np.ndarray, data: PreparedData,
                   history: dict[str, list[float]] | None = None):
    """Scores test-split probabilities and logs the metrics, report and plots.

    Plots: the confusion matrix, the ROC curve for two classes, and the training curves when
    there is a Keras history.

    Returns:
        The training.Evaluation (metrics, report, confusion matrix).
    """
    from pipelines import tracking, training

    evaluation = training.evaluate_probabilities(probabilities, data.y["test"], data.labels)
    tracking.log_metrics(evaluation.metrics)
    tracking.log_figure(training.confusion_matrix_figure(evaluation.confusion, data.labels),
                        "plots/confusion_matrix.png")
    if len(data.labels) == 2:
        tracking.log_figure(training.roc_curve_figure(probabilities, data.y["test"],
                                                      data.labels), "plots/roc_curve.png")
    if history:
        tracking.log_figure(training.training_curves_figure(history),
                            "plots/training_curves.png")
    tracking.log_text(evaluation.report_text, "classification_report.txt")
    tracking.log_dict(evaluation.report, "classification_report.json")
    return evaluation


def register(config: Any, model_uri: str, metrics: dict[str, float], data: PreparedData,
             *, only_if_champion: bool = False) -> dict:
    """Registers the model (unless `config.register` is off) and applies the champion rule.

    Args:
        only_if_champion: Register only when the model would become champion (baselines).

    Returns:
        The data digests (`lineage`), and unless registration is off, registered_version
        (None when not registered), champion and promotion_reason.
    """
    digests = lineage(data)
    if not config.register:
        return digests
    return digests | register_lineage(config, model_uri, metrics, digests,
                                      only_if_champion=only_if_champion)


def lineage(data: PreparedData) -> dict[str, str]:
    """The digests the champion rule compares: the test split's and all splits'."""
    return {"test_data_digest": data.digests["test"],
            "data_digest": "-".join(data.digests.values())}


def register_lineage(config: Any, model_uri: str, metrics: dict[str, float],
                     digests: dict[str, str], *, only_if_champion: bool = False) -> dict:
    """`register` for a model whose data is known by its digests (`lineage`) only."""
    from pipelines import tracking

    promotion = tracking.register_and_promote(
        model_uri, config.registered_model, metrics=metrics,
        test_digest=digests["test_data_digest"], data_digest=digests["data_digest"],
        only_if_champion=only_if_champion)
    return {"registered_version": promotion.version, "champion": promotion.promoted,
            "promotion_reason": promotion.reason}


def require_data_dir(data_dir: str | None, env: str, dataset: str) -> None:
    """Fails before any MLflow run is opened when there is no usable data folder.

    Raises:
        ValueError: No folder given.
        FileNotFoundError: The folder does not exist.
    """
    if not data_dir:
        raise ValueError(f"no data folder: pass --data-dir or set {env}")
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(f"{dataset} data folder not found: {data_dir}")


def tracked_pipeline(config: Any, pipeline: str, work: Callable[[str], dict]) -> dict:
    """Opens an MLflow run in `config.experiment` (or reopens `config.resume`) and calls
    `work(run_id)`; the caller has validated `config` (`prepare_run`) so that bad options open
    no run.

    The run ends FINISHED, FAILED or KILLED (see tracking.tracked_run). Training saves a
    checkpoint after every epoch (`checkpoint_path`); it is deleted when the run finishes and
    kept when it is interrupted, for `--resume`.

    Returns:
        `work`'s result with run_id and total_seconds added.
    """
    from pipelines import tracking

    started = time.perf_counter()
    with tracking.tracked_run(config.experiment, tracking_uri=config.tracking_uri,
                              store_dir=config.store_dir, run_name=config.run_name,
                              tags={"pipeline": pipeline},
                              resume_run_id=config.resume) as run_id:
        checkpoint = checkpoint_path(config, run_id)
        if not config.resume and config.strategy != "multi-worker":
            tracking.set_tags({"checkpoint": str(checkpoint)})
        try:
            result = work(run_id)
        except KeyboardInterrupt:
            if (checkpoint / "state.json").is_file():
                log.warning("run %s interrupted; its last epoch checkpoint is in %s. Continue "
                            "it with: python -m pipelines.%s --resume %s", run_id, checkpoint,
                            pipeline.removesuffix("-sweep"), run_id)
            raise
        result["run_id"] = run_id
        result["total_seconds"] = time.perf_counter() - started
        tracking.log_metrics({"total_seconds": result["total_seconds"]})
    if checkpoint.is_dir():
        shutil.rmtree(checkpoint)
    return result if config.strategy != "multi-worker" else worker_result(config, result)


def worker_result(config: Any, result: dict) -> dict:
    """A multi-worker run's result as this worker reports it: a worker that is not the chief
    logged nothing, so it names itself instead of a run, a model and a registry outcome."""
    from pipelines import distribute

    worker = distribute.worker(config.strategy)
    if worker.is_chief:
        return result | {"worker": str(worker)}
    logged = {"run_id", "model_uri", "registered_version", "champion", "promotion_reason"}
    return {key: value for key, value in result.items() if key not in logged} | {
        "worker": str(worker), "not_chief": True}


def checkpoint_path(config: Any, run_id: str | None = None) -> Path:
    """Where the run's per-epoch training checkpoint lives: `<checkpoint_dir>/<run id>`
    (absolute, so `--resume` finds it from any working directory)."""
    from pipelines import tracking

    run_id = run_id or config.resume or tracking.active_run_id()
    return Path(config.checkpoint_dir).resolve() / run_id


def completed_epochs(config: Any) -> int:
    """Epochs the interrupted run `config.resume` completed (0 for a new run)."""
    if not config.resume:
        return 0
    return json.loads((checkpoint_path(config) / "state.json").read_text())["epoch"] + 1


def prepare_run(config: Any, pipeline: str) -> Any:
    """Everything checked before a run opens and before any data or feature work: the
    tracking server answers, the store, the checkpoint folder and the config's other
    `writable_folders()` can be written, and with `--resume` the interrupted run exists and
    has a checkpoint.

    Args:
        config: The run's config.
        pipeline: "speech" or "sentiment" (what a resumed run must have been).

    With `--strategy multi-worker` it then joins the cluster (`join_cluster` decides who
    logs).

    Returns:
        The config to run: with `--resume`, the interrupted run's logged options (only the
        store options and `resume` come from the command line); on a worker that is not the
        chief, pointed at its throwaway store.

    Raises:
        SetupError: An unreachable server, a folder that cannot be written, a run that
            cannot be resumed, or a multi-worker run without a usable TF_CONFIG.
    """
    from pipelines import tracking

    config = join_cluster(config)
    tracking.check_tracking(config.tracking_uri)
    if not config.tracking_uri or config.tracking_uri.startswith("sqlite:"):
        require_writable_dir(config.store_dir if not config.tracking_uri else
                             Path(config.tracking_uri.removeprefix("sqlite:///")).parent,
                             "MLflow store folder")
    if config.resume:
        if config.sweep:
            raise SetupError("--resume continues one interrupted run; it cannot be combined "
                             "with --sweep")
        params, tags = tracking.interrupted_run(config.resume, config.tracking_uri,
                                                config.store_dir)
        if tags.get("pipeline") != pipeline:
            raise SetupError(f"--resume {config.resume}: that run is not a {pipeline} training "
                             f"run (pipeline tag {tags.get('pipeline')!r})")
        checkpoint = Path(tags.get("checkpoint", ""))
        if not (checkpoint / "state.json").is_file():
            raise SetupError(f"--resume {config.resume}: no checkpoint at {checkpoint} (the "
                             "run stopped before its first epoch ended, or finished); start a "
                             "new run")
        config = replace(config_from_params(type(config), params),
                         tracking_uri=config.tracking_uri, store_dir=config.store_dir,
                         resume=config.resume, checkpoint_dir=str(checkpoint.parent))
    for purpose, folder in config.writable_folders().items():
        require_writable_dir(folder, purpose)
    if config.strategy == "multi-worker":
        # joins the cluster (waiting for every worker) once this worker's setup is known to
        # be good, and before any TensorFlow op runs, as MultiWorkerMirroredStrategy requires
        from pipelines import distribute

        distribute.strategy_for(config.strategy)
    return config


def join_cluster(config: Any) -> Any:
    """With `--strategy multi-worker`, decides from TF_CONFIG who logs.

    Every worker runs the same pipeline, so that their collective training steps match; the
    chief logs, saves and registers as a single process would. Any other worker logs nothing:
    its MLflow calls go to a throwaway SQLite store in a temporary folder (made on first use),
    deleted when the process exits (TensorFlow's own pattern for the checkpoints of non-chief
    workers).

    Returns:
        `config` itself, or for a worker that is not the chief, `config` pointed at its
        throwaway store.

    Raises:
        SetupError: No usable TF_CONFIG, or --resume/--sweep, which run in one process.
    """
    if config.strategy != "multi-worker":
        return config
    if config.resume:
        raise SetupError("--resume continues a single-process run; a multi-worker run keeps "
                         "no checkpoint (start it again)")
    if config.sweep:
        raise SetupError("--sweep runs its trials in one process; sweep with --strategy "
                         "auto, mirrored or none")
    from pipelines import distribute

    worker = distribute.worker(config.strategy)
    if worker.is_chief:
        log.info("%s: the chief, logging to MLflow", worker)
        return config
    # made on first use (after the cluster formed), removed at exit
    scratch = Path(tempfile.gettempdir()) / (
        f"pipelines-{worker.task_type}-{worker.task_id}-{os.getpid()}-{secrets.token_hex(4)}")
    THROWAWAY.append(scratch)
    atexit.register(remove_folder, scratch)  # run_cli removes it before exit_process
    log.info("%s: not the chief; it trains in sync and logs nothing (its MLflow calls go to "
             "the throwaway store %s)", worker, scratch)
    return replace(config, tracking_uri=None, store_dir=str(scratch / "mlruns"),
                   checkpoint_dir=str(scratch / "checkpoints"), run_name=None, register=False)


THROWAWAY: list[Path] = []  # this process's throwaway stores (join_cluster)


def remove_folder(path: Path) -> None:
    """Removes a folder this process made, if it made it."""
    if path.exists():
        shutil.rmtree(path)


def require_writable_dir(path: str | Path, purpose: str) -> None:
    """Checks that `path` can be written, or created and written, without creating anything:
    a probe file is opened (and dropped) in the folder or its nearest existing ancestor.

    Raises:
        SetupError: The folder (or the ancestor it would be made in) is not a writable
            folder, naming it and why.
    """
    path = Path(path).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise SetupError(f"{purpose} {path} is not writable ({error.strerror or error}); "
                         "choose another with its option or fix its permissions") from error


def registry_lines(result: dict) -> list[str]:
    """The summary lines every pipeline prints: run id and the registry outcome."""
    if result.get("not_chief"):
        return [f"MLflow            nothing logged by {result['worker']}: the chief logs the "
                "run and registers the model"]
    lines = [f"MLflow run id     {result['run_id']}"]
    if "trials" in result:
        params = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else
                           f"{key}={value}" for key, value in result["best_params"].items())
        lines += [f"sweep             {result['trials']} trials; best (validation accuracy "
                  f"{result['model_val_accuracy']:.4f}): run {result['trial_run_id']}",
                  f"best parameters   {params}"]
    if result.get("registered_version"):
        status = "champion" if result["champion"] else "not champion"
        lines.append(f"registered        version {result['registered_version']} "
                     f"({status}: {result['promotion_reason']})")
    elif "promotion_reason" in result:
        lines.append(f"not registered    ({result['promotion_reason']})")
    return lines


def run_cli(parser: argparse.ArgumentParser, config_cls: type, run: Callable[[Any], dict],
            format_summary: Callable[[dict], str], argv: Sequence[str] | None,
            expected_errors: tuple[type[BaseException], ...],
            commands: Mapping[str, Callable[[list[str]], int]] | None = None) -> int:
    """A pipeline's entry point: `COMMAND ...` runs one of `commands` (e.g. predict,
    evaluate) on the remaining arguments; anything else parses training flags into
    `config_cls`, runs and prints the summary.

    Expected errors (and SetupError) print `error: ...` and exit 2; a multi-worker run that
    lost a worker (WorkerLost) prints `error: ...` and exits 75 (EX_TEMPFAIL). Ctrl-C and SIGTERM
    (pipelines.interrupts) both end the MLflow run KILLED; they exit 130 and 143.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = (commands or {}).get(argv[0]) if argv else None
    args = None if command else parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with handle_interrupts():
        try:
            if command:
                return command(argv[1:])
            result = run(config_from_args(config_cls, args))
        except (*expected_errors, SetupError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except WorkerLost as error:
            print(f"error: {error}", file=sys.stderr)
            return WORKER_LOST
        except KeyboardInterrupt as interrupt:
            terminated = isinstance(interrupt, Terminated)
            print(f"interrupted by {'SIGTERM' if terminated else 'Ctrl-C'}", file=sys.stderr)
            return exit_status(interrupt)
        finally:  # also when exit_process skips the interpreter's teardown (and atexit)
            for folder in THROWAWAY:
                remove_folder(folder)
    print(format_summary(result))
    return 0


def commands_epilog(prog: str, predict_usage: str) -> str:
    """The --help epilog that names a pipeline's other commands."""
    return (f"other commands: '{prog} predict {predict_usage}' labels inputs with the "
            f"champion (or --model-uri); '{prog} evaluate --data-dir DIR' evaluates a logged "
            "model on a folder; each has its own --help.")


def model_parser(prog: str, description: str, registered_model: str) -> argparse.ArgumentParser:
    """The options every command that uses a logged model shares."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model-uri", default=f"models:/{registered_model}@champion",
                        help="MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION, "
                        "runs:/RUN_ID/model)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="MLflow tracking URI; unset: the SQLite store in --store-dir "
                        "[env: MLFLOW_TRACKING_URI]")
    parser.add_argument("--store-dir", default="mlruns", help="local MLflow store")
    return parser


def print_predictions(names: Sequence[str], answer, failed: dict[int, str]) -> int:
    """Prints `name<TAB>label<TAB>probability` per usable input and `name: error` (stderr)
    per failed one.

    Args:
        names: How to name each input (file path, or the review's first words).
        answer: The served model's DataFrame for the inputs that were sent, in order.
        failed: Input index -> error, for inputs that never reached the model.

    Returns:
        0 when every input got a label, 1 otherwise.
    """
    rows = iter(answer.to_dict("records"))
    status = 0
    for index, name in enumerate(names):
        row = None if index in failed else next(rows)
        error = failed.get(index) or (row or {}).get("error")
        if error:
            print(f"{name}: error: {error}", file=sys.stderr)
            status = 1
            continue
        probability = row[f"probability_{row['label']}"]
        print(f"{name}\t{row['label']}\t{probability:.4f}")
    return status


def short_name(text: str, width: int = 40) -> str:
    """A review shortened to one line, to name it in output."""
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[:width - 3] + "..."


EVALUATE_CHUNK = 256


def evaluation_parser(prog: str, description: str, registered_model: str, experiment: str
                      ) -> argparse.ArgumentParser:
    """Options of an `evaluate` command: the model, the store, the folder and the run."""
    parser = model_parser(prog, description, registered_model)
    parser.add_argument("--data-dir", required=True, help="folder to evaluate on")
    parser.add_argument("--experiment", default=experiment,
                        help="MLflow experiment of the evaluation run")
    parser.add_argument("--run-name", help="MLflow run name of the evaluation run")
    return parser


def evaluate_served(args: argparse.Namespace, *, pipeline: str, inputs, truth: Sequence[str],
                    names: Sequence[str], source: str, digest: str, dataset_name: str) -> dict:
    """Evaluates a logged model on labelled raw inputs through its served (pyfunc) path and
    records an evaluation run linked to the model (and its registered version).

    Args:
        args: Parsed `evaluation_parser` options.
        pipeline: Pipeline name for the run's tags.
        inputs: DataFrame of model inputs, one row per example.
        truth: True label name per row.
        names: How to name each row in errors (its file).
        source: Folder evaluated, for lineage.
        digest: Content digest of the evaluated examples.
        dataset_name: Dataset name shown in the UI.

    Returns:
        Metrics, labels, confusion matrix, failed inputs, run id and evaluated version.

    Raises:
        ValueError: A true label is not one of the model's classes.
    """

    from pipelines import tracking

    model = tracking.load_served_model(args.model_uri, args.tracking_uri, args.store_dir)
    columns = [name for name in model.metadata.get_output_schema().input_names()
               if name.startswith("probability_")]
    labels = tuple(name.removeprefix("probability_") for name in columns)
    unknown = sorted(set(truth) - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown} of {source} are not classes of the model "
                         f"({', '.join(labels)})")
    with tracking.tracked_run(args.experiment, tracking_uri=args.tracking_uri,
                              store_dir=args.store_dir, run_name=args.run_name,
                              tags={"pipeline": pipeline, "run_type": "evaluation"}) as run_id:
        answer = predict_in_groups(model, inputs)
        usable = answer["error"].isna().to_numpy()
        failed = [(names[i], answer.loc[i, "error"]) for i in np.flatnonzero(~usable)]
        y = np.asarray([labels.index(label) for label in truth], np.int32)[usable]
        data = PreparedData(labels, {}, {"test": y}, {"test": digest}, source, failed,
                            {"source": source, "model_uri": args.model_uri,
                             "failed_inputs": [{"path": p, "error": e} for p, e in failed]})
        tracking.log_dataset(dataset_name, source, data.digests, data.split_tags(),
                             data.summary)
        probabilities = answer.loc[usable, columns].to_numpy(np.float64)
        evaluation = log_evaluation(probabilities, data)
        tracking.log_metrics({"evaluated_examples": int(usable.sum()),
                              "failed_inputs": len(failed)})
        version = tracking.link_evaluation(
            args.model_uri, run_id,
            f"test_accuracy={evaluation.metrics['test_accuracy']:.4f} on {source}")
    return {"metrics": evaluation.metrics, "labels": labels, "confusion": evaluation.confusion,
            "failed": failed, "run_id": run_id, "version": version}


def predict_in_groups(model, inputs):
    """Predicts rows in chunks, each chunk holding rows that fill the same columns (a column
    of None in a chunk would fail the model's schema), and returns answers in input order."""
    import pandas as pd

    filled = inputs.notna()
    groups: dict[tuple, list[int]] = {}
    for index, row in enumerate(filled.itertuples(index=False)):
        groups.setdefault(tuple(row), []).append(index)
    parts = []
    for key, indices in groups.items():
        columns = [column for column, present in zip(inputs.columns, key, strict=True)
                   if present]
        if not columns:  # e.g. a file that could not be read
            parts.append(pd.DataFrame({"label": None, "error": "no input (unreadable file?)"},
                                      index=pd.Index(indices)))
            continue
        for start in range(0, len(indices), EVALUATE_CHUNK):
            chunk = indices[start:start + EVALUATE_CHUNK]
            rows = pd.DataFrame(inputs.iloc[chunk][columns].to_dict("records"))
            parts.append(model.predict(rows).set_index(pd.Index(chunk)))
    return pd.concat(parts).sort_index()


def print_evaluation(result: dict) -> int:
    """Prints accuracy, macro-F1 and the confusion matrix; failed inputs go to stderr."""
    for name, error in result["failed"]:
        print(f"{name}: error: {error}", file=sys.stderr)
    metrics = result["metrics"]
    print(f"accuracy          {metrics['test_accuracy']:.4f}")
    print(f"macro-F1          {metrics['test_macro_f1']:.4f}")
    if "test_roc_auc" in metrics:
        print(f"ROC-AUC           {metrics['test_roc_auc']:.4f}")
    print(f"failed inputs     {len(result['failed'])}")
    print(f"MLflow run id     {result['run_id']}"
          + (f" (evaluates version {result['version']})" if result["version"] else ""))
    labels = result["labels"]
    width = max(*(len(label) for label in labels), len(str(result["confusion"].max()))) + 2
    print("confusion matrix (rows: true, columns: predicted)")
    print(" " * width + "".join(f"{label:>{width}}" for label in labels))
    for label, row in zip(labels, result["confusion"], strict=True):
        print(f"{label:>{width}}" + "".join(f"{count:>{width}}" for count in row))
    return 0
