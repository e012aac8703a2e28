"""Train the LSTM on a corpus into a run directory; rerunning the same command resumes it."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import types
import warnings
from typing import Any, Callable

import numpy as np

from keras_music import cli, generate, plots, prepare
from keras_music import config as config_lib, distributed, events, finetune, run as run_lib, storage
from keras_music.vocabulary import Vocabulary

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
    parser.add_argument("--held-out", action="append", default=[], metavar="SRC",
                        help="hold out exactly the pieces of SRC (repeatable; sets data.held_out): they are scored, "
                             "never trained on, and every piece of --data trains (default: data.val_fraction of "
                             "the pieces, chosen by content hash)")
    parser.add_argument("--data", action="append", default=[], metavar="SRC",
                        help="training data: directory, glob, file, music21 corpus name, s3:// gs:// hdfs:// URI, "
                             "or a directory written by keras_music.prepare (repeatable; replaces data.sources)")
    parser.add_argument("--init-from", default=None, metavar="BASE_RUN",
                        help="fine-tune: start from this finished run's weights and vocabulary (tokens of --data "
                             "that it lacks are added); sets train.init_from, and the base's model sizes and "
                             "token settings become the defaults")
    parser.add_argument("--run-dir", default=None, metavar="DIR",
                        help="run directory (default: runs/<timestamp>, with runs/latest pointing at it)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser, parser.parse_args(argv)


def resolve_config(args) -> config_lib.Config:
    """defaults < --config files < --set, then --init-from and --data.

    A fine-tune (train.init_from) resolves from the base run's model sizes and token
    settings instead of the defaults, so the same files and --set apply on top of them.
    """
    config = _with_init_from(config_lib.load(args.config, args.overrides), args.init_from)
    if config.train.init_from:
        start = finetune.start_from(finetune.base_config(config.train.init_from))
        config = _with_init_from(config_lib.load(args.config, args.overrides, base=start), config.train.init_from)
    if args.data:
        config = config_lib.with_sources(config, args.data)
    if args.held_out:
        config = config_lib.with_held_out(config, args.held_out)
    return config_lib.validate(config)


def _with_init_from(config: config_lib.Config, init_from: str | None) -> config_lib.Config:
    if not init_from:
        return config
    return dataclasses.replace(config, train=dataclasses.replace(config.train, init_from=init_from))


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
    backup = run_lib.read_backup_record(run_dir) or {}
    if isinstance(backup.get("vocabulary_fingerprint"), str):
        return backup["vocabulary_fingerprint"]
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


def prepare_run(config: config_lib.Config, run_dir: str, *, show_progress: bool, log=print,
                base_vocabulary=None) -> run_lib.Prepared:
    """Prepare data into the run directory, or reuse it (resume, or a prepared --data directory).

    Reused data is checked first (prepared.json, shard checksums, vocabulary); damaged
    data is prepared again. A run that has started training keeps its vocabulary:
    data that would change it is refused before anything is written. A fine-tune
    (`base_vocabulary`, the base run's) prepares its sources with the base's tokens first.
    """
    sources = config.data.sources
    expected = trained_vocabulary(run_dir)
    if len(sources) == 1 and storage.isdir(sources[0]) and prepare.is_prepared(sources[0]):
        source = sources[0]
        if base_vocabulary is not None:
            raise run_lib.RunError(f"--data {source} is a prepared directory, whose ids belong to its own vocabulary; "
                                   "a fine-tune (train.init_from) needs the music itself: pass the folder of "
                                   "files it was prepared from")
        return _use_prepared(source, config, run_dir=run_dir, expected=expected, log=log)
    if prepare.is_prepared(run_dir):
        try:
            info = prepare.read_prepared(run_dir)
            if info.get("settings") == prepare.prepare_settings(config, base_vocabulary):
                run_lib.check_data(run_dir, info, vocabulary=run_lib.load_vocabulary(run_dir))
                return info
        except (prepare.PrepareError, run_lib.RunError) as error:
            log(f"the prepared data in {run_dir} cannot be used ({str(error).split('; ')[0]}): preparing it again")
    return prepare.prepare(config, run_dir, show_progress=show_progress, log=log, expected_vocabulary=expected,
                           base_vocabulary=base_vocabulary)


def _use_prepared(source: str, config: config_lib.Config, *, run_dir: str, expected: str | None,
                  log) -> run_lib.Prepared:
    """A prepared --data directory's data, checked against this run, with its vocabulary and manifest copied in.

    `expected` is the fingerprint of the vocabulary the run was trained with (None: not started).
    """
    run_lib.check_unlocked(source)
    info = run_lib.load_prepared(source, required=True)
    _check_prepared_settings(source, config, settings=info.get("settings", {}))
    vocabulary = run_lib.load_vocabulary(source)
    run_lib.check_data(source, info, vocabulary=vocabulary)
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


def _check_prepared_settings(source: str, config: config_lib.Config, *, settings: dict) -> None:
    """Refuse a prepared directory whose `settings` (prepared.json's) differ from this run's data settings."""
    for key in ("representation", "transpose", "max_duration", "classic_step", "normalize_key"):
        if key in settings and settings[key] != getattr(config.data, key):
            raise run_lib.RunError(f"{source} was prepared with data.{key}={settings[key]!r} but this run has "
                                   f"{getattr(config.data, key)!r}; pass --set data.{key}={settings[key]} "
                                   "or prepare again")
    if settings.get("controls", False) != config.data.controls:
        had = bool(settings.get("controls", False))
        raise run_lib.RunError(f"{source} was prepared with data.controls={had} but this run has "
                               f"{config.data.controls}; pass --set data.controls={str(had).lower()} "
                               "or prepare again")
    if settings.get("infill") and settings.get("infill_window") != config.data.seq_length:
        raise run_lib.RunError(f"{source} was prepared with infilling examples of data.seq_length="
                               f"{settings.get('infill_window')} but this run has {config.data.seq_length}; pass "
                               f"--set data.seq_length={settings.get('infill_window')} or prepare again")
    if settings.get("infill") and settings.get("infill_format") != 3:
        raise run_lib.RunError(f"{source} was prepared with fill-in-the-middle examples of an older layout (begun "
                               "with <piece>, or without the gap's length): prepare it again")
    if settings.get("infill", False) != (config.data.infill_rate > 0):
        had = bool(settings.get("infill", False))
        raise run_lib.RunError(f"{source} was prepared {'with' if had else 'without'} infilling but this run has "
                               f"data.infill_rate={config.data.infill_rate}; pass --set data.infill_rate="
                               f"{'0.25' if had else '0'} or prepare again")


@dataclasses.dataclass(frozen=True)
class Stop:
    """Why training ended: `code` (completed | early_stopping | time_budget | nan_loss) and the sentence saying so.

    Both are None for a backup that records no stop.
    """

    code: str | None
    reason: str | None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the epochs did: their history, why they ended, and the lowest validation loss a model was kept for.

    `steps_per_epoch` counts the steps of epochs recorded before each epoch kept its own.
    """

    history: list[dict]
    stop: Stop
    steps_per_epoch: int
    best: float = math.inf


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The training batches (`make_train_data(input_context=None)`), the validation windows, and the epochs left.

    `validation_pieces` (the held-out pieces' ids) is set when the run carries its state
    (train.carry_state): it is then scored on whole pieces, not windows (`validate`).
    """

    make_train_data: Callable
    validation_data: Any
    first_epoch: int
    steps_per_epoch: int
    validation_pieces: list | None = None
    boundary_id: int = 2

    def validate(self, model) -> dict:
        """The held-out loss and accuracy every epoch is judged by: of the windows, or of whole pieces."""
        if self.validation_pieces is not None:
            return evaluate_pieces(model, self.validation_pieces, boundary_id=self.boundary_id)
        return evaluate_windows(model, self.validation_data)


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the phases of one train() call share, filled in as they learn it."""

    config: config_lib.Config
    run_dir: str
    work_dir: str  # run_dir, or a temporary directory on the workers that are not the chief
    cluster: distributed.Cluster | None
    strategy: Any  # a tf.distribute.Strategy: TensorFlow is not imported before training starts
    base: finetune.Base | None
    show_progress: bool
    log: Callable
    started: float
    info: run_lib.Prepared | None = None
    vocabulary: Vocabulary | None = None
    overlap: list = dataclasses.field(default_factory=list)  # held-out pieces the base trained on, allowed
    backup: run_lib.BackupRecord | None = None

    @property
    def chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief


@dataclasses.dataclass(frozen=True)
class _Trained:
    """The model being trained, its callbacks (RunProgress first) and what is saved with it."""

    model: Any
    progress: Any  # a callbacks.RunProgress: Keras is not imported before training starts
    callbacks: list
    metadata: dict
    sizes: dict


def train(config: config_lib.Config, run_dir: str, *, show_progress: bool = True,
          log=print) -> run_lib.TrainingRecord:
    """Prepare (or reuse) data, fit (or resume), and write the run directory. Returns metrics.json.

    This is `keras_music.train(config, run_dir)`. Unlike the command it writes no
    samples and leaves `runs/latest` alone; `keras_music.Generator(run_dir)` generates.

    The run directory is locked for the whole call (one writer at a time), and a run
    that has started training is only ever continued with its own settings: the
    settings are compared before anything is written. Rerunning a finished run
    changes nothing. Under train.strategy=multi_worker every worker runs this; only
    the chief writes the run directory, the others work in a temporary directory and
    read the chief's backup to resume. A loss that becomes NaN or infinite stops
    training with TrainingDiverged; the best earlier epoch is kept.
    """
    cluster = distributed.Cluster() if config.train.strategy == "multi_worker" else None
    chief = cluster is None or cluster.is_chief
    with run_lib.lock(run_dir, COMMAND) if chief else contextlib.nullcontext():
        if chief:
            run_lib.check_settings(run_dir, config)
        run = _with_data(_set_up(config, run_dir, cluster=cluster, show_progress=show_progress and chief, log=log))
        run = dataclasses.replace(run, backup=read_backup(run_dir, config))
        done = finished_run(run_dir, run.backup, config=config, vocabulary=run.vocabulary, log=run.log) \
            if chief else None
        if done is not None:
            return done
        inputs = _inputs(run)
        trained = _build(run, inputs)
        outcome = _train_epochs(run, trained, inputs=inputs)
        metrics = _training_record(run, trained, inputs=inputs, outcome=outcome)
        return _keep(run, trained, metrics=metrics)


def _quiet(*args, **kwargs) -> None:
    """The log of the workers that are not the chief: the chief reports."""


def _set_up(config: config_lib.Config, run_dir: str, *, cluster: distributed.Cluster | None, show_progress: bool,
            log) -> _Run:
    """The strategy (before any other TensorFlow work), the directory this process writes, and a fine-tune's base."""
    chief = cluster is None or cluster.is_chief
    strategy = distributed.distribution_strategy(config.train.strategy)
    work_dir = run_dir if chief else tempfile.mkdtemp(prefix="keras_music-worker-")
    base = None
    if config.train.init_from:
        # Checked before anything is written: a base that is unfinished, damaged or made
        # with other token settings or model sizes is refused in one line.
        base = finetune.load_base(config.train.init_from)
        finetune.check_compatible(base, config)
    storage.makedirs(work_dir)
    return _Run(config=config, run_dir=run_dir, work_dir=work_dir, cluster=cluster, strategy=strategy, base=base,
                show_progress=show_progress, log=log if chief else _quiet, started=time.time())


def _with_data(run: _Run) -> _Run:
    """The run with its prepared data and vocabulary (a fine-tune's held-out pieces checked); config.yaml written."""
    base = run.base
    info = prepare_run(run.config, run.work_dir, show_progress=run.show_progress, log=run.log,
                       base_vocabulary=base.vocabulary if base else None)
    vocabulary = run_lib.load_vocabulary(run.work_dir)
    overlap = (finetune.check_held_out(base, run.work_dir, vocabulary=vocabulary, info=info,
                                       allow=run.config.train.allow_held_out_overlap, log=run.log)
               if base else [])
    run_lib.write_config(run.work_dir, run.config)
    return dataclasses.replace(run, info=info, vocabulary=vocabulary, overlap=overlap)


def _inputs(run: _Run) -> Inputs:
    """Batches per epoch, the seeds, and the input pipelines from the epoch the run starts or resumes at."""
    train_cfg = run.config.train
    steps_per_epoch = checked_steps(run.config, run.info, replicas=run.strategy.num_replicas_in_sync)
    seed_everything(train_cfg)
    first_epoch = run.backup["next_epoch"] if run.backup else 0
    if run.backup and not run.backup.get("stopped_reason") and first_epoch < train_cfg.epochs:
        run.log(f"resuming {run.run_dir} at epoch {first_epoch + 1} of {train_cfg.epochs}")
    return input_pipelines(run.config, run.work_dir, info=run.info, vocabulary=run.vocabulary,
                           steps_per_epoch=steps_per_epoch, first_epoch=first_epoch)


def _build(run: _Run, inputs: Inputs) -> _Trained:
    """The model (the backup's, a fine-tune's start, or new) and its callbacks; logs its sizes."""
    from keras_music import callbacks as callbacks_lib, model as model_lib

    config, base, vocabulary = run.config, run.base, run.vocabulary
    with run.strategy.scope():
        model = build_or_resume(config, run.run_dir, backup=run.backup, vocabulary_size=len(vocabulary),
                                steps_per_epoch=inputs.steps_per_epoch,
                                start=(lambda: finetune.initial_model(base, vocabulary, dropout=config.model.dropout))
                                if base else None)
    metadata = {"vocabulary_fingerprint": vocabulary.fingerprint(), "vocabulary_size": len(vocabulary)}
    progress, callbacks = callbacks_lib.make_callbacks(config, run.work_dir, steps_per_epoch=inputs.steps_per_epoch,
                                                       backup=run.backup, log=run.log,
                                                       show_progress=run.show_progress, metadata=metadata)
    if base and run.backup is None:
        # The model it starts from competes with every epoch for the kept model: a fine-tune
        # never ends worse on its held-out pieces than the base it started from.
        progress.best = inputs.validate(model)["loss"]
        progress.backups.save_best(model)
    sizes = model_lib.describe(model)
    run.log(f"model: {sizes['num_layers']} x LSTM({sizes['hidden_size']}), {sizes['parameters']:,} parameters, "
            f"vocabulary {sizes['vocabulary_size']}; {inputs.steps_per_epoch} steps/epoch of "
            f"{config.train.batch_size} x {config.data.seq_length} tokens"
            + (f"; {run.cluster.num_workers} workers" if run.cluster else ""))
    return _Trained(model, progress, callbacks, metadata, sizes)


def _train_epochs(run: _Run, trained: _Trained, *, inputs: Inputs) -> Outcome:
    """Fit the epochs left, unless an earlier process recorded a stop; how the epochs ended."""
    earlier = earlier_stop(run.backup)
    if inputs.first_epoch < run.config.train.epochs and not earlier.reason:
        fit(trained.model, inputs, config=run.config, strategy=run.strategy, progress=trained.progress,
            callbacks=trained.callbacks)
    progress = trained.progress
    stop = Stop(progress.stopped or earlier.code or "completed", progress.stopped_reason or earlier.reason)
    return Outcome(progress.history, stop, steps_per_epoch=inputs.steps_per_epoch, best=progress.best)


def _training_record(run: _Run, trained: _Trained, *, inputs: Inputs, outcome: Outcome) -> run_lib.TrainingRecord:
    """The kept model's weights restored and scored: metrics.json (a fine-tune's with where it started)."""
    restore_best(trained.model, outcome.stop, work_dir=run.work_dir, run_dir=run.run_dir,
                 learning_rate=run.config.train.learning_rate)
    metrics = summarize(run.config, outcome, evaluation=inputs.validate(trained.model),
                        sizes=trained.sizes, info=run.info, replicas=int(run.strategy.num_replicas_in_sync),
                        wall_seconds=time.time() - run.started + (run.backup or {}).get("elapsed", 0.0))
    if run.base:
        # The same held-out windows (or whole pieces) scored by the model the fine-tune started from: whether
        # fine-tuning helped is then one comparison in metrics.json.
        start = inputs.validate(finetune.initial_model(run.base, run.vocabulary, dropout=run.config.model.dropout)) \
            if run.chief else None
        metrics["init_from"] = finetune.record(run.base, run.vocabulary, overlap=run.overlap, start=start)
    return metrics


def _keep(run: _Run, trained: _Trained, *, metrics: run_lib.TrainingRecord) -> run_lib.TrainingRecord:
    """Write the results (the chief) or remove the worker's temporary directory; a NaN stop raises TrainingDiverged."""
    if not run.chief:
        storage.rmtree(run.work_dir)
        return metrics
    save_results(run.run_dir, trained.model, metrics=metrics, metadata=trained.metadata, sizes=trained.sizes)
    if metrics["stopped"] == "nan_loss":
        raise _diverged(run.run_dir, storage.json_ready(metrics), config=run.config)
    return metrics


def finished_run(run_dir: str, backup: run_lib.BackupRecord | None, *, config, vocabulary,
                 log) -> run_lib.TrainingRecord | None:
    """metrics.json of a run that has already finished (and whose model checks out), else None.

    A finished run is reported and left as it is; one that stopped on a NaN loss raises TrainingDiverged again.
    """
    if not backup or not (backup.get("stopped") or backup.get("stopped_reason")
                          or backup.get("next_epoch", 0) >= config.train.epochs):
        return None
    done = run_lib.read_training_record(run_dir)
    if done is None or not storage.exists(run_lib.path(run_dir, run_lib.MODEL)):
        return None
    try:
        run_lib.load_model(run_dir, vocabulary)
    except (OSError, ValueError):  # RunError is a ValueError: a damaged model is written again
        return None
    log(f"{run_dir} has finished training ({done.get('epochs')} epochs, {done.get('stopped_detail')}); nothing to do")
    if done.get("stopped") == "nan_loss":
        raise _diverged(run_dir, done, config=config)
    return done


def seed_everything(train_cfg) -> None:
    """Seed Python, numpy, TensorFlow and Keras from train.seed; train.deterministic also fixes op order."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(train_cfg.seed)
    if train_cfg.deterministic:
        tf.config.experimental.enable_op_determinism()


def checked_steps(config: config_lib.Config, info: run_lib.Prepared, *, replicas: int) -> int:
    """Batches per epoch, once the splits are known to fill a batch and a validation window."""
    from keras_music import dataset

    data, train_cfg = config.data, config.train
    steps_per_epoch = epoch_steps(config, shortest_train_lengths(config, info))
    if steps_per_epoch < 1:
        stride = data.window_stride or data.seq_length
        windows = dataset.count_windows(shortest_train_lengths(config, info), data.seq_length, stride=stride)
        raise run_lib.RunError(f"the training split has {info['tokens']['train']} tokens, {windows} windows of "
                               f"data.seq_length+1={data.seq_length + 1}: fewer than one batch of "
                               f"train.batch_size={train_cfg.batch_size}; lower them or add data")
    if dataset.count_windows(info["lengths"]["validation"], data.seq_length, stride=data.seq_length) < 1:
        raise run_lib.RunError(f"the validation split has {info['tokens']['validation']} tokens: not one window of "
                               f"data.seq_length+1={data.seq_length + 1}, so the validation loss would mean "
                               "nothing; lower data.seq_length or raise data.val_fraction")
    if train_cfg.batch_size % replicas:
        raise run_lib.RunError(f"train.batch_size={train_cfg.batch_size} must be divisible by the "
                               f"{replicas} replicas of train.strategy={train_cfg.strategy}")
    return steps_per_epoch


def input_pipelines(config: config_lib.Config, work_dir: str, *, info: run_lib.Prepared, vocabulary,
                    steps_per_epoch: int, first_epoch: int) -> Inputs:
    """The training batches from `first_epoch` on and the validation windows.

    Only the training stream is transposed (data.transpose); under tf.distribute each
    worker's input context picks its rows of every global batch.
    """
    from keras_music import dataset

    data, train_cfg = config.data, config.train
    train_files = run_lib.shard_paths(work_dir, "train", info=info)
    validation_files = run_lib.shard_paths(work_dir, "validation", info=info)
    tokens = dataset.TokenTables(
        boundary_id=vocabulary.boundary_id,
        transposition=vocabulary.transposition_table(data.transpose) if data.transpose else None,
        is_control=[events.is_control(t) for t in vocabulary.tokens] if data.controls else None)
    span = dataset.EpochSpan(steps_per_epoch, first_epoch=first_epoch)

    def make_train_data(context=None):
        if train_cfg.carry_state:
            return dataset.carried_dataset(train_files, data, train=train_cfg, span=span, tokens=tokens,
                                           piece_count=len(info["lengths"]["train"]))
        worker = (context.input_pipeline_id, context.num_input_pipelines) if context is not None else None
        return dataset.training_dataset(train_files, data, train=train_cfg, span=span, tokens=tokens,
                                        worker_slice=worker, piece_count=len(info["lengths"]["train"]))

    validation_data = dataset.evaluation_dataset(validation_files, data.seq_length, batch_size=train_cfg.batch_size,
                                                 boundary_id=vocabulary.boundary_id)
    pieces = dataset.read_pieces(validation_files) if train_cfg.carry_state else None
    return Inputs(make_train_data, validation_data, first_epoch=first_epoch, steps_per_epoch=steps_per_epoch,
                  validation_pieces=pieces, boundary_id=vocabulary.boundary_id)


def build_or_resume(config: config_lib.Config, run_dir: str, *, backup: run_lib.BackupRecord | None,
                    vocabulary_size: int, steps_per_epoch: int, start=None):
    """The backed-up model to resume from, or a new compiled one. Call it inside the strategy's scope.

    `start()` gives the new model's first weights (a fine-tune's, from its base); without
    it they are initialised at random. A resumed run always continues from its own backup.
    """
    import keras

    from keras_music import callbacks as callbacks_lib, model as model_lib

    train_cfg, model_cfg = config.train, config.model
    if backup and backup.get("model"):
        return _load_saved(run_lib.path(run_dir, run_lib.BACKUP, backup["model"]),
                           f"remove {run_lib.path(run_dir, run_lib.BACKUP)} to train again from the first epoch, "
                           "or use a new --run-dir")
    model = start() if start is not None else model_lib.build_model(
        vocabulary_size, model_cfg.embedding_size, model_cfg.hidden_size, model_cfg.num_layers, model_cfg.dropout)
    # The custom loop clips after summing replicas' gradients, so its optimizer must not clip again.
    clip = {} if train_cfg.strategy == "multi_worker" else {"clipnorm": train_cfg.clipnorm}
    learning_rate = callbacks_lib.learning_rate_schedule(train_cfg, steps_per_epoch * train_cfg.epochs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate, **clip),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def earlier_stop(backup: run_lib.BackupRecord | None) -> Stop:
    """The stop an earlier process recorded in the backup, or Stop(None, None)."""
    reason = backup.get("stopped_reason") if backup else None
    code = backup.get("stopped") if backup else None
    if reason and not code:
        # Backups written before the code existed carry only the sentence.
        code = "time_budget" if "time budget" in reason else "nan_loss" if "NaN" in reason else "early_stopping"
    return Stop(code, reason)


def fit(model, inputs: Inputs, *, config: config_lib.Config, strategy, progress, callbacks) -> None:
    """Train epochs inputs.first_epoch+1..train.epochs: Keras `fit`, or the custom loop under multi_worker."""
    train_cfg = config.train
    if train_cfg.strategy == "multi_worker":
        fit_custom(model, inputs, config=config, strategy=strategy, progress=progress)
        return
    if train_cfg.carry_state:
        fit_carried(model, inputs, config=config, progress=progress)
        return
    # Keras warns about `shuffle` and end-of-data for every tf.data input; the pipeline
    # shuffles itself and yields exactly steps_per_epoch batches per epoch.
    warnings.filterwarnings("ignore", message=".*shuffle=True.*", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*ran out of data.*", category=UserWarning)
    # RunProgress draws the progress line and one summary line per epoch; Keras' own bar stays off.
    model.fit(inputs.make_train_data(), validation_data=inputs.validation_data, epochs=train_cfg.epochs,
              initial_epoch=inputs.first_epoch, steps_per_epoch=inputs.steps_per_epoch, callbacks=callbacks,
              verbose=0)


def _replica_steps(strategy, model, *, global_tokens: float, clipnorm: float):
    """(train_step(iterator) -> summed loss and hits, agree_to_stop(flag) -> sum over workers) as tf.functions."""
    import tensorflow as tf

    optimizer = model.optimizer

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

    return train_step, agree_to_stop


def fit_custom(model, inputs: Inputs, *, config: config_lib.Config, strategy, progress) -> None:
    """A training loop under strategy.run, for MultiWorkerMirroredStrategy.

    Keras `fit` fails under MultiWorkerMirroredStrategy (PerReplica conversion error),
    so this loop drives the same RunProgress callback (checkpoints, backups, early
    stopping) by hand. Gradients are summed across replicas before the per-variable
    clipping, so each update equals the single-process one for the same global batch.
    """
    import tensorflow as tf

    steps_per_epoch = inputs.steps_per_epoch
    iterator = iter(strategy.distribute_datasets_from_function(inputs.make_train_data))
    global_tokens = float(config.train.batch_size * config.data.seq_length)
    train_step, agree_to_stop = _replica_steps(strategy, model, global_tokens=global_tokens,
                                               clipnorm=config.train.clipnorm)
    progress.set_model(model)
    progress.on_train_begin()
    for epoch in range(inputs.first_epoch, config.train.epochs):
        model.stop_training = False
        progress.on_epoch_begin(epoch)
        loss_sum, hit_sum = 0.0, 0.0
        for batch in range(steps_per_epoch):
            loss, hits = train_step(iterator)
            loss_sum += float(loss)
            hit_sum += float(hits)
            progress.on_train_batch_end(batch, {"loss": loss_sum / (batch + 1)})
        validation = inputs.validate(model)
        logs = {"loss": loss_sum / steps_per_epoch, "accuracy": hit_sum / (steps_per_epoch * global_tokens),
                "val_loss": validation["loss"], "val_accuracy": validation["accuracy"]}
        progress.on_epoch_end(epoch, logs)
        if float(agree_to_stop(tf.constant(1.0 if model.stop_training else 0.0))) > 0:
            break


def fit_carried(model, inputs: Inputs, *, config: config_lib.Config, progress) -> None:
    """A training loop that carries the LSTM state from each batch to the next (train.carry_state).

    The batches come from `dataset.carried_dataset`: row r of a batch continues row r of the one
    before, so each row is a long stream of whole pieces read window by window (truncated
    backpropagation through time: gradients stop at the window's start, the state does not).
    The state starts at zero every epoch, as the rows start anew. It drives the same RunProgress
    callback as `fit` (checkpoints, backups, early stopping, the time budget and the learning-rate
    schedule); the model's optimizer (with its clipnorm) updates the model's own weights, and each
    epoch is judged on whole held-out pieces (`Inputs.validate`).
    """
    import tensorflow as tf

    train_step, state = carried_train_step(model, config.train.batch_size)
    iterator = iter(inputs.make_train_data())
    progress.set_model(model)
    progress.on_train_begin()
    for epoch in range(inputs.first_epoch, config.train.epochs):
        model.stop_training = False
        progress.on_epoch_begin(epoch)
        state.assign(tf.zeros_like(state))
        loss_sum, hit_sum, steps = 0.0, 0.0, 0
        for batch in range(inputs.steps_per_epoch):
            loss, hits = train_step(*next(iterator))
            loss_sum, hit_sum, steps = loss_sum + float(loss), hit_sum + float(hits), steps + 1
            progress.on_train_batch_end(batch, {"loss": loss_sum / steps})
            if not math.isfinite(float(loss)):
                model.stop_training = True
            if model.stop_training:
                break  # the time budget ran out or the loss diverged: the run ends after this epoch's record
        validation = inputs.validate(model)
        progress.on_epoch_end(epoch, {"loss": loss_sum / max(1, steps), "accuracy": hit_sum / max(1, steps),
                                      "val_loss": validation["loss"], "val_accuracy": validation["accuracy"]})
        if model.stop_training:
            break


def carried_train_step(model, batch_size: int):
    """(train_step(x, y) -> (mean loss, accuracy), the state variable it carries [batch, 2*layers, hidden]).

    One update of the compiled `model` by its own optimizer from the state the previous call left,
    which it then replaces; assign zeros to the state to start the rows anew.
    """
    import tensorflow as tf

    from keras_music import model as model_lib

    carried = model_lib.CarriedModel(model)
    state = tf.Variable(carried.initial_state(batch_size), trainable=False, name="carried_state")
    optimizer, variables = model.optimizer, model.trainable_variables

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            probabilities, next_state = carried(x, state, training=True)
            picked = tf.gather(probabilities, y, batch_dims=2)
            loss = -tf.reduce_mean(tf.math.log(tf.maximum(picked, 1e-7)))
        optimizer.apply(tape.gradient(loss, variables), variables)
        state.assign(next_state)
        hits = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(probabilities, -1, output_type=tf.int32), y), tf.float32))
        return loss, hits

    return train_step, state


def restore_best(model, stop: Stop, *, work_dir: str, run_dir: str, learning_rate: float) -> None:
    """Give the model the best epoch's weights (checkpoints/best.keras); a run that diverged before it has none."""
    best_path = run_lib.path(work_dir, *run_lib.BEST_CHECKPOINT)
    if storage.exists(best_path):
        with warnings.catch_warnings():
            # A fine-tune's starting model is saved before its optimizer has state; only the weights are used.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer", category=UserWarning)
            best = _load_saved(best_path, f"remove it and {run_lib.path(run_dir, run_lib.BACKUP)} to train again, "
                                          "or use a new --run-dir")
        model.set_weights(best.get_weights())
    elif stop.code == "nan_loss":
        raise TrainingDiverged(f"training stopped: {stop.reason} before any epoch had a finite validation loss, so "
                               f"no model was kept (train.learning_rate={learning_rate:g}); lower "
                               "train.learning_rate (or train.clipnorm) and train again in a new --run-dir")


def summarize(config: config_lib.Config, outcome: Outcome, *, evaluation: dict, sizes: dict, info: run_lib.Prepared,
              replicas: int, wall_seconds: float) -> run_lib.TrainingRecord:
    """metrics.json: why training ended, the kept model's held-out scores, speed, sizes and the epoch history.

    `outcome.best` is the lowest validation loss the run kept a model for; below every epoch's
    it was the starting model's (a fine-tune whose epochs never beat its base): best_epoch 0.
    """
    history = outcome.history
    tokens_per_step = config.train.batch_size * config.data.seq_length
    train_seconds = sum(h.get("seconds", 0.0) for h in history)
    tokens_seen = sum(int(h.get("steps", outcome.steps_per_epoch)) for h in history) * tokens_per_step
    finite = [h.get("val_loss", math.inf) for h in history]
    finite = [v if isinstance(v, (int, float)) and math.isfinite(v) else math.inf for v in finite]
    return {
        "epochs": len(history),
        # Why training ended: completed | early_stopping | time_budget | nan_loss.
        "stopped": outcome.stop.code,
        "stopped_detail": outcome.stop.reason or ("all epochs trained" if history else "nothing to train"),
        "train_loss": history[-1]["loss"] if history else None,
        "val_loss": float(evaluation["loss"]),
        "val_perplexity": float(np.exp(evaluation["loss"])),
        "val_accuracy": float(evaluation["accuracy"]),
        "best_epoch": (0 if min(finite) > outcome.best else int(np.argmin(finite) + 1)) if history else None,
        "tokens_seen": tokens_seen,
        "tokens_per_second": tokens_seen / train_seconds if train_seconds else None,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(wall_seconds, 1),
        "parameters": sizes["parameters"],
        "vocabulary_size": sizes["vocabulary_size"],
        "validation_unknown_rate": info.get("validation_unknown_rate"),
        "strategy": config.train.strategy,
        "replicas": replicas,
        "history": history,
    }


def save_results(run_dir: str, model, *, metrics: run_lib.TrainingRecord, metadata: dict, sizes: dict) -> None:
    """model.keras (the kept weights), metrics.json and training_curves.png."""
    from keras_music import model as model_lib

    with storage.atomic_local_path(run_lib.path(run_dir, run_lib.MODEL)) as tmp:
        model_lib.save_model(model, tmp, metadata=metadata)
    storage.write_json(run_lib.path(run_dir, run_lib.TRAINING_RECORD), metrics)
    if metrics["history"]:
        name = os.path.basename(str(run_dir).rstrip("/"))
        plot_curves(metrics["history"], run_lib.path(run_dir, run_lib.TRAINING_CURVES),
                    title=f"{name}: {sizes['num_layers']} x LSTM({sizes['hidden_size']})")


def plot_curves(history: list[dict], out_path: str, *, title: str = "") -> None:
    epochs = [h["epoch"] for h in history]
    figure, axes = plots.pyplot().subplots(1, 2, figsize=(10, 4))
    panels = (("loss", "cross-entropy (nats/token)"), ("accuracy", "top-1 accuracy"))
    for axis, (metric, ylabel) in zip(axes, panels):
        for key, label in ((metric, "train"), ("val_" + metric, "validation")):
            if any(key in h for h in history):
                axis.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=label)
        axis.set_xlabel("epoch")
        axis.set_ylabel(ylabel)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.suptitle(title or "training curves")
    figure.tight_layout()
    plots.save(figure, out_path, dpi=100)


def read_backup(run_dir: str, config) -> run_lib.BackupRecord | None:
    """backup/state.json, where an interrupted run resumes (None: there is none); refused if its settings differ."""
    backup = run_lib.read_backup_record(run_dir)
    if backup is None:
        return None
    recorded = backup.get("config")
    if recorded != config_lib.to_dict(config) and not _same_settings(recorded, config):
        raise run_lib.RunError(f"{run_dir} holds an interrupted run with different settings; use a new --run-dir "
                               "or the same config to resume")
    return backup


def _same_settings(recorded, config) -> bool:
    """Whether a backup's recorded settings resolve to `config` (keys added since take their defaults)."""
    try:
        return isinstance(recorded, dict) and config_lib.from_dict(recorded) == config
    except config_lib.ConfigError:
        return False


def _load_saved(file: str, fix: str):
    """A checkpoint or backup written by this module, loaded in safe mode and checked for finite weights."""
    import keras

    try:
        model = keras.saving.load_model(file, safe_mode=True)
    except Exception as error:  # zip, HDF5 and Keras errors for a damaged file
        text = str(error).strip().splitlines()
        raise run_lib.RunError(f"{file} cannot be loaded ({type(error).__name__}: {text[0] if text else ''}); "
                               f"{fix}") from None
    if not all(np.all(np.isfinite(w)) for w in model.get_weights()):
        raise run_lib.RunError(f"{file} holds NaN or infinite weights; {fix}")
    return model


def _diverged(run_dir: str, metrics: run_lib.TrainingRecord, *, config) -> TrainingDiverged:
    best = metrics.get("best_epoch")
    return TrainingDiverged(
        f"training stopped: {metrics.get('stopped_detail', 'the loss became NaN')} (train.learning_rate="
        f"{config.train.learning_rate:g}); {run_lib.path(run_dir, run_lib.MODEL)} holds the best earlier epoch "
        f"({best}, validation loss {metrics['val_loss']:.4f}). Lower train.learning_rate (or "
        "train.clipnorm) and train again in a new --run-dir")


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


def evaluate_pieces(model, pieces, *, boundary_id: int) -> dict:
    """Mean cross-entropy and accuracy over every token of the held-out pieces, each read whole from its
    start (as `evaluate` scores them and a generator writes them), for runs that carry their state."""
    from keras_music import model as model_lib

    log_probs, hits = model_lib.token_log_probs(model, pieces, boundary_id=boundary_id)
    count = sum(len(p) for p in log_probs)
    if count == 0:
        raise run_lib.RunError("the validation data holds no piece to evaluate on: the validation shards are "
                               "missing or empty; prepare the data again (rerun the same train command)")
    return {"loss": -float(sum(p.sum() for p in log_probs)) / count,
            "accuracy": float(sum(h.sum() for h in hits)) / count, "tokens": count}


def shortest_train_lengths(config: config_lib.Config, info: dict) -> list[int]:
    """The training pieces' lengths once every control the training stream may drop is gone.

    Epochs are cut from these, so an epoch whose dropout happened to keep few controls
    still fills every one of its batches.
    """
    lengths = info["lengths"]["train"]
    controls = (info.get("control_tokens") or {}).get("train")
    if config.data.controls and (config.data.control_dropout > 0 or config.data.control_token_dropout > 0) \
            and controls:
        return [n - c for n, c in zip(lengths, controls)]
    return lengths


def epoch_steps(config: config_lib.Config, train_lengths) -> int:
    """Batches per epoch: the training windows the pipeline cuts, in whole batches."""
    from keras_music import dataset

    stride = config.data.window_stride or config.data.seq_length
    return dataset.count_windows(train_lengths, config.data.seq_length, stride=stride) // config.train.batch_size


def print_summary(run_dir: str, metrics: run_lib.TrainingRecord, *, samples: list[str]) -> None:
    """The end of `python -m keras_music.train`: the held-out scores, the samples and the next commands."""
    print(json.dumps({k: metrics[k] for k in ("val_loss", "val_perplexity", "val_accuracy", "epochs",
                                               "wall_seconds")}, indent=None))
    print(f"\nrun directory: {run_dir}")
    print(f"held-out: loss {metrics['val_loss']:.4f} nats/token, perplexity {metrics['val_perplexity']:.3f}, "
          f"accuracy {metrics['val_accuracy']:.3f} ({metrics['epochs']} epochs, {metrics['stopped_detail']}, "
          f"{metrics['wall_seconds'] / 60:.1f} min)")
    if samples:
        print(f"samples: {', '.join(samples)}")
    print("next:")
    print("  " + cli.command_line("python -m keras_music.generate", "--run-dir", run_dir, "--num-samples", "4"))
    print("  " + cli.command_line("python -m keras_music.evaluate", "--run-dir", run_dir))
    print("  " + cli.command_line("python -m keras_music.export", "--run-dir", run_dir))


def main(argv=None) -> int:
    parser, args = parse_args(argv)

    with cli.user_errors(parser):
        config = resolve_config(args)
        if config.train.strategy == "multi_worker" and not args.run_dir:
            parser.error("train.strategy=multi_worker needs --run-dir: every worker must name the same run directory")
        chief = config.train.strategy != "multi_worker" or distributed.Cluster().is_chief
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
                samples = generate.write_training_samples(run_dir, config)
        print_summary(run_dir, metrics, samples=samples)
    cli.finish(0)



class _CallableModule(types.ModuleType):
    # `from keras_music import train` gives this module (a submodule always wins over a
    # package attribute of its name), so calling it must be the public train().
    def __call__(self, config: config_lib.Config, run_dir: str, *, show_progress: bool = True,
                 log=print) -> run_lib.TrainingRecord:
        return train(config, run_dir, show_progress=show_progress, log=log)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main()
