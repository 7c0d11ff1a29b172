"""Word-vector pretraining: the vectors themselves, and the stage's own MLflow run, found again
by its key and reused by later classifier runs."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from features.text import PADDING_ID
from models.word_vectors import (
    embedding_encoder,
    encoder_vectors,
    load_encoder_weights,
    nearest_words,
    train_word_vectors,
    write_corpus,
)
from pipelines import pretraining, sentiment, tracking
from pipelines.sentiment import SentimentConfig
from pipelines.tracking import leases
from tests.builders import text_classifier
from tests.processes import interrupt_when


def two_topic_corpus(path: Path) -> int:
    """Ids 2-5 always appear together, and so do ids 6-9: two topics that never mix."""
    rng = np.random.default_rng(0)
    rows = [rng.choice(np.arange(2, 6) if n % 2 else np.arange(6, 10), size=12)
            for n in range(300)]
    padded = np.zeros((300, 16), np.int32)
    padded[:, :12] = rows
    return write_corpus([padded[:150], padded[150:]], path)


def test_word_vectors_place_words_that_share_contexts_together(tmp_path: Path):
    corpus = tmp_path / "corpus.txt"
    assert two_topic_corpus(corpus) == 300 * 12
    assert "0" not in corpus.read_text().split()  # padding is never a word
    losses = []
    vectors = train_word_vectors(corpus, 12, 8, epochs=3, window=2, negative=3, seed=0,
                                 workers=1, on_epoch=lambda epoch, loss: losses.append(loss))
    assert vectors.shape == (12, 8) and vectors.dtype == np.float32
    assert not vectors[PADDING_ID].any()
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    vocabulary = ["", "[UNK]", *(f"w{i}" for i in range(2, 12))]
    near = nearest_words(vectors, vocabulary, ["w2", "w6", "missing"], 3)
    assert set(near) == {"w2", "w6"}
    assert set(near["w2"]) == {"w3", "w4", "w5"} and set(near["w6"]) == {"w7", "w8", "w9"}


def test_the_loss_per_token_does_not_depend_on_the_worker_count(tmp_path: Path):
    """gensim keeps one worker's running loss in corpus-file training: per token of its share
    (half the corpus on two workers), as on one."""
    corpus = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    with corpus.open("w") as handle:  # ten topics of 50 words, a review of 20-60 per line
        for topic in rng.integers(10, size=8000):
            ids = rng.integers(2 + 50 * topic, 52 + 50 * topic, rng.integers(20, 60))
            handle.write(" ".join(map(str, ids)) + "\n")
    losses = {1: [], 2: []}
    for workers, found in losses.items():
        train_word_vectors(corpus, 502, 8, epochs=1, window=3, negative=5, seed=0,
                           workers=workers, on_epoch=lambda _, loss, to=found: to.append(loss))
    # two workers' threads share the corpus differently from run to run (within about 10 %),
    # but never by half, as the loss of one worker's share per token of the whole corpus was
    assert losses[2][0] == pytest.approx(losses[1][0], rel=0.25), losses


def test_word_vectors_need_text_and_epochs(tmp_path: Path):
    empty = tmp_path / "empty.txt"
    assert write_corpus([np.zeros((3, 4), np.int32)], empty) == 0
    with pytest.raises(ValueError, match="the corpus holds no token"):
        train_word_vectors(empty, 10, 4, epochs=1, window=2, negative=2, seed=0)
    with pytest.raises(ValueError, match="at least 1 epoch"):
        train_word_vectors(empty, 10, 4, epochs=0, window=2, negative=2, seed=0)


def test_encoder_carries_its_vectors_into_a_classifier(tmp_path: Path):
    vectors = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    encoder = embedding_encoder(vectors)
    encoder.save(tmp_path / "encoder.keras")
    loaded = keras.saving.load_model(tmp_path / "encoder.keras")
    np.testing.assert_array_equal(encoder_vectors(loaded), vectors)
    classifier = text_classifier(30, 2, embedding_dim=8, units=4)
    load_encoder_weights(classifier, loaded)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(classifier.get_layer("embedding").embeddings), vectors)
    with pytest.raises(ValueError, match=r"vectors \(30, 8\) do not fit the classifier's "
                                         r"embedding \(30, 6\)"):
        load_encoder_weights(text_classifier(30, 2, embedding_dim=6, units=4), loaded)


def write_unlabelled(imdb_dir: Path, count: int) -> None:
    for n in range(count):
        (imdb_dir / "train" / "unsup" / f"{n + 1}_0.txt").write_text(
            f"an unlabelled zorblax review number {n}, the plot and the actors")


def small_config(imdb_dir: Path, tmp_path: Path, **options) -> SentimentConfig:
    return SentimentConfig.from_options(**{
        "data_dir": str(imdb_dir), "store_dir": str(tmp_path / "mlruns"),
        "checkpoint_dir": str(tmp_path / "checkpoints"), "validation_pct": 25, "units": 4,
        "embedding_dim": 8, "vocabulary_size": 200, "sequence_length": 32, "buckets": 2,
        "epochs": 1, "batch_size": 8, "ngram_features": 0, "word_vector_epochs": 2} | options)


def test_pretraining_is_its_own_run_and_later_runs_reuse_it(imdb_dir: Path, tmp_path: Path):
    write_unlabelled(imdb_dir, 20)
    first = sentiment.run(small_config(imdb_dir, tmp_path))
    tracking.connect(None, tmp_path / "mlruns")
    client = MlflowClient()
    pretrain_id = first["pretrain_run_id"]
    pretrain_run = client.get_run(pretrain_id)
    assert pretrain_run.info.status == "FINISHED"
    assert pretrain_run.data.tags["pipeline"] == "sentiment-pretrain"
    assert pretrain_run.data.params["word_vector_epochs"] == "2"
    assert pretrain_run.data.metrics["corpus_unlabelled"] == 21  # make_imdb writes one too
    corpus = int(pretrain_run.data.metrics["corpus_train"]) + 21
    assert pretrain_run.data.tags["mlflow.note.content"].startswith(  # its page says what it is
        f"**sentiment-pretrain-w2v{pretrain_run.data.params['embedding_dim']}**  \nskip-gram "
        f"word vectors, 2 epochs over {corpus} reviews (")
    classifier = client.get_run(first["run_id"])
    assert pretrain_run.data.metrics["corpus_train"] == classifier.data.metrics["examples_train"]
    losses = client.get_metric_history(pretrain_id, "word_vector_loss")
    assert [metric.step for metric in losses] == [1, 2]
    assert {i.dataset.name for i in pretrain_run.inputs.dataset_inputs} == {
        "aclImdb-pretraining-train", "aclImdb-pretraining-unlabelled"}
    artifacts = {a.path for a in client.list_artifacts(pretrain_id, "encoder")}
    assert artifacts == {"encoder/encoder.keras", "encoder/vocabulary.txt"}
    vocabulary = mlflow.artifacts.load_text(f"runs:/{pretrain_id}/vocabulary.txt").split("\n")
    assert "zorblax" in vocabulary  # a word of the unlabelled reviews only
    assert "great" in mlflow.artifacts.load_dict(f"runs:/{pretrain_id}/nearest_words.json")

    assert classifier.data.tags["pretrain_run_id"] == pretrain_id
    assert classifier.data.tags["pretrain_reused"] == "False"
    assert classifier.data.params["pretrain"] == "auto"
    assert "zorblax" in mlflow.artifacts.load_text(
        f"runs:/{first['run_id']}/vocabulary.txt").split("\n")

    second = sentiment.run(small_config(imdb_dir, tmp_path, seed=1))
    assert second["pretrain_run_id"] == pretrain_id  # another seed, the same encoder
    assert client.get_run(second["run_id"]).data.tags["pretrain_reused"] == "True"
    made = len(pretraining.MADE)  # always: pretrained anew, once for a sweep's trials
    third = sentiment.run(small_config(imdb_dir, tmp_path, pretrain="always", sweep=2))
    assert third["pretrain_run_id"] != pretrain_id and third["trials"] == 2
    assert pretraining.MADE[made:] == [third["pretrain_run_id"]]

    write_unlabelled(imdb_dir, 21)  # other data: another key, pretrained anew
    fourth = sentiment.run(small_config(imdb_dir, tmp_path))
    assert fourth["pretrain_run_id"] not in (pretrain_id, third["pretrain_run_id"])
    experiment = client.get_experiment_by_name("imdb-sentiment").experiment_id
    pretrain_runs = client.search_runs([experiment], "tags.pipeline = 'sentiment-pretrain'")
    assert len(pretrain_runs) == 3


def test_never_pretrains_nothing_and_fits_the_vocabulary_on_train(imdb_dir: Path,
                                                                   tmp_path: Path):
    """Of the 40 labelled training reviews, 10 are carved out for validation: only the words
    of the other 30 (each holding a word of its own) and none of test's are in the vocabulary."""
    write_unlabelled(imdb_dir, 5)
    for split, files in (("train", sorted((imdb_dir / "train").glob("[np]*/*.txt"))),
                         ("test", sorted((imdb_dir / "test").glob("*/*.txt")))):
        for number, path in enumerate(files):
            word = f"only{split}{chr(97 + number // 26)}{chr(97 + number % 26)}"
            path.write_text(f"{path.read_text()} {word}")
    result = sentiment.run(small_config(imdb_dir, tmp_path, pretrain="never"))
    assert "pretrain_run_id" not in result
    tracking.connect(None, tmp_path / "mlruns")
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(
        "imdb-sentiment").experiment_id])
    assert "pretrain_run_id" not in run.data.tags
    vocabulary = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/vocabulary.txt").split()
    assert "zorblax" not in vocabulary
    assert sum(word.startswith("onlytrain") for word in vocabulary) == 30
    assert not [word for word in vocabulary if word.startswith("onlytest")]


