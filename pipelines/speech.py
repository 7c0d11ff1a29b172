"""Speech Commands keyword spotting: WAV clips -> MFCC frames -> Bi-LSTM/GRU -> MLflow.

Usage: `python -m pipelines.speech --data-dir PATH [options]`; `--help` lists every option.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.audio import AudioSpec, decode_recording
from features.augment import AugmentConfig, ClipAugmenter
from features.mfcc import MfccConfig, feature_shape
from features.speech_commands import (
    BACKGROUND_NOISE_DIR,
    SPLITS,
    TASKS,
    TWELVE_CLASS_LABELS,
    load_speech_commands,
)
from features.speech_features import (
    cached_features,
    extract_features,
    split_features,
    split_waveforms,
    waveform_chunks,
)
from features.tfds_source import DatasetUnavailableError
from pipelines.config import TrainingConfig, config_parser, option, validate_choices
from pipelines.runner import PreparedData, commands_epilog
from pipelines.serving import SpeechPredictor

log = logging.getLogger("pipelines.speech")

SOURCES = ("folder", "tfds")
MODELS = ("recurrent", "tutorial-cnn")
FRONT_ENDS = ("none", "conv")  # models.recurrent.FRONT_ENDS, without importing Keras here


@dataclass(frozen=True)
class SpeechConfig(TrainingConfig):
    """Every option of a speech run; logged whole as the run's parameters.

    The training defaults are tuned for ~2,700 training clips on two CPU cores (see the README):
    a CRNN with attention pooling, trained long under heavy augmentation.
    """

    pooling: str = option("attention", "pooling over time",
                          ("mean", "max", "mean-max", "attention"))
    epochs: int = option(140, "maximum number of epochs (the cosine schedule spans them all)")
    warmup_epochs: int = option(2, "epochs of linear learning-rate warm-up")
    patience: int = option(30, "early-stopping patience in epochs (validation loss)")

    data_dir: str | None = option(
        None, "Speech Commands folder in the official layout", env="SPEECH_COMMANDS_DIR")
    source: str = option("folder", "where clips come from: a folder (--data-dir) or "
                         "tensorflow-datasets' speech_commands", SOURCES)
    tfds_data_dir: str | None = option(None, "tensorflow-datasets data dir for --source tfds")
    model: str = option("recurrent", "the (CRNN) bidirectional recurrent classifier, or the "
                        "reference CNN of TensorFlow's audio tutorial (registered only if it "
                        "becomes champion)", MODELS)
    task: str = option("12-class", "ten words + _silence_ + _unknown_, or every word", TASKS)
    validation_pct: float = option(10.0, "validation share when validation_list.txt is absent")
    test_pct: float = option(10.0, "test share when testing_list.txt is absent")
    unknown_pct: float = option(10.0, "_unknown_ examples per split, % of its command words")
    silence_pct: float = option(10.0, "_silence_ examples per split, % of its command words")
    data_seed: int = option(0, "seed of the _unknown_ subsample and _silence_ windows; kept "
                            "apart from --seed so runs with other seeds share test data")
    silence_rms_min: float = option(1e-4, "quietest _silence_ level (RMS, full scale = 1)")
    silence_rms_max: float = option(0.4, "loudest _silence_ level (RMS, full scale = 1)")
    sample_rate: int = option(16000, "sample rate clips are resampled to (Hz)")
    clip_seconds: float = option(1.0, "clip length after padding/trimming (s)")
    window_ms: float = option(30.0, "MFCC analysis window (ms)")
    hop_ms: float = option(10.0, "MFCC hop (ms)")
    n_mels: int = option(40, "mel bands")
    n_mfcc: int = option(40, "MFCC coefficients per frame")
    fmin: float = option(20.0, "lowest mel frequency (Hz)")
    fmax: float = option(8000.0, "highest mel frequency (Hz)")
    cache_dir: str = option(".cache/features", "feature cache folder")
    cache: bool = option(True, "read/write the feature cache")
    in_memory_mb: int = option(512, "cached splits with more feature data than this (MB) are "
                               "streamed from the cache file during training, not loaded")
    front_end: str = option("conv", "front end before the recurrent layers: two Conv1D layers "
                            "and 2x time pooling (a CRNN), or none", FRONT_ENDS)
    conv_filters: int = option(64, "filters per convolution of the conv front end")
    dense_units: int = option(64, "hidden units of the dense head (0: none)")
    input_noise: float = option(0.0, "std of Gaussian noise on normalised MFCCs in training")
    time_shift_ms: float = option(100.0, "augmentation: largest random shift of a training clip "
                                  "(ms; 0: off)")
    speed_change: float = option(0.15, "augmentation: largest relative change of playback "
                                 "speed (0.1: 0.9x to 1.1x; 0: off)")
    noise_prob: float = option(0.8, "augmentation: share of training clips mixed with a "
                               "_background_noise_ stretch (0: off)")
    noise_volume: float = option(0.1, "augmentation: loudest mixed-in noise (uniform in [0, "
                                 "this]; 1: as recorded)")
    time_masks: int = option(2, "SpecAugment: masked runs of frames per training clip")
    time_mask_frames: int = option(10, "SpecAugment: longest masked run of frames")
    freq_masks: int = option(2, "SpecAugment: masked runs of MFCC coefficients per clip")
    freq_mask_bins: int = option(5, "SpecAugment: longest masked run of coefficients")
    experiment: str = option("speech-commands", "MLflow experiment")
    registered_model: str = option("speech-commands", "MLflow registered model name")

    def mfcc(self) -> MfccConfig:
        """The feature geometry this config describes."""
        return MfccConfig(self.sample_rate, self.clip_seconds, self.window_ms, self.hop_ms,
                          self.n_mels, self.n_mfcc, self.fmin, self.fmax)

    def writable_folders(self) -> dict[str, str]:
        cache = {"feature cache folder": self.cache_dir} if self.cache else {}
        return super().writable_folders() | cache

    def augment(self) -> AugmentConfig:
        """The training-time augmentation this config describes."""
        return AugmentConfig(self.time_shift_ms, self.speed_change, self.noise_prob,
                             self.noise_volume, self.time_masks, self.time_mask_frames,
                             self.freq_masks, self.freq_mask_bins)


def compose_folder(config: SpeechConfig):
    """Lists a Speech Commands folder and composes the task's splits as the config says."""
    return load_speech_commands(
        config.data_dir, task=config.task, validation_pct=config.validation_pct,
        test_pct=config.test_pct, unknown_pct=config.unknown_pct,
        silence_pct=config.silence_pct,
        silence_rms=(config.silence_rms_min, config.silence_rms_max),
        sample_rate=config.sample_rate, clip_samples=config.mfcc().clip_samples,
        seed=config.data_seed,
    )


