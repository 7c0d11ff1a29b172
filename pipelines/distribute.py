"""Which tf.distribute strategy a run trains under, the batch size that follows from it, and
which worker of a multi-worker cluster this process is."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import tensorflow as tf

from pipelines import interrupts
from pipelines.config import STRATEGIES
from pipelines.errors import SetupError, WorkerLost

log = logging.getLogger(__name__)


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
      TensorFlow work in the process, which `runner.prepare_run` sees to.

    Raises:
        ValueError: An unknown name.
        SetupError: "multi-worker" without a usable TF_CONFIG.
    """
    if name == "multi-worker":  # first: listing devices would start TensorFlow's runtime
        cluster_config()
        from pipelines import keras_compat

        keras_compat.patch_multi_worker_fit()
        with interrupts.blocking_call():  # waits for every worker of the cluster
            return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    raise ValueError(f"unknown strategy {name!r}; valid choices: {', '.join(STRATEGIES)}")


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
            addresses or a task of this process within it.
    """
    raw = os.environ.get("TF_CONFIG")
    hint = ('set TF_CONFIG on every worker, e.g. {"cluster": {"worker": ["host1:12345", '
            '"host2:12345"]}, "task": {"type": "worker", "index": 0}} (README: Scaling out)')
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
    task_type, index = task.get("type"), task.get("index")
    addresses = cluster.get(task_type)
    if (not isinstance(addresses, list) or not isinstance(index, int)
            or not 0 <= index < len(addresses)):
        sizes = ", ".join(f"{kind}: {len(tasks)}" for kind, tasks in cluster.items())
        raise SetupError(f"TF_CONFIG task {task!r} is not one of its cluster's tasks "
                         f"({sizes})")
    return config


def worker(name: str) -> Worker:
    """This process's task under the strategy `name`: the one chief of a single process for
    every strategy but "multi-worker", where TF_CONFIG says."""
    if name != "multi-worker":
        return Worker("chief", 0, 1)
    config = cluster_config()
    cluster = config["cluster"]
    return Worker(config["task"]["type"], config["task"]["index"],
                  sum(len(tasks) for tasks in cluster.values()), "chief" in cluster)


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
    strategy = strategy_for(name)
    if name != "multi-worker" or strategy.num_replicas_in_sync != worker(name).workers:
        return make(0, 1)
    def pipeline(context: tf.distribute.InputContext) -> tf.data.Dataset:
        log.info("%s makes input pipeline %d of %d: its share of every training batch",
                 worker(name), context.input_pipeline_id, context.num_input_pipelines)
        return make(context.input_pipeline_id, context.num_input_pipelines)

    return strategy.distribute_datasets_from_function(pipeline)


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


def lost(error: tf.errors.OpError, me: Worker) -> str:
    """What a collective op's cluster error says, in a line: the other tasks it names (those
    the coordination service found unhealthy, or the remote end of a broken connection) and
    why."""
    message = error.message
    unhealthy = re.search(r"unhealthy \(([^)]*)\):\s*((?:/job:\S+\s*)+)", message)
    named = re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)",
                       unhealthy.group(2) if unhealthy else
                       " ".join(re.findall(r"remote target (/job:\S+)", message)))
    tasks = sorted({f"{kind} {index}" for kind, index in named} - {f"{me.task_type} {me.task_id}"})
    causes = re.findall(r"aborted by: ([^\n\[]+)", message)
    cause = unhealthy.group(1) if unhealthy else (causes[-1].strip() if causes else
                                                  message.strip().splitlines()[0])
    return f"the cluster lost {', '.join(tasks) or 'a worker'} during training ({cause})"


@contextlib.contextmanager
def reporting_lost_workers(name: str) -> Iterator[None]:
    """Under "multi-worker", turns what a collective op raises when another worker is gone
    (CLUSTER_ERRORS) into WorkerLost, naming it; other strategies' errors pass unchanged."""
    try:
        yield
    except CLUSTER_ERRORS as error:
        if name != "multi-worker":
            raise
        me = worker(name)
        raise WorkerLost(f"{me}: {lost(error, me)}; the run ends FAILED and nothing is "
                         "registered: start every worker again") from error


def local_copy(model):
    """The fitted `model` rebuilt outside any strategy, with its weights: evaluating, saving
    and serving it then runs no collective op, so that each worker of a multi-worker run can
    finish on its own (the chief's logging does not hold the others up)."""
    import tempfile
    from pathlib import Path

    import keras

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return keras.models.load_model(path, compile=False)
