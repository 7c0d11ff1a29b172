"""MFCC frames equal to librosa's: the feature geometry (`MfccConfig`, `feature_shape`),
librosa's constants, the frames of a batch of clips in one compiled call (`mfcc_frames`,
`extractor`) and the same maths as a Keras layer for served and exported models
(`build_mfcc_layer`)."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import librosa
import numpy as np
import scipy.fft
import tensorflow as tf

from features.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, AudioSpec
from features.batching import padded_calls
from features.errors import ConfigError, require_at_least, require_positive
from features.mfcc_layer import MfccLayer, frame_count, mfcc_from_waveforms


@dataclass(frozen=True)
class MfccConfig:
    """MFCC features: the clip geometry shared by the feature stage, the model and serving.

    Frames are not centred (`center=False`): a 1 s clip at a 30 ms window and 10 ms hop gives
    98 frames, the same geometry as TensorFlow's speech_commands example.

    Raises:
        ValueError: A setting out of range, or settings that do not fit together (a window
            longer than the clip or under one sample, more coefficients than mel bands),
            naming them.
    """

    sample_rate: int = field(default=16000, metadata={
        "help": "sample rate clips are resampled to (Hz)"})
    clip_seconds: float = field(default=1.0, metadata={
        "help": "clip length after padding/trimming (s)"})
    window_ms: float = field(default=30.0, metadata={"help": "MFCC analysis window (ms)"})
    hop_ms: float = field(default=10.0, metadata={"help": "MFCC hop (ms)"})
    n_mels: int = field(default=40, metadata={"help": "mel bands"})
    n_mfcc: int = field(default=40, metadata={"help": "MFCC coefficients per frame"})
    fmin: float = field(default=20.0, metadata={"help": "lowest mel frequency (Hz)"})
    fmax: float = field(default=8000.0, metadata={"help": "highest mel frequency (Hz)"})
    top_db: float = field(default=80.0, metadata={
        "help": "dynamic range kept below each clip's loudest log-mel value (dB)"})

    def __post_init__(self):
        require_positive(self, ("clip_seconds", "window_ms", "hop_ms", "fmax", "top_db"))
        require_at_least(self, {"sample_rate": MIN_SAMPLE_RATE, "n_mels": 1, "n_mfcc": 1,
                                "fmin": 0})
        for name, samples in (("window_ms", self.win_length), ("hop_ms", self.hop_length)):
            if samples < 1:
                raise ConfigError(f"{name}={getattr(self, name):g} is under one sample at "
                                  f"{self.sample_rate} Hz")
        if self.win_length > self.clip_samples:
            raise ConfigError(f"window of {self.win_length} samples is longer than the clip "
                              f"({self.clip_samples} samples)")
        if self.n_mfcc > self.n_mels:
            raise ConfigError(f"n_mfcc={self.n_mfcc} exceeds n_mels={self.n_mels}")
        if self.fmin >= self.fmax:
            raise ConfigError(f"fmin={self.fmin:g} must be below fmax={self.fmax:g}")

    def require_informative(self) -> None:
        """Checks, before training, that the model could serve audio at its rate and every mel
        band can hold signal (a model saved otherwise still loads: its features are computed
        as it was trained).

        Raises:
            ValueError: A rate above MAX_SAMPLE_RATE; mel bands above half the sample rate, or
                holding no frequency bin of the window (constant coefficients).
        """
        if self.sample_rate > MAX_SAMPLE_RATE:  # no served waveform could be at that rate
            raise ConfigError(f"sample_rate must be at most {MAX_SAMPLE_RATE} Hz, got "
                              f"{self.sample_rate}")
        if self.fmax > self.sample_rate / 2:
            raise ConfigError(f"fmax={self.fmax:g} Hz is above half the sample rate "
                              f"({self.sample_rate / 2:g} Hz at sample_rate={self.sample_rate}):"
                              " no audio holds frequencies there")
        # each frequency bin lies inside at most two (neighbouring) triangular filters: past
        # twice the bins, some band holds none, and the filterbank is not built (its size)
        overfull = self.n_mels - 2 * (self.win_length // 2 + 1)
        empty = overfull if overfull > 0 else empty_mel_bands(self)
        if empty:
            raise ConfigError(
                f"{'at least ' if overfull > 0 else ''}{empty} of the "
                f"n_mels={self.n_mels} mel bands between fmin={self.fmin:g} and "
                f"fmax={self.fmax:g} Hz hold no frequency of a {self.win_length}-sample window"
                " (window_ms): use fewer mel bands, a wider range or a longer window")

    @property
    def audio(self) -> AudioSpec:
        """What every clip becomes before its frames are computed."""
        return AudioSpec(self.sample_rate, self.clip_seconds)

    @property
    def clip_samples(self) -> int:
        return self.audio.clip_samples

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
    """(frames, coefficients) of one clip's MFCC matrix; the model's input shape (the
    config's checks make sure the window fits in the clip)."""
    return frame_count(config.clip_samples, config.win_length, config.hop_length), config.n_mfcc


def empty_mel_bands(config: MfccConfig) -> int:
    """How many of the mel filters are empty: narrower than the window's frequency bins (their
    coefficients would be constant)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # librosa's "Empty filters detected"
        mel = mel_filters(config)
    return int((mel.max(axis=1) == 0).sum())


def mel_filters(config: MfccConfig) -> np.ndarray:
    """librosa's mel filterbank over the window's frequency bins, (n_mels, n_fft // 2 + 1)."""
    return librosa.filters.mel(sr=config.sample_rate, n_fft=config.win_length,
                               n_mels=config.n_mels, fmin=config.fmin, fmax=config.fmax)


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


def mfcc_constants(config: MfccConfig) -> dict[str, np.ndarray]:
    """librosa's window and mel filterbank and scipy's orthonormal DCT-II for `config`.

    Returns:
        float32 arrays keyed as `features.mfcc_layer.mfcc_from_waveforms` and `MfccLayer`
        take them: `window` (n_fft,), `mel` (n_fft // 2 + 1, n_mels) and `dct`
        (n_mels, n_mfcc).
    """
    kwargs = librosa_kwargs(config)
    n_fft = kwargs["n_fft"]
    window = librosa.util.pad_center(
        librosa.filters.get_window("hann", kwargs["win_length"], fftbins=True), size=n_fft)
    mel = mel_filters(config)
    dct = scipy.fft.dct(np.eye(config.n_mels), type=2, norm="ortho", axis=0)
    return {"window": window.astype(np.float32), "mel": mel.T.astype(np.float32),
            "dct": dct[: config.n_mfcc].T.astype(np.float32)}


def build_mfcc_layer(config: MfccConfig) -> MfccLayer:
    """A Keras layer computing these features from (batch, clip_samples) float waveforms.

    It carries librosa's and scipy's constants as weights, so a saved model loads without
    librosa; its frames equal `mfcc_frames` to float32 rounding.
    """
    return MfccLayer(clip_samples=config.clip_samples, n_fft=config.win_length,
                     hop_length=config.hop_length, n_mels=config.n_mels,
                     n_mfcc=config.n_mfcc, top_db=config.top_db, **mfcc_constants(config))


CHUNK_CLIPS = 256  # clips per compiled call; smaller batches are padded to a power of two


class MfccExtractor:
    """librosa's MFCC as one XLA-compiled TensorFlow graph over a batch of clips.

    The window, the mel filterbank and the DCT matrix are librosa's and scipy's own
    (`mfcc_constants`), and the steps are librosa's (`stft(center=False)` -> power -> mel ->
    `power_to_db(ref=1, amin=1e-10, top_db)` per clip -> orthonormal DCT-II), computed by
    `mfcc_from_waveforms`, the maths `MfccLayer` runs too. So the frames equal a per-clip
    `librosa.feature.mfcc(y=clip, **librosa_kwargs(config))` to float32 rounding (within
    1e-3; tests check it). Computing a batch in one compiled graph on every core is about 8x
    faster on 2 cores than librosa's own batched call.
    """

    def __init__(self, config: MfccConfig):
        self.config = config
        self.shape = feature_shape(config)
        constants = {name: tf.constant(array) for name, array in mfcc_constants(config).items()}
        hop, top_db = config.hop_length, float(config.top_db)

        def frames(waveforms):
            return mfcc_from_waveforms(waveforms, **constants, hop_length=hop, top_db=top_db)

        spec = tf.TensorSpec([None, config.clip_samples], tf.float32)
        self._frames = tf.function(frames, input_signature=[spec], jit_compile=True,
                                   autograph=False)

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        """MFCC frames of (clips, samples) float waveforms: (clips, frames, n_mfcc) float32.

        Thread-safe; each call runs on every core.
        """
        waveforms = np.asarray(waveforms, np.float32)
        if len(waveforms) == 0:
            return np.zeros((0, *self.shape), np.float32)
        return padded_calls(self._frames, waveforms, CHUNK_CLIPS)


@functools.lru_cache(maxsize=8)
def extractor(config: MfccConfig) -> MfccExtractor:
    """The (compiled once per process) extractor of a feature configuration."""
    return MfccExtractor(config)


def mfcc_frames(waveforms: np.ndarray, config: MfccConfig) -> np.ndarray:
    """MFCC frames for a batch of equal-length clips.

    Equal to calling `librosa.feature.mfcc` on each clip: the dB floor (`top_db`) is taken
    per clip, not over the whole batch as one batched `librosa.feature.mfcc` call would.

    Args:
        waveforms: float array of shape (clips, samples) or (samples,) with
            `config.clip_samples` samples per clip.
        config: Feature geometry.

    Returns:
        float32 array of shape (clips, frames, n_mfcc) (or (frames, n_mfcc) for one clip).

    Raises:
        ValueError: The clips do not have `config.clip_samples` samples.
    """
    waveforms = np.asarray(waveforms, np.float32)
    if waveforms.shape[-1] != config.clip_samples or waveforms.ndim not in (1, 2):
        raise ValueError(f"expected clips of {config.clip_samples} samples, shape "
                         f"(clips, {config.clip_samples}) or ({config.clip_samples},); got "
                         f"shape {waveforms.shape}")
    if waveforms.ndim == 1:
        return extractor(config)(waveforms[None])[0]
    return extractor(config)(waveforms)
