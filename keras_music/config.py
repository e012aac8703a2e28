"""Frozen configuration tree: defaults < YAML file < --set key=value overrides."""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import decimal
import math
import os
import re
import typing
from dataclasses import dataclass, field

import yaml

from keras_music import defaults
from keras_music import storage
from keras_music.errors import UsageError

REPRESENTATIONS = ("note", "classic")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
LR_SCHEDULES = ("constant", "cosine", "cosine_budget")
# data.infill_rate's ceiling, and the fill-in-the-middle windows a training piece prepares (keras_music.infill.VARIANTS).
MAX_INFILL_RATE = 8


class ConfigError(UsageError, ValueError):
    """A configuration key, value or file is invalid; the message names it."""


@dataclass(frozen=True)
class DataConfig:
    # Sources: directories (recursive), globs, files, URIs, or music21 corpus names.
    sources: tuple[str, ...] = ("bach",)
    # Sources whose pieces are the held-out split, exactly (`--held-out`); the pieces of `sources`
    # all train. Empty: the held-out split is `val_fraction` of the pieces, chosen by content hash.
    held_out: tuple[str, ...] = ()
    # "note": one token per pitch plus one duration token per sonority; "classic":
    # the tutorial's one pitch/chord token per fixed step.
    representation: str = "note"
    seq_length: int = 128
    # Augmentation: each training piece is shifted by a random interval in
    # [-transpose, +transpose] semitones every epoch, drawn only among the shifts that
    # keep every pitch of the piece on the piano's keys, 21..108 (0 = off).
    transpose: int = 0
    # Transpose every piece to C major / A minor before tokenizing.
    normalize_key: bool = True
    val_fraction: float = 0.1
    min_count: int = 1
    # Pieces with fewer events than this are skipped as "too short".
    min_events: int = 8
    # Durations above this (in quarter notes) are split into held continuations.
    max_duration: float = 8.0
    # Divisions of a quarter note that onsets and ends snap to (24 keeps 32nds and
    # sixteenth triplets exactly); notes off the grid move to the nearest point.
    grid: int = 24
    # The fixed step of the classic representation, in quarter notes.
    classic_step: float = 0.5
    # Windows are cut every `window_stride` tokens (0 = seq_length, no overlap).
    window_stride: int = 0
    shuffle_buffer: int = 2048
    # Parse cache; "" = ~/.cache/keras_music (or $KERAS_MUSIC_CACHE).
    cache_dir: str = ""
    # Parallel parse processes; 0 = all cores.
    workers: int = 0
    # Seconds one file may take to parse before it is skipped.
    parse_timeout: float = 120.0
    # Control tokens measured from the music (keras_music.controls): a key token after the
    # piece boundary, and per bar its note density and polyphony bins ("note" representation).
    controls: bool = False
    # Share of training pieces whose controls are all left out (seeded, anew every epoch): they
    # train the unconditioned model, so one model generates with or without controls (Performance
    # RNN's "off"); validation holds none.
    control_dropout: float = 0.5
    # In the other pieces, share of control tokens left out one by one, so a person can steer some
    # bars and leave others free.
    control_token_dropout: float = 0.25
    # Share of training pieces turned, anew every epoch, into a fill-in-the-middle example
    # (keras_music.infill: suffix, prefix, then the middle bars between sentinel tokens), so the
    # model can fill bars between a given before and after; 0 = off ("note" representation).
    infill_rate: float = 0.0
    # Every token a piano MIDI file can bring is in the vocabulary, seen or not: pitch and hold
    # 21..108, rest, and every duration on the grid up to max_duration ("note" representation).
    # For a base run that fine-tunes start from (train --init-from).
    full_vocabulary: bool = False


