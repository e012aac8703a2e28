"""Tests for keras_music.sampling with literal probability vectors."""

import numpy as np
import pytest

from keras_music import events, sampling
from keras_music.sampling import greedy, make_rng, sample_next, validate_sampling

P = [0.5, 0.3, 0.15, 0.05]
DRAWS = 20000


def draw_many(row, **kwargs):
    """Samples DRAWS ids from one probability row by batching copies of it."""
    batch = np.tile(np.asarray(row, dtype=np.float64), (DRAWS, 1))
    return sample_next(batch, make_rng(kwargs.pop("seed", 0)), **kwargs)


def frequencies(ids, vocabulary_size):
    return np.bincount(ids, minlength=vocabulary_size) / len(ids)


def entropy(freq):
    nonzero = freq[freq > 0]
    return float(-(nonzero * np.log(nonzero)).sum())


def test_output_shape_and_dtype():
    ids = sample_next([P, P[::-1]], make_rng(1))
    assert ids.shape == (2,)
    assert ids.dtype == np.int64


def test_unfiltered_frequencies_match_probabilities():
    freq = frequencies(draw_many(P), 4)
    np.testing.assert_allclose(freq, P, atol=0.015)


def test_top_p_keeps_exactly_the_nucleus():
    ids = draw_many(P, top_p=0.8)
    assert set(ids.tolist()) == {0, 1}
    freq = frequencies(ids, 4)
    np.testing.assert_allclose(freq[:2], [0.625, 0.375], atol=0.015)


def test_top_p_just_above_a_boundary_takes_the_next_token():
    assert set(draw_many(P, top_p=0.81).tolist()) == {0, 1, 2}


def test_tiny_top_p_keeps_the_top_token():
    assert set(draw_many(P, top_p=1e-6).tolist()) == {0}


def test_top_k_keeps_the_k_most_probable():
    ids = draw_many(P, top_k=2)
    assert set(ids.tolist()) == {0, 1}
    np.testing.assert_allclose(frequencies(ids, 4)[:2], [0.625, 0.375], atol=0.015)


def test_top_k_at_or_above_vocabulary_is_off():
    a = draw_many(P, top_k=4, seed=5)
    b = draw_many(P, top_k=100, seed=5)
    c = draw_many(P, seed=5)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, c)


def test_top_k_and_top_p_combine():
    # top_k=3 renormalises {0,1,2} to [0.526, 0.316, 0.158]; top_p=0.8 then
    # needs 0.526 + 0.316 = 0.842 -> {0, 1}.
    assert set(draw_many(P, top_k=3, top_p=0.8).tolist()) == {0, 1}


def test_greedy_paths_agree_with_argmax():
    rows = np.array([[0.1, 0.2, 0.6, 0.1], [0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.1, 0.9]])
    expected = [2, 0, 3]
    np.testing.assert_array_equal(greedy(rows), expected)
    np.testing.assert_array_equal(sample_next(rows, make_rng(0), temperature=0), expected)
    np.testing.assert_array_equal(
        sample_next(rows, make_rng(0), temperature=0, top_k=3, top_p=0.5), expected
    )
    np.testing.assert_array_equal(sample_next(rows, make_rng(0), top_k=1), expected)
    np.testing.assert_array_equal(
        sample_next(rows, make_rng(0), temperature=5.0, top_k=1), expected
    )


def test_greedy_ties_go_to_lowest_id():
    rows = [[0.1, 0.4, 0.4, 0.1], [0.25, 0.25, 0.25, 0.25]]
    np.testing.assert_array_equal(greedy(rows), [1, 0])
    np.testing.assert_array_equal(sample_next(rows, make_rng(0), temperature=0), [1, 0])
    np.testing.assert_array_equal(sample_next(rows, make_rng(0), top_k=1), [1, 0])


def test_very_low_temperature_is_argmax():
    ids = draw_many([0.3, 0.31, 0.29, 0.1], temperature=1e-4)
    assert set(ids.tolist()) == {1}
    ids = draw_many([0.3, 0.31, 0.29, 0.1], temperature=1e-300)
    assert set(ids.tolist()) == {1}


def test_high_temperature_flattens():
    low = entropy(frequencies(draw_many(P, temperature=0.5), 4))
    base = entropy(frequencies(draw_many(P, temperature=1.0), 4))
    high = entropy(frequencies(draw_many(P, temperature=3.0), 4))
    assert low < base < high
    assert high > 0.95 * np.log(4)


def test_zeros_are_never_sampled():
    row = [0.0, 0.5, 0.0, 0.5, 0.0]
    for kwargs in ({}, {"temperature": 50.0}, {"temperature": 1e6}, {"top_p": 0.99}):
        assert set(draw_many(row, **kwargs).tolist()) == {1, 3}
    assert set(draw_many([1.0, 0.0, 0.0], temperature=100.0).tolist()) == {0}


