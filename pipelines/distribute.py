"""Which tf.distribute strategy a run trains under and the batch size that follows from it,
and everything a multi-worker run does differently: which worker this process is, who logs,
checking that the workers agree, sharing out input, and naming a lost worker.

Under `--strategy multi-worker` every worker runs the same pipeline, so that their collective
training steps match. The chief logs, saves and registers as a single process would. Any other
worker logs nothing: its MLflow calls go to a throwaway SQLite store in a temporary folder
(made on first use), deleted when the process exits (TensorFlow's own pattern for the
checkpoints of non-chief workers).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from pipelines import interrupts, keras_compat
from pipelines.errors import ConfigError, SetupError, WorkerLost

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "none", "mirrored", "multi-worker")
MULTI_WORKER = "multi-worker"


@functools.cache
def strategy_for(name: str) -> tf.distribute.Strategy:
    """The strategy a `--strategy` name stands for (one per process, as TensorFlow wants).

    - "auto": MirroredStrategy over the GPUs when more than one is visible, else the default
      (single-device) strategy.
    - "none": the default strategy.
    - "mirrored": MirroredStrategy over every visible GPU, or over the logical CPU devices when
      there is no GPU (one replica unless several were configured).
    - "multi-worker": MultiWorkerMirroredStrategy over the cluster the standard TF_CONFIG
      describes (every worker runs the same command); it must be made before any other
      TensorFlow work in the process, which `lifecycle.prepare_run` sees to.

    Raises:
        ValueError: An unknown name.
        SetupError: "multi-worker" without a usable TF_CONFIG, or whose address for this
            task cannot be listened on.
    """
    if name == MULTI_WORKER:  # first: listing devices would start TensorFlow's runtime
        cluster_config()
        keras_compat.patch_multi_worker_fit()
        with interrupts.blocking_call():  # waits for every worker of the cluster
            try:
                return tf.distribute.MultiWorkerMirroredStrategy()
            except tf.errors.UnknownError as error:
                if "Could not start gRPC server" not in error.message:
                    raise
                me = worker(name)
                address = cluster_config()["cluster"][me.task_type][me.task_id]
                raise SetupError(f"{me}: TensorFlow could not start its server on {address}, "
                                 "this task's TF_CONFIG address (is the port in use?)"
                                 ) from error
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    raise ConfigError(f"unknown strategy {name!r}; valid choices: {', '.join(STRATEGIES)}")


def replicas(name: str) -> int:
    """Replicas that train in sync under the strategy `name` (on every worker together)."""
    return strategy_for(name).num_replicas_in_sync


def global_batch_size(per_replica: int, name: str) -> int:
    """Examples per training step across all replicas: each replica gets `per_replica`."""
    return per_replica * replicas(name)


@dataclass(frozen=True)
class Worker:
    """This process's place in a cluster: its task and whether it is the chief (the one
    worker that logs, saves and registers)."""

    task_type: str
    task_id: int
    workers: int
    cluster_has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        """TensorFlow's rule: the "chief" task, or worker 0 of a cluster without one."""
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_id == 0
                                             and not self.cluster_has_chief)

    def __str__(self) -> str:
        return f"{self.task_type} {self.task_id} of {self.workers}"


def cluster_config() -> dict:
    """The TF_CONFIG of this process, checked for what MultiWorkerMirroredStrategy needs.

    Raises:
        SetupError: TF_CONFIG is unset, not JSON, or lacks a cluster of "chief"/"worker"
            address lists (at most one chief, no address listed twice) or a task of this
            process within it (its index a whole number, or its digits as TensorFlow reads).
    """
    raw = os.environ.get("TF_CONFIG")
    hint = ('set TF_CONFIG on every worker, e.g. {"cluster": {"worker": ["host1:12345", '
            '"host2:12345"]}, "task": {"type": "worker", "index": 0}} (docs/scaling.md)')
    if not raw:
        raise SetupError(f"--strategy multi-worker needs TF_CONFIG: {hint}")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise SetupError(f"TF_CONFIG is not JSON ({error}): {hint}") from error
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise SetupError(f"TF_CONFIG needs a 'cluster' and a 'task' object: {hint}")
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise SetupError(f"TF_CONFIG cluster has {', '.join(unsupported)} tasks; "
                         "MultiWorkerMirroredStrategy trains on 'chief' and 'worker' tasks only")
    malformed = sorted(kind for kind, tasks in cluster.items()
                       if not isinstance(tasks, list) or not tasks
                       or not all(isinstance(address, str) for address in tasks))
    if malformed:
        raise SetupError(f"TF_CONFIG cluster job {', '.join(map(repr, malformed))} must be a "
                         f"non-empty list of 'host:port' strings: {hint}")
    if len(cluster.get("chief", [])) > 1:
        raise SetupError(f"TF_CONFIG cluster has {len(cluster['chief'])} 'chief' tasks; a "
                         "cluster has at most one (the others are 'worker' tasks)")
    every = [address for tasks in cluster.values() for address in tasks]
    repeated = sorted({address for address in every if every.count(address) > 1})
    if repeated:
        raise SetupError(f"TF_CONFIG cluster lists {', '.join(repeated)} for several tasks; each "
                         "task listens on an address of its own")
    task_type, index = task.get("type"), task.get("index")
    if isinstance(index, str) and index.isascii() and index.isdigit():  # as TensorFlow: 1
        index = task["index"] = int(index)
    if isinstance(index, bool) or not isinstance(index, int):
        raise SetupError(f"TF_CONFIG task index {index!r} is not a whole number: {hint}")
    addresses = cluster.get(task_type)
    if addresses is None or not 0 <= index < len(addresses):
        sizes = ", ".join(f"{kind}: {len(tasks)}" for kind, tasks in cluster.items())
        raise SetupError(f"TF_CONFIG task {task!r} is not one of its cluster's tasks "
                         f"({sizes})")
    return config


