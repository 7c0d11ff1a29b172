"""Promotions decided one at a time: two processes promoting at the same moment against one
store (the better model wins), and the queue's turns when a resumed run's version is queued
again; a version deleted while another process uses it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.errors import ModelError
from pipelines.tracking import leases, registry
from pipelines.tracking.registry import DECIDED, DECIDING, PENDING, PROMOTION_STATE
from tests.test_tracking import log_tiny_model

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 4

WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import mlflow
    from pipelines import tracking

    store, barrier, me, other, run_id, model_uri = sys.argv[1:7]
    accuracies = [float(value) for value in sys.argv[7:]]
    tracking.connect(None, store)
    for round, accuracy in enumerate(accuracies):
        (Path(barrier) / f"{round}-{me}").touch()
        while not (Path(barrier) / f"{round}-{other}").exists():
            time.sleep(0.001)
        with mlflow.start_run(run_id=run_id):
            tracking.register_and_promote(
                model_uri, f"race-{round}", metrics={"test_accuracy": accuracy},
                test_digest="same-test-data", data_digest="same-data")
""")


def test_concurrent_promotions_leave_the_better_model_champion(tmp_path: Path):
    store = tmp_path / "mlruns"
    runs = {}
    for worker in ("a", "b"):
        with tracking.open_run("race", tracking_uri=None, store_dir=store) as run_id:
            runs[worker] = (run_id, log_tiny_model(tmp_path / worker))
    # worker a has the better model in even rounds, worker b in odd ones
    accuracies = {"a": [0.9 if r % 2 == 0 else 0.8 for r in range(ROUNDS)],
                  "b": [0.8 if r % 2 == 0 else 0.9 for r in range(ROUNDS)]}
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    workers = [subprocess.Popen(
        [sys.executable, "-c", WORKER, str(store), str(barrier), me, other, *runs[me],
         *map(str, accuracies[me])], cwd=REPO, stderr=subprocess.PIPE, text=True)
        for me, other in (("a", "b"), ("b", "a"))]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err

    tracking.connect(None, store)
    client = MlflowClient()
    for round in range(ROUNDS):
        versions = client.search_model_versions(f"name='race-{round}'")
        assert len(versions) == 2
        assert {v.tags[PROMOTION_STATE] for v in versions} == {DECIDED}
        champion = client.get_model_version_by_alias(f"race-{round}", "champion")
        assert champion.tags["test_accuracy"] == "0.9", f"round {round}"
        winner = "a" if round % 2 == 0 else "b"
        assert champion.run_id == runs[winner][0]
    assert mlflow.active_run() is None


def queued_versions(tmp_path: Path, states: list[str]) -> MlflowClient:
    """Versions 1, 2, ... of `model-q` in `states`, each registered by a RUNNING run whose
    lease is this (live) process's."""
    store = tmp_path / "mlruns"
    with tracking.open_run("queue", tracking_uri=None, store_dir=store) as run_id:
        model_uri = log_tiny_model(tmp_path / "model")
        experiment_id = mlflow.get_run(run_id).info.experiment_id
    client = MlflowClient()
    for state in states:
        holder = client.create_run(experiment_id, tags=leases.holder_tags()).info.run_id
        mlflow.register_model(model_uri, "model-q", tags={
            PROMOTION_STATE: state, registry.REGISTERED_BY: holder})
    return client


def state(client: MlflowClient, version: int) -> str:
    return client.get_model_version("model-q", str(version)).tags[PROMOTION_STATE]


def test_a_version_queued_again_waits_for_a_later_version_deciding(tmp_path: Path):
    """A resumed run's version, queued again, has a lower number than a version that is
    already deciding: it waits for that decision rather than deciding beside it."""
    client = queued_versions(tmp_path, [PENDING, DECIDING])
    turns = ThreadPoolExecutor(1)
    turn = turns.submit(registry.take_turn, client, "model-q", 1)
    with pytest.raises(TimeoutError):
        turn.result(timeout=1)  # v2 is still deciding
    assert state(client, 1) == PENDING
    client.set_model_version_tag("model-q", "2", PROMOTION_STATE, DECIDED)
    turn.result(timeout=60)
    turns.shutdown()
    assert state(client, 1) == DECIDING


def test_a_version_steps_back_when_an_earlier_one_is_queued_as_it_announces(tmp_path: Path):
    """A version queued again between a later version's wait and its announcement: the later
    one reads the queue again after announcing, steps back to pending and waits its turn."""
    client = queued_versions(tmp_path, ["interrupted", PENDING])
    set_tag = client.set_model_version_tag
    announced = []

    def resumed_meanwhile(name, version, key, value):
        if (version, value) == ("2", DECIDING) and not announced:
            set_tag(name, "1", PROMOTION_STATE, PENDING)  # its run resumed, queued again
        announced.append(value)
        set_tag(name, version, key, value)
    client.set_model_version_tag = resumed_meanwhile
    turns = ThreadPoolExecutor(1)
    turn = turns.submit(registry.take_turn, client, "model-q", 2)
    with pytest.raises(TimeoutError):
        turn.result(timeout=1)  # v1 goes first
    assert state(client, 2) == PENDING
    set_tag("model-q", "1", PROMOTION_STATE, DECIDED)
    turn.result(timeout=60)
    turns.shutdown()
    assert state(client, 2) == DECIDING
    assert announced == [DECIDING, PENDING, DECIDING]


def test_a_version_deleted_while_it_is_evaluated_leaves_the_evaluation_run_whole(
        tmp_path: Path, caplog):
    """evaluate resolves the version first and tags it last, after every prediction."""
    store = tmp_path / "mlruns"
    with tracking.open_run("exp", tracking_uri=None, store_dir=store):
        tracking.register_and_promote(log_tiny_model(tmp_path / "model"), "gone",
                                      metrics={"test_accuracy": 0.5}, test_digest="d",
                                      data_digest="d")
    version = tracking.model_version_of("models:/gone@champion")
    MlflowClient().delete_model_version("gone", version.version)
    with tracking.open_run("exp", tracking_uri=None, store_dir=store) as run_id:
        assert tracking.link_evaluation("models:/gone@champion", version, run_id,
                                        "test_accuracy=0.5") == "1"
    assert f"gone v1 was deleted while it was evaluated: the evaluation run {run_id}" in (
        caplog.text)
    assert tracking.run_tags(run_id)["evaluated_version"] == "1"


def test_a_registered_model_deleted_while_a_version_waits_its_turn_is_named(tmp_path: Path):
    client = queued_versions(tmp_path, [PENDING])  # v1 pending in a live process
    model_uri = log_tiny_model(tmp_path / "second")

    def register():
        with tracking.open_run("queue", tracking_uri=None, store_dir=tmp_path / "mlruns"):
            tracking.register_and_promote(model_uri, "model-q", metrics={"test_accuracy": 0.5},
                                          test_digest="d", data_digest="d")
    turns = ThreadPoolExecutor(1)
    turn = turns.submit(register)
    with pytest.raises(TimeoutError):
        turn.result(timeout=2)  # v2 waits for v1
    client.delete_registered_model("model-q")
    with pytest.raises(ModelError, match=f"model-q v2 was deleted \\(or the registered model "
                       f"model-q\\) before its champion decision; the run's model is logged at "
                       f"{model_uri}"):
        turn.result(timeout=60)
    turns.shutdown()
