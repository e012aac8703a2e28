"""The exported SavedModels: the run's four signatures, and the batch-1 `step` one the TFLite converter reads."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from keras_music import events
from keras_music.errors import KerasMusicError

SIGNATURES = ("serving_default", "step", "generate", "initial_state")


class ExportError(KerasMusicError, RuntimeError):
    """A conversion failed, needed non-builtin ops, or an artifact does not load."""


def write_saved_model(model, vocabulary, *, vocab_file: str, directory: str) -> None:
    """The run's SavedModel: serving_default, step, generate, initial_state, and vocab.json as an asset.

    Written with keras.export.ExportArchive, which saves the Keras 3 variables with
    the graph (a plain tf.Module around the model loses them).
    """
    import keras
    import tensorflow as tf

    from keras_music import model as model_lib

    step_model = model_lib.StepModel(model)
    num_rows, hidden_size = step_model.state_shape

    def serve(tokens_in):
        return {"probabilities": model(tokens_in, training=False)}

    def initial_state(batch_size):
        return {"state": tf.zeros(tf.stack([batch_size, num_rows, hidden_size]), dtype=tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens")])
    archive.add_endpoint("step", _step_function(step_model), input_signature=[
        tf.TensorSpec([None], tf.int32, name="token"),
        tf.TensorSpec([None, num_rows, hidden_size], tf.float32, name="state")])
    archive.add_endpoint("generate", _generate_function(step_model, vocabulary),
                         input_signature=generate_signature())
    archive.add_endpoint("initial_state", initial_state,
                         input_signature=[tf.TensorSpec([], tf.int32, name="batch_size")])
    _attach_vocabulary(archive, vocab_file)
    archive.write_out(directory, verbose=False)


def generate_signature() -> list:
    """The `generate` signature's inputs, by keyword name (export/README.md, "SavedModel signatures")."""
    import tensorflow as tf

    return [tf.TensorSpec([None], tf.int32, name="primer"),
            tf.TensorSpec([], tf.int32, name="length"),
            tf.TensorSpec([], tf.int32, name="min_length"),
            tf.TensorSpec([], tf.float64, name="temperature"),
            tf.TensorSpec([], tf.int32, name="top_k"),
            tf.TensorSpec([], tf.float64, name="top_p"),
            tf.TensorSpec([], tf.int64, name="seed")]


