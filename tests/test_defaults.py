"""Tests for keras_music.defaults: every place that states a default (signatures, commands, config, page) agrees with it."""

import hashlib
import importlib.util
import inspect
import json
import os
import re
import urllib.request

import pytest

from conftest import REPO

from keras_music import config, controls, defaults, evaluate, evaluate_music, experiment, export, generate, model, pieces
from keras_music import run as run_lib, sampling, web_export
from keras_music.studio import app as studio_app, service as studio_service

PAGE = os.path.join(REPO, "keras_music", "web_page")


def reference_generator():
    path = os.path.join(REPO, "export", "reference_generator.py")
    spec = importlib.util.spec_from_file_location("reference_generator_for_defaults", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parameter_defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_defaults_hold_the_agreed_values():
    assert (defaults.TEMPERATURE, defaults.TOP_K, defaults.TOP_P) == (0.9, 0, 1.0)
    assert (defaults.LENGTH, defaults.MIN_LENGTH, defaults.MAX_LENGTH) == (200, 8, 10_000)
    assert defaults.TEMPERATURES == (0.5, 0.9, 1.0, 1.5) and defaults.TEMPERATURE in defaults.TEMPERATURES
    assert (defaults.TEMPO, defaults.DROPOUT, defaults.SEED, defaults.MAX_TOKENS_PER_EVENT) == (120.0, 0.2, 0, 32)


def test_library_signatures_use_the_defaults():
    # Sampling settings travel as one object: its defaults are the agreed ones, and generate takes it whole.
    drawn = parameter_defaults(sampling.SamplingSettings)
    assert drawn == {"length": defaults.LENGTH, "temperature": defaults.TEMPERATURE, "top_k": defaults.TOP_K,
                     "top_p": defaults.TOP_P, "min_length": defaults.MIN_LENGTH, "rng": "splitmix64"}
    generated = parameter_defaults(generate.Generator.generate)
    assert generated["sampling"] is None and generated["seed"] == defaults.SEED
    assert (generate.MAX_LENGTH, generate.MAX_TOKENS_PER_EVENT) == (defaults.MAX_LENGTH, defaults.MAX_TOKENS_PER_EVENT)
    assert evaluate_music.EvaluationSettings().temperatures == defaults.TEMPERATURES
    assert parameter_defaults(evaluate.evaluate_run)["settings"] is None
    assert parameter_defaults(evaluate_music.music_report)["settings"] is None
    assert parameter_defaults(experiment.StudySettings)["temperatures"] == defaults.TEMPERATURES
    assert parameter_defaults(model.build_model)["dropout"] == defaults.DROPOUT
    assert parameter_defaults(pieces.default_timing)["tempo"] == defaults.TEMPO
    assert studio_service.MAX_LENGTH == defaults.MAX_LENGTH
    assert studio_service.StudioSettings().max_length == defaults.MAX_LENGTH


def test_config_defaults_are_the_defaults():
    resolved = config.Config()
    assert resolved.model.dropout == defaults.DROPOUT
    assert resolved.train.sample_temperature == defaults.TEMPERATURE
    assert resolved.train.sample_length == defaults.LENGTH


def test_command_defaults_are_the_defaults(tiny_run, tmp_path):
    _, args = generate.parse_args(["--run-dir", tiny_run])
    assert (args.length, args.min_length, args.temperature, args.top_k, args.top_p, args.seed, args.rng) == (
        defaults.LENGTH, defaults.MIN_LENGTH, defaults.TEMPERATURE, defaults.TOP_K, defaults.TOP_P, defaults.SEED,
        "splitmix64")
    assert (args.key_prior, args.key_guidance) == (defaults.KEY_PRIOR, defaults.KEY_GUIDANCE)
    # evaluate and experiment leave --temperature(s) unset and sweep the defaults; their help says which.
    parser, args = evaluate.parse_args(["--run-dir", tiny_run])
    assert args.temperature is None and args.seed == defaults.SEED
    sweep = " ".join(f"{t:g}" for t in defaults.TEMPERATURES)
    assert f"(default: {sweep})" in " ".join(parser.format_help().split())
    configs = [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]
    parser, args = experiment.parse_args(["--configs", *configs])
    assert args.temperatures is None and args.seed == defaults.SEED
    assert f"(default: {sweep})" in " ".join(parser.format_help().split())
    _, args = studio_app.parse_args(["--run-dir", tiny_run])
    assert args.max_length == defaults.MAX_LENGTH


def test_the_reference_generator_repeats_the_defaults():
    reference = reference_generator()
    assert (reference.DEFAULT_TEMPERATURE, reference.DEFAULT_TOP_K, reference.DEFAULT_TOP_P) == (
        defaults.TEMPERATURE, defaults.TOP_K, defaults.TOP_P)
    assert (reference.DEFAULT_LENGTH, reference.DEFAULT_MIN_LENGTH, reference.MAX_TOKENS_PER_EVENT) == (
        defaults.LENGTH, defaults.MIN_LENGTH, defaults.MAX_TOKENS_PER_EVENT)
    assert reference.DEFAULT_TEMPO == defaults.TEMPO and reference.DEFAULT_KEY_GUIDANCE == defaults.KEY_GUIDANCE
    assert reference.DEFAULT_KEY_PRIOR == defaults.KEY_PRIOR
    _, args = reference.parse_args(["--model", "m.tflite", "--vocab", "v.json", "--out", "o.mid"])
    assert (args.length, args.min_length, args.temperature, args.top_k, args.top_p, args.tempo) == (
        defaults.LENGTH, defaults.MIN_LENGTH, defaults.TEMPERATURE, defaults.TOP_K, defaults.TOP_P, defaults.TEMPO)
    signature = parameter_defaults(reference.generate)
    assert (signature["length"], signature["min_length"], signature["temperature"], signature["top_k"],
            signature["top_p"], signature["key_guidance"], signature["key_prior"]) == (
        defaults.LENGTH, defaults.MIN_LENGTH, defaults.TEMPERATURE, defaults.TOP_K, defaults.TOP_P,
        defaults.KEY_GUIDANCE, defaults.KEY_PRIOR)
    args = reference.parse_args(["--model", "m", "--vocab", "v", "--out", "o"])[1]
    assert (args.key_guidance, args.key_prior) == (defaults.KEY_GUIDANCE, defaults.KEY_PRIOR)
    assert controls.ControlSettings().key_guidance == defaults.KEY_GUIDANCE
    assert controls.ControlSettings().key_prior == defaults.KEY_PRIOR


def test_the_savedmodel_consumer_repeats_the_defaults():
    """export/savedmodel_consumer.py cannot import keras_music either: its options carry the same values."""
    path = os.path.join(REPO, "export", "savedmodel_consumer.py")
    spec = importlib.util.spec_from_file_location("savedmodel_consumer_for_defaults", path)
    consumer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(consumer)
    _, args = consumer.parse_args(["--saved-model", "saved_model"])
    assert (args.length, args.min_length, args.temperature, args.top_k, args.top_p, args.seed) == (
        defaults.LENGTH, defaults.MIN_LENGTH, defaults.TEMPERATURE, defaults.TOP_K, defaults.TOP_P, defaults.SEED)


def fake_runtime(directory) -> str:
    """A runtime folder web_export accepts (the files' contents do not matter to web.json)."""
    files = {}
    for _, _, target in web_export.RUNTIME_FILES:
        path = os.path.join(directory, *target.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(target.encode())
        files[target] = hashlib.sha256(target.encode()).hexdigest()
    with open(os.path.join(directory, web_export.RUNTIME_MANIFEST), "w") as handle:
        json.dump({"version": web_export.RUNTIME_VERSION, "files": files}, handle)
    return str(directory)


def test_the_web_export_ships_the_defaults_and_the_corpus_tempo(tiny_run, tmp_path):
    model_file = tmp_path / "model.tflite"
    model_file.write_bytes(b"not read by the site writer")
    out = tmp_path / "export"
    export._write_web(tiny_run, str(out), vocab_file=run_lib.path(tiny_run, run_lib.VOCAB),
                      tflite_paths={"none": str(model_file)}, runtime=fake_runtime(tmp_path / "runtime"))
    with open(out / run_lib.WEB / web_export.SITE_FILE) as handle:
        site = json.load(handle)
    assert site["defaults"] == {"temperature": defaults.TEMPERATURE, "top_k": defaults.TOP_K, "top_p": defaults.TOP_P,
                                "length": defaults.LENGTH, "min_length": defaults.MIN_LENGTH,
                                "max_length": defaults.MAX_LENGTH,
                                "max_tokens_per_event": defaults.MAX_TOKENS_PER_EVENT, "tempo": defaults.TEMPO,
                                "key_guidance": defaults.KEY_GUIDANCE, "key_prior": defaults.KEY_PRIOR}
    corpus_tempo = run_lib.load_prepared(tiny_run)["timing"]["tempo"]
    assert site["timing"]["tempo"] == pytest.approx(corpus_tempo)


def read(name: str) -> str:
    with open(os.path.join(PAGE, name), encoding="utf-8") as handle:
        return handle.read()


def test_the_pages_fallback_values_are_the_defaults():
    block = re.search(r"export const DEFAULTS = Object\.freeze\(\{(.*?)\}\);", read("sampler.js"), re.S).group(1)
    values = {key: float(value) for key, value in re.findall(r"(\w+): ([\d.]+)", block)}
    assert values == {"temperature": defaults.TEMPERATURE, "topK": defaults.TOP_K, "topP": defaults.TOP_P,
                      "length": defaults.LENGTH, "minLength": defaults.MIN_LENGTH, "maxLength": defaults.MAX_LENGTH,
                      "maxTokensPerEvent": defaults.MAX_TOKENS_PER_EVENT, "tempo": defaults.TEMPO,
                      "keyGuidance": defaults.KEY_GUIDANCE, "keyPrior": defaults.KEY_PRIOR}
    # The form's initial values (the page sets them again from web.json once it has loaded).
    html = read("index.html")
    initial = {name: float(re.search(rf'id="{name}"[^>]*value="([\d.]+)"', html).group(1))
               for name in ("length", "min-length", "temperature", "top-k", "top-p", "tempo")}
    assert initial == {"length": defaults.LENGTH, "min-length": defaults.MIN_LENGTH,
                       "temperature": defaults.TEMPERATURE, "top-k": defaults.TOP_K, "top-p": defaults.TOP_P,
                       "tempo": defaults.TEMPO}
    assert f'max="{defaults.MAX_LENGTH}"' in re.search(r'<input id="length"[^>]*>', html).group(0)
    # No literal default left in the page's code: app.js takes them from web.json or sampler.js.
    app = read("app.js")
    assert not re.search(r"tempo: 120|temperature = 1\b|length = 400", app)


def test_the_studio_serves_the_defaults_and_its_form_has_none_of_its_own(tiny_run, tmp_path):
    """GET /api/defaults is defaults.py; the studio's form carries no literal value (its browser test reads them)."""
    from page_harness import BackgroundServer
    from keras_music.studio import routes

    studio = studio_service.Studio([tiny_run], str(tmp_path / "out"), db=str(tmp_path / "votes.sqlite"),
                            settings=studio_service.StudioSettings(ab_seconds=8, ab_pool=1), log=lambda message: None)
    server = BackgroundServer(routes.create_app(studio))
    try:
        with urllib.request.urlopen(server.url + "/api/defaults", timeout=60) as response:
            assert json.loads(response.read()) == defaults.as_dict()
    finally:
        server.stop()
    with open(os.path.join(os.path.dirname(routes.__file__), "static", "index.html")) as handle:
        html = handle.read()
    for name in ("temperature", "length", "top-k", "top-p"):
        assert "value=" not in re.search(rf'<input id="{name}"[^>]*>', html).group(0), name
