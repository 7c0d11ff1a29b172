"""`python -m pipelines.speech export --format tflite [--quantize none|dynamic|int8]`: a logged
speech model as a TensorFlow Lite file, from raw 16 kHz waveforms to probabilities.

The served Keras model (`MfccLayer`, then the classifier) is rebuilt with the layer computing
its DFT as two matrix products (TensorFlow Lite's FFT takes only power-of-two lengths, the
frames here are 480 samples) and traced for one clip at a time, (1, 16000), which gives the
recurrent layers' loops static shapes: the converter then needs TensorFlow Lite's built-in ops
only (no select TF ops). `dynamic` stores every weight as int8, the MFCC stage's DFT, mel and
DCT matrices included. `int8` quantises weights and activations of the classifier, calibrated on
clips of `--data-dir`'s training split (as the model's own run composed it), and keeps the MFCC
stage and the input normalisation in float (they lose too much in int8); its recurrent layers
are unrolled, since TensorFlow Lite's calibration crashes on their loops. The file is written to
`--out`, its labels (one per line, in the order of the output's probabilities) to
`<name>_labels.txt` beside it, and both are logged as artifacts (`tflite/`) of the model
version's run, with a tag `tflite.<name>` (`export_tag`) saying how the file was made (its
quantisation and, for int8, its calibration clips). Neither file overwrites an existing one without
`--overwrite`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from features.audio import AudioSpec
from features.mfcc_layer import MfccLayer
from features.speech_commands import SPEECH_COMMANDS_ENV, SplitConfig, load_speech_commands
from pipelines import cli, tracking
from pipelines.config import config_from_params
from pipelines.errors import ConfigError, DataError, ModelError
from pipelines.serving import SpeechPredictor

QUANTIZATIONS = ("none", "dynamic", "int8")
CALIBRATION_CLIPS = 200
ARTIFACT_FOLDER = "tflite"  # where the files are logged on the version's run
INT8_NEEDS_CLIPS = ("--quantize int8 calibrates on real clips: pass --data-dir (or set "
                    f"{SPEECH_COMMANDS_ENV})")

log = logging.getLogger(__name__)


def unrolled(config: dict) -> dict:
    """A layer config with every recurrent layer in it (also inside Bidirectional) unrolled."""
    config = dict(config)
    if "unroll" in config:
        config["unroll"] = True
    for key in ("layer", "backward_layer"):
        if isinstance(config.get(key), dict) and "config" in config[key]:
            config[key] = dict(config[key], config=unrolled(config[key]["config"]))
    return config


def tflite_ready(model: keras.Model, unroll: bool = False) -> keras.Model:
    """The waveform model with its MfccLayer computing the DFT by matrix products and, with
    `unroll`, its recurrent layers unrolled (same weights)."""
    def clone(layer):
        if isinstance(layer, MfccLayer):
            return MfccLayer.from_config(layer.get_config() | {"dft": "matmul"})
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=clone)
        config = layer.get_config()
        return layer.__class__.from_config(unrolled(config) if unroll else config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def convert(model: keras.Model, quantize: str, calibration: np.ndarray | None = None
            ) -> bytes:
    """A (clips, samples) waveform model as a TensorFlow Lite flatbuffer for one clip a call.

    Raises:
        ConfigError: An unknown quantisation, or `int8` without calibration clips.
    """
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, not "
                          f"{quantize!r}")
    ready = tflite_ready(model, unroll=quantize == "int8")
    samples = int(model.input.shape[-1])
    with tempfile.TemporaryDirectory() as folder:
        ready.export(folder, format="tf_saved_model", verbose=False,
                     input_signature=[tf.TensorSpec([1, samples], tf.float32)])
        if quantize != "int8":
            return finish(tf.lite.TFLiteConverter.from_saved_model(folder), quantize, None)
        front_end = front_end_nodes(
            finish(tf.lite.TFLiteConverter.from_saved_model(folder), "none", None))
        return finish(tf.lite.TFLiteConverter.from_saved_model(folder), quantize, calibration,
                      keep_float=front_end)


# ops kept in float by int8: the MFCC stage (its DFT, mel and DCT products) and the
# classifier's per-coefficient normalisation of MFCCs of up to +-500 (op names carry the layer
# names features.mfcc_layer and models.recurrent give them)
FLOAT_OPS = ("mfcc_layer", "/normalize")


def front_end_nodes(content: bytes) -> list[str]:
    """The names of the ops of a converted model's front end (FLOAT_OPS), which lose too much
    in int8 (docs/results.md, TensorFlow Lite)."""
    interpreter = Interpreter(model_content=content)
    names = {tensor["index"]: tensor["name"] for tensor in interpreter.get_tensor_details()}
    # the Interpreter's only listing of ops is private (TensorFlow as pinned in
    # constraints.txt); test_export checks the front end's ops are found
    return sorted({names[index] for op in interpreter._get_ops_details()
                   for index in op["outputs"]
                   if any(marker in names.get(index, "") for marker in FLOAT_OPS)})


def finish(converter: tf.lite.TFLiteConverter, quantize: str,
           calibration: np.ndarray | None, keep_float: Sequence[str] = ()) -> bytes:
    """Converts with TensorFlow Lite's built-in ops, quantised as asked (`int8`: every op but
    those named in `keep_float`)."""
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        if calibration is None or not len(calibration):
            raise ConfigError(INT8_NEEDS_CLIPS)

        def representative() -> Iterator[list[np.ndarray]]:
            for clip in calibration:
                yield [clip[None].astype(np.float32)]

        converter.representative_dataset = representative
        options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=list(keep_float))
        with warnings.catch_warnings():  # the debugger runs TensorFlow's own deprecated
            # tf.lite.Interpreter; what is exported is run with LiteRT's
            warnings.filterwarnings("ignore", "\\s*Warning: tf.lite.Interpreter is deprecated",
                                    UserWarning)
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=representative, debug_options=options)
            return debugger.get_nondebug_quantized_model()
    return converter.convert()


class TfliteClassifier:
    """A converted model run with the LiteRT interpreter (TensorFlow Lite's, which TensorFlow
    deprecates for it), a clip at a time."""

    def __init__(self, content: bytes):
        self.interpreter = Interpreter(model_content=content)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        answers = []
        for clip in np.asarray(waveforms, np.float32):
            self.interpreter.set_tensor(self.input, clip[None])
            self.interpreter.invoke()
            answers.append(self.interpreter.get_tensor(self.output)[0].copy())
        return np.stack(answers)


def exportable(predictor, model_uri: str) -> SpeechPredictor:
    """`predictor` when it serves a speech model over waveforms, the only kind that exports.

    Raises:
        ModelError: Another model (one over MFCC frames, or not a speech model).
    """
    if not isinstance(predictor, SpeechPredictor) or not predictor.takes_waveforms:
        raise ModelError(f"{model_uri}: not a speech model over waveforms (as the speech "
                         "pipeline logs them): only those export")
    return predictor


def calibration_clips(data_dir: str | None, predictor: SpeechPredictor, splits: SplitConfig,
                      count: int = CALIBRATION_CLIPS) -> np.ndarray | None:
    """`count` clips of a Speech Commands folder's training split as `splits` composes it (the
    model's own run's split options), drawn as `training_draw` draws them; the validation and
    test splits stay unseen by the quantiser (None without a folder).

    Raises:
        DataError: The folder's training split is empty, or none of its clips drawn decodes.
    """
    if not data_dir:
        return None
    train = load_speech_commands(data_dir, splits, predictor.spec).examples["train"]
    if not train:
        raise DataError(f"{data_dir}: its training split (validation {splits.validation_pct:g} "
                        f"%, test {splits.test_pct:g} %, or its split lists) holds no clip to "
                        "calibrate --quantize int8 on")
    if len(train) < count:
        log.warning("%s: its training split holds %d clips, fewer than the %d asked to "
                    "calibrate --quantize int8: calibrating on all of them", data_dir,
                    len(train), count)
    return training_draw(train, data_dir, predictor.spec, count)


def training_draw(train: Sequence, data_dir: str | Path, spec: AudioSpec,
                  count: int = CALIBRATION_CLIPS) -> np.ndarray:
    """`count` of the training examples `train` (`_silence_` windows included), drawn at random
    with a fixed seed and decoded as the served model decodes them.

    Raises:
        DataError: None of them decodes.
    """
    from features.speech_features import ExampleDecoder

    order = np.random.default_rng(0).permutation(len(train))[:count]
    clips = ExampleDecoder([train[i] for i in order], Path(data_dir), spec)
    chunk = clips.chunk(0, len(order))
    decoded = chunk.waveforms
    if not len(decoded):
        raise DataError(f"{data_dir}: no training clip decodes, nothing to calibrate "
                        "--quantize int8 on")
    if chunk.skipped:
        log.warning("%d of the %d calibration clips drawn did not decode, calibrating on %d: "
                    "%s", len(chunk.skipped), len(order), len(decoded),
                    "; ".join(reason for _, reason in chunk.skipped[:3]))
    return decoded


def export_tag(name: str) -> str:
    """The run tag saying how the file `name` logged under tflite/ was made: `tflite.<name>`;
    where the name holds characters an MLflow tag key may not (they become `_`) or is longer
    than a key may be (250 characters, cut), a digest of the name follows, so that no two
    names share a key."""
    key = f"{ARTIFACT_FOLDER}.{name}"
    safe = re.sub(r"[^\w./ -]", "_", key)
    if safe == key and len(key) <= 250:
        return key
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{safe[:250 - 13]}.{digest}"


def labels_path(out: Path) -> Path:
    """Where the labels of a file written to `out` go: `speech-int8.tflite` ->
    `speech-int8_labels.txt` (TensorFlow's speech_commands example ships `conv_labels.txt`)."""
    return out.with_name(f"{out.stem}_labels.txt")


def write_whole(files: dict[Path, bytes]) -> None:
    """Writes each file under a temporary name beside it, flushed to disk, then renames them
    all into place: an export stopped part-way leaves no half-written file at `--out` (nor
    takes away the file that `--overwrite` replaces) and no temporary one behind it."""
    written: list[tuple[Path, Path]] = []
    try:
        for index, (path, content) in enumerate(files.items()):
            # a short name (--out's may be as long as a name can be), made as any file is
            temporary = path.with_name(f".export-{os.getpid()}-{index}.partial")
            written.append((temporary, path))
            with open(temporary, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        for temporary, path in written:
            os.replace(temporary, path)
    finally:
        for temporary, _ in written:
            temporary.unlink(missing_ok=True)


def export_command(task: cli.TaskCommands, argv: list[str]) -> int:
    """`export --format tflite ...`: writes the file and its labels file, logs both on the
    version's run, prints their paths and the file's size."""
    parser = export_parser(task)
    args = parser.parse_args(argv)
    if args.quantize == "int8" and not args.data_dir:
        parser.error(INT8_NEEDS_CLIPS)
    if args.calibration_clips < 1:
        parser.error(f"--calibration-clips must be at least 1, not {args.calibration_clips}")
    out, labels_file = output_files(parser, args)
    predictor = exportable(tracking.load_predictor(  # the files are logged on its run
        args.model_uri, args.tracking_uri, args.store_dir, needs_store=True), args.model_uri)
    tracking.require_writable_store(args.tracking_uri, args.store_dir)  # logs on the run
    run_id, logged = tracking.model_run_files(args.model_uri, ARTIFACT_FOLDER)
    clash = sorted(logged & {out.name, labels_file.name})
    if clash and not args.overwrite:
        parser.error(f"run {run_id} of {args.model_uri} holds "
                     f"{' and '.join(cli.tsv_field(f'{ARTIFACT_FOLDER}/{name}') for name in clash)}"
                     " already: "
                     "name --out otherwise, or pass --overwrite to replace")
    calibration = None
    if args.quantize == "int8":  # the training split as the model's own run composed it
        trained = config_from_params(task.config, tracking.run_params(run_id))
        calibration = calibration_clips(args.data_dir, predictor, trained.splits,
                                        args.calibration_clips)
        log.info("--quantize int8: calibrating on %d clips of %s's training split, composed "
                 "with run %s's split options (validation %g %%, test %g %%, data seed %d)",
                 len(calibration), args.data_dir, run_id, trained.splits.validation_pct,
                 trained.splits.test_pct, trained.splits.data_seed)
    content = convert(predictor.model, args.quantize, calibration)
    labels = "".join(f"{label}\n" for label in predictor.labels)
    write_whole({out: content, labels_file: labels.encode()})
    spec = predictor.spec
    how = f"--quantize {args.quantize}, {spec.clip_samples} samples at {spec.sample_rate} Hz in" + (
        f", calibrated on {len(calibration)} training clips of {Path(args.data_dir).resolve()}"
        if calibration is not None else "")
    tracking.log_to_run(run_id, [out, labels_file], ARTIFACT_FOLDER,
                        tags={export_tag(out.name): how})
    print(f"{cli.tsv_field(str(out))}\t{len(content):,} bytes\t"
          f"{cli.tsv_field(str(labels_file))}\tlogged on run {run_id} as "
          + cli.tsv_field(f"{ARTIFACT_FOLDER}/{out.name} and {ARTIFACT_FOLDER}/{labels_file.name}"))
    return 0


def export_parser(task: cli.TaskCommands) -> argparse.ArgumentParser:
    """`export`'s options, beside those of every command on a logged model."""
    parser = cli.model_parser(task, "export", "Export a logged speech model (default: the "
                              "champion) as a TensorFlow Lite file over raw waveforms at the "
                              "model's rate (one 16,000-sample clip at 16 kHz by default).")
    parser.add_argument("--format", choices=["tflite"], default="tflite",
                        help="TensorFlow Lite, run by the LiteRT interpreter")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                        help="none: float32. dynamic: every weight in int8, the MFCC stage's "
                             "matrices included (the smallest file), which changes labels "
                             "(73-80 %% agreement with the Keras model on the test split, "
                             "docs/results.md). int8: the classifier's weights and "
                             "activations in int8, the front end in float, calibrated on "
                             "--data-dir's training clips (its recurrent layers unrolled: "
                             "about twice the size of none's file)")
    parser.add_argument("--data-dir", default=os.environ.get(SPEECH_COMMANDS_ENV),
                        help="Speech Commands folder (for --quantize int8) [env: "
                        f"{SPEECH_COMMANDS_ENV}]")
    parser.add_argument("--calibration-clips", type=int, default=CALIBRATION_CLIPS,
                        help="how many of --data-dir's training clips, drawn at random, "
                             "calibrate --quantize int8")
    parser.add_argument("--out", help="file to write; unset: speech-<quantize>.tflite (the "
                        "labels go beside it, one per line in output order, in "
                        "<name>_labels.txt)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out and its labels file where they exist, and the "
                        "files of those names logged on the version's run")
    return parser


def output_files(parser: argparse.ArgumentParser, args: argparse.Namespace
                 ) -> tuple[Path, Path]:
    """The .tflite file and its labels file to write: a usage error, before the model is
    loaded, where their folder is missing or cannot be written, either is a folder, or either
    exists and --overwrite is not given."""
    out = Path(args.out or f"speech-{args.quantize}.tflite")
    labels_file, shown = labels_path(out), cli.tsv_field(str(out))
    if not out.parent.is_dir():
        parser.error(f"--out {shown}: there is no folder {cli.tsv_field(str(out.parent))}")
    cli.require_writable_folder(parser, out.parent, "--out folder")
    if str(args.out).endswith(os.sep):  # Path drops the separator that says "a folder"
        parser.error(f"--out {shown}: {shown} is a folder: name a file to write")
    try:
        for path in (out, labels_file):
            if path.is_dir():
                parser.error(f"--out {shown}: {cli.tsv_field(str(path))} is a folder: name a "
                             "file to write")
        # a link, even to nothing, is the user's
        existing = [cli.tsv_field(str(path)) for path in (out, labels_file)
                    if path.exists() or path.is_symlink()]
    except OSError as error:  # a name too long for the file system
        parser.error(f"--out {shown}: {error.strerror} ({cli.tsv_field(str(labels_file))} "
                     "holds the labels)")
    if existing and not args.overwrite:
        parser.error(f"{' and '.join(existing)} {'exist' if len(existing) > 1 else 'exists'}"
                     " already: pass another --out, or --overwrite to replace")
    return out, labels_file