def prepare_folder(config: SpeechConfig) -> PreparedData:
    """Reads a Speech Commands folder and computes (or loads cached) MFCC frames per split."""
    if not config.data_dir:
        raise ValueError("no data folder: pass --data-dir or set SPEECH_COMMANDS_DIR")
    mfcc = config.mfcc()
    data = compose_folder(config)  # logs its notes
    index = {label: i for i, label in enumerate(data.labels)}
    prepared = PreparedData(data.labels, {}, {}, {}, str(data.data_dir.resolve()),
                            list(data.skipped))  # dropped duplicates
    cache_dir = config.cache_dir if config.cache else None
    cached = []
    for split in SPLITS:
        examples = data.examples[split]
        features = split_features(examples, data.data_dir, mfcc, cache_dir, desc=f"MFCC {split}")
        prepared.x[split] = features.frames
        prepared.y[split] = np.asarray([index[examples[i].label] for i in features.kept],
                                       np.int32)
        prepared.digests[split] = data.digest((split,))
        prepared.skipped += features.skipped
        cached.append(features.from_cache)
        if split == "train":
            prepared.normalization = (features.mean, features.variance)
            if config.augment().active:
                waveforms = split_waveforms(examples, data.data_dir, mfcc, cache_dir)
                if not np.array_equal(waveforms.kept, features.kept):
                    raise RuntimeError("decoded waveforms and cached MFCC frames of the "
                                       "training split disagree on the usable clips; clear "
                                       f"{config.cache_dir} and run again")
                prepared.raw_train = waveforms.frames
    prepared.from_cache = all(cached)
    prepared.summary = {
        "source": prepared.source,
        "split_method": data.split_method,
        "listed_files_missing": data.listed_missing,
        "listed_files_missing_paths": data.listed_missing_paths,
        "class_counts": data.class_counts(),
        "skipped": [{"path": p, "reason": r} for p, r in prepared.skipped],
        "notes": data.notes,
    }
    return prepared


