"""Tests for keras_music.finetune: a run started from a finished run's weights and vocabulary."""

import json
import os
import shutil

import numpy as np
import pytest
import yaml

from conftest import FOUR_CHORALES, TINY, tiny_config
from keras_music import finetune, run as run_lib, train

# Chorales the tiny base never saw, written two octaves up: their high pitches are tokens the base lacks.
NEW_CHORALES = ("bach/bwv1.6", "bach/bwv2.6", "bach/bwv3.6", "bach/bwv5.7", "bach/bwv6.6")
QUIET = {"show_progress": False, "log": lambda *a: None}


def write_high_chorales(directory, names=NEW_CHORALES, semitones=24):
    from music21 import corpus

    os.makedirs(directory, exist_ok=True)
    for name in names:
        path = os.path.join(directory, name.replace("/", "_") + ".mid")
        corpus.parse(name).transpose(semitones).write("midi", fp=path)
    return str(directory)


@pytest.fixture(scope="module")
def new_folder(tmp_path_factory):
    return write_high_chorales(tmp_path_factory.mktemp("new-corpus"))


def fine_tune_config(base, *overrides, sources):
    return tiny_config(f"train.init_from={base}", *overrides, sources=sources)


@pytest.fixture(scope="module")
def fine_tuned(tiny_run, new_folder, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("fine-tuned") / "run")
    metrics = train.train(fine_tune_config(tiny_run, sources=(new_folder,)), run_dir, **QUIET)
    return run_dir, metrics


def test_the_fine_tune_keeps_the_base_ids_appends_new_tokens_and_trains(tiny_run, fine_tuned):
    run_dir, metrics = fine_tuned
    base, vocabulary = run_lib.load_vocabulary(tiny_run), run_lib.load_vocabulary(run_dir)
    added = vocabulary.tokens[len(base):]
    assert vocabulary.tokens[:len(base)] == base.tokens
    assert added and not set(added) & set(base.tokens)
    from keras_music.vocabulary import token_sort_key

    assert added == sorted(added, key=token_sort_key)
    assert any(t.startswith("pitch:") and int(t[6:]) > max(int(b[6:]) for b in base.tokens if b.startswith("pitch:"))
               for t in added)
    record = metrics["init_from"]
    start = {key: record.pop(key) for key in ("val_loss_at_start", "val_perplexity_at_start", "val_accuracy_at_start")}
    assert record == {"run": tiny_run, "vocabulary_fingerprint": base.fingerprint(), "vocabulary_size": len(base),
                      "tokens_added": len(added), "added": added, "held_out_overlap": []}
    record.update(start)
    # The model it started from, scored on the same held-out windows: two epochs of training lower the loss.
    assert np.isfinite(start["val_loss_at_start"]) and start["val_loss_at_start"] > metrics["val_loss"]
    assert start["val_perplexity_at_start"] == pytest.approx(np.exp(start["val_loss_at_start"]))
    assert json.load(open(run_lib.path(run_dir, run_lib.TRAINING_RECORD)))["init_from"] == record
    assert yaml.safe_load(open(run_lib.path(run_dir, run_lib.CONFIG)))["train"]["init_from"] == tiny_run
    assert metrics["epochs"] == 2 and np.isfinite(metrics["val_loss"])
    # The model file carries the fine-tune's own vocabulary fingerprint, and loads with it.
    model = run_lib.load_model(run_dir)
    assert model.get_layer("embedding").input_dim == len(vocabulary)


def test_the_initial_model_holds_the_base_rows_bit_for_bit_and_new_rows_by_kind(tiny_run, fine_tuned):
    run_dir, _ = fine_tuned
    base = finetune.load_base(tiny_run)
    vocabulary = run_lib.load_vocabulary(run_dir)
    model = finetune.initial_model(base, vocabulary, dropout=0.0)
    base_model = run_lib.load_model(tiny_run)
    old = len(base.vocabulary)
    embedding = model.get_layer("embedding").get_weights()[0]
    kernel, bias = model.get_layer("head").get_weights()
    base_embedding = base_model.get_layer("embedding").get_weights()[0]
    base_kernel, base_bias = base_model.get_layer("head").get_weights()
    assert np.array_equal(embedding[:old], base_embedding)
    assert np.array_equal(kernel[:, :old], base_kernel) and np.array_equal(bias[:old], base_bias)
    for i in range(3):
        for a, b in zip(model.get_layer(f"lstm_{i}").get_weights(), base_model.get_layer(f"lstm_{i}").get_weights()):
            assert np.array_equal(a, b)
    kinds = np.asarray(finetune.kinds(base.vocabulary))
    musical = np.isin(kinds, ("pitch", "hold", "rest", "dur"))
    lacking = []
    for offset, token in enumerate(vocabulary.tokens[old:]):
        kind = token.split(":")[0]
        rows = kinds == kind
        if not rows.any():  # a kind the base never had: all its musical tokens stand in
            lacking.append(token)
            rows = musical
        np.testing.assert_array_equal(embedding[old + offset], base_embedding[rows].mean(axis=0))
        np.testing.assert_array_equal(kernel[:, old + offset], base_kernel[:, rows].mean(axis=1))
        assert bias[old + offset] == base_bias[rows].min()
    assert lacking == ["rest"]  # the four chorales of the base have no rest; the new ones do


