"""Every form of request MLflow hands a served model is answered a row per input: a request of
one row holding a list of inputs (a dict of lists in Python, the `inputs` JSON form) a row per
item, a list among several rows as one row with its error, and a binary cell MLflow leaves as
base64 text (the `inputs` and `instances` JSON forms) decoded to its file."""

from __future__ import annotations

import base64

import numpy as np
import pandas as pd
import pytest

from features.text import fit_vectorizer
from pipelines.request_rows import file_bytes
from pipelines.serving import SpeechPredictor, TextPredictor
from tests.builders import untrained_speech_predictor, untrained_text_predictor
from tests.datasets import review_text, tone, wav_bytes

LABELS = ("yes", "no", "up")


CLIPS = [wav_bytes(tone(440)), wav_bytes(tone(880))]


@pytest.fixture(scope="module")
def speech_predictor() -> SpeechPredictor:
    return untrained_speech_predictor(LABELS)


@pytest.fixture(scope="module")
def text_predictor() -> TextPredictor:
    reviews = [review_text("pos" if n % 2 else "neg", n) for n in range(20)]
    return untrained_text_predictor(fit_vectorizer(reviews, vocabulary_size=50,
                                                   sequence_length=12), 50)


def test_a_request_of_one_row_holding_clips_answers_each_clip(
        speech_predictor: SpeechPredictor):
    expected = speech_predictor.predict(pd.DataFrame({"audio": CLIPS}))
    assert len(expected) == 2 and expected["error"].isna().all()
    for cell in (CLIPS, np.array([np.bytes_(clip) for clip in CLIPS], dtype=object)):
        assert speech_predictor.predict(pd.DataFrame({"audio": [cell]})).equals(expected)
    assert len(speech_predictor.predict(pd.DataFrame({"audio": [[]]}))) == 0  # no clips
    # a list of something else (samples sent as `audio`) stays one row, with its error
    answer = speech_predictor.predict(pd.DataFrame({"audio": [np.zeros(16000)]}))
    assert answer["error"].tolist() == [
        "audio: expected a file's bytes (base64 in JSON), got ndarray"]


def test_a_list_among_several_review_rows_stays_one_row(text_predictor: TextPredictor):
    rows = pd.Series([["A moving film.", "awful"], "", "great film", []], dtype=object)
    answer = text_predictor.predict(pd.DataFrame({"text": rows}))
    assert answer["error"].tolist() == [
        "text: expected a review string, got list", "text: expected a non-empty review string",
        None, "text: expected a review string, got list"]
    alone = text_predictor.predict(pd.DataFrame({"text": ["great film"]}))
    assert answer.loc[2, "probability_pos"] == pytest.approx(alone.loc[0, "probability_pos"])
    # one row holding reviews: a row per review; holding none: no rows
    spread = text_predictor.predict(pd.DataFrame({"text": [["awful", "great film"]]}))
    assert spread["error"].isna().all()
    assert spread.loc[1, "probability_pos"] == pytest.approx(alone.loc[0, "probability_pos"])
    assert len(text_predictor.predict(pd.DataFrame({"text": [[]]}))) == 0


def test_base64_text_of_a_clip_is_answered_as_the_clip(speech_predictor: SpeechPredictor):
    clip = CLIPS[0]
    encoded = base64.b64encode(clip)
    assert file_bytes(clip) is clip  # a WAV header is never base64 text
    assert file_bytes(encoded) == clip == file_bytes(base64.encodebytes(clip))  # line breaks
    assert file_bytes(b"\n" * 5000 + b"!") == b"\n" * 5000 + b"!"  # not base64: as it is
    answer = speech_predictor.predict(pd.DataFrame({"audio": [
        clip, np.bytes_(encoded), base64.encodebytes(clip), encoded[:-3], b"UklGRg=="]}))
    probabilities = answer.filter(like="probability_").to_numpy()
    assert answer.loc[:2, "error"].isna().all()
    np.testing.assert_array_equal(probabilities[1], probabilities[0])
    np.testing.assert_array_equal(probabilities[2], probabilities[0])
    # base64 of a cut file, or cut base64: not audio, and said so
    assert answer.loc[3, "error"].startswith("audio: not decodable audio")
    assert answer.loc[4, "error"].startswith("audio: not decodable audio")
