"""Tests for keras_music.export_saved_model: the SavedModel's signatures match Keras, and the batch-1 step model."""

import os
from fractions import Fraction

import numpy as np
import pytest

from keras_music import events, export_parity, export_saved_model, model as model_lib, run as run_lib, sampling
from keras_music.vocabulary import Vocabulary
from page_harness import reference_generator

GREEDY_STEPS = 200
WINDOWS = 4


@pytest.fixture(scope="module")
def keras_reference(tiny_run):
    vocabulary = run_lib.load_vocabulary(tiny_run)
    model = run_lib.load_model(tiny_run, vocabulary)
    config = run_lib.load_config(tiny_run)
    windows, _ = export_parity.held_out_windows(tiny_run, config.data.seq_length,
                                               boundary_id=vocabulary.boundary_id, count=WINDOWS)
    return model, model_lib.StepModel(model), vocabulary, windows


@pytest.fixture(scope="module")
def written(tiny_run, keras_reference, tmp_path_factory):
    """The tiny run's SavedModel as the export writes it; returns (folder, loaded)."""
    import tensorflow as tf

    model, _, vocabulary, _ = keras_reference
    directory = tmp_path_factory.mktemp("saved-model")
    vocab_file = str(directory / "vocab.json")
    with open(run_lib.path(tiny_run, run_lib.VOCAB), "rb") as source, open(vocab_file, "wb") as copy:
        copy.write(source.read())
    folder = str(directory / "saved_model")
    export_saved_model.write_saved_model(model, vocabulary, vocab_file=vocab_file, directory=folder)
    return folder, tf.saved_model.load(folder)


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


def test_the_saved_model_has_the_contract_signatures_and_the_vocabulary(written, keras_reference, tiny_run):
    import tensorflow as tf

    _, step_model, vocabulary, _ = keras_reference
    rows, hidden = step_model.state_shape
    folder, loaded = written
    assert sorted(loaded.signatures) == sorted(export_saved_model.SIGNATURES)
    specs = {name: loaded.signatures[name].structured_input_signature[1] for name in export_saved_model.SIGNATURES}
    assert specs == {
        "serving_default": {"tokens": tf.TensorSpec([None, None], tf.int32, name="tokens")},
        "step": {"token": tf.TensorSpec([None], tf.int32, name="token"),
                 "state": tf.TensorSpec([None, rows, hidden], tf.float32, name="state")},
        "generate": {"primer": tf.TensorSpec([None], tf.int32, name="primer"),
                     "length": tf.TensorSpec([], tf.int32, name="length"),
                     "min_length": tf.TensorSpec([], tf.int32, name="min_length"),
                     "temperature": tf.TensorSpec([], tf.float64, name="temperature"),
                     "top_k": tf.TensorSpec([], tf.int32, name="top_k"),
                     "top_p": tf.TensorSpec([], tf.float64, name="top_p"),
                     "seed": tf.TensorSpec([], tf.int64, name="seed")},
        "initial_state": {"batch_size": tf.TensorSpec([], tf.int32, name="batch_size")},
    }
    outputs = {name: sorted(loaded.signatures[name].structured_outputs) for name in export_saved_model.SIGNATURES}
    assert outputs == {"serving_default": ["probabilities"], "step": ["next_state", "probabilities"],
                       "generate": ["ids", "stop_reason", "tokens"], "initial_state": ["state"]}
    with open(run_lib.path(tiny_run, run_lib.VOCAB), "rb") as handle:
        expected = handle.read()
    for copy in (os.path.join(folder, "assets", "vocab.json"), loaded.vocabulary_file.asset_path.numpy().decode()):
        with open(copy, "rb") as handle:
            assert handle.read() == expected


def test_saved_model_matches_keras_on_held_out_windows(written, keras_reference):
    import tensorflow as tf

    loaded = written[1]
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


def call_generate(generate, primer=(2,), length=24, min_length=8, temperature=0.9, top_k=0, top_p=1.0, seed=0):
    """The `generate` signature with the contract's keyword arguments: (ids, tokens, stop reason)."""
    import tensorflow as tf

    out = generate(primer=tf.constant(np.asarray(primer, np.int32).reshape(-1)), length=tf.constant(length),
                   min_length=tf.constant(min_length), temperature=tf.constant(temperature, tf.float64),
                   top_k=tf.constant(top_k), top_p=tf.constant(top_p, tf.float64),
                   seed=tf.constant(seed, tf.int64))
    return (out["ids"].numpy(), [t.decode() for t in out["tokens"].numpy()],
            out["stop_reason"].numpy().decode())


