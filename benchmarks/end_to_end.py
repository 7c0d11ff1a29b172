"""Wall time and peak memory of the default pipelines, run as a user runs them."""

from __future__ import annotations

from benchmarks.suite import Figure, Options, run_child


def end_to_end(options: Options) -> list[Figure]:
    """`python -m pipelines.speech` and `python -m pipelines.sentiment` with defaults, each
    twice: cold (empty feature cache and store) and warm (the same cache and store again).
    Sentiment's cold run pretrains its word vectors; its warm run finds them in the store."""
    figures = []
    store, cache = options.work_dir / "mlruns", options.work_dir / "features"
    for pipeline, data in (("speech", "speech_commands"), ("sentiment", "aclImdb")):
        command = [f"pipelines.{pipeline}", "--data-dir", str(options.data_dir / data),
                   "--store-dir", str(store)]
        if pipeline == "speech":
            command += ["--cache-dir", str(cache)]
        if options.quick:
            command += ["--epochs", "1"] + (["--word-vector-epochs", "1"]
                                            if pipeline == "sentiment" else [])
        runs = [run_child(command, options.work_dir / f"{pipeline}-{when}.log")
                for when in ("cold", "warm")]
        for when, child in zip(("cold", "warm"), runs, strict=True):
            figures.append(Figure(
                "end-to-end", f"python -m pipelines.{pipeline}, {when}", child.seconds, "s",
                note=f"peak RSS {child.peak_rss_gb:.2f} GB, test accuracy "
                     f"{child.printed('test accuracy'):.4f}"))
            figures.append(Figure("end-to-end", f"peak RSS, {pipeline} {when}",
                                  child.peak_rss_gb, "GB", higher_is_better=False))
    return figures
