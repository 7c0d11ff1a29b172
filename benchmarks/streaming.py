"""Keyword spotting on long streams, as TensorFlow's speech_commands example measures it.

`streaming` runs `pipelines.listening.listen` with its defaults over streams that
`benchmarks.streams.generate_stream` makes from the test split (keywords, noise only,
non-keyword words; each kind from three seeds, the figures their means) and reports, as
TensorFlow's `test_streaming_accuracy.cc` does with its 750 ms tolerance
(`benchmarks.streams.score`): matched % (a detection within the tolerance of a word, with its
label; TensorFlow's "correctly"), wrongly matched % (another label, or the same word detected
again) and false positives % (near no word), each over the words in the stream; false accepts
per hour on noise alone and on a stream of non-keyword words only (the test split's `_unknown_`
words); and the real-time factor (seconds of audio per second of compute), also with the
keyword stream of the first seed sent through a pipe as a recorder sends it to `listen -`
(`piped`); and the peak memory of the `listen` command on an hour-long stream against a
one-minute one (`listening_memory`). TensorFlow's example documents its own streaming test
with a detection threshold of 0.70, an average window of 500 ms and a suppression of 500 ms
(its RecognizeCommands averages at least 3 windows before deciding), and reports its model's
figures in these terms.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from benchmarks.streams import generate_stream, score
from benchmarks.suite import Figure, Options, run_child
from features.errors import ConfigError
from features.speech_commands import SplitConfig
from pipelines import listening, speech, tracking
from pipelines.config import config_from_params
from pipelines.listening import ListenConfig
from pipelines.speech import SpeechConfig

SPEECH_MODEL = "speech-commands"  # the registered model whose champion is measured


def piped(path: Path, predictor, config: ListenConfig
          ) -> tuple[list[listening.Detection], float]:
    """`listen`'s detections of the recording at `path` sent through a named pipe, as fast as
    it reads them (as `recorder | listen -` is read, a hop at a time), and the seconds taken."""
    pipe = path.with_suffix(".pipe")
    os.mkfifo(pipe)

    def send() -> None:
        with pipe.open("wb") as out:
            out.write(path.read_bytes())

    sender = threading.Thread(target=send, daemon=True)  # waits until `listen` opens the pipe
    sender.start()
    try:
        started = time.perf_counter()
        found = listening.listen(str(pipe), predictor, config)
        return found, time.perf_counter() - started
    finally:
        sender.join(timeout=60)
        pipe.unlink()


def listening_memory(options: Options) -> Figure:
    """Peak RSS of `python -m pipelines.speech listen` (the store's champion) on a keyword
    stream of an hour (ten minutes with --quick) against one of a minute."""
    speech_dir = options.data_dir / "speech_commands"
    long_minutes = 10 if options.quick else 60
    peaks = {}
    for minutes in (1, long_minutes):
        path = options.work_dir / f"stream-{minutes}min.wav"
        try:
            generate_stream(speech_dir, path, seconds=60 * minutes, seed=minutes)
            child = run_child(["pipelines.speech", "listen", str(path), "--store-dir",
                               str(options.store_dir)],
                              options.work_dir / f"listen-{minutes}min.log")
        finally:  # an hour is 115 MB
            path.unlink(missing_ok=True)
            Path(f"{path}.labels.txt").unlink(missing_ok=True)
        peaks[minutes] = child.peak_rss_gb
    return Figure("streaming", f"peak RSS of listen, a {long_minutes}-minute recording",
                  peaks[long_minutes], "GB", reference="a 1-minute recording",
                  reference_value=peaks[1], higher_is_better=False,
                  goal="flat: within 10 %", met=peaks[long_minutes] <= 1.1 * peaks[1])


def trained_predictor(options: Options):
    """The speech champion of `--store-dir` when it has one; else a default speech run is
    trained there first (three epochs with --quick).

    Raises:
        ConfigError: The champion was trained on other splits than the default split the
            sections read their test clips from.
    """
    store = options.store_dir
    tracking.connect(None, store)
    champion = tracking.current_champion(MlflowClient(), SPEECH_MODEL)
    if champion is not None:
        trained = config_from_params(SpeechConfig, tracking.run_params(champion.run_id))
        changed = trained.changed_flags(SpeechConfig().options(),
                                        names=[item.name for item in fields(SplitConfig)])
        if changed:  # the sections read the default split's test clips
            raise ConfigError(f"{store}: its {SPEECH_MODEL} champion (v{champion.version}) was "
                              f"trained on other splits than the default "
                              f"({', '.join(changed)}): these sections score the default "
                              "split's test clips, which it may have trained on; pass a "
                              "--store-dir of default runs")
        # a champion whose files are damaged raises ModelError here, never trains anew
        return tracking.load_predictor(f"models:/{SPEECH_MODEL}@champion", None, store)
    config = SpeechConfig.from_options(
        data_dir=str(options.data_dir / "speech_commands"), store_dir=str(store),
        cache_dir=str(options.work_dir / "cache"), **({"epochs": 3} if options.quick else {}))
    return tracking.load_predictor(speech.run(config)["model_uri"], None, store)


STREAM_SEEDS = (0, 1, 2)  # each figure is the mean over streams generated with these seeds
STREAMS = (("keywords", "keywords", 2000), ("noise", "none", 2000), ("unknown", "unknown", 1600))
# name, generate_stream's words, word gap in ms


def streaming(options: Options) -> list[Figure]:
    """Matched / wrongly matched / false-positive %, false accepts per hour on noise and on
    non-keyword words, and the real-time factor, at `listen`'s defaults: each the mean over
    the streams of STREAM_SEEDS (one seed with --quick), the per-seed figures in the note."""
    speech_dir = options.data_dir / "speech_commands"
    predictor = trained_predictor(options)
    for size in (1, 2, 4, 8, 16, 32, 64):  # the compiled call's shapes, compiled before timing
        predictor.clip_probabilities(np.zeros((size, predictor.spec.clip_samples), np.float32))
    seconds = 120 if options.quick else 600
    seeds = STREAM_SEEDS[:1] if options.quick else STREAM_SEEDS
    config = ListenConfig()
    per_seed: dict[str, list[float]] = {}
    words: Counter[str] = Counter()
    compute, first_file = 0.0, None
    for seed in seeds:
        for name, kind, gap in STREAMS:
            path = options.work_dir / f"stream-{name}-{seed}.wav"
            truth = generate_stream(speech_dir, path, seconds=seconds, words=kind,
                                    word_gap_ms=gap, seed=seed)
            started = time.perf_counter()
            found = listening.listen(str(path), predictor, config)
            took = time.perf_counter() - started
            compute += took
            if first_file is None:
                first_file = (path, found, took)
            stats = score(found, truth)
            if name == "keywords":
                for key, value in stats.items():
                    per_seed.setdefault(key, []).append(value)
            else:  # every detection on these streams is a false accept
                per_seed.setdefault(name, []).append(stats["false_accepts"] / (seconds / 3600))
            words[name] += len(truth)
    mean = {key: float(np.mean(values)) for key, values in per_seed.items()}

    def spread(key: str, unit: str) -> str:
        return "per seed " + ", ".join(f"{value:.1f}{unit}" for value in per_seed[key])

    rtf = len(STREAMS) * len(seeds) * seconds / compute
    path, in_file, file_seconds = first_file
    in_pipe, pipe_seconds = piped(path, predictor, config)
    same_words = [(d.time_s, d.label) for d in in_pipe] == [(d.time_s, d.label) for d in in_file]
    difference = max((abs(a.score - b.score) for a, b in zip(in_pipe, in_file, strict=False)),
                     default=0.0)
    where = (f"{len(seeds)} streams of {seconds / 60:.0f} minutes, {words['keywords']} "
             f"keywords in all")
    return [
        Figure("streaming", f"matched ({where})", mean["matched"], "%", goal=">= 90 %",
               met=mean["matched"] >= 90, note=spread("matched", " %")),
        Figure("streaming", "wrongly matched", mean["wrongly_matched"], "%",
               higher_is_better=False, goal="<= 3 %", met=mean["wrongly_matched"] <= 3,
               note=spread("wrongly_matched", " %")),
        Figure("streaming", "false positives", mean["false_positives"], "%",
               higher_is_better=False, goal="<= 3 %", met=mean["false_positives"] <= 3,
               note=spread("false_positives", " %")),
        Figure("streaming", "false accepts per hour, background noise only", mean["noise"],
               "/h", higher_is_better=False, goal="<= 2 /h", met=mean["noise"] <= 2,
               note=spread("noise", "/h")),
        Figure("streaming", f"false accepts per hour, non-keyword words only "
               f"({words['unknown']} words in all)", mean["unknown"], "/h",
               higher_is_better=False, goal="<= 30 /h", met=mean["unknown"] <= 30,
               note=spread("unknown", "/h")),
        Figure("streaming", "real-time factor (audio s per compute s, 2 cores)", rtf, "x",
               goal=">= 50x", met=rtf >= 50,
               note=f"listen defaults: hop {config.stride_ms:g} ms, average window "
                    f"{config.average_window_ms:g} ms, threshold {config.threshold:g}, "
                    f"suppression {config.suppression_ms:g} ms, minimum count "
                    f"{config.minimum_count}"),
        Figure("streaming", "real-time factor, the first keyword stream through a pipe",
               seconds / pipe_seconds, "x", reference="the same stream as a file",
               reference_value=seconds / file_seconds, goal="the file's detections",
               met=same_words, note=f"{len(in_pipe)} detections through the pipe, "
               f"{len(in_file)} from the file, the same words at the same times: "
               f"{'yes' if same_words else 'no'}; largest score difference {difference:.2g}"),
        listening_memory(options),
    ]
