"""Bar infilling: cutting at bar lines, the gap mask, FIM training data, generate --infill judged with mido, evaluate."""

import json
import os
from fractions import Fraction as F

import mido
import numpy as np
import pytest

from conftest import tiny_config, usage_error
from keras_music import config as config_lib, events, infill, sampling
from keras_music.evaluate_music import EvaluationSettings
from keras_music.sampling import SamplingSettings
from keras_music.events import Sonority
from midi_truth import build, note, read_back

FIM = list(events.FIM_TOKENS)
LENGTHS = list(events.FIM_LENGTH_TOKENS)


# ----------------------------------------------------------------------------- pure parts


def piece_sonorities():
    notes = [(0, 1, 60), (1, 2, 62), (2, 5, 64), (5, 6, 65), (6, 8, 67), (0, 8, 48), (8, 9, 72)]
    return events.notes_to_sonorities([(F(a), F(b), p) for a, b, p in notes])


def test_cut_at_bar_lines_splits_a_sounding_note_into_held_continuations_and_joins_back():
    sonorities = piece_sonorities()
    gap = infill.Gap(2, 2, F(4), F(8))
    parts = infill.cut(sonorities, 0, gap)
    assert sum(s.duration for s in parts.prefix) == 4 and sum(s.duration for s in parts.middle) == 4
    # E (2-5) and the bass (0-8) sound across the bar line at 4: the middle starts with their holds.
    assert parts.middle[0] == Sonority((48, 64), (True, True), F(1))
    assert parts.suffix == [Sonority((72,), (False,), F(1))]
    joined = infill.join(parts.prefix, parts.middle, suffix=parts.suffix)
    assert events.sonorities_to_notes(joined).tolist() == events.sonorities_to_notes(sonorities).tolist()


def test_gap_from_bars_and_its_errors_name_the_bars_and_the_range():
    sonorities = piece_sonorities()  # 9 quarters in 4/4: 3 bars
    gap = infill.gap_for_bars(sonorities, 0, time_signatures=[[0.0, 4, 4]], first=2, last=3, source="x.mid")
    assert (gap.onset, gap.offset) == (4, 9)  # cut to the last note's end
    with pytest.raises(infill.InfillError, match=r"bars 3-4 are outside x.mid, which has 3 bars \(expected A-B"):
        infill.gap_for_bars(sonorities, 0, time_signatures=[[0.0, 4, 4]], first=3, last=4, source="x.mid")
    with pytest.raises(infill.InfillError, match="bars 1-1 of x.mid hold no music"):
        infill.gap_for_bars(sonorities, 5, time_signatures=[[0.0, 4, 4]], first=1, last=1, source="x.mid")
    assert infill.parse_bars("5-6") == (5, 6) and infill.parse_bars(" 3 ") == (3, 3)
    for bad in ("6-5", "0-2", "a-b", "", "2-"):
        with pytest.raises(infill.InfillError, match="expected A-B with 1 <= A <= B"):
            infill.parse_bars(bad)


