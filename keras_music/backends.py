"""One token at a time: step(token_ids, lstm_state) -> (probabilities, lstm_state) for Keras, SavedModel and TFLite."""

from __future__ import annotations

import os

import numpy as np

from keras_music import require_tensorflow, run as run_lib, storage
from keras_music.errors import KerasMusicError
from keras_music.vocabulary import Vocabulary

BACKENDS = ("keras", "savedmodel", "tflite")


class BackendError(KerasMusicError, ValueError):
    """An exported artifact is missing, damaged or stale; the message says how to export again."""


def _export_missing(path: str, run_dir: str) -> BackendError:
    return BackendError(f"{path} is missing: export the run first with {run_lib.export_command(run_dir)}")


def _no_step_signature(path: str, found, *, run_dir: str) -> BackendError:
    return BackendError(f"{path} has no `step` signature (found {sorted(found)}): "
                        f"re-export with {run_lib.export_command(run_dir)}")


class KerasBackend:
    """The trained Keras model driven one token at a time through model.StepModel."""

    name = "keras"

    def __init__(self, run_dir: str | None, vocabulary: Vocabulary | None = None, *, model=None):
        from keras_music import model as model_lib

        self.model = model if model is not None else run_lib.load_model(run_dir, vocabulary)
        self.step_model = model_lib.StepModel(self.model)
        self.vocabulary_size = self.step_model.vocabulary_size
        self.state_shape = tuple(self.step_model.state_shape)

    def initial_state(self, batch: int) -> np.ndarray:
        return self.step_model.initial_state(batch)

    def step(self, token_ids, lstm_state):
        return self.step_model.step(np.asarray(token_ids, np.int32), np.asarray(lstm_state, np.float32))


class SavedModelBackend:
    """A SavedModel's `step` signature (RUN/export/saved_model unless `path`), run with plain TensorFlow.

    `loaded` is a SavedModel already loaded from `path` (the export's parity check passes
    the one it has just written).
    """

    name = "savedmodel"

    def __init__(self, run_dir: str, path: str | None = None, *, loaded=None):
        require_tensorflow()
        import tensorflow as tf

        self.path = path or run_lib.path(run_dir, run_lib.EXPORT, run_lib.SAVED_MODEL)
        self.loaded = loaded if loaded is not None else _load_saved_model(run_dir, self.path, checked=path is None)
        if "step" not in self.loaded.signatures:
            raise _no_step_signature(self.path, self.loaded.signatures, run_dir=run_dir)
        self._step = self.loaded.signatures["step"]
        state_spec = self._step.structured_input_signature[1]["state"]
        self.state_shape = tuple(int(d) for d in state_spec.shape[1:])
        self.vocabulary_size = int(self._step.structured_outputs["probabilities"].shape[-1])
        self._tf = tf

    def initial_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch,) + self.state_shape, np.float32)

    def step(self, token_ids, lstm_state):
        tf = self._tf
        out = self._step(token=tf.constant(np.asarray(token_ids, np.int32)),
                         state=tf.constant(np.asarray(lstm_state, np.float32)))
        return out["probabilities"].numpy(), out["next_state"].numpy()


def _load_saved_model(run_dir: str, path: str, *, checked: bool):
    """tf.saved_model.load, after checking the files against the export report when `checked`."""
    require_tensorflow()
    import tensorflow as tf

    if not storage.exists(storage.join(path, "saved_model.pb")):
        raise _export_missing(path, run_dir)
    if checked:
        run_lib.check_export_files(run_dir, [f"{run_lib.SAVED_MODEL}/{name}" for name in _relative_files(path)])
    try:
        return tf.saved_model.load(path)
    except Exception as error:  # tf.errors.* for a damaged SavedModel
        text = (getattr(error, "message", None) or str(error)).strip().splitlines()
        raise BackendError(f"{path} cannot be loaded ({type(error).__name__}: {text[0] if text else ''}): "
                           f"re-export with {run_lib.export_command(run_dir)}") from None


def _relative_files(directory: str) -> list[str]:
    """Every file below a local or remote directory, as '/'-joined paths relative to it."""
    out = []
    for file in storage.walk_files(directory):
        relative = file[len(str(directory).rstrip("/")) + 1:]
        out.append(relative.replace(os.sep, "/"))
    return sorted(out)


class TFLiteBackend:
    """A .tflite file's `step` signature (RUN/export/`file` unless `path`), run by LiteRT (no TensorFlow)."""

    name = "tflite"

    def __init__(self, run_dir: str, file: str = run_lib.TFLITE_FILES["none"], *, path: str | None = None):
        self.path = path or run_lib.path(run_dir, run_lib.EXPORT, file)
        if not storage.exists(self.path):
            raise _export_missing(self.path, run_dir)
        if path is None:
            run_lib.check_export_files(run_dir, [file])
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_content=storage.read_bytes(self.path))
        except ValueError as error:  # not a TFLite flatbuffer
            raise BackendError(f"{self.path} cannot be loaded ({error}): re-export with "
                               f"{run_lib.export_command(run_dir)}") from None
        signatures = self.interpreter.get_signature_list()
        if "step" not in signatures:
            raise _no_step_signature(self.path, signatures, run_dir=run_dir)
        self.runner = self.interpreter.get_signature_runner("step")
        inputs = self.runner.get_input_details()
        outputs = self.runner.get_output_details()
        self.state_shape = tuple(int(d) for d in inputs["state"]["shape"][1:])
        self.vocabulary_size = int(outputs["probabilities"]["shape"][-1])

    def initial_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch,) + self.state_shape, np.float32)

    def step(self, token_ids, lstm_state):
        token_ids = np.asarray(token_ids, np.int32)
        lstm_state = np.asarray(lstm_state, np.float32)
        if len(token_ids) == 1:  # what the signature takes as is (and what a speed measurement times)
            out = self.runner(token=token_ids, state=lstm_state)
            return out["probabilities"], out["next_state"]
        probabilities = np.empty((len(token_ids), self.vocabulary_size), np.float32)
        next_state = np.empty_like(lstm_state)
        # The exported TFLite signature has its batch fixed to 1 (what a phone app
        # runs), so a batch is stepped one row at a time here.
        for row in range(len(token_ids)):
            out = self.runner(token=token_ids[row:row + 1], state=lstm_state[row:row + 1])
            probabilities[row] = out["probabilities"][0]
            next_state[row] = out["next_state"][0]
        return probabilities, next_state


def _check_exported_vocabulary(run_dir: str, vocabulary: Vocabulary | None) -> None:
    exported = run_lib.path(run_dir, run_lib.EXPORT, run_lib.EXPORT_VOCAB)
    if vocabulary is None or not storage.exists(exported):
        return
    if Vocabulary.load(exported).tokens != vocabulary.tokens:
        raise BackendError(f"{exported} differs from {run_lib.path(run_dir, run_lib.VOCAB)}: the export is stale; "
                           f"re-export with {run_lib.export_command(run_dir)}")


def make_backend(run_dir: str, backend: str, *, vocabulary: Vocabulary | None = None):
    """The run's model as `backend` (one of BACKENDS); an export is checked against the run's vocabulary first."""
    if backend == "keras":
        return KerasBackend(run_dir, vocabulary)
    if backend in ("savedmodel", "tflite"):
        _check_exported_vocabulary(run_dir, vocabulary)
    if backend == "savedmodel":
        return SavedModelBackend(run_dir)
    if backend == "tflite":
        return TFLiteBackend(run_dir)
    raise BackendError(f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
