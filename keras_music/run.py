"""The run directory contract: where each artifact lives, who may write it, and how it is loaded and checked."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import re
import socket
import sys
import tempfile
from typing import TypedDict

import numpy as np

from keras_music import cli, config as config_lib, storage
from keras_music import controls, events
from keras_music.errors import KerasMusicError
from keras_music.vocabulary import Vocabulary, VocabularyError

CONFIG = "config.yaml"
VOCAB = "vocab.json"
MANIFEST = "corpus_manifest.json"
MODEL = "model.keras"
TRAINING_RECORD = "metrics.json"  # the training record (not the music metrics of music_metrics.py)
PREPARED = "prepared.json"
PREPARED_FORMAT = "keras_music.prepared"
DATA = "data"
BACKUP = "backup"
BACKUP_RECORD = "state.json"
BACKUP_MODEL_PREFIX = "model-"  # backup/model-<next epoch>.keras
LOGS = "logs"  # TensorBoard
BEST_CHECKPOINT = ("checkpoints", "best.keras")
TRAINING_CURVES = "training_curves.png"
GENERATED = "generated"
SAMPLES = "samples"
EVALUATION = "evaluation"
EVALUATION_JSON = "evaluation.json"
EVALUATION_MD = "evaluation.md"
EXPORT = "export"
EXPORT_REPORT = "export_report.json"
# Inside export/: the SavedModel for TensorFlow code, one .tflite per quantization, the vocabulary.
SAVED_MODEL = "saved_model"
TFLITE_FILES = {"none": "model.tflite", "float16": "model_float16.tflite", "dynamic": "model_dynamic.tflite"}
EXPORT_VOCAB = "vocab.json"
WEB = "web"
# Held by the one process that writes a directory (see `lock`).
LOCK = ".keras_music.lock"


class TrainingRecord(TypedDict, total=False):
    """metrics.json: what training did and how the kept model scores (written by `train`, read by later stages).

    Fields: `epochs` (epochs run), `stopped` (why: completed, early_stopping, budget, nan_loss) and
    `stopped_detail`, `train_loss`/`val_loss` (nats per token), `val_perplexity`, `val_accuracy`,
    `best_epoch` (0-based, of the kept model), `tokens_seen`, `tokens_per_second`, `train_seconds`,
    `wall_seconds`, `parameters`, `vocabulary_size`, `validation_unknown_rate`, `strategy`,
    `replicas`, `history` (one record per epoch) and, for a fine-tune, `init_from`.
    """

    epochs: int
    stopped: str
    stopped_detail: str
    train_loss: float
    val_loss: float
    val_perplexity: float
    val_accuracy: float
    best_epoch: int
    tokens_seen: int
    tokens_per_second: float
    train_seconds: float
    wall_seconds: float
    parameters: int
    vocabulary_size: int
    validation_unknown_rate: float
    strategy: str
    replicas: int
    history: list
    init_from: dict


class BackupRecord(TypedDict, total=False):
    """backup/state.json: where an interrupted training resumes (the backup, not an LSTM or grammar state).

    Fields: `next_epoch`, `model` (the backup model's file name in backup/), `history`, `best` (best
    validation loss so far), `wait` (epochs without improvement), `elapsed` (seconds trained),
    `stopped`/`stopped_reason` (set once training has ended), `steps_done`, `config` (the resolved
    config it was trained with) and `vocabulary_fingerprint`.
    """

    next_epoch: int
    model: str
    history: list
    best: float
    wait: int
    elapsed: float
    stopped: str | None
    stopped_reason: str | None
    steps_done: int
    config: dict
    vocabulary_fingerprint: str


class Prepared(TypedDict, total=False):
    """prepared.json: what the corpus stage wrote into data/ (checked by `check_prepared`).

    Fields: `format`/`version`, `settings` (the config keys that decide the tokens), `vocabulary_size`,
    `vocabulary_fingerprint`, per split `pieces`, `tokens`, `events`, `lengths` and `shards`, the
    validation split's `validation_unknown_tokens`/`_rate`/`validation_events`, `files` (source files
    per split), `timing` (the corpus's median tempo, metre and program), `seconds`, and for a run with
    controls or infilling `control_tokens`, `key_pitch_counts` (the key prior's counts,
    `controls.key_pitch_counts`) and `infill_examples`.
    """

    format: str
    version: int
    settings: dict
    vocabulary_size: int
    vocabulary_fingerprint: str
    pieces: dict
    tokens: dict
    events: dict
    lengths: dict
    shards: dict
    validation_unknown_tokens: int
    validation_unknown_rate: float
    validation_events: int
    files: dict
    timing: dict
    seconds: float
    control_tokens: dict
    key_pitch_counts: dict
    infill_examples: dict


class RunError(KerasMusicError, ValueError):
    """A run directory is missing a file, or its files do not fit together."""


class RunLocked(RunError):
    """Another live process is writing the directory."""


def path(run_dir: str, *parts: str) -> str:
    return storage.join(run_dir, *parts)


def export_command(run_dir: str) -> str:
    """The command that (re-)exports a run, to print in a message."""
    return cli.command_line("python -m keras_music.export", "--run-dir", run_dir)


def backup_model_name(next_epoch: int) -> str:
    """The backup model written before `next_epoch` starts."""
    return f"{BACKUP_MODEL_PREFIX}{next_epoch:04d}.keras"


def timestamped_dir(root: str, prefix: str = "") -> str:
    """root/<prefix><YYYYmmdd-HHMMSS>, with -2, -3, ... appended when that name is taken (not created)."""
    stamp = prefix + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = storage.join(root, stamp)
    suffix = 1
    while storage.exists(out):
        suffix += 1
        out = storage.join(root, f"{stamp}-{suffix}")
    return out


def new_run_dir(root: str = "runs") -> str:
    """A new, empty runs/<timestamp> directory."""
    run_dir = timestamped_dir(root)
    storage.makedirs(run_dir)
    return run_dir


def point_latest(run_dir: str) -> None:
    """runs/latest -> the newest run (local runs only; replaced atomically)."""
    if storage.is_remote(run_dir):
        return
    root = os.path.dirname(os.path.abspath(run_dir))
    link = os.path.join(root, "latest")
    temporary = link + ".tmp"
    try:
        if os.path.lexists(temporary):
            os.remove(temporary)
        os.symlink(os.path.basename(os.path.abspath(run_dir)), temporary)
        os.replace(temporary, link)
    except OSError:
        pass  # symlinks may be unavailable; the run itself is complete


# ----------------------------------------------------------------------------- one writer at a time

class _Held:
    def __init__(self, file: str, descriptor: int | None, *, info: dict):
        self.file, self.descriptor, self.info, self.count = file, descriptor, info, 1


# Locks this process holds, by lock file: a stage that calls another (train writing its
# samples through generate) takes the same lock again instead of refusing itself.
_held: dict[str, _Held] = {}


def _owner_text(owner: dict | None) -> str:
    if not owner:
        return "another process (its lock file names no owner yet)"
    command = owner.get("command") or "keras_music"
    return f"pid {owner.get('pid')} on {owner.get('host')} ({command}, since {owner.get('started', '?')})"


def _read_owner(text: str) -> dict | None:
    try:
        owner = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _locked(directory: str, file: str, *, owner: dict | None) -> RunLocked:
    return RunLocked(f"{directory} is in use by {_owner_text(owner)}: one process writes a directory at a "
                     f"time; wait for it to finish or stop it. If it is no longer running, remove {file}")


def _lock_info(command: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command or " ".join(sys.argv)[:200],
            "started": datetime.datetime.now().isoformat(timespec="seconds")}


def _acquire_local(directory: str, file: str, command: str, log) -> _Held:
    import fcntl

    for _ in range(20):
        descriptor = os.open(file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(descriptor, 4096, 0).decode("utf-8", "replace")
            os.close(descriptor)
            raise _locked(directory, file, owner=_read_owner(text)) from None
        except OSError:
            # A file system without flock (some network and FUSE mounts): the owner's pid
            # and host in the file decide, as on object stores.
            os.close(descriptor)
            return _acquire_by_content(directory, file, command, log)
        # A releasing owner deletes the file before letting go: the file locked here
        # must still be the one at `file`, or another process may lock a new one.
        try:
            current = os.stat(file)
        except FileNotFoundError:
            current = None
        if current is None or not os.path.samestat(os.fstat(descriptor), current):
            os.close(descriptor)
            continue
        previous = _read_owner(os.pread(descriptor, 4096, 0).decode("utf-8", "replace"))
        here = socket.gethostname()
        if previous and previous.get("host") not in (None, here):
            # flock does not reach every network file system: an owner on another host
            # cannot be checked from here, so its lock stands until it is removed.
            os.close(descriptor)
            raise _locked(directory, file, owner=previous)
        if previous:
            log(f"{directory}: taking over the lock left by {_owner_text(previous)}, which is no longer running")
        info = _lock_info(command)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(info) + "\n").encode("utf-8"), 0)
        os.fsync(descriptor)
        return _Held(file, descriptor, info=info)
    raise RunLocked(f"{directory}: could not take the lock {file} (it keeps being replaced); try again")


def _acquire_by_content(directory: str, file: str, command: str, log) -> _Held:
    # Without an atomic exclusive create (object stores) or flock, this lock is advisory:
    # a writer that starts in the same instant as another may not see it.
    if storage.exists(file):
        try:
            owner = _read_owner(storage.read_text(file, 1 << 16))
        except (OSError, UnicodeDecodeError):
            owner = None
        here = socket.gethostname()
        if owner and owner.get("host") == here and not _alive(owner.get("pid")):
            log(f"{directory}: taking over the lock left by {_owner_text(owner)}, which is no longer running")
        elif owner or storage.is_remote(file):
            raise _locked(directory, file, owner=owner)
    info = _lock_info(command)
    storage.write_json(file, info)
    return _Held(file, None, info=info)


def _release(held: _Held) -> None:
    held.count -= 1
    if held.count:
        return
    _held.pop(held.file, None)
    if held.descriptor is None:
        with contextlib.suppress(Exception):
            storage.remove(held.file)
        return
    with contextlib.suppress(OSError):
        os.remove(held.file)  # while still holding it: see _acquire_local
    os.close(held.descriptor)


@contextlib.contextmanager
def lock(directory: str, command: str = "", log=None):
    """Own `directory` for writing while the block runs: an exclusive lock file with pid and host.

    A second writer refuses at once (RunLocked names the owner). A lock left by a
    process that died on this host is taken over, with a message through `log`
    (default: stderr). The same process may take a lock it holds again.
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    directory = str(directory)
    storage.makedirs(directory)
    file = storage.join(directory, LOCK)
    key = file if storage.is_remote(file) else os.path.realpath(file)
    held = _held.get(key)
    if held is not None:
        held.count += 1
    else:
        held = (_acquire_by_content if storage.is_remote(file) else _acquire_local)(directory, file, command, log)
        held.file = key if not storage.is_remote(file) else file
        _held[key] = held
    try:
        yield held.info
    finally:
        _release(held)


def lock_owner(directory: str) -> dict | None:
    """The owner of a live lock on `directory` (None when nobody writes it, or it is this process)."""
    file = storage.join(str(directory), LOCK)
    if storage.is_remote(file):
        if not storage.exists(file):
            return None
        owner = _read_owner(storage.read_text(file, 1 << 16))
        return owner if owner and not (owner.get("host") == socket.gethostname() and not _alive(owner.get("pid"))) \
            else None
    if os.path.realpath(file) in _held:
        return None
    import fcntl

    try:
        descriptor = os.open(file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_owner(os.pread(descriptor, 4096, 0).decode("utf-8", "replace")) or {}
    finally:
        os.close(descriptor)
    return None


def check_unlocked(directory: str) -> None:
    """Refuse to read a directory that another process is writing right now."""
    owner = lock_owner(directory)
    if owner is not None:
        raise _locked(directory, storage.join(str(directory), LOCK), owner=owner)


# ----------------------------------------------------------------------------- settings

def training_started(run_dir: str) -> bool:
    """Whether the run holds training results (a backup, a checkpoint, a model or metrics)."""
    return any(storage.exists(path(run_dir, *parts)) for parts in
               ((BACKUP, BACKUP_RECORD), BEST_CHECKPOINT, (MODEL,), (TRAINING_RECORD,)))


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def setting_differences(recorded: config_lib.Config, requested: config_lib.Config) -> list[str]:
    """`key: recorded -> requested` for every setting that differs."""
    before, after = _flat(config_lib.to_dict(recorded)), _flat(config_lib.to_dict(requested))
    return [f"{key} {before.get(key)!r} -> {after.get(key)!r}" for key in after if before.get(key) != after.get(key)]


def check_settings(run_dir: str, config: config_lib.Config) -> None:
    """Before anything is written: a run that has started training is only continued with its own settings.

    Raises RunError naming the settings that differ; the run directory is not touched.
    """
    if not training_started(run_dir):
        return
    file = path(run_dir, CONFIG)
    recorded = None
    if storage.exists(file):
        recorded = load_config(run_dir)
    else:
        state = read_backup_record(run_dir)
        if state and isinstance(state.get("config"), dict):
            try:
                recorded = config_lib.from_dict(state["config"])
            except config_lib.ConfigError:
                recorded = None
    if recorded is None:
        raise RunError(f"{run_dir} holds training results but no readable {CONFIG}: its settings are unknown, so "
                       "it is left as it is; train in a new --run-dir")
    differences = setting_differences(recorded, config)
    if differences:
        shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
        raise RunError(f"{run_dir} holds a run trained with other settings ({shown}); nothing was changed. Use a "
                       f"new --run-dir for these settings, or rerun with the run's own settings ({file}) to "
                       "resume or reuse it")


def write_config(run_dir: str, config: config_lib.Config) -> None:
    """config.yaml, written only when its content changes (a rerun leaves it as it is)."""
    file = path(run_dir, CONFIG)
    text = config_lib.dump(config)
    with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
        if storage.exists(file) and storage.read_text(file, 1 << 20) == text:
            return
    storage.write_text(file, text)


def read_backup_record(run_dir: str) -> BackupRecord | None:
    """backup/state.json, or None when it is missing or unreadable (a new backup is then written)."""
    file = path(run_dir, BACKUP, BACKUP_RECORD)
    if not storage.exists(file):
        return None
    try:
        state = storage.read_json(file, 64 << 20)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def load_config(run_dir: str) -> config_lib.Config:
    file = path(run_dir, CONFIG)
    if not storage.exists(file):
        raise RunError(f"{file} is missing: {run_dir} is not a keras_music run directory")
    try:
        return config_lib.from_dict(config_lib.read_yaml(file))
    except config_lib.ConfigError as error:
        raise RunError(f"{file}: {error}") from None


def load_vocabulary(run_dir: str) -> Vocabulary:
    try:
        return Vocabulary.load(path(run_dir, VOCAB))
    except VocabularyError as error:
        raise RunError(str(error)) from None


# ----------------------------------------------------------------------------- models

def _model_fix(run_dir: str) -> str:
    return (f"retrain it (python -m keras_music.train --run-dir NEW ...), or put back the {VOCAB} and {MODEL} "
            f"that were trained together in {run_dir}")


def check_model(model, vocabulary: Vocabulary, *, model_path: str, run_dir: str, metadata: dict | None = None) -> dict:
    """The loaded model is a keras_music LSTM that fits `vocabulary`; returns its sizes.

    Checks the embedding and the softmax head against the vocabulary size, the LSTM
    sizes against each other, every weight for NaN or infinity and, when the model
    file records it, the fingerprint of the vocabulary it was trained with (so a
    shuffled or edited vocab.json of the right size is refused too).
    """
    from keras_music import model as model_lib

    fix = _model_fix(run_dir)
    try:
        sizes = model_lib.describe(model)
        head = model.get_layer("head")
    except (ValueError, KeyError, AttributeError) as error:
        raise RunError(f"{model_path} is not a keras_music LSTM model ({error}); {fix}") from None
    size = len(vocabulary)
    if sizes["vocabulary_size"] != size:
        raise RunError(f"{model_path} was trained with {sizes['vocabulary_size']} tokens but {path(run_dir, VOCAB)} "
                       f"has {size}: the model and vocabulary do not belong together; {fix}")
    units = getattr(head, "units", None)
    if units != size:
        raise RunError(f"{model_path}: its output layer `head` has {units} units but {path(run_dir, VOCAB)} has {size} "
                       f"tokens: the model and vocabulary do not belong together; {fix}")
    activation = getattr(getattr(head, "activation", None), "__name__", None)
    if activation != "softmax":
        raise RunError(f"{model_path}: its output layer `head` has activation {activation!r}; keras_music models end "
                       f"in softmax probabilities; {fix}")
    lstm_units = [int(layer.units) for layer in model_lib.lstm_layers(model)]
    if len(set(lstm_units)) != 1:
        raise RunError(f"{model_path}: its LSTM layers have different sizes {lstm_units}; keras_music models use one "
                       f"hidden_size for every layer; {fix}")
    for variable in model.weights:
        values = np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
        if not np.all(np.isfinite(values)):
            raise RunError(f"{model_path}: weight {variable.path} holds NaN or infinite values (training diverged); "
                           f"{fix}")
    if metadata:
        recorded = metadata.get("vocabulary_fingerprint")
        if recorded and recorded != vocabulary.fingerprint():
            raise RunError(f"{model_path} was trained with another vocabulary than {path(run_dir, VOCAB)} (same size, "
                           f"but the tokens or their order differ: fingerprint {recorded[:12]} vs "
                           f"{vocabulary.fingerprint()[:12]}); {fix}")
    return sizes


def load_model(run_dir: str, vocabulary: Vocabulary | None = None, *, file: str = MODEL):
    """model.keras in safe mode, checked against the run's vocabulary (see check_model)."""
    from keras_music import model as model_lib

    model_path = path(run_dir, file)
    if not storage.exists(model_path):
        raise RunError(f"{model_path} is missing: training has not finished in {run_dir} "
                       "(rerun the same train command to resume it)")
    metadata = None
    try:
        if storage.is_remote(model_path):
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, MODEL)
                with open(local, "wb") as handle:
                    handle.write(storage.read_bytes(model_path))
                model = model_lib.load_model(local)
                metadata = model_lib.read_metadata(local)
        else:
            if not os.path.isfile(model_path):  # a FIFO or device would block the zip reader
                raise storage.NotARegularFile(0, "not a regular file", model_path)
            model = model_lib.load_model(model_path)
            metadata = model_lib.read_metadata(model_path)
    except Exception as error:  # Keras raises ValueError/OSError/zipfile errors for bad files
        raise RunError(f"{model_path} cannot be loaded as a Keras model: {type(error).__name__}: "
                       f"{str(error).splitlines()[0] if str(error) else ''}; {_model_fix(run_dir)}") from None
    vocabulary = vocabulary or load_vocabulary(run_dir)
    check_model(model, vocabulary, model_path=model_path, run_dir=run_dir, metadata=metadata)
    return model


# ----------------------------------------------------------------------------- prepared data

def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _prepared_fix(directory: str, info: dict | None = None) -> str:
    if info and info.get("data_dir"):
        source = os.path.dirname(str(info["data_dir"]).rstrip("/"))
        return (f"prepare {source} again (python -m keras_music.prepare --out {cli.quote(source)} ...), then rerun the "
                "train command")
    return (f"prepare the data again: for a run directory rerun its train command, for a prepared directory "
            f"python -m keras_music.prepare --out {cli.quote(directory)} ...")


def check_prepared(info, file: str, *, directory: str = "") -> Prepared:
    """prepared.json's own consistency: format, counts that are non-negative integers and agree."""
    fix = _prepared_fix(directory, info if isinstance(info, dict) else None)

    def bad(problem: str) -> RunError:
        return RunError(f"{file}: {problem}; {fix}")

    if not isinstance(info, dict) or info.get("format") != PREPARED_FORMAT:
        raise bad(f"not a keras_music prepared-data marker (expected \"format\": \"{PREPARED_FORMAT}\")")
    for key in ("pieces", "tokens", "lengths"):
        if not isinstance(info.get(key), dict):
            raise bad(f"\"{key}\" is missing or not a mapping of splits")
    for split in ("train", "validation"):
        pieces, tokens, lengths = info["pieces"].get(split), info["tokens"].get(split), info["lengths"].get(split)
        if not _is_count(pieces) or not _is_count(tokens):
            raise bad(f"the {split} counts must be integers >= 0, got pieces={pieces!r}, tokens={tokens!r}")
        if not isinstance(lengths, list) or not all(_is_count(n) for n in lengths):
            raise bad(f"\"lengths\".{split} must be a list of integers >= 0")
        if len(lengths) != pieces or sum(lengths) != tokens:
            raise bad(f"the {split} counts disagree: {pieces} pieces and {tokens} tokens, but {len(lengths)} lengths "
                      f"summing to {sum(lengths)}")
        shards = (info.get("shards") or {}).get(split) if isinstance(info.get("shards"), dict) else None
        if shards is not None:
            if not isinstance(shards, list) or not all(
                    isinstance(s, dict) and isinstance(s.get("file"), str) and _is_count(s.get("pieces"))
                    and _is_count(s.get("tokens")) and _is_count(s.get("bytes")) and isinstance(s.get("sha256"), str)
                    for s in shards):
                raise bad(f"\"shards\".{split} must list each shard's file, pieces, tokens, bytes and sha256")
            if sum(s["pieces"] for s in shards) != pieces or sum(s["tokens"] for s in shards) != tokens:
                raise bad(f"the {split} shards hold {sum(s['pieces'] for s in shards)} pieces and "
                          f"{sum(s['tokens'] for s in shards)} tokens, but the counts say {pieces} and {tokens}")
    controls = info.get("control_tokens")
    if controls is not None:
        counts, lengths = controls.get("train") if isinstance(controls, dict) else None, info["lengths"]["train"]
        if not (isinstance(counts, list) and len(counts) == len(lengths)
                and all(_is_count(c) and c <= n for c, n in zip(counts, lengths))):
            raise bad("\"control_tokens\".train must list one count per training piece, each at most its length")
    key_counts = info.get("key_pitch_counts")
    if key_counts is not None and not (
            isinstance(key_counts, dict)
            and all(isinstance(k, str) and k.startswith("key:") and isinstance(v, list) and len(v) == 12
                    and all(_is_count(c) for c in v) for k, v in key_counts.items())):
        raise bad("\"key_pitch_counts\" must map key tokens to 12 note counts, one per pitch class")
    size = info.get("vocabulary_size")
    if size is not None and (not _is_count(size) or size < 4):
        raise bad(f"\"vocabulary_size\" must be an integer >= 4, got {size!r}")
    timing = info.get("timing")
    if timing is not None:
        if not isinstance(timing, dict):
            raise bad("\"timing\" must be a mapping")
        tempo, signature, program = timing.get("tempo", 120.0), timing.get("time_signature", [4, 4]), \
            timing.get("program", 0)
        if isinstance(tempo, bool) or not isinstance(tempo, (int, float)) or not (math.isfinite(tempo) and tempo > 0):
            raise bad(f"\"timing\".tempo must be a positive number of beats per minute, got {tempo!r}")
        if not (isinstance(signature, list) and len(signature) == 2 and events.valid_time_signature(*signature)):
            raise bad(f"\"timing\".time_signature must be [numerator, denominator], got {signature!r}")
        if not (_is_count(program) and program <= 127):
            raise bad(f"\"timing\".program must be a MIDI program 0..127, got {program!r}")
    return info


def load_prepared(run_dir: str, required: bool = False) -> Prepared:
    """prepared.json of the run, checked ({} when the run has none, e.g. one trained before it existed)."""
    file = path(run_dir, PREPARED)
    if not storage.exists(file):
        if required:
            raise RunError(f"{file} is missing: {run_dir} has no prepared data; {_prepared_fix(run_dir)}")
        return {}
    try:
        info = storage.read_json(file, 256 << 20)
    except (OSError, ValueError):
        raise RunError(f"{file} is not valid JSON; {_prepared_fix(run_dir)}") from None
    return check_prepared(info, file, directory=run_dir)


def data_dir(run_dir: str) -> str:
    """Where the run's TFRecord shards are: its own data/, or the prepared directory it names."""
    return load_prepared(run_dir).get("data_dir") or path(run_dir, DATA)


def file_sha256(file: str, max_bytes: int | None = None) -> str:
    return hashlib.sha256(storage.read_bytes(file, max_bytes)).hexdigest()


def shard_paths(run_dir: str, split: str, *, info: dict | None = None) -> list[str]:
    """The split's TFRecord shards, each checked against what prepare recorded (size and sha256).

    Prepared data written before shard records existed is listed by name; read_split
    then checks it piece by piece.
    """
    from keras_music import dataset

    info = load_prepared(run_dir, required=True) if info is None else info
    directory = info.get("data_dir") or path(run_dir, DATA)
    fix = _prepared_fix(run_dir, info)
    listed = (info.get("shards") or {}).get(split)
    if listed is None:
        if not storage.isdir(directory):
            raise RunError(f"{directory} is missing: {run_dir} has no prepared data; {fix}")
        files = dataset.shard_files(directory, split)
        if info["pieces"][split] and not files:
            raise RunError(f"{directory} has no {split}-*.tfrecord shards but {path(run_dir, PREPARED)} lists "
                           f"{info['pieces'][split]} {split} pieces; {fix}")
        return files
    files = []
    for shard in listed:
        file = storage.join(directory, shard["file"])
        if not storage.exists(file):
            raise RunError(f"{file} is missing ({path(run_dir, PREPARED)} lists it with {shard['pieces']} {split} "
                           f"pieces); {fix}")
        try:
            data = storage.read_bytes(file, shard["bytes"])
        except storage.FileTooLarge:
            data = None
        if data is None or len(data) != shard["bytes"] or hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise RunError(f"{file} was changed or damaged since it was prepared (its size or sha256 differs from "
                           f"{path(run_dir, PREPARED)}); {fix}")
        files.append(file)
    return files


def read_split(run_dir: str, split: str, *, vocabulary: Vocabulary,
               info: dict | None = None) -> list[tuple[str, object]]:
    """(name, ids) of every piece of a split, checked: readable records, ids inside the vocabulary, counts as recorded."""
    from keras_music import dataset

    info = load_prepared(run_dir, required=True) if info is None else info
    fix = _prepared_fix(run_dir, info)
    pieces = []
    for file in shard_paths(run_dir, split, info=info):
        try:
            pieces.extend(dataset.read_named_pieces([file]))
        except Exception as error:  # tf.errors.DataLossError and friends for truncated or bit-flipped records

            text = (getattr(error, "message", None) or str(error)).strip().splitlines()
            # TensorFlow wraps the reason in the names of the graph nodes that met it.
            reason = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]", "", text[0] if text else "").strip()
            raise RunError(f"{file} cannot be read ({type(error).__name__}: {reason}); {fix}") from None
    size = len(vocabulary)
    for name, ids in pieces:
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= size):
            raise RunError(f"piece {name} of the {split} split holds token id {int(ids.max())} outside the "
                           f"vocabulary of {size} tokens ({path(run_dir, VOCAB)}); {fix}")
    lengths = [len(ids) for _, ids in pieces]
    if lengths != info["lengths"][split]:
        raise RunError(f"the {split} shards hold {len(lengths)} pieces of {sum(lengths)} tokens but "
                       f"{path(run_dir, PREPARED)} records {info['pieces'][split]} pieces of "
                       f"{info['tokens'][split]} tokens; {fix}")
    return pieces


