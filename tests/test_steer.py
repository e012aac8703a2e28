"""Generating with controls: schedules and keys, the bar rule, and one set of ids in Python, TFLite and the page's loop."""

import json
import os
from fractions import Fraction

import numpy as np
import pytest

from keras_music import controls, defaults, evaluate_controls, events, generate, run as run_lib
from keras_music.evaluate_music import EvaluationSettings
from keras_music.sampling import SamplingSettings
from keras_music.controls import ControlSettings
from page_harness import reference_generator
from test_web_export import run_node as web_run_node

F = Fraction


@pytest.fixture(scope="module")
def reference():
    return reference_generator()


NODE = r"""
import {parseSchedule, scheduleAt, keyRequest, generate, onsetRange, pitchRange} from './sampler.mjs';
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const cases = JSON.parse(Buffer.concat(chunks).toString());
const answer = (work) => { try { return work(); } catch (error) { return {error: error.message}; } };
const out = {};
out.schedules = cases.schedules.map(([kind, spec]) => answer(() => {
  const schedule = parseSchedule(kind, spec);
  return Array.from({length: 12}, (_, bar) => scheduleAt(schedule, bar));
}));
out.keys = cases.keys.map(([name, tokens]) => answer(() => keyRequest(name, tokens)));
out.ranges = {density: [0, 1, 2, 3, 4, 5, 6].map(onsetRange), poly: [0, 1, 2, 3, 4].map(pitchRange)};
out.pieces = [];
for (const {vocabulary, table, primerIds, settings} of cases.pieces || []) {
  const model = {
    initialState: () => 0,
    step: async (token, state) => ({probabilities: table[(token * 7 + state) % table.length], state: state + 1}),
  };
  const result = await generate(model, vocabulary, {primerIds, ...settings});
  out.pieces.push(result.sampled);
}
process.stdout.write(JSON.stringify(out));
"""


def run_node(tmp_path, cases):
    return web_run_node(tmp_path, cases, NODE)


SCHEDULES = [("density", "high"), ("poly", "low"), ("density", "1-4:low,5-8:high"), ("density", "medium,9-:6"),
             ("poly", "2,3:off"), ("density", "off"), ("poly", " 2 - 3 : 4 "), ("density", None), ("density", ""),
             # errors
             ("density", "loud"), ("poly", "5"), ("density", "0:low"), ("density", "4-2:low"),
             ("density", "1-4:low,3-6:high"), ("density", "low,high"), ("poly", "x-3:low")]
KEYS = ["D minor", "Eb major", "f# minor", "B- major", "minor", "major", "H minor", "C dorian", "C## major"]


def python_schedule(kind, spec):
    schedule = controls.parse_schedule(kind, spec)
    return [schedule.at(bar) for bar in range(12)]


def test_schedules_and_keys_read_alike_in_python_the_reference_generator_and_the_page(tmp_path, reference):
    normalised = controls.all_tokens(True)
    raw = controls.all_tokens(False)
    cases = {"schedules": [list(case) for case in SCHEDULES],
             "keys": [[name, tokens] for name in KEYS for tokens in (normalised, raw)]}
    answers = run_node(tmp_path, cases)
    for (kind, spec), page in zip(SCHEDULES, answers["schedules"]):
        try:
            ours = python_schedule(kind, spec)
        except controls.ControlError as error:
            assert "error" in page, (kind, spec, page)
            assert "\n" not in str(error) and (repr(spec.strip()) in str(error) or spec.split(",")[-1].split(":")[0].strip() in str(error))
            with pytest.raises(reference.GeneratorError):
                reference.parse_schedule(kind, spec)
            continue
        assert page == ours, (kind, spec)
        assert [reference.schedule_at(reference.parse_schedule(kind, spec), bar) for bar in range(12)] == ours
    assert python_schedule("density", "1-4:low,5-8:high") == [1] * 4 + [5] * 4 + [None] * 4
    assert python_schedule("density", "medium,9-:6") == [3] * 8 + [6] * 4
    assert python_schedule("poly", "2,3:off") == [2, 2, None] + [2] * 9
    assert controls.parse_schedule("density", "medium,9-:6").describe() == "3,9-:6"

    pairs = iter(answers["keys"])
    for name in KEYS:
        for normalize, tokens in ((True, normalised), (False, raw)):
            page = next(pairs)
            try:
                token, transpose = controls.requested_key(name, normalize)
            except controls.ControlError:
                assert "error" in page, (name, normalize, page)
                with pytest.raises(reference.GeneratorError):
                    reference.key_request(name, tokens)
                continue
            assert page == {"token": token, "transpose": transpose}, (name, normalize)
            assert reference.key_request(name, tokens) == (token, transpose)
    assert controls.requested_key("D minor") == ("key:minor", 5)
    assert controls.requested_key("F# major") == ("key:major", -6)
    assert controls.requested_key("Eb major", normalize_key=False) == ("key:E-:major", 0)
    assert reference.LEVELS == controls.LEVELS
    assert reference.BINS == {"density": controls.DENSITY_BINS, "poly": controls.POLYPHONY_BINS}


def test_the_bar_clock_gives_each_bar_its_turn_once_before_its_first_sonority():
    clock = controls.BarClock((3, 4))
    kinds = {"pitch:60": "pitch", "hold:60": "hold", "rest": "rest", "dur:2": "dur", "dur:3/2": "dur", "key:major": "control"}
    turns = []
    for token in "key:major pitch:60 dur:2 hold:60 dur:2 rest dur:3/2 pitch:60 dur:2 pitch:60 dur:3/2".split():
        if clock.between:
            turns.append(clock.due())
        clock.advance(kinds[token], token)
    # Bar 0 at time 0 (asked again before the first pitch: the key token is no sonority; and at 2), bar 1
    # at time 4, time 5.5 in bar 1 again (done), bar 2 at 7.5.
    assert turns == [0, None, None, 1, None, 2]
    # A primer's sonorities use up their bars: the next turn is the next bar's.
    primed = controls.BarClock((4, 4))
    for token, kind in (("pitch:60", "pitch"), ("dur:2", "dur")):
        primed.advance(kind, token)
    assert primed.due() is None and primed.next_bar == 1


