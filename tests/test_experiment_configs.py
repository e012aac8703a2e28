"""Tests for keras_music.experiment_configs: one resolved config per file, scaled and budgeted alike."""

import os

import pytest
import yaml

from keras_music import experiment_configs as configs_lib

from conftest import TINY


def write_config(directory, name, hidden_size, seq_length):
    """tiny.yaml with another hidden size and sequence length, as DIRECTORY/NAME.yaml."""
    with open(TINY) as handle:
        data = yaml.safe_load(handle)
    data["model"]["hidden_size"] = hidden_size
    data["data"]["seq_length"] = seq_length
    path = os.path.join(directory, name + ".yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(data, handle)
    return path


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("configs"))
    return write_config(directory, "small", 16, 16), write_config(directory, "large", 24, 32)


def test_wall_clock_budget_settings_and_set_wins(configs, tmp_path):
    runs = configs_lib.resolve_runs(configs, str(tmp_path), budget_minutes=2.5, scale=0.125)
    for run in runs:
        train = run.config.train
        assert (train.time_budget_minutes, train.epochs, train.lr_schedule, train.early_stopping_patience) == \
            (2.5, configs_lib.BUDGET_EPOCHS, "constant", 0)
        assert run.config.model.hidden_size == configs_lib.MIN_SCALED_HIDDEN  # 16 * 0.125 = 2 -> floor 8
    runs = configs_lib.resolve_runs(configs, str(tmp_path), overrides=["train.lr_schedule=cosine",
                                                                       "model.hidden_size=100"],
                                    budget_minutes=1.0, scale=0.5)
    assert all(r.config.train.lr_schedule == "cosine" and r.config.model.hidden_size == 50 for r in runs)
    assert [r.name for r in runs] == ["small", "large"]
    with pytest.raises(configs_lib.ExperimentError):
        configs_lib.resolve_runs(configs, str(tmp_path), budget_minutes=1.0, budget_tokens=10)


def test_token_budget_turns_off_the_time_budget_and_early_stopping(configs, tmp_path):
    small, large = configs_lib.resolve_runs(configs, str(tmp_path), budget_tokens=5000)
    assert small.applied == large.applied == ["train.time_budget_minutes=0", "train.early_stopping_patience=0"]
    assert (small.config.train.time_budget_minutes, small.config.train.early_stopping_patience) == (0, 0)
    assert small.run_dir == os.path.join(str(tmp_path), "small")
    assert (small.configured_hidden_size, large.configured_hidden_size) == (16, 24)


def test_same_file_twice_gets_two_names_and_sources_replace_the_configs(configs, tmp_path):
    runs = configs_lib.resolve_runs([configs[0], configs[0]], str(tmp_path), sources=["bach/bwv66.6"])
    assert [r.name for r in runs] == ["small", "small-2"]
    assert all(r.config.data.sources == ("bach/bwv66.6",) for r in runs)


def test_full_size_configs_resolve_unchanged(tmp_path):
    repo = os.path.dirname(TINY)
    files = [os.path.join(repo, "original.yaml"), os.path.join(repo, "modified.yaml")]
    original, modified = configs_lib.resolve_runs(files, str(tmp_path))
    assert (original.config.data.seq_length, original.config.model.hidden_size, original.config.train.batch_size,
            original.config.train.learning_rate) == (100, 1024, 8, 5e-3)
    assert (modified.config.data.seq_length, modified.config.model.hidden_size, modified.config.train.batch_size,
            modified.config.train.learning_rate) == (200, 2048, 64, 5e-4)
    assert original.applied == modified.applied == []


def test_scaled_hidden():
    assert configs_lib.scaled_hidden(1024, 0.125) == 128
    assert configs_lib.scaled_hidden(2048, 0.125) == 256
    assert configs_lib.scaled_hidden(24, 0.5) == 12
    assert configs_lib.scaled_hidden(16, 0.01) == configs_lib.MIN_SCALED_HIDDEN


def test_token_budget_gives_the_whole_epochs_that_reach_it(configs, tmp_path):
    (run,) = configs_lib.resolve_runs(configs[:1], str(tmp_path), budget_tokens=1000)
    configs_lib.apply_token_budget(run, 1000, per_epoch=300)
    assert run.config.train.epochs == 4
    assert run.applied[-1] == "train.epochs=4"
    configs_lib.apply_token_budget(run, 10, per_epoch=300)
    assert run.config.train.epochs == 1
    with pytest.raises(configs_lib.ExperimentError, match="fewer tokens than one batch of 4 x 16"):
        configs_lib.apply_token_budget(run, 1000, per_epoch=0)
