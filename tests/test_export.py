"""Tests for keras_music.export: the command's files, report, table and failures, and the consumers outside it."""

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from conftest import REPO
from keras_music import (events, export, export_parity, export_saved_model, formatting as fmt, model as model_lib,
                         run as run_lib, sampling)
from keras_music.sampling import SamplingSettings
from keras_music.vocabulary import Vocabulary

pytestmark = pytest.mark.slow

GREEDY_STEPS = 200
PARITY_WINDOWS = 4
SCRIPTS = os.path.join(REPO, "export")


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory):
    # A private copy: exporting writes RUN/export/, and tiny_run is shared read-only.
    directory = str(tmp_path_factory.mktemp("export-run") / "run")
    shutil.copytree(tiny_run, directory, ignore=shutil.ignore_patterns("export"))
    # What an export killed with SIGKILL leaves behind: its unfinished folders (see the test below).
    for name in (".export.tmp-killed", ".export.tmp-killed.old"):
        os.makedirs(os.path.join(directory, name, "saved_model"))
    return directory


@pytest.fixture(scope="module")
def exported(run_dir):
    """The CLI run in this process; returns (export dir, report, printed table)."""
    output = io.StringIO()
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exit_info:
            export.main(["--run-dir", run_dir, "--parity-windows", str(PARITY_WINDOWS),
                         "--parity-steps", str(GREEDY_STEPS), "--quiet"])
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
    assert exit_info.value.code == 0, output.getvalue()
    directory = export.export_dir(run_dir)
    with open(os.path.join(directory, export.REPORT)) as handle:
        report = json.load(handle)
    return directory, report, output.getvalue()


def blocked_env(tmp_path, *names):
    """Environment whose Python cannot import `names`: a sitecustomize puts a blocking finder first.

    A finder (not just shadow packages on PYTHONPATH) is needed because keras_music's
    editable install resolves through its own meta-path finder.
    """
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(
        "import sys\n"
        f"BLOCKED = {sorted(names)!r}\n"
        "class _Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is blocked for this test')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Blocker())\n")
    env = dict(os.environ, PYTHONPATH=str(shim))
    for name in names:
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, cwd=tmp_path,
                               capture_output=True, text=True)
        assert probe.returncode != 0 and "blocked" in probe.stderr, f"{name} is still importable: {probe.stderr}"
    return env


# ----------------------------------------------------------------------------- files and report

def test_export_writes_the_contract_files(exported, run_dir):
    directory, report, table = exported
    names = set(os.listdir(directory))
    assert {"saved_model", "model.tflite", "model_float16.tflite", "model_dynamic.tflite", "vocab.json",
            "export_report.json"} <= names
    assert not [n for n in os.listdir(run_dir) if n.startswith(".export.tmp")]
    with open(os.path.join(run_dir, "vocab.json"), "rb") as original:
        expected = original.read()
    for copy in (os.path.join(directory, "vocab.json"), os.path.join(directory, "saved_model", "assets", "vocab.json")):
        with open(copy, "rb") as handle:
            assert handle.read() == expected
    assert report["passed"] is True
    assert report["versions"]["tensorflow"].startswith("2.") and report["versions"]["keras"].startswith("3.")
    for name in ("saved_model", "tflite_float32", "tflite_float16", "tflite_dynamic"):
        artifact = report["artifacts"][name]
        assert artifact["bytes"] > 0 and artifact["steps_per_second"] > 0
        assert name in table
    assert report["parity_data"]["greedy_steps"] == GREEDY_STEPS
    assert report["parity_data"]["split"] == "validation"
    assert "all checks passed" in table


