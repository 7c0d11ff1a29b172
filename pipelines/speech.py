"""Speech Commands keyword spotting: WAV clips -> MFCC frames -> CRNN (Conv1D + Bi-GRU/LSTM) ->
MLflow.

`run(config)` is the whole run, in order: prepare the data, log it, fit, evaluate, log the
model, register. Usage: `python -m pipelines.speech --data-dir PATH [options]`; `--help` lists
every option, grouped by stage.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import soundfile
from optuna.distributions import CategoricalDistribution as OneOf
from optuna.distributions import FloatDistribution, IntDistribution

from features.augment import AugmentConfig, ClipAugmenter
from features.errors import (
    ConfigError,
    require_at_least,
    require_data_dir,
)
from features.input_pipelines import (
    AugmentedBatches,
    TrainingBatches,
    make_dataset,
    steps_per_epoch,
)
from features.mfcc import MfccConfig, build_mfcc_layer, feature_shape
from features.speech_commands import BACKGROUND_NOISE_DIR, SPEECH_COMMANDS_ENV, SplitConfig
from features.speech_data import (
    SpeechData,
    SpeechSourceConfig,
    background_noise,
    prepare_speech_data,
)
from models.cnn import build_tutorial_cnn
from models.recurrent import FRONT_ENDS, RecurrentConfig, build_classifier
from pipelines import (
    cli,
    clip_inputs,
    distribute,
    evaluation,
    export,
    lifecycle,
    listening,
    sweep,
    tracking,
    training,
)
from pipelines.config import TaskConfig
from pipelines.interrupts import at_batch_end, exit_process
from pipelines.lifecycle import RunConfig
from pipelines.serving import SpeechPredictor
from pipelines.training import OptimConfig

log = logging.getLogger("pipelines.speech")

PIPELINE = "speech"
DATASET = "speech-commands"
MODELS = ("recurrent", "tutorial-cnn")
CNN_SEARCHED = ("learning_rate", "noise_volume", "time_mask_frames", "freq_mask_bins")


@dataclass(frozen=True)
class SpeechModelConfig:
    """Model: the recurrent classifier's front end and input noise, or the reference CNN."""

    model: str = field(default="recurrent", metadata={
        "help": "the (CRNN) bidirectional recurrent classifier, or the reference CNN of "
                "TensorFlow's audio tutorial (registered only if it becomes champion)",
        "choices": MODELS})
    front_end: str = field(default="conv", metadata={
        "help": "front end before the recurrent layers: two Conv1D layers and 2x time pooling "
                "(a CRNN), or none", "choices": FRONT_ENDS})
    conv_filters: int = field(default=64, metadata={
        "help": "filters per convolution of the conv front end"})
    input_noise: float = field(default=0.0, metadata={
        "help": "std of Gaussian noise on normalised MFCCs in training"})

    def __post_init__(self):
        require_at_least(self, {"conv_filters": 1})
        if not 0 <= self.input_noise <= 1:  # Keras's GaussianNoise takes [0, 1]
            raise ConfigError(f"input_noise must be within [0, 1], got {self.input_noise}")


@dataclass(frozen=True)
class SpeechConfig(TaskConfig):
    """Every option of a speech run, by stage; logged whole (flat) as the run's parameters.

    The defaults are tuned for ~2,700 training clips on two CPU cores (docs/results.md): a CRNN
    with attention pooling, trained long under heavy augmentation, keeping the average of the
    weights of the second half of the epochs.
    """

    source: SpeechSourceConfig = SpeechSourceConfig()
    splits: SplitConfig = SplitConfig()
    features: MfccConfig = MfccConfig()
    augment: AugmentConfig = AugmentConfig()
    model: SpeechModelConfig = SpeechModelConfig()
    recurrent: RecurrentConfig = RecurrentConfig(units=64, depth=2, pooling="attention",
                                                  dense_units=64)
    # 120 epochs of the shared data's 2,700 training clips; 41 of the full release's 37,056
    optim: OptimConfig = OptimConfig(epochs=120, example_budget=1_500_000, batch_size=128,
                                     learning_rate=4e-3, weight_decay=1e-3, label_smoothing=0.1,
                                     warmup_epochs=2, patience=30, average_from=0.5)
    run: RunConfig = RunConfig(experiment="speech-commands", registered_model="speech-commands")

    def unused_options(self) -> dict[str, list[str]]:
        """The options the chosen model, front end, task or source leaves without effect, by what
        leaves them so."""
        unused = {}
        if self.model.model == "tutorial-cnn":  # TensorFlow's shape, dropout and front end
            unused["--model tutorial-cnn"] = [*self.stage_options("recurrent"), "front_end",
                                              "conv_filters", "input_noise"]
        elif self.model.front_end == "none":
            unused["--front-end none"] = ["conv_filters"]
        composition = ["unknown_pct", "silence_pct", "silence_rms_min", "silence_rms_max",
                       "data_seed"]
        if self.source.source == "tfds":  # its own splits
            unused["--source tfds"] = ["data_dir", "validation_pct", "test_pct", *composition]
        else:
            unused["--source folder"] = ["tfds_data_dir"]
            if self.splits.task == "all-words":
                unused["--task all-words"] = composition
        return unused


