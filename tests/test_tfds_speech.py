from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from mlflow.tracking import MlflowClient

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


def test_reads_the_tfds_format(tmp_path: Path):
    write_tfds_speech_commands(tmp_path / "tfds", {"train": 2, "validation": 1, "test": 1})
    splits = read_tfds_speech_commands(str(tmp_path / "tfds"), 16000)
    assert splits["train"].waveforms.shape == (24, 16000)
    assert splits["train"].waveforms.dtype == np.float32
    assert sorted(set(splits["test"].labels)) == sorted(TFDS_LABELS)
    assert np.abs(splits["train"].waveforms).max() <= 1.0


def test_pipeline_trains_from_tfds(tmp_path: Path):
    write_tfds_speech_commands(tmp_path / "tfds", {"train": 3, "validation": 1, "test": 1})
    config = SpeechConfig.from_options(
        source="tfds", tfds_data_dir=str(tmp_path / "tfds"), store_dir=str(tmp_path / "mlruns"),
        cache_dir=str(tmp_path / "cache"), units=8, depth=1, dense_units=0, epochs=1, batch_size=8)
    result = speech.run(config)
    run = MlflowClient().get_run(result["run_id"])
    assert run.data.metrics["examples_train"] == 36
    assert all("tfds://speech_commands/0.0.3" in i.dataset.source
               for i in run.inputs.dataset_inputs)


def test_offline_without_prepared_data_fails_at_once_naming_data_dir(tmp_path: Path, capsys):
    with pytest.raises(DatasetUnavailableError, match="--data-dir"):
        read_tfds_speech_commands(str(tmp_path / "empty"), 16000)
    assert not (tmp_path / "empty" / "downloads").exists()  # failed before any download
    code = speech.main(["--source", "tfds", "--tfds-data-dir", str(tmp_path / "empty"),
                        "--store-dir", str(tmp_path / "mlruns")])
    assert code == 2 and "--source folder --data-dir" in capsys.readouterr().err