def test_a_fine_tuned_run_exports_with_parity(fine_tuned, tmp_path):
    from keras_music import export

    run_dir = str(tmp_path / "run")
    shutil.copytree(fine_tuned[0], run_dir)
    report = export.export(run_dir, export.ExportSettings(parity_windows=2, parity_steps=50), log=lambda *a: None)
    assert report["passed"], report


@pytest.mark.parametrize("setting, had, has", [
    ("data.representation", "'note'", "'classic'"),
    ("data.grid", "24", "12"),
    ("data.max_duration", "8.0", "4.0"),
    ("data.classic_step", "0.5", "0.25"),
    ("data.normalize_key", "True", "False"),
    ("model.hidden_size", "16", "32"),
])
def test_other_token_settings_or_sizes_are_one_line_naming_both_values(tiny_run, new_folder, tmp_path, capsys,
                                                                         setting, had, has):
    value = has.strip("'").lower() if has in ("True", "False") else has.strip("'")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", TINY, "--init-from", tiny_run, "--data", new_folder, "--set",
                    f"{setting}={value}", "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"was trained with {setting}={had} but this run has {setting}={has}" in lines[0]
    assert not os.path.exists(tmp_path / "run" / run_lib.CONFIG)


def test_the_base_settings_are_the_defaults_of_a_fine_tune(tiny_run, new_folder):
    from keras_music import config as config_lib

    config = train.resolve_config(train.parse_args(["--init-from", tiny_run, "--data", new_folder])[1])
    base, defaults = run_lib.load_config(tiny_run), config_lib.Config()
    # The base's sizes (tiny: 8 and 16, not the defaults' 96 and 256) and token settings...
    assert (config.model.embedding_size, config.model.hidden_size, config.model.num_layers) == (8, 16, 3)
    for key in finetune.DATA_KEYS:
        assert getattr(config.data, key) == getattr(base.data, key)
    # ...but the usual defaults for what training does with them (the tiny base has dropout 0, window 32).
    assert (config.model.dropout, config.data.seq_length) == (defaults.model.dropout, defaults.data.seq_length)
    assert config.train.init_from == tiny_run and config.data.sources == (new_folder,)


