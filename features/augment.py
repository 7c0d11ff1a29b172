"""Training-time augmentation of speech clips: speed, time shift, background noise, SpecAugment.

Applied to training batches only (evaluation and serving never see it), the way TensorFlow's
speech_commands example does it, with speed perturbation added: each clip is played at a
random speed within `speed_change` of 1, shifted in time by up to `time_shift_ms`, a
random clip-length stretch of a `_background_noise_` recording is mixed in with probability
`noise_prob` at a volume drawn uniformly from [0, `noise_volume`], and after the MFCC frames
are computed, SpecAugment (Park et al. 2019) blanks a few random runs of frames and of
coefficients. Blanked values are set to the training mean, which the model's normalisation
layer maps to zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from features.errors import ConfigError, require_at_least, require_fraction
from features.mfcc import MfccConfig, extractor


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation of training clips; every value 0 turns that perturbation off."""

    time_shift_ms: float = field(default=100.0, metadata={
        "help": "largest random shift of a training clip (ms; 0: off)"})
    speed_change: float = field(default=0.15, metadata={
        "help": "largest relative change of playback speed (0.1: 0.9x to 1.1x; 0: off)"})
    noise_prob: float = field(default=0.8, metadata={
        "help": "share of training clips mixed with a _background_noise_ stretch (0: off)"})
    # 1: the shared data's recordings sit at an RMS of 0.002-0.006 of full scale, the words at
    # about 0.05; a tenth of that level is too faint to teach robustness (benchmarks/noise.py)
    noise_volume: float = field(default=1.0, metadata={
        "help": "loudest mixed-in noise (uniform in [0, this]; 1: as recorded)"})
    time_masks: int = field(default=2, metadata={
        "help": "SpecAugment: masked runs of frames per training clip"})
    time_mask_frames: int = field(default=10, metadata={
        "help": "SpecAugment: longest masked run of frames"})
    freq_masks: int = field(default=2, metadata={
        "help": "SpecAugment: masked runs of MFCC coefficients per clip"})
    freq_mask_bins: int = field(default=5, metadata={
        "help": "SpecAugment: longest masked run of coefficients"})

    def __post_init__(self):
        require_fraction(self, ["speed_change"])
        require_at_least(self, dict.fromkeys(("time_shift_ms", "noise_volume", "time_masks",
                                              "time_mask_frames", "freq_masks",
                                              "freq_mask_bins"), 0))
        if not 0 <= self.noise_prob <= 1:
            raise ConfigError(f"noise_prob must be within [0, 1], got {self.noise_prob}")

    @property
    def active(self) -> bool:
        return bool(self.time_shift_ms or self.speed_change
                    or (self.noise_prob and self.noise_volume)
                    or (self.time_masks and self.time_mask_frames)
                    or (self.freq_masks and self.freq_mask_bins))


