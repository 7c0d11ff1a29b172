"""Keyword spotting on recordings of any length: `python -m pipelines.speech listen FILE ...`.

A one-second window slides over each recording every `--hop-ms`; the windows go through the served
speech model in batches (one compiled call per batch, `SpeechPredictor.clip_probabilities`); each
window's probabilities are averaged with those of the windows that ended at most
`--average-window-ms` before it, and `RecognizeCommands` (TensorFlow's speech_commands semantics)
reports a keyword when at least `--minimum-count` windows spanning a quarter of that time are
averaged, the averaged score passes `--threshold`, it is not the label detected last, and more than
`--suppression-ms` passed since that detection (no wait after a `_silence_` detection). `_silence_`
and `_unknown_` take part in that logic (once either is detected, the keyword before it can be
reported again) but are never reported; for a model without a `_silence_` class (`--silence-pct
0`), a moment with no score over the threshold does that.

A recording is read in blocks, mixed to mono and resampled to the model's rate as a stream
(`features.audio_stream`), so memory stays flat however long it is. A pipe (`-`, standard input,
or a named pipe) is read a hop at a time, so each detection is printed as soon as the audio that
holds it arrives: `arecord -f S16_LE -r 16000 -c 1 -t wav | python -m pipelines.speech listen -`
spots keywords live, until the input ends or Ctrl-C (exit status 130). A pipe carries WAV (its
header's sizes may be left unknown, as recorders writing to a pipe leave them) or OGG; not MP3,
FLAC, CAF or SDS, which libsndfile reads wrongly from a pipe (`listen - < x.flac` reads a file,
which it can). Bad input, per file:

- shorter than a window: zero-padded to one window, scored once, timed at the recording's end;
- too short for a streaming decision (fewer windows than `--minimum-count`, or spanning less
  than a quarter of `--average-window-ms`: under 1.2 s at the defaults): decided once on the
  average of all its windows, with the same threshold;
- silence only: scored like any audio (no keyword passes the threshold on silence);
- any rate from MIN_SAMPLE_RATE to MAX_SAMPLE_RATE and any channel count: mixed down and
  resampled;
- not decodable, missing, no samples, NaN/Inf samples, a rate out of range: `AudioDecodeError`
  naming the file; `listen` reports it on stderr, goes on with the other files and exits 1. A
  file that fails part-way (a damaged FLAC or OGG, a NaN sample) has its detections up to the
  failure printed first; a WAV file cut short is read up to the cut without an error, as
  libsndfile reads it.

Detections are printed as they are made, one line each: `file<TAB>time_s<TAB>label<TAB>score`,
`time_s` the end of the window (seconds from the recording's start, to the millisecond) whose
averaged score passed the threshold: a word is reported up to a few hundred ms after it ends."""

from __future__ import annotations

import argparse
import math
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import Field, dataclass, field, fields

import numpy as np

from features.audio import AudioDecodeError
from features.audio_stream import STDIN, read_ahead, resampled_blocks, windows
from features.mfcc import MfccConfig
from features.speech_commands import SILENCE_LABEL, UNKNOWN_LABEL
from pipelines import cli, tracking
from pipelines.serving import SpeechPredictor

READ_AHEAD_SECONDS = 60  # of audio read ahead of the model at most
NOT_REPORTED = (SILENCE_LABEL, UNKNOWN_LABEL)


MAX_SETTING_MS = 86_400_000


