"""`mlflow run .`: the MLproject's entry points, its environment, and how the pipelines' runs
relate to the run `mlflow run` makes of its own (MLFLOW_RUN_ID)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from mlflow.projects import _project_spec
from mlflow.tracking import MlflowClient
from mlflow.utils.environment import _PythonEnv
from mlflow.utils.requirements_utils import _parse_requirements
from mlflow.utils.virtualenv import _get_virtualenv_name

from pipelines import cli, sentiment, speech, tracking
from pipelines.tracking.runs import PROJECT_RUN_TAG, PROJECT_RUN_VARIABLE, ensure_experiment
from pipelines.tracking.stores import artifact_root
from tests.test_layout import requirement_name

REPO = Path(__file__).resolve().parents[1]
PARENT = "mlflow.parentRunId"
TASKS = {"speech": speech.COMMANDS, "sentiment": sentiment.COMMANDS}


def entry_command(name: str, **params: object) -> list[str]:
    """The command line MLflow runs for entry point `name` with `params`."""
    entry = _project_spec.load_project(REPO).get_entry_point(name)
    return shlex.split(entry.compute_command({"data_dir": str(REPO)} | params, storage_dir=None))


@pytest.mark.parametrize("pipeline", sorted(TASKS))
def test_training_entry_points_run_the_command_with_its_defaults(pipeline: str):
    task = TASKS[pipeline]
    command = entry_command(pipeline)
    assert command[:3] == ["python", "-m", f"pipelines.{pipeline}"]
    args = cli.training_parser(task).parse_args(command[3:])
    options = cli.config_from_args(task.config, args).options()
    assert options == task.config().options() | {"data_dir": str(REPO)}

    extra = entry_command(pipeline, units=8, **{"checkpoint-dir": "/tmp/a b"})  # as flags
    args = cli.training_parser(task).parse_args(extra[3:])
    assert (args.units, args.checkpoint_dir) == (8, "/tmp/a b")


@pytest.mark.parametrize("pipeline", sorted(TASKS))
def test_evaluate_entry_points_use_the_evaluate_command_and_its_defaults(pipeline: str, capsys):
    task = TASKS[pipeline]
    command = entry_command(f"evaluate-{pipeline}")
    assert command[:4] == ["python", "-m", f"pipelines.{pipeline}", "evaluate"]
    values = dict(zip(command[4::2], command[5::2], strict=True))
    run = task.config().run
    assert values == {"--data-dir": str(REPO),
                      "--model-uri": f"models:/{run.registered_model}@champion"}
    with pytest.raises(SystemExit) as helped:
        cli.main(task, ["evaluate", "--help"])
    assert helped.value.code == 0
    assert set(values) <= set(capsys.readouterr().out.split())


def test_python_env_installs_the_project_with_the_constraints():
    project = _project_spec.load_project(REPO)
    python_env = _PythonEnv.from_yaml(REPO / project.env_config_path)
    assert python_env.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    requirements = list(_parse_requirements(python_env.dependencies, is_constraint=False,
                                            base_dir=REPO))
    pins = [line for line in (REPO / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert [r.req_str for r in requirements if r.is_constraint] == pins
    assert [r.req_str for r in requirements if not r.is_constraint] == ["."]
    assert _get_virtualenv_name(python_env, REPO).startswith("mlflow-")

    project_toml = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project_toml["dependencies"], *project_toml["optional-dependencies"]["dev"]]
    pinned = {requirement_name(pin) for pin in pins}
    assert {requirement_name(text) for text in wanted} - pinned == set()  # else regenerate it
    assert "speech-text-pipelines" not in pinned


def open_project_run(store: Path, experiment: str) -> str:
    """A run standing for the one `mlflow run` makes, in `experiment` of the local store."""
    tracking.connect(None, store)
    experiment_id = ensure_experiment(experiment, store / "artifacts")
    return MlflowClient().create_run(experiment_id).info.run_id


def test_runs_under_mlflow_run_are_tied_to_its_run_and_never_reopen_it(tmp_path: Path,
                                                                       monkeypatch):
    store = tmp_path / "mlruns"
    project = open_project_run(store, "exp")
    monkeypatch.setenv(PROJECT_RUN_VARIABLE, project)
    with (tracking.open_run("exp", tracking_uri=None, store_dir=store,
                            tags={"pipeline": "speech"}) as first,
          tracking.open_run("exp", tracking_uri=None, store_dir=store) as trial):
        pass  # a run opened in another: a sweep's trial
    with tracking.open_run("exp", tracking_uri=None, store_dir=store) as second:
        pass
    with tracking.open_run("other", tracking_uri=None, store_dir=store) as elsewhere:
        pass

    client = MlflowClient()
    tags = {run_id: client.get_run(run_id).data.tags
            for run_id in (project, first, trial, second, elsewhere)}
    assert len(tags) == 5  # every run is a new one
    assert tags[first][PARENT] == tags[second][PARENT] == project
    assert tags[first][PROJECT_RUN_TAG] == tags[second][PROJECT_RUN_TAG] == project
    assert tags[trial][PARENT] == first and PROJECT_RUN_TAG not in tags[trial]
    assert tags[elsewhere][PROJECT_RUN_TAG] == project and PARENT not in tags[elsewhere]
    assert "pipeline" not in tags[project]
    assert client.get_run(project).info.status == "RUNNING"  # mlflow run ends it, not we
    assert os.environ[PROJECT_RUN_VARIABLE] == project


def test_a_project_run_of_another_store_is_left_alone(tmp_path: Path, monkeypatch):
    project = open_project_run(tmp_path / "elsewhere", "exp")
    monkeypatch.setenv(PROJECT_RUN_VARIABLE, project)
    store = tmp_path / "mlruns"
    with tracking.open_run("exp", tracking_uri=None, store_dir=store) as run_id:
        pass
    tags = MlflowClient().get_run(run_id).data.tags
    assert PARENT not in tags and PROJECT_RUN_TAG not in tags


def test_a_sqlite_stores_artifacts_are_kept_beside_its_database(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert artifact_root(None, "mlruns") == tmp_path / "mlruns" / "artifacts"
    assert artifact_root("sqlite:///mlruns/mlflow.db", "mlruns") == (
        tmp_path / "mlruns" / "artifacts")
    assert artifact_root(f"sqlite:///{tmp_path}/other/x.db", "mlruns") == (
        tmp_path / "other" / "artifacts")
    assert artifact_root("http://127.0.0.1:5000", "mlruns") is None

    for folder in ("mlruns", "elsewhere"):  # the store folder's own URI, and another one's
        (tmp_path / folder).mkdir(exist_ok=True)
        uri = tracking.local_store_uri(tmp_path / folder)
        with tracking.open_run("exp", tracking_uri=uri, store_dir="mlruns"):
            pass
        location = MlflowClient().get_experiment_by_name("exp").artifact_location
        assert location == (tmp_path / folder / "artifacts").as_uri()
    assert not (tmp_path / "mlruns" / "1").exists()  # nothing in MLflow's ./mlruns default


def test_mlflow_run_trains_and_registers_as_the_command_does(speech_dir: Path, tmp_path: Path):
    """`mlflow run . -e speech` (the project run in the pipeline's experiment): the training
    run nested under the project run, its metrics and model, a registered champion."""
    store = tmp_path / "mlruns"
    uri = tracking.local_store_uri(store)
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_"))}
    environment |= {"MLFLOW_TRACKING_URI": uri,
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    parameters = {"data_dir": speech_dir, "epochs": 1,
                  "cache-dir": tmp_path / "cache", "checkpoint-dir": tmp_path / "checkpoints",
                  "units": 8, "depth": 1, "dense-units": 0, "conv-filters": 8,
                  "batch-size": 32}
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "speech", "--env-manager",
         "local", "--experiment-name", "speech-commands",
         *(item for key, value in parameters.items() for item in ("-P", f"{key}={value}"))],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered        version 1 (the new champion: there was none before)" in done.stdout

    tracking.connect(uri, store)
    client = MlflowClient()
    version = client.get_model_version_by_alias("speech-commands", "champion")
    run = client.get_run(version.run_id)
    project = client.get_run(run.data.tags[PARENT])
    assert run.data.tags[PROJECT_RUN_TAG] == project.info.run_id
    assert run.info.experiment_id == project.info.experiment_id
    assert (run.info.status, project.info.status) == ("FINISHED", "FINISHED")
    assert project.data.tags["mlflow.project.entryPoint"] == "speech"
    assert project.data.params["data_dir"] == str(speech_dir)
    assert project.data.metrics == {} and "pipeline" not in project.data.tags
    assert run.data.tags["pipeline"] == "speech"
    assert run.data.params["units"] == "8" and run.data.params["epochs"] == "1"
    assert {"test_accuracy", "test_macro_f1", "val_loss"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 1
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"data", "plots"}
    model_id = version.source.removeprefix("models:/")
    assert client.get_logged_model(model_id).source_run_id == run.info.run_id
