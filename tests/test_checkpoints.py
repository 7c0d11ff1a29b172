"""Checkpoints and caches are written as one unit: a crash or a full disk part-way leaves the
previous one whole, and a full disk is a clear error naming the folder."""

from __future__ import annotations

import contextlib
import logging
import resource
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from features.errors import DiskFullError
from features.feature_cache import FeatureCache, RowSink, SplitFeatures
from pipelines import checkpoints, speech
from tests.test_speech_pipeline import small_args


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Files this process writes cannot grow past `limit` bytes (a write fails with EFBIG, as
    on a full disk, instead of SIGXFSZ ending the process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


class Snapshots(keras.callbacks.Callback):
    """The weights after each epoch."""

    def __init__(self):
        super().__init__()
        self.weights: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


class CrashingCheckpoint(checkpoints.EpochCheckpoint):
    """Dies (as SIGKILL would) after writing the weights of epoch `at`, before its state."""

    def __init__(self, *args, at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.at = at

    def write_files(self, folder, state):
        if state["epoch"] == self.at:
            self.model.save(folder / "last.keras")
            raise SystemExit("killed between the checkpoint's files")
        super().write_files(folder, state)


class LimitFilesFrom(keras.callbacks.Callback):
    """Sets a 4 KB file-size limit at the start of epoch `epoch`."""

    def __init__(self, stack: contextlib.ExitStack, epoch: int):
        super().__init__()
        self.stack, self.epoch = stack, epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.stack.enter_context(file_size_limit(4096))


def fit_with(callbacks, epochs: int = 4) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 8)).astype("float32"), np.eye(2)[rng.integers(0, 2, 64)]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "categorical_crossentropy")
    model.fit(x, y, validation_data=(x, y), epochs=epochs, batch_size=16, verbose=0,
              callbacks=callbacks)


def checkpointing(directory: Path, *extra, checkpoint=checkpoints.EpochCheckpoint, **kwargs):
    """Early stopping, weight snapshots, `extra`, then the checkpoint, as `training.fit`
    orders them."""
    stopper = checkpoints.ResumableEarlyStopping(monitor="val_loss", patience=10,
                                              restore_best_weights=True)
    return [stopper, Snapshots(), *extra, checkpoint(directory, stopper, **kwargs)]


def test_a_crash_between_checkpoint_files_leaves_the_previous_epoch_whole(tmp_path: Path):
    callbacks = checkpointing(tmp_path / "run", checkpoint=CrashingCheckpoint, at=2)
    with pytest.raises(SystemExit, match="killed between the checkpoint's files"):
        fit_with(callbacks)
    snapshots = callbacks[1].weights
    state = checkpoints.load_checkpoint(tmp_path / "run")
    assert state.epoch == 1 and len(state.history["loss"]) == 2
    assert (tmp_path / "run" / ".partial-0002" / "last.keras").is_file()  # never read
    # the weights are epoch 2's (index 1), not those written of the crashed epoch 3
    for loaded, saved in zip(state.model.get_weights(), snapshots[1], strict=True):
        np.testing.assert_array_equal(loaded, saved)
    assert not np.array_equal(state.model.get_weights()[0], snapshots[2][0])

    fit_with(checkpointing(tmp_path / "run"), epochs=1)  # a later complete one replaces both
    assert [path.name for path in (tmp_path / "run").iterdir()] == ["epoch-0000"]


def test_an_older_checkpoint_that_cannot_be_removed_is_named_and_training_goes_on(
        tmp_path: Path, monkeypatch, caplog):
    remove = shutil.rmtree

    def refuse_the_first(path, *args, **kwargs):  # as a folder another user owns would
        if Path(path).name == "epoch-0000":
            raise PermissionError(13, "Permission denied", str(path))
        remove(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", refuse_the_first)
    caplog.set_level(logging.WARNING, "pipelines.checkpoints")
    fit_with(checkpointing(tmp_path / "run"), epochs=3)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["epoch-0000", "epoch-0002"]
    assert checkpoints.load_checkpoint(tmp_path / "run").epoch == 2  # the latest is read
    assert sum(f"cannot remove the older checkpoint {tmp_path / 'run' / 'epoch-0000'}" in message
               for message in caplog.messages) == 2  # after each later epoch


def test_the_latest_checkpoint_is_the_highest_complete_epoch(tmp_path: Path):
    for name in ("epoch-0998", "epoch-9999", "epoch-10000"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.json").write_text("{}")
    (tmp_path / "epoch-10001").mkdir()  # written part-way: no state.json
    assert checkpoints.latest_checkpoint(tmp_path).name == "epoch-10000"


def test_a_full_disk_while_checkpointing_is_a_clear_error_and_keeps_the_last(tmp_path: Path):
    with contextlib.ExitStack() as stack, pytest.raises(DiskFullError) as error:
        fit_with(checkpointing(tmp_path / "run", LimitFilesFrom(stack, epoch=2)))
    assert f"no space left to write {tmp_path / 'run'}" in str(error.value)
    assert "File too large" in str(error.value)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["epoch-0001"]
    assert checkpoints.load_checkpoint(tmp_path / "run").epoch == 1


def test_a_full_disk_while_caching_features_removes_the_partial_file(tmp_path: Path):
    def compute(out: Path) -> SplitFeatures:
        with RowSink(out, 64, (1000,)) as sink:
            for _ in range(8):
                sink.write(np.ones((8, 1000), np.float32))  # 32 KB a block
        return SplitFeatures(sink.rows(), np.arange(64), [], False, np.zeros(1), np.ones(1),
                             sink.crc32)

    cache = FeatureCache(tmp_path / "cache")
    with file_size_limit(100_000), pytest.raises(DiskFullError) as error:
        cache.build("key", compute)
    assert f"no space left to write {tmp_path / 'cache'}" in str(error.value)
    assert list((tmp_path / "cache").iterdir()) == []
    assert cache.build("key", compute).rows.shape == (64, 1000)  # with room, it is built


def test_a_run_whose_feature_cache_fills_the_disk_stops_with_the_folder_named(
        speech_dir: Path, tmp_path: Path, capsys):
    # 2 MB: the store's database fits; the training waveforms for augmentation (3.8 MB) do not
    with file_size_limit(2_000_000):
        code = speech.main(small_args(speech_dir, tmp_path))
    assert code == 2
    err = capsys.readouterr().err
    assert f"error: no space left to write {tmp_path / 'cache'}" in err
    assert "Traceback" not in err
    assert not [path for path in (tmp_path / "cache").iterdir() if path.name.startswith(".")]
    assert not (tmp_path / "mlruns").exists()  # the data is read before a run opens
