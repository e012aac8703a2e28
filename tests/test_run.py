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


# ----------------------------------------------------------------------------- issue 16: one writer, settings first

def snapshot(directory):
    """Every file's bytes and modification time (TensorBoard logs aside)."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            file = os.path.join(root, name)
            if os.sep + "logs" + os.sep in file:
                continue
            with open(file, "rb") as handle:
                out[os.path.relpath(file, directory)] = (handle.read(), os.stat(file).st_mtime_ns)
    return out


def test_a_rerun_with_other_settings_changes_nothing_and_the_same_settings_rewrite_nothing(run_copy):
    from keras_music import train
    from conftest import tiny_config

    before = snapshot(run_copy)
    with pytest.raises(run_lib.RunError) as error:
        train.train(tiny_config("train.seed=7", "model.hidden_size=32"), run_copy, show_progress=False,
                    log=lambda *a: None)
    message = str(error.value)
    assert "holds a run trained with other settings" in message and "nothing was changed" in message
    assert "model.hidden_size 16 -> 32" in message and "train.seed 0 -> 7" in message
    assert snapshot(run_copy) == before
    # The run still generates: model and vocabulary still belong together.
    run_lib.load_model(run_copy)
    # The same settings: the run is complete, and not one file is written again (config.yaml included).
    messages = []
    train.train(tiny_config(), run_copy, show_progress=False, log=messages.append)
    assert snapshot(run_copy) == before
    assert any("nothing to do" in m for m in messages)
    assert not os.path.exists(os.path.join(run_copy, run_lib.LOCK))


def train_command(run_dir, *extra):
    from conftest import FOUR_CHORALES, TINY

    args = [sys.executable, "-m", "keras_music.train", "--config", TINY, "--run-dir", str(run_dir), "--quiet",
            "--set", "train.num_samples=0"]
    for source in FOUR_CHORALES:
        args += ["--data", source]
    return args + list(extra)


def wait_for(predicate, seconds, what):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def test_a_second_writer_refuses_at_once_and_a_dead_owners_lock_is_taken_over(tmp_path):
    import signal
    import time

    run_dir = tmp_path / "run"
    lock_file = run_dir / run_lib.LOCK

    def owner():
        try:
            return json.loads(lock_file.read_text())
        except (OSError, ValueError):
            return None

    first = subprocess.Popen(train_command(run_dir, "--set", "train.epochs=100"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_for(lambda: (owner() or {}).get("pid") == first.pid or first.poll() is not None, 240,
                 "the first train to take the lock")
        assert first.poll() is None, first.stderr.read()
        assert owner()["command"] == "python -m keras_music.train"
        started = time.monotonic()
        second = subprocess.run(train_command(run_dir, "--set", "model.hidden_size=32"), capture_output=True,
                                text=True, timeout=240, cwd=REPO)
        assert second.returncode == 1
        assert time.monotonic() - started < 120  # refused before any work
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert f"is in use by pid {first.pid} on" in second.stderr
        assert first.poll() is None  # the owner goes on undisturbed
        config = run_dir / "config.yaml"
        assert not config.exists() or "hidden_size: 32" not in config.read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # SIGKILL leaves the lock file behind: the next writer takes it over with a message.
    assert owner()["pid"] == first.pid
    third = subprocess.run([sys.executable, "-m", "keras_music.export", "--run-dir", str(run_dir), "--quiet"],
                           capture_output=True, text=True, timeout=240, cwd=REPO)
    assert "Traceback" not in third.stderr
    assert f"taking over the lock left by pid {first.pid}" in third.stderr and "no longer running" in third.stderr
    assert third.returncode == 1 and "is missing" in third.stderr  # nothing to export yet
    assert not lock_file.exists()


def test_lock_is_reentrant_in_one_process_and_refuses_another(tmp_path):
    directory = str(tmp_path / "dir")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from keras_music import run\n"
        f"with run.lock({directory!r}, 'holder'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n")], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(run_lib.RunLocked, match=f"in use by pid {holder.pid} on .* \\(holder, since"):
            with run_lib.lock(directory):
                pass
        assert run_lib.lock_owner(directory)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    messages = []
    with run_lib.lock(directory, "mine", log=messages.append):
        with run_lib.lock(directory, "mine again"):
            assert run_lib.lock_owner(directory) is None  # this process is the owner
        assert os.path.exists(os.path.join(directory, run_lib.LOCK))
    assert messages and f"taking over the lock left by pid {holder.pid}" in messages[0]
    assert not os.path.exists(os.path.join(directory, run_lib.LOCK))


# ----------------------------------------------------------------------------- issue 16: what is read back is checked

def save_lstm(path, vocabulary_size, head_units=None, hidden=(16, 16, 16), activation="softmax", nan=False):
    """A model shaped like keras_music's, with the defect under test."""
    import keras
    import numpy as np

    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocabulary_size, 8, name="embedding")(tokens)
    for i, units in enumerate(hidden):
        x = keras.layers.LSTM(units, return_sequences=True, name=f"lstm_{i}")(x)
    x = keras.layers.Dense(head_units or vocabulary_size, activation=activation, name="head")(x)
    model = keras.Model(tokens, x)
    if nan:
        weights = model.get_weights()
        weights[-1] = np.full_like(weights[-1], np.nan)
        model.set_weights(weights)
    model.save(path)