def prepare_tfds(config: SpeechConfig) -> PreparedData:
    """Reads tensorflow-datasets' speech_commands and computes (or loads cached) MFCC frames."""
    from features.tfds_speech import TFDS_NAME, read_tfds_speech_commands, tfds_version

    if config.task != "12-class":
        raise ValueError("--source tfds provides the 12-class task only; use --source folder "
                         "for --task all-words")
    if config.sample_rate != 16000:
        raise ValueError("--source tfds holds 16 kHz audio; keep --sample-rate 16000")
    mfcc = config.mfcc()
    splits = read_tfds_speech_commands(config.tfds_data_dir, mfcc.clip_samples)
    labels = TWELVE_CLASS_LABELS
    index = {label: i for i, label in enumerate(labels)}
    source = f"tfds://{TFDS_NAME}/{tfds_version(config.tfds_data_dir)}"
    prepared = PreparedData(labels, {}, {}, {}, source)
    cached = []
    for split, data in splits.items():
        hasher = hashlib.sha256(data.waveforms.tobytes())
        hasher.update("|".join(data.labels).encode())
        prepared.digests[split] = hasher.hexdigest()[:16]
        key = hashlib.sha256(
            f"{source}|{split}|{prepared.digests[split]}|{mfcc}".encode()).hexdigest()[:24]
        features = cached_features(
            config.cache_dir if config.cache else None, key,
            lambda out, w=data.waveforms, s=split: extract_features(
                waveform_chunks(w), len(w), mfcc, out, f"MFCC {s}"))
        prepared.x[split] = features.frames
        prepared.y[split] = np.asarray([index[label] for label in data.labels], np.int32)
        cached.append(features.from_cache)
        if split == "train":
            prepared.normalization = (features.mean, features.variance)
            prepared.raw_train = data.waveforms
    prepared.from_cache = all(cached)
    prepared.summary = {
        "source": source,
        "split_method": "tfds",
        "class_counts": {split: {label: data.labels.count(label) for label in labels}
                         for split, data in splits.items()},
        "skipped": [],
    }
    return prepared


def prepare_data(config: SpeechConfig) -> PreparedData:
    """Dispatches on `config.source`."""
    if config.source == "tfds":
        return prepare_tfds(config)
    return prepare_folder(config)


def build_model(config: SpeechConfig, num_classes: int, mean: np.ndarray,
                variance: np.ndarray):
    """The configured (uncompiled) classifier over MFCC frames, normalised by `mean` and
    `variance` (per coefficient, from the training split)."""
    from models.cnn import build_tutorial_cnn
    from models.recurrent import build_classifier

    if config.model == "tutorial-cnn":
        return build_tutorial_cnn(feature_shape(config.mfcc()), num_classes, mean=mean,
                                  variance=variance)

    return build_classifier(
        feature_shape(config.mfcc()), num_classes, mean=mean, variance=variance,
        cell=config.cell, units=config.units, depth=config.depth, dropout=config.dropout,
        pooling=config.pooling, dense_units=config.dense_units, input_noise=config.input_noise,
        front_end=config.front_end, conv_filters=config.conv_filters,
    )