def test_training_examples_are_one_window_of_suffix_prefix_middle_between_sentinels():
    notes = [(F(q, 2), F(q + 1, 2), 60 + q % 7) for q in range(96)]  # 12 bars of eighths, 16 tokens a bar
    sonorities = events.notes_to_sonorities(notes)
    whole = " ".join(events.sonorities_to_tokens(sonorities))
    examples = infill.training_examples(sonorities, 0, time_signatures=[[0.0, 4, 4]], seed=3, window=64)
    assert len(examples) == infill.VARIANTS and len({tuple(x) for x in examples}) == infill.VARIANTS
    for tokens in examples:
        assert len(tokens) == 64
        assert tokens[0] == events.FIM_SUFFIX and tokens[-1] == events.FIM_END
        assert tokens.count(events.FIM_PREFIX) == tokens.count(events.FIM_MIDDLE) == 1
        s, p, m = tokens.index(events.FIM_SUFFIX), tokens.index(events.FIM_PREFIX), tokens.index(events.FIM_MIDDLE)
        suffix, prefix, length, middle = tokens[s + 1:p], tokens[p + 1:m], tokens[m + 1], tokens[m + 2:-1]
        assert suffix and prefix and middle
        gap_quarters = sum(F(t[4:]) for t in middle if t.startswith("dur:"))
        assert gap_quarters in (4, 8)  # 1-4 whole bars, at most half the window
        assert length == f"<fim_len:{gap_quarters}>"  # the gap's length in quarter notes, right after <fim_middle>
        assert len(suffix) <= 16  # a quarter of the window: the bars right after the gap
        assert " ".join(prefix + middle + suffix) in whole  # the end of the prefix, the gap, the suffix's opening
    assert infill.training_examples(sonorities[:8], 0, time_signatures=[[0.0, 4, 4]], seed=3,
                                    window=64) == []  # one bar only
    assert infill.training_examples(sonorities[:24], 0, time_signatures=[[0.0, 4, 4]], seed=3,
                                    window=128) == []  # too short


def test_gap_mask_allows_only_durations_that_can_still_fill_the_gap_and_then_only_fim_end():
    tokens = ["<pad>", "<unk>", "<piece>", "pitch:60", "rest", "dur:3", "dur:2", "dur:7/12", *FIM]
    mask = infill.GapMask(tokens, grid=24)
    assert mask.ticks.tolist()[5:7] == [72, 48] and mask.ticks[7] == 14
    grammar = sampling.Grammar(events.grammar_table(tokens, "note"))
    state = grammar.start(3)
    grammar.advance(state, np.array([3, 3, 3]))  # every row opened a sonority
    remaining = np.array([120, 48, 24 * 4 + 14])
    allowed = mask.allowed(grammar.allowed(state), state.phase == 0, remaining)
    names = [[tokens[i] for i in np.flatnonzero(row) if tokens[i].startswith("dur:")] for row in allowed]
    # 5 quarters: 3 + 2 or 2 + 3 both complete it; 2 quarters: only 2 (3 is too long);
    # 4 7/12: 7/12 leaves 4 = 2 + 2, 2 leaves 2 7/12 = 2 + 7/12, 3 leaves 1 7/12 (unreachable).
    assert names == [["dur:3", "dur:2"], ["dur:2"], ["dur:2", "dur:7/12"]]
    between = grammar.start(2)
    done = mask.allowed(grammar.allowed(between), between.phase == 0, np.array([0, 24 * 5]))
    assert [tokens[i] for i in np.flatnonzero(done[0])] == [events.FIM_END]
    assert events.FIM_END not in [tokens[i] for i in np.flatnonzero(done[1])]
    assert "<piece>" not in [tokens[i] for i in np.flatnonzero(done[1])]
    assert not mask.fillable(13) and mask.fillable(24 * 5)


def test_sentinels_are_grammar_kind_fim_never_sampled_skipped_by_decoding_and_no_events():
    tokens = ["<pad>", "<unk>", "<piece>", "pitch:60", "dur:1", *FIM, *LENGTHS]
    table = events.grammar_table(tokens, "note")
    assert table["kinds"][5:] == ["fim"] * 20
    grammar = sampling.Grammar(table)
    for closing in (None, np.array([True])):
        assert not grammar.allowed(grammar.start(1), closing=closing)[0, 5:].any()
    any_rules = sampling.Grammar({**table, "rules": "any"})
    assert not any_rules.allowed(any_rules.start(1))[0, 5:].any()
    report = events.DecodeReport()
    sequence = [events.FIM_SUFFIX, "pitch:60", "dur:1", events.FIM_PREFIX, events.FIM_MIDDLE, "<fim_len:1>",
                "pitch:62", "dur:1", events.FIM_END]
    assert [s.pitches for s in events.tokens_to_sonorities(sequence, report=report)] == [(60,), (62,)]
    assert report.repairs == {}
    assert events.count_events(sequence) == 2 and not any(events.ends_event(t) for t in FIM + LENGTHS)
    assert [infill.length_token(d) for d in (F(1, 2), 1, F(13, 4), 16, 40)] == [
        "<fim_len:1>", "<fim_len:1>", "<fim_len:4>", "<fim_len:16>", "<fim_len:16>"]


