"""`export --format tflite`: a logged waveform model as TensorFlow Lite, run with its
interpreter on real clips against the Keras model, in each quantisation."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from features.audio import decode_clip
from features.errors import DataError
from features.mfcc import MfccConfig, feature_shape
from features.speech_commands import (
    TWELVE_CLASS_LABELS,
    Example,
    SplitConfig,
    load_speech_commands,
)
from features.speech_features import ExampleDecoder
from pipelines import speech, tracking
from pipelines.export import (
    TfliteClassifier,
    calibration_clips,
    convert,
    export_tag,
    front_end_nodes,
    training_draw,
    write_whole,
)
from pipelines.serving import SpeechPredictor
from tests.builders import frame_classifier
from tests.datasets import SHARED_DATA, make_speech_commands, tone, write_wav

LABELS = TWELVE_CLASS_LABELS


WORDS = ("yes", "no", "stop")


def word_clips() -> tuple[np.ndarray, np.ndarray]:
    """Eight real clips of each of WORDS, and their label indices."""
    folder = SHARED_DATA / "speech_commands"
    clips = np.stack([decode_clip(path, MfccConfig().audio) for word in WORDS
                      for path in sorted((folder / word).glob("*.wav"))[:8]])
    return clips, np.repeat([LABELS.index(word) for word in WORDS], 8)


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> tuple[Path, str, object]:
    """A small waveform model (conv front end, so 49 steps to unroll; Bi-GRU) logged in a store
    of its own, fitted (seeded, a few seconds) to tell `word_clips` apart: a model whose label
    does not depend on its input would agree with any quantised file."""
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("export")
    mfcc = MfccConfig()
    model = speech.waveform_classifier(frame_classifier(
        feature_shape(mfcc), len(LABELS), mean=np.zeros(mfcc.n_mfcc),
        variance=np.full(mfcc.n_mfcc, 100.0), front_end="conv", units=8, depth=1), mfcc)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(*word_clips(), epochs=60, batch_size=8, verbose=0)
    model.save(folder / "classifier.keras")
    config = SpeechPredictor(model, LABELS, mfcc).save_config(folder / "config.json")
    store = folder / "mlruns"
    with tracking.open_run("export", tracking_uri=None, store_dir=store):
        mlflow.log_params({"data_seed": 3, "test_pct": 12})  # the run's split options
        uri = tracking.log_speech_classifier(folder / "classifier.keras", config, LABELS,
                                             speech.serving_input_example(16000))
    return store, uri, model


@pytest.mark.parametrize("quantize", ["none", "dynamic", "int8"])
def test_tflite_file_labels_real_clips_as_the_keras_model(
        logged, quantize: str, tmp_path: Path, shared_speech_dir: Path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="pipelines.export")
    store, uri, model = logged
    out = tmp_path / f"speech-{quantize}.tflite"
    replace = []
    if quantize == "none":  # an earlier file of that name, replaced only when asked
        out.write_bytes(b"an earlier export")
        replace = ["--overwrite"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert speech.main(["export", "--format", "tflite", "--quantize", quantize,
                            "--model-uri", uri, "--store-dir", str(store), "--out", str(out),
                            "--data-dir", str(shared_speech_dir), "--calibration-clips", "50",
                            *replace]) == 0
    # int8's calibration runs TensorFlow's deprecated interpreter; users are not told to stop
    assert not [w for w in caught if "tf.lite.Interpreter is deprecated" in str(w.message)]
    labels_file = tmp_path / f"speech-{quantize}_labels.txt"
    assert f"{out}\t" in capsys.readouterr().out
    # int8 calibrates on the training split composed by the model's run's split options
    calibrated = "training split, composed with run" in caplog.text
    assert calibrated == (quantize == "int8")
    assert not calibrated or "(validation 10 %, test 12 %, data seed 3)" in caplog.text
    assert labels_file.read_text().splitlines() == list(LABELS)  # the output's order
    clips, _ = word_clips()
    expected = model.predict(clips, verbose=0)
    assert len(set(expected.argmax(1))) >= 3  # labels that follow the input
    got = TfliteClassifier(out.read_bytes())(clips)
    assert got.shape == expected.shape and np.allclose(got.sum(1), 1, atol=0.05)
    difference = np.abs(got - expected).max()
    agreement = (got.argmax(1) == expected.argmax(1)).mean()
    if quantize == "none":  # the same maths, the DFT by matrix products
        assert difference < 1e-4 and agreement == 1
    elif quantize == "int8":  # 1.0 and 0.034 when written
        assert difference < 0.1 and agreement >= 0.9, (difference, agreement)
        # the classifier's weights are int8; the MFCC stage and the normalisation are not
        tensors = [(t["name"], np.dtype(t["dtype"])) for t in
                   Interpreter(model_content=out.read_bytes()).get_tensor_details()]
        for layer in ("mfcc_layer", "/normalize"):
            assert not [name for name, kind in tensors if layer in name and kind == np.int8]
        for layer in ("/conv_1", "/conv_2", "/bi_gru_", "/probabilities"):
            assert [name for name, kind in tensors if layer in name and kind == np.int8], layer
    else:  # dynamic quantises the MFCC stage too, which moves labels (0.83 when written)
        assert agreement >= 0.6, agreement
    run_id = mlflow.models.get_model_info(uri).run_id
    logged_files = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "tflite")}
    assert {f"tflite/{out.name}", f"tflite/{labels_file.name}"} <= logged_files
    # the run says how each file was made
    how = mlflow.MlflowClient().get_run(run_id).data.tags[f"tflite.{out.name}"]
    assert how == f"--quantize {quantize}, 16000 samples at 16000 Hz in" + (
        f", calibrated on 50 training clips of {shared_speech_dir.resolve()}"
        if calibrated else "")


def test_export_never_replaces_a_file_unasked(logged, tmp_path: Path, capsys):
    store, uri, _ = logged
    out, labels_file = tmp_path / "mine.tflite", tmp_path / "mine_labels.txt"
    for existing in (out, labels_file):
        existing.write_text("the user's own")
        with pytest.raises(SystemExit) as refused:  # before the model is loaded
            speech.main(["export", "--model-uri", uri, "--store-dir", str(store), "--out",
                         str(out)])
        assert refused.value.code == 2
        assert f"{existing} exists already: pass another --out, or --overwrite to replace" \
            in capsys.readouterr().err
        assert existing.read_text() == "the user's own"
        existing.unlink()
    with pytest.raises(SystemExit) as refused:  # a folder is no file to write
        speech.main(["export", "--model-uri", uri, "--store-dir", str(store), "--out",
                     str(tmp_path), "--overwrite"])
    assert refused.value.code == 2
    assert f"--out {tmp_path}: {tmp_path} is a folder: name a file to write" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # a folder no one can write in, root included
        speech.main(["export", "--model-uri", uri, "--store-dir", str(store), "--out",
                     "/proc/x.tflite"])
    assert refused.value.code == 2 and "--out folder /proc is not writable" in (
        capsys.readouterr().err)
    # nor a file of the same name logged on the version's run, from another folder
    first, second = tmp_path / "a" / "logged.tflite", tmp_path / "b" / "logged.tflite"
    for folder in (first.parent, second.parent):
        folder.mkdir()
    assert speech.main(["export", "--model-uri", uri, "--store-dir", str(store), "--out",
                        str(first)]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # before converting
        speech.main(["export", "--model-uri", uri, "--store-dir", str(store), "--out",
                     str(second)])
    assert refused.value.code == 2
    assert "holds tflite/logged.tflite and tflite/logged_labels.txt already: name --out " \
        "otherwise, or pass --overwrite to replace" in capsys.readouterr().err
    assert not second.exists()


def test_export_refuses_before_converting_what_it_could_not_write_or_log(logged,
                                                                         tmp_path: Path, capsys):
    store, uri, _ = logged
    for out, message in (
            (tmp_path / "link.tflite", "link.tflite exists already"),  # a link to nothing
            (tmp_path / "esc\x1b[31m.tflite", "esc\\x1b[31m.tflite exists already"),
            (f"{tmp_path / 'new'}/", "new is a folder: name a file to write"),
            (tmp_path / f"{'z' * 250}.tflite", "File name too long (")):
        if "link" in str(out):
            out.symlink_to(tmp_path / "nothing")
        elif "esc" in str(out):
            out.write_text("the user's own")
        with pytest.raises(SystemExit) as refused:
            speech.main(["export", "--model-uri", uri, "--store-dir", str(store), "--out",
                         str(out)])
        assert refused.value.code == 2 and message in capsys.readouterr().err
    assert (tmp_path / "link.tflite").is_symlink() and not (tmp_path / "new").exists()
    # a version whose run is deleted: the files could not be logged on it
    folder = store.parent
    with tracking.open_run("export", tracking_uri=None, store_dir=store) as run_id:
        deleted = tracking.log_speech_classifier(folder / "classifier.keras",
                                                 folder / "config.json", LABELS,
                                                 speech.serving_input_example(16000))
    mlflow.MlflowClient().delete_run(run_id)
    assert speech.main(["export", "--model-uri", deleted, "--store-dir", str(store), "--out",
                        str(tmp_path / "x.tflite")]) == 2
    assert f"the run that logged it, {run_id}, is deleted" in capsys.readouterr().err
    assert not (tmp_path / "x.tflite").exists()


def test_an_export_that_fails_part_way_leaves_every_file_as_it_was(tmp_path: Path):
    out, labels_file = tmp_path / "mine.tflite", tmp_path / "gone" / "mine_labels.txt"
    out.write_bytes(b"the user's own")
    with pytest.raises(FileNotFoundError):  # the second file's folder went away
        write_whole({out: b"new model", labels_file: b"yes\nno\n"})
    assert out.read_bytes() == b"the user's own"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.tflite"]  # no partial file
    labels_file.parent.mkdir()
    write_whole({out: b"new model", labels_file: b"yes\nno\n"})
    assert (out.read_bytes(), labels_file.read_bytes()) == (b"new model", b"yes\nno\n")
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "gone", "mine.tflite", "mine_labels.txt"]
    longest = tmp_path / ("m" * 255)  # as long as a file name can be
    write_whole({longest: b"model"})
    assert longest.read_bytes() == b"model"


def test_the_ops_int8_leaves_in_float_are_found_by_name(logged):
    """The ops named for int8 to leave in float are the MFCC stage and the normalisation,
    never the convolutions, the recurrent layers or the head."""
    nodes = front_end_nodes(convert(logged[2], "none"))
    for layer in ("/mfcc_layer", "/normalize"):
        assert any(layer in node for node in nodes), layer
    assert not [node for node in nodes
                if any(layer in node for layer in ("/conv_1", "/conv_2", "/bi_gru_",
                                                   "/probabilities"))]


def test_int8_without_calibration_clips_or_an_out_folder_is_refused(logged, tmp_path: Path,
                                                                     capsys, monkeypatch):
    store, uri, _ = logged
    monkeypatch.delenv("SPEECH_COMMANDS_DIR", raising=False)
    with pytest.raises(SystemExit) as refused:  # before the model is loaded
        speech.main(["export", "--quantize", "int8", "--model-uri", uri, "--store-dir",
                     str(store), "--out", str(tmp_path / "x.tflite")])
    assert refused.value.code == 2
    assert "--quantize int8 calibrates on real clips: pass --data-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        speech.main(["export", "--quantize", "int8", "--model-uri", uri, "--store-dir",
                     str(store), "--data-dir", str(tmp_path), "--calibration-clips", "0"])
    assert refused.value.code == 2
    assert "--calibration-clips must be at least 1, not 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # checked before converting, not at the end
        speech.main(["export", "--model-uri", uri, "--store-dir", str(store), "--out",
                     str(tmp_path / "missing" / "x.tflite")])
    assert refused.value.code == 2
    assert f"there is no folder {tmp_path / 'missing'}" in capsys.readouterr().err


def test_int8_calibrates_on_training_clips_only(logged, shared_speech_dir: Path):
    """The quantiser never sees a validation or test clip: each calibration clip is one of the
    training split's (a word or a `_silence_` window), drawn across its labels."""
    predictor = SpeechPredictor(logged[2], LABELS, MfccConfig())
    clips = calibration_clips(str(shared_speech_dir), predictor, SplitConfig(), count=60)
    assert clips.shape == (60, 16000)
    data = load_speech_commands(shared_speech_dir, SplitConfig(), predictor.spec)
    rows = {}
    for split, examples in data.examples.items():
        decoded = ExampleDecoder(examples, shared_speech_dir, predictor.spec)
        for example, row in zip(examples, decoded.chunk(0, len(examples)).waveforms,
                                strict=True):
            rows.setdefault(row.tobytes(), set()).add((split, example.label))
    drawn = [rows[clip.tobytes()] for clip in clips]
    assert all({split for split, _ in found} == {"train"} for found in drawn)
    assert len({label for found in drawn for _, label in found}) >= 8


