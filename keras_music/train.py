"""Train the LSTM on a corpus into a run directory; rerunning the same command resumes it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

from keras_music import config as config_lib, run as run_lib, storage

BACKUP = "backup"


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


def _same_settings(run_dir: str, config: config_lib.Config) -> bool:
    file = run_lib.path(run_dir, run_lib.CONFIG)
    if not storage.exists(file):
        return False
    try:
        return run_lib.load_config(run_dir) == config
    except run_lib.RunError:
        return False


def prepare_run(config: config_lib.Config, run_dir: str, show_progress: bool, log=print) -> dict:
    """Prepare data into the run directory, or reuse it (resume, or a prepared --data directory)."""
    from keras_music import prepare

    sources = config.data.sources
    if len(sources) == 1 and storage.isdir(sources[0]) and prepare.is_prepared(sources[0]):
        source = sources[0]
        info = prepare.read_prepared(source)
        for name in (run_lib.VOCAB, run_lib.MANIFEST):
            storage.write_bytes(run_lib.path(run_dir, name), storage.read_bytes(storage.join(source, name)))
        info = dict(info, data_dir=storage.join(source, "data"))
        storage.write_json(run_lib.path(run_dir, run_lib.PREPARED), info)
        log(f"using prepared data in {source} ({info['pieces']['train']} training pieces)")
        return info
    if prepare.is_prepared(run_dir):
        info = prepare.read_prepared(run_dir)
        if info.get("settings") == prepare.prepare_settings(config):
            return info
    return prepare.prepare(config, run_dir, show_progress=show_progress, log=log)


def _set_seed_generators(model, seed: int, epoch: int) -> None:
    # Dropout masks depend on each layer's seed-generator state; setting it from
    # (seed, epoch) makes every epoch reproducible whether or not the run resumed.
    import numpy as np

    for i, variable in enumerate(v for v in model.non_trainable_variables if "seed_generator" in v.path):
        variable.assign(np.array([seed * 1000 + i, epoch], dtype=variable.dtype))


def make_callbacks(config, run_dir, model, steps_per_epoch, initial_state, log):
    import keras
    import numpy as np

    train = config.train
    backup_dir = run_lib.path(run_dir, BACKUP)

    class RunProgress(keras.callbacks.Callback):
        """Best checkpoint, early stopping, time budget and resumable backups in one place."""

        def __init__(self):
            super().__init__()
            state = initial_state or {}
            self.history = state.get("history", [])
            self.best = state.get("best", math.inf)
            self.wait = state.get("wait", 0)
            self.elapsed = state.get("elapsed", 0.0)
            self.stopped_reason = None
            self.started = time.time()
            self.epoch_started = time.time()

        def on_epoch_begin(self, epoch, logs=None):
            _set_seed_generators(self.model, train.seed, epoch)
            self.epoch_started = time.time()

        def on_train_batch_end(self, batch, logs=None):
            budget = train.time_budget_minutes * 60
            if budget and self.elapsed + time.time() - self.started > budget:
                self.model.stop_training = True
                self.stopped_reason = f"time budget of {train.time_budget_minutes:g} minutes reached"

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            seconds = time.time() - self.epoch_started
            for key in ("loss", "val_loss"):
                if key in logs:
                    logs[key.replace("loss", "perplexity")] = float(np.exp(min(logs[key], 50)))
            logs["tokens_per_second"] = steps_per_epoch * train.batch_size * config.data.seq_length / max(seconds, 1e-9)
            logs["epoch"] = epoch + 1
            logs["seconds"] = seconds
            learning_rate = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(learning_rate.numpy() if hasattr(learning_rate, "numpy") else learning_rate)
            self.history.append({k: float(v) for k, v in logs.items()})
            val_loss = logs.get("val_loss", math.inf)
            if val_loss < self.best:
                self.best, self.wait = val_loss, 0
                with storage.atomic_local_path(run_lib.path(run_dir, "checkpoints", "best.keras")) as tmp:
                    self.model.save(tmp)
            else:
                self.wait += 1
                if train.early_stopping_patience and self.wait >= train.early_stopping_patience:
                    self.model.stop_training = True
                    self.stopped_reason = f"no validation improvement for {self.wait} epochs"
            if not math.isfinite(logs.get("loss", 0.0)):
                self.model.stop_training = True
                self.stopped_reason = "loss became NaN"
            log(f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f}  val_loss {val_loss:.4f}  "
                f"val_perplexity {logs.get('val_perplexity', float('nan')):.3f}  "
                f"val_accuracy {logs.get('val_accuracy', float('nan')):.4f}  {seconds:.0f} s")
            self._backup(epoch + 1)

        def _backup(self, next_epoch):
            # The model file (weights + optimizer) goes first, the state file last: a
            # kill between them resumes from the previous complete backup.
            storage.makedirs(backup_dir)
            name = f"model-{next_epoch:04d}.keras"
            with storage.atomic_local_path(storage.join(backup_dir, name)) as tmp:
                self.model.save(tmp)
            state = {"next_epoch": next_epoch, "model": name, "history": self.history, "best": self.best,
                     "wait": self.wait, "elapsed": self.elapsed + time.time() - self.started,
                     "stopped_reason": self.stopped_reason, "config": config_lib.to_dict(config)}
            storage.write_json(storage.join(backup_dir, "state.json"), state)
            for old in storage.listdir(backup_dir):
                if old.startswith("model-") and old != name:
                    storage.remove(storage.join(backup_dir, old))

    progress = RunProgress()
    callbacks = [progress, keras.callbacks.TerminateOnNaN()]
    if not storage.is_remote(run_dir):
        callbacks.append(keras.callbacks.TensorBoard(log_dir=run_lib.path(run_dir, "logs"), update_freq="epoch",
                                                     write_graph=False, profile_batch=0))
    return progress, callbacks


def read_backup(run_dir: str, config) -> dict | None:
    file = run_lib.path(run_dir, BACKUP, "state.json")
    if not storage.exists(file):
        return None
    try:
        state = storage.read_json(file)
    except (ValueError, OSError):
        return None
    if state.get("config") != config_lib.to_dict(config):
        raise run_lib.RunError(f"{run_dir} holds an interrupted run with different settings; use a new --run-dir "
                               "or the same config to resume")
    return state


def plot_curves(history: list[dict], out_path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
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
    with storage.atomic_local_path(out_path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)


def distribution_strategy(name: str):
    """tf.distribute strategy for `train.strategy` (MirroredStrategy spans every local device)."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    raise run_lib.RunError(f"train.strategy={name} is not available in this version of keras_music "
                           "(use default or mirrored)")