@dataclass(frozen=True)
class ModelConfig:
    embedding_size: int = 96
    hidden_size: int = 256
    num_layers: int = 3
    dropout: float = defaults.DROPOUT


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32
    learning_rate: float = 3e-3
    lr_schedule: str = "cosine"
    # Fraction of the schedule's final learning rate relative to the initial one.
    min_learning_rate_ratio: float = 0.05
    epochs: int = 60
    # Stop the whole fit after this many minutes (0 = no limit); the run is still complete.
    time_budget_minutes: float = 28.0
    seed: int = 0
    clipnorm: float = 1.0
    early_stopping_patience: int = 10
    strategy: str = "default"
    # Pieces written into the run directory when training ends.
    num_samples: int = 3
    sample_length: int = defaults.LENGTH  # events
    sample_temperature: float = defaults.TEMPERATURE
    deterministic: bool = False
    # Fine-tuning: a finished run directory whose weights and vocabulary this run starts
    # from (the new corpus's unseen tokens are appended); "" = train from scratch.
    init_from: str = ""
    # Fine-tuning: train even when held-out pieces of this run are among the init_from
    # run's training pieces (its held-out scores are then not held out).
    allow_held_out_overlap: bool = False
    # Carry the LSTM state from one training window to the next window of the same stream of pieces
    # (truncated backpropagation through time), as generation carries it through a whole piece;
    # validation then scores each held-out piece whole, from its start.
    carry_state: bool = False


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def with_sources(config: Config, sources) -> Config:
    """The config reading its corpus from `sources` (e.g. --data) instead."""
    return dataclasses.replace(config, data=dataclasses.replace(config.data, sources=tuple(sources)))


def with_held_out(config: Config, sources) -> Config:
    """The config holding out exactly the pieces of `sources` (e.g. --held-out)."""
    return dataclasses.replace(config, data=dataclasses.replace(config.data, held_out=tuple(sources)))


