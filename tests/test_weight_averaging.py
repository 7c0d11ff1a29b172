"""Weight averaging: the kept model is the mean of the averaged epochs' weights, an interrupted
and resumed fit averages the same epochs, and a fit stopped before averaging keeps early
stopping's weights."""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from features.errors import ConfigError
from features.input_pipelines import TrainingBatches
from pipelines import checkpoints, training
from pipelines.errors import DivergedError
from pipelines.weight_averaging import WeightAverage, first_averaged_epoch
from tests.test_checkpoints import Snapshots


def config(**changes) -> training.OptimConfig:
    return training.OptimConfig(**{
        "epochs": 6, "example_budget": 0, "batch_size": 16, "learning_rate": 1e-2,
        "weight_decay": 0.0, "label_smoothing": 0.0, "warmup_epochs": 0, "patience": 10,
        "average_from": 0.5} | changes)


def batches() -> tuple[tf.data.Dataset, tf.data.Dataset]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype("float32")
    y = np.eye(2, dtype="float32")[(x[:, 0] + 0.5 * rng.standard_normal(64) > 0).astype(int)]
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    return train, tf.data.Dataset.from_tensor_slices((x[:32], y[:32])).batch(16)


def new_model(optim: training.OptimConfig) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.BatchNormalization(),
                              keras.layers.Dense(2, activation="softmax")])
    training.compile_classifier(model, optim, steps_per_epoch=4)
    return model


def mean(snapshots: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.mean(np.stack(arrays).astype(np.float64), axis=0)
            for arrays in zip(*snapshots, strict=True)]


def assert_weights(model: keras.Model, expected: list[np.ndarray]) -> None:
    for kept, wanted in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_allclose(kept, wanted, rtol=1e-6, atol=1e-7)


def test_the_kept_model_is_the_mean_of_the_epochs_from_half_the_schedule():
    optim = config()
    model, snapshots = new_model(optim), Snapshots()
    average = WeightAverage(first_averaged_epoch(optim.average_from, optim.epochs))
    history, _ = training.fit_classifier(model, *batches(), optim, [snapshots], 0,
                                         average=average)
    assert len(history["loss"]) == 6 and average.count == 3
    # batch-norm's moving statistics (non-trainable) are averaged with the weights
    assert len(snapshots.weights[0]) == len(model.trainable_weights) + 2
    assert_weights(model, mean(snapshots.weights[3:]))
    assert not np.allclose(model.get_weights()[0], snapshots.weights[-1][0])


def test_a_fit_stopped_before_averaging_keeps_early_stoppings_weights():
    optim = config(epochs=40, patience=1, learning_rate=0.5, average_from=0.9)
    model, snapshots = new_model(optim), Snapshots()
    average = WeightAverage(first_averaged_epoch(optim.average_from, optim.epochs))
    history, _ = training.fit_classifier(model, *batches(), optim, [snapshots], 0,
                                         average=average)
    assert len(history["loss"]) < 36 and average.count == 0
    assert_weights(model, snapshots.weights[int(np.argmin(history["val_loss"]))])


class StopAfter(keras.callbacks.Callback):
    """Ends the fit after epoch `epoch` (0-based) as an interrupt would: the checkpoint of
    that epoch is the last one."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_an_interrupted_fit_resumes_with_its_running_average(tmp_path: Path):
    optim = config()
    train, validation = batches()
    first = Snapshots()
    model = new_model(optim)
    with pytest.raises(KeyboardInterrupt):
        training.fit_classifier(model, train, validation, optim, [first, StopAfter(3)], 0,
                                checkpoint_dir=tmp_path, average=WeightAverage(3))
    state = checkpoints.load_checkpoint(tmp_path)
    assert state.epoch == 3 and state.average.count == 1  # epoch 3 averaged before the stop
    assert (checkpoints.latest_checkpoint(tmp_path) / "average.npz").is_file()

    second = Snapshots()
    average = training.weight_average(optim, state)
    assert average.start == 3
    history, _ = training.fit_classifier(state.model, train, validation, optim, [second], 0,
                                         checkpoint_dir=tmp_path, resume=state,
                                         average=average)
    assert len(history["loss"]) == 6 and len(second.weights) == 2 and average.count == 3
    assert_weights(state.model, mean([first.weights[3], *second.weights]))


def test_a_checkpoint_written_without_averaging_is_not_averaged_past_its_start(
        tmp_path: Path, caplog):
    optim = config(average_from=0.0)
    model = new_model(optim)
    with pytest.raises(KeyboardInterrupt):
        training.fit_classifier(model, *batches(), optim, [StopAfter(3)], 0,
                                checkpoint_dir=tmp_path)
    state = checkpoints.load_checkpoint(tmp_path)
    assert state.epoch == 3 and state.average is None
    # resumed with averaging from epoch 3 (0-based): epochs 0-3 were never summed
    assert training.weight_average(config(average_from=0.5), state) is None
    assert "holds no weight average and is past epoch 4" in caplog.text
    # averaging that starts after the checkpoint's epoch loses nothing
    later = training.weight_average(config(average_from=0.8), state)
    assert later.start == 4 and later.count == 0


def test_average_from_outside_zero_to_one_is_a_config_error():
    assert first_averaged_epoch(0.0, 120) is None and first_averaged_epoch(0.5, 120) == 60
    for value in (-0.1, 1.0):
        with pytest.raises(ConfigError, match=f"average_from must be within \\[0, 1\\), got "
                                              f"{value}"):
            config(average_from=value)




class PoisonAfter(keras.callbacks.Callback):
    """Sets the last layer's kernel to NaN at the end of epoch `epoch`: every later epoch's
    losses are NaN, as a diverged fit's."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            kernel = self.model.layers[-1].kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


