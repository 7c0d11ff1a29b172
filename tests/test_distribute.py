"""Training under tf.distribute: MirroredStrategy over two logical CPU devices."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipelines import tracking
from tests import test_sentiment_pipeline, test_speech_pipeline

REPO = Path(__file__).resolve().parents[1]

# logical devices must be configured before TensorFlow starts: a fresh process
TWO_CPU_REPLICAS = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from pipelines import sentiment, speech
    speech_args, sentiment_args = json.loads(sys.argv[1])
    assert speech.main(speech_args) == 0
    assert sentiment.main(sentiment_args) == 0
""")


def test_mirrored_strategy_over_two_cpu_devices_trains_and_registers_each_pipeline(
        speech_dir: Path, imdb_dir: Path, tmp_path: Path):
    import json

    strategy = ["--strategy", "mirrored", "--checkpoint-dir", str(tmp_path / "checkpoints")]
    speech_args = test_speech_pipeline.small_args(speech_dir, tmp_path, *strategy)
    sentiment_args = test_sentiment_pipeline.small_args(imdb_dir, tmp_path, *strategy)
    done = subprocess.run([sys.executable, "-c", TWO_CPU_REPLICAS,
                           json.dumps([speech_args, sentiment_args])],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]

    tracking.connect(None, tmp_path / "mlruns")
    client = MlflowClient()
    for name, batch in (("speech-commands", 16), ("imdb-sentiment", 8)):
        (version,) = client.search_model_versions(f"name='{name}'")
        run = client.get_run(version.run_id)
        assert run.data.params["strategy"] == "mirrored"
        assert run.data.params["batch_size"] == str(batch)  # per replica
        assert run.data.metrics["replicas"] == 2
        assert run.data.metrics["global_batch_size"] == 2 * batch
        assert client.get_model_version_by_alias(name, "champion").version == version.version
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 2
