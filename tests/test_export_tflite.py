"""Tests for keras_music.export_tflite: builtin ops only, the batch-1 step signature, parity of each quantization."""

import os

import numpy as np
import pytest

from keras_music import export_parity, export_saved_model, export_tflite, model as model_lib, run as run_lib, sampling
from test_export_saved_model import keras_greedy

GREEDY_STEPS = 200
FILES = {"model.tflite": "none", "model_float16.tflite": "float16", "model_dynamic.tflite": "dynamic"}


@pytest.fixture(scope="module")
def keras_reference(tiny_run):
    vocabulary = run_lib.load_vocabulary(tiny_run)
    model = run_lib.load_model(tiny_run, vocabulary)
    config = run_lib.load_config(tiny_run)
    windows, _ = export_parity.held_out_windows(tiny_run, config.data.seq_length, boundary_id=vocabulary.boundary_id,
                                               count=2)
    return model, model_lib.StepModel(model), vocabulary, windows


@pytest.fixture(scope="module")
def step_saved_model(keras_reference, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tflite") / "step_saved_model")
    export_saved_model.write_step_saved_model(keras_reference[0], folder)
    return folder


@pytest.fixture(scope="module")
def converted(step_saved_model, tmp_path_factory):
    """Every quantization of the tiny run's step model, converted in this process; returns the folder."""
    directory = str(tmp_path_factory.mktemp("converted"))
    export_tflite.convert(step_saved_model, directory, quantizations=export_tflite.QUANTIZATIONS,
                          separate_process=False)
    return directory


def tflite_runner(path):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=path).get_signature_runner("step")


def tflite_greedy(runner, primer, steps, state_shape, banned=(0, 1)):
    state = np.zeros((1, *state_shape), np.float32)
    for token in primer:
        out = runner(token=np.array([token], np.int32), state=state)
        state = out["next_state"]
    ids, seen = [], []
    for _ in range(steps):
        probabilities = out["probabilities"]
        chosen = int(sampling.greedy(probabilities, banned)[0])
        ids.append(chosen)
        seen.append(probabilities[0])
        out = runner(token=np.array([chosen], np.int32), state=state)
        state = out["next_state"]
    return np.array(ids), np.stack(seen)


def test_tflite_files_use_builtin_ops_and_the_step_signature(converted, keras_reference):
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python import schema_py_generated as schema

    _, step_model, vocabulary, _ = keras_reference
    rows, hidden = step_model.state_shape
    assert sorted(os.listdir(converted)) == sorted(FILES)
    for name in FILES:
        path = os.path.join(converted, name)
        with open(path, "rb") as handle:
            flatbuffer = schema.ModelT.InitFromPackedBuf(bytearray(handle.read()), 0)
        codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in flatbuffer.operatorCodes]
        assert schema.BuiltinOperator.CUSTOM not in codes, name
        assert not [c.customCode for c in flatbuffer.operatorCodes if c.customCode], name
        with open(path, "rb") as handle:
            data = handle.read()
        operators = export_tflite.tflite_operators(data)
        assert "FULLY_CONNECTED" in operators and not any("Flex" in op or "CUSTOM" in op for op in operators)
        assert export_tflite.check_builtin_only(data, name) == operators

        interpreter = Interpreter(model_path=path)
        assert interpreter.get_signature_list() == {
            "step": {"inputs": ["state", "token"], "outputs": ["next_state", "probabilities"]}}
        runner = interpreter.get_signature_runner("step")
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        assert list(inputs["token"]["shape"]) == [1] and inputs["token"]["dtype"] == np.int32
        assert list(inputs["state"]["shape"]) == [1, rows, hidden] and inputs["state"]["dtype"] == np.float32
        assert list(outputs["probabilities"]["shape"]) == [1, len(vocabulary)]
        assert outputs["probabilities"]["dtype"] == np.float32
        assert list(outputs["next_state"]["shape"]) == [1, rows, hidden]


def test_quantized_files_are_smaller(converted):
    sizes = {FILES[name]: os.path.getsize(os.path.join(converted, name)) for name in FILES}
    assert sizes["float16"] < sizes["none"] and sizes["dynamic"] < sizes["none"]


def test_tflite_float32_matches_keras_over_200_greedy_steps(converted, keras_reference):
    _, step_model, vocabulary, windows = keras_reference
    runner = tflite_runner(os.path.join(converted, "model.tflite"))
    for primer in ([vocabulary.boundary_id], windows[0][:16]):
        keras_ids, keras_probabilities = keras_greedy(step_model, primer, GREEDY_STEPS)
        lite_ids, lite_probabilities = tflite_greedy(runner, primer, GREEDY_STEPS, step_model.state_shape)
        np.testing.assert_array_equal(lite_ids, keras_ids)
        assert np.abs(lite_probabilities - keras_probabilities).max() <= 1e-4


def test_quantized_models_agree_on_top1(converted, keras_reference):
    _, step_model, vocabulary, windows = keras_reference
    keras_ids, keras_probabilities = keras_greedy(step_model, [vocabulary.boundary_id], GREEDY_STEPS)
    path = np.concatenate([[vocabulary.boundary_id], keras_ids[:-1]]).astype(np.int32)
    for name, minimum in (("model_float16.tflite", 0.99), ("model_dynamic.tflite", 0.95)):
        runner = tflite_runner(os.path.join(converted, name))
        state = np.zeros((1, *step_model.state_shape), np.float32)
        agree = []
        for token, reference in zip(path, keras_probabilities):
            out = runner(token=np.array([token], np.int32), state=state)
            state = out["next_state"]
            agree.append(sampling.greedy(out["probabilities"], (0, 1))[0] == sampling.greedy(reference[None],
                                                                                              (0, 1))[0])
        assert np.mean(agree) >= minimum, name


def test_the_cpu_only_child_process_writes_the_same_model(step_saved_model, converted, keras_reference, tmp_path):
    # The child imports keras_music itself: this checks the code it is started with, too.
    export_tflite.convert(step_saved_model, str(tmp_path), quantizations=["none"], separate_process=True)
    assert os.listdir(tmp_path) == ["model.tflite"]
    child, here = tflite_runner(str(tmp_path / "model.tflite")), tflite_runner(os.path.join(converted, "model.tflite"))
    state = np.zeros((1, *keras_reference[1].state_shape), np.float32)
    for token in (2, 5, 9):
        ours = child(token=np.array([token], np.int32), state=state)
        theirs = here(token=np.array([token], np.int32), state=state)
        np.testing.assert_array_equal(ours["probabilities"], theirs["probabilities"])
        np.testing.assert_array_equal(ours["next_state"], theirs["next_state"])
        state = ours["next_state"]


def test_a_failed_child_conversion_says_why(tmp_path):
    missing = str(tmp_path / "no-such-model")
    failed = r"TFLite conversion in a CPU-only process failed \(exit 1\)"
    with pytest.raises(export_tflite.ExportError, match=failed) as error:
        export_tflite.convert(missing, str(tmp_path), quantizations=["none"], separate_process=True)
    # The child got as far as the converter: the tail of its traceback names the missing SavedModel.
    assert f"SavedModel file does not exist at: {missing}" in str(error.value)
    assert os.listdir(tmp_path) == []


def test_check_builtin_only_rejects_custom_ops(monkeypatch):
    monkeypatch.setattr(export_tflite, "tflite_operators", lambda data: ["ADD", "CUSTOM:FlexTensorListReserve"])
    with pytest.raises(export_tflite.ExportError, match="FlexTensorListReserve"):
        export_tflite.check_builtin_only(b"", "model.tflite")


def test_unknown_quantizations_are_refused(step_saved_model):
    with pytest.raises(ValueError, match=r"unknown quantization 'int4' \(expected one of none, float16, dynamic\)"):
        export_tflite.convert_tflite(step_saved_model, "int4")
