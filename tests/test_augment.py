"""Training-time augmentation: time shift, noise mixing, SpecAugment, augmented batches."""

from pathlib import Path

import numpy as np
import pytest

from features.augment import (
    AugmentConfig,
    ClipAugmenter,
    change_speed,
    mix_noise,
    spec_augment,
    time_shift,
)
from features.errors import ConfigError
from features.input_pipelines import AugmentedBatches, steps_per_epoch
from features.mfcc import MfccConfig, feature_shape, mfcc_frames

OFF = AugmentConfig(0, 0, 0, 0, 0, 0, 0, 0)


def test_time_shift_moves_each_clip_and_fills_with_silence():
    rng = np.random.default_rng(0)
    clips = np.tile(np.arange(1, 101, dtype=np.float32), (50, 1))
    shifted = time_shift(clips, 10, rng)
    assert shifted.shape == clips.shape and shifted.dtype == np.float32
    shifts = set()
    for row in shifted:
        nonzero = np.flatnonzero(row)
        first, last = nonzero[0], nonzero[-1]
        shift = first if row[first] == 1 else -(int(row[first]) - 1)
        shifts.add(shift)
        assert abs(shift) <= 10
        assert np.array_equal(row[first:last + 1], np.arange(row[first], row[last] + 1))
        assert not row[:first].any() and not row[last + 1:].any()
    assert len(shifts) > 5  # random per clip
    assert np.array_equal(time_shift(clips, 0, rng), clips)


def test_change_speed_stretches_around_the_centre():
    rng = np.random.default_rng(6)
    ramp = np.tile(np.arange(1001, dtype=np.float32) - 500, (20, 1))
    changed = change_speed(ramp, 0.2, rng)
    slopes = changed[:, 501] - changed[:, 500]
    assert np.all((slopes >= 0.8 - 1e-4) & (slopes <= 1.2 + 1e-4))
    assert len(np.unique(slopes.round(4))) > 10
    np.testing.assert_allclose(changed[:, 500], 0.0, atol=1e-3)  # the centre stays put
    faster = slopes > 1.0 + 1e-3
    assert np.all(changed[faster, 0] == 0) and np.all(changed[faster, -1] == 0)  # silence
    assert np.array_equal(change_speed(ramp, 0.0, rng), ramp)


@pytest.mark.parametrize("change", [-0.1, 1.0])
def test_speed_change_must_be_a_fraction(change):
    with pytest.raises(ConfigError, match="speed_change"):
        AugmentConfig(speed_change=change)


def test_mix_noise_adds_a_scaled_stretch_with_the_given_probability():
    rng = np.random.default_rng(1)
    clips = np.zeros((400, 100), np.float32)
    noise = [np.full(1000, 0.5, np.float32)]
    mixed = mix_noise(clips, noise, prob=0.5, volume=0.2, rng=rng)
    added = mixed.max(axis=1)
    assert np.allclose(mixed, added[:, None])  # a constant recording adds a constant
    assert 0.35 < np.mean(added > 0) < 0.65
    assert added.max() <= 0.2 * 0.5 + 1e-7
    assert np.array_equal(mix_noise(clips, noise, prob=0.0, volume=0.2, rng=rng), clips)
    loud = mix_noise(np.full((4, 100), 0.9, np.float32), [np.ones(200, np.float32)], 1.0, 1.0,
                     rng)
    assert loud.max() <= 1.0  # clipped to full scale


def test_mix_noise_ignores_recordings_shorter_than_a_clip():
    clips = np.zeros((3, 100), np.float32)
    assert np.array_equal(mix_noise(clips, [np.ones(50)], 1.0, 1.0, np.random.default_rng(0)),
                          clips)


def test_spec_augment_sets_masked_runs_to_the_fill_value():
    rng = np.random.default_rng(2)
    frames = np.random.default_rng(3).normal(size=(64, 98, 40)).astype(np.float32)
    fill = np.linspace(-1, 1, 40).astype(np.float32)
    config = AugmentConfig(0, 0, 0, 0, time_masks=2, time_mask_frames=10, freq_masks=2,
                           freq_mask_bins=5)
    masked = spec_augment(frames, config, fill, rng)
    changed = masked != frames
    assert np.all(masked[changed] == np.broadcast_to(fill, frames.shape)[changed])
    whole_frames = changed.all(axis=2).sum(axis=1)
    whole_bins = changed.all(axis=1).sum(axis=1)
    assert whole_frames.max() <= 20 and whole_bins.max() <= 10
    assert whole_frames.mean() > 2 and whole_bins.mean() > 1
    assert np.array_equal(spec_augment(frames, OFF, fill, rng), frames)


@pytest.mark.parametrize("field, value", [("time_shift_ms", -1), ("noise_prob", 1.5),
                                          ("freq_masks", -2)])
def test_augment_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=field):
        AugmentConfig(**{field: value})


def test_clip_augmenter_without_perturbations_gives_the_plain_features():
    mfcc = MfccConfig()
    waveforms = np.random.default_rng(4).normal(0, 0.1, (3, mfcc.clip_samples)).astype(
        np.float32)
    fill = np.zeros(mfcc.n_mfcc, np.float32)
    assert not OFF.active
    plain = ClipAugmenter(OFF, mfcc, [], fill)(waveforms, np.random.default_rng(0))
    np.testing.assert_allclose(plain, mfcc_frames(waveforms, mfcc), rtol=1e-5, atol=1e-4)
    noise = [np.random.default_rng(5).normal(0, 0.1, 3 * mfcc.clip_samples)]
    augmented = ClipAugmenter(AugmentConfig(), mfcc, noise, fill)(waveforms,
                                                                  np.random.default_rng(0))
    assert augmented.shape == (3, *feature_shape(mfcc))
    assert not np.allclose(augmented, plain)


