"""Pure numpy next-token sampling: SplitMix64 streams, greedy, temperature, top-k, top-p, banned ids and a token grammar."""

import dataclasses
import math
import numbers
import secrets

import numpy as np

from keras_music import defaults, formatting as fmt
from keras_music.errors import KerasMusicError

DEFAULT_TEMPERATURE = defaults.TEMPERATURE

# Cumulative masses within this distance below top_p count as reaching it, so a
# nucleus whose exact sum equals top_p is not widened by float rounding
# (0.5 + 0.3 is 0.7999999999999999 in float64).
_TOP_P_TOLERANCE = 1e-9


# ----------------------------------------------------------------------------- random numbers

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_TWO_POW_53 = float(1 << 53)

# The portable generator (export/README.md, "Portable sampler") and numpy's own.
RNG_KINDS = ("splitmix64", "numpy")
DEFAULT_RNG = "splitmix64"


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer (taken modulo 2^64), got {fmt.shown(seed)}")
    return int(seed) & _MASK64


class SplitMix64:
    """One SplitMix64 stream (export/README.md, "Random numbers: SplitMix64"), exact 64-bit integers.

    `random()` is the top 53 bits of the next output over 2^53: a float64 in [0, 1) that every
    language computes exactly; `random(n)` is the next n of them, in order.
    """

    def __init__(self, seed: int):
        self.state = _check_seed(seed)

    def next_u64(self) -> int:
        self.state = (self.state + _GOLDEN) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
        z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
        return z ^ (z >> 31)

    def random(self, size=None):
        if size is None:
            return (self.next_u64() >> 11) / _TWO_POW_53
        return np.array([self.random() for _ in range(int(size))], np.float64)


class RowStreams:
    """One SplitMix64 stream per batch row: row i draws from SplitMix64((seed + i) mod 2^64).

    `random(n)` returns one uniform for each of rows 0..n-1 (the next of each row's own
    stream), so the rows of a batch draw exactly what each would draw alone with its own
    seed, whatever the batch size. `random()` is row 0's next uniform.
    """

    def __init__(self, seed: int):
        self.seed = _check_seed(seed)
        self._states = np.zeros(0, np.uint64)

    def _grow(self, rows: int) -> None:
        if rows > len(self._states):
            seeds = [(self.seed + i) & _MASK64 for i in range(len(self._states), rows)]
            self._states = np.concatenate([self._states, np.array(seeds, np.uint64)])

    def next_u64(self, rows: int) -> np.ndarray:
        """The next 64-bit output of rows 0..rows-1 (uint64 [rows]); numpy's uint64 wraps modulo 2^64."""
        self._grow(rows)
        with np.errstate(over="ignore"):
            states = self._states[:rows] + np.uint64(_GOLDEN)
            self._states[:rows] = states
            z = (states ^ (states >> np.uint64(30))) * np.uint64(_MIX1)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
        return z ^ (z >> np.uint64(31))

    def random(self, size=None):
        rows = 1 if size is None else int(size)
        uniforms = (self.next_u64(rows) >> np.uint64(11)).astype(np.float64) / _TWO_POW_53
        return float(uniforms[0]) if size is None else uniforms


def make_rng(seed=None, kind=DEFAULT_RNG):
    """The random source `sample_next` draws from.

    kind "splitmix64" (the default): `RowStreams(seed)`, the portable per-row SplitMix64
    streams, so a seed means the same tokens here, in the exported models and in the web
    page; None draws a fresh 64-bit seed. kind "numpy": `np.random.default_rng(seed)`
    (any seed numpy takes; None draws fresh OS entropy).
    """
    if kind == "numpy":
        return np.random.default_rng(seed)
    if kind != "splitmix64":
        raise ValueError(f"rng must be one of {', '.join(RNG_KINDS)}, got {fmt.shown(kind)}")
    return RowStreams(secrets.randbits(64) if seed is None else seed)


def validate_sampling(temperature, top_k, *, top_p):
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
            f"temperature must be >= 0 (0 means greedy), got {fmt.shown(temperature)}"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 means off), got {fmt.shown(top_k)}")
    if (
        isinstance(top_p, bool)
        or not isinstance(top_p, numbers.Real)
        or not math.isfinite(top_p)
        or not 0 < top_p <= 1
    ):
        raise ValueError(f"top_p must be in (0, 1] (1 means off), got {fmt.shown(top_p)}")


class SamplingError(KerasMusicError, ValueError):
    """A sampling setting is out of range; the message names it and what it accepts."""


