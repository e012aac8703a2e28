"""Tests for keras_music.controls: bars, density and polyphony measured exactly, and where the control tokens land."""

import json
import os
from fractions import Fraction

import numpy as np
import pytest

from keras_music import controls, events, prepare, sampling, vocabulary as vocabulary_lib
from conftest import REPO, STEER_CHORALES, tiny_config

F = Fraction
# 4/4 for two bars, then 3/4 from quarter 8. Bar 1: a C major chord, then three single attacks, the last two
# overlapping; bar 2: a note held over the bar line, a low C held through bar 3 into bar 4, a chord over it;
# bar 3 (3/4): no sonority starts in it; bar 4: only a rest starts; bar 5: one note.
NOTES = [(0, 1, 60), (0, 1, 64), (0, 1, 67), (1, 2, 72), (2, 4, 62), (3, 5, 65), (5, 13, 48), (6, 7, 60),
         (6, 7, 64), (15, 16, 70)]
METRE = [[0.0, 4, 4], [8.0, 3, 4]]


def sonorities(notes=NOTES):
    return events.notes_to_sonorities([(F(a), F(b), p) for a, b, p in notes])


def record(notes=NOTES, metre=METRE, key="E- major", shift=-3, grid=24):
    return {"notes": [[int(a * grid), int(b * grid), p, 0] for a, b, p in notes], "grid": grid,
            "time_signatures": metre, "key": key, "shift": shift}


def test_bars_follow_the_metre_map():
    layout = controls.bars(METRE, 16)
    assert [(b.start, b.length, b.time_signature) for b in layout] == [
        (0, 4, (4, 4)), (4, 4, (4, 4)), (8, 3, (3, 4)), (11, 3, (3, 4)), (14, 3, (3, 4))]
    # No metre map: 4/4. A change inside a bar cuts it short and starts a new bar there.
    assert [(b.start, b.length) for b in controls.bars([], 9)] == [(0, 4), (4, 4), (8, 4)]
    assert [(b.start, b.length, b.time_signature) for b in controls.bars([[0, 4, 4], [6, 6, 8]], 12)] == [
        (0, 4, (4, 4)), (4, 2, (4, 4)), (6, 3, (6, 8)), (9, 3, (6, 8))]
    # A map that starts later is 4/4 before its first change; 2/2 and 3/8 bars in quarter notes.
    assert [(b.start, b.length) for b in controls.bars([[2, 2, 2]], 7)] == [(0, 2), (2, 4), (6, 4)]
    assert [b.length for b in controls.bars([[0, 3, 8]], 3)] == [F(3, 2), F(3, 2)]


def test_onsets_and_mean_polyphony_per_bar_are_exact():
    bars = controls.measure(sonorities(), METRE)
    assert [(b.start, b.onsets, b.polyphony) for b in bars] == [
        (0, 4, F(7, 4)),   # onsets at 0 (3 sounding), 1 (1), 2 (1), 3 (2: the 62 still sounds)
        (4, 2, F(2)),      # 5: the low C alone (the 65 ended there); 6: the chord over the held C (3)
        (8, 0, F(0)),      # the low C is held through: no onset
        (11, 0, F(0)),     # it ends at 13, then a rest
        (14, 1, F(1))]
    assert [(b.density_bin, b.polyphony_bin) for b in bars] == [(1, 1), (0, 1), (0, 0), (0, 0), (0, 0)]


def test_held_continuations_split_by_max_duration_are_no_onsets():
    # One whole note tied over four bars, split into held continuations of at most 2 quarters.
    split = events.notes_to_sonorities([(F(0), F(16), 60)], max_duration=F(2))
    assert len(split) == 8
    assert [b.onsets for b in controls.measure(split, [])] == [1, 0, 0, 0]


def test_dense_bars_reach_the_top_bins_and_the_bins_are_the_documented_edges():
    # Sixteen sixteenth-note onsets of a five-note chord, then a bar of eight eighths in two voices.
    chord = [(F(i, 4), F(i + 1, 4), p) for i in range(16) for p in (48, 55, 60, 64, 67)]
    eighths = [(4 + F(i, 2), 4 + F(i + 1, 2), p) for i in range(8) for p in (60, 72)]
    bars = controls.measure(events.notes_to_sonorities(chord + eighths), [])
    assert [(b.onsets, b.polyphony, b.density_bin, b.polyphony_bin) for b in bars] == [
        (16, 5, 6, 4), (8, 2, 3, 1)]
    assert [controls.density_bin(n) for n in range(18)] == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6]
    assert [controls.polyphony_bin(F(v)) for v in ("0", "1.49", "1.5", "2.49", "2.5", "3.5", "4.49", "4.5", "9")] \
        == [0, 0, 1, 1, 2, 3, 3, 4, 4]


