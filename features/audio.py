"""Decoding audio into fixed-length mono float32 waveforms.

What `decode_clip` makes of each kind of input (the training feature stage skips, and counts
with its path, every clip that raises; the served speech model answers that row with the
error and the other rows normally):

- Any soundfile-readable file (WAV PCM_U8/16/24/32, FLOAT, DOUBLE, ...; any channel count) at
  MIN_SAMPLE_RATE to MAX_SAMPLE_RATE Hz is read as float32 full scale, mixed to mono by the
  mean of its channels, resampled to the target rate with librosa (soxr, high quality), then
  zero-padded at the end or trimmed to the clip length. The result is float32 of shape
  (clip_samples,) and finite.
- Only the first clip_seconds + RESAMPLE_MARGIN_SECONDS of a longer file are read, so a long
  recording is never decoded whole (the margin keeps the resampler's edge off the clip).
- Shorter than the clip (down to one frame): zero-padded at the end. All-zero samples are a
  valid (silent) clip; their MFCC frames are finite.
- Truncated data (the header promises more frames than the file holds): libsndfile reads the
  frames that are present, so the clip is the part that survived, zero-padded. A file cut
  inside its header raises; one cut right after it holds no frames and raises.
- A missing file, zero-length input, bytes that are not audio, a file without frames, a
  sample rate outside MIN_SAMPLE_RATE to MAX_SAMPLE_RATE, NaN/Inf samples, or samples beyond
  +/-MAX_SAMPLE_MAGNITUDE (features computed from them overflow to Inf) raise
  `AudioDecodeError`, whose message starts with the input's name (path, or the name given
  for bytes). Samples are checked in the part that is read: a NaN after the clip is never
  seen.

`decode_recording` (whole noise recordings) reads the whole file under the same rules.

Plain 16-bit PCM WAV files (Speech Commands' format) whose data chunk is whole are read by a
NumPy parser of the RIFF header (`pcm16_wav`), about four times faster than opening them with
libsndfile, and equal to what libsndfile reads, bit for bit (`tests/test_audio.py` checks both
on every clip of the shared data); every other file, any WAV the parser does not take
(another encoding, WAVE_FORMAT_EXTENSIBLE, a cut data chunk, odd chunks) and any WAV file over
FAST_READ_MAX_BYTES goes through libsndfile.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile

from features.errors import DataError

MIN_SAMPLE_RATE = 1_000  # Hz; outside this range a rate is taken for a broken header or input
MAX_SAMPLE_RATE = 384_000
MAX_SAMPLE_MAGNITUDE = 1e6  # 120 dB over full scale; MFCC power overflows float32 near 1e17
RESAMPLE_MARGIN_SECONDS = 0.1  # read past the clip so resampling matches a whole-file decode
# what soundfile raises for input libsndfile cannot decode (LibsndfileError is a RuntimeError)
DECODE_ERRORS = (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError)


# what libsndfile does not read right from a pipe: its MP3 and FLAC decoders seek; a CAF
# stream reads as no samples, an SDS one as other samples
UNPIPEABLE_FORMATS = ("MP3", "FLAC", "CAF", "SDS")
EMPTY = "not decodable audio (the file is empty: 0 bytes)"


class AudioDecodeError(DataError):
    """Raised when a clip cannot be turned into a waveform; the message names the input."""


@dataclass(frozen=True)
class AudioSpec:
    """What every clip becomes before feature extraction.

    Attributes:
        sample_rate: Target sample rate in Hz; other rates are resampled.
        clip_seconds: Target duration; shorter clips are zero-padded at the end, longer trimmed.
    """

    sample_rate: int
    clip_seconds: float

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))


def fix_length(waveform: np.ndarray, num_samples: int,
               out: np.ndarray | None = None) -> np.ndarray:
    """Zero-pads at the end or trims the tail so that `waveform` has `num_samples` samples;
    written into `out` (last axis `num_samples` long) when given, with no padded copy first."""
    if out is not None:
        count = min(waveform.shape[-1], num_samples)
        out[..., :count] = waveform[..., :count]
        out[..., count:] = 0
        return out
    if waveform.shape[-1] >= num_samples:
        return waveform[..., :num_samples]
    pad = [(0, 0)] * (waveform.ndim - 1) + [(0, num_samples - waveform.shape[-1])]
    return np.pad(waveform, pad)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Averages the channels of a (frames, channels) array into one (one channel is taken as
    it is: its mean is itself)."""
    if samples.ndim != 2:
        return samples
    return samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1)


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resamples with librosa (soxr, high quality); a no-op at the target rate."""
    if orig_rate == target_rate:
        return waveform
    return librosa.resample(waveform, orig_sr=orig_rate, target_sr=target_rate)


def check_sample_rate(rate: float, label: str) -> int:
    """The rate as an int when it is a whole number of Hz in MIN_SAMPLE_RATE..MAX_SAMPLE_RATE.

    Raises:
        AudioDecodeError: Otherwise; the message names `label`.
    """
    if not (math.isfinite(rate) and float(rate).is_integer()
            and MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE):
        raise AudioDecodeError(f"{label}: sample rate {rate} Hz: expected a whole number of Hz "
                               f"from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}")
    return int(rate)


def check_samples(samples: np.ndarray, label: str) -> np.ndarray:
    """Returns `samples` when they are finite and within +/-MAX_SAMPLE_MAGNITUDE.

    Raises:
        AudioDecodeError: NaN/Inf or absurdly large samples; the message names `label`.
    """
    if not bad_samples(samples).any():
        return samples
    if not np.isfinite(samples).all():
        raise AudioDecodeError(f"{label}: holds NaN/Inf samples")
    raise AudioDecodeError(f"{label}: samples reach {float(np.abs(samples).max()):.3g}, beyond "
                           f"+/-{MAX_SAMPLE_MAGNITUDE:.0e} (full scale is 1.0)")


def bad_samples(samples: np.ndarray) -> np.ndarray:
    """Where `samples` are NaN/Inf or beyond +/-MAX_SAMPLE_MAGNITUDE (a boolean mask)."""
    return ~np.isfinite(samples) | (np.abs(samples) > MAX_SAMPLE_MAGNITUDE)


def source_label(source: str | Path | bytes, name: str | None) -> str:
    """How errors name an input: `name`, else the path (bytes: "<bytes>")."""
    return name or (str(source) if not isinstance(source, bytes) else "<bytes>")


def not_decodable(label: str, source: str | Path | bytes | None, error: Exception
                  ) -> AudioDecodeError:
    """The error for input libsndfile refuses, with libsndfile's reason but not its repeat of
    the path (or repr of the in-memory buffer); `source` None for a stream (standard input),
    which has no file to look at."""
    size = len(source) if isinstance(source, bytes) else None  # None: not known (a pipe)
    if isinstance(source, (str, Path)):
        try:
            status = os.stat(sound_file(source))
            if stat.S_ISDIR(status.st_mode):
                return AudioDecodeError(f"{label}: a folder, not an audio file")
            if stat.S_ISREG(status.st_mode):  # not a pipe: opening one waits for a writer
                size = status.st_size
                with open(sound_file(source), "rb"):
                    pass
        except FileNotFoundError:
            return AudioDecodeError(f"{label}: no such file")
        except OSError as problem:  # permissions, a name too long: libsndfile says "System
            # error." for them
            return AudioDecodeError(f"{label}: cannot read the file "
                                    f"({problem.strerror or problem})")
    if size == 0:
        return AudioDecodeError(f"{label}: {EMPTY}")
    detail = error.error_string if isinstance(error, soundfile.LibsndfileError) else str(error)
    hint = ("; a pipe carries WAV or OGG, not FLAC or MP3 (their decoders seek): was the "
            "stream empty, or of another format?"
            if not isinstance(source, bytes) and from_pipe(source) else "")
    return AudioDecodeError(f"{label}: not decodable audio ({detail}){hint}")


def from_pipe(source: str | Path | None) -> bool:
    """Whether a recording (a path, or standard input for None) comes down a pipe rather than
    from a file (`- < FILE` is a file)."""
    mode = os.fstat(0).st_mode if source is None else os.stat(sound_file(source)).st_mode
    return not stat.S_ISREG(mode)


def sound_file(source: str | Path | bytes) -> io.BytesIO | bytes:
    """What libsndfile opens for a source: a file's bytes in memory, or a path as the file
    system's bytes (soundfile encodes a path given as text as UTF-8, which a name holding
    other bytes cannot be)."""
    return io.BytesIO(source) if isinstance(source, bytes) else os.fsencode(source)


def open_recording(source: str | Path | None, label: str) -> soundfile.SoundFile:
    """An audio file, or standard input (`source` None), opened to be read in blocks.

    Raises:
        AudioDecodeError: Not decodable (a missing file named as such), named by `label`; or
            one of UNPIPEABLE_FORMATS from a pipe (libsndfile calls a pipe seekable and reads
            MP3 from it with samples lost and times shifted, then fails).
    """
    try:
        audio = soundfile.SoundFile(0 if source is None else sound_file(source),
                                    closefd=source is not None)
    except DECODE_ERRORS as error:
        raise not_decodable(label, source, error) from None
    if audio.format in UNPIPEABLE_FORMATS and from_pipe(source):
        audio.close()
        raise AudioDecodeError(f"{label}: {audio.format} cannot be read from a pipe "
                               "(libsndfile reads it wrongly there): pipe WAV or OGG, or give "
                               "the file")
    return audio


def usable_samples(samples: np.ndarray) -> int:
    """How many of `samples` come before the first that `check_samples` refuses."""
    bad = bad_samples(samples)
    return int(np.argmax(bad)) if bad.any() else len(samples)


def audio_info(source: str | Path | bytes, name: str | None = None):
    """The header of an audio file (frames, sample rate, channels, duration), read without
    decoding its samples.

    Raises:
        AudioDecodeError: The input is not decodable audio.
    """
    try:
        return soundfile.info(sound_file(source))
    except DECODE_ERRORS as error:
        raise not_decodable(source_label(source, name), source, error) from error


PCM16_SCALE = np.float32(1 / 32768)  # libsndfile's int16 -> float32 scaling
# larger WAV files go to libsndfile, which reads only the frames asked for (1 MiB: 32 s of
# 16 kHz mono 16-bit audio)
FAST_READ_MAX_BYTES = 1 << 20
# from byte 12 of a plain PCM WAV: fmt id and size, tag, channels, rate, byte rate, block
# align, bits per sample, data id and size
CANONICAL = struct.Struct("<4sIHHIIHH4sI")
MAX_CHANNELS = 1024  # libsndfile refuses files of more ("Too many channels specified")


def pcm16_data(data: bytes, body: int, size: int, fmt: tuple[int, int, int, int],
               seconds: float | None = None) -> tuple[np.ndarray, int] | None:
    """The samples (at most `seconds` of them) and rate of a WAV data chunk (`size` bytes
    from offset `body`) in the format `fmt` (tag, channels, rate, bits per sample), or None
    unless the chunk is whole and plain 16-bit PCM."""
    tag, channels, rate, bits = fmt
    if (body + size > len(data) or tag != 1 or bits != 16 or not 1 <= channels <= MAX_CHANNELS
            or size % (2 * channels)):
        return None
    samples = np.frombuffer(data, "<i2", size // 2, body).reshape(-1, channels)
    if seconds is not None:
        samples = samples[:math.ceil(rate * seconds)]
    return np.multiply(samples, PCM16_SCALE, dtype=np.float32), rate


def pcm16_wav(data: bytes, seconds: float | None = None) -> tuple[np.ndarray, int] | None:
    """The samples ((frames, channels) float32, as libsndfile reads them; at most the first
    `seconds`) and the rate of a plain 16-bit PCM WAV file, or None for anything else (left to
    libsndfile)."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    # the usual layout (a 16-byte fmt chunk, then data) in one unpack; anything else walks
    # the chunks below
    fmt_id, fmt_size, tag, channels, rate, _, _, bits, data_id, size = CANONICAL.unpack_from(
        data, 12)
    if fmt_id == b"fmt " and fmt_size == 16 and data_id == b"data":
        return pcm16_data(data, 44, size, (tag, channels, rate, bits), seconds)
    position, fmt = 12, None
    while position + 8 <= len(data):
        chunk, size = data[position:position + 4], int.from_bytes(
            data[position + 4:position + 8], "little")
        body = position + 8
        if chunk == b"fmt ":
            if size < 16 or body + size > len(data):
                return None
            fmt = tuple(int.from_bytes(data[body + start:body + end], "little")
                        for start, end in ((0, 2), (2, 4), (4, 8), (14, 16)))
        elif chunk == b"data":
            return None if fmt is None else pcm16_data(data, body, size, fmt, seconds)
        elif chunk not in (b"LIST", b"fact", b"cue ", b"bext"):
            return None
        position = body + size + (size & 1)
    return None


