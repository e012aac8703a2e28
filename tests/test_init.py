"""Tests for keras_music/__init__.py: the TensorFlow version check that runs on import."""

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


def test_importing_keras_music_checks_the_installed_tensorflow():
    # The installed TensorFlow passes; a different one (faked in a child process) stops the import.
    import tensorflow as tf

    keras_music.check_tensorflow_version(tf.__version__)
    fake = ("from importlib import metadata\n"
            "metadata.version = lambda name: '2.18.0'\n"
            "import keras_music\n")
    result = subprocess.run([sys.executable, "-c", fake], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "EnvironmentMismatch: keras_music needs TensorFlow 2.16 or 2.17 (found 2.18.0)" in result.stderr
