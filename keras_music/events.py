"""Scores <-> notes <-> sonorities <-> tokens, for the `note` and `classic` representations."""

from __future__ import annotations

import dataclasses
import typing
from fractions import Fraction

import numpy as np

# Onsets and durations are quantized to a grid of `data.grid` divisions of a quarter
# note; the default, 24, holds 32nds (3/24) and sixteenth triplets (4/24) exactly.
GRID = 24

PAD, UNK, BOUNDARY = "<pad>", "<unk>", "<piece>"
SPECIAL_TOKENS = (PAD, UNK, BOUNDARY)
REST = "rest"
# The 88 keys of a piano, A0..C8: transposition (data.transpose) never moves a piece outside them.
PIANO_LOW, PIANO_HIGH = 21, 108
PITCH_NAMES = ("C", "C#", "D", "E-", "E", "F", "F#", "G", "G#", "A", "B-", "B")
# Prefixes of the control tokens (keras_music.controls): they steer the music but are no event,
# so event counts skip them and decoding ignores them.
CONTROL_KINDS = ("key", "density", "poly")
# Sentinels of fill-in-the-middle examples (keras_music.infill): `<piece> <fim_suffix> SUFFIX <fim_prefix>
# PREFIX <fim_middle> MIDDLE <fim_end>`. Like controls they are no event and decoding skips them.
FIM_SUFFIX, FIM_PREFIX, FIM_MIDDLE, FIM_END = "<fim_suffix>", "<fim_prefix>", "<fim_middle>", "<fim_end>"
FIM_TOKENS = (FIM_SUFFIX, FIM_PREFIX, FIM_MIDDLE, FIM_END)
# The gap's length right after `<fim_middle>`: `<fim_len:N>`, N its quarter notes rounded up (1..16, longer gaps
# say 16), so the model knows where the middle has to meet the suffix (keras_music.infill).
FIM_LENGTH_PREFIX, MAX_FIM_LENGTH = "<fim_len:", 16
FIM_LENGTH_TOKENS = tuple(f"{FIM_LENGTH_PREFIX}{n}>" for n in range(1, MAX_FIM_LENGTH + 1))


@dataclasses.dataclass(frozen=True)
class Sonority:
    """What sounds between two consecutive onsets/offsets: ascending pitches (empty = rest)."""

    pitches: tuple[int, ...]
    held: tuple[bool, ...]  # True where the pitch continues from the previous sonority
    duration: Fraction


class DecodeReport:
    """Counts the repairs made while decoding a possibly ill-formed (generated) token list."""

    def __init__(self):
        self.repairs: dict[str, int] = {}

    def add(self, what: str) -> None:
        self.repairs[what] = self.repairs.get(what, 0) + 1


def valid_time_signature(numerator, denominator) -> bool:
    """A metre MIDI and music21 can write: numerator 1..255 over a power of two up to 128."""
    return (isinstance(numerator, int) and not isinstance(numerator, bool) and 1 <= numerator <= 255
            and isinstance(denominator, int) and not isinstance(denominator, bool)
            and denominator in (1, 2, 4, 8, 16, 32, 64, 128))


def is_control(token: str) -> bool:
    """Whether a token is a control token (`key:...`, `density:B`, `poly:B`)."""
    return token.partition(":")[0] in CONTROL_KINDS


def is_fim(token: str) -> bool:
    """Whether a token is one of the fill-in-the-middle sentinels or gap lengths."""
    return token in FIM_TOKENS or token in FIM_LENGTH_TOKENS


def quantize(value, grid: int = GRID) -> Fraction:
    return Fraction(round(float(value) * grid), grid)


def piano_tokens(grid: int = GRID, max_duration: float = 8.0) -> list[str]:
    """Every "note" token a piano piece on this grid can have: pitch and hold of the 88 keys, rest, and each
    duration of k/grid quarters up to `max_duration`."""
    durations = [format_duration(Fraction(k, grid)) for k in range(1, int(Fraction(max_duration) * grid) + 1)]
    return ([f"pitch:{p}" for p in range(PIANO_LOW, PIANO_HIGH + 1)] + [f"hold:{p}" for p in range(PIANO_LOW, PIANO_HIGH + 1)]
            + [REST] + [f"dur:{d}" for d in durations])


def format_duration(duration: Fraction) -> str:
    duration = Fraction(duration)
    return str(duration.numerator) if duration.denominator == 1 else f"{duration.numerator}/{duration.denominator}"