def test_int8_calibration_follows_the_split_options_given(logged, tmp_path: Path):
    """Without split lists a clip's split follows its speaker's hash and the shares: the clips
    calibrated on are the training split of the options given (export passes the model's run's),
    not the default options' training split."""
    folder = make_speech_commands(tmp_path / "sc", with_lists=False, clips_per_speaker=2)
    predictor = SpeechPredictor(logged[2], LABELS, MfccConfig())
    splits = SplitConfig(validation_pct=30, test_pct=30)
    examples = load_speech_commands(folder, splits, predictor.spec).examples
    held_out = {e.path for split in ("validation", "test") for e in examples[split]}
    default_train = load_speech_commands(folder, SplitConfig(), predictor.spec).examples["train"]
    assert held_out & {e.path for e in default_train}  # the default would calibrate on them
    train = examples["train"]
    rows = {row.tobytes() for row in
            ExampleDecoder(train, folder, predictor.spec).chunk(0, len(train)).waveforms}
    clips = calibration_clips(str(folder), predictor, splits, count=len(train))
    assert len(clips) == len(train) and all(clip.tobytes() in rows for clip in clips)


def test_int8_calibration_says_when_the_training_split_is_short_or_empty(
        logged, tmp_path: Path, caplog):
    folder = make_speech_commands(tmp_path / "sc", with_lists=False)
    predictor = SpeechPredictor(logged[2], LABELS, MfccConfig())
    train = load_speech_commands(folder, SplitConfig(), predictor.spec).examples["train"]
    with caplog.at_level("WARNING", logger="pipelines.export"):
        clips = calibration_clips(str(folder), predictor, SplitConfig(), count=len(train) + 5)
    assert len(clips) == len(train)
    assert (f"its training split holds {len(train)} clips, fewer than the {len(train) + 5} "
            "asked to calibrate --quantize int8: calibrating on all of them") in caplog.text
    with pytest.raises(DataError, match="its training split .* holds no clip to calibrate"):
        calibration_clips(str(folder), predictor,
                          SplitConfig(validation_pct=50, test_pct=50), count=10)