@pytest.mark.parametrize("damage, expected", [
    ("missing", "no such run directory"),
    ("unfinished", "the run has not finished training (it has no model.keras)"),
    ("truncated model", "the run is damaged"),
    ("other vocabulary", "the run is damaged"),
])
def test_an_unfinished_or_damaged_base_is_refused(tiny_run, new_folder, tmp_path, damage, expected):
    base = str(tmp_path / "base")
    if damage != "missing":
        shutil.copytree(tiny_run, base, ignore=shutil.ignore_patterns("export"))
    model_file = os.path.join(base, run_lib.MODEL)
    if damage == "unfinished":
        os.remove(model_file)
    elif damage == "truncated model":
        payload = open(model_file, "rb").read()
        open(model_file, "wb").write(payload[:len(payload) // 2])
    elif damage == "other vocabulary":
        vocab = json.load(open(os.path.join(base, run_lib.VOCAB)))
        vocab["tokens"][3], vocab["tokens"][4] = vocab["tokens"][4], vocab["tokens"][3]
        json.dump(vocab, open(os.path.join(base, run_lib.VOCAB), "w"))
    with pytest.raises(finetune.FineTuneError) as error:
        train.train(fine_tune_config(base, sources=(new_folder,)), str(tmp_path / "run"), **QUIET)
    message = str(error.value)
    assert expected in message and f"train.init_from={base}" in message and "\n" not in message
    assert not os.path.exists(tmp_path / "run" / run_lib.CONFIG)


def test_a_prepared_directory_is_refused_as_the_data_of_a_fine_tune(tiny_run, tmp_path):
    from keras_music import prepare

    prepared = str(tmp_path / "prepared")
    prepare.prepare(tiny_config(), prepared, show_progress=False, log=lambda *a: None)
    with pytest.raises(run_lib.RunError, match=r"is a prepared directory, whose ids belong to its own vocabulary"):
        train.train(fine_tune_config(tiny_run, sources=(prepared,)), str(tmp_path / "run"), **QUIET)


def test_a_rerun_with_another_base_is_refused_and_a_rerun_with_the_same_changes_nothing(tiny_run, fine_tuned,
                                                                                      new_folder, tmp_path):
    run_dir, metrics = fine_tuned
    other = str(tmp_path / "other-base")
    shutil.copytree(tiny_run, other, ignore=shutil.ignore_patterns("export"))
    with pytest.raises(run_lib.RunError, match=r"train\.init_from .* -> .*other-base.*nothing was changed"):
        train.train(fine_tune_config(other, sources=(new_folder,)), run_dir, **QUIET)
    before = {name: os.stat(os.path.join(run_dir, name)).st_mtime_ns for name in (run_lib.MODEL, run_lib.TRAINING_RECORD)}
    assert train.train(fine_tune_config(tiny_run, sources=(new_folder,)), run_dir, **QUIET) == metrics
    assert before == {name: os.stat(os.path.join(run_dir, name)).st_mtime_ns for name in before}


def test_a_base_trained_again_since_is_refused_and_the_fine_tune_left_as_it_is(tiny_run, new_folder, tmp_path):
    from keras_music import prepare

    base = str(tmp_path / "base")
    shutil.copytree(tiny_run, base, ignore=shutil.ignore_patterns("export"))
    run_dir = str(tmp_path / "run")
    config = fine_tune_config(base, "train.epochs=1", sources=(new_folder,))
    train.train(config, run_dir, **QUIET)
    kept = open(run_lib.path(run_dir, run_lib.MODEL), "rb").read()
    # The base directory now holds another finished model, trained on other chorales: another vocabulary.
    other = str(tmp_path / "other")
    train.train(tiny_config("train.epochs=1", sources=(*FOUR_CHORALES[:2], *NEW_CHORALES[3:])), other, **QUIET)
    assert run_lib.load_vocabulary(other).tokens[:len(run_lib.load_vocabulary(tiny_run))] != \
        run_lib.load_vocabulary(tiny_run).tokens
    for name in (run_lib.VOCAB, run_lib.MODEL):
        shutil.copyfile(run_lib.path(other, name), run_lib.path(base, name))
    with pytest.raises(prepare.PrepareError, match=r"another vocabulary .* \(the sources or the init_from run "
                                                   r"changed since\): nothing was changed"):
        train.train(config, run_dir, **QUIET)
    assert open(run_lib.path(run_dir, run_lib.MODEL), "rb").read() == kept


def test_when_no_epoch_beats_the_start_the_fine_tune_keeps_the_model_it_started_from(tiny_run, new_folder, tmp_path,
                                                                                      monkeypatch):
    from keras_music import callbacks

    real = callbacks.RunProgress.on_epoch_end

    def worse(self, epoch, logs=None):  # every epoch scores worse on the held-out windows than the start
        real(self, epoch, dict(logs or {}, val_loss=50.0 + epoch))

    monkeypatch.setattr(callbacks.RunProgress, "on_epoch_end", worse)
    run_dir = str(tmp_path / "run")
    metrics = train.train(fine_tune_config(tiny_run, "train.epochs=2", sources=(new_folder,)), run_dir, **QUIET)
    assert metrics["best_epoch"] == 0 and metrics["epochs"] == 2
    assert metrics["val_loss"] == pytest.approx(metrics["init_from"]["val_loss_at_start"], rel=1e-6)
    start = finetune.initial_model(finetune.load_base(tiny_run), run_lib.load_vocabulary(run_dir), dropout=0.0)
    for a, b in zip(start.get_weights(), run_lib.load_model(run_dir).get_weights()):
        assert np.array_equal(a, b)


def test_an_interrupted_fine_tune_resumes_from_its_own_backup(tiny_run, new_folder, tmp_path, monkeypatch):
    from keras_music import callbacks

    config = fine_tune_config(tiny_run, "train.epochs=3", sources=(new_folder,))
    run_dir = str(tmp_path / "run")
    real = callbacks.RunProgress.on_epoch_end

    def stop_after_the_first(self, epoch, logs=None):
        real(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.RunProgress, "on_epoch_end", stop_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        train.train(config, run_dir, **QUIET)
    monkeypatch.undo()
    state = run_lib.read_backup_record(run_dir)
    assert state and state["next_epoch"] == 1
    backup = run_lib.path(run_dir, run_lib.BACKUP, state["model"])
    saved = __import__("keras").saving.load_model(backup).get_weights()
    resumed_from = []
    build_or_resume = train.build_or_resume

    def watch(config, run_dir, *, backup, **kwargs):
        resumed_from.append((backup or {}).get("model"))
        return build_or_resume(config, run_dir, backup=backup, **kwargs)

    monkeypatch.setattr(train, "build_or_resume", watch)
    metrics = train.train(config, run_dir, **QUIET)
    assert resumed_from == [state["model"]]  # the backup, not the base again
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    # Training went on from there: a later backup (not the best model, which may still be epoch 0's) moved.
    last = run_lib.read_backup_record(run_dir)
    assert last["next_epoch"] > state["next_epoch"]
    moved = __import__("keras").saving.load_model(run_lib.path(run_dir, run_lib.BACKUP, last["model"])).get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(saved, moved))


# ----------------------------------------------------------------------------- held-out pieces

def test_held_out_pieces_the_base_trained_on_are_refused_by_file_hash(tiny_run, new_folder, tmp_path):
    sources = (new_folder, *FOUR_CHORALES)
    config = fine_tune_config(tiny_run, "data.val_fraction=0.5", sources=sources)
    run_dir = str(tmp_path / "run")
    with pytest.raises(finetune.FineTuneError) as error:
        train.train(config, run_dir, **QUIET)
    base_training = {name for name, entry in run_lib.manifest_entries(tiny_run).items()
                     if entry.get("split") == "train"}
    leaked = sorted(set(run_lib.held_out_names(run_dir)) & base_training)
    assert leaked, "the split put no base training piece into this run's held-out pieces"
    message = str(error.value)
    assert "\n" not in message and f"{len(leaked)} held-out piece(s)" in message
    for name in leaked:
        assert f"{name} (= {name})" in message
    assert "train.allow_held_out_overlap=true" in message
    assert not os.path.exists(run_lib.path(run_dir, run_lib.MODEL))

    metrics = train.train(fine_tune_config(tiny_run, "data.val_fraction=0.5", "train.allow_held_out_overlap=true",
                                           "train.epochs=1", sources=sources), str(tmp_path / "allowed"), **QUIET)
    assert metrics["init_from"]["held_out_overlap"] == [[name, name] for name in leaked]


def test_the_same_music_in_another_file_is_caught_by_its_tokens(tmp_path):
    import mido

    from conftest import write_chorales_as_midi

    base_folder = str(tmp_path / "base-midi")
    paths = write_chorales_as_midi(base_folder)
    base_dir = str(tmp_path / "base")
    train.train(tiny_config("train.epochs=1", sources=(base_folder,)), base_dir, **QUIET)
    base_training = sorted(name for name, entry in run_lib.manifest_entries(base_dir).items()
                           if entry.get("split") == "train")
    # The same notes with one more meta event: other bytes, so another file hash, but the same tokens.
    new_folder = str(tmp_path / "new")
    os.makedirs(new_folder)
    for path in paths:
        midi = mido.MidiFile(path)
        midi.tracks[0].insert(0, mido.MetaMessage("text", text="a copy"))
        midi.save(os.path.join(new_folder, "copy-" + os.path.basename(path)))
    # Only copies of base training pieces: whichever is held out repeats one of them.
    copy_of = {os.path.join(new_folder, "copy-" + os.path.basename(path)): path for path in paths}
    for copy, path in list(copy_of.items()):
        if path not in base_training:
            os.remove(copy)
            del copy_of[copy]
    assert copy_of
    write_high_chorales(new_folder, NEW_CHORALES[:2])
    run_dir = str(tmp_path / "run")
    config = fine_tune_config(base_dir, "data.val_fraction=0.5", sources=(new_folder,))
    with pytest.raises(finetune.FineTuneError) as error:
        train.train(config, run_dir, **QUIET)
    copies = [name for name in run_lib.held_out_names(run_dir) if name in copy_of]
    assert copies, "no copy landed in the held-out split"
    for name in copies:
        assert f"{name} (= {copy_of[name]})" in str(error.value)
