from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import joblib
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.tracking import MlflowClient

from models.baseline import TfidfConfig, build_tfidf_logreg
from pipelines import evaluation, sentiment, tracking
from pipelines.errors import ModelError, SetupError
from pipelines.tracking import leases, registry


def log_tiny_model(folder: Path, labels: tuple[str, ...] = ("neg", "pos")) -> str:
    """Logs a TF-IDF baseline fitted on four reviews (a fifth of a third label, if given);
    returns its model URI."""
    classifier = build_tfidf_logreg(TfidfConfig(min_df=1), seed=0).fit(
        ["good fun", "great film", "bad plot", "awful acting", "so so"][:len(labels) + 2],
        [1, 1, 0, 0, 2][:len(labels) + 2])
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(classifier, folder / "classifier.joblib")
    return tracking.log_text_classifier(folder / "classifier.joblib", labels)


def finish_run(store: Path, accuracy: float, test_digest: str = "digest-a",
               labels: tuple[str, ...] = ("neg", "pos")) -> tracking.Promotion:
    with tracking.open_run("exp", tracking_uri=None, store_dir=store):
        uri = log_tiny_model(store.parent / "model", labels)
        return tracking.register_and_promote(
            uri, "model-x", metrics={"test_accuracy": accuracy, "test_macro_f1": accuracy},
            test_digest=test_digest, data_digest="all-" + test_digest,
            model_description=f"the model of the {accuracy} run on {test_digest}",
        )


def register_in_a_stopped_run(store: Path, tmp_path: Path, accuracy: float) -> tuple[str, str]:
    """Registers a tiny model in a run that a KeyboardInterrupt (from a step the caller
    patched) stops; returns the run id and the model URI."""
    with pytest.raises(KeyboardInterrupt), tracking.open_run(
            "exp", tracking_uri=None, store_dir=store) as run_id:
        uri = log_tiny_model(tmp_path / "model")
        tracking.register_and_promote(uri, "model-x", metrics={"test_accuracy": accuracy},
                                      test_digest="d", data_digest="d")
    return run_id, uri


def champion_version(store: Path) -> str:
    tracking.connect(None, store)
    return str(MlflowClient().get_model_version_by_alias("model-x", "champion").version)


def test_champion_rule(tmp_path: Path):
    store = tmp_path / "mlruns"
    first = finish_run(store, 0.80)
    assert (first.version, first.promoted, first.reason) == ("1", True, "there was none before")

    better = finish_run(store, 0.85)
    assert better.promoted and "beats champion v1" in better.reason
    assert champion_version(store) == "2"
    worse = finish_run(store, 0.83)
    assert not worse.promoted and "does not beat champion v2" in worse.reason
    tie = finish_run(store, 0.85)
    assert not tie.promoted

    other_data = finish_run(store, 0.99, test_digest="digest-b")
    assert not other_data.promoted and "different test data" in other_data.reason
    # the same test data, other classes (a test split without _unknown_ examples is the same
    # for a model with that class and one without); a champion registered without its
    # classes tag (by earlier code) has them read from its model
    MlflowClient().delete_model_version_tag("model-x", "2", "classes")
    other_classes = finish_run(store, 0.99, labels=("neg", "pos", "mixed"))
    assert not other_classes.promoted and other_classes.reason.startswith(
        "champion v2 has other classes (this model adds mixed); not comparable")
    assert champion_version(store) == "2"
    client = MlflowClient()  # registered, not promoted, and the run says why
    unpromoted = client.get_model_version("model-x", other_data.version)
    assert "different test data" in client.get_run(unpromoted.run_id).data.tags[
        "promotion_reason"]
    version = client.get_model_version("model-x", "3")
    assert version.tags["test_accuracy"] == "0.83"  # exact: repr of the float
    assert version.tags["test_data_digest"] == "digest-a"
    assert version.tags["classes"] == '["neg", "pos"]'
    assert "does not beat" in version.tags["promotion"]
    run = client.get_run(version.run_id)
    assert run.data.tags["champion"] == "False" and run.data.tags["registered_version"] == "3"
    assert (store / "mlflow.db").is_file() and (store / "artifacts").is_dir()
    # the registered model describes its champion, not the latest registration
    assert client.get_registered_model("model-x").description == (
        "the model of the 0.85 run on digest-a")


