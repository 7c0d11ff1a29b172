"""The reviews `predict` and `evaluate` read from the command line: texts given as arguments
or one per line of UTF-8 files (read as training reads a review file: undecodable bytes as
U+FFFD), and the test/{neg,pos} reviews of an aclImdb folder; what is skipped is named on
stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from features.errors import DataError, require_data_dir, shown_name
from features.imdb import decode_review
from features.review_data import IMDB_ENV, evaluation_inputs
from features.splits import copy_kept
from features.text import review_text
from pipelines import cli, tracking
from pipelines.serving import TextPredictor

MAX_NAMED = 10  # blank lines of an inputs file named by number (file_lines)
UTF8_BOM = b"\xef\xbb\xbf"


def read_texts(parser: argparse.ArgumentParser, argv: list[str]
               ) -> tuple[argparse.Namespace, cli.Inputs]:
    """`predict "text" ... [--file reviews.txt ...]`: the reviews given and one per line of
    each file (`file_lines`: blank lines skipped and counted).

    Raises:
        ValueError: The file cannot be read.
    """
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="reviews to label")
    parser.add_argument("--file", action="append", default=[],
                        help="a UTF-8 file with one review per line (repeatable)")
    args = parser.parse_args(argv)
    cli.require_file_names(parser, args.file)
    texts = argument_texts(args.texts) + [t for path in args.file for t in file_lines(path)]
    if not texts:
        parser.error(f"no review in {', '.join(map(shown_name, args.file))} (empty, or blank "
                     "lines only)" if args.file else "give reviews as arguments or --file")
    return args, cli.Inputs(pd.DataFrame({"text": texts}), [short_name(text) for text in texts])


def read_labelled_reviews(parser: argparse.ArgumentParser, argv: list[str]):
    """`evaluate --data-dir DIR`: the test/{neg,pos} reviews, read once the model is found."""
    args = parser.parse_args(argv)
    require_data_dir(args.data_dir, IMDB_ENV, "IMDB")
    args.evaluated_uri, _ = tracking.evaluated_model(args.model_uri, args.tracking_uri,
                                                     args.store_dir, TextPredictor.INPUT_COLUMNS)
    labelled = evaluation_inputs(args.data_dir)
    print_skipped(labelled.skipped)
    return args, labelled


def short_name(text: str, width: int = 40) -> str:
    """A review shortened to one line, to name it in output (quoted when it is blank)."""
    line = " ".join(str(text).split())
    if not line:
        return repr(str(text))
    return line if len(line) <= width else line[:width - 3] + "..."


def file_lines(path: str) -> list[str]:
    """The inputs of a file with one per line (UTF-8, undecodable bytes replaced): its
    non-blank lines; blank ones are skipped, and lines with replaced bytes kept, each counted
    on stderr with their numbers.

    Raises:
        DataError: The file cannot be read.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {shown_name(path)} ({error.strerror})") from error
    text, was_replaced = decode_review(raw.removeprefix(UTF8_BOM))  # as training reads one
    # one review per line: split on line ends only (str.splitlines also splits on form
    # feeds, U+2028 and other separators a review may hold)
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and not lines[-1]:
        lines.pop()  # the file's last line end
    replaced = [number for number, line in enumerate(lines, 1)
                if was_replaced and "\ufffd" in line]
    blank = [number for number, line in enumerate(lines, 1) if not line.strip()]
    for numbers, what in ((blank, "skipped {} blank line(s)"),
                          (replaced, "{} line(s) not UTF-8, read with U+FFFD for the bytes")):
        print_numbered(what, numbers, cli.message_line(f"{path}: "))
    return [line for line in lines if line.strip()]


def argument_texts(texts: Sequence[str]) -> list[str]:
    """Texts given as arguments, read as a file's lines are: bytes that are not UTF-8 (which
    Python holds as lone surrogates, and pandas cannot store) become U+FFFD, and such
    arguments are counted on stderr with their numbers."""
    decoded = [argument_text(text) for text in texts]
    print_numbered("{} argument(s) not UTF-8, read with U+FFFD for the bytes", [
        number for number, (given, text) in enumerate(zip(texts, decoded, strict=True), 1)
        if given != text])
    return decoded


def argument_text(text: str) -> str:
    """An argument as UTF-8 text: its bytes (which Python holds as surrogates where they are not
    UTF-8) decoded with replacement, as a file line's are."""
    try:
        return review_text(os.fsencode(text))  # as a review file's bytes are decoded
    except UnicodeEncodeError:  # a surrogate no command line gives (a caller's string)
        return review_text(text)


def print_numbered(what: str, numbers: Sequence[int], prefix: str = "") -> None:
    """`prefix`, `what` (its `{}` the count) and the first MAX_NAMED numbers on stderr, if
    any."""
    if numbers:
        named = ", ".join(map(str, numbers[:MAX_NAMED])) + (
            ", ..." if numbers[MAX_NAMED:] else "")
        print(f"{prefix}{what.format(len(numbers))}: {named}", file=sys.stderr)


def print_skipped(skipped: Sequence[tuple[str, str]]) -> None:
    """Names on stderr the inputs an evaluation leaves out, each with its reason, except copies
    of other inputs (reason `duplicate of ...`), which are counted in one line."""
    copies = []
    for name, reason in skipped:
        if copy_kept(reason) is not None:
            copies.append((name, reason))
        else:
            print(cli.message_line(f"{name}: skipped: {reason}"), file=sys.stderr)
    if copies:
        print(cli.message_line(f"skipped {len(copies)} copies of other inputs (each kept "
                               f"once), e.g. {copies[0][0]} ({copies[0][1]})"), file=sys.stderr)