def test_infill_rate_is_validated_naming_the_key():
    with pytest.raises(config_lib.ConfigError, match=r"data.infill_rate: expected fill-in-the-middle windows per training "
                                                     r"piece and epoch, in \[0, 8\] \(a piece prepares at most that many\), got 8.5"):
        config_lib.load((), ["data.infill_rate=8.5"])
    with pytest.raises(config_lib.ConfigError, match=r"data.infill_rate: .* got -0.5"):
        config_lib.load((), ["data.infill_rate=-0.5"])
    assert config_lib.load((), ["data.infill_rate=2.5"]).data.infill_rate == 2.5
    with pytest.raises(config_lib.ConfigError, match="data.infill_rate.*data.representation=classic"):
        config_lib.load((), ["data.infill_rate=0.5", "data.representation=classic"])
    assert config_lib.load((), []).data.infill_rate == 0


# ----------------------------------------------------------------------------- a run trained with infilling


@pytest.fixture(scope="module")
def infill_run(tmp_path_factory):
    from keras_music import train

    run_dir = str(tmp_path_factory.mktemp("infill-run"))
    train.train(tiny_config("data.infill_rate=0.5", "train.epochs=3", "data.seq_length=96"), run_dir,
                show_progress=False,
                log=lambda *a: None)
    return run_dir


def test_prepared_data_holds_sentinels_and_fim_examples_that_the_stream_mixes_in(infill_run):
    from keras_music import dataset, run as run_lib

    vocabulary = run_lib.load_vocabulary(infill_run)
    assert vocabulary.tokens[-20:] == FIM + LENGTHS
    info = run_lib.load_prepared(infill_run)
    assert info["settings"]["infill"] is True
    assert info["settings"]["infill_window"] == 96
    examples = info["infill_examples"]["train"]
    assert all(0 < n <= infill.VARIANTS for n in examples)
    files = run_lib.shard_paths(infill_run, "train", info=info)
    fim_ids = [vocabulary.index[t] for t in FIM]

    def sentinels(rate, seed):
        stream = dataset.training_dataset(files, config_lib.DataConfig(seq_length=96, infill_rate=rate),
                                          train=config_lib.TrainConfig(batch_size=2, seed=seed, epochs=1),
                                          span=dataset.EpochSpan(1000), piece_count=len(info["lengths"]["train"]))
        rows = np.concatenate([x.numpy() for x, _ in stream])
        # A FIM window is a whole window from the start state, <fim_suffix> first: never `<piece> <fim_suffix>`,
        # which would teach the model that a piece begun from the start state is a FIM example.
        starts = int(np.sum(rows[:, 0] == fim_ids[0]))
        assert not np.any((rows[:, :-1] == vocabulary.boundary_id) & (rows[:, 1:] == fim_ids[0]))
        return int(np.isin(rows, fim_ids).sum()), starts

    assert sentinels(0.0, 0) == (0, 0)
    everything, starts = sentinels(1.0, 0)
    # At rate 1 every piece gives one whole FIM window; its inputs hold three sentinels (<fim_end> is the last target).
    assert everything == 3 * len(examples) and starts == len(examples)
    assert sentinels(1.0, 0) == (everything, starts)  # seeded: the same stream again
    # Above 1 a piece gives that many windows per epoch on average: at 3, exactly three (each a variant drawn anew).
    assert sentinels(3.0, 0) == (3 * everything, 3 * starts)
    more, more_starts = sentinels(1.5, 1)
    assert len(examples) < more_starts < 2 * len(examples) and more == 3 * more_starts
    # Every example is exactly one window: seq_length inputs and the last target, <fim_suffix> first.
    import tensorflow as tf

    for record in tf.data.TFRecordDataset(files):
        ids, fim_ids, lengths = (t.numpy() for t in dataset._parse_fim(record))
        assert sum(lengths) == len(fim_ids) and set(lengths) == {97}
        first = vocabulary.decode(fim_ids[:lengths[0]])
        assert [t for t in first if t in FIM] == FIM
        assert sum(t in LENGTHS for t in first) == 1 and first[first.index(events.FIM_MIDDLE) + 1] in LENGTHS