def test_a_model_name_with_a_quote_registers_and_a_uri_is_pinned_to_its_version(
        tmp_path: Path):
    store = tmp_path / "mlruns"
    for accuracy in (0.8, 0.9):
        with tracking.open_run("exp", tracking_uri=None, store_dir=store):
            uri = log_tiny_model(tmp_path / "model")
            promotion = tracking.register_and_promote(
                uri, "bob's model", metrics={"test_accuracy": accuracy}, test_digest="d",
                data_digest="d")
    assert (promotion.version, promotion.promoted) == ("2", True)
    for given in ("models:/bob's model@champion", "models:/bob's model/latest"):
        pinned, params = tracking.evaluated_model(given, None, store, ["text"])
        assert pinned == "models:/bob's model/2" and isinstance(params, dict)
    with pytest.raises(ModelError, match="takes text, not the audio this command sends"):
        tracking.evaluated_model("models:/bob's model/1", None, store, ["audio"])


def test_a_models_uri_is_read_as_name_alias_and_version():
    assert registry.models_uri_parts("models:/speech@champion") == ("speech", "champion", "")
    assert registry.models_uri_parts("models:/bob's model/12") == ("bob's model", None, "12")
    assert registry.models_uri_parts("models:/speech/latest") == ("speech", None, "latest")
    assert registry.models_uri_parts("models:/speech") == ("speech", None, "")
    assert registry.models_uri_parts("models:/speech@") == ("speech", "", "")  # MLflow refuses


def test_a_tie_never_promotes_even_where_it_rounds_down(tmp_path: Path):
    """5/6 is 0.833333 to six decimals, below itself: a tie read back rounded would win."""
    store = tmp_path / "mlruns"
    assert finish_run(store, 5 / 6).promoted
    tie = finish_run(store, 5 / 6)
    assert not tie.promoted and "ties champion v1" in tie.reason
    assert finish_run(store, 5 / 6 + 1e-9).promoted  # strictly better is better, however little
    champion = SimpleNamespace(version=1, tags={"test_data_digest": "x", "test_accuracy": "0.9084"})
    assert tracking.champion_decision(18169 / 20000, "x", champion, (), tuple) == (
        True, "test accuracy 0.90845 beats champion v1's 0.90840")  # one review in 20,000
    # a champion registered when tags held six decimals is met at six decimals
    MlflowClient().set_model_version_tag("model-x", "3", "test_accuracy", "0.833333")
    assert not finish_run(store, 5 / 6).promoted
    assert champion_version(store) == "3"


def test_no_champion_only_when_none_is_set_a_server_failure_is_raised(tmp_path: Path,
                                                                     monkeypatch):
    """A tracking server that fails must not read as "no champion": a worse version would
    take the alias."""
    finish_run(tmp_path / "mlruns", 0.80)
    client = MlflowClient()
    assert str(registry.current_champion(client, "model-x").version) == "1"
    assert registry.current_champion(client, "no-such-model") is None
    client.delete_registered_model_alias("model-x", "champion")
    assert registry.current_champion(client, "model-x") is None
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    unreachable = MlflowClient("http://127.0.0.1:9", "http://127.0.0.1:9")  # nothing listens
    with pytest.raises(MlflowException, match="127.0.0.1:9"):
        registry.current_champion(unreachable, "model-x")


