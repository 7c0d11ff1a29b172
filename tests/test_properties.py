"""Property-based tests: whatever audio or text comes in, decoding and standardisation either
give what features.audio and features.text promise or fail with their documented error."""

from __future__ import annotations

import functools
import io
import string

import numpy as np
import soundfile
import tensorflow as tf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from features.audio import AudioDecodeError, AudioSpec, decode_clip, fix_length, resample
from features.text import PADDING_ID, encode_reviews, fit_vectorizer, standardize_review
from tests.datasets import wav_bytes

SPEC = AudioSpec(16000, 1.0)
SUBTYPES = ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT")
EDGE_SECONDS = (0.0, 0.999, 1.0, 1.05, 1.1, 2.0, 3.0)  # around the clip and the read margin
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@st.composite
def wav_files(draw) -> tuple[bytes, int]:
    """(WAV bytes, frames) of random samples at any rate, channel count, length and subtype."""
    rate = draw(st.integers(1000, 96000))
    channels = draw(st.integers(1, 4))
    frames = int(draw(st.one_of(st.floats(0, 3), st.sampled_from(EDGE_SECONDS))) * rate)
    subtype = draw(st.sampled_from(SUBTYPES))
    scale = draw(st.sampled_from([0.0, 1e-4, 0.5, 1.0, 3.0]))  # PCM clips beyond full scale
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    samples = rng.uniform(-scale, scale, (frames, channels)).astype(np.float32)
    return wav_bytes(samples, rate, subtype), frames


def whole_file_decode(data: bytes) -> np.ndarray:
    """The documented conversion applied to the whole file: channel mean, resample, pad/trim."""
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return fix_length(resample(samples.mean(axis=1), rate, SPEC.sample_rate), SPEC.clip_samples)


@PROPERTY_SETTINGS
@given(wav_files())
def test_any_wav_decodes_to_a_finite_clip_as_documented(wav: tuple[bytes, int]):
    data, frames = wav
    event("longer than the clip" if frames > SPEC.clip_samples else "at most the clip")
    if frames == 0:  # a header without frames is the one refusal
        try:
            decode_clip(data, SPEC, name="clip")
        except AudioDecodeError as error:
            assert str(error) == "clip: the file holds no audio samples"
            return
        raise AssertionError("a WAV without frames decoded")
    clip = decode_clip(data, SPEC, name="clip")
    assert clip.shape == (SPEC.clip_samples,) and clip.dtype == np.float32
    assert np.isfinite(clip).all()
    # reading only the first second (plus a margin) gives what decoding the whole file gives
    np.testing.assert_allclose(clip, whole_file_decode(data), atol=1e-4)


def assert_clip_or_decode_error(data: bytes) -> None:
    try:
        clip = decode_clip(data, SPEC, name="junk")
    except AudioDecodeError as error:
        assert str(error).startswith("junk: ")
        return
    assert clip.shape == (SPEC.clip_samples,) and clip.dtype == np.float32
    assert np.isfinite(clip).all()


@PROPERTY_SETTINGS
@given(st.binary(max_size=4096))
def test_junk_bytes_raise_only_audio_decode_errors(data: bytes):
    assert_clip_or_decode_error(data)


@st.composite
def damaged_wavs(draw) -> bytes:
    """A valid short WAV with random bytes overwritten (header included) and maybe cut short."""
    data = bytearray(draw(wav_files())[0][:20_000])
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, min(len(data), 80) - 1))
        data[position] = draw(st.integers(0, 255))
    return bytes(data[:draw(st.integers(0, len(data)))])


@PROPERTY_SETTINGS
@given(damaged_wavs())
def test_damaged_wav_headers_raise_only_audio_decode_errors(data: bytes):
    assert_clip_or_decode_error(data)


TRAIN_REVIEWS = ["a great film", "a boring film", "great acting and a dull plot",
                 "the worst film ever made", "loved it"]
SEQUENCE_LENGTH = 8
VOCABULARY_SIZE = 12
ASCII_PUNCTUATION_AND_UPPER = set(string.punctuation + string.ascii_uppercase)


@functools.cache
def vectorizer():
    return fit_vectorizer(TRAIN_REVIEWS, VOCABULARY_SIZE, SEQUENCE_LENGTH)


def standardized(text: str) -> str:
    return standardize_review(tf.constant([text])).numpy()[0].decode("utf-8")


HTML_PIECES = st.sampled_from(["<br />", "<BR/>", "<i>", "</i>", "<p class='x'>", "&amp;",
                               "Don't", "A", "Z!", " "])
REVIEWS = st.lists(st.one_of(st.text(), HTML_PIECES), max_size=8).map("".join)


@PROPERTY_SETTINGS
@given(REVIEWS)
def test_standardisation_leaves_no_upper_case_tags_or_punctuation(text: str):
    clean = standardized(text)
    assert not ASCII_PUNCTUATION_AND_UPPER & set(clean)
    assert clean == standardized(clean)  # idempotent: nothing left to remove


def assert_encoded(ids: np.ndarray, rows: int) -> None:
    assert ids.dtype == np.int32 and ids.shape == (rows, SEQUENCE_LENGTH)
    assert ids.min() >= 0 and ids.max() < VOCABULARY_SIZE
    assert (ids[:, 0] != PADDING_ID).all()  # at least one token per review
    after_padding = np.maximum.accumulate(ids == PADDING_ID, axis=1)
    assert not ids[after_padding].any()  # right-padded: no token after a padding id


@PROPERTY_SETTINGS
@given(st.lists(REVIEWS, min_size=1, max_size=6))
def test_encoded_reviews_are_in_range_and_right_padded(texts: list[str]):
    assert_encoded(encode_reviews(vectorizer(), texts), len(texts))


SURROGATE_OR_BYTES = st.one_of(
    st.lists(st.one_of(st.text(max_size=5), st.characters(categories=["Cs"])),
             max_size=6).map("".join),
    st.binary(max_size=40))


@PROPERTY_SETTINGS
@given(st.lists(SURROGATE_OR_BYTES, min_size=1, max_size=6))
def test_lone_surrogates_and_raw_bytes_encode_like_any_review(texts: list):
    assert_encoded(encode_reviews(vectorizer(), texts), len(texts))
