"""The suite's own plumbing (its figures come from running it, never from tests)."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import soundfile

from benchmarks import noise, serving, streams, suite
from benchmarks.accuracy import summary
from benchmarks.memory import variant_chunk
from benchmarks.streams import NOT_KEYWORDS, generate_stream, score
from benchmarks.suite import Figure, Options, main, print_table, run_child
from pipelines.listening import Detection
from tests.datasets import make_speech_commands


def test_ratio_is_how_many_times_better_than_the_reference():
    assert Figure("s", "rate", 300.0, "clips/s", "loop", 100.0).ratio == 3
    assert Figure("s", "time", 2.0, "s", "naive", 8.0, higher_is_better=False).ratio == 4
    assert Figure("s", "alone", 5.0, "ms").ratio is None


def test_a_ratio_just_under_its_goal_never_prints_as_the_goal():
    table = io.StringIO()
    print_table([Figure("s", "short", 7110.0, "clips/s", "graph", 9499.0, goal=">= 0.75x",
                        met=False),
                 Figure("s", "exact", 3.0, "clips/s", "graph", 4.0, goal=">= 0.75x", met=True),
                 Figure("s", "tenths", 29.0, "clips/s", "loop", 100.0)], out=table)
    rows = {line.split()[1]: line.split() for line in table.getvalue().splitlines()[2:]}
    assert "0.74x" in rows["short"] and rows["short"][-1] == "MISSED"
    assert "0.75x" in rows["exact"] and rows["exact"][-1] == "met"
    assert "0.29x" in rows["tenths"]  # 0.29 * 100 is 28.999999999999996 in floating point


def test_child_peak_memory_is_the_childs_own(tmp_path):

    held = np.ones(100_000_000)  # this process: 760 MB more, which the children must not see
    small = run_child(["-c", "print('ok')"], tmp_path / "small.log")
    big = run_child(["-c", "import numpy; a = numpy.ones(80_000_000); print(a.sum())"],
                    tmp_path / "big.log")
    assert held.sum() and small.output.strip() == "ok" and "80000000.0" in big.output
    assert small.peak_rss_gb < 0.3  # not this process's peak
    assert 0.55 < big.peak_rss_gb - small.peak_rss_gb < 0.75  # its 610 MB of float64 ones
    with pytest.raises(RuntimeError, match="exited with 3:\n.*boom"):
        run_child(["-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "fail.log")
    json_out = run_child(["json.tool", str(_write(tmp_path / "x.json", '{"a": 1}'))],
                         tmp_path / "module.log")
    assert '"a": 1' in json_out.output  # a module with its arguments


def _write(path, text):
    path.write_text(text)
    return path


def test_generated_variants_are_shifted_noisy_copies_with_their_labels():
    base = np.zeros((3, 16000), np.float32)
    for row in range(3):
        base[row, 8000] = 0.5 + row * 0.1  # an impulse identifies each clip
    labels = np.array([4, 5, 6], np.int32)
    quiet = [np.zeros(40000, np.float32)]
    chunk, chunk_labels = variant_chunk(base, labels, quiet, 100, 164, 16000)
    assert chunk.waveforms.shape == (64, 16000) and chunk.kept == list(range(100, 164))
    peaks = chunk.waveforms.argmax(axis=1)
    assert (np.abs(peaks - 8000) <= 1600).all() and len(set(peaks)) > 10  # +-100 ms shifts
    source = np.round((chunk.waveforms.max(axis=1) - 0.5) / 0.1).astype(int)
    assert np.array_equal(labels[source], chunk_labels)
    again, _ = variant_chunk(base, labels, quiet, 100, 164, 16000)
    assert np.array_equal(again.waveforms, chunk.waveforms)  # seeded by position
    noisy, _ = variant_chunk(base, labels, [np.ones(40000, np.float32)], 0, 64, 16000)
    assert 0.5 < (noisy.waveforms.min(axis=1) > 0).mean() < 1  # noise on ~80 % of clips


def test_unknown_sections_are_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--only", "mfcc,warp-speed"])
    assert exit_info.value.code == 2
    assert "unknown section(s) warp-speed in --only; choose from mfcc, cache" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["--only", ""])
    assert "no section in --only" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--work-dir", "a-file"], "--work-dir {tmp}/a-file is not writable ({tmp}/a-file is a file)"),
    (["--store-dir", "a-file/mlruns"], "--store-dir {tmp}/a-file/mlruns is not writable"),
    (["--json", "a-file"], "--json a-file exists: it is not replaced; name a new file"),
    (["--json", "a-file/out.json"], "--json a-file/out.json: there is no folder a-file"),
    (["--json", "typo/out.json"], "--json typo/out.json: there is no folder typo"),
])
def test_output_places_are_checked_before_any_section_runs(args, message, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(SystemExit) as refused:
        main(["--only", "mfcc", *args])
    assert refused.value.code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert (tmp_path / "a-file").read_text() == "mine"


def test_a_failed_section_is_reported_and_the_others_share_one_store_and_are_kept(
        tmp_path, monkeypatch, capsys):
    """A section that raises is reported with its traceback and the next one runs; the table
    and the JSON hold what the others measured; every section gets the same store; the
    `--work-dir` folder stays."""
    seen = []

    def measured(options: Options) -> list[Figure]:
        seen.append(options.store_dir)
        (options.work_dir / "child.log").write_text("kept")
        return [Figure("fine", "a figure", 2.0, "s")]

    def failing(options: Options) -> list[Figure]:
        seen.append(options.store_dir)
        raise RuntimeError("python -m pipelines.speech exited with 137")

    stand_ins = {"fine": measured, "failing": failing, "again": measured}
    for name in stand_ins:
        monkeypatch.setitem(suite.SECTIONS, name, "stand-in")
    monkeypatch.setattr(suite, "section", stand_ins.get)
    out = tmp_path / "figures.json"
    status = main(["--only", "failing,fine,failing,again", "--json", str(out), "--work-dir",
                   str(tmp_path / "work")])
    assert status == 1
    assert len(seen) == 3 and len(set(seen)) == 1  # "failing" once, one store for all
    captured = capsys.readouterr()
    assert "error: failing failed:" in captured.err and "exited with 137" in captured.err
    assert [f["section"] for f in json.loads(out.read_text())["figures"]] == ["fine", "fine"]
    [run] = (tmp_path / "work").iterdir()
    assert (run / "fine" / "child.log").read_text() == "kept" and seen[0] == run / "mlruns"


def test_serving_batches_stay_within_what_a_request_may_send(monkeypatch, capsys):
    """The section's batch is MAX_REQUEST_ROWS; a larger one is refused before any model is
    built (the served model would refuse it)."""
    monkeypatch.setattr(sys, "argv", ["benchmarks.serving", "--batch", "1000"])
    with pytest.raises(SystemExit) as exit_info:
        serving.main()
    assert exit_info.value.code == 2
    assert "--batch must be in 1..512 (MAX_REQUEST_ROWS" in capsys.readouterr().err


def test_accuracy_summary_reports_mean_spread_margin_and_goals():

    runs = [(0, 0.90, 600.0, 1.5), (1, 0.92, 700.0, 1.6), (2, 0.94, 650.0, 1.4)]
    reference = [(0, 0.80, 60.0, 1.0), (1, 0.84, 60.0, 1.0)]
    accuracy, margin, slowest = summary("s", "default", runs, "cnn", reference, 0.92, 15)
    assert accuracy.value == pytest.approx(0.92) and accuracy.reference_value == pytest.approx(
        0.82)
    assert accuracy.met and "std 0.0200" in accuracy.note and "range 0.0400" in accuracy.note
    assert margin.value == pytest.approx(10.0) and margin.unit == "points"
    assert slowest.value == 700.0 and slowest.met and "1.50, 1.60, 1.40 GB" in slowest.note
    late = summary("s", "default", [(0, 0.5, 1000.0, 1.0)], "cnn", reference, 0.92, 15)
    assert not late[0].met and not late[2].met and "one seed" in late[0].note


def test_a_generated_stream_holds_test_clips_at_their_ground_truth_times(
        tmp_path, shared_speech_dir):
    path = tmp_path / "stream.wav"
    truth = generate_stream(shared_speech_dir, path, seconds=30, seed=1)
    samples, rate = soundfile.read(path, dtype="float32")
    assert rate == 16000 and len(samples) == 30 * 16000
    assert 6 <= len(truth) <= 10 and all(label not in NOT_KEYWORDS for _, label in truth)
    gaps = np.diff([when for when, _ in truth])
    assert (gaps >= 3.0 - 1e-9).all() and (gaps <= 4.0 + 1e-9).all()  # a 1 s clip + 2-3 s gap
    written = (tmp_path / "stream.wav.labels.txt").read_text().splitlines()
    assert written[0] == f"{truth[0][1]}, 1000.0000"  # the first clip starts after a 1 s gap
    read = streams.read_labels(tmp_path / "stream.wav.labels.txt")
    assert [label for _, label in read] == [label for _, label in truth]
    np.testing.assert_allclose([when for when, _ in read], [when for when, _ in truth],
                               rtol=0, atol=1e-6)
    # each clip lies in the second before its time: louder there than the background
    for when, _ in truth:
        end = round(when * rate)
        word, before = samples[end - rate:end], samples[end - rate - 8000:end - rate]
        assert np.sqrt(np.mean(word ** 2)) > np.sqrt(np.mean(before ** 2))
    quiet = generate_stream(shared_speech_dir, tmp_path / "noise.wav", seconds=10, words="none")
    assert quiet == []
    with pytest.raises(ValueError, match="words must be one of keywords, unknown, none, not "
                                         "'keyword'"):
        generate_stream(shared_speech_dir, tmp_path / "typo.wav", seconds=10, words="keyword")


def test_streaming_scores_as_tensorflows_accuracy_utils():
    """Each detection goes to the earliest word within 750 ms: right label and not matched
    before, matched; otherwise wrongly matched (a second detection of a word included); near
    no word, a false positive."""
    truth = [(9.0, "up"), (2.0, "yes"), (5.0, "no")]  # sorted by time before matching
    found = [Detection(2.5, "yes", 0.9),  # matched
             Detection(2.6, "yes", 0.9),  # the same word again: wrongly matched
             Detection(4.4, "left", 0.8),  # within 0.75 s of "no", another label: wrongly
             Detection(5.0, "no", 0.9),  # "no" was taken by "left": wrongly matched
             Detection(12.0, "up", 0.9)]  # far from every word: a false positive
    stats = score(found, truth)
    assert stats == pytest.approx({"matched": 100 / 3, "wrongly_matched": 300 / 3,
                                   "false_positives": 100 / 3, "keywords": 3,
                                   "non_keywords": 0, "non_keyword_accepts": 0,
                                   "false_positive_count": 1, "false_accepts": 1})
    # TensorFlow's generator mixes _unknown_ words in: a detection that goes to one is a
    # non-keyword accept, and the percentages are of the keywords
    mixed = score([Detection(2.5, "yes", 0.9), Detection(7.2, "up", 0.8),
                   Detection(7.3, "on", 0.8)],  # the same _unknown_ word: one word accepted
                  [(2.0, "yes"), (7.0, "_unknown_"), (11.0, "no")])
    assert mixed == pytest.approx({"matched": 50, "wrongly_matched": 0, "false_positives": 0,
                                   "keywords": 2, "non_keywords": 1, "non_keyword_accepts": 1,
                                   "false_positive_count": 0, "false_accepts": 2})
    # exactly 750 ms away is within the tolerance, whatever the floats' rounding (a labels
    # file's 950 ms start gives a word at 1.95 s; 2.70 - 1.95 is 0.7500000000000002)
    edge = score([Detection(2.70, "yes", 0.9), Detection(5.75, "yes", 0.9)],
                 [(0.95 + 1.0, "no"), (4.0 + 1.0, "yes")])
    assert (edge["matched"], edge["wrongly_matched"], edge["false_positives"]) == (50, 50, 0)


def test_streams_command_scores_listens_output_against_tensorflows_labels(tmp_path, capsys):
    """`python -m benchmarks.streams score LABELS DETECTIONS`: a labels file as TensorFlow's
    generator writes it (clip starts, `_unknown_` words among the keywords) and listen's
    output; lines that are neither are named."""
    labels = tmp_path / "streaming_test_labels.txt"
    # Windows line ends, a blank line, a byte-order mark
    labels.write_bytes("yes, 1000.000000\r\n\r\n_unknown_, 6000.000000\r\nno, 10000.000000\r\n"
                       .encode("utf-8-sig"))
    detections = tmp_path / "found.tsv"
    # listen's escapes keep a line break in a file name on its line
    detections.write_text("s\\nt.wav\t2.40\tyes\t0.910\ns\\nt.wav\t7.30\tup\t0.800\n"
                          "s\\nt.wav\t20.00\tgo\t0.750\n")
    assert streams.main(["score", str(labels), str(detections)]) == 0
    out = capsys.readouterr().out
    assert "detections           3\nkeywords             2\nmatched              50.0 %\n" in out
    assert "false positives      50.0 %" in out  # go at 20 s: near no word
    assert "non-keyword words    1 (1 of them detected as keywords)" in out
    assert ("false accepts        2 (near no word or at a non-keyword word; --stream gives "
            "them per hour)") in out
    # with the recording, per hour: 2 false accepts in 36 s
    stream = tmp_path / "stream.wav"
    soundfile.write(stream, np.zeros(36 * 16000, np.float32), 16000)
    assert streams.main(["score", str(labels), str(detections), "--stream", str(stream)]) == 0
    assert ("false accepts        200.0 per hour (2 near no word or at a non-keyword word, in "
            "0.6 minutes)") in capsys.readouterr().out
    assert streams.main(["score", str(labels), str(detections), "--stream", str(labels)]) == 2
    assert "streaming_test_labels.txt: not decodable audio" in capsys.readouterr().err
    empty = tmp_path / "none.tsv"
    empty.write_text("")  # listen heard nothing (or failed): said, not hidden
    labels.write_text("_unknown_, 6000\n")
    assert streams.main(["score", str(labels), str(empty)]) == 0
    assert capsys.readouterr().out == ("detections           0\nkeywords             0\n"
                                       "false positives      0 (near no word)\n"
                                       "non-keyword words    1 (0 of them detected as "
                                       "keywords)\n"
                                       "false accepts        0 (near no word or at a "
                                       "non-keyword word; --stream gives them per hour)\n")
    detections.write_text("s.wav\t2.40\tyes\t0.910\nt.wav\t3.00\tno\t0.900\n")
    assert streams.main(["score", str(labels), str(detections)]) == 2
    assert "detections of 2 recordings" in capsys.readouterr().err
    for bad in ("s.wav\t2.40\tyes\n", "s.wav\tnan\tyes\t0.9\n", "s.wav\t2.40\tyes\tinf\n"):
        detections.write_text(bad)
        assert streams.main(["score", str(labels), str(detections)]) == 2
        assert "found.tsv, line 1: expected listen's file<TAB>time_s" in capsys.readouterr().err
    # the recording given where the detections go: named, not a codec's message
    assert streams.main(["score", str(labels), str(stream)]) == 2
    assert "stream.wav: not UTF-8 text (invalid start byte at byte" in capsys.readouterr().err
    for bad in ("yes 2000", "yes, nan", "yes, -5", ", 2000"):
        labels.write_text(f"yes, 1000\n{bad}\n")
        assert streams.main(["score", str(labels), str(detections)]) == 2
        assert ("streaming_test_labels.txt, line 2: expected 'label, time_ms' (a time of at "
                "least 0 ms)") in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["taken.wav"], "taken.wav exists: it is not replaced"),
    (["fresh.wav"], "fresh.wav.labels.txt exists: it is not replaced"),
    (["link.wav"], "link.wav exists: it is not replaced"),  # a link to nothing
    (["stream.mp3"], "stream.mp3: expected a .wav file in an existing folder"),
    (["missing/stream.wav"], "missing/stream.wav: expected a .wav file in an existing folder"),
    (["/proc/s.wav"], "the stream's folder /proc is not writable"),  # even as root
    (["s.wav", "--seconds", "nan"], "--seconds must be from 1 to 14,400"),
    (["s.wav", "--seconds", "1e9"], "(four hours: the stream is built in memory, 230 MB an "
                                    "hour), not 1e+09"),
    (["s.wav", "--word-gap-ms", "-1"], "--word-gap-ms must be from 0 to the stream's length "
                                       "(600 s), not -1"),
    (["s.wav", "--word-gap-ms", "1e305"], "(600 s), not 1e+305"),
    (["s.wav", "--seed", "-1"], "--seed must be at least 0, not -1"),
    (["s.wav", "--background-volume", "2"], "--background-volume must be in [0, 1], not 2"),
])
def test_streams_generate_refuses_before_reading_any_clip(args, message, tmp_path, capsys,
                                                          monkeypatch):
    """Nothing the user made is replaced; the data folder (missing here) is never read."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.wav").write_bytes(b"mine")
    (tmp_path / "fresh.wav.labels.txt").write_text("mine")
    (tmp_path / "link.wav").symlink_to(tmp_path / "gone" / "s.wav")
    with pytest.raises(SystemExit) as refused:
        streams.main(["generate", *args, "--data-dir", str(tmp_path / "no-such-folder")])
    assert refused.value.code == 2 and message in capsys.readouterr().err
    assert (tmp_path / "taken.wav").read_bytes() == b"mine"
    assert (tmp_path / "fresh.wav.labels.txt").read_text() == "mine"