def write_file(path, key=3):
    """Six 4/4 bars in E-flat: a melody in quarters and eighths over a bass, two bass notes across the bar lines
    at 8 and 16 (the run reads it moved to C and writes it back in E-flat)."""
    melody = [key + p for p in (72, 74, 76, 77, 79, 77, 76, 74, 72, 71, 72, 74, 76, 74, 72, 71, 69, 71, 72, 74, 72,
                                71, 72, 72)]
    messages = []
    for q, pitch in enumerate(melody):
        if q % 4 == 1:
            messages += note(q, q + F(1, 2), pitch) + note(q + F(1, 2), q + 1, pitch - 2)
        else:
            messages += note(q, q + 1, pitch)
    for onset, end, pitch in ((0, 2, 48), (2, 4, 55), (4, 7, 53), (7, 9, 55), (9, 12, 52), (12, 15, 57),
                              (15, 17, 53), (17, 20, 55), (20, 24, 48)):
        messages += note(onset, end, pitch + key, channel=1)
    conductor = [(0, mido.MetaMessage("time_signature", numerator=4, denominator=4)),
                 (0, mido.MetaMessage("set_tempo", tempo=600000))]
    return build(path, [conductor, messages])


def clipped(notes, low, high):
    """(onset, end, pitch) of the notes sounding in [low, high), cut to it."""
    out = [(max(a, low), min(b, high), p) for a, b, p, *_ in notes if min(b, high) > max(a, low)]
    return sorted(out)


def markers(path):
    song, tick, out = mido.MidiFile(path), 0, []
    for message in mido.merge_tracks(song.tracks):
        tick += message.time
        if message.type == "marker":
            out.append((F(tick, song.ticks_per_beat), message.text))
    return out


def test_generate_infill_fills_the_exact_gap_and_leaves_the_other_bars_untouched(infill_run, tmp_path):
    from keras_music import generate

    source = write_file(tmp_path / "six-bars.mid")
    truth, _, _ = read_back(source)
    end = max(b for _, b, *_ in truth)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--run-dir", infill_run, "--infill", source, "--bars", "3-4", "--num-samples", "4",
                       "--seed", "5", "--out", str(out), "--audio", "none", "--quiet"])
    assert exit_info.value.code == 0
    onset, offset = F(8), F(16)
    for number in range(1, 5):
        written, _, _ = read_back(str(out / f"sample-{number:02d}.mid"))
        # Bars 1-2 and 5-6 hold exactly the file's notes (a note crossing a gap boundary counts up to it):
        # had the middle been a tick too short or too long, everything after it would have moved.
        assert clipped(written, 0, onset) == clipped(truth, 0, onset)
        assert clipped(written, offset, end) == clipped(truth, offset, end)
        assert markers(str(out / f"sample-{number:02d}.mid")) == [(onset, "infill 3-4 start"),
                                                                 (offset, "infill 3-4 end")]
        record = json.loads((out / f"sample-{number:02d}.json").read_text())["infill"]
        assert record["bars"] == [3, 4] and (record["onset"], record["offset"]) == (8.0, 16.0)
        assert sum(F(t[4:]) for t in record["tokens"] if t.startswith("dur:")) == offset - onset
        assert record["exact"] is True
        assert not any(t in FIM for t in record["tokens"])


