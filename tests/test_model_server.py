"""The registered champions leave the project: they load and predict in a fresh environment
with only their own logged requirements (not this project) as they do here, and `mlflow models
serve` answers POST /invocations for both (the speech one served from that environment), and
refuses a request over the served bounds with a clear error while answering the next one."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipelines import sentiment, speech, tracking
from pipelines.request_bounds import MAX_REQUEST_ROWS
from pipelines.sentiment import SentimentConfig
from pipelines.speech import SpeechConfig
from tests.datasets import make_imdb, make_speech_commands
from tests.processes import free_port, fresh_environment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One store holding a tiny trained champion of each registered model."""
    root = tmp_path_factory.mktemp("served")
    store = root / "mlruns"
    speech.run(SpeechConfig.from_options(
        data_dir=str(make_speech_commands(root / "speech")), store_dir=str(store),
        cache_dir=str(root / "cache"), units=8, depth=1, dense_units=0, epochs=1, batch_size=16))
    sentiment.run(SentimentConfig.from_options(
        data_dir=str(make_imdb(root / "aclImdb")), store_dir=str(store), validation_pct=25, units=8,
        embedding_dim=8, vocabulary_size=200, sequence_length=32, epochs=1, batch_size=8))
    return store


@pytest.fixture(scope="module")
def portable_python(store: Path) -> Path:
    """The Python of a new virtual environment with only the speech champion's logged
    requirements installed: no project, nothing else of this one."""
    tracking.connect(None, store)
    requirements = {name: Path(mlflow.pyfunc.get_model_dependencies(
        f"models:/{name}@champion")).read_text() for name in MODELS}
    assert requirements["speech-commands"] == requirements["imdb-sentiment"]
    listed = store.parent / "requirements.txt"
    listed.write_text(requirements["speech-commands"])
    return fresh_environment(listed, store.parent / "portable-venv")


MODELS = ("speech-commands", "imdb-sentiment")
PORTABLE_SCRIPT = """
import importlib.util, json, sys
import mlflow, pandas as pd
assert importlib.util.find_spec("pipelines") is None, "the project is importable"
frames = {"speech-commands": pd.DataFrame({"audio": [open(p, "rb").read() for p in sys.argv[2:]]}),
          "imdb-sentiment": pd.DataFrame({"text": json.load(open(sys.argv[1]))})}
answers = {name: mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(frame)
                 .to_dict(orient="list") for name, frame in frames.items()}
answers["served_from"] = sys.modules["pipelines.serving"].__file__
print(json.dumps(answers))
"""


def test_champions_predict_alike_where_only_their_requirements_are_installed(
        store: Path, portable_python: Path, shared_speech_dir: Path, shared_imdb_dir: Path):
    clips = [str(path) for word in ("yes", "no") for path in
             sorted((shared_speech_dir / word).glob("*.wav"))[:2]]
    reviews = [path.read_text(encoding="utf-8") for path in
               sorted((shared_imdb_dir / "test" / "pos").glob("*.txt"))[:2]] + ["<br />"]
    (store.parent / "reviews.json").write_text(json.dumps(reviews))
    answer = subprocess.run(
        [str(portable_python), "-c", PORTABLE_SCRIPT, "reviews.json", *clips],
        cwd=store.parent, capture_output=True, text=True, check=False,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
             "MLFLOW_TRACKING_URI": tracking.local_store_uri(store)})
    assert answer.returncode == 0, answer.stderr[-3000:]
    portable = json.loads(answer.stdout.strip().splitlines()[-1])
    assert "/code/pipelines/serving.py" in portable["served_from"]  # shipped with the model
    tracking.connect(None, store)
    inputs = {"speech-commands": pd.DataFrame({"audio": [Path(p).read_bytes() for p in clips]}),
              "imdb-sentiment": pd.DataFrame({"text": reviews})}
    for name in MODELS:
        here = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(inputs[name])
        there = pd.DataFrame(portable[name])
        assert there["label"].tolist() == here["label"].tolist()
        np.testing.assert_allclose(there.filter(like="probability_").to_numpy(float),
                                   here.filter(like="probability_").to_numpy(float), atol=1e-5)


@pytest.fixture
def server(store: Path, portable_python: Path, request) -> Iterator[str]:
    """Starts `mlflow models serve` for the parametrised model on a free loopback port: the
    speech champion from the environment with only its requirements, the sentiment one from
    this project's."""
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking.local_store_uri(store))
    python = sys.executable
    if request.param == "speech-commands":
        python = str(portable_python)
        env = {"PATH": f"{portable_python.parent}:{os.environ['PATH']}",
               "HOME": os.environ.get("HOME", "/tmp"), "MLFLOW_TRACKING_URI": env[
                   "MLFLOW_TRACKING_URI"]}
    log_path = store.parent / f"serve-{request.param}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [python, "-m", "mlflow", "models", "serve", "-m",
             f"models:/{request.param}@champion", "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=store.parent, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"model server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def invoke(url: str, payload: dict) -> list[dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())["predictions"]


