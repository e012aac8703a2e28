"""Tests for keras_music.ngram: Kneser-Ney n-gram baseline."""

import math

import numpy as np
import pytest

from keras_music import ngram
from keras_music.ngram import NGramModel, _estimate_discounts, best_order, evaluate_orders, fit_orders

ORDERS = (1, 2, 3, 4, 5)


def pattern_pieces(pattern, pieces, length):
    """Pieces that each repeat `pattern` from its start for `length` tokens."""
    return [[pattern[i % len(pattern)] for i in range(length)] for _ in range(pieces)]


def random_pieces(seed, vocabulary_size, pieces, length):
    rng = np.random.default_rng(seed)
    # A sparse random Markov chain: some structure, many unseen n-grams.
    transitions = rng.dirichlet(np.full(vocabulary_size, 0.1), size=vocabulary_size)
    cumulative = np.cumsum(transitions, axis=1)
    out = []
    for _ in range(pieces):
        tokens = [int(rng.integers(vocabulary_size))]
        for u in rng.random(length - 1):
            row = cumulative[tokens[-1]]
            token = int(np.searchsorted(row, u * row[-1], side="right"))
            tokens.append(min(token, vocabulary_size - 1))
        out.append(tokens)
    return out


# --------------------------------------------------------------- literal values
# Corpus [[0, 1, 0, 1]], vocabulary 3, fixed discount 0.75.
#
# Order 1 (raw counts c(0)=2, c(1)=2, total 4, left = 2 * 0.75 = 1.5):
#   P(0) = P(1) = (2 - 0.75 + 1.5 / 3) / 4 = 0.4375, P(2) = 0.5 / 4 = 0.125.
#
# Order 2, padded [BOS, 0, 1, 0, 1]; bigrams (BOS,0):1, (0,1):2, (1,0):1.
#   Unigram continuation counts: 0 follows {BOS, 1} -> 2, 1 follows {0} -> 1;
#   total 3, left 1.5: P1 = [(1.25 + 0.5) / 3, (0.25 + 0.5) / 3, 0.5 / 3]
#                        = [7/12, 1/4, 1/6].
#   Context (BOS,) raw {0:1}: P(.|start) = [0.25 + 0.75 * 7/12, 0.75 / 4, 0.75 / 6]
#                                      = [0.6875, 0.1875, 0.125].
#   Context (0,) {1:2}, total 2, left 0.75:
#     P(.|0) = [0.75 * 7/12 / 2, (1.25 + 0.75 / 4) / 2, 0.75 / 6 / 2]
#            = [0.21875, 0.71875, 0.0625].
#   Context (1,) {0:1}: same as the start context, [0.6875, 0.1875, 0.125].
#   Context (2,) unseen: the unigram, [7/12, 1/4, 1/6].


def tiny_model(order):
    return NGramModel(order, 3, discount=0.75).fit([[0, 1, 0, 1]])


def test_unigram_literal_values():
    model = tiny_model(1)
    np.testing.assert_allclose(model.probabilities([]), [0.4375, 0.4375, 0.125], rtol=1e-12)
    np.testing.assert_allclose(model.probabilities([0, 1, 2]), [0.4375, 0.4375, 0.125], rtol=1e-12)


def test_bigram_literal_values():
    model = tiny_model(2)
    np.testing.assert_allclose(model.probabilities([]), [0.6875, 0.1875, 0.125], rtol=1e-12)
    np.testing.assert_allclose(model.probabilities([0]), [0.21875, 0.71875, 0.0625], rtol=1e-12)
    np.testing.assert_allclose(model.probabilities([0, 1]), [0.6875, 0.1875, 0.125], rtol=1e-12)
    np.testing.assert_allclose(model.probabilities([2]), [7 / 12, 1 / 4, 1 / 6], rtol=1e-12)
    np.testing.assert_allclose(
        model.log_probs([0, 1, 0, 1]), np.log([0.6875, 0.71875, 0.6875, 0.71875]), rtol=1e-12
    )
    np.testing.assert_allclose(model.log_probs([2, 2]), np.log([0.125, 1 / 6]), rtol=1e-12)