def test_the_report_and_the_table_keep_their_format(exported):
    directory, report, table = exported
    assert list(report) == ["format", "version", "created", "versions", "model", "files", "parity_data", "keras",
                            "artifacts", "dynamic_size_ratio", "float16_size_ratio", "thresholds", "checks", "passed",
                            "vocabulary_fingerprint", "sha256"]
    assert report["format"] == "keras_music.export_report" and report["version"] == 1
    assert list(report["versions"]) == ["tensorflow", "keras", "ai_edge_litert", "numpy", "keras_music", "python"]
    assert list(report["model"]) == ["vocabulary_size", "embedding_size", "hidden_size", "num_layers", "state_shape",
                                     "parameters", "representation"]
    assert report["parity_data"] == {
        "split": "validation", "windows": PARITY_WINDOWS, "window_length": 32, "greedy_runs": 3,
        "greedy_steps": GREEDY_STEPS, "greedy_primer_lengths": [1, 16, 16], "banned_ids": [0, 1],
        "generate_length_events": GREEDY_STEPS // 4,
        "reference": "Keras StepModel on model.keras (the sequence model for serving_default)"}
    assert list(report["keras"]) == ["step_vs_sequence_model", "steps_per_second"]
    figures = ["windows", "greedy", "overall", "greedy_identical", "greedy_runs_identical", "steps_per_second"]
    assert list(report["artifacts"]) == ["saved_model", "tflite_float32", "tflite_float16", "tflite_dynamic"]
    assert list(report["artifacts"]["saved_model"]) == figures + [
        "serving_default", "generate_greedy_identical", "generate_steps_per_second", "path", "bytes", "signatures"]
    assert report["artifacts"]["saved_model"]["signatures"] == ["generate", "initial_state", "serving_default", "step"]
    for name, file, weights in (("tflite_float32", "model.tflite", "float32"),
                                ("tflite_float16", "model_float16.tflite", "float16"),
                                ("tflite_dynamic", "model_dynamic.tflite", "dynamic-range int8 weights")):
        artifact = report["artifacts"][name]
        assert list(artifact) == figures + ["path", "bytes", "quantization", "operators", "builtin_only"]
        assert (artifact["path"], artifact["quantization"], artifact["builtin_only"]) == (file, weights, True)
        assert artifact["bytes"] == os.path.getsize(os.path.join(directory, file)) == report["files"][file]
    assert list(report["files"]) == ["vocab.json", "saved_model", "model.tflite", "model_float16.tflite",
                                     "model_dynamic.tflite"]
    assert report["float16_size_ratio"] == report["files"]["model_float16.tflite"] / report["files"]["model.tflite"]
    assert report["thresholds"] == {
        "saved_model_max_abs": 1e-5, "tflite_float32_max_abs": 1e-4, "float16_top1_agreement": 0.99,
        "dynamic_top1_agreement": 0.95, "dynamic_size_ratio": 0.30, "size_ratio_min_float32_bytes": 1 << 20}
    assert [(c["artifact"], c["metric"]) for c in report["checks"]] == [
        ("saved_model", "max_abs_probability_difference"), ("saved_model", "greedy_identical"),
        ("saved_model", "generate_greedy_identical"), ("tflite_float32", "max_abs_probability_difference"),
        ("tflite_float32", "greedy_identical"), ("tflite_float16", "top1_agreement"),
        ("tflite_dynamic", "top1_agreement"), ("tflite_dynamic", "size_ratio_to_float32")]
    printed_table, written = table.rsplit("\n\nwritten: ", 1)
    assert written == f"{directory}\n"
    lines = printed_table.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["artifact", "size", "max|dp| win", "max|dp| greedy", "mean|dp|", "top-1",
                                             "greedy same", "steps/s"]
    assert set(lines[1]) == {"-", " "}
    assert [line.split()[0] for line in lines[2:6]] == ["saved_model", "tflite_float32", "tflite_float16",
                                                        "tflite_dynamic"]
    assert lines[6].startswith("keras step model: ") and "; step vs sequence model max|dp| " in lines[6]
    assert lines[7].startswith("serving_default vs Keras sequence model: max|dp| ")
    assert lines[7].endswith("; generate (temperature 0) equals Keras greedy: yes")
    assert lines[8].startswith("dynamic-range size / float32 size: ")
    assert lines[10] == "checks:" and lines[-1] == "all checks passed"
    assert lines[11] == "  PASS  saved_model: max_abs_probability_difference = {} (needs <= 1.0e-05)".format(
        fmt.table_cell(report["checks"][0]["value"], 4))
    assert lines[-2].startswith("  n/a   tflite_dynamic: size_ratio_to_float32 = ")
    assert printed_table == export.format_table(report)