class BatchTable:
    """A fake batched backend: row r's probabilities are row (token * 7 + steps) of a fixed table."""

    name = "table"

    def __init__(self, table):
        self.table = np.asarray(table, np.float32)
        self.vocabulary_size = self.table.shape[1]

    def initial_state(self, batch):
        return np.zeros((batch, 1, 1), np.float32)

    def step(self, ids, state):
        steps = state[:, 0, 0].astype(np.int64)
        rows = (np.asarray(ids, np.int64) * 7 + steps) % len(self.table)
        return self.table[rows], state + 1


class SingleTable:
    def __init__(self, table):
        self.table = np.asarray(table, np.float32)

    def initial_state(self):
        return 0

    def step(self, token, state):
        return self.table[(token * 7 + state) % len(self.table)], state + 1


GUIDED_NODE = r"""
import {guided, otherMode} from './sampler.mjs';
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const {rows, weights} = JSON.parse(Buffer.concat(chunks).toString());
const out = rows.map(([asked, contrast]) => weights.map((w) => Array.from(guided(asked, contrast, w))));
process.stdout.write(JSON.stringify({out, other: ['key:major', 'key:minor', 'key:D:minor', 'key:B-:major'].map(otherMode)}));
"""


def test_key_guidance_sharpens_the_asked_mode_against_the_other_alike_everywhere(tmp_path, reference):
    asked = np.array([0.5, 0.25, 0.25, 0.0, 1e-8], np.float32)
    contrast = np.array([0.25, 0.25, 0.5, 0.0, 0.0], np.float32)
    for weight in (0.0, 1.0, 10.0):
        got = controls.guided(asked, contrast, weight)
        assert got.dtype == np.float64 and got.max() == 1.0
        # Ratios are (asked_i / asked_j)^(1 + w) (contrast_j / contrast_i)^w; zero stays zero; a contrast of 0
        # counts as the floor, so an id only the asked stream gives some mass is favoured, not infinite.
        assert got[1] / got[0] == pytest.approx(0.5 ** (1 + weight))
        assert got[2] / got[0] == pytest.approx(0.5 ** (1 + weight) * 0.5 ** weight)
        assert got[3] == 0.0 and np.isfinite(got).all()
        assert got[4] / got[0] == pytest.approx((1e-8 / 0.5) ** (1 + weight) * (0.25 / controls.GUIDANCE_FLOOR) ** weight,
                                                rel=1e-5)
    assert controls.guided(asked, contrast, 0.0) == pytest.approx(asked / asked.max())
    assert [controls.other_mode(t) for t in ("key:major", "key:minor", "key:D:minor", "key:B-:major")] == [
        "key:minor", "key:major", "key:D:major", "key:B-:minor"]
    with pytest.raises(controls.ControlError, match="not a key token"):
        controls.other_mode("density:3")
    with pytest.raises(controls.ControlError, match="key guidance must be a number >= 0"):
        ControlSettings(key="major", key_guidance=-1)
    # The reference generator and the page compute the same numbers (platform logs may differ in the last bit).
    rng = np.random.default_rng(0)
    rows = [(rng.dirichlet(np.full(40, 0.2)).astype(np.float32), rng.dirichlet(np.full(40, 0.2)).astype(np.float32))
            for _ in range(5)]
    answer = web_run_node(tmp_path, {"rows": [[a.astype(np.float64).tolist(), c.astype(np.float64).tolist()]
                                              for a, c in rows], "weights": [0, 3, 10]}, GUIDED_NODE)
    assert answer["other"] == ["key:minor", "key:major", "key:D:major", "key:B-:minor"]
    for (a, c), page in zip(rows, answer["out"]):
        for weight, values in zip((0, 3, 10), page):
            ours = controls.guided(a, c, weight)
            np.testing.assert_allclose(values, ours, rtol=1e-12, atol=0)
            np.testing.assert_array_equal(reference.guided(a, c, weight), ours)


class RecordingTable(BatchTable):
    """A fake batched backend with a memory (the state is a running hash of the ids read) that records its calls."""

    def __init__(self, table):
        super().__init__(table)
        self.fed = []

    def step(self, ids, state):
        self.fed.append(np.asarray(ids).tolist())
        history = (state[:, 0, 0].astype(np.int64) * 31 + np.asarray(ids, np.int64)) % 1_000_003
        return self.table[history % len(self.table)], history.reshape(-1, 1, 1).astype(np.float32)


PRIOR_NODE = r"""
import {guided, keyBias} from './sampler.mjs';
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const {rows, vocabulary, key, betas} = JSON.parse(Buffer.concat(chunks).toString());
const biases = betas.map((beta) => Array.from(keyBias(vocabulary, key, beta)));
const out = rows.map(([asked, contrast]) => biases.map((bias) => [Array.from(guided(asked, null, 0, bias)),
                                                                  Array.from(guided(asked, contrast, 3, bias))]));
const missing = keyBias(vocabulary, 'key:D:minor', 2);
let error = null;
try { keyBias({...vocabulary, key_prior: {log_ratios: {'key:major': [1, 2]}}}, 'key:major', 2); } catch (e) { error = e.message; }
process.stdout.write(JSON.stringify({biases, out, missing, error}));
"""