def test_modified_discounts_from_count_of_counts():
    # Unigram counts: ten ids once, five twice, three three times, two four times
    # -> n1=10, n2=5, n3=3, n4=2, Y = 10 / 20 = 0.5,
    # D1 = 1 - 2 * 0.5 * 5/10 = 0.5, D2 = 2 - 3 * 0.5 * 3/5 = 1.1,
    # D3+ = 3 - 4 * 0.5 * 2/3 = 5/3.
    piece = list(range(10)) + list(range(10, 15)) * 2 + list(range(15, 18)) * 3 + [18, 19] * 4
    model = NGramModel(1, 21).fit([piece])
    np.testing.assert_allclose(model.discounts[1], (0.5, 1.1, 5 / 3), rtol=1e-12)
    total = 37
    left = 10 * 0.5 + 5 * 1.1 + 5 * (5 / 3)
    probabilities = model.probabilities([])
    assert probabilities[0] == pytest.approx((1 - 0.5 + left / 21) / total, rel=1e-12)
    assert probabilities[10] == pytest.approx((2 - 1.1 + left / 21) / total, rel=1e-12)
    assert probabilities[18] == pytest.approx((4 - 5 / 3 + left / 21) / total, rel=1e-12)
    assert probabilities[20] == pytest.approx(left / 21 / total, rel=1e-12)


# ----------------------------------------------------------------- normalisation


@pytest.mark.parametrize("discount", [None, 0.75, 1.0])
@pytest.mark.parametrize("order", ORDERS)
def test_probabilities_sum_to_one(order, discount):
    vocabulary_size = 12
    # Ids 10 and 11 never occur in training.
    train = random_pieces(0, 10, 8, 60)
    model = NGramModel(order, vocabulary_size, discount=discount).fit(train)
    histories = [
        [],
        [3],
        train[0][:4],
        train[1][:25],
        [11],
        [10, 11, 10, 11, 10],
        [1, 2, 11, 3],
        train[2][:7] + [10],
    ]
    for history in histories:
        p = model.probabilities(history)
        assert p.shape == (vocabulary_size,)
        assert abs(p.sum() - 1.0) < 1e-9
        assert np.all(p > 0)


def test_unseen_token_gets_positive_probability():
    model = NGramModel(3, 10).fit(pattern_pieces([0, 1, 2, 3], 3, 40))
    assert model.probabilities([0, 1])[9] > 0
    log_probs = model.log_probs([0, 1, 9, 9, 5])
    assert log_probs.shape == (5,)
    assert np.all(np.isfinite(log_probs))
    assert np.all(log_probs < 0)


# ------------------------------------------------------------------ behaviour


def test_deterministic_pattern_perplexity():
    pattern = list(range(8))
    train = pattern_pieces(pattern, 5, 200)
    held_out = pattern_pieces(pattern, 2, 100)
    results = {
        order: NGramModel(order, 8).fit(train).evaluate(held_out) for order in ORDERS
    }
    assert results[1]["perplexity"] > 7
    for order in ORDERS[1:]:
        assert results[order]["perplexity"] < 1.05
        assert results[order]["accuracy"] == 1.0
        assert results[order]["perplexity"] < results[1]["perplexity"]


@pytest.mark.parametrize("discount", [None, 0.75])
def test_higher_orders_do_not_worsen_training_perplexity(discount):
    # Orders 2-4 each resolve more of the pattern; only order 5 sees far
    # enough back (2 0 1 0 -> 3, 3 0 1 0 -> 2) to make it deterministic:
    # 0 1 0 2 0 1 0 3 | 0 1 0 2 ...
    train = pattern_pieces([0, 1, 0, 2, 0, 1, 0, 3], 4, 160)
    perplexities = [
        NGramModel(order, 4, discount=discount).fit(train).evaluate(train)["perplexity"]
        for order in ORDERS
    ]
    for lower, higher in zip(perplexities, perplexities[1:]):
        assert higher <= lower * (1 + 1e-9)
    assert perplexities[4] < 1.01 < 1.1 < perplexities[3]


def test_first_token_is_predicted_from_the_piece_start():
    # Every piece starts with 5, which is otherwise only seen after 4.
    train = [[5, 1, 2, 3, 4, 5, 1, 2], [5, 2, 3, 4, 5]] * 3
    model = NGramModel(2, 6).fit(train)
    assert int(np.argmax(model.probabilities([]))) == 5
    assert model.probabilities([])[5] > 0.5


