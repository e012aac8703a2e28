"""Tests for keras_music.train: the run directory, bad data, reproducibility, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from keras_music import run as run_lib, train
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


def test_progress_line_says_where_training_is():
    line = train.progress_line(3, 60, 120, 400, 5432.1, 1.23456, 95.4, 12 * 60 + 30)
    assert line == ("epoch 3/60 step 120/400 | 5,432 tokens/s | loss 1.2346 | epoch ends in 1:35 | "
                    "budget left 12:30")
    assert train.progress_line(1, 2, 1, 2, 10.0, None, 3725, None).endswith(
        "loss n/a | epoch ends in 1:02:05 | no time budget")


def test_budget_cosine_warms_up_then_anneals_to_the_floor():
    settings = tiny_config("train.learning_rate=0.01", "train.min_learning_rate_ratio=0.05").train
    assert train.budget_cosine(settings, 0.0) == pytest.approx(0.001)
    assert train.budget_cosine(settings, 0.02) == pytest.approx(0.01)
    assert train.budget_cosine(settings, 0.51) == pytest.approx(0.0005 + 0.0095 * 0.5)
    assert train.budget_cosine(settings, 1.0) == pytest.approx(0.0005)
    assert train.budget_cosine(settings, 3.0) == pytest.approx(0.0005)
    rates = [train.budget_cosine(settings, f / 100) for f in range(2, 101)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


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
