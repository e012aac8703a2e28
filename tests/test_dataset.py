"""Tests for keras_music.dataset: TFRecord shards, (x, y) windows shifted by one, per-epoch determinism."""

import numpy as np
import pytest

from keras_music import dataset
from keras_music.config import DataConfig, TrainConfig

PIECES = [("a", [10, 11, 12, 13, 14]), ("b", [20, 21, 22]), ("c", [30, 31, 32, 33])]


@pytest.fixture()
def shards(tmp_path):
    names = dataset.write_shards(str(tmp_path), "train", pieces=PIECES, pieces_per_shard=2)
    assert names == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    return dataset.shard_files(str(tmp_path), "train")


def test_shards_round_trip_pieces(shards):
    assert [p.tolist() for p in dataset.read_pieces(shards)] == [ids for _, ids in PIECES]


def test_evaluation_windows_are_the_boundary_joined_stream_shifted_by_one(shards):
    batches = list(dataset.evaluation_dataset(shards, seq_length=4, batch_size=10).as_numpy_iterator())
    x, y = batches[0]
    # Stream: 2 10 11 12 13 14 2 20 21 22 2 30 31 32 33 (15 tokens) -> windows of 5, shift 4.
    np.testing.assert_array_equal(x, [[2, 10, 11, 12], [13, 14, 2, 20], [21, 22, 2, 30]])
    np.testing.assert_array_equal(y, [[10, 11, 12, 13], [14, 2, 20, 21], [22, 2, 30, 31]])
    assert dataset.count_windows([5, 3, 4], 4, stride=4) == 3


def test_training_yields_exactly_steps_per_epoch_and_is_seeded_per_epoch(shards):
    windows = dataset.count_windows([5, 3, 4], 3, stride=2)
    steps = windows // 2

    def batches(first, epochs, seed=0):
        data = dataset.training_dataset(shards, DataConfig(seq_length=3, window_stride=2, shuffle_buffer=16),
                                        train=TrainConfig(batch_size=2, seed=seed, epochs=epochs),
                                        span=dataset.EpochSpan(steps, first_epoch=first))
        return [x.tolist() for x, _ in data.as_numpy_iterator()]

    full = batches(0, 3)
    assert len(full) == 3 * steps
    # A resumed run (from epoch 1) sees exactly the batches of the uninterrupted run.
    assert batches(1, 3) == full[steps:]
    assert batches(0, 3, seed=5) != full
    data = dataset.training_dataset(shards, DataConfig(seq_length=3, window_stride=2),
                                    train=TrainConfig(batch_size=2, seed=0, epochs=1), span=dataset.EpochSpan(steps))
    for x, y in data.as_numpy_iterator():
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_transposition_only_uses_shifts_that_keep_every_token_in_the_vocabulary():
    import tensorflow as tf

    # 40 ids; shift s maps id -> id + s, and is valid only while the result stays below 34.
    shifts = (-2, -1, 0, 1, 2)
    table = np.array([[max(0, min(39, i + s)) for s in shifts] for i in range(40)], np.int32)
    valid = np.array([[0 <= i + s < 34 for s in shifts] for i in range(40)])
    transpose = dataset._transposer(table, valid)
    piece = tf.constant([30, 31, 32, 33], tf.int32)
    moved = {tuple(transpose(piece, tf.constant(draw, tf.int64)).numpy()) for draw in range(12)}
    # 33 + 1 leaves the vocabulary, so only -2, -1 and 0 are possible, and all of them occur.
    assert moved == {(28, 29, 30, 31), (29, 30, 31, 32), (30, 31, 32, 33)}
    low = tf.constant([10, 11], tf.int32)
    assert {tuple(transpose(low, tf.constant(d, tf.int64)).numpy()) for d in range(12)} == {
        (10 + s, 11 + s) for s in shifts}
