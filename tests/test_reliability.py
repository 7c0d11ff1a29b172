"""Runs that cannot start fail fast and clearly; the same seed gives the same model."""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow.tracking import MlflowClient

from pipelines import lifecycle, sentiment, speech, tracking
from pipelines.errors import SetupError
from pipelines.lifecycle import require_writable_dir
from pipelines.speech import SpeechConfig
from tests import test_speech_pipeline
from tests.processes import free_port


@pytest.mark.parametrize("pipeline", [speech, sentiment])
def test_unreachable_tracking_server_fails_before_any_data_work(pipeline, tmp_path: Path,
                                                                monkeypatch, capsys):
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://analyst:pw-s3cret@127.0.0.1:{port}")
    # a missing data folder would be the error if anything looked at the data first
    code = pipeline.main(["--data-dir", str(tmp_path / "missing"),
                          "--checkpoint-dir", str(tmp_path / "checkpoints")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot reach the MLflow tracking server at http://analyst:***@127.0.0.1:{port}" in err
    assert "Traceback" not in err and "s3cret" not in err
    assert not (tmp_path / "checkpoints").exists()


def test_uri_passwords_are_redacted_wherever_they_occur():
    assert tracking.redact("postgresql://ml:p%40ss@db:5432/mlflow and http://u:x@h/p") == (
        "postgresql://ml:***@db:5432/mlflow and http://u:***@h/p")
    assert tracking.redact("http://user@host/ https://host:443/") == (
        "http://user@host/ https://host:443/")  # no password: nothing to hide
    # a "/" in a database password, and a password passed in the query
    assert tracking.redact("postgresql://ml:pa/ss@db/mlflow postgresql://ml@db/m?x=1&"
                           "password=s3cret&sslpassword=k") == (
        "postgresql://ml:***@db/mlflow postgresql://ml@db/m?x=1&password=***&sslpassword=***")
    # an "@" in an HTTP password: urllib (so MLflow) sends all up to the host's "@"
    for uri in ("http://dave:p@ss%2Fw%3Ard@127.0.0.1:5000/x", "http://c:ab@cdXSECRETX@h:9"):
        hidden = uri.replace(urlsplit(uri).password, "***")
        assert tracking.redact(f"at {uri} now") == f"at {hidden} now"
    for text in ("https://host:443/u/me@example.com",  # a port and a path are no password
                 '{"uri": "http://h:5000", "model": "models:/speech@champion"}'):
        assert tracking.redact(text) == text


def test_a_sqlite_store_that_cannot_take_a_run_is_named_before_any_work(tmp_path: Path,
                                                                         capsys):
    (tmp_path / "notes.db").write_text("not a database")
    (tmp_path / "folder.db").mkdir()
    (tmp_path / "empty.db").touch()  # SQLite makes a new database in an empty file
    for uri, message in (
            (f"sqlite:///{tmp_path}/notes.db", f"{tmp_path}/notes.db is not an SQLite database "
                                               "(it starts b'not a da')"),
            (f"sqlite:///{tmp_path}/folder.db", f"database {tmp_path}/folder.db is a folder"),
            (f"sqlite:{tmp_path}/one.db", "an SQLite store's URI is sqlite:///PATH"),
            (f"SQLITE:///{tmp_path}/up.db", "write the scheme in lower case, as the database "
                                            "layer reads it (sqlite:)")):
        assert speech.main(["--data-dir", str(tmp_path), "--tracking-uri", uri]) == 2
        assert message in capsys.readouterr().err
    tracking.require_writable_store(f"sqlite:///{tmp_path}/empty.db", tmp_path)


def test_silent_or_foreign_servers_are_clear_errors_too(tmp_path: Path, monkeypatch):

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(SetupError, match="cannot reach .*ReadTimeout"):
            tracking.check_tracking(uri, timeout=1)

    class Answers(BaseHTTPRequestHandler):
        """404 outside the API; on it 403 as MLflow's server answers a host name its
        --allowed-hosts does not list, unless the request carries user:pw's basic auth."""

        def do_GET(self):
            if self.path.startswith("/down/"):  # a server whose database is away
                self.answer(500, b'{"error_code": "INTERNAL_ERROR", "message": "(psycopg2.'
                                 b'OperationalError) connection to server at db failed"}')
            elif self.path.startswith("/proxy/"):  # a login page in front of it
                self.answer(200, b"<html><body>Sign in</body></html>")
            elif self.path.startswith("/status/"):  # another service's JSON
                self.answer(200, b'{"status": "ok"}')
            elif not self.path.startswith("/api/2.0/mlflow/experiments/search?max_results=1"):
                self.send_error(404)
            elif self.headers.get("Authorization") != "Basic dXNlcjpwdw==":  # user:pw
                self.answer(403, b"Invalid Host header - possible DNS rebinding attack detected")
            else:
                self.answer(200, b'{"experiments": []}')

        def answer(self, status: int, body: bytes):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(SetupError, match="refused this client \\(HTTP 403: .*Invalid Host "
                           "header.*\\): check the credentials .* --allowed-hosts"):
            tracking.check_tracking(uri)
        tracking.check_tracking(f"http://user:pw@127.0.0.1:{server.server_port}")  # answered
        with pytest.raises(SetupError, match="is not an MLflow tracking server: .* HTTP 404"):
            tracking.check_tracking(f"{uri}/elsewhere")
        with pytest.raises(SetupError, match="answered HTTP 500 \\(.*connection to server at "
                           "db failed.*\\): see its log"):
            tracking.check_tracking(f"{uri}/down")
        for other in ("proxy", "status"):
            with pytest.raises(SetupError, match="HTTP 200 without MLflow's JSON"):
                tracking.check_tracking(f"{uri}/{other}")
        # MLflow sends the credential variables where they are set, not the URI's: so does
        # the check
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "other")
        with pytest.raises(SetupError, match="refused this client"):
            tracking.check_tracking(f"http://user:pw@127.0.0.1:{server.server_port}")
        with pytest.raises(SetupError, match="is not a valid tracking URI"):
            tracking.check_tracking("http://[mlflow-host:5000")
        # a / in a server URI's password breaks its port: named without any of the password
        with pytest.raises(SetupError, match="^http://\\*\\*\\*@host:5000 is not a valid "
                           "tracking URI: its host or port cannot be read") as bad:
            tracking.check_tracking("http://user:pa/ss@host:5000")
        assert "pa" not in str(bad.value).replace("password", "")
        # a database's password may hold a /; its server is connected to once
        with pytest.raises(SetupError, match=r"^cannot connect to the tracking database at "
                           r"postgresql\+psycopg://ml:\*\*\*@127.0.0.1:1/mlflow \(Operational"
                           "Error: .*Connection refused") as closed:
            tracking.check_tracking("postgresql+psycopg://ml:pa/ss@127.0.0.1:1/mlflow")
        assert "pa/ss" not in str(closed.value)
        for address in ("localhost:5000", "127.0.0.1:5000", "[::1]:5000/"):  # http:// left out
            with pytest.raises(SetupError, match=re.escape(
                    f"{address}: a tracking server's URI starts with its scheme: http://{address}")):
                tracking.check_tracking(address)
        with pytest.raises(SetupError, match="^ftp://host/x: MLflow has no tracking store for "
                           "'ftp:' URIs; give a server as http://HOST:PORT"):
            tracking.check_tracking("ftp://host/x")
    finally:
        server.shutdown()
        thread.join()


def test_served_model_commands_check_the_server_too(tmp_path: Path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    code = speech.main(["predict", "--tracking-uri", uri, str(tmp_path / "clip.wav")])
    assert code == 2 and "cannot reach the MLflow tracking server" in capsys.readouterr().err
    # a file store, which MLflow 3 refuses, is named as such (not as a missing model)
    for store in (tmp_path.as_uri(), str(tmp_path)):
        code = speech.main(["predict", "--tracking-uri", store, str(tmp_path / "c.wav")])
        assert code == 2 and capsys.readouterr().err == (
            f"error: {store} is a file store, which this MLflow refuses: pass a database such "
            "as sqlite:///PATH/mlflow.db (`mlflow migrate-filestore` moves a file store into "
            "one), or set MLFLOW_ALLOW_FILE_STORE=true\n")
    assert not tracking.is_file_store("databricks")


@pytest.mark.parametrize(("option", "purpose"), [("--store-dir", "MLflow store folder"),
                                                  ("--cache-dir", "feature cache folder"),
                                                  ("--checkpoint-dir", "checkpoint folder")])
def test_folder_that_cannot_be_written_is_a_clear_error_before_training(
        speech_dir: Path, tmp_path: Path, capsys, option: str, purpose: str):
    blocker = tmp_path / "a-file"  # a folder under a regular file cannot be made, even by root
    blocker.write_text("not a folder")
    args = test_speech_pipeline.small_args(speech_dir, tmp_path, option, str(blocker / "sub"))
    assert speech.main(args) == 2
    err = capsys.readouterr().err
    assert f"{purpose} {blocker / 'sub'} is not writable" in err
    # no feature work happened and no run was opened
    assert not list(tmp_path.glob("cache/*")) and not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_require_writable_dir_names_the_folder(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SetupError, match="cache folder .*file/cache is not writable"):
        require_writable_dir(tmp_path / "file" / "cache", "cache folder")
    require_writable_dir(tmp_path / "new" / "folder", "cache folder")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]  # nothing made
    (tmp_path / "link").symlink_to(tmp_path / "nowhere" / "cache")
    with pytest.raises(SetupError, match=f"{tmp_path}/link is a link to nothing"):
        require_writable_dir(tmp_path / "link", "cache folder")


def test_an_internal_error_shows_its_traceback_and_fails_the_run(speech_dir: Path,
                                                                 tmp_path: Path, monkeypatch):
    """A programming error (here a model with the wrong number of outputs, which Keras
    reports as a ValueError) is not reported as `error: ...`, nor taken by a sweep for an
    unusable combination: it propagates, and every run it was in ends FAILED."""
    build = speech.build_model
    monkeypatch.setattr(speech, "build_model",
                        lambda config, classes, *args: build(config, classes + 1, *args))
    args = test_speech_pipeline.small_args(speech_dir, tmp_path, "--sweep", "2")
    with pytest.raises(ValueError, match="shape|incompatible"):
        speech.main(args)
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("speech-commands").experiment_id])
    assert len(runs) == 2  # the sweep and its first trial; no second trial
    assert {run.info.status for run in runs} == {"FAILED"}


