"""Training under tf.distribute: MirroredStrategy over two logical CPU devices, and
MultiWorkerMirroredStrategy over two worker processes on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from pipelines import distribute, interrupts, lifecycle, tracking
from pipelines.errors import SetupError, WorkerLost
from pipelines.speech import SpeechConfig
from tests import test_sentiment_pipeline, test_speech_pipeline
from tests.processes import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]

# logical devices must be configured before TensorFlow starts: a fresh process
TWO_CPU_REPLICAS = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from pipelines import sentiment, speech
    speech_args, sentiment_args = json.loads(sys.argv[1])
    assert speech.main(speech_args) == 0
    assert sentiment.main(sentiment_args) == 0
""")


def test_mirrored_strategy_over_two_cpu_devices_trains_and_registers_each_pipeline(
        speech_dir: Path, imdb_dir: Path, tmp_path: Path):
    strategy = ["--strategy", "mirrored", "--checkpoint-dir", str(tmp_path / "checkpoints")]
    speech_args = test_speech_pipeline.small_args(speech_dir, tmp_path, *strategy)
    sentiment_args = test_sentiment_pipeline.small_args(imdb_dir, tmp_path, *strategy)
    done = subprocess.run([sys.executable, "-c", TWO_CPU_REPLICAS,
                           json.dumps([speech_args, sentiment_args])],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]

    tracking.connect(None, tmp_path / "mlruns")
    client = MlflowClient()
    for name, batch in (("speech-commands", 16), ("imdb-sentiment", 8)):
        (version,) = client.search_model_versions(f"name='{name}'")
        run = client.get_run(version.run_id)
        assert run.data.params["strategy"] == "mirrored"
        assert run.data.params["batch_size"] == str(batch)  # per replica
        assert run.data.metrics["replicas"] == 2
        assert run.data.metrics["global_batch_size"] == 2 * batch
        assert client.get_model_version_by_alias(name, "champion").version == version.version
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 2


def tf_config(index: int | str, ports: list[int], task_type: str = "worker") -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": task_type, "index": index}})