def test_evaluate_is_consistent():
    train = random_pieces(1, 20, 10, 80)
    held_out = random_pieces(2, 20, 3, 50) + [[]]
    model = NGramModel(3, 20).fit(train)
    result = model.evaluate(held_out)
    log_probs = np.concatenate([model.log_probs(s) for s in held_out])
    assert result["tokens"] == 150 == len(log_probs)
    assert result["nll_nats"] == pytest.approx(-log_probs.mean(), rel=1e-12)
    assert result["nll_bits"] == pytest.approx(result["nll_nats"] / math.log(2), rel=1e-12)
    assert result["perplexity"] == pytest.approx(math.exp(result["nll_nats"]), rel=1e-12)
    correct = sum(
        int(np.argmax(model.probabilities(s[:i]))) == s[i]
        for s in held_out
        for i in range(len(s))
    )
    assert result["accuracy"] == pytest.approx(correct / 150)


def test_log_probs_match_probabilities():
    train = random_pieces(3, 15, 6, 60)
    model = NGramModel(4, 15).fit(train)
    piece = random_pieces(4, 15, 1, 30)[0]
    expected = [math.log(model.probabilities(piece[:i])[t]) for i, t in enumerate(piece)]
    np.testing.assert_allclose(model.log_probs(piece), expected, rtol=1e-10)
    # Numpy arrays are accepted as pieces.
    np.testing.assert_allclose(model.log_probs(np.array(piece)), expected, rtol=1e-10)


def test_refit_replaces_counts():
    model = NGramModel(2, 4, discount=0.75)
    model.fit([[0, 1, 2, 3]])
    model.fit([[0, 1, 0, 1]])
    fresh = NGramModel(2, 4, discount=0.75).fit([[0, 1, 0, 1]])
    np.testing.assert_allclose(model.probabilities([0]), fresh.probabilities([0]))


def test_evaluate_orders_and_best_order():
    pattern = [0, 1, 0, 2, 0, 1, 0, 3]
    train = pattern_pieces(pattern, 4, 120)
    held_out = pattern_pieces(pattern, 1, 64)
    results = evaluate_orders(train, held_out, vocabulary_size=4, orders=(1, 2, 4))
    assert sorted(results) == [1, 2, 4]
    assert set(results[1]) == {"nll_nats", "nll_bits", "perplexity", "accuracy", "tokens"}
    assert best_order(results) == 4
    tied = {3: {"perplexity": 2.0}, 2: {"perplexity": 2.0}, 5: {"perplexity": 3.0}}
    assert best_order(tied) == 2


def count_calls(monkeypatch, owner, name):
    """Arguments of every call of owner.name from now on (the call itself still runs)."""
    calls = []
    original = getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def test_evaluate_builds_one_full_distribution_per_distinct_context(monkeypatch):
    # Scoring a token is a few dict lookups; only the accuracy needs a whole
    # next-token distribution, and that is computed once per context, not per token.
    # (tools/bench_ngram.py times the full-size case.)
    pattern = [0, 1, 0, 2, 0, 1, 0, 3]
    model = NGramModel(5, 4).fit(pattern_pieces(pattern, 4, 160))
    held_out = pattern_pieces(pattern, 2, 100)
    distributions = count_calls(monkeypatch, NGramModel, "_distribution")
    scored = count_calls(monkeypatch, NGramModel, "_token_probability")
    result = model.evaluate(held_out)
    assert result["tokens"] == 200 == len(scored)
    # Four contexts at the start of a piece (padded with the boundary), then the pattern's eight.
    assert len(distributions) == 12 == len({args[1] for args in distributions})
    assert model.evaluate(held_out) == result
    assert len(distributions) == 12


# ------------------------------------------------ an independent Kneser-Ney


