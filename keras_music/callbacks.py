"""What runs around each training step and epoch: learning rate, time budget, stops, checkpoints, backups, progress."""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import numpy as np

from keras_music import config as config_lib, model as model_lib, run as run_lib, storage

import keras  # noqa: E402  (after keras_music.model, which checks the TensorFlow version first)


# ----------------------------------------------------------------------------- learning rate

def budget_cosine(train, fraction: float) -> float:
    """Learning rate of the `cosine_budget` schedule at `fraction` (0..1) of the run.

    Warm up linearly from a tenth of the rate over the first 2% of the run, then
    follow a cosine down to `min_learning_rate_ratio` of it at fraction 1.
    """
    peak, floor = train.learning_rate, train.learning_rate * train.min_learning_rate_ratio
    fraction = min(max(fraction, 0.0), 1.0)
    warmup = 0.02
    if fraction < warmup:
        return peak * (0.1 + 0.9 * fraction / warmup)
    progress = (fraction - warmup) / (1 - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def learning_rate_schedule(train, total_steps: int):
    """The optimizer's learning rate for `train.lr_schedule`: a number, or a Keras schedule of the step."""
    if train.lr_schedule == "cosine_budget":
        # Set before every step by RunProgress from the elapsed share of the run.
        return budget_cosine(train, 0.0)
    if train.lr_schedule != "cosine":
        return train.learning_rate
    warmup = min(200, max(1, total_steps // 20))
    return keras.optimizers.schedules.CosineDecay(
        train.learning_rate * 0.1, decay_steps=max(1, total_steps - warmup),
        alpha=train.min_learning_rate_ratio, warmup_target=train.learning_rate, warmup_steps=warmup)


def current_learning_rate(optimizer) -> float:
    rate = optimizer.learning_rate
    return float(rate.numpy() if hasattr(rate, "numpy") else rate)


# ----------------------------------------------------------------------------- time budget

class TimeBudget:
    """`train.time_budget_minutes` of training time (0 = none), counted across resumed processes."""

    def __init__(self, minutes: float, elapsed_before: float = 0.0):
        self.minutes, self.seconds = minutes, minutes * 60
        self.elapsed_before = elapsed_before
        self.started = time.time()

    def start(self) -> None:
        # The budget counts training only, not data preparation or model building.
        self.started = time.time()

    def used(self, now: float | None = None) -> float:
        return self.elapsed_before + (time.time() if now is None else now) - self.started

    def exceeded(self, now: float) -> bool:
        return bool(self.seconds) and self.used(now) > self.seconds

    def left(self, now: float) -> float | None:
        return max(0.0, self.seconds - self.used(now)) if self.seconds else None

    def reason(self) -> str:
        return f"time budget of {self.minutes:g} minute{'' if self.minutes == 1 else 's'} reached"


# ----------------------------------------------------------------------------- progress line

def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training is: step `step` of `steps` in epoch `epoch` of `epochs`, both counted from 1."""

    epoch: int
    epochs: int
    step: int
    steps: int


def progress_line(position: Position, *, tokens_per_second: float, loss: float | None, epoch_eta: float,
                  budget_left: float | None) -> str:
    """One line saying where training is: step of epoch, speed, loss and what is left (seconds)."""
    budget = f"budget left {_clock(budget_left)}" if budget_left is not None else "no time budget"
    loss_text = f"loss {loss:.4f}" if loss is not None else "loss n/a"
    return (f"epoch {position.epoch}/{position.epochs} step {position.step}/{position.steps} | "
            f"{tokens_per_second:,.0f} tokens/s | {loss_text} | epoch ends in {_clock(epoch_eta)} | {budget}")


class ProgressDisplay:
    """The progress line on stderr: redrawn a few times a second in a terminal, every tenth of an epoch in a log."""

    def __init__(self, epochs: int, steps_per_epoch: int, *, tokens_per_step: int):
        self.epochs, self.steps_per_epoch, self.tokens_per_step = epochs, steps_per_epoch, tokens_per_step
        self.interactive = sys.stderr.isatty()
        self.shown = 0.0

    def show(self, epoch: int, steps: int, *, epoch_seconds: float, now: float, loss, budget_left: float | None):
        last = steps == self.steps_per_epoch
        if self.interactive:
            due = last or now - self.shown >= 0.25
        else:
            due = last or steps % max(1, self.steps_per_epoch // 10) == 0
        if not due:
            return
        self.shown = now
        seconds = max(epoch_seconds, 1e-9)
        speed = steps * self.tokens_per_step / seconds
        line = progress_line(Position(epoch + 1, self.epochs, steps, self.steps_per_epoch), tokens_per_second=speed,
                             loss=None if loss is None else float(loss),
                             epoch_eta=(self.steps_per_epoch - steps) * seconds / steps, budget_left=budget_left)
        sys.stderr.write(("\r" + line + "\033[K" + ("\n" if last else "")) if self.interactive else line + "\n")
        sys.stderr.flush()


# ----------------------------------------------------------------------------- one epoch's record

def epoch_record(logs: dict, epoch: int, *, steps: int, seconds: float, tokens_per_step: int,
                 learning_rate: float) -> dict:
    """Keras' epoch logs plus perplexities, steps, speed, the epoch number, its seconds and learning rate."""
    logs = dict(logs or {})
    for key in ("loss", "val_loss"):
        if key in logs:
            logs[key.replace("loss", "perplexity")] = float(np.exp(min(logs[key], 50)))
    logs["steps"] = steps
    logs["tokens_per_second"] = steps * tokens_per_step / max(seconds, 1e-9)
    logs["epoch"] = epoch + 1
    logs["seconds"] = seconds
    logs["learning_rate"] = learning_rate
    return {k: float(v) for k, v in logs.items()}


def epoch_line(record: dict) -> str:
    """The one line logged per epoch."""
    return (f"epoch {int(record['epoch'])}: loss {record.get('loss', 0.0):.4f}  "
            f"val_loss {record.get('val_loss', math.inf):.4f}  "
            f"val_perplexity {record.get('val_perplexity', float('nan')):.3f}  "
            f"val_accuracy {record.get('val_accuracy', float('nan')):.4f}  {record['seconds']:.0f} s")


# ----------------------------------------------------------------------------- checkpoints and backups

class Backups:
    """checkpoints/best.keras, and backup/: the newest model with finite weights plus state.json to resume from."""

    def __init__(self, run_dir: str, config, *, metadata: dict | None = None, model_name: str | None = None):
        self.run_dir, self.config, self.metadata = run_dir, config, metadata
        self.directory = run_lib.path(run_dir, run_lib.BACKUP)
        self.model_name = model_name  # the newest backup with finite weights

    def save_best(self, model) -> None:
        with storage.atomic_local_path(run_lib.path(self.run_dir, *run_lib.BEST_CHECKPOINT)) as tmp:
            model_lib.save_model(model, tmp, metadata=self.metadata)

    def write(self, model, next_epoch: int, *, progress: dict, save_weights: bool = True) -> None:
        """Back up the model (unless its weights are not finite) and `progress`, the record to resume from.

        The model file (weights + optimizer) goes first, state.json last: a kill
        between them resumes from the previous complete backup.
        """
        storage.makedirs(self.directory)
        if save_weights:
            name = run_lib.backup_model_name(next_epoch)
            with storage.atomic_local_path(storage.join(self.directory, name)) as tmp:
                model_lib.save_model(model, tmp, metadata=self.metadata)
            self.model_name = name
        backup: run_lib.BackupRecord = {"next_epoch": next_epoch, "model": self.model_name, **progress,
                                        "config": config_lib.to_dict(self.config),
                                        "vocabulary_fingerprint": (self.metadata or {}).get("vocabulary_fingerprint")}
        storage.write_json(storage.join(self.directory, run_lib.BACKUP_RECORD), backup)
        for old in storage.listdir(self.directory):
            if old.startswith(run_lib.BACKUP_MODEL_PREFIX) and old != self.model_name:
                storage.remove(storage.join(self.directory, old))


# ----------------------------------------------------------------------------- the run's callback

def _set_seed_generators(model, seed: int, *, epoch: int) -> None:
    # Dropout masks depend on each layer's seed-generator state; setting it from
    # (seed, epoch) makes every epoch reproducible whether or not the run resumed.
    for i, variable in enumerate(v for v in model.non_trainable_variables if "seed_generator" in v.path):
        variable.assign(np.array([seed * 1000 + i, epoch], dtype=variable.dtype))


class RunProgress(keras.callbacks.Callback):
    """One run's record across epochs and processes: its history, why it stopped, the best checkpoint and backups.

    Stops: the time budget (checked after every step), a NaN or infinite loss, and
    `train.early_stopping_patience` epochs without a better validation loss.
    """

    def __init__(self, config, run_dir: str, *, steps_per_epoch: int, backup: run_lib.BackupRecord | None = None,
                 log=print, show_progress: bool = False, metadata: dict | None = None):
        super().__init__()
        backup = backup or {}
        self.train, self.steps_per_epoch, self.log = config.train, steps_per_epoch, log
        self.tokens_per_step = config.train.batch_size * config.data.seq_length
        # JSON keeps NaN as null; back in Python it is NaN again.
        self.history = [{k: (math.nan if v is None else v) for k, v in h.items()} for h in backup.get("history", [])]
        self.best = backup.get("best", math.inf)
        self.wait = backup.get("wait", 0)
        self.steps_done = backup.get("steps_done", 0)
        self.stopped = None  # completed | early_stopping | time_budget | nan_loss
        self.stopped_reason = None
        self.budget = TimeBudget(config.train.time_budget_minutes, backup.get("elapsed", 0.0))
        self.backups = Backups(run_dir, config, metadata=metadata, model_name=backup.get("model"))
        self.display = ProgressDisplay(config.train.epochs, steps_per_epoch,
                                       tokens_per_step=self.tokens_per_step) if show_progress else None
        self.epoch, self.steps, self.epoch_started = 0, 0, time.time()

    def run_fraction(self) -> float:
        """How far the run is: the larger of elapsed/budget and steps/(epochs x steps)."""
        by_steps = self.steps_done / max(1, self.train.epochs * self.steps_per_epoch)
        by_time = self.budget.used() / self.budget.seconds if self.budget.seconds else 0.0
        return max(by_steps, by_time)

    def _stop(self, code: str, reason: str) -> None:
        self.model.stop_training = True
        self.stopped, self.stopped_reason = code, reason

    def _set_learning_rate(self) -> None:
        # Elapsed time is only known outside the graph, so the schedule is set
        # from here before each step; it reaches its floor when the time budget
        # or the last epoch ends, whichever comes first.
        if self.train.lr_schedule == "cosine_budget":
            self.model.optimizer.learning_rate.assign(budget_cosine(self.train, self.run_fraction()))

    def on_train_begin(self, logs=None):
        self.budget.start()

    def on_epoch_begin(self, epoch, logs=None):
        _set_seed_generators(self.model, self.train.seed, epoch=epoch)
        self.epoch, self.steps, self.epoch_started = epoch, 0, time.time()
        self._set_learning_rate()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.steps_done += 1
        now = time.time()
        if self.budget.exceeded(now):
            self._stop("time_budget", self.budget.reason())
        self._set_learning_rate()
        if self.display is not None:
            self.display.show(self.epoch, self.steps, epoch_seconds=now - self.epoch_started, now=now,
                              loss=(logs or {}).get("loss"), budget_left=self.budget.left(now))

    def on_epoch_end(self, epoch, logs=None):
        record = epoch_record(logs, epoch, steps=self.steps, seconds=time.time() - self.epoch_started,
                              tokens_per_step=self.tokens_per_step,
                              learning_rate=current_learning_rate(self.model.optimizer))
        self.history.append(record)
        loss, val_loss = record.get("loss", 0.0), record.get("val_loss", math.inf)
        diverged = not math.isfinite(loss) or math.isnan(val_loss)
        if diverged:
            # The weights are NaN or infinite now: neither the best checkpoint nor the
            # backup may take them, so both keep the last finite epoch.
            self._stop("nan_loss", f"the loss became {'NaN' if math.isnan(loss) else loss} in epoch {epoch + 1}")
        elif val_loss < self.best:
            self.best, self.wait = val_loss, 0
            self.backups.save_best(self.model)
        else:
            self.wait += 1
            patience = self.train.early_stopping_patience
            if patience and self.wait >= patience:
                self._stop("early_stopping", f"no validation improvement for {self.wait} epochs")
        self.log(epoch_line(record))
        self.backups.write(self.model, epoch + 1, progress={
            "history": self.history, "best": self.best, "wait": self.wait, "elapsed": self.budget.used(),
            "stopped": self.stopped, "stopped_reason": self.stopped_reason, "steps_done": self.steps_done},
            save_weights=not diverged)


def make_callbacks(config, run_dir: str, *, steps_per_epoch: int, backup: run_lib.BackupRecord | None, log,
                   show_progress: bool = False, metadata: dict | None = None):
    """(the RunProgress, every callback for `fit`: it, TerminateOnNaN and TensorBoard logs for a local run).

    `backup` is the backup record an interrupted run resumes from (None: a new run).
    """
    progress = RunProgress(config, run_dir, steps_per_epoch=steps_per_epoch, backup=backup, log=log,
                           show_progress=show_progress, metadata=metadata)
    callbacks = [progress, keras.callbacks.TerminateOnNaN()]
    if not storage.is_remote(run_dir):
        callbacks.append(keras.callbacks.TensorBoard(log_dir=run_lib.path(run_dir, run_lib.LOGS), update_freq="epoch",
                                                     write_graph=False, profile_batch=0))
    return progress, callbacks
