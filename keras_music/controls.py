"""Attribute controls measured from the music: per-bar note density and polyphony, the piece's key, as tokens.

What is measured, per bar (bars laid out from the piece's metre map, see `bars`):

- **density**: the bar's onsets, i.e. the distinct times inside the bar at which at
  least one note starts (a chord is one onset; held notes and rests are none). It counts
  attack points, so it says how busy the rhythm is and stays apart from polyphony.
- **polyphony**: the mean, over the bar's onsets, of the number of notes sounding at that
  onset, held notes included (0 for a bar without onsets). It says how thick the texture is.

Both are read from the sonorities the tokens are made of (after the grid and the unison
folding of `events.canonical_notes`): a sonority with at least one attacked pitch is an
onset, and its pitch count is the number of notes sounding there.

The bins are fixed, so a token means the same in every run. They were chosen from the
bars of two corpora, measured with `python tools/measure_controls.py --data bach --data DIR`
(grid 24, `max_duration` 8, keys normalised): the 413 Bach chorales of music21's corpus
(`data.sources=bach`; 6,172 bars, 27 without an onset) and the 337 piano pieces of
piano-midi.de (48,926 bars, 203 without an onset). Quantiles over the bars with onsets:

| | 10% | 25% | 50% | 75% | 90% |
|---|---|---|---|---|---|
| onsets per bar, chorales | 3 | 4 | 6 | 8 | 8 |
| onsets per bar, piano | 3 | 5 | 7 | 12 | 16 |
| mean polyphony, chorales | 3.71 | 3.88 | 4.00 | 4.00 | 4.17 |
| mean polyphony, piano | 1.67 | 2.00 | 3.00 | 4.00 | 5.00 |

Density edges 3, 5, 7, 9, 12, 16 give 7 bins (0-2 onsets, 3-4, 5-6, 7-8, 9-11, 12-15,
16 and more) holding 6.9 / 19.1 / 29.8 / 35.9 / 5.9 / 1.3 / 1.1% of the chorales' bars and
6.8 / 16.7 / 22.6 / 19.6 / 8.6 / 14.1 / 11.7% of the piano bars: the piano pieces use every
bin, the chorales the lower four (empty bars, 0.4% in both, share bin 0 with one or two
onsets). Polyphony edges at the half-integers 1.5, 2.5, 3.5, 4.5 give 5 bins that read as
"about b + 1 notes at each onset" (the last: 5 or more), holding 6.1 / 28.1 / 28.1 / 22.1 /
15.7% of the piano bars; the four-voice chorales sit in bin 3 (88.7%) and 4 (8.7%), as
four-part writing should. Named levels map to bins: density low 1, medium 3, high 5;
polyphony low 1, medium 2, high 4.

The key is not measured here: it is the key the corpus stage estimated (a record's `key`).
With `data.normalize_key` (the default) every piece is in C major or A minor, so the key
token says only the mode (`key:major`, `key:minor`) and a wanted tonic is reached by
transposing the generated piece; without it the token is `key:<tonic>:<mode>` with the
tonic spelled as in `events.PITCH_NAMES`.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from fractions import Fraction

import numpy as np

from keras_music import defaults, events
from keras_music.errors import UsageError

KEY, DENSITY, POLYPHONY = events.CONTROL_KINDS
MODES = ("major", "minor")
# Bin b holds the values v with EDGES[b - 1] <= v < EDGES[b] (bin 0 below EDGES[0], the last bin from EDGES[-1] up).
DENSITY_EDGES = (3, 5, 7, 9, 12, 16)
POLYPHONY_EDGES = (Fraction(3, 2), Fraction(5, 2), Fraction(7, 2), Fraction(9, 2))
DENSITY_BINS = len(DENSITY_EDGES) + 1
POLYPHONY_BINS = len(POLYPHONY_EDGES) + 1
# What a user may ask for by name: a bin in the low, middle and high part of the measured range.
LEVELS = {DENSITY: {"low": 1, "medium": 3, "high": 5}, POLYPHONY: {"low": 1, "medium": 2, "high": 4}}


class ControlError(UsageError, ValueError):
    """A control level or key that does not exist; the message names it and what was expected."""


@dataclasses.dataclass(frozen=True)
class Bar:
    """One bar: where it starts and how long it lasts (quarter notes), its metre and what was measured in it."""

    start: Fraction
    length: Fraction
    time_signature: tuple[int, int]
    onsets: int = 0
    polyphony: Fraction = Fraction(0)  # mean notes sounding at the bar's onsets (0 without onsets)

    @property
    def density_bin(self) -> int:
        return density_bin(self.onsets)

    @property
    def polyphony_bin(self) -> int:
        return polyphony_bin(self.polyphony)

    @property
    def end(self) -> Fraction:
        return self.start + self.length


def density_bin(onsets: int) -> int:
    return bisect.bisect_right(DENSITY_EDGES, onsets)


def polyphony_bin(mean) -> int:
    return bisect.bisect_right(POLYPHONY_EDGES, Fraction(mean))


def bars(time_signatures, end, grid: int = events.GRID) -> list[Bar]:
    """The bars that cover [0, end) quarter notes, from a metre map [[quarter, numerator, denominator], ...].

    Each metre change starts a new bar at its position (cut to the grid), cutting short
    a bar it falls inside; before the first change, and without any, the metre is 4/4.
    Bars are counted from the start of the piece's timeline, so a piece that opens with
    an upbeat (a pickup bar the metre map does not mark) has its bar lines shifted by it.
    """
    end = Fraction(end)
    changes: dict[Fraction, tuple[int, int]] = {Fraction(0): (4, 4)}
    for at, numerator, denominator in sorted(time_signatures or [], key=lambda c: float(c[0])):
        changes[max(Fraction(0), events.quantize(at, grid))] = (int(numerator), int(denominator))
    starts = sorted(changes)
    out: list[Bar] = []
    for index, start in enumerate(starts):
        limit = starts[index + 1] if index + 1 < len(starts) else None
        numerator, denominator = changes[start]
        length = Fraction(4 * numerator, denominator)
        position = start
        while position < end and (limit is None or position < limit):
            stop = position + length if limit is None else min(position + length, limit)
            out.append(Bar(position, stop - position, (numerator, denominator)))
            position = stop
    return out


def measure(sonorities, time_signatures, start=0, grid: int = events.GRID) -> list[Bar]:
    """The piece's bars with their onsets and mean polyphony; the sonorities begin at `start` quarter notes."""
    time = Fraction(start)
    onsets: list[tuple[Fraction, int]] = []
    for sonority in sonorities:
        if not all(sonority.held):  # an attacked pitch: an onset, with every sounding pitch counted
            onsets.append((time, len(sonority.pitches)))
        time += sonority.duration
    layout = bars(time_signatures, time, grid)
    starts = [bar.start for bar in layout]
    counts = [[0, 0] for _ in layout]
    for at, sounding in onsets:
        index = bisect.bisect_right(starts, at) - 1
        counts[index][0] += 1
        counts[index][1] += sounding
    return [dataclasses.replace(bar, onsets=n, polyphony=Fraction(total, n) if n else Fraction(0))
            for bar, (n, total) in zip(layout, counts)]


