"""The run directory contract: where each artifact lives and how it is loaded and checked."""

from __future__ import annotations

import datetime
import os

from keras_music import config as config_lib, storage
from keras_music.vocabulary import Vocabulary, VocabularyError

CONFIG = "config.yaml"
VOCAB = "vocab.json"
MANIFEST = "corpus_manifest.json"
MODEL = "model.keras"
METRICS = "metrics.json"
PREPARED = "prepared.json"


class RunError(ValueError):
    """A run directory is missing a file, or its files do not fit together."""


def path(run_dir: str, *parts: str) -> str:
    return storage.join(run_dir, *parts)


def new_run_dir(root: str = "runs") -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = storage.join(root, stamp)
    suffix = 1
    while storage.exists(run_dir):
        suffix += 1
        run_dir = storage.join(root, f"{stamp}-{suffix}")
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


def load_model(run_dir: str, vocabulary: Vocabulary | None = None, file: str = MODEL):
    """model.keras in safe mode, checked against the run's vocabulary."""
    from keras_music import model as model_lib

    model_path = path(run_dir, file)
    if not storage.exists(model_path):
        raise RunError(f"{model_path} is missing: training has not finished in {run_dir} "
                       "(rerun the same train command to resume it)")
    try:
        if storage.is_remote(model_path):
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, MODEL)
                with open(local, "wb") as handle:
                    handle.write(storage.read_bytes(model_path))
                model = model_lib.load_model(local)
        else:
            model = model_lib.load_model(model_path)
    except Exception as error:  # Keras raises ValueError/OSError/zipfile errors for bad files
        raise RunError(f"{model_path} cannot be loaded as a Keras model: {type(error).__name__}: "
                       f"{str(error).splitlines()[0] if str(error) else ''}") from None
    try:
        sizes = model_lib.describe(model)
    except (ValueError, KeyError) as error:
        raise RunError(f"{model_path} is not a keras_music LSTM model: {error}") from None
    vocabulary = vocabulary or load_vocabulary(run_dir)
    if sizes["vocabulary_size"] != len(vocabulary):
        raise RunError(f"{model_path} was trained with {sizes['vocabulary_size']} tokens but "
                       f"{path(run_dir, VOCAB)} has {len(vocabulary)}: the model and vocabulary do not belong "
                       "together")
    return model


def load_prepared(run_dir: str) -> dict:
    """prepared.json of the run ({} when the run has none, e.g. one trained before it existed)."""
    file = path(run_dir, PREPARED)
    try:
        info = storage.read_json(file) if storage.exists(file) else {}
    except (OSError, ValueError):
        raise RunError(f"{file} is not valid JSON: rerun the train command to prepare the data again") from None
    return info if isinstance(info, dict) else {}


def data_dir(run_dir: str) -> str:
    """Where the run's TFRecord shards are: its own data/, or the prepared directory it names."""
    return load_prepared(run_dir).get("data_dir") or path(run_dir, "data")
