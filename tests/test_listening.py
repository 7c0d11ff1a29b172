"""`listen`: windows over recordings of any length, RecognizeCommands' decisions, bad input.

The model here is a real Keras model over raw waveforms whose answer is set by its weights:
`yes` where a window is loud, `_silence_` where it is quiet, so the detections of a stream of
tone bursts over quiet noise are known in advance."""

from __future__ import annotations

import contextlib
import os
import pty
import queue
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from features.audio import AudioDecodeError
from features.audio_stream import resampled_blocks
from features.mfcc import MfccConfig
from features.speech_commands import TWELVE_CLASS_LABELS
from pipelines import speech, tracking
from pipelines.listening import (
    ListenConfig,
    RecognizeCommands,
    detections,
    listen,
)
from pipelines.serving import SpeechPredictor
from tests.datasets import write_wav

LABELS = TWELVE_CLASS_LABELS
RATE = 16000
REPO = Path(__file__).resolve().parents[1]


def loudness_model() -> keras.Model:
    """(batch, 16000) -> 12 probabilities: `yes` for a loud window, `_silence_` for a quiet
    one (logits linear in the mean power)."""
    waveforms = keras.Input((RATE,))
    samples = keras.layers.Reshape((RATE, 1))(waveforms)
    power = keras.layers.GlobalAveragePooling1D()(keras.layers.Multiply()([samples, samples]))
    head = keras.layers.Dense(len(LABELS), activation="softmax")
    model = keras.Model(waveforms, head(power))
    slope, bias = np.zeros((1, len(LABELS))), np.full(len(LABELS), -10.0)
    slope[0, LABELS.index("yes")] = 100.0
    bias[LABELS.index("yes")], bias[LABELS.index("_silence_")] = 0.0, 5.0
    head.set_weights([slope.astype(np.float32), bias.astype(np.float32)])
    return model


def stream(seconds: float, bursts: list[float], rate: int = RATE) -> np.ndarray:
    """Quiet noise with a 0.6 s loud tone starting at each of `bursts` (seconds)."""
    rng = np.random.default_rng(0)
    wave = 0.01 * rng.standard_normal(int(seconds * rate))
    for start in bursts:
        t = np.arange(int(0.6 * rate)) / rate
        first = int(start * rate)
        wave[first:first + t.size] += 0.5 * np.sin(2 * np.pi * 440 * t)
    return wave.astype(np.float32)


@pytest.fixture(scope="module")
def predictor() -> SpeechPredictor:
    return SpeechPredictor(loudness_model(), LABELS, MfccConfig())


def test_recognize_commands_decides_as_tensorflows_does():
    """Three windows at least, the one exactly --average-window-ms old included; then a new
    label over the threshold, more than --suppression-ms after the last detection."""
    recognizer = RecognizeCommands(["_silence_", "yes", "no"], ListenConfig(
        average_window_ms=200, threshold=0.6, suppression_ms=500, minimum_count=3))
    yes, no, quiet = np.array([0, 1.0, 0]), np.array([0, 0, 1.0]), np.array([1.0, 0, 0])
    timeline = [(100, yes * 0.5 + quiet * 0.5), (200, yes),  # two windows: too few to decide
                (300, yes),  # the windows of 100, 200 and 300 ms: heard
                (400, no), (500, no), (600, no), (700, no), (800, no),  # within 500 ms
                (900, no),  # 600 ms after `yes`: heard
                *[(t, yes) for t in range(1000, 1600, 100)]]  # heard at 1500, 600 ms later
    heard = {t: recognizer.process(t, scores) for t, scores in timeline}
    assert {t: h[0] for t, h in heard.items() if h} == {300: "yes", 900: "no", 1500: "yes"}
    assert heard[300][1] == pytest.approx(2.5 / 3)  # the window of 100 ms is still averaged
    # enough windows, but spanning less than a quarter of the averaging window: no decision
    early = RecognizeCommands(["_silence_", "yes"], ListenConfig(
        average_window_ms=400, threshold=0.5, minimum_count=2))
    assert [early.process(t, np.array([0, 1.0])) for t in (0, 50)] == [None, None]
    assert early.process(100, np.array([0, 1.0])) == ("yes", 1.0)


