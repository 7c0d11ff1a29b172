"""Two runs logging the same data lineage at the same moment (runs of one data folder started
together): MLflow looks a dataset up and then inserts it, so the second insert of a new
dataset meets the first's row; both runs must log it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipelines import tracking

REPO = Path(__file__).resolve().parents[1]
DATASETS = 100

WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipelines import tracking

    store, barrier, me, other, count = sys.argv[1:6]
    with tracking.open_run("lineage", tracking_uri=None, store_dir=store, run_name=me):
        (Path(barrier) / me).touch()
        while not (Path(barrier) / other).exists():
            time.sleep(0.001)
        for index in range(int(count)):  # the same datasets, in the same order, as two runs
            tracking.log_dataset(f"data{index}", f"/data/{me}", {"train": f"digest{index}"},
                                 {"train": {"examples": "1"}}, {})
""")


def test_two_runs_logging_the_same_new_datasets_at_once_both_log_them(tmp_path: Path):
    store, barrier = tmp_path / "mlruns", tmp_path / "barrier"
    barrier.mkdir()
    tracking.connect(None, store)  # the store made once, before the two start
    workers = [subprocess.Popen(
        [sys.executable, "-c", WORKER, str(store), str(barrier), me, other, str(DATASETS)],
        cwd=REPO, stderr=subprocess.PIPE, text=True) for me, other in (("a", "b"), ("b", "a"))]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
    client = MlflowClient()
    experiment = client.get_experiment_by_name("lineage").experiment_id
    runs = client.search_runs([experiment])
    assert len(runs) == 2
    for run in runs:
        assert len(run.inputs.dataset_inputs) == DATASETS
        # one dataset of each name and digest, its source the first run's; each input names
        # the folder its own run read
        sources = {tag.value for i in run.inputs.dataset_inputs for tag in i.tags
                   if tag.key == "source"}
        assert sources == {f"/data/{run.info.run_name}"}, sources