def test_the_key_prior_counts_note_starts_per_key_and_weighs_pitch_tokens_alike_everywhere(tmp_path, reference):
    pieces = [["key:major", "density:3", "pitch:60", "pitch:64", "dur:1", "hold:64", "pitch:67", "dur:1", "key:major",
               "pitch:72", "dur:1"],
              ["key:minor", "pitch:57", "pitch:69", "dur:1", "pitch:68", "dur:1/2", "rest", "dur:1"],
              ["pitch:61", "dur:1"]]  # no key token: counted for no key
    counts = controls.key_pitch_counts(pieces)
    # Note starts only (the hold of 64 is none), by pitch class.
    assert counts == {"key:major": [2, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0],
                      "key:minor": [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0]}
    ratios = controls.key_log_ratios(counts)
    # All keyed pieces: [2, 0, 0, 0, 1, 0, 0, 1, 1, 2, 0, 0], 7 notes; major 4 notes, minor 3; add-one smoothing.
    assert ratios["key:major"][0] == pytest.approx(np.log((3 / 16) / (3 / 19)))
    assert ratios["key:major"][8] == pytest.approx(np.log((1 / 16) / (2 / 19)))
    assert ratios["key:minor"][9] == pytest.approx(np.log((3 / 15) / (3 / 19)))
    assert ratios["key:minor"][1] == pytest.approx(np.log((1 / 15) / (1 / 19)))
    tokens = ["<pad>", "<unk>", "<piece>", "pitch:60", "hold:60", "pitch:69", "rest", "dur:1", "key:major", "key:minor"]
    table = events.grammar_table(tokens, "note")
    bias = controls.key_bias(table, ratios["key:major"], 2.0)
    assert bias.tolist() == [0, 0, 0, 2 * ratios["key:major"][0], 0, 2 * ratios["key:major"][9], 0, 0, 0, 0]
    # The prior multiplies each pitch token's probability by r^beta: as a ratio against a token without bias.
    asked = np.array([0, 0, 0.1, 0.2, 0.1, 0.3, 0.1, 0.2, 0, 0], np.float32)
    got = controls.guided(asked, None, 0.0, bias)
    assert got[3] / got[4] == pytest.approx(2 * np.exp(2 * ratios["key:major"][0]))
    assert got[0] == 0 and got[5] / got[7] == pytest.approx(1.5 * np.exp(2 * ratios["key:major"][9]))
    # The reference generator and the page compute the same biases and probabilities.
    vocabulary = {"tokens": tokens, "grammar": table, "key_prior": {"log_ratios": ratios}}
    rng = np.random.default_rng(1)
    rows = [(rng.dirichlet(np.full(len(tokens), 0.5)).astype(np.float32),
             rng.dirichlet(np.full(len(tokens), 0.5)).astype(np.float32)) for _ in range(4)]
    betas = [0.5, 2.0]
    answer = web_run_node(tmp_path, {"rows": [[a.astype(np.float64).tolist(), c.astype(np.float64).tolist()]
                                              for a, c in rows], "vocabulary": vocabulary, "key": "key:major",
                                     "betas": betas}, PRIOR_NODE)
    # A key no training piece was in has no ratios: no prior (null), the same in both; a malformed row is an error.
    assert answer["missing"] is None and reference.key_bias(vocabulary, "key:D:minor", 2.0) is None
    assert "key_prior" in answer["error"] and "12 numbers" in answer["error"]
    for beta, page_bias in zip(betas, answer["biases"]):
        ours = controls.key_bias(table, ratios["key:major"], beta)
        assert page_bias == ours.tolist()
        np.testing.assert_array_equal(reference.key_bias(vocabulary, "key:major", beta), ours)
    for (a, c), page in zip(rows, answer["out"]):
        for beta, (alone, with_guidance) in zip(betas, page):
            bias = controls.key_bias(table, ratios["key:major"], beta)
            for values, ours, theirs in ((alone, controls.guided(a, None, 0.0, bias), reference.guided(a, None, 0.0, bias)),
                                         (with_guidance, controls.guided(a, c, 3, bias), reference.guided(a, c, 3, bias))):
                np.testing.assert_allclose(values, ours, rtol=1e-12, atol=0)
                np.testing.assert_array_equal(theirs, ours)
    assert reference.key_bias({"tokens": tokens, "grammar": table}, "key:major", 2.0) is None
    with pytest.raises(reference.GeneratorError, match="key_prior.*12 numbers"):
        reference.key_bias({**vocabulary, "key_prior": {"log_ratios": {"key:major": [1, 2]}}}, "key:major", 2.0)


def test_prepare_records_the_key_priors_counts_and_older_runs_count_them_from_their_shards(controls_run, tmp_path):
    import shutil

    vocabulary = run_lib.load_vocabulary(controls_run)
    recorded = run_lib.load_prepared(controls_run)["key_pitch_counts"]
    # Counted by hand from the training shards: note starts by pitch class, per piece's key token.
    by_hand = {}
    for _, ids in run_lib.read_split(controls_run, "train", vocabulary=vocabulary):
        tokens = vocabulary.decode(ids)
        key = [t for t in tokens if t.startswith("key:")][0]
        row = by_hand.setdefault(key, [0] * 12)
        for token in tokens:
            if token.startswith("pitch:"):
                row[int(token[6:]) % 12] += 1
    # The tiny corpus's training pieces need not cover both modes: only the keys it has are counted.
    assert recorded == by_hand and recorded and set(recorded) <= {"key:major", "key:minor"}
    assert sum(sum(row) for row in recorded.values()) > 100
    older = str(tmp_path / "older")
    shutil.copytree(controls_run, older)
    info = json.loads(open(run_lib.path(older, run_lib.PREPARED)).read())
    del info["key_pitch_counts"]
    with open(run_lib.path(older, run_lib.PREPARED), "w") as handle:
        json.dump(info, handle)
    assert run_lib.key_pitch_counts(older, vocabulary=vocabulary) == recorded
    info["key_pitch_counts"] = {"key:major": [1, 2]}
    with open(run_lib.path(older, run_lib.PREPARED), "w") as handle:
        json.dump(info, handle)
    with pytest.raises(run_lib.RunError, match="key_pitch_counts"):
        run_lib.load_prepared(older)


