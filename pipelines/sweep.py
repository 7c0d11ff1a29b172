"""Hyper-parameter sweeps: Optuna trials as nested MLflow runs under one parent run.

Each trial is an ordinary pipeline run (its own MLflow run, config, curves, plots and model)
nested under the sweep's parent run, with registration off. Trials are scored by validation
accuracy, never by test accuracy, so the test split stays an unbiased estimate; the best
trial's model then goes through the same champion rule as a single run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import optuna
import optuna.distributions as dists

from pipelines import descriptions, lifecycle, tracking
from pipelines.config import TaskConfig
from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

OBJECTIVE = "model_val_accuracy"  # validation accuracy of the model a run keeps


def describe(distribution) -> str:
    """A short readable form of an Optuna distribution, for the run's parameters."""
    if isinstance(distribution, dists.CategoricalDistribution):
        return "one of " + ", ".join(map(str, distribution.choices))
    scale = " (log)" if distribution.log else ""
    step = f" step {distribution.step}" if getattr(distribution, "step", None) else ""
    return f"{distribution.low} to {distribution.high}{step}{scale}"


def run_sweep(config: TaskConfig, run_one: Callable[[Any], dict], space: Mapping[str, Any],
              pipeline: str) -> dict:
    """Runs `--sweep` trials of `space` with Optuna's TPE sampler (seeded by `--seed`), each as
    `run_one(trial_config)` nested under one parent MLflow run.

    The parent run holds the search space (parameters `space.<name>` and
    `sweep/search_space.json`), one `trial_val_accuracy`/`trial_test_accuracy` point per
    trial, the trials table `sweep/trials.json`, and the best trial's parameters; the best
    trial's model is registered through the champion rule (unless `--no-register`).

    Args:
        config: The pipeline config; the trials override the options named in `space`.
        run_one: The pipeline's single-run function (opens its own, nested, MLflow run).
        space: Option name -> optuna distribution.
        pipeline: Pipeline name, for the parent run's tag.

    Returns:
        The best trial's result plus the parent run id, the trial count and the best
        parameters, and the registration outcome.

    Raises:
        ValueError: `space` names an option the config does not have, or every trial failed.
    """
    unknown = sorted(set(space) - set(config.options()))
    if unknown:
        raise ConfigError(f"search space names unknown options: {', '.join(unknown)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=config.optim.seed))
    overridden = config.changed_flags(type(config)().options(), names=space)
    if overridden:
        log.warning("--sweep searches %s: %s not used", ", ".join(space), ", ".join(overridden))
    parent_name = descriptions.run_name(config, f"{pipeline}-sweep", swept=space)
    with lifecycle.tracked_run(config.replace(run_name=parent_name),
                               f"{pipeline}-sweep") as parent:
        log_space(config, space)
        results = run_trials(study, config, run_one, space, pipeline)
        chosen = log_trials(study, results)
        summary = dict(chosen, trial_run_id=chosen["run_id"], trials=len(results),
                       failed_trials=config.run.sweep - len(results),
                       best_params=study.best_trial.params)
        metrics = {key: value for key, value in chosen.items() if key.startswith("test_")
                   and isinstance(value, float)}
        return parent.result(summary | parent.register(
            chosen["model_uri"], metrics, test_digest=chosen["test_data_digest"],
            data_digest=chosen["data_digest"]))


def log_space(config: TaskConfig, space: Mapping[str, Any]) -> None:
    """Logs on the sweep's run the fixed part of the config (the searched options are
    `space.*`, and the best trial's `best.*`) and the search space."""
    tracking.log_params({name: value for name, value in config.options().items()
                         if name not in space})
    tracking.log_params({f"space.{name}": describe(dist) for name, dist in space.items()})
    tracking.log_dict({name: json.loads(dists.distribution_to_json(dist))
                       for name, dist in space.items()}, "sweep/search_space.json")


def run_trials(study: optuna.Study, config: TaskConfig, run_one: Callable[[Any], dict],
               space: Mapping[str, Any], pipeline: str) -> dict[int, dict]:
    """Runs `--sweep` trials, each config asked of the study and told its validation
    accuracy (logged per trial on the sweep's run); a trial whose options do not train
    (ConfigError) fails alone.

    Returns:
        Trial number -> result of each trial that finished.

    Raises:
        ConfigError: Every trial failed (the last one's error named).
    """
    results: dict[int, dict] = {}
    failure = None
    for number in range(config.run.sweep):
        trial = study.ask(dict(space))
        log.info("trial %d (%d of %d): %s", number, number + 1, config.run.sweep, trial.params)
        try:  # the trial's options are checked together (learning rate x weight decay)
            trial_config = config.replace(**trial.params, sweep=0, register=False,
                                          run_name=None)
            result = run_one(trial_config.replace(run_name=descriptions.trial_run_name(
                config, trial_config, pipeline, number)))
        except ConfigError as error:  # an unusable combination fails its trial only
            failure = error
            log.warning("trial %d failed: %s", number, error)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        results[number] = result
        study.tell(trial, result[OBJECTIVE])
        tracking.log_metrics({"trial_val_accuracy": result[OBJECTIVE],
                              "trial_test_accuracy": result["test_accuracy"]}, step=number)
    if not results:
        raise ConfigError(f"all {config.run.sweep} trials failed; the last: {failure}")
    return results


def log_trials(study: optuna.Study, results: Mapping[int, dict]) -> dict:
    """Logs the trials table and the best trial (Optuna's: the first of any tied for the
    highest validation accuracy) on the sweep's run; returns the best trial's result."""
    table = study.trials_dataframe(attrs=("number", "value", "params", "state", "duration"))
    table["run_id"] = table["number"].map(lambda n: results.get(n, {}).get("run_id"))
    table["duration"] = table["duration"].dt.total_seconds()
    table["test_accuracy"] = table["number"].map(
        lambda n: results.get(n, {}).get("test_accuracy"))
    tracking.log_table(table.rename(columns={"value": "val_accuracy"}), "sweep/trials.json")
    best = study.best_trial
    chosen = results[best.number]
    tracking.log_params({f"best.{name}": value for name, value in best.params.items()})
    tracking.set_tags({"best_trial": best.number, "best_trial_run_id": chosen["run_id"]})
    tracking.log_metrics({"best_val_accuracy": best.value,
                          "best_test_accuracy": chosen["test_accuracy"]})
    return chosen
