"""A request to a served model as one dict per row, whatever form MLflow hands it over in.

In Python a model gets a DataFrame, a dict of columns or a list of values. Over REST, MLflow
decodes the base64 of a binary column for the `dataframe_split` and `dataframe_records` JSON
forms, and passes it on undecoded for `inputs` and `instances`; a dict of lists
({"text": ["a", "b"]} in Python, the `inputs` form in JSON) reaches the model as one row
holding the lists. `request_rows` undoes both, so that every form is answered a row per input.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipelines.request_bounds import NoInputColumns

BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/]+={0,2}")  # line breaks taken out first


def rows_of(model_input: Any, columns: Sequence[str]) -> list[dict]:
    """Normalises pyfunc input (DataFrame, dict of columns, list of values) to row dicts.

    Raises:
        NoInputColumns: The input holds none of `columns`, or no rows (what MLflow passes for
            a request of no rows).
    """
    if isinstance(model_input, pd.DataFrame):
        frame = model_input
    elif isinstance(model_input, dict):
        frame = pd.DataFrame({key: list(value) if isinstance(value, list | tuple | np.ndarray)
                              else [value]
                              for key, value in model_input.items()})
    else:
        frame = pd.DataFrame({columns[0]: list(model_input)})
    if not len(frame.columns):
        raise NoInputColumns(f"the request holds none of the model's input columns "
                             f"({', '.join(columns)}), or no rows")
    if not set(columns) & set(frame.columns):
        frame = frame.rename(columns={frame.columns[0]: columns[0]})
    return frame.to_dict("records")


def request_rows(model_input: Any, columns: Sequence[str], kinds: tuple[type, ...]
                 ) -> list[dict]:
    """The rows of a request (`rows_of`), a request of one row whose first column holds a
    list of inputs (each one of `kinds`) spread into a row per input. In a request of
    several rows a list stays one row (answered with its error), so that the answers line up
    with the rows sent, as does a list of something else (a waveform sent as `audio`).

    Raises:
        NoInputColumns: As `rows_of`.
    """
    rows = rows_of(model_input, columns)
    values = rows[0].get(columns[0]) if len(rows) == 1 else None
    if (isinstance(values, list | tuple | np.ndarray)
            and all(isinstance(value, kinds) for value in values)):
        return [{columns[0]: value} for value in values]
    return rows


def file_bytes(data: bytes) -> bytes:
    """A binary cell's file bytes: `data`, or, where `data` is base64 text (as MLflow hands
    over a binary cell of the `inputs` and `instances` JSON forms), the bytes it encodes.
    An audio file is never base64 text: its header holds bytes outside that alphabet."""
    text = data.replace(b"\r", b"").replace(b"\n", b"")
    if BASE64_TEXT.fullmatch(text):
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error:  # the alphabet, but not whole base64 (wrong length, padding)
            pass
    return data


def is_empty_cell(value: Any) -> bool:
    """Whether a request cell holds nothing: None, or the NaN pandas puts in an empty cell."""
    return value is None or (isinstance(value, float) and np.isnan(value))
