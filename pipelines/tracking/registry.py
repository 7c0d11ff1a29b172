"""The model registry: registering versions, the queue in which each gets its champion decision
(`pipelines.tracking.champion`), and linking evaluation runs to the versions they evaluated."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.errors import ModelError
from pipelines.tracking import leases
from pipelines.tracking.champion import (
    CHAMPION,
    CLASSES,
    champion_decision,
    current_champion,
    model_labels,
    version_classes,
)
from pipelines.tracking.runs import logged_text, set_tags

log = logging.getLogger(__name__)

GONE = "RESOURCE_DOES_NOT_EXIST"  # MLflow's error code for a model, version or run not there

@dataclass(frozen=True)
class Promotion:
    """Outcome of registering a model version."""

    version: str | None
    promoted: bool
    reason: str


def version_exists(client: MlflowClient, name: str, number: str) -> bool:
    """Whether version `number` of registered model `name` is still there."""
    try:
        client.get_model_version(name, number)
    except MlflowException as error:
        if error.error_code != GONE:
            raise
        return False
    return True


PROMOTION_STATE = "promotion_state"  # version tag: where the version is in the queue
# pending: waiting for its turn; deciding: holding the turn (reading and moving the champion);
# decided; interrupted: its process stopped before deciding (`--resume` queues it again)
PENDING, DECIDING, DECIDED, INTERRUPTED = "pending", "deciding", "decided", "interrupted"
REGISTERED_BY = "registered_by_run"  # version tag: the run that registered it (one per run)
# a pending or deciding version whose run holds no lease (`leases`) and is older than this
# is taken for one left by a dead process
STALE_PENDING_SECONDS = 300
QUEUE_POLL_SECONDS = 0.2


def may_still_decide(client: MlflowClient, version: Any) -> bool:
    """Whether the process of a pending or deciding `version` may still be alive: the run
    that registered it is RUNNING and its lease says its process is alive (on this host: the
    pid with its start time; on another, a heartbeat within `leases.LEASE_SECONDS`). A run
    that ended, or whose process is gone, will not decide it (until that run is resumed,
    which marks it pending again), nor will a run deleted for good. A run without a lease is
    judged by the version's age.

    Raises:
        MlflowException: The store could not tell (unreachable, or refused the request).
    """
    run_id = version.tags.get(REGISTERED_BY)
    try:
        run = client.get_run(run_id) if run_id else None
    except MlflowException as error:
        if error.error_code == GONE:  # the run was deleted for good
            return False
        raise  # an unreachable store is no answer: deciding out of order is what this prevents
    if run is None or leases.HOST not in run.data.tags:
        return time.time() * 1000 - version.creation_timestamp < STALE_PENDING_SECONDS * 1000
    return run.info.status == "RUNNING" and leases.holder_alive(run_id, run.data.tags)


def ahead_in_queue(client: MlflowClient, name: str, version: int) -> list:
    """The versions of `name` that `version` must wait for, while their process may still
    decide them: any other version deciding, and any lower-numbered version pending."""
    return [v for v in versions_of(client, name) if int(v.version) != version
            and (v.tags.get(PROMOTION_STATE) == DECIDING
                 or (int(v.version) < version and v.tags.get(PROMOTION_STATE) == PENDING))
            and may_still_decide(client, v)]


def take_turn(client: MlflowClient, name: str, version: int) -> None:
    """Waits for `version`'s turn to decide its promotion and holds it (tagged `deciding`)
    until its state is set `decided` or `interrupted`.

    The store numbers a registered model's versions atomically, so a version number is a
    ticket: promotions are decided one at a time, in version order, even by processes on
    different machines sharing one tracking server. A version waits while a lower-numbered
    one is pending or any other is deciding (a resumed run's version, queued again, has a
    lower number than versions already deciding). It then announces `deciding` and reads the
    queue again: a version that was queued or announced in between sends it back to pending
    to wait again, so two versions never decide at once (of two that announce together, at
    least one sees the other; the lower-numbered goes first). A version whose process is gone
    (`may_still_decide`) is no longer waited for.
    """
    number = str(version)
    while True:
        while ahead := ahead_in_queue(client, name, version):
            log.info("waiting for the champion decision of %s v%s", name,
                     ", v".join(str(v.version) for v in ahead))
            time.sleep(QUEUE_POLL_SECONDS)
        client.set_model_version_tag(name, number, PROMOTION_STATE, DECIDING)
        if not ahead_in_queue(client, name, version):
            return
        client.set_model_version_tag(name, number, PROMOTION_STATE, PENDING)


def register_and_promote(
    model_uri: str,
    name: str,
    *,
    metrics: Mapping[str, float],
    test_digest: str,
    data_digest: str,
    classes: Sequence[str] | None = None,
    only_if_champion: bool = False,
    model_description: str = "",
) -> Promotion:
    """Registers `model_uri` under `name`, tags it and moves `champion` to it if it wins.

    The version is registered first, marked pending: its number is its place in the queue of
    promotions (`take_turn`). Once the versions before it are decided, the
    current champion is read, compared and, if beaten, replaced, so two runs finishing at the
    same time never leave the worse model as champion. The version is tagged with its test
    metrics and dataset digests; the run records the decision and its reason.

    Registration is idempotent per run: a run that registered a version already (and was
    then stopped, and resumed) gets that version and its decision back, or, when it stopped
    before deciding, the decision is made for that version; no second version is made.

    Args:
        model_uri: The logged model (`models:/<model id>` or `runs:/...`).
        name: The registered model to add a version to.
        metrics: The run's test metrics; `test_accuracy` decides the promotion.
        test_digest: Digest of the test split: only a champion of the same test data is
            compared, one of other test data is never replaced.
        data_digest: Digest of every split, tagged on the version.
        classes: The model's classes, in output order, tagged on the version (None: read from
            its signature); only a champion of the same classes is compared.
        only_if_champion: Keep the model registered only if it becomes champion (for
            baselines, which should not crowd the registry): otherwise its queued version is
            deleted again.
        model_description: The registered model's description, set when given and the
            version becomes champion (so it describes the model its alias serves); the
            version's own describes its metrics, data and the champion decision.

    Returns:
        The outcome; `version` is None when the model was not kept registered.
    """
    client = MlflowClient()
    run_id = mlflow.active_run().info.run_id
    earlier = registered_by(client, name, run_id)
    if earlier is not None and earlier.tags.get(PROMOTION_STATE) == DECIDED:
        return decided_promotion(client, earlier)
    classes = tuple(model_labels(model_uri) if classes is None else classes)
    number = queued_version(client, name, run_id, earlier, model_uri, tags={
        key: repr(float(value)) for key, value in metrics.items()
        if key in ("test_accuracy", "test_macro_f1", "test_roc_auc")
    } | {"test_data_digest": test_digest, "data_digest": data_digest,
         CLASSES: json.dumps(classes)})
    kept, state = True, INTERRUPTED
    try:
        take_turn(client, name, int(number))
        champion = current_champion(client, name)
        if champion is not None and str(champion.version) == number:
            # a resumed decision whose first process set the alias, then stopped
            promoted, reason = True, "champion already: its alias was set before the run stopped"
        else:
            promoted, reason = champion_decision(
                metrics["test_accuracy"], test_digest, champion, classes,
                lambda: version_classes(name, champion))
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
        client.update_model_version(name, number, description=version_description(
            metrics, data_digest, promoted, reason))
        if model_description and promoted:
            client.update_registered_model(name, description=model_description)
        state = DECIDED
    except MlflowException as error:
        if error.error_code != GONE or version_exists(client, name, number):
            raise  # what is missing is not this version (the champion's model, say)
        kept = False  # nothing is left to mark
        raise ModelError(f"{name} v{number} was deleted (or the registered model {name}) "
                         f"before its champion decision; the run's model is logged at "
                         f"{model_uri}: register it again (mlflow.register_model)") from None
    finally:  # also on failure, so that later promotions do not wait for this one (a version
        # left undecided is decided when its run is resumed)
        if kept:
            client.set_model_version_tag(name, number, PROMOTION_STATE, state)
    set_tags({"registered_version": number, "champion": promoted, "promotion_reason": reason})
    log.info("registered %s v%s; champion: %s (%s)", name, number, promoted, reason)
    return Promotion(number, promoted, reason)


def queued_version(client: MlflowClient, name: str, run_id: str, earlier: Any | None,
                   model_uri: str, tags: Mapping[str, str]) -> str:
    """The number of run `run_id`'s version of `name`, pending its decision: `earlier`, the
    version it registered before it was stopped, queued again; else `model_uri` registered
    anew with `tags` (its test metrics and data digests)."""
    if earlier is not None:  # registered, then stopped before its decision: decide it now
        number = str(earlier.version)
        log.info("run %s already registered %s v%s; deciding its promotion", run_id, name,
                 number)
        # in the queue again: later versions wait for its decision
        client.set_model_version_tag(name, number, PROMOTION_STATE, PENDING)
        return number
    version = mlflow.register_model(model_uri, name, tags={
        **tags, PROMOTION_STATE: PENDING, REGISTERED_BY: run_id})
    return str(version.version)


def version_description(metrics: Mapping[str, float], data_digest: str, promoted: bool,
                        reason: str) -> str:
    """A version's description (Markdown): its test metrics, data and the champion decision."""
    shown = {key: f"{metrics[key]:.4f}" for key in
             ("test_accuracy", "test_macro_f1", "test_roc_auc", "recurrent_test_accuracy",
              "ngram_test_accuracy", "recurrent_blend_weight") if key in metrics}
    return "  \n".join([
        ", ".join(f"{key} **{value}**" for key, value in shown.items()),
        f"data digest `{data_digest}`",
        ("**champion**: " if promoted else "not champion: ") + reason])