def test_control_tokens_land_before_the_first_sonority_of_each_bar():
    # The key is repeated at every bar line, before the bar's density and polyphony.
    tokens = controls.tokens_with_controls(sonorities(), METRE, key="key:major")
    assert " ".join(tokens) == (
        "key:major density:1 poly:1 pitch:60 pitch:64 pitch:67 dur:1 pitch:72 dur:1 pitch:62 dur:1 "
        "hold:62 pitch:65 dur:1 "
        "key:major density:0 poly:1 hold:65 dur:1 pitch:48 dur:1 hold:48 pitch:60 pitch:64 dur:1 hold:48 dur:6 "
        "key:major density:0 poly:0 rest dur:2 "
        "key:major density:0 poly:0 pitch:70 dur:1")
    assert controls.strip_controls(tokens) == events.sonorities_to_tokens(sonorities())
    # Without a key the bars get density and polyphony only.
    assert [t for t in controls.tokens_with_controls(sonorities(), METRE) if t.startswith("key:")] == []
    assert [t for t in tokens if t != "key:major"] == controls.tokens_with_controls(sonorities(), METRE)


def test_a_piece_that_starts_late_gets_the_controls_of_its_first_bar():
    late = [(a + 5, b + 5, p) for a, b, p in [(0, 1, 60), (1, 2, 62), (2, 4, 64)]]
    tokens = prepare.tokens_for(record(late, []), tiny_config().data, controls=True)
    # Onsets at 5, 6, 7 in bar 2 (one note each); the 64 sounds on into bar 3, where no sonority starts.
    assert tokens == ["key:major", "density:1", "poly:0", "pitch:60", "dur:1", "pitch:62", "dur:1", "pitch:64",
                      "dur:2"]


def test_records_give_the_key_token_of_the_corpus_estimate():
    data = tiny_config().data
    assert prepare.tokens_for(record(), data, controls=True)[:3] == ["key:major", "density:1", "poly:1"]
    assert prepare.tokens_for(record(key="C# minor", shift=-4), data, controls=True)[0] == "key:minor"
    # Without normalisation the notes are not moved (shift 0) and the token names the estimated key.
    raw = tiny_config("data.normalize_key=false", "data.controls=true").data
    assert prepare.tokens_for(record(key="E- major", shift=0), raw, controls=True)[0] == "key:E-:major"
    assert prepare.tokens_for(record(key="a# minor", shift=0), raw, controls=True)[0] == "key:B-:minor"
    # No estimate (key analysis failed): no key token, the bars still get theirs.
    assert prepare.tokens_for(record(key="unknown"), data, controls=True)[:2] == ["density:1", "poly:1"]
    assert prepare.tokens_for(record(), data) == events.sonorities_to_tokens(sonorities())


def test_key_parsing_and_tokens():
    assert controls.parse_key("E- major") == (3, "major")
    assert controls.parse_key("f# minor") == (6, "minor")
    assert controls.parse_key("B-- major") == (9, "major")
    assert [controls.parse_key(k) for k in ("", "unknown", "H major", "C dorian", "C#- major")] == [None] * 5
    assert controls.key_token("G major", 5, normalize_key=True) == "key:major"
    assert controls.key_token("G major", 0, normalize_key=False) == "key:G:major"
    assert len(controls.all_tokens(True)) == 2 + 7 + 5
    assert len(controls.all_tokens(False)) == 24 + 7 + 5
    assert all(controls.valid_control(t) for t in controls.all_tokens(False) + controls.all_tokens(True))
    for bad in ("key:H:major", "key:dorian", "density:7", "density:01", "poly:5", "poly:-1", "density:"):
        assert not controls.valid_control(bad), bad


def test_key_tokens_with_a_tonic_move_with_transposition():
    assert events.transpose_token("key:B-:minor", 3) == "key:C#:minor"
    assert events.transpose_token("key:C:major", -1) == "key:B:major"
    assert events.transpose_token("key:major", 5) == "key:major"
    assert events.transpose_token("density:3", 5) == "density:3"


