"""Long test streams and their scoring, as TensorFlow's speech_commands example makes and scores
them; also a command, to test `listen` on streams of other recordings:

    python -m benchmarks.streams generate OUT.wav --data-dir DIR [--seconds 600] [--words ...]
    python -m pipelines.speech listen OUT.wav > detections.tsv
    python -m benchmarks.streams score OUT.wav.labels.txt detections.tsv --stream OUT.wav

`generate_stream` mixes test-split clips of a Speech Commands folder (never training ones) over
its `_background_noise_` recordings into one long 16 kHz WAV, like TensorFlow's
`generate_streaming_test_wav.py`: after each one-second clip a gap of `word_gap_ms` plus up to
half that again (seeded), the noise at `background_volume`. Its ground truth goes beside it in
TensorFlow's labels format (`label, time_ms` per line, the time where the clip starts).

`score` scores detections as TensorFlow's `test_streaming_accuracy.cc` does, with its 750 ms
tolerance, a word's time being the end of its clip (where a window that holds the whole word
ends: `listen` reports window ends, as TensorFlow's tool compares window starts with clip
starts). `score` also reads labels files of TensorFlow's generator, whose streams mix
`_unknown_` words among the keywords: `listen` never reports `_unknown_`, so percentages are of
the keywords, and a detection that goes to an `_unknown_` word is counted as a non-keyword
accept instead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import soundfile

from features.audio import audio_info, decode_clip
from features.errors import DataError, require_folder
from features.mfcc import MfccConfig
from features.speech_commands import BACKGROUND_NOISE_DIR, SplitConfig, load_speech_commands
from features.speech_data import SpeechSourceConfig, background_noise
from pipelines import cli, listening
from pipelines.listening import Detection

TOLERANCE_MS = 750  # both ends included, times rounded to whole ms (TensorFlow's accuracy_utils)
STREAM_WORDS = ("keywords", "unknown", "none")  # what generate_stream's streams hold
NOT_KEYWORDS = listening.NOT_REPORTED
# a word's clip, in s: its time in a labels file is the start, its truth the end
CLIP_S = MfccConfig().audio.clip_seconds
MAX_SECONDS = 4 * 3600  # the stream is built in memory: 230 MB an hour (float32 at 16 kHz)


def generate_stream(speech_dir: Path, out: Path, *, seconds: float = 600, words: str = "keywords",
                    word_gap_ms: float = 2000, background_volume: float = 0.1, seed: int = 0
                    ) -> list[tuple[float, str]]:
    """Writes a `seconds`-long 16 kHz WAV of test-split clips over background noise to `out`
    (`words`: "keywords" the ten words, "unknown" the test split's other words, "none" noise
    only); returns its ground truth, (time of the clip's end in s, label) per word, and writes
    it beside the WAV as `<out>.labels.txt` in TensorFlow's format (`label, time_ms` per line,
    the time where the clip starts)."""
    spec = MfccConfig().audio
    if words not in STREAM_WORDS:
        raise ValueError(f"words must be one of {', '.join(STREAM_WORDS)}, not {words!r}")
    require_folder(speech_dir, "Speech Commands folder")
    # the recordings training mixes in (any audio format; one that does not decode is left out)
    noise = background_noise(SpeechSourceConfig(data_dir=str(speech_dir)), spec.sample_rate)
    short = [len(recording) for recording in noise if len(recording) <= spec.sample_rate]
    if not noise or short:
        raise ValueError(f"{speech_dir / BACKGROUND_NOISE_DIR}: the stream's background needs "
                         f"recordings longer than 1 s ({len(noise)} found that decode, "
                         f"{len(short)} of them shorter)")
    data = load_speech_commands(speech_dir, SplitConfig(), spec)
    clips = [e for e in data.examples["test"] if not e.is_silence and (
        (e.label not in NOT_KEYWORDS) if words == "keywords" else e.label == "_unknown_")]
    if words != "none" and not clips:
        raise ValueError(f"{speech_dir}: its test split has no {words} clips")
    rng = np.random.default_rng(seed)
    rate, total = spec.sample_rate, int(seconds * spec.sample_rate)
    wave = np.zeros(total, np.float32)
    position = 0
    while position < total:  # background: random stretches of random recordings
        recording = noise[rng.integers(len(noise))]
        start = rng.integers(0, len(recording) - rate)
        stretch = recording[start:start + min(total - position, len(recording) - start)]
        wave[position:position + len(stretch)] = background_volume * stretch
        position += len(stretch)
    truth: list[tuple[float, str]] = []
    position = int(rate * word_gap_ms / 1000 / 2)
    while words != "none" and position + spec.clip_samples < total:
        example = clips[rng.integers(len(clips))]
        clip = decode_clip(speech_dir / example.path, spec)
        wave[position:position + spec.clip_samples] += clip
        truth.append(((position + spec.clip_samples) / rate, example.label))
        position += spec.clip_samples + int(rate * word_gap_ms / 1000 * (1 + rng.random() / 2))
    np.clip(wave, -1, 1, out=wave)
    soundfile.write(os.fsencode(out), wave, rate, subtype="PCM_16")  # any file name's bytes
    Path(f"{out}.labels.txt").write_text(
        "".join(f"{label}, {1000 * (when - CLIP_S):.4f}\n" for when, label in truth))
    return truth


def score(detections: list[Detection], truth: list[tuple[float, str]]) -> dict[str, float]:
    """TensorFlow's streaming accuracy (`CalculateAccuracyStats` of accuracy_utils.cc): each
    detection, in time order, goes to the earliest word within the tolerance; it is matched
    when the labels agree and that word was not matched before, else wrongly matched (so a
    second detection of one word is wrong); near no word, it is a false positive. Percentages
    are of the keywords in the stream ("matched" is TensorFlow's "correctly"); a detection
    that goes to an `_unknown_` word counts in `non_keyword_accepts` instead (each such word
    once); `false_accepts` counts every detection near no word or at an `_unknown_` word
    (each time: what a user hears as a false alarm). TensorFlow's own tool counts `_unknown_`
    words among the words and a keyword detected at one as wrongly matched, so on streams that
    mix them in its figures differ."""
    truth = sorted(truth)
    taken: set[int] = set()
    matched = wrong = false = accepted = at_non_keywords = 0
    for detection in sorted(detections, key=lambda found: found.time_s):
        index = next((index for index, (when, _) in enumerate(truth)
                      if abs(round(1000 * when) - round(1000 * detection.time_s))
                      <= TOLERANCE_MS), None)
        if index is None:
            false += 1
            continue
        if truth[index][1] in NOT_KEYWORDS:
            at_non_keywords += 1
            accepted += index not in taken  # each word once, however often detected
        elif truth[index][1] == detection.label and index not in taken:
            matched += 1
        else:
            wrong += 1
        taken.add(index)
    keywords = sum(label not in NOT_KEYWORDS for _, label in truth)
    words = max(keywords, 1)
    return {"matched": 100 * matched / words, "wrongly_matched": 100 * wrong / words,
            "false_positives": 100 * false / words, "keywords": keywords,
            "non_keywords": len(truth) - keywords, "non_keyword_accepts": accepted,
            "false_positive_count": false, "false_accepts": false + at_non_keywords}


def lines(path: Path) -> list[tuple[int, str]]:
    """(number, line) of a UTF-8 text file's lines that are not blank (split at line feeds
    only, a carriage return before one dropped, a byte-order mark dropped)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}): "
                        "expected a labels or detections file") from None
    return [(number, line.removesuffix("\r"))
            for number, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_labels(path: Path) -> list[tuple[float, str]]:
    """A labels file (`label, time_ms` per line, the clip's start) as ground truth: (time of
    the clip's end in s, label) per word.

    Raises:
        DataError: A line that is not `label, time_ms` with a label and a time of at least 0
            ms, named with its number.
    """
    truth = []
    for number, line in lines(path):
        label, _, when = line.rpartition(",")
        try:
            start = float(when)
        except ValueError:
            start = math.nan
        if not label.strip() or not math.isfinite(start) or start < 0:
            raise DataError(f"{path}, line {number}: expected 'label, time_ms' (a time of at "
                            f"least 0 ms), not {line!r}")
        truth.append((start / 1000 + CLIP_S, label.strip()))
    return truth


def read_detections(path: Path) -> list[Detection]:
    """`listen`'s output for one recording (`file<TAB>time_s<TAB>label<TAB>score` per line).

    Raises:
        DataError: A line that is not four tab-separated fields, or lines of more than
            one recording; named with its number.
    """
    found, files = [], set()
    for number, line in lines(path):
        try:
            name, when, label, value = line.split("\t")
            found.append(Detection(float(when), label, float(value)))
            if not (math.isfinite(found[-1].time_s) and math.isfinite(found[-1].score)):
                raise ValueError
        except ValueError:
            raise DataError(f"{path}, line {number}: expected listen's "
                            f"file<TAB>time_s<TAB>label<TAB>score, not {line!r}") from None
        files.add(name)
    if len(files) > 1:
        raise DataError(f"{path}: detections of {len(files)} recordings; give the lines of "
                        "the one the labels describe")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.streams",
        description="Make a long test stream of words over background noise, with its labels "
                    "(as TensorFlow's generate_streaming_test_wav.py does), and score listen's "
                    "detections on it (as its test_streaming_accuracy does).")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser(
        "generate", help="write a test stream and its labels (OUT.wav.labels.txt)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    generate.add_argument("out", type=Path, metavar="OUT.wav",
                          help="the stream to write (16 kHz mono); its labels go beside it")
    generate.add_argument("--data-dir", type=Path, required=True,
                          help="a Speech Commands folder: its test split's clips (by its "
                               "testing_list.txt, or else the default 10 %% of speakers by "
                               "hash) and its _background_noise_ recordings make the stream")
    generate.add_argument("--seconds", type=float, default=600, help="length of the stream")
    generate.add_argument("--words", choices=STREAM_WORDS, default="keywords",
                          help="the ten keywords, the test split's _unknown_ words, or none "
                               "(background noise only)")
    generate.add_argument("--word-gap-ms", type=float, default=2000,
                          help="gap after each one-second clip, plus up to half again")
    generate.add_argument("--background-volume", type=float, default=0.1,
                          help="level of the background noise against its recordings'")
    generate.add_argument("--seed", type=int, default=0, help="seed of the clips, gaps and noise")
    scoring = commands.add_parser("score", help="score listen's detections against labels")
    scoring.add_argument("labels", type=Path, help="a labels file (label, time_ms)")
    scoring.add_argument("detections", type=Path, help="listen's output for the stream")
    scoring.add_argument("--stream", type=Path, metavar="STREAM",
                         help="the recording the labels describe: with its length, false "
                              "accepts are also given per hour")
    args = parser.parse_args(argv)
    if args.command == "generate":
        check_generate(parser, args)
    try:
        if args.command == "generate":
            truth = generate_stream(args.data_dir, args.out, seconds=args.seconds,
                                    words=args.words, word_gap_ms=args.word_gap_ms,
                                    background_volume=args.background_volume, seed=args.seed)
            print(f"{cli.tsv_field(str(args.out))}: {args.seconds:g} s, {len(truth)} words; "
                  f"labels in {cli.tsv_field(str(args.out))}.labels.txt")
            return 0
        truth = read_labels(args.labels)
        found = read_detections(args.detections)
        hours = audio_info(args.stream).duration / 3600 if args.stream else None
    except (OSError, ValueError) as error:  # DataError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    stats = score(found, truth)
    print(f"detections           {len(found)}\n"
          f"keywords             {stats['keywords']}")
    if stats["keywords"]:
        print(f"matched              {stats['matched']:.1f} %\n"
              f"wrongly matched      {stats['wrongly_matched']:.1f} %\n"
              f"false positives      {stats['false_positives']:.1f} %")
    else:  # no keyword to be a percentage of
        print(f"false positives      {stats['false_positive_count']} (near no word)")
    print(f"non-keyword words    {stats['non_keywords']} ({stats['non_keyword_accepts']} "
          "of them detected as keywords)")
    if hours:
        print(f"false accepts        {stats['false_accepts'] / hours:.1f} per hour "
              f"({stats['false_accepts']} near no word or at a non-keyword word, in "
              f"{60 * hours:.1f} minutes)")
    else:
        print(f"false accepts        {stats['false_accepts']} (near no word or at a "
              "non-keyword word; --stream gives them per hour)")
    return 0


