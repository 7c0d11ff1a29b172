"""Interrupted runs: a real signal to a real training process, then --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines import checkpoints, interrupts, lifecycle, sentiment, speech, tracking
from pipelines.checkpoints import completed_epochs, latest_checkpoint
from pipelines.errors import ConfigError, SetupError
from pipelines.resume import resumed_config
from pipelines.speech import SpeechConfig
from pipelines.tracking import leases
from tests import test_sentiment_pipeline
from tests.processes import interrupt_when
from tests.test_speech_pipeline import small_args

REPO = Path(__file__).resolve().parents[1]


def start_training(args: list[str], temporary: Path) -> subprocess.Popen:
    """`python -m pipelines.speech ARGS` with `temporary` (made here) as its TMPDIR."""
    temporary.mkdir()
    return subprocess.Popen([sys.executable, "-m", "pipelines.speech", *args], cwd=REPO,
                            env=os.environ | {"TMPDIR": str(temporary)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(process: subprocess.Popen, checkpoints: Path, epochs: int,
                    timeout: float = 180) -> Path:
    """The run's checkpoint folder, once it holds `epochs` completed epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in checkpoints.glob("*"):
            if completed_epochs(run) >= epochs:
                return run
        if process.poll() is not None:
            pytest.fail(f"training ended before the signal:\n{process.communicate()[1]}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"no checkpoint of {epochs} epochs within {timeout} s")


@pytest.mark.parametrize(("signum", "status", "run_status"), [
    (signal.SIGTERM, 143, "KILLED"), (signal.SIGKILL, -signal.SIGKILL, "RUNNING")])
def test_a_stopped_or_killed_run_keeps_its_checkpoint_and_resume_finishes_it(
        speech_dir: Path, tmp_path: Path, signum: int, status: int, run_status: str, capsys):
    """SIGTERM ends the run KILLED (Ctrl-C too: below); SIGKILL leaves it RUNNING, its process
    gone.
    --resume refuses the run while its process lives, and finishes a killed one into the
    same run (SIGTERM's resumes the same way)."""
    checkpoints = tmp_path / "checkpoints"
    store = str(tmp_path / "mlruns")
    args = small_args(speech_dir, tmp_path, "--epochs", "30", "--patience", "30",
                      "--checkpoint-dir", str(checkpoints))
    process = start_training(args, tmp_path / "tmp")
    checkpoint = wait_for_epochs(process, checkpoints, 2)
    run_id = checkpoint.name
    if signum == signal.SIGKILL:
        assert speech.main(["--resume", run_id, "--store-dir", store]) == 2
        assert f"its process (pid {process.pid} on this host) is alive" in capsys.readouterr().err
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == status, stderr
    if signum != signal.SIGKILL:
        assert f"--resume {run_id}" in stderr and "Traceback" not in stderr
        # the module files autograph wrote (the input pipeline's one-hot map) are removed,
        # though the process exits without its atexit handlers; SIGKILL leaves them
        assert not list((tmp_path / "tmp").glob(f"{interrupts.AUTOGRAPH_MODULES}*"))
    else:
        assert list((tmp_path / "tmp").glob(f"{interrupts.AUTOGRAPH_MODULES}*"))
    tracking.connect(None, tmp_path / "mlruns")
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == run_status
    assert client.search_model_versions("name='speech-commands'") == []
    done = completed_epochs(checkpoint)
    assert 2 <= done < 30
    assert {"state.json", "last.keras"} <= {
        path.name for path in latest_checkpoint(checkpoint).iterdir()}

    if signum != signal.SIGKILL:
        return  # resuming is the same whichever signal stopped the run
    assert speech.main(["--resume", run_id, "--store-dir", store]) == 0
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["lease.pid"] == str(os.getpid())  # taken over by this process
    assert "checkpoint" not in run.data.tags  # its folder is deleted (below)
    losses = client.get_metric_history(run_id, "loss")
    epochs = int(run.data.metrics["epochs_trained"])
    # every epoch logged once: the killed process's and then the resumed one's (the epoch
    # SIGKILL cut short is trained again)
    assert sorted(m.step for m in losses) == list(range(1, epochs + 1)) and epochs > done
    assert len(client.get_metric_history(run_id, "global_batch_size")) == 1  # as it started
    version = client.get_model_version_by_alias("speech-commands", "champion")
    assert version.run_id == run_id
    assert not checkpoint.exists()


def test_a_run_stopped_after_logging_its_model_resumes_without_a_second_model(
        speech_dir: Path, tmp_path: Path, monkeypatch):
    """Stopped once its model was logged (Ctrl-C as it is registered), the run is resumed to
    its end with that model as its only logged model, the version's."""
    store = tmp_path / "mlruns"
    args = small_args(speech_dir, tmp_path, "--checkpoint-dir", str(tmp_path / "checkpoints"))

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(lifecycle.TrackedRun, "register", stopped)
        assert speech.main(args) == 130
    (checkpoint,) = (tmp_path / "checkpoints").iterdir()
    assert speech.main(["--resume", checkpoint.name, "--store-dir", str(store)]) == 0
    tracking.connect(None, store)
    client = MlflowClient()
    run = client.get_run(checkpoint.name)
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list",
        filter_string=f"source_run_id = '{run.info.run_id}'")
    [version] = client.search_model_versions("name='speech-commands'")
    assert [f"models:/{model.model_id}" for model in models] == [version.source]
    assert run.info.status == "FINISHED" and run.data.tags["registered_version"] == "1"