def key_pitch_counts(run_dir: str, *, vocabulary: Vocabulary) -> dict[str, list[int]]:
    """The key prior's counts of a run (`controls.key_pitch_counts` over its training pieces): as prepare
    recorded them, or, for a run prepared before it did, counted from its training shards, which hold the
    same tokens ({} for a run without key tokens)."""
    if not any(t.startswith("key:") for t in vocabulary.tokens):
        return {}
    info = load_prepared(run_dir)
    if "key_pitch_counts" in info:
        return dict(info["key_pitch_counts"])
    pieces = named_pieces(run_dir, "train", vocabulary=vocabulary, info=info)
    return controls.key_pitch_counts(vocabulary.decode(ids) for _, ids in pieces)


def read_training_record(run_dir: str) -> TrainingRecord | None:
    """metrics.json of a run that finished training, or None (missing, unreadable, or not a training record)."""
    try:
        metrics = storage.read_json(path(run_dir, TRAINING_RECORD), 64 << 20)
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and "val_loss" in metrics else None


def read_evaluation(run_dir: str) -> dict | None:
    """evaluation/evaluation.json as `evaluate` wrote it, or None (not evaluated yet, or unreadable)."""
    try:
        evaluation = storage.read_json(path(run_dir, EVALUATION, EVALUATION_JSON), 256 << 20)
    except (OSError, ValueError):
        return None
    return evaluation if isinstance(evaluation, dict) else None


