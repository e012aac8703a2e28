"""The web export: the page in headless Chromium samples the reference generator's tokens, decodes, plays and writes MIDI."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from fractions import Fraction

import numpy as np
import pytest

from conftest import REPO
from keras_music import events, export, run as run_lib, sampling, web_export
from keras_music.studio import routes, service
from keras_music.vocabulary import Vocabulary
from page_harness import BackgroundServer, PageError, call, headless_chromium, open_page, reference_generator

pytestmark = pytest.mark.slow

SCRIPTS = os.path.join(REPO, "export")
MODELS = ("model.tflite", "model_float16.tflite", "model_dynamic.tflite")
STEPS = 60  # events


reference = reference_generator()


# ----------------------------------------------------------------------------- fixtures

def run_export(run_dir, *extra):
    """export.main in this process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
            export.main(["--run-dir", run_dir, "--parity-windows", "2", "--parity-steps", "20", "--quiet", *extra])
    finally:
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
    return exit_info.value.code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def site(web_run):
    return run_lib.path(web_run, run_lib.EXPORT, run_lib.WEB)


@pytest.fixture(scope="module")
def isolated(site):
    """The web export as `python -m keras_music.studio --web-export` serves it (with COOP/COEP)."""
    server = BackgroundServer(routes.create_web_app(site))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain(site):
    """The same files from a host that sends no isolation headers."""
    server = BackgroundServer(routes.create_web_app(site, isolate=False))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = headless_chromium(str(tmp_path_factory.mktemp("web-downloads")), "1200,1400")
    driver.set_script_timeout(180)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, isolated):
    info = open_page(browser, isolated.url + "/")
    assert info["model"] == "model_dynamic.tflite" and info["build"] == "default"
    return browser


@pytest.fixture(scope="module")
def vocabulary(site):
    return reference.load_vocabulary(os.path.join(site, "vocab.json"))


@pytest.fixture(scope="module")
def reference_models(site, vocabulary):
    return {name: reference.StepModel(os.path.join(site, "models", name), len(vocabulary["tokens"]))
            for name in MODELS}


def page_tokens(driver, seed, length=STEPS, temperature=1.0, top_k=0, top_p=1.0, keep_going=True, min_length=8):
    settings = {"seed": seed, "length": length, "temperature": temperature, "topK": top_k, "topP": top_p,
                "keepGoing": keep_going, "minLength": min_length}
    return call(driver, f"kerasMusic.generate({json.dumps(settings)})")


def reference_tokens(model, vocabulary, seed, length=STEPS, temperature=1.0, top_k=0, top_p=1.0, keep_going=True,
                     min_length=8):
    ids, _ = reference.generate(model, vocabulary, [2], length, temperature, top_k, seed,
                                stop_at_boundary=not keep_going, top_p=top_p, min_length=min_length)
    return ids[1:]


def event_count(vocabulary, ids):
    kinds = vocabulary["grammar"]["kinds"]
    return sum(kinds[i] in ("dur", "event") for i in ids)


# ----------------------------------------------------------------------------- the portable random numbers

def test_splitmix64_gives_the_published_reference_values():
    # Rosetta Code, "Pseudo-random numbers/Splitmix64": the first five outputs for seed 1234567,
    # and floor(5 * u) counted over 100,000 floats u = (next >> 11) / 2^53 for seed 987654321.
    rng = reference.SplitMix64(1234567)
    assert [rng.next_u64() for _ in range(5)] == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                                                   4593380528125082431, 16408922859458223821]
    rng = reference.SplitMix64(987654321)
    counts = np.bincount([int(rng.random() * 5) for _ in range(100_000)], minlength=5)
    assert counts.tolist() == [20027, 19892, 20073, 19978, 20030]
    # Seed 0 starts from the increment itself; seeds are taken modulo 2^64.
    assert reference.SplitMix64(0).next_u64() == 0xE220A8397B1DCDAF
    assert reference.SplitMix64(-1).next_u64() == reference.SplitMix64(2 ** 64 - 1).next_u64() == 0xE4D971771B652C20
    batch = reference.SplitMix64(5).random(3)
    single = reference.SplitMix64(5)
    assert batch.tolist() == [single.random() for _ in range(3)]


