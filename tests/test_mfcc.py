from __future__ import annotations

import librosa
import numpy as np
import pytest

from features.mfcc import MfccConfig, feature_shape, librosa_kwargs, mfcc_frames
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
