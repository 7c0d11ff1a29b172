"""A served request is bounded as a whole (rows, payload bytes) before any row is decoded, and a
waveform's length is checked before it becomes an array."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from features.audio import AudioDecodeError
from features.mfcc import MfccConfig
from features.speech_commands import TWELVE_CLASS_LABELS
from pipelines.errors import PipelineError
from pipelines.evaluation import EVALUATE_CHUNK, predict_in_groups, request_chunks
from pipelines.request_bounds import (
    MAX_REQUEST_ROWS,
    SPEECH_MAX_REQUEST_BYTES,
    TEXT_MAX_REQUEST_BYTES,
    RequestTooLarge,
    check_request,
    text_bytes,
)
from pipelines.serving import SpeechPredictor, TextPredictor
from tests.datasets import wav_bytes

# no model: a request that got past the bounds to its rows would fail on the missing model
SPEECH = SpeechPredictor(None, TWELVE_CLASS_LABELS, MfccConfig())
TEXT = TextPredictor(("neg", "pos"))


def wav(seconds: float = 0.1) -> bytes:
    return wav_bytes(np.zeros(int(16000 * seconds), np.float32))


def test_the_bounds_are_inclusive_and_the_message_names_bound_and_size():
    check_request([1] * MAX_REQUEST_ROWS, 512, "audio")  # at both bounds: accepted
    with pytest.raises(RequestTooLarge, match=rf"^request too large: {MAX_REQUEST_ROWS + 1} "
                       rf"rows, over the bound of {MAX_REQUEST_ROWS} rows"):
        check_request([0] * (MAX_REQUEST_ROWS + 1), 512, "audio")
    with pytest.raises(RequestTooLarge, match=r"^request too large: 513 bytes of audio in 2 "
                       r"rows, over the bound of 512 bytes"):
        check_request([500, 13], 512, "audio")
    assert issubclass(RequestTooLarge, PipelineError)  # the CLI reports it as `error: ...`


class DecodeCounting(SpeechPredictor):
    """The served speech model, counting the rows it decodes."""

    decoded = 0

    def clips(self, rows):
        self.decoded += len(rows)
        return super().clips(rows)


def test_a_speech_request_over_the_row_bound_is_refused_before_any_clip_is_decoded():
    served = DecodeCounting(None, TWELVE_CLASS_LABELS, MfccConfig())
    rows = pd.DataFrame({"audio": [wav()] * (MAX_REQUEST_ROWS + 1)})
    with pytest.raises(RequestTooLarge, match=f"{MAX_REQUEST_ROWS + 1} rows"):
        served.predict(rows)
    assert served.decoded == 0
    # rows within the bounds are decoded, then meet no model
    with pytest.raises(TypeError, match="'NoneType' object is not callable"):
        served.predict(rows.iloc[:2])
    assert served.decoded == 2


def test_a_speech_request_over_the_byte_bound_is_refused_audio_and_waveforms_alike():
    quarter = b"\0" * (SPEECH_MAX_REQUEST_BYTES // 4 + 1)  # one object, four rows
    with pytest.raises(RequestTooLarge, match=f"{SPEECH_MAX_REQUEST_BYTES + 4:,} bytes of "
                       "audio in 4 rows"):
        SPEECH.predict(pd.DataFrame({"audio": [quarter] * 4}))
    # a waveform counts 8 bytes a sample from its length: ten billion samples, never stored
    rows = pd.DataFrame({"waveform": pd.Series([range(10**10)], dtype=object),
                         "sample_rate": [16000]})
    with pytest.raises(RequestTooLarge, match="80,000,000,000 bytes of audio in 1 row,"):
        SPEECH.predict(rows)


def test_a_waveform_is_measured_before_it_is_converted():
    # measured first: converted first, this would be a (976001, 1) array and its shape error
    with pytest.raises(AudioDecodeError, match=r"^waveform: 61\.0 s long, longer than the 60 s"):
        SPEECH.waveform({"waveform": [[0.0]] * (61 * 16000 + 1), "sample_rate": 16000})
    with pytest.raises(AudioDecodeError, match="^waveform: expected a 1-D array of numbers"):
        SPEECH.waveform({"waveform": 0.5, "sample_rate": 16000})


def test_a_text_request_over_a_bound_is_refused_as_a_whole():
    with pytest.raises(RequestTooLarge, match=f"{MAX_REQUEST_ROWS + 1} rows"):
        TEXT.predict(pd.DataFrame({"text": ["a fine film"] * (MAX_REQUEST_ROWS + 1)}))
    # MLflow hands {"text": [...]} over as one row holding the list: its reviews are counted
    with pytest.raises(RequestTooLarge, match=f"{MAX_REQUEST_ROWS + 1} rows"):
        TEXT.predict({"text": [["a fine film"] * (MAX_REQUEST_ROWS + 1)]})
    review = "é" * 90_000  # under the per-review bound, 180,000 UTF-8 bytes
    count = TEXT_MAX_REQUEST_BYTES // 180_000 + 1
    with pytest.raises(RequestTooLarge, match=f"{count * 180_000:,} bytes of review text in "
                       f"{count} rows"):
        TEXT.predict(pd.DataFrame({"text": [review] * count}))


def test_review_bytes_are_utf8_bytes():
    assert text_bytes("abc") == 3
    assert text_bytes("café") == 5
    assert text_bytes("\udcff") == 3  # a lone surrogate, as it came in
    assert text_bytes(b"\xff\xfe") == 2
    assert text_bytes(None) == 0


def test_predict_and_evaluate_send_requests_inside_the_bounds():
    texts = [{"text": "a fine film"}] * 600
    assert [len(chunk) for chunk in request_chunks(texts)] == [256, 256, 88]
    waveforms = [{"waveform": [0.0] * 1_000_000, "sample_rate": 16000}] * 5  # 8 MB each
    chunks = request_chunks(waveforms)
    assert [len(chunk) for chunk in chunks] == [2, 2, 1]
    assert sum(chunks, []) == list(range(5))
    assert SPEECH_MAX_REQUEST_BYTES > 2 * 8_000_000 and EVALUATE_CHUNK < MAX_REQUEST_ROWS


def test_one_input_over_the_bounds_is_answered_with_the_reason_and_the_others_labelled():
    """`predict` and `evaluate` give a file too large for any request an error row of its
    own; the files beside it get their labels, as do rows whose file could not be read."""
    keras.utils.set_random_seed(0)
    waveforms = keras.Input((16000,))
    model = keras.Model(waveforms, keras.layers.Dense(len(TWELVE_CLASS_LABELS),
                                                      activation="softmax")(waveforms))
    predictor = SpeechPredictor(model, TWELVE_CLASS_LABELS, MfccConfig())
    huge = wav() + bytes(SPEECH_MAX_REQUEST_BYTES)  # a request of its own, over the bound
    inputs = pd.DataFrame({"audio": [wav(), huge, None, wav()],
                           "sample_rate": [None, None, None, None]})
    answer = predict_in_groups(predictor, inputs, {2: "c.wav: cannot be read (Permission denied)"})
    assert answer["error"].isna().tolist() == [True, False, False, True]
    assert answer.loc[1, "error"].startswith("request too large")
    assert answer.loc[2, "error"] == "c.wav: cannot be read (Permission denied)"
    assert answer.loc[[0, 3], "label"].notna().all()
