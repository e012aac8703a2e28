"""Bar limits: the sampler keeps each bar fed density or polyphony controls in the requested bins."""

from fractions import Fraction

import numpy as np
import pytest

from keras_music import controls, defaults, events, generate
from keras_music.sampling import SamplingSettings
from keras_music.controls import ControlSettings

F = Fraction
TOKENS = ["<pad>", "<unk>", "<piece>", "rest", "pitch:60", "pitch:62", "pitch:64", "pitch:67", "hold:60", "hold:64",
          "dur:1/4", "dur:1/2", "dur:1", "dur:2", "dur:4", "density:3", "poly:2"]


def limits(density=None, polyphony=None, metre=(4, 4)):
    kinds = events.grammar_table(TOKENS)["kinds"]
    return controls.BarLimits(TOKENS, kinds, density=controls.parse_schedule(controls.DENSITY, density),
                              polyphony=controls.parse_schedule(controls.POLYPHONY, polyphony), time_signature=metre)


def feed(row, *tokens):
    kinds = events.grammar_table(TOKENS)["kinds"]
    for token in tokens:
        row.advance(kinds[TOKENS.index(token)], token)


def allowed(row):
    return {TOKENS[i] for i in np.flatnonzero(row.mask())}


def test_the_ranges_are_the_bins_of_preparation():
    for onsets in range(30):
        low, high = controls.onset_range(controls.density_bin(onsets))
        assert low <= onsets and (high is None or onsets <= high)
    assert [controls.onset_range(b) for b in range(controls.DENSITY_BINS)] == [
        (0, 2), (3, 4), (5, 6), (7, 8), (9, 11), (12, 15), (16, None)]
    for bin_ in range(controls.POLYPHONY_BINS):
        least, most = controls.pitch_range(bin_)
        assert controls.polyphony_bin(least) == bin_ and controls.polyphony_bin(most or 9) == bin_


def test_a_full_bar_takes_no_new_onset_but_may_rest_or_hold():
    row = limits(density="1")  # 3 or 4 onsets
    row.enter(0)
    feed(row, "pitch:60", "dur:1/2", "pitch:64", "dur:1/2", "pitch:62", "dur:1/2")
    assert {"pitch:60", "pitch:67"} <= allowed(row)
    feed(row, "pitch:60", "dur:1/2")
    assert row.onsets == 4
    now = allowed(row)
    assert not any(t.startswith("pitch:") for t in now) and {"rest", "hold:60", "hold:64"} <= now
    feed(row, "hold:60")  # a held chord is no onset, and may not become one
    assert not any(t.startswith("pitch:") for t in allowed(row))


def test_a_duration_that_leaves_too_little_room_for_the_bars_onsets_is_masked():
    row = limits(density="3")  # 7 or 8 onsets in 4/4, the shortest duration 1/4
    row.enter(0)
    feed(row, "pitch:60", "dur:1", "pitch:60", "dur:1", "pitch:62", "dur:1/2", "pitch:64", "dur:1/2")
    assert (row.time, row.onsets) == (3, 4)
    feed(row, "pitch:60")
    # Closing at 3 1/4 leaves 3/4 for 3 more starts: 5 + 3 = 8 >= 7; 1/2 leaves room for 2 (7); 1 for none.
    assert {t for t in allowed(row) if t.startswith("dur:")} == {"dur:1/4", "dur:1/2"}
    feed(row, "dur:1/2")
    # 5 onsets, 1/2 left: a rest (no onset) would leave at most 6; <piece> may not end the bar below 7.
    assert "rest" not in allowed(row) and "<piece>" not in allowed(row) and "pitch:60" in allowed(row)


def test_a_duration_may_not_carry_a_sonority_into_a_bar_it_would_leave_too_short():
    row = limits(density="2-:6")  # bar 1 on: 16 onsets or more, so bar 1 needs all of its 4 quarters
    row.enter(0)  # bar 0 has no density asked
    feed(row, "pitch:60", "dur:2", "pitch:60", "dur:1")
    feed(row, "pitch:64")
    # From 3: dur 1 ends on the bar line (bar 1 keeps 4 quarters, 16 starts); longer ones cut into it.
    assert {t for t in allowed(row) if t.startswith("dur:")} == {"dur:1/4", "dur:1/2", "dur:1"}


def test_each_onset_of_a_polyphony_bar_has_the_bins_pitch_count():
    row = limits(polyphony="2")  # three notes at each onset
    row.enter(0)
    # Between sonorities: a pitch with fewer than two pitch tokens above it cannot begin a three-note chord.
    starts = allowed(row)
    assert {"pitch:60", "pitch:62"} <= starts and not {"pitch:64", "pitch:67"} & starts
    feed(row, "pitch:60", "pitch:62")
    assert not {t for t in allowed(row) if t.startswith("dur:")}  # two notes: not yet
    feed(row, "pitch:67")
    now = allowed(row)
    assert {t for t in now if t.startswith("dur:")} and not {t for t in now if t.startswith(("pitch:", "hold:"))}
    feed(row, "dur:1", "hold:60")  # a chord of held notes is no onset: it may close short
    assert "dur:1" in allowed(row)


def test_bars_after_the_entered_one_are_free_until_their_own_turn():
    row = limits(density="1:3")
    row.enter(0)
    feed(row, *["pitch:60", "dur:1/2"] * 8)
    row.enter(1)  # the schedule says nothing for bar 2: the limits let everything through
    assert row.onset_limits is None
    feed(row, "pitch:60")
    assert {t for t in allowed(row) if t.startswith("dur:")} == {"dur:1/4", "dur:1/2", "dur:1", "dur:2", "dur:4"}


