from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile
from mlflow.tracking import MlflowClient

from benchmarks.streaming import trained_predictor
from benchmarks.suite import Options
from benchmarks.suite import main as benchmarks_main
from features.errors import ConfigError, DataError
from features.mfcc import MfccConfig
from features.speech_commands import COMMAND_WORDS, TWELVE_CLASS_LABELS, SplitConfig
from features.speech_data import evaluation_inputs, prepare_speech_data
from pipelines import cli, speech, tracking
from pipelines.request_bounds import NoInputColumns
from pipelines.speech import SpeechConfig


def small_args(data_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--store-dir", str(tmp_path / "mlruns"),
            "--cache-dir", str(tmp_path / "cache"), "--units", "8", "--depth", "1",
            "--dense-units", "0", "--epochs", "2", "--batch-size", "16", *extra]


def assert_same_metrics(store: Path, experiment: str) -> None:
    """The two trained models' runs in `experiment` logged the same test and loss metrics
    (tolerance 1e-6)."""
    tracking.connect(None, store)
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              "tags.pipeline != 'sentiment-pretrain'",  # the trained models'
                              order_by=["attributes.start_time ASC"])
    keep = ("test_", "val_loss", "loss", "model_val_accuracy")
    first, second = ({key: value for key, value in run.data.metrics.items()
                      if key.startswith(keep)} for run in runs)
    assert first.keys() == second.keys() and "test_accuracy" in first
    assert second == pytest.approx(first, abs=1e-6)


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        speech.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in SpeechConfig.option_fields().values():
        assert option.flag in text
    assert "(default: 12-class)" in text and "(default: 120)" in text


def test_run_end_to_end_on_a_small_folder(speech_dir: Path, tmp_path: Path, capsys):
    assert speech.main(small_args(speech_dir, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "registered        version 1 (the new champion" in out
    assert "/step" not in out  # Keras's epoch lines go to stderr: stdout is the summary alone

    tracking.connect(None, tmp_path / "mlruns")
    client = MlflowClient()
    version = client.get_model_version_by_alias("speech-commands", "champion")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["units"] == "8" and run.data.params["task"] == "12-class"
    assert {"test_accuracy", "test_macro_f1", "val_loss", "skipped_examples"} <= set(
        run.data.metrics)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "test_accuracy")) == 1
    # the logged model's page shows the run's step-0 figures: the test ones, no epoch's
    model_metrics = {m.key: m.value for m in client.get_logged_model(
        version.source.removeprefix("models:/")).metrics}
    assert model_metrics["test_accuracy"] == run.data.metrics["test_accuracy"]
    assert not {"loss", "accuracy", "val_accuracy"} & model_metrics.keys()
    # the second of the 2 epochs is averaged (--average-from 0.5): the model is that epoch's,
    # scored on validation once more
    assert run.data.metrics["averaged_epochs"] == 1
    assert run.data.metrics["model_val_accuracy"] == pytest.approx(
        client.get_metric_history(run.info.run_id, "val_accuracy")[-1].value, abs=1e-6)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/confusion_matrix.png", "plots/training_curves.png"}
    served = mlflow.pyfunc.load_model("models:/speech-commands@champion")
    clip = (speech_dir / "yes" / "0a1b2c3d_nohash_0.wav").read_bytes()
    answer = served.predict(pd.DataFrame({"audio": [clip, b"not audio"]}))
    assert answer.shape == (2, 1 + 12 + 1) and pd.isna(answer.loc[0, "error"])
    probabilities = answer.filter(like="probability_").iloc[0]
    assert len(probabilities) == 12
    assert answer.loc[0, "label"] == probabilities.idxmax().removeprefix("probability_")
    assert answer.filter(like="probability_").iloc[0].sum() == pytest.approx(1, abs=1e-5)
    assert pd.isna(answer.loc[1, "label"]) and "not decodable audio" in answer.loc[1, "error"]
    # columns the signature does not name are dropped by MLflow: the request is refused whole
    with pytest.raises(NoInputColumns, match=r"^the request holds none of the model's input "
                       r"columns \(audio, waveform, sample_rate\), or no rows$"):
        served.predict(pd.DataFrame({"text": [clip]}))
    assert served.predict(pd.DataFrame({"audio": pd.Series([], dtype=object)})).empty
    contexts = {tag.value for i in run.inputs.dataset_inputs for tag in i.tags
                if tag.key == "mlflow.data.context"}
    assert contexts == {"train", "validation", "test"}

    # predict: one line per clip; bad inputs get their own error and the rest an answer
    (tmp_path / "notes.wav").write_text("not audio")
    clip_path = speech_dir / "yes" / "0a1b2c3d_nohash_0.wav"
    tabbed = tmp_path / "take\t2.wav"  # a tab in a name is escaped: the line keeps 3 fields
    tabbed.write_bytes(clip_path.read_bytes())
    long = tmp_path / "long.wav"  # labelled by its first second, and named for it
    soundfile.write(long, np.tile(soundfile.read(clip_path)[0], 3), 16000)
    code = speech.main(["predict", str(clip_path), str(tmp_path / "missing.wav"),
                        str(tmp_path / "notes.wav"), str(tabbed), str(long), "--store-dir",
                        str(tmp_path / "mlruns")])
    printed = capsys.readouterr()
    assert code == 1
    first, second, third = (line.split("\t") for line in printed.out.strip().split("\n"))
    assert third[:2] == [str(long), first[1]]
    assert (f"{long}: 3.0 s long: labelled by its first clip's length (1 s by default; listen "
            "spots keywords in longer recordings)") in printed.err
    assert second[:2] == [f"{tmp_path}/take\\t2.wav", first[1]] and len(second) == 3
    name, label, probability = first
    assert name == str(clip_path) and label == answer.loc[0, "label"]
    assert float(probability) == pytest.approx(answer.loc[0, f"probability_{label}"], abs=1e-4)
    assert f"{tmp_path / 'missing.wav'}: error: cannot read the file" in printed.err
    assert f"{tmp_path / 'notes.wav'}: error: audio: not decodable audio" in printed.err

    # Same seed, data and config (augmented batches, dropout): features come from the cache,
    # here streamed from the cache file instead of loaded; the same batches as the first run's,
    # so the same model and the same metrics on CPU (tolerance 1e-6).
    assert speech.main([*small_args(speech_dir, tmp_path), "--in-memory-mb", "0"]) == 0
    streamed = capsys.readouterr().out
    assert "(from cache)" in streamed
    accuracy = [line for line in out.splitlines() if line.startswith("test accuracy")]
    assert accuracy and accuracy == [line for line in streamed.splitlines()
                                     if line.startswith("test accuracy")]
    assert_same_metrics(tmp_path / "mlruns", "speech-commands")