def pitch_name(midi: int) -> str:
    return f"{PITCH_NAMES[midi % 12]}{midi // 12 - 1}"


def parse_pitch_name(name: str) -> int:
    for pitch_class in sorted(range(12), key=lambda pc: -len(PITCH_NAMES[pc])):
        prefix = PITCH_NAMES[pitch_class]
        if name.startswith(prefix):
            octave = name[len(prefix):]
            if octave.lstrip("-").isdigit():
                return pitch_class + 12 * (int(octave) + 1)
    raise ValueError(f"not a pitch name: {name!r} (expected e.g. C4, F#3, B-2)")


# ----------------------------------------------------------------------------- scores -> notes

def score_notes(score, grid: int = GRID) -> list[tuple[Fraction, Fraction, int]]:
    """(onset, end, MIDI pitch) of every pitched note in a music21 score, ties merged.

    Ties are merged here rather than with music21's stripTies, which mishandles chords
    whose pitches are only partly tied; zero-length (grace) notes and unpitched
    (percussion) notes are dropped because they carry no duration or pitch to learn.
    """
    elements = []
    for element in score.flatten().notes:
        onset = quantize(element.offset, grid)
        duration = quantize(element.quarterLength, grid)
        if duration <= 0:
            continue
        if element.isChord:
            # Per-note ties only: music21's chord-level tie reports one member's tie for all.
            members = [(n, n.tie) for n in element.notes]
        else:
            members = [(element, element.tie)]
        for note, tie in members:
            pitch = getattr(note, "pitch", None)
            if pitch is None:
                continue
            midi = int(round(pitch.ps))
            if not 0 <= midi <= 127:
                continue
            elements.append((onset, duration, midi, tie.type if tie is not None else None))
    elements.sort(key=lambda e: (e[0], e[2]))
    notes: list[list] = []
    open_by_pitch: dict[int, list] = {}
    for onset, duration, midi, tie_type in elements:
        current = open_by_pitch.get(midi)
        if tie_type in ("stop", "continue") and current is not None and current[1] == onset:
            current[1] = onset + duration
            continue
        note = [onset, onset + duration, midi]
        notes.append(note)
        open_by_pitch[midi] = note
    return sorted((n[0], n[1], n[2]) for n in notes)


class Timing(typing.TypedDict, total=False):
    """Where a piece sits in time, JSON-ready: `tempos` [[quarter, bpm], ...], `time_signatures`
    [[quarter, numerator, denominator], ...], and for a piece `start` (its first note, quarter notes)
    and `program` (General MIDI, 0-127)."""

    tempos: list
    time_signatures: list
    start: float
    program: int


def score_timing(score) -> Timing:
    """Tempo marks and time signatures of a music21 score as [[quarter, bpm]] and [[quarter, n, d]]."""
    flat = score.flatten()
    signatures: dict[float, list] = {}
    for signature in flat.getElementsByClass("TimeSignature"):
        signatures.setdefault(float(signature.offset), [float(signature.offset), int(signature.numerator),
                                                        int(signature.denominator)])
    tempos: dict[float, list] = {}
    for mark in flat.getElementsByClass("MetronomeMark"):
        bpm = mark.getQuarterBPM() if mark.number is not None else None
        if bpm and bpm > 0:
            tempos[float(mark.offset)] = [float(mark.offset), round(float(bpm), 6)]
    tempos_list = [tempos[k] for k in sorted(tempos)]
    signature_list = [signatures[k] for k in sorted(signatures)]
    if not tempos_list or tempos_list[0][0] > 0:
        tempos_list.insert(0, [0.0, 120.0])
    if not signature_list or signature_list[0][0] > 0:
        signature_list.insert(0, [0.0, 4, 4])
    return {"tempos": tempos_list, "time_signatures": signature_list}


# Key profiles (weight of each pitch class above the tonic) of Aarden and Essen, as Humdrum's `keycor`
# publishes them; music21's `analyze("key")` uses the same ones, so `estimate_key` names the key it names.
AARDEN_ESSEN_MAJOR = (17.7661, 0.145624, 14.9265, 0.160186, 19.8049, 11.3587,
                      0.291248, 22.062, 0.145624, 8.15494, 0.232998, 4.95122)
AARDEN_ESSEN_MINOR = (18.2648, 0.737619, 14.0499, 16.8599, 0.702494, 14.4362,
                      0.702494, 18.6161, 4.56621, 1.93186, 7.37619, 1.75623)
