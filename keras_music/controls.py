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
from fractions import Fraction

from keras_music import events
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


def tokens_with_controls(sonorities, time_signatures, start=0, key: str | None = None,
                         grid: int = events.GRID) -> list[str]:
    """The `note` tokens of the sonorities with the controls in place.

    `key` (a key token, or None) comes first; each bar in which a sonority starts gets
    `density:B poly:B` right before the first such sonority. Removing every control token
    gives exactly `events.sonorities_to_tokens(sonorities)`.
    """
    layout = measure(sonorities, time_signatures, start, grid)
    starts = [bar.start for bar in layout]
    tokens = [key] if key else []
    time, last_bar = Fraction(start), -1
    for sonority in sonorities:
        index = bisect.bisect_right(starts, time) - 1
        if index != last_bar:
            bar = layout[index]
            tokens += [density_token(bar.density_bin), polyphony_token(bar.polyphony_bin)]
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
