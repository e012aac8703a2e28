"""Tests for keras_music.generate: exact priming, sampling, stops, primers, the timing pieces get, and the CLI."""

import json
import os
from fractions import Fraction

import numpy as np
import pytest

from conftest import tiny_config, usage_error

from keras_music import events, generate, sampling
from keras_music.sampling import SamplingSettings


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    # The session's tiny run, trained with the same tiny_config(); the tests here only read it
    # (the one that writes RUN/samples/ works on a copy).
    return tiny_run


@pytest.fixture(scope="module")
def generator(run_dir):
    return generate.Generator(run_dir, log=lambda message: None)


def run_with_log(run_dir):
    messages = []
    return generate.Generator(run_dir, log=messages.append), messages


def vocabulary_tokens(generator, prefix):
    return [t for t in generator.vocabulary.tokens if t.startswith(prefix)]


def simple_primer(generator):
    """pitch + dur tokens the run's vocabulary certainly has."""
    pitches, durations = vocabulary_tokens(generator, "pitch:"), vocabulary_tokens(generator, "dur:")
    return [pitches[0], pitches[-1], durations[0], pitches[len(pitches) // 2], durations[-1]]


# ----------------------------------------------------------------------------- exact states

def test_priming_rows_of_different_lengths_keeps_each_state_exact(generator):
    model = generator.backend.model
    rng = np.random.default_rng(1)
    sequences = [[2] + list(rng.integers(3, len(generator.vocabulary), size=n)) for n in (0, 6, 21)]
    last, state = generator.prime(sequences)
    for row, sequence in enumerate(sequences):
        expected = model(np.array([sequence], np.int32), training=False).numpy()[0, -1]
        assert np.max(np.abs(last[row] - expected)) < 1e-5
    # The carried state continues exactly: one more step equals the sequence model one further.
    nxt = np.array([5, 6, 7], np.int32)
    probabilities, _ = generator.backend.step(nxt, state)
    for row, sequence in enumerate(sequences):
        expected = model(np.array([sequence + [int(nxt[row])]], np.int32), training=False).numpy()[0, -1]
        assert np.max(np.abs(probabilities[row] - expected)) < 1e-5


# ----------------------------------------------------------------------------- sampling

def test_same_seed_same_pieces_and_different_seed_differs(generator):
    first = generator.generate(num_samples=2, seed=3, sampling=SamplingSettings(length=12))
    again = generator.generate(num_samples=2, seed=3, sampling=SamplingSettings(length=12))
    other = generator.generate(num_samples=2, seed=4, sampling=SamplingSettings(length=12))
    assert [p.tokens for p in first] == [p.tokens for p in again]
    assert [p.primer_tokens for p in first] == [p.primer_tokens for p in again]
    assert [p.tokens for p in first] != [p.tokens for p in other]


def test_piece_i_of_a_batch_is_the_piece_of_seed_plus_i_alone(generator):
    primer = simple_primer(generator)
    for settings in ({"temperature": 0.9, "top_p": 0.95}, {"temperature": 1.5, "top_k": 20}, {}):
        batch = generator.generate(3, SamplingSettings(length=10, min_length=4, **settings), seed=7, primer_tokens=primer)
        for i, piece in enumerate(batch):
            alone = generator.generate(1, SamplingSettings(length=10, min_length=4, **settings), seed=7 + i,
                                       primer_tokens=primer)[0]
            assert (piece.ids, piece.stop_reason) == (alone.ids, alone.stop_reason), (settings, i)
    assert len({tuple(p.ids) for p in batch}) > 1


def test_each_row_draws_one_uniform_per_sampled_token(generator, monkeypatch):
    draws = []
    make_rng = sampling.make_rng

    class Counting:
        def __init__(self, rng):
            self.rng = rng

        def random(self, size=None):
            draws.append(size)
            return self.rng.random(size)

    monkeypatch.setattr(sampling, "make_rng", lambda seed, kind: Counting(make_rng(seed, kind)))
    piece = generator.generate(num_samples=1, seed=5, primer_tokens=simple_primer(generator), sampling=SamplingSettings(length=12))[0]
    assert draws == [1] * (len(piece.ids) + (piece.stop_reason == "boundary"))
    draws.clear()
    generator.generate(num_samples=1, seed=5, primer_tokens=simple_primer(generator), sampling=SamplingSettings(length=12, temperature=0))
    assert draws == []


def test_rng_numpy_is_a_choice_not_the_default(generator):
    primer = simple_primer(generator)
    default = generator.generate(num_samples=2, seed=3, primer_tokens=primer, sampling=SamplingSettings(length=12))
    portable = generator.generate(num_samples=2, seed=3, primer_tokens=primer, sampling=SamplingSettings(length=12, rng="splitmix64"))
    numpy_ones = generator.generate(num_samples=2, seed=3, primer_tokens=primer, sampling=SamplingSettings(length=12, rng="numpy"))
    again = generator.generate(num_samples=2, seed=3, primer_tokens=primer, sampling=SamplingSettings(length=12, rng="numpy"))
    assert [p.ids for p in default] == [p.ids for p in portable]
    assert [p.ids for p in numpy_ones] == [p.ids for p in again]
    assert [p.ids for p in numpy_ones] != [p.ids for p in default]
    assert default[0].settings["rng"] == "splitmix64" and numpy_ones[0].settings["rng"] == "numpy"
    # A portable piece records the seed that gives it alone; a numpy one has none.
    assert [p.settings["piece_seed"] for p in default] == [3, 4]
    alone = generator.generate(num_samples=1, seed=default[1].settings["piece_seed"], primer_tokens=primer, sampling=SamplingSettings(length=12))
    assert alone[0].ids == default[1].ids
    assert "piece_seed" not in numpy_ones[0].settings
    with pytest.raises(sampling.SamplingError, match=r"^rng must be one of splitmix64, numpy, got 'mt'$"):
        SamplingSettings(rng="mt")


def test_temperature_zero_and_top_k_one_equal_a_manual_greedy_loop(generator):
    primer = simple_primer(generator)
    greedy = generator.generate(num_samples=1, primer_tokens=primer, seed=1, sampling=SamplingSettings(length=15, temperature=0))[0]
    top1 = generator.generate(num_samples=1, primer_tokens=primer, seed=7, sampling=SamplingSettings(length=15, temperature=1.3, top_k=1))[0]
    assert greedy.tokens == top1.tokens
    vocabulary = generator.vocabulary
    ids = [vocabulary.boundary_id] + vocabulary.encode(primer)
    state = generator.backend.initial_state(1)
    grammar = sampling.Grammar(events.grammar_table(vocabulary.tokens, vocabulary.representation))
    where = grammar.start(1)
    for token_id in ids:
        probabilities, state = generator.backend.step(np.array([token_id], np.int32), state)
        grammar.advance(where, [token_id])
    expected = []
    while events.count_events(vocabulary.decode(expected)) < 15:
        early = events.count_events(vocabulary.decode(expected)) < generate.DEFAULT_MIN_LENGTH
        banned = [vocabulary.pad_id, vocabulary.unk_id] + ([vocabulary.boundary_id] if early else [])
        token_id = int(sampling.greedy(probabilities, banned=banned, allowed=grammar.allowed(where))[0])
        if token_id == vocabulary.boundary_id:
            break
        expected.append(token_id)
        grammar.advance(where, [token_id])
        probabilities, state = generator.backend.step(np.array([token_id], np.int32), state)
    assert greedy.ids == expected
    assert greedy.repairs == {}


class CountingBackend:
    """Wraps a backend and records the batch size of every step call."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []
        self.vocabulary_size = inner.vocabulary_size

    def initial_state(self, batch):
        return self.inner.initial_state(batch)

    def step(self, token_ids, state):
        self.batches.append(len(token_ids))
        return self.inner.step(token_ids, state)


def test_a_batch_is_sampled_in_one_pass_and_every_row_is_valid(run_dir, generator):
    counting = CountingBackend(generator.backend)
    batched = generate.Generator(run_dir, backend=counting, log=lambda m: None)
    pieces = batched.generate(num_samples=4, seed=5, sampling=SamplingSettings(length=10, top_p=0.95))
    assert set(counting.batches) == {4}
    # Priming steps all rows together (as long as the longest primer), then generation
    # steps them together (as long as the longest piece): one pass, not one per piece.
    longest = max(len(p.primer_tokens) for p in pieces) + 1 + max(len(p.tokens) for p in pieces)
    assert len(counting.batches) <= longest + 1
    for piece in pieces:
        assert not {events.PAD, events.UNK, events.BOUNDARY} & set(piece.tokens)
        assert all(t in generator.vocabulary.index for t in piece.tokens)
        assert piece.ids == generator.vocabulary.encode(piece.tokens)
        assert piece.stop_reason in ("length", "boundary")
        generated = events.count_events(piece.tokens)
        assert generated == 10 if piece.stop_reason == "length" else generated <= 10
    again = batched.generate(num_samples=4, seed=5, sampling=SamplingSettings(length=10, top_p=0.95))
    assert [p.tokens for p in again] == [p.tokens for p in pieces]


def test_bad_settings_raise_errors_naming_the_value(generator):
    # Sampling settings are checked once, when made; a SamplingError is a KerasMusicError and a ValueError.
    with pytest.raises(sampling.SamplingError, match="temperature"):
        SamplingSettings(temperature=-1)
    with pytest.raises(sampling.SamplingError, match="top_p"):
        SamplingSettings(top_p=0)
    with pytest.raises(sampling.SamplingError, match="length"):
        SamplingSettings(length=0)
    with pytest.raises(sampling.SamplingError, match="min_length"):
        SamplingSettings(min_length=-1)
    with pytest.raises(generate.GenerateError, match="sampling must be a SamplingSettings"):
        generator.generate(1, {"temperature": 0.5})
    with pytest.raises(generate.GenerateError, match="not both"):
        generator.generate(primer="x.mid", primer_tokens=[])


# ----------------------------------------------------------------------------- stopping

def test_stops_after_length_events(generator):
    # min_length (8 by default) is clamped to the length: the boundary cannot end a piece
    # before its 7th event, and the 7th ends it, so every piece stops by length.
    for seed in range(3):
        for piece in generator.generate(num_samples=2, seed=seed, primer_tokens=[], sampling=SamplingSettings(length=7)):
            assert piece.stop_reason == "length"
            assert events.count_events(piece.tokens) == 7
            assert piece.tokens[-1].startswith("dur:")
            assert piece.events == 7 and piece.primer_events == 0


class FakeBackend:
    """All mass on a pitch, then on `dur:`, until row r has closed k + r sonorities, then on <piece>."""

    name = "fake"

    def __init__(self, vocabulary, k, unk_mass=0.0):
        self.vocabulary_size = len(vocabulary)
        self.pitch_id = vocabulary.index[[t for t in vocabulary.tokens if t.startswith("pitch:")][0]]
        self.duration_id = vocabulary.index[[t for t in vocabulary.tokens if t.startswith("dur:")][0]]
        self.boundary_id = vocabulary.boundary_id
        self.unk_id = vocabulary.unk_id
        self.k, self.unk_mass = k, unk_mass
        self.batches = []

    def initial_state(self, batch):
        return np.zeros((batch, 1, 1), np.float32)

    def step(self, token_ids, state):
        self.batches.append(len(token_ids))
        counter = state[:, 0, 0] + 1  # the first call consumes the boundary
        probabilities = np.zeros((len(token_ids), self.vocabulary_size), np.float32)
        for row, steps in enumerate(counter):
            if steps % 2 == 0:
                target = self.duration_id
            else:
                target = self.boundary_id if steps > 2 * (self.k + row) else self.pitch_id
            probabilities[row, target] = 1.0 - self.unk_mass
            probabilities[row, self.unk_id] += self.unk_mass
        return probabilities, counter[:, None, None].astype(np.float32)


def test_stops_when_the_boundary_is_sampled_per_row(run_dir, generator):
    fake = FakeBackend(generator.vocabulary, k=3)
    fake_generator = generate.Generator(run_dir, backend=fake, log=lambda m: None)
    pieces = fake_generator.generate(num_samples=3, primer_tokens=[], seed=0, sampling=SamplingSettings(length=50, min_length=0))
    pair = [generator.vocabulary.tokens[fake.pitch_id], generator.vocabulary.tokens[fake.duration_id]]
    assert [p.tokens for p in pieces] == [pair * 3, pair * 4, pair * 5]
    assert [p.stop_reason for p in pieces] == ["boundary"] * 3
    assert set(fake.batches) == {3}  # finished rows kept stepping with the batch


def test_the_boundary_cannot_end_a_piece_before_min_length(run_dir, generator):
    fake = FakeBackend(generator.vocabulary, k=0, unk_mass=0.0)
    original_step = fake.step

    def half_boundary(token_ids, state):
        probabilities, state = original_step(token_ids, state)
        probabilities[:, fake.duration_id] = 0.5  # boundary and duration equally likely from the start
        probabilities[:, fake.boundary_id] = 0.5
        return probabilities, state

    fake.step = half_boundary
    pieces = generate.Generator(run_dir, backend=fake, log=lambda m: None).generate(num_samples=8, primer_tokens=[], seed=3, sampling=SamplingSettings(length=30, min_length=5))
    assert all(len(p.tokens) >= 5 for p in pieces)
    assert {p.stop_reason for p in pieces} <= {"boundary", "length"}
    assert any(p.stop_reason == "boundary" for p in pieces)
    short = generate.Generator(run_dir, backend=fake, log=lambda m: None).generate(num_samples=8, primer_tokens=[], seed=3, sampling=SamplingSettings(length=30, min_length=0))
    assert any(len(p.tokens) < 5 for p in short)


def test_each_row_can_have_its_own_length(run_dir, generator):
    fake = FakeBackend(generator.vocabulary, k=0, unk_mass=0.0)
    fake_generator = generate.Generator(run_dir, backend=fake, log=lambda m: None)
    pieces = fake_generator.generate(num_samples=3, primer_tokens=[], seed=0, sampling=SamplingSettings(length=[2, 5, 3], min_length=5))
    assert [len(p.sonorities) for p in pieces] == [2, 5, 3]
    assert [p.stop_reason for p in pieces] == ["length"] * 3
    assert [p.settings["length"] for p in pieces] == [2, 5, 3]
    assert [p.settings["min_length"] for p in pieces] == [2, 5, 3]
    with pytest.raises(generate.GenerateError, match=r"one such integer per piece \(3\)"):
        fake_generator.generate(3, SamplingSettings(length=[2, 5]), primer_tokens=[], seed=0)
    for bad in ([2, 0, 3], [2, True, 3]):
        with pytest.raises(sampling.SamplingError, match="one such integer per piece"):
            SamplingSettings(length=bad)


class UniformBackend:
    """Every token equally likely at every step: the hardest case for a grammar."""

    name = "uniform"

    def __init__(self, vocabulary_size):
        self.vocabulary_size = vocabulary_size

    def initial_state(self, batch):
        return np.zeros((batch, 1, 1), np.float32)

    def step(self, token_ids, state):
        return np.full((len(token_ids), self.vocabulary_size), 1.0 / self.vocabulary_size, np.float32), state


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.5, 2.0])
def test_uniform_sampling_is_valid_by_construction(run_dir, generator, temperature):
    uniform = generate.Generator(run_dir, backend=UniformBackend(len(generator.vocabulary)), log=lambda m: None)
    pieces = uniform.generate(num_samples=50, seed=11, sampling=SamplingSettings(length=40, temperature=temperature, min_length=8))
    assert [p.repairs for p in pieces] == [{}] * 50
    assert {p.stop_reason for p in pieces} <= {"length", "boundary"}
    assert any(p.stop_reason == "boundary" for p in pieces) and any(p.stop_reason == "length" for p in pieces)
    for piece in pieces:
        assert piece.events >= 8
        assert piece.tokens[-1].startswith("dur:")
        # Decoding the tokens again gives back exactly what was sampled.
        assert events.sonorities_to_tokens(piece.sonorities[piece.primer_events:]) == piece.tokens


def test_without_the_grammar_uniform_sampling_needs_repairs(run_dir, generator):
    # The same run with the grammar switched to "anything goes" shows what the
    # grammar prevents: the decoder has to repair nearly every piece.
    uniform = generate.Generator(run_dir, backend=UniformBackend(len(generator.vocabulary)), log=lambda m: None)
    table = events.grammar_table(generator.vocabulary.tokens, "note")
    uniform.grammar = sampling.Grammar(dict(table, rules="any"))
    pieces = uniform.generate(num_samples=20, seed=11, primer_tokens=[], sampling=SamplingSettings(length=40))
    assert sum(bool(p.repairs) for p in pieces) >= 15


def test_pad_and_unk_are_never_sampled(run_dir, generator):
    fake = FakeBackend(generator.vocabulary, k=100, unk_mass=0.999)
    pieces = generate.Generator(run_dir, backend=fake, log=lambda m: None).generate(num_samples=2, primer_tokens=[], seed=0, sampling=SamplingSettings(length=20, temperature=2.0))
    for piece in pieces:
        assert events.UNK not in piece.tokens and events.PAD not in piece.tokens
        assert piece.stop_reason == "length"


def test_a_backend_for_another_vocabulary_is_refused(run_dir, generator):
    size = len(generator.vocabulary)
    with pytest.raises(generate.GenerateError, match=f"the uniform model has {size + 1} tokens but .*vocab.json has "
                                                     f"{size}: re-export the run with python -m keras_music.export"):
        generate.Generator(run_dir, backend=UniformBackend(size + 1))


def test_bad_write_settings_raise_errors_naming_the_value(generator, tmp_path):
    piece = generator.generate(num_samples=1, seed=0, primer_tokens=[], sampling=SamplingSettings(length=2))
    with pytest.raises(generate.GenerateError, match="tempo must be a positive number of beats per minute, got 0"):
        generator.write(piece, str(tmp_path / "out"), tempo=0)
    with pytest.raises(generate.GenerateError, match="unknown instrument 'Kazoophone'"):
        generator.write(piece, str(tmp_path / "out"), instrument="Kazoophone")
    assert not (tmp_path / "out").exists()
    assert generate.instrument_program("Violin") == 40 and generate.instrument_program("Piano") == 0


# ----------------------------------------------------------------------------- primers

def write_primer_midi(path, pitches=(62, 66, 69, 74, 73, 71, 69, 66, 64, 62)):
    from music21 import key, note, stream

    part = stream.Part()
    part.insert(0, key.Key("D"))
    for pitch in pitches:
        part.append(note.Note(pitch, quarterLength=1))
    part.write("midi", fp=str(path))
    return str(path)


def test_primer_from_a_midi_file_is_tokenized_in_the_training_key_frame(generator, tmp_path):
    from fractions import Fraction

    from music21 import converter

    path = write_primer_midi(tmp_path / "primer.mid")
    score = converter.parse(path)
    shift, _ = events.key_shift(score)
    expected = events.stream_to_tokens(score, "note", max_duration=Fraction(generator.config.data.max_duration),
                                       shift=shift)
    assert shift != 0
    piece = generator.generate(num_samples=1, primer=path, seed=0, sampling=SamplingSettings(length=5))[0]
    assert piece.primer_tokens == expected
    assert piece.primer_events == events.count_events(expected) == 10
    assert piece.sonorities[:10] == events.tokens_to_sonorities(expected)
    assert piece.primer_source == f"{path} (first 10 of 10 events)"


def test_primer_file_gives_only_its_opening_events(run_dir, tmp_path):
    path = write_primer_midi(tmp_path / "primer.mid")
    quiet = generate.Generator(run_dir, log=lambda m: None)
    whole = quiet.generate(num_samples=1, primer=path, seed=0, sampling=SamplingSettings(length=3))[0].primer_tokens
    piece = quiet.generate(num_samples=1, primer=path, seed=0, primer_events=4, sampling=SamplingSettings(length=3))[0]
    assert piece.primer_events == 4
    assert piece.primer_tokens == generate.opening_events(whole, 4)
    assert piece.primer_tokens[-1].startswith("dur:") and events.count_events(piece.primer_tokens) == 4
    assert piece.primer_source == f"{path} (first 4 of 10 events)"
    with pytest.raises(generate.GenerateError, match="primer_events must be an integer >= 1, got 0"):
        quiet.generate(primer=path, primer_events=0)


def test_opening_events_cuts_after_whole_sonorities():
    tokens = ["pitch:60", "pitch:64", "dur:1", "rest", "dur:1/2", "hold:64", "dur:1"]
    assert generate.opening_events(tokens, 1) == tokens[:3]
    assert generate.opening_events(tokens, 2) == tokens[:5]
    assert generate.opening_events(tokens, 9) == tokens
    assert generate.opening_events(["C4", "D4", "0.4.7"], 2, representation="classic") == ["C4", "D4"]


def test_primer_from_tokens_opens_every_piece(generator):
    primer = simple_primer(generator)
    pieces = generator.generate(num_samples=2, primer_tokens=" ".join(primer), seed=2, sampling=SamplingSettings(length=4))
    for piece in pieces:
        assert piece.primer_tokens == primer
        assert piece.primer_events == 2
        assert piece.sonorities[:2] == events.tokens_to_sonorities(primer)


def test_default_primer_is_a_held_out_opening_cut_after_a_sonority(generator):
    held_out = generator.held_out_pieces()
    assert held_out
    openings = set()
    for seed in range(4):
        for piece in generator.generate(num_samples=2, seed=seed, sampling=SamplingSettings(length=3)):
            primer = piece.primer_tokens
            assert primer[-1].startswith("dur:")
            assert any(tokens[:len(primer)] == primer for tokens in held_out)
            assert len(primer) <= 32 or events.count_events(primer) == 1
            assert "held-out piece" in piece.primer_source
            openings.add(tuple(primer))
    assert len(openings) > 1


def test_unknown_primer_tokens_are_reported_by_name(run_dir):
    generator, messages = run_with_log(run_dir)
    known = simple_primer(generator)
    piece = generator.generate(num_samples=1, seed=0, primer_tokens=known[:2] + ["pitch:127", "dur:77/5"] + known[2:], sampling=SamplingSettings(length=3))[0]
    assert piece.unknown_primer_tokens == ["pitch:127", "dur:77/5"]
    assert len(messages) == 1 and "pitch:127" in messages[0] and "dur:77/5" in messages[0]
    with pytest.raises(generate.GenerateError, match=r"pitch:127.*dur:77/5"):
        generator.generate(num_samples=1, primer_tokens=["pitch:127", "dur:77/5"], strict=True, sampling=SamplingSettings(length=3))


def test_unreadable_primer_files_raise_errors_naming_the_file(generator, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not music")
    with pytest.raises(generate.GenerateError, match="notes.txt"):
        generator.generate(primer=str(text))
    corrupt = tmp_path / "broken.mid"
    corrupt.write_bytes(b"MThd\x00\x00\x00\x06garbage")
    with pytest.raises(generate.GenerateError, match="broken.mid"):
        generator.generate(primer=str(corrupt))
    with pytest.raises(FileNotFoundError):
        generator.generate(primer=str(tmp_path / "missing.mid"))


# ----------------------------------------------------------------------------- timing in the files

def test_a_midi_primer_hands_its_tempo_map_metre_program_and_pickup_to_the_piece(generator, tmp_path):
    import mido

    from midi_truth import TPQ, build, note, read_back

    conductor = [(0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(72))),
                 (0, mido.MetaMessage("time_signature", numerator=3, denominator=4)),
                 (2 * TPQ, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(96))),
                 (400 * TPQ, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(150)))]
    violin = [(0, mido.Message("program_change", program=40, channel=0))]
    for i, pitch in enumerate((62, 66, 69, 74, 73, 71, 69, 66, 64, 62)):
        violin += note(1 + i, 2 + i, pitch)  # a one-beat pickup in 3/4
    primer = build(tmp_path / "primer.mid", [conductor, violin])
    piece = generator.generate(num_samples=1, primer=primer, seed=3, sampling=SamplingSettings(length=6))[0]
    assert piece.timing["start"] == 1.0
    generator.write([piece], str(tmp_path / "out"))
    notes, tempos, signatures = read_back(str(tmp_path / "out" / "sample-01.mid"))
    assert notes[0][0] == 1  # the pickup keeps its place in the bar
    assert tempos == [(0, mido.bpm2tempo(72)), (2, mido.bpm2tempo(96))]  # the change after the primer's end is not the piece's
    assert signatures == [(0, 3, 4)]
    assert {program for *_, program in notes} == {40}


def test_unprimed_pieces_take_the_corpus_median_tempo_and_most_common_metre(run_dir, tmp_path):
    import shutil

    from midi_truth import read_back

    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    info = json.loads(open(os.path.join(copy, "prepared.json")).read())
    info["timing"] = {"tempo": 77.0, "time_signature": [3, 4], "program": 19}
    with open(os.path.join(copy, "prepared.json"), "w") as handle:
        json.dump(info, handle)
    generator = generate.Generator(copy, log=lambda message: None)
    pieces = generator.generate(num_samples=1, primer_tokens=simple_primer(generator), seed=1, sampling=SamplingSettings(length=4))
    generator.write(pieces, str(tmp_path / "out"))
    notes, tempos, signatures = read_back(str(tmp_path / "out" / "sample-01.mid"))
    assert tempos == [(0, round(60_000_000 / 77))] and signatures == [(0, 3, 4)]
    assert {program for *_, program in notes} == {19}


def assert_files_hold_the_record(stem):
    """The MIDI (read with mido) and the MusicXML (read with music21) hold the notes, tempo map, metre and program
    that the piece's JSON record says; returns the record."""
    from music21 import converter, meter, tempo

    from midi_truth import read_back

    with open(stem + ".json") as handle:
        record = json.load(handle)
    timing = record["timing"]
    notes = events.sonorities_to_notes(events.tokens_to_sonorities(record["primer_tokens"] + record["tokens"]))
    assert len(notes) and record["events"] > 0
    written, tempos, signatures = read_back(stem + ".mid")
    start = Fraction(timing["start"])
    assert [(a - start, b - a, p) for a, b, p, _ in written] == sorted(
        (Fraction(a).limit_denominator(96), Fraction(d).limit_denominator(96), int(p)) for a, d, p in notes)
    assert tempos == [(Fraction(q), round(60_000_000 / bpm)) for q, bpm in timing["tempos"]]
    assert signatures == [(Fraction(q), numerator, denominator) for q, numerator, denominator in
                          timing["time_signatures"]]
    assert {program for *_, program in written} == {timing["program"]}
    parsed = converter.parse(stem + ".musicxml")
    canonical = events.sonorities_to_tokens(events.notes_to_sonorities([(a, a + d, p) for a, d, p in notes]))
    assert events.stream_to_tokens(parsed, shift=0) == canonical
    metre = parsed.recurse().getElementsByClass(meter.TimeSignature)[0]
    assert [metre.numerator, metre.denominator] == timing["time_signatures"][0][1:]
    assert parsed.recurse().getElementsByClass(tempo.MetronomeMark)[0].number == timing["tempos"][0][1]
    return record


def test_write_training_samples(run_dir, tmp_path):
    import dataclasses
    import shutil

    copy = str(tmp_path / "run")  # the samples go into the run directory: a copy keeps tiny_run read-only
    shutil.copytree(run_dir, copy)
    config = tiny_config()
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, num_samples=2, sample_length=6))
    paths = generate.write_training_samples(copy, config)
    assert paths == [os.path.join(copy, "samples", f"sample-0{n}.mid") for n in (1, 2)]
    for number, path in enumerate(paths):
        record = assert_files_hold_the_record(path[:-len(".mid")])
        assert record["seed"] == config.train.seed and record["index"] == number
        assert record["settings"]["temperature"] == config.train.sample_temperature
        # min_length is clamped to the 6 events asked for, so every sample has exactly 6.
        assert record["stop_reason"] == "length" and record["events"] == 6


