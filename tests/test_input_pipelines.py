from __future__ import annotations

import numpy as np
import pytest

from features.input_pipelines import AugmentedBatches, RowReader, bucketed_dataset, make_dataset


def test_bucketed_batches_pad_to_their_bucket_and_cover_every_example_once():
    lengths = np.array([1, 3, 5, 7, 9, 11, 13, 15, 17, 20, 2, 19])
    ids = np.zeros((len(lengths), 20), np.int32)
    for row, length in enumerate(lengths):
        ids[row, :length] = row + 1  # the row number identifies the example
    dataset = bucketed_dataset(ids, lengths, np.arange(len(lengths)) % 2, batch_size=2,
                               num_classes=2, buckets=4, shuffle_seed=1)
    seen = []
    batches = list(dataset.as_numpy_iterator())
    for features, labels in batches:
        assert features.shape[1] in (5, 10, 15, 20)  # padded to the bucket boundary
        assert labels.shape == (len(features), 2)
        for row in features:
            example = row[0] - 1
            seen.append(example)
            assert (row[:lengths[example]] == example + 1).all()
            assert (row[lengths[example]:] == 0).all()
            assert features.shape[1] - 5 < lengths[example] <= features.shape[1]
    assert sorted(seen) == list(range(len(lengths)))
    assert len(batches) == dataset.cardinality().numpy() == 7  # buckets of 4, 2, 3, 3 examples
    # more buckets than lengths: one per length, however many are asked for (10**15 was a
    # loop of hours)
    shapes = [[features.shape[1] for features, _ in bucketed_dataset(
        ids, lengths, np.arange(len(lengths)) % 2, batch_size=2, num_classes=2,
        buckets=buckets).as_numpy_iterator()] for buckets in (20, 10**15)]
    assert shapes[0] == shapes[1] and sorted(set(shapes[0])) == sorted(set(lengths.tolist()))


def test_large_memory_maps_are_streamed_from_the_file_with_the_same_batches(tmp_path):
    rows = np.arange(50 * 3 * 2, dtype=np.float32).reshape(50, 3, 2)
    path = tmp_path / "frames.f32"
    rows.tofile(path)
    mapped = np.memmap(path, np.float32, "r", shape=rows.shape)
    labels = np.arange(50) % 5
    streamed = make_dataset(mapped, labels, 8, 5, shuffle_seed=3, stream_over_bytes=0)
    rows = rows + 6000  # rewritten after the dataset was made: it must read the file, not a copy
    rows.tofile(path)
    seen = []
    for _ in range(2):
        batches = list(streamed.as_numpy_iterator())
        assert [len(features) for features, _ in batches] == [8] * 6 + [2]
        order = [int(row[0, 0] - 6000) // 6 for features, _ in batches for row in features]
        assert sorted(order) == list(range(50))  # each row once per epoch
        seen.append(order)
        for features, onehot in batches:
            index = (features[:, 0, 0].astype(int) - 6000) // 6
            assert np.array_equal(features, rows[index])
            assert np.array_equal(onehot.argmax(axis=1), labels[index])
    assert seen[0] != seen[1]  # reshuffled each epoch
    ordered = make_dataset(mapped, labels, 16, 5, stream_over_bytes=0)
    assert np.array_equal(np.concatenate([f for f, _ in ordered.as_numpy_iterator()]), rows)


def test_row_reader_names_a_truncated_file(tmp_path):
    path = tmp_path / "frames.f32"
    np.zeros((4, 10), np.float32).tofile(path)
    reader = RowReader(np.memmap(path, np.float32, "r", shape=(4, 10)))
    assert reader(np.array([3, 0])).shape == (2, 10)
    with path.open("r+b") as handle:
        handle.truncate(100)
    with pytest.raises(OSError, match="frames.f32: short read of row 3.*truncated"):
        reader(np.array([3]))


def test_every_pipeline_runs_with_autotuning_off(tmp_path):
    rows = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    path = tmp_path / "frames.f32"
    rows.tofile(path)
    mapped = np.memmap(path, np.float32, "r", shape=rows.shape)
    labels = np.arange(40) % 2
    ids = np.ones((40, 6), np.int32)
    augmented = AugmentedBatches(rows, labels, 8, 2, lambda batch, rng: batch, shuffle_seed=0)
    pipelines = {
        "loaded": make_dataset(rows, labels, 8, 2, shuffle_seed=0),
        "streamed": make_dataset(mapped, labels, 8, 2, stream_over_bytes=0),
        "bucketed": bucketed_dataset(ids, np.full(40, 6), labels, 8, 2, buckets=2),
        "augmented": augmented.dataset((3,)),
    }
    for name, dataset in pipelines.items():
        assert dataset.options().autotune.enabled is False, name
        features, one_hot = next(iter(dataset))
        assert features.shape[0] == 8 and one_hot.shape == (8, 2), name


def test_a_bucketed_sentiment_epoch_schedules_every_batch_it_has():
    """Each length bucket's last batch may be partial, so a bucketed epoch has more batches
    than examples / batch size: the learning-rate schedule must span all of them."""
    from features.splits import Splits
    from pipelines.sentiment import SentimentConfig, training_batches

    lengths = np.array([1, 3, 5, 7, 9, 11, 13, 15, 17, 20, 2, 19])
    ids = np.zeros((len(lengths), 20), np.int32)
    for row, length in enumerate(lengths):
        ids[row, :length] = row + 1
    labels = np.arange(len(lengths)) % 2
    splits = Splits(("neg", "pos"), {"train": ids, "validation": ids},
                    {"train": labels, "validation": labels})
    config = SentimentConfig.from_options(batch_size=4, buckets=4)
    batches = training_batches(config, splits)
    # buckets of 4, 2, 3 and 3 examples: four batches, where 12 examples / 4 make three
    assert batches.steps_per_epoch == sum(1 for _ in batches.train) == 4