def test_registration_is_idempotent_per_run(tmp_path: Path, monkeypatch):
    """A run stopped after registering, or while its version waited for its decision, keeps
    that one version when resumed: it gets its decision back, or it is decided then."""
    store = tmp_path / "mlruns"
    with pytest.raises(KeyboardInterrupt), tracking.open_run(
            "exp", tracking_uri=None, store_dir=store) as run_id:
        uri = log_tiny_model(tmp_path / "model")
        first = tracking.register_and_promote(uri, "model-x", metrics={"test_accuracy": 0.8},
                                              test_digest="d", data_digest="d")
        raise KeyboardInterrupt  # a signal between registering and the end of the run
    with tracking.open_run("exp", tracking_uri=None, store_dir=store,
                           resume_run_id=run_id):
        again = tracking.register_and_promote(uri, "model-x", metrics={"test_accuracy": 0.8},
                                              test_digest="d", data_digest="d")
    assert (again.version, again.promoted) == (first.version, True) == ("1", True)

    def interrupted(*args):
        raise KeyboardInterrupt  # Ctrl-C while the version waits for its decision
    with monkeypatch.context() as patch:
        patch.setattr(registry, "take_turn", interrupted)
        second_id, uri = register_in_a_stopped_run(store, tmp_path, 0.9)
    with tracking.open_run("exp", tracking_uri=None, store_dir=store,
                           resume_run_id=second_id):
        decided = tracking.register_and_promote(uri, "model-x", metrics={"test_accuracy": 0.9},
                                                test_digest="d", data_digest="d")
    assert (decided.version, decided.promoted) == ("2", True)
    versions = MlflowClient().search_model_versions("name='model-x'")
    assert sorted((v.version, v.run_id) for v in versions) == [(1, run_id), (2, second_id)]


def test_a_run_stopped_after_its_version_became_champion_is_resumed_as_champion(
        tmp_path: Path, monkeypatch):
    """Stopped between setting the champion alias and recording the decision, the resumed
    run decides again and keeps its version champion (it must not tie with itself)."""
    store = tmp_path / "mlruns"
    setting_tag = MlflowClient.set_model_version_tag

    def stop_after_the_alias(client, name, version, key, value):
        if key == "promotion":  # the first write after set_registered_model_alias
            raise KeyboardInterrupt
        return setting_tag(client, name, version, key, value)
    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "set_model_version_tag", stop_after_the_alias)
        run_id, uri = register_in_a_stopped_run(store, tmp_path, 0.8)
    assert champion_version(store) == "1"
    with tracking.open_run("exp", tracking_uri=None, store_dir=store, resume_run_id=run_id):
        again = tracking.register_and_promote(uri, "model-x", metrics={"test_accuracy": 0.8},
                                              test_digest="d", data_digest="d")
    assert (again.version, again.promoted) == ("1", True)
    assert MlflowClient().get_run(run_id).data.tags["champion"] == "True"


def test_the_promotion_queue_waits_only_for_a_version_whose_process_may_still_decide(
        tmp_path: Path):
    """A pending version is waited for while the run that registered it is RUNNING with a
    live process (its lease); not once that run has ended, nor when its process is gone
    (what SIGKILL leaves: the run RUNNING, its pid dead)."""
    store = tmp_path / "mlruns"
    tracking.connect(None, store)
    client = MlflowClient()

    def register_pending(run_id: str) -> object:
        uri = log_tiny_model(tmp_path / "model")
        return mlflow.register_model(uri, "model-x", tags={
            registry.PROMOTION_STATE: registry.PENDING, registry.REGISTERED_BY: run_id})
    with tracking.open_run("exp", tracking_uri=None, store_dir=store) as run_id:
        register_pending(run_id)
        [pending] = client.search_model_versions("name='model-x'")
        assert registry.may_still_decide(client, pending)  # this process, deciding
    [pending] = client.search_model_versions("name='model-x'")
    assert not registry.may_still_decide(client, pending)  # its run ended
    dead = subprocess.Popen(["true"])
    dead.wait()
    client.update_run(run_id, "RUNNING")
    client.set_tag(run_id, leases.PID, str(dead.pid))  # killed: RUNNING, its process gone
    assert not registry.may_still_decide(client, pending)
    assert registry.ahead_in_queue(client, "model-x", 2) == []  # nothing to wait for
    client.set_model_version_tag("model-x", pending.version, registry.REGISTERED_BY, "0" * 32)
    [pending] = client.search_model_versions("name='model-x'")
    assert not registry.may_still_decide(client, pending)  # its run is gone from the store