def manifest_entries(run_dir: str, strict: bool = True) -> dict[str, dict]:
    """corpus_manifest.json's entries by file name ({} when the run has none).

    strict raises a RunError for a manifest that is not valid JSON; otherwise it
    counts as absent (it only adds detail, e.g. the metre of a held-out piece).
    """
    file = path(run_dir, MANIFEST)
    if not storage.exists(file):
        return {}
    try:
        manifest = storage.read_json(file, 1 << 30)
    except (OSError, ValueError):
        if not strict:
            return {}
        raise RunError(f"{file} is not valid JSON: prepare the data again (rerun the same train "
                       "command)") from None
    files = manifest.get("files", []) if isinstance(manifest, dict) else []
    return {entry["file"]: entry for entry in files if isinstance(entry, dict) and "file" in entry}


def held_out_names(run_dir: str) -> list[str]:
    """The file names of the run's validation pieces, sorted (from the manifest)."""
    return sorted(name for name, entry in manifest_entries(run_dir).items()
                  if entry.get("status") == "used" and entry.get("split") == "validation")


def named_pieces(run_dir: str, split: str, *, vocabulary: Vocabulary,
                 info: dict | None = None) -> list[tuple[str, object]]:
    """(file name, ids) of every piece of one split, in shard order ([] when the split is empty).

    Checked against prepared.json (read_split); a run from before prepared.json is read
    as its shards are. A run without prepared data is a RunError.
    """
    info = load_prepared(run_dir) if info is None else info
    if info:
        return read_split(run_dir, split, vocabulary=vocabulary, info=info)
    from keras_music import dataset

    directory = path(run_dir, DATA)
    if not storage.isdir(directory):
        raise RunError(f"{directory} is missing: {run_dir} has no prepared data (train the run first)")
    return dataset.read_named_pieces(dataset.shard_files(directory, split))