# ----------------------------------------------------------------------------- tokens

def density_token(bin_: int) -> str:
    return f"{DENSITY}:{bin_}"


def polyphony_token(bin_: int) -> str:
    return f"{POLYPHONY}:{bin_}"


def parse_key(name) -> tuple[int, str] | None:
    """(tonic pitch class, mode) of a key name as the corpus stage writes it ("E- major", "f# minor"), or None."""
    parts = str(name or "").split()
    if len(parts) != 2 or parts[1] not in MODES or not parts[0] or parts[0][0].upper() not in "CDEFGAB":
        return None
    letter, accidentals = parts[0][0].upper(), parts[0][1:]
    if accidentals.strip("#-") or ("#" in accidentals and "-" in accidentals):
        return None
    tonic = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}[letter]
    return (tonic + accidentals.count("#") - accidentals.count("-")) % 12, parts[1]


def key_token(key_name, shift: int = 0, normalize_key: bool = True) -> str | None:
    """The piece-level key token of a key the corpus stage estimated, or None if it estimated none.

    `shift` is the transposition already applied to the notes (the record's `shift`), so
    the token names the key the tokens are in.
    """
    parsed = parse_key(key_name)
    if parsed is None:
        return None
    tonic, mode = parsed
    if normalize_key:
        return f"{KEY}:{mode}"
    return f"{KEY}:{events.PITCH_NAMES[(tonic + shift) % 12]}:{mode}"


def valid_control(token: str) -> bool:
    """Whether `token` is a control token this version writes (key, density or polyphony bin)."""
    kind, _, value = token.partition(":")
    if kind == KEY:
        if value in MODES:
            return True
        tonic, _, mode = value.partition(":")
        return tonic in events.PITCH_NAMES and mode in MODES
    bins = {DENSITY: DENSITY_BINS, POLYPHONY: POLYPHONY_BINS}.get(kind)
    return bins is not None and value.isdigit() and str(int(value)) == value and int(value) < bins


def control_sort_key(token: str) -> tuple:
    kind, _, value = token.partition(":")
    order = events.CONTROL_KINDS.index(kind)
    return (order, int(value) if value.isdigit() else 0, value)


def tokens_with_controls(sonorities, time_signatures, *, start=0, key: str | None = None,
                         grid: int = events.GRID) -> list[str]:
    """The `note` tokens of the sonorities with the controls in place.

    Each bar in which a sonority starts gets `key density:B poly:B` (`key` a key token, or None for
    none) right before the first such sonority: the key is repeated at every bar line, so a window
    cut anywhere in a piece still holds it a bar back at most, as the generators feed it. Removing
    every control token gives exactly `events.sonorities_to_tokens(sonorities)`.
    """
    layout = measure(sonorities, time_signatures, start, grid)
    starts = [bar.start for bar in layout]
    tokens: list[str] = []
    time, last_bar = Fraction(start), -1
    for sonority in sonorities:
        index = bisect.bisect_right(starts, time) - 1
        if index != last_bar:
            bar = layout[index]
            tokens += ([key] if key else []) + [density_token(bar.density_bin), polyphony_token(bar.polyphony_bin)]
            last_bar = index
        tokens += events.sonorities_to_tokens([sonority], "note")
        time += sonority.duration
    return tokens


def all_tokens(normalize_key: bool = True) -> list[str]:
    """Every control token a run writes: the key tokens (modes, or 24 keys without normalisation) and every bin."""
    if normalize_key:
        keys = [f"{KEY}:{mode}" for mode in MODES]
    else:
        keys = [f"{KEY}:{name}:{mode}" for mode in MODES for name in events.PITCH_NAMES]
    return (keys + [density_token(b) for b in range(DENSITY_BINS)]
            + [polyphony_token(b) for b in range(POLYPHONY_BINS)])


