"""Local SQLite stores: the folder a `--store-dir` names, whatever its name, and one new store
opened by several processes at once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import mlflow
from mlflow.store.db.utils import _get_latest_schema_revision

from pipelines import tracking
from pipelines.tracking import stores

REPO = Path(__file__).resolve().parents[1]


def test_a_store_folder_named_with_a_question_mark_or_percent_is_that_folder(tmp_path: Path):
    (tmp_path / "a").write_text("the user's own")  # what a?b's store would have overwritten
    for name in ("a?b", "c%20d", "e#f g"):
        store = tmp_path / name / "mlruns"
        with tracking.open_run("exp", tracking_uri=None, store_dir=store):
            mlflow.log_param("folder", name)
        assert (store / "mlflow.db").is_file()
        assert stores.sqlite_database(tracking.local_store_uri(store)) == (
            store.resolve() / "mlflow.db")
    assert (tmp_path / "a").read_text() == "the user's own"
    assert not (tmp_path / "c d").exists()


CONNECT_WHEN_TOLD = """
import importlib.util, pathlib, sys, time
spec = importlib.util.spec_from_file_location("stores", "pipelines/tracking/stores.py")
stores = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stores)  # MLflow without TensorFlow: the processes start together
folder = pathlib.Path(sys.argv[1])
(folder / f"ready-{sys.argv[2]}").touch()
while not (folder / "go").exists():
    time.sleep(0.005)
stores.connect(None, folder / "mlruns")
stores.mlflow.MlflowClient().search_experiments(max_results=1)  # what a run does next
"""


def test_processes_making_one_new_store_at_once_all_get_it(tmp_path: Path):
    """MLflow's migration of one new SQLite file by two processes at once fails in both
    (duplicate columns, alembic's tables): the first makes it, the others wait for it."""
    workers = [subprocess.Popen(  # a real migration each: this process's copying is not theirs
        [sys.executable, "-c", CONNECT_WHEN_TOLD, str(tmp_path), str(n)], cwd=REPO,
        stderr=subprocess.PIPE, text=True) for n in range(3)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    errors = [worker.communicate(timeout=120)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0], errors
    with closing(sqlite3.connect(tmp_path / "mlruns" / "mlflow.db")) as database:
        [(revision,)] = database.execute("SELECT version_num FROM alembic_version").fetchall()
    assert revision == _get_latest_schema_revision()