def test_an_export_killed_earlier_leaves_nothing_behind(exported, run_dir):
    # The run_dir fixture planted two unfinished folders of a killed export; this export removed them.
    assert not [name for name in os.listdir(run_dir) if name.startswith(".export")]


def test_the_report_holds_a_checksum_of_every_exported_file(exported):
    directory, report, _ = exported
    listed = sorted(report["sha256"])
    found = sorted(os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/")
                   for root, _, files in os.walk(directory) for name in files if name != export.REPORT)
    assert listed == found and "model.tflite" in listed and "saved_model/saved_model.pb" in listed
    assert report["vocabulary_fingerprint"] == run_lib.load_vocabulary(os.path.dirname(directory)).fingerprint()


def test_report_figures_meet_thresholds(exported):
    report = exported[1]
    artifacts = report["artifacts"]
    saved, lite = artifacts["saved_model"], artifacts["tflite_float32"]
    assert saved["windows"]["max_abs"] <= 1e-5 and saved["greedy"]["max_abs"] <= 1e-5
    assert saved["serving_default"]["max_abs"] <= 1e-5
    assert saved["greedy_identical"] and saved["generate_greedy_identical"]
    assert lite["windows"]["max_abs"] <= 1e-4 and lite["greedy"]["max_abs"] <= 1e-4 and lite["greedy_identical"]
    assert artifacts["tflite_float16"]["overall"]["top1_agreement"] >= 0.99
    assert artifacts["tflite_dynamic"]["overall"]["top1_agreement"] >= 0.95
    assert report["dynamic_size_ratio"] == artifacts["tflite_dynamic"]["bytes"] / lite["bytes"]
    assert all(check["passed"] for check in report["checks"])


# ----------------------------------------------------------------------------- consumers outside keras_music

def test_reference_generator_runs_without_tensorflow(exported, tmp_path, run_dir):
    env = blocked_env(tmp_path, "tensorflow", "keras", "keras_music", "mido", "music21")
    out = tmp_path / "piece.mid"
    result = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "reference_generator.py"),
         "--model", os.path.join(exported[0], "model.tflite"), "--vocab", os.path.join(exported[0], "vocab.json"),
         "--out", str(out), "--length", "60", "--temperature", "1.0", "--top-k", "20", "--seed", "3",
         "--tempo", "100", "--keep-going"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    tokens = next(line for line in result.stdout.splitlines() if line.startswith("tokens: "))[8:].split()
    # --length counts events: the piece ends with its 60th duration.
    assert tokens[0] == "<piece>" and tokens[-1].startswith("dur:")
    assert sum(token.startswith("dur:") for token in tokens) == 60
    report = events.DecodeReport()
    events.tokens_to_sonorities(tokens, "note", report=report)
    assert report.repairs == {}

    # The same tokens decoded by keras_music give the notes the MIDI file holds.
    expected = events.sonorities_to_notes(events.tokens_to_sonorities(tokens, "note"))
    import mido

    midi = mido.MidiFile(str(out))
    assert midi.ticks_per_beat == 480
    tick, starts, notes, tempos = 0, {}, [], []
    for message in midi.tracks[0]:
        tick += message.time
        if message.type == "set_tempo":
            tempos.append((tick, round(mido.tempo2bpm(message.tempo))))
        elif message.type == "note_on" and message.velocity > 0:
            assert message.note not in starts, "overlapping notes of one pitch"
            starts[message.note] = tick
        elif message.type in ("note_off", "note_on"):
            onset = starts.pop(message.note)
            notes.append((onset / 480, (tick - onset) / 480, message.note))
    assert tempos == [(0, 100)]
    assert not starts and len(notes) == len(expected) > 0
    assert sorted(notes) == sorted(tuple(row) for row in expected.tolist())


