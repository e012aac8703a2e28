"""Export: SavedModel and TFLite parity with Keras, builtin-only ops, and the consumers outside keras_music."""

import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from conftest import REPO
from keras_music import events, export, model as model_lib, run as run_lib, sampling
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


@pytest.fixture(scope="module")
def keras_reference(run_dir):
    vocabulary = run_lib.load_vocabulary(run_dir)
    model = run_lib.load_model(run_dir, vocabulary)
    config = run_lib.load_config(run_dir)
    windows, _ = export.held_out_windows(run_dir, config.data.seq_length, vocabulary.boundary_id, PARITY_WINDOWS)
    return model, model_lib.StepModel(model), vocabulary, windows


@pytest.fixture(scope="module")
def loaded(exported):
    import tensorflow as tf

    return tf.saved_model.load(os.path.join(exported[0], run_lib.SAVED_MODEL))


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


# ----------------------------------------------------------------------------- independent parity

def test_saved_model_matches_keras_on_held_out_windows(loaded, keras_reference):
    import tensorflow as tf

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


def test_tflite_float32_matches_keras_over_200_greedy_steps(exported, keras_reference):
    _, step_model, vocabulary, windows = keras_reference
    runner = tflite_runner(os.path.join(exported[0], "model.tflite"))
    for primer in ([vocabulary.boundary_id], windows[0][:16]):
        keras_ids, keras_probabilities = keras_greedy(step_model, primer, GREEDY_STEPS)
        lite_ids, lite_probabilities = tflite_greedy(runner, primer, GREEDY_STEPS, step_model.state_shape)
        np.testing.assert_array_equal(lite_ids, keras_ids)
        assert np.abs(lite_probabilities - keras_probabilities).max() <= 1e-4


def test_quantized_models_agree_on_top1(exported, keras_reference):
    _, step_model, vocabulary, windows = keras_reference
    keras_ids, keras_probabilities = keras_greedy(step_model, [vocabulary.boundary_id], GREEDY_STEPS)
    path = np.concatenate([[vocabulary.boundary_id], keras_ids[:-1]]).astype(np.int32)
    for name, minimum in (("model_float16.tflite", 0.99), ("model_dynamic.tflite", 0.95)):
        runner = tflite_runner(os.path.join(exported[0], name))
        state = np.zeros((1, *step_model.state_shape), np.float32)
        agree = []
        for token, reference in zip(path, keras_probabilities):
            out = runner(token=np.array([token], np.int32), state=state)
            state = out["next_state"]
            agree.append(sampling.greedy(out["probabilities"], (0, 1))[0] == sampling.greedy(reference[None],
                                                                                              (0, 1))[0])
        assert np.mean(agree) >= minimum, name


# ----------------------------------------------------------------------------- TFLite structure

def test_tflite_files_use_builtin_ops_and_the_step_signature(exported, keras_reference):
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python import schema_py_generated as schema

    _, step_model, vocabulary, _ = keras_reference
    rows, hidden = step_model.state_shape
    for name in ("model.tflite", "model_float16.tflite", "model_dynamic.tflite"):
        path = os.path.join(exported[0], name)
        with open(path, "rb") as handle:
            flatbuffer = schema.ModelT.InitFromPackedBuf(bytearray(handle.read()), 0)
        codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in flatbuffer.operatorCodes]
        assert schema.BuiltinOperator.CUSTOM not in codes, name
        assert not [c.customCode for c in flatbuffer.operatorCodes if c.customCode], name
        with open(path, "rb") as handle:
            operators = export.tflite_operators(handle.read())
        assert "FULLY_CONNECTED" in operators and not any("Flex" in op or "CUSTOM" in op for op in operators)

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


def test_check_builtin_only_rejects_custom_ops(monkeypatch):
    monkeypatch.setattr(export, "tflite_operators", lambda data: ["ADD", "CUSTOM:FlexTensorListReserve"])
    with pytest.raises(export.ExportError, match="FlexTensorListReserve"):
        export.check_builtin_only(b"", "model.tflite")


# ----------------------------------------------------------------------------- generate signature

def test_generate_signature(loaded, keras_reference):
    import tensorflow as tf

    _, step_model, vocabulary, windows = keras_reference
    generate = loaded.signatures["generate"]

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


# ----------------------------------------------------------------------------- consumers outside keras_music