@pytest.mark.parametrize("value, message", [
    (None, "needs TF_CONFIG"),
    ("{cluster", "not JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', "needs a 'cluster' and a 'task'"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}',
     "has ps tasks"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
     "is not one of its cluster's tasks (worker: 2)"),
    ('{"cluster": {"chief": ["a:1", "b:1"], "worker": ["c:1"]}, "task": {"type": "chief", '
     '"index": 1}}', "has 2 'chief' tasks; a cluster has at most one"),
    ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}',
     "job 'worker' must be a non-empty list of 'host:port' strings"),
    ('{"cluster": {"worker": null, "chief": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     "job 'worker' must be"),
    ('{"cluster": {"worker": ["a:1"], "chief": "b:1"}, "task": {"type": "worker", "index": 0}}',
     "job 'chief' must be"),
    ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}',
     "cluster lists a:1 for several tasks; each task listens on an address of its own"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": true}}',
     "task index True is not a whole number"),
])
def test_multi_worker_without_a_usable_tf_config_is_a_setup_error(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(SetupError, match=re.escape(message)):
        distribute.worker("multi-worker")


def test_the_chief_is_the_chief_task_or_else_worker_zero(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", tf_config(0, [1, 2]))
    assert distribute.worker("multi-worker") == distribute.Worker("worker", 0, 2)
    assert distribute.worker("multi-worker").is_chief
    monkeypatch.setenv("TF_CONFIG", tf_config(1, [1, 2]))
    assert not distribute.worker("multi-worker").is_chief
    with_chief = {"cluster": {"chief": ["c:1"], "worker": ["a:1"]},
                  "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(with_chief))
    assert str(distribute.worker("multi-worker")) == "worker 0 of 2"
    assert not distribute.worker("multi-worker").is_chief
    monkeypatch.setenv("TF_CONFIG", json.dumps(with_chief | {"task": {"type": "chief",
                                                                         "index": 0}}))
    assert distribute.worker("multi-worker").is_chief
    assert distribute.worker("mirrored").is_chief  # one process: its own chief
    monkeypatch.setenv("TF_CONFIG", tf_config("1", [1, 2]))  # as TensorFlow reads it: 1
    assert distribute.worker("multi-worker") == distribute.Worker("worker", 1, 2)


def test_a_worker_that_is_not_the_chief_is_pointed_at_a_throwaway_store(monkeypatch,
                                                                        tmp_path: Path):
    monkeypatch.setenv("TF_CONFIG", tf_config(1, [1, 2]))
    config = SpeechConfig.from_options(
        strategy="multi-worker", tracking_uri="http://team-server:5000", store_dir=str(tmp_path /
        "mlruns"), run_name="shared", checkpoint_dir=str(tmp_path / "checkpoints"))
    local = lifecycle.join_cluster(config)
    scratch = Path(local.run.store_dir).parent
    assert scratch.parent == Path(tempfile.gettempdir()) and "worker-1" in scratch.name
    assert not scratch.exists()  # made on first use
    assert local.run.tracking_uri is None and local.run.run_name is None
    assert not local.run.register
    assert Path(local.run.checkpoint_dir).parent == scratch
    assert local.source.data_dir == config.source.data_dir
    assert local.optim.seed == config.optim.seed
    monkeypatch.setenv("TF_CONFIG", tf_config(0, [1, 2]))
    assert lifecycle.join_cluster(config) is config


@pytest.mark.parametrize(("option", "message"), [
    ({"resume": "0" * 32}, "--resume continues a single-process run"),
    ({"sweep": 2}, "--sweep runs its trials in one process"),
])
def test_resume_and_sweep_run_in_one_process_only(monkeypatch, tmp_path: Path, option, message):
    monkeypatch.setenv("TF_CONFIG", tf_config(0, [1, 2]))
    config = SpeechConfig.from_options(
        strategy="multi-worker", store_dir=str(tmp_path / "mlruns"), **option)
    with pytest.raises(SetupError, match=f"^{message}"):
        lifecycle.prepare_run(config, "speech")
    assert not (tmp_path / "mlruns").exists()


@contextlib.contextmanager
def two_workers(pipeline: str, args: list[str], tmp_path: Path, worker1_args=()):
    """Starts `python -m pipelines.<pipeline> ARGS --strategy multi-worker` as worker 0 (the
    chief) and worker 1 (with `worker1_args` added) of a loopback cluster; yields the
    processes and their log files, and kills whatever still runs on leaving. Their temporary
    files go to tmp_path/"tmp"."""
    ports = [free_port(), free_port()]
    (tmp_path / "tmp").mkdir()
    logs = [tmp_path / f"worker{index}.log" for index in range(2)]
    workers = [subprocess.Popen(
        [sys.executable, "-m", f"pipelines.{pipeline}", *args, "--strategy", "multi-worker",
         "--checkpoint-dir", str(tmp_path / "checkpoints"), *(worker1_args if index else ())],
        cwd=REPO, env=os.environ | {"TF_CONFIG": tf_config(index, ports),
                                    "TMPDIR": str(tmp_path / "tmp")},
        stdout=log.open("w"), stderr=subprocess.STDOUT) for index, log in enumerate(logs)]
    try:
        yield workers, logs
    finally:
        for worker in workers:
            worker.kill()


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["speech", "sentiment"])
def test_two_workers_train_in_sync_and_only_the_chief_logs_and_registers(
        pipeline, speech_dir: Path, imdb_dir: Path, tmp_path: Path):
    """Two real worker processes on loopback ports, as TF_CONFIG describes them, run the same
    command under MultiWorkerMirroredStrategy against one store."""
    if pipeline == "speech":
        args, name, batch = test_speech_pipeline.small_args(speech_dir, tmp_path), \
            "speech-commands", 16
    else:
        args, name, batch = test_sentiment_pipeline.small_args(
            imdb_dir, tmp_path, "--pretrain", "never"), "imdb-sentiment", 8
    with two_workers(pipeline, args, tmp_path) as (workers, logs):
        codes = [worker.wait(timeout=400) for worker in workers]
    output = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n\n".join(text[-4000:] for text in output)

    tracking.connect(None, tmp_path / "mlruns")
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    (run,) = runs
    assert run.data.params["strategy"] == "multi-worker"
    assert run.data.metrics["workers"] == 2 and run.data.metrics["replicas"] == 2
    assert run.data.metrics["global_batch_size"] == 2 * batch
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2
    (version,) = client.search_model_versions(f"name='{name}'")
    assert version.run_id == run.info.run_id
    assert client.get_model_version_by_alias(name, "champion").version == version.version
    assert f"MLflow run id     {run.info.run_id}" in output[0]
    assert "nothing logged by worker 1 of 2" in output[1]
    if pipeline == "speech":  # augmented batches: each worker makes its share only
        for index, text in enumerate(output):
            assert f"makes input pipeline {index} of 2" in text
    # the workers trained one model: the same final losses, the same test accuracy
    accuracy = re.findall(r"test accuracy +(\S+)", output[1])
    assert accuracy == [f"{run.data.metrics['test_accuracy']:.4f}"]
    throwaway = re.search(r"the throwaway store (\S+)\)", output[1])
    assert throwaway and not Path(throwaway.group(1)).exists()
    assert not (tmp_path / "checkpoints").exists() or not any(
        (tmp_path / "checkpoints").iterdir())


def assert_one_failed_run_and_nothing_registered(store: Path) -> None:
    tracking.connect(None, store)
    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"
    assert client.search_registered_models() == []


@pytest.mark.slow
def test_a_worker_stopped_mid_training_fails_the_run_on_the_others(speech_dir: Path,
                                                                    tmp_path: Path):
    """SIGTERM stops worker 1 at a batch end (after MultiWorkerMirroredStrategy installed its
    own SIGTERM handler); the chief learns of it from the coordination service, ends its run
    FAILED, registers nothing and exits 75 with the lost worker named."""
    args = test_speech_pipeline.small_args(speech_dir, tmp_path, "--patience", "500")
    args[args.index("--epochs") + 1] = "500"
    with two_workers("speech", args, tmp_path) as (workers, logs):
        wait_until(lambda: "Epoch 3/" in logs[1].read_text(), "worker 1 to reach epoch 3",
                   workers[1], logs[1], timeout=300)
        workers[1].send_signal(signal.SIGTERM)
        codes = [worker.wait(timeout=180) for worker in workers]
    output = [log.read_text() for log in logs]
    assert codes == [75, 143], "\n\n".join(text[-3000:] for text in output)
    assert "interrupted by SIGTERM" in output[1]
    throwaway = re.search(r"the throwaway store (\S+)\)", output[1])
    assert throwaway and not Path(throwaway.group(1)).exists()  # removed despite os._exit
    assert Path(throwaway.group(1)).parent == tmp_path / "tmp"  # the workers' TMPDIR
    # so are the module files of the functions autograph converted (differing_workers' gather)
    assert not list((tmp_path / "tmp").glob(f"{interrupts.AUTOGRAPH_MODULES}*"))
    assert "error: worker 0 of 2: the cluster lost worker 1 during training" in output[0]
    assert_one_failed_run_and_nothing_registered(tmp_path / "mlruns")


@pytest.mark.slow
def test_workers_with_other_options_stop_before_training(speech_dir: Path, tmp_path: Path):
    """A worker started with another --seed would train another model than the chief logs:
    every worker says so and stops before the first step; nothing is registered."""
    args = test_speech_pipeline.small_args(speech_dir, tmp_path)
    with two_workers("speech", args, tmp_path, ["--seed", "1"]) as (workers, logs):
        codes = [worker.wait(timeout=300) for worker in workers]
    output = [log.read_text() for log in logs]
    assert codes == [2, 2], "\n\n".join(text[-3000:] for text in output)
    assert "error: worker 0 of 2: another worker's options differ" in output[0]
    assert "error: worker 1 of 2: this worker's options differ" in output[1]
    assert "Epoch 1/" not in output[0] + output[1]
    assert_one_failed_run_and_nothing_registered(tmp_path / "mlruns")


@pytest.mark.slow
def test_ctrl_c_stops_a_worker_still_waiting_for_its_cluster(speech_dir: Path, tmp_path: Path):
    """Worker 1 of a cluster whose chief never starts waits inside TensorFlow, where Python's
    handler cannot run: Ctrl-C still ends it at once, before any run is opened."""
    log = tmp_path / "worker1.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "pipelines.speech",
         *test_speech_pipeline.small_args(speech_dir, tmp_path), "--strategy", "multi-worker"],
        cwd=REPO, env=os.environ | {"TF_CONFIG": tf_config(1, [free_port(), free_port()])},
        stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "Started server with target" in log.read_text(),  # in the strategy
                   "worker 1 to wait for its cluster", worker, log, interval=0.2)
        time.sleep(1)
        worker.send_signal(signal.SIGINT)
        assert worker.wait(timeout=10) == -signal.SIGINT
    finally:
        worker.kill()
    throwaway = re.search(r"the throwaway store (\S+)\)", log.read_text())
    assert throwaway and not Path(throwaway.group(1)).exists()  # nothing made yet


