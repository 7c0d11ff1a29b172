"""A Speech Commands v0.02-sized folder, generated from the real clips of a smaller one.

    python -m benchmarks.full_dataset --out DIR [--clips N] [--source FOLDER] [--seed S]

writes the official layout: the 35 words in v0.02's own proportions (105,829 clips by default),
`_background_noise_/` copied from the source, about 2,600 speakers named
`<8 hex digits>_nohash_<n>.wav`, and `validation_list.txt` / `testing_list.txt` naming the
clips whose speaker the official hash rule (`features.speech_splits.which_set`, 10 % / 10 %)
puts in validation or test.

Each clip is a real clip of the same word (of another word where the source has none),
taken from the source's split that matches the new speaker's (so that test clips derive from
real test clips where the source has them), played at another speed (0.9x-1.1x), with
another gain (-6 to +3 dB), shifted by up to 100 ms and mixed with a stretch of background
noise, all drawn from a seed per clip: the folder is the same on every run, and no two clips
are byte-identical, so duplicate removal keeps every one. Clips are 16 kHz mono 16-bit PCM
WAV, one second, written on every core. A finished folder holds `generated.json` (the
parameters); asking again for the same folder with the same parameters reuses it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from features.errors import ConfigError, DataError, PipelineError, require_folder
from features.speech_commands import BACKGROUND_NOISE_DIR as NOISE_DIR
from features.speech_splits import LIST_FILES, read_list, which_set

# clips per word in speech_commands_v0.02 (Warden 2018), 105,829 in all, from 2,618 speakers
V002_WORD_COUNTS = {
    "backward": 1664, "bed": 2014, "bird": 2064, "cat": 2031, "dog": 2128, "down": 3917,
    "eight": 3787, "five": 4052, "follow": 1579, "forward": 1557, "four": 3728, "go": 3880,
    "happy": 2054, "house": 2113, "learn": 1575, "left": 3801, "marvin": 2100, "nine": 3934,
    "no": 3941, "off": 3745, "on": 3845, "one": 3890, "right": 3778, "seven": 3998,
    "sheila": 2022, "six": 3860, "stop": 3872, "three": 3727, "tree": 1759, "two": 3880,
    "up": 3723, "visual": 1592, "wow": 2123, "yes": 4044, "zero": 4052,
}
V002_CLIPS = sum(V002_WORD_COUNTS.values())
V002_SPEAKERS = 2618
VALIDATION_PCT = TEST_PCT = 10.0  # the shares v0.02's lists were made with
SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE
MARKER = "generated.json"
CHUNK = 500  # clips per task handed to a worker
SHIFT_SAMPLES = SAMPLE_RATE // 10
SPEED_CHANGE = 0.1
GAIN_DB = (-6.0, 3.0)
NOISE_VOLUME = (0.005, 0.05)
SHARED_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_commands"


@dataclass(frozen=True)
class ClipPlan:
    """One clip to write: its path in the new folder, the source clip it is made from, and the
    seed of its variation."""

    path: str
    source: str
    seed: int


@dataclass(frozen=True)
class FolderPlan:
    """Every clip of the folder, its speakers and its split lists (relative paths, sorted)."""

    clips: list[ClipPlan]
    speakers: list[str]
    lists: dict[str, list[str]]


def word_counts(total: int) -> dict[str, int]:
    """Clips per word for a folder of `total` clips, in v0.02's proportions (largest
    remainder), at least one per word.

    Raises:
        ConfigError: `total` is below one clip per word.
    """
    if total < len(V002_WORD_COUNTS):
        raise ConfigError(f"--clips must be at least {len(V002_WORD_COUNTS)} (one per word), "
                          f"got {total}")
    exact = {word: count * total / V002_CLIPS for word, count in V002_WORD_COUNTS.items()}
    counts = {word: max(1, int(share)) for word, share in exact.items()}
    by_remainder = sorted(exact, key=lambda word: exact[word] - int(exact[word]), reverse=True)
    for word in by_remainder[:max(0, total - sum(counts.values()))]:
        counts[word] += 1
    return counts


def speaker_names(count: int, rng: np.random.Generator) -> list[str]:
    """`count` distinct speaker hashes of 8 hex digits, as v0.02 names its speakers."""
    names: set[str] = set()
    while len(names) < count:
        names.add(f"{int(rng.integers(2**32)):08x}")
    return sorted(names)


def source_pools(source: Path) -> dict[tuple[str, str], list[str]]:
    """The source's clips by (word, split), split as its lists say (unlisted: train).

    Raises:
        DataError: The source does not exist or holds no word clips.
    """
    require_folder(source, "source folder", "expected a Speech Commands folder in the "
                   "official layout")
    lists = {split: read_list(source / name) or set() for split, name in LIST_FILES.items()}
    pools: dict[tuple[str, str], list[str]] = {}
    for folder in sorted(p for p in source.iterdir() if p.is_dir() and p.name != NOISE_DIR):
        for path in sorted(folder.glob("*.wav")):
            clip = f"{folder.name}/{path.name}"
            split = next((s for s in ("test", "validation") if clip in lists[s]), "train")
            pools.setdefault((folder.name, split), []).append(clip)
    if not pools:
        raise DataError(f"{source}: no <word>/*.wav clips to generate from")
    return pools


def pick_source(pools: dict[tuple[str, str], list[str]], word: str, split: str,
                rng: np.random.Generator) -> str:
    """A source clip of `word` from `split`, else of `word` from any split, else any clip."""
    candidates = pools.get((word, split)) or [
        clip for (w, _), clips in pools.items() if w == word for clip in clips] or [
        clip for clips in pools.values() for clip in clips]
    return candidates[int(rng.integers(len(candidates)))]


def plan_folder(source: Path, total: int = V002_CLIPS, seed: int = 0) -> FolderPlan:
    """What the folder of `total` clips holds: each clip's name, source and seed, and the lists.

    Speakers contribute unevenly (log-normal weights), as in the release; a speaker's
    repetitions of a word are numbered `_nohash_0`, `_nohash_1`, ...
    """
    rng = np.random.default_rng(seed)
    pools = source_pools(source)
    speakers = speaker_names(max(1, round(V002_SPEAKERS * total / V002_CLIPS)), rng)
    weights = rng.lognormal(0.0, 0.8, len(speakers))
    weights /= weights.sum()
    split_of = {name: which_set(f"{name}_nohash_0.wav", VALIDATION_PCT, TEST_PCT)
                for name in speakers}
    clips, lists = [], {"validation": [], "test": []}
    for word, count in word_counts(total).items():
        repetitions: Counter[str] = Counter()
        for speaker in rng.choice(speakers, size=count, p=weights):
            path = f"{word}/{speaker}_nohash_{repetitions[speaker]}.wav"
            repetitions[speaker] += 1
            split = split_of[speaker]
            clips.append(ClipPlan(path, pick_source(pools, word, split, rng),
                                  int(rng.integers(2**63))))
            if split in lists:
                lists[split].append(path)
    return FolderPlan(clips, speakers, {split: sorted(paths) for split, paths in lists.items()})


def read_noise(source: Path) -> list[np.ndarray]:
    """The source's background-noise recordings as float32 (at least one clip long).

    Raises:
        DataError: There is none at 16 kHz that is at least one second long.
    """
    noise = []
    for path in sorted((source / NOISE_DIR).glob("*.wav")):
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
        if rate == SAMPLE_RATE and len(samples) >= CLIP_SAMPLES:
            noise.append(samples.mean(axis=1))
    if not noise:
        raise DataError(f"{source / NOISE_DIR}: no 16 kHz recording of at least one second "
                        "to copy and mix in")
    return noise


def varied_clip(clip: np.ndarray, noise: list[np.ndarray], seed: int) -> np.ndarray:
    """`clip` (float32, any length) at another speed and gain, shifted, with noise mixed in:
    one second of int16."""
    rng = np.random.default_rng(seed)
    rate = rng.uniform(1 - SPEED_CHANGE, 1 + SPEED_CHANGE)
    centre = (CLIP_SAMPLES - 1) / 2
    positions = (np.arange(CLIP_SAMPLES) - centre) * rate + centre
    positions += int(rng.integers(-SHIFT_SAMPLES, SHIFT_SAMPLES + 1))
    out = np.interp(positions, np.arange(len(clip)), clip, left=0.0, right=0.0)
    out *= 10 ** (rng.uniform(*GAIN_DB) / 20)
    recording = noise[int(rng.integers(len(noise)))]
    start = int(rng.integers(len(recording) - CLIP_SAMPLES + 1))
    out += rng.uniform(*NOISE_VOLUME) * recording[start:start + CLIP_SAMPLES]
    return np.clip(np.round(out * 32767), -32768, 32767).astype(np.int16)


_WORKER: dict = {}


def init_worker(source: str, out: str) -> None:
    _WORKER.update(source=Path(source), out=Path(out), noise=read_noise(Path(source)))


def write_clips(clips: list[ClipPlan]) -> int:
    """Writes `clips` (in a worker); returns how many."""
    source, out, noise = _WORKER["source"], _WORKER["out"], _WORKER["noise"]
    for clip in clips:
        samples, rate = soundfile.read(source / clip.source, dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise DataError(f"{source / clip.source}: {rate} Hz, expected {SAMPLE_RATE}")
        soundfile.write(out / clip.path, varied_clip(samples.mean(axis=1), noise, clip.seed),
                        SAMPLE_RATE, subtype="PCM_16")
    return len(clips)


def parameters(source: Path, total: int, seed: int) -> dict:
    return {"source": str(source.resolve()), "clips": total, "seed": seed,
            "generator": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]}


def generate(out: str | Path, total: int = V002_CLIPS, *, source: str | Path = SHARED_SOURCE,
             seed: int = 0, workers: int | None = None) -> FolderPlan:
    """Writes the folder (see the module docstring), or reuses it if it was already written
    with the same parameters.

    Args:
        out: The folder to write; it must be absent, empty, or a finished folder of the same
            parameters.
        total: Clips in all.
        source: A Speech Commands folder of real clips (with `_background_noise_/`).
        seed: Seed of the plan and of every clip's variation.
        workers: Processes writing clips (default: one per core).

    Returns:
        The folder's plan.

    Raises:
        ConfigError: `total` below one clip per word.
        DataError: `out` holds something else, or `source` is unusable.
    """
    out, source = Path(out), Path(source)
    wanted = parameters(source, total, seed)
    marker = out / MARKER
    plan = plan_folder(source, total, seed)
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return plan
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} is not empty and is not a folder generated with these "
                        f"parameters ({wanted}); give an empty or new folder")
    read_noise(source)  # fails before any clip is written
    shutil.copytree(source / NOISE_DIR, out / NOISE_DIR)
    if (source / "LICENSE").is_file():
        shutil.copy2(source / "LICENSE", out / "LICENSE")
    for word in V002_WORD_COUNTS:
        (out / word).mkdir()
    chunks = [plan.clips[i:i + CHUNK] for i in range(0, len(plan.clips), CHUNK)]
    with multiprocessing.Pool(workers or os.cpu_count() or 1, init_worker,
                              (str(source), str(out))) as pool:
        written = sum(pool.imap_unordered(write_clips, chunks))
    if written != len(plan.clips):
        raise RuntimeError(f"{out}: wrote {written} of {len(plan.clips)} clips")
    for split, name in LIST_FILES.items():
        (out / name).write_text("".join(f"{path}\n" for path in plan.lists[split]))
    marker.write_text(json.dumps(wanted))
    return plan


def summary(plan: FolderPlan) -> dict:
    """Clips, speakers and the share of clips per split."""
    total = len(plan.clips)
    return {"clips": total, "speakers": len(plan.speakers),
            **{f"{split}_pct": round(100 * len(paths) / total, 2)
               for split, paths in plan.lists.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.full_dataset",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--clips", type=int, default=V002_CLIPS,
                        help=f"clips in all (default {V002_CLIPS:,}, as v0.02)")
    parser.add_argument("--source", type=Path, default=SHARED_SOURCE,
                        help="Speech Commands folder of real clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, help="writing processes (default: all cores)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        plan = generate(args.out, args.clips, source=args.source, seed=args.seed,
                        workers=args.workers)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    print(json.dumps(summary(plan) | {"seconds": round(seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
