"""Which tf.distribute strategy a run trains under, and the batch size that follows from it."""

from __future__ import annotations

import functools

import tensorflow as tf

from pipelines.config import STRATEGIES


@functools.cache
def strategy_for(name: str) -> tf.distribute.Strategy:
    """The strategy a `--strategy` name stands for (one per process, as TensorFlow wants).

    - "auto": MirroredStrategy over the GPUs when more than one is visible, else the default
      (single-device) strategy.
    - "none": the default strategy.
    - "mirrored": MirroredStrategy over every visible GPU, or over the logical CPU devices when
      there is no GPU (one replica unless several were configured).

    Raises:
        ValueError: An unknown name.
    """
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
    """Replicas that train in sync under the strategy `name`."""
    return strategy_for(name).num_replicas_in_sync


def global_batch_size(per_replica: int, name: str) -> int:
    """Examples per training step across all replicas: each replica gets `per_replica`."""
    return per_replica * replicas(name)
