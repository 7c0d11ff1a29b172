"""A prepared tensorflow-datasets `speech_commands` of the release's size, written from a
Speech Commands folder (such as the one `benchmarks.full_dataset` generates), for measuring
`--source tfds` at full scale offline.

    python -m benchmarks.tfds_dataset --folder GENERATED --out TFDS_DATA_DIR

Each split holds the folder's clips of that split (its lists), labelled as TFDS labels them
(the ten command words, every other word `_unknown_`), plus one-second `_silence_` chunks cut
from `_background_noise_` in train and validation. It is written in TFDS' own format
(TFRecord shards and metadata, with the registered builder's features and version), one
example at a time, so that `tfds.builder("speech_commands", data_dir=...)` reads it as
prepared.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
import tensorflow_datasets as tfds

from features.speech_commands import COMMAND_WORDS, SILENCE_LABEL, UNKNOWN_LABEL
from features.speech_splits import LIST_FILES, read_list
from features.tfds_speech import TFDS_NAME

VERSION = "0.0.3"  # the registered builder's
SILENCE_CHUNKS = {"train": 400, "validation": 50}  # about what TFDS cuts from the noise files
SAMPLE_RATE = 16000


def split_clips(folder: Path) -> dict[str, list[str]]:
    """The folder's word clips per split, as its lists place them (unlisted: train)."""
    lists = {split: read_list(folder / name) or set() for split, name in LIST_FILES.items()}
    clips: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for word in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for path in sorted(word.glob("*.wav")):
            clip = f"{word.name}/{path.name}"
            clips[next((s for s in ("test", "validation") if clip in lists[s]), "train")].append(
                clip)
    return clips


def examples(folder: Path, clips: list[str], silence: int, names: list[str]
             ) -> Iterator[tuple[str, dict]]:
    """(key, example) pairs: the clips, then `silence` noise chunks, read one at a time."""
    label_of = {name: index for index, name in enumerate(names)}
    for clip in clips:
        word = clip.split("/")[0]
        audio, _ = soundfile.read(folder / clip, dtype="int16")
        yield clip, {"audio": audio, "label": label_of[word if word in COMMAND_WORDS
                                                       else UNKNOWN_LABEL]}
    noise = sorted((folder / "_background_noise_").glob("*.wav"))
    rng = np.random.default_rng(0)
    for index in range(silence):
        recording, _ = soundfile.read(noise[index % len(noise)], dtype="int16")
        start = int(rng.integers(len(recording) - SAMPLE_RATE))
        yield f"silence/{index}", {"audio": recording[start:start + SAMPLE_RATE],
                                   "label": label_of[SILENCE_LABEL]}


def write(folder: str | Path, data_dir: str | Path) -> dict[str, int]:
    """Writes `speech_commands` into the TFDS data dir `data_dir` from `folder`; returns the
    examples per split. An already prepared one is kept."""
    folder, data_dir = Path(folder), Path(data_dir)
    builder = tfds.builder(TFDS_NAME, data_dir=str(data_dir))
    if builder.is_prepared():
        return {split: info.num_examples for split, info in builder.info.splits.items()}
    features = builder.info.features
    names = features["label"].names
    clips = split_clips(folder)
    tfds.dataset_builders.store_as_tfds_dataset(
        name=TFDS_NAME, version=VERSION, features=features, data_dir=str(data_dir),
        split_datasets={split: examples(folder, paths, SILENCE_CHUNKS.get(split, 0), names)
                        for split, paths in clips.items()},
        disable_shuffling=True)
    return {split: len(paths) + SILENCE_CHUNKS.get(split, 0) for split, paths in clips.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tfds_dataset",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, required=True,
                        help="Speech Commands folder in the official layout")
    parser.add_argument("--out", type=Path, required=True, help="TFDS data dir to write")
    args = parser.parse_args(argv)
    print(json.dumps(write(args.folder, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
