"""The bounds of one request to a served model, checked before any of its rows is decoded.

At most MAX_REQUEST_ROWS rows, and at most SPEECH_MAX_REQUEST_BYTES of audio (file bytes, plus
WAVEFORM_SAMPLE_BYTES per waveform sample) or TEXT_MAX_REQUEST_BYTES of review text (UTF-8).
Sizes are taken from `len`, so an oversized request is refused before anything in it is
converted. `predict` and `evaluate` send their inputs in requests inside these bounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.errors import PipelineError

MAX_REQUEST_ROWS = 512  # rows one request may send (`evaluate` sends 256 at a time)
SPEECH_MAX_REQUEST_BYTES = 64 * 2**20  # 512 WAVs of 4 s (16 kHz, 16-bit), two 60 s 48 kHz waveforms
TEXT_MAX_REQUEST_BYTES = 32 * 2**20  # 512 reviews of 64 KB, 320 ASCII ones of MAX_TEXT_CHARS
WAVEFORM_SAMPLE_BYTES = 8  # a waveform sample counts as the float64 the signature declares


class RequestTooLarge(PipelineError, ValueError):
    """A request over a served model's bounds (rows or payload bytes); none of it was decoded."""


class NoInputColumns(PipelineError, ValueError):
    """A request holding none of a served model's input columns (MLflow drops the columns its
    signature does not name, rows and all)."""


def check_request(sizes: Sequence[int], max_bytes: int, what: str) -> None:
    """Refuses a request (`sizes`: each row's payload bytes) of more than MAX_REQUEST_ROWS rows
    or `max_bytes` bytes of `what` in all.

    Raises:
        RequestTooLarge: The request is over a bound; the message names it and the size.
    """
    if len(sizes) > MAX_REQUEST_ROWS:
        raise RequestTooLarge(
            f"request too large: {len(sizes)} rows, over the bound of {MAX_REQUEST_ROWS} rows "
            f"a request may send (MAX_REQUEST_ROWS); send them in smaller requests")
    if sum(sizes) > max_bytes:
        raise RequestTooLarge(
            f"request too large: {sum(sizes):,} bytes of {what} in {len(sizes)} "
            f"row{'s' * (len(sizes) != 1)}, over the bound of {max_bytes:,} bytes a request may "
            f"send; send fewer or shorter inputs")


def is_waveform(value: Any) -> bool:
    """Whether a `waveform` value is a sequence of samples (a list or array, not a string)."""
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes)


def speech_row_bytes(row: dict) -> int:
    """A row's audio bytes plus WAVEFORM_SAMPLE_BYTES per waveform sample (from `len`)."""
    audio, waveform = row.get("audio"), row.get("waveform")
    size = len(audio) if isinstance(audio, bytes | bytearray) else 0
    if is_waveform(waveform):
        size += len(waveform) * WAVEFORM_SAMPLE_BYTES
    return size


def text_bytes(value: Any) -> int:
    """A review's UTF-8 bytes (0 for a value that is no review)."""
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    return len(value) if isinstance(value, bytes | bytearray) else 0


def row_bytes(row: dict) -> int:
    """A request row's payload as the bounds count it: audio and waveform (`speech_row_bytes`)
    plus review text (`text_bytes`)."""
    return speech_row_bytes(row) + text_bytes(row.get("text"))
