"""Tests for keras_music.train: the run directory, bad data, reproducibility, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from keras_music import callbacks, run as run_lib, train
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
    for key in ("train_loss", "val_loss", "val_perplexity", "val_accuracy", "tokens_per_second", "wall_seconds"):
        assert metrics[key] is not None, key
    assert metrics["val_perplexity"] == pytest.approx(np.exp(metrics["val_loss"]))
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert metrics["stopped"] == "completed" and metrics["stopped_detail"] == "all epochs trained"
    # tiny.yaml trains at a constant rate: every epoch records it.
    assert [h["learning_rate"] for h in metrics["history"]] == pytest.approx([0.01, 0.01])
    with open(os.path.join(tiny_run, "training_curves.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    model = run_lib.load_model(tiny_run)
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
def test_killed_run_resumes_and_ends_with_the_uninterrupted_weights(tmp_path):
    extra = ("--set", "train.epochs=4", "--set", "train.deterministic=true", "--set", "model.dropout=0.2")
    straight = subprocess.run(command(tmp_path / "straight", *extra), capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(command(interrupted, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
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
    metrics = train.train(config, str(tmp_path / "run"), show_progress=True, log=lambda *a: None)
    assert metrics["stopped"] == "time_budget"
    assert metrics["stopped_detail"] == "time budget of 0.01 minutes reached"
    assert metrics["epochs"] == 1
    assert metrics["history"][0]["learning_rate"] == pytest.approx(0.0005)
    shown = capsys.readouterr().err
    assert "epoch 1/3 step 1/" in shown and "tokens/s | loss " in shown and "budget left 0:00" in shown


def test_cosine_schedule_records_a_falling_rate_per_epoch(tmp_path, capsys):
    config = tiny_config("train.epochs=3", "train.lr_schedule=cosine", "train.learning_rate=0.01")
    metrics = train.train(config, str(tmp_path / "run"), show_progress=False, log=lambda *a: None)
    rates = [h["learning_rate"] for h in metrics["history"]]
    assert len(rates) == 3 and rates[0] > rates[1] > rates[2] > 0
    assert metrics["stopped"] == "completed"
    assert capsys.readouterr().err == ""  # quiet: no progress lines


def test_help_lists_every_option():
    result = subprocess.run([sys.executable, "-m", "keras_music.train", "--help"], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0
    for option in ("--config", "--set", "--data", "--run-dir", "--quiet"):
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

    from keras_music import evaluate

    copy = str(tmp_path / "run")
    shutil.copytree(tiny_run, copy)
    os.remove(os.path.join(copy, "data", "validation-00000-of-00001.tfrecord"))
    with pytest.raises(run_lib.RunError, match="validation-00000-of-00001.tfrecord is missing"):
        evaluate.model_quality(copy)
    # The same train command prepares the data again (same sources, same vocabulary) and leaves the model as it was.
    model_before = open(os.path.join(copy, "model.keras"), "rb").read()
    messages = []
    metrics = train.train(tiny_config(), copy, show_progress=False, log=messages.append)
    assert any("preparing it again" in m for m in messages)
    assert metrics["val_perplexity"] > 1.5
    assert open(os.path.join(copy, "model.keras"), "rb").read() == model_before
    assert evaluate.model_quality(copy)["perplexity"] > 1.5


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


def test_a_diverging_loss_stops_training_and_keeps_the_best_earlier_epoch(tmp_path, monkeypatch):
    import keras

    class Diverge(keras.callbacks.Callback):
        # From the second epoch on, the weights are poisoned: the loss becomes NaN.
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                head = self.model.get_layer("head")
                head.bias.assign(np.full(head.bias.shape, np.nan, "float32"))

    original = callbacks.make_callbacks

    def with_divergence(*args, **kwargs):
        progress, every = original(*args, **kwargs)
        return progress, [Diverge()] + every

    monkeypatch.setattr(callbacks, "make_callbacks", with_divergence)
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
    process = subprocess.Popen(command(tmp_path / "run", *slow), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=as_in_a_terminal)
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
