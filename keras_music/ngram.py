"""Interpolated Kneser-Ney n-gram language model: the baseline a trained LSTM must beat."""

import math
import numbers

import numpy as np

from keras_music import formatting as fmt

# Fallback discount for a level whose count-of-counts cannot support an estimate.
DEFAULT_DISCOUNT = 0.75
# Estimated discounts never go below this: a zero discount would leave no mass
# for lower orders, and unseen tokens would get probability zero.
MIN_DISCOUNT = 0.1


def _estimate_discounts(count_of_counts):
    """Returns modified Kneser-Ney discounts (D1, D2, D3+) from count-of-counts.

    Uses Chen & Goodman's estimates Y = n1 / (n1 + 2 n2), Dk = k - (k + 1) Y n(k+1) / nk.
    Small or very regular corpora leave some nk at zero; then the level falls
    back to the single absolute discount Y (if n1 and n2 exist) or to
    DEFAULT_DISCOUNT. Every Dk is clipped to [MIN_DISCOUNT, k] so that no
    count is discounted below zero and every seen context keeps some mass for
    the lower orders, then raised to keep D1 <= D2 <= D3+: a count seen more
    often is never trusted less (on small corpora n4 can vanish and drive D3+
    to the floor, which gives frequent n-grams almost all the mass and makes
    higher orders lose to lower ones).
    """
    n1, n2, n3, n4 = (count_of_counts.get(k, 0) for k in (1, 2, 3, 4))
    if n1 and n2 and n3 and n4:
        y = n1 / (n1 + 2 * n2)
        raw = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    elif n1 and n2:
        y = n1 / (n1 + 2 * n2)
        raw = (y, y, y)
    else:
        raw = (DEFAULT_DISCOUNT,) * 3
    d1, d2, d3 = (min(max(d, MIN_DISCOUNT), float(k)) for k, d in zip((1, 2, 3), raw))
    # Raising (never lowering) keeps each Dk <= k, since D1 <= 1 <= 2 <= 3.
    d2 = max(d2, d1)
    d3 = max(d3, d2)
    return d1, d2, d3


class _Levels:
    """Raw and Kneser-Ney adjusted n-gram counts of a corpus for every length up to `order`.

    Only windows that end on a real token are counted, so the n-grams of a
    level are exactly the suffixes of the level above, and also exactly the
    n-grams an order-n model would count with n - 1 boundary ids of padding;
    raw counts and continuation counts of every level come from one pass over
    the text and then one pass over the level above, never from the text again.
    Tables are built lazily and cached, so fitting orders 1..N costs about as
    much as fitting order N once.
    """

    def __init__(self, checked, order, *, bos):
        if not any(checked):
            raise ValueError("fit needs at least one token, got only empty sequences")
        self.order = order
        padding = (bos,) * (order - 1)
        raw = {}
        for tokens in checked:
            padded = padding + tuple(tokens)
            for gram in zip(*(padded[k:] for k in range(order))):
                raw[gram] = raw.get(gram, 0) + 1
        self.raw = {order: raw}
        self.adjusted = {}
        upper = raw
        for n in range(order - 1, 0, -1):
            lower_raw, continuation = {}, {}
            for gram, count in upper.items():
                suffix = gram[1:]
                lower_raw[suffix] = lower_raw.get(suffix, 0) + count
                continuation[suffix] = continuation.get(suffix, 0) + 1
            # n-grams that begin with the boundary have only the boundary as a
            # left neighbour, so their raw counts are used (as KenLM does).
            self.adjusted[n] = {
                gram: (lower_raw[gram] if gram[0] == bos else kept)
                for gram, kept in continuation.items()
            }
            self.raw[n] = lower_raw
            upper = lower_raw
        self._tables = {}

    def table(self, n, top, discount):
        """(table, (D1, D2, D3+)) of level n: raw counts if `top`, else continuation counts."""
        key = (n, top or n == self.order, discount)
        cached = self._tables.get(key)
        if cached is None:
            counts = self.raw[n] if key[1] else self.adjusted[n]
            cached = self._tables[key] = _build_table(counts, discount)
        return cached