def test_a_fit_whose_loss_turns_nan_keeps_and_reports_early_stoppings_epoch():
    """The best epoch a fit reports (logged as best_epoch, and the one whose validation
    accuracy is logged when no average is kept) is the one whose weights it keeps, a NaN
    validation loss never counting as the lowest."""
    optim = config(epochs=4, average_from=0.0)
    model, snapshots = new_model(optim), Snapshots()
    train, validation = batches()
    fitted = training.fit(lambda: model, TrainingBatches(train, validation, 4), optim,
                          strategy="none", callbacks=[snapshots, PoisonAfter(1)], verbose=0)
    losses = fitted.history["val_loss"]
    assert np.isnan(losses[2:]).all() and np.isfinite(losses[:2]).all()
    best = int(np.argmin(losses[:2]))
    assert fitted.best_epoch == best and fitted.metrics(64)["best_epoch"] == best + 1
    assert fitted.metrics(64)["model_val_accuracy"] == fitted.history["val_accuracy"][best]
    assert_weights(fitted.model, snapshots.weights[best])


def test_epochs_that_diverged_are_left_out_of_the_average():
    """A fit whose loss turns NaN after averaging started keeps the mean of the finite epochs
    it averaged, never a NaN model."""
    optim = config(epochs=6, average_from=0.5)
    model, snapshots = new_model(optim), Snapshots()
    train, validation = batches()
    fitted = training.fit(lambda: model, TrainingBatches(train, validation, 4), optim,
                          strategy="none", callbacks=[snapshots, PoisonAfter(4)], verbose=0)
    assert np.isnan(fitted.history["val_loss"][5]) and fitted.averaged_epochs == 2
    assert_weights(fitted.model, mean(snapshots.weights[3:5]))


def test_a_fit_that_diverges_from_its_first_epoch_is_refused_not_kept():
    optim = config(epochs=3, average_from=0.0)
    model = new_model(optim)
    train, validation = batches()
    kernel = model.layers[-1].kernel
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))  # diverged before any epoch ends
    with pytest.raises(DivergedError, match="the fit diverged: its weights are not finite at "
                       "its end \\(the training loss was not finite from epoch 1"):
        training.fit(lambda: model, TrainingBatches(train, validation, 4), optim,
                     strategy="none", verbose=0)


class SlowEpochs(keras.callbacks.Callback):
    """Makes every epoch take at least `seconds`, so that training time is measurable."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_epoch_end(self, epoch, logs=None):
        time.sleep(self.seconds)


def test_a_resumed_fit_reports_the_training_time_of_every_epoch(tmp_path: Path):
    """train_seconds and the throughput count the interrupted process's epochs too (a resumed
    run that trains nothing more reports what its epochs took, not the time of the resume)."""
    optim = config(epochs=4, average_from=0.0)
    train, validation = batches()
    with pytest.raises(KeyboardInterrupt):
        training.fit(lambda: new_model(optim), TrainingBatches(train, validation, 4), optim,
                     strategy="none", checkpoint_dir=tmp_path,
                     callbacks=[SlowEpochs(0.3), StopAfter(3)], verbose=0)
    assert checkpoints.load_checkpoint(tmp_path).seconds >= 1.2
    fitted = training.fit(lambda: new_model(optim), TrainingBatches(train, validation, 4),
                          optim, strategy="none", checkpoint_dir=tmp_path, resuming=True,
                          verbose=0)
    metrics = fitted.metrics(64)
    assert len(fitted.history["loss"]) == 4 and metrics["train_seconds"] >= 1.2
    assert metrics["train_samples_per_second"] == pytest.approx(64 * 4 / fitted.seconds)
