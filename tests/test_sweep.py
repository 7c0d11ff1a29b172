"""`--sweep N`: Optuna trials as nested MLflow runs, the best one through the champion rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution, IntDistribution

from pipelines import lifecycle, sentiment, speech, tracking
from pipelines.errors import ConfigError
from pipelines.sentiment import SentimentConfig
from pipelines.speech import SpeechConfig
from pipelines.sweep import run_sweep


def test_speech_sweep_nests_trials_and_registers_the_best(speech_dir: Path, tmp_path: Path,
                                                          capsys, caplog):
    store = tmp_path / "mlruns"
    args = ["--data-dir", str(speech_dir), "--store-dir", str(store), "--cache-dir",
            str(tmp_path / "cache"), "--epochs", "1", "--batch-size", "16", "--sweep", "2",
            "--run-name", "tiny", "--units", "8"]
    caplog.set_level("WARNING", "pipelines.sweep")
    assert speech.main(args) == 0
    # a searched option given on the command line is named as not used
    assert any(message.startswith("--sweep searches front_end, pooling, units,")
               and message.endswith(": --units 8 not used") for message in caplog.messages)
    out, err = capsys.readouterr()
    assert "Downloading artifacts" not in err  # no MLflow progress bars
    assert "sweep             2 trials" in out and "best parameters   front_end=" in out
    assert "registered        version 1 (the new champion" in out

    tracking.connect(None, store)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("speech-commands").experiment_id
    parent = client.search_runs([experiment], "tags.pipeline = 'speech-sweep'")[0]
    trials = client.search_runs(
        [experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(trials) == 2
    assert {run.info.run_name for run in trials} == {"tiny-trial0", "tiny-trial1"}
    assert parent.info.run_name == "tiny"
    assert all(run.data.params["sweep"] == "0" and run.data.params["register"] == "False"
               for run in trials)
    # the search space and every trial's score are on the parent, whose parameters are the
    # fixed part of the config (not the command line's value of a searched option)
    assert parent.data.params["space.units"] == "32 to 128 step 32"
    assert "units" not in parent.data.params and parent.data.params["epochs"] == "1"
    assert parent.data.params["space.front_end"] == "one of none, conv"
    scores = client.get_metric_history(parent.info.run_id, "trial_val_accuracy")
    assert [point.step for point in scores] == [0, 1]
    # the best trial (Optuna's: the first of any tied for the highest score)
    best_run = {run.info.run_name: run for run in trials}[
        f"tiny-trial{parent.data.tags['best_trial']}"]
    assert parent.data.tags["best_trial_run_id"] == best_run.info.run_id
    assert best_run.data.metrics["model_val_accuracy"] == max(
        run.data.metrics["model_val_accuracy"] for run in trials)
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(
        best_run.data.metrics["model_val_accuracy"])
    # the per-epoch curve keeps one point per epoch (the kept model's score has its own name)
    assert len(client.get_metric_history(best_run.info.run_id, "val_accuracy")) == 1
    searched = {key.removeprefix("space.") for key in parent.data.params
                if key.startswith("space.")}
    assert {key.removeprefix("best.") for key in parent.data.params
            if key.startswith("best.")} == searched
    for name in searched:
        assert parent.data.params[f"best.{name}"] == best_run.data.params[name]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/search_space.json", "sweep/trials.json"}
    space = json.loads(Path(client.download_artifacts(
        parent.info.run_id, "sweep/search_space.json", str(tmp_path))).read_text())
    assert space["units"] == {"name": "IntDistribution", "attributes": {
        "log": False, "step": 32, "low": 32, "high": 128}}  # Optuna's own JSON form
    table = json.loads(Path(client.download_artifacts(
        parent.info.run_id, "sweep/trials.json", str(tmp_path))).read_text())
    assert len(table["data"]) == 2 and "params_units" in table["columns"]
    # one registered version: the best trial's model, champion by the usual rule
    versions = client.search_model_versions("name = 'speech-commands'")
    assert [version.run_id for version in versions] == [best_run.info.run_id]
    assert str(client.get_model_version_by_alias("speech-commands", "champion").version) == "1"
    # the registered model's description names the classes (the parent run reads no data)
    description = client.get_registered_model("speech-commands").description
    assert "**Classes** (12): `_silence_`, `_unknown_`, `yes`" in description


@pytest.mark.parametrize("task", [speech, sentiment])
def test_a_sweep_over_unusable_data_stops_before_its_run_opens(task, tmp_path: Path, capsys):
    """As a single run does: the data is read before the sweep's run, so none is left FAILED."""
    folder = tmp_path / "data"
    (folder / "train" / "pos").mkdir(parents=True)  # no word folders, no reviews to train on
    store = tmp_path / "mlruns"
    assert task.main(["--data-dir", str(folder), "--store-dir", str(store), "--sweep", "2",
                      "--pretrain", "never"][:None if task is sentiment else -2]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not store.exists()


def test_a_tfidf_sweep_searches_the_baselines_own_options(imdb_dir: Path, tmp_path: Path):
    store = str(tmp_path / "mlruns")
    config = SentimentConfig.from_options(data_dir=str(imdb_dir), store_dir=store, sweep=3,
                                          validation_pct=25, model="tfidf-logreg")
    sentiment.run(config)
    tracking.connect(None, store)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("imdb-sentiment").experiment_id
    parent = client.search_runs([experiment], "tags.pipeline = 'sentiment-sweep'")[0]
    assert {name for name in parent.data.params if name.startswith("space.")} == {
        "space.max_ngram", "space.min_df", "space.logreg_c"}
    trials = client.search_runs(
        [experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len({run.data.params["logreg_c"] for run in trials}) == 3  # each trial its own C


def test_a_tfidf_trial_whose_min_df_no_word_meets_fails_that_trial_only(imdb_dir: Path,
                                                                        tmp_path: Path):
    config = SentimentConfig.from_options(data_dir=str(imdb_dir), store_dir=str(
        tmp_path / "mlruns"), sweep=1, validation_pct=25, model="tfidf-logreg")  # 30 reviews
    with pytest.raises(ConfigError, match="all 1 trials failed; the last: no word n-gram is in "
                       "--min-df 30 of the 30 training reviews"):
        run_sweep(config, sentiment.run, {"min_df": IntDistribution(30, 30)}, "sentiment")


def test_a_trial_whose_sampled_options_do_not_fit_together_fails_that_trial_only(
        tmp_path: Path):
    config = SentimentConfig.from_options(data_dir=str(tmp_path), store_dir=str(
        tmp_path / "mlruns"), sweep=1, weight_decay=150)  # 150 x the default 3e-3: fits
    with pytest.raises(ConfigError, match=r"all 1 trials failed; the last: learning_rate x "
                       r"weight_decay must be under 1 .*, got 0.01 x 150"):
        run_sweep(config, sentiment.run, {"learning_rate": FloatDistribution(0.01, 0.01)},
                  "sentiment")


@pytest.mark.parametrize(("config", "space"), [
    (SpeechConfig(), speech.search_space("recurrent")),
    (SpeechConfig(), speech.search_space("tutorial-cnn")),
    (SentimentConfig(), sentiment.search_space("recurrent")),
    (SentimentConfig(), sentiment.search_space("tfidf-logreg")),
])
def test_each_search_space_names_options_of_its_task(config, space):
    assert space and set(space) <= set(config.options())


def test_the_tutorial_cnn_sweep_leaves_its_fixed_shape_alone():
    assert set(speech.search_space("tutorial-cnn")) == {
        "learning_rate", "noise_volume", "time_mask_frames", "freq_mask_bins"}


def test_sweep_rejects_a_space_naming_unknown_options(tmp_path: Path):

    config = SpeechConfig.from_options(store_dir=str(tmp_path / "mlruns"), sweep=2)
    with pytest.raises(ValueError, match="unknown options: unitz"):
        run_sweep(config, speech.run, {"unitz": IntDistribution(1, 2)}, "speech")
    assert not (tmp_path / "mlruns").exists()


def test_an_interrupted_trial_says_the_sweep_is_run_again_not_resumed(tmp_path: Path, caplog):
    config = SpeechConfig.from_options(store_dir=str(tmp_path / "mlruns"),
                                       checkpoint_dir=str(tmp_path / "checkpoints"))
    caplog.set_level("WARNING", "pipelines.lifecycle")
    with (tracking.open_run("speech-commands", tracking_uri=None,
                            store_dir=config.run.store_dir) as sweep_id,
          pytest.raises(KeyboardInterrupt), lifecycle.tracked_run(config, "speech") as run):
        (run.checkpoint / "epoch-0000").mkdir(parents=True)  # an epoch it had saved
        raise KeyboardInterrupt
    [warning] = [message for message in caplog.messages if "interrupted" in message]
    assert warning == (f"run {run.run_id}, a trial of sweep run {sweep_id}, interrupted: a "
                       "sweep is not continued by --resume; run the sweep again")
    # its checkpoint, which nothing can resume, is not left on disk
    assert not run.checkpoint.exists()
    # the sweep's own run, stopped after its trials (choosing or registering): the same advice
    caplog.clear()
    with pytest.raises(KeyboardInterrupt), lifecycle.tracked_run(config, "speech-sweep") as run:
        raise KeyboardInterrupt
    assert caplog.messages == [f"sweep run {run.run_id} interrupted: a sweep is not continued "
                               "by --resume; run the sweep again"]


def test_resuming_a_sweep_or_one_of_its_trials_says_to_run_the_sweep_again(tmp_path: Path,
                                                                             capsys):
    store = tmp_path / "mlruns"
    with pytest.raises(KeyboardInterrupt), tracking.open_run(
            "speech-commands", tracking_uri=None, store_dir=store,
            tags={"pipeline": "speech-sweep"}) as sweep, tracking.open_run(
            "speech-commands", tracking_uri=None, store_dir=store,
            tags={"pipeline": "speech"}) as trial:  # nested in the sweep's run
        raise KeyboardInterrupt
    for run_id, what in ((trial, f"a trial of sweep {sweep}"), (sweep, "a sweep")):
        assert speech.main(["--resume", run_id, "--store-dir", str(store)]) == 2
        assert capsys.readouterr().err == (f"error: --resume {run_id}: that run is {what}: a "
                                           "sweep is not continued by --resume; run the sweep "
                                           "again\n")
    MlflowClient().set_tag(trial, "mlflow.parentRunId", "0" * 32)  # its sweep gone from the store
    assert speech.main(["--resume", trial, "--store-dir", str(store)]) == 2
    assert "the run keeps no checkpoint" in capsys.readouterr().err  # trials keep none
