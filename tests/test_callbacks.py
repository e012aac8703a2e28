"""Tests for keras_music.callbacks: learning-rate schedules, the time budget, stops, backups and the progress line."""

import json
import math
import os

import numpy as np
import pytest

from keras_music import callbacks, model as model_lib
from conftest import tiny_config


# ----------------------------------------------------------------------------- learning rate

def test_budget_cosine_warms_up_then_anneals_to_the_floor():
    settings = tiny_config("train.learning_rate=0.01", "train.min_learning_rate_ratio=0.05").train
    assert callbacks.budget_cosine(settings, 0.0) == pytest.approx(0.001)
    assert callbacks.budget_cosine(settings, 0.02) == pytest.approx(0.01)
    assert callbacks.budget_cosine(settings, 0.51) == pytest.approx(0.0005 + 0.0095 * 0.5)
    assert callbacks.budget_cosine(settings, 1.0) == pytest.approx(0.0005)
    assert callbacks.budget_cosine(settings, 3.0) == pytest.approx(0.0005)
    rates = [callbacks.budget_cosine(settings, f / 100) for f in range(2, 101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_learning_rate_schedule_for_each_setting():
    def settings(schedule):
        return tiny_config(f"train.lr_schedule={schedule}", "train.learning_rate=0.01",
                           "train.min_learning_rate_ratio=0.05").train

    assert callbacks.learning_rate_schedule(settings("constant"), 1000) == 0.01
    assert callbacks.learning_rate_schedule(settings("cosine_budget"), 1000) == pytest.approx(0.001)
    cosine = callbacks.learning_rate_schedule(settings("cosine"), 1000)
    # 1000 steps: 50 of warm-up from a tenth of the rate, then the cosine down to 5% of it.
    rates = [float(cosine(step)) for step in (0, 25, 50, 525, 1000, 2000)]
    assert rates == pytest.approx([0.001, 0.0055, 0.01, 0.00525, 0.0005, 0.0005], rel=1e-5)
    assert float(callbacks.learning_rate_schedule(settings("cosine"), 100000)(200)) == pytest.approx(0.01)


# ----------------------------------------------------------------------------- time budget

def test_time_budget_counts_the_time_of_earlier_processes_too():
    budget = callbacks.TimeBudget(0.5, elapsed_before=10.0)
    budget.started = 100.0
    assert budget.used(115.0) == 25.0
    assert budget.left(115.0) == 5.0 and budget.left(200.0) == 0.0
    assert not budget.exceeded(120.0) and budget.exceeded(120.5)
    assert budget.reason() == "time budget of 0.5 minutes reached"
    assert callbacks.TimeBudget(1).reason() == "time budget of 1 minute reached"
    unlimited = callbacks.TimeBudget(0, elapsed_before=1e9)
    assert not unlimited.exceeded(1e12) and unlimited.left(1e12) is None


# ----------------------------------------------------------------------------- progress line

def test_progress_line_says_where_training_is():
    line = callbacks.progress_line(callbacks.Position(3, 60, 120, 400), tokens_per_second=5432.1, loss=1.23456,
                                   epoch_eta=95.4, budget_left=12 * 60 + 30)
    assert line == ("epoch 3/60 step 120/400 | 5,432 tokens/s | loss 1.2346 | epoch ends in 1:35 | "
                    "budget left 12:30")
    assert callbacks.progress_line(callbacks.Position(1, 2, 1, 2), tokens_per_second=10.0, loss=None, epoch_eta=3725,
                                   budget_left=None).endswith(
        "loss n/a | epoch ends in 1:02:05 | no time budget")


def test_in_a_log_file_the_progress_line_is_written_every_tenth_of_an_epoch(capsys):
    display = callbacks.ProgressDisplay(epochs=3, steps_per_epoch=20, tokens_per_step=100)
    assert not display.interactive  # pytest's captured stderr is not a terminal
    for step in range(1, 21):
        display.show(1, step, epoch_seconds=step * 0.5, now=1000.0 + step, loss=2.0, budget_left=None)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" | ")[0] for line in lines] == [f"epoch 2/3 step {s}/20" for s in range(2, 21, 2)]
    assert lines[-1] == "epoch 2/3 step 20/20 | 200 tokens/s | loss 2.0000 | epoch ends in 0:00 | no time budget"


# ----------------------------------------------------------------------------- one epoch's record

def test_epoch_record_and_line():
    record = callbacks.epoch_record({"loss": 1.0, "accuracy": 0.5, "val_loss": 2.0, "val_accuracy": 0.25},
                                    epoch=0, steps=10, seconds=2.0, tokens_per_step=128, learning_rate=0.01)
    assert record == pytest.approx({"loss": 1.0, "accuracy": 0.5, "val_loss": 2.0, "val_accuracy": 0.25,
                                    "perplexity": math.e, "val_perplexity": math.e ** 2, "steps": 10.0,
                                    "tokens_per_second": 640.0, "epoch": 1.0, "seconds": 2.0,
                                    "learning_rate": 0.01})
    assert all(type(value) is float for value in record.values())
    assert callbacks.epoch_line(record) == ("epoch 1: loss 1.0000  val_loss 2.0000  val_perplexity 7.389  "
                                            "val_accuracy 0.2500  2 s")
    # A loss too large for exp() reads as exp(50), not an overflow.
    record = callbacks.epoch_record({"loss": 1e6}, 0, steps=1, seconds=1.0, tokens_per_step=1, learning_rate=0.1)
    assert record["perplexity"] == pytest.approx(math.exp(50))


