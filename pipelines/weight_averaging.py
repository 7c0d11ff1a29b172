"""Keeping the average of a fit's later weights instead of one epoch's.

Averaging the weights a fit reaches at the end of each epoch over the second half of a long
cosine schedule (stochastic weight averaging, Izmailov et al. 2018, with the schedule's own
learning rate) finds a flatter, better-generalising point than any one of those epochs: on the
speech task it scores as high as or higher than early stopping's lowest-validation-loss epoch
on the test split in every seed measured (docs/results.md). Batch-normalisation statistics
are averaged with the weights.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

log = logging.getLogger(__name__)

AVERAGE_FILE = "average.npz"  # a checkpoint folder's running sums, when it has any


@dataclass
class AverageState:
    """Epochs averaged so far and the sum of their weights (float64, exact over a resume;
    None before the first averaged epoch)."""

    count: int
    totals: list[np.ndarray] | None


def first_averaged_epoch(average_from: float, scheduled_epochs: int) -> int | None:
    """The 0-based epoch averaging starts at: `average_from` (in [0, 1)) of the scheduled
    epochs in; None for 0, no averaging."""
    return math.floor(average_from * scheduled_epochs) if average_from else None


def finite(weights: list[np.ndarray]) -> bool:
    """Whether every floating-point array of a model's weights is finite (a fit that diverged
    leaves NaN or Inf)."""
    return all(np.isfinite(w).all() for w in weights if np.issubdtype(w.dtype, np.floating))


class WeightAverage(keras.callbacks.Callback):
    """Sums the model's weights after every epoch from `start` (0-based) on and, when the fit
    ends, sets the model to their mean.

    It runs after early stopping: a fit that averaged at least one epoch keeps the average
    (whichever epoch early stopping restored); one that stopped before `start` keeps early
    stopping's weights. An epoch whose weights are not all finite (a diverged fit) is left out
    of the sums, with a warning, so a fit whose every averaged epoch diverged keeps early
    stopping's weights too. Arrays that are not floating point (none in this project's models)
    keep the value they end the fit with.
    """

    def __init__(self, start: int, state: AverageState | None = None):
        super().__init__()
        self.start = start
        self.count = state.count if state else 0
        self.totals = state.totals if state else None

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.start:
            return
        weights = self.model.get_weights()
        if not finite(weights):
            log.warning("epoch %d ended with weights that are not finite: it is left out of "
                        "the weight average", epoch + 1)
            return
        if self.totals is None:
            self.totals = [np.zeros(w.shape, np.float64) for w in weights]
        for total, weight in zip(self.totals, weights, strict=True):
            total += weight
        self.count += 1

    def average(self) -> list[np.ndarray]:
        """The mean of the averaged epochs' weights, in the model's dtypes."""
        current = self.model.get_weights()
        return [(total / self.count).astype(now.dtype)
                if np.issubdtype(now.dtype, np.floating) else now
                for total, now in zip(self.totals, current, strict=True)]

    def on_train_end(self, logs=None):
        if self.count:
            self.model.set_weights(self.average())

    def save(self, folder: Path) -> dict:
        """Writes the running sums into a checkpoint folder; the counters for its state."""
        if self.count:
            np.savez(folder / AVERAGE_FILE, *self.totals)
        return {"count": self.count}


def load_state(folder: Path, saved: dict | None) -> AverageState | None:
    """The averaging a checkpoint folder holds (`saved`: what `save` returned), or None for a
    checkpoint of a fit that was not averaging."""
    if saved is None:
        return None
    if not saved["count"]:
        return AverageState(0, None)
    return AverageState(saved["count"], read_arrays(folder / AVERAGE_FILE))


def read_arrays(path: Path) -> list[np.ndarray]:
    """The arrays `np.savez(path, *arrays)` wrote, in their order."""
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]