def test_unnormalised_rows_are_renormalised():
    ids = draw_many([2.0, 2.0, 0.0, 0.0])
    np.testing.assert_allclose(frequencies(ids, 4)[:2], [0.5, 0.5], atol=0.015)
    assert set(draw_many([5.0, 3.0, 1.5, 0.5], top_p=0.8).tolist()) == {0, 1}


def test_same_seed_gives_same_draws():
    rows = np.tile(P, (64, 1))
    a = sample_next(rows, make_rng(42), temperature=0.9, top_k=3)
    b = sample_next(rows, make_rng(42), temperature=0.9, top_k=3)
    c = sample_next(rows, make_rng(43), temperature=0.9, top_k=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_one_uniform_per_row_inverse_cdf():
    rng = make_rng(7)
    uniforms = [sampling.SplitMix64(7 + row).random() for row in range(5)]
    ids = sample_next(np.tile(P, (5, 1)), rng)
    expected = np.searchsorted(np.cumsum(P), uniforms, side="right")
    np.testing.assert_array_equal(ids, expected)
    # Each row's stream moved on by exactly one uniform.
    seconds = []
    for row in range(3):
        stream = sampling.SplitMix64(7 + row)
        stream.random()
        seconds.append(stream.random())
    np.testing.assert_array_equal(rng.random(3), seconds)


def test_numpy_rng_draws_one_batch_of_uniforms():
    rng = make_rng(7, "numpy")
    uniforms = np.random.default_rng(7).random(5)
    ids = sample_next(np.tile(P, (5, 1)), rng)
    np.testing.assert_array_equal(ids, np.searchsorted(np.cumsum(P), uniforms, side="right"))
    np.testing.assert_array_equal(rng.random(3), np.random.default_rng(7).random(8)[5:])


def test_splitmix64_gives_the_published_values():
    # export/README.md, "Random numbers: SplitMix64" (Rosetta Code's values).
    rng = sampling.SplitMix64(1234567)
    assert [rng.next_u64() for _ in range(5)] == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                                                  4593380528125082431, 16408922859458223821]
    rng = sampling.SplitMix64(987654321)
    counts = np.bincount([int(5 * rng.random()) for _ in range(100_000)], minlength=5)
    assert counts.tolist() == [20027, 19892, 20073, 19978, 20030]
    assert sampling.SplitMix64(0).next_u64() == 0xE220A8397B1DCDAF
    assert sampling.SplitMix64(-1).next_u64() == sampling.SplitMix64(2 ** 64 - 1).next_u64()
    rng, alone = sampling.SplitMix64(5), sampling.SplitMix64(5)
    np.testing.assert_array_equal(rng.random(3), [alone.random() for _ in range(3)])


def test_row_streams_are_splitmix64_of_seed_plus_row_modulo_2_64():
    streams = sampling.RowStreams(2 ** 64 - 2)
    first, second = streams.random(4), streams.random(2)
    for row in range(4):
        alone = sampling.SplitMix64((2 ** 64 - 2 + row) % 2 ** 64)
        assert first[row] == alone.random()
        if row < 2:
            assert second[row] == alone.random()
    np.testing.assert_array_equal(sampling.RowStreams(1234567).next_u64(1), [6457827717110365317])
    assert sampling.RowStreams(3).random() == sampling.SplitMix64(3).random()
    # A row draws the same numbers in any batch: rows 1.. of seed 7 are rows 0.. of seed 8.
    np.testing.assert_array_equal(sampling.RowStreams(7).random(6)[1:], sampling.RowStreams(8).random(5))


def test_a_row_samples_what_it_samples_alone_with_its_own_seed():
    rows = np.random.default_rng(0).dirichlet(np.ones(12), size=6)
    together = sample_next(rows, make_rng(40), temperature=1.2, top_k=8, top_p=0.95)
    alone = [sample_next(row[None], make_rng(40 + i), temperature=1.2, top_k=8, top_p=0.95)[0]
             for i, row in enumerate(rows)]
    np.testing.assert_array_equal(together, alone)


def test_row_result_depends_only_on_its_row_and_position():
    rows = np.array([P, [0.05, 0.15, 0.3, 0.5], [0.25] * 4])
    together = sample_next(rows, make_rng(3), temperature=1.3, top_p=0.9)
    changed = rows.copy()
    changed[1] = [1.0, 0.0, 0.0, 0.0]
    other = sample_next(changed, make_rng(3), temperature=1.3, top_p=0.9)
    assert together[0] == other[0] and together[2] == other[2]
    assert other[1] == 0


