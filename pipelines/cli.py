"""The command line of a task, from its spec (`TaskCommands`): training with one flag per
option, `predict` and `evaluate` on a logged model, the summary a run prints, exit statuses.

Exit statuses: 0 done; 1 `predict` could not label every input, or `listen` could not read
every file; 2 `error: ...` (bad options or
data, a run that cannot start); 75 a multi-worker run lost a worker (sysexits' EX_TEMPFAIL);
130 Ctrl-C and 143 SIGTERM, which end the MLflow run KILLED (pipelines.interrupts).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from features.errors import shown_name
from pipelines import distribute, evaluation, lifecycle, tracking
from pipelines.config import TaskConfig, config_from_args, config_parser
from pipelines.errors import PipelineError, SetupError, Terminated, WorkerLost
from pipelines.interrupts import WORKER_LOST, exit_status, handle_interrupts
from pipelines.tracking.stores import RedactingFilter, redact

log = logging.getLogger(__name__)

# errors a run reports as `error: ...` (exit 2), with no traceback: the project's own, whose
# messages name what to fix; any other exception is a bug and shows its traceback (the run,
# if one is open, ends FAILED)
EXPECTED_ERRORS = (PipelineError,)
BROKEN_PIPE = 141  # a shell's status for a command whose output pipe closed (128 + SIGPIPE)


@dataclass(frozen=True)
class Inputs:
    """Raw inputs for a served model, one row each, and how to name them in the output.

    Attributes:
        frame: The model's input columns, one row per usable input.
        names: How to name every input, usable or not, in order.
        failed: Input index -> error, for inputs that never reached the model.
    """

    frame: pd.DataFrame
    names: list[str]
    failed: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """A command on a logged model: its usage, its --help description, and `read(parser,
    argv)`, which adds the command's own arguments to the shared ones, parses `argv` and reads
    the inputs (`Inputs` for predict, `LabelledInputs` for evaluate)."""

    usage: str
    description: str
    read: Callable[[argparse.ArgumentParser, list[str]], tuple[argparse.Namespace, object]]


@dataclass(frozen=True)
class TaskCommands:
    """What a task's command line is made of.

    Attributes:
        pipeline: The task's name ("speech": `python -m pipelines.speech`).
        description: What training does (--help).
        config: The task's config class; its options are the training flags.
        run: Trains, tracks and registers one model (`run(config) -> result`).
        summary: The task's own summary lines of a result (the registry lines follow).
        dataset: Dataset name of evaluation runs (`<dataset>-evaluation`).
        predict: `predict`: label inputs with a logged model.
        evaluate: `evaluate`: score a logged model on a labelled folder.
        commands: The task's other commands by name (speech: `listen`, `export`), each
            `command(task, argv) -> exit status`.
    """

    pipeline: str
    description: str
    config: type[TaskConfig]
    run: Callable[[TaskConfig], dict]
    summary: Callable[[dict], list[str]]
    dataset: str
    predict: Command
    evaluate: Command
    commands: Mapping[str, Callable[[TaskCommands, list[str]], int]] = field(
        default_factory=dict)

    @property
    def prog(self) -> str:
        return f"python -m pipelines.{self.pipeline}"


def main(task: TaskCommands, argv: Sequence[str] | None = None) -> int:
    """A task's entry point: `predict ...`, `evaluate ...` and the task's own commands
    (`task.commands`) run on the remaining arguments; anything else parses training flags,
    runs and prints the summary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"predict": predict, "evaluate": evaluate, **task.commands}
    command = commands.get(argv[0]) if argv else None
    if argv and not command and not argv[0].startswith("-"):  # training takes flags only
        training_parser(task).error(f"unknown command {argv[0]!r}: the commands are "
                                    f"{', '.join(commands)}; training takes --flags only")
    args = None if command else training_parser(task).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("gensim").setLevel(logging.WARNING)  # its INFO lines narrate every step
    # TensorFlow gave its logger a handler of its own on import (the root had none then): its
    # lines go through the root's, once, and without INFO ("Assets written to" a temporary
    # folder, for each model it saves)
    logging.getLogger("tensorflow").handlers.clear()
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    # MLflow's progress bars for the files it fetches (a sweep's best model, runs:/ URIs) tell
    # a command's user nothing; MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true shows them
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for handler in logging.getLogger().handlers:  # no tracking URI password in any log line
        handler.addFilter(RedactingFilter())
    with handle_interrupts():
        try:
            if command:
                return command(task, argv[1:])
            result = task.run(config_from_args(task.config, args))
            print("\n".join([*task.summary(result), *registry_lines(result)]))
            return 0
        except BrokenPipeError:  # the reader of stdout is gone (`| head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return BROKEN_PIPE
        except EXPECTED_ERRORS as error:  # one line, whatever names it holds
            print(message_line(f"error: {redact(str(error))}"), file=sys.stderr)
            return 2
        except WorkerLost as error:
            print(message_line(f"error: {redact(str(error))}"), file=sys.stderr)
            return WORKER_LOST
        except KeyboardInterrupt as interrupt:
            terminated = isinstance(interrupt, Terminated)
            print(f"interrupted by {'SIGTERM' if terminated else 'Ctrl-C'}", file=sys.stderr)
            return exit_status(interrupt)
        finally:  # also when exit_process skips the interpreter's teardown (and atexit)
            distribute.remove_throwaway()


