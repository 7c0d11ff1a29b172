"""What a task's data stage hands to training: labelled splits, and where they came from."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from features.errors import DataError

SPLITS = ("train", "validation", "test")
# which split keeps an example several splits hold; any other (unlabelled data) comes after
SPLIT_PRIORITY = ("test", "validation", "train")

Example = TypeVar("Example")
DUPLICATE_OF = "duplicate of "  # the skipped reason of a dropped copy, before the kept name


def drop_copies(splits: Mapping[str, Sequence[Example]], content: Callable[[Example], Hashable],
                name: Callable[[Example], str]
                ) -> tuple[dict[str, list[Example]], list[tuple[str, str]]]:
    """Keeps one example of each content (a clip's bytes, a review's text): the one in the
    first split of SPLIT_PRIORITY that holds one, and within that split the first by name, so
    that no test example is also trained on.

    Returns:
        The examples per split, in their order, without the dropped copies; (name, "duplicate
        of <kept name>") of each dropped copy, split by split in that priority.
    """
    rank = {split: index for index, split in enumerate(SPLIT_PRIORITY)}
    kept: dict[Hashable, str] = {}
    skipped: list[tuple[str, str]] = []
    for split in sorted(splits, key=lambda split: rank.get(split, len(rank))):
        for example in sorted(splits[split], key=name):
            key = content(example)
            if key in kept:
                skipped.append((name(example), DUPLICATE_OF + kept[key]))
            else:
                kept[key] = name(example)
    dropped = {dropped_name for dropped_name, _ in skipped}
    return ({split: [example for example in examples if name(example) not in dropped]
             for split, examples in splits.items()}, skipped)


def copy_kept(reason: str) -> str | None:
    """The name of the example kept in place of a dropped copy, from its skipped reason; None
    for a reason other than `drop_copies`'s."""
    return reason.removeprefix(DUPLICATE_OF) if reason.startswith(DUPLICATE_OF) else None


def require_usable_splits(source: str, class_counts: Mapping[str, Mapping[str, int]],
                          what_to_change: str) -> None:
    """Refuses, before any feature or training work, splits a run cannot use: training needs
    an example of every class, early stopping a validation example, evaluation a test one.

    Args:
        source: The data's folder or URL, for the message.
        class_counts: Split -> class -> examples.
        what_to_change: How the user can compose other splits, for the message.

    Raises:
        DataError: A split lacks what the run needs, with every split's count.
    """
    totals = {split: sum(class_counts.get(split, {}).values()) for split in SPLITS}
    problems = [f"{split} is empty" for split in ("validation", "test") if not totals[split]]
    absent = [label for label, count in class_counts.get("train", {}).items() if not count]
    if not totals["train"]:
        problems.insert(0, "train is empty")
    elif absent:
        problems.insert(0, f"train has no {', '.join(absent)} examples")
    if problems:
        counts = ", ".join(f"{split} {count}" for split, count in totals.items())
        raise DataError(f"{source}: the splits cannot train and evaluate a model ({counts}): "
                        f"{'; '.join(problems)}; {what_to_change}")


@dataclass(frozen=True)
class Splits:
    """Model inputs and integer labels per split.

    Attributes:
        labels: Class names in label-id order.
        x: Split -> model inputs (an array, or a list of texts), one row per example.
        y: Split -> label ids, aligned with `x`.
    """

    labels: tuple[str, ...]
    x: Mapping[str, Any]
    y: Mapping[str, np.ndarray]

    def counts(self) -> dict[str, int]:
        """Examples per split."""
        return {split: len(labels) for split, labels in self.y.items()}

    def split_tags(self) -> dict[str, dict[str, str]]:
        """Per split: example count and per-class counts, for the dataset inputs of a run."""
        tags = {}
        for split, y in self.y.items():
            per_class = np.bincount(y, minlength=len(self.labels))
            tags[split] = {"examples": str(len(y)), "class_counts": json.dumps(
                dict(zip(self.labels, per_class.tolist(), strict=True)))}
        return tags

    def with_inputs(self, x: Mapping[str, Any]) -> Splits:
        """The same labels and examples with other inputs (say, token ids for texts)."""
        return replace(self, x=dict(x))


@dataclass(frozen=True)
class Lineage:
    """Where the examples came from: what a run records as its data lineage.

    Attributes:
        source: Folder or URL the data came from.
        digests: Split -> content digest of its raw examples.
        skipped: (path, reason) of each example left out.
        summary: Anything else worth keeping with the run (split method, notes, counts).
        from_cache: Whether the features were read from a cache.
    """

    source: str
    digests: Mapping[str, str]
    skipped: tuple[tuple[str, str], ...] = ()
    summary: Mapping[str, Any] = field(default_factory=dict)
    from_cache: bool = False

    @property
    def test_digest(self) -> str:
        """The digest the champion rule compares: models are comparable on the same test data."""
        return self.digests["test"]

    @property
    def data_digest(self) -> str:
        """The digest of every split, which a resumed run must find again."""
        return "-".join(self.digests.values())


@dataclass(frozen=True)
class LabelledInputs:
    """Labelled raw inputs for a served model, one row per example (the `evaluate` commands).

    Attributes:
        inputs: The model's input columns (`audio` bytes, `waveform` and `sample_rate`, or
            `text`).
        truth: True label name per row.
        names: How to name each row in errors (its file).
        digest: Content digest of the examples.
        source: The folder they came from.
        layout: What kind of folder that is.
        failed: Rows whose input could not be read (their columns empty), with the reason.
        skipped: Inputs the reader left out as training's reader does (empty reviews, copies
            of others), as (name, reason): no row, named in the evaluation run.
    """

    inputs: pd.DataFrame
    truth: list[str]
    names: list[str]
    digest: str
    source: str
    layout: str
    failed: dict[int, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