def test_a_model_being_logged_as_its_run_is_stopped_is_marked_failed(tmp_path: Path):
    """MLflow marks a model FAILED when its logging raises an error, not on Ctrl-C or
    SIGTERM: the run does, or it would stay PENDING for good."""
    with pytest.raises(KeyboardInterrupt), tracking.open_run(
            "models", tracking_uri=None, store_dir=tmp_path / "mlruns") as run_id:
        done = mlflow.initialize_logged_model(name="done")
        mlflow.finalize_logged_model(done.model_id, "READY")
        being_logged = mlflow.initialize_logged_model(name="model")
        raise KeyboardInterrupt
    client = MlflowClient()
    assert client.get_logged_model(being_logged.model_id).status == "FAILED"
    assert client.get_logged_model(done.model_id).status == "READY"
    assert tracking.finished_model_uri(run_id) == f"models:/{done.model_id}"


def test_resume_refuses_a_finished_run_and_an_unknown_one(tmp_path: Path, capsys):
    store = str(tmp_path / "mlruns")
    with tracking.open_run("speech-commands", tracking_uri=None, store_dir=store) as run_id:
        pass  # a run that finished
    assert speech.main(["--resume", run_id, "--store-dir", store]) == 2
    assert "the run is FINISHED; only KILLED or FAILED runs" in capsys.readouterr().err
    assert speech.main(["--resume", "0" * 32, "--store-dir", store]) == 2
    assert "no such run" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt), tracking.open_run(
            "speech-commands", tracking_uri=None, store_dir=store) as killed:
        raise KeyboardInterrupt
    MlflowClient().delete_run(killed)
    assert speech.main(["--resume", killed, "--store-dir", store]) == 2
    assert f"the run is deleted; `mlflow runs restore --run-id {killed}`" in (
        capsys.readouterr().err)
    elsewhere = tmp_path / "typo"  # a store folder that is not the run's: named, nothing made
    assert speech.main(["--resume", run_id, "--store-dir", str(elsewhere)]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume {run_id}: there is no MLflow store at {elsewhere / 'mlflow.db'}: pass "
        "the --store-dir or --tracking-uri the run logged to\n")
    assert not elsewhere.exists()
    typo = f"sqlite:///{elsewhere}/mlflow.db"  # nor one a SQLite URI names
    assert speech.main(["--resume", run_id, "--tracking-uri", typo]) == 2
    assert f"there is no MLflow store at {elsewhere / 'mlflow.db'}" in capsys.readouterr().err
    assert not elsewhere.exists()