def registered_by(client: MlflowClient, name: str, run_id: str) -> Any | None:
    """The version of `name` that run `run_id` registered, or None."""
    mine = [version for version in versions_of(client, name)
            if version.tags.get(REGISTERED_BY) == run_id]
    return min(mine, key=lambda version: int(version.version)) if mine else None


def decided_promotion(client: MlflowClient, version: Any) -> Promotion:
    """The outcome recorded for an already decided version (tagged on the run again)."""
    champion = current_champion(client, version.name)
    promoted = champion is not None and str(champion.version) == str(version.version)
    reason = version.tags.get("promotion", "decided earlier")
    set_tags({"registered_version": version.version, "champion": promoted,
              "promotion_reason": reason})
    log.info("run already registered %s v%s (champion: %s); not registering again",
             version.name, version.version, promoted)
    return Promotion(str(version.version), promoted, reason)


def versions_of(client: MlflowClient, name: str) -> list:
    """Every version of registered model `name` (a name may hold either quote)."""
    quote = '"' if "'" in name else "'"
    return client.search_model_versions(f"name={quote}{name}{quote}")


def models_uri_parts(model_uri: str) -> tuple[str, str | None, str]:
    """A `models:/` URI's model name, alias (None without `@`) and what follows the name's
    `/` (a version, `latest`, or "")."""
    name, _, rest = model_uri.removeprefix("models:/").partition("/")
    name, at, alias = name.partition("@")
    return name, alias if at else None, rest