# Tonic spellings of the key names (the corpus manifest's `key`), in music21's style ("-" is a flat).
_MAJOR_NAMES = ("C", "D-", "D", "E-", "E", "F", "F#", "G", "A-", "A", "B-", "B")
_MINOR_NAMES = ("C", "C#", "D", "E-", "E", "F", "F#", "G", "G#", "A", "B-", "B")


def estimate_key(notes) -> tuple[int, str]:
    """(semitones that move the notes' key to C major / A minor, in -6..5; the key's name), or (0, "unknown").

    The one key estimator of the package: preparation (MIDI files and music21 scores alike) names and
    normalises a piece's key with it, and the control report checks generated pieces with it. Each pitch
    class is weighted by how long its notes sound (`notes` are (onset, end, pitch) in any one time unit),
    and the key is the one of the 24 whose Aarden-Essen profile correlates best with those weights
    (Pearson; the first of equals in the order C..B major, then C..B minor). On the 433 Bach chorales of
    music21's corpus it names the key `score.analyze("key")` names in every one.
    """
    weights = np.zeros(12)
    for onset, end, pitch, *_ in notes:
        weights[int(pitch) % 12] += float(end - onset)
    if not weights.any() or np.all(weights == weights[0]):
        return 0, "unknown"
    best = (-2.0, 0, "major")
    for mode, profile in (("major", AARDEN_ESSEN_MAJOR), ("minor", AARDEN_ESSEN_MINOR)):
        for tonic in range(12):
            score = float(np.corrcoef(weights, np.roll(profile, tonic))[0, 1])
            if score > best[0]:
                best = (score, tonic, mode)
    _, tonic, mode = best
    names = _MAJOR_NAMES if mode == "major" else _MINOR_NAMES
    return shift_to_c(tonic, mode), f"{names[tonic]} {mode}"


def key_shift(score) -> tuple[int, str]:
    """Semitones that move the score's estimated key (`estimate_key` of its notes) to C major / A minor (in -6..5)."""
    return estimate_key(score_notes(score))


def shift_to_c(tonic: int, mode: str) -> int:
    """Semitones (in -6..5) that move a key with this tonic pitch class to C major, or A minor if minor."""
    target = 0 if mode == "major" else 9
    shift = (target - tonic) % 12
    return shift - 12 if shift > 5 else shift


# ----------------------------------------------------------------------------- notes <-> sonorities

def _ticks(value, grid: int = GRID) -> int:
    if isinstance(value, int):
        return value * grid
    if isinstance(value, Fraction):
        # Integer arithmetic: building a Fraction per call dominated parsing time.
        numerator, denominator = value.numerator * grid, value.denominator
        if numerator % denominator == 0:
            return numerator // denominator
        return round(Fraction(numerator, denominator))
    return round(float(value) * grid)


def canonical_notes(notes, grid: int = GRID) -> list[tuple[int, int, int]]:
    """(onset, end, pitch) in grid ticks, one note per pitch at a time.

    A re-attack of a sounding pitch ends the older note and the new note lasts as long
    as either did. Sonorities can only say "this pitch sounds" once, so overlapping
    unisons (two voices on one pitch) are folded the same way on every encode, which
    makes decode -> encode exact.
    """
    by_pitch: dict[int, list] = {}
    for a, b, p, *_ in notes:
        a, b = _ticks(a, grid), _ticks(b, grid)
        if b > a:
            by_pitch.setdefault(int(p), []).append([a, b])
    out = []
    for pitch, spans in by_pitch.items():
        spans.sort()
        merged: list[list] = []
        for onset, end in spans:
            if merged and onset < merged[-1][1]:
                end = max(end, merged[-1][1])
                if onset == merged[-1][0]:
                    merged[-1][1] = end
                    continue
                merged[-1][1] = onset
            merged.append([onset, end])
        out.extend((a, b, pitch) for a, b in merged)
    out.sort()
    return out