def test_batch_of_different_rows_respects_each_support():
    rows = np.array(
        [
            [0.5, 0.3, 0.15, 0.05, 0.0],
            [0.0, 0.0, 0.1, 0.2, 0.7],
            [0.2, 0.2, 0.2, 0.2, 0.2],
            [0.0, 0.9, 0.0, 0.1, 0.0],
        ]
    )
    batch = np.tile(rows, (5000, 1))
    ids = sample_next(batch, make_rng(11), top_p=0.8).reshape(5000, 4)
    assert set(ids[:, 0].tolist()) == {0, 1}
    assert set(ids[:, 1].tolist()) == {3, 4}
    # Equal mass: ranking ties go to the lowest ids, 4 * 0.2 = 0.8 reaches top_p.
    assert set(ids[:, 2].tolist()) == {0, 1, 2, 3}
    assert set(ids[:, 3].tolist()) == {1}


def test_banned_ids_never_appear():
    row = [0.4, 0.3, 0.2, 0.1]
    ids = draw_many(row, banned=[0, 2])
    assert set(ids.tolist()) == {1, 3}
    np.testing.assert_allclose(frequencies(ids, 4)[[1, 3]], [0.75, 0.25], atol=0.015)
    assert set(draw_many(row, banned=np.array([0]), top_k=1).tolist()) == {1}
    np.testing.assert_array_equal(greedy([row], banned=[0]), [1])
    ids = sample_next([row], make_rng(0), temperature=0, banned=[0, 1])
    np.testing.assert_array_equal(ids, [2])


def test_fully_banned_mass_falls_back_to_best_allowed():
    rows = [[0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.6, 0.0, 0.0, 0.4]]
    ids = sample_next(rows, make_rng(0), banned=[0, 1])
    np.testing.assert_array_equal(ids, [2, 2, 3])
    np.testing.assert_array_equal(greedy(rows, banned=[0, 1]), [2, 2, 3])


def test_make_rng_is_splitmix64_by_default_or_numpys():
    assert isinstance(make_rng(0), sampling.RowStreams)
    assert make_rng(5).random() == sampling.SplitMix64(5).random()
    assert isinstance(make_rng(0, "numpy"), np.random.Generator)
    assert make_rng(5, "numpy").random() == np.random.default_rng(5).random()
    assert isinstance(make_rng(None), sampling.RowStreams)
    with pytest.raises(ValueError, match=r"^rng must be one of splitmix64, numpy, got 'mt'$"):
        make_rng(0, "mt")
    with pytest.raises(ValueError, match=r"^seed must be an integer \(taken modulo 2\^64\), got 1.5$"):
        make_rng(1.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1}, "temperature must be >= 0 (0 means greedy), got -1"),
        ({"temperature": float("nan")}, "got nan"),
        ({"temperature": float("inf")}, "got inf"),
        ({"temperature": "hot"}, "got 'hot'"),
        ({"top_k": -2}, "top_k must be an integer >= 0 (0 means off), got -2"),
        ({"top_k": 2.5}, "got 2.5"),
        ({"top_p": 0}, "top_p must be in (0, 1] (1 means off), got 0"),
        ({"top_p": 1.5}, "got 1.5"),
        ({"top_p": -0.1}, "got -0.1"),
    ],
)
def test_validation_errors_name_the_bad_value(kwargs, message):
    settings = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **kwargs}
    with pytest.raises(ValueError) as error:
        validate_sampling(**settings)
    assert message in str(error.value)
    with pytest.raises(ValueError) as error:
        sample_next([P], make_rng(0), **settings)
    assert message in str(error.value)


def test_validation_accepts_edges():
    assert validate_sampling(0, 0, top_p=1.0) is None and validate_sampling(2.5, np.int64(3), top_p=1e-9) is None
    # Greedy with nothing cut off, and a nucleus so small that only the top token is left.
    np.testing.assert_array_equal(sample_next([P, P[::-1]], make_rng(0), temperature=0, top_k=0, top_p=1.0), [0, 3])
    np.testing.assert_array_equal(sample_next([P, P[::-1]], make_rng(0), temperature=2.5, top_k=np.int64(3),
                                              top_p=1e-9), [0, 3])


@pytest.mark.parametrize(
    "probabilities, banned, message",
    [
        (P, None, "shape (4,)"),
        ([[0.5, -0.1]], None, "got -0.1"),
        ([[0.5, float("nan")]], None, "got nan"),
        ([P], [4], "banned token ids must be in [0, 4), got 4"),
        ([P], [0.5], "integer token ids"),
        ([P], [0, 1, 2, 3], "banned covers all 4 token ids"),
    ],
)
def test_bad_inputs_raise(probabilities, banned, message):
    with pytest.raises(ValueError) as error:
        sample_next(probabilities, make_rng(0), banned=banned)
    assert message in str(error.value)


# ----------------------------------------------------------------------------- grammar

GRAMMAR_TOKENS = ["<pad>", "<unk>", "<piece>", "pitch:60", "pitch:64", "pitch:67", "hold:60", "hold:64",
                  "rest", "dur:1", "dur:1/2", "dur:0", "bogus"]