def test_missing_or_unusable_data_dir_is_a_clear_error_before_any_run(tmp_path: Path, capsys):
    code = speech.main(small_args(tmp_path / "absent", tmp_path))
    assert code == 2
    error = capsys.readouterr().err
    assert f"Speech Commands data folder not found: {tmp_path / 'absent'}" in error
    (tmp_path / "clip.wav").write_bytes(b"")  # a file given for the folder
    assert speech.main(small_args(tmp_path / "clip.wav", tmp_path)) == 2
    assert (f"Speech Commands data folder {tmp_path / 'clip.wav'} is not a folder"
            in capsys.readouterr().err)
    (tmp_path / "reviews" / "pos").mkdir(parents=True)  # a folder of another dataset
    (tmp_path / "reviews" / "pos" / "0_9.txt").write_text("A moving film.")
    assert speech.main(small_args(tmp_path / "reviews", tmp_path)) == 2
    assert (f"error: {tmp_path / 'reviews'}: no word folder holds audio clips"
            in capsys.readouterr().err)
    assert not (tmp_path / "mlruns").exists()  # no FAILED run left behind


@pytest.mark.slow
def test_real_data_trains_registers_and_promotes(shared_speech_dir: Path, tmp_path: Path):
    config = SpeechConfig.from_options(
        data_dir=str(shared_speech_dir), store_dir=str(tmp_path / "mlruns"),
        cache_dir=str(tmp_path / "cache"), epochs=4, units=48, depth=1, dense_units=0,
        patience=10)
    result = speech.run(config)
    client = MlflowClient()
    history = client.get_metric_history(result["run_id"], "loss")
    assert history[-1].value < history[0].value
    assert result["test_accuracy"] > 0.5  # chance is 1/12
    assert result["registered_version"] == "1" and result["champion"]
    assert str(client.get_model_version_by_alias("speech-commands", "champion").version) == "1"
    assert client.get_run(result["run_id"]).data.tags["champion"] == "True"


