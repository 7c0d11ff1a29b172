"""Training throughput: the default models vs the references the issue names, same data."""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np

from benchmarks.suite import Figure, Options

KERAS_IO_MAXLEN = 200  # keras-io "Bidirectional LSTM on IMDB"


class EpochClock(keras.callbacks.Callback):
    """Training-phase seconds per epoch (validation excluded), validation accuracy per epoch,
    and the wall time from the start of fit to each epoch's end; stops at `target` validation
    accuracy when one is given."""

    def __init__(self, target: float | None = None):
        super().__init__()
        self.target = target
        self.train_seconds: list[float] = []
        self.val_accuracy: list[float] = []
        self.elapsed: list[float] = []

    def on_train_begin(self, logs=None):
        self.fit_started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()
        self.train_ended = None

    def on_test_begin(self, logs=None):
        if self.train_ended is None:
            self.train_ended = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        ended = self.train_ended or time.perf_counter()
        self.train_seconds.append(ended - self.epoch_started)
        self.elapsed.append(time.perf_counter() - self.fit_started)
        self.val_accuracy.append(float((logs or {}).get("val_accuracy", np.nan)))
        if self.target is not None and self.val_accuracy[-1] >= self.target:
            self.model.stop_training = True


def steady_rate(examples: int, seconds: list[float]) -> float:
    """Examples per second of the median epoch after the first (which traces the graph)."""
    steady = seconds[1:] or seconds
    return examples / float(np.median(steady))


def speech_training(options: Options) -> list[Figure]:
    """The default speech model vs a 2xBiGRU(128) at batch 64 on the same data, each fitted
    until 80 % validation accuracy (or the default's epoch budget)."""
    from pipelines import training
    from pipelines.speech import SpeechConfig, build_model, prepare_data

    config = SpeechConfig(data_dir=str(options.data_dir / "speech_commands"),
                          cache_dir=str(options.work_dir / "cache"))
    data = prepare_data(config)
    mean, variance = data.normalization
    classes, examples = len(data.labels), len(data.y["train"])
    max_epochs = 2 if options.quick else config.epochs
    results = {}
    for name in ("default", "reference"):
        keras.utils.set_random_seed(config.seed)
        model_config = (config if name == "default" else  # the reference: 2x BiGRU(128), b64
                        dataclasses.replace(config, cell="gru", units=128, depth=2,
                                            batch_size=64))
        model = build_model(model_config, classes, mean, variance)
        batch = model_config.batch_size
        training.compile_classifier(model, config, training.steps_per_epoch(examples, batch))
        clock = EpochClock(target=0.8)
        model.fit(training.make_dataset(data.x["train"], data.y["train"], batch, classes,
                                        shuffle=True, seed=config.seed),
                  validation_data=training.make_dataset(
                      data.x["validation"], data.y["validation"], batch, classes,
                      shuffle=False),
                  epochs=max_epochs, verbose=0, callbacks=[clock])
        reached = [i for i, acc in enumerate(clock.val_accuracy) if acc >= 0.8]
        results[name] = (steady_rate(examples, clock.train_seconds),
                         clock.elapsed[reached[0]] if reached else None,
                         len(clock.val_accuracy), max(clock.val_accuracy))
    (rate, to_80, epochs, best), (ref_rate, ref_to_80, ref_epochs, ref_best) = (
        results["default"], results["reference"])
    label = (f"{config.depth}x Bi{config.cell.upper()}({config.units}), batch "
             f"{config.batch_size}")

    def reached(seconds, epochs, best):
        return (f"{seconds:.0f} s ({epochs} epochs)" if seconds is not None
                else f"not reached in {epochs} epochs (best {best:.3f})")

    figures = [Figure("speech-training", f"training samples/s, default {label}", rate,
                      "samples/s", "2x BiGRU(128), batch 64", ref_rate,
                      note=f"{examples} training clips; median epoch after the first")]
    if to_80 is not None and ref_to_80 is not None:
        figures.append(Figure("speech-training", "time to 80 % validation accuracy", to_80,
                              "s", "2x BiGRU(128), batch 64", ref_to_80,
                              higher_is_better=False))
    figures[0].note += (f"; to 80 % validation accuracy: default {reached(to_80, epochs, best)},"
                        f" reference {reached(ref_to_80, ref_epochs, ref_best)}")
    return figures


