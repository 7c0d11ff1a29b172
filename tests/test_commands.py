"""The commands' output as a user or a script reads it: results alone on stdout, one line per
input, names escaped; usage errors named; a closed pipe ends a command quietly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines import sentiment, speech, tracking
from pipelines.sentiment import SentimentConfig
from tests.builders import register_tiny_speech_model
from tests.datasets import make_imdb, tone, write_wav
from tests.test_tracking import log_tiny_model

REPO = Path(__file__).resolve().parents[1]
NAME = "tiny-speech"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store holding a tiny speech model (`tiny-speech@champion`) and a TF-IDF sentiment
    model (`tiny-text@champion`)."""
    store = tmp_path_factory.mktemp("commands") / "mlruns"
    register_tiny_speech_model(store, NAME)
    with tracking.open_run("exp", tracking_uri=None, store_dir=store):
        uri = log_tiny_model(store.parent / "text-model")
        tracking.register_and_promote(uri, "tiny-text", metrics={"test_accuracy": 0.5},
                                      test_digest="t", data_digest="d")
    return store


def test_a_file_name_in_bytes_that_are_not_utf8_is_printed_escaped(store: Path,
                                                                    tmp_path: Path, capsys):
    good = write_wav(tmp_path / "good.wav", tone(440))
    odd = os.path.join(os.fsencode(tmp_path), b"odd\xffname.wav")
    shutil.copy(good, odd)
    assert speech.main(["predict", os.fsdecode(odd), str(good), "--store-dir", str(store),
                        "--model-uri", f"models:/{NAME}@champion"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [f"{tmp_path}/odd\\xffname.wav",
                                                       str(good)]
    assert all(line.encode("utf-8") for line in lines)  # what a strict stdout can write
    # listen reads such a file too (libsndfile is given the name's own bytes)
    assert speech.main(["listen", os.fsdecode(odd), "--store-dir", str(store),
                        "--model-uri", f"models:/{NAME}@champion"]) == 0
    heard = capsys.readouterr()  # a detection, or none (the tiny model is untrained)
    assert (heard.out.startswith(f"{tmp_path}/odd\\xffname.wav\t")
            or f"{tmp_path}/odd\\xffname.wav: no keyword detected" in heard.err)
    # and named the same way on stderr
    broken = os.path.join(os.fsencode(tmp_path), b"\xfe.wav")
    Path(os.fsdecode(broken)).write_bytes(b"not audio")
    assert speech.main(["listen", os.fsdecode(broken), "--store-dir", str(store),
                        "--model-uri", f"models:/{NAME}@champion"]) == 1
    assert capsys.readouterr().err.startswith(f"{tmp_path}/\\xfe.wav: not decodable audio")


def test_a_data_folder_in_bytes_that_are_not_utf8_is_logged_escaped(tmp_path: Path, capsys):
    odd = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"im\xffdb"))
    shown, store = f"{tmp_path}/im\\xffdb", str(tmp_path / "mlruns")
    make_imdb(Path(odd))
    sentiment.run(SentimentConfig.from_options(data_dir=odd, store_dir=store,
                                               model="tfidf-logreg", validation_pct=25))
    assert sentiment.main(["evaluate", "--data-dir", odd, "--store-dir", store]) == 0
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("imdb-sentiment").experiment_id])
    evaluated, trained = sorted(runs, key=lambda run: run.data.tags.get("run_type", ""),
                                reverse=True)
    assert trained.data.params["data_dir"] == shown
    assert shown in evaluated.data.tags["mlflow.note.content"]
    # and a review file named so, on stderr
    reviews = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"n\xffame.txt"))
    Path(reviews).write_text("great\n\nawful\n")
    assert sentiment.main(["predict", "--file", reviews, "--store-dir", store]) == 0
    assert f"{tmp_path}/n\\xffame.txt: skipped 1 blank line(s): 2" in capsys.readouterr().err


