"""The sequence model (Embedding -> LSTM x N -> softmax) and its one-step twin sharing the weights."""

from __future__ import annotations

import json
import zipfile

from keras_music import require_tensorflow

require_tensorflow()  # before Keras loads TensorFlow: a wrong version is one line with the fix

import keras  # noqa: E402
from keras import layers, ops  # noqa: E402
import numpy as np

from keras_music import defaults


def build_model(vocabulary_size: int, embedding_size: int = 96, hidden_size: int = 256, num_layers: int = 3,
                dropout: float = defaults.DROPOUT, seq_length: int | None = None) -> keras.Model:
    """Many-to-many LSTM language model: ids [batch, time] -> probabilities [batch, time, vocab].

    Layers are named (`embedding`, `lstm_0`.., `head`) so the step model and exporters
    can find them in a loaded model.
    """
    if vocabulary_size < 4:
        raise ValueError(f"vocabulary_size must be >= 4 (3 special tokens + 1), got {vocabulary_size}")
    tokens = keras.Input(shape=(seq_length,), dtype="int32", name="tokens")
    x = layers.Embedding(vocabulary_size, embedding_size, name="embedding")(tokens)
    for i in range(num_layers):
        x = layers.LSTM(hidden_size, activation="tanh", return_sequences=True, name=f"lstm_{i}")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"dropout_{i}")(x)
    probabilities = layers.Dense(vocabulary_size, activation="softmax", name="head")(x)
    return keras.Model(tokens, probabilities, name="keras_music_lstm")


def lstm_layers(model: keras.Model) -> list:
    found = [layer for layer in model.layers if isinstance(layer, layers.LSTM)]
    if not found:
        raise ValueError(f"model {model.name!r} has no LSTM layers")
    return found


def describe(model: keras.Model) -> dict:
    """Sizes a caller needs to drive the step model (and that exports record)."""
    lstms = lstm_layers(model)
    embedding = model.get_layer("embedding")
    return {
        "vocabulary_size": int(embedding.input_dim),
        "embedding_size": int(embedding.output_dim),
        "hidden_size": int(lstms[0].units),
        "num_layers": len(lstms),
        "state_shape": [2 * len(lstms), int(lstms[0].units)],
        "parameters": int(model.count_params()),
    }


class StepModel:
    """One token per sequence + states in, next-token probabilities + states out.

    Inputs: `token` int32 [batch], `state` float32 [batch, 2*num_layers, hidden]
    (rows 2i and 2i+1 are layer i's h and c). Outputs: `probabilities` [batch, vocab]
    and `next_state`. It calls the trained layers' cells, so it shares their weights,
    and it traces to a graph without TensorList ops, which TFLite converts with
    builtin ops only.
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self.lstms = lstm_layers(model)
        self.hidden_size = int(self.lstms[0].units)
        if any(int(layer.units) != self.hidden_size for layer in self.lstms):
            raise ValueError("the step model needs every LSTM layer to have the same hidden size")
        self.num_layers = len(self.lstms)
        self.embedding = model.get_layer("embedding")
        self.head = model.get_layer("head")
        self.vocabulary_size = int(self.embedding.input_dim)
        self.state_shape = (2 * self.num_layers, self.hidden_size)
        self._compiled = None

    def __call__(self, token, state):
        x = self.embedding(token)
        new_states = []
        for i, layer in enumerate(self.lstms):
            x, (h, c) = layer.cell(x, [state[:, 2 * i], state[:, 2 * i + 1]], training=False)
            new_states.extend([h, c])
        return {"probabilities": self.head(x), "next_state": ops.stack(new_states, axis=1)}

    def initial_state(self, batch_size: int):
        return np.zeros((batch_size,) + self.state_shape, dtype=np.float32)

    def compiled(self):
        """A tf.function of __call__ for fast repeated steps (any batch size)."""
        if self._compiled is None:
            import tensorflow as tf

            self._compiled = tf.function(self.__call__, input_signature=[
                tf.TensorSpec([None], tf.int32, name="token"),
                tf.TensorSpec([None, *self.state_shape], tf.float32, name="state")], jit_compile=False)
        return self._compiled

    def step(self, token, state):
        """numpy in, numpy out."""
        out = self.compiled()(np.asarray(token, np.int32), np.asarray(state, np.float32))
        return out["probabilities"].numpy(), out["next_state"].numpy()


def load_model(path: str) -> keras.Model:
    """Load model.keras with safe mode on: no arbitrary code runs from an untrusted file."""
    return keras.saving.load_model(path, compile=False, safe_mode=True)


# Inside a .keras file (a zip archive) beside Keras' own entries; Keras ignores it when loading.
METADATA = "keras_music.json"


def save_model(model: keras.Model, path: str, *, metadata: dict | None = None) -> None:
    """model.save, plus `metadata` (e.g. the vocabulary fingerprint) stored inside the same file."""
    model.save(path)
    if metadata:
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(METADATA, json.dumps(metadata, sort_keys=True))


def read_metadata(path: str) -> dict | None:
    """What save_model stored with the model, or None (a model saved without it, or not a zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if METADATA not in archive.namelist():
                return None
            data = json.loads(archive.read(METADATA).decode("utf-8"))
    except (OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
