"""A registered version whose artifacts are missing or damaged: loading it (`predict`,
`evaluate`, `mlflow models serve`) fails with a message naming the version and what is wrong."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from pipelines import cli, sentiment, tracking
from pipelines.errors import ModelError
from pipelines.request_bounds import MAX_REQUEST_ROWS, RequestTooLarge
from pipelines.serving import TextPredictor
from tests.builders import register_tiny_speech_model
from tests.processes import free_port

REPO = Path(__file__).resolve().parents[1]
NAME = "tiny-speech"
URI = f"models:/{NAME}@champion"
VERSION = f"model '{NAME}' version 1"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A SQLite store holding one registered (champion) version of a tiny speech model."""
    store = tmp_path_factory.mktemp("artifacts") / "mlruns"
    register_tiny_speech_model(store, NAME)
    return store


@pytest.fixture
def model_dir(store: Path, tmp_path: Path) -> Iterator[Path]:
    """The registered version's artifact folder, put back as it was after the test."""
    folder = next((store / "artifacts" / "models").iterdir()) / "artifacts"
    shutil.copytree(folder, tmp_path / "saved")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(tmp_path / "saved", folder)


def load(store: Path, uri: str = URI):
    return tracking.load_served_model(uri, None, store)


@pytest.mark.parametrize(("uri", "message"), [
    (f"models:/{NAME}@nope", "Registered model alias nope not found"),
    (f"models:/{NAME}/7", f"name={NAME}, version=7"),
    ("models:/no-such-model@champion", "Registered Model with name=no-such-model not found"),
])
def test_a_missing_model_alias_or_version_is_named(store: Path, uri: str, message: str):
    with pytest.raises(ModelError, match=f"^{uri}: no such model version") as error:
        load(store, uri)
    assert message in str(error.value)
    # the hint only where no version was ever registered under that name
    assert str(error.value).endswith("; a training run registers the model no-such-model") == (
        "no-such-model" in uri)
    with pytest.raises(ModelError) as options_error:  # evaluate and export read the options
        tracking.evaluated_model(uri, None, store, ["audio"])
    assert str(options_error.value) == str(error.value)


def test_a_model_of_the_other_pipeline_is_refused_by_name(store: Path, capsys):
    assert cli.main(sentiment.COMMANDS, ["predict", "--store-dir", str(store), "--model-uri",
                                         URI, "A moving film."]) == 2
    assert capsys.readouterr().err == (
        f"error: {URI} ({VERSION}): takes audio, waveform, sample_rate, not the text this "
        "command sends (a model of the other pipeline?)\n")