def time_shift(waveforms: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Shifts each clip by a uniform random number of samples in [-max_shift, max_shift],
    filling the vacated end with silence (zeros), as TensorFlow's example does."""
    clips, samples = waveforms.shape
    if not max_shift:
        return waveforms.copy()
    max_shift = min(max_shift, samples)
    shifted = np.zeros_like(waveforms)
    for clip, shift in enumerate(rng.integers(-max_shift, max_shift + 1, clips)):
        if shift >= 0:
            shifted[clip, shift:] = waveforms[clip, :samples - shift]
        else:
            shifted[clip, :shift] = waveforms[clip, -shift:]
    return shifted


def change_speed(waveforms: np.ndarray, max_change: float, rng: np.random.Generator
                 ) -> np.ndarray:
    """Plays each clip at a uniform random speed in [1 - max_change, 1 + max_change] around its
    centre (pitch and tempo change together, like Kaldi's speed perturbation), by linear
    interpolation; samples from outside the clip are silence."""
    clips, samples = waveforms.shape
    if not max_change:
        return waveforms.copy()
    centre = (samples - 1) / 2
    offsets = np.arange(samples) - centre
    source = np.arange(samples)
    changed = np.empty_like(waveforms)
    for clip, rate in enumerate(rng.uniform(1 - max_change, 1 + max_change, clips)):
        changed[clip] = np.interp(offsets * rate + centre, source, waveforms[clip], left=0.0,
                                  right=0.0)
    return changed


def mix_noise(waveforms: np.ndarray, noise: Sequence[np.ndarray], prob: float, volume: float,
              rng: np.random.Generator) -> np.ndarray:
    """Adds to each clip, with probability `prob`, a random stretch of a random noise recording
    scaled by a uniform random volume in [0, volume]; the result is clipped to [-1, 1]."""
    clips, samples = waveforms.shape
    usable = [recording for recording in noise if len(recording) >= samples]
    out = waveforms.copy()
    if not (usable and prob and volume):
        return out
    for clip in np.flatnonzero(rng.random(clips) < prob):
        recording = usable[rng.integers(len(usable))]
        start = rng.integers(len(recording) - samples + 1)
        out[clip] += rng.uniform(0, volume) * recording[start:start + samples]
    return np.clip(out, -1.0, 1.0, out=out)


def span_mask(count: int, length: int, masks: int, max_width: int,
              rng: np.random.Generator) -> np.ndarray:
    """(count, length) booleans: per row, `masks` runs of uniform width in [0, max_width] at
    uniform positions (SpecAugment's mask rule)."""
    width = rng.integers(0, min(max_width, length) + 1, (count, masks))
    start = rng.integers(0, length - width + 1)
    positions = np.arange(length)[None, None, :]
    return ((positions >= start[..., None]) & (positions < (start + width)[..., None])).any(1)


def spec_augment(frames: np.ndarray, config: AugmentConfig, fill: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Sets random runs of frames (time masks) and of coefficients (frequency masks) of each
    (frames, coefficients) matrix to `fill` (per coefficient)."""
    clips, steps, coefficients = frames.shape
    out = np.array(frames)
    blank = np.zeros((clips, steps, coefficients), bool)
    if config.time_masks and config.time_mask_frames:
        blank |= span_mask(clips, steps, config.time_masks, config.time_mask_frames,
                           rng)[:, :, None]
    if config.freq_masks and config.freq_mask_bins:
        blank |= span_mask(clips, coefficients, config.freq_masks, config.freq_mask_bins,
                           rng)[:, None, :]
    return np.where(blank, np.asarray(fill, out.dtype)[None, None, :], out)


class ClipAugmenter:
    """Waveforms in, augmented MFCC frames out: speed, shift, noise, MFCC, SpecAugment."""

    def __init__(self, config: AugmentConfig, mfcc: MfccConfig, noise: Sequence[np.ndarray],
                 fill: np.ndarray):
        """
        Args:
            config: The perturbations.
            mfcc: Feature geometry (the same as the unaugmented splits').
            noise: Background noise recordings at the MFCC sample rate.
            fill: Per-coefficient value of masked MFCCs: the training mean.
        """
        self.config = config
        self.mfcc = mfcc
        self.noise = [np.asarray(recording, np.float32) for recording in noise]
        self.fill = np.asarray(fill, np.float32)
        self.max_shift = int(round(mfcc.sample_rate * config.time_shift_ms / 1000))

    def __call__(self, waveforms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augmented MFCC frames (clips, frames, n_mfcc) of (clips, samples) waveforms."""
        waveforms = change_speed(np.asarray(waveforms, np.float32), self.config.speed_change,
                                 rng)
        waveforms = time_shift(waveforms, self.max_shift, rng)
        waveforms = mix_noise(waveforms, self.noise, self.config.noise_prob,
                              self.config.noise_volume, rng)
        return spec_augment(extractor(self.mfcc)(waveforms), self.config, self.fill, rng)