def worker(name: str) -> Worker:
    """This process's task under the strategy `name`: the one chief of a single process for
    every strategy but "multi-worker", where TF_CONFIG says."""
    if name != MULTI_WORKER:
        return Worker("chief", 0, 1)
    config = cluster_config()
    cluster = config["cluster"]
    return Worker(config["task"]["type"], config["task"]["index"],
                  sum(len(tasks) for tasks in cluster.values()), "chief" in cluster)


def input_pipelines(name: str) -> int:
    """How many input pipelines `sharded_input` makes under the strategy `name`: one per
    worker under "multi-worker" with one replica per worker, otherwise one."""
    if name != MULTI_WORKER:
        return 1
    workers = worker(name).workers
    return workers if strategy_for(name).num_replicas_in_sync == workers else 1


def sharded_input(name: str, make: Callable[[int, int], tf.data.Dataset]):
    """Training input that each worker of a multi-worker run makes only its share of.

    Args:
        name: The strategy.
        make: `make(shard, shards)` -> the batches of input pipeline `shard` of `shards`: for
            each global batch, that pipeline's piece (of the per-replica batch size).

    Returns:
        Under "multi-worker" with one replica per worker, a distributed dataset with one input
        pipeline per worker (`distribute_datasets_from_function`). Otherwise `make(0, 1)`,
        which tf.data splits across the replicas (and across workers, auto-shards: each worker
        then makes every batch and keeps its part).
    """
    if input_pipelines(name) == 1:
        return make(0, 1)

    def pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
        log.info("%s makes input pipeline %d of %d: its share of every training batch",
                 worker(name), context.input_pipeline_id, context.num_input_pipelines)
        return make(context.input_pipeline_id, context.num_input_pipelines)

    return strategy_for(name).distribute_datasets_from_function(pipeline)


def differing_workers(name: str, text: str) -> tuple[bool, bool]:
    """Compares `text` (say, a run's options and data digest) across the workers of the
    strategy `name`, by an all-gather of its SHA-256.

    Returns:
        (whether this worker's text differs from the chief's, whether any worker's does).
    """
    digest = tf.constant(list(hashlib.sha256(text.encode()).digest()), tf.int32)
    strategy = strategy_for(name)

    @tf.function
    def gather():
        return tf.distribute.get_replica_context().all_gather(digest[None], axis=0)

    rows = strategy.experimental_local_results(strategy.run(gather))[0].numpy()
    mine = (rows[0] != digest.numpy()).any()  # replica 0 is the chief's
    return bool(mine), bool((rows != rows[0]).any())


# what a collective op raises when another worker stopped, crashed or cannot be reached
CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                  tf.errors.DeadlineExceededError)


def lost(error: tf.errors.OpError, me: Worker, when: str) -> str:
    """What a collective op's cluster error says, in a line: the other tasks it names (those
    the coordination service found unhealthy, or the remote end of a broken connection),
    `when`, and why."""
    message = error.message
    unhealthy = re.search(r"unhealthy \(([^)]*)\):\s*((?:/job:\S+\s*)+)", message)
    named = re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)",
                       unhealthy.group(2) if unhealthy else
                       " ".join(re.findall(r"remote target (/job:\S+)", message)))
    tasks = sorted({f"{kind} {index}" for kind, index in named} - {f"{me.task_type} {me.task_id}"})
    causes = re.findall(r"aborted by: ([^\n\[]+)", message)
    cause = unhealthy.group(1) if unhealthy else (causes[-1].strip() if causes else
                                                  message.strip().splitlines()[0])
    return f"the cluster lost {', '.join(tasks) or 'a worker'} {when} ({cause})"