@pytest.mark.parametrize("message, me, expected", [
    ("Collective ops is aborted by: Error reported from /job:worker/task:1: The following "
     "tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe "
     "tasks have crashed.\n\t [[{{node CollectiveReduceV2}}]]", ("worker", 0),
     "the cluster lost worker 1 during training (stopped sending heartbeats)"),
    ("{{function_node __wrapped__CollectiveReduceV2_device_/job:worker/replica:0/task:1/device:"
     "CPU:0}} Collective ops is aborted by: recvmsg:Connection reset by peer\nAdditional GRPC "
     "error information from remote target /job:worker/replica:0/task:0 while calling "
     "/tensorflow.WorkerService/CompleteInstance:", ("worker", 1),
     "the cluster lost worker 0 during training (recvmsg:Connection reset by peer)"),
    ("Deadline exceeded", ("chief", 0), "the cluster lost a worker during training (Deadline "
     "exceeded)"),
])
def test_a_lost_worker_is_named_from_tensorflows_error(message, me, expected):
    error = tf.errors.UnavailableError(None, None, message)
    assert distribute.lost(error, distribute.Worker(*me, 2), "during training") == expected


def test_a_worker_lost_before_training_is_named_and_the_chiefs_run_not_blamed(monkeypatch):
    """Worker 1 learns that the chief stopped while the workers compared their options (the
    chief's run ends KILLED or stays RUNNING, not FAILED as it does for the chief)."""
    monkeypatch.setenv("TF_CONFIG", tf_config(1, [1, 2]))

    def chief_gone(name: str, text: str):
        raise tf.errors.DeadlineExceededError(None, None, "Deadline exceeded\nAdditional GRPC "
                                              "error information from remote target "
                                              "/job:worker/replica:0/task:0")
    monkeypatch.setattr(distribute, "differing_workers", chief_gone)
    with pytest.raises(WorkerLost, match=r"^worker 1 of 2: the cluster lost worker 0 before "
                       r"training \(Deadline exceeded\); the chief's run does not finish and "
                       "nothing is registered"):
        distribute.check_workers_agree(distribute.MULTI_WORKER, {"seed": 0}, "digest")


def test_a_task_address_in_use_is_named(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("TF_CONFIG", tf_config(0, [port, free_port()]))
        code = subprocess.run(
            [sys.executable, "-c", "from pipelines import distribute; "
             "distribute.strategy_for('multi-worker')"], cwd=REPO, capture_output=True,
            text=True, timeout=120)
    assert code.returncode == 1 and code.stderr.strip().splitlines()[-1] == (
        f"pipelines.errors.SetupError: worker 0 of 2: TensorFlow could not start its server on "
        f"127.0.0.1:{port}, this task's TF_CONFIG address (is the port in use?)")