def stopped_run(tmp_path: Path, **options) -> str:
    """The id of a speech run in `tmp_path`'s store, stopped after its first epoch's checkpoint
    in `tmp_path / "ck"` (a stand-in: a state and an intact `last.keras` archive)."""
    started = SpeechConfig.from_options(store_dir=str(tmp_path / "mlruns"),
                                        checkpoint_dir=str(tmp_path / "ck"), **options)
    with pytest.raises(KeyboardInterrupt), lifecycle.tracked_run(started, "speech") as run:
        tracking.log_params(started.options())
        epoch = run.checkpoint / "epoch-0000"
        epoch.mkdir(parents=True)
        (epoch / "state.json").write_text("{}")
        with zipfile.ZipFile(epoch / "last.keras", "w") as archive:
            archive.writestr("config.json", '{"stand": "in"}')
        raise KeyboardInterrupt
    return run.run_id


def test_a_resume_takes_where_the_data_is_from_the_command_line_and_nothing_else(
        tmp_path: Path, monkeypatch, caplog):
    """A run started with a relative --data-dir resumes from another folder given the data's
    place; what it trains with stays the run's (the data digest is checked as it is read)."""
    caplog.set_level("WARNING", "pipelines.resume")
    store = str(tmp_path / "mlruns")
    run_id = stopped_run(tmp_path, data_dir="../data", cache_dir=".cache/x", units=8)
    monkeypatch.chdir(tmp_path)  # elsewhere than where it started
    caplog.clear()  # the interrupted run's own note
    resumed = resumed_config(SpeechConfig.from_options(
        resume=run_id, store_dir=store, data_dir=str(tmp_path / "data"), units=32), "speech")
    assert resumed.source.data_dir == str(tmp_path / "data")
    assert resumed.source.cache_dir == ".cache/x" and resumed.recurrent.units == 8  # the run's
    assert caplog.messages == [f"--resume {run_id} takes every option from the run's logged "
                               "parameters; not used: --units 32"]


def test_of_two_resumes_of_one_run_checked_together_the_second_is_refused(tmp_path: Path):
    """Both were checked before either did its data work; the first to reopen the run holds
    it, and the note of the run's earlier failure goes."""
    run_id, store = stopped_run(tmp_path), str(tmp_path / "mlruns")
    MlflowClient().set_tag(run_id, "error", "ValueError: the earlier failure")
    tracking.interrupted_run(run_id, None, store)  # the second's check, made early
    with tracking.open_run("speech-commands", tracking_uri=None, store_dir=store,
                           resume_run_id=run_id):
        assert "error" not in tracking.run_tags(run_id)
        with pytest.raises(SetupError, match=f"--resume {run_id}: the run is RUNNING and its "
                           f"process \\(pid {os.getpid()} on this host\\) is alive"):
            leases.take_over(run_id, None, store)


def test_a_run_started_with_settings_now_refused_for_new_runs_still_resumes(tmp_path: Path):
    """The checks of a new run's features and augmentation are not made again on resume: the
    run trains on as it was let start (its checkpoint was made with them)."""
    run_id = stopped_run(tmp_path, time_shift_ms=1500, sample_rate=8000)
    (tmp_path / "data").mkdir()
    places = {"store_dir": str(tmp_path / "mlruns"), "data_dir": str(tmp_path / "data")}
    with pytest.raises(ConfigError, match="fmax"):  # 8 kHz: mel bands over 4 kHz hold nothing
        speech.prepare_run(SpeechConfig.from_options(**places, sample_rate=8000))
    resumed = speech.prepare_run(SpeechConfig.from_options(**places, resume=run_id))
    assert (resumed.features.sample_rate, resumed.augment.time_shift_ms) == (8000, 1500)