@contextlib.contextmanager
def reporting_lost_workers(name: str, when: str = "during training") -> Iterator[None]:
    """Under "multi-worker", turns what a collective op raises when another worker is gone
    (CLUSTER_ERRORS) into WorkerLost, naming it and `when`; other strategies' errors pass
    unchanged."""
    try:
        yield
    except CLUSTER_ERRORS as error:
        if name != MULTI_WORKER:
            raise
        me = worker(name)
        outcome = "the run ends FAILED" if me.is_chief else "the chief's run does not finish"
        raise WorkerLost(f"{me}: {lost(error, me, when)}; {outcome} and nothing is "
                         "registered: start every worker again") from error


def standalone(model: keras.Model, name: str) -> keras.Model:
    """The fitted `model`, under "multi-worker" rebuilt outside any strategy with its weights:
    evaluating, saving and serving it then runs no collective op, so that each worker can
    finish on its own (the chief's logging does not hold the others up). Other strategies'
    models are returned as they are."""
    if name != MULTI_WORKER:
        return model
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return keras.models.load_model(path, compile=False)


def layout(per_replica_batch: int, name: str) -> dict[str, int]:
    """How a run trains under the strategy `name`: its replicas, global batch and workers (the
    run logs them)."""
    return {"replicas": replicas(name),
            "global_batch_size": global_batch_size(per_replica_batch, name),
            "workers": worker(name).workers}


# options that may differ between the workers of one multi-worker run: where each finds its
# data and writes its files, and how the chief names its run and model (a worker that is not
# the chief logs to a store of its own: join_cluster)
LOCAL_OPTIONS = {"tracking_uri", "store_dir", "experiment", "registered_model", "run_name",
                 "register", "checkpoint_dir", "data_dir", "tfds_data_dir", "cache_dir", "cache",
                 "in_memory_mb"}


def check_workers_agree(name: str, options: Mapping[str, Any], data_digest: str) -> None:
    """Under "multi-worker", checks that every worker has the chief's options (but
    LOCAL_OPTIONS) and data: otherwise their training steps would not line up, or would train
    a model other than the one the chief logs. Other strategies have nothing to check.

    Raises:
        ValueError: On every worker, when any worker differs.
        WorkerLost: A worker stopped before the comparison.
    """
    if name != MULTI_WORKER:
        return
    shared = {key: value for key, value in options.items() if key not in LOCAL_OPTIONS}
    with reporting_lost_workers(name, "before training"):  # one that stopped reading its data
        compared = {"options": differing_workers(name, json.dumps(shared, sort_keys=True,
                                                                  default=str)),
                    "data": differing_workers(name, data_digest)}
    differ = [f"{'this' if mine else 'another'} worker's {what}"
              for what, (mine, anyone) in compared.items() if anyone]
    if differ:
        raise ConfigError(f"{worker(name)}: {' and '.join(differ)} differ from the chief's "
                         f"(data digest here: {data_digest}); run every worker with the same "
                         "options (all but where each finds and writes its files, and how the "
                         "chief names its run and model) on the same data")


THROWAWAY: list[Path] = []  # this process's throwaway stores (throwaway_store)


def throwaway_store() -> Path:
    """Where a worker that is not the chief keeps its MLflow store and checkpoints: a new
    path under the temporary folder (the folder is made by what first writes into it), removed
    at exit if it was made (and by `remove_throwaway`)."""
    me = worker(MULTI_WORKER)
    scratch = Path(tempfile.gettempdir()) / (
        f"pipelines-{me.task_type}-{me.task_id}-{os.getpid()}-{secrets.token_hex(4)}")
    THROWAWAY.append(scratch)
    atexit.register(remove_folder, scratch)
    log.info("%s: not the chief; it trains in sync and logs nothing (its MLflow calls go to "
             "the throwaway store %s)", me, scratch)
    return scratch


def remove_folder(path: Path) -> None:
    """Removes a folder this process made, if it made it."""
    if path.exists():
        shutil.rmtree(path)


def remove_throwaway() -> None:
    """Removes this process's throwaway stores (also where `exit_process` skips atexit)."""
    for folder in THROWAWAY:
        remove_folder(folder)


LOGGED_RESULTS = {"run_id", "model_uri", "registered_version", "champion", "promotion_reason"}


def worker_result(name: str, result: dict) -> dict:
    """A run's result as this worker reports it: under "multi-worker", a worker that is not the
    chief logged nothing, so it names itself instead of a run, a model and a registry outcome.
    """
    if name != MULTI_WORKER:
        return result
    me = worker(name)
    if me.is_chief:
        return result | {"worker": str(me)}
    return {key: value for key, value in result.items() if key not in LOGGED_RESULTS} | {
        "worker": str(me), "not_chief": True}