def test_without_a_silence_class_quiet_lets_a_word_be_heard_again():
    """For a model trained without _silence_ (--silence-pct 0), a moment with no label over the
    threshold ends the last command, as a _silence_ detection does; suppression still holds."""
    labels, config = ["yes", "no"], ListenConfig(average_window_ms=200, threshold=0.6,
                                                  suppression_ms=500, minimum_count=3)
    yes, flat = np.array([1.0, 0]), np.array([0.5, 0.5])
    timeline = [*[(t, yes) for t in range(100, 400, 100)],  # heard at 300
                (400, flat), (500, flat), (600, flat),  # quiet (a dip at 500: suppressed)
                *[(t, yes) for t in range(700, 1100, 100)]]  # heard again at 900
    for labelled, expected in ((labels, {300: "yes", 900: "yes"}),
                               (["_silence_", *labels], {300: "yes"})):
        recognizer = RecognizeCommands(labelled, config)
        scores = [np.concatenate([[0.0] * (len(labelled) - 2), s]) for _, s in timeline]
        heard = {t: recognizer.process(t, x) for (t, _), x in zip(timeline, scores, strict=True)}
        assert {t: h[0] for t, h in heard.items() if h} == expected


def recorder_stream(wave: np.ndarray, rate: int) -> tuple[bytes, bytes]:
    """(header, samples) of 16-bit stereo WAV as a recorder writes it to a pipe: the header's
    sizes left unknown (0xFFFFFFFF), since the recording's length is not known yet."""
    pcm = (np.clip(np.stack([wave, wave], 1), -1, 1) * 32767).astype("<i2")
    header = (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 2, rate, 4 * rate, 4, 16) + b"data" + struct.pack("<I", 0xFFFFFFFF))
    return header, pcm.tobytes()


def test_a_named_pipe_is_heard_as_the_same_recording_in_a_file(tmp_path: Path, predictor):
    """A pipe (not seekable) is read a hop at a time, as its WAV stream arrives, with the
    header's sizes unknown: the detections are the file's."""
    wave = stream(12, [2.0, 7.0], rate=44100)
    header, samples = recorder_stream(wave, 44100)
    file = write_wav(tmp_path / "stereo.wav", np.stack([wave, wave], 1), rate=44100)
    pipe = tmp_path / "live"
    os.mkfifo(pipe)

    def record():
        with pipe.open("wb") as out:
            out.write(header)
            for start in range(0, len(samples), 17_640):  # 100 ms at a time
                out.write(samples[start:start + 17_640])

    writer = threading.Thread(target=record, daemon=True)  # blocks until the pipe is opened
    writer.start()
    live = listen(str(pipe), predictor, ListenConfig())
    writer.join(timeout=10)
    whole = listen(str(file), predictor, ListenConfig())
    assert [d.label for d in live] == [d.label for d in whole] == ["yes", "yes"]
    assert [d.time_s for d in live] == [d.time_s for d in whole]
    assert np.allclose([d.score for d in live], [d.score for d in whole], atol=1e-3)


def test_tone_bursts_are_heard_once_each_near_their_time(tmp_path: Path, predictor):
    path = write_wav(tmp_path / "long.wav", stream(12, [2.0, 7.0]))
    found = listen(str(path), predictor, ListenConfig())
    assert [d.label for d in found] == ["yes", "yes"]  # _silence_ between them: not reported
    assert 2.0 < found[0].time_s < 3.7 and 7.0 < found[1].time_s < 8.7
    assert all(d.score > 0.7 for d in found)
    # the same recording at 44.1 kHz in stereo: mixed down, resampled, heard at the same times
    stereo = stream(12, [2.0, 7.0], rate=44100)
    path = write_wav(tmp_path / "stereo.wav", np.stack([stereo, stereo], 1), rate=44100)
    again = listen(str(path), predictor, ListenConfig())
    assert [d.label for d in again] == ["yes", "yes"]
    assert np.allclose([d.time_s for d in again], [d.time_s for d in found], atol=0.21)


def test_short_silent_corrupt_and_missing_recordings(tmp_path: Path, predictor):
    short = write_wav(tmp_path / "short.wav", stream(0.7, [0.0]))  # shorter than a window
    assert [(d.label, d.time_s) for d in listen(str(short), predictor, ListenConfig())] == [
        ("yes", 0.7)]  # at its end, not past it
    # two windows, fewer than --minimum-count: decided once on both, at the last one's end
    brief = write_wav(tmp_path / "brief.wav", stream(1.1, [0.2]))
    assert [(d.label, d.time_s) for d in listen(str(brief), predictor, ListenConfig())] == [
        ("yes", 1.1)]
    silent = write_wav(tmp_path / "silent.wav", np.zeros(3 * RATE, np.float32))
    assert listen(str(silent), predictor, ListenConfig()) == []
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    with pytest.raises(ValueError, match=r"corrupt\.wav: not decodable audio"):
        listen(str(corrupt), predictor, ListenConfig())
    with pytest.raises(ValueError, match=r"gone\.wav: no such file"):
        list(resampled_blocks(str(tmp_path / "gone.wav"), RATE, 0.1))
    # a compressed file cut short: its header and first block read, its second block does
    # not; the detection made in the first block comes before the error
    noise = 0.3 * np.random.default_rng(0).standard_normal(60 * RATE).astype(np.float32)
    whole = write_wav(tmp_path / "whole.flac", noise)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size * 3 // 4])
    heard = detections(str(cut), predictor, ListenConfig())
    first = next(heard)
    assert first.label == "yes" and first.time_s < 2  # loud from the start
    with pytest.raises(ValueError, match=r"cut\.flac: not decodable audio \("):
        next(heard)


