from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile

from features.audio import (
    FAST_READ_MAX_BYTES,
    AudioDecodeError,
    AudioSpec,
    decode_clip,
    fast_read,
    open_recording,
    pcm16_wav,
)
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
    assert np.abs(long - tone(300, 2.5)[:16000]).max() < 1e-4  # its first second (16-bit)


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
    folder = tmp_path / "clips.wav"
    folder.mkdir()
    with pytest.raises(AudioDecodeError,
                       match=f"^{re.escape(str(folder))}: a folder, not an audio file$"):
        decode_clip(folder, SPEC)


def libsndfile_read(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples, rate


def test_the_pcm16_parser_reads_every_shared_clip_as_libsndfile_does(shared_speech_dir: Path):
    paths = sorted(shared_speech_dir.rglob("*.wav"))
    assert len(paths) > 3000
    for path in paths:
        data = path.read_bytes()
        parsed = pcm16_wav(data)
        assert parsed is not None, path
        expected, rate = libsndfile_read(data)
        assert parsed[1] == rate and parsed[0].dtype == np.float32, path
        assert np.array_equal(parsed[0], expected), path  # bit for bit


@pytest.mark.parametrize(("subtype", "channels", "taken"), [
    ("PCM_16", 1, True), ("PCM_16", 2, True), ("PCM_24", 1, False), ("PCM_U8", 1, False),
    ("FLOAT", 1, False), ("PCM_32", 2, False)])
def test_the_parser_takes_plain_pcm16_only_and_decoding_is_the_same_either_way(
        tmp_path: Path, subtype: str, channels: int, taken: bool):
    wave = np.stack([tone(440, 0.3, rate=22050)] * channels, axis=1)
    path = write_wav(tmp_path / "a.wav", wave, rate=22050, subtype=subtype)
    data = path.read_bytes()
    assert (pcm16_wav(data) is not None) == taken
    if taken:
        assert np.array_equal(pcm16_wav(data)[0], libsndfile_read(data)[0])
    assert np.array_equal(decode_clip(path, SPEC), decode_clip(data, SPEC))


def test_odd_wavs_go_to_libsndfile(tmp_path: Path):
    data = write_wav(tmp_path / "a.wav", tone(440, 0.3)).read_bytes()
    extensible = io.BytesIO()
    soundfile.write(extensible, np.stack([tone(440, 0.3)] * 3, 1), 16000, format="WAVEX",
                    subtype="PCM_16")
    cut = data[:-100]  # the data chunk is shorter than its header says
    unknown_chunk = data[:12] + b"junk" + (4).to_bytes(4, "little") + b"abcd" + data[12:]
    # 1,025 channels in a plain header: more than libsndfile opens
    crowded = data[:22] + (1025).to_bytes(2, "little") + data[24:32] + (
        2 * 1025).to_bytes(2, "little") + data[34:40] + (2 * 1025 * 4).to_bytes(
        4, "little") + bytes(2 * 1025 * 4)
    crowded = crowded[:4] + (len(crowded) - 8).to_bytes(4, "little") + crowded[8:]
    with pytest.raises(soundfile.LibsndfileError, match="Too many channels"):
        libsndfile_read(crowded)
    for odd in (extensible.getvalue(), cut, unknown_chunk, b"RIFF" + data[4:40], crowded):
        assert pcm16_wav(odd) is None
    # a cut file still decodes through libsndfile, which reads the frames present
    assert decode_clip(cut, SPEC).shape == (16000,)
    # an extra LIST chunk before the data is skipped by both readers alike
    listed = (data[:36] + b"LIST" + (6).to_bytes(4, "little") + b"INFOab" + data[36:])
    listed = listed[:4] + (len(listed) - 8).to_bytes(4, "little") + listed[8:]
    assert np.array_equal(pcm16_wav(listed)[0], libsndfile_read(listed)[0])


def test_only_the_clip_of_a_long_wav_is_read_by_either_reader(tmp_path: Path):
    seconds = 1.1
    short = write_wav(tmp_path / "short.wav", tone(440, 3.0))
    parsed, rate = fast_read(short, seconds)
    assert rate == 16000 and parsed.shape == (int(np.ceil(16000 * seconds)), 1)
    assert np.array_equal(parsed, libsndfile_read(short.read_bytes())[0][:len(parsed)])
    long = write_wav(tmp_path / "long.wav", tone(440, 40.0))  # 1.28 MB
    assert long.stat().st_size > FAST_READ_MAX_BYTES
    assert fast_read(long, seconds) is None  # libsndfile reads only the frames asked for
    assert np.array_equal(decode_clip(long, SPEC), decode_clip(short, SPEC))


def test_decoding_into_a_row_gives_the_same_waveform(tmp_path: Path):
    rows = np.full((5, 16000), 7.0, np.float32)  # stale values a decode must overwrite
    inputs = [write_wav(tmp_path / "short.wav", tone(300, 0.25)),
              write_wav(tmp_path / "long.wav", tone(300, 2.5)),
              write_wav(tmp_path / "stereo44k.wav", np.stack([tone(440, 0.5, rate=44100)] * 2,
                                                              1), rate=44100),
              write_wav(tmp_path / "pcm24.wav", tone(500), subtype="PCM_24")]
    for row, path in enumerate(inputs):
        written = decode_clip(path, SPEC, out=rows[row])
        assert np.shares_memory(written, rows[row])
        assert np.array_equal(rows[row], decode_clip(path, SPEC)), path
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    with pytest.raises(AudioDecodeError, match="broken.wav"):
        decode_clip(broken, SPEC, out=rows[4])
    assert np.all(rows[4] == 7.0)  # a failed decode leaves the row as it was


def test_what_libsndfile_reads_wrongly_from_a_pipe_is_refused_when_opened(tmp_path: Path):
    """libsndfile calls a pipe seekable; its MP3 decoder then loses samples from it, shifting
    every later time, before it fails; CAF reads as no samples, SDS as others."""
    pipe = tmp_path / "live"
    os.mkfifo(pipe)
    for suffix, refused in ((".mp3", "MP3 cannot be read from a pipe"),
                            (".flac", r"not decodable audio \(.*\); a pipe carries WAV or OGG"),
                            (".caf", "CAF cannot be read from a pipe"),
                            (".sds", "SDS cannot be read from a pipe")):
        recording = tmp_path / f"words{suffix}"
        soundfile.write(recording, tone(440, 3.0), 16000)

        def send(source=recording):
            with contextlib.suppress(BrokenPipeError), pipe.open("wb") as out:
                out.write(source.read_bytes())

        writer = threading.Thread(target=send, daemon=True)
        writer.start()
        with pytest.raises(AudioDecodeError, match=f"^{pipe}: {refused}"):
            open_recording(pipe, str(pipe))
        writer.join(timeout=10)
        with open_recording(recording, str(recording)) as audio:  # the file itself is read
            assert audio.frames >= 3 * 16000  # (an MP3 encoder pads)
