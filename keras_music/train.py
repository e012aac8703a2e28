"""Train the LSTM on a corpus into a run directory; rerunning the same command resumes it."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time

from keras_music import config as config_lib, run as run_lib, storage

BACKUP = run_lib.BACKUP
COMMAND = "python -m keras_music.train"


class TrainingDiverged(run_lib.RunError):
    """The loss became NaN or infinite; training stopped (the best earlier model, if any, is kept)."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_music.train",
        description="Train the three-layer LSTM. With no arguments: the Bach chorales that ship with music21, "
                    "configs/default.yaml settings, a new run directory under runs/. Rerun the same command "
                    "with --run-dir to resume an interrupted run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    config_lib.add_arguments(parser)
    parser.add_argument("--data", action="append", default=[], metavar="SRC",
                        help="training data: directory, glob, file, music21 corpus name, s3:// gs:// hdfs:// URI, "
                             "or a directory written by keras_music.prepare (repeatable; replaces data.sources)")
    parser.add_argument("--run-dir", default=None, metavar="DIR",
                        help="run directory (default: runs/<timestamp>, with runs/latest pointing at it)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser, parser.parse_args(argv)


def resolve_config(args) -> config_lib.Config:
    config = config_lib.load(args.config, args.overrides)
    if args.data:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, sources=tuple(args.data)))
    return config_lib.validate(config)


def _copy_if_changed(source: str, target: str) -> None:
    data = storage.read_bytes(source)
    if storage.exists(target) and storage.read_bytes(target) == data:
        return
    storage.write_bytes(target, data)


def trained_vocabulary(run_dir: str) -> str | None:
    """The fingerprint of the vocabulary a started run was trained with (None: the run has not started)."""
    from keras_music import model as model_lib

    if not run_lib.training_started(run_dir):
        return None
    state = run_lib.read_backup_state(run_dir) or {}
    if isinstance(state.get("vocabulary_fingerprint"), str):
        return state["vocabulary_fingerprint"]
    for parts in ((run_lib.MODEL,), run_lib.BEST_CHECKPOINT):
        file = run_lib.path(run_dir, *parts)
        if storage.exists(file) and not storage.is_remote(file):
            fingerprint = (model_lib.read_metadata(file) or {}).get("vocabulary_fingerprint")
            if fingerprint:
                return fingerprint
    try:
        return run_lib.load_vocabulary(run_dir).fingerprint()  # a run trained before fingerprints were kept
    except run_lib.RunError:
        raise run_lib.RunError(f"{run_dir} holds training results but neither a readable {run_lib.VOCAB} nor a "
                               "record of the vocabulary they were trained with; train in a new --run-dir") from None


def prepare_run(config: config_lib.Config, run_dir: str, show_progress: bool, log=print) -> dict:
    """Prepare data into the run directory, or reuse it (resume, or a prepared --data directory).

    Reused data is checked first (prepared.json, shard checksums, vocabulary); damaged
    data is prepared again. A run that has started training keeps its vocabulary:
    data that would change it is refused before anything is written.
    """
    from keras_music import prepare

    sources = config.data.sources
    expected = trained_vocabulary(run_dir)
    if len(sources) == 1 and storage.isdir(sources[0]) and prepare.is_prepared(sources[0]):
        source = sources[0]
        run_lib.check_unlocked(source)
        info = run_lib.load_prepared(source, required=True)
        prepared = info.get("settings", {})
        for key in ("representation", "transpose", "max_duration", "classic_step", "normalize_key"):
            if key in prepared and prepared[key] != getattr(config.data, key):
                raise run_lib.RunError(f"{source} was prepared with data.{key}={prepared[key]!r} but this run has "
                                       f"{getattr(config.data, key)!r}; pass --set data.{key}={prepared[key]} "
                                       "or prepare again")
        vocabulary = run_lib.load_vocabulary(source)
        run_lib.check_data(source, info, vocabulary)
        if expected is not None and vocabulary.fingerprint() != expected:
            raise run_lib.RunError(f"{source} now holds another vocabulary than the one {run_dir} was trained with "
                                   "(it was prepared again since); nothing was changed: train on it in a new "
                                   "--run-dir")
        for name in (run_lib.VOCAB, run_lib.MANIFEST):
            _copy_if_changed(storage.join(source, name), run_lib.path(run_dir, name))
        location = source if storage.is_remote(source) else os.path.abspath(source)
        info = dict(info, data_dir=storage.join(location, "data"))
        try:
            current = run_lib.load_prepared(run_dir)
        except run_lib.RunError:
            current = None
        if current != info:
            storage.write_json(run_lib.path(run_dir, run_lib.PREPARED), info)
        log(f"using prepared data in {source} ({info['pieces']['train']} training pieces)")
        return info
    if prepare.is_prepared(run_dir):
        try:
            info = prepare.read_prepared(run_dir)
            if info.get("settings") == prepare.prepare_settings(config):
                run_lib.check_data(run_dir, info, run_lib.load_vocabulary(run_dir))
                return info
        except (prepare.PrepareError, run_lib.RunError) as error:
            log(f"the prepared data in {run_dir} cannot be used ({str(error).split('; ')[0]}): preparing it again")
    return prepare.prepare(config, run_dir, show_progress=show_progress, log=log, expected_vocabulary=expected)