def test_augmented_batches_cover_every_row_once_per_epoch_with_fresh_draws():
    rows = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    labels = np.arange(10) % 3

    def jitter(batch, rng):
        return batch + rng.uniform(0, 0.1, batch.shape)

    batches = AugmentedBatches(rows, labels, 4, 3, jitter, shuffle_seed=7)
    assert len(batches) == 3
    epochs = []
    for _ in range(2):
        pairs = list(batches)
        x = np.concatenate([features for features, _ in pairs])
        y = np.concatenate([onehot for _, onehot in pairs])
        epochs.append(x)
        assert sorted(np.floor(x[:, 0]).astype(int).tolist()) == list(range(10))
        assert np.array_equal(y.argmax(1), labels[np.floor(x[:, 0]).astype(int)])
    assert not np.allclose(epochs[0], epochs[1])
    again = AugmentedBatches(rows, labels, 4, 3, jitter, shuffle_seed=7)
    np.testing.assert_array_equal(np.concatenate([f for f, _ in again]), epochs[0])


def test_shards_of_augmented_batches_split_each_batch_and_drop_a_last_one_too_small():
    rows = np.arange(9, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    labels = np.arange(9) % 3

    def jitter(batch, rng):
        return batch + rng.uniform(0, 0.1, batch.shape)

    whole = [np.floor(x[:, 0]).astype(int) for x, _ in AugmentedBatches(
        rows, labels, 4, 3, jitter, shuffle_seed=7)]
    assert [len(batch) for batch in whole] == [4, 4, 1]
    shards = [AugmentedBatches(rows, labels, 4, 3, jitter, shuffle_seed=7, shard=shard, shards=2)
              for shard in range(2)]
    assert [len(batches) for batches in shards] == [2, 2]  # the 1-row batch cannot be split
    # the count the learning-rate schedule is built for (pipelines.speech.training_batches)
    assert steps_per_epoch(9, 4, shards=2) == 2 and steps_per_epoch(9, 4) == 3
    assert steps_per_epoch(10, 4, shards=2) == 3 and steps_per_epoch(1, 4, shards=2) == 1
    pieces = [[np.floor(x[:, 0]).astype(int) for x, _ in batches] for batches in shards]
    for step in range(2):  # same shuffle: the two pieces make up the unsharded batch, in order
        assert [len(piece[step]) for piece in pieces] == [2, 2]
        np.testing.assert_array_equal(np.concatenate([pieces[0][step], pieces[1][step]]),
                                      whole[step])
    # each piece draws its own perturbations (the rows are integers: the fractions are draws)
    first, second = ([x for x, _ in batches] for batches in shards)
    assert not np.allclose(np.concatenate(first) % 1, np.concatenate(second) % 1)
    with pytest.raises(ValueError, match="shard 2 is not one of 2 shards"):
        AugmentedBatches(rows, labels, 4, 3, jitter, shuffle_seed=0, shard=2, shards=2)


def mapped_rss_kb(path) -> int:
    """Resident kB of this process's mappings of `path` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split()[0]:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_augmented_batches_read_large_waveform_maps_without_making_them_resident(tmp_path):
    rows = np.random.default_rng(0).standard_normal((256, 4096)).astype(np.float32)  # 4 MB
    path = tmp_path / "waveforms.f32"
    rows.tofile(path)
    mapped = np.memmap(path, np.float32, "r", shape=rows.shape)
    labels = np.arange(256) % 3

    def identity(batch, rng):
        return batch

    streamed = AugmentedBatches(mapped, labels, 32, 3, identity, shuffle_seed=1,
                                stream_over_bytes=2**20)
    in_memory = AugmentedBatches(rows, labels, 32, 3, identity, shuffle_seed=1)
    for (x, y), (x_memory, y_memory) in zip(streamed, in_memory, strict=True):
        np.testing.assert_array_equal(x, x_memory)
        np.testing.assert_array_equal(y, y_memory)
    assert mapped_rss_kb(path) == 0  # read with pread, not through the map
    loaded = AugmentedBatches(mapped, labels, 32, 3, identity, shuffle_seed=1)
    list(loaded)
    assert mapped_rss_kb(path) >= 3000  # what the check would see through the map


def test_noise_recordings_shorter_than_a_clip_are_named_and_not_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from features.speech_data import prepare_speech_data
    from pipelines.speech import SpeechConfig, clip_augmenter
    from tests.datasets import make_speech_commands, write_wav

    root = make_speech_commands(tmp_path / "speech_commands")
    write_wav(root / "_background_noise_" / "short.wav", np.zeros(8000, np.float32))
    config = SpeechConfig.from_options(data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    data = prepare_speech_data(config.source, config.splits, config.features, waveforms=True)
    caplog.set_level("WARNING", "pipelines.speech")
    augmenter = clip_augmenter(config, data)
    assert [len(recording) for recording in augmenter.noise] == [3 * 16000]
    assert ("1 of the 2 _background_noise_ recordings are shorter than a clip (16000 samples) "
            "and are not mixed in") in caplog.messages
