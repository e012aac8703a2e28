"""The study's configs: one resolved config per file, every config scaled and budgeted alike."""

from __future__ import annotations

import dataclasses
import math
import os

from keras_music import config as config_lib, storage
from keras_music import train
from keras_music.errors import KerasMusicError

# Smallest hidden size --scale produces: below it an LSTM of three layers says little.
MIN_SCALED_HIDDEN = 8
# With a wall-clock budget the budget, not the epoch count, must end training.
BUDGET_EPOCHS = 1000


class ExperimentError(KerasMusicError, ValueError):
    """The study cannot run as asked; the message says why."""


@dataclasses.dataclass
class StudyRun:
    name: str
    config_file: str
    config: config_lib.Config
    run_dir: str
    configured_hidden_size: int
    applied: list[str]  # the key=value settings the experiment chose (scale, budget)


def scaled_hidden(hidden_size: int, factor: float) -> int:
    return max(MIN_SCALED_HIDDEN, int(round(hidden_size * factor)))


def _names(files) -> list[str]:
    names = []
    for file in files:
        stem = os.path.splitext(os.path.basename(str(file).rstrip("/")))[0] or "config"
        name, suffix = stem, 1
        while name in names:
            suffix += 1
            name = f"{stem}-{suffix}"
        names.append(name)
    return names


def resolve_runs(config_files, out_dir: str, *, sources=(), overrides=(), scale: float | None = None,
                 budget_minutes: float | None = None, budget_tokens: int | None = None) -> list[StudyRun]:
    """One resolved config per file: file < --set < what --scale/--budget choose (except keys --set names)."""
    if budget_minutes is not None and budget_tokens is not None:
        raise ExperimentError("give either a wall-clock budget or a token budget, not both")
    overrides = list(overrides)
    user_keys = {config_lib.parse_override(text)[0] for text in overrides}
    runs = []
    for name, file in zip(_names(config_files), config_files):
        base = config_lib.load([file], overrides)
        applied = []
        if scale is not None:
            applied.append(f"model.hidden_size={scaled_hidden(base.model.hidden_size, scale)}")
        budget_keys = []
        if budget_minutes is not None:
            # A cosine schedule must know its length in advance and a wall-clock budget
            # does not, so budgeted runs keep each config's learning rate constant.
            budget_keys = [("train.time_budget_minutes", f"{budget_minutes!r}"), ("train.epochs", str(BUDGET_EPOCHS)),
                           ("train.lr_schedule", "constant"), ("train.early_stopping_patience", "0")]
        elif budget_tokens is not None:
            # train.epochs follows from the prepared data (run_study); the schedule stays.
            budget_keys = [("train.time_budget_minutes", "0"), ("train.early_stopping_patience", "0")]
        applied += [f"{key}={value}" for key, value in budget_keys if key not in user_keys]
        config = config_lib.load([file], overrides + applied)
        if sources:
            config = config_lib.validate(config_lib.with_sources(config, sources))
        runs.append(StudyRun(name=name, config_file=str(file), config=config, run_dir=storage.join(out_dir, name),
                             configured_hidden_size=base.model.hidden_size, applied=applied))
    return runs


def tokens_per_epoch(config: config_lib.Config, prepared: dict) -> int:
    return (train.epoch_steps(config, train.shortest_train_lengths(config, prepared)) * config.train.batch_size
            * config.data.seq_length)


def apply_token_budget(run: StudyRun, budget_tokens: int, *, per_epoch: int) -> None:
    """Give the run's config the whole epochs that reach `budget_tokens` training tokens."""
    if per_epoch < 1:
        raise ExperimentError(f"{run.name}: the training split has fewer tokens than one batch of "
                              f"{run.config.train.batch_size} x {run.config.data.seq_length}; lower them or "
                              "add data")
    epochs = max(1, math.ceil(budget_tokens / per_epoch))
    run.config = config_lib.validate(dataclasses.replace(
        run.config, train=dataclasses.replace(run.config.train, epochs=epochs)))
    run.applied.append(f"train.epochs={epochs}")