def test_the_key_prior_steers_the_pitches_toward_the_asked_key_in_one_stream(controls_run):
    vocabulary = shipped_vocabulary(controls_run)
    tokens = vocabulary["tokens"]
    table = np.random.default_rng(11).dirichlet(np.full(len(tokens), 0.3), size=23).astype(np.float32)
    backend = RecordingTable(table)
    generator = generate.Generator(controls_run, backend=backend, log=lambda message: None)
    assert generator.key_log_ratios() == vocabulary["key_prior"]["log_ratios"]
    # The tiny corpus's training pieces are all in one mode (so its ratios are all 0): steer with a table that
    # favours A minor's scale over the other five pitch classes.
    ratios = [0.7 if pc in (9, 11, 0, 2, 4, 5, 7) else -0.7 for pc in range(12)]
    generator._key_log_ratios = {"key:minor": ratios}

    def mean_ratio(prior):
        backend.fed.clear()
        pieces = generator.generate(num_samples=6, seed=3, primer_tokens=[],
                                    sampling=SamplingSettings(length=60, min_length=60, temperature=1.0),
                                    controls=ControlSettings(key="A minor", key_prior=prior))
        assert all(len(ids) == 6 for ids in backend.fed)  # one stream: the prior needs no second model step
        assert all(piece.settings["controls"]["key_prior"] == prior for piece in pieces)
        pitches = [int(tokens[i][6:]) for piece in pieces for i in piece.ids if tokens[i].startswith("pitch:")]
        return float(np.mean([ratios[p % 12] for p in pitches])), [p.ids for p in pieces]

    alone, plain = mean_ratio(0.0)
    steered, favoured = mean_ratio(4.0)
    # The sampled pitches lean toward the pitch classes the minor pieces use more than the major ones.
    assert steered > alone + 0.05 and plain != favoured
    # A key no training piece was in: the prior is off (said once, and recorded as 0), and the tokens are those of
    # asking with key prior 0.
    generator._key_log_ratios = {"key:major": ratios}
    said = []
    generator.log = said.append
    off, asked_off = ([p.ids for p in generator.generate(num_samples=2, seed=5, primer_tokens=[],
                                                         sampling=SamplingSettings(length=20),
                                                         controls=ControlSettings(key="A minor", key_prior=prior))]
                      for prior in (4.0, 0.0))
    assert off == asked_off
    assert any("no training pieces in key:minor" in line and "key prior 0" in line for line in said)


def shipped_vocabulary(run_dir) -> dict:
    """vocab.json as an export ships it, with the key prior's log ratios (what the reference generator reads)."""
    from keras_music import export

    return json.loads(export.exported_vocabulary(run_dir, run_lib.load_vocabulary(run_dir)))


def test_key_guidance_steps_a_contrast_stream_that_reads_the_other_mode(controls_run):
    vocabulary = shipped_vocabulary(controls_run)
    tokens = vocabulary["tokens"]
    minor, major = tokens.index("key:minor"), tokens.index("key:major")
    table = np.random.default_rng(7).dirichlet(np.full(len(tokens), 0.3), size=23).astype(np.float32)
    backend = RecordingTable(table)
    generator = generate.Generator(controls_run, backend=backend, log=lambda message: None)
    sampling = SamplingSettings(length=24, min_length=4, temperature=1.0)
    pieces = generator.generate(num_samples=2, seed=5, primer_tokens=[], sampling=sampling,
                                controls=ControlSettings(key="A minor", density="medium", key_guidance=10))
    assert all(piece.settings["controls"]["key_guidance"] == 10.0 for piece in pieces)
    # Every backend call steps 2 rows as asked and their 2 contrast rows: the same ids, key:major for key:minor.
    assert backend.fed and all(len(ids) == 4 for ids in backend.fed)
    for ids in backend.fed:
        assert [major if i == minor else i for i in ids[:2]] == ids[2:]
    assert sum(ids[:2].count(minor) for ids in backend.fed) > 2  # after <piece> and at later bars
    # Off, one stream and other pieces; the same seed and weight, the same pieces.
    backend.fed.clear()
    alone = generator.generate(num_samples=2, seed=5, primer_tokens=[], sampling=sampling,
                               controls=ControlSettings(key="A minor", density="medium", key_guidance=0))
    assert all(len(ids) == 2 for ids in backend.fed)  # the key prior (on by default) needs no second stream
    assert alone[0].settings["controls"]["key_guidance"] == 0.0
    assert [p.ids for p in alone] != [p.ids for p in pieces]
    again = generator.generate(num_samples=2, seed=5, primer_tokens=[], sampling=sampling,
                               controls=ControlSettings(key="A minor", density="medium", key_guidance=10))
    assert [p.ids for p in again] == [p.ids for p in pieces]
    # Without a key there is nothing to guide: one stream.
    backend.fed.clear()
    generator.generate(num_samples=2, seed=5, primer_tokens=[], sampling=sampling,
                       controls=ControlSettings(density="medium"))
    assert all(len(ids) == 2 for ids in backend.fed)


def test_python_the_reference_generator_and_the_page_feed_the_same_controls(controls_run, tmp_path, reference):
    """The portable rule on one fake model: Generator (batched), reference_generator and sampler.js agree."""
    vocabulary = shipped_vocabulary(controls_run)
    tokens = vocabulary["tokens"]
    table = np.random.default_rng(3).dirichlet(np.full(len(tokens), 0.3), size=29).astype(np.float32)
    generator = generate.Generator(controls_run, backend=BatchTable(table), log=lambda message: None)
    pitches = [t for t in tokens if t.startswith("pitch:")]
    primer = [pitches[3], "dur:1", pitches[5], "dur:1/2"]
    cases, seeds = [], (11, 12, 13, 14)
    for density, polyphony, metre in (("high", "low", (4, 4)), ("1-2:low,4-:6", None, (3, 4)),
                                      (None, "medium,3:off", (6, 8)), (None, None, (4, 4))):
        generator.corpus_timing = lambda metre=metre: {"start": 0.0, "tempos": [[0.0, 100.0]],
                                                       "time_signatures": [[0.0, *metre]], "program": 0}
        pieces = generator.generate(num_samples=len(seeds), seed=seeds[0], primer_tokens=primer, sampling=SamplingSettings(length=30, min_length=4, temperature=1.2), controls=ControlSettings(key="G minor", density=density, polyphony=polyphony))
        primer_ids = [2, tokens.index("key:minor")] + [tokens.index(t) for t in primer]
        for seed, piece in zip(seeds, pieces):
            assert piece.settings["controls"]["transpose"] == -2
            assert piece.settings["controls"]["time_signature"] == list(metre)
            ids, _ = reference.generate(SingleTable(table), vocabulary, primer_ids, 30, 1.2, 0, seed, min_length=4,
                                        density=density, polyphony=polyphony, time_signature=metre, key="key:minor")
            assert ids[len(primer_ids):] == piece.ids, (density, polyphony, seed)
            cases.append({"vocabulary": vocabulary, "table": table.astype(np.float64).tolist(), "primerIds": primer_ids,
                          "settings": {"seed": seed, "length": 30, "minLength": 4, "temperature": 1.2,
                                       "density": density, "polyphony": polyphony, "timeSignature": list(metre),
                                       "key": "key:minor"}})
            fed = piece.settings["controls"]["bars_fed"]
            # The primer ends in a duration, so every bar's turn (the first after the primer too) gets the key first.
            assert fed and all(bar[1] == "key:minor" for bar in fed), fed
            if density is None and polyphony is None:
                assert all(bar[1:] == ["key:minor"] for bar in fed), fed
                # Fed where the bars begin: the clock's bar numbers, one after another.
                assert [bar[0] for bar in fed] == list(range(fed[0][0], fed[0][0] + len(fed)))
        # Without controls the same fake model gives other pieces: the fed tokens changed the course.
        plain = generator.generate(num_samples=1, seed=seeds[0], primer_tokens=["key:minor"] + primer, sampling=SamplingSettings(length=30, min_length=4, temperature=1.2))
        assert plain[0].ids != pieces[0].ids
    answers = run_node(tmp_path, {"schedules": [], "keys": [], "pieces": cases})
    expected = [case for case in cases]
    assert len(answers["pieces"]) == len(expected)
    for got, case in zip(answers["pieces"], cases):
        ids, _ = reference.generate(SingleTable(table), vocabulary, case["primerIds"], 30, 1.2, 0,
                                    case["settings"]["seed"], min_length=4, density=case["settings"]["density"],
                                    polyphony=case["settings"]["polyphony"],
                                    time_signature=tuple(case["settings"]["timeSignature"]), key="key:minor")
        assert got == ids[len(case["primerIds"]):]