def run(config: SpeechConfig) -> dict:
    """Trains, evaluates, tracks and registers one speech model (or, with `--sweep N`, the best
    of N trials).

    Returns:
        Test metrics plus run id, registered version and the champion decision.

    Raises:
        ValueError: An invalid option value or unusable data folder.
        FileNotFoundError: The data folder does not exist.
        DatasetUnavailableError: --source tfds without prepared data, offline.
        SetupError: An unreachable tracking server, a folder that cannot be written, or a run
            that cannot be resumed (all checked before any data is read).
    """
    config = prepare_run(config)
    if config.run.sweep:  # the data is read (and cached for the trials) before the sweep's
        # run opens, as before a single run's: unusable data leaves no FAILED sweep behind
        prepare_speech_data(config.source, config.splits, config.features,
                            waveforms=config.augment.active)
        return sweep.run_sweep(config, run, search_space(config.model.model), PIPELINE)
    started = time.perf_counter()  # the data is read before the run opens: a folder that
    # holds no usable data leaves no FAILED run behind
    data = prepare_speech_data(config.source, config.splits, config.features,
                               waveforms=config.augment.active)
    feature_seconds = time.perf_counter() - started
    with lifecycle.tracked_run(config, PIPELINE, data.lineage.data_digest) as tracked:
        tracking.log_metrics({"feature_seconds": feature_seconds})
        keras.utils.set_random_seed(config.optim.seed)
        tracked.log_data(data.splits, data.lineage, DATASET)
        tracking.log_dict(asdict(config.features) | {"num_frames": config.features.num_frames},
                          "feature_config.json")

        batches = training_batches(config, data, tracked.completed_epochs())
        optim = training.scheduled(config.optim, len(data.splits.y["train"]))
        tracked.log_batches(batches.metrics | {"scheduled_epochs": optim.epochs})
        fitted = training.fit(lambda: build_model(config, len(data.splits.labels), data.mean,
                                                  data.variance),
                              batches, optim, strategy=config.run.strategy,
                              checkpoint_dir=tracked.checkpoint, resuming=tracked.resuming,
                              callbacks=[tracking.EpochMetricsLogger()])
        fit_metrics = fitted.metrics(len(data.splits.y["train"]))
        tracking.log_metrics(fit_metrics)

        probabilities = at_batch_end(fitted.model.predict, test_split_batches(config, data),
                                     verbose=0)
        test = evaluation.log_evaluation(probabilities, data.splits.y["test"],
                                         data.splits.labels, fitted.history)
        metrics = test.metrics | fit_metrics
        model_uri = tracked.logged_model() or log_model(
            fitted.model, data.splits.labels, config.features)
        registered = tracked.register(model_uri, metrics, test_digest=data.lineage.test_digest,
                                      data_digest=data.lineage.data_digest)
        return tracked.result(metrics | registered | {
            "model_uri": model_uri, "model": config.model.model,
            "feature_seconds": feature_seconds, "features_from_cache": data.lineage.from_cache,
            "skipped_examples": len(data.lineage.skipped)})


def prepare_run(config: SpeechConfig) -> SpeechConfig:
    """The run's checks before any data work (`lifecycle.prepare_run`), the feature geometry
    (of a new run: a resumed one goes on as it was let start), and a data folder that exists."""
    config = lifecycle.prepare_run(config, PIPELINE)
    if not config.run.resume:
        require_trainable(config)
    if config.source.source == "folder":
        require_data_dir(config.source.data_dir, SPEECH_COMMANDS_ENV, "Speech Commands")
    return config