def background_noise(config: SpeechConfig) -> list[np.ndarray]:
    """The `_background_noise_` recordings of a folder source (none for tfds, whose release
    does not ship them), decoded at the config's sample rate."""
    if config.source != "folder":
        return []
    folder = Path(config.data_dir) / BACKGROUND_NOISE_DIR
    return [decode_recording(path, config.sample_rate) for path in sorted(folder.glob("*.wav"))]


def augmented_training_batches(config: SpeechConfig, data: PreparedData):
    """The training split as augmented tf.data batches (time shift and noise on the waveforms,
    SpecAugment on their MFCC frames), made fresh each epoch; None when augmentation is off.
    The workers of a multi-worker run each make their share of every batch
    (`distribute.sharded_input`)."""
    from pipelines import distribute, runner, tracking
    from pipelines.training import AugmentedBatches

    augment = config.augment()
    if not augment.active or data.raw_train is None:
        return None
    noise = background_noise(config) if augment.noise_prob and augment.noise_volume else []
    if augment.noise_prob and augment.noise_volume and not noise:
        log.warning("no %s recordings in this source: training without noise mixing",
                    BACKGROUND_NOISE_DIR)
    tracking.log_metrics({"augment_noise_recordings": len(noise)})
    augmenter = ClipAugmenter(augment, config.mfcc(), noise, data.normalization[0])

    def batches(shard: int, shards: int):
        return AugmentedBatches(
            data.raw_train, data.y["train"],
            distribute.global_batch_size(config.batch_size, config.strategy), len(data.labels),
            augmenter, seed=config.seed, in_memory_bytes=config.in_memory_mb * 2**20,
            first_epoch=runner.completed_epochs(config), shard=shard, shards=shards,
        ).dataset(feature_shape(config.mfcc()))

    return distribute.sharded_input(config.strategy, batches)


def train_and_track(config: SpeechConfig, data: PreparedData, run_id: str) -> dict:
    """Builds, fits and evaluates the model, logging everything to the active run."""
    import keras

    from pipelines import runner, tracking

    keras.utils.set_random_seed(config.seed)
    runner.log_data(config, data, "speech-commands")
    mfcc = config.mfcc()
    tracking.log_dict(asdict(mfcc) | {"num_frames": mfcc.num_frames}, "feature_config.json")

    mean, variance = data.normalization  # computed by the feature stage, in one pass
    trained = runner.fit_and_evaluate(
        config, lambda: build_model(config, len(data.labels), mean, variance), data,
        augmented_training_batches(config, data), in_memory_bytes=config.in_memory_mb * 2**20)
    model = trained.model
    with tempfile.TemporaryDirectory() as folder:
        predictor = SpeechPredictor(model, data.labels, mfcc)
        model.save(Path(folder) / "classifier.keras")
        model_uri = tracking.log_speech_classifier(
            Path(folder) / "classifier.keras", predictor.save_config(Path(folder) / "config.json"),
            data.labels, serving_input_example(mfcc.sample_rate))
    return dict(trained.metrics, model_uri=model_uri) | runner.register(
        config, model_uri, trained.metrics, data,
        only_if_champion=config.model == "tutorial-cnn")


def serving_input_example(sample_rate: int) -> pd.DataFrame:
    """What the served model takes: a clip's file bytes (here a short stereo 8 kHz WAV tone,
    resampled and mixed down on the way in) or a waveform with its sample rate."""
    import soundfile

    seconds = np.arange(int(0.5 * 8000)) / 8000
    tone = (0.1 * np.sin(2 * np.pi * 440 * seconds)).astype(np.float32)
    wav = io.BytesIO()
    soundfile.write(wav, np.stack([tone, tone], axis=1), 8000, format="WAV", subtype="PCM_16")
    waveform = np.zeros(sample_rate, np.float32).tolist()
    return pd.DataFrame({"audio": [wav.getvalue(), b""], "waveform": [[0.0], waveform],
                         "sample_rate": [8000, sample_rate]})