def check_generate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors for `generate` before any clip is read: an output that exists (the WAV or
    its labels) or cannot be written as WAV, values out of range."""
    labels = Path(f"{args.out}.labels.txt")
    for path in (args.out, labels):
        if path.exists() or path.is_symlink():  # a link, even to nothing, is the user's
            parser.error(f"{path} exists: it is not replaced")
    if args.out.suffix.lower() != ".wav" or not args.out.parent.is_dir():
        parser.error(f"{args.out}: expected a .wav file in an existing folder")
    cli.require_writable_folder(parser, args.out.parent, "the stream's folder")
    if not (math.isfinite(args.seconds) and 1 <= args.seconds <= MAX_SECONDS):
        parser.error(f"--seconds must be from 1 to {MAX_SECONDS:,} (four hours: the stream is "
                     f"built in memory, 230 MB an hour), not {args.seconds:g}")
    if not 0 <= args.word_gap_ms <= 1000 * args.seconds:
        parser.error(f"--word-gap-ms must be from 0 to the stream's length ({args.seconds:g} s),"
                     f" not {args.word_gap_ms:g}")
    if args.seed < 0:
        parser.error(f"--seed must be at least 0, not {args.seed}")
    if not 0 <= args.background_volume <= 1:
        parser.error(f"--background-volume must be in [0, 1], not {args.background_volume:g}")


if __name__ == "__main__":
    sys.exit(main())