def test_reference_generator_decoding_and_sampling_match_keras_music():
    path = os.path.join(SCRIPTS, "reference_generator.py")
    spec = importlib.util.spec_from_file_location("reference_generator", path)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)

    tokens = ["<piece>", "pitch:60", "pitch:64", "dur:1", "hold:60", "pitch:67", "dur:1", "rest", "dur:1/2",
              "hold:62", "pitch:62", "dur:1/3", "hold:62", "dur:2/3", "pitch:65", "bogus", "dur:0", "pitch:70"]
    ours = reference.sonorities_to_notes(reference.tokens_to_sonorities(tokens, "note"))
    theirs = events.sonorities_to_notes(events.tokens_to_sonorities(tokens, "note"))
    assert [(float(a), float(d), p) for a, d, p in ours] == [tuple(row) for row in theirs.tolist()]
    assert ours[0] == (0, 2, 60)
    classic = ["<piece>", "C4", "0.4.7", "F#3", "B-2"]
    ours = reference.sonorities_to_notes(reference.tokens_to_sonorities(classic, "classic", Fraction(1, 2)))
    theirs = events.sonorities_to_notes(events.tokens_to_sonorities(classic, "classic", classic_step=Fraction(1, 2)))
    assert [(float(a), float(d), p) for a, d, p in ours] == [tuple(row) for row in theirs.tolist()]

    # The grammar as shipped in vocab.json allows, step by step, exactly what keras_music's does.
    vocabulary = Vocabulary(["<pad>", "<unk>", "<piece>", "pitch:60", "pitch:62", "pitch:64", "hold:60",
                             "hold:62", "hold:64", "rest", "dur:1", "dur:1/2"])
    shipped = json.loads(json.dumps(vocabulary.to_json()))
    theirs_grammar = sampling.Grammar(shipped["grammar"])
    ours_grammar, where = reference.Grammar(shipped), theirs_grammar.start(1)
    rng = np.random.default_rng(1)
    for step in range(300):
        closing = step % 17 == 16
        allowed = theirs_grammar.allowed(where, closing=np.array([closing]))[0]
        np.testing.assert_array_equal(ours_grammar.allowed(closing=closing), allowed)
        token = int(rng.choice(np.flatnonzero(allowed)))
        theirs_grammar.advance(where, [token])
        ours_grammar.advance(token)
    older = dict(shipped)
    del older["grammar"]
    np.testing.assert_array_equal(reference.Grammar(older).allowed(), [False, False] + [True] * 10)

    probabilities = np.random.default_rng(0).dirichlet(np.ones(30), size=20)
    allowed = np.random.default_rng(2).random((20, 30)) < 0.5
    allowed[:, 5] = True
    for row, mask in zip(probabilities, allowed):
        rng_ours, rng_theirs = reference.SplitMix64(4), sampling.make_rng(4)
        expected = sampling.sample_next(row[None], rng_theirs, temperature=0.8, top_k=0, banned=[0, 1],
                                        allowed=mask[None])[0]
        assert reference.sample(row, rng_ours, 0.8, 0, (0, 1), mask) == expected
    for temperature, top_k in ((0.0, 0), (1.0, 0), (0.7, 5), (1.5, 1)):
        rng_ours, rng_theirs = reference.SplitMix64(4), sampling.make_rng(4)
        for row in probabilities:
            expected = sampling.sample_next(row[None], rng_theirs, temperature=temperature, top_k=top_k,
                                            banned=[0, 1])[0]
            assert reference.sample(row, rng_ours, temperature, top_k, (0, 1)) == expected