def _set_seed_generators(model, seed: int, epoch: int) -> None:
    # Dropout masks depend on each layer's seed-generator state; setting it from
    # (seed, epoch) makes every epoch reproducible whether or not the run resumed.
    import numpy as np

    for i, variable in enumerate(v for v in model.non_trainable_variables if "seed_generator" in v.path):
        variable.assign(np.array([seed * 1000 + i, epoch], dtype=variable.dtype))


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_line(epoch: int, epochs: int, step: int, steps: int, tokens_per_second: float, loss: float | None,
                  epoch_eta: float, budget_left: float | None) -> str:
    """One line saying where training is: step of epoch, speed, loss and what is left."""
    budget = f"budget left {_clock(budget_left)}" if budget_left is not None else "no time budget"
    loss_text = f"loss {loss:.4f}" if loss is not None else "loss n/a"
    return (f"epoch {epoch}/{epochs} step {step}/{steps} | {tokens_per_second:,.0f} tokens/s | {loss_text} | "
            f"epoch ends in {_clock(epoch_eta)} | {budget}")


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


def make_callbacks(config, run_dir, model, steps_per_epoch, initial_state, log, show_progress=False,
                   metadata=None):
    import keras
    import numpy as np

    from keras_music import model as model_lib

    train = config.train
    backup_dir = run_lib.path(run_dir, BACKUP)
    tokens_per_step = train.batch_size * config.data.seq_length
    interactive = sys.stderr.isatty()

    class RunProgress(keras.callbacks.Callback):
        """Best checkpoint, early stopping, time budget and resumable backups in one place."""

        def __init__(self):
            super().__init__()
            state = initial_state or {}
            # JSON keeps NaN as null; back in Python it is NaN again.
            self.history = [{k: (math.nan if v is None else v) for k, v in h.items()} for h in state.get("history", [])]
            self.best = state.get("best", math.inf)
            self.wait = state.get("wait", 0)
            self.elapsed = state.get("elapsed", 0.0)
            self.stopped = None  # completed | early_stopping | time_budget | nan_loss
            self.stopped_reason = None
            self.started = time.time()
            self.epoch_started = time.time()
            self.steps = 0
            self.shown = 0.0
            self.steps_done = state.get("steps_done", 0)
            self.backup_model = state.get("model")  # the newest backup with finite weights

        def run_fraction(self) -> float:
            """How far the run is: the larger of elapsed/budget and steps/(epochs x steps)."""
            by_steps = self.steps_done / max(1, train.epochs * steps_per_epoch)
            budget = train.time_budget_minutes * 60
            by_time = (self.elapsed + time.time() - self.started) / budget if budget else 0.0
            return max(by_steps, by_time)

        def _stop(self, code, reason):
            self.model.stop_training = True
            self.stopped, self.stopped_reason = code, reason

        def _set_learning_rate(self):
            # Elapsed time is only known outside the graph, so the schedule is set
            # from here before each step; it reaches its floor when the time budget
            # or the last epoch ends, whichever comes first.
            if train.lr_schedule == "cosine_budget":
                self.model.optimizer.learning_rate.assign(budget_cosine(train, self.run_fraction()))

        def on_train_begin(self, logs=None):
            # The budget counts training only, not data preparation or model building.
            self.started = time.time()

        def on_epoch_begin(self, epoch, logs=None):
            _set_seed_generators(self.model, train.seed, epoch)
            self.epoch_started = time.time()
            self.steps = 0
            self.epoch = epoch
            self._set_learning_rate()

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            self.steps_done += 1
            now = time.time()
            budget = train.time_budget_minutes * 60
            used = self.elapsed + now - self.started
            if budget and used > budget:
                minutes = train.time_budget_minutes
                self._stop("time_budget", f"time budget of {minutes:g} minute{'' if minutes == 1 else 's'} reached")
            self._set_learning_rate()
            if show_progress:
                self._show(now, used, budget, (logs or {}).get("loss"))

        def _show(self, now, used, budget, loss):
            last = self.steps == steps_per_epoch
            # A terminal line is redrawn a few times a second; a log file gets one
            # line per tenth of the epoch, so it stays readable.
            if interactive:
                due = last or now - self.shown >= 0.25
            else:
                due = last or self.steps % max(1, steps_per_epoch // 10) == 0
            if not due:
                return
            self.shown = now
            seconds = max(now - self.epoch_started, 1e-9)
            speed = self.steps * tokens_per_step / seconds
            epoch_eta = (steps_per_epoch - self.steps) * seconds / self.steps
            line = progress_line(self.epoch + 1, train.epochs, self.steps, steps_per_epoch, speed,
                                 None if loss is None else float(loss), epoch_eta,
                                 max(0.0, budget - used) if budget else None)
            sys.stderr.write(("\r" + line + "\033[K" + ("\n" if last else "")) if interactive else line + "\n")
            sys.stderr.flush()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            seconds = time.time() - self.epoch_started
            for key in ("loss", "val_loss"):
                if key in logs:
                    logs[key.replace("loss", "perplexity")] = float(np.exp(min(logs[key], 50)))
            logs["steps"] = self.steps
            logs["tokens_per_second"] = self.steps * train.batch_size * config.data.seq_length / max(seconds, 1e-9)
            logs["epoch"] = epoch + 1
            logs["seconds"] = seconds
            learning_rate = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(learning_rate.numpy() if hasattr(learning_rate, "numpy") else learning_rate)
            self.history.append({k: float(v) for k, v in logs.items()})
            val_loss = logs.get("val_loss", math.inf)
            loss = logs.get("loss", 0.0)
            diverged = not math.isfinite(loss) or math.isnan(val_loss)
            if diverged:
                # The weights are NaN or infinite now: neither the best checkpoint nor the
                # backup may take them, so both keep the last finite epoch.
                self._stop("nan_loss", f"the loss became {'NaN' if math.isnan(loss) else loss} in epoch {epoch + 1}")
            elif val_loss < self.best:
                self.best, self.wait = val_loss, 0
                with storage.atomic_local_path(run_lib.path(run_dir, *run_lib.BEST_CHECKPOINT)) as tmp:
                    model_lib.save_model(self.model, tmp, metadata)
            else:
                self.wait += 1
                if train.early_stopping_patience and self.wait >= train.early_stopping_patience:
                    self._stop("early_stopping", f"no validation improvement for {self.wait} epochs")
            log(f"epoch {epoch + 1}: loss {loss:.4f}  val_loss {val_loss:.4f}  "
                f"val_perplexity {logs.get('val_perplexity', float('nan')):.3f}  "
                f"val_accuracy {logs.get('val_accuracy', float('nan')):.4f}  {seconds:.0f} s")
            self._backup(epoch + 1, save_weights=not diverged)

        def _backup(self, next_epoch, save_weights=True):
            # The model file (weights + optimizer) goes first, the state file last: a
            # kill between them resumes from the previous complete backup.
            storage.makedirs(backup_dir)
            if save_weights:
                name = f"model-{next_epoch:04d}.keras"
                with storage.atomic_local_path(storage.join(backup_dir, name)) as tmp:
                    model_lib.save_model(self.model, tmp, metadata)
                self.backup_model = name
            state = {"next_epoch": next_epoch, "model": self.backup_model, "history": self.history,
                     "best": self.best, "wait": self.wait, "elapsed": self.elapsed + time.time() - self.started,
                     "stopped": self.stopped, "stopped_reason": self.stopped_reason, "steps_done": self.steps_done,
                     "config": config_lib.to_dict(config),
                     "vocabulary_fingerprint": (metadata or {}).get("vocabulary_fingerprint")}
            storage.write_json(storage.join(backup_dir, run_lib.BACKUP_STATE), state)
            for old in storage.listdir(backup_dir):
                if old.startswith("model-") and old != self.backup_model:
                    storage.remove(storage.join(backup_dir, old))

    progress = RunProgress()
    callbacks = [progress, keras.callbacks.TerminateOnNaN()]
    if not storage.is_remote(run_dir):
        callbacks.append(keras.callbacks.TensorBoard(log_dir=run_lib.path(run_dir, "logs"), update_freq="epoch",
                                                     write_graph=False, profile_batch=0))
    return progress, callbacks


def read_backup(run_dir: str, config) -> dict | None:
    state = run_lib.read_backup_state(run_dir)
    if state is None:
        return None
    if state.get("config") != config_lib.to_dict(config):
        raise run_lib.RunError(f"{run_dir} holds an interrupted run with different settings; use a new --run-dir "
                               "or the same config to resume")
    return state


def plot_curves(history: list[dict], out_path: str, title: str = "") -> None:
    from keras_music import plots

    epochs = [h["epoch"] for h in history]
    figure, (left, right) = plots.pyplot().subplots(1, 2, figsize=(10, 4))
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        if any(key in h for h in history):
            left.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=label)
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy (nats/token)")
    left.legend()
    left.grid(alpha=0.3)
    for key, label in (("accuracy", "train"), ("val_accuracy", "validation")):
        if any(key in h for h in history):
            right.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=label)
    right.set_xlabel("epoch")
    right.set_ylabel("top-1 accuracy")
    right.legend()
    right.grid(alpha=0.3)
    figure.suptitle(title or "training curves")
    figure.tight_layout()
    plots.save(figure, out_path, dpi=100)