def to_dict(config) -> dict:
    """Nested plain dict (tuples as lists) suitable for YAML/JSON."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


# A number as people write it: 3, +3, 1_000, 0.0005, .5, 5e-4, 5E-4, 1E3. YAML 1.1 (PyYAML)
# reads the exponent forms without a dot (5e-4, 1E3) as strings, so they are parsed here.
_DIGITS = r"\d(?:_?\d)*"
_NUMBER = re.compile(rf"[+-]?(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?{_DIGITS})?")


def number(key: str, value, integer: bool = False):
    """`value` (from YAML, --set or code) as a finite float, or an int when `integer`; else ConfigError naming `key`.

    The one rule for numeric settings: booleans, infinities, NaN and text that is not a
    plain decimal number are refused; an integer setting takes any integral value (1E3
    is 1000) and refuses a fraction (1.5).
    """
    noun = "integer" if integer else "number"
    expected = "an integer" if integer else "a number"
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text) is None:
            if text.lower().lstrip("+-.") in ("inf", "infinity", "nan"):
                expected = f"a finite {noun}"
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")
        exact = decimal.Decimal(text.replace("_", ""))
        if not math.isfinite(float(exact)):  # 1e999: beyond a float
            raise ConfigError(f"{key}: expected a finite {noun}, got {value!r}")
        if not integer:
            return float(exact)
        if exact != exact.to_integral_value():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(exact)
    if isinstance(value, int):
        if integer:
            return value
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            value = math.inf
    if isinstance(value, float):
        # YAML reads .inf and .nan as numbers, and code can build them; no setting means anything with them.
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite {noun}, got {value!r}")
        if not integer:
            return value
        if value.is_integer():
            return int(value)
    raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def _coerce(key: str, value, *, annotation):
    """Convert `value` to the field type, or raise ConfigError naming the key."""
    expected = annotation
    if isinstance(expected, str):
        expected = eval(expected, {"tuple": tuple, "str": str, "int": int, "float": float, "bool": bool})
    origin = typing.get_origin(expected)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    if expected is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if expected in (int, float):
        return number(key, value, integer=expected is int)
    if expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {expected!r}")


def _merge(config, updates: dict, *, prefix: str = ""):
    if not isinstance(updates, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {updates!r}")
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for name, value in updates.items():
        key = prefix + str(name)
        if name not in fields:
            known = ", ".join(prefix + n for n in fields)
            raise ConfigError(f"unknown config key {key!r} (known keys: {known})")
        current = getattr(config, name)
        if dataclasses.is_dataclass(current):
            changes[name] = _merge(current, value, prefix=key + ".")
        else:
            changes[name] = _coerce(key, value, annotation=fields[name].type)
    return dataclasses.replace(config, **changes)


def validate(config: Config) -> Config:
    """Check value ranges in one place; every error names the key and what was expected."""
    # Settings built in code pass the same rules as those read from YAML or --set.
    config = dataclasses.replace(config, **{
        section.name: _merge(getattr(config, section.name), to_dict(getattr(config, section.name)),
                             prefix=section.name + ".")
        for section in dataclasses.fields(config)})
    d, m, t = config.data, config.model, config.train

    def require(ok, key, value, expected):
        if not ok:
            raise ConfigError(f"{key}: expected {expected}, got {value!r}")

    require(len(d.sources) > 0, "data.sources", d.sources, "at least one source")
    require(d.representation in REPRESENTATIONS, "data.representation", d.representation,
            "one of " + ", ".join(REPRESENTATIONS))
    require(d.seq_length >= 2, "data.seq_length", d.seq_length, "an integer >= 2")
    require(0 <= d.transpose <= 12, "data.transpose", d.transpose, "0..12 semitones")
    require(0.0 < d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "a fraction in (0, 1)")
    require(d.min_count >= 1, "data.min_count", d.min_count, "an integer >= 1")
    require(d.min_events >= 1, "data.min_events", d.min_events, "an integer >= 1")
    require(d.max_duration >= 1.0, "data.max_duration", d.max_duration, "a number of quarter notes >= 1")
    require(1 <= d.grid <= 960, "data.grid", d.grid, "an integer number of divisions of a quarter note in 1..960")
    require(d.classic_step > 0, "data.classic_step", d.classic_step, "a positive number of quarter notes")
    require(d.window_stride >= 0, "data.window_stride", d.window_stride, "an integer >= 0")
    require(d.shuffle_buffer >= 1, "data.shuffle_buffer", d.shuffle_buffer, "an integer >= 1")
    require(d.workers >= 0, "data.workers", d.workers, "an integer >= 0 (0 = all cores)")
    require(d.parse_timeout > 0, "data.parse_timeout", d.parse_timeout, "a positive number of seconds")
    require(not d.controls or d.representation == "note", "data.controls", d.controls,
            "false with data.representation=classic (its tokens have no bars or durations to steer)")
    require(0.0 <= d.control_dropout <= 1.0, "data.control_dropout", d.control_dropout, "a probability in [0, 1]")
    require(0.0 <= d.control_token_dropout <= 1.0, "data.control_token_dropout", d.control_token_dropout,
            "a probability in [0, 1]")
    require(0.0 <= d.infill_rate <= MAX_INFILL_RATE, "data.infill_rate", d.infill_rate,
            f"fill-in-the-middle windows per training piece and epoch, in [0, {MAX_INFILL_RATE:g}] "
            "(a piece prepares at most that many)")
    require(not d.full_vocabulary or d.representation == "note", "data.full_vocabulary", d.full_vocabulary,
            "false with data.representation=classic (its tokens are not pitches and durations)")
    require(not d.infill_rate or d.representation == "note", "data.infill_rate", d.infill_rate,
            "0 with data.representation=classic (its tokens have no durations to fill a gap with)")
    require(m.embedding_size >= 1, "model.embedding_size", m.embedding_size, "an integer >= 1")
    require(m.hidden_size >= 1, "model.hidden_size", m.hidden_size, "an integer >= 1")
    require(m.num_layers >= 1, "model.num_layers", m.num_layers, "an integer >= 1")
    require(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "a rate in [0, 1)")
    require(t.batch_size >= 1, "train.batch_size", t.batch_size, "an integer >= 1")
    require(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "a positive number")
    require(t.lr_schedule in LR_SCHEDULES, "train.lr_schedule", t.lr_schedule, "one of " + ", ".join(LR_SCHEDULES))
    require(0 < t.min_learning_rate_ratio <= 1, "train.min_learning_rate_ratio", t.min_learning_rate_ratio,
            "a ratio in (0, 1]")
    require(t.epochs >= 1, "train.epochs", t.epochs, "an integer >= 1")
    require(t.time_budget_minutes >= 0, "train.time_budget_minutes", t.time_budget_minutes, "minutes >= 0")
    require(t.clipnorm > 0, "train.clipnorm", t.clipnorm, "a positive number")
    require(t.early_stopping_patience >= 0, "train.early_stopping_patience", t.early_stopping_patience,
            "an integer >= 0 (0 = off)")
    require(t.strategy in STRATEGIES, "train.strategy", t.strategy, "one of " + ", ".join(STRATEGIES))
    require(not t.carry_state or t.strategy == "default", "train.carry_state", t.carry_state,
            f"false with train.strategy={t.strategy} (state is carried on one device only)")
    require(not t.carry_state or not d.infill_rate, "train.carry_state", t.carry_state,
            f"false with data.infill_rate={d.infill_rate:g} (fill-in-the-middle windows start from the start "
            "state, outside the streams)")
    require(not t.carry_state or d.window_stride in (0, d.seq_length), "train.carry_state", t.carry_state,
            f"false with data.window_stride={d.window_stride} (carried windows follow each other: the stride is "
            "data.seq_length)")
    require(t.num_samples >= 0, "train.num_samples", t.num_samples, "an integer >= 0")
    require(t.sample_length >= 1, "train.sample_length", t.sample_length, "an integer >= 1")
    require(t.sample_temperature >= 0, "train.sample_temperature", t.sample_temperature, "a number >= 0")
    return config


def parse_override(text: str) -> tuple[str, object]:
    """Split `key=value`; the value is read as YAML so numbers, booleans and lists work."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. model.hidden_size=512")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({error})") from None
    return key, value