def test_generator_and_the_reference_generator_give_the_same_token_ids(exported, run_dir):
    """export/README.md's "One piece": keras_music's Generator (Keras) and the TFLite reference agree id for id."""
    from keras_music import generate

    path = os.path.join(SCRIPTS, "reference_generator.py")
    spec = importlib.util.spec_from_file_location("reference_generator_one_piece", path)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    vocabulary = reference.load_vocabulary(os.path.join(exported[0], "vocab.json"))
    tflite = reference.StepModel(os.path.join(exported[0], "model.tflite"), len(vocabulary["tokens"]))
    generator = generate.Generator(run_dir, log=lambda message: None)
    assert generator.vocabulary.tokens == vocabulary["tokens"]
    pitches = [t for t in vocabulary["tokens"] if t.startswith("pitch:")]
    durations = [t for t in vocabulary["tokens"] if t.startswith("dur:")]
    primer = [pitches[len(pitches) // 2], durations[0], pitches[len(pitches) // 3], pitches[-1], durations[-1]]
    primer_ids = [2] + [vocabulary["tokens"].index(t) for t in primer]
    compared = 0
    for temperature, top_k, top_p in ((0.0, 0, 1.0), (0.9, 0, 0.95), (1.5, 20, 1.0)):
        for seed in (0, 1, 2, 2 ** 40 + 3):
            ours = generator.generate(num_samples=1, seed=seed, primer_tokens=primer, sampling=SamplingSettings(length=24, min_length=4, temperature=temperature, top_k=top_k, top_p=top_p))[0]
            theirs, stopped = reference.generate(tflite, vocabulary, primer_ids, 24, temperature, top_k, seed,
                                                 top_p=top_p, min_length=4)
            assert ours.ids == theirs[len(primer_ids):], (temperature, top_k, top_p, seed)
            assert stopped == (ours.stop_reason == "boundary")
            compared += len(ours.ids)
    # A batch gives the same pieces: row i is the reference's piece of seed + i.
    batch = generator.generate(num_samples=3, seed=5, primer_tokens=primer, sampling=SamplingSettings(length=24, min_length=4, temperature=0.9, top_p=0.95))
    for i, piece in enumerate(batch):
        theirs, _ = reference.generate(tflite, vocabulary, primer_ids, 24, 0.9, 0, 5 + i, top_p=0.95, min_length=4)
        assert piece.ids == theirs[len(primer_ids):], i
    assert compared > 100


def test_savedmodel_consumer_runs_without_keras_music(exported, tmp_path):
    env = blocked_env(tmp_path, "keras_music")
    result = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "savedmodel_consumer.py"),
         "--saved-model", os.path.join(exported[0], "saved_model"), "--length", "12", "--min-length", "12",
         "--temperature", "0.8", "--top-p", "0.95", "--top-k", "20", "--seed", str(2 ** 64 - 3), "--primer", "<piece>",
         "--show-step"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    tokens = next(line for line in lines if line.startswith("tokens: "))[8:].split()
    assert "stopped by length" in result.stdout
    assert events.count_events(tokens) == 12 and tokens[-1].startswith("dur:")
    with open(os.path.join(exported[0], "vocab.json")) as handle:
        vocabulary = json.load(handle)["tokens"]
    assert set(tokens) <= set(vocabulary) - {"<pad>", "<unk>", "<piece>"}
    # The seed 2^64 - 3 is the signature's int64 -3: the same 64 bits, the same tokens.
    import tensorflow as tf

    out = tf.saved_model.load(os.path.join(exported[0], "saved_model")).signatures["generate"](
        primer=tf.constant([2], tf.int32), length=tf.constant(12), min_length=tf.constant(12),
        temperature=tf.constant(0.8, tf.float64), top_k=tf.constant(20), top_p=tf.constant(0.95, tf.float64),
        seed=tf.constant(-3, tf.int64))
    assert [vocabulary[i] for i in out["ids"].numpy()] == tokens
    assert any(line.startswith("step inputs:") and "'token'" in line for line in lines)


def test_export_scripts_import_nothing_from_keras_music():
    import ast

    allowed = {"reference_generator.py": {"numpy", "ai_edge_litert"},
               "savedmodel_consumer.py": {"numpy", "tensorflow"}}
    for name in sorted(os.listdir(SCRIPTS)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(SCRIPTS, name)) as handle:
            tree = ast.parse(handle.read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
        third_party = imported - set(sys.stdlib_module_names)
        assert third_party <= allowed.get(name, {"numpy"}), (name, third_party)


# ----------------------------------------------------------------------------- sizes, CLI, atomicity

def test_dynamic_range_file_is_small_at_realistic_size(run_dir, tmp_path):
    # Untrained is enough for sizes; hidden 256 is the default model, where weights dominate the file.
    big = tmp_path / "big-run"
    big.mkdir()
    for name in ("config.yaml", "vocab.json", "prepared.json", "corpus_manifest.json"):
        shutil.copy(os.path.join(run_dir, name), big / name)
    shutil.copytree(os.path.join(run_dir, "data"), big / "data")
    vocabulary = run_lib.load_vocabulary(run_dir)
    model = model_lib.build_model(len(vocabulary), embedding_size=96, hidden_size=256, num_layers=3, dropout=0.1)
    model.save(str(big / "model.keras"))
    # The child-process conversion path (used when this process sees a GPU) runs here too.
    settings = export.ExportSettings(quantize=("none", "dynamic"), parity_windows=1, parity_steps=10,
                                     separate_conversion=True)
    report = export.export(str(big), settings, log=lambda *a: None)
    assert report["artifacts"]["tflite_float32"]["bytes"] >= export_parity.SIZE_RATIO_MIN_BYTES
    assert report["dynamic_size_ratio"] <= 0.30
    size_check = [c for c in report["checks"] if c["metric"] == "size_ratio_to_float32"][0]
    assert size_check["applies"] and size_check["passed"]
    assert report["artifacts"]["saved_model"]["overall"]["max_abs"] <= 1e-5
    assert report["artifacts"]["tflite_float32"]["overall"]["max_abs"] <= 1e-4
    assert not os.path.exists(big / "export" / "model_float16.tflite")


@pytest.mark.parametrize("argv, expected", [
    (["--run-dir", "/nonexistent/run"], "argument --run-dir: run directory /nonexistent/run does not exist"),
    (["--quantize", "int4"], "argument --quantize: --quantize takes a comma list of none, float16, dynamic, got 'int4'"),
    (["--parity-windows", "0"], "argument --parity-windows: expected a positive integer, got 0"),
    (["--parity-steps", "-1"], "argument --parity-steps: expected an integer >= 0, got -1"),
])
def test_cli_rejects_bad_arguments(argv, expected, run_dir, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # main() sets it; keep it from leaking into later tests
    if argv[0] != "--run-dir":
        argv = ["--run-dir", run_dir] + argv
    with pytest.raises(SystemExit) as exit_info:
        export.main(argv)
    assert exit_info.value.code == 2
    assert f"python -m keras_music.export: error: {expected}" in capsys.readouterr().err


def test_failed_checks_are_listed_and_fail_the_table(exported):
    report = json.loads(json.dumps(exported[1]))
    report["artifacts"]["tflite_dynamic"]["overall"]["top1_agreement"] = 0.5
    report["checks"] = export_parity.evaluate_checks(report)
    report["passed"] = all(c["passed"] for c in report["checks"])
    assert not report["passed"]
    failed = [c for c in report["checks"] if not c["passed"]]
    assert [(c["artifact"], c["metric"]) for c in failed] == [("tflite_dynamic", "top1_agreement")]
    table = export.format_table(report)
    assert "FAIL  tflite_dynamic: top1_agreement = 0.5000 (needs >= 0.9500)" in table
    assert "SOME CHECKS FAILED" in table


def test_cli_exits_1_with_the_failing_figures(exported, run_dir, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    report = json.loads(json.dumps(exported[1]))
    report["artifacts"]["tflite_float32"]["overall"]["max_abs"] = 0.25
    report["checks"] = export_parity.evaluate_checks(report)
    report["passed"] = False
    monkeypatch.setattr(export, "export", lambda *args, **kwargs: report)
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--run-dir", run_dir, "--quiet"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "FAIL  tflite_float32: max_abs_probability_difference = 0.2500" in captured.out
    assert "tflite_float32 max_abs_probability_difference = 0.25 (needs <= 0.0001)" in captured.err


def test_failed_export_keeps_the_previous_one(exported, run_dir, monkeypatch):
    directory = exported[0]
    before = sorted(os.listdir(directory))

    def broken(*args, **kwargs):
        raise export.ExportError("conversion exploded")

    monkeypatch.setattr(export_saved_model, "write_saved_model", broken)
    with pytest.raises(export.ExportError, match="exploded"):
        export.export(run_dir, export.ExportSettings(parity_windows=1, parity_steps=1), log=lambda *a: None)
    assert sorted(os.listdir(directory)) == before
    assert not [n for n in os.listdir(run_dir) if n.startswith(".export")]