def host_piece(step_model, vocabulary, primer=(2,), length=24, min_length=8, temperature=0.9, top_k=0, top_p=1.0,
               seed=0):
    """The notes' portable piece loop on the host: Keras steps, sampling.one_piece with sampling.sample_next
    drawing from the reference generator's SplitMix64. Returns (ids, stop reason)."""
    table = events.grammar_table(vocabulary.tokens, vocabulary.representation)
    rng = reference_generator().SplitMix64(seed)
    state = [step_model.initial_state(1)]

    def step(token):
        probabilities, state[0] = step_model.step(np.array([token]), state[0])
        return probabilities

    def choose(probabilities, allowed):
        return sampling.sample_next(probabilities, rng, temperature=temperature, top_k=top_k, top_p=top_p,
                                    banned=[0, 1], allowed=allowed)[0]

    return sampling.one_piece(step, primer, grammar_table=table, length=length, min_length=min_length, choose=choose)


def event_count(vocabulary, ids):
    kinds = events.grammar_table(vocabulary.tokens, vocabulary.representation)["kinds"]
    return sum(kinds[i] in ("dur", "event") for i in ids)


def test_splitmix64_in_the_graph_gives_the_published_values():
    import tensorflow as tf

    @tf.function
    def outputs(seed, count):
        def draw(i, state, bits, uniforms):
            state, out = export_saved_model.splitmix64_next(state)
            return i + 1, state, bits.write(i, out), uniforms.write(i, export_saved_model.uniform_of(out))

        _, _, bits, uniforms = tf.while_loop(
            lambda i, *_: i < count, draw,
            (tf.constant(0), export_saved_model.seed_state(seed), tf.TensorArray(tf.uint64, size=count),
             tf.TensorArray(tf.float64, size=count)))
        return bits.stack(), uniforms.stack()

    bits, _ = outputs(tf.constant(1234567, tf.int64), tf.constant(5))
    assert [int(b) for b in bits.numpy()] == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                                              4593380528125082431, 16408922859458223821]
    assert int(outputs(tf.constant(0, tf.int64), tf.constant(1))[0].numpy()[0]) == 0xE220A8397B1DCDAF
    _, uniforms = outputs(tf.constant(987654321, tf.int64), tf.constant(100_000))
    assert np.bincount(np.floor(5 * uniforms.numpy()).astype(int)).tolist() == [20027, 19892, 20073, 19978, 20030]
    # A negative int64 seed is its two's complement; the uniforms are the reference generator's exactly.
    python = reference_generator().SplitMix64(-3)
    bits, uniforms = outputs(tf.constant(-3, tf.int64), tf.constant(50))
    expected = [python.next_u64() for _ in range(50)]
    assert [int(b) for b in bits.numpy()] == expected
    assert uniforms.numpy().tolist() == [(b >> 11) / 2 ** 53 for b in expected]


def test_one_token_in_the_graph_equals_sampling_sample_next():
    """sample_one (the graph) against sampling.sample_next fed the reference SplitMix64, row by row.

    Rows have zeros, exact ties and subnormal float32 values; the draw order must agree
    too, so one stream of uniforms serves every row of a setting.
    """
    import tensorflow as tf

    one_token = tf.function(lambda p, allowed, t, k, top_p, state: export_saved_model.sample_one(
        p, allowed, temperature=t, top_k=k, top_p=top_p, rng_state=state))
    generator = np.random.default_rng(3)
    rows = generator.dirichlet(np.full(40, 0.3), size=60).astype(np.float32)
    rows[::3, 5:9] = rows[::3, 5:6]  # ties
    rows[::4, 10:20] = 0.0
    rows[1::5, 20:23] = np.float32(1e-40)  # subnormal in float32
    allowed = generator.random(rows.shape) < 0.6
    allowed[:, 7] = True
    rows[1, 20] = 0.0
    allowed[1, :] = False
    allowed[1, 20:22] = True  # 0 and a subnormal float32: only an exact widening picks 21
    reference = reference_generator()
    for temperature, top_k, top_p in ((0.0, 0, 1.0), (0.9, 0, 0.95), (1.5, 20, 1.0), (0.5, 3, 0.5), (2.0, 1, 1.0),
                                      (0.05, 0, 1.0)):
        seed = 11
        python, state = reference.SplitMix64(seed), export_saved_model.seed_state(tf.constant(seed, tf.int64))
        for row, mask in zip(rows, allowed):
            expected = sampling.sample_next(row[None], python, temperature=temperature, top_k=top_k, top_p=top_p,
                                            banned=[0, 1],
                                            allowed=mask[None])[0]
            chosen, state = one_token(tf.constant(row), tf.constant(mask), tf.constant(temperature, tf.float64),
                                      tf.constant(top_k), tf.constant(top_p, tf.float64), state)
            assert int(chosen) == expected, (temperature, top_k, top_p)
        assert int(state.numpy()) == python.state  # one draw per sampled token, none when greedy