def test_the_bar_limits_agree_in_python_the_reference_generator_and_the_page_and_keep_the_bins(
        controls_run, tmp_path, reference):
    """The bar limits on one fake model: with and without them Generator, reference_generator and sampler.js give
    the same ids; with them every fed, complete bar lands in its bins, without them the fake model misses some."""
    vocabulary = shipped_vocabulary(controls_run)
    tokens = vocabulary["tokens"]
    table = np.random.default_rng(5).dirichlet(np.full(len(tokens), 0.3), size=31).astype(np.float32)
    generator = generate.Generator(controls_run, backend=BatchTable(table), log=lambda message: None)
    pitches = [t for t in tokens if t.startswith("pitch:")]
    primer = [pitches[2], "dur:1", pitches[4], "dur:1/2"]
    primer_ids = [2, tokens.index("key:minor")] + [tokens.index(t) for t in primer]
    seeds = tuple(range(21, 27))
    cases, outcomes = [], {True: [], False: []}
    for density, polyphony, metre in (("high", None, (4, 4)), ("1-2:low,3-:medium", "1", (3, 4)),
                                      ("2", "2-:2", (6, 8)), (None, "medium,4:off", (4, 4))):
        generator.corpus_timing = lambda metre=metre: {"start": 0.0, "tempos": [[0.0, 100.0]],
                                                       "time_signatures": [[0.0, *metre]], "program": 0}
        for limited in (True, False):
            pieces = generator.generate(num_samples=len(seeds), seed=seeds[0], primer_tokens=primer, sampling=SamplingSettings(length=40, min_length=4, temperature=1.2), controls=ControlSettings(key="G minor", density=density, polyphony=polyphony, bar_limits=limited))
            for seed, piece in zip(seeds, pieces):
                assert piece.settings["controls"]["bar_limits"] is limited
                assert piece.primer_events == 2 and piece.repairs == {}, piece.repairs
                ids, _ = reference.generate(SingleTable(table), vocabulary, primer_ids, 40, 1.2, 0, seed,
                                            min_length=4, density=density, polyphony=polyphony, time_signature=metre,
                                            bar_limits=limited, key="key:minor")
                assert ids[len(primer_ids):] == piece.ids, (density, polyphony, limited, seed)
                settings = {"seed": seed, "length": 40, "minLength": 4, "temperature": 1.2, "density": density,
                            "polyphony": polyphony, "timeSignature": list(metre), "key": "key:minor"}
                if not limited:
                    settings["barLimits"] = False  # left out when on: the page's default is on
                cases.append({"vocabulary": vocabulary, "table": table.astype(np.float64).tolist(),
                              "primerIds": primer_ids, "settings": settings, "expected": piece.ids})
                for kind, asked in ((controls.DENSITY, density), (controls.POLYPHONY, polyphony)):
                    if asked is not None:
                        pairs = evaluate_controls.bar_outcomes(piece, kind)
                        outcomes[limited] += pairs
                        if limited:
                            assert all(wanted == got for wanted, got in pairs), (kind, asked, metre, seed, pairs)
    assert len(outcomes[True]) >= 40 and len(outcomes[False]) >= 40, outcomes
    assert any(wanted != got for wanted, got in outcomes[False])  # without the limits the fake model misses bars
    answers = run_node(tmp_path, {"schedules": [], "keys": [], "pieces": cases})
    assert len(answers["pieces"]) == len(cases)
    for got, case in zip(answers["pieces"], cases):
        assert got == case["expected"], case["settings"]
    # The ranges the limits keep, alike in the three.
    density = [list(controls.onset_range(b)) for b in range(controls.DENSITY_BINS)]
    poly = [list(controls.pitch_range(b)) for b in range(controls.POLYPHONY_BINS)]
    assert answers["ranges"] == {"density": density, "poly": poly}
    assert reference.DENSITY_EDGES == controls.DENSITY_EDGES
    assert [list(reference.onset_range(b)) for b in range(controls.DENSITY_BINS)] == density
    assert [list(reference.pitch_range(b)) for b in range(controls.POLYPHONY_BINS)] == poly


