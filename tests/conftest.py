"""Fixtures: small real datasets under tmp_path, the real data beside the repo, and new
tracking stores copied from one migrated store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The xdist workers and the processes their tests start share two cores: one TensorFlow
# compute thread per process (every process a test starts inherits this) instead of a pool
# as wide as the machine in each.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

from tests.datasets import SHARED_DATA, make_imdb, make_speech_commands  # noqa: E402
from tests.stores import copies_of_one_migrated_store  # noqa: E402

# The modules that take longest (`python -m pytest --durations=0`, summed per module, slowest
# first): pytest-xdist hands modules out in collection order (pyproject: --dist loadfile
# --no-loadscope-reorder), so these start first and no long module starts last.
SLOWEST_MODULES = ("test_distribute", "test_interrupt", "test_speech_pipeline",
                   "test_model_server", "test_sentiment_pipeline", "test_pretraining",
                   "test_sweep", "test_reliability", "test_mlflow_ui", "test_mlproject",
                   "test_postgres_server", "test_export")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collects the slowest modules first, the others after them in their usual order."""
    def rank(item: pytest.Item) -> int:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        return (SLOWEST_MODULES.index(module) if module in SLOWEST_MODULES
                else len(SLOWEST_MODULES))

    items.sort(key=rank)  # stable: each module's tests keep their order


@pytest.fixture(scope="session", autouse=True)
def migrated_store_copies(tmp_path_factory: pytest.TempPathFactory):
    """New SQLite stores in the test process are copies of one migrated store (tests/stores.py)."""
    with copies_of_one_migrated_store(tmp_path_factory.mktemp("migrated-store")) as template:
        yield template


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