def test_a_resumed_run_refuses_other_data_or_another_global_batch(tmp_path: Path):
    """The checkpoint's schedule counts steps of the run's global batch over the run's data:
    a resume with other data, or under a strategy of another number of replicas, is refused
    before the run reopens, which stays as it was (KILLED: it can be resumed later)."""
    config = SpeechConfig.from_options(store_dir=str(tmp_path / "mlruns"),
                                       checkpoint_dir=str(tmp_path / "checkpoints"))
    with pytest.raises(KeyboardInterrupt), lifecycle.tracked_run(config, "speech") as started:
        tracking.set_tags({"data_digest": "d1"})
        started.log_batches({"global_batch_size": 256, "replicas": 2})
        raise KeyboardInterrupt
    resumed = config.replace(resume=started.run_id)  # on one replica: 128 a batch
    for digest, refusal in (("d2", "the data changed since the run started \\(digest d2, "
                                   "the run's d1\\)"),
                            ("d1", "the run trained at a global batch of 256 examples, this "
                                   "machine's replicas make 128; resume it where")):
        with pytest.raises(SetupError, match=refusal), lifecycle.tracked_run(
                resumed, "speech", digest):
            pytest.fail("reopened")
    run = MlflowClient().get_run(started.run_id)
    assert run.info.status == "KILLED" and "error" not in run.data.tags