NODE_HARNESS = r"""
import {SplitMix64, Grammar, sample, generate} from './sampler.mjs';
import {decode, midiBytes} from './music.mjs';
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const cases = JSON.parse(Buffer.concat(chunks).toString());
const out = {};
out.rng = (cases.rng || []).map(([seed, count]) => {
  const rng = new SplitMix64(seed);
  const words = Array.from({length: count}, () => rng.nextU64().toString());
  const floats = Array.from({length: count}, () => rng.random());
  return {words, floats};
});
out.samples = (cases.samples || []).map(({rows, masks, seed, temperature, topK, topP}) => {
  const rng = new SplitMix64(seed);
  return rows.map((row, i) => sample(row, rng, temperature, topK, topP, [0, 1], masks ? masks[i] : null));
});
if (cases.grammar) {
  const grammar = new Grammar(cases.grammar.vocabulary);
  out.grammar = cases.grammar.walk.map(([token, closing]) => {
    const allowed = grammar.allowed(closing);
    grammar.advance(token);
    return allowed;
  });
}
// A fake step model: the probabilities of row (token * 7 + steps taken) of a fixed table.
out.pieces = [];
for (const {vocabulary, table, primerIds, settings} of cases.pieces || []) {
  const model = {
    initialState: () => 0,
    step: async (token, state) => ({probabilities: table[(token * 7 + state) % table.length], state: state + 1}),
  };
  const result = await generate(model, vocabulary, {primerIds, ...settings});
  out.pieces.push({sampled: result.sampled, events: result.events, stopped: result.stopped});
}
out.decoded = (cases.decode || []).map(({tokens, vocabulary}) => {
  const notes = decode(tokens, vocabulary);
  return {notes: notes.map((n) => [Number(n.onset), Number(n.duration), n.pitch]),
          midi: Array.from(midiBytes(notes, cases.tempo, cases.program, cases.timeSignature))};
});
process.stdout.write(JSON.stringify(out));
"""


