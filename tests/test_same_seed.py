"""One seed, one piece: Python, the SavedModel, the TFLite reference generator, the page and the studio agree token for token."""

import json
import os

import numpy as np
import pytest

from keras_music import defaults, events, export, generate, run as run_lib
from keras_music.sampling import SamplingSettings
from keras_music.studio import routes, service
from page_harness import BackgroundServer, call, headless_chromium, open_page, reference_generator
from test_studio import call as studio_call

pytestmark = pytest.mark.slow

# The three settings: greedy, a nucleus and a top-k one; ten seeds each.
SETTINGS = ((0.0, 0, 1.0), (0.9, 0, 0.95), (1.5, 20, 1.0))
FIRST_SEED = 1000
SEEDS = tuple(range(FIRST_SEED, FIRST_SEED + 10))
LENGTH = 24  # events
MIN_LENGTH = 4


@pytest.fixture(scope="module")
def studio(web_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("same-seed-studio")
    studio = service.Studio([web_run], str(root / "out"), db=str(root / "votes.sqlite"),
                            settings=service.StudioSettings(ab_seconds=8, ab_pool=1), log=lambda message: None)
    server = BackgroundServer(routes.create_app(studio))
    yield studio, server
    server.stop()


@pytest.fixture(scope="module")
def primer(studio):
    """The studio's opening of held-out piece 0, the primer every path continues."""
    instance, _ = studio
    tokens = instance.held_out_opening(instance.generators[instance.run_label(None)], "0")
    assert events.count_events(tokens) >= 2, tokens
    return tokens


def python_pieces(run_dir, primer, seeds=SEEDS):
    """Generator (Keras): one batch of pieces per setting; row i is the piece of seed seeds[0] + i."""
    generator = generate.Generator(run_dir, log=lambda message: None)
    out = {}
    for temperature, top_k, top_p in SETTINGS:
        pieces = generator.generate(num_samples=len(seeds), seed=seeds[0], primer_tokens=primer, sampling=SamplingSettings(length=LENGTH, min_length=MIN_LENGTH, temperature=temperature, top_k=top_k, top_p=top_p))
        for seed, piece in zip(seeds, pieces):
            out[temperature, top_k, top_p, seed] = piece.ids
    return out


def saved_model_pieces(run_dir, primer_ids, seeds=SEEDS):
    import tensorflow as tf

    signature = tf.saved_model.load(run_lib.path(run_dir, run_lib.EXPORT, run_lib.SAVED_MODEL)).signatures["generate"]
    out = {}
    for temperature, top_k, top_p in SETTINGS:
        for seed in seeds:
            result = signature(primer=tf.constant(primer_ids, tf.int32), length=tf.constant(LENGTH, tf.int32),
                               min_length=tf.constant(MIN_LENGTH, tf.int32),
                               temperature=tf.constant(temperature, tf.float64), top_k=tf.constant(top_k, tf.int32),
                               top_p=tf.constant(top_p, tf.float64), seed=tf.constant(seed, tf.int64))
            out[temperature, top_k, top_p, seed] = [int(i) for i in result["ids"].numpy()]
    return out


def reference_pieces(run_dir, primer_ids, seeds=SEEDS):
    reference = reference_generator()
    directory = export.export_dir(run_dir)
    vocabulary = reference.load_vocabulary(os.path.join(directory, "vocab.json"))
    model = reference.StepModel(os.path.join(directory, "model.tflite"), len(vocabulary["tokens"]))
    out = {}
    for temperature, top_k, top_p in SETTINGS:
        for seed in seeds:
            ids, _ = reference.generate(model, vocabulary, primer_ids, LENGTH, temperature, top_k, seed, top_p=top_p,
                                        min_length=MIN_LENGTH)
            out[temperature, top_k, top_p, seed] = ids[len(primer_ids):]
    return out


def page_pieces(run_dir, primer, tmp_path):
    """The exported page in headless Chromium with the float32 model file, the one the reference generator reads."""
    site = run_lib.path(run_dir, run_lib.EXPORT, run_lib.WEB)
    server = BackgroundServer(routes.create_web_app(site))
    driver = headless_chromium(str(tmp_path), "1200,900")
    driver.set_script_timeout(180)
    try:
        info = open_page(driver, server.url + "/?model=model.tflite")
        assert info["model"] == "model.tflite"
        out = {}
        for temperature, top_k, top_p in SETTINGS:
            for seed in SEEDS:
                settings = {"seed": seed, "length": LENGTH, "minLength": MIN_LENGTH, "temperature": temperature,
                            "topK": top_k, "topP": top_p, "primer": " ".join([events.BOUNDARY] + primer)}
                out[temperature, top_k, top_p, seed] = call(driver, f"kerasMusic.generate({json.dumps(settings)})")
        return out
    finally:
        driver.quit()
        server.stop()


def studio_pieces(studio, run_dir):
    """POST /api/generate with the held-out primer; the ids come from the piece's JSON record."""
    _, server = studio
    out = {}
    for temperature, top_k, top_p in SETTINGS:
        for seed in SEEDS:
            body = {"seed": seed, "length": LENGTH, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                    "min_length": MIN_LENGTH, "primer": "held_out:0"}
            status, answer = studio_call(server, "/api/generate", body)
            assert status == 200, answer
            status, record = studio_call(server, answer["urls"]["json"])
            assert status == 200
            out[temperature, top_k, top_p, seed] = record["ids"]
    return out


def test_one_seed_gives_the_same_tokens_in_python_the_saved_model_tflite_the_page_and_the_studio(
        web_run, studio, primer, tmp_path):
    vocabulary = generate.Generator(web_run, log=lambda message: None).vocabulary
    primer_ids = [vocabulary.boundary_id] + vocabulary.encode(primer)
    paths = {
        "python": python_pieces(web_run, primer),
        "saved_model": saved_model_pieces(web_run, primer_ids),
        "tflite": reference_pieces(web_run, primer_ids),
        "page": page_pieces(web_run, primer, tmp_path),
        "studio": studio_pieces(studio, web_run),
    }
    expected = paths["python"]
    assert len(expected) == len(SETTINGS) * len(SEEDS) == 30
    for name, pieces in paths.items():
        different = [key for key in expected if pieces[key] != expected[key]]
        assert not different, f"{name} differs from Python for {different[:3]}"
    # Not a degenerate agreement: the pieces are full, and seeds and settings change them.
    is_event = np.array([events.ends_event(t) for t in vocabulary.tokens])
    assert all(MIN_LENGTH <= int(is_event[ids].sum()) <= LENGTH for ids in expected.values())
    for temperature, top_k, top_p in SETTINGS[1:]:
        assert len({tuple(expected[temperature, top_k, top_p, seed]) for seed in SEEDS}) >= 8
    greedy = {tuple(expected[0.0, 0, 1.0, seed]) for seed in SEEDS}
    assert len(greedy) == 1  # greedy draws nothing: every seed gives the same piece
    assert greedy != {tuple(expected[0.9, 0, 0.95, FIRST_SEED])}


def test_the_defaults_the_studio_and_python_share_give_one_piece(web_run, studio, primer):
    """A request that names no setting: the studio and Generator.generate both take defaults.py's."""
    _, server = studio
    status, answer = studio_call(server, "/api/generate", {"seed": 5, "primer": "held_out:0"})
    assert status == 200, answer
    status, record = studio_call(server, answer["urls"]["json"])
    assert record["settings"]["temperature"] == defaults.TEMPERATURE
    ours = generate.Generator(web_run, log=lambda message: None).generate(seed=5, primer_tokens=primer)[0]
    assert record["ids"] == ours.ids


def test_control_tokens_are_fed_never_sampled_and_every_path_agrees(controls_run):
    """A primer with control tokens (a key, a bar's density and polyphony): the same ids in Python,
    the SavedModel and TFLite, and no path ever samples a control token."""
    from keras_music import controls

    generator = generate.Generator(controls_run, log=lambda message: None)
    vocabulary = generator.vocabulary
    control_ids = {i for i, token in enumerate(vocabulary.tokens) if controls.valid_control(token)}
    assert {"key:major", "density:3", "poly:2"} <= {vocabulary.tokens[i] for i in control_ids}
    pitches = [t for t in vocabulary.tokens if t.startswith("pitch:")]
    primer = ["key:major", "density:3", "poly:2", pitches[len(pitches) // 2], "dur:1"]
    primer_ids = [vocabulary.boundary_id] + vocabulary.encode(primer)
    assert vocabulary.decode(primer_ids[1:]) == primer  # no control became <unk>
    seeds = SEEDS[:3]
    paths = {"python": python_pieces(controls_run, primer, seeds),
             "saved_model": saved_model_pieces(controls_run, primer_ids, seeds),
             "tflite": reference_pieces(controls_run, primer_ids, seeds)}
    for name, pieces in paths.items():
        assert pieces == paths["python"], name
        assert not control_ids & {i for ids in pieces.values() for i in ids}, name
    assert sum(len(ids) for ids in paths["python"].values()) > 100
