"""Tests for keras_music.config: precedence, validation that names keys, the shipped presets."""

import dataclasses
import os

import pytest

from keras_music import config
from conftest import REPO


def preset(name):
    return os.path.join(REPO, "configs", name)


def test_default_yaml_is_the_dataclass_defaults():
    # `python -m keras_music.train` with no arguments uses the dataclass defaults, so an
    # installed package needs no YAML file; configs/default.yaml must say the same.
    assert config.load([preset("default.yaml")]) == config.Config()


def test_default_sample_temperature_is_the_recommended_one(tmp_path):
    from keras_music import generate, sampling

    assert config.Config().train.sample_temperature == sampling.DEFAULT_TEMPERATURE == 0.9
    _, args = generate.parse_args(["--run-dir", str(tmp_path)])
    assert args.temperature == sampling.DEFAULT_TEMPERATURE


def test_precedence_defaults_then_files_then_overrides(tmp_path):
    first = tmp_path / "a.yaml"
    first.write_text("model:\n  hidden_size: 64\ntrain:\n  epochs: 3\n")
    second = tmp_path / "b.yaml"
    second.write_text("model:\n  hidden_size: 32\n")
    resolved = config.load([str(first), str(second)], ["train.epochs=7", "data.sources=[a, b]"])
    assert resolved.model.hidden_size == 32
    assert resolved.train.epochs == 7
    assert resolved.data.sources == ("a", "b")
    assert resolved.model.num_layers == 3


def test_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(config.ConfigError, match="'model.hiden_size'"):
        config.load([], ["model.hiden_size=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian:\n  epochs: 1\n")
    with pytest.raises(config.ConfigError, match=r"bad.yaml.*'trian'"):
        config.load([str(bad)])


@pytest.mark.parametrize("override, message", [
    ("train.epochs=two", "train.epochs: expected an integer, got 'two'"),
    ("train.learning_rate=fast", "train.learning_rate: expected a number"),
    ("data.normalize_key=1", "data.normalize_key: expected true or false"),
    ("data.representation=midi", "data.representation: expected one of note, classic"),
    ("data.val_fraction=1.5", "data.val_fraction: expected a fraction in"),
    ("model.dropout=1", "model.dropout: expected a rate in"),
    ("train.strategy=cluster", "train.strategy: expected one of default, mirrored, multi_worker, tpu"),
    ("train.batch_size", "expected key=value"),
])
def test_wrong_types_and_ranges_name_the_key(override, message):
    with pytest.raises(config.ConfigError) as error:
        config.load([], [override])
    assert message in str(error.value)


@pytest.mark.parametrize("override, message", [
    ("data.max_duration=.inf", "data.max_duration: expected a finite number, got inf"),
    ("train.learning_rate=.inf", "train.learning_rate: expected a finite number, got inf"),
    ("train.time_budget_minutes=.nan", "train.time_budget_minutes: expected a finite number, got nan"),
    ("data.parse_timeout=-.inf", "data.parse_timeout: expected a finite number, got -inf"),
])
def test_infinite_and_nan_values_are_refused_naming_the_key(override, message):
    with pytest.raises(config.ConfigError) as error:
        config.load([], [override])
    assert message in str(error.value)


def test_a_config_built_in_code_is_checked_for_finite_values_too():
    import dataclasses

    built = dataclasses.replace(config.Config(), data=dataclasses.replace(config.DataConfig(), max_duration=float("inf")))
    with pytest.raises(config.ConfigError, match="data.max_duration: expected a finite number, got inf"):
        config.validate(built)


def test_report_settings_are_verbatim_and_otherwise_equal():
    original = config.load([preset("original.yaml")])
    modified = config.load([preset("modified.yaml")])
    assert (original.data.seq_length, original.model.hidden_size, original.train.batch_size,
            original.train.learning_rate) == (100, 1024, 8, 5e-3)
    assert (modified.data.seq_length, modified.model.hidden_size, modified.train.batch_size,
            modified.train.learning_rate) == (200, 2048, 64, 5e-4)
    same = dataclasses.replace(
        modified,
        data=dataclasses.replace(modified.data, seq_length=100),
        model=dataclasses.replace(modified.model, hidden_size=1024),
        train=dataclasses.replace(modified.train, batch_size=8, learning_rate=5e-3))
    assert same == original
    assert original.model.num_layers == 3


def test_resolved_config_round_trips_through_yaml():
    resolved = config.load([preset("tiny.yaml")], ["data.transpose=3"])
    assert config.from_dict(__import__("yaml").safe_load(config.dump(resolved))) == resolved


def test_every_key_is_described():
    keys = {row[0] for row in config.describe_keys()}
    for required in ("data.seq_length", "model.hidden_size", "train.batch_size", "train.learning_rate",
                     "data.sources", "data.representation", "data.transpose", "data.val_fraction",
                     "model.num_layers", "model.embedding_size", "model.dropout", "train.epochs", "train.seed"):
        assert required in keys