def run_node(tmp_path, cases, harness=NODE_HARNESS):
    """Runs the page's sampler.js and music.js in Node on `cases` with `harness`; returns their answers."""
    node = shutil.which("node")
    assert node, "node is needed by the web export (it comes with npm) and by this test"
    for name in ("sampler", "music"):
        shutil.copyfile(os.path.join(web_export.SOURCES, f"{name}.js"), tmp_path / f"{name}.mjs")
    (tmp_path / "harness.mjs").write_text(harness)
    result = subprocess.run([node, str(tmp_path / "harness.mjs")], input=json.dumps(cases), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_javascript_splitmix64_and_sampler_match_python(tmp_path):
    seeds = [0, 1, 1234567, 987654321, 2 ** 53 - 1, -1, "18446744073709551615", "9007199254740993"]
    cases = {"rng": [[seed, 40] for seed in seeds], "samples": []}
    generator = np.random.default_rng(0)
    rows = generator.dirichlet(np.full(40, 0.3), size=60).astype(np.float32)
    rows[:, 7] = rows[:, 8]  # ties in probability: ranked by id
    rows[5] = 0.0  # nothing left: greedy fallback
    masks = generator.random((60, 40)) < 0.6
    masks[:, 4] = True
    settings = [(1.0, 0, 1.0), (0.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.9), (0.9, 12, 0.75), (1.0, 1, 1.0),
                (2.5, 0, 0.5), (1e-4, 0, 1.0), (1.0, 39, 0.999)]
    expected_samples = []
    for number, (temperature, top_k, top_p) in enumerate(settings):
        for with_mask in (False, True):
            seed = 100 + number
            rng = reference.SplitMix64(seed)
            expected_samples.append([reference.sample(row, rng, temperature, top_k, (0, 1),
                                                      mask if with_mask else None, top_p)
                                     for row, mask in zip(rows, masks)])
            cases["samples"].append({"rows": rows.astype(np.float64).tolist(), "seed": seed,
                                     "masks": masks.tolist() if with_mask else None,
                                     "temperature": temperature, "topK": top_k, "topP": top_p})

    answers = run_node(tmp_path, cases)

    assert len(answers["rng"]) == len(seeds)
    for (seed, count), got in zip(cases["rng"], answers["rng"]):
        rng = reference.SplitMix64(int(seed))
        assert got["words"] == [str(rng.next_u64()) for _ in range(count)], seed
        assert got["floats"] == [rng.random() for _ in range(count)], seed
    assert answers["samples"] == expected_samples


class TableModel:
    """The harness's fake step model in Python: reference_generator.StepModel's interface."""

    def __init__(self, table):
        self.table = table

    def initial_state(self):
        return 0

    def step(self, token, state):
        return np.asarray(self.table[(token * 7 + state) % len(self.table)], np.float64), state + 1


def test_javascript_piece_loop_matches_the_reference_generator(tmp_path):
    # export/README.md "One piece": events counted by kind, min_length, keep_going, the token limit.
    note = json.loads(json.dumps(Vocabulary(["<pad>", "<unk>", "<piece>", "pitch:60", "pitch:62", "pitch:64",
                                             "hold:60", "hold:62", "rest", "dur:1", "dur:1/2"]).to_json()))
    classic = json.loads(json.dumps(Vocabulary(["<pad>", "<unk>", "<piece>", "C4", "E4", "G4", "0.4.7"],
                                               representation="classic").to_json()))
    generator = np.random.default_rng(5)
    cases, expected = {"pieces": []}, []
    for vocabulary in (note, classic):
        size = len(vocabulary["tokens"])
        table = generator.dirichlet(np.full(size, 0.5), size=23)
        table[::3, 2] += 0.5  # <piece> is often likely: min_length has work to do
        table = (table / table.sum(axis=1, keepdims=True)).astype(np.float32).astype(np.float64)
        model = TableModel(table.tolist())
        for seed, length, min_length, temperature, top_k, top_p, keep_going in (
                (1, 12, 8, 0.9, 0, 1.0, False), (2, 12, 0, 1.5, 3, 1.0, False), (3, 20, 30, 1.0, 0, 0.9, True),
                (4, 1, 8, 0.0, 0, 1.0, False), (5, 6, 8, 0.9, 0, 0.95, True), (6, 40, 4, 2.0, 0, 1.0, False)):
            primer = [2, 3] if vocabulary is note else [2]
            ids, stopped = reference.generate(model, vocabulary, primer, length, temperature, top_k, seed,
                                              stop_at_boundary=not keep_going, top_p=top_p, min_length=min_length)
            sampled = ids[len(primer):]
            expected.append({"sampled": sampled, "events": event_count(vocabulary, sampled), "stopped": stopped})
            assert stopped or event_count(vocabulary, sampled) == length or len(sampled) >= length * 32 - 1
            cases["pieces"].append({"vocabulary": vocabulary, "table": table.tolist(), "primerIds": primer,
                                    "settings": {"seed": seed, "length": length, "minLength": min_length,
                                                 "temperature": temperature, "topK": top_k, "topP": top_p,
                                                 "keepGoing": keep_going}})
    # min_length holds: no piece stopped at <piece> before its 8 events (or its whole length).
    assert expected[0]["stopped"] is False or expected[0]["events"] >= 8

    answers = run_node(tmp_path, cases)

    assert answers["pieces"] == expected


def test_javascript_grammar_matches_python(tmp_path):
    tokens = ["<pad>", "<unk>", "<piece>", "pitch:60", "pitch:62", "pitch:64", "hold:60", "hold:62", "hold:64",
              "rest", "dur:1", "dur:1/2", "dur:1/3", "key:major", "key:minor", "density:3", "poly:2",
              "<fim_suffix>", "<fim_prefix>", "<fim_middle>", "<fim_end>"]
    shipped = json.loads(json.dumps(Vocabulary(tokens).to_json()))
    controls = [i for i, kind in enumerate(shipped["grammar"]["kinds"]) if kind in ("control", "fim")]
    assert [shipped["tokens"][i] for i in controls] == ["key:major", "key:minor", "density:3", "poly:2",
                                                        "<fim_suffix>", "<fim_prefix>", "<fim_middle>", "<fim_end>"]
    grammar, walk, expected_grammar = reference.Grammar(shipped), [], []
    ours = sampling.Grammar(shipped["grammar"])
    where = ours.start(1)
    choices = np.random.default_rng(3)
    for step in range(300):
        closing = step % 13 == 12
        allowed = grammar.allowed(closing=closing)
        assert allowed.tolist() == ours.allowed(where, closing=np.array([closing]))[0].tolist(), step
        assert not allowed[controls].any()  # control tokens and FIM sentinels are fed, never sampled
        # Between sonorities, now and then a control token or sentinel is fed as a primer would carry it.
        fed = grammar.phase == "between" and step % 7 == 0
        token = int(controls[step % len(controls)] if fed else choices.choice(np.flatnonzero(allowed)))
        walk.append([token, closing])
        expected_grammar.append(allowed.tolist())
        grammar.advance(token)
        ours.advance(where, np.array([token]))

    answers = run_node(tmp_path, {"grammar": {"vocabulary": shipped, "walk": walk}})

    assert answers["grammar"] == expected_grammar


def test_javascript_decoder_and_midi_writer_match_python(tmp_path):
    note_tokens = ["<piece>", "pitch:60", "pitch:64", "dur:1", "hold:60", "pitch:67", "dur:1", "rest", "dur:1/2",
                   "hold:62", "pitch:62", "dur:1/3", "hold:62", "dur:2/3", "pitch:65", "bogus", "dur:0", "pitch:70",
                   "dur:0.25", "pitch:60", "pitch:60", "hold:64", "dur:3/8", "hold:60", "dur:1/24", "pitch:71"]
    classic = ["<piece>", "C4", "0.4.7", "F#3", "B-2", "x.y", "E-5", "11"]
    cases = {"tempo": 96.0, "program": 19, "timeSignature": [3, 4],
             "decode": [{"tokens": note_tokens, "vocabulary": {"representation": "note"}},
                        {"tokens": classic, "vocabulary": {"representation": "classic", "classic_step": 0.5}}]}

    answers = run_node(tmp_path, cases)

    assert len(answers["decoded"]) == 2
    for case, got in zip(cases["decode"], answers["decoded"]):
        step = Fraction(str(case["vocabulary"].get("classic_step", 0.5)))
        notes = reference.sonorities_to_notes(reference.tokens_to_sonorities(case["tokens"],
                                                                             case["vocabulary"]["representation"], step))
        theirs = events.sonorities_to_notes(events.tokens_to_sonorities(
            case["tokens"], case["vocabulary"]["representation"], classic_step=step))
        assert got["notes"] == [[float(a), float(d), p] for a, d, p in notes] == theirs.tolist()
        assert bytes(got["midi"]) == reference.midi_bytes(notes, cases["tempo"], cases["program"], (3, 4))


def test_reference_sampler_is_keras_musics_sampler_drawing_from_splitmix64():
    """The contract's sampler is sampling.sample_next with the portable generator in place of numpy's."""
    generator = np.random.default_rng(1)
    rows = generator.dirichlet(np.full(30, 0.4), size=40)
    masks = generator.random((40, 30)) < 0.5
    masks[:, 3] = True
    for temperature, top_k, top_p in ((1.0, 0, 1.0), (0.8, 6, 1.0), (1.2, 0, 0.8), (0.6, 10, 0.9), (0.0, 0, 1.0)):
        ours, theirs = reference.SplitMix64(11), reference.SplitMix64(11)
        for row, mask in zip(rows, masks):
            expected = sampling.sample_next(row[None], theirs, temperature=temperature, top_k=top_k, top_p=top_p,
                                            banned=[0, 1],
                                            allowed=mask[None])[0]
            assert reference.sample(row, ours, temperature, top_k, (0, 1), mask, top_p) == expected


def test_page_sources_import_only_each_other_and_litert():
    import re

    imports = {}
    for name in (name for name in web_export.SOURCE_FILES if name.endswith(".js")):
        with open(os.path.join(web_export.SOURCES, name)) as handle:
            imports[name] = re.findall(r"^import .* from '([^']+)';$", handle.read(), re.M)
    assert imports["app.js"] == ["./litert/core/index.js", "./sampler.js", "./music.js", "./player.js", "./live.js"]
    assert imports["live.js"] == ["./encoder.js", "./music.js", "./player.js", "./sampler.js"]
    # The worker is a classic script (LiteRT.js's loader needs importScripts): no static imports.
    assert imports["worker.js"] == [] and imports["encoder.js"] == []
    for name, imported in imports.items():
        assert all(target.startswith("./") for target in imported), (name, imported)
        assert all(target[2:] in web_export.SOURCE_FILES or target.startswith("./litert/")
                   for target in imported), (name, imported)


# ----------------------------------------------------------------------------- the export

def test_web_export_writes_a_static_site_with_the_models_and_runtime(web_run, site):
    directory = export.export_dir(web_run)
    for name in web_export.SOURCE_FILES:
        with open(os.path.join(site, name), "rb") as copied, open(os.path.join(web_export.SOURCES, name), "rb") as source:
            assert copied.read() == source.read(), name
    with open(os.path.join(site, "vocab.json"), "rb") as copied, open(os.path.join(directory, "vocab.json"), "rb") as own:
        assert copied.read() == own.read()
    with open(os.path.join(site, web_export.SITE_FILE)) as handle:
        described = json.load(handle)
    assert described["format"] == web_export.SITE_FORMAT and described["default_model"] == "model_dynamic.tflite"
    assert [m["name"] for m in described["models"]] == list(MODELS)
    for model in described["models"]:
        with open(os.path.join(site, model["file"]), "rb") as copied, open(os.path.join(directory, model["name"]),
                                                                          "rb") as own:
            assert copied.read() == own.read() and model["bytes"] == os.path.getsize(own.name)
    assert described["runtime"]["version"] == web_export.RUNTIME_VERSION
    for _, _, target in web_export.RUNTIME_FILES:
        assert os.path.getsize(os.path.join(site, target)) > 0, target
    everything = [os.path.relpath(os.path.join(d, f), site) for d, _, files in os.walk(site) for f in files]
    assert not [p for p in everything if "node_modules" in p or p.endswith(".map")]
    with open(os.path.join(directory, export.REPORT)) as handle:
        report = json.load(handle)
    visit = report["web"]["download"]["default"]
    assert report["passed"] and report["web"]["files"] == len(everything)
    assert 0 < visit["gzip_bytes"] < visit["bytes"] < report["web"]["bytes"]


def test_web_export_fails_clearly_without_npm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(web_export.WebExportError, match="with npm, but npm is not on PATH: install Node.js"):
        web_export.fetch_runtime(str(tmp_path / "runtime"), log=lambda *a: None)


def test_unreachable_registry_fails_the_export_in_seconds_and_keeps_the_previous_one(web_run, tmp_path, monkeypatch):
    site_file = os.path.join(run_lib.path(web_run, run_lib.EXPORT, run_lib.WEB), web_export.SITE_FILE)
    with open(site_file, "rb") as handle:
        before = handle.read()
    monkeypatch.setenv("KERAS_MUSIC_CACHE", str(tmp_path / "cache"))  # no cached runtime
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))  # nor npm's own copy
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    started = time.perf_counter()
    status, out, err = run_export(web_run, "--web")
    assert status == 1 and "npm could not fetch @litertjs/core 2.5.3 from http://127.0.0.1:9/" in err, err
    assert time.perf_counter() - started < 120
    with open(site_file, "rb") as handle:
        assert handle.read() == before