def _is_count(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How tokens are drawn and how long a piece runs; checked once, when made.

    Attributes:
      temperature: finite real >= 0; 0 means greedy.
      top_k: integer >= 0; 0 means off.
      top_p: real in (0, 1]; 1 means off.
      length: events per piece (1..`defaults.MAX_LENGTH`), or a tuple of one such count per piece.
      min_length: events a piece must have before a sampled `<piece>` may end it (>= 0).
      rng: "splitmix64" (the portable sampler, export/README.md) or "numpy".
    """

    temperature: float = defaults.TEMPERATURE
    top_k: int = defaults.TOP_K
    top_p: float = defaults.TOP_P
    length: int | tuple[int, ...] = defaults.LENGTH
    min_length: int = defaults.MIN_LENGTH
    rng: str = DEFAULT_RNG

    def __post_init__(self):
        try:
            validate_sampling(self.temperature, self.top_k, top_p=self.top_p)
        except ValueError as error:
            raise SamplingError(str(error)) from None
        length = self.length
        if isinstance(length, (list, tuple, np.ndarray)):
            length = tuple(int(v) if _is_count(v) else v for v in length)
            object.__setattr__(self, "length", length)
        values = length if isinstance(length, tuple) else (length,)
        if not values or any(not _is_count(v) or not 1 <= v <= defaults.MAX_LENGTH for v in values):
            raise SamplingError(f"length must be an integer in 1..{defaults.MAX_LENGTH} (events to generate) or "
                                f"one such integer per piece, got {fmt.shown(self.length)}")
        if not _is_count(self.min_length) or self.min_length < 0:
            raise SamplingError(f"min_length must be an integer >= 0 (events), got {fmt.shown(self.min_length)}")
        if self.rng not in RNG_KINDS:
            raise SamplingError(f"rng must be one of {', '.join(RNG_KINDS)}, got {fmt.shown(self.rng)}")

    def replace(self, **changes) -> "SamplingSettings":
        """A copy with `changes` (checked like a new one)."""
        return dataclasses.replace(self, **changes)

    def record(self) -> dict:
        """The draw settings as a piece's JSON record gives them."""
        return {"temperature": float(self.temperature), "top_k": int(self.top_k), "top_p": float(self.top_p),
                "rng": self.rng}


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


def _forbidden_mask(banned, allowed, *, probs):
    """Boolean mask of ids never returned ([vocab] or [batch, vocab]), or None."""
    mask = _banned_mask(banned, probs.shape[1])
    if allowed is None:
        return mask
    allowed = np.asarray(allowed)
    if allowed.dtype != bool or allowed.shape != probs.shape:
        raise ValueError(f"allowed must be a boolean array of shape {probs.shape}, got "
                         f"{allowed.dtype} {allowed.shape}")
    forbidden = ~allowed if mask is None else ~allowed | mask
    empty = np.flatnonzero(forbidden.all(axis=1))
    if empty.size:
        raise ValueError(f"row {int(empty[0])} allows no token: allowed and banned leave nothing to sample")
    return forbidden


def greedy(probabilities, banned=None, allowed=None):
    """Returns the most probable id of each row as int64 [batch] (ties -> lowest id).

    Args:
      probabilities: float array [batch, vocab] of non-negative scores.
      banned: optional token ids that are never returned.
      allowed: optional boolean [batch, vocab]; only True ids are returned.
    """
    probs = _as_probabilities(probabilities)
    return _argmax_allowed(probs, _forbidden_mask(banned, allowed, probs=probs))


def sample_next(probabilities, rng, *, temperature=1.0, top_k=0, top_p=1.0, banned=None, allowed=None):
    """Samples one next-token id per row, for the whole batch in one vectorised pass.

    The steps are: zero the banned ids and those `allowed` rules out (the
    grammar), which renormalises over what remains; rescale p -> p^(1/temperature) in log
    space; keep the `top_k` most probable ids; keep the smallest set of most
    probable ids whose mass reaches `top_p` (never fewer than one); renormalise
    and draw by inverse CDF from a single `rng.random(batch)` call (one uniform
    per row), so the same seed gives the same ids and a row's draw depends only
    on its own probabilities and its position in the batch; with `RowStreams`
    each row draws from its own stream. Ranking uses the original
    probabilities (ties -> lowest id), so `top_k=1` equals `greedy`.
    Temperature 0 is greedy and draws nothing from `rng`. A row whose whole
    mass is banned falls back to its most probable non-banned id.

    Args:
      probabilities: float array [batch, vocab] (softmax rows; zeros allowed,
        rows need not sum exactly to 1).
      rng: `RowStreams`, `SplitMix64` or `np.random.Generator`: anything whose
        `random(n)` returns n uniforms in [0, 1); see `make_rng`.
      temperature: >= 0; below 1 sharpens, above 1 flattens, 0 is greedy.
      top_k: number of most probable ids to keep; 0 keeps all.
      top_p: nucleus mass in (0, 1]; 1 keeps all.
      banned: optional token ids (e.g. padding, unknown) never sampled.
      allowed: optional boolean [batch, vocab] of the ids each row may take
        (see `Grammar.allowed`); every row must allow at least one id.

    Returns:
      int64 array [batch] of sampled ids.
    """
    validate_sampling(temperature, top_k, top_p=top_p)
    probs = _as_probabilities(probabilities)
    mask = _forbidden_mask(banned, allowed, probs=probs)
    if mask is not None:
        probs = np.where(mask, 0.0, probs)
    fallback = _argmax_allowed(probs, mask)
    if temperature == 0:
        return fallback
    uniforms = rng.random(len(probs))
    weights, alive = _tempered(probs, temperature)
    weights = _truncated(weights, probs, top_k=top_k, top_p=top_p)
    return np.where(alive, _inverse_cdf(weights, uniforms), fallback).astype(np.int64)


def _tempered(probs, temperature):
    """(p^(1/temperature) per row with its top token at 1, whether the row has any mass)."""
    with np.errstate(divide="ignore"):
        log_probs = np.log(probs)
    row_max = log_probs.max(axis=1)
    alive = np.isfinite(row_max)
    # Subtracting the row maximum before dividing by the temperature keeps the
    # top token at exp(0) = 1 even for tiny temperatures, where log(p) / T alone
    # would overflow to -inf for every token; dead rows (all zero) shift by 0
    # so they stay -inf instead of turning into nan.
    shifted = log_probs - np.where(alive, row_max, 0.0)[:, None]
    return np.exp(shifted / temperature), alive


def _truncated(weights, probs, *, top_k, top_p):
    """The weights with all but the top_k ids and the top_p nucleus zeroed, ranked by the original probs."""
    use_top_k = 0 < top_k < probs.shape[1]
    use_top_p = top_p < 1
    if not (use_top_k or use_top_p):
        return weights
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
    kept = np.empty_like(weights)
    np.put_along_axis(kept, order, ranked, axis=1)
    return kept


def _inverse_cdf(weights, uniforms):
    """One id per row, drawn from the row's weights with its uniform in [0, 1)."""
    cumulative = np.cumsum(weights, axis=1)
    targets = uniforms * cumulative[:, -1]
    # Counting cumulative sums <= target finds the first id whose sum exceeds
    # it; a zero-weight id never raises the sum, so it can never be that id.
    ids = np.count_nonzero(cumulative <= targets[:, None], axis=1)
    # u * total can round up to total itself; clamp to the last id with weight.
    last_positive = weights.shape[1] - 1 - np.argmax(weights[:, ::-1] > 0, axis=1)
    return np.minimum(ids, last_positive)


# ----------------------------------------------------------------------------- grammar

_PHASE_START, _PHASE_CHORD, _PHASE_REST = 0, 1, 2


class GrammarState:
    """Where each row of a batch stands in its sonority; plain arrays, advanced by `Grammar.advance`.

    phase: 0 between sonorities, 1 after a pitch/hold, 2 after a rest.
    top: highest pitch of the open sonority (-1 if none).
    current / previous: bool [batch, 128], pitches of the open and the last closed sonority.
    """

    def __init__(self, batch: int):
        self.phase = np.zeros(batch, np.int64)
        self.top = np.full(batch, -1, np.int64)
        self.current = np.zeros((batch, 128), bool)
        self.previous = np.zeros((batch, 128), bool)


class Grammar:
    """The tokens a representation allows next, from the per-token table of `events.grammar_table`.

    Rules "note": between sonorities any pitch, a hold of a pitch of the previous
    sonority, rest, or the end token; after a pitch/hold only a higher pitch or
    hold (pitches ascend) or a duration; after a rest only a duration; a duration
    closes the sonority. Rules "any": every token that is not banned. Banned
    tokens (pad, unk, unparseable) are never allowed. The decoder then has
    nothing to repair in what was sampled.
    """

    def __init__(self, table: dict):
        rules = table.get("rules")
        if rules not in ("note", "any"):
            raise ValueError(f"grammar rules must be 'note' or 'any', got {rules!r}")
        kinds = list(table.get("kinds", []))
        pitches = np.asarray(table.get("pitches", []), np.int64)
        if len(kinds) != len(pitches) or not kinds:
            raise ValueError(f"grammar needs one kind and one pitch per token, got {len(kinds)} kinds "
                             f"and {len(pitches)} pitches")
        self.rules = rules
        self.size = len(kinds)
        kind = np.asarray(kinds)
        self.is_end = kind == "end"
        self.is_pitch = kind == "pitch"
        self.is_hold = kind == "hold"
        self.is_rest = kind == "rest"
        self.is_dur = kind == "dur"
        self.not_banned = (kind != "banned") & (kind != "control")  # controls are read, never sampled
        self.not_banned &= kind != "fim"  # fill-in-the-middle sentinels too (keras_music.infill closes a gap)
        self.pitch = np.where(self.is_pitch | self.is_hold, pitches, -1)
        self._pitch_index = np.clip(self.pitch, 0, 127)

    def start(self, batch: int) -> GrammarState:
        return GrammarState(batch)

    def allowed(self, state: GrammarState, closing=None) -> np.ndarray:
        """Boolean [batch, vocab]: the tokens each row may take next.

        `closing` (bool [batch], optional) marks rows that must finish their open
        sonority now: they may only take a duration (rows between sonorities are
        unaffected). A row left with nothing allowed (a vocabulary lacking
        durations or pitches) falls back to every non-banned token.
        """
        batch = len(state.phase)
        if self.rules == "any":
            return np.broadcast_to(self.not_banned, (batch, self.size)).copy()
        voiced = self.is_pitch | (self.is_hold & state.previous[:, self._pitch_index])
        between = voiced | self.is_rest | self.is_end
        chord = (voiced & (self.pitch > state.top[:, None])) | self.is_dur
        phase = state.phase[:, None]
        allowed = np.where(phase == _PHASE_START, between,
                           np.where(phase == _PHASE_CHORD, chord, self.is_dur))
        if closing is not None:
            must_close = np.asarray(closing, bool) & (state.phase != _PHASE_START)
            allowed[must_close] = self.is_dur
        empty = ~allowed.any(axis=1)
        allowed[empty] = self.not_banned
        return allowed

    def advance(self, state: GrammarState, ids, *, active=None) -> None:
        """Moves each row past its token `ids[row]` (in place); lenient, like the decoder.

        Only rows where `active` (bool [batch], default all) is True move.

        Primers are advanced with the same call, so an ill-formed primer moves the
        state the way decoding will read it (a rest inside a chord leaves the chord
        open; a stray end token changes nothing).
        """
        if self.rules == "any":
            return
        ids = np.asarray(ids, np.int64)
        rows = np.arange(len(ids))
        active = np.ones(len(ids), bool) if active is None else np.asarray(active, bool)
        voiced = (self.is_pitch[ids] | self.is_hold[ids]) & active
        if voiced.any():
            pitch = self.pitch[ids[voiced]]
            state.phase[voiced] = _PHASE_CHORD
            state.top[voiced] = np.maximum(state.top[voiced], pitch)
            state.current[rows[voiced], pitch] = True
        rest = self.is_rest[ids] & (state.phase == _PHASE_START) & active
        state.phase[rest] = _PHASE_REST
        closed = self.is_dur[ids] & active
        if closed.any():
            state.previous[closed] = state.current[closed]
            state.current[closed] = False
            state.top[closed] = -1
            state.phase[closed] = _PHASE_START


# ----------------------------------------------------------------------------- one piece

def one_piece(step, primer, *, grammar_table: dict, length: int, min_length: int, choose):
    """export/README.md's "One piece" for one row: (sampled ids, stop reason "length", "boundary" or "token_limit").

    `step(token)` feeds one id to the model and returns its probabilities [1, vocab];
    `choose(probabilities, allowed)` picks the next id (e.g. `greedy`, or `sample_next`
    with a SplitMix64 stream). The grammar masks every choice, `<piece>` (id 2) is
    forbidden below `min_length` events and ends the piece otherwise, and the piece
    stops at `length` events or after `length` * MAX_TOKENS_PER_EVENT tokens, the last of
    which may only close an open sonority. Generator runs the same rules batched; the
    export's parity check and tests use this single-row form.
    """
    grammar = Grammar(grammar_table)
    where = grammar.start(1)
    is_event = np.isin(np.asarray(grammar_table["kinds"]), ("dur", "event"))
    probabilities = None
    for token in list(primer) or [2]:
        probabilities = step(int(token))
        grammar.advance(where, [int(token)])
    min_length = min(min_length, length)
    max_tokens, count, ids = defaults.MAX_TOKENS_PER_EVENT * length, 0, []
    for index in range(max_tokens):
        last = index == max_tokens - 1
        if last and (grammar.rules == "any" or where.phase[0] == _PHASE_START):
            return ids, "token_limit"
        allowed = grammar.allowed(where, closing=np.array([last]))
        if count < min_length:
            allowed[:, 2] = False
        chosen = int(choose(probabilities, allowed))
        if chosen == 2:
            return ids, "boundary"
        ids.append(chosen)
        grammar.advance(where, [chosen])
        count += int(is_event[chosen])
        if count >= length:
            return ids, "length"
        probabilities = step(chosen)
    return ids, "token_limit"