def test_a_lease_is_judged_by_machine_and_never_by_a_heartbeat_from_the_future():
    """A pid is looked up only on this machine and pid namespace (a container sharing the host
    name is another host); another host's lease by its heartbeat, one ahead of this clock
    never taken for an expired one."""
    now = time.time()
    here = socket.gethostname()
    alive = {leases.HOST: here, leases.MACHINE: leases.machine(), leases.PID: str(os.getpid()),
             leases.PROCESS_STARTED: repr(leases.process_started(os.getpid())),
             leases.HEARTBEAT: repr(now)}
    with pytest.raises(SetupError, match="its process \\(pid .* on this host\\) is alive"):
        leases.why_holder_is_gone("r", alive, now)
    elsewhere = alive | {leases.MACHINE: "another-machine:1", leases.PID: "999999"}
    with pytest.raises(SetupError, match=f"RUNNING on {here} \\(pid 999999\\), whose lease "
                       "was renewed 0 s ago"):
        leases.why_holder_is_gone("r", elsewhere, now)  # not "no longer exists"
    assert "has not renewed its lease for 150 s" in leases.why_holder_is_gone(
        "r", elsewhere, now + 150)
    with pytest.raises(SetupError, match="renewed 300 s ahead of this host's clock"):
        leases.why_holder_is_gone("r", elsewhere, now - 300)


@pytest.mark.parametrize(("error", "status"), [(RuntimeError, "FAILED"),
                                                (KeyboardInterrupt, "KILLED")])
def test_an_interrupted_or_failed_run_is_marked_with_why(tmp_path: Path, error, status):
    store = tmp_path / "mlruns"
    with pytest.raises(error), tracking.open_run("exp", tracking_uri=None,
                                                 store_dir=store) as run_id:
        raise error("boom")
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == status
    if status == "FAILED":  # the run says why, in a tag and on its page
        assert run.data.tags["error"] == "RuntimeError: boom"
        assert run.data.tags["mlflow.note.content"] == "**failed**: `RuntimeError: boom`"
    else:
        assert "error" not in run.data.tags
    assert mlflow.active_run() is None


def test_a_run_in_a_deleted_experiment_is_refused_with_how_to_restore_it(tmp_path: Path):
    store = tmp_path / "mlruns"
    with tracking.open_run("exp", tracking_uri=None, store_dir=store):
        pass
    experiment = mlflow.get_experiment_by_name("exp")
    MlflowClient().delete_experiment(experiment.experiment_id)
    refused = (f"experiment 'exp' \\(id {experiment.experiment_id}\\) is deleted: restore it "
               "\\(mlflow experiments restore")
    with (pytest.raises(SetupError, match=refused),
          tracking.open_run("exp", tracking_uri=None, store_dir=store)):
        pass
    assert mlflow.active_run() is None


def test_logged_model_has_a_signature_and_pinned_requirements(tmp_path: Path):
    store = tmp_path / "mlruns"
    with tracking.open_run("exp", tracking_uri=None, store_dir=store):
        uri = log_tiny_model(tmp_path / "model")
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.input_names() == ["text"]
    assert info.signature.outputs.input_names() == [
        "label", "probability_neg", "probability_pos", "error"]
    loaded = mlflow.pyfunc.load_model(uri)
    prediction = loaded.predict(pd.DataFrame({"text": ["great fun", "awful plot"]}))
    assert prediction["label"].tolist() == ["pos", "neg"]
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text()
    assert "tensorflow==" in requirements and "scikit-learn==" in requirements


@pytest.mark.parametrize("first", [1, 0])  # epoch N at step N; a run logged from 0 goes on so
def test_a_resumed_fit_logs_the_epochs_its_checkpoint_holds_and_the_run_lacks(tmp_path: Path,
                                                                              first: int):
    with tracking.open_run("exp", tracking_uri=None, store_dir=tmp_path / "mlruns") as run_id:
        for epoch, loss in ((0, 1.0), (1, 0.9)):
            tracking.log_metrics({"loss": loss, "accuracy": 0.5}, step=epoch + first)
        # killed after epoch 2's checkpoint was written, before its metrics were logged
        (logger := tracking.EpochMetricsLogger()).resumed_from(
            {"loss": [1.0, 0.9, 0.8], "accuracy": [0.5, 0.5, 0.6]})
        logger.on_epoch_end(3, {"loss": 0.7, "accuracy": 0.7})
    client = MlflowClient()
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss")) == [
        (first, 1.0), (first + 1, 0.9), (first + 2, 0.8), (first + 3, 0.7)]
    assert sorted(m.step for m in client.get_metric_history(run_id, "accuracy")) == list(
        range(first, first + 4))