def require_trainable(config: SpeechConfig) -> None:
    """Raises ConfigError for features a model cannot learn from (`require_informative`), a
    time shift longer than the clip, or too few frames for the conv front end's pooling."""
    config.features.require_informative()
    if config.augment.time_shift_ms > 1000 * config.features.clip_seconds:
        raise ConfigError(f"time_shift_ms={config.augment.time_shift_ms:g} would shift a clip "
                          f"out of its {1000 * config.features.clip_seconds:g} ms")
    frames = feature_shape(config.features)[0]
    if (config.model.model == "recurrent" and config.model.front_end == "conv"
            and frames < 2):  # its 2x time pooling needs two
        raise ConfigError(f"the conv front end pools frames in pairs: a clip must give at "
                          f"least 2 frames, not {frames} (--window-ms, --hop-ms, "
                          "--clip-seconds; or --front-end none)")


def build_model(config: SpeechConfig, num_classes: int, mean: np.ndarray,
                variance: np.ndarray) -> keras.Model:
    """The configured (uncompiled) classifier over MFCC frames, normalised by `mean` and
    `variance` (per coefficient, from the training split)."""
    shape = feature_shape(config.features)
    if config.model.model == "tutorial-cnn":
        return build_tutorial_cnn(shape, num_classes, mean=mean, variance=variance)
    return build_classifier(shape, num_classes, config.recurrent, mean=mean, variance=variance,
                            front_end=config.model.front_end,
                            conv_filters=config.model.conv_filters,
                            input_noise=config.model.input_noise)


def training_batches(config: SpeechConfig, data: SpeechData, first_epoch: int = 0
                     ) -> TrainingBatches:
    """Training and validation batches at the global batch size.

    With augmentation on, the training batches are made afresh each epoch from the waveforms
    (speed, time shift and noise, then SpecAugment on their MFCC frames; `first_epoch` is where
    a resumed fit goes on), and the workers of a multi-worker run each make their share of
    every batch (`distribute.sharded_input`).
    """
    strategy, splits = config.run.strategy, data.splits
    batch = distribute.global_batch_size(config.optim.batch_size, strategy)
    classes, limit = len(splits.labels), config.source.stream_over_bytes
    validation = make_dataset(splits.x["validation"], splits.y["validation"], batch, classes,
                              stream_over_bytes=limit)
    layout = distribute.layout(config.optim.batch_size, strategy)
    if not config.augment.active:
        train = make_dataset(splits.x["train"], splits.y["train"], batch, classes,
                             shuffle_seed=config.optim.seed, stream_over_bytes=limit)
        return TrainingBatches(train, validation, steps_per_epoch(len(splits.y["train"]), batch),
                               layout)
    augmenter = clip_augmenter(config, data)

    def batches(shard: int, shards: int):
        return AugmentedBatches(
            data.train_waveforms, splits.y["train"], batch, classes, augmenter,
            shuffle_seed=config.optim.seed, stream_over_bytes=limit, first_epoch=first_epoch,
            shard=shard, shards=shards).dataset(feature_shape(config.features))

    steps = steps_per_epoch(len(splits.y["train"]), batch, distribute.input_pipelines(strategy))
    return TrainingBatches(distribute.sharded_input(strategy, batches), validation, steps,
                           layout | {"augment_noise_recordings": len(augmenter.noise)})


def clip_augmenter(config: SpeechConfig, data: SpeechData) -> ClipAugmenter:
    """The configured augmentation, mixing in the source's `_background_noise_` recordings."""
    augment = config.augment
    mixing = bool(augment.noise_prob and augment.noise_volume)
    noise = background_noise(config.source, config.features.sample_rate) if mixing else []
    usable = [recording for recording in noise if len(recording) >= config.features.clip_samples]
    if len(usable) < len(noise):
        log.warning("%d of the %d %s recordings are shorter than a clip (%d samples) and are "
                    "not mixed in", len(noise) - len(usable), len(noise), BACKGROUND_NOISE_DIR,
                    config.features.clip_samples)
    if mixing and not usable:
        log.warning("no %s recordings of a clip's length in this source: training without "
                    "noise mixing", BACKGROUND_NOISE_DIR)
    return ClipAugmenter(augment, config.features, usable, data.mean)


def test_split_batches(config: SpeechConfig, data: SpeechData):
    """The test split, in order, in batches of 256."""
    splits = data.splits
    return make_dataset(splits.x["test"], splits.y["test"], 256, len(splits.labels),
                        stream_over_bytes=config.source.stream_over_bytes)