def model_version_of(model_uri: str) -> Any | None:
    """The registered version a `models:/NAME@ALIAS`, `models:/NAME/VERSION` or
    `models:/NAME/latest` URI points at now; None for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    name, alias, rest = models_uri_parts(model_uri)
    client = MlflowClient()
    if alias is not None:
        return client.get_model_version_by_alias(name, alias)
    if rest.isdigit():
        return client.get_model_version(name, rest)
    if rest == "latest":
        versions = versions_of(client, name)
        if not versions:
            raise MlflowException(f"Registered Model with name={name} has no versions")
        return max(versions, key=lambda version: int(version.version))
    return None


def link_evaluation(model_uri: str, version: Any | None, run_id: str, summary: str
                    ) -> str | None:
    """Tags the evaluation run with the model it evaluated and, for a registered version (as
    `model_version_of` resolved `model_uri`), the version with `evaluation.<run_id>`; returns
    the version number (None if unregistered)."""
    tags = {"evaluated_model_uri": model_uri}
    if version is not None:
        try:
            MlflowClient().set_model_version_tag(version.name, version.version,
                                                 f"evaluation.{run_id}", logged_text(summary))
        except MlflowException as error:
            if error.error_code != GONE:
                raise
            log.warning("%s v%s was deleted while it was evaluated: the evaluation run %s "
                        "keeps the metrics, the version is gone", version.name,
                        version.version, run_id)
        tags |= {"evaluated_model": version.name, "evaluated_version": version.version,
                 "evaluated_model_run_id": version.run_id}
    set_tags(tags)
    return None if version is None else str(version.version)