def test_streams_generate_mixes_any_audio_format_and_names_a_folder_without_noise(
        tmp_path, capsys):
    """The background is the recordings training mixes in, in any format, one that does not
    decode left out; a folder without them is named with what the stream needs, not with a
    training option."""
    folder = make_speech_commands(tmp_path / "sc")
    noise = folder / "_background_noise_"
    recordings = sorted(noise.iterdir())
    for path in recordings:
        path.unlink()
    assert streams.main(["generate", str(tmp_path / "none.wav"), "--data-dir", str(folder),
                         "--words", "none", "--seconds", "5"]) == 2
    assert f"{noise}: the stream's background needs recordings longer than 1 s (0 found " \
        "that decode, 0 of them shorter)" in capsys.readouterr().err
    soundfile.write(noise / "hum.FLAC", 0.5 * np.sin(np.arange(48000) / 5.0), 16000)
    (noise / "broken.wav").write_bytes(b"RIFF and nothing more")  # left out
    assert streams.main(["generate", str(tmp_path / "hum.wav"), "--data-dir", str(folder),
                         "--words", "none", "--seconds", "5"]) == 0
    heard, _ = soundfile.read(tmp_path / "hum.wav")
    assert len(heard) == 5 * 16000 and np.abs(heard).max() > 0.01  # the FLAC, at 0.1


def test_noisy_copies_add_seeded_white_noise_of_the_asked_level_within_full_scale():
    clips = np.zeros((4, 16000), np.float32)
    clips[0, :100] = 0.999
    noisy = noise.with_white_noise(clips, 0.01, seed=3)
    assert np.array_equal(noisy, noise.with_white_noise(clips, 0.01, seed=3))
    assert abs(float(np.sqrt(np.mean(noisy[1:] ** 2))) - 0.01) < 1e-4
    assert noisy.max() <= 1.0 and noisy.dtype == np.float32
