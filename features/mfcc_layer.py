"""MFCC frames of raw waveforms: the TensorFlow maths, and the Keras layer that applies it.

Imports only TensorFlow, Keras and NumPy, so a saved model holding an `MfccLayer` loads where
librosa and scipy are not installed: the window, the mel filterbank and the DCT matrix are the
layer's (non-trainable) weights and travel in the `.keras` file. `features.mfcc` builds them
from librosa and scipy (`build_mfcc_layer`) and runs the same maths for the training cache.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

AMIN = 1e-10  # librosa's power_to_db floor on power before the log


DFTS = ("rfft", "matmul")


def dft_matrices(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_fft, n_fft // 2 + 1) cosine and sine matrices: a frame times them is the real and
    (negated) imaginary part of its real DFT."""
    angles = 2 * np.pi * np.outer(np.arange(n_fft), np.arange(n_fft // 2 + 1)) / n_fft
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def mfcc_from_waveforms(waveforms, window, mel, dct, *, hop_length: int,
                        top_db: float, dft: str = "rfft") -> tf.Tensor:
    """librosa's MFCC steps over a batch of clips, as TensorFlow ops.

    Non-centred frames -> window -> rfft -> power -> mel -> `10 * log10(max(., 1e-10))` ->
    floor at each clip's own loudest value minus `top_db` -> DCT. The floor is per clip, so a
    clip's frames do not depend on the other clips in the batch.

    Args:
        waveforms: (clips, samples) float32 waveforms.
        window: (n_fft,) analysis window; its length is the frame and FFT length.
        mel: (n_fft // 2 + 1, n_mels) mel filterbank.
        dct: (n_mels, n_mfcc) DCT-II matrix.
        hop_length: Samples between frame starts.
        top_db: Dynamic range kept below each clip's loudest log-mel value (dB).
        dft: "rfft" (the FFT), or "matmul": the same DFT as two matrix products, for
            TensorFlow Lite, whose FFT takes only power-of-two lengths.

    Returns:
        (clips, frames, n_mfcc) float32 tensor.
    """
    window, mel, dct = (tf.convert_to_tensor(x, tf.float32) for x in (window, mel, dct))
    n_fft = int(window.shape[0])
    framed = tf.signal.frame(waveforms, n_fft, hop_length) * window
    if dft == "matmul":
        cosine, sine = (tf.constant(matrix) for matrix in dft_matrices(n_fft))
        power = (tf.einsum("cfn,nk->cfk", framed, cosine) ** 2
                 + tf.einsum("cfn,nk->cfk", framed, sine) ** 2)
    else:
        spectrum = tf.signal.rfft(framed)
        power = tf.math.real(spectrum) ** 2 + tf.math.imag(spectrum) ** 2
    log_power = 10.0 * tf.math.log(tf.maximum(tf.einsum(
        "cft,tm->cfm", power, mel), AMIN)) / tf.math.log(10.0)
    floor = tf.reduce_max(log_power, axis=[1, 2], keepdims=True) - top_db
    return tf.einsum("cfm,mk->cfk", tf.maximum(log_power, floor), dct)


def frame_count(clip_samples: int, n_fft: int, hop_length: int) -> int:
    """MFCC frames of a clip: whole windows of `n_fft` samples every `hop_length`, none padded
    (`center=False`)."""
    return 1 + (clip_samples - n_fft) // hop_length


@keras.saving.register_keras_serializable(package="speech_text_pipelines")
class MfccLayer(keras.layers.Layer):
    """(batch, clip_samples) float waveforms -> (batch, frames, n_mfcc) MFCC frames.

    The config holds only numbers; the window, mel filterbank and DCT matrix are
    non-trainable weights. Given as arrays they set the weights; left out (as `from_config`
    does) the weights start at zero and `keras.saving.load_model` fills them from the file.
    Computes in float32 whatever the global dtype policy.

    Args:
        clip_samples: Samples per clip.
        n_fft: Frame (and FFT) length in samples.
        hop_length: Samples between frame starts.
        n_mels: Mel bands.
        n_mfcc: Coefficients per frame.
        top_db: Dynamic range kept below each clip's loudest log-mel value (dB).
        dft: How the DFT is computed (`mfcc_from_waveforms`): "rfft", or "matmul" for
            TensorFlow Lite.
        window: (n_fft,) analysis window.
        mel: (n_fft // 2 + 1, n_mels) mel filterbank.
        dct: (n_mels, n_mfcc) DCT-II matrix.

    Raises:
        ValueError: The numbers do not fit together, only some of the arrays are given, or an
            array's shape does not match the numbers.
    """

    def __init__(self, *, clip_samples: int, n_fft: int, hop_length: int, n_mels: int,
                 n_mfcc: int, top_db: float, dft: str = "rfft", window: np.ndarray | None = None,
                 mel: np.ndarray | None = None, dct: np.ndarray | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # log-mel power needs float32's range
        super().__init__(**kwargs)
        if not 0 < n_fft <= clip_samples or hop_length < 1 or not 0 < n_mfcc <= n_mels:
            raise ValueError(
                f"MFCC geometry does not fit: clip_samples={clip_samples}, n_fft={n_fft}, "
                f"hop_length={hop_length}, n_mels={n_mels}, n_mfcc={n_mfcc}")
        self.clip_samples, self.n_fft, self.hop_length = clip_samples, n_fft, hop_length
        self.n_mels, self.n_mfcc, self.top_db = n_mels, n_mfcc, float(top_db)
        if dft not in DFTS:
            raise ValueError(f"dft must be one of {DFTS}; got {dft!r}")
        self.dft = dft
        self.num_frames = frame_count(clip_samples, n_fft, hop_length)
        shapes = {"window": (n_fft,), "mel": (n_fft // 2 + 1, n_mels), "dct": (n_mels, n_mfcc)}
        arrays = {"window": window, "mel": mel, "dct": dct}
        given = [name for name, array in arrays.items() if array is not None]
        if given and len(given) != len(arrays):
            raise ValueError(f"give all of window, mel and dct or none of them; got {given}")
        for name, shape in shapes.items():
            weight = self.add_weight(shape=shape, initializer="zeros", dtype="float32",
                                     trainable=False, name=name)
            if given:
                array = np.asarray(arrays[name], np.float32)
                if array.shape != shape:
                    raise ValueError(f"{name} has shape {array.shape}; expected {shape}")
                weight.assign(array)
            setattr(self, name, weight)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.clip_samples:
            raise ValueError(f"expected waveforms of shape (batch, {self.clip_samples}); "
                             f"got {tuple(input_shape)}")

    def call(self, inputs):
        return mfcc_from_waveforms(tf.cast(inputs, tf.float32), self.window.value,
                                   self.mel.value, self.dct.value,
                                   hop_length=self.hop_length, top_db=self.top_db,
                                   dft=self.dft)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_frames, self.n_mfcc)

    def get_config(self):
        return super().get_config() | {
            "clip_samples": self.clip_samples, "n_fft": self.n_fft,
            "hop_length": self.hop_length, "n_mels": self.n_mels, "n_mfcc": self.n_mfcc,
            "top_db": self.top_db, "dft": self.dft,
        }