def test_reference_generator_runs_without_tensorflow(exported, tmp_path, run_dir):
    env = blocked_env(tmp_path, "tensorflow", "keras", "keras_music", "mido", "music21")
    out = tmp_path / "piece.mid"
    result = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "reference_generator.py"),
         "--model", os.path.join(exported[0], "model.tflite"), "--vocab", os.path.join(exported[0], "vocab.json"),
         "--out", str(out), "--length", "120", "--temperature", "1.0", "--top-k", "20", "--seed", "3",
         "--tempo", "100", "--keep-going"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    tokens = next(line for line in result.stdout.splitlines() if line.startswith("tokens: "))[8:].split()
    # 120 sampled tokens, or 119 when the last step fell between sonorities
    # (the grammar lets a last token only close a sonority, never open one).
    assert tokens[0] == "<piece>" and len(tokens) in (120, 121)
    report = events.DecodeReport()
    events.tokens_to_sonorities(tokens, "note", report=report)
    assert report.repairs == {}

    # The same tokens decoded by keras_music give the notes the MIDI file holds.
    expected = events.sonorities_to_notes(events.tokens_to_sonorities(tokens, "note"))
    import mido

    midi = mido.MidiFile(str(out))
    assert midi.ticks_per_beat == 480
    tick, starts, notes = 0, {}, []
    for message in midi.tracks[0]:
        tick += message.time
        if message.type == "set_tempo":
            assert round(mido.tempo2bpm(message.tempo)) == 100
        elif message.type == "note_on" and message.velocity > 0:
            assert message.note not in starts, "overlapping notes of one pitch"
            starts[message.note] = tick
        elif message.type in ("note_off", "note_on"):
            onset = starts.pop(message.note)
            notes.append((onset / 480, (tick - onset) / 480, message.note))
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
    theirs = events.sonorities_to_notes(events.tokens_to_sonorities(classic, "classic", Fraction(1, 2)))
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
        rng_ours, rng_theirs = np.random.default_rng(4), sampling.make_rng(4)
        expected = sampling.sample_next(row[None], rng_theirs, 0.8, 0, banned=[0, 1], allowed=mask[None])[0]
        assert reference.sample(row, rng_ours, 0.8, 0, (0, 1), mask) == expected
    for temperature, top_k in ((0.0, 0), (1.0, 0), (0.7, 5), (1.5, 1)):
        rng_ours, rng_theirs = np.random.default_rng(4), sampling.make_rng(4)
        for row in probabilities:
            expected = sampling.sample_next(row[None], rng_theirs, temperature, top_k, banned=[0, 1])[0]
            assert reference.sample(row, rng_ours, temperature, top_k, (0, 1)) == expected


def test_savedmodel_consumer_runs_without_keras_music(exported, tmp_path):
    env = blocked_env(tmp_path, "keras_music")
    result = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "savedmodel_consumer.py"),
         "--saved-model", os.path.join(exported[0], "saved_model"), "--num-steps", "24", "--temperature", "0.8",
         "--seed", "5", "--primer", "<piece>", "--show-step"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    tokens = next(line for line in lines if line.startswith("tokens: "))[8:].split()
    assert len(tokens) == 24
    with open(os.path.join(exported[0], "vocab.json")) as handle:
        vocabulary = set(json.load(handle)["tokens"]) - {"<pad>", "<unk>"}
    assert set(tokens) <= vocabulary
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
    report = export.export(str(big), quantize=("none", "dynamic"), parity_windows=1, parity_steps=10,
                           log=lambda *a: None, separate_conversion=True)
    assert report["artifacts"]["tflite_float32"]["bytes"] >= export.SIZE_RATIO_MIN_BYTES
    assert report["dynamic_size_ratio"] <= 0.30
    size_check = [c for c in report["checks"] if c["metric"] == "size_ratio_to_float32"][0]
    assert size_check["applies"] and size_check["passed"]
    assert report["artifacts"]["saved_model"]["overall"]["max_abs"] <= 1e-5
    assert report["artifacts"]["tflite_float32"]["overall"]["max_abs"] <= 1e-4
    assert not os.path.exists(big / "export" / "model_float16.tflite")


@pytest.mark.parametrize("argv", [
    ["--run-dir", "/nonexistent/run"],
    ["--quantize", "int4"],
    ["--parity-windows", "0"],
    ["--parity-steps", "-1"],
])
def test_cli_rejects_bad_arguments(argv, run_dir, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # main() sets it; keep it from leaking into later tests
    if argv[0] != "--run-dir":
        argv = ["--run-dir", run_dir] + argv
    with pytest.raises(SystemExit) as exit_info:
        export.main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_failed_checks_are_listed_and_fail_the_table(exported):
    report = json.loads(json.dumps(exported[1]))
    report["artifacts"]["tflite_dynamic"]["overall"]["top1_agreement"] = 0.5
    report["checks"] = export.evaluate_checks(report)
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
    report["checks"] = export.evaluate_checks(report)
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

    monkeypatch.setattr(export, "write_saved_model", broken)
    with pytest.raises(export.ExportError, match="exploded"):
        export.export(run_dir, parity_windows=1, parity_steps=1, log=lambda *a: None)
    assert sorted(os.listdir(directory)) == before
    assert not [n for n in os.listdir(run_dir) if n.startswith(".export")]