def run(config: SpeechConfig) -> dict:
    """Trains, evaluates, tracks and registers one speech model.

    Returns:
        Test metrics plus run id, registered version and the champion decision.

    Raises:
        ValueError: An invalid option value or unusable data folder.
        FileNotFoundError: The data folder does not exist.
        SetupError: An unreachable tracking server, a folder that cannot be written, or a run
            that cannot be resumed (all checked before any data is read).
    """
    from pipelines import runner, tracking

    config = runner.prepare_run(config, "speech")
    validate_choices(config)
    feature_shape(config.mfcc())
    config.augment()  # validates the augmentation options
    if config.source == "folder":
        runner.require_data_dir(config.data_dir, "SPEECH_COMMANDS_DIR", "Speech Commands")
    if config.sweep:
        from pipelines.sweep import run_sweep

        return run_sweep(config, run, search_space(), "speech")

    def work(run_id: str) -> dict:
        started = time.perf_counter()
        data = prepare_data(config)
        feature_seconds = time.perf_counter() - started
        tracking.log_metrics({"feature_seconds": feature_seconds})
        return train_and_track(config, data, run_id) | {
            "model": config.model, "feature_seconds": feature_seconds,
            "features_from_cache": data.from_cache, "skipped_examples": len(data.skipped)}

    return runner.tracked_pipeline(config, "speech", work)


def search_space() -> dict:
    """What `--sweep N` searches: model shape, regularisation, learning rate, augmentation."""
    from optuna.distributions import CategoricalDistribution as OneOf
    from optuna.distributions import FloatDistribution, IntDistribution

    return {
        "front_end": OneOf(["conv", "none"]),
        "pooling": OneOf(["attention", "mean-max"]),
        "units": IntDistribution(32, 128, step=32),
        "depth": IntDistribution(1, 3),
        "dropout": FloatDistribution(0.1, 0.5),
        "learning_rate": FloatDistribution(1e-3, 1e-2, log=True),
        "noise_volume": FloatDistribution(0.0, 0.3),
        "time_mask_frames": IntDistribution(0, 20, step=5),
        "freq_mask_bins": IntDistribution(0, 10),
    }


def format_summary(result: dict) -> str:
    """The few lines a user reads at the end of a run."""
    from pipelines.runner import registry_lines

    return "\n".join([
        f"model             {result['model']}",
        f"test accuracy     {result['test_accuracy']:.4f}",
        f"test macro-F1     {result['test_macro_f1']:.4f}",
        f"skipped files     {result['skipped_examples']}",
        f"features          {result['feature_seconds']:.1f} s"
        + (" (from cache)" if result["features_from_cache"] else ""),
        f"training          {result['train_seconds']:.1f} s, {result['epochs_trained']} epochs",
        *registry_lines(result),
    ])


def build_parser() -> argparse.ArgumentParser:
    return config_parser(
        "python -m pipelines.speech",
        "Train a bidirectional LSTM/GRU keyword classifier on Speech Commands and track it in "
        "MLflow.",
        SpeechConfig,
        epilog=commands_epilog("python -m pipelines.speech", "FILE [FILE ...]"))


def predict_main(argv: Sequence[str]) -> int:
    """`predict FILE [FILE ...]`: label and probability per clip from a logged model."""
    from pipelines import runner, tracking

    parser = runner.model_parser(
        "python -m pipelines.speech predict",
        "Label audio files with a logged speech model (default: the champion).",
        SpeechConfig.registered_model)
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (WAV, FLAC, ...)")
    args = parser.parse_args(argv)
    clips, failed = [], {}
    for index, name in enumerate(args.files):
        try:
            clips.append(Path(name).read_bytes())
        except OSError as error:
            failed[index] = f"cannot read the file ({error.strerror})"
    model = tracking.load_served_model(args.model_uri, args.tracking_uri, args.store_dir)
    answer = (model.predict(pd.DataFrame({"audio": clips})) if clips
              else pd.DataFrame(columns=["label", "error"]))
    return runner.print_predictions(args.files, answer, failed)