def read_samples(source: str | Path | bytes, name: str | None = None,
                 seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Reads any soundfile-supported audio (WAV PCM 8/16/24/32-bit, float, ...) as float32.

    Args:
        source: A path, or the file's bytes.
        name: How to name the input in errors (defaults to the path).
        seconds: Read at most this much from the start; None reads the whole file.

    Returns:
        (samples of shape (frames, channels), sample rate).

    Raises:
        AudioDecodeError: The input is not decodable audio, has no samples, has a sample
            rate out of range or holds NaN/Inf or absurdly large samples.
    """
    label = source_label(source, name)
    fast = fast_read(source, seconds)
    if fast is not None:
        samples, rate = fast
        rate = check_sample_rate(rate, label)
        if samples.shape[0] == 0:
            raise AudioDecodeError(f"{label}: the file holds no audio samples")
        return samples, rate  # 16-bit samples: finite and within +/-1 by construction
    try:
        with soundfile.SoundFile(sound_file(source)) as audio:
            rate = check_sample_rate(audio.samplerate, label)
            frames = -1 if seconds is None else math.ceil(rate * seconds)
            samples = audio.read(frames, dtype="float32", always_2d=True)
    except AudioDecodeError:  # a DataError is a ValueError: not one of libsndfile's errors
        raise
    except DECODE_ERRORS as error:
        raise not_decodable(label, source, error) from error
    if samples.shape[0] == 0:
        raise AudioDecodeError(f"{label}: the file holds no audio samples")
    return check_samples(samples, label), rate


def fast_read(source: str | Path | bytes, seconds: float | None = None
              ) -> tuple[np.ndarray, int] | None:
    """`pcm16_wav` of a `.wav` path's or WAV bytes' content; None where it does not apply
    (another kind of file, a file over FAST_READ_MAX_BYTES, or a path that cannot be read:
    libsndfile then names the error)."""
    if not isinstance(source, bytes):
        if not str(source).lower().endswith(".wav"):
            return None
        try:
            with open(source, "rb") as handle:
                source = handle.read(FAST_READ_MAX_BYTES + 1)
        except OSError:
            return None
        if len(source) > FAST_READ_MAX_BYTES:
            return None
    return pcm16_wav(source, seconds)


def decode_clip(source: str | Path | bytes, spec: AudioSpec, name: str | None = None,
                out: np.ndarray | None = None) -> np.ndarray:
    """Decodes, mixes to mono, resamples and pads/trims one clip (see the module docstring
    for what each kind of input gives).

    Args:
        source: A path, or the file's bytes.
        spec: Target sample rate and length.
        name: How to name the input in errors.
        out: A float32 array of shape (spec.clip_samples,) to write the waveform into (a row
            of a batch: no copy of the clip is made first); left as it was when this raises.

    Returns:
        Finite float32 waveform of shape (spec.clip_samples,): `out` when given.

    Raises:
        AudioDecodeError: The input is not decodable audio, or not usable as a clip.
    """
    samples, rate = read_samples(source, name, spec.clip_seconds + RESAMPLE_MARGIN_SECONDS)
    waveform = resample(to_mono(samples), rate, spec.sample_rate)
    if out is not None:
        return fix_length(waveform, spec.clip_samples, out)
    return fix_length(waveform, spec.clip_samples).astype(np.float32, copy=False)


def decode_recording(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decodes a whole recording (e.g. background noise) to mono float32 at `sample_rate`."""
    samples, rate = read_samples(path)
    return resample(to_mono(samples), rate, sample_rate).astype(np.float32, copy=False)