def test_requested_levels_by_name_or_bin():
    assert controls.requested_bin("density", "high") == 5
    assert controls.requested_bin("poly", " Low ") == 1
    assert controls.requested_bin("density", 6) == 6
    with pytest.raises(controls.ControlError, match=r"density level 'loud' does not exist \(expected low, medium, "
                                                    r"high or a bin 0\.\.6\)"):
        controls.requested_bin("density", "loud")
    with pytest.raises(controls.ControlError, match="poly level 5"):
        controls.requested_bin("poly", 5)
    with pytest.raises(controls.ControlError, match="unknown control 'tempo'"):
        controls.requested_bin("tempo", "low")


def test_controls_are_no_events_and_decoding_skips_them_without_repairs():
    tokens = controls.tokens_with_controls(sonorities(), METRE, key="key:major")
    plain = events.sonorities_to_tokens(sonorities())
    assert events.count_events(tokens) == events.count_events(plain) == len(sonorities())
    assert [tokens[i - 1] for i in events.event_ends(tokens)] == [t for t in plain if t.startswith("dur:")]
    report = events.DecodeReport()
    assert events.tokens_to_sonorities(tokens, report=report) == sonorities()
    assert report.repairs == {}
    assert not events.ends_event("density:2", "classic")
    classic_report = events.DecodeReport()
    assert len(events.tokens_to_sonorities(["key:major", "C4", "poly:1"], "classic", report=classic_report)) == 1
    assert classic_report.repairs == {}


def test_grammar_kind_control_is_never_allowed_and_does_not_move_the_state():
    tokens = ["<pad>", "<unk>", "<piece>", "pitch:60", "hold:60", "rest", "dur:1", "key:major", "density:3", "poly:2"]
    table = events.grammar_table(tokens, "note")
    assert table["kinds"][-3:] == ["control"] * 3
    grammar = sampling.Grammar(table)
    state = grammar.start(1)
    ids = {t: i for i, t in enumerate(tokens)}
    for token in ["<piece>", "key:major", "density:3", "pitch:60", "poly:2", "dur:1", "density:3"]:
        allowed = grammar.allowed(state)[0]
        assert not allowed[ids["key:major"]] and not allowed[ids["density:3"]] and not allowed[ids["poly:2"]]
        grammar.advance(state, [ids[token]])
    # The controls read along the way left the sonority walk as if they were not there.
    assert [tokens[i] for i in np.flatnonzero(grammar.allowed(state)[0])] == ["<piece>", "pitch:60", "hold:60", "rest"]
    # Rules "any" and the fallback of a state with nothing allowed never offer a control either.
    only_controls = sampling.Grammar({"rules": "note", "kinds": ["banned", "banned", "end", "control"],
                                      "pitches": [-1] * 4})
    assert only_controls.allowed(only_controls.start(1))[0].tolist() == [False, False, True, False]
    any_rules = sampling.Grammar({"rules": "any", "kinds": ["banned", "banned", "end", "event", "control"],
                                  "pitches": [-1] * 5})
    assert any_rules.allowed(any_rules.start(1))[0].tolist() == [False, False, True, True, False]


def test_vocabulary_keeps_every_control_and_checks_them():
    built = vocabulary_lib.build([["key:minor", "density:2", "poly:3", "pitch:60", "dur:1"]], min_count=2,
                                 always=controls.all_tokens(True))
    # Ordinary tokens seen fewer than min_count times go; every control stays, seen or not, after the others.
    assert built.tokens == ["<pad>", "<unk>", "<piece>"] + controls.all_tokens(True)
    assert vocabulary_lib.build([["density:2", "pitch:60", "dur:1"]], always=["density:2"]).tokens[3:] == [
        "pitch:60", "dur:1", "density:2"]
    data = built.to_json()
    assert data["grammar"]["kinds"][3:] == ["control"] * len(controls.all_tokens(True))
    assert vocabulary_lib.Vocabulary.from_json(data).tokens == built.tokens
    data["tokens"][3] = "key:lydian"
    with pytest.raises(vocabulary_lib.VocabularyError, match="'key:lydian'"):
        vocabulary_lib.Vocabulary.from_json(data)


