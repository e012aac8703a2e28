"""Bar infilling: fill-in-the-middle (FIM) examples, gaps from bar numbers, and the mask that fills a gap exactly.

A piece is cut at two bar lines into a prefix (the bars before the gap), a middle (the gap)
and a suffix (the bars after it). A note sounding across a cut is split there into held
continuations, as `events.notes_to_sonorities` splits long spans, so the three parts are
sonorities of their own and joined again give the piece. The model reads them in the order

    <fim_suffix> SUFFIX <fim_prefix> PREFIX <fim_middle> <fim_len:N> MIDDLE <fim_end>

(the suffix first, so the prefix sits right before the middle it leads into: an LSTM carries
what it read last best; `<fim_len:N>` says the gap's length, N quarter notes rounded up, so the
model can tell when the middle reaches the suffix: without it, a run's model did not use the suffix). Measured: the other order, `<fim_prefix> PREFIX <fim_suffix> SUFFIX
<fim_middle>` with the suffix cut to an eighth of the window, was worse (the held-out middles' NLL 4%
above a prefix-only continuation, against 0.1% for this order), and neither run's model used the suffix
at all (keras_music's README, "Steering"). Each training example is exactly one training window
(`data.seq_length` + 1 tokens, inputs and shifted targets: `example_length`): the opening of the
suffix, the end of the prefix and the whole middle (`window_context`), so the model always learns the
middle with the suffix in view, never across a window boundary that would hide it. An example begins
with `<fim_suffix>` at the model's start state, never with `<piece>`: ordinary windows are cut
anywhere in the stream of pieces and seldom begin with `<piece>`, so a `<piece>` before every FIM
window would teach the model that a piece begun from the start state (as every generator begins one)
is a fill-in-the-middle example. The examples carry no control tokens (in a run trained with
`data.controls` too), because infilling reads a gap's context without them. Training adds such windows for a share of the
pieces (`data.infill_rate`) every epoch; generation feeds the same cut up to `<fim_middle>`
(`generation_context`) and samples the middle under
`GapMask`: a duration only if it fits in what is left of the gap and the rest can still be
filled with the vocabulary's durations, and `<fim_end>` exactly when the gap is full.

Pure Python and numpy.
"""

from __future__ import annotations

import dataclasses
import math
import random
from fractions import Fraction

import numpy as np

from keras_music import config, controls, events
from keras_music.errors import UsageError

FIM_SUFFIX, FIM_PREFIX, FIM_MIDDLE, FIM_END = events.FIM_TOKENS
# Gaps of training examples: 1 to 4 whole bars, with at least one bar before and after.
MIN_GAP_BARS, MAX_GAP_BARS = 1, 4
# Cut choices prepared per training piece; each epoch picks among them for a piece it turns into examples.
# It is also data.infill_rate's ceiling, so the config states the number.
VARIANTS = config.MAX_INFILL_RATE


class InfillError(UsageError, ValueError):
    """A gap that cannot be filled (bars outside the piece, an empty gap, a run without infilling)."""


@dataclasses.dataclass(frozen=True)
class Gap:
    """Bars `first`..`last` (1-based) of a piece; `onset`/`offset` in quarter notes on its timeline, cut to its notes."""

    first: int
    last: int
    onset: Fraction
    offset: Fraction

    @property
    def duration(self) -> Fraction:
        return self.offset - self.onset

    def ticks(self, grid: int) -> int:
        return int(self.duration * grid)


@dataclasses.dataclass
class Parts:
    """A piece cut around a gap: the sonorities of each part."""

    gap: Gap
    prefix: list
    middle: list
    suffix: list


def split(sonorities, start, at) -> tuple[list, list]:
    """The sonorities (beginning at `start` quarters) before and from `at`; one sounding across `at` is cut there.

    The part after the cut keeps its pitches as held continuations, so joining the two lists gives
    the same notes.
    """
    time, at = Fraction(start), Fraction(at)
    sonorities = list(sonorities)
    for index, sonority in enumerate(sonorities):
        end = time + sonority.duration
        if time >= at:
            return sonorities[:index], sonorities[index:]
        if end > at:
            first = events.Sonority(sonority.pitches, sonority.held, at - time)
            second = events.Sonority(sonority.pitches, (True,) * len(sonority.pitches), end - at)
            return sonorities[:index] + [first], [second] + sonorities[index + 1:]
        time = end
    return sonorities, []


