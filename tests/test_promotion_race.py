"""Two processes promoting at the same moment against one store: the better model wins."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.tracking.registry import DECIDED, PROMOTION_STATE
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