def test_infill_gives_exact_fills_for_several_seeds_and_gaps_in_python(infill_run, tmp_path):
    from keras_music.generate import Generator

    source = write_file(tmp_path / "six-bars.mid")
    generator = Generator(infill_run)
    # Bars 1-1: no prefix, so the middle may not hold what the suffix (read just before) ends with.
    for bars, seed in (("1-1", 0), ("1-2", 7), ("2-5", 1), ("6-6", 2), ("4", 3)):
        for piece in generator.infill(source, bars, num_samples=3, seed=seed, sampling=SamplingSettings(temperature=1.5)):
            gap = F(piece.infill["offset"]) - F(piece.infill["onset"])
            assert sum(F(t[4:]) for t in piece.tokens if t.startswith("dur:")) == gap
            assert piece.stop_reason == "filled" and piece.repairs == {}
            assert piece.infill["transposed"] != 0  # read in C, written back in the file's key


class Uniform:
    """A backend that finds every token equally likely: the grammar and the gap mask alone decide."""

    name = "uniform"

    def __init__(self, size):
        self.vocabulary_size = size

    def initial_state(self, batch):
        return np.zeros((batch, 1, 1), np.float32)

    def step(self, ids, state):
        return np.full((len(ids), self.vocabulary_size), 1.0 / self.vocabulary_size, np.float32), state


def test_a_middle_without_prefix_holds_nothing_over_from_the_suffix(infill_run, tmp_path):
    from keras_music import run as run_lib
    from keras_music.generate import Generator

    source = write_file(tmp_path / "six-bars.mid")
    generator = Generator(infill_run, backend=Uniform(len(run_lib.load_vocabulary(infill_run))))
    pieces = generator.infill(source, "1-1", num_samples=40, seed=0, sampling=SamplingSettings(temperature=1.0))
    def first_sonority(piece):
        return piece.tokens[:next(i for i, t in enumerate(piece.tokens) if t.startswith("dur:"))]

    assert all(p.repairs == {} and p.infill["exact"] for p in pieces)
    assert not any(t.startswith("hold:") for p in pieces for t in first_sonority(p))
    # A gap after a prefix may hold what the prefix's last sonority sounds.
    after_prefix = generator.infill(source, "3-4", num_samples=40, seed=0)
    assert any(t.startswith("hold:") for p in after_prefix for t in first_sonority(p))


def test_infill_errors_are_one_line(infill_run, tiny_run, tmp_path, capsys):
    from keras_music import generate

    source = write_file(tmp_path / "six-bars.mid")

    def error(argv):
        with pytest.raises(SystemExit):
            generate.main(["--out", str(tmp_path / "o"), "--audio", "none", "--quiet", *argv])
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert "bars 6-7 are outside infill file" in error(["--run-dir", infill_run, "--infill", source, "--bars", "6-7"])
    assert "which has 6 bars (expected A-B with 1 <= A <= B <= 6)" in error(
        ["--run-dir", infill_run, "--infill", source, "--bars", "6-7"])
    assert "trained without infilling (data.infill_rate 0)" in error(
        ["--run-dir", tiny_run, "--infill", source, "--bars", "2-3"])
    assert "bars '3-2' are not a bar range" in usage_error(
        generate.parse_args, ["--run-dir", infill_run, "--infill", source, "--bars", "3-2"], capsys)
    assert "--infill FILE and --bars A-B go together" in usage_error(
        generate.parse_args, ["--run-dir", infill_run, "--bars", "3-4"], capsys)