def cut(sonorities, start, gap: Gap) -> Parts:
    before, rest = split(sonorities, start, gap.onset)
    middle, after = split(rest, max(Fraction(start), gap.onset), gap.offset)
    return Parts(gap, before, middle, after)


def piece_span(sonorities, start) -> tuple[Fraction, Fraction]:
    start = Fraction(start)
    return start, start + sum((s.duration for s in sonorities), Fraction(0))


def gap_for_bars(sonorities, start, *, time_signatures, first: int, last: int, source: str = "the piece",
                 grid: int = events.GRID) -> Gap:
    """The gap of bars `first`..`last` (1-based, bars laid out by `controls.bars`), cut to the piece's notes."""
    begin, end = piece_span(sonorities, start)
    layout = controls.bars(time_signatures, end, grid)
    if not (isinstance(first, int) and isinstance(last, int) and 1 <= first <= last <= len(layout)):
        raise InfillError(f"bars {first}-{last} are outside {source}, which has {len(layout)} bars "
                          f"(expected A-B with 1 <= A <= B <= {len(layout)})")
    onset, offset = max(layout[first - 1].start, begin), min(layout[last - 1].end, end)
    if offset <= onset:
        raise InfillError(f"bars {first}-{last} of {source} hold no music (its notes span quarters {float(begin):g} to "
                          f"{float(end):g}): expected bars that overlap its notes")
    return Gap(first, last, onset, offset)


def training_gaps(sonorities, start, *, time_signatures, rng: random.Random, count: int = VARIANTS,
                  grid: int = events.GRID) -> list[Gap]:
    """Up to `count` gaps of 1-4 bars with at least one bar of music before and after (none for short pieces)."""
    begin, end = piece_span(sonorities, start)
    layout = controls.bars(time_signatures, end, grid)
    inside = [i for i, bar in enumerate(layout) if bar.end > begin and bar.start < end]
    if len(inside) < MIN_GAP_BARS + 2:
        return []
    gaps = []
    for _ in range(count):
        size = rng.randint(MIN_GAP_BARS, min(MAX_GAP_BARS, len(inside) - 2))
        first = inside[rng.randint(1, len(inside) - 1 - size)]
        last = first + size - 1
        gaps.append(Gap(first + 1, last + 1, max(layout[first].start, begin), min(layout[last].end, end)))
    return gaps


def part_tokens(sonorities, at, *, time_signatures=None, key: str | None = None, with_controls: bool = False,
                grid: int = events.GRID) -> list[str]:
    """The `note` tokens of one part beginning at `at` quarters (with its bars' controls and `key` if asked)."""
    if not with_controls:
        return events.sonorities_to_tokens(sonorities, "note")
    return controls.tokens_with_controls(sonorities, time_signatures, start=at, key=key, grid=grid)


def context_tokens(parts: Parts, start, *, time_signatures=None, key: str | None = None, with_controls: bool = False,
                   grid: int = events.GRID) -> tuple[list[str], list[str], list[str]]:
    """(suffix, prefix, middle) tokens of a cut piece."""
    suffix = part_tokens(parts.suffix, parts.gap.offset, time_signatures=time_signatures, key=None,
                         with_controls=with_controls, grid=grid)
    prefix = part_tokens(parts.prefix, start, time_signatures=time_signatures, key=key, with_controls=with_controls,
                         grid=grid)
    middle = part_tokens(parts.middle, max(Fraction(start), parts.gap.onset), time_signatures=time_signatures,
                         key=None, with_controls=with_controls,
                         grid=grid)
    return suffix, prefix, middle


def example_length(seq_length: int) -> int:
    """Tokens of one FIM training example (and of the context `generate --infill` cuts): a whole training
    window, `seq_length` inputs and the last target."""
    return int(seq_length) + 1


def length_token(duration) -> str:
    """`<fim_len:N>` of a gap of `duration` quarter notes: N rounded up, 1..events.MAX_FIM_LENGTH."""
    quarters = math.ceil(Fraction(duration))
    return events.FIM_LENGTH_TOKENS[min(max(quarters, 1), events.MAX_FIM_LENGTH) - 1]


