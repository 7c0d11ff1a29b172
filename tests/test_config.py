"""Task configs: one dataclass per stage, each option declared once with one default, the flags
and logged parameters derived from them."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities.model_registry import ModelVersion

from pipelines import cli, review_inputs, sentiment, speech, tracking, training
from pipelines.config import config_from_params
from pipelines.descriptions import evaluation_run_name, run_description, run_name
from pipelines.errors import DataError
from pipelines.sentiment import SentimentConfig
from pipelines.speech import SpeechConfig

REPO = Path(__file__).resolve().parents[1]
PRODUCT = [path for folder in ("features", "models", "pipelines")
           for path in sorted((REPO / folder).rglob("*.py"))]
TASKS = [SpeechConfig, SentimentConfig]
SENTINELS = (None, "", ())  # "not given" values, not defaults that could drift


def literal(node: ast.expr | None):
    """The value of a literal expression (numbers, strings, tuples, -x), else Ellipsis."""
    try:
        return ast.literal_eval(node) if node is not None else Ellipsis
    except ValueError:
        return Ellipsis


def declared_defaults() -> list[tuple[str, str, object]]:
    """(where, name, value) of every literal default in the product: dataclass fields
    (`name: T = value` or `field(default=value)`) and function keyword defaults."""
    found = []
    for path in PRODUCT:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if not (isinstance(item, ast.AnnAssign) and isinstance(item.target,
                                                                           ast.Name)):
                        continue
                    value = item.value
                    if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "field":
                        value = next((k.value for k in value.keywords if k.arg == "default"),
                                     None)
                    found.append((f"{path.name}:{node.name}", item.target.id, literal(value)))
            elif isinstance(node, ast.FunctionDef):
                args = node.args
                positional = args.posonlyargs + args.args
                pairs = list(zip(positional[len(positional) - len(args.defaults):],
                                 args.defaults, strict=True))
                pairs += [(arg, default) for arg, default in zip(args.kwonlyargs,
                                                                 args.kw_defaults, strict=True)
                          if default is not None]
                found += [(f"{path.name}:{node.name}()", arg.arg, literal(default))
                          for arg, default in pairs]
    return [(where, name, value) for where, name, value in found
            if value is not Ellipsis and value not in SENTINELS]


@pytest.mark.parametrize("task", TASKS, ids=lambda task: task.__name__)
def test_every_option_is_one_documented_field_of_one_stage(task):
    options = task.option_fields()  # raises if two stages declare the same name
    assert len(options) == sum(len(dataclasses.fields(stage))
                               for stage in task.stage_types().values())
    undocumented = [name for name, option in options.items()
                    if not option.field.metadata.get("help")]
    assert undocumented == []


@pytest.mark.parametrize("task", TASKS, ids=lambda task: task.__name__)
def test_a_task_sets_only_the_options_its_stages_leave_open(task):
    """A task's composition never overrides a stage's own default: an option shared by both
    tasks with different values has no default in its stage, and each task gives it once."""
    overridden = []
    for name, stage_type in task.stage_types().items():
        instance = getattr(task(), name)
        for item in dataclasses.fields(stage_type):
            if item.default is not dataclasses.MISSING and \
                    getattr(instance, item.name) != item.default:
                overridden.append(f"{name}.{item.name}")
    assert overridden == []


def test_no_option_default_is_declared_twice():
    """The one place an option's default is written is its stage field: no other dataclass
    field and no function parameter of the same name carries a default of its own. (The two
    tasks may each have an option of a name, in their own stages: `--source` of speech and of
    sentiment are two options.)"""
    options: dict[str, set[str]] = {}
    for task in TASKS:
        for name, option in task.option_fields().items():
            options.setdefault(name, set()).add(task.stage_types()[option.stage].__name__)
    twice = [f"{where} {name}={value!r}" for where, name, value in declared_defaults()
             if name in options and where.split(":")[1] not in options[name]]
    assert twice == []


def test_every_choice_list_is_written_once():
    choice_sets = {frozenset(option.field.metadata["choices"])
                   for task in TASKS for option in task.option_fields().values()
                   if option.field.metadata.get("choices")}
    written = []
    for path in PRODUCT:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple | ast.List) and frozenset(
                    value for value in [literal(element) for element in node.elts]
                    if isinstance(value, str)) in choice_sets and len(node.elts) > 1:
                written.append((path.name, node.lineno, literal(node)))
    counts = {}
    for _, _, values in written:
        counts[frozenset(values)] = counts.get(frozenset(values), 0) + 1
    assert set(counts) == choice_sets
    assert {key: count for key, count in counts.items() if count > 1} == {}, written


@pytest.mark.parametrize("task", TASKS, ids=lambda task: task.__name__)
def test_logged_parameters_rebuild_the_config(task):
    config = task.from_options(units=96, seed=3, store_dir="elsewhere", run_name=None,
                               register=False)
    params = {name: str(value) for name, value in config.options().items()}
    assert config_from_params(task, params) == config
    assert config.recurrent.units == 96 and config.optim.seed == 3
    assert not config.run.register and config.run.store_dir == "elsewhere"


@pytest.mark.parametrize("pipeline", [speech, sentiment], ids=lambda module: module.PIPELINE)
def test_every_flag_is_one_option(pipeline):
    flags = {action.dest for action in cli.training_parser(pipeline.COMMANDS)._actions
             if action.dest != "help"}
    assert flags == set(pipeline.COMMANDS.config.option_fields())


def test_unknown_option_names_and_values_fail_loudly():
    with pytest.raises(ValueError, match="unknown options: unitz"):
        SpeechConfig.from_options(unitz=3)
    with pytest.raises(ValueError, match="logged parameter units='many' is not a int"):
        config_from_params(SpeechConfig, {"units": "many"})
    with pytest.raises(ValueError, match="speed_change"):
        SpeechConfig.from_options(speed_change=1.5)  # the stage validates itself


@pytest.mark.parametrize(("task", "flags", "message"), [
    (speech, ["--hop-ms", "0.01"], "hop_ms=0.01 is under one sample at 16000 Hz"),
    (speech, ["--hop-ms", "-5"], "hop_ms must be a number > 0, got -5.0"),
    (speech, ["--top-db", "-10"], "top_db must be a number > 0, got -10.0"),
    (speech, ["--n-mfcc", "0"], "n_mfcc must be a number >= 1, got 0"),
    (speech, ["--fmin", "9000"], "fmin=9000 must be below fmax=8000"),
    (speech, ["--units", "0"], "units must be a number >= 1, got 0"),
    (speech, ["--dropout", "1.5"], "dropout must be within [0, 1), got 1.5"),
    (speech, ["--time-shift-ms", "nan"], "time_shift_ms must be a number >= 0, got nan"),
    (speech, ["--noise-volume", "inf"], "noise_volume must be a number >= 0, got inf"),
    (speech, ["--sweep", "-2"], "sweep must be a number >= 0, got -2"),
    (speech, ["--in-memory-mb", "-5"], "in_memory_mb must be a number >= 0, got -5"),
    (sentiment, ["--buckets", "0"], "buckets must be a number >= 1, got 0"),
    (sentiment, ["--sequence-length", "0"], "sequence_length must be a number >= 1, got 0"),
    (sentiment, ["--model", "tfidf-logreg", "--logreg-c", "0"],
     "logreg_c must be a number > 0, got 0.0"),
    (sentiment, ["--min-df", "0"], "min_df must be a number >= 1, got 0"),
    (speech, ["--epochs", "0"], "epochs must be a number >= 1, got 0"),
    (speech, ["--batch-size", "0"], "batch_size must be a number >= 1, got 0"),
    (speech, ["--seed", "-1"], "seed must be a seed in [0, 2**32), got -1"),
    (speech, ["--seed", str(2**32)], "seed must be a seed in [0, 2**32), got 4294967296"),
    (speech, ["--seed", "1" + "0" * 400], "seed (401 digits): too large a number"),
    (speech, ["--data-seed", "-1"], "data_seed must be a number >= 0, got -1"),
    (sentiment, ["--data-seed", "-1"], "data_seed must be a seed in [0, 2**32), got -1"),
    (sentiment, ["--pretrain-seed", str(2**32)], "pretrain_seed must be a seed in [0, 2**32)"),
    (sentiment, ["--embedding-dim", "0"], "embedding_dim must be a number >= 1, got 0"),
    (sentiment, ["--embedding-dropout", "1.5"], "embedding_dropout must be within [0, 1), got 1.5"),
    (sentiment, ["--ngram-c", "0"], "ngram_c must be a number > 0, got 0.0"),
    (sentiment, ["--ngram-order", "0"], "ngram_order must be a number >= 1, got 0"),
    (sentiment, ["--ngram-features", "1"], "ngram_features must be 0 (no branch) or at least 2"),
    (speech, ["--sample-rate", "1" + "0" * 400], "sample_rate (401 digits): too large a number"),
    (sentiment, ["--resume", ""], "resume: empty (''); give a run id"),
    (sentiment, ["--weight-decay", "1e30"], "learning_rate x weight_decay must be under 1 "
                                            "(AdamW scales the weights by 1 minus their product "
                                            "each step), got 0.003 x 1e+30"),
    (sentiment, ["--checkpoint-dir", "", "--store-dir", ""], "store_dir, checkpoint_dir: empty "
                                                            "(''); give a value"),
    (speech, ["--cache-dir", ""], "cache_dir: empty (''); give a value"),
    (sentiment, ["--sequence-length", "99999999999999999999"], "sequence_length (20 digits): "
                                                              "too large a number"),
    (sentiment, ["--negative-samples", str(2**31)], "negative_samples must be at most "
                                                   "2147483647, got 2147483648"),
    (speech, ["--clip-seconds", "1e308"], "clip_seconds (1e+308): too large a number"),
    (speech, ["--learning-rate", "nan"], "learning_rate must be a number > 0, got nan"),
    (speech, ["--learning-rate", "-0.01"], "learning_rate must be a number > 0, got -0.01"),
    (speech, ["--label-smoothing", "1.5"], "label_smoothing must be within [0, 1), got 1.5"),
    (speech, ["--patience", "-1"], "patience must be a number >= 0, got -1"),
    (speech, ["--warmup-epochs", "-2"], "warmup_epochs must be a number >= 0, got -2"),
    (speech, ["--example-budget", "-5"], "example_budget must be a number >= 0, got -5"),
    (sentiment, ["--word-vector-epochs", "0"], "word_vector_epochs must be a number >= 1, got 0"),
    (speech, ["--conv-filters", "0"], "conv_filters must be a number >= 1, got 0"),
    (speech, ["--input-noise", "2"], "input_noise must be within [0, 1], got 2.0"),
    (speech, ["--sample-rate", "8000"], "fmax=8000 Hz is above half the sample rate (4000 Hz"),
    (speech, ["--sample-rate", "500000"], "sample_rate must be at most 384000 Hz, got 500000"),
    (speech, ["--fmin", "100", "--fmax", "101"], "40 of the n_mels=40 mel bands between fmin="),
    (speech, ["--window-ms", "0.01"], "window_ms=0.01 is under one sample at 16000 Hz"),
    (speech, ["--window-ms", "1e308"], "window_ms (1e+308): too large a number"),
    (speech, ["--window-ms", "1000"], "a clip must give at least 2 frames, not 1"),
    (speech, ["--time-shift-ms", "1e308"], "time_shift_ms=1e+308 would shift a clip out of "
     "its 1000 ms"),
    (speech, ["--learning-rate", "1e39"], "learning_rate must be at most 3.4e+38 (float32)"),
    (speech, ["--registered-model", "team/speech"], "registered_model 'team/speech': Invalid "
                                                    "model name"),
    (speech, ["--registered-model", " "], "registered_model ' ': Missing value"),
    (speech, ["--experiment", ""], "experiment '': Invalid experiment name"),
])
def test_options_out_of_range_are_usage_errors_before_any_run(task, flags, message,
                                                              tmp_path: Path, capsys):
    """Named with the value, exit 2, no traceback, and nothing made: no store, no run."""
    store = tmp_path / "mlruns"
    assert task.main(["--data-dir", str(tmp_path), "--store-dir", str(store), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not store.exists()


def test_the_schedule_scales_with_the_training_examples():
    optim = SpeechConfig().optim
    assert training.scheduled(optim, 2_700).epochs == 120  # the shared data: --epochs binds
    assert training.scheduled(optim, 84_843).epochs == 18  # the full release: the budget
    assert training.scheduled(optim, 10_000_000).epochs == 1
    assert training.scheduled(SentimentConfig().optim, 22_500).epochs == 3  # budget 0: --epochs


@pytest.mark.parametrize(("epochs", "warmup", "peak_step"), [(120, 2, 20), (2, 2, 10), (1, 2, 0)])
def test_every_schedule_warms_up_then_decays(epochs, warmup, peak_step):
    """Warm-up takes at most all epochs but the last, so a run of one or two epochs (a large
    dataset's budget) still decays instead of ending at or before its peak."""
    optim = dataclasses.replace(SpeechConfig().optim, epochs=epochs, warmup_epochs=warmup)
    schedule = training.learning_rate_schedule(optim, steps_per_epoch=10)
    rates = [float(schedule(step)) for step in range(epochs * 10 + 1)]
    assert int(np.argmax(rates)) == peak_step
    assert rates[peak_step] == pytest.approx(optim.learning_rate)
    assert rates[-1] < 0.05 * optim.learning_rate


def test_run_names_say_task_model_and_seed():
    assert run_name(SpeechConfig(), "speech") == "speech-crnn-bigru64-s0"
    assert run_name(SpeechConfig.from_options(front_end="none", cell="lstm", units=32, seed=2),
                    "speech") == "speech-rnn-bilstm32-s2"
    assert run_name(SpeechConfig.from_options(model="tutorial-cnn"), "speech") == (
        "speech-tutorial-cnn-s0")
    assert run_name(SentimentConfig(), "sentiment") == "sentiment-bigru128-ngrams-s0"
    assert run_name(SentimentConfig.from_options(ngram_features=0, seed=1), "sentiment") == (
        "sentiment-bigru128-s1")
    assert run_name(SentimentConfig.from_options(model="tfidf-logreg"), "sentiment") == (
        "sentiment-tfidf-logreg-s0")
    assert run_name(SpeechConfig.from_options(sweep=8), "speech-sweep") == (
        "speech-crnn-bigru64-s0-sweep8")
    assert run_name(SpeechConfig.from_options(run_name="mine"), "speech") == "mine"


def test_evaluation_run_names_say_which_model():
    version = ModelVersion("speech-commands", "3", creation_timestamp=0)
    assert evaluation_run_name("models:/speech-commands@champion", version) == (
        "evaluate-speech-commands-v3")
    assert evaluation_run_name("runs:/0123456789abcdef/model", None) == "evaluate-run-01234567"
    assert evaluation_run_name("/tmp/exported/model", None) == "evaluate-model"


def test_a_run_description_gives_the_kept_models_test_and_validation_accuracy():
    text = run_description("speech-crnn-s0", {
        "test_accuracy": 0.9, "model_val_accuracy": 0.85, "registered_version": "3",
        "champion": True, "promotion_reason": "beats v2"})
    assert "test accuracy 90.00%, validation 85.00%" in text
    assert "registered as version 3: **champion** (beats v2)" in text


def test_evaluation_names_each_skipped_input_but_counts_copies(capsys):
    review_inputs.print_skipped([("test/pos/1_9.txt", "duplicate of test/pos/0_9.txt"),
                       ("test/neg/2_1.txt", "empty"),
                       ("test/neg/3_1.txt", "duplicate of test/neg/4_2.txt")])
    assert capsys.readouterr().err.splitlines() == [
        "test/neg/2_1.txt: skipped: empty",
        "skipped 2 copies of other inputs (each kept once), e.g. test/pos/1_9.txt "
        "(duplicate of test/pos/0_9.txt)"]


def test_a_file_of_inputs_skips_and_counts_its_blank_lines(tmp_path: Path, capsys):
    path = tmp_path / "reviews {0}.txt"  # braces in a name are not format fields
    path.write_bytes(b"first\n\n  \nsecond \xff\n" + b"\n" * 12 + b"third")
    assert review_inputs.file_lines(str(path)) == ["first", "second \ufffd", "third"]
    assert capsys.readouterr().err == (f"{path}: skipped 14 blank line(s): "
                                       "2, 3, 5, 6, 7, 8, 9, 10, 11, 12, ...\n"
                                       f"{path}: 1 line(s) not UTF-8, read with U+FFFD for the "
                                       "bytes: 4\n")
    other = tmp_path / "more.txt"
    other.write_text("fourth\n")
    args, inputs = sentiment.read_texts(argparse.ArgumentParser(), [
        "given", "  ", "--file", str(path), "--file", str(other)])
    assert list(inputs.frame["text"]) == ["given", "  ", "first", "second \ufffd", "third",
                                          "fourth"]
    assert inputs.names[:2] == ["given", "'  '"]  # a blank review is named quoted
    with pytest.raises(DataError, match=f"cannot read {tmp_path / 'absent.txt'}"):
        review_inputs.file_lines(str(tmp_path / "absent.txt"))


@pytest.mark.parametrize(("commands", "env"), [(speech.COMMANDS, "SPEECH_COMMANDS_DIR"),
                                               (sentiment.COMMANDS, "IMDB_DATA_DIR")])
def test_evaluate_reads_the_data_folder_from_the_variable_training_reads(
        commands, env: str, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(SystemExit) as refused:
        cli.main(commands, ["evaluate", "--store-dir", str(tmp_path)])
    assert refused.value.code == 2
    assert "the following arguments are required: --data-dir" in capsys.readouterr().err
    monkeypatch.setenv(env, str(tmp_path / "absent"))
    assert cli.main(commands, ["evaluate", "--store-dir", str(tmp_path)]) == 2
    # past the parser: the store (speech reads its model's split options first) or the folder
    assert capsys.readouterr().err.startswith(
        "error: models:/speech-commands@champion: there is no MLflow store in"
        if commands is speech.COMMANDS
        else f"error: IMDB data folder not found: {tmp_path / 'absent'}")


def test_a_sweeps_name_leaves_out_what_it_searches():
    config = SpeechConfig.from_options(sweep=8)
    assert run_name(config, "speech-sweep") == "speech-crnn-bigru64-s0-sweep8"
    assert run_name(config, "speech-sweep", swept={"units", "front_end"}) == (
        "speech-bigru-s0-sweep8")
    sentiment_config = SentimentConfig.from_options(sweep=4)
    assert run_name(sentiment_config, "sentiment-sweep", swept={"ngram_features"}) == (
        "sentiment-bigru128-s0-sweep4")


def test_tensorflows_log_lines_pass_once_through_the_commands_handlers(tmp_path: Path, caplog):
    """TensorFlow's logger keeps no handler of its own (each of its lines printed twice), and
    its INFO lines (a temporary folder for each model saved) are not shown."""
    with pytest.raises(SystemExit) as stopped:  # a command that stops at its options
        speech.main(["listen", str(tmp_path / "x.wav"), "--hop-ms", "0"])
    assert stopped.value.code == 2
    tensorflow_logger = logging.getLogger("tensorflow")
    tensorflow_logger.info("Assets written to: /tmp/x/assets")
    tensorflow_logger.warning("a warning")
    assert not tensorflow_logger.handlers
    assert [(r.name, r.getMessage()) for r in caplog.records if r.name == "tensorflow"] == [
        ("tensorflow", "a warning")]


def test_a_model_name_is_checked_only_where_it_is_registered():
    """By MLflow's own rules, before any work (MLflow's store would refuse them after it)."""
    with pytest.raises(ValueError, match="Names cannot contain ./. or .:."):
        SpeechConfig.from_options(registered_model="team/speech")
    with pytest.raises(ValueError, match="^registered_model '..': .* must not resolve to other "
                       "names"):
        SpeechConfig.from_options(registered_model="..")
    with pytest.raises(ValueError, match="^experiment 'xxxx.*': 'name' exceeds the maximum "
                       "length of 500 characters"):
        SpeechConfig.from_options(experiment="x" * 501)
    assert SpeechConfig.from_options(register=False, registered_model="team/speech").run


def test_options_the_model_task_or_source_leaves_without_effect_are_named(tmp_path: Path,
                                                                          caplog, monkeypatch):
    """Warned once, before any work, for a run (a sweep's trials, inside its run, are not)."""
    caplog.set_level("WARNING", "pipelines.config")
    places = {"store_dir": str(tmp_path / "mlruns"), "data_dir": str(tmp_path),
              "checkpoint_dir": str(tmp_path / "ck")}
    cnn = SpeechConfig.from_options(**places, cache_dir=str(tmp_path), model="tutorial-cnn",
                                    units=32, task="all-words", silence_pct=5,
                                    learning_rate=0.01)
    speech.prepare_run(cnn)
    sentiment.prepare_run(SentimentConfig.from_options(
        **places, model="tfidf-logreg", units=32, seed=3, min_df=2), None)
    sentiment.prepare_run(SentimentConfig.from_options(**places, min_df=3, units=32), None)
    assert caplog.messages == ["--model tutorial-cnn: not used: --units 32",
                               "--task all-words: not used: --silence-pct 5",
                               "--model tfidf-logreg: not used: --units 32",
                               "--model recurrent: not used: --min-df 3"]
    caplog.clear()
    with tracking.open_run("speech-commands", tracking_uri=None, store_dir=places["store_dir"]):
        speech.prepare_run(cnn)
    monkeypatch.setenv("SPEECH_COMMANDS_DIR", str(tmp_path))  # the command line's default
    tfds = SpeechConfig.from_options(source="tfds", data_dir=str(tmp_path))
    tfds.warn_unused()
    assert caplog.messages == []


def test_a_run_logged_with_values_a_command_line_now_refuses_is_read_back():
    """evaluate, export and --resume read a run's options back as the run had them."""
    config = config_from_params(SpeechConfig, {"cache_dir": "", "data_seed": str(2**63)})
    assert (config.source.cache_dir, config.splits.data_seed) == ("", 2**63)


def test_the_sentiment_summary_of_a_one_class_test_split_has_no_roc_auc():
    """ROC-AUC is not defined there, and the run that has just registered must not fail."""
    lines = sentiment.summary_lines({"model": "recurrent", "test_accuracy": 1.0,
                                     "skipped_examples": 0, "train_seconds": 2.0})
    assert lines[:2] == ["model             recurrent", "test accuracy     1.0000"]
    assert not any("ROC-AUC" in line for line in lines)