def test_a_run_tag_names_any_file_it_may_be_given():
    assert export_tag("speech-int8.tflite") == "tflite.speech-int8.tflite"
    assert export_tag("a:b?c(1).tflite").startswith("tflite.a_b_c_1_.tflite.")
    assert export_tag("a+b.tflite") != export_tag("a_b.tflite") == "tflite.a_b.tflite"
    long = [export_tag("x" * 300 + end) for end in (".tflite", "-int8.tflite")]
    assert len(long[0]) == len(long[1]) == 250 and long[0] != long[1]  # MLflow's longest key


def test_calibration_leaves_out_clips_that_do_not_decode_and_says_so(tmp_path: Path, caplog):
    spec = MfccConfig().audio
    write_wav(tmp_path / "yes" / "a.wav", tone(440))
    write_wav(tmp_path / "no" / "b.wav", tone(300))
    (tmp_path / "no" / "broken.wav").write_bytes(b"not audio")
    train = [Example("yes", "yes/a.wav"), Example("no", "no/broken.wav"),
             Example("no", "no/b.wav")]
    with caplog.at_level("WARNING", logger="pipelines.export"):
        clips = training_draw(train, tmp_path, spec, count=3)
    assert clips.shape == (2, 16000)
    assert "1 of the 3 calibration clips drawn did not decode, calibrating on 2" in caplog.text
    assert "broken.wav" in caplog.text
    (tmp_path / "yes" / "a.wav").write_bytes(b"")
    (tmp_path / "no" / "b.wav").write_bytes(b"RIFF")
    with pytest.raises(DataError, match="no training clip decodes"):
        training_draw(train, tmp_path, spec, count=3)