# ----------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("bad", [["--length", "-1"], ["--temperature", "-0.5"], ["--top-p", "1.5"],
                                 ["--num-samples", "0"], ["--top-k", "-2"], ["--tempo", "0"]])
def test_cli_bad_values_are_usage_errors(run_dir, bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--run-dir", run_dir, *bad])
    assert exit_info.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_cli_missing_run_dir_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--run-dir", str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_cli_writes_files_and_summaries(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--run-dir", run_dir, "--num-samples", "2", "--length", "8", "--seed", "3",
                       "--out", str(out), "--quiet", "--top-k", "10", "--temperature", "0.9"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for number in (1, 2):
        for extension in (".mid", ".musicxml", ".png", ".ogg", ".json"):
            path = out / f"sample-{number:02d}{extension}"
            assert path.exists() and str(path) in printed
        record = assert_files_hold_the_record(str(out / f"sample-{number:02d}"))
        assert record["seed"] == 3 and record["index"] == number - 1 and record["events"] == 8
        assert record["settings"]["top_k"] == 10 and record["settings"]["temperature"] == 0.9
        assert (f"sample {number}: 8 events generated after a {record['primer_events']}-event primer, "
                f"{len(record['tokens'])} tokens, stopped by length") in printed
        with open(out / f"sample-{number:02d}.ogg", "rb") as handle:
            assert handle.read(4) == b"OggS"
        with open(out / f"sample-{number:02d}.png", "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"wrote 2 pieces to {out}" in printed


def test_cli_primer_events_takes_the_opening_and_records_it(run_dir, tmp_path, capsys):
    primer = write_primer_midi(tmp_path / "primer.mid")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--run-dir", run_dir, "--length", "4", "--primer", primer, "--primer-events", "3",
                       "--out", str(out), "--quiet"])
    assert exit_info.value.code == 0
    assert f"primer: {primer} (first 3 of 10 events) (--primer-events 3)" in capsys.readouterr().out
    record = json.loads((out / "sample-01.json").read_text())
    assert record["primer_events"] == 3 and events.count_events(record["primer_tokens"]) == 3
    assert record["primer_source"] == f"{primer} (first 3 of 10 events)"
    assert record["repairs"] == {}