def reachable_density_bins(vocabulary, metre=(4, 4)):
    shortest = min(Fraction(t[4:]) for t in vocabulary if t.startswith("dur:"))
    bar = controls.bar_length(metre)
    return [b for b in range(controls.DENSITY_BINS) if controls.onset_range(b)[0] * shortest <= bar]


def test_on_the_tiny_run_every_fed_bar_lands_in_its_bin_and_without_limits_not(controls_run):
    """Every density and polyphony bin the vocabulary can write, asked for in every bar: with the limits every
    complete fed bar is in the bin (measured as preparation measures bars) and the tokens need no repair;
    the model alone misses some."""
    from keras_music.evaluate_controls import bar_outcomes

    generator = generate.Generator(controls_run, log=lambda message: None)
    tokens = generator.vocabulary.tokens
    pitches = sum(t.startswith("pitch:") for t in tokens)
    cases = [(controls.DENSITY, "density", b) for b in reachable_density_bins(tokens)]
    cases += [(controls.POLYPHONY, "polyphony", b) for b in range(controls.POLYPHONY_BINS)
              if controls.pitch_range(b)[0] <= pitches]
    assert len(cases) >= 9, cases  # the tiny vocabulary reaches most bins: the test is not vacuous
    outcomes = {True: [], False: []}
    for kind, argument, value in cases:
        for limits_on in (True, False):
            pieces = generator.generate(3, SamplingSettings(length=40, temperature=1.0), seed=5, primer_tokens=[],
                                        controls=ControlSettings(**{argument: str(value)}, bar_limits=limits_on))
            for piece in pieces:
                assert piece.repairs == {}, piece.repairs
                assert piece.settings["controls"]["bar_limits"] is limits_on
                pairs = bar_outcomes(piece, kind)
                outcomes[limits_on] += pairs
                if limits_on:
                    assert all(wanted == got for wanted, got in pairs), (kind, value, pairs)
    assert len(outcomes[True]) >= 40
    assert np.mean([w == g for w, g in outcomes[False]]) < 0.9


def test_the_command_line_can_turn_the_limits_off(controls_run, tmp_path):
    import json
    import os

    for flags, limited in (([], True), (["--no-bar-limits"], False)):
        out = str(tmp_path / str(limited))
        with pytest.raises(SystemExit) as exit_info:
            generate.main(["--run-dir", controls_run, "--density", "high", "--length", "24", "--primer-tokens", "",
                           "--quiet", "--audio", "none", "--out", out, *flags])
        assert exit_info.value.code == 0
        record = json.loads(open(os.path.join(out, "sample-01.json")).read())
        assert record["settings"]["controls"]["bar_limits"] is limited


@pytest.mark.parametrize("argv", [["--help"]])
def test_help_names_the_flag(argv, capsys):
    with pytest.raises(SystemExit):
        generate.parse_args(argv)
    assert "--no-bar-limits" in capsys.readouterr().out


def test_the_studio_passes_bar_limits_and_key_guidance_and_refuses_bad_ones(controls_run, tmp_path):
    from test_studio import Server, call, make_studio

    server = Server(make_studio(controls_run, tmp_path))
    try:
        generator = generate.Generator(controls_run, log=lambda message: None)
        for limits in (True, False):
            body = {"seed": 9, "length": 24, "primer": "none", "density": "5", "bar_limits": limits}
            status, piece = call(server, "/api/generate", body)
            assert status == 200, piece
            assert piece["controls"]["bar_limits"] is limits
            status, record = call(server, piece["urls"]["json"])
            ours = generator.generate(seed=9, primer_tokens=[], sampling=SamplingSettings(length=24), controls=ControlSettings(density="5", bar_limits=limits))[0]
            assert record["ids"] == ours.ids
        status, answer = call(server, "/api/generate", {"length": 8, "density": "high", "bar_limits": "no"})
        assert status == 400 and "bar_limits must be true or false" in answer["error"], answer
        # Key guidance and the key prior the same way: the studio's piece is the generator's with those weights.
        seen = []
        for guidance, prior in ((0, None), (4.5, None), (0, 0), (0, 3.5), (2, 1)):
            body = {"seed": 9, "length": 24, "primer": "none", "key": "A minor", "key_guidance": guidance}
            if prior is not None:
                body["key_prior"] = prior
            status, piece = call(server, "/api/generate", body)
            expected_prior = defaults.KEY_PRIOR if prior is None else prior
            assert status == 200 and piece["controls"]["key_guidance"] == guidance, piece
            assert piece["controls"]["key_prior"] == expected_prior, piece
            status, record = call(server, piece["urls"]["json"])
            ours = generator.generate(seed=9, primer_tokens=[], sampling=SamplingSettings(length=24),
                                      controls=ControlSettings(key="A minor", key_guidance=guidance,
                                                               key_prior=expected_prior))[0]
            assert record["ids"] == ours.ids
            seen.append(tuple(ours.ids))
        assert len(set(seen)) > 1  # the weights change the pieces
        for name in ("key_guidance", "key_prior"):
            for bad in ("strong", -1, True, [2]):
                status, answer = call(server, "/api/generate", {"length": 8, "key": "minor", name: bad})
                assert status == 400 and f"{name} must be a number >= 0" in answer["error"], answer
    finally:
        server.stop()