def grammar_and_ids():
    table = events.grammar_table(GRAMMAR_TOKENS, "note")
    return sampling.Grammar(table), {t: i for i, t in enumerate(GRAMMAR_TOKENS)}


def allowed_tokens(grammar, state, row=0, **kwargs):
    return [GRAMMAR_TOKENS[i] for i in np.flatnonzero(grammar.allowed(state, **kwargs)[row])]


def test_grammar_table_kinds_and_pitches():
    table = events.grammar_table(GRAMMAR_TOKENS, "note")
    assert table["rules"] == "note"
    assert table["kinds"] == ["banned", "banned", "end", "pitch", "pitch", "pitch", "hold", "hold", "rest",
                              "dur", "dur", "banned", "banned"]
    assert table["pitches"] == [-1, -1, -1, 60, 64, 67, 60, 64, -1, -1, -1, -1, -1]
    assert set(table["kinds"]) == set(events.GRAMMAR_KINDS) - {"event", "control", "fim"}  # test_controls, test_infill
    classic = events.grammar_table(["<pad>", "<unk>", "<piece>", "C4", "0.4.7"], "classic")
    assert classic == {"rules": "any", "kinds": ["banned", "banned", "end", "event", "event"],
                       "pitches": [-1] * 5}


def test_grammar_walks_a_sonority():
    grammar, ids = grammar_and_ids()
    state = grammar.start(1)
    # Between sonorities: pitches, rest, the end; no hold (nothing sounded), no duration.
    assert allowed_tokens(grammar, state) == ["<piece>", "pitch:60", "pitch:64", "pitch:67", "rest"]
    grammar.advance(state, [ids["pitch:60"]])
    # Inside a chord: only higher pitches (no hold: nothing sounded before) and durations.
    assert allowed_tokens(grammar, state) == ["pitch:64", "pitch:67", "dur:1", "dur:1/2"]
    grammar.advance(state, [ids["pitch:64"]])
    grammar.advance(state, [ids["dur:1"]])
    # 60 and 64 sounded: both may be held, and the end is allowed again.
    assert allowed_tokens(grammar, state) == ["<piece>", "pitch:60", "pitch:64", "pitch:67", "hold:60",
                                              "hold:64", "rest"]
    grammar.advance(state, [ids["hold:64"]])
    assert allowed_tokens(grammar, state) == ["pitch:67", "dur:1", "dur:1/2"]
    assert allowed_tokens(grammar, state, closing=np.array([True])) == ["dur:1", "dur:1/2"]
    grammar.advance(state, [ids["dur:1/2"]])
    grammar.advance(state, [ids["rest"]])
    assert allowed_tokens(grammar, state) == ["dur:1", "dur:1/2"]
    grammar.advance(state, [ids["dur:1"]])
    # After a rest nothing sounds: no holds.
    assert allowed_tokens(grammar, state) == ["<piece>", "pitch:60", "pitch:64", "pitch:67", "rest"]


def test_grammar_rows_are_independent_and_inactive_rows_stay():
    grammar, ids = grammar_and_ids()
    state = grammar.start(2)
    grammar.advance(state, [ids["pitch:67"], ids["rest"]], active=np.array([True, False]))
    assert allowed_tokens(grammar, state, row=0) == ["dur:1", "dur:1/2"]
    assert allowed_tokens(grammar, state, row=1) == ["<piece>", "pitch:60", "pitch:64", "pitch:67", "rest"]


def test_any_rules_allow_all_but_banned():
    grammar = sampling.Grammar(events.grammar_table(["<pad>", "<unk>", "<piece>", "C4", "0.4.7"], "classic"))
    state = grammar.start(3)
    grammar.advance(state, [3, 4, 2])
    np.testing.assert_array_equal(grammar.allowed(state), [[False, False, True, True, True]] * 3)


def test_sample_next_only_draws_allowed_ids_and_renormalises():
    probabilities = np.array([[0.7, 0.1, 0.1, 0.1]] * 2)
    allowed = np.array([[False, True, True, False], [True, False, False, False]])
    rng = sampling.make_rng(0)
    draws = np.array([sampling.sample_next(probabilities, rng, temperature=1.0, allowed=allowed) for _ in range(2000)])
    assert set(draws[:, 0]) == {1, 2}
    assert abs(np.mean(draws[:, 0] == 1) - 0.5) < 0.05
    assert set(draws[:, 1]) == {0}
    np.testing.assert_array_equal(sampling.greedy(probabilities, allowed=allowed), [1, 0])
    with pytest.raises(ValueError, match="row 0 allows no token"):
        sampling.sample_next(probabilities, rng, allowed=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="boolean array of shape"):
        sampling.sample_next(probabilities, rng, allowed=np.ones((1, 4), bool))