def _build_table(counts, discount):
    """Groups n-gram counts by context and discounts them.

    Returns ({context: (total count, mass left for the lower order,
    {token: discounted count})}, (D1, D2, D3+)).
    """
    if discount is None:
        count_of_counts = {}
        for count in counts.values():
            if count <= 4:
                count_of_counts[count] = count_of_counts.get(count, 0) + 1
        d1, d2, d3 = _estimate_discounts(count_of_counts)
    else:
        d1 = d2 = d3 = float(discount)
    by_context = {}
    for gram, count in counts.items():
        context = gram[:-1]
        words = by_context.get(context)
        if words is None:
            words = by_context[context] = {}
        words[gram[-1]] = count
    table = {}
    for context, words in by_context.items():
        total = 0
        left = 0.0
        for token, count in words.items():
            d = d1 if count == 1 else d2 if count == 2 else d3
            words[token] = count - d
            total += count
            left += d
        table[context] = (float(total), left, words)
    return table, (d1, d2, d3)


class NGramModel:
    """Token n-gram model with interpolated (modified) Kneser-Ney smoothing.

    Each sequence is one piece. Histories are padded on the left with
    `order - 1` copies of a beginning-of-piece id, `bos_id == vocabulary_size`,
    which lies outside the vocabulary, is never predicted and never needs a
    vocabulary entry; so the first token of a piece is predicted from "start of
    piece" rather than from the end of another piece.

    The highest order uses raw counts; lower orders use Kneser-Ney continuation
    counts (the number of distinct tokens seen before the n-gram), except
    n-grams that begin with the boundary id, whose only possible left neighbour
    is the boundary itself, so their raw counts are used (as KenLM does).
    Order 1 interpolates with the uniform distribution over the vocabulary, so
    every token, seen or not, gets a positive probability and each next-token
    distribution sums to 1 over the vocabulary.

    With `discount=None` (default) each order gets modified Kneser-Ney
    discounts D1, D2, D3+ for counts 1, 2 and >= 3, estimated from that
    order's count-of-counts (see `_estimate_discounts`); with a number in
    (0, 1] every count is discounted by that same amount (plain interpolated
    Kneser-Ney). After `fit`, `discounts[n]` holds the (D1, D2, D3+) used for
    n-grams of length n.

    Args:
      order: n-gram length, >= 1 (1 = unigram, 5 = four tokens of history).
      vocabulary_size: number of token ids; tokens are ints in [0, vocabulary_size).
      discount: None for estimated modified Kneser-Ney discounts, or a fixed
        discount in (0, 1].
    """

    def __init__(self, order: int, vocabulary_size: int, *, discount=None):
        if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {fmt.shown(order)}")
        if (
            isinstance(vocabulary_size, bool)
            or not isinstance(vocabulary_size, numbers.Integral)
            or vocabulary_size < 1
        ):
            raise ValueError(
                f"vocabulary_size must be an integer >= 1, got {fmt.shown(vocabulary_size)}"
            )
        if discount is not None and (
            isinstance(discount, bool)
            or not isinstance(discount, numbers.Real)
            or not 0 < discount <= 1
        ):
            raise ValueError(
                f"discount must be None (estimated) or in (0, 1], got {fmt.shown(discount)}"
            )
        self.order = int(order)
        self.vocabulary_size = int(vocabulary_size)
        self.discount = discount
        self.bos_id = self.vocabulary_size
        self.discounts = None
        # _tables[n] maps a context (tuple of n - 1 ids) to
        # (total adjusted count, mass left for the lower order, {token: discounted count}).
        self._tables = None
        self._array_cache = {}
        self._argmax_cache = {}

    # ----------------------------------------------------------------- checks

    def _check_sequence(self, sequence, what):
        """Returns `sequence` as a list of Python ints, or raises ValueError."""
        array = np.asarray(sequence)
        if array.ndim != 1:
            raise ValueError(
                f"{what} must be a 1-D sequence of token ids, got shape {array.shape}"
            )
        if array.size == 0:
            return []
        if array.dtype.kind not in "iu":
            raise ValueError(f"{what} must hold integer token ids, got dtype {array.dtype}")
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= self.vocabulary_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"{what} has token id {bad}, expected ids in [0, {self.vocabulary_size})"
            )
        return array.tolist()

    def _check_sequences(self, sequences):
        """Returns a list of checked sequences (lists of ints)."""
        if isinstance(sequences, np.ndarray) and sequences.ndim == 1 and sequences.dtype != object:
            raise ValueError(
                "sequences must be a list of token-id sequences (one per piece), "
                f"got a flat array of shape {sequences.shape}"
            )
        return [self._check_sequence(s, f"sequence {i}") for i, s in enumerate(sequences)]

    def _check_fitted(self):
        if self._tables is None:
            raise ValueError("NGramModel is not fitted yet, got no counts; call fit() first")

    # -------------------------------------------------------------------- fit

    def fit(self, sequences):
        """Counts n-grams of `sequences` (iterable of token-id sequences) and returns self."""
        levels = _Levels(self._check_sequences(sequences), self.order, bos=self.bos_id)
        return self._fit_levels(levels)

    def _fit_levels(self, levels):
        """Builds this model's tables from shared counts of an order >= self.order."""
        order = self.order
        self.discounts = {}
        self._tables = [None] * (order + 1)
        for n in range(1, order + 1):
            # The top level of a model scores with raw counts; every lower level
            # with Kneser-Ney continuation counts, which do not depend on the
            # model's order, so models of several orders share those tables.
            table, discounts = levels.table(n, top=n == order, discount=self.discount)
            self.discounts[n] = discounts
            self._tables[n] = table
        self._array_cache = {}
        self._argmax_cache = {}
        return self

    # ------------------------------------------------------------ probability

    def _context(self, history):
        """Returns the last `order - 1` ids of the boundary-padded history as a tuple."""
        width = self.order - 1
        if width == 0:
            return ()
        padded = (self.bos_id,) * width + tuple(history[-width:])
        return padded[-width:]

    def _token_probability(self, context, token):
        """P(token | context) for a padded context of length order - 1."""
        p = 1.0 / self.vocabulary_size
        tables = self._tables
        width = self.order - 1
        for n in range(1, self.order + 1):
            entry = tables[n].get(context[width - n + 1 :])
            if entry is None:
                # A context never seen at length n is never seen at any longer
                # length either, since every longer n-gram contains it.
                break
            total, left, words = entry
            p = (words.get(token, 0.0) + left * p) / total
        return p

    def _deepest_seen(self, context):
        """Returns the longest suffix of `context` seen in training and its level."""
        width = self.order - 1
        level = 0
        for n in range(1, self.order + 1):
            if context[width - n + 1 :] not in self._tables[n]:
                break
            level = n
        return level, context[width - level + 1 :] if level else ()

    def _level_arrays(self, n, context):
        """Cached (ids, discounted counts / total, left mass / total) of one context."""
        key = (n, context)
        arrays = self._array_cache.get(key)
        if arrays is None:
            total, left, words = self._tables[n][context]
            ids = np.fromiter(words.keys(), dtype=np.int64, count=len(words))
            values = np.fromiter(words.values(), dtype=np.float64, count=len(words))
            arrays = (ids, values / total, left / total)
            self._array_cache[key] = arrays
        return arrays

    def _distribution(self, context):
        """Full next-token distribution [vocabulary_size] for a padded context."""
        level, _ = self._deepest_seen(context)
        width = self.order - 1
        p = np.full(self.vocabulary_size, 1.0 / self.vocabulary_size)
        for n in range(1, level + 1):
            ids, scaled, left = self._level_arrays(n, context[width - n + 1 :])
            p *= left
            p[ids] += scaled
        return p

    def probabilities(self, history):
        """Returns the next-token distribution after `history` as float64 [vocabulary_size].

        `history` holds the ids of the current piece so far ([] for its first
        token); only the last `order - 1` ids matter. The result sums to 1.
        """
        self._check_fitted()
        tokens = self._check_sequence(history, "history")
        return self._distribution(self._context(tokens))

    def log_probs(self, sequence):
        """Natural-log probability of each token of one piece given its history, float64 [len]."""
        self._check_fitted()
        tokens = self._check_sequence(sequence, "sequence")
        width = self.order - 1
        padded = (self.bos_id,) * width + tuple(tokens)
        out = np.empty(len(tokens), dtype=np.float64)
        for i, token in enumerate(tokens):
            out[i] = math.log(self._token_probability(padded[i : i + width], token))
        return out

    def _predict(self, context):
        """Most probable next id after a padded context (ties -> lowest id), cached."""
        key = self._deepest_seen(context)
        best = self._argmax_cache.get(key)
        if best is None:
            best = int(np.argmax(self._distribution(context)))
            self._argmax_cache[key] = best
        return best

    def evaluate(self, sequences):
        """Scores held-out pieces.

        Returns:
          dict with `nll_nats` (mean negative log-likelihood per token),
          `nll_bits`, `perplexity` (exp of nll_nats), `accuracy` (how often the
          most probable next token is the actual one) and `tokens` (count).
        """
        self._check_fitted()
        checked = self._check_sequences(sequences)
        width = self.order - 1
        total_log = 0.0
        tokens = 0
        correct = 0
        for sequence in checked:
            padded = (self.bos_id,) * width + tuple(sequence)
            for i, token in enumerate(sequence):
                context = padded[i : i + width]
                total_log += math.log(self._token_probability(context, token))
                correct += self._predict(context) == token
            tokens += len(sequence)
        if tokens == 0:
            raise ValueError("evaluate needs at least one token, got only empty sequences")
        nll = -total_log / tokens
        return {
            "nll_nats": nll,
            "nll_bits": nll / math.log(2),
            "perplexity": math.exp(nll),
            "accuracy": correct / tokens,
            "tokens": tokens,
        }


