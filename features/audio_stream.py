"""A recording of any length as a stream: mono float32 blocks at the model's rate, read on a
thread of their own ahead of their use, and cut into overlapping fixed-length windows.

Memory stays flat however long the recording is: a file is read BLOCK_SECONDS (at most
BLOCK_SAMPLES over its channels) at a time, mixed to mono and resampled as a stream (soxr); a
pipe, which cannot seek, is read as its audio arrives. Reading errors follow `features.audio`'s
rules (`AudioDecodeError`, naming the input), raised after the blocks read before them, so a
recording failing part-way is used up to the failure."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Generator, Iterator

import numpy as np
import soxr

from features.audio import (
    DECODE_ERRORS,
    AudioDecodeError,
    check_sample_rate,
    check_samples,
    not_decodable,
    open_recording,
    to_mono,
    usable_samples,
)

BLOCK_SECONDS = 30  # of a recording read and resampled at a time (a pipe: as it arrives)
BLOCK_SAMPLES = 30 * 48_000 * 2  # at most, over its channels (30 s of 384 kHz 8-channel audio
# would be 92 M samples, 369 MB of float32: such a block is shorter)
WINDOWS_PER_CALL = 256  # windows per batch `windows` yields (one model call each in `listen`)
STDIN = "-"  # the path that means standard input


def resampled_blocks(path: str, rate: int, pipe_block_s: float) -> Iterator[np.ndarray]:
    """A recording (`path`, or STDIN) as consecutive mono float32 blocks at `rate`, read
    BLOCK_SECONDS at a time (at most BLOCK_SAMPLES over its channels); a pipe, which cannot
    seek, `pipe_block_s` at a time, each block as soon as it arrives.

    Raises:
        AudioDecodeError: Not decodable, no samples, a rate out of range, NaN/Inf samples.
    """
    source = None if path == STDIN else path  # None: a stream, no file to look at
    label = "standard input" if source is None else path
    with open_recording(source, label) as audio:
        source_rate = check_sample_rate(audio.samplerate, label)
        stream = (None if source_rate == rate
                  else soxr.ResampleStream(source_rate, rate, 1, dtype="float32"))
        total = 0
        size = (min(BLOCK_SECONDS * source_rate, max(1, BLOCK_SAMPLES // audio.channels))
                if audio.seekable() else max(1, round(pipe_block_s * source_rate)))
        while True:
            try:  # a damaged compressed stream fails part-way through
                block = audio.read(size, dtype="float32", always_2d=True)
            except DECODE_ERRORS as error:
                raise not_decodable(label, source, error) from None
            if not len(block):
                break
            mono = to_mono(block)
            usable = usable_samples(mono)  # what precedes a bad sample is listened to
            total += usable
            yield mono[:usable] if stream is None else stream.resample_chunk(mono[:usable])
            if usable < len(mono):
                check_samples(mono, label)  # raises, naming what is wrong
        if total == 0:
            raise AudioDecodeError(f"{label}: the {'stream' if source is None else 'file'} "
                                   "holds no audio samples")
        if stream is not None:
            yield stream.resample_chunk(np.zeros(0, np.float32), last=True)


def read_ahead(blocks: Generator[np.ndarray, None, None], limit: int
               ) -> Iterator[np.ndarray]:
    """`blocks`, read on a thread of their own at most `limit` samples ahead of their use;
    those read ahead are handed on joined, so that a backlog is scored in batches.

    A pipe is drained while the model works, so a recorder writing into it is not held up (the
    first windows' call compiles the model for seconds; a pipe holds 64 KiB, 0.4 s of 44.1 kHz
    stereo), and a file's next block is decoded while this one is scored. An error of `blocks`
    is raised after the blocks read before it. A reader that stops early stops the thread at
    its next block (on a silent pipe, once the pipe sends or closes).
    """
    ready: deque = deque()  # blocks, then None at the end or the error that ended them
    changed = threading.Condition()
    ahead, stopped = 0, False

    def read() -> None:
        nonlocal ahead
        end: BaseException | None = None
        try:
            for block in blocks:
                with changed:
                    while ahead and ahead + len(block) > limit and not stopped:
                        changed.wait()
                    if stopped:
                        return
                    ready.append(block)
                    ahead += len(block)
                    changed.notify_all()
        except BaseException as error:  # handed over, raised where the blocks are used
            end = error
        finally:
            try:
                blocks.close()  # the recording closes on this thread, after its last read
            finally:
                with changed:
                    ready.append(end)
                    changed.notify_all()

    threading.Thread(target=read, name="listen-read-ahead", daemon=True).start()
    try:
        while True:
            with changed:
                changed.wait_for(lambda: ready)
                joined = []
                while ready and isinstance(ready[0], np.ndarray):
                    joined.append(ready.popleft())
                ahead -= sum(len(block) for block in joined)
                end = None if joined else ready.popleft()
                changed.notify_all()
            if joined:
                yield np.concatenate(joined) if len(joined) > 1 else joined[0]
            elif end is not None:
                raise end
            else:
                return
    finally:
        with changed:
            stopped = True
            changed.notify_all()


def windows(blocks: Iterator[np.ndarray], window: int, hop: int
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of (window end times in samples, windows (n, window)) of the stream, a window
    every `hop` samples (which may be longer than a window); a stream shorter than one window
    gives one, zero-padded, ending where the stream ends."""
    buffer = np.zeros(0, np.float32)
    consumed = 0  # samples dropped from the buffer's front
    start = 0  # next window's start, in samples of the stream
    seen = False
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        starts = np.arange(start, consumed + len(buffer) - window + 1, hop)
        for first in range(0, len(starts), WINDOWS_PER_CALL):
            chosen = starts[first:first + WINDOWS_PER_CALL] - consumed
            cut = np.lib.stride_tricks.sliding_window_view(buffer, window)[chosen]
            yield chosen + consumed + window, cut
            seen = True
        if len(starts):
            start = int(starts[-1]) + hop
        drop = min(max(0, start - consumed), len(buffer))  # never past what was read
        buffer, consumed = buffer[drop:], consumed + drop
    if not seen:
        padded = np.zeros(window, np.float32)
        padded[:len(buffer)] = buffer
        yield np.array([consumed + len(buffer)]), padded[None]