def training_parser(task: TaskCommands) -> argparse.ArgumentParser:
    """The training command's parser: one flag per option of the task's config."""
    epilog = (f"other commands: '{task.prog} predict {task.predict.usage}' labels inputs with "
              f"the champion (or --model-uri); '{task.prog} evaluate {task.evaluate.usage}' "
              "evaluates a logged model on a folder"
              + "".join(f"; '{task.prog} {name}'" for name in task.commands)
              + "; each has its own --help.")
    return config_parser(task.prog, task.description, task.config, epilog=epilog)


def model_parser(task: TaskCommands, command: str, description: str
                 ) -> argparse.ArgumentParser:
    """The options every command that uses a logged model shares."""
    parser = argparse.ArgumentParser(prog=f"{task.prog} {command}", description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = task.config().run
    parser.add_argument("--model-uri", default=f"models:/{defaults.registered_model}@champion",
                        type=not_empty, help="MLflow model URI (models:/NAME@ALIAS, "
                        "models:/NAME/VERSION, runs:/RUN_ID/model)")
    fields = task.config.option_fields()  # as training declares them
    for name in ("tracking_uri", "store_dir"):
        metadata = fields[name].field.metadata
        env = metadata.get("env")
        parser.add_argument(f"--{name.replace('_', '-')}", type=not_empty,
                            default=(os.environ.get(env) if env else None) or getattr(
                                defaults, name),
                            help=metadata["help"] + (f" [env: {env}]" if env else ""))
    return parser


def not_empty(value: str) -> str:
    """An option's value, refused when empty (a shell variable that was not set)."""
    if not value:
        raise argparse.ArgumentTypeError("is empty ('')")
    return value


def experiment_name(value: str) -> str:
    """An experiment name MLflow takes (its own rules), refused before any work."""
    refused = tracking.name_refusal(experiment=value)
    if refused:
        raise argparse.ArgumentTypeError(refused)
    return value


def require_file_names(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """A usage error for an empty FILE argument (a shell variable that was not set), which
    would otherwise name the current folder."""
    if any(not name for name in names):
        parser.error("a FILE argument is empty ('')")


def require_writable_folder(parser: argparse.ArgumentParser, folder: Path, purpose: str
                            ) -> None:
    """A usage error, before any work, for an output folder this process cannot write (the
    project's probe file: `lifecycle.require_writable_dir`)."""
    try:
        lifecycle.require_writable_dir(folder, purpose)
    except SetupError as error:
        parser.error(str(error))


def predict(task: TaskCommands, argv: list[str]) -> int:
    """`predict ...`: label and probability per input from a logged model (the champion by
    default); 1 when an input could not be labelled."""
    args, inputs = task.predict.read(model_parser(task, "predict", task.predict.description),
                                     argv)
    model = tracking.load_served_model(args.model_uri, args.tracking_uri, args.store_dir,
                                       sends=list(inputs.frame.columns))
    answer = (evaluation.predict_in_groups(model, inputs.frame) if len(inputs.frame)
              else pd.DataFrame(columns=["label", "error"]))
    return print_predictions(inputs.names, answer, inputs.failed)


def evaluate(task: TaskCommands, argv: list[str]) -> int:
    """`evaluate --data-dir DIR ...`: accuracy, macro-F1 and confusion matrix of a logged model
    on a folder, recorded as an evaluation run linked to the model version."""
    parser = model_parser(task, "evaluate", task.evaluate.description)
    env = task.config.option_fields()["data_dir"].field.metadata["env"]  # as training reads it
    from_env = os.environ.get(env) or None
    parser.add_argument("--data-dir", default=from_env, required=from_env is None,
                        help=f"folder to evaluate on [env: {env}]")
    parser.add_argument("--experiment", default=task.config().run.experiment,
                        type=experiment_name, help="MLflow experiment of the evaluation run")
    parser.add_argument("--run-name", help="MLflow run name of the evaluation run")
    args, labelled = task.evaluate.read(parser, argv)
    log.info("evaluating %s on %d examples (%s)", args.model_uri, len(labelled.truth),
             labelled.layout)
    result = evaluation.evaluate_served(args, labelled, pipeline=task.pipeline,
                                        dataset_name=f"{task.dataset}-evaluation")
    return print_evaluation(result)


def print_predictions(names: Sequence[str], answer: pd.DataFrame, failed: dict[int, str]
                      ) -> int:
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
            print(message_line(f"{name}: error: {error}"), file=sys.stderr)
            status = 1
            continue
        probability = row[f"probability_{row['label']}"]
        print(f"{tsv_field(name)}\t{tsv_field(row['label'])}\t{probability:.4f}")
    return status


def print_evaluation(result: dict) -> int:
    """Prints accuracy, macro-F1 and the confusion matrix; failed inputs go to stderr."""
    for name, error in result["failed"]:
        print(message_line(f"{name}: error: {error}"), file=sys.stderr)
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


def registry_lines(result: dict) -> list[str]:
    """The summary lines every pipeline prints after its own: run id, sweep and registry."""
    if result.get("not_chief"):
        return [f"MLflow            nothing logged by {result['worker']}: the chief logs the "
                "run and registers the model"]
    lines = [f"MLflow run id     {result['run_id']}"]
    if "trials" in result:
        params = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else
                           f"{key}={value}" for key, value in result["best_params"].items())
        trials, failed = result["trials"], result["failed_trials"]
        count = f"{trials} of {trials + failed} trials finished" if failed else f"{trials} trials"
        lines += [f"sweep             {count}; best (validation accuracy "
                  f"{result['model_val_accuracy']:.4f}): run {result['trial_run_id']}",
                  f"best parameters   {params}"]
    if result.get("registered_version"):
        status = "the new champion" if result["champion"] else "not champion"
        lines.append(f"registered        version {result['registered_version']} "
                     f"({status}: {result['promotion_reason']})")
    elif "promotion_reason" in result:
        reason = result["promotion_reason"].removeprefix("not registered: ")
        lines.append(f"not registered    ({reason})")
    return lines


# tab, newline and carriage return as `\\t`, `\\n`, `\\r`; the other control characters (NUL, a
# terminal's ESC) as `\\xNN`
CONTROL_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"} | {
    chr(code): f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))
    if chr(code) not in "\t\n\r"}
TSV_ESCAPES = str.maketrans({"\\": "\\\\"} | CONTROL_ESCAPES)
LINE_ESCAPES = str.maketrans(CONTROL_ESCAPES)


def tsv_field(text: str) -> str:
    """`text` as one field of a tab-separated line: backslash, tab, newline and carriage
    return written as `\\\\`, `\\t`, `\\n`, `\\r` (as PostgreSQL's COPY text format does), so a
    file name holding them cannot split a line or a field, the other control characters as
    `\\xNN` (a NUL, or a terminal's escape sequence, is not printed as is); a file name's bytes
    that are not UTF-8 as `\\xNN` (standard output could not write them)."""
    return shown_name(text.translate(TSV_ESCAPES))


def message_line(text: str) -> str:
    """A message naming an input (`name: error: ...`) as one line of standard error: its
    control characters escaped as `tsv_field` writes them (a file name's newline cannot split
    the line, nor its escape sequence drive the terminal), bytes that are not UTF-8 as
    `\\xNN`."""
    return shown_name(text.translate(LINE_ESCAPES))
