"""Accuracy of the default pipelines over several seeds, beside references from the same run.

Speech: `python -m pipelines.speech` with defaults, against the small CNN of TensorFlow's
audio tutorial trained close to the tutorial's way (Adam from 1e-3, up to 10 epochs, early
stopping with patience 2, no augmentation; through the pipeline's own fit, so at its batch of
128, with its cosine decay of the learning rate over the 10 epochs and the best epoch's weights
kept) on the same split. Sentiment: `python -m pipelines.sentiment`
with defaults (the first run pretrains the word vectors, the others reuse them), with its
recurrent model and n-gram branch alone and the blend weights chosen on validation, against the
TF-IDF + logistic-regression baseline. Every run is logged in the same MLflow experiment (the
store of --store-dir), so the UI shows them side by side.
"""

from __future__ import annotations

import re
import statistics

from benchmarks.suite import Figure, Options, run_child

SEEDS = (0, 1, 2)
TUTORIAL_RECIPE = ["--model", "tutorial-cnn", "--epochs", "10", "--learning-rate", "1e-3",
                   "--weight-decay", "0", "--label-smoothing", "0", "--warmup-epochs", "0",
                   "--patience", "2", "--time-shift-ms", "0", "--speed-change", "0",
                   "--noise-prob", "0", "--time-masks", "0", "--freq-masks", "0",
                   "--average-from", "0"]


def seeded_runs(options: Options, command: list[str], name: str, seeds) -> list:
    """Runs `command --seed S` for each seed; (seed, accuracy, seconds, peak GB) per run."""
    runs = []
    for seed in seeds:
        child = run_child([*command, "--seed", str(seed)],
                          options.work_dir / f"{name}-seed{seed}.log")
        runs.append((seed, child.printed("test accuracy"), child.seconds, child.peak_rss_gb))
    return runs


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return "one seed"
    return (f"seeds {', '.join(f'{v:.4f}' for v in values)}; std {statistics.stdev(values):.4f}"
            f", range {max(values) - min(values):.4f}")


def summary(section: str, name: str, runs: list, reference: str, reference_runs: list,
            goal: float, minutes: float) -> list[Figure]:
    accuracies = [run[1] for run in runs]
    reference_accuracies = [run[1] for run in reference_runs]
    mean, reference_mean = statistics.mean(accuracies), statistics.mean(reference_accuracies)
    slowest = max(run[2] for run in runs)
    return [
        Figure(section, f"{name}: test accuracy, mean of {len(runs)}", mean, "",
               reference=f"{reference} (mean of {len(reference_runs)})",
               reference_value=reference_mean, goal=f">= {goal:g}", met=mean >= goal,
               note=spread(accuracies) + f"; reference {spread(reference_accuracies)}"),
        Figure(section, f"{name}: points over the reference", 100 * (mean - reference_mean),
               "points", note=f"{reference}: {reference_mean:.4f}"),
        Figure(section, f"{name}: slowest run, wall time", slowest, "s",
               higher_is_better=False, goal=f"<= {minutes:.0f} min",
               met=slowest <= 60 * minutes,
               note="peak RSS " + ", ".join(f"{run[3]:.2f}" for run in runs) + " GB"),
    ]


def speech_accuracy(options: Options) -> list[Figure]:
    """The default speech pipeline over SEEDS vs the tutorial CNN on the same split."""
    command = ["pipelines.speech", "--data-dir", str(options.data_dir / "speech_commands"),
               "--store-dir", str(options.store_dir),
               "--cache-dir", str(options.work_dir / "features")]
    seeds = SEEDS[:1] if options.quick else SEEDS
    quick = ["--epochs", "2"] if options.quick else []
    runs = seeded_runs(options, [*command, *quick], "speech", seeds)
    reference = seeded_runs(options, [*command, *TUTORIAL_RECIPE, *quick], "tutorial-cnn",
                            seeds)
    figures = summary("speech-accuracy", "python -m pipelines.speech", runs,
                      "tutorial CNN", reference, 0.898, 10)
    figures[1].goal, figures[1].met = ">= 5 points", figures[1].value >= 5
    return figures


def sentiment_accuracy(options: Options) -> list[Figure]:
    """The default sentiment pipeline over SEEDS vs TF-IDF + logistic regression: the blend,
    its recurrent model and its n-gram branch alone, the recurrent model's blend weight, and
    what pretraining and the classifier runs took."""
    command = ["pipelines.sentiment", "--data-dir", str(options.data_dir / "aclImdb"),
               "--store-dir", str(options.store_dir)]
    seeds = SEEDS[:1] if options.quick else SEEDS
    quick = ["--epochs", "1", "--word-vector-epochs", "1"] if options.quick else []
    runs = []
    for seed in seeds:
        child = run_child([*command, *quick, "--seed", str(seed)],
                          options.work_dir / f"sentiment-seed{seed}.log")
        pretrained = re.search(r"pretrained in (\d+) s", child.output)
        runs.append({"blend": child.printed("test accuracy"),
                     "recurrent": child.printed("recurrent alone"),
                     "ngram": child.printed("n-grams alone"),
                     "weight": child.printed("blend weights"),
                     "pretrain": float(pretrained.group(1)) if pretrained else None,
                     "seconds": child.seconds, "peak": child.peak_rss_gb})
    baseline = run_child([*command, "--model", "tfidf-logreg"],
                         options.work_dir / "tfidf.log").printed("test accuracy")
    section, reference = "sentiment-accuracy", "TF-IDF + logistic regression"
    column = {name: [run[name] for run in runs] for name in runs[0]}
    classifier = [run["seconds"] - (run["pretrain"] or 0.0) for run in runs]
    pretrain = column["pretrain"][0]  # None: the store's word vectors were reused, not timed
    return [
        Figure(section, f"blend: test accuracy, mean of {len(runs)}",
               statistics.mean(column["blend"]), "", reference=reference,
               reference_value=baseline, goal=">= 0.923",
               met=statistics.mean(column["blend"]) >= 0.923, note=spread(column["blend"])),
        Figure(section, f"its recurrent model alone: test accuracy, mean of {len(runs)}",
               statistics.mean(column["recurrent"]), "", reference=reference,
               reference_value=baseline, goal=">= 0.905",
               met=statistics.mean(column["recurrent"]) >= 0.905,
               note=spread(column["recurrent"])),
        Figure(section, "its n-gram branch alone: test accuracy",
               statistics.mean(column["ngram"]), "", note=spread(column["ngram"])),
        Figure(section, "the recurrent model's blend weight (chosen on validation), lowest",
               min(column["weight"]), "", goal=">= 0.3", met=min(column["weight"]) >= 0.3,
               note="per seed " + ", ".join(f"{value:.2f}" for value in column["weight"])),
        Figure(section, "pretraining the word vectors (first run), wall time",
               pretrain, "s", higher_is_better=False, goal="<= 40 min",
               met=None if pretrain is None else pretrain <= 2400,
               note="" if pretrain is not None else "not measured: the first run reused the "
               "word vectors already in --store-dir (an empty store times them)"),
        Figure(section, "slowest run, wall time, pretraining excluded", max(classifier), "s",
               higher_is_better=False, goal="<= 15 min", met=max(classifier) <= 900,
               note="peak RSS " + ", ".join(f"{value:.2f}" for value in column["peak"])
               + " GB"),
    ]
