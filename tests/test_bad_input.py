"""Bad input for audio decoding, text standardisation and the served models: each case either
works as documented (features.audio, features.text, pipelines.serving) or fails with a clear
error that names it, and never takes the other inputs of a request down with it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import tensorflow as tf

from features.audio import AudioDecodeError, AudioSpec, decode_clip
from features.errors import DataError
from features.mfcc import MfccConfig, feature_shape, mfcc_frames
from features.speech_commands import (
    TWELVE_CLASS_LABELS,
    Example,
    SplitConfig,
    load_speech_commands,
)
from features.speech_data import evaluation_inputs
from features.speech_features import compute_features
from features.text import (
    OOV_ID,
    PADDING_ID,
    encode_reviews,
    fit_vectorizer,
    review_tensor,
    standardize_review,
)
from pipelines.request_bounds import NoInputColumns
from pipelines.serving import MAX_AUDIO_SECONDS, MAX_TEXT_CHARS, SpeechPredictor, TextPredictor
from tests.builders import untrained_speech_predictor, untrained_text_predictor
from tests.datasets import SPEAKERS, make_speech_commands, review_text, tone, wav_bytes

SPEC = AudioSpec(16000, 1.0)
LABELS = ("yes", "no", "up")


def float_wav_with(value: float, at: int, seconds: float = 1.0) -> bytes:
    samples = tone(440, seconds)
    samples[at] = value
    return wav_bytes(samples, subtype="FLOAT")


def peak_frequency(waveform: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(waveform))) * SPEC.sample_rate / waveform.size)


FULL_CLIP = wav_bytes(tone(440))  # 44-byte header + 16000 16-bit frames
HALF_FRAMES = (len(FULL_CLIP) // 2 - 44) // 2


def keeps_the_surviving_half(waveform: np.ndarray) -> None:
    whole = decode_clip(FULL_CLIP, SPEC)
    np.testing.assert_array_equal(waveform[:HALF_FRAMES], whole[:HALF_FRAMES])
    assert not waveform[HALF_FRAMES:].any()


def close_to_the_tone(tolerance: float) -> Callable[[np.ndarray], None]:
    def check(waveform: np.ndarray) -> None:
        np.testing.assert_allclose(waveform, tone(440), atol=tolerance)
    return check


def is_the_440_hz_tone(waveform: np.ndarray) -> None:
    assert abs(peak_frequency(waveform) - 440) <= 2
    assert 0.25 < np.abs(waveform).max() < 0.35


def padded_after(samples: int) -> Callable[[np.ndarray], None]:
    def check(waveform: np.ndarray) -> None:
        assert np.abs(waveform[:samples]).max() > 0.2 and not waveform[samples:].any()
    return check


def first_second_of_the_tone(waveform: np.ndarray) -> None:
    np.testing.assert_allclose(waveform, tone(440, 90.0)[:16000], atol=1 / 32768)


def silent_with_finite_features(waveform: np.ndarray) -> None:
    assert not waveform.any()
    assert np.isfinite(mfcc_frames(waveform, MfccConfig())).all()


def mean_of_the_channels(waveform: np.ndarray) -> None:
    np.testing.assert_allclose(waveform, 0.75 * tone(440), atol=1e-6)


@dataclass(frozen=True)
class WavCase:
    """A file and what decoding it gives: `error` (a regex the message holds after the file's
    name), or else a waveform that passes `check`. `served_error`: a different outcome when
    the served model is sent it (its request bounds)."""

    name: str
    data: Callable[[], bytes]
    error: str | None = None
    check: Callable[[np.ndarray], None] | None = None
    served_error: str | None = None


WAV_CASES = [
    WavCase("truncated_data", lambda: FULL_CLIP[:len(FULL_CLIP) // 2],
            check=keeps_the_surviving_half),
    WavCase("truncated_header", lambda: FULL_CLIP[:20],
            error=r"not decodable audio \(Error in WAV/W64/RF64 file"),
    WavCase("header_only", lambda: FULL_CLIP[:44], error="the file holds no audio samples"),
    WavCase("zero_length", lambda: b"",
            error=r"not decodable audio \(the file is empty: 0 bytes\)"),
    WavCase("text_bytes", lambda: b"RIFF? no, a plain text file\n" * 20,
            error=r"not decodable audio \(Format not recognised"),
    WavCase("pcm_u8", lambda: wav_bytes(tone(440), subtype="PCM_U8"),
            check=close_to_the_tone(1 / 64)),
    WavCase("pcm_24", lambda: wav_bytes(tone(440), subtype="PCM_24"),
            check=close_to_the_tone(1e-6)),
    WavCase("float32", lambda: wav_bytes(tone(440), subtype="FLOAT"),
            check=close_to_the_tone(0)),
    WavCase("stereo", lambda: wav_bytes(np.stack([tone(440), 0.5 * tone(440)], 1),
                                        subtype="FLOAT"), check=mean_of_the_channels),
    WavCase("rate_8khz", lambda: wav_bytes(tone(440, rate=8000), 8000), check=is_the_440_hz_tone),
    WavCase("rate_44khz", lambda: wav_bytes(tone(440, rate=44100), 44100),
            check=is_the_440_hz_tone),
    WavCase("shorter_than_a_second", lambda: wav_bytes(tone(440, 0.25)),
            check=padded_after(4000)),
    WavCase("one_frame", lambda: wav_bytes(np.array([0.5], np.float32), subtype="FLOAT"),
            check=padded_after(1)),
    WavCase("ninety_seconds", lambda: wav_bytes(tone(440, 90.0)),
            check=first_second_of_the_tone, served_error=r"90\.0 s long, longer than the 60 s"),
    WavCase("all_zero", lambda: wav_bytes(np.zeros(16000, np.float32)),
            check=silent_with_finite_features),
    WavCase("nan_sample", lambda: float_wav_with(np.nan, 100), error="holds NaN/Inf samples"),
    WavCase("inf_sample", lambda: float_wav_with(-np.inf, 15999), error="holds NaN/Inf samples"),
    WavCase("nan_after_the_clip", lambda: float_wav_with(np.nan, 3 * 16000, seconds=4.0),
            check=first_second_of_the_tone),
    WavCase("absurd_float_samples", lambda: float_wav_with(1e30, 5),
            error=r"samples reach 1e\+30, beyond"),
    WavCase("rate_out_of_range", lambda: wav_bytes(tone(440, rate=500), 500),
            error="sample rate 500 Hz: expected a whole number of Hz from 1000 to 384000"),
]


@pytest.mark.parametrize("case", WAV_CASES, ids=lambda case: case.name)
def test_reader_decodes_or_names_each_bad_wav(case: WavCase, tmp_path: Path):
    path = tmp_path / f"{case.name}.wav"
    path.write_bytes(case.data())
    if case.error:
        with pytest.raises(AudioDecodeError, match=f"^{re.escape(str(path))}: {case.error}"):
            decode_clip(path, SPEC)
        return
    waveform = decode_clip(path, SPEC)
    assert waveform.shape == (SPEC.clip_samples,) and waveform.dtype == np.float32
    assert np.isfinite(waveform).all()
    case.check(waveform)


def test_training_stage_skips_and_counts_bad_clips_with_their_path(tmp_path: Path):
    good = [case for case in WAV_CASES if not case.error]
    bad = [case for case in WAV_CASES if case.error]
    examples = []
    for case in WAV_CASES:
        (tmp_path / "yes").mkdir(exist_ok=True)
        (tmp_path / "yes" / f"{case.name}.wav").write_bytes(case.data())
        examples.append(Example("yes", f"yes/{case.name}.wav"))
    features = compute_features(examples, tmp_path, MfccConfig())
    assert features.rows.shape == (len(good), *feature_shape(MfccConfig()))
    assert np.isfinite(features.rows).all()
    assert [path for path, _ in features.skipped] == [f"yes/{case.name}.wav" for case in bad]
    assert all(reason.startswith(f"{tmp_path / path}: ") for path, reason in features.skipped)


def test_evaluation_names_a_noise_recording_its_silence_windows_cannot_be_cut_from(
        tmp_path: Path):
    root = make_speech_commands(tmp_path / "speech_commands")
    noise = root / "_background_noise_" / "white_noise.wav"
    soundfile.write(noise, np.full(3 * 16000, np.nan, np.float32), 16000, subtype="FLOAT")
    inputs = evaluation_inputs(str(root), SplitConfig(), MfccConfig(), TWELVE_CLASS_LABELS)
    silence = [i for i, name in enumerate(inputs.names) if "@" in name]
    assert silence and sorted(inputs.failed) == silence
    assert all(inputs.failed[i] == f"{noise}: holds NaN/Inf samples" for i in silence)


def test_evaluation_scores_a_training_layout_folder_around_clips_that_cannot_be_read(
        tmp_path: Path):
    root = make_speech_commands(tmp_path / "speech_commands")
    # broken links stand in for clips the user may not read (the suite may run as root)
    test_clip, train_clip = root / "yes" / f"{SPEAKERS[5]}_nohash_0.wav", root / "no" / (
        f"{SPEAKERS[0]}_nohash_0.wav")
    for clip in (test_clip, train_clip):
        clip.unlink()
        clip.symlink_to(tmp_path / "gone.wav")
    inputs = evaluation_inputs(str(root), SplitConfig(), MfccConfig(), TWELVE_CLASS_LABELS)
    assert inputs.failed == {inputs.names.index(str(test_clip)):
                             f"{test_clip}: cannot be read (No such file or directory)"}
    with pytest.raises(DataError, match=f"^{train_clip}: cannot be read"):  # training refuses
        load_speech_commands(root, SplitConfig(), SPEC)


@pytest.fixture(scope="module")
def speech_predictor() -> SpeechPredictor:
    return untrained_speech_predictor(LABELS)


def assert_answered(answer: pd.DataFrame, index: int) -> None:
    row = answer.loc[index]
    assert pd.isna(row["error"]) and row["label"] in LABELS
    probabilities = np.array([row[f"probability_{label}"] for label in LABELS], float)
    assert np.isfinite(probabilities).all() and probabilities.sum() == pytest.approx(1, abs=1e-5)


def assert_rejected(answer: pd.DataFrame, index: int, error: str) -> None:
    row = answer.loc[index]
    assert re.search(error, row["error"]), row["error"]
    assert row["label"] is None
    assert all(row[f"probability_{label}"] is None for label in LABELS)


@pytest.mark.parametrize("case", WAV_CASES, ids=lambda case: case.name)
def test_served_model_answers_each_wav_case_beside_good_clips(case: WavCase,
                                                             speech_predictor: SpeechPredictor):
    good = wav_bytes(tone(440))
    answer = speech_predictor.predict(pd.DataFrame({"audio": [good, case.data(), good]}))
    assert_answered(answer, 0)
    assert_answered(answer, 2)
    error = case.served_error or case.error
    if error:
        assert_rejected(answer, 1, f"^audio: {error}")
    else:
        assert_answered(answer, 1)


def test_served_rows_without_a_clip_say_what_they_hold(speech_predictor: SpeechPredictor):
    good = wav_bytes(tone(440))
    answer = speech_predictor.predict(pd.DataFrame({"audio": [good, [good], "UklGRg=="]}))
    assert_answered(answer, 0)
    assert_rejected(answer, 1, r"^audio: expected a file's bytes \(base64 in JSON\), got list$")
    assert_rejected(answer, 2, r"^audio: expected a file's bytes \(base64 in JSON\), got str$")
    with pytest.raises(NoInputColumns, match="none of the model's input columns"):
        speech_predictor.predict(pd.DataFrame(index=range(2)))
    with pytest.raises(NoInputColumns, match="none of the model's input columns .*, or no rows"):
        speech_predictor.predict(pd.DataFrame())  # {"dataframe_records": []}, as MLflow gives it


def test_served_audio_over_the_limit_is_rejected_from_its_header(
        speech_predictor: SpeechPredictor):
    assert MAX_AUDIO_SECONDS == 60
    limit = MAX_AUDIO_SECONDS * 8000
    over = tone(440, MAX_AUDIO_SECONDS + 1, rate=8000)
    over[limit:] = np.nan  # never read: the header alone turns the clip away
    at_limit = tone(440, MAX_AUDIO_SECONDS, rate=8000)
    answer = speech_predictor.predict(pd.DataFrame({"audio": [
        wav_bytes(over, 8000, "FLOAT"), wav_bytes(at_limit, 8000)]}))
    assert_rejected(answer, 0, "^audio: 61.0 s long, longer than the 60 s a request may send")
    assert_answered(answer, 1)


WAVEFORM_ROWS = [  # (waveform, sample_rate, error or None)
    (tone(440).tolist(), 16000, None),
    (tone(440, rate=1000).tolist(), 1000, None),
    (tone(440, MAX_AUDIO_SECONDS + 1, rate=1000).tolist(), 1000,
     "^waveform: 61.0 s long, longer than the 60 s"),
    ([0.1] * 400, 400, "^waveform: sample rate 400.0 Hz: expected a whole number of Hz from 1000"),
    ([0.1] * 400, 1_000_000, "^waveform: sample rate 1000000.0 Hz: expected a whole number"),
    ([0.1] * 400, 16000.5, "^waveform: sample rate 16000.5 Hz: expected a whole number"),
    ([0.1] * 400, np.nan, r"^waveform: needs a positive sample_rate \(Hz\)"),
    ([0.1] * 400, "16000", r"^waveform: needs a positive sample_rate \(Hz\)"),
    ([0.1, np.nan, 0.2], 16000, "^waveform: holds NaN/Inf samples"),
    ([0.1, np.inf, 0.2], 16000, "^waveform: holds NaN/Inf samples"),
    ([0.1, 1e30, 0.2], 16000, r"^waveform: samples reach 1e\+30, beyond"),
    (["a", "b"], 16000, "^waveform: expected a 1-D array of numbers"),
    ([[0.1, 0.2], [0.3, 0.4]], 16000, r"^waveform: expected a non-empty 1-D array"),
]


def test_served_waveform_rows_are_bounded_row_by_row(speech_predictor: SpeechPredictor):
    answer = speech_predictor.predict(pd.DataFrame({
        "waveform": [row[0] for row in WAVEFORM_ROWS],
        "sample_rate": pd.Series([row[1] for row in WAVEFORM_ROWS], dtype=object)}))
    for index, (_, _, error) in enumerate(WAVEFORM_ROWS):
        if error:
            assert_rejected(answer, index, error)
        else:
            assert_answered(answer, index)


TRAIN_REVIEWS = [review_text("pos" if n % 2 else "neg", n) for n in range(40)]
ONE_MEGABYTE = "great film " * 100_000


def lone_surrogate(text: str) -> str:
    return text.replace(" ", " \udcff ", 1)


TEXT_CASES = {  # text -> the ids a vectorizer fitted on TRAIN_REVIEWS gives, or None: as given
    "empty": "",
    "whitespace": " \t\n\r\u2028 ",
    "only_html": "<br /><br /><i></i>",
    "non_utf8_bytes": b"Great film \xff\xfe caf\xe9",
    "lone_surrogate": lone_surrogate("Great film"),
    "one_megabyte": ONE_MEGABYTE,
}


@pytest.fixture(scope="module")
def vectorizer():
    return fit_vectorizer(TRAIN_REVIEWS, vocabulary_size=50, sequence_length=12)


def assert_right_padded_ids(ids: np.ndarray, rows: int, length: int) -> None:
    assert ids.dtype == np.int32 and ids.shape == (rows, length)
    assert (ids[:, 0] != PADDING_ID).all()
    for row in ids:  # no token after the first padding
        padding = np.flatnonzero(row == PADDING_ID)
        assert not padding.size or not row[padding[0]:].any()


@pytest.mark.parametrize("name", TEXT_CASES)
def test_text_path_encodes_each_bad_review(name: str, vectorizer):
    text = TEXT_CASES[name]
    standardized = standardize_review(review_tensor([text])).numpy()[0].decode("utf-8")
    assert standardized == standardized.lower() and "<" not in standardized
    ids = encode_reviews(vectorizer, [text, TRAIN_REVIEWS[0]])
    assert_right_padded_ids(ids, 2, 12)
    np.testing.assert_array_equal(ids[1], encode_reviews(vectorizer, [TRAIN_REVIEWS[0]])[0])
    vocabulary = vectorizer.get_vocabulary()
    great, film = vocabulary.index("great"), vocabulary.index("film")
    expected = {"empty": [OOV_ID], "whitespace": [OOV_ID], "only_html": [OOV_ID],
                "non_utf8_bytes": [great, film, OOV_ID], "lone_surrogate": [great, film],
                "one_megabyte": [great, film] * 6}[name]
    assert ids[0].tolist() == expected + [PADDING_ID] * (12 - len(expected))


def test_lone_surrogates_and_bad_bytes_become_the_replacement_character(vectorizer):
    tensor = review_tensor([b"caf\xe9", "caf\udce9"])
    assert tensor.numpy().tolist() == ["caf\ufffd".encode()] * 2
    assert tf.strings.length(standardize_review(tensor)).numpy().tolist() == [4, 4]


@pytest.fixture(scope="module")
def text_predictor(vectorizer) -> TextPredictor:
    return untrained_text_predictor(vectorizer, 50)


def test_served_text_rows_are_bounded_row_by_row(text_predictor: TextPredictor):
    assert MAX_TEXT_CHARS == 100_000
    rows = [TRAIN_REVIEWS[0], "x" * (MAX_TEXT_CHARS + 1), TRAIN_REVIEWS[1], "", "  \n ",
            None, 42, b"Great film \xff", lone_surrogate("Great film"), "<br /><br />",
            ONE_MEGABYTE, "y" * MAX_TEXT_CHARS, b"   "]
    answer = text_predictor.predict(pd.DataFrame({"text": pd.Series(rows, dtype=object)}))
    empty = "text: expected a non-empty review string"
    errors = {1: f"text: {MAX_TEXT_CHARS + 1} characters long, longer than the "
                 f"{MAX_TEXT_CHARS} a review may be",
              3: empty, 4: empty, 5: empty, 6: "text: expected a review string, got int",
              12: empty,
              10: f"text: {len(ONE_MEGABYTE)} characters long"}
    for index in range(len(rows)):
        if index in errors:
            assert answer.loc[index, "error"].startswith(errors[index])
            assert answer.loc[index, "label"] is None
            assert answer.loc[index, "probability_pos"] is None
        else:
            assert pd.isna(answer.loc[index, "error"]), answer.loc[index, "error"]
            assert answer.loc[index, "label"] in ("neg", "pos")
            assert 0 <= answer.loc[index, "probability_pos"] <= 1
    # bad bytes and lone surrogates read as U+FFFD, the same as a decoded file would
    same = text_predictor.predict(pd.DataFrame({"text": ["Great film \ufffd",
                                                         "Great \ufffd film"]}))
    assert answer.loc[7, "probability_pos"] == pytest.approx(same.loc[0, "probability_pos"])
    assert answer.loc[8, "probability_pos"] == pytest.approx(same.loc[1, "probability_pos"])