class Cluster:
    """This process's place in a multi-worker job, from the standard TF_CONFIG variable."""

    def __init__(self, environment=None):
        environment = os.environ if environment is None else environment
        try:
            tf_config = json.loads(environment.get("TF_CONFIG", "") or "{}")
        except ValueError as error:
            raise run_lib.RunError(f"TF_CONFIG is not valid JSON: {error}") from None
        example = ('e.g. {"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}, '
                   '"task": {"type": "worker", "index": 0}}')
        if not isinstance(tf_config, dict):
            raise run_lib.RunError(f"TF_CONFIG must be a JSON object, {example}")
        cluster, task = tf_config.get("cluster") or {}, tf_config.get("task") or {}
        if not isinstance(cluster, dict) or not isinstance(task, dict) or not cluster or "type" not in task:
            raise run_lib.RunError(f"train.strategy=multi_worker needs TF_CONFIG with \"cluster\" and \"task\", "
                                   f"{example}")
        for name, members in cluster.items():
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                raise run_lib.RunError(f"TF_CONFIG: cluster.{name} must be a list of \"host:port\" strings, "
                                       f"got {members!r}")
        index = task.get("index", 0)
        if isinstance(index, bool) or not isinstance(index, int):
            raise run_lib.RunError(f"TF_CONFIG: task.index must be an integer, got {index!r}")
        self.task_type, self.task_index = task["type"], index
        members = cluster.get(self.task_type)
        if not isinstance(self.task_type, str) or members is None:
            raise run_lib.RunError(f"TF_CONFIG: task.type {self.task_type!r} is not in the cluster "
                                   f"({', '.join(sorted(cluster))})")
        if not 0 <= index < len(members):
            raise run_lib.RunError(f"TF_CONFIG: task.index {index} is outside 0..{len(members) - 1} for the "
                                   f"{len(members)} {self.task_type} address(es)")
        self.num_workers = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
        self.is_chief = self.task_type == "chief" or (
            self.task_type == "worker" and self.task_index == 0 and "chief" not in cluster)