def check_data(run_dir: str, info: dict, *, vocabulary: Vocabulary) -> None:
    """The prepared data fits its prepared.json and the vocabulary (before training or evaluating on it)."""
    fix = _prepared_fix(run_dir, info)
    size = info.get("vocabulary_size")
    if size is not None and size != len(vocabulary):
        raise RunError(f"{path(run_dir, PREPARED)} was prepared with a vocabulary of {size} tokens but "
                       f"{path(run_dir, VOCAB)} has {len(vocabulary)}; {fix}")
    recorded = info.get("vocabulary_fingerprint")
    if recorded and recorded != vocabulary.fingerprint():
        raise RunError(f"{path(run_dir, VOCAB)} is not the vocabulary the data was prepared with (the tokens or "
                       f"their order differ from {path(run_dir, PREPARED)}); {fix}")
    for split in ("train", "validation"):
        if info.get("shards") and info.get("vocabulary_fingerprint"):
            shard_paths(run_dir, split, info=info)  # checksums prove the records are what prepare wrote
        else:
            read_split(run_dir, split, vocabulary=vocabulary, info=info)


# ----------------------------------------------------------------------------- exports

def check_export_files(run_dir: str, names) -> dict:
    """export_report.json exists and the exported files named (paths relative to export/) match it.

    Reports written with checksums are compared by sha256, older ones by size.
    """
    directory = path(run_dir, EXPORT)
    fix = f"re-export: {export_command(run_dir)}"
    report_file = storage.join(directory, EXPORT_REPORT)
    try:
        report = storage.read_json(report_file, 64 << 20)
    except FileNotFoundError:
        raise RunError(f"{report_file} is missing: the export is incomplete; {fix}") from None
    except (OSError, ValueError):
        raise RunError(f"{report_file} is not valid JSON; {fix}") from None
    if not isinstance(report, dict):
        raise RunError(f"{report_file} is not an export report; {fix}")
    digests = report.get("sha256") if isinstance(report.get("sha256"), dict) else None
    sizes = report.get("files") if isinstance(report.get("files"), dict) else {}
    for name in names:
        file = storage.join(directory, *name.split("/"))
        if not storage.exists(file):
            raise RunError(f"{file} is missing; {fix}")
        if digests is not None:
            if name not in digests:
                raise RunError(f"{report_file} does not list {name}; {fix}")
            if file_sha256(file) != digests[name]:
                raise RunError(f"{file} was changed or damaged since it was exported (its sha256 differs from "
                               f"{report_file}); {fix}")
        elif name in sizes and storage.exists(file) and not storage.isdir(file):
            if len(storage.read_bytes(file)) != sizes[name]:
                raise RunError(f"{file} has another size than {report_file} records; {fix}")
    return report