def test_a_bad_sample_part_way_keeps_the_detections_before_it(tmp_path: Path, predictor):
    wave = stream(45, [31.0])  # the word in the second 30 s block, a NaN 9 s after it
    wave[40 * RATE] = np.nan
    path = write_wav(tmp_path / "nan.wav", wave, subtype="FLOAT")
    heard = detections(str(path), predictor, ListenConfig())
    first = next(heard)
    assert first.label == "yes" and 31 < first.time_s < 33
    with pytest.raises(AudioDecodeError, match=r"nan\.wav: holds NaN/Inf samples"):
        next(heard)


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> tuple[Path, str]:
    """The loudness model logged in a store of its own: (store, model URI)."""
    folder = tmp_path_factory.mktemp("listen")
    store, model = folder / "mlruns", loudness_model()
    model.save(folder / "classifier.keras")
    config = SpeechPredictor(model, LABELS, MfccConfig()).save_config(folder / "config.json")
    with tracking.open_run("listen", tracking_uri=None, store_dir=store):
        uri = tracking.log_speech_classifier(folder / "classifier.keras", config, LABELS,
                                             speech.serving_input_example(RATE))
    return store, uri


def test_listen_command_prints_detections_and_fails_a_bad_file(tmp_path: Path, logged, capsys):
    store, uri = logged
    # a tab and a newline in the name are escaped, so the line still has four fields
    path = write_wav(tmp_path / "long\ttake\n2.wav", stream(6, [2.0]))
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    quiet = write_wav(tmp_path / "quiet.wav", stream(3, []))
    # a name the file system refuses, and one that would split a line of stderr
    too_long, gone = str(tmp_path / ("x" * 300 + ".wav")), str(tmp_path / "gone\n\x1b[2J.wav")
    status = speech.main(["listen", str(path), too_long, gone, str(tmp_path / "bad.wav"),
                          str(quiet), "--model-uri", uri, "--store-dir", str(store),
                          "--hop-ms", "50"])
    out, err = capsys.readouterr()
    assert status == 1
    lines = [line.split("\t") for line in out.strip().splitlines()]
    assert len(lines) == 1 and lines[0][0] == f"{tmp_path}/long\\ttake\\n2.wav"
    assert lines[0][2] == "yes"
    assert 2.0 < float(lines[0][1]) < 3.7 and 0.7 < float(lines[0][3]) <= 1.0
    assert len(lines[0][1].split(".")[1]) == 3  # to the millisecond: a --hop-ms under 10
    assert "bad.wav: not decodable audio" in err
    assert f"{too_long}: cannot read the file (File name too long)\n" in err
    assert f"{tmp_path}/gone\\n\\x1b[2J.wav: no such file\n" in err
    assert f"{quiet}: no keyword detected" in err  # listened to, not skipped
    assert "long\\ttake" not in err  # the file with a word is not named there
    assert mlflow.active_run() is None


def test_listen_to_standard_input_prints_each_keyword_as_it_arrives_and_stops_at_ctrl_c(
        tmp_path: Path, logged):
    """`recorder | listen -`: each detection is printed while the stream goes on; Ctrl-C
    ends a wait for more input at once (status 130)."""
    store, uri = logged
    header, samples = recorder_stream(stream(8, [1.0, 5.0], rate=44100), 44100)
    second = 4 * 44100 * 4  # bytes of the first 4 s
    log = tmp_path / "listen.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.speech", "listen", "-", "--model-uri", uri,
         "--store-dir", str(store)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=log.open("w"))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [*map(lines.put, process.stdout), lines.put(b"")],
                     daemon=True).start()

    def next_detection() -> tuple[str, float, str]:
        line = lines.get(timeout=180).decode()
        assert line, f"listen ended (status {process.poll()}):\n{log.read_text()[-3000:]}"
        name, when, label, _ = line.rstrip("\n").split("\t")
        return name, float(when), label

    try:
        process.stdin.write(header + samples[:second])
        process.stdin.flush()
        name, when, label = next_detection()  # the stream is still open
        assert (name, label) == ("-", "yes") and 1.0 < when < 2.7
        process.stdin.write(samples[second:])  # the second word, then nothing more
        process.stdin.flush()
        name, when, label = next_detection()
        assert label == "yes" and 5.0 < when < 6.7
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 130
    finally:
        process.kill()
    assert "interrupted by Ctrl-C" in log.read_text()


