"""What runs and registered models say of themselves in the MLflow UI: run names that say what
ran (`speech-crnn-bigru64-s0`, `evaluate-speech-commands-v3`), a run's description (its
headline result), and the registered model's description (task, classes, input format, how to
call it).

A version's description (its metrics, data digest and why it was or was not promoted) is
written by the registry when the champion rule has decided it
(`pipelines.tracking.registry`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pipelines.config import TaskConfig


def run_name(config: TaskConfig, pipeline: str, swept: Collection[str] = ()) -> str:
    """The run's name: `--run-name` if given, else task, model and seed, e.g.
    `speech-crnn-bigru64-s0`, `sentiment-bigru128-ngrams-s1`, `sentiment-tfidf-logreg-s0`;
    a sweep's parent adds `-sweepN` and leaves out what its search space varies (`swept`:
    `speech-bigru-s0-sweep8` when the units and the front end are searched)."""
    if config.run.run_name:
        return config.run.run_name
    task = pipeline.removesuffix("-sweep")
    model = config.model.model
    if model == "recurrent":
        units = "" if "units" in swept else config.recurrent.units
        parts = [f"bi{config.recurrent.cell}{units}"]
        if "front_end" not in swept and task == "speech":
            front_end = getattr(config.model, "front_end", None)
            parts.insert(0, "crnn" if front_end == "conv" else "rnn")
        if "ngram_features" not in swept and getattr(getattr(config, "ngram", None),
                                                     "ngram_features", 0):
            parts.append("ngrams")
    else:
        parts = [model]
    sweep = f"-sweep{config.run.sweep}" if config.run.sweep else ""
    return "-".join([task, *parts, f"s{config.optim.seed}"]) + sweep


def trial_run_name(config: TaskConfig, trial_config: TaskConfig, pipeline: str,
                   number: int) -> str:
    """A sweep trial's name: the sweep's `--run-name` (else the trial's own `run_name`) and
    `-trialN` (`speech-crnn-bigru96-s0-trial3`)."""
    return f"{config.run.run_name or run_name(trial_config, pipeline)}-trial{number}"


def pretraining_run_name(embedding_dim: int) -> str:
    """A pretraining run's name: `sentiment-pretrain-w2v<width>`."""
    return f"sentiment-pretrain-w2v{embedding_dim}"


def evaluation_run_name(model_uri: str, version: Any | None) -> str:
    """An evaluation run's name when no `--run-name` is given: the registered version it
    evaluates (`evaluate-speech-commands-v3`, an alias resolved), else the run whose model it
    is (`evaluate-run-0123abcd` for `runs:/0123abcd.../model`), else `evaluate-model`."""
    if version is not None:
        return f"evaluate-{version.name}-v{version.version}"
    if model_uri.startswith("runs:/"):
        return f"evaluate-run-{model_uri.removeprefix('runs:/').split('/', 1)[0][:8]}"
    return "evaluate-model"


def evaluation_description(name: str, metrics: Mapping[str, float], source: str,
                           evaluated: int, failed: int, skipped: int, model_uri: str) -> str:
    """An evaluation run's description (Markdown): what it scored, on what, for which model
    (`failed`: inputs the model could not use; `skipped`: inputs the reader left out)."""
    scores = ", ".join(f"{label} {metrics[key]:.2%}" for key, label in (
        ("test_accuracy", "accuracy"), ("test_macro_f1", "macro-F1"),
        ("test_roc_auc", "ROC-AUC")) if key in metrics)
    return "  \n".join([f"**{name}**", f"{scores} of `{model_uri}`",
                        f"on {evaluated} examples of `{source}` ({failed} could not be used"
                        + (f"; {skipped} skipped as training skips them" if skipped else "")
                        + ")"])


def pretraining_description(name: str, reviews: int, epochs: int, tokens: int) -> str:
    """A pretraining run's description (Markdown): what was trained on what."""
    return "  \n".join([f"**{name}**", f"skip-gram word vectors, {epochs} epochs over {reviews} "
                        f"reviews ({tokens:,} tokens); later runs with the same data and "
                        "options reuse them (tag `pretrain_key`)"])


def run_description(name: str, values: Mapping[str, Any]) -> str:
    """A run's description (Markdown, shown on its page): what it scored and became."""
    lines = [f"**{name}**"]
    if "test_accuracy" in values:
        lines.append(f"test accuracy {values['test_accuracy']:.2%}"
                     + (f", validation {values['model_val_accuracy']:.2%}"
                        if "model_val_accuracy" in values else "")
                     + (f" (recurrent alone {values['recurrent_test_accuracy']:.2%}, "
                        f"n-grams alone {values['ngram_test_accuracy']:.2%}, recurrent blend "
                        f"weight {values['recurrent_blend_weight']:.2f})"
                        if "recurrent_blend_weight" in values else ""))
    if values.get("registered_version"):
        lines.append(f"registered as version {values['registered_version']}: "
                     + ("**champion**" if values.get("champion") else "not champion")
                     + f" ({values.get('promotion_reason', '')})")
    elif values.get("promotion_reason"):
        lines.append(str(values["promotion_reason"]))
    if values.get("data_digest"):
        lines.append(f"data digest `{values['data_digest']}`")
    return "  \n".join(lines)


SPEECH_INPUT = (
    "**Input** (pandas DataFrame, one row per clip): `audio` — the bytes of an audio file "
    "(WAV, FLAC, OGG, MP3; any sample rate and channel count: mixed to mono, resampled and padded "
    "or cut to the rate and clip length the model was trained at, in its "
    "`artifacts/config.json`: 16 kHz and 1 s by default), or `waveform` — float samples — "
    "with `sample_rate` in Hz.  \n"
    "**Output**: `label`, `probability_<class>` for every class, and `error` (why a row could "
    "not be used; its label and probabilities are then empty).  \n"
    "**Keras**: `artifacts/classifier.keras` takes (batch, clip samples) float waveforms at "
    "that rate (16000 at the defaults) and "
    "returns class probabilities; load it with `keras.saving.load_model` after importing "
    "`features.mfcc_layer` and `models.recurrent` from the version's `code/` folder.")
TEXT_INPUT = (
    "**Input** (pandas DataFrame, one row per review): `text` — the raw review (HTML tags are "
    "stripped as in training).  \n"
    "**Output**: `label`, `probability_<class>` for every class, and `error` (why a row could "
    "not be used).")
TASKS = {
    "speech": ("Keyword spotting on Google Speech Commands: one-second clips, MFCC frames and a "
               "bidirectional recurrent classifier", SPEECH_INPUT),
    "sentiment": ("Sentiment of IMDB movie reviews: token ids and a bidirectional recurrent "
                  "classifier with pretrained word vectors, blended with a bag-of-n-grams "
                  "branch (or the TF-IDF baseline)", TEXT_INPUT),
}


def model_description(pipeline: str, name: str, labels: Sequence[str]) -> str:
    """The registered model's description: task, classes, input and output, how to call it."""
    task, io = TASKS[pipeline.removesuffix("-sweep")]
    return "  \n".join([
        f"**{task}.**",
        f"**Classes** ({len(labels)}): " + ", ".join(f"`{label}`" for label in labels) + ".",
        io,
        f"**Call**: `mlflow.pyfunc.load_model('models:/{name}@champion').predict(frame)`; "
        f"or `mlflow models serve -m models:/{name}@champion --env-manager local` (in an "
        "environment with its requirements), then POST `{\"dataframe_records\": [...]}` to "
        "`/invocations`. Each version carries its code (`code/`) and pinned `requirements.txt`:"
        " it loads where only those are installed.",
        "The alias `champion` is on the version with the best test accuracy on the same test "
        "data."])