def bars_with_a_sonority(sonorities, metre):
    starts, time = [], F(0)
    length = controls.bar_length(metre)
    for sonority in sonorities:
        starts.append(int(time // length) + 1)
        time += sonority.duration
    return sorted(set(starts))


@pytest.mark.parametrize("request_", [{"key": "E minor"}, {"density": "high"}, {"polyphony": "low"},
                                      {"key": "major", "density": "1-2:low,3-:high", "polyphony": "medium"}])
def test_each_control_on_the_tiny_run_gives_tokens_that_obey_the_grammar(controls_run, request_):
    generator = generate.Generator(controls_run, log=lambda message: None)
    vocabulary = generator.vocabulary
    control_ids = {i for i, t in enumerate(vocabulary.tokens) if events.is_control(t)}
    pieces = generator.generate(3, SamplingSettings(length=40), seed=21, primer_tokens=[],
                                controls=ControlSettings(**request_))
    for piece in pieces:
        assert not control_ids & set(piece.ids)
        report = events.DecodeReport()
        events.tokens_to_sonorities(piece.tokens, report=report)
        assert report.repairs == {}
        record = piece.settings["controls"]
        if "key" in request_:
            assert piece.primer_tokens[0] == controls.requested_key(request_["key"])[0]
        fed = record["bars_fed"]
        # Where training puts them: a turn for each bar a sonority starts in (and, for a piece that ended at
        # <piece>, the bar it ended in); the key at each turn but the first, which follows the primer's key token.
        key = controls.requested_key(request_["key"])[0] if "key" in request_ else None
        schedule_d = controls.parse_schedule("density", request_.get("density"))
        schedule_p = controls.parse_schedule("poly", request_.get("polyphony"))

        def wanted(bar):
            return ([key] if key and bar > 1 else []) + [f"{kind}:{s.at(bar - 1)}" for kind, s in (
                ("density", schedule_d), ("poly", schedule_p)) if s.at(bar - 1) is not None]

        generated = events.tokens_to_sonorities(piece.tokens)
        expected = [bar for bar in bars_with_a_sonority(generated, (4, 4)) if wanted(bar)]
        got = [entry[0] for entry in fed]
        assert expected and got[:len(expected)] == expected
        assert len(got) - len(expected) <= (piece.stop_reason == "boundary")
        for entry in fed:
            assert entry[1:] == wanted(entry[0])
    if request_.get("key") == "E minor":  # A minor moved up 7 semitones would be E: -5 is the nearer way
        piece = pieces[0]
        assert piece.settings["controls"]["transpose"] == -5
        plain = events.tokens_to_sonorities(piece.tokens)
        assert [p - 5 for s in plain for p in s.pitches] == [p for s in piece.sonorities for p in s.pitches]


def test_keras_and_tflite_give_the_same_ids_with_controls(controls_run, reference):
    from keras_music import export

    generator = generate.Generator(controls_run, log=lambda message: None)
    directory = export.export_dir(controls_run)
    vocabulary = reference.load_vocabulary(os.path.join(directory, "vocab.json"))
    model = reference.StepModel(os.path.join(directory, "model.tflite"), len(vocabulary["tokens"]))
    seeds = (5, 6, 7)
    for temperature in (0.0, 1.0):
        pieces = generator.generate(num_samples=len(seeds), seed=seeds[0], primer_tokens=[], sampling=SamplingSettings(length=24, min_length=4, temperature=temperature), controls=ControlSettings(key="minor", density="1-3:high,4-:low", polyphony="medium"))
        primer_ids = [2, vocabulary["tokens"].index("key:minor")]
        # The export ships the key prior's log ratios, which the default sampling uses on every backend.
        assert vocabulary["key_prior"]["log_ratios"] == controls.key_log_ratios(
            run_lib.load_prepared(controls_run)["key_pitch_counts"])
        assert all(p.settings["controls"]["key_prior"] == defaults.KEY_PRIOR for p in pieces)
        # Both modes have training pieces (conftest.STEER_CHORALES), so the prior really moves the pitches here.
        ratios = vocabulary["key_prior"]["log_ratios"]
        assert sorted(ratios) == ["key:major", "key:minor"] and all(max(map(abs, row)) > 0.1 for row in ratios.values())
        if temperature:
            unweighted = generator.generate(num_samples=len(seeds), seed=seeds[0], primer_tokens=[], sampling=SamplingSettings(length=24, min_length=4, temperature=temperature), controls=ControlSettings(key="minor", density="1-3:high,4-:low", polyphony="medium", key_prior=0.0))
            assert [p.ids for p in unweighted] != [p.ids for p in pieces]
        for seed, piece in zip(seeds, pieces):
            ids, _ = reference.generate(model, vocabulary, primer_ids, 24, temperature, 0, seed, min_length=4,
                                        density="1-3:high,4-:low", polyphony="medium", key="key:minor")
            assert ids[len(primer_ids):] == piece.ids, (temperature, seed)
            # Bar 1 follows the primer's key token, so it gets no second one; every later bar gets it first.
            fed = piece.settings["controls"]["bars_fed"]
            assert fed[0][:2] == [1, "density:5"] and len(fed) > 1, fed
            assert all(bar[1:3] == ["key:minor", "density:5" if bar[0] <= 3 else "density:1"] for bar in fed[1:]), fed
            tokens = [vocabulary["tokens"][i] for i in ids]
            assert tokens.count("key:minor") == 1  # fed tokens are no output: only the primer's is in the ids


def test_impossible_requests_are_one_line_errors(controls_run, tiny_run, capsys):
    generator = generate.Generator(controls_run, log=lambda message: None)
    cases = [({"key": "H minor"}, "key 'H minor' does not exist"),
             ({"density": "loud"}, "density level 'loud' does not exist (expected low, medium, high, off or a bin 0..6)"),
             ({"density": "400-410:low"}, "density bar 400 is outside the piece"),
             ({"polyphony": "1-4:low,3:high"}, "overlap another range")]
    for request_, message in cases:
        with pytest.raises(generate.GenerateError) as caught:
            generator.generate(1, SamplingSettings(length=16), primer_tokens=[], controls=ControlSettings(**request_))
        assert message in str(caught.value) and "\n" not in str(caught.value)
    plain = generate.Generator(tiny_run, log=lambda message: None)
    with pytest.raises(generate.GenerateError, match="has no control tokens .* train a run with data.controls=true"):
        plain.generate(primer_tokens=[], sampling=SamplingSettings(length=16), controls=ControlSettings(density="low"))
    # Without normalised keys the run would need key:D:minor; this run has only the modes.
    raw = controls.make_request
    with pytest.raises(controls.ControlError, match=r"key token key:D:minor \(for 'D minor'\) is not in the vocabulary"):
        raw(generator.vocabulary.tokens, False, where="RUN", asked=controls.ControlSettings(key="D minor"))
    with pytest.raises(SystemExit):
        generate.main(["--run-dir", controls_run, "--density", "loud", "--quiet", "--audio", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert "density level 'loud' does not exist" in err[-1]
    with pytest.raises(SystemExit) as exit_:
        generate.parse_args(["--run-dir", controls_run, "--key", "minor", "--key-guidance", "-1"])
    assert exit_.value.code == 2
    assert "key guidance must be >= 0 (0 turns it off), got -1" in capsys.readouterr().err
    assert generate.parse_args(["--run-dir", controls_run, "--key-guidance", "0"])[1].key_guidance == 0.0
    for bad in ("-0.5", "inf", "two"):
        with pytest.raises(SystemExit) as exit_:
            generate.parse_args(["--run-dir", controls_run, "--key", "minor", "--key-prior", bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "--key-prior" in err[-1] and ("key prior must be >= 0" in err[-1] or "a number >= 0" in err[-1]), err
    assert generate.parse_args(["--run-dir", controls_run, "--key-prior", "0"])[1].key_prior == 0.0
    with pytest.raises(controls.ControlError, match="key prior must be a number >= 0"):
        ControlSettings(key="minor", key_prior=float("nan"))


@pytest.mark.slow
def test_the_page_in_chromium_gives_the_reference_generators_ids_with_controls(controls_run, reference, tmp_path):
    from keras_music import export
    from keras_music.studio import routes
    from page_harness import BackgroundServer, call, headless_chromium, open_page

    directory = export.export_dir(controls_run)
    vocabulary = reference.load_vocabulary(os.path.join(directory, "vocab.json"))
    model = reference.StepModel(os.path.join(directory, "model.tflite"), len(vocabulary["tokens"]))
    server = BackgroundServer(routes.create_web_app(run_lib.path(controls_run, run_lib.EXPORT, run_lib.WEB)))
    driver = headless_chromium(str(tmp_path), "1200,900")
    driver.set_script_timeout(180)
    try:
        open_page(driver, server.url + "/?model=model.tflite")
        assert driver.execute_script("return document.getElementById('controls').hidden") is False
        keys = driver.execute_script("return [...document.getElementById('key').options].map((o) => o.value)")
        assert "D minor" in keys and "Eb major" in keys
        metre = tuple(json.loads(open(os.path.join(directory, "web", "web.json")).read())["timing"]["time_signature"])
        for seed in (1, 2, 3):
            settings = {"seed": seed, "length": 24, "minLength": 4, "temperature": 1.0, "key": "D minor",
                        "density": "1-2:high,3-:low", "polyphony": "medium"}
            page = call(driver, f"kerasMusic.generate({json.dumps(settings)})")
            primer = [2, vocabulary["tokens"].index("key:minor")]
            ids, _ = reference.generate(model, vocabulary, primer, 24, 1.0, 0, seed, min_length=4,
                                        density="1-2:high,3-:low", polyphony="medium", time_signature=metre,
                                        key="key:minor")
            assert page == ids[len(primer):], seed
        last = call(driver, "Promise.resolve(kerasMusic.last)")
        assert last["controls"]["transpose"] == 5
        plain = reference.sonorities_to_notes(reference.tokens_to_sonorities(last["tokens"]))
        assert [n[2] + 5 for n in plain] == [n[2] for n in last["notes"]]
        message = driver.execute_async_script(
            "const done = arguments[0]; kerasMusic.generate({density: 'loud'}).then(() => done('no error'), "
            "(error) => done(error.message));")
        assert message.startswith("density level \"loud\" does not exist"), message
    finally:
        driver.quit()
        server.stop()


def test_the_studio_generates_with_controls_and_refuses_impossible_ones(controls_run, tmp_path):
    from test_studio import Server, call, make_studio

    server = Server(make_studio(controls_run, tmp_path))
    try:
        status, runs = call(server, "/api/runs")
        assert status == 200
        described = runs["runs"][0]["controls"]
        assert "D minor" in described["keys"] and described["levels"] == ["low", "medium", "high"]
        body = {"seed": 4, "length": 20, "primer": "none", "key": "D minor", "density": "high",
                "polyphony": "1-2:low,3-:medium"}
        status, piece = call(server, "/api/generate", body)
        assert status == 200, piece
        assert piece["controls"]["key_token"] == "key:minor" and piece["controls"]["transpose"] == 5
        status, record = call(server, piece["urls"]["json"])
        assert record["settings"]["controls"]["density"] == "5"
        assert record["primer_tokens"] == ["key:minor"]
        ours = generate.Generator(controls_run, log=lambda message: None).generate(seed=4, primer_tokens=[], sampling=SamplingSettings(length=20), controls=ControlSettings(key="D minor", density="high", polyphony="1-2:low,3-:medium"))[0]
        assert record["ids"] == ours.ids
        for bad, words in (({"key": "H minor"}, "key 'H minor' does not exist"),
                           ({"density": "loud"}, "density level 'loud' does not exist"),
                           ({"polyphony": ["low"]}, "polyphony must be a string")):
            status, answer = call(server, "/api/generate", {"length": 8, **bad})
            assert status == 400 and words in answer["error"] and "\n" not in answer["error"], answer
    finally:
        server.stop()


def hand_density_bins(piece, metre=(4, 4)):
    """(requested, realised) density bins counted from the piece's notes, independently of controls.measure."""
    bar = F(4 * metre[0], metre[1])
    sonorities = piece.sonorities[piece.primer_events:]
    end = sum((s.duration for s in sonorities), F(0))
    onsets, time = set(), F(0)
    for sonority in sonorities:
        if any(not held for held in sonority.held):
            onsets.add(time)
        time += sonority.duration
    out = []
    for number, *tokens in piece.settings["controls"]["bars_fed"]:
        start = (number - 1) * bar
        wanted = [int(t.split(":")[1]) for t in tokens if t.startswith("density:")]
        if wanted and start + bar <= end:
            count = sum(start <= t < start + bar for t in onsets)
            realised = sum(count >= edge for edge in (3, 5, 7, 9, 12, 16))
            out.append((wanted[0], realised))
    return out


def test_evaluate_reports_requested_vs_realised_controls_from_the_pieces(controls_run, tiny_run, tmp_path):
    from keras_music import evaluate, evaluate_controls

    out = str(tmp_path / "evaluation")
    result = evaluate.evaluate_run(controls_run, EvaluationSettings(2, 16, (0.9,), 3, (1, 2), controls_samples=2),
                                   out_dir=out)
    report = result["controls"]
    assert result["settings"]["controls_samples"] == 2
    # The density confusion is rebuilt by hand from the same pieces (same seed, same settings).
    generator = generate.Generator(controls_run, log=lambda message: None)
    pairs = []
    for value in range(controls.DENSITY_BINS):
        for piece in generator.generate(num_samples=2, seed=3, primer_tokens=[], sampling=SamplingSettings(length=evaluate_controls.DEFAULT_LENGTH, temperature=0.9), controls=ControlSettings(density=str(value))):
            pairs += hand_density_bins(piece)
    confusion = np.zeros((controls.DENSITY_BINS, controls.DENSITY_BINS), int)
    for wanted, got in pairs:
        confusion[wanted, got] += 1
    assert report["density"]["confusion"] == confusion.tolist()
    assert report["density"]["all_bins"]["bars"] == len(pairs) > 0
    # Every bin asked for, and the headline over the bins the training bars have (shares counted by hand).
    assert report["density"]["all_bins"]["in_bin"] == pytest.approx(np.trace(confusion) / len(pairs))
    vocabulary = generator.vocabulary
    counts = np.zeros(controls.DENSITY_BINS)
    for _, ids in run_lib.read_split(controls_run, "train", vocabulary=vocabulary):
        for token in vocabulary.decode(ids):
            if token.startswith("density:"):
                counts[int(token.split(":")[1])] += 1
    supported = [b for b in range(controls.DENSITY_BINS)
                 if counts[b] / counts.sum() >= evaluate_controls.MIN_TRAINING_SHARE]
    assert report["density"]["bins"] == supported and 0 < len(supported) < controls.DENSITY_BINS
    kept = confusion[supported]
    assert report["density"]["bars"] == kept.sum()
    assert report["density"]["in_bin"] == pytest.approx(sum(kept[i, b] for i, b in enumerate(supported)) / kept.sum())
    assert report["density"]["per_value"]["0"]["training_share"] == pytest.approx(counts[0] / counts.sum())
    assert sorted(report["key"]["per_key"]) == ["A minor", "C major"]
    assert all(row["pieces"] == 2 for row in report["key"]["per_key"].values())
    # A key the training pieces never had is asked without the prior (it has nothing to lean on), the others with it.
    ratios = generator.key_log_ratios()
    for name, token in (("A minor", "key:minor"), ("C major", "key:major")):
        expected = defaults.KEY_PRIOR if token in ratios else 0.0
        assert report["key"]["per_key"][name]["key_prior"] == expected
        assert report["model_alone"]["key"]["per_key"][name]["key_prior"] == 0.0
    # The key both ways: with the defaults (what users get: the key prior) and with the model alone, each from its
    # own pieces.
    assert (report["key"]["key_prior"], report["key"]["key_guidance"]) == (defaults.KEY_PRIOR, defaults.KEY_GUIDANCE)
    assert (report["model_alone"]["key"]["key_prior"], report["model_alone"]["key"]["key_guidance"]) == (0, 0)
    for into, (prior, guidance) in ((report, (defaults.KEY_PRIOR, defaults.KEY_GUIDANCE)),
                                    (report["model_alone"], (0.0, 0.0))):
        found = [evaluate_controls.estimated_key(piece) for piece in generator.generate(
            num_samples=2, seed=3, primer_tokens=[],
            sampling=SamplingSettings(length=evaluate_controls.DEFAULT_LENGTH, temperature=0.9),
            controls=ControlSettings(key="A minor", key_guidance=guidance, key_prior=prior))]
        assert into["key"]["per_key"]["A minor"]["share"] == pytest.approx(np.mean([f == (9, "minor") for f in found]))
    markdown = open(os.path.join(out, "evaluation.md")).read()
    assert "## Controls: requested vs realised" in markdown and "controls_confusion.png" in markdown
    assert os.path.isfile(os.path.join(out, "controls_confusion.png"))
    # Spearman by hand: ties get their mean rank.
    assert evaluate_controls.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert evaluate_controls.spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1.5, 1.5, 3.5, 3.5],
                                                                                                [1, 2, 3, 4])[0, 1] * 1)
    assert evaluate_controls.spearman([1, 1], [2, 3]) is None
    # A run without control tokens: no report, no new keys in what evaluate writes.
    plain = evaluate.evaluate_run(tiny_run, EvaluationSettings(1, 8, (0.9,), 0, (1,), controls_samples=2),
                                  out_dir=str(tmp_path / "plain"))
    assert "controls" not in plain and "controls_samples" not in plain["settings"]
    assert "Controls" not in open(str(tmp_path / "plain" / "evaluation.md")).read()


def test_the_command_line_steers_and_records_the_controls(controls_run, tmp_path, capsys):
    out = str(tmp_path / "pieces")
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--run-dir", controls_run, "--key", "D minor", "--density", "1-2:low,3-:high", "--polyphony",
                       "medium", "--length", "24", "--primer-tokens", "", "--quiet", "--audio", "none", "--out", out])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "controls: key D minor (key:minor, transposed by +5 semitones); density 1-2:1,3-:5; polyphony 2;" in printed
    record = json.loads(open(os.path.join(out, "sample-01.json")).read())
    assert record["settings"]["controls"]["bars_fed"][0] == [1, "density:1", "poly:2"]
