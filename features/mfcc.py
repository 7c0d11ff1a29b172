"""MFCC frames with librosa, computed for a batch of clips in one call."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MfccConfig:
    """Feature geometry shared by the feature stage and the model.

    Frames are not centred (`center=False`): a 1 s clip at a 30 ms window and 10 ms hop gives
    98 frames, the same geometry as TensorFlow's speech_commands example.
    """

    sample_rate: int = 16000
    clip_seconds: float = 1.0
    window_ms: float = 30.0
    hop_ms: float = 10.0
    n_mels: int = 40
    n_mfcc: int = 40
    fmin: float = 20.0
    fmax: float = 8000.0
    top_db: float = 80.0

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def num_frames(self) -> int:
        return feature_shape(self)[0]


def feature_shape(config: MfccConfig) -> tuple[int, int]:
    """(frames, coefficients) of one clip's MFCC matrix; the model's input shape.

    Raises:
        ValueError: the window is longer than the clip, or the mel/MFCC counts do not fit.
    """
    if config.win_length > config.clip_samples:
        raise ValueError(
            f"window of {config.win_length} samples is longer than the clip "
            f"({config.clip_samples} samples)"
        )
    if config.n_mfcc > config.n_mels:
        raise ValueError(f"n_mfcc={config.n_mfcc} exceeds n_mels={config.n_mels}")
    frames = 1 + (config.clip_samples - config.win_length) // config.hop_length
    return frames, config.n_mfcc


def librosa_kwargs(config: MfccConfig) -> dict:
    """Keyword arguments that make `librosa.feature.mfcc(y=...)` compute these features."""
    return {
        "sr": config.sample_rate,
        "n_mfcc": config.n_mfcc,
        "n_fft": config.win_length,
        "win_length": config.win_length,
        "hop_length": config.hop_length,
        "center": False,
        "n_mels": config.n_mels,
        "fmin": config.fmin,
        "fmax": config.fmax,
    }


def mfcc_frames(waveforms: np.ndarray, config: MfccConfig) -> np.ndarray:
    """MFCC frames for a batch of equal-length clips.

    Equal to calling `librosa.feature.mfcc` on each clip: the dB floor (`top_db`) is taken
    per clip, not over the whole batch as one batched `librosa.feature.mfcc` call would.

    Args:
        waveforms: float array of shape (clips, samples) or (samples,).
        config: Feature geometry.

    Returns:
        float32 array of shape (clips, frames, n_mfcc) (or (frames, n_mfcc) for one clip).
    """
    import librosa  # deferred: importing librosa costs seconds

    kwargs = librosa_kwargs(config)
    n_mfcc = kwargs.pop("n_mfcc")
    power = librosa.feature.melspectrogram(y=np.asarray(waveforms, np.float32), **kwargs)
    log_power = 10.0 * np.log10(np.maximum(power, 1e-10))
    floor = log_power.max(axis=(-2, -1), keepdims=True) - config.top_db
    log_power = np.maximum(log_power, floor)
    coefficients = librosa.feature.mfcc(S=log_power, n_mfcc=n_mfcc)
    return np.swapaxes(coefficients, -1, -2).astype(np.float32)
