"""Fixtures: small real datasets under tmp_path, and the real data beside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.datasets import SHARED_DATA, make_imdb, make_speech_commands


@pytest.fixture
def speech_dir(tmp_path: Path) -> Path:
    return make_speech_commands(tmp_path / "speech_commands")


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.fail(f"real data not found at {path}: ../shared/data must sit beside the repo")
    return path


@pytest.fixture
def shared_speech_dir() -> Path:
    return shared_data("speech_commands")


@pytest.fixture
def imdb_dir(tmp_path: Path) -> Path:
    return make_imdb(tmp_path / "aclImdb")


@pytest.fixture
def shared_imdb_dir() -> Path:
    return shared_data("aclImdb")