@pytest.mark.parametrize(("main", "argv", "message"), [
    (speech.main, ["predict", ""], "a FILE argument is empty ('')"),
    (sentiment.main, ["predict", "fine", "--file", ""], "a FILE argument is empty ('')"),
    (sentiment.main, ["predict", "--file", os.devnull], f"no review in {os.devnull} (empty, "
                                                        "or blank lines only)"),
    (speech.main, ["predict", "a.wav", "--model-uri", ""], "argument --model-uri: is empty"),
    (speech.main, ["predict", "a.wav", "--store-dir", ""], "argument --store-dir: is empty"),
    (sentiment.main, ["evaluate", "--data-dir", ".", "--experiment", ""],
     "argument --experiment: Invalid experiment name: ''"),
])
def test_usage_errors_name_an_empty_file_and_an_unknown_command(main, argv: list[str],
                                                                message: str, capsys):
    """Before any model is loaded or input read."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        speech.main(["predcit", "a.wav"])
    assert exit_info.value.code == 2
    assert ("unknown command 'predcit': the commands are predict, evaluate, listen, export"
            in capsys.readouterr().err)


def test_a_review_file_is_split_at_line_ends_only(store: Path, tmp_path: Path, capsys):
    """One review per line: a form feed or U+2028 inside a review does not split it, a
    byte-order mark is not part of the first review, Windows line ends are read."""
    reviews = tmp_path / "reviews.txt"
    reviews.write_bytes(b"\xef\xbb\xbfgreat fun\xe2\x80\xa8great film\r\n"
                        b"bad plot\x0cawful acting\r\n\r\nthird\r\n")
    assert sentiment.main(["predict", "--file", str(reviews), "--store-dir", str(store),
                           "--model-uri", "models:/tiny-text@champion"]) == 0
    captured = capsys.readouterr()
    names = [line.split("\t")[0] for line in captured.out.splitlines()]
    assert names == ["great fun great film", "bad plot awful acting", "third"]  # one line each
    assert f"{reviews}: skipped 1 blank line(s): 3" in captured.err


def test_a_review_argument_that_is_not_utf8_is_read_as_a_file_line_is(store: Path, capsys):
    given = os.fsdecode(b"great \xe9\x80 film")  # as Python holds such a command-line argument
    assert sentiment.main(["predict", "fine", given, "--store-dir", str(store),
                           "--model-uri", "models:/tiny-text@champion"]) == 0
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [
        "fine", "great \ufffd film"]  # one U+FFFD for the broken sequence, as in a file
    assert "1 argument(s) not UTF-8, read with U+FFFD for the bytes: 2\n" in captured.err
    # control characters (a terminal's escape sequence, a binary file's NUL) are not printed
    assert sentiment.main(["predict", "ok \x1b[31mRED\x00\x7f \\x00", "--store-dir",
                           str(store), "--model-uri", "models:/tiny-text@champion"]) == 0
    assert capsys.readouterr().out.split("\t")[0] == "ok \\x1b[31mRED\\x00\\x7f \\\\x00"


def test_evaluating_a_folder_of_which_every_review_is_skipped_is_named(store: Path,
                                                                        tmp_path: Path, capsys):
    for label, name, text in (("neg", "1_1.txt", ""), ("pos", "2_9.txt", "<br /><br />")):
        (tmp_path / "aclImdb" / "test" / label).mkdir(parents=True)
        (tmp_path / "aclImdb" / "test" / label / name).write_text(text)
    assert sentiment.main(["evaluate", "--data-dir", str(tmp_path / "aclImdb"), "--store-dir",
                           str(store), "--model-uri", "models:/tiny-text@champion"]) == 2
    err = capsys.readouterr().err
    assert "test/neg/1_1.txt: skipped: empty review" in err
    assert (f"error: no input of {tmp_path / 'aclImdb'} could be evaluated: the reader left "
            "none") in err
    (tmp_path / "aclImdb" / "test" / "pos" / "3_8.txt").write_text("a great film")
    assert sentiment.main(["evaluate", "--data-dir", str(tmp_path / "aclImdb"), "--store-dir",
                           str(store), "--model-uri", "models:/tiny-text@champion"]) == 0
    capsys.readouterr()
    client = MlflowClient()  # the run names what the reader left out, as stderr did
    (run,) = client.search_runs([client.get_experiment_by_name("imdb-sentiment").experiment_id],
                                "tags.run_type = 'evaluation'")
    assert run.data.metrics["skipped_inputs"] == 2 and run.data.metrics["failed_inputs"] == 0
    assert "(0 could not be used; 2 skipped as training skips them)" in run.data.tags[
        "mlflow.note.content"]
    summary = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/data/summary.json")
    assert summary["skipped_inputs"] == [
        {"path": "test/neg/1_1.txt", "reason": "empty review"},
        {"path": "test/pos/2_9.txt", "reason": "no text outside HTML tags"}]


@pytest.mark.slow
def test_a_closed_pipe_ends_predict_quietly(store: Path, tmp_path: Path):
    """`predict ... | head -1`: the command stops at the closed pipe with the shell's status
    for it (141), no traceback (the output is larger than a pipe holds, so it meets the closed
    pipe while printing)."""
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("".join(f"a great film, number {n} of many reviews\n"
                               for n in range(5000)))
    command = (f"{sys.executable} -m pipelines.sentiment predict --file {reviews} --store-dir "
               f"{store} --model-uri models:/tiny-text@champion 2> {tmp_path / 'err'} | head -1;"
               " echo ${PIPESTATUS[0]}")
    done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    first, status = done.stdout.splitlines()
    assert first.startswith("a great film, number 0 of many reviews\t") and status == "141"
    assert "Traceback" not in (tmp_path / "err").read_text()


def test_names_in_messages_on_stderr_keep_each_message_on_one_line(store: Path, tmp_path: Path,
                                                                   capsys):
    """A newline or a terminal's escape sequence in a name is escaped in `error:` lines and
    in the notes about inputs, as on stdout."""
    odd = tmp_path / "a\nb\x1b[2J"
    assert sentiment.main(["evaluate", "--data-dir", str(odd), "--store-dir", str(store),
                           "--model-uri", "models:/tiny-text@champion"]) == 2
    assert capsys.readouterr().err.endswith(f"{tmp_path}/a\\nb\\x1b[2J\n")
    long_clip = write_wav(tmp_path / "two\nseconds.wav", tone(440, 2.0))
    assert speech.main(["predict", str(long_clip), "--store-dir", str(store),
                        "--model-uri", f"models:/{NAME}@champion"]) == 0
    assert capsys.readouterr().err.startswith(f"{tmp_path}/two\\nseconds.wav: 2.0 s long: ")
