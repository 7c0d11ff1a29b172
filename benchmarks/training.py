"""Training throughput: the default models, trained through the pipelines' own functions, vs
reference models on the same data."""

from __future__ import annotations

import time

import keras
import numpy as np

from benchmarks.suite import Figure, Options
from features.review_data import read_reviews, review_data
from features.speech_data import prepare_speech_data
from features.text import encode_reviews, fit_vectorizer
from pipelines import sentiment, speech, training
from pipelines.sentiment import SentimentConfig
from pipelines.speech import SpeechConfig

KERAS_IO_MAXLEN = 200  # keras-io "Bidirectional LSTM on IMDB"
MAX_SPEECH_EPOCHS = 60  # epochs each speech model gets to reach 80 % validation accuracy


class EpochClock(keras.callbacks.Callback):
    """Training-phase seconds per epoch (validation excluded), validation accuracy per epoch,
    and the wall time from the start of fit to each epoch's end; stops at `target` validation
    accuracy, or after `max_epochs`, when given."""

    def __init__(self, target: float | None = None, max_epochs: int | None = None):
        super().__init__()
        self.target = target
        self.max_epochs = max_epochs
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
        if self.max_epochs is not None and len(self.val_accuracy) >= self.max_epochs:
            self.model.stop_training = True


def steady_rate(examples: int, seconds: list[float]) -> float:
    """Examples per second of the median epoch after the first (which traces the graph)."""
    steady = seconds[1:] or seconds
    return examples / float(np.median(steady))


def speech_training(options: Options) -> list[Figure]:
    """The default speech run's model and batches vs a 2 x BiGRU(128) over the 98 MFCC frames
    at batch 64, both built, batched (augmented as the default run augments them) and fitted by
    the pipeline's own functions on the same data, each until 80 % validation accuracy or
    MAX_SPEECH_EPOCHS (under the default's learning-rate schedule)."""
    config = SpeechConfig.from_options(data_dir=str(options.data_dir / "speech_commands"),
                                       cache_dir=str(options.work_dir / "cache"))
    data = prepare_speech_data(config.source, config.splits, config.features,
                               waveforms=config.augment.active)
    classes, examples = len(data.splits.labels), len(data.splits.y["train"])
    max_epochs = 2 if options.quick else MAX_SPEECH_EPOCHS
    reference_config = config.replace(front_end="none", cell="gru", units=128, depth=2,
                                      batch_size=64)
    results = {}
    for name, model_config in (("default", config), ("reference", reference_config)):
        keras.utils.set_random_seed(model_config.optim.seed)
        clock = EpochClock(target=0.8, max_epochs=max_epochs)
        training.fit(lambda c=model_config: speech.build_model(c, classes, data.mean,
                                                               data.variance),
                     speech.training_batches(model_config, data), model_config.optim,
                     strategy=model_config.run.strategy, callbacks=[clock], verbose=0)
        reached = [i for i, acc in enumerate(clock.val_accuracy) if acc >= 0.8]
        results[name] = (steady_rate(examples, clock.train_seconds),
                         clock.elapsed[reached[0]] if reached else None,
                         len(clock.val_accuracy), max(clock.val_accuracy),
                         float(np.median(clock.train_seconds[1:] or clock.train_seconds)))
    (rate, to_80, epochs, best, epoch_s), (ref_rate, ref_to_80, ref_epochs, ref_best, ref_s) = (
        results["default"], results["reference"])
    recurrent = config.recurrent
    label = (f"{config.model.front_end} front end + {recurrent.depth}x "
             f"Bi{recurrent.cell.upper()}({recurrent.units}), batch {config.optim.batch_size}, "
             "augmented")

    def reached(seconds, epochs, best):
        return (f"{seconds:.0f} s ({epochs} epochs)" if seconds is not None
                else f"not reached in {epochs} epochs (best {best:.3f})")

    reference = "2x BiGRU(128) over 98 frames, batch 64, augmented"
    figures = [Figure("speech-training", f"training samples/s, default {label}", rate,
                      "samples/s", reference, ref_rate,
                      note=f"{examples} training clips; median epoch after the first: "
                           f"{epoch_s:.1f} s (reference {ref_s:.1f} s)")]
    if to_80 is not None and ref_to_80 is not None:
        figures.append(Figure("speech-training", "time to 80 % validation accuracy", to_80,
                              "s", reference, ref_to_80, higher_is_better=False))
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
    data_dir = options.data_dir / "aclImdb"
    config = SentimentConfig.from_options(data_dir=str(data_dir),
                                          store_dir=str(options.work_dir / "mlruns"),
                                          register=False)
    # read as a default run reads them: the unlabelled reviews too, for the pretraining
    imdb = read_reviews(config.source, unlabelled=sentiment.pretrains(config))
    if options.quick:  # a slice of each split and of the unlabelled reviews, one epoch
        rng = np.random.default_rng(0)
        for split, size in (("train", 2000), ("validation", 500), ("test", 1000)):
            reviews = imdb.splits[split]
            imdb.splits[split] = [reviews[i] for i in
                                  sorted(rng.choice(len(reviews), size, replace=False))]
        imdb.unlabelled = imdb.unlabelled[:2000]
        config = config.replace(epochs=1)
    result = sentiment.run(config, imdb)

    data = review_data(imdb).splits
    vectorizer = fit_vectorizer(data.x["train"], config.tokens.vocabulary_size,
                                config.tokens.sequence_length)
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
               "samples/s", reference, ref_rate, goal=">= 4x at >= its accuracy",
               met=rate >= 4 * ref_rate and accuracy >= ref_accuracy,
               note=f"{len(data.y['train'])} training reviews; default "
                    f"{result['epochs_trained']} epochs, reference {epochs}; the default's "
                    "Bi-GRU alone: test accuracy "
                    f"{result.get('recurrent_test_accuracy', accuracy):.4f}"),
        Figure("sentiment-training", "test accuracy", accuracy, "", reference, ref_accuracy,
               goal=">= reference", met=accuracy >= ref_accuracy),
    ]