def test_the_key_follows_the_corpus_the_shape_and_the_options():
    from features.review_data import Corpus

    corpus = Corpus(["a b"], {"train": "t1", "unlabelled": "u1"}, {"train": 1, "unlabelled": 0},
                    "here")
    config = pretraining.PretrainConfig()
    key = pretraining.pretraining_key(config, corpus, vocabulary_size=100, embedding_dim=8)
    same = pretraining.pretraining_key(pretraining.PretrainConfig(pretrain="always"), corpus,
                                       vocabulary_size=100, embedding_dim=8)
    assert key == same  # the mode decides whether to look, not what is made
    others = [
        pretraining.pretraining_key(config, Corpus(["a b"], {"train": "t1", "unlabelled": "u2"},
                                                   corpus.counts, "here"),
                                    vocabulary_size=100, embedding_dim=8),
        pretraining.pretraining_key(config, corpus, vocabulary_size=101, embedding_dim=8),
        pretraining.pretraining_key(config, corpus, vocabulary_size=100, embedding_dim=9),
        pretraining.pretraining_key(pretraining.PretrainConfig(word_vector_epochs=6), corpus,
                                    vocabulary_size=100, embedding_dim=8),
    ]
    assert len({key, *others}) == 5


def test_multi_worker_training_refuses_to_pretrain_before_joining_a_cluster(imdb_dir: Path,
                                                                              tmp_path: Path,
                                                                              capsys):
    code = sentiment.main(["--data-dir", str(imdb_dir), "--store-dir", str(tmp_path / "mlruns"),
                           "--strategy", "multi-worker"])
    assert code == 2 and "pass --pretrain never" in capsys.readouterr().err
    assert not (tmp_path / "mlruns").exists()