SETTINGS = {"greedy": dict(temperature=0.0),
            "T 0.9, top_p 0.95": dict(temperature=0.9, top_p=0.95),
            "T 1.5, top_k 20": dict(temperature=1.5, top_k=20)}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_generate_equals_the_portable_loop_on_the_host(name, written, keras_reference):
    _, step_model, vocabulary, windows = keras_reference
    generate = written[1].signatures["generate"]
    for primer, seed in (((), 0), (windows[1][:10], 7), (windows[1][:10], -3), ((2,), 2 ** 40 + 5)):
        for length, min_length in ((24, 8), (12, 12)):
            settings = dict(SETTINGS[name], length=length, min_length=min_length, seed=seed)
            ids, tokens, reason = call_generate(generate, primer, **settings)
            expected, expected_reason = host_piece(step_model, vocabulary, primer, **settings)
            assert ids.tolist() == expected and reason == expected_reason, (primer, settings)
            assert tokens == vocabulary.decode(ids) and ids.dtype == np.int32
            assert event_count(vocabulary, ids) >= min_length


def test_generate_greedy_follows_keras_and_settings_are_checked(written, keras_reference):
    import tensorflow as tf

    _, step_model, vocabulary, windows = keras_reference
    generate = written[1].signatures["generate"]
    first = call_generate(generate, seed=5, temperature=1.0)
    assert call_generate(generate, seed=5, temperature=1.0)[0].tolist() == first[0].tolist()
    assert call_generate(generate, seed=6, temperature=1.0)[0].tolist() != first[0].tolist()
    # Greedy does not depend on the seed; an empty primer is the boundary alone.
    greedy = call_generate(generate, (), temperature=0.0, seed=1)
    assert call_generate(generate, (2,), temperature=0.0, seed=99)[0].tolist() == greedy[0].tolist()
    for bad, message in ((dict(length=0), "length"), (dict(length=-1), "length"),
                         (dict(min_length=-1), "min_length"), (dict(temperature=-0.5), "temperature"),
                         (dict(temperature=float("inf")), "temperature"), (dict(top_k=-1), "top_k"),
                         (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
                         (dict(primer=[len(vocabulary)]), "primer"), (dict(primer=[-1]), "primer")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            call_generate(generate, **bad)


def test_generate_at_temperature_2_needs_no_decode_repair(written, keras_reference):
    """200 pieces at T = 2 decode without a single repair.

    The signature generates one piece a call (no batch), so the pieces are kept short
    (16 events each) to keep the suite fast.
    """
    _, _, vocabulary, _ = keras_reference
    generate = written[1].signatures["generate"]
    repairs, reasons = {}, set()
    for seed in range(200):
        ids, tokens, reason = call_generate(generate, length=16, min_length=4, temperature=2.0, seed=seed)
        report = events.DecodeReport()
        events.tokens_to_sonorities(["<piece>"] + tokens, vocabulary.representation, classic_step=Fraction(1, 2),
                                    report=report)
        for what, count in report.repairs.items():
            repairs[what] = repairs.get(what, 0) + count
        reasons.add(reason)
        assert not {0, 1} & set(ids.tolist())
        count = event_count(vocabulary, ids)
        assert (count == 16) == (reason == "length") and 4 <= count <= 16
    assert repairs == {}
    assert "length" in reasons


@pytest.fixture(scope="module")
def rigged(tmp_path_factory):
    """A SavedModel whose probabilities ignore the input: <piece> first, then pitches, then durations.

    Greedy then climbs every pitch (ties go to the lowest id) before it closes a sonority,
    so one event is 71 tokens (70 pitches and a duration), longer than 32 tokens.
    """
    import tensorflow as tf

    tokens = ["<pad>", "<unk>", "<piece>"] + [f"pitch:{p}" for p in range(40, 110)] + ["rest", "dur:1", "dur:1/2"]
    vocabulary = Vocabulary(tokens)
    model = model_lib.build_model(len(tokens), 8, 8, 3, dropout=0.0)
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    bias = np.zeros_like(bias)
    bias[2], bias[3:73], bias[74:] = 10.0, 6.0, 5.0
    head.set_weights([np.zeros_like(kernel), bias])
    directory = tmp_path_factory.mktemp("rigged")
    vocab_file = str(directory / "vocab.json")
    vocabulary.save(vocab_file)
    export_saved_model.write_saved_model(model, vocabulary, vocab_file=vocab_file,
                                         directory=str(directory / "saved_model"))
    loaded = tf.saved_model.load(str(directory / "saved_model"))
    return loaded.signatures["generate"], model_lib.StepModel(model), vocabulary


@pytest.mark.parametrize("length, min_length, reason, count, events_out", [
    (1, 0, "boundary", 0, 0),           # <piece> at once: nothing is output
    (5, 1, "boundary", 71, 1),           # one event, then <piece> as soon as it may end the piece
    (1, 1, "length", 32, 1),             # the 32nd (last) token may only close: a duration
    (2, 2, "token_limit", 64, 1),        # 64 tokens hold one event and the start of a second, closed at the last
    (20, 20, "token_limit", 639, 9),     # the last of 640 steps falls between sonorities: it stops there
])
def test_generate_stop_reasons_and_event_counts(rigged, length, min_length, reason, count, events_out):
    generate, step_model, vocabulary = rigged
    ids, tokens, stopped = call_generate(generate, length=length, min_length=min_length, temperature=0.0)
    assert (stopped, len(ids), event_count(vocabulary, ids)) == (reason, count, events_out)
    assert (ids.tolist(), stopped) == host_piece(step_model, vocabulary, length=length, min_length=min_length,
                                                 temperature=0.0)
    if count:
        assert tokens[-1] == "dur:1" and tokens[:2] == ["pitch:40", "pitch:41"]


def test_generate_with_rules_any_counts_every_token_as_an_event(tmp_path):
    import tensorflow as tf

    vocabulary = Vocabulary(["<pad>", "<unk>", "<piece>", "C4", "D4", "E4", "0.4.7", "G3"], "classic")
    model = model_lib.build_model(len(vocabulary), 8, 8, 3, dropout=0.0)
    vocab_file = str(tmp_path / "vocab.json")
    vocabulary.save(vocab_file)
    export_saved_model.write_saved_model(model, vocabulary, vocab_file=vocab_file,
                                         directory=str(tmp_path / "saved_model"))
    generate = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["generate"]
    step_model = model_lib.StepModel(model)
    for seed in range(4):
        settings = dict(length=10, min_length=10, temperature=1.5, seed=seed)
        ids, _, reason = call_generate(generate, **settings)
        assert (ids.tolist(), reason) == host_piece(step_model, vocabulary, **settings)
        assert len(ids) == 10 and reason == "length" and not {0, 1, 2} & set(ids.tolist())


def test_the_step_saved_model_takes_one_token_and_equals_keras(keras_reference, tmp_path):
    import tensorflow as tf

    model, step_model, _, windows = keras_reference
    folder = str(tmp_path / "step")
    export_saved_model.write_step_saved_model(model, folder)
    loaded = tf.saved_model.load(folder)
    # ExportArchive also serves its only endpoint as serving_default; the converter reads `step`.
    assert sorted(loaded.signatures) == ["serving_default", "step"]
    step = loaded.signatures["step"]
    assert step.structured_input_signature[1] == {
        "token": tf.TensorSpec([1], tf.int32, name="token"),
        "state": tf.TensorSpec([1, *step_model.state_shape], tf.float32, name="state")}
    state, keras_state = tf.zeros([1, *step_model.state_shape]), step_model.initial_state(1)
    for token in windows[0][:20]:
        out = step(token=tf.constant([token], tf.int32), state=state)
        keras_probabilities, keras_state = step_model.step([token], keras_state)
        state = out["next_state"]
        assert np.abs(out["probabilities"].numpy() - keras_probabilities).max() <= 1e-5