def reference_kneser_ney(train, vocabulary_size, order):
    """Textbook recursive interpolated modified Kneser-Ney, counted straight from the text.

    Written from Chen & Goodman (1998) without ngram.py's shared-suffix passes:
    every level's counts are windows of the padded text, continuation counts are
    distinct left neighbours found in the text, and each probability recurses
    to the uniform distribution. Returns probability(history, token).
    """
    bos = vocabulary_size
    padded = [(bos,) * (order - 1) + tuple(piece) for piece in train]

    def windows(n):
        # n-grams ending on a real token (the last len(piece) positions).
        out = {}
        for text in padded:
            for end in range(order - 1, len(text)):
                gram = text[end - n + 1 : end + 1]
                out[gram] = out.get(gram, 0) + 1
        return out

    counts = {}
    for n in range(1, order + 1):
        raw = windows(n)
        if n == order:
            counts[n] = raw
            continue
        left = {}
        for gram in windows(n + 1):
            left.setdefault(gram[1:], set()).add(gram[0])
        counts[n] = {gram: (raw[gram] if gram[0] == bos else len(left[gram])) for gram in raw}

    discounts = {}
    for n, level in counts.items():
        nk = [sum(1 for c in level.values() if c == k) for k in (1, 2, 3, 4)]
        if all(nk):
            y = nk[0] / (nk[0] + 2 * nk[1])
            ds = [k - (k + 1) * y * nk[k] / nk[k - 1] for k in (1, 2, 3)]
        else:
            # The documented fallbacks: one absolute discount Y, else 0.75.
            ds = [nk[0] / (nk[0] + 2 * nk[1])] * 3 if nk[0] and nk[1] else [0.75] * 3
        ds = [min(max(d, 0.1), k) for k, d in zip((1, 2, 3), ds)]
        discounts[n] = (ds[0], max(ds[1], ds[0]), max(ds[2], ds[1], ds[0]))

    def probability(history, token):
        context = ((bos,) * (order - 1) + tuple(history))[len(history):]
        p = 1.0 / vocabulary_size
        for n in range(1, order + 1):
            h = context[len(context) - n + 1 :] if n > 1 else ()
            followers = {g[-1]: c for g, c in counts[n].items() if g[:-1] == h}
            if not followers:
                break
            d1, d2, d3 = discounts[n]
            d = {t: (d1 if c == 1 else d2 if c == 2 else d3) for t, c in followers.items()}
            total = sum(followers.values())
            gamma = sum(d.values()) / total
            p = max(followers.get(token, 0) - d.get(token, 0), 0) / total + gamma * p
        return p

    return probability


@pytest.mark.parametrize("order", [2, 3, 4])
def test_matches_an_independent_kneser_ney(order):
    # A corpus rich enough that every level has counts 1-4, so the full
    # modified estimate (not a fallback) is compared.
    vocabulary_size = 9
    train = random_pieces(5, 8, 12, 90)
    reference = reference_kneser_ney(train, vocabulary_size, order)
    model = NGramModel(order, vocabulary_size).fit(train)
    histories = [[], [3], train[0][:5], train[4][:17], [8, 8], random_pieces(6, 8, 1, 9)[0]]
    for history in histories:
        expected = [reference(history, token) for token in range(vocabulary_size)]
        np.testing.assert_allclose(model.probabilities(history), expected, rtol=1e-12)
        assert sum(expected) == pytest.approx(1.0, abs=1e-12)


def test_discounts_stay_ordered():
    # n1=10, n2=5, n3=1, n4=4: Chen & Goodman give D1=0.5, D2=1.7 and D3+=-5,
    # which the floor alone would turn into 0.1 < D2.
    assert _estimate_discounts({1: 10, 2: 5, 3: 1, 4: 4}) == pytest.approx((0.5, 1.7, 1.7))
    # n2 large against n1 makes D1 hit its floor while D2 stays lower still.
    d1, d2, d3 = _estimate_discounts({1: 2, 2: 40, 3: 1, 4: 1})
    assert d1 <= d2 <= d3
    for seed in range(4):
        model = NGramModel(6, 12).fit(random_pieces(seed, 12, 3, 40))
        for n, (d1, d2, d3) in model.discounts.items():
            assert 0.1 <= d1 <= d2 <= d3 <= 3, (n, model.discounts[n])


def markov_pieces(seed, history, vocabulary_size, pieces, length):
    """Pieces of a Markov chain with `history` tokens of context and peaked successors."""
    rng = np.random.default_rng(seed)
    table = np.random.default_rng(99).dirichlet(np.full(vocabulary_size, 0.08),
                                                size=(vocabulary_size,) * history)
    out = []
    for _ in range(pieces):
        tokens = list(rng.integers(vocabulary_size, size=history))
        for u in rng.random(length - history):
            row = np.cumsum(table[tuple(tokens[-history:])])
            tokens.append(min(int(np.searchsorted(row, u * row[-1])), vocabulary_size - 1))
        out.append([int(t) for t in tokens])
    return out


def motif_pieces(seed, pieces, length, vocabulary_size=16):
    """Music-like pieces: fixed motifs of 4-8 tokens strung together by a sparse chain over motifs."""
    library = np.random.default_rng(42)
    motifs = [list(library.integers(vocabulary_size, size=int(library.integers(4, 9)))) for _ in range(10)]
    follows = library.dirichlet(np.full(10, 0.3), size=10)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(pieces):
        motif, tokens = int(rng.integers(10)), []
        while len(tokens) < length:
            tokens += motifs[motif]
            motif = int(rng.choice(10, p=follows[motif]))
        out.append([int(t) for t in tokens[:length]])
    return out