def test_evaluate_reports_the_middle_nll_with_and_without_the_suffix(infill_run, tmp_path):
    from keras_music import evaluate, evaluate_likelihood, run as run_lib
    from keras_music.evaluate_held_out import load_split

    out = str(tmp_path / "evaluation")
    result = evaluate.evaluate_run(infill_run, EvaluationSettings(num_samples=1, length=8, temperatures=(0.9,),
                                                                  orders=(1, 2)), out_dir=out)
    quality = result["infill"]
    assert quality["gaps"] >= 1 and quality["exact_share"] == 1.0
    assert quality["nll_reduction"] == pytest.approx(1 - quality["nll_fim"] / quality["nll_prefix_only"])
    # The true middle obeys the grammar and fills the gap, so renormalising over what the generators allow
    # only raises its tokens' probabilities: as sampled, each NLL is at most the model's own.
    assert 0 < quality["nll_fim_masked"] <= quality["nll_fim"] + 1e-12
    assert 0 < quality["nll_prefix_only_masked"] <= quality["nll_prefix_only"] + 1e-12
    assert quality["nll_reduction_masked"] == pytest.approx(
        1 - quality["nll_fim_masked"] / quality["nll_prefix_only_masked"])
    # One gap's FIM NLL recomputed from the model's own softmax, stepping through the sequence.
    vocabulary = run_lib.load_vocabulary(infill_run)
    held_out = load_split(infill_run, "validation", vocabulary=vocabulary)
    gap = evaluate_likelihood.infill_gaps(infill_run, held_out, vocabulary=vocabulary, seed=0)[0]
    assert gap["context"][0] == events.FIM_SUFFIX and gap["context"][-2] == events.FIM_MIDDLE
    assert gap["context"][-1] == infill.length_token(gap["duration"]) in vocabulary.index
    # Fed from the start state, <fim_suffix> first (no <piece>), as generate --infill feeds it.
    sequence = vocabulary.encode(gap["context"] + gap["middle"])
    model = run_lib.load_model(infill_run, vocabulary)
    probabilities = model(np.array([sequence[:-1]], np.int32), training=False).numpy()[0]
    first = len(gap["context"])  # after the context up to <fim_middle> and the gap's length
    nll = -np.mean([np.log(probabilities[i - 1, sequence[i]]) for i in range(first, first + len(gap["middle"]))])
    detail = quality["details"][0]
    assert detail["middle_tokens"] == len(gap["middle"])
    assert detail["nll_fim"] == pytest.approx(nll, rel=1e-4)
    # The middle's last token is a duration that closes the gap: with the gap mask it is the only duration left
    # that fits, and the NLL as sampled charges it nothing more than the grammar's choice among the tokens allowed.
    mask = infill.GapMask(vocabulary.tokens)
    last = sequence[-1]
    assert vocabulary.tokens[last].startswith("dur:")
    spent = sum(int(mask.ticks[t]) for t in sequence[first:-1])
    assert spent + mask.ticks[last] == gap["ticks"]
    report = open(os.path.join(out, "evaluation.md")).read()
    assert "## Infilling" in report and "prefix only" in report
    saved = json.load(open(os.path.join(out, "evaluation.json")))
    assert saved["infill"]["fills"] == quality["fills"]


def test_no_exported_sampler_samples_a_sentinel():
    import importlib.util

    from keras_music.export_saved_model import _GraphGrammar
    from keras_music.vocabulary import Vocabulary

    shipped = Vocabulary(["<pad>", "<unk>", "<piece>", "pitch:60", "rest", "dur:1", *FIM, *LENGTHS]).to_json()
    assert shipped["grammar"]["kinds"][-20:] == ["fim"] * 20
    spec = importlib.util.spec_from_file_location(
        "reference_generator", os.path.join(os.path.dirname(__file__), "..", "export", "reference_generator.py"))
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    for rules in ("note", "any"):
        table = dict(shipped["grammar"], rules=rules)
        assert not _GraphGrammar(table).not_banned.numpy()[-20:].any()
        assert not reference.Grammar(dict(shipped, grammar=table)).allowed()[-20:].any()