def test_runtime_with_another_integrity_is_refused(tmp_path, monkeypatch):
    pinned = dict(web_export.RUNTIME_PACKAGES)
    pinned["@litertjs/wasm-utils"] = (web_export.RUNTIME_VERSION, "sha512-" + "A" * 86 + "==")
    monkeypatch.setattr(web_export, "RUNTIME_PACKAGES", pinned)
    with pytest.raises(web_export.WebExportError, match="refusing to ship them"):
        web_export.fetch_runtime(str(tmp_path / "runtime"), log=lambda *a: None)
    assert not os.path.exists(tmp_path / "runtime")


# ----------------------------------------------------------------------------- the page in Chromium

def test_greedy_tokens_equal_the_reference_generator_for_every_model_file(page, vocabulary, reference_models):
    try:
        for name in MODELS:
            call(page, f"kerasMusic.loadModel({json.dumps(name)})")
            for seed, temperature, top_k in ((1, 1.0, 1), (2, 0.0, 0), (3, 0.5, 1)):
                expected = reference_tokens(reference_models[name], vocabulary, seed, temperature=temperature,
                                            top_k=top_k)
                assert event_count(vocabulary, expected) == STEPS
                assert page_tokens(page, seed, temperature=temperature, top_k=top_k) == expected, (name, seed)
    finally:
        call(page, "kerasMusic.loadModel('model_dynamic.tflite')")


