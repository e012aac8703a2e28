"""Tests for keras_music/__init__.py: the public API, imported lazily, and the TensorFlow version check."""

import subprocess
import sys

import pytest

import keras_music


@pytest.mark.parametrize("version", ["2.16.1", "2.17.0", "2.17.1rc0", None])
def test_supported_tensorflow_versions_pass(version):
    keras_music.check_tensorflow_version(version)  # None: TensorFlow is missing, which its import reports


@pytest.mark.parametrize("version", ["2.18.0", "2.15.1", "2.1.0", "3.0.0"])
def test_other_tensorflow_versions_are_refused_with_the_fix(version):
    with pytest.raises(keras_music.EnvironmentMismatch) as error:
        keras_music.check_tensorflow_version(version)
    assert isinstance(error.value, ImportError)
    assert str(error.value) == (
        f"keras_music needs TensorFlow 2.16 or 2.17 (found {version}): tensorflow-io 0.37.1's compiled ops do not "
        "load on other versions. Reinstall with: pip install 'tensorflow==2.17.*' 'tensorflow-io==0.37.1'")


FAKE_TENSORFLOW = ("from importlib import metadata\n"
                   "real = metadata.version\n"
                   "metadata.version = lambda name: '2.18.0' if name.startswith('tensorflow') else real(name)\n")


def run_python(code, timeout=120, **kwargs):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, **kwargs)


def test_the_installed_tensorflow_passes_the_check():
    import tensorflow as tf

    keras_music.check_tensorflow_version(tf.__version__)
    keras_music.require_tensorflow()


def test_the_version_is_checked_where_tensorflow_is_imported_not_at_package_import():
    # With a TensorFlow that tensorflow-io cannot load (faked), the package, its public names and its
    # numpy-only modules still import; a module that imports TensorFlow stops with the fix.
    code = FAKE_TENSORFLOW + (
        "import sys\n"
        "import keras_music, keras_music.music_metrics, keras_music.sampling, keras_music.config\n"
        "from keras_music import Config, Generator, train, evaluate_run, export_run\n"
        "assert Config().train.epochs == 60\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
        "for name in ('model', 'dataset', 'callbacks'):\n"
        "    try:\n"
        "        __import__('keras_music.' + name)\n"
        "    except keras_music.EnvironmentMismatch as error:\n"
        "        print(name, error)\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    message = ("keras_music needs TensorFlow 2.16 or 2.17 (found 2.18.0): tensorflow-io 0.37.1's compiled ops do not "
               "load on other versions. Reinstall with: pip install 'tensorflow==2.17.*' 'tensorflow-io==0.37.1'")
    assert result.stdout.splitlines() == [f"model {message}", f"dataset {message}", f"callbacks {message}"]


def test_a_command_with_the_wrong_tensorflow_says_so_in_one_line(tmp_path):
    code = FAKE_TENSORFLOW + (
        "import runpy, sys\n"
        f"sys.argv = ['train', '--run-dir', {str(tmp_path / 'run')!r}, '--data', 'bach/bwv66.6', '--quiet']\n"
        "runpy.run_module('keras_music.train', run_name='__main__', alter_sys=True)\n")
    result = run_python(code)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "python -m keras_music.train: error: keras_music needs TensorFlow 2.16 or 2.17 (found 2.18.0): tensorflow-io "
        "0.37.1's compiled ops do not load on other versions. Reinstall with: pip install 'tensorflow==2.17.*' "
        "'tensorflow-io==0.37.1'"]
    assert issubclass(keras_music.EnvironmentMismatch, (keras_music.KerasMusicError, ImportError))


def test_the_public_api_is_there_without_loading_tensorflow():
    code = ("import sys\n"
            "import keras_music, keras_music.music_metrics\n"
            "assert 'tensorflow' not in sys.modules, 'import keras_music loaded TensorFlow'\n"
            "from keras_music import Config, Generator, evaluate_run, export_run, load_config, train\n"
            "assert 'tensorflow' not in sys.modules, 'the public names loaded TensorFlow'\n"
            "from keras_music import config, evaluate, export, generate\n"
            "import keras_music.train as train_module\n"
            "assert (Config, load_config, Generator) == (config.Config, config.load, generate.Generator)\n"
            "assert (evaluate_run, export_run) == (evaluate.evaluate_run, export.export)\n"
            "assert train is train_module is keras_music.train and callable(train)\n"
            "assert set(keras_music.__all__) <= set(dir(keras_music))\n"
            "print('ok')\n")
    result = run_python(code)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr
    with pytest.raises(AttributeError, match="module 'keras_music' has no attribute 'trian'"):
        keras_music.trian


def test_calling_keras_music_train_is_train_train(monkeypatch):
    from keras_music import train

    calls = []
    monkeypatch.setattr(train, "train", lambda config, run_dir, **kwargs: calls.append((config, run_dir, kwargs)) or {})
    assert keras_music.train("CONFIG", "RUN", show_progress=False) == {}
    assert calls == [("CONFIG", "RUN", {"show_progress": False, "log": print})]


def test_load_config_takes_files_and_overrides_as_strings_or_a_mapping(tmp_path):
    from conftest import TINY

    from keras_music import Config, load_config

    by_strings = load_config([TINY], ["train.epochs=1", "data.sources=[bach/bwv66.6]", "train.learning_rate=5e-4"])
    by_mapping = load_config(TINY, {"train.epochs": 1, "data.sources": ("bach/bwv66.6",), "train.learning_rate": "5e-4"})
    assert by_strings == by_mapping and isinstance(by_mapping, Config)
    assert (by_mapping.train.epochs, by_mapping.train.learning_rate, by_mapping.model.hidden_size) == (1, 5e-4, 16)
    assert load_config(overrides={"train": {"epochs": 2}}).train.epochs == 2
    with pytest.raises(keras_music.config.ConfigError, match=r"^train.epochs: expected an integer, got 1.5$"):
        load_config(overrides={"train.epochs": 1.5})
