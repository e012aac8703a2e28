"""The exported SavedModels: the run's four signatures, and the batch-1 `step` one the TFLite converter reads."""

from __future__ import annotations

from keras_music.errors import KerasMusicError

SIGNATURES = ("serving_default", "step", "generate", "initial_state")


class ExportError(KerasMusicError, RuntimeError):
    """A conversion failed, needed non-builtin ops, or an artifact does not load."""


def write_saved_model(model, vocabulary, vocab_file: str, directory: str) -> None:
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
    archive.add_endpoint("generate", _generate_function(step_model, vocabulary), input_signature=[
        tf.TensorSpec([None], tf.int32, name="primer"),
        tf.TensorSpec([], tf.int32, name="num_steps"),
        tf.TensorSpec([], tf.float32, name="temperature"),
        tf.TensorSpec([], tf.int32, name="seed")])
    archive.add_endpoint("initial_state", initial_state,
                         input_signature=[tf.TensorSpec([], tf.int32, name="batch_size")])
    _attach_vocabulary(archive, vocab_file)
    archive.write_out(directory, verbose=False)


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


def _generate_function(step_model, vocabulary):
    """`generate(primer, num_steps, temperature, seed)`: the whole sampling loop in the graph, batch 1.

    The primer (the boundary alone when empty) is fed first; each further id is drawn
    from the last probabilities (`_choose`) and fed back.
    """
    import tensorflow as tf

    num_rows, hidden_size = step_model.state_shape
    vocabulary_size = len(vocabulary)
    tokens = tf.constant(vocabulary.tokens, dtype=tf.string)
    banned = tf.constant([i in vocabulary.banned_ids for i in range(vocabulary_size)], dtype=tf.bool)
    boundary = tf.constant([vocabulary.boundary_id], dtype=tf.int32)

    def generate(primer, num_steps, temperature, seed):
        checks = [tf.debugging.assert_non_negative(num_steps, message="generate: num_steps must be >= 0"),
                  tf.debugging.assert_less(primer, vocabulary_size,
                                           message=f"generate: primer ids must be < {vocabulary_size}"),
                  tf.debugging.assert_non_negative(primer, message="generate: primer ids must be >= 0")]
        with tf.control_dependencies(checks):
            primer = tf.cond(tf.size(primer) > 0, lambda: tf.identity(primer), lambda: boundary)
            num_steps = tf.identity(num_steps)
        state = tf.zeros([1, num_rows, hidden_size], tf.float32)
        probabilities = tf.zeros([1, vocabulary_size], tf.float32)

        def prime(i, state, probabilities):
            out = step_model(tf.reshape(primer[i], [1]), state)
            return i + 1, out["next_state"], out["probabilities"]

        _, state, probabilities = tf.while_loop(lambda i, *_: i < tf.size(primer), prime,
                                                (tf.constant(0), state, probabilities))
        ids = tf.TensorArray(tf.int32, size=num_steps, element_shape=tf.TensorShape([]))

        def extend(i, state, probabilities, ids):
            chosen = _choose(probabilities, temperature, seed, i, banned)
            out = step_model(chosen, state)
            return i + 1, out["next_state"], out["probabilities"], ids.write(i, chosen[0])

        _, _, _, ids = tf.while_loop(lambda i, *_: i < num_steps, extend,
                                     (tf.constant(0), state, probabilities, ids))
        ids = ids.stack()
        return {"ids": ids, "tokens": tf.gather(tokens, ids)}

    return generate


def _choose(probabilities, temperature, seed, index, banned):
    """The next id: greedy at temperature 0, else drawn with the stateless seed (seed, index); never a banned id."""
    import tensorflow as tf

    greedy = tf.argmax(tf.where(banned[None, :], -1.0, probabilities), axis=-1, output_type=tf.int32)

    def sample():
        with tf.name_scope("sample"):
            log_probabilities = tf.math.log(tf.where(banned[None, :], 0.0, probabilities))
            top = tf.reduce_max(log_probabilities, axis=-1, keepdims=True)
            # Shifting by the row maximum keeps the best token at log 1 = 0, so small
            # temperatures sharpen instead of overflowing every logit to -inf.
            top = tf.where(tf.math.is_finite(top), top, tf.zeros_like(top))
            logits = (log_probabilities - top) / temperature
            drawn = tf.random.stateless_categorical(logits, 1, seed=tf.stack([seed, index]),
                                                    dtype=tf.int32)[:, 0]
            return tf.where(tf.math.is_finite(top[:, 0]), drawn, greedy)

    return tf.cond(temperature > 0.0, sample, lambda: greedy)


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