def test_sampled_tokens_equal_the_reference_generator_for_at_least_9_of_10_seeds(page, vocabulary, reference_models):
    model = reference_models["model_dynamic.tflite"]
    same = [page_tokens(page, seed) == reference_tokens(model, vocabulary, seed) for seed in range(10)]
    assert sum(same) >= 9, same
    # Top-k, top-p and stopping at <piece> (no keep-going) take the same paths in both.
    mixed = []
    for seed in (21, 22, 23, 24, 25):
        settings = {"temperature": 0.9, "top_k": 20, "top_p": 0.9, "keep_going": False}
        mixed.append(page_tokens(page, seed, **settings) == reference_tokens(model, vocabulary, seed, **settings))
    assert sum(mixed) >= 4, mixed
    # A seed beyond 2^53, as a string, is the same 64-bit seed on both sides.
    big = "18446744073709551557"
    assert page_tokens(page, big, length=20) == reference_tokens(model, vocabulary, int(big), length=20)


def test_reference_cli_tokens_out_equals_the_page(page, site, tmp_path):
    out = tmp_path / "tokens.json"
    result = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "reference_generator.py"),
         "--model", os.path.join(site, "models", "model_dynamic.tflite"), "--vocab", os.path.join(site, "vocab.json"),
         "--out", str(tmp_path / "piece.mid"), "--length", "50", "--temperature", "1.1", "--top-k", "30",
         "--top-p", "0.95", "--seed", "77", "--tokens-out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = json.loads(out.read_text())
    assert expected and "seed: 77" in result.stdout
    assert page_tokens(page, 77, length=50, temperature=1.1, top_k=30, top_p=0.95, keep_going=False) == expected