def keras_io_reference(vocabulary_size: int):
    """keras-io's "Bidirectional LSTM on IMDB": Embedding 128, 2x BiLSTM(64), sigmoid."""
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = keras.layers.Embedding(vocabulary_size, 128)(inputs)
    x = keras.layers.Bidirectional(keras.layers.LSTM(64, return_sequences=True))(x)
    x = keras.layers.Bidirectional(keras.layers.LSTM(64))(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    return model


def sentiment_training(options: Options) -> list[Figure]:
    """The default sentiment pipeline vs the keras-io reference (Embedding 128, 2x
    BiLSTM(64), 200 tokens, batch 32, 2 epochs) on the same splits and token ids.

    Samples/s is examples x epochs / fit wall time (validation and graph tracing included)
    for both, which is how the pipeline reports it."""
    from features.imdb import load_imdb
    from features.text import encode_reviews, fit_vectorizer
    from pipelines import sentiment

    data_dir = options.data_dir / "aclImdb"
    config = sentiment.SentimentConfig(data_dir=str(data_dir),
                                       store_dir=str(options.work_dir / "mlruns"),
                                       register=False)
    imdb = load_imdb(data_dir, validation_pct=config.validation_pct, seed=config.data_seed)
    if options.quick:  # a slice of each split, one epoch
        rng = np.random.default_rng(0)
        for split, size in (("train", 2000), ("validation", 500), ("test", 1000)):
            reviews = imdb.splits[split]
            imdb.splits[split] = [reviews[i] for i in
                                  sorted(rng.choice(len(reviews), size, replace=False))]
        config = sentiment.SentimentConfig(**{**config.__dict__, "epochs": 1})
    result = sentiment.run(config, imdb)

    data = sentiment.prepare_data(imdb)
    vectorizer = fit_vectorizer(data.x["train"], config.vocabulary_size,
                                config.sequence_length)
    ids = {split: keras.utils.pad_sequences(  # pre-padded, pre-truncated, as keras-io does
        [row[row > 0] for row in encode_reviews(vectorizer, data.x[split])],
        maxlen=KERAS_IO_MAXLEN) for split in data.x}
    keras.utils.set_random_seed(0)
    model = keras_io_reference(vectorizer.vocabulary_size())
    epochs = 1 if options.quick else 2
    started = time.perf_counter()
    model.fit(ids["train"], data.y["train"], batch_size=32, epochs=epochs, verbose=0,
              validation_data=(ids["validation"], data.y["validation"]))
    ref_rate = len(data.y["train"]) * epochs / (time.perf_counter() - started)
    ref_accuracy = float(((model.predict(ids["test"], batch_size=256, verbose=0)[:, 0] > 0.5)
                          == data.y["test"]).mean())
    rate, accuracy = result["train_samples_per_second"], result["test_accuracy"]
    reference = "keras-io 2x BiLSTM(64), 200 tokens, batch 32"
    return [
        Figure("sentiment-training", "training samples/s, default pipeline", rate,
               "samples/s", reference, ref_rate, goal=">= 3x at >= its accuracy",
               met=rate >= 3 * ref_rate and accuracy >= ref_accuracy,
               note=f"{len(data.y['train'])} training reviews; default "
                    f"{result['epochs_trained']} epochs, reference {epochs}"),
        Figure("sentiment-training", "test accuracy", accuracy, "", reference, ref_accuracy,
               goal=">= reference", met=accuracy >= ref_accuracy),
    ]