def test_an_interrupted_pretraining_is_never_reused(imdb_dir: Path, tmp_path: Path):
    """Ctrl-C while the word vectors train: the pretraining run ends KILLED and the command
    exits 130; the next run pretrains anew instead of reusing it."""
    write_unlabelled(imdb_dir, 20)
    store = tmp_path / "mlruns"
    args = ["--data-dir", str(imdb_dir), "--store-dir", str(store), "--validation-pct", "25",
            "--units", "4", "--embedding-dim", "8", "--vocabulary-size", "200",
            "--sequence-length", "32", "--epochs", "1", "--batch-size", "8",
            "--ngram-features", "0", "--word-vector-epochs", "3000"]

    watcher = interrupt_when(  # inside the word vectors' epochs
        lambda: (store / "mlflow.db").exists() and bool(pretraining_runs(store, "RUNNING")),
        settle=0.5)
    assert sentiment.main(args) == 130
    watcher.join()
    (killed,) = pretraining_runs(store, "KILLED")
    assert not pretraining_runs(store, "FINISHED")

    assert sentiment.main([*args[:-1], "2"]) == 0
    (finished,) = pretraining_runs(store, "FINISHED")
    assert finished != killed


def pretraining_runs(store: Path, status: str) -> list[str]:
    tracking.connect(None, store)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("imdb-sentiment")
    if experiment is None:
        return []
    return [run.info.run_id for run in client.search_runs(
        [experiment.experiment_id],
        f"tags.pipeline = 'sentiment-pretrain' and attributes.status = '{status}'")]