def test_a_store_folder_without_a_store_is_named_and_left_alone(tmp_path: Path):
    """A mistyped --store-dir is not made into a new, empty store."""
    missing = tmp_path / "mlrus"
    with pytest.raises(ModelError, match=f"^{URI}: there is no MLflow store in {missing} "
                                         "\\(no mlflow.db\\)"):
        load(missing)
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="there is no MLflow store in"):
        load(empty)
    assert list(empty.iterdir()) == []
    typo = f"sqlite:///{tmp_path}/a/b/mlflow.db"  # nor a mistyped SQLite tracking URI
    with pytest.raises(ModelError, match=f"^{URI}: there is no MLflow store at "
                       f"{tmp_path}/a/b/mlflow.db \\(the tracking URI's SQLite file does not "
                       "exist\\)"):
        tracking.load_served_model(URI, typo, "mlruns")
    assert not (tmp_path / "a").exists()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def damage_keras_config(path: Path) -> None:
    """A .keras archive that is a valid zip whose model config is not JSON."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, b"{not json" if name == "config.json" else data)


DAMAGES = {  # what is done to the artifact folder -> what the message says
    "no_classifier": (lambda d: (d / "artifacts/classifier.keras").unlink(),
                      f"{URI}: {VERSION}: artifact classifier.keras is missing \\(no file at "),
    "no_config": (lambda d: (d / "artifacts/config.json").unlink(),
                  f"{URI}: {VERSION}: artifact config.json is missing"),
    "truncated_classifier": (lambda d: truncate(d / "artifacts/classifier.keras"),
                             f"{URI}: {VERSION}: artifact classifier.keras could not be loaded: "
                             r"not a \.keras zip archive \([\d,]+ bytes; truncated or damaged\?\)"),
    "damaged_classifier": (lambda d: damage_keras_config(d / "artifacts/classifier.keras"),
                           f"{URI}: {VERSION}: artifact classifier.keras could not be loaded as "
                           r"a Keras model \(JSONDecodeError: "),
    "truncated_config": (lambda d: truncate(d / "artifacts/config.json"),
                         f"{URI}: {VERSION}: artifact config.json could not be loaded as the "
                         "labels and MFCC settings"),
    "no_python_model": (lambda d: (d / "python_model.pkl").unlink(),
                        rf"{URI} \({VERSION}\): cannot be loaded \(FileNotFoundError: .*"
                        "python_model.pkl"),
    "no_folder": (shutil.rmtree, rf"{URI} \({VERSION}\): its artifact folder .* is missing$"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_missing_or_damaged_artifacts_are_named_with_the_version(store: Path, model_dir: Path,
                                                                 damage: str):
    harm, message = DAMAGES[damage]
    harm(model_dir)
    with pytest.raises(ModelError, match=f"^{message}"):
        load(store)


def test_the_text_models_files_are_named_when_missing_or_damaged(tmp_path: Path):
    with pytest.raises(ModelError, match=r"^artifact classifier\.keras is missing"):
        TextPredictor.load(tmp_path / "classifier.keras", ("neg", "pos"))
    (tmp_path / "baseline.joblib").write_bytes(b"\x80\x04 cut short")
    with pytest.raises(ModelError, match=r"^artifact baseline\.joblib could not be loaded as a "
                       r"scikit-learn pipeline \("):
        TextPredictor.load(tmp_path / "baseline.joblib", ("neg", "pos"))


def test_the_intact_version_loads_and_refuses_an_oversized_request(store: Path):
    model = load(store)
    with pytest.raises(RequestTooLarge, match=f"^request too large: {MAX_REQUEST_ROWS + 1} rows"):
        model.predict(pd.DataFrame({"audio": [b"RIFF"] * (MAX_REQUEST_ROWS + 1)}))


@pytest.mark.slow  # two processes: `predict` and `mlflow models serve`
def test_predict_and_serve_report_a_truncated_classifier_without_a_traceback(
        store: Path, model_dir: Path, tmp_path: Path):
    truncate(model_dir / "artifacts" / "classifier.keras")
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, np.zeros(16000, np.float32), 16000)
    predict = subprocess.run(
        [sys.executable, "-m", "pipelines.speech", "predict", str(clip), "--model-uri", URI,
         "--store-dir", str(store)], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"})
    assert predict.returncode == 2, predict.stderr[-3000:]
    assert (f"error: {URI}: {VERSION}: artifact classifier.keras could not be loaded: not a "
            ".keras zip archive") in predict.stderr
    assert "Traceback" not in predict.stderr

    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        served = subprocess.run(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", URI, "--env-manager",
             "local", "--host", "127.0.0.1", "--port", str(free_port())],
            env=dict(os.environ, MLFLOW_TRACKING_URI=tracking.local_store_uri(store)),
            cwd=store.parent, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    output = log.read_text()
    assert served.returncode != 0  # the server never started
    assert (f"pipelines.errors.ModelError: {VERSION}: artifact classifier.keras could not be "
            "loaded: not a .keras zip archive") in output, output[-3000:]
    assert "keras/src/saving" not in output  # no traceback through Keras' loading code


KERAS_ALONE = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):  # what the pyfunc model needs besides Keras
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"scipy", "sklearn", "pandas", "librosa", "mlflow", "joblib"}:
            raise ModuleNotFoundError(f"No module named {name!r} here")
sys.meta_path.insert(0, Absent())
sys.path.insert(0, sys.argv[1] + "/code")
import features.mfcc_layer, models.recurrent  # registers the custom objects (docs/models.md)
import keras, numpy as np
model = keras.saving.load_model(sys.argv[1] + "/artifacts/classifier.keras")
print(model.predict(np.zeros((2, 16000), np.float32), verbose=0).shape, models.recurrent.__file__)
"""


def test_the_speech_model_loads_in_keras_with_its_two_shipped_modules_alone(model_dir: Path,
                                                                              tmp_path: Path):
    answer = subprocess.run([sys.executable, "-c", KERAS_ALONE, str(model_dir)], cwd=tmp_path,
                            capture_output=True, text=True, check=False)
    assert answer.returncode == 0, answer.stderr[-3000:]
    shape, module = answer.stdout.rsplit(maxsplit=1)
    assert shape == "(2, 2)" and module == f"{model_dir}/code/models/recurrent.py"  # 2 classes