def test_cli_export_backends_need_the_export(run_dir, tmp_path, capsys):
    import shutil

    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--run-dir", copy, "--backend", "tflite", "--quiet", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("python -m keras_music.generate: error: ")
    assert "model.tflite is missing: export the run first with python -m keras_music.export --run-dir" in error
    assert not (tmp_path / "o").exists()


def test_cli_strict_names_the_unknown_tokens_and_the_file(run_dir, tmp_path, capsys):
    path = write_primer_midi(tmp_path / "high.mid", pitches=(120, 122, 124, 126))
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--run-dir", run_dir, "--primer", path, "--strict", "--quiet", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert "high.mid" in error and "pitch:1" in error
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("argv, expected", [
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    (["--num-samples", "1001"], "argument --num-samples: expected an integer in 1..1000, got 1001"),
    (["--length", "0"], "argument --length: expected an integer in 1..10000, got 0"),
])
def test_bad_numbers_are_usage_errors(run_dir, argv, expected, capsys):
    line = usage_error(generate.parse_args, ["--run-dir", run_dir, *argv], capsys)
    assert line == f"python -m keras_music.generate: error: {expected}"


def test_a_primer_that_is_a_fifo_is_refused_at_once(run_dir, tmp_path):
    import subprocess
    import sys

    fifo = str(tmp_path / "primer.mid")
    os.mkfifo(fifo)
    result = subprocess.run([sys.executable, "-m", "keras_music.generate", "--run-dir", run_dir, "--primer", fifo,
                             "--audio", "none", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"primer {fifo}: not a regular file (a FIFO)" in result.stderr


def test_a_primer_that_parses_too_long_is_stopped(run_dir, tmp_path):
    import dataclasses

    from test_corpus import slow_midi_folder

    generator = generate.Generator(run_dir, log=lambda message: None)
    data = dataclasses.replace(generator.config.data, parse_timeout=0.5, cache_dir=str(tmp_path / "cache"))
    generator.config = dataclasses.replace(generator.config, data=data)
    slow = os.path.join(slow_midi_folder(str(tmp_path / "slow"), count=1, notes=60000), "slow00.mid")
    with pytest.raises(generate.GenerateError, match="timed out: parsing took longer than 0.5 s"):
        generator.generate(num_samples=1, primer=slow, sampling=SamplingSettings(length=4))