def test_a_pretraining_of_the_same_key_running_elsewhere_is_waited_for(tmp_path: Path,
                                                                       monkeypatch):
    """Seeds started one after another pretrain once: the later ones wait for the vectors
    the first is making (a pretraining run whose process is gone is not waited for)."""
    monkeypatch.setattr(pretraining, "WAIT_SECONDS", 0.05)
    tracking.connect(None, tmp_path / "mlruns")
    experiment = mlflow.create_experiment("pretrain-wait")
    tags = {"pipeline": pretraining.PIPELINE, pretraining.KEY_TAG: "k1"}
    client = MlflowClient()
    dead = client.create_run(experiment, tags=tags | {  # RUNNING, its process gone
        "lease.host": "elsewhere", "lease.pid": "1", "lease.heartbeat": "0"}).info.run_id
    assert pretraining.finished_pretraining("pretrain-wait", "k1") == []
    client.create_run(experiment, tags=tags)  # RUNNING without a lease: killed before it
    assert pretraining.finished_pretraining("pretrain-wait", "k1") == []  # took one
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        lease = leases.holder_tags() | {leases.PID: str(other.pid), leases.PROCESS_STARTED:
                                        repr(leases.process_started(other.pid))}
        live = client.create_run(experiment, tags=tags | lease).info.run_id
        looks = ThreadPoolExecutor(1)
        found = looks.submit(pretraining.finished_pretraining, "pretrain-wait", "k1")
        try:
            with pytest.raises(TimeoutError):
                found.result(timeout=1)  # the other process is still pretraining
        finally:
            client.set_terminated(live, "FINISHED")
        assert found.result(timeout=30) == [live] != [dead]
        looks.shutdown()
        other.kill()


def test_an_encoder_that_does_not_load_is_passed_over_or_named(tmp_path: Path, caplog):
    """`auto` passes over a finished pretraining run whose encoder file was damaged (with a
    warning) for an older one, then pretrains anew; `--resume` of a run whose encoder's files
    are gone names that run; a resumed run keeps saying whether its encoder was reused."""
    from features.review_data import Corpus
    from pipelines.errors import SetupError
    from pipelines.lifecycle import RunConfig

    corpus = Corpus([f"review {n} of a plot with actors" for n in range(40)],
                    {"train": "t", "unlabelled": "u"}, {"train": 40, "unlabelled": 0}, "here")
    run = RunConfig(experiment="pretrained", registered_model="m", store_dir=str(tmp_path))
    shape = {"vocabulary_size": 20, "embedding_dim": 4}

    def encoder(mode: str, resume: str | None = None) -> pretraining.Pretrained:
        return pretraining.pretrained_encoder(
            pretraining.PretrainConfig(pretrain=mode, word_vector_epochs=1), corpus,
            dataclasses.replace(run, resume=resume), **shape)

    older, newer = encoder("always").run_id, encoder("always").run_id
    encoder_file = next(tmp_path.rglob(f"{newer}/artifacts/encoder/encoder.keras"))
    encoder_file.write_bytes(encoder_file.read_bytes()[:100])  # cut short
    with caplog.at_level("WARNING"):
        found = encoder("auto")
    assert (found.run_id, found.reused) == (older, True)
    assert f"pretraining run {newer}: its encoder" in caplog.text and "not reused" in caplog.text
    shutil.rmtree(next(tmp_path.rglob(f"{older}/artifacts/encoder")))
    made = encoder("auto")  # neither loads: pretrained anew
    assert made.run_id not in (older, newer) and not made.reused

    client = MlflowClient()  # classifier runs that started from these encoders
    experiment = client.get_experiment_by_name("pretrained").experiment_id
    lineages = {}
    for source, reused in ((made.run_id, "False"), (older, "True")):
        lineages[source] = client.create_run(experiment, tags={
            "pretrain_run_id": source, "pretrain_reused": reused}).info.run_id
    resumed = encoder("auto", resume=lineages[made.run_id])
    assert (resumed.run_id, resumed.reused) == (made.run_id, False)  # it made them
    with pytest.raises(SetupError, match=f"pretraining run {older}: its encoder"):
        encoder("auto", resume=lineages[older])


def test_a_sweep_asked_to_pretrain_anew_pretrains_until_a_trial_has_pretrained(monkeypatch):
    """`--pretrain always --sweep N`: the first trial pretrains; so does a later one while none
    has (the first failed before pretraining, say); after that the trials reuse those vectors,
    also when the trial that made them then failed (a fit that diverged)."""
    monkeypatch.setattr(pretraining, "MADE", [])
    modes = []

    def trial(config: SentimentConfig) -> dict:
        modes.append(config.pretrain.pretrain)
        if len(modes) == 2:
            pretraining.MADE.append("run")
        if len(modes) <= 2:
            raise ValueError("diverged")
        return {"val_accuracy": 0.5}

    run_trial = pretraining.once_per_sweep(trial)
    always = SentimentConfig.from_options(pretrain="always")
    for _ in range(2):
        with pytest.raises(ValueError, match="diverged"):
            run_trial(always)
    for _ in range(2):
        assert run_trial(always) == {"val_accuracy": 0.5}
    assert modes == ["always", "always", "auto", "auto"]
    assert run_trial(SentimentConfig.from_options(pretrain="never")) and modes[-1] == "never"