def waveform_classifier(model: keras.Model, mfcc: MfccConfig) -> keras.Model:
    """The classifier over MFCC frames behind the MFCC stage as a Keras layer: (clips,
    samples) float waveforms at `mfcc.sample_rate` in, class probabilities out."""
    waveforms = keras.Input((mfcc.clip_samples,), name="waveform")
    return keras.Model(waveforms, model(build_mfcc_layer(mfcc)(waveforms)),
                       name="waveform_classifier")


def log_model(model: keras.Model, labels: tuple[str, ...], mfcc: MfccConfig) -> str:
    """Logs the classifier, taking waveforms (`waveform_classifier`), as a served model that
    takes raw audio; returns its URI."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "classifier.keras"
        served = waveform_classifier(model, mfcc)
        served.save(path)
        config_path = SpeechPredictor(served, labels, mfcc).save_config(
            Path(folder) / "config.json")
        return tracking.log_speech_classifier(path, config_path, labels,
                                              serving_input_example(mfcc.sample_rate))


def serving_input_example(sample_rate: int) -> pd.DataFrame:
    """What the served model takes: a clip's file bytes (here a short stereo 8 kHz WAV tone,
    resampled and mixed down on the way in) or a waveform with its sample rate."""
    seconds = np.arange(int(0.5 * 8000)) / 8000
    tone = (0.1 * np.sin(2 * np.pi * 440 * seconds)).astype(np.float32)
    wav = io.BytesIO()
    soundfile.write(wav, np.stack([tone, tone], axis=1), 8000, format="WAV", subtype="PCM_16")
    waveform = np.zeros(sample_rate, np.float32).tolist()
    return pd.DataFrame({"audio": [wav.getvalue(), b""], "waveform": [[0.0], waveform],
                         "sample_rate": [8000, sample_rate]})


def search_space(model: str) -> dict:
    """What `--sweep N` searches: model shape, regularisation, learning rate, augmentation;
    for the tutorial CNN, whose shape and dropout are fixed, the last two only."""
    space = {
        "front_end": OneOf(list(FRONT_ENDS)),
        "pooling": OneOf(["attention", "mean-max"]),
        "units": IntDistribution(32, 128, step=32),
        "depth": IntDistribution(1, 3),
        "dropout": FloatDistribution(0.1, 0.5),
        "learning_rate": FloatDistribution(1e-3, 1e-2, log=True),
        "noise_volume": FloatDistribution(0.0, 1.5),
        "time_mask_frames": IntDistribution(0, 20, step=5),
        "freq_mask_bins": IntDistribution(0, 10),
    }
    if model == "tutorial-cnn":
        return {name: space[name] for name in CNN_SEARCHED}
    return space


def summary_lines(result: dict) -> list[str]:
    """The few lines a user reads at the end of a run (the registry lines follow)."""
    return [
        f"model             {result['model']}",
        f"test accuracy     {result['test_accuracy']:.4f}",
        f"test macro-F1     {result['test_macro_f1']:.4f}",
        f"skipped files     {result['skipped_examples']}",
        f"features          {result['feature_seconds']:.1f} s"
        + (" (from cache)" if result["features_from_cache"] else ""),
        f"training          {result['train_seconds']:.1f} s, {result['epochs_trained']} "
        f"epoch{'s' if result['epochs_trained'] != 1 else ''}",
    ]


COMMANDS = cli.TaskCommands(
    pipeline=PIPELINE,
    description="Train a bidirectional LSTM/GRU keyword classifier on Speech Commands and "
                "track it in MLflow.",
    config=SpeechConfig, run=run, summary=summary_lines, dataset=DATASET,
    predict=cli.Command("FILE [FILE ...]", "Label audio files with a logged speech model "
                        "(default: the champion).", clip_inputs.read_clips),
    evaluate=cli.Command(
        "--data-dir DIR", "Evaluate a logged speech model on a Speech Commands folder: the "
        "official test release (ten word folders, _silence_/, _unknown_/) or the training "
        "layout (its test split).", partial(clip_inputs.read_labelled_clips, SpeechConfig)),
    commands={"listen": listening.listen_command, "export": export.export_command},
)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: `predict`, `evaluate`, `listen`, `export`, or (none) train."""
    return cli.main(COMMANDS, argv)


if __name__ == "__main__":
    exit_process(main())