def notes_to_sonorities(notes, max_duration=Fraction(8), grid: int = GRID) -> list[Sonority]:
    """Cut the piece at every onset and offset; each span becomes one sonority.

    `notes` are (onset, end, pitch) in quarter notes. A pitch is `held` when the same
    note sounded in the span before. Spans longer than `max_duration` are split into
    held continuations (rests into several rests) so the duration vocabulary stays small.
    """
    limit = _ticks(Fraction(max_duration), grid)
    notes = canonical_notes(notes, grid)
    if not notes:
        return []
    times = sorted({t for n in notes for t in (n[0], n[1])})
    by_onset: dict[int, list] = {}
    for note in notes:
        by_onset.setdefault(note[0], []).append(note)
    sounding: dict[int, int] = {}  # pitch -> end tick of the note sounding it
    out: list[Sonority] = []
    durations: dict[int, Fraction] = {}
    for begin, end in zip(times, times[1:]):
        previous = sounding
        sounding = {p: e for p, e in previous.items() if e > begin}
        attacked = set()
        for _, note_end, pitch in by_onset.get(begin, ()):
            attacked.add(pitch)
            sounding[pitch] = note_end
        pitches = tuple(sorted(sounding))
        held_flags = tuple(p not in attacked for p in pitches)
        remaining = end - begin
        first = True
        while remaining > 0:
            piece = min(remaining, limit)
            if piece not in durations:
                durations[piece] = Fraction(piece, grid)
            flags = held_flags if first else (True,) * len(pitches)
            out.append(Sonority(pitches, flags, durations[piece]))
            remaining -= piece
            first = False
    return out


def sonorities_to_notes(sonorities) -> np.ndarray:
    """Notes as a float array (n, 3): onset, duration (quarter notes), MIDI pitch."""
    notes: list[list] = []
    open_notes: dict[int, list] = {}
    time = Fraction(0)
    for sonority in sonorities:
        still_open = {}
        for pitch, held in zip(sonority.pitches, sonority.held):
            if held and pitch in open_notes:
                note = open_notes[pitch]
                note[1] += sonority.duration
            else:
                note = [time, sonority.duration, pitch]
                notes.append(note)
            still_open[pitch] = note
        open_notes = still_open
        time += sonority.duration
    if not notes:
        return np.zeros((0, 3), dtype=np.float64)
    return np.array([[float(a), float(d), p] for a, d, p in sorted(notes, key=lambda n: (n[0], n[2]))],
                    dtype=np.float64)


# ----------------------------------------------------------------------------- sonorities <-> tokens

def sonorities_to_tokens(sonorities, representation: str = "note") -> list[str]:
    if representation == "note":
        tokens: list[str] = []
        for sonority in sonorities:
            if sonority.pitches:
                tokens.extend(("hold:" if held else "pitch:") + str(p)
                              for p, held in zip(sonority.pitches, sonority.held))
            else:
                tokens.append(REST)
            tokens.append("dur:" + format_duration(sonority.duration))
        return tokens
    if representation == "classic":
        # The tutorial's encoding: one token per attack, a note name or the chord's
        # pitch classes; rests and durations are dropped.
        tokens = []
        for sonority in sonorities:
            attacked = [p for p, held in zip(sonority.pitches, sonority.held) if not held]
            if not attacked:
                continue
            if len(attacked) == 1:
                tokens.append(pitch_name(attacked[0]))
            else:
                tokens.append(".".join(str(pc) for pc in sorted({p % 12 for p in attacked})))
        return tokens
    raise ValueError(f"unknown representation {representation!r} (expected note or classic)")


def tokens_to_sonorities(tokens, representation: str = "note", *, classic_step=Fraction(1, 2),
                         report: DecodeReport | None = None) -> list[Sonority]:
    """Inverse of sonorities_to_tokens; tolerant of ill-formed generated sequences.

    Special and control tokens are skipped; a `hold:` whose pitch was not sounding becomes an
    attack; pitches without a following duration are dropped. Each repair is counted
    in `report`.
    """
    report = report or DecodeReport()
    if representation == "classic":
        return _classic_sonorities(tokens, Fraction(classic_step).limit_denominator(GRID), report=report)
    if representation != "note":
        raise ValueError(f"unknown representation {representation!r} (expected note or classic)")
    return _note_sonorities(tokens, report)


def _classic_sonorities(tokens, step: Fraction, *, report: DecodeReport) -> list[Sonority]:
    """One attack of `step` quarter notes per note name or pitch-class chord."""
    out: list[Sonority] = []
    for token in tokens:
        if token in SPECIAL_TOKENS or is_control(token) or is_fim(token):
            continue
        try:
            if "." in token or token.isdigit():
                pitches = tuple(sorted({60 + int(pc) for pc in token.split(".")}))
            else:
                pitches = (parse_pitch_name(token),)
        except ValueError:
            report.add("unparseable token")
            continue
        out.append(Sonority(pitches, tuple(False for _ in pitches), step))
    return out


