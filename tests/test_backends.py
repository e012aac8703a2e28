"""Tests for keras_music.backends: Keras, SavedModel and TFLite stepping agree, and exports are checked before use."""

import json
import os
import shutil

import numpy as np
import pytest

from keras_music import backends, export, generate, run as run_lib
from keras_music.sampling import SamplingSettings


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """A private copy of the tiny run with its float32 export (tiny_run itself is shared read-only)."""
    directory = str(tmp_path_factory.mktemp("backends") / "run")
    shutil.copytree(tiny_run, directory, ignore=shutil.ignore_patterns("export"))
    export.export(directory, export.ExportSettings(quantize=("none",), parity_windows=1, parity_steps=0),
                  log=lambda *a: None)
    return directory


@pytest.fixture(scope="module")
def all_backends(exported):
    vocabulary = run_lib.load_vocabulary(exported)
    return {name: backends.make_backend(exported, name, vocabulary=vocabulary) for name in backends.BACKENDS}


# Float32 exports: the SavedModel runs the same graph as Keras; TFLite's kernels round differently.
TOLERANCE = {"keras": 1e-5, "savedmodel": 1e-5, "tflite": 1e-4}


def test_every_backend_steps_to_the_sequence_model_at_every_position(all_backends):
    model = all_backends["keras"].model
    vocabulary_size = all_backends["keras"].vocabulary_size
    rng = np.random.default_rng(0)
    for length in (1, 5, 23):
        ids = rng.integers(0, vocabulary_size, size=(3, length)).astype(np.int32)
        expected = model(ids, training=False).numpy()
        for name, backend in all_backends.items():
            state = backend.initial_state(3)
            assert state.shape == (3, *backend.state_shape) and not state.any()
            for t in range(length):
                probabilities, state = backend.step(ids[:, t], state)
                assert probabilities.shape == (3, vocabulary_size)
                assert np.max(np.abs(probabilities - expected[:, t])) < TOLERANCE[name], (name, length, t)


def test_every_backend_gives_the_same_probabilities_and_states_for_the_same_tokens(all_backends):
    keras = all_backends["keras"]
    assert {b.vocabulary_size for b in all_backends.values()} == {keras.vocabulary_size}
    assert {b.state_shape for b in all_backends.values()} == {keras.state_shape}
    rng = np.random.default_rng(1)
    ids = rng.integers(3, keras.vocabulary_size, size=(2, 12)).astype(np.int32)
    states = {name: backend.initial_state(2) for name, backend in all_backends.items()}
    for t in range(ids.shape[1]):
        outputs = {name: backend.step(ids[:, t], states[name]) for name, backend in all_backends.items()}
        states = {name: state for name, (_, state) in outputs.items()}
        for name in ("savedmodel", "tflite"):
            assert np.max(np.abs(outputs[name][0] - outputs["keras"][0])) < TOLERANCE[name], (name, t)
            assert np.max(np.abs(outputs[name][1] - outputs["keras"][1])) < TOLERANCE[name], (name, t)


def test_a_tflite_batch_equals_its_rows_stepped_alone(all_backends):
    lite = all_backends["tflite"]
    ids = np.array([[2, 7, 9, 4], [2, 5, 5, 8], [2, 11, 3, 6]], np.int32)
    state = lite.initial_state(3)
    rows = [lite.initial_state(1) for _ in range(3)]
    for t in range(ids.shape[1]):
        probabilities, state = lite.step(ids[:, t], state)
        for row in range(3):
            alone, rows[row] = lite.step(ids[row:row + 1, t], rows[row])
            np.testing.assert_array_equal(probabilities[row], alone[0])
            np.testing.assert_array_equal(state[row], rows[row][0])


def test_every_backend_gives_the_same_pieces(exported):
    from test_generate import simple_primer

    results = {}
    for backend in backends.BACKENDS:
        chosen = generate.Generator(exported, backend, log=lambda m: None)
        greedy = chosen.generate(num_samples=2, primer_tokens=simple_primer(chosen), sampling=SamplingSettings(length=12, temperature=0))
        sampled = chosen.generate(num_samples=2, seed=9, sampling=SamplingSettings(length=12, temperature=1.0))
        results[backend] = ([p.tokens for p in greedy], [p.tokens for p in sampled])
    assert all(tokens for tokens in results["keras"][0] + results["keras"][1])
    assert results["savedmodel"] == results["keras"]
    assert results["tflite"] == results["keras"]


# ----------------------------------------------------------------------------- refused exports

def test_export_backends_need_the_export(tmp_path):
    for backend in (backends.SavedModelBackend, backends.TFLiteBackend):
        with pytest.raises(backends.BackendError, match="is missing: export the run first with "
                                                        "python -m keras_music.export --run-dir"):
            backend(str(tmp_path))


def test_unknown_backends_are_refused_by_name(exported):
    with pytest.raises(backends.BackendError, match=r"unknown backend 'onnx' \(expected one of keras, savedmodel, "
                                                    r"tflite\)"):
        backends.make_backend(exported, "onnx")


def test_tampered_export_files_are_refused(exported, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(exported, copy)
    vocabulary = run_lib.load_vocabulary(copy)
    path = os.path.join(copy, "export", "model.tflite")
    payload = bytearray(open(path, "rb").read())
    payload[len(payload) // 2] ^= 0x01
    open(path, "wb").write(bytes(payload))
    with pytest.raises(run_lib.RunError, match="model.tflite was changed or damaged since it was exported"):
        backends.make_backend(copy, "tflite", vocabulary=vocabulary)
    os.remove(os.path.join(copy, "export", "export_report.json"))
    with pytest.raises(run_lib.RunError, match="export_report.json is missing"):
        backends.make_backend(copy, "savedmodel", vocabulary=vocabulary)


def test_an_export_made_with_another_vocabulary_is_stale(exported, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(exported, copy)
    exported_vocabulary = os.path.join(copy, "export", "vocab.json")
    data = json.loads(open(exported_vocabulary).read())
    data["tokens"][-1], data["tokens"][-2] = data["tokens"][-2], data["tokens"][-1]
    with open(exported_vocabulary, "w") as handle:
        json.dump(data, handle)
    for name in ("savedmodel", "tflite"):
        with pytest.raises(backends.BackendError, match="differs from .*vocab.json: the export is stale; re-export"):
            backends.make_backend(copy, name, vocabulary=run_lib.load_vocabulary(copy))
    # The Keras backend never reads the export.
    keras = backends.make_backend(copy, "keras", vocabulary=run_lib.load_vocabulary(copy))
    assert keras.vocabulary_size == len(data["tokens"])