def test_config_refuses_controls_for_classic_and_bad_dropout():
    from keras_music import config

    with pytest.raises(config.ConfigError, match=r"^data\.controls: expected false with data\.representation="
                                                 r"classic .*, got True$"):
        tiny_config("data.representation=classic", "data.controls=true")
    with pytest.raises(config.ConfigError, match=r"^data\.control_dropout: expected a probability in \[0, 1\], "
                                                 r"got 1\.5$"):
        tiny_config("data.control_dropout=1.5")
    with pytest.raises(config.ConfigError, match=r"^data\.control_token_dropout: expected a probability in \[0, 1\], "
                                                 r"got -0\.1$"):
        tiny_config("data.control_token_dropout=-0.1")
    # Off by default (configs/steer.yaml turns both on); the dropout rates are the steer preset's.
    assert config.Config().data.controls is False and config.Config().data.control_dropout == 0.5
    assert config.Config().data.control_token_dropout == 0.25 and config.Config().data.infill_rate == 0
    steer = config.load([os.path.join(REPO, "configs", "steer.yaml")], [])
    assert steer.data.controls is True and steer.data.infill_rate == 0.5
    assert tiny_config().data.controls is False and tiny_config().data.infill_rate == 0


# ----------------------------------------------------------------------------- the training stream

CONTROL_IDS = (10, 11, 12)  # ids 3..9 stand for ordinary tokens


def stream_pieces(count=12, length=300, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"piece{i}", [int(t) for t in rng.integers(3, 13, size=length)]) for i in range(count)]


def test_the_dropper_drops_only_controls_at_about_the_rate_and_exactly_for_a_seed():
    import tensorflow as tf

    from keras_music import dataset

    is_control = np.isin(np.arange(13), CONTROL_IDS)
    ids = np.array(stream_pieces(1, 20000)[0][1], np.int32)
    drop = dataset._control_dropper(is_control, 0.0, token_rate=0.5)
    kept = drop(tf.constant(ids), tf.constant(1234, tf.int64)).numpy()
    controls_in = int(is_control[ids].sum())
    controls_kept = int(is_control[kept].sum())
    # Every other token is kept, in order; about half of the controls go.
    np.testing.assert_array_equal(kept[~is_control[kept]], ids[~is_control[ids]])
    assert abs(controls_kept / controls_in - 0.5) < 0.02
    np.testing.assert_array_equal(drop(tf.constant(ids), tf.constant(1234, tf.int64)).numpy(), kept)
    assert not np.array_equal(drop(tf.constant(ids), tf.constant(1235, tf.int64)).numpy(), kept)
    # Rates 0 and 1 keep and drop every control.
    keep_all = dataset._control_dropper(is_control, 0.0, token_rate=0.0)
    assert len(keep_all(tf.constant(ids), tf.constant(1, tf.int64))) == len(ids)
    for rates in ((1.0, 0.0), (0.0, 1.0)):
        drop_all = dataset._control_dropper(is_control, rates[0], token_rate=rates[1])
        none = drop_all(tf.constant(ids), tf.constant(1, tf.int64)).numpy()
        np.testing.assert_array_equal(none, ids[~is_control[ids]])


def test_a_piece_trains_unconditioned_at_the_piece_rate_and_else_loses_controls_one_by_one():
    import tensorflow as tf

    from keras_music import dataset

    is_control = np.isin(np.arange(13), CONTROL_IDS)
    ids = np.array(stream_pieces(1, 400)[0][1], np.int32)
    controls_in = int(is_control[ids].sum())
    drop = dataset._control_dropper(is_control, 0.5, token_rate=0.25)
    left = [int(is_control[drop(tf.constant(ids), tf.constant(draw, tf.int64)).numpy()].sum()) for draw in range(400)]
    off = [n == 0 for n in left]
    # About half the draws leave the piece without any control (Performance RNN's "off")...
    assert 0.42 < np.mean(off) < 0.58
    # ...and the others keep about three quarters of its controls, never all of them dropped by chance here.
    kept = np.array([n for n in left if n]) / controls_in
    assert len(kept) == 400 - sum(off) and 0.72 < kept.mean() < 0.78
    # Ordinary tokens are never touched, and one draw gives one result.
    out = drop(tf.constant(ids), tf.constant(7, tf.int64)).numpy()
    np.testing.assert_array_equal(out[~is_control[out]], ids[~is_control[ids]])
    np.testing.assert_array_equal(out, drop(tf.constant(ids), tf.constant(7, tf.int64)).numpy())