def write_step_saved_model(model, directory: str) -> None:
    """A SavedModel whose `step` signature takes batch 1: what the TFLite converter reads.

    Static shapes keep every op a TFLite builtin.
    """
    import keras
    import tensorflow as tf

    from keras_music import model as model_lib

    step_model = model_lib.StepModel(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("step", _step_function(step_model), input_signature=[
        tf.TensorSpec([1], tf.int32, name="token"),
        tf.TensorSpec([1, *step_model.state_shape], tf.float32, name="state")])
    archive.write_out(directory, verbose=False)


def _step_function(step_model):
    """`step(token, state)`: one token per row in, next-token probabilities and the next state out."""

    def step(token, state):
        out = step_model(token, state)
        return {"probabilities": out["probabilities"], "next_state": out["next_state"]}

    return step


# SplitMix64 (export/README.md, "Portable sampler"): the same numbers as Python and the page.
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX_1 = 0xBF58476D1CE4E5B9
_MIX_2 = 0x94D049BB133111EB
# Cumulative masses within this distance below top_p count as reaching it (as keras_music.sampling).
_TOP_P_TOLERANCE = 1e-9
# The longest piece, in events, whose token limit (32 tokens an event) fits an int32.
MAX_LENGTH = (2 ** 31 - 1) // 32
TOKENS_PER_EVENT_LIMIT = 32
STOP_REASONS = ("length", "boundary", "token_limit")
_BY_LENGTH, _BY_BOUNDARY, _BY_TOKEN_LIMIT = range(len(STOP_REASONS))
_PHASE_BETWEEN, _PHASE_CHORD, _PHASE_REST = 0, 1, 2


def splitmix64_next(state):
    """One SplitMix64 step in uint64 graph ops (wrapping add and multiply): (next state, 64-bit output)."""
    import tensorflow as tf

    def shifted(z, bits):
        return tf.bitwise.right_shift(z, tf.constant(bits, tf.uint64))

    state = state + tf.constant(_GOLDEN_GAMMA, tf.uint64)
    z = tf.bitwise.bitwise_xor(state, shifted(state, 30)) * tf.constant(_MIX_1, tf.uint64)
    z = tf.bitwise.bitwise_xor(z, shifted(z, 27)) * tf.constant(_MIX_2, tf.uint64)
    return state, tf.bitwise.bitwise_xor(z, shifted(z, 31))


def uniform_of(bits):
    """(bits >> 11) / 2^53: the top 53 bits as a float64 in [0, 1), exact (both steps are exact)."""
    import tensorflow as tf

    top = tf.bitwise.right_shift(bits, tf.constant(11, tf.uint64))
    return tf.cast(top, tf.float64) / tf.constant(2.0 ** 53, tf.float64)


def seed_state(seed):
    """An int64 seed as the uint64 state `seed mod 2^64` (a negative seed is its two's complement)."""
    import tensorflow as tf

    return tf.bitcast(tf.cast(seed, tf.int64), tf.uint64)


class _GraphGrammar:
    """The sampling grammar (export/README.md, "Sampling grammar") as graph ops over one piece.

    The state is (phase, top, current, previous): int32, int32, bool [128], bool [128].
    It mirrors keras_music.sampling.Grammar for one row.
    """

    def __init__(self, table: dict):
        import tensorflow as tf

        kinds = np.asarray(table["kinds"])
        pitches = np.asarray(table["pitches"], np.int64)
        self.rules = table["rules"]
        self.size = len(kinds)
        self.is_pitch = tf.constant(kinds == "pitch")
        self.is_hold = tf.constant(kinds == "hold")
        self.is_rest = tf.constant(kinds == "rest")
        self.is_dur = tf.constant(kinds == "dur")
        self.is_end = tf.constant(kinds == "end")
        # Control tokens (steering) and fill-in-the-middle sentinels are fed by the host, never sampled.
        self.not_banned = tf.constant((kinds != "banned") & (kinds != "control") & (kinds != "fim"))
        self.is_event = tf.constant(np.isin(kinds, ("dur", "event")))
        voiced = (kinds == "pitch") | (kinds == "hold")
        self.pitch = tf.constant(np.where(voiced, pitches, -1).astype(np.int32))
        self.pitch_index = tf.constant(np.clip(np.where(voiced, pitches, 0), 0, 127).astype(np.int32))

    def start(self):
        import tensorflow as tf

        return (tf.constant(_PHASE_BETWEEN), tf.constant(-1), tf.zeros([128], tf.bool), tf.zeros([128], tf.bool))

    def between(self, grammar):
        import tensorflow as tf

        if self.rules == "any":
            return tf.constant(True)
        return tf.equal(grammar[0], _PHASE_BETWEEN)

    def allowed(self, grammar, closing):
        """Bool [V]: what may come next; `closing` lets an open sonority only close (a duration)."""
        import tensorflow as tf

        if self.rules == "any":
            return self.not_banned
        phase, top, _, previous = grammar
        voiced = self.is_pitch | (self.is_hold & tf.gather(previous, self.pitch_index))
        between = voiced | self.is_rest | self.is_end
        chord = (voiced & (self.pitch > top)) | self.is_dur
        allowed = tf.where(tf.equal(phase, _PHASE_BETWEEN), between,
                           tf.where(tf.equal(phase, _PHASE_CHORD), chord, self.is_dur))
        allowed = tf.where(closing & tf.not_equal(phase, _PHASE_BETWEEN), self.is_dur, allowed)
        return tf.where(tf.reduce_any(allowed), allowed, self.not_banned)

    def advance(self, grammar, token):
        """The state after `token`; lenient like the decoder (a rest inside a chord leaves it open)."""
        import tensorflow as tf

        if self.rules == "any":
            return grammar
        phase, top, current, previous = grammar
        voiced = self.is_pitch[token] | self.is_hold[token]
        pitch = self.pitch[token]
        here = tf.equal(tf.range(128), self.pitch_index[token])
        rest = self.is_rest[token] & tf.equal(phase, _PHASE_BETWEEN)
        closed = self.is_dur[token]
        phase = tf.where(voiced, _PHASE_CHORD, tf.where(rest, _PHASE_REST, tf.where(closed, _PHASE_BETWEEN, phase)))
        top = tf.where(voiced, tf.maximum(top, pitch), tf.where(closed, -1, top))
        current = tf.where(voiced, current | here, current)
        previous = tf.where(closed, current, previous)
        current = tf.where(closed, tf.zeros_like(current), current)
        return phase, top, current, previous


def widened(values):
    """float32 -> float64 exactly, subnormal float32 values included.

    TensorFlow's CPU kernels run with denormals-are-zero, so a plain cast turns a
    float32 below 2^-126 into 0; its mantissa times 2^-149 is the same number as a
    normal float64, computed exactly.
    """
    import tensorflow as tf

    bits = tf.bitcast(values, tf.int32)
    subnormal = tf.equal(tf.bitwise.bitwise_and(bits, 0x7F800000), 0)
    mantissa = tf.cast(tf.bitwise.bitwise_and(bits, 0x007FFFFF), tf.float64) * tf.constant(2.0 ** -149, tf.float64)
    signed = tf.where(bits < 0, -mantissa, mantissa)
    return tf.where(subnormal, signed, tf.cast(values, tf.float64))


def sample_one(probabilities, allowed, *, temperature, top_k, top_p, rng_state):
    """One token by export/README.md "Portable sampler / One token", in float64: (id int32, next rng state).

    `probabilities` float32 [V] (widened exactly), `allowed` bool [V]; ids 0 and 1 are
    never returned. Temperature 0 returns the greedy answer without drawing; any
    other temperature draws exactly one uniform, even when the answer is then fixed.
    """
    import tensorflow as tf

    size = tf.size(probabilities)
    ids = tf.range(size)
    forbidden = tf.logical_not(allowed) | (ids < 2)
    p = tf.where(forbidden, tf.constant(0.0, tf.float64), widened(probabilities))
    masked = tf.where(forbidden, tf.constant(-1.0, tf.float64), p)
    # Ties go to the lowest id explicitly (tf.argmax does not promise which one wins).
    best = tf.reduce_min(tf.where(tf.equal(masked, tf.reduce_max(masked)), ids, size))

    def draw():
        next_state, bits = splitmix64_next(rng_state)
        u = uniform_of(bits)
        log_p = tf.math.log(p)
        top = tf.reduce_max(log_p)
        alive = tf.math.is_finite(top)
        # A weight below 2^-1022 is 0 here (TensorFlow flushes float64 denormals) where numpy keeps
        # it; that can move a token only when u * total lands within 2^-1022 of a boundary.
        weights = tf.exp((log_p - tf.where(alive, top, tf.constant(0.0, tf.float64))) / temperature)
        # Rank by p descending, equal p by id ascending (top_k behind a descending sort keeps ties in id order).
        order = tf.argsort(p, direction="DESCENDING", stable=True)
        ranked = tf.gather(weights, order)
        ranks = tf.range(size)
        use_top_k = (top_k > 0) & (top_k < size)
        ranked = tf.where(use_top_k & (ranks >= top_k), tf.constant(0.0, tf.float64), ranked)
        cumulative = tf.math.cumsum(ranked)
        before = cumulative - ranked
        outside = (before >= (top_p - _TOP_P_TOLERANCE) * cumulative[-1]) & (ranks >= 1)
        ranked = tf.where((top_p < 1.0) & outside, tf.constant(0.0, tf.float64), ranked)
        kept = tf.gather(ranked, tf.math.invert_permutation(order))
        running = tf.math.cumsum(kept)
        target = u * running[-1]
        chosen = tf.reduce_sum(tf.cast(running <= target, tf.int32))
        # u * total can round up to the total itself: at most the last id with weight.
        last_positive = tf.reduce_max(tf.where(kept > 0.0, ids, -1))
        return tf.where(alive, tf.minimum(chosen, last_positive), best), next_state

    return tf.cond(temperature > 0.0, draw, lambda: (best, rng_state))


class _Piece(NamedTuple):
    """Where the `generate` loop is in its piece: tf.while_loop carries it as nested loop variables."""

    step: object  # int32: tokens drawn so far
    done: object  # bool
    reason: object  # int32 index into STOP_REASONS
    events_so_far: object  # int32: events emitted
    rng_state: object  # uint64 SplitMix64 state
    ids: object  # TensorArray of the drawn ids

    @staticmethod
    def start(seed) -> _Piece:
        import tensorflow as tf

        return _Piece(step=tf.constant(0), done=tf.constant(False), reason=tf.constant(_BY_TOKEN_LIMIT),
                      events_so_far=tf.constant(0), rng_state=seed_state(seed),
                      ids=tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=tf.TensorShape([])))

    def drawn(self):
        """The piece's ids: the step that stopped it (between sonorities, or a <piece> token) emitted nothing."""
        import tensorflow as tf

        count = tf.where(self.done & tf.not_equal(self.reason, _BY_LENGTH), self.step - 1, self.step)
        return self.ids.stack()[:count]