def nest(key: str, value) -> dict:
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def read_yaml(path: str) -> dict:
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections (data, model, train)")
    return data


def load(config_files=(), overrides=(), *, base: Config | None = None) -> Config:
    """Resolve defaults (or `base`) < each YAML file in order < each override; `keras_music.load_config`.

    `config_files` is a list of YAML paths (one path alone is taken as a list of one).
    `overrides` are `key=value` strings as `--set` takes them, or a mapping from keys to
    values, e.g. `{"train.epochs": 1, "data.sources": ["bach/bwv66.6"]}`; either way the
    values pass the rules that YAML values pass.
    """
    config = base or Config()
    if isinstance(config_files, (str, os.PathLike)):
        config_files = [config_files]
    for path in config_files:
        try:
            config = _merge(config, read_yaml(os.fspath(path)))
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    if isinstance(overrides, str):
        overrides = [overrides]
    pairs = overrides.items() if isinstance(overrides, collections.abc.Mapping) else map(parse_override, overrides)
    for key, value in pairs:
        config = _merge(config, nest(str(key), list(value) if isinstance(value, tuple) else value))
    return validate(config)


def from_dict(data: dict) -> Config:
    return validate(_merge(Config(), data))


def dump(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="FILE.yaml",
                        help="YAML config file (repeatable; later files win). See configs/.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one key, e.g. --set model.hidden_size=512 (repeatable; wins over files)")


def describe_keys() -> list[tuple[str, str, object]]:
    """(key, type, default) for every config key, for help text and the README."""
    rows = []
    for section in dataclasses.fields(Config):
        default = getattr(Config(), section.name)
        for f in dataclasses.fields(default):
            rows.append((f"{section.name}.{f.name}", str(f.type), getattr(default, f.name)))
    return rows