def test_connect_leaves_the_environment_as_it_was(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.connect(None, tmp_path / "store")
    assert uri == f"sqlite:///{(tmp_path / 'store').resolve()}/mlflow.db"
    assert mlflow.get_tracking_uri() == uri
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_a_copied_store_is_the_migrated_one_with_its_own_default_experiment(
        tmp_path: Path, migrated_store_copies: Path):
    """The suite's new stores are copies of one store that MLflow migrated (tests/stores.py):
    MLflow's latest schema revision and the same tables and indexes, and a Default experiment
    that MLflow made in the new store, not the one of the store it was copied from."""
    store = tmp_path / "mlruns"
    with tracking.open_run("exp", tracking_uri=None, store_dir=store):
        pass
    client = MlflowClient()
    default, experiment = client.get_experiment("0"), client.get_experiment_by_name("exp")

    def schema(database: Path) -> tuple[list, list]:
        with closing(sqlite3.connect(database)) as db:
            return (sorted(db.execute("SELECT type, name, sql FROM sqlite_master")),
                    db.execute("SELECT version_num FROM alembic_version").fetchall())

    assert schema(store / "mlflow.db") == schema(migrated_store_copies)
    assert schema(migrated_store_copies)[1] == [(_get_latest_schema_revision(),)]
    assert default.name == "Default" and str(migrated_store_copies.parent) not in \
        default.artifact_location
    assert experiment.artifact_location == (store.resolve() / "artifacts").as_uri()


def test_class_names_mlflow_cannot_use_get_safe_metric_names(tmp_path: Path):
    """Folder names such as `it's` or `über word` are not MLflow metric names: the run's
    metrics use the mapped names, which label_map.json records when the data is logged,
    before training."""
    labels = ("it's", "über word", "it s", "日本", "yes")
    names = evaluation.metric_names(labels)
    assert names == {"it's": "it_s", "über word": "uber_word", "it s": "it_s_2",
                     "日本": "class3", "yes": "yes"}
    with tracking.open_run("exp", tracking_uri=None, store_dir=tmp_path / "mlruns") as run_id:
        probabilities = np.eye(5)[[0, 1, 2, 3, 4, 0]]
        evaluation.log_evaluation(probabilities, np.array([0, 1, 2, 3, 4, 4]), labels)
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics["test_recall_uber_word"] == 1 and metrics["test_recall_yes"] == 0.5
    assert {f"test_precision_{name}" for name in names.values()} <= set(metrics)


def test_every_name_the_tracking_package_exports_exists():
    assert [name for name in tracking.__all__ if not hasattr(tracking, name)] == []


def test_a_model_folder_on_disk_is_used_without_a_store(tmp_path: Path, monkeypatch, capsys):
    """`predict --model-uri FOLDER` (a downloaded version) reads no store and makes none."""
    with tracking.open_run("exp", tracking_uri=None, store_dir=tmp_path / "mlruns"):
        uri = log_tiny_model(tmp_path / "model")
    folder = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "downloaded"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert sentiment.main(["predict", "a great film", "--model-uri", folder]) == 0
    assert "a great film\tpos\t" in capsys.readouterr().out
    assert list(elsewhere.iterdir()) == []
    # evaluate reads the run that logged it from the store given, and gets as far as the data
    # (a folder without the aclImdb layout); without a store it says so and makes none
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sentiment.main(["evaluate", "--model-uri", folder, "--store-dir",
                           str(tmp_path / "mlruns"), "--data-dir", str(empty)]) == 2
    assert f"{empty / 'test' / 'neg'} is missing" in capsys.readouterr().err
    assert sentiment.main(["evaluate", "--model-uri", folder, "--data-dir", str(empty)]) == 2
    assert f"{folder}: there is no MLflow store in mlruns" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []
