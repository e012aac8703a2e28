"""Untrusted run directories: every missing, corrupt or mismatched file is one clear error naming it."""

import ast
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from keras_music import run as run_lib
from conftest import REPO


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(tiny_run, target)
    return str(target)


def test_model_and_vocabulary_that_do_not_belong_together(run_copy):
    vocab_path = os.path.join(run_copy, "vocab.json")
    vocab = json.load(open(vocab_path))
    vocab["tokens"].append("pitch:127")
    vocab["counts"].append(0)
    vocab["size"] += 1
    json.dump(vocab, open(vocab_path, "w"))
    with pytest.raises(run_lib.RunError) as error:
        run_lib.load_model(run_copy)
    message = str(error.value)
    assert "model.keras was trained with" in message and f"vocab.json has {vocab['size']}" in message


@pytest.mark.parametrize("content, expected", [
    ("{not json", "is not valid JSON"),
    ('{"format": "something-else"}', "not a keras_music vocabulary"),
    ('{"format": "keras_music.vocabulary", "version": 1, "representation": "note", "tokens": ["a", "b"]}',
     "must start with"),
    ('{"format": "keras_music.vocabulary", "version": 1, "representation": "drums", "tokens": []}',
     "unknown representation 'drums'"),
    ('{"format": "keras_music.vocabulary", "version": 9, "representation": "note", "tokens": []}',
     "version 9 is not supported"),
])
def test_corrupt_vocabulary_is_named(run_copy, content, expected):
    path = os.path.join(run_copy, "vocab.json")
    with open(path, "w") as handle:
        handle.write(content)
    with pytest.raises(run_lib.RunError) as error:
        run_lib.load_vocabulary(run_copy)
    assert path in str(error.value) and expected in str(error.value)


def test_missing_and_corrupt_model_files_are_named(run_copy):
    path = os.path.join(run_copy, "model.keras")
    with open(path, "wb") as handle:
        handle.write(b"PK\x03\x04 truncated zip")
    with pytest.raises(run_lib.RunError, match="model.keras cannot be loaded as a Keras model"):
        run_lib.load_model(run_copy)
    os.remove(path)
    with pytest.raises(run_lib.RunError, match="model.keras is missing"):
        run_lib.load_model(run_copy)


def test_config_with_unknown_key_is_named(run_copy):
    path = os.path.join(run_copy, "config.yaml")
    with open(path, "a") as handle:
        handle.write("extra:\n  key: 1\n")
    with pytest.raises(run_lib.RunError, match=r"config.yaml: unknown config key 'extra'"):
        run_lib.load_config(run_copy)


def test_models_load_in_safe_mode_so_a_lambda_cannot_run_code(tmp_path):
    import keras

    inputs = keras.Input((2,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    path = str(tmp_path / "model.keras")
    keras.Model(inputs, outputs).save(path)
    from keras_music import model as model_lib

    with pytest.raises(ValueError, match="(?i)lambda|unsafe|safe_mode"):
        model_lib.load_model(path)


def test_generate_on_a_broken_run_is_one_line_not_a_traceback(run_copy):
    os.remove(os.path.join(run_copy, "vocab.json"))
    result = subprocess.run([sys.executable, "-m", "keras_music.generate", "--run-dir", run_copy, "--length", "5"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "vocab.json does not exist" in result.stderr


def test_no_pickle_anywhere_in_the_package():
    for path in pathlib.Path(REPO, "keras_music").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name in ("pickle", "dill", "cloudpickle") for a in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("pickle", "dill", "cloudpickle"), path


def test_primer_in_another_representation_is_one_clear_error(tiny_run):
    result = subprocess.run([sys.executable, "-m", "keras_music.generate", "--run-dir", tiny_run, "--length", "5",
                             "--primer-tokens", "C4 E4 0.4.7", "--out", os.path.join(tiny_run, "never")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "primer tokens are in the classic representation (C4, E4, 0.4.7)" in result.stderr
    assert "trained on the note representation" in result.stderr
    assert not os.path.exists(os.path.join(tiny_run, "never"))
