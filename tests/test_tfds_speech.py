from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from mlflow.tracking import MlflowClient

from features.mfcc import MfccConfig, extractor
from features.speech_commands import SplitConfig
from features.speech_data import SpeechSourceConfig, prepare_speech_data
from features.tfds_source import DatasetUnavailableError
from features.tfds_speech import read_tfds_speech_commands
from pipelines import speech
from pipelines.speech import SpeechConfig
from tests.datasets import tone

TFDS_LABELS = ["down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes",
               "_silence_", "_unknown_"]


def write_tfds_speech_commands(data_dir: Path, per_class: dict[str, int]) -> None:
    """Writes a small `speech_commands` in TFDS' own on-disk format (TFRecord + metadata),
    using the registered builder's feature spec so tfds.builder() reads it as prepared."""
    features = tfds.builder("speech_commands", data_dir=str(data_dir)).info.features
    splits = {}
    for split, count in per_class.items():
        examples = []
        for label_index, _ in enumerate(TFDS_LABELS):
            for n in range(count):
                wave = tone(300 + 150 * label_index, seconds=0.9 + 0.05 * n, seed=n)
                audio = (wave * 32767).astype(np.int16)
                examples.append((f"{label_index}-{n}", {"audio": audio, "label": label_index}))
        splits[split] = examples
    tfds.dataset_builders.store_as_tfds_dataset(
        name="speech_commands", version="0.0.3", features=features, split_datasets=splits,
        data_dir=str(data_dir))


def test_reads_labels_first_and_audio_in_chunks(tmp_path: Path):
    write_tfds_speech_commands(tmp_path / "tfds", {"train": 2, "validation": 1, "test": 1})
    splits = read_tfds_speech_commands(str(tmp_path / "tfds"))
    train = splits["train"]
    assert len(train) == 24 and train.name == "speech_commands/0.0.3/train"
    assert sorted(set(splits["test"].labels)) == sorted(TFDS_LABELS)
    chunks = [task() for task in train.waveform_chunks(16000, size=10)]
    assert [chunk.kept for chunk in chunks] == [list(range(0, 10)), list(range(10, 20)),
                                                list(range(20, 24))]
    waveforms = np.concatenate([chunk.waveforms for chunk in chunks])
    assert waveforms.shape == (24, 16000) and waveforms.dtype == np.float32
    assert np.abs(waveforms).max() <= 1.0 and np.abs(waveforms[:, :14400]).max() > 0
    assert not waveforms[:, 15200:].any()  # clips of 0.9 s and 0.95 s, zero-padded at the end


def test_streams_each_split_into_the_cache_keyed_by_its_tfds_name(tmp_path: Path):
    write_tfds_speech_commands(tmp_path / "tfds", {"train": 2, "validation": 1, "test": 1})
    source = SpeechSourceConfig(source="tfds", tfds_data_dir=str(tmp_path / "tfds"),
                                cache_dir=str(tmp_path / "cache"))
    mfcc = MfccConfig()
    first = prepare_speech_data(source, SplitConfig(), mfcc, waveforms=True)
    again = prepare_speech_data(source, SplitConfig(), mfcc, waveforms=True)
    assert not first.lineage.from_cache and again.lineage.from_cache
    assert again.lineage.digests == first.lineage.digests
    waveforms = again.train_waveforms
    assert isinstance(waveforms, np.memmap) and waveforms.shape == (24, 16000)
    assert isinstance(again.splits.x["train"], np.memmap)
    # row i of the cached waveforms is the clip of row i of the frames and labels
    np.testing.assert_allclose(extractor(mfcc)(np.asarray(waveforms[:6])),
                               again.splits.x["train"][:6], atol=1e-4)
    assert np.bincount(again.splits.y["train"]).tolist() == [2] * 12


def test_pipeline_trains_from_tfds(tmp_path: Path):
    write_tfds_speech_commands(tmp_path / "tfds", {"train": 3, "validation": 1, "test": 1})
    config = SpeechConfig.from_options(
        source="tfds", tfds_data_dir=str(tmp_path / "tfds"), store_dir=str(tmp_path / "mlruns"),
        cache_dir=str(tmp_path / "cache"), units=8, depth=1, dense_units=0, epochs=1, batch_size=8)
    result = speech.run(config)
    run = MlflowClient().get_run(result["run_id"])
    assert run.data.metrics["examples_train"] == 36
    contexts = {tag.value for i in run.inputs.dataset_inputs for tag in i.tags
                if tag.key == "mlflow.data.context"}
    assert contexts == {"train", "validation", "test"}
    assert all("tfds://speech_commands/0.0.3" in i.dataset.source
               for i in run.inputs.dataset_inputs)


def test_offline_without_prepared_data_fails_at_once_naming_data_dir(tmp_path: Path, capsys):
    with pytest.raises(DatasetUnavailableError, match="--data-dir"):
        read_tfds_speech_commands(str(tmp_path / "empty"))
    assert not (tmp_path / "empty" / "downloads").exists()  # failed before any download
    code = speech.main(["--source", "tfds", "--tfds-data-dir", str(tmp_path / "empty"),
                        "--store-dir", str(tmp_path / "mlruns")])
    assert code == 2 and "--source folder --data-dir" in capsys.readouterr().err
    assert not (tmp_path / "mlruns").exists()  # no FAILED run left behind
