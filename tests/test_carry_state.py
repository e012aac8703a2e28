"""Training with the LSTM state carried across windows (train.carry_state): the streams, the model, the run."""

import json

import numpy as np
import pytest

from keras_music import config as config_lib, dataset, model as model_lib, run as run_lib, train
from conftest import tiny_config


def test_the_carried_model_reads_consecutive_windows_as_one_sequence_with_the_models_own_weights():
    model = model_lib.build_model(20, 8, 16, 3, dropout=0.1)
    carried = model_lib.CarriedModel(model)
    tokens = np.random.RandomState(0).randint(0, 20, (4, 30)).astype("int32")
    whole = model(tokens, training=False).numpy()
    first, state = carried(tokens[:, :12], carried.initial_state(4))
    second, end = carried(tokens[:, 12:], state)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=1e-6)
    # The state it hands on is the one the step model (generation) reaches after the same tokens.
    step = model_lib.StepModel(model)
    step_state = step.initial_state(4)
    for t in range(12):
        _, step_state = step.step(tokens[:, t], step_state)
    np.testing.assert_allclose(np.asarray(state), step_state, atol=1e-6)
    # Its weights are the model's variables themselves, so training it trains the model.
    owned = {id(v) for v in model.trainable_variables}
    used = [v for rnn in carried.rnns for v in rnn.trainable_variables] + carried.embedding.trainable_variables \
        + carried.head.trainable_variables
    assert len(used) == len(owned) == 1 + 3 * 3 + 2 and {id(v) for v in used} == owned


def _carried_batches(tmp_path, pieces, *, seq_length, batch_size, epochs, first_epoch=0):
    directory = str(tmp_path / "shards")
    dataset.write_shards(directory, "train", pieces=[(f"p{i}", ids) for i, ids in enumerate(pieces)],
                         pieces_per_shard=3)
    files = dataset.shard_files(directory, "train")
    steps = dataset.count_windows([len(p) for p in pieces], seq_length, stride=seq_length) // batch_size
    data = config_lib.DataConfig(seq_length=seq_length)
    train_cfg = config_lib.TrainConfig(batch_size=batch_size, epochs=epochs, seed=3)
    stream = dataset.carried_dataset(files, data, train=train_cfg,
                                     span=dataset.EpochSpan(steps, first_epoch=first_epoch),
                                     tokens=dataset.TokenTables(boundary_id=2), piece_count=len(pieces))
    batches = [(x.numpy(), y.numpy()) for x, y in stream]
    return batches, steps


def test_carried_batches_continue_row_by_row_and_each_row_is_whole_pieces_in_a_shuffled_order(tmp_path):
    rng = np.random.RandomState(1)
    # Distinct pieces of 3..40 tokens (ids >= 3; 2 is the boundary), so a stream can be cut back into them.
    pieces = [np.concatenate([[3 + i], rng.randint(10, 60, rng.randint(2, 40))]).astype(np.int64) for i in range(23)]
    seq_length, batch_size = 5, 3
    batches, steps = _carried_batches(tmp_path, pieces, seq_length=seq_length, batch_size=batch_size, epochs=2)
    assert steps >= 10 and len(batches) == 2 * steps
    orders = []
    for epoch in range(2):
        epoch_batches = batches[epoch * steps:(epoch + 1) * steps]
        assert all(x.shape == (batch_size, seq_length) == y.shape for x, y in epoch_batches)
        rows = np.concatenate([x for x, _ in epoch_batches], axis=1)  # [batch, steps * seq_length]
        targets = np.concatenate([y for _, y in epoch_batches], axis=1)
        # Targets are the inputs shifted by one, across window boundaries and from one row into the next.
        np.testing.assert_array_equal(targets[:, :-1], rows[:, 1:])
        np.testing.assert_array_equal(targets[:-1, -1], rows[1:, 0])
        stream = rows.reshape(-1)
        assert stream[0] == 2
        segments = np.split(stream, np.flatnonzero(stream == 2))[1:]
        by_first = {int(p[0]): p for p in pieces}
        for segment in segments[:-1]:
            np.testing.assert_array_equal(segment[1:], by_first[int(segment[1])])
        last = segments[-1][1:]
        np.testing.assert_array_equal(last, by_first[int(last[0])][:len(last)])
        order = [int(s[1]) for s in segments]
        assert len(set(order)) == len(order)
        orders.append(order)
    assert orders[0] != orders[1]  # every epoch shuffles the pieces anew
    # A run resumed at epoch 2 reads exactly the batches of the uninterrupted run's epoch 2.
    resumed, _ = _carried_batches(tmp_path / "again", pieces, seq_length=seq_length, batch_size=batch_size,
                                  epochs=2, first_epoch=1)
    assert len(resumed) == steps
    for (x, y), (x2, y2) in zip(batches[steps:], resumed):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize("other, named", [
    ("train.strategy=mirrored", "train.strategy=mirrored"),
    ("data.infill_rate=0.5", "data.infill_rate=0.5"),
    ("data.window_stride=16", "data.window_stride=16"),
])
def test_carrying_the_state_with_what_breaks_the_streams_is_refused_in_one_line(other, named):
    with pytest.raises(config_lib.ConfigError) as error:
        tiny_config("train.carry_state=true", other)
    message = str(error.value)
    assert "\n" not in message and message.startswith("train.carry_state: expected false with ") and named in message
    tiny_config("train.carry_state=true", "data.window_stride=32")  # the stride that is seq_length is fine


def test_a_run_carrying_its_state_trains_and_is_judged_on_whole_held_out_pieces(tmp_path):
    run_dir = str(tmp_path / "run")
    metrics = train.train(tiny_config("train.carry_state=true", "train.epochs=3"), run_dir, show_progress=False,
                          log=lambda *a: None)
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[2]["loss"] < history[0]["loss"]  # the model's own weights learnt through the carried loop
    # Its held-out score is that of the held-out pieces read whole, not of windows.
    model = run_lib.load_model(run_dir)
    files = dataset.shard_files(run_lib.path(run_dir, "data"), "validation")
    pieces = dataset.read_pieces(files)
    whole = train.evaluate_pieces(model, pieces, boundary_id=2)
    windows = train.evaluate_windows(model, dataset.evaluation_dataset(files, 32, batch_size=4))
    assert metrics["val_loss"] == pytest.approx(whole["loss"], abs=1e-6)
    assert abs(whole["loss"] - windows["loss"]) > 1e-4
    assert whole["tokens"] == sum(len(p) for p in pieces)
    saved = json.load(open(run_lib.path(run_dir, "metrics.json")))
    assert saved["val_loss"] == pytest.approx(metrics["val_loss"])
    # The saved model is the plain one every command reads.
    assert model_lib.describe(model)["num_layers"] == 3 and model.inputs[0].shape[0] is None
