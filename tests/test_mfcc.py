from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import librosa
import numpy as np
import pytest

from features.audio import AudioSpec, decode_clip
from features.mfcc import (
    CHUNK_CLIPS,
    MfccConfig,
    build_mfcc_layer,
    feature_shape,
    librosa_kwargs,
    mfcc_constants,
    mfcc_frames,
)
from features.mfcc_layer import MfccLayer
from tests.datasets import tone

REPO = Path(__file__).resolve().parents[1]


def test_default_geometry_is_98_frames_of_40_coefficients():
    assert feature_shape(MfccConfig()) == (98, 40)
    assert feature_shape(MfccConfig(hop_ms=20, n_mfcc=13)) == (49, 13)


def test_geometry_errors_name_the_values():
    with pytest.raises(ValueError, match="n_mfcc=50 exceeds n_mels=40"):
        feature_shape(MfccConfig(n_mfcc=50))
    with pytest.raises(ValueError, match="longer than the clip"):
        feature_shape(MfccConfig(window_ms=2000))


def test_uninformative_mel_bands_are_refused_for_training_only():
    """A model saved with such bands still loads its features' settings."""
    for loaded in (MfccConfig(sample_rate=8000), MfccConfig(fmin=100, fmax=101)):
        with pytest.raises(ValueError, match="above half the sample rate|hold no frequency"):
            loaded.require_informative()
    MfccConfig(sample_rate=8000, fmax=4000).require_informative()
    # more bands than twice the window's bins: refused without building the filterbank
    # (10**8 bands of 241 float32 bins would take 96 GB)
    with pytest.raises(ValueError, match="at least 99999518 of the n_mels=100000000 mel bands"):
        MfccConfig(n_mels=10**8).require_informative()


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


def real_clips(speech_dir: Path, words=("yes", "no", "left", "stop"), per_word=3) -> np.ndarray:
    """The first `per_word` clips of each word, decoded to (clips, 16000) float32."""
    paths = [path for word in words
             for path in sorted((speech_dir / word).glob("*.wav"))[:per_word]]
    return np.stack([decode_clip(path, AudioSpec(16000, 1.0)) for path in paths])


def test_layer_on_real_clips_equals_the_cached_frames_and_librosa(shared_speech_dir):
    clips = real_clips(shared_speech_dir)
    for config in (MfccConfig(), MfccConfig(hop_ms=20, n_mfcc=13, fmax=7000)):
        frames = build_mfcc_layer(config)(clips).numpy()
        assert frames.shape == (len(clips), *feature_shape(config))
        assert frames.dtype == np.float32
        np.testing.assert_allclose(frames, mfcc_frames(clips, config), rtol=1e-5, atol=1e-4)
        for clip, clip_frames in zip(clips, frames, strict=True):
            direct = librosa.feature.mfcc(y=clip, **librosa_kwargs(config)).T
            assert np.max(np.abs(clip_frames - direct)) <= 1e-3


def test_layer_frames_of_a_clip_do_not_depend_on_the_rest_of_the_batch(shared_speech_dir):
    """The dB floor is each clip's own: a quiet clip and a silent one give the same frames alone
    as beside a loud clip (a floor over the batch would lift both)."""
    layer = build_mfcc_layer(MfccConfig())
    speech = real_clips(shared_speech_dir, words=("yes",), per_word=1)[0]
    quiet, silent = 0.001 * speech, np.zeros_like(speech)
    loud = np.clip(30 * speech, -1, 1)
    batch = np.stack([loud, quiet, speech, silent, loud])
    together = layer(batch).numpy()
    for index in (1, 2, 3):
        alone = layer(batch[index:index + 1]).numpy()[0]
        np.testing.assert_allclose(together[index], alone, rtol=1e-5, atol=1e-4)


def test_layer_config_holds_numbers_and_the_constants_are_non_trainable_weights():
    config = MfccConfig(hop_ms=20, n_mfcc=13)
    layer = build_mfcc_layer(config)
    layer_config = layer.get_config()
    assert {key: layer_config[key] for key in ("clip_samples", "n_fft", "hop_length", "n_mels",
                                               "n_mfcc", "top_db")} == {
        "clip_samples": 16000, "n_fft": 480, "hop_length": 320, "n_mels": 40, "n_mfcc": 13,
        "top_db": 80.0}
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 3
    for name, array in mfcc_constants(config).items():
        np.testing.assert_array_equal(getattr(layer, name).numpy(), array)
    blank = MfccLayer.from_config(layer_config)
    assert all(not np.any(weight.numpy()) for weight in blank.weights)
    assert layer.compute_output_shape((None, 16000)) == (None, 49, 13)
    with pytest.raises(ValueError, match="give all of window, mel and dct"):
        MfccLayer(**layer_config, window=mfcc_constants(config)["window"])
    with pytest.raises(ValueError, match=r"expected waveforms of shape \(batch, 16000\)"):
        layer(np.zeros((1, 8000), np.float32))


LOAD_AND_PREDICT = """
import sys

import keras
import numpy as np

import features.mfcc_layer  # registers MfccLayer for load_model

model = keras.saving.load_model(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
loaded = sorted({"librosa", "features.mfcc"} & set(sys.modules))
assert not loaded, f"loading the model imported {loaded}"
"""


def test_saved_model_with_the_layer_loads_and_predicts_without_librosa(shared_speech_dir,
                                                                         tmp_path):
    """Serving a raw-waveform model needs only Keras and features.mfcc_layer: the constants
    come from the .keras file."""
    inputs = keras.Input((16000,))
    frames = build_mfcc_layer(MfccConfig())(inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(frames)
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(pooled))
    clips = real_clips(shared_speech_dir, per_word=1)
    expected = model.predict(clips, verbose=0)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "clips.npy", clips)
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, str(tmp_path / "model.keras"),
         str(tmp_path / "clips.npy"), str(tmp_path / "predicted.npy")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    predicted = np.load(tmp_path / "predicted.npy")
    assert predicted.shape == (len(clips), 4)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)


def test_the_dft_by_matrix_products_gives_the_fft_frames():
    """`dft="matmul"` (for TensorFlow Lite, whose FFT needs power-of-two lengths) computes
    the same frames as the FFT."""
    config = MfccConfig()
    clips = np.random.default_rng(3).uniform(-0.5, 0.5, (3, config.clip_samples))
    fft = build_mfcc_layer(config)
    matmul = MfccLayer.from_config(fft.get_config() | {"dft": "matmul"})
    matmul.set_weights(fft.get_weights())
    np.testing.assert_allclose(np.asarray(matmul(clips)), np.asarray(fft(clips)), rtol=1e-4,
                               atol=1e-3)
    with pytest.raises((TypeError, ValueError), match="dft must be one of"):
        MfccLayer.from_config(fft.get_config() | {"dft": "fast"})