class _Context(NamedTuple):
    """What the tokens read so far leave: the LSTM's (h, c) stack, the next-token probabilities and the
    grammar state; the `generate` loops carry it as nested loop variables."""

    lstm_state: object  # float32 [1, 2 * layers, hidden]
    probabilities: object  # float32 [V]
    where: object  # _GraphGrammar's (phase, top, current, previous)


def _generate_checks(vocabulary_size: int, *, primer, length, min_length, temperature, top_k, top_p) -> list:
    """Assertions on the `generate` inputs, with the messages a caller sees."""
    import tensorflow as tf

    return [
        tf.debugging.assert_greater_equal(length, 1, message="generate: length (events) must be >= 1"),
        tf.debugging.assert_less_equal(length, MAX_LENGTH, message=f"generate: length must be <= {MAX_LENGTH}"),
        tf.debugging.assert_non_negative(min_length, message="generate: min_length (events) must be >= 0"),
        tf.debugging.assert_non_negative(temperature, message="generate: temperature must be >= 0 (0 is greedy)"),
        tf.debugging.assert_less(temperature, tf.constant(float("inf"), tf.float64),
                                 message="generate: temperature must be finite"),
        tf.debugging.assert_non_negative(top_k, message="generate: top_k must be >= 0 (0 is off)"),
        tf.debugging.assert_greater(top_p, tf.constant(0.0, tf.float64),
                                    message="generate: top_p must be in (0, 1]"),
        tf.debugging.assert_less_equal(top_p, tf.constant(1.0, tf.float64),
                                       message="generate: top_p must be in (0, 1]"),
        tf.debugging.assert_less(primer, vocabulary_size,
                                 message=f"generate: primer ids must be < {vocabulary_size}"),
        tf.debugging.assert_non_negative(primer, message="generate: primer ids must be >= 0")]


