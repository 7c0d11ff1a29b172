"""Decoding audio into fixed-length mono float32 waveforms."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile


class AudioDecodeError(ValueError):
    """Raised when a clip cannot be turned into a waveform; the message names the input."""


@dataclass(frozen=True)
class AudioSpec:
    """What every clip becomes before feature extraction.

    Attributes:
        sample_rate: Target sample rate in Hz; other rates are resampled.
        clip_seconds: Target duration; shorter clips are zero-padded at the end, longer trimmed.
    """

    sample_rate: int = 16000
    clip_seconds: float = 1.0

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))


def fix_length(waveform: np.ndarray, num_samples: int) -> np.ndarray:
    """Zero-pads at the end or trims the tail so that `waveform` has `num_samples` samples."""
    if waveform.shape[-1] >= num_samples:
        return waveform[..., :num_samples]
    pad = [(0, 0)] * (waveform.ndim - 1) + [(0, num_samples - waveform.shape[-1])]
    return np.pad(waveform, pad)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Averages the channels of a (frames, channels) array into one."""
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resamples with librosa (soxr, high quality); a no-op at the target rate."""
    if orig_rate == target_rate:
        return waveform
    import librosa  # imported lazily: its first import is slow and most clips never need it

    return librosa.resample(waveform, orig_sr=orig_rate, target_sr=target_rate)


def read_samples(source: str | Path | bytes, name: str | None = None) -> tuple[np.ndarray, int]:
    """Reads any soundfile-supported audio (WAV PCM 8/16/24/32-bit, float, ...) as float32.

    Args:
        source: A path, or the file's bytes.
        name: How to name the input in errors (defaults to the path).

    Returns:
        (samples of shape (frames, channels), sample rate).

    Raises:
        AudioDecodeError: The input is not decodable audio or has no samples.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        samples, rate = soundfile.read(handle, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise AudioDecodeError(f"{label}: not decodable audio ({error})") from error
    if samples.shape[0] == 0:
        raise AudioDecodeError(f"{label}: the file holds no audio samples")
    return samples, rate


def decode_clip(source: str | Path | bytes, spec: AudioSpec, name: str | None = None) -> np.ndarray:
    """Decodes, mixes to mono, resamples and pads/trims one clip.

    Args:
        source: A path, or the file's bytes.
        spec: Target sample rate and length.
        name: How to name the input in errors.

    Returns:
        float32 waveform of shape (spec.clip_samples,).

    Raises:
        AudioDecodeError: The input is not decodable audio.
    """
    samples, rate = read_samples(source, name)
    waveform = resample(to_mono(samples), rate, spec.sample_rate)
    return fix_length(waveform, spec.clip_samples).astype(np.float32, copy=False)


def decode_recording(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decodes a whole recording (e.g. background noise) to mono float32 at `sample_rate`."""
    samples, rate = read_samples(path)
    return resample(to_mono(samples), rate, sample_rate).astype(np.float32, copy=False)