@pytest.mark.parametrize("server", ["speech-commands"], indirect=True)
def test_speech_server_labels_a_real_clip(server: str, store: Path, shared_speech_dir: Path):
    clip = sorted((shared_speech_dir / "yes").glob("*.wav"))[0].read_bytes()
    predictions = invoke(server, {"dataframe_records": [
        {"audio": base64.b64encode(clip).decode()},
        {"audio": base64.b64encode(b"not a wav file").decode()}]})
    tracking.connect(None, store)
    local = mlflow.pyfunc.load_model("models:/speech-commands@champion").predict(
        pd.DataFrame({"audio": [clip]}))
    assert predictions[0]["label"] == local.loc[0, "label"]
    assert predictions[0]["probability_yes"] == pytest.approx(local.loc[0, "probability_yes"],
                                                              abs=1e-6)
    assert predictions[0]["error"] is None
    assert predictions[1]["label"] is None and "not decodable audio" in predictions[1]["error"]
    assert predictions[1]["probability_yes"] is None  # null: the answer is strict JSON
    # the `inputs` and `instances` forms, whose base64 MLflow passes on undecoded: the same
    encoded = base64.b64encode(clip).decode()
    for payload in ({"inputs": {"audio": [encoded, encoded]}},
                    {"instances": [{"audio": encoded}]}):
        for answer in invoke(server, payload):
            assert answer["error"] is None and answer["label"] == predictions[0]["label"]
            assert answer["probability_yes"] == pytest.approx(predictions[0]["probability_yes"])

    # a clip in a column the model does not take: refused whole, the columns it takes named
    with pytest.raises(urllib.error.HTTPError) as refused:
        invoke(server, {"dataframe_records": [{"text": base64.b64encode(clip).decode()}]})
    assert refused.value.code == 400
    assert ("the request holds none of the model's input columns (audio, waveform, "
            "sample_rate)") in json.loads(refused.value.read())["message"]


@pytest.mark.parametrize("server", ["imdb-sentiment"], indirect=True)
def test_sentiment_server_labels_real_reviews(server: str, store: Path, shared_imdb_dir: Path):
    reviews = [path.read_text(encoding="utf-8") for path in
               sorted((shared_imdb_dir / "test" / "pos").glob("*.txt"))[:2]]
    predictions = invoke(server, {"dataframe_split": {"columns": ["text"],
                                                      "data": [[text] for text in reviews]}})
    tracking.connect(None, store)
    local = mlflow.pyfunc.load_model("models:/imdb-sentiment@champion").predict(
        pd.DataFrame({"text": reviews}))
    assert [p["label"] for p in predictions] == local["label"].tolist()
    assert all(p["label"] in ("neg", "pos") and p["error"] is None for p in predictions)

    # a request over the row bound is refused whole (HTTP 400, the bound and the size named)
    with pytest.raises(urllib.error.HTTPError) as refused:
        invoke(server, {"dataframe_split": {"columns": ["text"],
                                            "data": [[reviews[0]]] * (MAX_REQUEST_ROWS + 1)}})
    assert refused.value.code == 400
    assert (f"request too large: {MAX_REQUEST_ROWS + 1} rows, over the bound of "
            f"{MAX_REQUEST_ROWS} rows") in json.loads(refused.value.read())["message"]
    # in the `inputs` form too, without the request echoed back whole
    with pytest.raises(urllib.error.HTTPError) as refused:
        invoke(server, {"inputs": {"text": [reviews[0]] * (MAX_REQUEST_ROWS + 1)}})
    message = json.loads(refused.value.read())["message"]
    assert refused.value.code == 400 and len(message) < 1000, message[:2000]
    assert message.endswith(f"request too large: {MAX_REQUEST_ROWS + 1} rows, over the bound "
                            f"of {MAX_REQUEST_ROWS} rows a request may send (MAX_REQUEST_ROWS);"
                            " send them in smaller requests")

    # and it goes on answering: an over-long review gets an error row, the others an answer
    predictions = invoke(server, {"dataframe_split": {
        "columns": ["text"], "data": [["x" * 100_001], [reviews[0]], ["<br /><br />"]]}})
    assert predictions[0]["label"] is None and predictions[0]["probability_pos"] is None
    assert predictions[0]["error"].startswith("text: 100001 characters long")
    assert predictions[1]["label"] == local["label"][0]
    assert predictions[2]["error"] is None and predictions[2]["label"] in ("neg", "pos")
