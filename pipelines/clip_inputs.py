"""The clips `predict` and `evaluate` read from the command line: audio files given as
arguments (their bytes, decoded by the served model), and the labelled clips of a Speech Commands
folder (`features.speech_data.evaluation_inputs`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from features.audio import AudioDecodeError, audio_info
from features.mfcc import MfccConfig
from features.speech_data import evaluation_inputs
from features.splits import LabelledInputs
from pipelines import cli, tracking
from pipelines.config import TaskConfig, config_from_params
from pipelines.serving import SpeechPredictor


def read_clips(parser: argparse.ArgumentParser, argv: list[str]
               ) -> tuple[argparse.Namespace, cli.Inputs]:
    """`predict FILE [FILE ...]`: the files' bytes; an unreadable file is failed by name, and
    one longer than a default clip is named on stderr (a model labels its first clip's
    length only)."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (WAV, FLAC, ...)")
    args = parser.parse_args(argv)
    cli.require_file_names(parser, args.files)
    clips, failed, clip_seconds = [], {}, MfccConfig().clip_seconds
    for index, name in enumerate(args.files):
        try:
            clips.append(Path(name).read_bytes())
        except OSError as error:
            failed[index] = f"cannot read the file ({error.strerror})"
            continue
        with contextlib.suppress(AudioDecodeError):  # the model answers it with the reason
            seconds = audio_info(clips[-1], name).duration
            if seconds > clip_seconds + 0.05:
                print(cli.message_line(
                    f"{name}: {seconds:.1f} s long: labelled by its first clip's length "
                    f"({clip_seconds:g} s by default; listen spots keywords in longer "
                    "recordings)"), file=sys.stderr)
    return args, cli.Inputs(pd.DataFrame({"audio": clips}), list(args.files), failed)


def read_labelled_clips(config: type[TaskConfig], parser: argparse.ArgumentParser,
                        argv: list[str]) -> tuple[argparse.Namespace, LabelledInputs]:
    """`evaluate --data-dir DIR`: every clip of a test release (of the model's classes), or a
    training layout's test split composed as the model's training run composed it (its task,
    shares, silence levels and --data-seed, read from the run's parameters as a `config`;
    `--data-seed` to change the seed)."""
    parser.add_argument("--data-seed", type=int,
                        help="training layout: seed of the _unknown_/_silence_ composition "
                             "(unset: the model's training run's)")
    args = parser.parse_args(argv)
    args.evaluated_uri, params = tracking.evaluated_model(
        args.model_uri, args.tracking_uri, args.store_dir, SpeechPredictor.INPUT_COLUMNS)
    trained = config_from_params(config, params)
    splits = trained.splits if args.data_seed is None else replace(
        trained.splits, data_seed=args.data_seed)
    return args, evaluation_inputs(args.data_dir, splits, trained.features,
                                   tracking.model_labels(args.evaluated_uri))