def _read_primer(step_model, grammar: _GraphGrammar, *, primer) -> _Context:
    """The step model and the grammar after reading `primer`, from zero LSTM state and the grammar's start."""
    import tensorflow as tf

    def prime(i, context):
        token = primer[i]
        out = step_model(tf.reshape(token, [1]), context.lstm_state)
        return i + 1, _Context(out["next_state"], out["probabilities"][0], grammar.advance(context.where, token))

    start = _Context(tf.zeros([1, *step_model.state_shape], tf.float32), tf.zeros([grammar.size], tf.float32),
                     grammar.start())
    return tf.while_loop(lambda i, _: i < tf.size(primer), prime, (tf.constant(0), start))[1]


def _generate_function(step_model, vocabulary):
    """`generate(primer, length, min_length, temperature, top_k, top_p, seed)`: one piece, the portable loop.

    Exactly the piece loop every path follows (export/README.md, "SavedModel
    signatures"): the grammar and the model read the primer, then tokens are drawn
    with `sample_one` and SplitMix64(seed) until `length` events, a `<piece>` token
    or `32 * length` tokens.
    """
    import tensorflow as tf

    vocabulary_size = len(vocabulary)
    tokens = tf.constant(vocabulary.tokens, dtype=tf.string)
    boundary_id = vocabulary.boundary_id
    grammar = _GraphGrammar(events.grammar_table(vocabulary.tokens, vocabulary.representation))
    reasons = tf.constant(STOP_REASONS)

    def generate(primer, length, min_length, temperature, top_k, top_p, seed):
        with tf.control_dependencies(_generate_checks(
                vocabulary_size, primer=primer, length=length, min_length=min_length, temperature=temperature,
                top_k=top_k, top_p=top_p)):
            primer = tf.cond(tf.size(primer) > 0, lambda: tf.identity(primer),
                             lambda: tf.constant([boundary_id], tf.int32))
            length = tf.identity(length)
        min_length = tf.minimum(min_length, length)
        max_tokens = length * TOKENS_PER_EVENT_LIMIT

        context = _read_primer(step_model, grammar, primer=primer)

        def extend(piece, context):
            last = tf.equal(piece.step, max_tokens - 1)
            allowed = grammar.allowed(context.where, last)
            allowed = allowed & ((tf.range(vocabulary_size) != boundary_id) | (piece.events_so_far >= min_length))
            token, rng_state = sample_one(context.probabilities, allowed, temperature=temperature, top_k=top_k,
                                          top_p=top_p, rng_state=piece.rng_state)
            full = last & grammar.between(context.where)  # nothing drawn: the piece stops between sonorities
            ended = tf.logical_not(full) & tf.equal(token, boundary_id)
            emitted = tf.logical_not(full | ended)
            ids = piece.ids.write(piece.step, token)  # the stopping step's slot is cut off below
            events_so_far = piece.events_so_far + tf.cast(emitted & grammar.is_event[token], tf.int32)
            reached = emitted & (events_so_far >= length)
            done = full | ended | reached
            reason = tf.where(reached, _BY_LENGTH, tf.where(ended, _BY_BOUNDARY, _BY_TOKEN_LIMIT))

            def forward():
                out = step_model(tf.reshape(token, [1]), context.lstm_state)
                return out["next_state"], out["probabilities"][0]

            lstm_state, probabilities = tf.cond(done, lambda: (context.lstm_state, context.probabilities), forward)
            return (_Piece(step=piece.step + 1, done=done, reason=reason, events_so_far=events_so_far,
                           rng_state=rng_state, ids=ids),
                    _Context(lstm_state, probabilities, grammar.advance(context.where, token)))

        piece, _ = tf.while_loop(lambda piece, _: tf.logical_not(piece.done) & (piece.step < max_tokens), extend,
                                 (_Piece.start(seed), context))
        ids = piece.drawn()
        return {"ids": ids, "tokens": tf.gather(tokens, ids), "stop_reason": reasons[piece.reason]}

    return generate


def _attach_vocabulary(archive, vocab_file: str) -> None:
    """vocab.json as the SavedModel's asset, reachable after loading as `loaded.vocabulary_file.asset_path`.

    ExportArchive has no public hook for assets; attaching the Asset to the root it
    saves copies vocab.json into assets/.
    """
    import keras
    import tensorflow as tf

    root = getattr(archive, "_tf_trackable", None)
    if root is None:
        raise ExportError(f"keras {keras.__version__}: ExportArchive has no root trackable to attach "
                          "vocab.json to (expected ExportArchive._tf_trackable)")
    root.vocabulary_file = tf.saved_model.Asset(vocab_file)
