"""Small real datasets written in the official layouts (WAV files, split lists)."""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import numpy as np
import soundfile

from features.speech_commands import COMMAND_WORDS

SHARED_DATA = Path(
    os.environ.get("SHARED_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")
)
OTHER_WORDS = ("bed", "cat")
SPEAKERS = ("0a1b2c3d", "1b2c3d4e", "2c3d4e5f", "3d4e5f60", "4e5f6071", "5f607182")


def tone(frequency: float, seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A sine tone with a little noise, as float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * frequency * t) + 0.01 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    """A WAV file's bytes, as a request or a file holds them."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, rate, subtype=subtype)
    return path


def make_speech_commands(
    root: Path, *, with_lists: bool = True, clips_per_speaker: int = 1
) -> Path:
    """Writes a Speech Commands layout: 12 words x 6 speakers, one tone per word, noise, lists.

    Speaker 4 is listed for validation and speaker 5 for test when `with_lists` is set.
    """
    words = (*COMMAND_WORDS, *OTHER_WORDS)
    validation, testing = [], []
    for w, word in enumerate(words):
        for s, speaker in enumerate(SPEAKERS):
            for n in range(clips_per_speaker):
                name = f"{word}/{speaker}_nohash_{n}.wav"
                write_wav(root / name, tone(300 + 150 * w, seed=w * 100 + s * 10 + n))
                if s == 4:
                    validation.append(name)
                elif s == 5:
                    testing.append(name)
    rng = np.random.default_rng(1)
    noise = (0.005 * rng.standard_normal(3 * 16000)).astype(np.float32)
    write_wav(root / "_background_noise_" / "white_noise.wav", noise)
    if with_lists:
        (root / "validation_list.txt").write_text("\n".join(validation) + "\n")
        (root / "testing_list.txt").write_text("\n".join(testing) + "\n")
    return root


def copy_clip(root: Path, source: str, target: str, list_file: str | None = None) -> str:
    """Writes a byte-identical copy of clip `source` as `target` (both relative to `root`),
    adding `target` to the split list `list_file` when given; returns `target`."""
    (root / target).parent.mkdir(parents=True, exist_ok=True)
    (root / target).write_bytes((root / source).read_bytes())
    if list_file is not None:
        with (root / list_file).open("a") as handle:
            handle.write(f"{target}\n")
    return target


POSITIVE_WORDS = ("great", "wonderful", "moving", "brilliant", "superb", "loved", "fun")
NEGATIVE_WORDS = ("awful", "boring", "terrible", "waste", "dull", "hated", "worst")
FILLER = ("the", "film", "plot", "actors", "story", "was", "and", "this", "movie", "a")


def review_text(label: str, seed: int) -> str:
    """A short English-like review whose sentiment words match `label`."""
    rng = np.random.default_rng(seed)
    words = POSITIVE_WORDS if label == "pos" else NEGATIVE_WORDS
    sentence = [str(rng.choice(FILLER)) if i % 2 else str(rng.choice(words))
                for i in range(int(rng.integers(6, 14)))]
    return f"{' '.join(sentence).capitalize()}!<br /><br />{rng.choice(words).upper()}."


def make_imdb(root: Path, *, train_per_label: int = 20, test_per_label: int = 6) -> Path:
    """Writes an aclImdb layout: train/{neg,pos}, test/{neg,pos} with `<id>_<rating>.txt`
    reviews, an empty train/unsup/ and the README and imdb.vocab files of the release."""
    for split, count in (("train", train_per_label), ("test", test_per_label)):
        for label in ("neg", "pos"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                rating = 8 + n % 3 if label == "pos" else 1 + n % 4
                seed = zlib.crc32(f"{split}/{label}/{n}".encode())
                (folder / f"{n}_{rating}.txt").write_text(review_text(label, seed),
                                                          encoding="utf-8")
    (root / "train" / "unsup").mkdir()
    (root / "train" / "unsup" / "0_0.txt").write_text("unlabelled, must be ignored")
    (root / "README").write_text("Large Movie Review Dataset (test copy)\n")
    (root / "imdb.vocab").write_text("the\nand\n")
    return root
