from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from features.audio import AudioDecodeError, AudioSpec, decode_clip
from tests.datasets import tone, write_wav

SPEC = AudioSpec(16000, 1.0)


def test_stereo_8khz_is_mixed_down_and_resampled(tmp_path: Path):
    left = tone(440, rate=8000)
    path = write_wav(tmp_path / "s.wav", np.stack([left, left], axis=1), rate=8000)
    waveform = decode_clip(path, SPEC)
    assert waveform.shape == (16000,) and waveform.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(waveform))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) <= 2


def test_short_clip_is_padded_and_long_clip_trimmed(tmp_path: Path):
    short = decode_clip(write_wav(tmp_path / "short.wav", tone(300, 0.25)), SPEC)
    assert short.shape == (16000,)
    assert np.all(short[4000:] == 0) and np.any(short[:4000] != 0)
    long = decode_clip(write_wav(tmp_path / "long.wav", tone(300, 2.5)), SPEC)
    assert long.shape == (16000,)


def test_bytes_input_matches_file_input(tmp_path: Path):
    path = write_wav(tmp_path / "a.wav", tone(500), subtype="PCM_24")
    assert np.array_equal(decode_clip(path.read_bytes(), SPEC), decode_clip(path, SPEC))


def test_not_audio_names_the_file(tmp_path: Path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"this is not a wav file at all")
    with pytest.raises(AudioDecodeError, match="broken.wav: not decodable audio"):
        decode_clip(path, SPEC)


def test_missing_file_is_named(tmp_path: Path):
    path = tmp_path / "gone.wav"
    with pytest.raises(AudioDecodeError, match=f"^{re.escape(str(path))}: no such file$"):
        decode_clip(path, SPEC)
