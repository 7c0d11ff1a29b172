"""Calling a compiled (XLA) function on batches of any size."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def padded_calls(call: Callable, inputs: np.ndarray, max_batch: int) -> np.ndarray:
    """`call` on `inputs` in chunks of at most `max_batch`, each zero-padded to a power of two
    and the padding's outputs dropped, so that only a handful of batch shapes are ever compiled
    however many inputs come.

    Args:
        call: A function of one batch, returning an array or a tensor with a row per input.
        inputs: At least one input, stacked along the first axis.
        max_batch: Largest batch `call` is given (a power of two).
    """
    parts = []
    for start in range(0, len(inputs), max_batch):
        chunk = inputs[start:start + max_batch]
        count = len(chunk)
        padded = 1 << (count - 1).bit_length()
        if padded > count:
            chunk = np.concatenate([chunk, np.zeros((padded - count, *chunk.shape[1:]),
                                                    chunk.dtype)])
        parts.append(np.asarray(call(chunk))[:count])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