@dataclass(frozen=True)
class ListenConfig:
    """How windows are cut and detections made (TensorFlow's RecognizeCommands terms); each
    field is a `listen` flag: `--` and its name with dashes, or the `flag` of its metadata.

    Raises:
        ValueError: A setting out of range, named with its flag.
    """

    # TensorFlow's clip_stride_ms, named as the training commands name the MFCC frames' hop
    stride_ms: float = field(default=100.0, metadata={
        "flag": "--hop-ms", "help": "a one-second window is scored every this many ms"})
    average_window_ms: float = field(default=500.0, metadata={
        "help": "scores are averaged over the windows ending this recently"})
    threshold: float = field(default=0.7, metadata={"help": "averaged score a keyword must pass"})
    suppression_ms: float = field(default=1000.0, metadata={
        "help": "no new detection this soon after the last one (no wait after _silence_)"})
    minimum_count: int = field(default=3, metadata={
        "help": "windows averaged before any detection"})

    def __post_init__(self):
        values = {flag(option): getattr(self, option.name) for option in fields(self)}
        if not all(isinstance(value, int) or math.isfinite(value) for value in values.values()):
            raise ValueError(", ".join(f"{name} {value:g}" for name, value in values.items())
                             + ": every setting must be a finite number")
        if self.stride_ms <= 0 or self.average_window_ms <= 0 or self.suppression_ms < 0:
            raise ValueError(f"--hop-ms and --average-window-ms must be positive, "
                             f"--suppression-ms at least 0 (got {self.stride_ms:g}, "
                             f"{self.average_window_ms:g}, {self.suppression_ms:g})")
        longest = max(self.stride_ms, self.average_window_ms)
        if longest > MAX_SETTING_MS:  # longer is no use, and overflows in samples
            raise ValueError(f"--hop-ms and --average-window-ms must be at most a day "
                             f"({MAX_SETTING_MS:,} ms), not {longest:.10g}")
        if self.minimum_count < 1:
            raise ValueError(f"--minimum-count must be at least 1, not {self.minimum_count}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"--threshold must be in [0, 1), not {self.threshold:g}")


def flag(option: Field) -> str:
    """The `listen` flag of a ListenConfig field."""
    return option.metadata.get("flag", f"--{option.name.replace('_', '-')}")


@dataclass(frozen=True)
class Detection:
    time_s: float  # end of the window whose averaged scores passed the threshold
    label: str
    score: float


class RecognizeCommands:
    """Averages window scores over time and decides when a command was heard, as
    TensorFlow's `RecognizeCommands` does: no decision until `minimum_count` windows spanning
    at least a quarter of `average_window_ms` are averaged; then the averaged top label is a
    new command when its score passes the threshold, it differs from the last command (or
    quiet came between, for labels without `_silence_`), and the last command is more than
    `suppression_ms` old (or was `_silence_`)."""

    def __init__(self, labels: Sequence[str], config: ListenConfig):
        self.labels = list(labels)
        self.config = config
        self.recent: deque[tuple[float, np.ndarray]] = deque()
        self.previous_label = SILENCE_LABEL
        self.previous_time = -np.inf
        self.quiet_ends = SILENCE_LABEL not in self.labels  # quiet ends the last command
        self.ready = False  # enough windows were averaged for a decision at least once

    def process(self, time_ms: float, scores: np.ndarray) -> tuple[str, float] | None:
        """Takes the scores of the window ending at `time_ms`; returns (label, averaged
        score) when that is a new command."""
        self.recent.append((time_ms, scores))
        while self.recent[0][0] < time_ms - self.config.average_window_ms:
            self.recent.popleft()
        if (len(self.recent) < self.config.minimum_count
                or time_ms - self.recent[0][0] < self.config.average_window_ms / 4):
            return None
        self.ready = True
        average = np.mean([window for _, window in self.recent], axis=0)
        top = int(np.argmax(average))
        label, score = self.labels[top], float(average[top])
        if self.quiet_ends and score <= self.config.threshold:
            self.previous_label = ""  # its suppression still holds (`previous_time`)
        since = (np.inf if self.previous_label == SILENCE_LABEL
                 else time_ms - self.previous_time)
        if score > self.config.threshold and label != self.previous_label and (
                since > self.config.suppression_ms):
            self.previous_label, self.previous_time = label, time_ms
            return label, score
        return None


def hop_samples(config: ListenConfig, rate: int) -> int:
    """`--hop-ms` in whole samples at `rate` (at least one)."""
    return max(1, int(round(rate * config.stride_ms / 1000)))


def listen(path: str, predictor: SpeechPredictor, config: ListenConfig) -> list[Detection]:
    """The keywords detected in one recording, in time order (`detections`, collected)."""
    return list(detections(path, predictor, config))


def detections(path: str, predictor: SpeechPredictor, config: ListenConfig
               ) -> Iterator[Detection]:
    """The keywords detected in one recording, each as soon as it is made.

    Raises:
        AudioDecodeError: The recording cannot be read (see the module docstring); after the
            detections made before, when it fails part-way.
    """
    spec = predictor.spec
    hop = hop_samples(config, spec.sample_rate)
    recognizer = RecognizeCommands(predictor.labels, config)
    total, count, time_ms = 0.0, 0, 0.0  # every window's scores, for a short recording
    blocks = read_ahead(resampled_blocks(path, spec.sample_rate, config.stride_ms / 1000),
                        READ_AHEAD_SECONDS * spec.sample_rate)
    for ends, batch in windows(blocks, spec.clip_samples, hop):
        probabilities = predictor.clip_probabilities(batch)
        total, count = total + probabilities.sum(axis=0), count + len(probabilities)
        for end, scores in zip(ends, probabilities, strict=True):
            time_ms = 1000 * end / spec.sample_rate
            heard = recognizer.process(time_ms, scores)
            if heard and heard[0] not in NOT_REPORTED:
                yield Detection(time_ms / 1000, *heard)
    # a recording has one window at least (resampled_blocks raises on one without samples)
    if not recognizer.ready:  # too short for a streaming decision: decided once
        average = total / count
        label, score = predictor.labels[int(np.argmax(average))], float(np.max(average))
        if score > config.threshold and label not in NOT_REPORTED:
            yield Detection(time_ms / 1000, label, score)


def listen_command(task: cli.TaskCommands, argv: list[str]) -> int:
    """`listen FILE ...`: detections as `file<TAB>time_s<TAB>label<TAB>score`; 1 when a file
    could not be read."""
    parser = cli.model_parser(task, "listen", "Spot keywords in recordings of any length "
                              "with a logged speech model (default: the champion).")
    parser.epilog = (
        "Each detection is printed as it is made: FILE<TAB>TIME_S<TAB>LABEL<TAB>SCORE (a "
        "backslash, tab or line break in FILE written as \\\\, \\t, \\n, \\r, other control "
        "characters as \\xNN), TIME_S "
        "the end of the window (seconds from the start) whose score, averaged over "
        "--average-window-ms, passed --threshold. As TensorFlow's RecognizeCommands: no "
        "decision before --minimum-count windows spanning a quarter of --average-window-ms "
        "are averaged; a keyword is not reported again until another label (_silence_ and "
        "_unknown_ included; for a model without _silence_, no label over --threshold) is "
        "heard in between; _silence_ and _unknown_ are never printed. "
        "A file that cannot be read is named on stderr, the others are listened to, and the "
        "exit status is 1. FILE - reads standard input as it arrives (a recorder's WAV "
        "stream: arecord -t wav | ... listen -) and prints each detection as it is made.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="recordings; - for stdin")
    for option in fields(ListenConfig):
        parser.add_argument(flag(option), dest=option.name, type=type(option.default),
                            metavar=flag(option)[2:].replace("-", "_").upper(),
                            default=option.default, help=option.metadata["help"])
    args = parser.parse_args(argv)
    cli.require_file_names(parser, args.files)
    if STDIN in args.files:
        if args.files.count(STDIN) > 1:
            parser.error("standard input (-) can be listened to once")
        if sys.stdin is None or sys.stdin.isatty():  # started with it closed, or a terminal
            parser.error("standard input (-) is " + ("closed" if sys.stdin is None else "a "
                         "terminal: pipe a recording into it (arecord -t wav | ... listen -)"))
    try:
        config = ListenConfig(**{option.name: getattr(args, option.name)
                                 for option in fields(ListenConfig)})
    except (ValueError, OverflowError) as error:  # OverflowError: an absurdly large integer
        parser.error(str(error))
    check_reachable(parser, config, MfccConfig().sample_rate)  # before loading; again after
    predictor = tracking.load_predictor(args.model_uri, args.tracking_uri, args.store_dir)
    if not isinstance(predictor, SpeechPredictor):
        parser.error(f"{args.model_uri} is not a speech model")
    check_reachable(parser, config, predictor.spec.sample_rate)  # the model's own rate
    status = 0
    for path in args.files:
        try:
            found = False
            for detection in detections(path, predictor, config):
                found = True
                print(f"{cli.tsv_field(path)}\t{detection.time_s:.3f}\t"
                      f"{cli.tsv_field(detection.label)}\t"
                      f"{detection.score:.3f}", flush=True)
            if not found:  # listened to, with nothing to report
                print(cli.message_line(f"{path}: no keyword detected"), file=sys.stderr)
        except AudioDecodeError as error:
            print(cli.message_line(str(error)), file=sys.stderr)
            status = 1
    return status


def check_reachable(parser: argparse.ArgumentParser, config: ListenConfig,
                    sample_rate: int) -> None:
    """Exits with a usage error on settings that cannot work at the model's sample rate: a
    --hop-ms under one sample, or an averaging window that cannot hold --minimum-count
    windows spanning a quarter of it at --hop-ms (in whole samples, as `listen` rounds it)."""
    if round(sample_rate * config.stride_ms / 1000) < 1:  # hop_samples would round it up
        parser.error(f"--hop-ms {config.stride_ms:g} is under one sample at {sample_rate} Hz "
                     f"(one sample is {1000 / sample_rate:g} ms)")
    hop = hop_samples(config, sample_rate)
    steps = int(config.average_window_ms * sample_rate // (1000 * hop))  # hops in the window
    span = 1000 * steps * hop / sample_rate
    if steps + 1 < config.minimum_count or span < config.average_window_ms / 4:
        parser.error(f"--average-window-ms {config.average_window_ms:g} at --hop-ms "
                     f"{config.stride_ms:g} ({hop} samples at {sample_rate} Hz) averages at "
                     f"most {steps + 1} window(s) spanning {span:g} ms; a detection needs "
                     f"{config.minimum_count} (--minimum-count) spanning a quarter of "
                     "--average-window-ms: lengthen it or shorten --hop-ms")