def evaluation_inputs(data_dir: str, data_seed: int
                      ) -> tuple[pd.DataFrame, list[str], list[str], str, str]:
    """Labelled model inputs from a test-release folder (every clip, labelled by its folder) or
    a training-layout folder (its test split, composed as training composes it).

    Clips go in as file bytes; `_silence_` windows cut from the noise recordings go in as
    waveforms.

    Returns:
        (inputs, true labels, input names, content digest, layout description).
    """
    from features.speech_commands import is_test_release, test_release_examples
    from features.speech_features import decode_examples

    config = SpeechConfig(data_dir=data_dir, data_seed=data_seed)
    root = Path(data_dir)
    if is_test_release(root):
        examples, layout = test_release_examples(root), "test release (one folder per class)"
    else:
        examples, layout = compose_folder(config).examples["test"], "training layout, test split"
    silence = [e for e in examples if e.is_silence]
    waveforms = {index: waveform for index, waveform, _ in decode_examples(
        silence, root, AudioSpec(config.sample_rate, config.clip_seconds))}
    rows, hasher, position = [], hashlib.sha256(), 0
    for example in examples:
        hasher.update(f"{example.label}|{example.path}|{example.offset}|{example.rms!r}".encode())
        if example.is_silence:
            waveform = waveforms.get(position)
            position += 1
            rows.append({"audio": None, "sample_rate": config.sample_rate,
                         "waveform": None if waveform is None else waveform.tolist()})
            continue
        try:
            audio = (root / example.path).read_bytes()
        except OSError:
            audio = None
        hasher.update(hashlib.sha256(audio or b"").digest())
        rows.append({"audio": audio, "waveform": None, "sample_rate": config.sample_rate})
    names = [str(root / example.path) if not example.is_silence
             else f"{root / example.path}@{example.offset}" for example in examples]
    return (pd.DataFrame(rows, columns=["audio", "waveform", "sample_rate"]),
            [example.label for example in examples], names, hasher.hexdigest()[:16], layout)


def evaluate_main(argv: Sequence[str]) -> int:
    """`evaluate --data-dir DIR [--model-uri URI]`: accuracy, macro-F1 and confusion matrix of
    a logged model on a folder, recorded as an evaluation run linked to the model version."""
    from pipelines import runner

    parser = runner.evaluation_parser(
        "python -m pipelines.speech evaluate",
        "Evaluate a logged speech model on a Speech Commands folder: the official test "
        "release (ten word folders, _silence_/, _unknown_/) or the training layout (its test "
        "split).", SpeechConfig.registered_model, SpeechConfig.experiment)
    parser.add_argument("--data-seed", type=int, default=SpeechConfig.data_seed,
                        help="training layout: seed of the _unknown_/_silence_ composition")
    args = parser.parse_args(argv)
    inputs, truth, names, digest, layout = evaluation_inputs(args.data_dir, args.data_seed)
    log.info("evaluating %s on %d examples (%s)", args.model_uri, len(truth), layout)
    result = runner.evaluate_served(
        args, pipeline="speech", inputs=inputs, truth=truth, names=names,
        source=str(Path(args.data_dir).resolve()), digest=digest,
        dataset_name="speech-commands-evaluation")
    return runner.print_evaluation(result)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: `predict ...`, `evaluate ...`, or (no command) train with the flags."""
    from pipelines.runner import run_cli

    return run_cli(build_parser(), SpeechConfig, run, format_summary, argv,
                   (ValueError, FileNotFoundError, DatasetUnavailableError),
                   {"predict": predict_main, "evaluate": evaluate_main})


if __name__ == "__main__":
    from pipelines.interrupts import exit_process

    exit_process(main())
