"""A generated piece: its tokens, sonorities and notes, and the timeline (tempo map, metre, program) it sits on."""

from __future__ import annotations

import dataclasses
import typing

import numpy as np

from keras_music import defaults, events


@dataclasses.dataclass
class Piece:
    tokens: list[str]  # generated tokens only (no primer, no boundary)
    primer_tokens: list[str]
    ids: list[int]  # ids of `tokens`
    sonorities: list  # decoded primer + generated sonorities
    notes: np.ndarray  # (n, 3) onset/duration/pitch of primer + generated
    primer_events: int  # how many of `sonorities` belong to the primer
    stop_reason: str  # "length" | "boundary" | "token_limit" (no sonority ever closed)
    repairs: dict
    seed: int = 0
    index: int = 0  # row in the batch that produced it
    settings: dict = dataclasses.field(default_factory=dict)
    primer_source: str = ""
    unknown_primer_tokens: list = dataclasses.field(default_factory=list)
    # Where the piece sits in time: its first note's position ("start", quarter notes, so a
    # primer's pickup keeps its place in the bar), tempo map, time signatures and program,
    # inherited from the primer or, without one, the corpus's typical values.
    timing: dict = dataclasses.field(default_factory=lambda: default_timing())
    # Set for a piece whose bars were filled in (keras_music.infill): the source file, the bars, the gap's
    # onset and offset in quarter notes on the timeline, its duration and the filled one, the filled tokens.
    infill: dict | None = None

    @property
    def time_signature(self) -> tuple[int, int]:
        """The metre in force where the piece starts."""
        start = self.timing["start"]
        current = [s for s in self.timing["time_signatures"] if s[0] <= start] or self.timing["time_signatures"][:1]
        return tuple(current[-1][1:3])

    @property
    def events(self) -> int:
        """Generated sonorities (the primer's excluded)."""
        return len(self.sonorities) - self.primer_events

    @property
    def primer_duration(self) -> float:
        """Quarter notes the primer occupies at the start of the piece."""
        return float(sum(s.duration for s in self.sonorities[:self.primer_events]))


class Primer(typing.NamedTuple):
    """What a generated piece opens with: its tokens, where they came from, the tokens the vocabulary lacks, its timing."""

    tokens: list[str]
    source: str
    unknown: list[str]
    timing: events.Timing


def default_timing(tempo: float = defaults.TEMPO, time_signature=(4, 4), program: int = 0) -> events.Timing:
    return {"start": 0.0, "tempos": [[0.0, float(tempo)]],
            "time_signatures": [[0.0, int(time_signature[0]), int(time_signature[1])]], "program": int(program)}


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def record_timing(record: dict) -> events.Timing:
    """A parsed file's (or manifest entry's) timing: start, tempo map, metre and its main program.

    Entries that no parser writes (a damaged or edited manifest) are left out, so a piece
    always gets a tempo and metre MIDI and MusicXML can hold.
    """
    counts: dict[int, int] = {}
    for note in record.get("notes") or ():
        part = note[3] if len(note) > 3 else 0
        counts[part] = counts.get(part, 0) + 1
    parts = [p for p in (record.get("parts") or []) if isinstance(p, dict)] or [{"program": 0}]
    main = max(counts, key=counts.get) if counts else 0
    program = parts[main].get("program", 0) if isinstance(main, int) and 0 <= main < len(parts) else \
        parts[0].get("program", 0)
    if isinstance(program, bool) or not isinstance(program, int) or not 0 <= program <= 127:
        program = 0
    fallback = default_timing()
    tempos = [[float(t[0]), float(t[1])] for t in record.get("tempos") or ()
              if isinstance(t, (list, tuple)) and len(t) == 2 and _finite_number(t[0]) and t[0] >= 0 and _finite_number(t[1])
              and t[1] > 0]
    signatures = [[float(t[0]), t[1], t[2]] for t in record.get("time_signatures") or ()
                  if isinstance(t, (list, tuple)) and len(t) == 3 and _finite_number(t[0]) and t[0] >= 0
                  and events.valid_time_signature(t[1], t[2])]
    start = record.get("start") or 0.0
    return {"start": float(start) if _finite_number(start) and start >= 0 else 0.0,
            "tempos": tempos or fallback["tempos"],
            "time_signatures": signatures or fallback["time_signatures"],
            "program": int(program)}


def within_primer(timing: events.Timing, primer_duration: float) -> events.Timing:
    """The primer's tempo map and metre up to its end; the continuation keeps what is in force there."""
    end = timing["start"] + primer_duration
    out = dict(timing)
    for key in ("tempos", "time_signatures"):
        entries = sorted(timing[key], key=lambda e: e[0])
        out[key] = [e for e in entries if e[0] < end or e[0] <= timing["start"]] or entries[:1]
    return out


def with_overrides(timing: events.Timing, tempo: float | None = None, *, program: int | None = None) -> events.Timing:
    """`--tempo` replaces the whole tempo map with one tempo; `--instrument` replaces the program."""
    out = dict(timing)
    if tempo is not None:
        out["tempos"] = [[0.0, float(tempo)]]
    if program is not None:
        out["program"] = int(program)
    return out