def test_training_stream_drops_controls_seeded_and_anew_every_epoch(tmp_path):
    import tensorflow as tf

    from keras_music import dataset

    # tf.data's op seeds combine with the global seed, which training sets from train.seed.
    tf.random.set_seed(0)
    pieces = stream_pieces()
    dataset.write_shards(str(tmp_path), "train", pieces=pieces)
    files = dataset.shard_files(str(tmp_path), "train")
    is_control = np.isin(np.arange(13), CONTROL_IDS)
    lengths = [len(ids) for _, ids in pieces]
    shortest = [len(ids) - int(is_control[ids].sum()) for _, ids in pieces]
    steps = dataset.count_windows(shortest, 50, stride=50) // 2

    def epochs(rate, seed=0):
        config = tiny_config("data.seq_length=50", "data.controls=true", "data.control_dropout=0",
                             f"data.control_token_dropout={rate}", "train.batch_size=2", f"train.seed={seed}",
                             "train.epochs=2")
        data = dataset.training_dataset(files, config.data, train=config.train, span=dataset.EpochSpan(steps),
                                        tokens=dataset.TokenTables(is_control=is_control))
        x = np.stack([batch.numpy() for batch, _ in data])
        return x[:steps], x[steps:]

    first, second = epochs(0.5)
    again_first, again_second = epochs(0.5)
    np.testing.assert_array_equal(first, again_first)
    np.testing.assert_array_equal(second, again_second)
    assert not np.array_equal(first, second)
    # About half the controls are left in the windows (each epoch sees nearly all of the stream).
    total_controls = sum(int(is_control[ids].sum()) for _, ids in pieces)
    share = is_control[first].sum() / (total_controls * first.size / (sum(lengths) - total_controls / 2))
    assert 0.4 < share < 0.6
    assert is_control[first].sum() == 468  # exact for this seed
    # Dropping every control leaves exactly the ordinary tokens; rate 0 is the stream without dropout.
    assert not is_control[epochs(1.0)[0]].any()
    plain_config = tiny_config("data.seq_length=50", "train.batch_size=2", "train.seed=0", "train.epochs=1")
    plain = dataset.training_dataset(files, plain_config.data, train=plain_config.train, span=dataset.EpochSpan(steps))
    np.testing.assert_array_equal(epochs(0.0)[0], np.stack([batch.numpy() for batch, _ in plain]))


# ----------------------------------------------------------------------------- a run with controls

def test_a_tiny_run_with_controls_trains_and_ships_them_in_its_vocabulary(controls_run, tmp_path):
    from keras_music import dataset, run as run_lib, storage, train

    run_dir = controls_run  # conftest's: tiny_config("data.controls=true") on STEER_CHORALES, trained once per session
    metrics = run_lib.read_training_record(run_dir)
    assert np.isfinite(metrics["val_loss"])
    with open(os.path.join(run_dir, "vocab.json")) as handle:
        vocab = json.load(handle)
    kinds = dict(zip(vocab["tokens"], vocab["grammar"]["kinds"]))
    assert {t for t, k in kinds.items() if k == "control"} == set(controls.all_tokens(True))
    assert vocab["tokens"][-len(controls.all_tokens(True)):] == controls.all_tokens(True)
    info = storage.read_json(os.path.join(run_dir, "prepared.json"))
    assert info["settings"]["controls"] is True
    tokens = vocab["tokens"]
    train_pieces = dataset.read_pieces(dataset.shard_files(os.path.join(run_dir, "data"), "train"))
    counts = [sum(events.is_control(tokens[i]) for i in ids) for ids in train_pieces]
    assert info["control_tokens"]["train"] == counts and all(counts)
    assert all(tokens[ids[0]] in ("key:major", "key:minor") for ids in train_pieces)
    # The held-out pieces carry no control: the validation loss is the unconditioned one.
    validation = dataset.read_pieces(dataset.shard_files(os.path.join(run_dir, "data"), "validation"))
    assert validation and not any(events.is_control(tokens[i]) for ids in validation for i in ids)

    # The same data without controls: every ordinary token keeps its id, so the held-out shards are the
    # same bytes, and the training pieces are the controlled ones with their controls taken out.
    plain_dir = str(tmp_path / "plain")
    prepare.prepare(tiny_config(sources=STEER_CHORALES), plain_dir, show_progress=False, log=lambda *a: None)
    plain_vocab = storage.read_json(os.path.join(plain_dir, "vocab.json"))
    assert plain_vocab["tokens"] == tokens[:len(plain_vocab["tokens"])]
    assert "control" not in plain_vocab["grammar"]["kinds"]
    plain_info = storage.read_json(os.path.join(plain_dir, "prepared.json"))
    assert "controls" not in plain_info["settings"] and "control_tokens" not in plain_info
    for name in os.listdir(os.path.join(plain_dir, "data")):
        if name.startswith("validation-"):
            with open(os.path.join(plain_dir, "data", name), "rb") as a, \
                    open(os.path.join(run_dir, "data", name), "rb") as b:
                assert a.read() == b.read()
    plain_train = dataset.read_pieces(dataset.shard_files(os.path.join(plain_dir, "data"), "train"))
    assert [list(ids) for ids in plain_train] == [[i for i in ids if not events.is_control(tokens[i])]
                                                  for ids in train_pieces]
    # Epochs are cut from the pieces without their controls, so every epoch fills its batches.
    config = tiny_config("data.controls=true")
    assert train.shortest_train_lengths(config, info) == [len(ids) for ids in plain_train]
    assert train.shortest_train_lengths(tiny_config("data.controls=true", "data.control_dropout=0",
                                                    "data.control_token_dropout=0"), info) == info["lengths"]["train"]