def midi_track(path):
    """The tempos (bpm) and notes ([onset, duration] in quarters, pitch) of a one-track, 480-tick MIDI file."""
    import mido

    midi = mido.MidiFile(path)
    assert midi.ticks_per_beat == 480 and len(midi.tracks) == 1
    tick, starts, tempos, notes = 0, {}, [], []
    for message in midi.tracks[0]:
        tick += message.time
        if message.type == "set_tempo":
            tempos.append(mido.tempo2bpm(message.tempo))
        elif message.type == "note_on" and message.velocity > 0:
            starts[message.note] = tick
        elif message.type in ("note_off", "note_on"):
            onset = starts.pop(message.note)
            notes.append([onset / 480, (tick - onset) / 480, message.note])
    return tempos, notes


def test_page_plays_draws_and_offers_midi_that_matches_python_decoding(page, vocabulary):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # The form starts from the export's defaults and the corpus's tempo.
    site = call(page, "fetch('web.json').then((r) => r.json())")
    initial = page.execute_script(
        "return ['length', 'min-length', 'temperature', 'top-k', 'top-p', 'tempo']"
        ".map((id) => Number(document.getElementById(id).value))")
    assert initial == [200, 8, 0.9, 0, 1, pytest.approx(site["timing"]["tempo"])]
    assert site["defaults"]["temperature"] == 0.9
    for field, value in (("length", "50"), ("temperature", "1"), ("top-k", "0"), ("top-p", "1"), ("seed", "7"),
                         ("tempo", "100")):
        element = page.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    page.find_element(By.ID, "generate").click()
    WebDriverWait(page, 60, poll_frequency=0.1).until(
        lambda d: d.execute_script("return ['done', 'error'].includes(document.body.dataset.status)"))
    assert page.execute_script("return document.body.dataset.status") == "done", \
        page.find_element(By.ID, "status").text
    piece = page.execute_script("return kerasMusic.last")
    assert piece["seed"] == "7" and piece["settings"]["length"] == 50 and piece["tempo"] == 100
    assert piece["settings"]["minLength"] == 8 and piece["settings"]["temperature"] == 1
    assert piece["events"] == event_count(vocabulary, piece["sampled"]) and (piece["stopped"] or piece["events"] == 50)
    tokens = piece["tokens"]
    assert tokens[0] == "<piece>" and [vocabulary["tokens"].index(t) for t in tokens[1:]] == piece["sampled"]
    expected = events.sonorities_to_notes(events.tokens_to_sonorities(tokens, "note"))
    assert piece["notes"] == expected.tolist() and len(expected) > 5
    assert page.find_element(By.ID, "tokens").get_attribute("textContent") == " ".join(tokens)

    # Played: the audio clock runs and the first note was scheduled just after the press.
    assert piece["firstNoteAt"] > 0 and piece["seconds"] > 1
    before = page.execute_script("return kerasMusic.audioClock()")
    after = call(page, "new Promise((resolve) => setTimeout(() => resolve(kerasMusic.audioClock()), 300))")
    assert before["state"] == after["state"] == "running" and after["time"] > before["time"]
    # Drawn: the roll has note-coloured pixels.
    coloured = page.execute_script(
        "const c = document.getElementById('roll'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 0x3d && d[i + 1] === 0x6b && d[i + 2] === 0x8e) n++;"
        "return n;")
    assert coloured > 100

    # The download is the MIDI file the page wrote: mido reads the same notes, and the bytes are the reference's.
    link = page.find_element(By.ID, "download-midi")
    assert link.is_displayed() and link.get_attribute("download") == "keras_music-seed-7.mid"
    link.click()
    path = os.path.join(page.downloads, "keras_music-seed-7.mid")
    deadline = time.time() + 20
    while time.time() < deadline and not os.path.isfile(path):
        time.sleep(0.1)
    with open(path, "rb") as handle:
        data = handle.read()
    tempos, notes = midi_track(path)
    assert tempos == [pytest.approx(100)]
    assert sorted(notes) == sorted(expected.tolist())
    python_notes = reference.sonorities_to_notes(reference.tokens_to_sonorities(tokens, "note"))
    assert data == reference.midi_bytes(python_notes, 100.0, 0, (4, 4))
    # Decoding is also open to scripts: the same notes from the tokens alone.
    assert call(page, f"kerasMusic.decode({json.dumps(tokens)})") == expected.tolist()