def has_lengths(tokens) -> bool:
    """Whether a vocabulary's tokens hold the gap lengths (runs prepared before them do not)."""
    return events.FIM_LENGTH_TOKENS[0] in set(tokens)


def fim_sequence(suffix, prefix, *, middle=None, length: str | None = None) -> list[str]:
    """`<fim_suffix> SUFFIX <fim_prefix> PREFIX <fim_middle>`, then the gap's `length` token if given and,
    given the middle, `MIDDLE <fim_end>`."""
    head = [FIM_SUFFIX, *suffix, FIM_PREFIX, *prefix, FIM_MIDDLE, *([length] if length else [])]
    return head if middle is None else head + [*middle, FIM_END]


def window_context(suffix, prefix, *, middle_tokens: int, window: int) -> tuple[list[str], list[str]]:
    """The opening of the suffix and the end of the prefix that one window of `window` tokens holds around a
    middle of `middle_tokens` tokens (and the four sentinels and the gap's length).

    The suffix gets up to a quarter of the window (the bars right after the gap), the prefix the rest
    (the bars right before it, cut anywhere, as a training window is); a short prefix leaves more to the
    suffix.
    """
    budget = max(0, window - len(events.FIM_TOKENS) - 1 - middle_tokens)
    suffix_part = min(len(suffix), window // 4, budget)
    prefix_part = min(len(prefix), budget - suffix_part)
    suffix_part = min(len(suffix), budget - prefix_part)
    return list(suffix[:suffix_part]), list(prefix[len(prefix) - prefix_part:])


def training_examples(sonorities, start, *, time_signatures, seed: int, window: int, key: str | None = None,
                      with_controls: bool = False, grid: int = events.GRID) -> list[list[str]]:
    """Up to `VARIANTS` FIM examples of a training piece, each exactly `window` tokens (`example_length`: one
    training window, no `<piece>`): `<fim_suffix>` the suffix's opening `<fim_prefix>` the prefix's end
    `<fim_middle>` the gap's length, the whole middle `<fim_end>` (`window_context`). Gaps whose middle takes more than half the window, and pieces too
    short to fill a window, give none.
    """
    rng = random.Random(seed)
    out: list[list[str]] = []
    for gap in training_gaps(sonorities, start, time_signatures=time_signatures, rng=rng, count=4 * VARIANTS,
                             grid=grid):
        suffix, prefix, middle = context_tokens(cut(sonorities, start, gap), start, time_signatures=time_signatures,
                                                key=key,
                                                with_controls=with_controls, grid=grid)
        if len(middle) > window // 2:
            continue
        suffix, prefix = window_context(suffix, prefix, middle_tokens=len(middle), window=window)
        tokens = fim_sequence(suffix, prefix, middle=middle, length=length_token(gap.duration))
        if len(tokens) == window and tokens not in out:  # a gap drawn twice is one example
            out.append(tokens)
        if len(out) == VARIANTS:
            break
    return out


def generation_context(parts: Parts, suffix, *, prefix, window: int, lengths: bool = True) -> list[str]:
    """`<fim_suffix> ... <fim_middle> <fim_len:N>` for filling `parts.gap`, cut as training windows are
    (`window_context`), the middle's length estimated from the tokens per quarter note of the bars around it.
    Without `lengths` (a run prepared before the gap lengths), the context ends at `<fim_middle>`."""
    around = sum((s.duration for s in parts.prefix + parts.suffix), Fraction(0))
    estimate = round((len(prefix) + len(suffix)) * parts.gap.duration / around) + 1 if around else window // 2
    return fim_sequence(*window_context(suffix, prefix, middle_tokens=min(estimate, window // 2), window=window),
                        length=length_token(parts.gap.duration) if lengths else None)


def join(prefix, middle, *, suffix) -> list:
    """The piece again: the suffix's held continuations hold only what the middle's last sonority sounds."""
    sounding = set(middle[-1].pitches) if middle else set(prefix[-1].pitches) if prefix else set()
    if suffix:
        first = suffix[0]
        held = tuple(h and p in sounding for p, h in zip(first.pitches, first.held))
        suffix = [events.Sonority(first.pitches, held, first.duration), *suffix[1:]]
    return [*prefix, *middle, *suffix]


def transposed(sonorities, shift: int) -> list:
    """The sonorities moved by `shift` semitones; pitches leaving 0..127 are dropped."""
    if not shift:
        return list(sonorities)
    out = []
    for sonority in sonorities:
        kept = [(p + shift, h) for p, h in zip(sonority.pitches, sonority.held) if 0 <= p + shift <= 127]
        out.append(events.Sonority(tuple(p for p, _ in kept), tuple(h for _, h in kept), sonority.duration))
    return out


def parse_bars(text) -> tuple[int, int]:
    """`5-6` or `5` (1-based bars) as (first, last)."""
    value = str(text).strip()
    first, _, last = value.partition("-")
    if first.strip().isdigit() and (not _ or last.strip().isdigit()):
        a, b = int(first), int(last) if _ else int(first)
        if 1 <= a <= b:
            return a, b
    raise InfillError(f"bars {text!r} are not a bar range (expected A-B with 1 <= A <= B, e.g. 5-6)")


# ----------------------------------------------------------------------------- the gap mask

class GapMask:
    """Restricts a grammar's allowed tokens so that the middle fills its gap exactly, then ends with `<fim_end>`.

    `ticks[i]` is the grid length of duration token i (0 for other tokens and durations off the
    grid). With `remaining` ticks left in the gap, a duration is allowed only if it is at most
    `remaining` and the rest can still be made of the vocabulary's durations (reachability
    precomputed over ticks); between sonorities with nothing left, `<fim_end>` is the only token;
    with something left, neither `<fim_end>` nor `<piece>` may come.
    """

    def __init__(self, tokens, grid: int = events.GRID):
        tokens = list(tokens)
        if FIM_END not in tokens:
            raise InfillError("the vocabulary has no <fim_end>: the run was trained without infilling")
        self.end_id = tokens.index(FIM_END)
        self.prefix_id = tokens.index(FIM_PREFIX) if FIM_PREFIX in tokens else -1
        self.boundary_id = tokens.index(events.BOUNDARY)
        self.ticks = np.zeros(len(tokens), np.int64)
        self.is_duration = np.array([t.startswith("dur:") for t in tokens], bool)
        for i, token in enumerate(tokens):
            kind, _, value = token.partition(":")
            if kind == "dur":
                try:
                    length = Fraction(value) * grid
                except (ValueError, ZeroDivisionError):
                    continue
                if length > 0 and length.denominator == 1:
                    self.ticks[i] = int(length)
        self.durations = sorted(set(int(t) for t in self.ticks if t > 0))
        self._reach = np.ones(1, bool)

    def reachable(self, total: int) -> np.ndarray:
        """Bool [total + 1]: which tick counts a sequence of the vocabulary's durations sums to exactly."""
        if len(self._reach) <= total:
            reach = np.zeros(total + 1, bool)
            reach[0] = True
            for t in range(1, total + 1):
                reach[t] = any(d <= t and reach[t - d] for d in self.durations)
            self._reach = reach
        return self._reach[:total + 1]

    def fillable(self, ticks: int) -> bool:
        return ticks >= 1 and bool(self.reachable(ticks)[ticks])

    def allowed(self, allowed: np.ndarray, between: np.ndarray, remaining: np.ndarray) -> np.ndarray:
        """The grammar's `allowed` [batch, vocab] narrowed for rows with `remaining` ticks (between: bool [batch])."""
        remaining = np.asarray(remaining, np.int64)
        reach = self.reachable(int(remaining.max(initial=0)))
        out = allowed.copy()
        after = remaining[:, None] - self.ticks[None, :]
        # A duration the mask cannot measure (off the grid, ticks 0) never fits.
        fits = (self.ticks > 0) & (after >= 0) & reach[np.clip(after, 0, None)]
        out[:, self.is_duration] &= fits[:, self.is_duration]
        out[:, self.boundary_id] = False
        out[:, self.end_id] = False
        done = (remaining <= 0) & np.asarray(between, bool)
        out[done] = False
        out[done, self.end_id] = True
        return out