def train(config: config_lib.Config, run_dir: str, show_progress: bool = True, log=print) -> dict:
    """Prepare (or reuse) data, fit (or resume), and write the run directory. Returns metrics.json."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_music import dataset, model as model_lib

    storage.makedirs(run_dir)
    started = time.time()
    info = prepare_run(config, run_dir, show_progress, log)
    vocabulary = run_lib.load_vocabulary(run_dir)
    storage.write_text(run_lib.path(run_dir, run_lib.CONFIG), config_lib.dump(config))
    data, train_cfg, model_cfg = config.data, config.train, config.model
    stride = data.window_stride or data.seq_length
    windows = dataset.count_windows(info["lengths"]["train"], data.seq_length, stride)
    steps_per_epoch = windows // train_cfg.batch_size
    if steps_per_epoch < 1:
        raise run_lib.RunError(f"the training split has {info['tokens']['train']} tokens, {windows} windows of "
                               f"data.seq_length+1={data.seq_length + 1}: fewer than one batch of "
                               f"train.batch_size={train_cfg.batch_size}; lower them or add data")
    data_dir = run_lib.data_dir(run_dir)
    train_files = dataset.shard_files(data_dir, "train")
    validation_files = dataset.shard_files(data_dir, "validation")

    import warnings

    # Keras warns about `shuffle` and end-of-data for every tf.data input; the pipeline
    # shuffles itself and yields exactly steps_per_epoch batches per epoch.
    warnings.filterwarnings("ignore", message=".*shuffle=True.*", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*ran out of data.*", category=UserWarning)
    keras.utils.set_random_seed(train_cfg.seed)
    if train_cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    state = read_backup(run_dir, config)
    first_epoch = state["next_epoch"] if state else 0
    if state and not state.get("stopped_reason") and first_epoch < train_cfg.epochs:
        log(f"resuming {run_dir} at epoch {first_epoch + 1} of {train_cfg.epochs}")

    total_steps = steps_per_epoch * train_cfg.epochs
    if train_cfg.lr_schedule == "cosine":
        warmup = min(200, max(1, total_steps // 20))
        learning_rate = keras.optimizers.schedules.CosineDecay(
            train_cfg.learning_rate * 0.1, decay_steps=max(1, total_steps - warmup),
            alpha=train_cfg.min_learning_rate_ratio, warmup_target=train_cfg.learning_rate, warmup_steps=warmup)
    else:
        learning_rate = train_cfg.learning_rate
    with distribution_strategy(train_cfg.strategy).scope():
        if state:
            model = keras.saving.load_model(run_lib.path(run_dir, BACKUP, state["model"]), safe_mode=True)
        else:
            model = model_lib.build_model(len(vocabulary), model_cfg.embedding_size, model_cfg.hidden_size,
                                          model_cfg.num_layers, model_cfg.dropout)
            model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=train_cfg.clipnorm),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    transposition = vocabulary.transposition_table(data.transpose) if data.transpose else None
    train_data = dataset.training_dataset(train_files, data.seq_length, train_cfg.batch_size, steps_per_epoch,
                                          train_cfg.seed, first_epoch, train_cfg.epochs, stride,
                                          data.shuffle_buffer, transposition, vocabulary.boundary_id)
    validation_data = dataset.evaluation_dataset(validation_files, data.seq_length, train_cfg.batch_size,
                                                 vocabulary.boundary_id)
    progress, callbacks = make_callbacks(config, run_dir, model, steps_per_epoch, state, log)
    sizes = model_lib.describe(model)
    log(f"model: {sizes['num_layers']} x LSTM({sizes['hidden_size']}), {sizes['parameters']:,} parameters, "
        f"vocabulary {sizes['vocabulary_size']}; {steps_per_epoch} steps/epoch of {train_cfg.batch_size} x "
        f"{data.seq_length} tokens")
    stopped_before = state.get("stopped_reason") if state else None
    if first_epoch < train_cfg.epochs and not stopped_before:
        model.fit(train_data, validation_data=validation_data, epochs=train_cfg.epochs, initial_epoch=first_epoch,
                  steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                  verbose=(1 if sys.stdout.isatty() else 2) if show_progress else 0)
    history = progress.history
    best_path = run_lib.path(run_dir, "checkpoints", "best.keras")
    if storage.exists(best_path):
        best = keras.saving.load_model(best_path, safe_mode=True)
        model.set_weights(best.get_weights())
    with storage.atomic_local_path(run_lib.path(run_dir, run_lib.MODEL)) as tmp:
        model.save(tmp)
    evaluation = model.evaluate(validation_data, verbose=0, return_dict=True)
    train_seconds = sum(h.get("seconds", 0.0) for h in history)
    tokens_seen = steps_per_epoch * train_cfg.batch_size * data.seq_length * len(history)
    metrics = {
        "epochs": len(history),
        "stopped": progress.stopped_reason or stopped_before or ("completed" if history else "nothing to train"),
        "train_loss": history[-1]["loss"] if history else None,
        "val_loss": float(evaluation["loss"]),
        "val_perplexity": float(np.exp(evaluation["loss"])),
        "val_accuracy": float(evaluation["accuracy"]),
        "best_epoch": int(np.argmin([h.get("val_loss", math.inf) for h in history]) + 1) if history else None,
        "tokens_seen": tokens_seen,
        "tokens_per_second": tokens_seen / train_seconds if train_seconds else None,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.time() - started + (state or {}).get("elapsed", 0.0), 1),
        "parameters": sizes["parameters"],
        "vocabulary_size": sizes["vocabulary_size"],
        "validation_unknown_rate": info.get("validation_unknown_rate"),
        "history": history,
    }
    storage.write_json(run_lib.path(run_dir, run_lib.METRICS), metrics)
    if history:
        plot_curves(history, run_lib.path(run_dir, "training_curves.png"),
                    f"{os.path.basename(str(run_dir).rstrip('/'))}: {sizes['num_layers']} x LSTM({sizes['hidden_size']})")
    return metrics


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    from keras_music import cli

    with cli.user_errors(parser):
        config = resolve_config(args)
        run_dir = args.run_dir or run_lib.new_run_dir()
        metrics = train(config, run_dir, show_progress=not args.quiet)
        run_lib.point_latest(run_dir)
        samples = []
        if config.train.num_samples:
            from keras_music import generate

            samples = generate.write_training_samples(run_dir, config)
        print(json.dumps({k: metrics[k] for k in ("val_loss", "val_perplexity", "val_accuracy", "epochs",
                                                   "wall_seconds")}, indent=None))
        print(f"\nrun directory: {run_dir}")
        print(f"held-out: loss {metrics['val_loss']:.4f} nats/token, perplexity {metrics['val_perplexity']:.3f}, "
              f"accuracy {metrics['val_accuracy']:.3f} ({metrics['epochs']} epochs, {metrics['stopped']}, "
              f"{metrics['wall_seconds'] / 60:.1f} min)")
        if samples:
            print(f"samples: {', '.join(samples)}")
        print("next:")
        print(f"  python -m keras_music.generate --run-dir {run_dir} --num-samples 4 --temperature 0.9")
        print(f"  python -m keras_music.evaluate --run-dir {run_dir}")
        print(f"  python -m keras_music.export --run-dir {run_dir}")
    cli.finish(0)


if __name__ == "__main__":
    main()
