from __future__ import annotations

import librosa
import numpy as np
import pytest

from features.audio import AudioSpec, decode_clip
from features.mfcc import CHUNK_CLIPS, MfccConfig, feature_shape, librosa_kwargs, mfcc_frames
from tests.datasets import tone


def test_default_geometry_is_98_frames_of_40_coefficients():
    assert feature_shape(MfccConfig()) == (98, 40)
    assert feature_shape(MfccConfig(hop_ms=20, n_mfcc=13)) == (49, 13)


def test_geometry_errors_name_the_values():
    with pytest.raises(ValueError, match="n_mfcc=50 exceeds n_mels=40"):
        feature_shape(MfccConfig(n_mfcc=50))
    with pytest.raises(ValueError, match="longer than the clip"):
        feature_shape(MfccConfig(window_ms=2000))


def test_batched_features_equal_a_direct_librosa_call_per_clip():
    config = MfccConfig()
    clips = np.stack([tone(300, seed=1), 0.001 * tone(900, seed=2), np.zeros(16000, np.float32)])
    batched = mfcc_frames(clips, config)
    assert batched.shape == (3, 98, 40) and batched.dtype == np.float32
    for clip, frames in zip(clips, batched, strict=True):
        direct = librosa.feature.mfcc(y=clip, **librosa_kwargs(config)).T
        assert np.max(np.abs(frames - direct)) <= 1e-3


def test_real_clips_in_uneven_batches_equal_librosa_per_clip(shared_speech_dir):
    """Real speech, more clips than one compiled call takes and a count that is not a power of
    two (padded calls), and a non-default geometry: all equal to librosa per clip."""

    paths = sorted(shared_speech_dir.glob("yes/*.wav"))[: CHUNK_CLIPS + 37]
    clips = np.stack([decode_clip(path, AudioSpec(16000, 1.0)) for path in paths])
    for config in (MfccConfig(), MfccConfig(hop_ms=20, n_mfcc=13, fmax=7000)):
        batched = mfcc_frames(clips, config)
        assert batched.shape == (len(paths), *feature_shape(config))
        for index in (0, CHUNK_CLIPS - 1, CHUNK_CLIPS, len(paths) - 1):
            direct = librosa.feature.mfcc(y=clips[index], **librosa_kwargs(config)).T
            assert np.max(np.abs(batched[index] - direct)) <= 1e-3
        # a clip alone or in another batch size differs only by float32 rounding
        np.testing.assert_allclose(mfcc_frames(clips[5], config), batched[5],
                                   rtol=1e-5, atol=1e-4)


def test_clips_of_the_wrong_length_are_refused_with_the_expected_shape():
    with pytest.raises(ValueError, match=r"expected clips of 16000 samples.*got shape \(2, 8000\)"):
        mfcc_frames(np.zeros((2, 8000), np.float32), MfccConfig())