def test_environment_variables_set_the_cli_defaults(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("SPEECH_COMMANDS_DIR", str(tmp_path / "sc"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    args = cli.training_parser(speech.COMMANDS).parse_args([])
    assert args.data_dir == str(tmp_path / "sc")
    assert args.tracking_uri == "http://127.0.0.1:5999"
    # A config built in code is not changed by the environment (MLflow itself writes
    # MLFLOW_TRACKING_URI when a tracking URI is set).
    assert SpeechConfig().run.tracking_uri is None and SpeechConfig().source.data_dir is None


def test_training_seed_does_not_change_the_test_data(speech_dir: Path, tmp_path: Path):
    def digests(**options):
        config = SpeechConfig.from_options(data_dir=str(speech_dir), cache=False, **options)
        return prepare_speech_data(config.source, config.splits, config.features,
                                   waveforms=False).lineage.digests

    first = digests(seed=0)
    assert first == digests(seed=7)
    assert digests(data_seed=7)["test"] != first["test"]


def write_test_release(shared: Path, root: Path, per_class: int = 3) -> Path:
    """An official test-release layout from real clips: ten word folders, `_unknown_/` with
    `<word>_<speaker>_nohash_<n>.wav` names, `_silence_/` with noise excerpts."""
    for word in COMMAND_WORDS:
        (root / word).mkdir(parents=True)
        for path in sorted((shared / word).glob("*.wav"))[:per_class]:
            shutil.copy(path, root / word / path.name)
    (root / "_unknown_").mkdir()
    for word in ("bed", "cat", "dog"):
        path = sorted((shared / word).glob("*.wav"))[0]
        shutil.copy(path, root / "_unknown_" / f"{word}_{path.name}")
    (root / "_silence_").mkdir()
    noise, rate = soundfile.read(sorted((shared / "_background_noise_").glob("*.wav"))[0])
    for n in range(per_class):
        excerpt = noise[n * rate:(n + 1) * rate] * (0.5 ** n)
        soundfile.write(root / "_silence_" / f"noise_{n}.wav", np.asarray(excerpt), rate)
    return root


def test_a_test_release_is_evaluated_on_the_classes_of_the_model(shared_speech_dir: Path,
                                                                 tmp_path: Path):
    """A model trained without _unknown_ or _silence_ (or on other words) is evaluated on the
    folders of its classes, the others named."""
    release = write_test_release(shared_speech_dir, tmp_path / "release")
    everything = evaluation_inputs(str(release), SplitConfig(), MfccConfig(),
                                   TWELVE_CLASS_LABELS)
    assert len(everything.truth) == 36 and everything.layout == (
        "test release (one folder per class)")
    ten = evaluation_inputs(str(release), SplitConfig(), MfccConfig(), COMMAND_WORDS)
    assert sorted(set(ten.truth)) == sorted(COMMAND_WORDS) and len(ten.truth) == 30
    assert ten.layout == ("test release (one folder per class) without _silence_/, _unknown_/ "
                          "(6 clips): not classes of the model")
    assert ten.digest != everything.digest
    with pytest.raises(DataError, match="no clip of the model's classes \\(bed, bird\\)"):
        evaluation_inputs(str(release), SplitConfig(), MfccConfig(), ("bed", "bird"))


@pytest.mark.slow
def test_evaluate_any_model_on_both_layouts(speech_dir: Path, shared_speech_dir: Path,
                                            tmp_path: Path, capsys):
    store = tmp_path / "mlruns"
    # a split option other than its default, which evaluate takes from the training run
    assert speech.main(small_args(speech_dir, tmp_path, "--unknown-pct", "30")) == 0
    release = write_test_release(shared_speech_dir, tmp_path / "release")
    (release / "yes" / "broken.wav").write_bytes(b"RIFF not really")
    capsys.readouterr()
    code = speech.main(["evaluate", "--data-dir", str(release), "--store-dir", str(store)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "accuracy" in printed.out and "macro-F1" in printed.out
    assert "confusion matrix (rows: true, columns: predicted)" in printed.out
    assert "failed inputs     1" in printed.out and "broken.wav: error: audio:" in printed.err

    tracking.connect(None, store)
    client = MlflowClient()
    version = client.get_model_version_by_alias("speech-commands", "champion")
    evaluation = client.search_runs(
        [client.get_experiment_by_name("speech-commands").experiment_id],
        "tags.run_type = 'evaluation'")[0]
    assert evaluation.data.tags["evaluated_version"] == str(version.version)
    assert evaluation.info.run_name == f"evaluate-speech-commands-v{version.version}"
    description = evaluation.data.tags["mlflow.note.content"].split("  \n")
    assert description[0] == f"**evaluate-speech-commands-v{version.version}**"
    assert description[1].startswith("accuracy ") and "of `models:/speech-commands@champion`" in (
        description[1])
    assert description[2] == f"on 36 examples of `{release}` (1 could not be used)"
    assert evaluation.data.metrics["evaluated_examples"] == 10 * 3 + 3 + 3
    assert f"evaluation.{evaluation.info.run_id}" in client.get_model_version(
        "speech-commands", version.version).tags

    # the training layout: its test split, composed as the model's training run composed it
    # (the same digest as that run's test split)
    code = speech.main(["evaluate", "--data-dir", str(speech_dir), "--store-dir", str(store),
                        "--model-uri", f"models:/speech-commands/{version.version}"])
    assert code == 0 and "failed inputs     0" in capsys.readouterr().out
    on_training_layout = client.search_runs(
        [client.get_experiment_by_name("speech-commands").experiment_id],
        "tags.run_type = 'evaluation'", order_by=["attributes.start_time DESC"])[0]
    evaluated = on_training_layout.inputs.dataset_inputs[0].dataset.digest
    assert evaluated == version.tags["test_data_digest"]
    # a folder of which nothing can be used: named, exit 2, no evaluation run
    for clip in release.rglob("*.wav"):
        clip.write_bytes(b"RIFF not really")
    runs = len(client.search_runs([on_training_layout.info.experiment_id]))
    code = speech.main(["evaluate", "--data-dir", str(release), "--store-dir", str(store)])
    err = capsys.readouterr().err
    assert code == 2 and f"error: no input of {release} could be evaluated: all 37 failed" in err
    assert len(client.search_runs([on_training_layout.info.experiment_id])) == runs

    # the benchmark sections that score the champion read the default split: they refuse it
    with pytest.raises(ConfigError, match=r"champion \(v1\) was trained on other splits than "
                       r"the default \(--unknown-pct 30.0\)"):
        trained_predictor(Options(shared_speech_dir.parent, True, tmp_path, store))
    capsys.readouterr()
    assert benchmarks_main(["--only", "noise", "--quick", "--store-dir", str(store),
                            "--work-dir", str(tmp_path / "bench")]) == 2
    assert "error: noise: " in capsys.readouterr().err


def test_tutorial_cnn_reference_is_logged_beside_the_recurrent_runs(speech_dir: Path,
                                                                     tmp_path: Path, capsys):
    args = small_args(speech_dir, tmp_path, "--model", "tutorial-cnn", "--epochs", "1")
    assert speech.main(args) == 0
    out = capsys.readouterr().out
    assert "model             tutorial-cnn" in out
    tracking.connect(None, tmp_path / "mlruns")
    client = MlflowClient()
    version = client.get_model_version_by_alias("speech-commands", "champion")
    run = client.get_run(version.run_id)
    assert run.data.params["model"] == "tutorial-cnn"
    assert client.get_experiment(run.info.experiment_id).name == "speech-commands"
    served = mlflow.pyfunc.load_model("models:/speech-commands@champion")
    clip = (speech_dir / "yes" / "0a1b2c3d_nohash_0.wav").read_bytes()
    answer = served.predict(pd.DataFrame({"audio": [clip]}))
    assert answer.filter(like="probability_").iloc[0].sum() == pytest.approx(1, abs=1e-5)
    assert answer.loc[0, "label"] == answer.filter(like="probability_").iloc[0].idxmax()[
        len("probability_"):]