def strip_controls(tokens) -> list[str]:
    return [token for token in tokens if not events.is_control(token)]


def requested_bin(kind: str, level) -> int:
    """The bin a user asks for: a level name (low, medium, high) or a bin number."""
    levels = LEVELS.get(kind)
    if levels is None:
        raise ControlError(f"unknown control {kind!r} (expected {DENSITY} or {POLYPHONY})")
    bins = DENSITY_BINS if kind == DENSITY else POLYPHONY_BINS
    if isinstance(level, str) and level.strip().lower() in levels:
        return levels[level.strip().lower()]
    text = str(level).strip()
    if not isinstance(level, bool) and text.isdigit() and int(text) < bins:
        return int(text)
    raise ControlError(f"{kind} level {level!r} does not exist (expected low, medium, high or a bin 0..{bins - 1})")


# ----------------------------------------------------------------------------- generating with controls
#
# The portable rule (export/README.md, "One piece"; the reference generator and the page repeat it):
# a bar clock counts the quarter notes of every `dur` token from the piece's start (primer included);
# at a step where the grammar is between sonorities, if the current time lies in a bar b that has not
# had its turn yet and the schedule asks for controls in bar b, `density:D` then `poly:P` are fed
# through the model without a random draw, and bar b is done. A bar in which a primer sonority starts
# is done already. This is where `tokens_with_controls` puts them: before the first sonority (a rest
# or a held chord included) that starts in the bar.

OFF = "off"
MAX_SCHEDULE_BAR = 100_000
KEY_NAME_HELP = 'a tonic C..B with an optional # or b and major or minor, e.g. "D minor", "Eb major"'


@dataclasses.dataclass(frozen=True)
class Schedule:
    """What one bar control asks for per bar: a default bin for every bar and bins for bar ranges.

    `ranges` holds (first, last, bin) with 0-based bars, `last` None for "to the end"; a bin of
    None ("off") asks for no token in those bars. A range wins over the default.
    """

    kind: str
    default: int | None = None
    ranges: tuple = ()

    def at(self, bar: int) -> int | None:
        for first, last, bin_ in self.ranges:
            if first <= bar and (last is None or bar <= last):
                return bin_
        return self.default

    @property
    def requested(self) -> bool:
        return self.default is not None or any(bin_ is not None for _, _, bin_ in self.ranges)

    def first_bars(self) -> list[int]:
        """The first bar of each range (0-based), for checking that the piece can reach them."""
        return [first for first, _, _ in self.ranges]

    def describe(self) -> str:
        """The schedule in the command-line syntax, bars 1-based ("" when nothing is asked)."""
        def level(bin_):
            return OFF if bin_ is None else str(bin_)

        parts = [] if self.default is None else [level(self.default)]
        for first, last, bin_ in self.ranges:
            bars_ = f"{first + 1}" if last == first else f"{first + 1}-{'' if last is None else last + 1}"
            parts.append(f"{bars_}:{level(bin_)}")
        return ",".join(parts)


def _level_bin(kind: str, level) -> int | None:
    if isinstance(level, str) and level.strip().lower() == OFF:
        return None
    try:
        return requested_bin(kind, level)
    except ControlError:
        bins = DENSITY_BINS if kind == DENSITY else POLYPHONY_BINS
        raise ControlError(f"{kind} level {level!r} does not exist (expected low, medium, high, off or a bin "
                           f"0..{bins - 1})") from None


def _bar_range(kind: str, text: str, *, spec) -> tuple[int, int | None]:
    first, dash, last = text.partition("-")
    ok = first.strip().isdigit() and (not dash or not last.strip() or last.strip().isdigit())
    low = int(first) if ok else 0
    high = (None if dash and not last.strip() else int(last) if dash else low) if ok else 0
    if not ok or low < 1 or (high is not None and high < low) or max(low, high or 0) > MAX_SCHEDULE_BAR:
        raise ControlError(f"{kind} bars {text.strip()!r} in {spec!r} are not a bar range (expected N, N-M or N- "
                           f"with bars counted from 1, e.g. \"1-4:low,5-8:high\")")
    return low - 1, None if high is None else high - 1


def parse_schedule(kind: str, spec) -> Schedule:
    """A bar control's schedule from what a user asks for.

    `spec` is None (nothing), a level (low, medium, high, off or a bin number) for every bar, or
    comma-separated items `LEVEL` (the default) and `BARS:LEVEL`, BARS being `N`, `N-M` or `N-`
    (from bar N on), bars counted from 1: "high", "1-4:low,5-8:high", "medium,9-:high".
    """
    if isinstance(spec, Schedule):
        return spec
    if kind not in LEVELS:
        raise ControlError(f"unknown control {kind!r} (expected {DENSITY} or {POLYPHONY})")
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return Schedule(kind)
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise ControlError(f"{kind} must be a level (low, medium, high, off or a bin) or a schedule such as "
                           f"\"1-4:low,5-8:high\", got {spec!r}")
    spec = "".join(str(spec).split())  # spaces mean nothing: "1 - 4 : low" is "1-4:low"
    default, has_default, ranges = None, False, []
    for item in spec.split(","):
        bars_, colon, level = item.rpartition(":")
        if not colon:
            if has_default:
                raise ControlError(f"{kind} schedule {spec!r} gives two levels for every bar (expected one, then "
                                   "BARS:LEVEL items)")
            default, has_default = _level_bin(kind, item), True
            continue
        first, last = _bar_range(kind, bars_, spec=spec)
        for other_first, other_last, _ in ranges:
            if (other_last is None or first <= other_last) and (last is None or other_first <= last):
                raise ControlError(f"{kind} schedule {spec!r}: bars {bars_.strip()} overlap another range "
                                   "(expected each bar in one range at most)")
        ranges.append((first, last, _level_bin(kind, level)))
    return Schedule(kind, default, tuple(sorted(ranges, key=lambda r: r[0])))


