"""Reading a recording as a stream (`features.audio_stream`): windows cut across blocks, the
read-ahead thread, and what a pipe can carry."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from features import audio_stream
from features.audio import AudioDecodeError
from features.audio_stream import read_ahead, resampled_blocks, windows
from tests.datasets import write_wav

RATE = 16000


def test_windows_of_a_stream_in_blocks_equal_windows_of_the_whole():
    wave = np.arange(5 * RATE, dtype=np.float32)
    blocks = np.split(wave, [7_000, 7_100, 30_000, 61_234])
    ends, cut = zip(*windows(iter(blocks), RATE, 1600), strict=True)
    ends, cut = np.concatenate(ends), np.concatenate(cut)
    expected_ends = np.arange(RATE, 5 * RATE + 1, 1600)
    np.testing.assert_array_equal(ends, expected_ends)
    np.testing.assert_array_equal(cut, np.stack([wave[end - RATE:end] for end in ends]))
    short = list(windows(iter([np.ones(4000, np.float32)]), RATE, 1600))
    assert len(short) == 1 and short[0][1].shape == (1, RATE)
    assert short[0][0].tolist() == [4000]  # its time: where the recording ends
    assert short[0][1][0, :4000].sum() == 4000 and not short[0][1][0, 4000:].any()
    # a hop longer than a window skips samples, across block boundaries too
    wave = np.arange(10 * RATE, dtype=np.float32)
    ends, cut = zip(*windows(iter(np.split(wave, [5 * RATE, 5 * RATE + 100])), RATE, 27_200),
                    strict=True)
    ends, cut = np.concatenate(ends), np.concatenate(cut)
    np.testing.assert_array_equal(ends, np.arange(RATE, 10 * RATE + 1, 27_200))
    np.testing.assert_array_equal(cut, np.stack([wave[end - RATE:end] for end in ends]))
    # nothing at all (a recording resampled to no samples): one silent window, still scored
    empty = list(windows(iter([np.zeros(0, np.float32)]), RATE, 1600))
    assert len(empty) == 1 and not empty[0][1].any()


def test_read_ahead_keeps_order_stays_within_its_limit_and_raises_a_read_error_last():
    produced, closed = [], threading.Event()

    def source():
        try:
            for index in range(10):
                produced.append(index)
                yield np.full(100, index, np.float32)
            raise AudioDecodeError("cut.flac: not decodable audio (cut short)")
        finally:
            closed.set()

    blocks = read_ahead(source(), limit=300)
    first = next(blocks)  # the blocks read by then, joined
    taken = len(first) // 100
    # then three more wait (300 samples) and the next was read and waits for room
    deadline = time.monotonic() + 10
    while len(produced) < taken + 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(produced) == taken + 4
    got = [first]
    with pytest.raises(AudioDecodeError, match="cut short"):
        for block in blocks:
            got.append(block)
    samples = np.concatenate(got)
    assert closed.wait(10) and produced == list(range(10))
    np.testing.assert_array_equal(samples, np.repeat(np.arange(10, dtype=np.float32), 100))
    # a reader that stops early stops the reading thread, which closes its source
    closed.clear()
    blocks = read_ahead(source(), limit=100)
    next(blocks)
    blocks.close()
    assert closed.wait(10) and len(produced) < 10 + 10


def read_standard_input(sent: bytes) -> np.ndarray:
    """What `listen -` reads of `sent` through a pipe (within a pipe's buffer), joined."""
    reader, writer = os.pipe()
    os.write(writer, sent)
    os.close(writer)
    saved = os.dup(0)
    try:
        os.dup2(reader, 0)
        return np.concatenate([np.zeros(0, np.float32),
                               *resampled_blocks("-", 16000, 0.1)])
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(reader)


@pytest.mark.parametrize("suffix", ["ogg", "flac", "empty"])
def test_a_pipe_carries_wav_or_ogg_and_names_what_it_cannot(suffix: str, tmp_path: Path):
    """OGG streams through a pipe; FLAC (whose decoder needs to seek) and nothing at all are
    not decodable, with what a pipe may carry."""
    sent = b""
    if suffix != "empty":
        clip = (0.3 * np.sin(np.arange(16000) / 3.0)).astype(np.float32)
        sent = write_wav(tmp_path / f"clip.{suffix}", clip,
                         subtype="VORBIS" if suffix == "ogg" else "PCM_16").read_bytes()
    if suffix == "ogg":
        assert len(read_standard_input(sent)) == 16000
        return
    with pytest.raises(AudioDecodeError) as refused:
        read_standard_input(sent)
    assert str(refused.value).startswith("standard input: not decodable audio (")
    assert str(refused.value).endswith("; a pipe carries WAV or OGG, not FLAC or MP3 (their "
                                       "decoders seek): was the stream empty, or of another "
                                       "format?")


def test_a_many_channel_recording_is_read_in_blocks_of_bounded_samples(tmp_path: Path,
                                                                      monkeypatch):
    """However many channels, a block holds at most BLOCK_SAMPLES samples over them."""
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal((2 * RATE, 8))).astype(np.float32)
    path = write_wav(tmp_path / "eight.wav", wave, subtype="FLOAT")
    monkeypatch.setattr(audio_stream, "BLOCK_SAMPLES", 8 * 1000)
    blocks = list(resampled_blocks(str(path), RATE, 0.1))
    assert max(len(block) for block in blocks) == 1000
    np.testing.assert_allclose(np.concatenate(blocks), wave.mean(axis=1), atol=1e-6)