def test_the_studio_fills_bars_of_an_uploaded_file_and_of_a_piece_it_made(infill_run, tmp_path):
    from keras_music.studio import service

    studio = service.Studio([infill_run], str(tmp_path / "out"), db=str(tmp_path / "votes.sqlite"),
                            settings=service.StudioSettings(ab_seconds=8, ab_pool=1), log=lambda message: None)
    try:
        source = write_file(tmp_path / "six-bars.mid")
        upload = studio.add_primer("six-bars.mid", open(source, "rb").read())
        first = studio.infill({"piece": f"upload:{upload['id']}", "bars": "3-4", "seed": 1})
        assert first["infill"]["bars"] == [3, 4] and first["infill"]["exact"] is True
        midi = os.path.join(studio.out_dir, "pieces", first["id"], "piece-01.mid")
        assert markers(midi) == [(F(8), "infill 3-4 start"), (F(16), "infill 3-4 end")]
        again = studio.infill({"piece": f"piece:{first['id']}", "bars": "1-2", "seed": 2})
        assert again["infill"]["exact"] is True and (again["infill"]["onset"], again["infill"]["offset"]) == (0, 8)
        written, _, _ = read_back(os.path.join(studio.out_dir, "pieces", again["id"], "piece-01.mid"))
        before, _, _ = read_back(midi)
        assert clipped(written, F(8), F(24)) == clipped(before, F(8), F(24))
        with pytest.raises(service.StudioError, match="bars 7-8 are outside"):
            studio.infill({"piece": f"upload:{upload['id']}", "bars": "7-8"})
        with pytest.raises(service.StudioError, match="piece must be 'upload:ID'"):
            studio.infill({"piece": "held_out", "bars": "1-2"})
    finally:
        studio.close()


def test_training_on_prepared_data_without_infilling_or_with_other_windows_is_refused(tmp_path):
    from keras_music import prepare, run, train

    plain, windows = str(tmp_path / "plain"), str(tmp_path / "windows")
    prepare.prepare(tiny_config(), plain, show_progress=False, log=lambda *a: None)
    with pytest.raises(run.RunError, match=r"was prepared without infilling but this run has data\.infill_rate=0\.5; "
                                           r"pass --set data\.infill_rate=0 or prepare again$"):
        train.prepare_run(tiny_config("data.infill_rate=0.5", sources=(plain,)), str(tmp_path / "a"),
                          show_progress=False, log=lambda *a: None)
    prepare.prepare(tiny_config("data.infill_rate=0.5", "data.seq_length=64"), windows, show_progress=False,
                    log=lambda *a: None)
    with pytest.raises(run.RunError, match=r"with infilling examples of data\.seq_length=64 but this run has 32; "
                                           r"pass --set data\.seq_length=64 or prepare again$"):
        train.prepare_run(tiny_config("data.infill_rate=0.5", sources=(windows,)), str(tmp_path / "b"),
                          show_progress=False, log=lambda *a: None)


def test_every_backend_fills_the_same_bars(infill_run, tmp_path):
    import shutil

    from keras_music import backends, export
    from keras_music.generate import Generator

    copy = str(tmp_path / "run")
    shutil.copytree(infill_run, copy, ignore=shutil.ignore_patterns("export"))
    export.export(copy, export.ExportSettings(quantize=("none",), parity_windows=1, parity_steps=0),
                  log=lambda *a: None)
    source = write_file(tmp_path / "six-bars.mid")
    fills = {}
    for backend in backends.BACKENDS:
        pieces = Generator(copy, backend, log=lambda m: None).infill(source, "3-4", num_samples=2, seed=4, sampling=SamplingSettings(temperature=0))
        assert all(p.infill["exact"] for p in pieces)
        fills[backend] = [p.tokens for p in pieces]
    assert fills["savedmodel"] == fills["keras"] and fills["tflite"] == fills["keras"]