def test_a_resume_finds_a_moved_checkpoint_and_refuses_a_damaged_one_or_none(
        tmp_path: Path, monkeypatch, caplog):
    """A checkpoint folder moved elsewhere is found by --checkpoint-dir (and tagged there), or
    in the default one of the folder the command runs in (a project moved whole); a damaged
    checkpoint, or a run that keeps none, is refused before anything runs."""
    store = str(tmp_path / "mlruns")
    run_id = stopped_run(tmp_path)
    project = tmp_path / "project"
    (project / ".cache").mkdir(parents=True)
    (tmp_path / "ck").rename(project / ".cache" / "checkpoints")
    monkeypatch.chdir(project)
    resume = SpeechConfig.from_options(resume=run_id, store_dir=store)
    assert resumed_config(resume, "speech").run.checkpoint_dir == str(
        project / ".cache" / "checkpoints")
    moved = tmp_path / "moved"
    (project / ".cache" / "checkpoints").rename(moved)
    with pytest.raises(SetupError, match=f"no checkpoint at {tmp_path / 'ck' / run_id} or "
                       f"{project / '.cache' / 'checkpoints' / run_id} .* was moved: pass "
                       "--checkpoint-dir"):
        resumed_config(resume, "speech")
    caplog.set_level("WARNING", "pipelines.resume")
    caplog.clear()
    resumed = resumed_config(SpeechConfig.from_options(
        resume=run_id, store_dir=store, checkpoint_dir=str(moved)), "speech")
    assert resumed.run.checkpoint_dir == str(moved) and caplog.messages == []
    with pytest.raises(KeyboardInterrupt), lifecycle.tracked_run(resumed, "speech"):
        raise KeyboardInterrupt
    assert tracking.run_tags(run_id)["checkpoint"] == str(moved / run_id)
    relative = resumed_config(SpeechConfig.from_options(  # as typed where it started
        resume=run_id, store_dir=store, checkpoint_dir="ck"), "speech")
    assert relative.run.checkpoint_dir == str(moved)  # not in ./ck here: where it is tagged

    with pytest.raises(SetupError, match=r"the checkpoint .* cannot be loaded \(KeyError"):
        checkpoints.load_checkpoint(moved / run_id)  # intact, but not what a fit saved
    state = moved / run_id / "epoch-0000" / "state.json"
    state.write_text('{"stopper": {"best": 0.5}}')  # a best epoch, without its weights
    with pytest.raises(SetupError, match=r"is damaged \(FileNotFoundError: .*best.npz"):
        resumed_config(SpeechConfig.from_options(
            resume=run_id, store_dir=store, checkpoint_dir=str(moved)), "speech")
    state.write_text("{}")
    last = moved / run_id / "epoch-0000" / "last.keras"
    last.write_bytes(last.read_bytes().replace(b'"in"', b'"on"'))
    resume = SpeechConfig.from_options(resume=run_id, store_dir=store,
                                       checkpoint_dir=str(moved))
    with pytest.raises(SetupError, match=r"its checkpoint .*epoch-0000 is damaged \(last.keras: "
                       "config.json fails its CRC check"):
        resumed_config(resume, "speech")
    last.write_bytes(last.read_bytes()[:20])
    with pytest.raises(SetupError, match=r"is damaged \(BadZipFile"):
        resumed_config(resume, "speech")
    with pytest.raises(KeyboardInterrupt), tracking.open_run(  # as a multi-worker run is
            "speech-commands", tracking_uri=None, store_dir=store,
            tags={"pipeline": "speech"}) as untagged:
        raise KeyboardInterrupt
    with pytest.raises(SetupError, match="the run keeps no checkpoint \\(a multi-worker run"):
        resumed_config(resume.replace(resume=untagged), "speech")