def _note_sonorities(tokens, report: DecodeReport) -> list[Sonority]:
    """Pitches, holds and a rest gather until a duration token closes them into a sonority."""
    out: list[Sonority] = []
    pending: dict[int, bool] = {}
    rest = False
    previous: set[int] = set()
    for token in tokens:
        if token in SPECIAL_TOKENS or is_fim(token):
            continue
        kind, _, value = token.partition(":")
        if kind in CONTROL_KINDS:
            continue
        if token == REST:
            rest = True
        elif kind in ("pitch", "hold") and value.lstrip("-").isdigit():
            pitch = int(value)
            held = kind == "hold"
            if held and pitch not in previous:
                report.add("hold of a pitch that was not sounding")
                held = False
            pending[pitch] = pending.get(pitch, True) and held
        elif kind == "dur":
            duration = _duration(value, report)
            if duration is None:
                continue
            if rest and pending:
                report.add("rest together with pitches")
            pitches = tuple(sorted(pending))
            out.append(Sonority(pitches, tuple(pending[p] for p in pitches), duration))
            previous = set(pitches)
            pending, rest = {}, False
        else:
            report.add("unparseable token")
    if pending or rest:
        report.add("pitches without a duration at the end")
    return out


_DURATIONS: dict[str, Fraction] = {}  # "dur:" values already parsed (a few dozen distinct ones)


def _duration(value: str, report: DecodeReport) -> Fraction | None:
    """A `dur:` token's positive length in quarter notes, or None (a repair counted in `report`)."""
    duration = _DURATIONS.get(value)
    if duration is None:
        try:
            duration = _DURATIONS[value] = Fraction(value)
        except (ValueError, ZeroDivisionError):
            report.add("unparseable token")
            return None
    if duration <= 0:
        report.add("non-positive duration")
        return None
    return duration


def transpose_token(token: str, shift: int, *, representation: str = "note", low: int = 0,
                    high: int = 127) -> str | None:
    """The token moved by `shift` semitones, or None if its pitch leaves low..high (default: the MIDI range).

    Shift 0 returns every token as it is, even one outside low..high.
    """
    if token in SPECIAL_TOKENS or shift == 0:
        return token
    if representation == "note":
        kind, _, value = token.partition(":")
        if kind in ("pitch", "hold"):
            pitch = int(value) + shift
            return f"{kind}:{pitch}" if low <= pitch <= high else None
        tonic, _, mode = value.partition(":")
        if kind == "key" and tonic in PITCH_NAMES:
            # A key with its tonic moves with the music; a mode alone (normalised keys) does not.
            return f"key:{PITCH_NAMES[(PITCH_NAMES.index(tonic) + shift) % 12]}:{mode}"
        return token
    if "." in token or token.isdigit():
        return ".".join(str(pc) for pc in sorted({(int(pc) + shift) % 12 for pc in token.split(".")}))
    try:
        pitch = parse_pitch_name(token) + shift
    except ValueError:
        return token
    return pitch_name(pitch) if low <= pitch <= high else None


def token_representations(token: str) -> set[str]:
    """Which representations' grammar a token belongs to (empty if none; specials fit both)."""
    if token in SPECIAL_TOKENS:
        return {"note", "classic"}
    if is_fim(token):
        return {"note"}
    kind, _, value = token.partition(":")
    if token == REST or (kind in ("pitch", "hold") and value.isdigit()) or kind == "dur" or kind in CONTROL_KINDS:
        return {"note"}
    if all(part.isdigit() and int(part) < 12 for part in token.split(".")):
        return {"classic"}
    try:
        parse_pitch_name(token)
    except ValueError:
        return set()
    return {"classic"}


# Token kinds of the sampling grammar, as shipped in vocab.json's "grammar".
GRAMMAR_KINDS = ("banned", "end", "pitch", "hold", "rest", "dur", "event", "control", "fim")