def test_the_corpus_estimates_the_key_without_moving_the_notes_when_keys_are_not_normalised():
    from keras_music import corpus, midi

    # A D major scale and cadence, in 3/4 from quarter 6.
    scale = [62, 64, 66, 67, 69, 71, 73, 74, 69, 66, 62, 67, 69, 62]
    notes = [(i, i + 1, p) for i, p in enumerate(scale)] + [(14, 16, 62), (14, 16, 66), (14, 16, 69)]
    data = midi.write(notes, time_signatures=((0.0, 4, 4), (6.0, 3, 4)))
    plain = corpus.ParseSettings(normalize_key=False)
    keyed = corpus.ParseSettings(normalize_key=False, estimate_key=True)
    assert corpus.parse_bytes("d.mid", data, settings=plain)["key"] == ""
    record = corpus.parse_bytes("d.mid", data, settings=keyed)
    assert (record["key"], record["shift"]) == ("D major", 0)
    assert [n[2] for n in record["notes"]][:3] == [62, 64, 66]
    # The cache keeps records apart only where they differ; every other key is what it was.
    assert keyed.cache_key() != plain.cache_key()
    assert corpus.ParseSettings(estimate_key=True).cache_key() == corpus.ParseSettings().cache_key()
    tokens = prepare.tokens_for(record, tiny_config("data.normalize_key=false", "data.controls=true").data,
                                controls=True)
    assert tokens[:3] == ["key:D:major", "density:1", "poly:0"]
    # Bars [0, 4), [4, 6) (cut short by the 3/4 at quarter 6), [6, 9), [9, 12), [12, 15): 4, 2, 3, 3 and 3
    # onsets, one note each but the final chord of three (mean 5/3); nothing starts in [15, 18).
    assert [t for t in tokens if t.startswith(("density", "poly"))] == [
        "density:1", "poly:0", "density:0", "poly:0", "density:1", "poly:0", "density:1", "poly:0",
        "density:1", "poly:1"]


def test_prepared_json_control_counts_are_checked():
    from keras_music import run

    info = {"format": run.PREPARED_FORMAT, "pieces": {"train": 2, "validation": 1},
            "tokens": {"train": 30, "validation": 5}, "lengths": {"train": [10, 20], "validation": [5]},
            "control_tokens": {"train": [2, 3]}}
    assert run.check_prepared(info, "prepared.json") is info
    for bad in ({"train": [2]}, {"train": [11, 3]}, {"train": [2, -1]}, [2, 3]):
        with pytest.raises(run.RunError, match=r"^prepared\.json: \"control_tokens\"\.train must list one count per "
                                               r"training piece, each at most its length; "):
            run.check_prepared(dict(info, control_tokens=bad), "prepared.json")


def test_training_on_prepared_data_with_other_controls_is_refused(tmp_path):
    from keras_music import run, train

    prepared = str(tmp_path / "prepared")
    prepare.prepare(tiny_config(), prepared, show_progress=False, log=lambda *a: None)
    config = tiny_config("data.controls=true", sources=(prepared,))
    with pytest.raises(run.RunError, match=r"was prepared with data\.controls=False but this run has True; pass "
                                           r"--set data\.controls=false or prepare again$"):
        train.prepare_run(config, str(tmp_path / "run"), show_progress=False, log=lambda *a: None)