def test_threaded_build_runs_when_isolated_and_the_default_build_without_isolation(browser, isolated, plain, vocabulary,
                                                                                   reference_models):
    expected = reference_tokens(reference_models["model_dynamic.tflite"], vocabulary, 5, top_k=1)
    try:
        info = open_page(browser, isolated.url + "/?build=threaded")
        assert info["build"] == "threaded" and info["crossOriginIsolated"] is True and not info["notes"]
        assert page_tokens(browser, 5, top_k=1) == expected
        info = open_page(browser, plain.url + "/?build=threaded&model=model.tflite")
        assert info["build"] == "default" and info["crossOriginIsolated"] is False and info["model"] == "model.tflite"
        assert "cross-origin isolation" in info["notes"][0]
        expected_float32 = reference_tokens(reference_models["model.tflite"], vocabulary, 5, top_k=1)
        assert page_tokens(browser, 5, top_k=1) == expected_float32
    finally:
        open_page(browser, isolated.url + "/")


def test_page_draws_the_published_splitmix64_values(page):
    words = call(page, "(() => { const rng = kerasMusic.rng(1234567);"
                       "return Array.from({length: 5}, () => rng.nextU64().toString()); })()")
    assert words == ["6457827717110365317", "3203168211198807973", "9817491932198370423", "4593380528125082431",
                     "16408922859458223821"]