def distribution_strategy(name: str):
    """tf.distribute strategy for `train.strategy`; create it before any other TensorFlow work."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.NotFoundError) as error:
            raise run_lib.RunError(f"train.strategy=tpu but no TPU was found: {error}") from None
        return tf.distribute.TPUStrategy(resolver)
    raise run_lib.RunError(f"unknown train.strategy {name!r}")


def learning_rate_schedule(train_cfg, total_steps: int):
    import keras

    if train_cfg.lr_schedule == "cosine_budget":
        # Set before every step by RunProgress from the elapsed share of the run.
        return budget_cosine(train_cfg, 0.0)
    if train_cfg.lr_schedule != "cosine":
        return train_cfg.learning_rate
    warmup = min(200, max(1, total_steps // 20))
    return keras.optimizers.schedules.CosineDecay(
        train_cfg.learning_rate * 0.1, decay_steps=max(1, total_steps - warmup),
        alpha=train_cfg.min_learning_rate_ratio, warmup_target=train_cfg.learning_rate, warmup_steps=warmup)


def evaluate_windows(model, data) -> dict:
    """Mean cross-entropy and accuracy over every position of the validation windows."""
    import tensorflow as tf

    @tf.function
    def step(x, y):
        probabilities = model(x, training=False)
        picked = tf.gather(probabilities, y, batch_dims=2)
        loss = -tf.reduce_sum(tf.math.log(tf.maximum(picked, 1e-12)))
        hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probabilities, -1, output_type=tf.int32), y), tf.float32))
        return loss, hits

    total_loss, total_hits, count = 0.0, 0.0, 0
    for x, y in data:
        loss, hits = step(x, y)
        total_loss += float(loss)
        total_hits += float(hits)
        count += int(tf.size(y))
    if count == 0:
        # An empty validation set would read as a perfect loss of 0.
        raise run_lib.RunError("the validation data holds no window to evaluate on: the validation shards are "
                               "missing or empty; prepare the data again (rerun the same train command)")
    return {"loss": total_loss / count, "accuracy": total_hits / count, "tokens": count}


def fit_custom(strategy, model, optimizer, make_train_data, validation_data, progress, first_epoch: int,
               epochs: int, steps_per_epoch: int, global_batch: int, seq_length: int, clipnorm: float, log) -> None:
    """A training loop under strategy.run, for MultiWorkerMirroredStrategy.

    Keras `fit` fails under MultiWorkerMirroredStrategy (PerReplica conversion error),
    so this loop drives the same RunProgress callback (checkpoints, backups, early
    stopping) by hand. Gradients are summed across replicas before the per-variable
    clipping, so each update equals the single-process one for the same global batch.
    """
    import tensorflow as tf

    distributed = strategy.distribute_datasets_from_function(make_train_data)
    iterator = iter(distributed)
    global_tokens = float(global_batch * seq_length)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            probabilities = model(x, training=True)
            picked = tf.gather(probabilities, y, batch_dims=2)
            loss = -tf.reduce_sum(tf.math.log(tf.maximum(picked, 1e-7))) / global_tokens
        gradients = tape.gradient(loss, model.trainable_variables)
        context = tf.distribute.get_replica_context()
        gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        gradients = [tf.clip_by_norm(g, clipnorm) for g in gradients]
        # The Keras optimizer sums gradients across replicas again; pre-dividing keeps the total.
        replicas = tf.cast(context.num_replicas_in_sync, tf.float32)
        optimizer.apply([g / replicas for g in gradients], model.trainable_variables)
        hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probabilities, -1, output_type=tf.int32), y), tf.float32))
        return loss, hits

    @tf.function
    def train_step(iterator):
        x, y = next(iterator)
        loss, hits = strategy.run(replica_step, args=(x, y))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, hits, axis=None))

    @tf.function
    def agree_to_stop(flag):
        # Every worker must stop at the same epoch, or the others wait forever in a
        # collective: any worker's stop (e.g. its time budget) stops all of them.
        value = strategy.run(lambda f: f * 1.0, args=(flag,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

    progress.set_model(model)
    progress.on_train_begin()
    for epoch in range(first_epoch, epochs):
        model.stop_training = False
        progress.on_epoch_begin(epoch)
        loss_sum, hit_sum = 0.0, 0.0
        for batch in range(steps_per_epoch):
            loss, hits = train_step(iterator)
            loss_sum += float(loss)
            hit_sum += float(hits)
            progress.on_train_batch_end(batch, {"loss": loss_sum / (batch + 1)})
        validation = evaluate_windows(model, validation_data)
        logs = {"loss": loss_sum / steps_per_epoch, "accuracy": hit_sum / (steps_per_epoch * global_tokens),
                "val_loss": validation["loss"], "val_accuracy": validation["accuracy"]}
        progress.on_epoch_end(epoch, logs)
        if float(agree_to_stop(tf.constant(1.0 if model.stop_training else 0.0))) > 0:
            break


def epoch_steps(config: config_lib.Config, train_lengths) -> int:
    """Batches per epoch: the training windows the pipeline cuts, in whole batches."""
    from keras_music import dataset

    stride = config.data.window_stride or config.data.seq_length
    return dataset.count_windows(train_lengths, config.data.seq_length, stride) // config.train.batch_size


def _load_saved(file: str, fix: str):
    """A checkpoint or backup written by this module, loaded in safe mode and checked for finite weights."""
    import keras
    import numpy as np

    try:
        model = keras.saving.load_model(file, safe_mode=True)
    except Exception as error:  # zip, HDF5 and Keras errors for a damaged file
        text = str(error).strip().splitlines()
        raise run_lib.RunError(f"{file} cannot be loaded ({type(error).__name__}: {text[0] if text else ''}); "
                               f"{fix}") from None
    if not all(np.all(np.isfinite(w)) for w in model.get_weights()):
        raise run_lib.RunError(f"{file} holds NaN or infinite weights; {fix}")
    return model


def _complete_metrics(run_dir: str, state: dict | None, config, vocabulary) -> dict | None:
    """metrics.json of a run that has already finished (and whose model checks out), else None."""
    if not state or not (state.get("stopped") or state.get("stopped_reason")
                         or state.get("next_epoch", 0) >= config.train.epochs):
        return None
    file = run_lib.path(run_dir, run_lib.METRICS)
    if not storage.exists(file) or not storage.exists(run_lib.path(run_dir, run_lib.MODEL)):
        return None
    try:
        metrics = storage.read_json(file, 64 << 20)
        run_lib.load_model(run_dir, vocabulary)
    except (OSError, ValueError):  # RunError is a ValueError: a damaged model is written again
        return None
    return metrics if isinstance(metrics, dict) and "val_loss" in metrics else None


def _diverged(run_dir: str, metrics: dict, config) -> TrainingDiverged:
    best = metrics.get("best_epoch")
    return TrainingDiverged(
        f"training stopped: {metrics.get('stopped_detail', 'the loss became NaN')} (train.learning_rate="
        f"{config.train.learning_rate:g}); {run_lib.path(run_dir, run_lib.MODEL)} holds the best earlier epoch "
        f"({best}, validation loss {metrics['val_loss']:.4f}). Lower train.learning_rate (or "
        "train.clipnorm) and train again in a new --run-dir")


def train(config: config_lib.Config, run_dir: str, show_progress: bool = True, log=print) -> dict:
    """Prepare (or reuse) data, fit (or resume), and write the run directory. Returns metrics.json.

    The run directory is locked for the whole call (one writer at a time), and a run
    that has started training is only ever continued with its own settings: the
    settings are compared before anything is written. Rerunning a finished run
    changes nothing. Under train.strategy=multi_worker every worker runs this; only
    the chief writes the run directory, the others work in a temporary directory and
    read the chief's backup to resume. A loss that becomes NaN or infinite stops
    training with TrainingDiverged; the best earlier epoch is kept.
    """
    cluster = Cluster() if config.train.strategy == "multi_worker" else None
    chief = cluster is None or cluster.is_chief
    owning = run_lib.lock(run_dir, COMMAND) if chief else contextlib.nullcontext()
    with owning:
        if chief:
            run_lib.check_settings(run_dir, config)
        return _train(config, run_dir, cluster, chief, show_progress, log)


def _train(config, run_dir, cluster, chief, show_progress, log) -> dict:
    import tempfile
    import warnings

    import keras
    import numpy as np
    import tensorflow as tf

    from keras_music import dataset, model as model_lib

    train_cfg, data, model_cfg = config.train, config.data, config.model
    strategy = distribution_strategy(train_cfg.strategy)
    work_dir = run_dir if chief else tempfile.mkdtemp(prefix="keras_music-worker-")
    if not chief:
        log = lambda *args, **kwargs: None  # noqa: E731  (workers stay quiet; the chief reports)
    storage.makedirs(work_dir)
    started = time.time()
    info = prepare_run(config, work_dir, show_progress and chief, log)
    vocabulary = run_lib.load_vocabulary(work_dir)
    run_lib.write_config(work_dir, config)
    metadata = {"vocabulary_fingerprint": vocabulary.fingerprint(), "vocabulary_size": len(vocabulary)}
    state = read_backup(run_dir, config)
    if chief:
        done = _complete_metrics(run_dir, state, config, vocabulary)
        if done is not None:
            log(f"{run_dir} has finished training ({done.get('epochs')} epochs, {done.get('stopped_detail')}); "
                "nothing to do")
            if done.get("stopped") == "nan_loss":
                raise _diverged(run_dir, done, config)
            return done
    stride = data.window_stride or data.seq_length
    steps_per_epoch = epoch_steps(config, info["lengths"]["train"])
    if steps_per_epoch < 1:
        windows = dataset.count_windows(info["lengths"]["train"], data.seq_length, stride)
        raise run_lib.RunError(f"the training split has {info['tokens']['train']} tokens, {windows} windows of "
                               f"data.seq_length+1={data.seq_length + 1}: fewer than one batch of "
                               f"train.batch_size={train_cfg.batch_size}; lower them or add data")
    if dataset.count_windows(info["lengths"]["validation"], data.seq_length, data.seq_length) < 1:
        raise run_lib.RunError(f"the validation split has {info['tokens']['validation']} tokens: not one window of "
                               f"data.seq_length+1={data.seq_length + 1}, so the validation loss would mean "
                               "nothing; lower data.seq_length or raise data.val_fraction")
    if train_cfg.batch_size % strategy.num_replicas_in_sync:
        raise run_lib.RunError(f"train.batch_size={train_cfg.batch_size} must be divisible by the "
                               f"{strategy.num_replicas_in_sync} replicas of train.strategy={train_cfg.strategy}")
    train_files = run_lib.shard_paths(work_dir, "train", info)
    validation_files = run_lib.shard_paths(work_dir, "validation", info)

    # Keras warns about `shuffle` and end-of-data for every tf.data input; the pipeline
    # shuffles itself and yields exactly steps_per_epoch batches per epoch.
    warnings.filterwarnings("ignore", message=".*shuffle=True.*", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*ran out of data.*", category=UserWarning)
    keras.utils.set_random_seed(train_cfg.seed)
    if train_cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    first_epoch = state["next_epoch"] if state else 0
    if state and not state.get("stopped_reason") and first_epoch < train_cfg.epochs:
        log(f"resuming {run_dir} at epoch {first_epoch + 1} of {train_cfg.epochs}")

    learning_rate = learning_rate_schedule(train_cfg, steps_per_epoch * train_cfg.epochs)
    custom_loop = train_cfg.strategy == "multi_worker"
    backup_fix = (f"remove {run_lib.path(run_dir, BACKUP)} to train again from the first epoch, or use a new "
                  "--run-dir")
    with strategy.scope():
        if state and state.get("model"):
            model = _load_saved(run_lib.path(run_dir, BACKUP, state["model"]), backup_fix)
        else:
            model = model_lib.build_model(len(vocabulary), model_cfg.embedding_size, model_cfg.hidden_size,
                                          model_cfg.num_layers, model_cfg.dropout)
            # The custom loop clips after summing replicas' gradients, so its optimizer must not clip again.
            clip = {} if custom_loop else {"clipnorm": train_cfg.clipnorm}
            model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate, **clip),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    transposition = vocabulary.transposition_table(data.transpose) if data.transpose else None

    def make_train_data(context=None):
        worker = (context.input_pipeline_id, context.num_input_pipelines) if context is not None else None
        return dataset.training_dataset(train_files, data.seq_length, train_cfg.batch_size, steps_per_epoch,
                                        train_cfg.seed, first_epoch, train_cfg.epochs, stride, data.shuffle_buffer,
                                        transposition, vocabulary.boundary_id, worker_slice=worker,
                                        piece_count=len(info["lengths"]["train"]))

    validation_data = dataset.evaluation_dataset(validation_files, data.seq_length, train_cfg.batch_size,
                                                 vocabulary.boundary_id)
    progress, callbacks = make_callbacks(config, work_dir, model, steps_per_epoch, state, log,
                                         show_progress=show_progress and chief, metadata=metadata)
    sizes = model_lib.describe(model)
    log(f"model: {sizes['num_layers']} x LSTM({sizes['hidden_size']}), {sizes['parameters']:,} parameters, "
        f"vocabulary {sizes['vocabulary_size']}; {steps_per_epoch} steps/epoch of {train_cfg.batch_size} x "
        f"{data.seq_length} tokens" + (f"; {cluster.num_workers} workers" if cluster else ""))
    stopped_before = state.get("stopped_reason") if state else None
    stopped_code_before = state.get("stopped") if state else None
    if stopped_before and not stopped_code_before:
        # Backups written before the code existed carry only the sentence.
        stopped_code_before = ("time_budget" if "time budget" in stopped_before else
                               "nan_loss" if "NaN" in stopped_before else "early_stopping")
    if first_epoch < train_cfg.epochs and not stopped_before:
        if custom_loop:
            fit_custom(strategy, model, model.optimizer, make_train_data, validation_data, progress, first_epoch,
                       train_cfg.epochs, steps_per_epoch, train_cfg.batch_size, data.seq_length,
                       train_cfg.clipnorm, log)
        else:
            # RunProgress draws the progress line and one summary line per epoch; Keras' own bar stays off.
            model.fit(make_train_data(), validation_data=validation_data, epochs=train_cfg.epochs,
                      initial_epoch=first_epoch, steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                      verbose=0)
    history = progress.history
    stopped = progress.stopped or stopped_code_before or "completed"
    best_path = run_lib.path(work_dir, *run_lib.BEST_CHECKPOINT)
    if storage.exists(best_path):
        best = _load_saved(best_path, f"remove it and {run_lib.path(run_dir, BACKUP)} to train again, or use a new "
                                      "--run-dir")
        model.set_weights(best.get_weights())
    elif stopped == "nan_loss":
        raise TrainingDiverged(f"training stopped: {progress.stopped_reason or stopped_before} before any epoch had "
                               f"a finite validation loss, so no model was kept (train.learning_rate="
                               f"{train_cfg.learning_rate:g}); lower train.learning_rate (or train.clipnorm) and "
                               "train again in a new --run-dir")
    evaluation = evaluate_windows(model, validation_data)
    train_seconds = sum(h.get("seconds", 0.0) for h in history)
    tokens_seen = sum(int(h.get("steps", steps_per_epoch)) for h in history) * train_cfg.batch_size * data.seq_length
    finite = [h.get("val_loss", math.inf) for h in history]
    finite = [v if isinstance(v, (int, float)) and math.isfinite(v) else math.inf for v in finite]
    metrics = {
        "epochs": len(history),
        # Why training ended: completed | early_stopping | time_budget | nan_loss.
        "stopped": stopped,
        "stopped_detail": (progress.stopped_reason or stopped_before
                           or ("all epochs trained" if history else "nothing to train")),
        "train_loss": history[-1]["loss"] if history else None,
        "val_loss": float(evaluation["loss"]),
        "val_perplexity": float(np.exp(evaluation["loss"])),
        "val_accuracy": float(evaluation["accuracy"]),
        "best_epoch": int(np.argmin(finite) + 1) if history else None,
        "tokens_seen": tokens_seen,
        "tokens_per_second": tokens_seen / train_seconds if train_seconds else None,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.time() - started + (state or {}).get("elapsed", 0.0), 1),
        "parameters": sizes["parameters"],
        "vocabulary_size": sizes["vocabulary_size"],
        "validation_unknown_rate": info.get("validation_unknown_rate"),
        "strategy": train_cfg.strategy,
        "replicas": int(strategy.num_replicas_in_sync),
        "history": history,
    }
    if not chief:
        storage.rmtree(work_dir)
        return metrics
    with storage.atomic_local_path(run_lib.path(run_dir, run_lib.MODEL)) as tmp:
        model_lib.save_model(model, tmp, metadata)
    storage.write_json(run_lib.path(run_dir, run_lib.METRICS), metrics)
    if history:
        plot_curves(history, run_lib.path(run_dir, "training_curves.png"),
                    f"{os.path.basename(str(run_dir).rstrip('/'))}: {sizes['num_layers']} x LSTM({sizes['hidden_size']})")
    if stopped == "nan_loss":
        raise _diverged(run_dir, storage.json_ready(metrics), config)
    return metrics


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    from keras_music import cli

    with cli.user_errors(parser):
        config = resolve_config(args)
        if config.train.strategy == "multi_worker" and not args.run_dir:
            parser.error("train.strategy=multi_worker needs --run-dir: every worker must name the same run directory")
        chief = config.train.strategy != "multi_worker" or Cluster().is_chief
        run_dir = args.run_dir or run_lib.new_run_dir()
        # Held until the samples are written too: train() takes the same lock again inside.
        with run_lib.lock(run_dir, COMMAND) if chief else contextlib.nullcontext():
            metrics = train(config, run_dir, show_progress=not args.quiet)
            if not chief:
                print(f"worker finished: loss {metrics['train_loss']:.4f} (the chief writes {run_dir})")
                cli.finish(0)
            run_lib.point_latest(run_dir)
            samples = []
            if config.train.num_samples:
                from keras_music import generate

                samples = generate.write_training_samples(run_dir, config)
        print(json.dumps({k: metrics[k] for k in ("val_loss", "val_perplexity", "val_accuracy", "epochs",
                                                   "wall_seconds")}, indent=None))
        print(f"\nrun directory: {run_dir}")
        print(f"held-out: loss {metrics['val_loss']:.4f} nats/token, perplexity {metrics['val_perplexity']:.3f}, "
              f"accuracy {metrics['val_accuracy']:.3f} ({metrics['epochs']} epochs, {metrics['stopped_detail']}, "
              f"{metrics['wall_seconds'] / 60:.1f} min)")
        if samples:
            print(f"samples: {', '.join(samples)}")
        print("next:")
        print("  " + cli.command_line("python -m keras_music.generate", "--run-dir", run_dir, "--num-samples", "4",
                                      "--temperature", "0.9"))
        print("  " + cli.command_line("python -m keras_music.evaluate", "--run-dir", run_dir))
        print("  " + cli.command_line("python -m keras_music.export", "--run-dir", run_dir))
    cli.finish(0)


if __name__ == "__main__":
    main()
