from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines import cli, sentiment, speech, tracking
from pipelines.sentiment import SentimentConfig
from tests.test_speech_pipeline import assert_same_metrics


def small_args(data_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--store-dir", str(tmp_path / "mlruns"),
            "--validation-pct", "25", "--units", "8", "--embedding-dim", "8",
            "--vocabulary-size", "200", "--sequence-length", "32", "--buckets", "2",
            "--epochs", "2", "--batch-size", "8", "--word-vector-epochs", "1", *extra]


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sentiment.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in SentimentConfig.option_fields().values():
        assert option.flag in text
    assert "(default: 20000)" in text and "{recurrent,tfidf-logreg}" in text


def test_run_end_to_end_logs_registers_and_serves_raw_text(imdb_dir: Path, tmp_path: Path,
                                                            capsys):
    assert sentiment.main(small_args(imdb_dir, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "test ROC-AUC" in out and "registered        version 1 (the new champion" in out

    tracking.connect(None, tmp_path / "mlruns")
    client = MlflowClient()
    version = client.get_model_version_by_alias("imdb-sentiment", "champion")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["sequence_length"] == "32" and run.data.params["model"] == "recurrent"
    assert {"test_accuracy", "test_roc_auc", "val_loss", "vocabulary_size"} <= set(
        run.data.metrics)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2]
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {
        "aclImdb-train", "aclImdb-validation", "aclImdb-test"}
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/roc_curve.png", "plots/confusion_matrix.png"} <= plots
    vocabulary = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/vocabulary.txt")
    assert vocabulary.split("\n")[:2] == ["", "[UNK]"] and "great" in vocabulary
    assert version.tags["test_data_digest"] and version.tags["test_roc_auc"]
    # the version's page names each branch's accuracy alone, as the run's does
    assert f"ngram_test_accuracy **{run.data.metrics['ngram_test_accuracy']:.4f}**" in (
        version.description) and "recurrent_test_accuracy **" in version.description

    model = mlflow.pyfunc.load_model("models:/imdb-sentiment@champion")
    assert model.metadata.signature.inputs.input_names() == ["text"]
    answer = model.predict(pd.DataFrame({"text": ["Wonderful, moving, superb!", "   ",
                                                  "Awful and boring."]}))
    assert list(answer.columns) == ["label", "probability_neg", "probability_pos", "error"]
    usable = answer.drop(index=1)
    assert set(usable["label"]) <= {"neg", "pos"} and usable["error"].isna().all()
    assert ((usable["probability_neg"] + usable["probability_pos"] - 1).abs() < 1e-5).all()
    assert answer.loc[1, "error"] == "text: expected a non-empty review string"

    reviews = tmp_path / "reviews.txt"
    reviews.write_text("Awful and boring.\n\nA superb, moving film with a great plot and cast\n")
    code = sentiment.main(["predict", "Wonderful, moving, superb!", " ", "--file", str(reviews),
                           "--store-dir", str(tmp_path / "mlruns")])
    printed = capsys.readouterr()
    assert code == 1
    lines = [line.split("\t") for line in printed.out.strip().split("\n")]
    assert [line[0] for line in lines] == ["Wonderful, moving, superb!", "Awful and boring.",
                                           "A superb, moving film with a great pl..."]
    assert lines[0][1] == answer.loc[0, "label"] and all(line[1] in ("neg", "pos")
                                                         for line in lines)
    assert ": error: text: expected a non-empty review string" in printed.err
    assert f"{reviews}: skipped 1 blank line(s): 2\n" in printed.err  # in the file: counted

    # the same seed, data and config (bucketing and the n-gram branch included): the same
    # metrics on CPU
    assert sentiment.main(small_args(imdb_dir, tmp_path)) == 0
    assert_same_metrics(tmp_path / "mlruns", "imdb-sentiment")


def test_baseline_is_logged_beside_and_registered_only_when_it_wins(imdb_dir: Path,
                                                                     tmp_path: Path):
    store = str(tmp_path / "mlruns")
    config = SentimentConfig.from_options(
        data_dir=str(imdb_dir), store_dir=store, validation_pct=25, model="tfidf-logreg", min_df=1)
    first = sentiment.run(config)
    assert first["registered_version"] == "1" and first["champion"]  # no champion yet
    assert first["test_accuracy"] > 0.9  # the sentiment words separate the tiny set

    second = sentiment.run(config)  # same accuracy: does not beat the champion
    assert second["registered_version"] is None and not second["champion"]
    assert second["promotion_reason"].startswith("not registered: test accuracy")
    [line] = [line for line in cli.registry_lines(second)
              if line.startswith("not registered")]
    assert line.startswith("not registered    (test accuracy")  # said once

    tracking.connect(None, store)
    client = MlflowClient()
    assert [str(v.version) for v in client.search_model_versions("name='imdb-sentiment'")] == ["1"]
    run = client.get_run(second["run_id"])
    assert run.data.tags["champion"] == "False" and run.data.params["model"] == "tfidf-logreg"
    assert "plots/roc_curve.png" in {
        a.path for a in client.list_artifacts(second["run_id"], "plots")}
    model = mlflow.pyfunc.load_model("models:/imdb-sentiment@champion")
    assert model.predict({"text": ["superb, wonderful, brilliant"]})["label"].tolist() == ["pos"]


def test_a_min_df_the_training_reviews_cannot_meet_is_named(imdb_dir: Path, tmp_path: Path,
                                                             capsys):
    store = tmp_path / "mlruns"
    args = ["--data-dir", str(imdb_dir), "--store-dir", str(store), "--model", "tfidf-logreg",
            "--validation-pct", "25", "--no-register"]  # 30 training reviews
    assert sentiment.main([*args, "--min-df", "31"]) == 2  # before the run opens
    assert ("error: --min-df 31: a word n-gram must be in that many training reviews, and the "
            "training split holds 30") in capsys.readouterr().err
    tracking.connect(None, str(store))
    assert mlflow.search_runs(search_all_experiments=True).empty
    assert sentiment.main([*args, "--min-df", "30"]) == 2  # no word is in all 30
    assert ("error: no word n-gram is in --min-df 30 of the 30 training reviews: lower --min-df"
            in capsys.readouterr().err)


def test_missing_data_folder_is_a_clear_error_before_any_run(tmp_path: Path, capsys):
    code = sentiment.main(["--data-dir", str(tmp_path / "nowhere"),
                           "--store-dir", str(tmp_path / "mlruns")])
    error = capsys.readouterr().err
    assert code == 2 and f"IMDB data folder not found: {tmp_path / 'nowhere'}" in error
    code = sentiment.main(["--store-dir", str(tmp_path / "mlruns")])
    assert code == 2 and "pass --data-dir or set IMDB_DATA_DIR" in capsys.readouterr().err
    assert not (tmp_path / "mlruns").exists()  # no FAILED run left behind


def subset_of(shared: Path, root: Path, train_per_label: int, test_per_label: int) -> Path:
    """Copies the first reviews of each label of the real data into an aclImdb layout."""
    for split, count in (("train", train_per_label), ("test", test_per_label)):
        for label in ("neg", "pos"):
            (root / split / label).mkdir(parents=True)
            for path in sorted((shared / split / label).glob("*.txt"))[:count]:
                shutil.copy(path, root / split / label / path.name)
    return root


@pytest.mark.slow
def test_trains_on_real_reviews(shared_imdb_dir: Path, tmp_path: Path, capsys):
    data_dir = subset_of(shared_imdb_dir, tmp_path / "aclImdb", 500, 200)
    config = SentimentConfig.from_options(
        data_dir=str(data_dir), store_dir=str(tmp_path / "mlruns"), vocabulary_size=8000,
        sequence_length=128, units=32, epochs=2, patience=2, batch_size=64, learning_rate=2e-3,
        word_vector_epochs=1)
    result = sentiment.run(config)
    tracking.connect(None, tmp_path / "mlruns")
    client = MlflowClient()
    losses = [m.value for m in client.get_metric_history(result["run_id"], "loss")]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert result["test_accuracy"] > 0.7 and result["test_roc_auc"] > 0.8  # chance: 0.5
    version = client.get_model_version_by_alias("imdb-sentiment", "champion")
    assert version.run_id == result["run_id"] and str(version.version) == "1"
    # evaluate: the served path gives the training run's test accuracy, in a linked run
    code = sentiment.main(["evaluate", "--data-dir", str(data_dir),
                           "--store-dir", str(tmp_path / "mlruns")])
    assert code == 0
    evaluation = client.search_runs([client.get_experiment_by_name(
        "imdb-sentiment").experiment_id], "tags.run_type = 'evaluation'")[0]
    assert evaluation.data.metrics["test_accuracy"] == pytest.approx(result["test_accuracy"])
    assert evaluation.data.tags["evaluated_version"] == "1"
    # a model of the other task is refused before any data is read (the folder is not there)
    code = speech.main(["evaluate", "--data-dir", str(tmp_path / "missing"), "--store-dir",
                        str(tmp_path / "mlruns"), "--model-uri", "models:/imdb-sentiment/latest"])
    assert code == 2 and "models:/imdb-sentiment/latest: takes text, not the audio" in (
        capsys.readouterr().err)
    # the registered model loads back (its vocabulary holds real reviews' odd characters)
    served = mlflow.pyfunc.load_model("models:/imdb-sentiment@champion")
    reviews = [path.read_text(encoding="utf-8")
               for path in sorted((data_dir / "test" / "pos").glob("*.txt"))[:20]]
    answer = served.predict(pd.DataFrame({"text": reviews}))
    assert answer["error"].isna().all() and (answer["label"] == "pos").mean() > 0.5