def parse_requested_key(name) -> tuple[int | None, str]:
    """(tonic pitch class or None, mode) of a key a user asks for: "D minor", "Eb major", "f# minor", "minor"."""
    text = str(name or "").strip()
    parts = text.split()
    if len(parts) == 1 and parts[0].lower() in MODES:
        return None, parts[0].lower()
    if len(parts) == 2 and parts[1].lower() in MODES and parts[0]:
        letter, accidentals = parts[0][0].upper(), parts[0][1:].replace("b", "-").replace("♭", "-").replace("♯", "#")
        if letter in "CDEFGAB" and len(accidentals) <= 1 and not accidentals.strip("#-"):
            tonic = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}[letter]
            return (tonic + accidentals.count("#") - accidentals.count("-")) % 12, parts[1].lower()
    raise ControlError(f"key {text!r} does not exist (expected {KEY_NAME_HELP})")


def requested_key(name, normalize_key: bool = True) -> tuple[str, int]:
    """(the key token to feed, semitones to transpose the output by) for a key a user asks for.

    With normalised keys the token names the mode and the tonic is reached by moving the output
    from C major / A minor by -6..5 semitones; otherwise the token names the key and nothing moves.
    """
    tonic, mode = parse_requested_key(name)
    if normalize_key:
        if tonic is None:
            return f"{KEY}:{mode}", 0
        shift = (tonic - (0 if mode == "major" else 9)) % 12
        return f"{KEY}:{mode}", shift - 12 if shift >= 6 else shift
    if tonic is None:
        raise ControlError(f"key {str(name).strip()!r} names no tonic, but this run's key tokens do (expected "
                           f"{KEY_NAME_HELP})")
    return f"{KEY}:{events.PITCH_NAMES[tonic]}:{mode}", 0


def bar_length(time_signature) -> Fraction:
    numerator, denominator = (int(v) for v in time_signature)
    if numerator < 1 or denominator < 1:
        raise ControlError(f"time signature {numerator}/{denominator} does not exist (expected N/D with N, D >= 1)")
    return Fraction(4 * numerator, denominator)