@pytest.mark.parametrize(("stdin", "message"), [
    ("pipe", "(-) can be listened to once"), ("closed", "(-) is closed"),
    ("terminal", "(-) is a terminal: pipe a recording into it")])
def test_standard_input_is_listened_to_once_and_only_from_a_pipe(
        stdin: str, message: str, tmp_path: Path, monkeypatch, capsys):
    """Refused before any model is loaded (the store here is empty)."""
    if stdin == "closed":
        monkeypatch.setattr(sys, "stdin", None)  # what Python sets when started without it
    with contextlib.ExitStack() as opened:
        if stdin == "terminal":
            master, terminal = pty.openpty()
            opened.callback(os.close, master)
            monkeypatch.setattr(sys, "stdin", opened.enter_context(os.fdopen(terminal)))
        with pytest.raises(SystemExit) as refused:
            speech.main(["listen", *(["-", "-"] if stdin == "pipe" else ["-"]), "--store-dir",
                         str(tmp_path / "mlruns")])
    assert refused.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--threshold", "1.5"], "--threshold must be in [0, 1), not 1.5"),
    (["--hop-ms", "0"], "--hop-ms and --average-window-ms must be positive"),
    (["--minimum-count", "0"], "--minimum-count must be at least 1, not 0"),
    (["--hop-ms", "nan"], "--hop-ms nan, --average-window-ms 500, --threshold 0.7, "
                          "--suppression-ms 1000, --minimum-count 3: every setting must be a "
                          "finite number"),
    (["--average-window-ms", "inf"], "--average-window-ms inf,"),
    (["--suppression-ms", "nan"], "--suppression-ms nan,"),
    (["--hop-ms", "1e305"], "--hop-ms and --average-window-ms must be at most a day "
                            "(86,400,000 ms), not 1e+305"),
    (["--average-window-ms", "86400001"], "at most a day (86,400,000 ms), not 86400001"),
    # an averaging window that cannot detect, refused at 16 kHz before loading too
    (["--hop-ms", "2000"], "--average-window-ms 500 at --hop-ms 2000 (32000 samples at 16000 "
                           "Hz) averages at most 1 window(s)"),
    (["--hop-ms", "0.03"], "--hop-ms 0.03 is under one sample at 16000 Hz (one sample is "
                           "0.0625 ms)"),
    (["--minimum-count", "1" + "0" * 400], "at most 6 window(s) spanning 500 ms; a detection "
                                            f"needs 1{'0' * 400} (--minimum-count)"),
])
def test_listen_refuses_settings_out_of_range(flags: list[str], message: str, tmp_path: Path,
                                              capsys):
    """Checked before any model is loaded (the store here is empty)."""
    with pytest.raises(SystemExit) as refused:
        speech.main(["listen", str(tmp_path / "any.wav"), "--store-dir",
                     str(tmp_path / "mlruns"), *flags])
    assert refused.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--hop-ms", "300"], "--average-window-ms 500 at --hop-ms 300 (4800 samples at 16000 Hz) "
                          "averages at most 2 window(s) spanning 300 ms; a detection needs 3"),
    (["--average-window-ms", "50", "--minimum-count", "1"],
     "--average-window-ms 50 at --hop-ms 100 (1600 samples at 16000 Hz) averages at most 1 "
     "window(s) spanning 0 ms"),
    # 166.666 ms is 2667 samples, 166.6875 ms: three hops, 500.06 ms, do not fit in 500
    (["--hop-ms", "166.666", "--minimum-count", "4"], "averages at most 3 window(s)"),
])
def test_listen_refuses_settings_that_cannot_detect(flags: list[str], message: str,
                                                     tmp_path: Path, logged, capsys):
    """Judged at the model's sample rate, with the hop in whole samples as listen cuts it."""
    store, uri = logged
    path = write_wav(tmp_path / "long.wav", stream(3, [1.0]))
    with pytest.raises(SystemExit) as refused:
        speech.main(["listen", str(path), "--model-uri", uri, "--store-dir", str(store),
                     *flags])
    assert refused.value.code == 2
    assert message in capsys.readouterr().err
