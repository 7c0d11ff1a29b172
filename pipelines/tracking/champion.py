"""The champion rule: which registered version holds the alias `champion`, and whether a new
version beats it (strictly better test accuracy on the same test data, with the same classes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
CLASSES = "classes"  # version tag: the model's classes in output order (JSON)


def champion_decision(
    candidate_accuracy: float, test_digest: str, champion: Any | None,
    classes: tuple[str, ...], champion_classes: Callable[[], tuple[str, ...]]
) -> tuple[bool, str]:
    """The champion rule: promote only on strictly better test accuracy on the same test data,
    between models of the same classes (a test split without `_unknown_` examples is the same
    data for a model with that class and one without; the champion's classes are read only
    once its test data is known to be the same).

    The champion's accuracy is its version's `test_accuracy` tag, which holds the exact value
    (`repr`) or one of six decimals. The candidate is compared at the
    precision the champion's value was recorded with (`at_recorded_precision`), so an equal
    score never wins, however it rounds.
    """
    if champion is None:
        return True, "there was none before"
    champion_digest = champion.tags.get("test_data_digest")
    if champion_digest != test_digest:
        return False, (
            f"champion v{champion.version} was evaluated on different test data "
            f"(digest {champion_digest} vs {test_digest}); not comparable"
        )
    theirs = champion_classes()
    if classes != theirs:
        return False, (
            f"champion v{champion.version} has other classes "
            f"({class_difference(theirs, classes)}); not comparable: register this "
            "model under a --registered-model of its own to keep a champion of its classes"
        )
    recorded = champion.tags.get("test_accuracy", "nan")
    champion_accuracy = float(recorded)
    candidate = at_recorded_precision(candidate_accuracy, recorded)
    ours, theirs_shown = apart(candidate_accuracy, champion_accuracy,
                               tied=candidate == champion_accuracy)
    if candidate > champion_accuracy:
        return True, f"test accuracy {ours} beats champion v{champion.version}'s {theirs_shown}"
    verb = "ties" if candidate == champion_accuracy else "does not beat"
    return False, (f"test accuracy {ours} {verb} champion v{champion.version}'s "
                   f"{theirs_shown}")


def apart(first: float, second: float, tied: bool) -> tuple[str, str]:
    """Two accuracies at four decimals, or, unless `tied`, at as many more (up to eight) as
    tell them apart: one test clip more in 20,000 is 0.00005."""
    for places in range(4, 9):
        shown = f"{first:.{places}f}", f"{second:.{places}f}"
        if tied or shown[0] != shown[1]:
            break
    return shown


def class_difference(champion: tuple[str, ...], candidate: tuple[str, ...]) -> str:
    """How the candidate's classes differ from the champion's, in a few words."""
    missing = [label for label in champion if label not in candidate]
    extra = [label for label in candidate if label not in champion]
    parts = [f"{what} {', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''}"
             for what, labels in (("this model lacks", missing), ("this model adds", extra))
             if labels]
    return "; ".join(parts) or "in another order"


def model_labels(model_uri: str) -> tuple[str, ...]:
    """A logged classifier's class names, in output order (its signature's
    `probability_<label>` outputs)."""
    outputs = mlflow.models.get_model_info(model_uri).signature.outputs.input_names()
    return tuple(name.removeprefix("probability_") for name in outputs
                 if name.startswith("probability_"))


def version_classes(name: str, version: Any) -> tuple[str, ...]:
    """A registered version's classes: its CLASSES tag, or (a version registered without it)
    its model's signature."""
    tagged = version.tags.get(CLASSES)
    if tagged is not None:
        return tuple(json.loads(tagged))
    return model_labels(f"models:/{name}/{version.version}")


def at_recorded_precision(value: float, recorded: str) -> float:
    """`value` as precisely as `recorded` holds its value: a tag written as
    `f"{accuracy:.6f}"` (six decimals, no exponent) is met by the candidate rounded to six
    decimals; an exact (`repr`) value is met as is.
    (Accuracies on one test set of under a million examples differ by more than 1e-6, so the
    rounding never merges two different scores.)"""
    mantissa, dot, decimals = recorded.partition(".")
    six_decimals = dot and len(decimals) == 6 and decimals.isdigit() and mantissa.isdigit()
    return round(value, 6) if six_decimals else value


NO_SUCH_ALIAS = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")
# the error codes of MLflow's stores (and its server) for a missing alias or model


def current_champion(client: MlflowClient, name: str) -> Any | None:
    """The version holding the champion alias, or None when no version holds it.

    Raises:
        MlflowException: Any other failure, such as a tracking server that cannot be reached:
            a passing outage must not read as "no champion" (`champion_decision`) and
            promote a worse version.
    """
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if error.error_code in NO_SUCH_ALIAS:
            return None
        raise