class BarClock:
    """One piece's bar clock: the time its `dur` tokens have reached and the first bar still to get its turn."""

    def __init__(self, time_signature=(4, 4)):
        self.bar_length = bar_length(time_signature)
        self.time = Fraction(0)
        self.next_bar = 0
        self.between = True  # the grammar is between sonorities

    @property
    def bar(self) -> int:
        return int(self.time // self.bar_length)

    def advance(self, kind: str, token: str) -> None:
        """Moves past one token of grammar kind `kind` (a primer's or a sampled one)."""
        if kind in ("pitch", "hold", "rest") and self.between:
            self.between = False  # a sonority starts in this bar: the bar has had its turn
            self.next_bar = max(self.next_bar, self.bar + 1)
        elif kind == "dur":
            self.time += Fraction(token.partition(":")[2])
            self.between = True

    def due(self) -> int | None:
        """The bar whose turn it is now (marked done), or None: call once per step, before sampling."""
        if not self.between or self.bar < self.next_bar:
            return None
        self.next_bar = self.bar + 1
        return self.bar


# ----------------------------------------------------------------------------- bar limits
#
# The model reads the controls and leans towards them; bar limits (on by default wherever bar controls
# are fed) make the bars they were fed for land in the requested bins, by masking what would leave the
# bin or make it unreachable (export/README.md, "Bar limits"; the reference generator and the page
# repeat it). In a bar b fed density bin D (onsets lo..hi, `onset_range`):
# - no new onset once the bar has hi: a `pitch` token may not start or join a sonority that has none yet;
# - a duration closing a sonority that started in b is allowed only if the bar can still reach lo onsets:
#   ending before the bar's end E at time T, lo - onsets <= ceil((E - T) / m), m the shortest `dur` of the
#   vocabulary; reaching or passing E, onsets >= lo. A rest or a hold, which adds no onset, may start a
#   sonority only if some duration could then close it so; `<piece>` may not end the piece below lo;
# - a duration that carries any sonority into a later bar c whose schedule asks for density asks the same
#   of c: lo_c <= ceil((E_c - T) / m).
# In a bar fed polyphony bin P (pitches per onset nmin..nmax, `pitch_range`), a sonority that started in
# it and has an attacked pitch closes only with nmin..nmax pitches (pitch and hold tokens): no pitch or
# hold past nmax, no duration below nmin, and no pitch (nor, once attacked, hold) above which the
# vocabulary has too few pitches left to reach nmin. Where the limits and the grammar leave nothing,
# the grammar alone decides (the bar then misses its bin).


def onset_range(bin_: int) -> tuple[int, int | None]:
    """The onsets per bar density bin `bin_` holds: (least, most), most None for the last bin."""
    low = 0 if bin_ == 0 else DENSITY_EDGES[bin_ - 1]
    return low, DENSITY_EDGES[bin_] - 1 if bin_ < len(DENSITY_EDGES) else None


def pitch_range(bin_: int) -> tuple[int, int | None]:
    """Pitches per onset that keep a bar's mean polyphony in bin `bin_`: exactly bin + 1, the last bin 5 or more."""
    return (bin_ + 1, bin_ + 1) if bin_ < POLYPHONY_BINS - 1 else (POLYPHONY_BINS, None)


class BarLimits:
    """One row's bar limits (the rule above): what it allows next, moved by every token like the grammar."""

    def __init__(self, tokens, kinds, *, density: Schedule, polyphony: Schedule, time_signature=(4, 4)):
        kind = np.asarray(list(kinds))
        self.is_pitch, self.is_hold, self.is_rest = kind == "pitch", kind == "hold", kind == "rest"
        self.is_end, self.is_dur = kind == "end", kind == "dur"
        pitches = [int(t.partition(":")[2]) if k in ("pitch", "hold") else -1 for t, k in zip(tokens, kind)]
        attackable = sorted({p for p, k in zip(pitches, kind) if k == "pitch"})
        # room[i]: how many pitch tokens lie above token i's pitch (what a sonority can still add after it)
        self.room = np.array([len(attackable) - bisect.bisect_right(attackable, p) for p in pitches], np.int64)
        self.durations = [(i, Fraction(t.partition(":")[2])) for i, (t, k) in enumerate(zip(tokens, kind))
                          if k == "dur"]
        self.shortest = min((d for _, d in self.durations), default=None)
        self.density, self.polyphony = density, polyphony
        self.bar_length = bar_length(time_signature)
        self.time, self.bar, self.onsets = Fraction(0), None, 0
        self.onset_limits: tuple | None = None
        self.pitch_limits: tuple | None = None
        self.phase, self.count, self.attacked = "between", 0, False

    def enter(self, bar: int) -> None:
        """Bar `bar` has its turn (its controls, if any, are fed now): its limits hold from here."""
        self.bar, self.onsets = bar, 0
        density, polyphony = self.density.at(bar), self.polyphony.at(bar)
        self.onset_limits = None if density is None else onset_range(density)
        self.pitch_limits = None if polyphony is None else pitch_range(polyphony)

    def advance(self, kind: str, token: str) -> None:
        if kind in ("pitch", "hold"):
            self.phase, self.count = "chord", self.count + 1
            self.attacked |= kind == "pitch"
        elif kind == "rest" and self.phase == "between":
            self.phase = "rest"
        elif kind == "dur":
            if self.attacked and self._bar_of(self.time) == self.bar:
                self.onsets += 1
            self.time += Fraction(token.partition(":")[2])
            self.phase, self.count, self.attacked = "between", 0, False

    def _bar_of(self, time) -> int:
        return int(time // self.bar_length)

    def _fit(self, room) -> int:
        """How many sonorities can still start in `room` quarter notes (each at least the shortest duration)."""
        return 0 if room <= 0 else math.ceil(room / self.shortest)

    def closing(self, onsets: int) -> np.ndarray:
        """Bool [V]: the durations that may close the open sonority, which leaves its bar with `onsets` onsets."""
        ok = np.zeros(len(self.is_dur), bool)
        here = self._bar_of(self.time)
        own = self.onset_limits if here == self.bar else None
        end = (here + 1) * self.bar_length
        for index, duration in self.durations:
            at = self.time + duration
            good = True
            if own is not None:
                good = onsets >= own[0] if at >= end else own[0] - onsets <= self._fit(end - at)
            if good and at >= end:
                later = self._bar_of(at)
                wanted = self.density.at(later)
                if wanted is not None:
                    good = onset_range(wanted)[0] <= self._fit((later + 1) * self.bar_length - at)
            ok[index] = good
        return ok

    def mask(self) -> np.ndarray:
        """Bool [V]: what the limits allow next (everything they say nothing about included)."""
        allow = np.ones(len(self.is_dur), bool)
        if self.shortest is None:
            return allow
        inside = self._bar_of(self.time) == self.bar
        onsets = self.onset_limits if inside else None
        pitches = self.pitch_limits if inside else None
        if self.phase == "between":
            if onsets is not None:
                if onsets[1] is not None and self.onsets >= onsets[1]:
                    allow[self.is_pitch] = False
                if not self.closing(self.onsets).any():
                    allow[self.is_rest | self.is_hold] = False
                if self.onsets < onsets[0]:
                    allow[self.is_end] = False
            if pitches is not None:
                allow[self.is_pitch & (1 + self.room < pitches[0])] = False
            return allow
        if self.phase == "chord":
            if onsets is not None and onsets[1] is not None and not self.attacked and self.onsets >= onsets[1]:
                allow[self.is_pitch] = False
            if pitches is not None:
                least, most = pitches
                if most is not None and self.count >= most:
                    allow[self.is_pitch | self.is_hold] = False
                short = self.count + 1 + self.room < least
                allow[self.is_pitch & short] = False
                if self.attacked:
                    allow[self.is_hold & short] = False
                    if self.count < least:
                        allow[self.is_dur] = False
        allow[self.is_dur] &= self.closing(self.onsets + int(self.attacked))[self.is_dur]
        return allow


class Steering:
    """Feeds the requested bar controls of a batch of pieces through a step function (the rule above).

    At each bar's turn a row is fed `key` (the requested key token, if any; not when the token just
    before is that key token, as right after a primer of `<piece> key`), then the bar's density and
    polyphony tokens, in the order training put them (`tokens_with_controls`). With `limits` (the
    default) and a density or polyphony schedule, each row also has its `BarLimits`, which `limit` applies
    to what the grammar allows (a key alone has none, as in the reference generator and the page).
    """

    def __init__(self, tokens, kinds, *, density: Schedule, polyphony: Schedule, time_signatures, limits: bool = True,
                 key: str | None = None):
        self.tokens, self.kinds = list(tokens), list(kinds)
        self.index = {token: i for i, token in enumerate(self.tokens)}
        self.density, self.polyphony, self.key = density, polyphony, key
        self.clocks = [BarClock(ts) for ts in time_signatures]
        self.bar_limits = limits  # asked for; they exist only where a bar schedule asks something
        self.limits = [BarLimits(self.tokens, self.kinds, density=density, polyphony=polyphony,
                                 time_signature=ts) for ts in time_signatures] \
            if limits and (density.requested or polyphony.requested) else None
        self.fed: list[list] = [[] for _ in self.clocks]
        self.last: list[int | None] = [None for _ in self.clocks]  # each row's latest primer or sampled id

    def _advance(self, row: int, token_id: int) -> None:
        kind, token = self.kinds[token_id], self.tokens[token_id]
        if self.limits is not None:
            self.limits[row].advance(kind, token)
        self.clocks[row].advance(kind, token)
        self.last[row] = token_id

    def start(self, sequences) -> None:
        """Advance each row's clock over its own primer ids."""
        for row, ids in enumerate(sequences):
            for token_id in ids:
                self._advance(row, int(token_id))

    def advance(self, ids, active) -> None:
        for row in np.flatnonzero(active):
            self._advance(int(row), int(ids[row]))

    def limit(self, allowed: np.ndarray, active) -> np.ndarray:
        """`allowed` (bool [batch, V], from the grammar) narrowed by each active row's bar limits, where
        that leaves the row something."""
        if self.limits is None:
            return allowed
        for row in np.flatnonzero(active):
            narrowed = allowed[row] & self.limits[row].mask()
            if narrowed.any():
                allowed[row] = narrowed
        return allowed

    def due(self, row: int) -> list[int]:
        """The control ids to feed row `row` now (key, density, polyphony), its bar marked done."""
        bar = self.clocks[row].due()
        if bar is None:
            return []
        if self.limits is not None:
            self.limits[row].enter(bar)
        wanted = [token(b) for token, b in ((density_token, self.density.at(bar)),
                                            (polyphony_token, self.polyphony.at(bar))) if b is not None]
        if self.key is not None and self.last[row] != self.index[self.key]:
            wanted.insert(0, self.key)
        if wanted:
            self.fed[row].append([bar + 1] + wanted)
        return [self.index[t] for t in wanted]

    def feed(self, step, probabilities, *, state, active):
        """Feeds every active row's due controls through `step(ids, state)`; rows with none keep theirs."""
        pending = [self.due(row) if active[row] else [] for row in range(len(self.clocks))]
        while any(pending):
            ids = np.array([p[0] if p else 0 for p in pending], np.int32)
            moving = np.array([bool(p) for p in pending])
            stepped, next_state = step(ids, state)
            state = np.where(moving[:, None, None], next_state, state)
            probabilities = np.where(moving[:, None], stepped, probabilities)
            pending = [p[1:] for p in pending]
        return probabilities, state

    def latest_bar(self, lengths, max_duration: Fraction) -> list[int]:
        """Per row, the last bar (0-based) `lengths` more events could reach at most (each as long as the longest `dur`)."""
        return [int((clock.time + int(n) * max_duration) // clock.bar_length) for clock, n in zip(self.clocks, lengths)]


# ----------------------------------------------------------------------------- the key prior and key guidance
#
# The model reads the key tokens but leans on them only a little (README, "Steering"). Two ways help
# it, both applied to the next-token probabilities when a key is asked for (export/README.md, "Key prior"
# and "Key guidance"; the reference generator and the page repeat them, in float64 and in this order):
#
# - the key prior: each pitch token's probability is multiplied by r_K(pc)^beta, where r_K(pc) is how much
#   more (or less) often pitch class pc starts a note in the training pieces of key token K than in all
#   the training pieces with a key token (`key_pitch_counts`, `key_log_ratios`);
# - key guidance: every row is stepped twice, once as asked and once with the other mode's key token
#   wherever the asked one is fed (the "contrast" stream), and the probabilities are raised to 1 + w and
#   divided by the contrast stream's to the w.

# Where the contrast stream's probability is 0 (float32 underflow), it counts as this instead.
GUIDANCE_FLOOR = 1e-30


def key_pitch_counts(pieces) -> dict[str, list[int]]:
    """{key token: [12 counts]}: over token lists (one per training piece), the `pitch:N` tokens (note
    starts; holds are not counted) by pitch class N mod 12, grouped by the piece's first key token.
    Pieces without a key token count for none."""
    counts: dict[str, list[int]] = {}
    for tokens in pieces:
        key = next((t for t in tokens if t.startswith(KEY + ":")), None)
        if key is None:
            continue
        row = counts.setdefault(key, [0] * 12)
        for token in tokens:
            kind, _, value = token.partition(":")
            if kind == "pitch" and value.isdigit():
                row[int(value) % 12] += 1
    return dict(sorted(counts.items()))


def key_log_ratios(counts: dict) -> dict[str, list[float]]:
    """{key token: [12 floats]}: log r_K(pc), r_K(pc) = ((c_K(pc) + 1) / (C_K + 12)) / ((a(pc) + 1) / (A + 12))
    with c_K the counts of key token K, C_K their sum, a the counts of every key token summed and A theirs
    (add-one smoothing, so a pitch class never seen is not ruled out)."""
    overall = [sum(int(row[pc]) for row in counts.values()) for pc in range(12)]
    total = sum(overall)
    out = {}
    for key, row in sorted(counts.items()):
        own = sum(int(c) for c in row)
        out[key] = [math.log(((int(row[pc]) + 1) / (own + 12)) / ((overall[pc] + 1) / (total + 12)))
                    for pc in range(12)]
    return out


def key_bias(table: dict, log_ratios, weight: float) -> np.ndarray:
    """float64 [V]: weight * log r_K(pc) for each `pitch` token of the grammar table (0 for every other token)."""
    kinds, pitches = table["kinds"], table["pitches"]
    bias = np.zeros(len(kinds), np.float64)
    for i, (kind, pitch) in enumerate(zip(kinds, pitches)):
        if kind == "pitch" and pitch >= 0:
            bias[i] = float(weight) * float(log_ratios[pitch % 12])
    return bias


def other_mode(key_token: str) -> str:
    """The key token with the other mode: key:major <-> key:minor, key:D:minor <-> key:D:major."""
    head, _, mode = key_token.rpartition(":")
    if mode not in MODES:
        raise ControlError(f"{key_token!r} is not a key token (expected key:MODE or key:TONIC:MODE)")
    return f"{head}:{MODES[1 - MODES.index(mode)]}"


def guided(asked, contrast, weight: float, bias=None) -> np.ndarray:
    """float64 [..., V]: exp(g - max g) with g = (1 + w) * log(asked) - w * log(max(contrast, GUIDANCE_FLOOR))
    + bias, in this order (no contrast term without `contrast`, no bias term without `bias`); an id the asked
    stream gives probability 0 stays 0."""
    asked = np.asarray(asked, np.float64)
    with np.errstate(divide="ignore"):
        g = (1.0 + weight) * np.log(asked)
        if contrast is not None:
            g = g - weight * np.log(np.maximum(np.asarray(contrast, np.float64), GUIDANCE_FLOOR))
    if bias is not None:
        g = g + np.asarray(bias, np.float64)
    top = g.max(axis=-1, keepdims=True)
    return np.exp(g - top)


class KeyGuided:
    """A batched backend (`initial_state(batch)`, `step(ids, state)`) that steers each step's probabilities
    toward the asked key: with `weight` > 0 it steps each row as asked and with the other mode's key token
    (the state holds both streams, the asked one first, on axis 1), and with `bias` (`key_bias`) it adds the
    key prior (`guided`)."""

    def __init__(self, backend, *, key_id: int, other_id: int | None, weight: float, bias=None):
        self.backend, self.key_id, self.weight = backend, int(key_id), float(weight)
        self.other_id = None if other_id is None else int(other_id)
        self.bias = None if bias is None else np.asarray(bias, np.float64)
        if self.weight and self.other_id is None:
            raise ValueError("key guidance needs the other mode's key token")

    def initial_state(self, batch: int) -> np.ndarray:
        state = self.backend.initial_state(batch)
        return np.concatenate([state, state], axis=1) if self.weight else state

    def step(self, ids, state):
        ids = np.asarray(ids)
        if not self.weight:
            probabilities, next_state = self.backend.step(ids, state)
            return guided(probabilities, None, 0.0, self.bias), next_state
        batch, half = len(ids), state.shape[1] // 2
        contrast = np.where(ids == self.key_id, self.other_id, ids).astype(ids.dtype)
        probabilities, next_state = self.backend.step(np.concatenate([ids, contrast]),
                                                      np.concatenate([state[:, :half], state[:, half:]], axis=0))
        return (guided(probabilities[:batch], probabilities[batch:], self.weight, self.bias),
                np.concatenate([next_state[:batch], next_state[batch:]], axis=1))


def has_controls(tokens) -> bool:
    return any(events.is_control(t) and valid_control(t) for t in tokens)


def time_signature_of(timing: dict | None) -> tuple[int, int]:
    """The metre in force where a piece starts (its timing's first time signature at or before its start)."""
    timing = timing or {}
    start = float(timing.get("start", 0.0) or 0.0)
    signatures = timing.get("time_signatures") or [[0.0, 4, 4]]
    current = [s for s in signatures if float(s[0]) <= start] or signatures[:1]
    return int(current[-1][1]), int(current[-1][2])


@dataclasses.dataclass(frozen=True)
class ControlSettings:
    """What a user asks of the controls (runs trained with `data.controls`), before it is checked against a run.

    Attributes:
      key: a key name ("D minor", "Eb major", "major"), or None for no key token.
      density, polyphony: a level (low, medium, high, off, a bin) or a bar schedule
        ("1-4:low,5-8:high"), or None.
      bar_limits: keep each bar they were fed for in its bins (`BarLimits`); False leaves it to the model.
      key_guidance: the weight w of key guidance (`guided`) when a key is asked for; 0 turns it off.
      key_prior: the exponent beta of the key prior (`key_bias`) when a key is asked for; 0 turns it off.
        With both 0 the key is left to the model alone.
    """

    key: str | None = None
    density: object = None
    polyphony: object = None
    bar_limits: bool = True
    key_guidance: float = defaults.KEY_GUIDANCE
    key_prior: float = defaults.KEY_PRIOR

    def __post_init__(self):
        for name, weight in (("key guidance", self.key_guidance), ("key prior", self.key_prior)):
            if (isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight)
                    or weight < 0):
                raise ControlError(f"{name} must be a number >= 0 (0 turns it off), got {weight!r}")


@dataclasses.dataclass
class Request:
    """What a user asked of a piece: a key (its token and the output's transposition) and two bar schedules."""

    key: str | None = None
    key_token: str | None = None
    transpose: int = 0
    key_guidance: float = 0.0  # the weight of key guidance (0 without a key)
    key_prior: float = 0.0  # the exponent of the key prior (0 without a key)
    density: Schedule = dataclasses.field(default_factory=lambda: Schedule(DENSITY))
    polyphony: Schedule = dataclasses.field(default_factory=lambda: Schedule(POLYPHONY))

    @property
    def any(self) -> bool:
        return self.key_token is not None or self.density.requested or self.polyphony.requested

    def record(self, time_signature, fed) -> dict:
        """The JSON record of a piece's requested controls and the bars that got them (1-based)."""
        return {"key": self.key, "key_token": self.key_token, "transpose": self.transpose,
                "key_guidance": self.key_guidance, "key_prior": self.key_prior,
                "density": self.density.describe() or None, "polyphony": self.polyphony.describe() or None,
                "time_signature": list(time_signature), "bars_fed": fed}


def describe_record(record: dict) -> str:
    """One line about a piece's `settings.controls`: what was asked and how many bars got it."""
    parts = []
    if record.get("key_token"):
        moved = f", transposed by {record['transpose']:+d} semitones" if record.get("transpose") else ""
        parts.append(f"key {record['key']} ({record['key_token']}{moved})")
    for name in ("density", "polyphony"):
        if record.get(name):
            parts.append(f"{name} {record[name]}")
    bars_ = len(record.get("bars_fed") or [])
    return "; ".join(parts) + (f"; {bars_} bar{'s' if bars_ != 1 else ''} fed" if bars_ else "")


def make_request(tokens, normalize_key: bool, *, where: str, asked: ControlSettings | None = None) -> Request:
    """The checked request for a run (named `where`) whose vocabulary is `tokens`; one-line errors for what cannot be."""
    asked = ControlSettings() if asked is None else asked
    request = Request(density=parse_schedule(DENSITY, asked.density),
                      polyphony=parse_schedule(POLYPHONY, asked.polyphony))
    if asked.key is not None and str(asked.key).strip():
        request.key_token, request.transpose = requested_key(asked.key, normalize_key)
        request.key = str(asked.key).strip()
        request.key_guidance = float(asked.key_guidance)
        request.key_prior = float(asked.key_prior)
    if not request.any:
        return request
    vocabulary = set(tokens)
    if not has_controls(tokens):
        raise ControlError(f"{where} has no control tokens in its vocabulary, so it cannot be steered by key, "
                           "density or polyphony: train a run with data.controls=true")
    if request.key_token is not None and request.key_token not in vocabulary:
        keys = sorted(t for t in vocabulary if t.startswith(KEY + ":"))
        raise ControlError(f"key token {request.key_token} (for {request.key!r}) is not in the vocabulary of "
                           f"{where} (it has {', '.join(keys) or 'no key tokens'})")
    if request.key_guidance and other_mode(request.key_token) not in vocabulary:
        raise ControlError(f"key guidance needs {other_mode(request.key_token)} beside {request.key_token}, and the "
                           f"vocabulary of {where} lacks it: ask with key guidance 0")
    return request


def with_key(tokens: list[str], key_token: str | None) -> list[str]:
    """A primer (without `<piece>`) with `key_token` first, replacing a key token already there."""
    if key_token is None:
        return list(tokens)
    rest = list(tokens[1:]) if tokens and tokens[0].startswith(KEY + ":") else list(tokens)
    return [key_token] + rest


def check_reach(request: Request, latest_bars) -> None:
    """Refuses bar ranges no piece can reach: `latest_bars` is each row's last reachable bar (0-based)."""
    latest = max(latest_bars)
    for schedule in (request.density, request.polyphony):
        for first in schedule.first_bars():
            if first > latest:
                raise ControlError(f"{schedule.kind} bar {first + 1} is outside the piece: at its length it can "
                                   f"reach bar {latest + 1} at most (expected bars 1..{latest + 1}, or a longer length)")


def transposed(sonorities, shift: int):
    """The sonorities moved by `shift` semitones, an octave the other way where that leaves the MIDI range."""
    if not shift:
        return list(sonorities)
    pitches = [p for s in sonorities for p in s.pitches]
    if pitches and (min(pitches) + shift < 0 or max(pitches) + shift > 127):
        shift += -12 if shift > 0 else 12
    return [dataclasses.replace(s, pitches=tuple(p + shift for p in s.pitches)) for s in sonorities]