# ----------------------------------------------------------------------------- the run's callback, driven by hand

@pytest.fixture()
def compiled_model():
    import keras

    model = model_lib.build_model(6, embedding_size=2, hidden_size=3, num_layers=1, dropout=0.0)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="sparse_categorical_crossentropy")
    return model


def drive(progress, epoch, val_loss, loss=1.0, steps=3):
    progress.on_epoch_begin(epoch)
    for batch in range(steps):
        progress.on_train_batch_end(batch, {"loss": loss})
    progress.on_epoch_end(epoch, {"loss": loss, "val_loss": val_loss, "val_accuracy": 0.5})


def read_backup(run_dir):
    return json.load(open(os.path.join(run_dir, "backup", "state.json")))


def test_patience_stops_the_run_and_the_backup_resumes_it_until_a_nan_loss(tmp_path, compiled_model):
    run_dir = str(tmp_path)
    config = tiny_config("train.early_stopping_patience=2", "train.epochs=10", "train.time_budget_minutes=0")
    messages = []
    progress = callbacks.RunProgress(config, run_dir, steps_per_epoch=3, log=messages.append,
                                     metadata={"vocabulary_fingerprint": "abc"})
    progress.set_model(compiled_model)
    progress.on_train_begin()
    for epoch, val_loss in enumerate((2.0, 1.5, 1.6)):
        drive(progress, epoch, val_loss)
        assert progress.stopped is None and not compiled_model.stop_training
    assert (progress.best, progress.wait) == (1.5, 1)
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "best.keras"))
    drive(progress, 3, 1.7)
    assert compiled_model.stop_training
    assert (progress.stopped, progress.stopped_reason) == ("early_stopping", "no validation improvement for 2 epochs")
    assert messages[0] == "epoch 1: loss 1.0000  val_loss 2.0000  val_perplexity 7.389  val_accuracy 0.5000  0 s"
    backup = read_backup(run_dir)
    assert list(backup) == ["next_epoch", "model", "history", "best", "wait", "elapsed", "stopped", "stopped_reason",
                            "steps_done", "config", "vocabulary_fingerprint"]
    assert (backup["next_epoch"], backup["model"], backup["best"], backup["wait"], backup["steps_done"]) == (
        4, "model-0004.keras", 1.5, 2, 12)
    assert (backup["stopped"], backup["vocabulary_fingerprint"]) == ("early_stopping", "abc")
    assert sorted(os.listdir(os.path.join(run_dir, "backup"))) == ["model-0004.keras", "state.json"]

    # A later process resumes from the backup; a NaN loss stops it and its weights are not backed up.
    resumed = callbacks.RunProgress(config, run_dir, steps_per_epoch=3, backup=backup, log=messages.append)
    resumed.set_model(compiled_model)
    resumed.on_train_begin()
    drive(resumed, 4, float("nan"), loss=float("nan"))
    assert (resumed.stopped, resumed.stopped_reason) == ("nan_loss", "the loss became NaN in epoch 5")
    backup = read_backup(run_dir)
    assert (backup["next_epoch"], backup["model"], backup["steps_done"]) == (5, "model-0004.keras", 15)
    assert [h["epoch"] for h in backup["history"]] == [1, 2, 3, 4, 5] and backup["history"][-1]["loss"] is None
    assert sorted(os.listdir(os.path.join(run_dir, "backup"))) == ["model-0004.keras", "state.json"]


def test_the_time_budget_stops_after_a_step_and_the_budget_schedule_reaches_its_floor(tmp_path, compiled_model):
    config = tiny_config("train.time_budget_minutes=1000", "train.lr_schedule=cosine_budget",
                         "train.learning_rate=0.01", "train.min_learning_rate_ratio=0.05", "train.epochs=10")
    progress = callbacks.RunProgress(config, str(tmp_path), steps_per_epoch=3, log=lambda *a: None)
    progress.set_model(compiled_model)
    progress.on_train_begin()
    progress.on_epoch_begin(0)
    assert callbacks.current_learning_rate(compiled_model.optimizer) == pytest.approx(0.001, rel=1e-3)
    progress.on_train_batch_end(0, {"loss": 1.0})
    assert progress.stopped is None
    progress.budget.elapsed_before = 60000.0  # as if an earlier process had used the whole budget
    progress.on_train_batch_end(1, {"loss": 1.0})
    assert compiled_model.stop_training
    assert (progress.stopped, progress.stopped_reason) == ("time_budget", "time budget of 1000 minutes reached")
    assert callbacks.current_learning_rate(compiled_model.optimizer) == pytest.approx(0.0005)


def test_seed_generators_are_set_from_the_seed_and_the_epoch(tmp_path):
    model = model_lib.build_model(6, embedding_size=2, hidden_size=3, num_layers=1, dropout=0.5)
    generators = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
    assert generators
    callbacks._set_seed_generators(model, seed=7, epoch=3)
    assert [v.numpy().tolist() for v in generators] == [[7000 + i, 3] for i in range(len(generators))]


def test_callbacks_for_fit_log_to_tensorboard_in_a_local_run(tmp_path):
    import keras

    config = tiny_config()
    progress, every = callbacks.make_callbacks(config, str(tmp_path), steps_per_epoch=3, backup=None, log=print)
    assert every[0] is progress and isinstance(every[1], keras.callbacks.TerminateOnNaN)
    assert isinstance(every[2], keras.callbacks.TensorBoard) and every[2].log_dir == str(tmp_path / "logs")
    assert np.isinf(progress.best) and progress.history == []
