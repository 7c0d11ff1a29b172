"""Two fixes that let Keras 3's `Model.fit` run under MultiWorkerMirroredStrategy.

Keras 3 (checked on 3.15 with TensorFlow 2.21) fails the first `fit` of a model made in a
MultiWorkerMirroredStrategy scope (keras-team/keras#20585, open):

1. `TensorFlowTrainer._maybe_symbolic_build` takes the first distributed batch and calls
   `strategy.reduce("MEAN", (x, y), axis=None)` on the whole tuple; the multi-worker
   cross-device ops do not take a nested structure and fail with "Attempt to convert a value
   (PerReplica...) ... to a Tensor". The batch is only needed for its shapes, so the fix takes
   this worker's first replica's part of it, with no collective.
2. The train step reduces each scalar metric with `strategy.reduce("MEAN", value, axis=0)`
   (`reduce_per_replica`), which fails on a scalar ("Invalid reduction dimension 0 for input
   with 0 dimensions"). The fix reduces scalars across replicas with `axis=None`.

Both fixes change behaviour only in multi-worker mode; every other strategy takes Keras's own
code. They are applied when the "multi-worker" strategy is made (`pipelines.distribute`).
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

_PATCHED = "_pipelines_multi_worker_fix"


def patch_multi_worker_fit() -> None:
    """Applies both fixes to Keras's TensorFlow trainer (once per process).

    Raises:
        RuntimeError: This Keras no longer has the functions the fixes wrap; name the version
            so that the fixes can be checked against it.
    """
    try:  # private internals: inside the try, so that a Keras without them is named
        from keras.src.backend.tensorflow import trainer
        maybe_symbolic_build = trainer.TensorFlowTrainer._maybe_symbolic_build
        reduce_per_replica = trainer.reduce_per_replica
        in_multi_worker_mode = trainer._collective_all_reduce_multi_worker
        is_per_replica = trainer._is_per_replica_instance
    except (ImportError, AttributeError) as error:
        raise RuntimeError(f"Keras {keras.__version__} does not have the trainer internals "
                           f"pipelines.keras_compat fixes ({error}); check whether "
                           "keras-team/keras#20585 is fixed in it and update the fixes") from error
    if getattr(reduce_per_replica, _PATCHED, False):
        return

    @functools.wraps(maybe_symbolic_build)
    def symbolic_build(self, iterator=None, data_batch=None):
        strategy = self.distribute_strategy
        if iterator is None or not in_multi_worker_mode(strategy):
            return maybe_symbolic_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = keras.tree.map_structure(
                lambda value: strategy.experimental_local_results(value)[0]
                if isinstance(value, tf.distribute.DistributedValues) else value,
                next(batches))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    @functools.wraps(reduce_per_replica)
    def reduce(values, strategy, reduction="auto"):
        if reduction not in ("auto", "mean") or not in_multi_worker_mode(strategy):
            return reduce_per_replica(values, strategy, reduction)

        def mean(value):
            local = strategy.experimental_local_results(value) if is_per_replica(value) \
                else (value,)
            scalar = local[0].shape.rank == 0
            return strategy.reduce("MEAN", value, axis=None if scalar else 0)

        return keras.tree.map_structure(mean, values)

    setattr(reduce, _PATCHED, True)
    trainer.TensorFlowTrainer._maybe_symbolic_build = symbolic_build
    trainer.reduce_per_replica = reduce
