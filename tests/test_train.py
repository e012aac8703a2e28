"""Tests for keras_music.train: the run directory, bad data, reproducibility, resume after SIGKILL."""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from keras_music import callbacks, config as config_lib, dataset, run as run_lib, train
from keras_music.sampling import SamplingSettings
from conftest import FOUR_CHORALES, REPO, TINY, tiny_config

RUN_FILES = ("config.yaml", "vocab.json", "corpus_manifest.json", "model.keras", "metrics.json",
             "training_curves.png", "prepared.json")


def command(run_dir, *extra, data=FOUR_CHORALES):
    args = [sys.executable, "-m", "keras_music.train", "--config", TINY, "--run-dir", str(run_dir), "--quiet",
            "--set", "train.num_samples=0"]
    for source in data:
        args += ["--data", source]
    return args + list(extra)


def test_tiny_run_writes_the_whole_run_directory(tiny_run):
    for name in RUN_FILES:
        assert os.path.getsize(os.path.join(tiny_run, name)) > 0, name
    assert os.listdir(os.path.join(tiny_run, "logs"))
    metrics = json.load(open(os.path.join(tiny_run, "metrics.json")))
    history = metrics["history"]
    vocabulary = run_lib.load_vocabulary(tiny_run)
    prepared = run_lib.load_prepared(tiny_run)
    assert metrics["epochs"] == 2 and [h["epoch"] for h in history] == [1, 2]
    assert metrics["train_loss"] == history[-1]["loss"]
    # Two epochs of a tiny model: better than guessing uniformly, far from perfect.
    assert 0 < metrics["val_loss"] < np.log(len(vocabulary))
    assert metrics["val_perplexity"] == pytest.approx(np.exp(metrics["val_loss"]))
    # The held-out scores are those of the saved model over every position of the validation windows.
    model = run_lib.load_model(tiny_run)
    windows = dataset.evaluation_dataset(run_lib.shard_paths(tiny_run, "validation", info=prepared), 32, batch_size=4,
                                         boundary_id=vocabulary.boundary_id)
    nll, hits, count = 0.0, 0, 0
    for x, y in windows.as_numpy_iterator():
        probabilities = model(x, training=False).numpy()
        nll -= np.log(np.take_along_axis(probabilities, y[..., None], -1)).sum()
        hits += int((probabilities.argmax(-1) == y).sum())
        count += y.size
    assert metrics["val_loss"] == pytest.approx(nll / count, rel=1e-5)
    assert metrics["val_accuracy"] == pytest.approx(hits / count)
    assert metrics["best_epoch"] == 1 + int(np.argmin([h["val_loss"] for h in history]))
    steps = [int(h["steps"]) for h in history]
    assert steps == [train.epoch_steps(tiny_config(), prepared["lengths"]["train"])] * 2
    assert metrics["tokens_seen"] == sum(steps) * 4 * 32  # tiny.yaml: batch_size 4, seq_length 32
    assert metrics["train_seconds"] == pytest.approx(sum(h["seconds"] for h in history), abs=0.051)
    assert metrics["tokens_per_second"] == pytest.approx(metrics["tokens_seen"] / sum(h["seconds"] for h in history))
    assert metrics["wall_seconds"] >= metrics["train_seconds"] > 0
    assert metrics["vocabulary_size"] == len(vocabulary) == prepared["vocabulary_size"]
    assert metrics["validation_unknown_rate"] == prepared["validation_unknown_rate"]
    assert (metrics["strategy"], metrics["replicas"]) == ("default", 1)
    for h in history:
        assert h["perplexity"] == pytest.approx(np.exp(h["loss"])) and h["val_perplexity"] == pytest.approx(
            np.exp(h["val_loss"]))
    assert metrics["stopped"] == "completed" and metrics["stopped_detail"] == "all epochs trained"
    # tiny.yaml trains at a constant rate: every epoch records it.
    assert [h["learning_rate"] for h in metrics["history"]] == pytest.approx([0.01, 0.01])
    with open(os.path.join(tiny_run, "training_curves.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert model.count_params() == metrics["parameters"]


def test_same_seed_same_data_gives_the_same_validation_loss(tmp_path, tiny_run):
    again = train.train(tiny_config(), str(tmp_path / "again"), show_progress=False, log=lambda *a: None)
    first = json.load(open(os.path.join(tiny_run, "metrics.json")))
    assert again["val_loss"] == pytest.approx(first["val_loss"], abs=1e-6)


def test_folder_with_a_corrupt_midi_trains_and_lists_the_skip(tmp_path, midi_folder):
    result = subprocess.run(command(tmp_path / "run", data=[midi_folder]), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    manifest = json.load(open(tmp_path / "run" / "corpus_manifest.json"))
    files = {os.path.basename(f["file"]): f for f in manifest["files"]}
    assert sorted(files) == sorted(os.listdir(midi_folder))
    assert files["corrupt.mid"]["status"] == "skipped" and files["corrupt.mid"]["reason"]
    assert manifest["summary"]["used"] == 4 and manifest["summary"]["skipped"] == 1


def test_no_usable_files_is_a_clear_error_and_non_zero_exit(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.mid").write_bytes(b"not midi at all")
    (folder / "b.mid").write_bytes(b"")
    result = subprocess.run(command(tmp_path / "run", data=[str(folder)]), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no usable pieces" in result.stderr and "2 files, all skipped" in result.stderr


def test_bad_config_is_a_usage_error(tmp_path):
    result = subprocess.run(command(tmp_path / "run", "--set", "model.hidden_size=big"), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "model.hidden_size: expected an integer, got 'big'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("carry", ["false", "true"])
def test_killed_run_resumes_and_ends_with_the_uninterrupted_weights(tmp_path, carry):
    # Also with the state carried across windows: its streams and its state start anew each epoch.
    extra = ("--set", "train.epochs=4", "--set", "train.deterministic=true", "--set", "model.dropout=0.2",
             "--set", f"train.carry_state={carry}")
    straight = subprocess.run(command(tmp_path / "straight", *extra), capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr

    interrupted = tmp_path / "interrupted"
    # Unbuffered: each epoch's line arrives while the run goes on.
    process = subprocess.Popen(command(interrupted, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in process.stdout:
        if line.startswith("epoch 2:"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (interrupted / "model.keras").exists()

    resumed = subprocess.run(command(interrupted, *extra), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    metrics = json.load(open(interrupted / "metrics.json"))
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]
    expected = run_lib.load_model(str(tmp_path / "straight")).get_weights()
    actual = run_lib.load_model(str(interrupted)).get_weights()
    for a, b in zip(expected, actual):
        np.testing.assert_array_equal(a, b)


def test_time_budget_stops_an_annealed_run_and_the_steps_are_shown(tmp_path, capsys):
    # A budget of 0.6 seconds ends the run inside its first epoch: the budget
    # schedule must already be at its floor there, and `stopped` must say why.
    config = tiny_config("train.epochs=3", "train.lr_schedule=cosine_budget", "train.learning_rate=0.01",
                         "train.min_learning_rate_ratio=0.05", "train.time_budget_minutes=0.01")
    run_dir = str(tmp_path / "run")
    metrics = train.train(config, run_dir, show_progress=True, log=lambda *a: None)
    written = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert written == json.loads(json.dumps(metrics))
    assert written["stopped"] == "time_budget"
    assert written["stopped_detail"] == "time budget of 0.01 minutes reached"
    assert written["epochs"] == 1 and written["best_epoch"] == 1
    assert written["history"][0]["learning_rate"] == pytest.approx(0.0005)
    assert written["tokens_seen"] == int(written["history"][0]["steps"]) * 4 * 32
    assert json.load(open(os.path.join(run_dir, "backup", "state.json")))["stopped"] == "time_budget"
    shown = capsys.readouterr().err
    assert "epoch 1/3 step 1/" in shown and "tokens/s | loss " in shown and "budget left 0:00" in shown
    # The stop is final: the same command again trains nothing and reports the same run.
    messages = []
    assert train.train(config, run_dir, show_progress=False, log=messages.append) == written
    assert messages == [f"{run_dir} has finished training (1 epochs, time budget of 0.01 minutes reached); "
                        "nothing to do"]


def test_the_default_cosine_schedule_is_followed_step_by_step(tmp_path, capsys):
    assert config_lib.Config().train.lr_schedule == "cosine"
    config = tiny_config("train.epochs=3", "train.lr_schedule=cosine", "train.learning_rate=0.01",
                         "train.min_learning_rate_ratio=0.05")
    metrics = train.train(config, str(tmp_path / "run"), show_progress=False, log=lambda *a: None)
    steps = int(metrics["history"][0]["steps"])
    total = 3 * steps
    warmup = min(200, max(1, total // 20))

    def cosine(step):
        # A linear warm-up from a tenth of the rate, then a cosine down to 5% of it at the last step.
        if step < warmup:
            return 0.001 + (0.01 - 0.001) * step / warmup
        return 0.01 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))))

    # Each epoch records the optimizer's rate after its last step.
    rates = [h["learning_rate"] for h in metrics["history"]]
    assert rates == pytest.approx([cosine(steps), cosine(2 * steps), cosine(3 * steps)], rel=1e-5)
    assert rates[-1] == pytest.approx(0.0005, rel=1e-5)
    assert metrics["stopped"] == "completed"
    assert capsys.readouterr().err == ""  # quiet: no progress lines


def test_help_lists_every_option():
    result = subprocess.run([sys.executable, "-m", "keras_music.train", "--help"], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0
    for option in ("--config", "--set", "--data", "--init-from", "--run-dir", "--quiet"):
        assert option in result.stdout


# ----------------------------------------------------------------------------- issue 16

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared directory of the four chorales (tiny settings), copied per test before damaging it."""
    from keras_music import prepare

    directory = str(tmp_path_factory.mktemp("prepared") / "data")
    prepare.prepare(tiny_config(), directory, show_progress=False, log=lambda *a: None)
    return directory


def damaged_copy(prepared, tmp_path, damage):
    import shutil

    copy = str(tmp_path / "prepared")
    shutil.copytree(prepared, copy)
    data = os.path.join(copy, "data")
    shard = {"train": os.path.join(data, "train-00000-of-00001.tfrecord"),
             "validation": os.path.join(data, "validation-00000-of-00001.tfrecord")}
    info_path = os.path.join(copy, "prepared.json")
    info = json.load(open(info_path))
    if damage == "validation shard deleted":
        os.remove(shard["validation"])
    elif damage == "training shard deleted":
        os.remove(shard["train"])
    elif damage == "training shard truncated":
        payload = open(shard["train"], "rb").read()
        open(shard["train"], "wb").write(payload[:len(payload) // 2])
    elif damage == "training shard bit-flipped":
        payload = bytearray(open(shard["train"], "rb").read())
        payload[len(payload) // 2] ^= 0x10
        open(shard["train"], "wb").write(bytes(payload))
    elif damage == "counts x10":
        info["lengths"]["train"] = [10 * n for n in info["lengths"]["train"]]
        info["tokens"]["train"] *= 10
        json.dump(info, open(info_path, "w"))
    elif damage == "string count":
        info["pieces"]["train"] = str(info["pieces"]["train"])
        json.dump(info, open(info_path, "w"))
    return copy


@pytest.mark.parametrize("damage, expected", [
    ("validation shard deleted", "validation-00000-of-00001.tfrecord is missing"),
    ("training shard deleted", "train-00000-of-00001.tfrecord is missing"),
    ("training shard truncated", "train-00000-of-00001.tfrecord was changed or damaged"),
    ("training shard bit-flipped", "train-00000-of-00001.tfrecord was changed or damaged"),
    ("counts x10", "the train shards hold"),
    ("string count", "the train counts must be integers"),
])
def test_damaged_prepared_data_is_one_error_naming_the_file_and_the_fix(prepared, tmp_path, damage, expected):
    copy = damaged_copy(prepared, tmp_path, damage)
    with pytest.raises(run_lib.RunError) as error:
        train.train(tiny_config(sources=(copy,)), str(tmp_path / "run"), show_progress=False, log=lambda *a: None)
    message = str(error.value)
    assert expected in message and "prepare" in message
    assert not (tmp_path / "run" / "model.keras").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_a_run_with_a_missing_validation_shard_never_reports_a_perfect_score(tiny_run, tmp_path):
    import shutil

    from keras_music import evaluate_likelihood

    copy = str(tmp_path / "run")
    shutil.copytree(tiny_run, copy)
    os.remove(os.path.join(copy, "data", "validation-00000-of-00001.tfrecord"))
    with pytest.raises(run_lib.RunError, match="validation-00000-of-00001.tfrecord is missing"):
        evaluate_likelihood.model_quality(copy)
    # The same train command prepares the data again (same sources, same vocabulary) and leaves the model as it was.
    model_before = open(os.path.join(copy, "model.keras"), "rb").read()
    messages = []
    metrics = train.train(tiny_config(), copy, show_progress=False, log=messages.append)
    assert any("preparing it again" in m for m in messages)
    assert metrics["val_perplexity"] > 1.5
    assert open(os.path.join(copy, "model.keras"), "rb").read() == model_before
    assert evaluate_likelihood.model_quality(copy)["perplexity"] > 1.5


def test_infinite_learning_rate_is_refused_naming_the_key(tmp_path):
    result = subprocess.run(command(tmp_path / "run", "--set", "train.learning_rate=.inf"), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.learning_rate: expected a finite number, got inf" in result.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path} holds a bare {constant}")

    return json.loads(open(path).read(), parse_constant=refuse)


def run_first(monkeypatch, callback) -> None:
    """Train with `callback` ahead of the run's own callbacks (it sees each epoch first)."""
    original = callbacks.make_callbacks

    def with_callback(*args, **kwargs):
        progress, every = original(*args, **kwargs)
        return progress, [callback] + every

    monkeypatch.setattr(callbacks, "make_callbacks", with_callback)


def test_a_diverging_loss_stops_training_and_keeps_the_best_earlier_epoch(tmp_path, monkeypatch):
    import keras

    class Diverge(keras.callbacks.Callback):
        # From the second epoch on, the weights are poisoned: the loss becomes NaN.
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                head = self.model.get_layer("head")
                head.bias.assign(np.full(head.bias.shape, np.nan, "float32"))

    original = callbacks.make_callbacks
    run_first(monkeypatch, Diverge())
    run_dir = str(tmp_path / "run")
    with pytest.raises(train.TrainingDiverged) as error:
        train.train(tiny_config("train.epochs=3"), run_dir, show_progress=False, log=lambda *a: None)
    assert "the loss became NaN in epoch 2" in str(error.value) and "best earlier epoch (1" in str(error.value)
    metrics = strict_json(os.path.join(run_dir, "metrics.json"))
    assert metrics["stopped"] == "nan_loss" and metrics["best_epoch"] == 1 and metrics["epochs"] == 2
    assert metrics["history"][1]["loss"] is None  # NaN is written as null
    best = keras.saving.load_model(os.path.join(run_dir, "checkpoints", "best.keras"))
    for a, b in zip(best.get_weights(), run_lib.load_model(run_dir).get_weights()):
        np.testing.assert_array_equal(a, b)
    state = strict_json(os.path.join(run_dir, "backup", "state.json"))
    assert state["model"] == "model-0001.keras"  # the poisoned weights were never backed up
    # Rerunning the same command does not train on: it reports the same stop.
    monkeypatch.setattr(callbacks, "make_callbacks", original)
    with pytest.raises(train.TrainingDiverged):
        train.train(tiny_config("train.epochs=3"), run_dir, show_progress=False, log=lambda *a: None)


def test_a_loss_that_diverges_at_once_keeps_no_model(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(command(run_dir, "--set", "train.learning_rate=3.0e+38", "--set", "train.epochs=1"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no model was kept" in result.stderr and "lower train.learning_rate" in result.stderr
    assert not (run_dir / "model.keras").exists() and not (run_dir / "metrics.json").exists()
    strict_json(run_dir / "backup" / "state.json")


def test_printed_next_commands_quote_paths_with_spaces(tiny_run, tmp_path, capsys):
    import shlex
    import shutil

    copy = tmp_path / "my runs" / "it's done"
    shutil.copytree(tiny_run, copy)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", TINY, "--run-dir", str(copy), "--quiet", "--set", "train.num_samples=0",
                    *[word for source in FOUR_CHORALES for word in ("--data", source)]])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.split("next:\n")[1].strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        words = shlex.split(line)
        assert words[words.index("--run-dir") + 1] == str(copy)


def test_ctrl_c_during_training_stops_within_seconds(tmp_path):
    import time

    from test_corpus import as_in_a_terminal

    # Many short steps per epoch: training is still far from its end when the line of epoch 1 is read.
    slow = ("--set", "train.epochs=40", "--set", "data.seq_length=8", "--set", "train.batch_size=1")
    process = subprocess.Popen(command(tmp_path / "run", *slow), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, preexec_fn=as_in_a_terminal,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for line in process.stdout:
            if line.startswith("epoch 1:"):
                break
        os.killpg(process.pid, signal.SIGINT)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        assert time.monotonic() - started < 10
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130
    assert "interrupted; rerun the same command to continue" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "run" / run_lib.LOCK).exists()


# ----------------------------------------------------------------------------- stops, data options, run directories

def test_early_stopping_ends_the_run_and_keeps_the_best_epoch(tmp_path, monkeypatch):
    import keras

    at_epoch_end = {}

    class WorseAfterTheFirstEpoch(keras.callbacks.Callback):
        # From the second epoch on, every prediction leans hard on <pad>: the validation loss only gets worse.
        def on_epoch_begin(self, epoch, logs=None):
            if epoch >= 1:
                head = self.model.get_layer("head")
                head.bias.assign(head.bias.numpy() + np.eye(head.bias.shape[0], dtype="float32")[0] * 20)

        def on_epoch_end(self, epoch, logs=None):
            at_epoch_end[epoch + 1] = self.model.get_weights()

    run_first(monkeypatch, WorseAfterTheFirstEpoch())
    run_dir = str(tmp_path / "run")
    metrics = train.train(tiny_config("train.epochs=4", "train.early_stopping_patience=2"), run_dir,
                          show_progress=False, log=lambda *a: None)
    history = metrics["history"]
    # Epochs 2 and 3 do not improve on epoch 1; with a patience of 2 the run ends after epoch 3, not 4.
    assert [h["epoch"] for h in history] == [1, 2, 3] and sorted(at_epoch_end) == [1, 2, 3]
    assert history[0]["val_loss"] < history[1]["val_loss"] and history[0]["val_loss"] < history[2]["val_loss"]
    assert metrics["stopped"] == "early_stopping"
    assert metrics["stopped_detail"] == "no validation improvement for 2 epochs"
    assert metrics["best_epoch"] == 1
    assert json.load(open(os.path.join(run_dir, "metrics.json")))["stopped"] == "early_stopping"
    for kept in (run_lib.load_model(run_dir).get_weights(),
                 run_lib.load_model(run_dir, file=os.path.join("checkpoints", "best.keras")).get_weights()):
        for a, b in zip(kept, at_epoch_end[1]):
            np.testing.assert_array_equal(a, b)
    assert metrics["val_loss"] == pytest.approx(history[0]["val_loss"], rel=1e-4)


def stream_segments(windows, vocabulary):
    """The token runs between piece boundaries of (x, y) window batches: each is a slice of one piece."""
    segments = []
    for x, y in windows:
        for row in np.concatenate([x, y[:, -1:]], axis=1):
            tokens = " ".join(vocabulary.decode(row)).split("<piece>")
            segments += [segment.split() for segment in tokens if segment.split()]
    return segments


def test_transposition_shifts_training_pieces_and_leaves_validation_as_it_is(tmp_path):
    from keras_music import events

    config = tiny_config("data.transpose=2")
    run_dir = str(tmp_path / "run")
    info = train.prepare_run(config, run_dir, show_progress=False, log=lambda *a: None)
    vocabulary = run_lib.load_vocabulary(run_dir)
    steps = train.epoch_steps(config, info["lengths"]["train"])
    inputs = train.input_pipelines(config, run_dir, info=info, vocabulary=vocabulary, steps_per_epoch=steps,
                                   first_epoch=0)

    def shifted_pieces(split):
        pieces = [vocabulary.decode(ids) for ids in dataset.read_pieces(run_lib.shard_paths(run_dir, split, info=info))]
        shifted = {}
        for shift in range(-2, 3):
            moved = [[events.transpose_token(t, shift, representation="note") for t in piece] for piece in pieces]
            shifted[shift] = [" " + " ".join(piece) + " " for piece in moved if None not in piece]
        return shifted

    def shifts_of(segment, shifted):
        """Every shift s for which the segment is a slice of some piece moved by s semitones."""
        text = " " + " ".join(segment) + " "
        return {shift for shift, pieces in shifted.items() if any(text in piece for piece in pieces)}

    training, held_out = shifted_pieces("train"), shifted_pieces("validation")
    seen = []
    for segment in stream_segments(inputs.make_train_data().as_numpy_iterator(), vocabulary):
        shifts = shifts_of(segment, training)
        assert shifts, segment  # a whole piece moved by one shift, every pitch by the same amount
        if len(shifts) == 1:  # a slice with pitches tells its shift
            seen.append(shifts.pop())
    assert len(set(seen)) > 1 and set(seen) <= {-2, -1, 0, 1, 2}
    told = []
    for segment in stream_segments(inputs.validation_data.as_numpy_iterator(), vocabulary):
        shifts = shifts_of(segment, held_out)
        assert 0 in shifts, segment  # the held-out pieces as they are
        told += list(shifts) if len(shifts) == 1 else []
    assert set(told) == {0}


def test_min_count_turns_rare_tokens_into_unk_in_the_vocabulary_and_the_data(prepared, tmp_path):
    import collections

    run_dir = str(tmp_path / "run")
    info = train.prepare_run(tiny_config("data.min_count=3"), run_dir, show_progress=False, log=lambda *a: None)
    reduced = run_lib.load_vocabulary(run_dir)
    full = run_lib.load_vocabulary(prepared)  # the same pieces with data.min_count=1
    full_info = run_lib.load_prepared(prepared)

    def pieces(directory, split, split_info, vocabulary):
        paths = run_lib.shard_paths(directory, split, info=split_info)
        return [vocabulary.decode(ids) for ids in dataset.read_pieces(paths)]

    counts = collections.Counter(t for piece in pieces(prepared, "train", full_info, full) for t in piece)
    rare = {token for token, count in counts.items() if count < 3}
    assert len(rare) >= 3
    assert reduced.tokens == [t for t in full.tokens if t not in rare]
    for split in ("train", "validation"):
        expected = [["<unk>" if t in rare else t for t in piece] for piece in pieces(prepared, split, full_info, full)]
        assert pieces(run_dir, split, info, reduced) == expected, split
    assert info["validation_unknown_rate"] > full_info["validation_unknown_rate"]


def test_the_classic_representation_trains_samples_generates_evaluates_and_exports(tmp_path, capsys):
    from music21 import converter

    from keras_music import evaluate_likelihood, events, export, generate

    run_dir = tmp_path / "classic"
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", TINY, "--run-dir", str(run_dir), "--quiet", "--set", "data.representation=classic",
                    "--set", "train.num_samples=1", "--set", "train.sample_length=16",
                    *[word for source in FOUR_CHORALES for word in ("--data", source)]])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    vocabulary = run_lib.load_vocabulary(str(run_dir))
    assert vocabulary.representation == "classic" and len(vocabulary) > 10
    assert all("classic" in events.token_representations(token) for token in vocabulary.tokens)
    samples = out.split("samples: ")[1].splitlines()[0].split(", ")
    assert len(samples) == 1 and samples[0].endswith(".mid")
    assert len(converter.parse(samples[0]).flatten().notes) > 0
    pieces = generate.Generator(str(run_dir), log=lambda message: None).generate(num_samples=2, seed=3, primer_tokens=[], sampling=SamplingSettings(length=12))
    for piece in pieces:
        assert 0 < len(piece.tokens) <= 12
        assert all(events.token_representations(token) == {"classic"} for token in piece.tokens)
        assert len(piece.notes) > 0
    quality = evaluate_likelihood.model_quality(str(run_dir))
    # Every classic token is one event.
    assert quality["events"] == quality["tokens"] > 0
    assert 1 < quality["perplexity"] < len(vocabulary)
    # Exported, it generates classic tokens on the phone's path (TFLite, no TensorFlow).
    report = export.export(str(run_dir), export.ExportSettings(quantize=("none",), parity_windows=2, parity_steps=20),
                           log=lambda *a: None)
    assert report["passed"]
    exported = run_lib.path(str(run_dir), run_lib.EXPORT)
    assert json.load(open(os.path.join(exported, run_lib.EXPORT_VOCAB)))["representation"] == "classic"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "export", "reference_generator.py"),
         "--model", os.path.join(exported, run_lib.TFLITE_FILES["none"]),
         "--vocab", os.path.join(exported, run_lib.EXPORT_VOCAB), "--out", str(tmp_path / "phone.mid"),
         "--length", "20", "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "phone.mid").read_bytes()[:4] == b"MThd"
    tokens = next(line for line in result.stdout.splitlines() if line.startswith("tokens: "))[8:].split()
    assert tokens[0] == "<piece>" and all(events.token_representations(t) == {"classic"} for t in tokens[1:])


def test_without_run_dir_each_run_gets_a_timestamped_directory_and_runs_latest(tmp_path, monkeypatch, capsys):
    import re

    monkeypatch.chdir(tmp_path)
    argv = ["--config", TINY, "--quiet", "--set", "train.num_samples=0", "--set", "train.epochs=1",
            *[word for source in FOUR_CHORALES for word in ("--data", source)]]
    run_dirs = []
    for _ in range(2):
        with pytest.raises(SystemExit) as exit_info:
            train.main(argv)
        assert exit_info.value.code == 0
        run_dir = capsys.readouterr().out.split("run directory: ")[1].splitlines()[0]
        assert os.path.dirname(run_dir) == "runs"
        assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?", os.path.basename(run_dir)), run_dir
        assert json.load(open(os.path.join(run_dir, "metrics.json")))["epochs"] == 1
        assert os.readlink(os.path.join("runs", "latest")) == os.path.basename(run_dir)
        run_dirs.append(run_dir)
    assert run_dirs[0] != run_dirs[1]
    assert sorted(os.listdir("runs")) == sorted([os.path.basename(d) for d in run_dirs] + ["latest"])
