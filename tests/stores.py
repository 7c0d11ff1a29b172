"""New SQLite tracking stores for the test process, copied from one that MLflow migrated.

MLflow makes a new SQLite store by running each of its schema migrations, 1.5-2.5 CPU-s a
store on two cores, and the suite makes dozens of stores in its own processes. Within
`copies_of_one_migrated_store`, MLflow builds one store, and every new store after it gets a
copy of that one (SQLite's backup API) where MLflow would run the migrations: the same tables,
indexes and schema revision. MLflow's own test suite copies one migrated database into each
test the same way (its `cached_db` fixture). The copy holds no Default experiment: MLflow makes
it when it opens the new store, with that store's own artifact folder. Processes that the
tests start migrate their own stores.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import mlflow.store.db.utils
import pytest
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore


def migrated_store(folder: Path) -> Path:
    """The database of a new store that MLflow migrated in `folder`, with no experiment."""
    database = folder / "mlflow.db"
    store = SqlAlchemyStore(f"sqlite:///{database}", (folder / "artifacts").as_uri())
    store.engine.dispose()
    with closing(sqlite3.connect(database)) as db, db:
        db.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
        db.execute("DELETE FROM experiments WHERE experiment_id = 0")
    return database


@contextmanager
def copies_of_one_migrated_store(folder: Path) -> Iterator[Path]:
    """Within it, each new SQLite store of this process is a copy of one migrated store made
    in `folder` (yielded); other databases are migrated by MLflow as usual."""
    template = migrated_store(folder)
    migrate = mlflow.store.db.utils._initialize_tables

    def initialize_tables(engine) -> None:
        database = engine.url.database
        if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
            migrate(engine)
            return
        engine.dispose()  # the pool's connections saw the empty file
        with closing(sqlite3.connect(template)) as source, \
                closing(sqlite3.connect(database)) as target:
            source.backup(target)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mlflow.store.db.utils, "_initialize_tables", initialize_tables)
        yield template
