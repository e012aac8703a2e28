"""keras_music: learn music from a corpus with a Keras LSTM, generate, evaluate and export it."""

from __future__ import annotations

import importlib
import os
from importlib import metadata

from keras_music.errors import KerasMusicError

__version__ = "0.1.0"

# The public API, imported on first use (PEP 562) so that `import keras_music` and the
# numpy-only modules never load TensorFlow: name -> (module, attribute; None: the module).
_PUBLIC = {
    "Config": ("keras_music.config", "Config"),
    "load_config": ("keras_music.config", "load"),
    "train": ("keras_music.train", None),  # the module, callable as its train(config, run_dir)
    "Generator": ("keras_music.generate", "Generator"),
    "evaluate_run": ("keras_music.evaluate", "evaluate_run"),
    "export_run": ("keras_music.export", "export"),
    # The settings objects those calls take.
    "SamplingSettings": ("keras_music.sampling", "SamplingSettings"),
    "ControlSettings": ("keras_music.controls", "ControlSettings"),
    "EvaluationSettings": ("keras_music.evaluate_music", "EvaluationSettings"),
    "ExportSettings": ("keras_music.export", "ExportSettings"),
}
__all__ = ["Config", "load_config", "train", "Generator", "evaluate_run", "export_run", "SamplingSettings",
           "ControlSettings", "EvaluationSettings", "ExportSettings", "EnvironmentMismatch", "KerasMusicError", "__version__"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'keras_music' has no attribute {name!r}")

    module_name, attribute = _PUBLIC[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    if attribute is not None:
        globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))

# tensorflow-io 0.37.1's compiled ops link against TensorFlow 2.16/2.17 only.
SUPPORTED_TENSORFLOW = ("2.16", "2.17")
TENSORFLOW_IO_VERSION = "0.37.1"

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) hides real output;
# Python-level errors still surface as exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class EnvironmentMismatch(KerasMusicError, ImportError):
    """The installed TensorFlow / tensorflow-io pair cannot work together (every command prints it as one line)."""


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_tensorflow_version(tf_version: str | None) -> None:
    """Raise EnvironmentMismatch unless `tf_version` (None: TensorFlow is not installed) can load tensorflow-io."""
    if tf_version is not None and not tf_version.startswith(SUPPORTED_TENSORFLOW):
        raise EnvironmentMismatch(
            f"keras_music needs TensorFlow {' or '.join(SUPPORTED_TENSORFLOW)} (found {tf_version}): "
            f"tensorflow-io {TENSORFLOW_IO_VERSION}'s compiled ops do not load on other versions. "
            "Reinstall with: pip install 'tensorflow==2.17.*' 'tensorflow-io==0.37.1'")


_tensorflow_checked = False


def require_tensorflow() -> None:
    """Check the installed TensorFlow; every module that imports TensorFlow calls this first.

    `import keras_music` and its numpy-only modules (config, metrics, sampling) work
    without it; a wrong TensorFlow is reported with the fix where it would fail.
    """
    global _tensorflow_checked
    if not _tensorflow_checked:
        check_tensorflow_version(_installed("tensorflow") or _installed("tensorflow-cpu"))
        _tensorflow_checked = True


_io_checked = False


def check_tensorflow_io() -> None:
    """Load tensorflow-io's compiled ops and filesystems, or say which TensorFlow is needed."""
    global _io_checked
    if _io_checked:
        return

    require_tensorflow()
    import tensorflow as tf

    try:
        importlib.import_module("tensorflow_io")  # registers the s3://, az://, hdfs:// filesystems
        from tensorflow_io.python.ops import core_ops

        core_ops._load()
    except (ImportError, NotImplementedError, OSError) as error:
        raise EnvironmentMismatch(
            f"tensorflow-io's ops failed to load with TensorFlow {tf.__version__}: {error}. "
            f"keras_music needs TensorFlow {' or '.join(SUPPORTED_TENSORFLOW)} with "
            f"tensorflow-io {TENSORFLOW_IO_VERSION}: pip install 'tensorflow==2.17.*' "
            f"'tensorflow-io=={TENSORFLOW_IO_VERSION}'") from None
    _io_checked = True
