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
from keras_music.cli import progress


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


# One forward pass holds batch x time x vocabulary float32 probabilities; this caps
# it (about 128 MB) so long held-out pieces with a large vocabulary still fit.
MAX_OUTPUT_CELLS = 1 << 25
MAX_BATCH_PIECES = 32
# Floor for a probability before its log: a float32 softmax can underflow to 0 for a
# token the model rules out completely, and one -inf would hide every other number.
PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)


def _batches_by_length(pieces, vocabulary_size: int) -> list[list[int]]:
    """Indices of the non-empty pieces, shortest first, grouped so a batch's output stays under the caps."""
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
    batches, current = [], []
    for i in order:
        if not len(pieces[i]):
            continue
        width = len(pieces[i])
        if current and ((len(current) + 1) * width * vocabulary_size > MAX_OUTPUT_CELLS
                        or len(current) >= MAX_BATCH_PIECES):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def token_log_probs(model, pieces, *, boundary_id: int, pad_id: int = 0, show_progress: bool = False,
                    excluded=None):
    """Natural-log probability and top-1 hit of every token of every piece under the sequence model.

    `excluded` (bool per vocabulary id, optional) names tokens a generator never samples (controls,
    infilling sentinels: `never_sampled`); each step's distribution is then renormalised over the
    others, as a generator that masks them samples it.

    Each piece is fed as [boundary] + piece[:-1] and every piece token is scored, so
    the first token is predicted from the start of a piece, as in training. Pieces
    are batched by length and padded on the right: an LSTM reads left to right, so
    padding after a piece cannot change the outputs at the piece's own positions,
    and the padded positions are never scored.

    Returns:
      (log_probs, hits): lists with one float64 / bool array per piece, in input order.
    """
    import tensorflow as tf

    pieces = [np.asarray(p, dtype=np.int32) for p in pieces]
    vocabulary_size = int(model.outputs[0].shape[-1])
    forward = tf.function(lambda tokens: model(tokens, training=False),
                          input_signature=[tf.TensorSpec([None, None], tf.int32)])
    log_probs = [np.zeros(0) for _ in pieces]
    hits = [np.zeros(0, dtype=bool) for _ in pieces]
    bar = progress(total=sum(len(p) for p in pieces), show=show_progress, desc="scoring held-out", unit="token")
    for batch in _batches_by_length(pieces, vocabulary_size):
        width = max(len(pieces[i]) for i in batch)
        tokens = np.full((len(batch), width), pad_id, dtype=np.int32)
        for row, i in enumerate(batch):
            tokens[row, 0] = boundary_id
            tokens[row, 1:len(pieces[i])] = pieces[i][:-1]
        probabilities = forward(tokens).numpy()
        for row, i in enumerate(batch):
            targets = pieces[i]
            steps = np.arange(len(targets))
            rows = probabilities[row, steps].astype(np.float64)
            if excluded is not None:
                rows[:, excluded] = 0.0
                rows /= np.maximum(rows.sum(axis=-1, keepdims=True), PROBABILITY_FLOOR)
            chosen = rows[steps, targets]
            log_probs[i] = np.log(np.maximum(chosen, PROBABILITY_FLOOR))
            hits[i] = rows.argmax(axis=-1) == targets
            bar.update(len(targets))
    bar.close()
    return log_probs, hits


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


class CarriedModel:
    """The sequence model run from given states, returning the states it ends in (`train.carry_state`).

    `__call__(tokens [batch, time], state [batch, 2*num_layers, hidden])` gives the probabilities
    [batch, time, vocab] and the state after the last token, laid out as the step model's, so the
    next window of the same streams goes on where this one stopped. Each LSTM layer's cell is
    wrapped in a `keras.layers.RNN` that returns its state; the cells, the embedding, the dropout
    layers and the head are the model's own objects, so training through this trains the model
    (there is nothing to copy back) and the model saved afterwards is the plain one.
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self.lstms = lstm_layers(model)
        self.embedding = model.get_layer("embedding")
        self.head = model.get_layer("head")
        names = {layer.name: layer for layer in model.layers}
        self.dropouts = [names.get(f"dropout_{i}") for i in range(len(self.lstms))]
        self.rnns = [layers.RNN(layer.cell, return_sequences=True, return_state=True, name=f"carried_{i}")
                     for i, layer in enumerate(self.lstms)]
        self.state_shape = (2 * len(self.lstms), int(self.lstms[0].units))

    def __call__(self, tokens, state, training: bool = False):
        x = self.embedding(tokens)
        states = []
        for i, rnn in enumerate(self.rnns):
            x, h, c = rnn(x, initial_state=[state[:, 2 * i], state[:, 2 * i + 1]], training=training)
            states.extend([h, c])
            if self.dropouts[i] is not None:
                x = self.dropouts[i](x, training=training)
        return self.head(x), ops.stack(states, axis=1)

    def initial_state(self, batch_size: int):
        return np.zeros((batch_size,) + self.state_shape, dtype=np.float32)


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
