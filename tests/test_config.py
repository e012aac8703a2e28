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


@pytest.mark.parametrize("written, value", [
    ("5e-4", 5e-4), ("5E-4", 5e-4), ("1E3", 1000.0), ("1e3", 1000.0), (".5", 0.5), ("1_000", 1000.0), ("+3", 3.0),
    ("0.0005", 5e-4), ("-2.5e+1", -25.0), ("3", 3.0), (" 5e-4", 5e-4),
])
def test_a_number_setting_takes_every_number_as_people_write_it(written, value):
    if value > 0:
        assert config.load([], [f"train.clipnorm={written}"]).train.clipnorm == value
    assert config.number("k", written) == value and type(config.number("k", written)) is float


@pytest.mark.parametrize("written, value", [("1E3", 1000), ("1e3", 1000), ("1_000", 1000), ("+3", 3), ("2.0", 2),
                                            ("2.5e1", 25), ("12345678901234567891", 12345678901234567891)])
def test_an_integer_setting_takes_every_integral_value(written, value):
    assert config.load([], [f"train.seed={written}"]).train.seed == value
    assert config.number("k", written, integer=True) == value and type(config.number("k", written, integer=True)) is int


@pytest.mark.parametrize("key, written, message", [
    ("train.epochs", "1.5", "train.epochs: expected an integer, got 1.5"),
    ("train.epochs", "'1.5'", "train.epochs: expected an integer, got '1.5'"),
    ("train.epochs", "5e-4", "train.epochs: expected an integer, got '5e-4'"),
    ("train.epochs", ".inf", "train.epochs: expected a finite integer, got inf"),
    ("train.epochs", "nan", "train.epochs: expected a finite integer, got 'nan'"),
    ("train.epochs", "True", "train.epochs: expected an integer, got True"),
    ("train.learning_rate", "inf", "train.learning_rate: expected a finite number, got 'inf'"),
    ("train.learning_rate", "-inf", "train.learning_rate: expected a finite number, got '-inf'"),
    ("train.learning_rate", "Infinity", "train.learning_rate: expected a finite number, got 'Infinity'"),
    ("train.learning_rate", "-.inf", "train.learning_rate: expected a finite number, got -inf"),
    ("train.learning_rate", ".nan", "train.learning_rate: expected a finite number, got nan"),
    ("train.learning_rate", "nan", "train.learning_rate: expected a finite number, got 'nan'"),
    ("train.learning_rate", "1e999", "train.learning_rate: expected a finite number, got '1e999'"),
    ("train.learning_rate", "1" + "0" * 400, "train.learning_rate: expected a finite number, got inf"),
    ("train.learning_rate", "True", "train.learning_rate: expected a number, got True"),
    ("train.learning_rate", "false", "train.learning_rate: expected a number, got False"),
    ("train.learning_rate", "abc", "train.learning_rate: expected a number, got 'abc'"),
    ("train.learning_rate", "5e-4x", "train.learning_rate: expected a number, got '5e-4x'"),
    ("train.learning_rate", "5e", "train.learning_rate: expected a number, got '5e'"),
    ("train.learning_rate", "0x", "train.learning_rate: expected a number, got '0x'"),
    ("train.learning_rate", "[1]", "train.learning_rate: expected a number, got [1]"),
    ("data.max_duration", "1e-3e2", "data.max_duration: expected a number, got '1e-3e2'"),
])
def test_what_is_not_a_finite_number_is_refused_in_one_line_naming_the_key(key, written, message):
    with pytest.raises(config.ConfigError) as error:
        config.load([], [f"{key}={written}"])
    assert str(error.value) == message


def test_a_yaml_file_takes_numbers_as_people_write_them(tmp_path):
    file = tmp_path / "rates.yaml"
    file.write_text("train:\n  learning_rate: 5e-4\n  clipnorm: 1E0\n  epochs: 1E2\n  batch_size: 1_024\n"
                    "data:\n  val_fraction: .25\n")
    resolved = config.load([str(file)])
    assert (resolved.train.learning_rate, resolved.train.clipnorm, resolved.train.epochs, resolved.train.batch_size,
            resolved.data.val_fraction) == (5e-4, 1.0, 100, 1024, 0.25)
    assert type(resolved.train.learning_rate) is float and type(resolved.train.epochs) is int
    # The resolved config is written with plain YAML numbers and reads back equal.
    assert "learning_rate: 0.0005\n" in config.dump(resolved)
    assert config.from_dict(__import__("yaml").safe_load(config.dump(resolved))) == resolved
    file.write_text("train:\n  epochs: 1.5e0\n")
    with pytest.raises(config.ConfigError) as error:
        config.load([str(file)])
    assert str(error.value) == f"{file}: train.epochs: expected an integer, got '1.5e0'"


def test_the_train_command_resolves_5e_4_into_the_run(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import FOUR_CHORALES, TINY

    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "keras_music.train", "--config", TINY, "--run-dir", str(run_dir), "--quiet",
         "--data", FOUR_CHORALES[0], "--data", FOUR_CHORALES[1], "--set", "train.num_samples=0",
         "--set", "train.learning_rate=5e-4", "--set", "train.epochs=1E0", "--set", "data.val_fraction=.5"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    resolved = config.load([str(run_dir / "config.yaml")])
    assert (resolved.train.learning_rate, resolved.train.epochs, resolved.data.val_fraction) == (5e-4, 1, 0.5)
    assert "  learning_rate: 0.0005\n" in (run_dir / "config.yaml").read_text()
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["learning_rate"] for h in history] == [pytest.approx(5e-4)]  # tiny.yaml: a constant schedule


def test_a_config_built_in_code_passes_the_same_rules():
    built = dataclasses.replace(config.Config(), train=dataclasses.replace(config.TrainConfig(), learning_rate="5e-4",
                                                                           epochs=2.0))
    resolved = config.validate(built)
    assert (resolved.train.learning_rate, resolved.train.epochs) == (5e-4, 2)
    assert type(resolved.train.epochs) is int
    with pytest.raises(config.ConfigError, match=r"^train.epochs: expected an integer, got 2.5$"):
        config.validate(dataclasses.replace(built, train=dataclasses.replace(built.train, epochs=2.5)))


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
    # The files write the rates as the report does.
    assert "learning_rate: 5e-3\n" in open(preset("original.yaml")).read()
    assert "learning_rate: 5e-4\n" in open(preset("modified.yaml")).read()


def test_resolved_config_round_trips_through_yaml():
    resolved = config.load([preset("tiny.yaml")], ["data.transpose=3"])
    assert config.from_dict(__import__("yaml").safe_load(config.dump(resolved))) == resolved


def test_every_key_is_described():
    keys = {row[0] for row in config.describe_keys()}
    for required in ("data.seq_length", "model.hidden_size", "train.batch_size", "train.learning_rate",
                     "data.sources", "data.representation", "data.transpose", "data.val_fraction",
                     "model.num_layers", "model.embedding_size", "model.dropout", "train.epochs", "train.seed"):
        assert required in keys
