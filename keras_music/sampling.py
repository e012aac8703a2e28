"""Pure numpy next-token sampling: greedy, temperature, top-k, top-p and banned ids."""

import math
import numbers

import numpy as np

# Cumulative masses within this distance below top_p count as reaching it, so a
# nucleus whose exact sum equals top_p is not widened by float rounding
# (0.5 + 0.3 is 0.7999999999999999 in float64).
_TOP_P_TOLERANCE = 1e-9


def _shown(value):
    """Formats a bad argument for an error message: numbers plainly, others by repr."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return str(value)
    return repr(value)


def make_rng(seed=None):
    """Returns a `np.random.Generator` seeded with `seed` (None draws fresh OS entropy)."""
    return np.random.default_rng(seed)


def validate_sampling(temperature, top_k, top_p):
    """Checks sampling settings and raises ValueError naming the first bad one.

    Args:
      temperature: finite real >= 0; 0 means greedy.
      top_k: integer >= 0; 0 (or any value >= the vocabulary size) means off.
      top_p: real in (0, 1]; 1 means off.
    """
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(
            f"temperature must be >= 0 (0 means greedy), got {_shown(temperature)}"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 means off), got {_shown(top_k)}")
    if (
        isinstance(top_p, bool)
        or not isinstance(top_p, numbers.Real)
        or not math.isfinite(top_p)
        or not 0 < top_p <= 1
    ):
        raise ValueError(f"top_p must be in (0, 1] (1 means off), got {_shown(top_p)}")


def _as_probabilities(probabilities):
    """Returns `probabilities` as a float64 [batch, vocab] array, or raises ValueError."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise ValueError(
            f"probabilities must be a 2-D array [batch, vocab] with vocab >= 1, "
            f"got shape {probs.shape}"
        )
    if probs.size and not (np.all(np.isfinite(probs)) and probs.min() >= 0):
        bad = probs[~(np.isfinite(probs) & (probs >= 0))][0]
        raise ValueError(f"probabilities must be finite and >= 0, got {bad}")
    return probs


def _banned_mask(banned, vocabulary_size):
    """Returns a boolean [vocab] mask of banned ids, or None when nothing is banned."""
    if banned is None:
        return None
    ids = np.asarray(banned).reshape(-1)
    if ids.size == 0:
        return None
    if ids.dtype.kind not in "iu":
        raise ValueError(f"banned must hold integer token ids, got {banned!r}")
    outside = ids[(ids < 0) | (ids >= vocabulary_size)]
    if outside.size:
        raise ValueError(
            f"banned token ids must be in [0, {vocabulary_size}), got {int(outside[0])}"
        )
    mask = np.zeros(vocabulary_size, dtype=bool)
    mask[ids] = True
    if mask.all():
        raise ValueError(
            f"banned covers all {vocabulary_size} token ids; at least one must stay allowed"
        )
    return mask


def _argmax_allowed(probs, mask):
    """Most probable allowed id per row; ties go to the lowest id."""
    if mask is not None:
        # -1 sits below every allowed value, so a row whose allowed mass is all
        # zero still falls back to its lowest allowed id.
        probs = np.where(mask, -1.0, probs)
    return np.argmax(probs, axis=1).astype(np.int64)


def greedy(probabilities, banned=None):
    """Returns the most probable id of each row as int64 [batch] (ties -> lowest id).

    Args:
      probabilities: float array [batch, vocab] of non-negative scores.
      banned: optional token ids that are never returned.
    """
    probs = _as_probabilities(probabilities)
    return _argmax_allowed(probs, _banned_mask(banned, probs.shape[1]))


def sample_next(probabilities, rng, temperature=1.0, top_k=0, top_p=1.0, banned=None):
    """Samples one next-token id per row, for the whole batch in one vectorised pass.

    The steps are: zero the banned ids; rescale p -> p^(1/temperature) in log
    space; keep the `top_k` most probable ids; keep the smallest set of most
    probable ids whose mass reaches `top_p` (never fewer than one); renormalise
    and draw by inverse CDF from a single `rng.random(batch)` call, so the same
    seed gives the same ids and a row's draw depends only on its own
    probabilities and its position in the batch. Ranking uses the original
    probabilities (ties -> lowest id), so `top_k=1` equals `greedy`.
    Temperature 0 is greedy and draws nothing from `rng`. A row whose whole
    mass is banned falls back to its most probable non-banned id.

    Args:
      probabilities: float array [batch, vocab] (softmax rows; zeros allowed,
        rows need not sum exactly to 1).
      rng: `np.random.Generator`, see `make_rng`.
      temperature: >= 0; below 1 sharpens, above 1 flattens, 0 is greedy.
      top_k: number of most probable ids to keep; 0 keeps all.
      top_p: nucleus mass in (0, 1]; 1 keeps all.
      banned: optional token ids (e.g. padding, unknown) never sampled.

    Returns:
      int64 array [batch] of sampled ids.
    """
    validate_sampling(temperature, top_k, top_p)
    probs = _as_probabilities(probabilities)
    batch, vocabulary_size = probs.shape
    mask = _banned_mask(banned, vocabulary_size)
    if mask is not None:
        probs = np.where(mask, 0.0, probs)
    fallback = _argmax_allowed(probs, mask)
    if temperature == 0:
        return fallback

    uniforms = rng.random(batch)
    with np.errstate(divide="ignore"):
        log_probs = np.log(probs)
    row_max = log_probs.max(axis=1)
    alive = np.isfinite(row_max)
    # Subtracting the row maximum before dividing by the temperature keeps the
    # top token at exp(0) = 1 even for tiny temperatures, where log(p) / T alone
    # would overflow to -inf for every token; dead rows (all zero) shift by 0
    # so they stay -inf instead of turning into nan.
    shifted = log_probs - np.where(alive, row_max, 0.0)[:, None]
    weights = np.exp(shifted / temperature)

    use_top_k = 0 < top_k < vocabulary_size
    use_top_p = top_p < 1
    if use_top_k or use_top_p:
        order = np.argsort(-probs, axis=1, kind="stable")
        ranked = np.take_along_axis(weights, order, axis=1)
        if use_top_k:
            ranked[:, top_k:] = 0.0
        if use_top_p:
            cumulative = np.cumsum(ranked, axis=1)
            total = cumulative[:, -1:]
            mass_before = cumulative - ranked
            outside = mass_before >= (top_p - _TOP_P_TOLERANCE) * total
            outside[:, 0] = False
            ranked[outside] = 0.0
        weights = np.empty_like(weights)
        np.put_along_axis(weights, order, ranked, axis=1)

    cumulative = np.cumsum(weights, axis=1)
    targets = uniforms * cumulative[:, -1]
    # Counting cumulative sums <= target finds the first id whose sum exceeds
    # it; a zero-weight id never raises the sum, so it can never be that id.
    ids = np.count_nonzero(cumulative <= targets[:, None], axis=1)
    # u * total can round up to total itself; clamp to the last id with weight.
    last_positive = vocabulary_size - 1 - np.argmax(weights[:, ::-1] > 0, axis=1)
    ids = np.minimum(ids, last_positive)
    return np.where(alive, ids, fallback).astype(np.int64)