def test_page_refuses_bad_settings_with_the_setting_named(page):
    for settings, words in (({"length": 0}, "length"), ({"length": 10001}, "length must be an integer in 1..10000"),
                            ({"minLength": -1}, "minLength"), ({"temperature": -1}, "temperature"),
                            ({"topP": 0}, "topP"), ({"topK": 1.5}, "topK"), ({"seed": 1.5}, "seed"),
                            ({"primer": "pitch:999"}, "primer")):
        with pytest.raises(PageError, match=words):
            call(page, f"kerasMusic.generate({json.dumps(settings)})")



def test_a_primer_is_continued_as_the_reference_generator_continues_it(page, vocabulary, reference_models):
    primer = ["<piece>", "pitch:60", "pitch:64", "dur:1", "hold:60", "pitch:67"]  # ends inside a sonority
    ids = [vocabulary["tokens"].index(token) for token in primer]
    expected, _ = reference.generate(reference_models["model_dynamic.tflite"], vocabulary, ids, 80, 1.0, 1, 4)
    settings = {"seed": 4, "length": 80, "topK": 1, "primer": " ".join(primer)}
    assert call(page, f"kerasMusic.generate({json.dumps(settings)})") == expected[len(ids):]
    assert call(page, "kerasMusic.last.tokens.slice(0, 6)") == primer


# ----------------------------------------------------------------------------- hosting

def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers, response.read()


def test_studio_serves_the_web_export_with_isolation_headers(isolated, plain):
    status, headers, body = fetch(isolated.url + "/")
    assert status == 200 and b'src="app.js"' in body
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    status, headers, _ = fetch(isolated.url + "/litert/wasm/litert_wasm_internal.wasm")
    assert headers["Content-Type"] == "application/wasm" and headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    status, headers, _ = fetch(plain.url + "/web.json")
    assert status == 200 and "Cross-Origin-Opener-Policy" not in headers


def test_a_web_export_is_found_in_its_folder_or_its_run_directory(web_run, site, tmp_path):
    assert web_export.site_directory(web_run) == web_export.site_directory(site) == site
    assert web_export.site_directory(str(tmp_path), required=False) is None
    with pytest.raises(web_export.WebExportError) as refused:
        web_export.site_directory(str(tmp_path))
    assert str(refused.value) == (f"{tmp_path} holds no web export (no web.json in it or in export/web/): build one "
                                  "with python -m keras_music.export --run-dir RUN --web")


def test_studio_links_a_runs_web_export(web_run, tmp_path):
    studio = service.Studio([web_run], str(tmp_path / "out"), db=str(tmp_path / "votes.sqlite"),
                            settings=service.StudioSettings(ab_pool=1), log=lambda message: None)
    (run,) = studio.describe_runs()
    assert run["web_url"] == f"/web/{run['name']}/"
    server = BackgroundServer(routes.create_app(studio))
    try:
        status, headers, body = fetch(server.url + run["web_url"] + "web.json")
        assert status == 200 and json.loads(body)["format"] == web_export.SITE_FORMAT
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        server.stop()
