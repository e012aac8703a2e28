"""Tests for keras_music.model: the LSTM's shape, its step twin, and saving with metadata in safe mode."""

import json
import zipfile

import numpy as np
import pytest

from keras_music import model as model_lib


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(0)
    return model_lib.build_model(12, embedding_size=4, hidden_size=8, num_layers=2, dropout=0.1)


def token_ids(shape, seed=0, vocabulary_size=12):
    return np.random.default_rng(seed).integers(0, vocabulary_size, shape).astype(np.int32)


def test_build_model_names_its_layers_and_outputs_a_distribution_per_position(model):
    assert [layer.name for layer in model.layers] == ["tokens", "embedding", "lstm_0", "dropout_0", "lstm_1",
                                                      "dropout_1", "head"]
    assert all(layer.activation.__name__ == "tanh" for layer in model_lib.lstm_layers(model))
    probabilities = model(token_ids((3, 7)), training=False).numpy()
    assert probabilities.shape == (3, 7, 12)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    # embedding 12x4; LSTM 4 gates x (8 x (4 + 8) + 8) and 4 x (8 x (8 + 8) + 8); head 8x12 + 12
    assert model_lib.describe(model) == {"vocabulary_size": 12, "embedding_size": 4, "hidden_size": 8,
                                         "num_layers": 2, "state_shape": [4, 8],
                                         "parameters": 48 + 416 + 544 + 108}


def test_no_dropout_layers_without_dropout_and_too_small_a_vocabulary_is_refused():
    plain = model_lib.build_model(5, embedding_size=2, hidden_size=3, num_layers=1, dropout=0.0)
    assert [layer.name for layer in plain.layers] == ["tokens", "embedding", "lstm_0", "head"]
    with pytest.raises(ValueError, match=r"vocabulary_size must be >= 4 \(3 special tokens \+ 1\), got 3"):
        model_lib.build_model(3)


def test_step_model_equals_the_sequence_model_token_by_token(model):
    step = model_lib.StepModel(model)
    assert (step.num_layers, step.hidden_size, step.vocabulary_size, step.state_shape) == (2, 8, 12, (4, 8))
    ids = token_ids((3, 9), seed=1)
    expected = model(ids, training=False).numpy()
    state = step.initial_state(3)
    assert state.shape == (3, 4, 8) and not state.any()
    for t in range(ids.shape[1]):
        probabilities, state = step.step(ids[:, t], state)
        np.testing.assert_allclose(probabilities, expected[:, t], atol=1e-5)
    # The uncompiled call gives the same first step.
    first = step(ids[:, 0], step.initial_state(3))
    np.testing.assert_allclose(first["probabilities"].numpy(), expected[:, 0], atol=1e-5)


def test_step_model_needs_one_hidden_size_and_lstm_layers():
    import keras

    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(6, 2, name="embedding")(tokens)
    x = keras.layers.LSTM(4, return_sequences=True)(x)
    x = keras.layers.LSTM(5, return_sequences=True)(x)
    mixed = keras.Model(tokens, keras.layers.Dense(6, activation="softmax", name="head")(x))
    with pytest.raises(ValueError, match="the same hidden size"):
        model_lib.StepModel(mixed)
    dense = keras.Model(tokens, keras.layers.Dense(6, name="head")(keras.layers.Embedding(6, 2)(tokens)))
    with pytest.raises(ValueError, match="has no LSTM layers"):
        model_lib.StepModel(dense)


def test_save_model_keeps_the_metadata_and_load_model_gives_the_same_outputs(model, tmp_path):
    path = str(tmp_path / "model.keras")
    metadata = {"vocabulary_fingerprint": "f" * 64, "vocabulary_size": 12}
    model_lib.save_model(model, path, metadata=metadata)
    assert model_lib.read_metadata(path) == metadata
    loaded = model_lib.load_model(path)
    ids = token_ids((2, 5), seed=2)
    np.testing.assert_array_equal(loaded(ids, training=False).numpy(), model(ids, training=False).numpy())
    assert not loaded.compiled  # loaded for inference only


def test_read_metadata_is_none_for_files_without_it(model, tmp_path):
    plain = str(tmp_path / "plain.keras")
    model_lib.save_model(model, plain)
    assert model_lib.read_metadata(plain) is None
    (tmp_path / "text.keras").write_text("not a zip archive")
    assert model_lib.read_metadata(str(tmp_path / "text.keras")) is None
    assert model_lib.read_metadata(str(tmp_path / "missing.keras")) is None
    with zipfile.ZipFile(tmp_path / "list.keras", "w") as archive:
        archive.writestr(model_lib.METADATA, json.dumps(["not", "a", "mapping"]))
    assert model_lib.read_metadata(str(tmp_path / "list.keras")) is None


def test_load_model_runs_no_code_from_the_file(tmp_path, monkeypatch):
    import keras

    marker = tmp_path / "code-ran"
    monkeypatch.setenv("KERAS_MUSIC_TEST_MARKER", str(marker))
    inputs = keras.Input((2,))
    # Code stored in the file: it would leave a marker file behind when it runs.
    outputs = keras.layers.Lambda(
        lambda x: (open(__import__("os").environ["KERAS_MUSIC_TEST_MARKER"], "w").close(), x * 2)[1])(inputs)
    path = str(tmp_path / "model.keras")
    keras.Model(inputs, outputs).save(path)
    marker.unlink()  # building the model ran the lambda once; loading must not
    with pytest.raises(ValueError, match="(?i)lambda|unsafe|safe_mode"):
        model_lib.load_model(path)
    assert not marker.exists()