def grammar_table(tokens, representation: str = "note") -> dict:
    """Per-token data of the sampling grammar: {"rules", "kinds", "pitches"}, JSON-ready.

    `rules` is "note" (sonorities: ascending pitch/hold tokens or one rest, closed by
    a duration; a hold only of a pitch sounding in the previous sonority; the end
    token only between sonorities) or "any" (classic: every token but pad/unk).
    `kinds[i]` is one of GRAMMAR_KINDS; `pitches[i]` is the MIDI pitch of a pitch or
    hold token and -1 otherwise. Tokens the decoder would repair or skip (pad, unk,
    unparseable, non-positive durations) are "banned". Control tokens (`key:`, `density:`,
    `poly:`) are "control": the model reads them, and no sampler emits them yet (they are
    never allowed, and they do not move the grammar's state). The fill-in-the-middle sentinels
    are "fim": never sampled by the grammar either (only keras_music.infill lets `<fim_end>` close
    a filled gap), and they do not move its state.
    """
    if representation not in ("note", "classic"):
        raise ValueError(f"unknown representation {representation!r} (expected note or classic)")
    kinds, pitches = [], []
    for token in tokens:
        kind, pitch = "banned", -1
        if token == BOUNDARY:
            kind = "end"
        elif token in SPECIAL_TOKENS:
            kind = "banned"
        elif is_control(token):
            kind = "control"
        elif is_fim(token):
            kind = "fim"
        elif representation == "classic":
            kind = "event"
        elif token == REST:
            kind = "rest"
        else:
            prefix, _, value = token.partition(":")
            if prefix in ("pitch", "hold") and value.isdigit() and int(value) <= 127:
                kind, pitch = prefix, int(value)
            elif prefix == "dur":
                try:
                    kind = "dur" if Fraction(value) > 0 else "banned"
                except (ValueError, ZeroDivisionError):
                    kind = "banned"
        kinds.append(kind)
        pitches.append(pitch)
    return {"rules": "note" if representation == "note" else "any", "kinds": kinds, "pitches": pitches}


def ends_event(token: str, representation: str = "note") -> bool:
    """Whether a token closes a musical event (sonority): its duration token, or any non-special token for classic."""
    if representation == "note":
        return token.startswith("dur:")
    return token not in SPECIAL_TOKENS and not is_control(token) and not is_fim(token)


def event_ends(tokens, representation: str = "note") -> list[int]:
    """The index just past each event's last token (cut there to keep whole events)."""
    return [i + 1 for i, token in enumerate(tokens) if ends_event(token, representation)]


def count_events(tokens, representation: str = "note") -> int:
    """Musical events (sonorities) in a token list."""
    return sum(1 for token in tokens if ends_event(token, representation))


def event_keys(sonorities) -> list[tuple]:
    """Hashable per-event keys for event-level metrics (distinct ratio, repetition)."""
    return [(s.pitches, s.held, s.duration) for s in sonorities]


# ----------------------------------------------------------------------------- sonorities -> music21

def sonorities_to_stream(sonorities, tempo: float = 90.0, *, instrument: str = "Piano",
                         time_signature: tuple[int, int] | None = (4, 4), title: str | None = None):
    """A single-part music21 score: chords/notes/rests with ties for held pitches."""
    from music21 import chord, instrument as m21instrument, meter, metadata, note, stream, tempo as m21tempo, tie

    part = stream.Part()
    try:
        part.insert(0, m21instrument.fromString(instrument))
    except Exception:  # music21 raises its own error type for unknown names
        part.insert(0, m21instrument.Piano())
    part.insert(0, m21tempo.MetronomeMark(number=tempo))
    if time_signature:
        part.insert(0, meter.TimeSignature(f"{time_signature[0]}/{time_signature[1]}"))
    offset = Fraction(0)
    for index, sonority in enumerate(sonorities):
        following = sonorities[index + 1] if index + 1 < len(sonorities) else None
        continues = set()
        if following is not None:
            continues = {p for p, h in zip(following.pitches, following.held) if h}
        if not sonority.pitches:
            element = note.Rest(quarterLength=sonority.duration)
        else:
            members = []
            for pitch, held in zip(sonority.pitches, sonority.held):
                member = note.Note(pitch, quarterLength=sonority.duration)
                goes_on = pitch in continues
                if held and goes_on:
                    member.tie = tie.Tie("continue")
                elif held:
                    member.tie = tie.Tie("stop")
                elif goes_on:
                    member.tie = tie.Tie("start")
                members.append(member)
            element = members[0] if len(members) == 1 else chord.Chord(members, quarterLength=sonority.duration)
        part.insert(offset, element)
        offset += sonority.duration
    score = stream.Score()
    if title:
        score.insert(0, metadata.Metadata(title=title))
    score.insert(0, part)
    return score


def stream_to_tokens(score, representation: str = "note", *, max_duration=Fraction(8),
                     shift: int = 0, grid: int = GRID) -> list[str]:
    notes = [(a, b, p + shift) for a, b, p in score_notes(score, grid) if 0 <= p + shift <= 127]
    return sonorities_to_tokens(notes_to_sonorities(notes, max_duration, grid), representation)
