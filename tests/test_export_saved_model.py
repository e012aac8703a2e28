"""Tests for keras_music.export_saved_model: the SavedModel's signatures match Keras, and the batch-1 step model."""

import os

import numpy as np
import pytest

from keras_music import export_parity, export_saved_model, model as model_lib, run as run_lib, sampling

GREEDY_STEPS = 200
WINDOWS = 4


@pytest.fixture(scope="module")
def keras_reference(tiny_run):
    vocabulary = run_lib.load_vocabulary(tiny_run)
    model = run_lib.load_model(tiny_run, vocabulary)
    config = run_lib.load_config(tiny_run)
    windows, _ = export_parity.held_out_windows(tiny_run, config.data.seq_length, vocabulary.boundary_id, WINDOWS)
    return model, model_lib.StepModel(model), vocabulary, windows


@pytest.fixture(scope="module")
def written(tiny_run, keras_reference, tmp_path_factory):
    """The tiny run's SavedModel as the export writes it; returns (folder, loaded)."""
    import tensorflow as tf

    model, _, vocabulary, _ = keras_reference
    directory = tmp_path_factory.mktemp("saved-model")
    vocab_file = str(directory / "vocab.json")
    with open(run_lib.path(tiny_run, run_lib.VOCAB), "rb") as source, open(vocab_file, "wb") as copy:
        copy.write(source.read())
    folder = str(directory / "saved_model")
    export_saved_model.write_saved_model(model, vocabulary, vocab_file, folder)
    return folder, tf.saved_model.load(folder)


def keras_greedy(step_model, primer, steps, banned=(0, 1)):
    """Greedy ids and the probabilities each was chosen from, with the Keras step model."""
    state = step_model.initial_state(1)
    for token in primer:
        probabilities, state = step_model.step(np.array([token]), state)
    ids, seen = [], []
    for _ in range(steps):
        chosen = int(sampling.greedy(probabilities, banned)[0])
        ids.append(chosen)
        seen.append(probabilities[0])
        probabilities, state = step_model.step(np.array([chosen]), state)
    return np.array(ids), np.stack(seen)


def test_the_saved_model_has_the_contract_signatures_and_the_vocabulary(written, keras_reference, tiny_run):
    import tensorflow as tf

    _, step_model, vocabulary, _ = keras_reference
    rows, hidden = step_model.state_shape
    folder, loaded = written
    assert sorted(loaded.signatures) == sorted(export_saved_model.SIGNATURES)
    specs = {name: loaded.signatures[name].structured_input_signature[1] for name in export_saved_model.SIGNATURES}
    assert specs == {
        "serving_default": {"tokens": tf.TensorSpec([None, None], tf.int32, name="tokens")},
        "step": {"token": tf.TensorSpec([None], tf.int32, name="token"),
                 "state": tf.TensorSpec([None, rows, hidden], tf.float32, name="state")},
        "generate": {"primer": tf.TensorSpec([None], tf.int32, name="primer"),
                     "num_steps": tf.TensorSpec([], tf.int32, name="num_steps"),
                     "temperature": tf.TensorSpec([], tf.float32, name="temperature"),
                     "seed": tf.TensorSpec([], tf.int32, name="seed")},
        "initial_state": {"batch_size": tf.TensorSpec([], tf.int32, name="batch_size")},
    }
    outputs = {name: sorted(loaded.signatures[name].structured_outputs) for name in export_saved_model.SIGNATURES}
    assert outputs == {"serving_default": ["probabilities"], "step": ["next_state", "probabilities"],
                       "generate": ["ids", "tokens"], "initial_state": ["state"]}
    with open(run_lib.path(tiny_run, run_lib.VOCAB), "rb") as handle:
        expected = handle.read()
    for copy in (os.path.join(folder, "assets", "vocab.json"), loaded.vocabulary_file.asset_path.numpy().decode()):
        with open(copy, "rb") as handle:
            assert handle.read() == expected


def test_saved_model_matches_keras_on_held_out_windows(written, keras_reference):
    import tensorflow as tf

    loaded = written[1]
    model, step_model, _, windows = keras_reference
    served = loaded.signatures["serving_default"](tokens=tf.constant(windows))["probabilities"].numpy()
    expected = model(windows, training=False).numpy()
    assert served.shape == expected.shape
    assert np.abs(served - expected).max() <= 1e-5

    step = loaded.signatures["step"]
    state = loaded.signatures["initial_state"](batch_size=tf.constant(len(windows)))["state"]
    keras_state = step_model.initial_state(len(windows))
    assert tuple(state.shape) == keras_state.shape
    for t in range(windows.shape[1]):
        out = step(token=tf.constant(windows[:, t]), state=state)
        keras_probabilities, keras_state = step_model.step(windows[:, t], keras_state)
        state = out["next_state"]
        assert np.abs(out["probabilities"].numpy() - keras_probabilities).max() <= 1e-5
        assert np.abs(state.numpy() - keras_state).max() <= 1e-5


def test_generate_signature(written, keras_reference):
    import tensorflow as tf

    _, step_model, vocabulary, windows = keras_reference
    generate = written[1].signatures["generate"]

    def call(primer, steps, temperature, seed):
        out = generate(primer=tf.constant(np.asarray(primer, np.int32)), num_steps=tf.constant(steps),
                       temperature=tf.constant(temperature, tf.float32), seed=tf.constant(seed))
        return out["ids"].numpy(), [t.decode() for t in out["tokens"].numpy()]

    first, tokens = call([2], 60, 1.0, 7)
    again, _ = call([2], 60, 1.0, 7)
    other, _ = call([2], 60, 1.0, 8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert tokens == vocabulary.decode(first) and first.dtype == np.int32 and len(first) == 60
    hot, _ = call([2], 400, 5.0, 1)
    assert not set(hot.tolist()) & {0, 1}, "generate sampled <pad>/<unk>"

    for primer in ([vocabulary.boundary_id], windows[1][:10]):
        greedy_ids, _ = call(primer, GREEDY_STEPS, 0.0, 123)
        keras_ids, _ = keras_greedy(step_model, primer, GREEDY_STEPS)
        np.testing.assert_array_equal(greedy_ids, keras_ids)
    empty_primer, _ = call([], 20, 0.0, 0)
    np.testing.assert_array_equal(empty_primer, keras_greedy(step_model, [2], 20)[0])
    assert call([2], 0, 1.0, 0)[0].shape == (0,)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_steps"):
        call([2], -1, 1.0, 0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="primer"):
        call([len(vocabulary)], 3, 1.0, 0)


def test_the_step_saved_model_takes_one_token_and_equals_keras(keras_reference, tmp_path):
    import tensorflow as tf

    model, step_model, _, windows = keras_reference
    folder = str(tmp_path / "step")
    export_saved_model.write_step_saved_model(model, folder)
    loaded = tf.saved_model.load(folder)
    # ExportArchive also serves its only endpoint as serving_default; the converter reads `step`.
    assert sorted(loaded.signatures) == ["serving_default", "step"]
    step = loaded.signatures["step"]
    assert step.structured_input_signature[1] == {
        "token": tf.TensorSpec([1], tf.int32, name="token"),
        "state": tf.TensorSpec([1, *step_model.state_shape], tf.float32, name="state")}
    state, keras_state = tf.zeros([1, *step_model.state_shape]), step_model.initial_state(1)
    for token in windows[0][:20]:
        out = step(token=tf.constant([token], tf.int32), state=state)
        keras_probabilities, keras_state = step_model.step([token], keras_state)
        state = out["next_state"]
        assert np.abs(out["probabilities"].numpy() - keras_probabilities).max() <= 1e-5
