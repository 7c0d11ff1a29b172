"""A shared tracking server: `mlflow server` on a real PostgreSQL backend, both on loopback."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines import sentiment, speech
from tests.processes import free_port, wait_until
from tests.test_speech_pipeline import small_args

pytestmark = pytest.mark.slow


def postgres_bin() -> Path:
    """Debian keeps the server programs in /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb") or next(iter(sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None)
    if not found:
        pytest.fail("PostgreSQL is not installed: `apt-get install postgresql` (.ci/run does)")
    return Path(found).resolve().parent


def as_postgres_user() -> dict:
    """PostgreSQL refuses to run as root: as root, run it as Debian's `postgres` user."""
    if os.geteuid() != 0:
        return {}
    account = pwd.getpwnam("postgres")

    def drop_privileges():
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)

    return {"preexec_fn": drop_privileges, "owner": account}


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.fixture
def postgres() -> Iterator[str]:
    """A PostgreSQL server in a fresh cluster (its own temporary folder, trust auth, listening
    on 127.0.0.1 only); yields the database URI of an empty `mlflow` database."""
    bin_dir, user = postgres_bin(), as_postgres_user()
    preexec = user.get("preexec_fn")
    root = Path(tempfile.mkdtemp(prefix="pipelines-pg-"))  # not under root's private tmp_path
    if "owner" in user:
        os.chown(root, user["owner"].pw_uid, user["owner"].pw_gid)
    data, log = root / "data", root / "postgres.log"
    subprocess.run([bin_dir / "initdb", "-D", data, "-U", "mlflow", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, preexec_fn=preexec)
    port = free_port()
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [bin_dir / "postgres", "-D", data, "-p", str(port), "-c", "listen_addresses=127.0.0.1",
             "-k", root], stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec)
    try:
        wait_until(lambda: subprocess.run(
            [bin_dir / "pg_isready", "-h", "127.0.0.1", "-p", str(port)],
            capture_output=True).returncode == 0, "PostgreSQL to start", server, log)
        subprocess.run([bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow",
                        "mlflow"], check=True, capture_output=True)
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:  # SIGINT: fast shutdown, which closes the connections clients keep pooled
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def tracking_server(postgres: str, tmp_path: Path) -> Iterator[str]:
    """`mlflow server` with the PostgreSQL backend and a local artifact folder it proxies."""
    port, log = free_port(), tmp_path / "mlflow-server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres,
             "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{url}/health"), "mlflow server to start", server, log,
                   timeout=180)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_training_is_tracked_on_a_postgresql_backed_server(tracking_server: str, postgres: str,
                                                          speech_dir: Path, imdb_dir: Path,
                                                          tmp_path: Path, monkeypatch, capfd,
                                                          caplog):
    """Through the server, with a password in the tracking URI (the server ignores it), and
    then straight into the database with one: neither password is logged as a parameter or
    tag, printed (MLflow's run links included) or written in a log line."""
    credentialed = tracking_server.replace("http://", "http://analyst:srv-s3cret@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", credentialed)
    args = small_args(speech_dir, tmp_path, "--epochs", "1",
                      "--checkpoint-dir", str(tmp_path / "checkpoints"))
    try:
        assert speech.main(args) == 0
        database = postgres.replace("mlflow@", "mlflow:db-s3cret@")  # trust auth accepts it
        monkeypatch.chdir(tmp_path)  # a database store keeps artifacts in ./mlruns
        # the TF-IDF baseline: a run with every parameter and tag, trained in a second
        assert sentiment.main(["--data-dir", str(imdb_dir), "--model", "tfidf-logreg",
                               "--min-df", "1", "--validation-pct", "25", "--no-register",
                               "--tracking-uri", database]) == 0
    finally:  # the credentials the server run passed to MLflow through its variables
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(name, None)
    printed = capfd.readouterr()
    logged = [record.getMessage() for record in caplog.records]
    client = MlflowClient(tracking_server)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id
                               for name in ("speech-commands", "imdb-sentiment")])
    assert len(runs) == 2
    stored = [value for run in runs for value in (*run.data.params.values(),
                                                  *run.data.tags.values())]
    assert "analyst:***@" in printed.out + printed.err + " ".join(stored)
    # MLflow's links to a server's run go to stderr: stdout is the summaries alone
    assert "View run" in printed.err and printed.out.startswith("model  ")
    assert "View run" not in printed.out
    for text in (printed.out, printed.err, *logged, *stored):
        assert "s3cret" not in text

    client = MlflowClient(tracking_server)  # everything below comes through the server's API
    experiment = client.get_experiment_by_name("speech-commands")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert run.data.params["units"] == "8" and "test_accuracy" in run.data.metrics
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"plots", "label_map.json", "feature_config.json"} <= artifacts
    assert list((tmp_path / "artifacts").rglob("confusion_matrix.png"))  # stored by the server
    version = client.get_model_version_by_alias("speech-commands", "champion")
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    assert version.tags["promotion_state"] == "decided"
    local = tmp_path / "downloaded"
    client.download_artifacts(run.info.run_id, "label_map.json", str(local.mkdir() or local))
    assert "_silence_" in (local / "label_map.json").read_text()