def fit_orders(train_sequences, vocabulary_size, *, orders, discount=None):
    """One fitted NGramModel per order, all built from a single count of the highest order.

    Returns:
      dict mapping each order (ascending) to its fitted NGramModel; each equals
      `NGramModel(order, vocabulary_size, discount).fit(train_sequences)`.
    """
    orders = tuple(sorted(set(orders)))
    if not orders:
        raise ValueError(f"orders must name at least one order, got {orders!r}")
    models = {order: NGramModel(order, vocabulary_size, discount=discount) for order in orders}
    top = models[orders[-1]]
    levels = _Levels(top._check_sequences(train_sequences), top.order, bos=top.bos_id)
    return {order: model._fit_levels(levels) for order, model in models.items()}


def evaluate_orders(
    train_sequences, eval_sequences, *, vocabulary_size, orders=(1, 2, 3, 4, 5), discount=None
):
    """Fits one NGramModel per order on `train_sequences` and evaluates it on `eval_sequences`.

    Returns:
      dict mapping each order to the metrics dict of `NGramModel.evaluate`.
    """
    orders = tuple(orders)
    if not orders:
        raise ValueError(f"orders must name at least one order, got {orders!r}")
    models = fit_orders(train_sequences, vocabulary_size, orders=orders, discount=discount)
    return {order: models[order].evaluate(eval_sequences) for order in orders}


def best_order(results):
    """Returns the order with the lowest perplexity in `evaluate_orders` results.

    Ties go to the lowest order, the simpler model.
    """
    if not results:
        raise ValueError(f"results must hold at least one order, got {results!r}")
    return min(results, key=lambda order: (results[order]["perplexity"], order))