@pytest.mark.parametrize("defect, expected", [
    ({"head_units": 1}, "its output layer `head` has {head} units but"),
    ({"hidden": (16, 24, 16)}, "its LSTM layers have different sizes [16, 24, 16]"),
    ({"activation": "linear"}, "its output layer `head` has activation 'linear'"),
    ({"nan": True}, "holds NaN or infinite values"),
])
def test_a_model_that_does_not_fit_is_refused_with_the_fix(run_copy, defect, expected):
    size = len(run_lib.load_vocabulary(run_copy))
    if "head_units" in defect:
        defect = {"head_units": size + 1}
    save_lstm(os.path.join(run_copy, "model.keras"), size, **defect)
    with pytest.raises(run_lib.RunError) as error:
        run_lib.load_model(run_copy)
    assert expected.format(head=size + 1) in str(error.value)
    assert "retrain it" in str(error.value)


def test_a_shuffled_vocabulary_of_the_right_size_is_refused(run_copy):
    path = os.path.join(run_copy, "vocab.json")
    vocab = json.load(open(path))
    tokens = vocab["tokens"]
    tokens[3], tokens[4] = tokens[4], tokens[3]
    json.dump(vocab, open(path, "w"))
    run_lib.load_vocabulary(run_copy)  # well-formed on its own
    with pytest.raises(run_lib.RunError, match="was trained with another vocabulary than .*vocab.json"):
        run_lib.load_model(run_copy)


@pytest.mark.parametrize("change, expected", [
    (lambda v: v["tokens"].__setitem__(5, "dur:1/0"), "'dur:1/0'"),
    (lambda v: v["tokens"].__setitem__(5, "pitch:100041"), "'pitch:100041'"),
    (lambda v: v.__setitem__("classic_step", "half"), "\"classic_step\" must be a positive number"),
    (lambda v: v.__setitem__("counts", ["x"] * len(v["tokens"])), "\"counts\" must list one integer"),
])
def test_impossible_vocabulary_contents_are_named(run_copy, change, expected):
    path = os.path.join(run_copy, "vocab.json")
    vocab = json.load(open(path))
    change(vocab)
    json.dump(vocab, open(path, "w"))
    with pytest.raises(run_lib.RunError) as error:
        run_lib.load_vocabulary(run_copy)
    assert path in str(error.value) and expected in str(error.value)


def test_generate_refuses_a_model_with_the_wrong_head_in_one_line(run_copy, tmp_path):
    size = len(run_lib.load_vocabulary(run_copy))
    save_lstm(os.path.join(run_copy, "model.keras"), size, head_units=size + 1)
    result = subprocess.run([sys.executable, "-m", "keras_music.generate", "--run-dir", run_copy, "--length", "5",
                             "--audio", "none", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert f"has {size + 1} units but" in result.stderr
    assert not (tmp_path / "out").exists()


def test_metrics_and_evaluation_are_read_only_when_they_are_whole(tmp_path):
    from keras_music import run as run_lib, storage

    run_dir = str(tmp_path)
    assert run_lib.read_training_record(run_dir) is None and run_lib.read_evaluation(run_dir) is None
    storage.write_text(run_lib.path(run_dir, run_lib.TRAINING_RECORD), '{"val_loss": 2.5, "epochs": 3')  # cut short
    assert run_lib.read_training_record(run_dir) is None
    storage.write_json(run_lib.path(run_dir, run_lib.TRAINING_RECORD), {"epochs": 3})  # not a training record
    assert run_lib.read_training_record(run_dir) is None
    storage.write_json(run_lib.path(run_dir, run_lib.TRAINING_RECORD), {"val_loss": 2.5, "epochs": 3})
    assert run_lib.read_training_record(run_dir) == {"val_loss": 2.5, "epochs": 3}
    storage.write_json(run_lib.path(run_dir, run_lib.EVALUATION, run_lib.EVALUATION_JSON), [1, 2])
    assert run_lib.read_evaluation(run_dir) is None
    storage.write_json(run_lib.path(run_dir, run_lib.EVALUATION, run_lib.EVALUATION_JSON), {"model_quality": {}})
    assert run_lib.read_evaluation(run_dir) == {"model_quality": {}}