def test_higher_orders_do_not_lose_on_held_out_data():
    # Long repeated motifs, like music: each extra token of history resolves
    # more of a motif until ~7, after which longer histories add nothing, so
    # a higher order may only lose noise-sized amounts to the best lower one.
    # (On a high-entropy order-3 chain Kneser-Ney itself does lose ~15% by
    # order 12 to sparse long contexts; that is the model, not a bug.)
    train = motif_pieces(0, 40, 400)
    held_out = motif_pieces(1, 10, 400)
    results = evaluate_orders(train, held_out, vocabulary_size=16, orders=range(1, 13))
    perplexities = [results[order]["perplexity"] for order in range(1, 13)]
    for k in range(1, 12):
        assert perplexities[k] <= min(perplexities[:k]) * 1.01, perplexities
    assert perplexities[5] < 0.9 * perplexities[2]
    assert best_order(results) >= 6


def test_fit_orders_equals_separate_fits():
    train = random_pieces(7, 11, 6, 70)
    held_out = random_pieces(8, 11, 2, 40)
    models = fit_orders(train, 11, orders=[5, 1, 3, 5])
    assert sorted(models) == [1, 3, 5]
    for order, model in models.items():
        alone = NGramModel(order, 11).fit(train)
        assert model.discounts == alone.discounts
        assert model.evaluate(held_out) == alone.evaluate(held_out)
        np.testing.assert_array_equal(model.probabilities(held_out[0][:9]), alone.probabilities(held_out[0][:9]))


def test_orders_one_to_twelve_share_one_count_of_the_text(monkeypatch):
    # Fitting every order from one count is what keeps orders 1-12 on a chorale-sized
    # corpus fast (tools/bench_ngram.py times it): the text is counted once, for the
    # highest order, and each table is built once: 12 tables of raw counts (one per
    # order's top level) and 11 of continuation counts shared by all orders, where
    # twelve separate fits would build 1 + 2 + ... + 12 = 78.
    counted = count_calls(monkeypatch, ngram._Levels, "__init__")
    tables = count_calls(monkeypatch, ngram, "_build_table")
    train = markov_pieces(2, 1, 90, 20, 300)
    held_out = markov_pieces(3, 1, 90, 4, 200)
    results = evaluate_orders(train, held_out, vocabulary_size=90, orders=range(1, 13))
    assert sorted(results) == list(range(1, 13))
    assert len(counted) == 1 and counted[0][2] == 12
    assert len(tables) == 12 + 11
    for order in (1, 6, 12):
        assert results[order] == NGramModel(order, 90).fit(train).evaluate(held_out)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 10), "order must be an integer >= 1, got 0"),
        ((2.5, 10), "order must be an integer >= 1, got 2.5"),
        ((2, 0), "vocabulary_size must be an integer >= 1, got 0"),
        ((2, 10, 0.0), "discount must be None (estimated) or in (0, 1], got 0.0"),
        ((2, 10, 1.5), "got 1.5"),
    ],
)
def test_constructor_errors(args, message):
    with pytest.raises(ValueError) as error:
        order, vocabulary_size, *discount = args
        NGramModel(order, vocabulary_size, **({"discount": discount[0]} if discount else {}))
    assert message in str(error.value)


def test_input_errors():
    model = NGramModel(2, 5)
    with pytest.raises(ValueError, match="fit"):
        model.log_probs([0, 1])
    with pytest.raises(ValueError, match=r"sequence 1 has token id 5, expected ids in \[0, 5\)"):
        model.fit([[0, 1], [2, 5]])
    with pytest.raises(ValueError, match="token id -1"):
        model.fit([[0, -1]])
    with pytest.raises(ValueError, match="1-D sequence"):
        model.fit([0, 1, 2])
    with pytest.raises(ValueError, match="flat array"):
        model.fit(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="integer token ids"):
        model.fit([[0.5, 1.0]])
    with pytest.raises(ValueError, match="at least one token"):
        model.fit([[], []])
    model.fit([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"history has token id 7"):
        model.probabilities([7])
    with pytest.raises(ValueError, match="at least one token"):
        model.evaluate([[]])
    with pytest.raises(ValueError, match="at least one order"):
        evaluate_orders([[0]], [[0]], vocabulary_size=5, orders=())