def test_sentiment_run_interrupted_in_process_resumes_to_a_served_blend(imdb_dir: Path,
                                                                        tmp_path: Path, caplog):
    """Ctrl-C (SIGINT from another thread) while `main` trains: the pipeline returns 130 with
    the run KILLED; --resume refits the n-gram branch, continues the recurrent model from its
    checkpoint and logs one blended model."""
    checkpoints = tmp_path / "checkpoints"
    args = test_sentiment_pipeline.small_args(imdb_dir, tmp_path, "--epochs", "12",
                                              "--patience", "12",
                                              "--checkpoint-dir", str(checkpoints))

    def two_epochs_done() -> bool:
        runs = list(checkpoints.glob("*"))
        return bool(runs) and completed_epochs(runs[0]) >= 2

    watcher = interrupt_when(two_epochs_done, interval=0.02)
    caplog.set_level("WARNING", "pipelines.lifecycle")
    assert sentiment.main(args) == 130
    watcher.join()
    (checkpoint,) = checkpoints.iterdir()
    # the command it suggests names the run's store, which is not the default one
    assert any(message.endswith(f"Continue it with: python -m pipelines.sentiment --resume "
                                f"{checkpoint.name} --store-dir {tmp_path / 'mlruns'}")
               for message in caplog.messages)
    tracking.connect(None, tmp_path / "mlruns")
    client = MlflowClient()
    assert client.get_run(checkpoint.name).info.status == "KILLED"

    assert sentiment.main(["--resume", checkpoint.name, "--store-dir",
                           str(tmp_path / "mlruns"), "--epochs", "5", "--no-register"]) == 0
    assert any(message.endswith("takes every option from the run's logged parameters; not "
                                "used: --epochs 5, --no-register")  # as a command line has them
               for message in caplog.messages), caplog.messages
    run = client.get_run(checkpoint.name)
    assert run.data.params["epochs"] == "12"
    assert run.info.status == "FINISHED" and "blend_weight" in run.data.metrics
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert steps == list(range(1, int(run.data.metrics["epochs_trained"]) + 1))
    served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    answer = served.predict(pd.DataFrame({"text": ["a fine film", "a dull film"]}))
    assert answer["error"].isna().all()


class SignalAt(keras.callbacks.Callback):
    """Sends this process SIGINT as predict's batch `batch` begins."""

    def __init__(self, batch: int):
        super().__init__()
        self.batch = batch
        self.begun: list[int] = []

    def on_predict_batch_begin(self, batch, logs=None):
        self.begun.append(batch)
        if batch == self.batch:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("deferred", [True, False])
def test_a_signal_during_a_keras_loop_is_raised_at_the_end_of_the_batch(deferred: bool):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    rows = np.ones((32, 4), "float32")
    signals = SignalAt(batch=1)
    with interrupts.handle_interrupts(), pytest.raises(KeyboardInterrupt) as raised:
        if deferred:
            interrupts.at_batch_end(model.predict, rows, batch_size=4, verbose=0,
                                    callbacks=[signals])
        else:
            model.predict(rows, batch_size=4, verbose=0, callbacks=[signals])
    frames = [entry.name for entry in raised.traceback]
    assert signals.begun == [0, 1]  # no batch after the signal's
    if deferred:  # batch 1 ran to its end, where InterruptCallback raised it
        assert "raise_pending" in frames and "on_predict_batch_begin" not in frames
    else:  # without deferral the handler raises at once, inside the callback that signalled
        assert "on_predict_batch_begin" in frames and "raise_pending" not in frames


class SignalThenFail(keras.callbacks.Callback):
    """Sends SIGINT at the start of predict's batch 1, then fails before that batch ends."""

    def on_predict_batch_begin(self, batch, logs=None):
        if batch == 1:
            os.kill(os.getpid(), signal.SIGINT)
            raise RuntimeError("the loop failed after the signal")


def test_a_signal_recorded_before_the_loop_fails_is_raised_not_kept_for_later():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    rows = np.ones((32, 4), "float32")
    with interrupts.handle_interrupts():
        with pytest.raises(KeyboardInterrupt) as raised:
            interrupts.at_batch_end(model.predict, rows, batch_size=4, verbose=0,
                                    callbacks=[SignalThenFail()])
        assert isinstance(raised.value.__context__, RuntimeError)
        # nothing left pending to surface in the next loop
        assert interrupts.at_batch_end(model.predict, rows, batch_size=4, verbose=0).shape == (
            32, 2)
