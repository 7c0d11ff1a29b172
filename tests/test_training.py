from __future__ import annotations

import numpy as np

from pipelines.training import bucketed_dataset


def test_bucketed_batches_pad_to_their_bucket_and_cover_every_example_once():
    lengths = np.array([1, 3, 5, 7, 9, 11, 13, 15, 17, 20, 2, 19])
    ids = np.zeros((len(lengths), 20), np.int32)
    for row, length in enumerate(lengths):
        ids[row, :length] = row + 1  # the row number identifies the example
    dataset = bucketed_dataset(ids, lengths, np.arange(len(lengths)) % 2, batch_size=2,
                               num_classes=2, buckets=4, shuffle=True, seed=1)
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
