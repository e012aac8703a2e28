"""Standard MIDI files <-> notes on a grid, with the tempo map, metre, programs and timeline kept."""

from __future__ import annotations

import dataclasses
import struct
from fractions import Fraction

import numpy as np

from keras_music import events
from keras_music.errors import KerasMusicError

PERCUSSION_CHANNEL = 10  # General MIDI's drum channel (1-based): unpitched, left out
DEFAULT_TEMPO = 500_000  # microseconds per quarter note (120 bpm) when a file sets none
# A timeline longer than this many quarter notes (about 28 hours at 120 bpm) is a
# corrupt or absurd file, not music: tokenising it would only produce rests.
MAX_QUARTERS = 200_000
WRITE_TICKS_PER_QUARTER = 960  # divisible by 24, 32, 48 and 64: every grid point is a whole tick



class MidiError(KerasMusicError, ValueError):
    """The bytes are not a MIDI file this reader can use; the message says why."""


@dataclasses.dataclass
class RawMidi:
    """What a MIDI file says, in its own ticks: pitched notes per part, tempo map, metre."""

    ticks_per_quarter: int
    notes: list[tuple[int, int, int, int, int]]  # (onset, end, pitch, velocity, part) in ticks
    parts: list[dict]  # {"track", "channel", "program", "name"} in first-note order
    tempos: list[tuple[int, int]]  # (tick, microseconds per quarter), every change on any track
    time_signatures: list[tuple[int, int, int]]  # (tick, numerator, denominator)
    dropped: dict[str, int]  # notes left out, by reason
    unterminated: int = 0  # notes never switched off, ended at their track's end


def read(data: bytes) -> RawMidi:
    """Pair note-on/off per track, channel and pitch from the file's own events (exact ticks).

    A note-on with velocity 0 is a note-off; a re-attack of a sounding pitch ends the
    older note there (and that note's own note-off, when it comes, is consumed);
    percussion (channel 10) and notes switched off at the tick they start are counted
    and left out.
    """
    midi_file = _midi_file(data)
    found = _Found()
    for track_index, track in enumerate(midi_file.tracks):
        _read_track(track, track_index, found=found)
    found.notes.sort()
    return RawMidi(ticks_per_quarter=int(midi_file.ticksPerQuarterNote), notes=found.notes, parts=found.parts,
                   tempos=sorted(found.tempos.items()),
                   time_signatures=sorted((t, n, d) for t, (n, d) in found.signatures.items()),
                   dropped=found.dropped, unterminated=found.unterminated)


def _midi_file(data: bytes):
    """music21's reading of the bytes, with ticks per quarter note; MidiError when it has none."""
    from music21 import midi as m21midi

    if not data.startswith(b"MThd"):
        raise MidiError("not a MIDI file (no MThd header)")
    midi_file = m21midi.MidiFile()
    try:
        midi_file.readstr(data)
    except Exception as error:  # music21 raises MidiException, IndexError, struct errors on bad bytes
        raise MidiError(f"unreadable MIDI: {type(error).__name__}: {str(error)[:200]}") from None
    if getattr(midi_file, "ticksPerSecond", None) or not getattr(midi_file, "ticksPerQuarterNote", None):
        raise MidiError("SMPTE (frames per second) time division is not supported; expected ticks per quarter note")
    return midi_file


@dataclasses.dataclass
class _Found:
    """What the tracks read so far hold, gathered across tracks."""

    notes: list = dataclasses.field(default_factory=list)
    parts: list = dataclasses.field(default_factory=list)
    part_numbers: dict = dataclasses.field(default_factory=dict)  # (track, channel, program) -> index in parts
    tempos: dict = dataclasses.field(default_factory=dict)  # tick -> microseconds per quarter
    signatures: dict = dataclasses.field(default_factory=dict)  # tick -> (numerator, denominator)
    dropped: dict = dataclasses.field(default_factory=dict)
    unterminated: int = 0

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def part(self, track: int, channel: int, program: int, name: str) -> int:
        key = (track, channel, program)
        if key not in self.part_numbers:
            self.part_numbers[key] = len(self.parts)
            self.parts.append({"track": track, "channel": channel, "program": program, "name": name})
        return self.part_numbers[key]


def _read_track(track, track_index: int, *, found: _Found) -> None:
    """One track's tempo map, metre, name, programs and notes, added to `found`."""
    from music21 import midi as m21midi

    voice, meta = m21midi.ChannelVoiceMessages, m21midi.MetaEvents
    notes = _TrackNotes(track_index, found)
    tick = 0
    for event in track.events:
        if event.type == "DeltaTime":
            tick += int(event.time or 0)
            continue
        kind = event.type
        if kind == meta.SET_TEMPO and isinstance(event.data, bytes) and len(event.data) >= 3:
            value = int.from_bytes(event.data[:3], "big")
            if value > 0:
                found.tempos[tick] = value
        elif kind == meta.TIME_SIGNATURE and isinstance(event.data, bytes) and len(event.data) >= 2:
            numerator, power = event.data[0], event.data[1]
            if numerator > 0 and power <= 6:
                found.signatures[tick] = (int(numerator), 2 ** int(power))
        elif kind == meta.SEQUENCE_TRACK_NAME and isinstance(event.data, bytes) and not notes.name:
            notes.name = event.data.decode("latin-1", "replace").strip()
        elif kind == voice.PROGRAM_CHANGE and event.channel:
            notes.programs[event.channel] = int(event.data or 0) & 0x7F
        elif kind in (voice.NOTE_ON, voice.NOTE_OFF) and event.channel and event.pitch is not None:
            key = (int(event.channel), int(event.pitch))
            if kind == voice.NOTE_ON and (event.velocity or 0) > 0:
                notes.on(key, tick, int(event.velocity))
            else:
                notes.off(key, tick)
    notes.end(tick)


class _TrackNotes:
    """Pairs one track's note-ons and note-offs per (channel, pitch)."""

    def __init__(self, track_index: int, found: _Found):
        self.track_index = track_index
        self.found = found
        self.name = ""
        self.programs: dict[int, int] = {}
        self.sounding: dict[tuple[int, int], tuple[int, int, int]] = {}  # (channel, pitch) -> (onset, velocity, part)
        # Note-offs still owed by notes a re-attack already ended: note-ons and note-offs
        # pair first-in first-out, so such an off is theirs, not the sounding note's.
        self.owed: dict[tuple[int, int], int] = {}

    def on(self, key: tuple[int, int], tick: int, velocity: int) -> None:
        if key in self.sounding:
            self._close(key, tick)
            self.owed[key] = self.owed.get(key, 0) + 1
        if key[0] == PERCUSSION_CHANNEL:
            self.found.drop("percussion")
        elif not 0 <= key[1] <= 127:
            self.found.drop("out of range")
        else:
            part = self.found.part(self.track_index, key[0], self.programs.get(key[0], 0), self.name)
            self.sounding[key] = (tick, velocity, part)

    def off(self, key: tuple[int, int], tick: int) -> None:
        if self.owed.get(key):
            self.owed[key] -= 1
        elif key in self.sounding:
            self._close(key, tick)

    def end(self, tick: int) -> None:
        """Notes never switched off end where their track ends."""
        for key in list(self.sounding):
            self.found.unterminated += 1
            self._close(key, tick)

    def _close(self, key: tuple[int, int], end: int) -> None:
        onset, velocity, part = self.sounding.pop(key)
        if end > onset:
            self.found.notes.append((onset, end, key[1], velocity, part))
        else:  # switched off where it started: no duration in the file itself
            self.found.drop("too short (zero length in the file)")


def tempo_bpm(microseconds_per_quarter: int) -> float:
    return 60_000_000.0 / microseconds_per_quarter


# ----------------------------------------------------------------------------- onto the grid

def to_grid(tick: int, ticks_per_quarter: int, *, grid: int) -> int:
    """The nearest grid point (halves round up), in grid steps."""
    return (2 * tick * grid + ticks_per_quarter) // (2 * ticks_per_quarter)


def quantize(raw: RawMidi, grid: int) -> tuple[list[list[int]], dict]:
    """Notes as [onset, end, pitch, part] in grid steps, and the account of what happened to them.

    Off-grid notes move to the nearest grid point; a note that would have no length gets
    one grid step; notes of one pitch struck together (doubled tracks) become one.
    """
    tpq = raw.ticks_per_quarter
    exact = moved = lengthened = 0
    largest = Fraction(0)
    by_onset_pitch: dict[tuple[int, int], list[int]] = {}
    for onset, end, pitch, _velocity, part in raw.notes:
        a, b = to_grid(onset, tpq, grid=grid), to_grid(end, tpq, grid=grid)
        if onset * grid % tpq == 0 and end * grid % tpq == 0:
            exact += 1
        else:
            moved += 1
            largest = max(largest, abs(Fraction(onset, tpq) - Fraction(a, grid)),
                          abs(Fraction(end, tpq) - Fraction(b, grid)))
        if b <= a:
            b = a + 1
            lengthened += 1
        key = (a, pitch)
        if key in by_onset_pitch:
            # Keep the longer of two notes struck together on one pitch.
            by_onset_pitch[key][1] = max(by_onset_pitch[key][1], b)
        else:
            by_onset_pitch[key] = [a, b, pitch, part]
    notes = sorted(by_onset_pitch.values())
    account = {
        "notes_read": len(raw.notes) + sum(raw.dropped.values()),
        "notes_on_grid": exact,
        "notes_moved": moved,
        "largest_move": float(largest),
        "notes_lengthened": lengthened,
        "duplicates_merged": len(raw.notes) - len(notes),
        "notes_dropped": dict(raw.dropped),
        "notes_unterminated": raw.unterminated,
    }
    return notes, account


def quarters(tick: int, ticks_per_quarter: int) -> float:
    return tick / ticks_per_quarter


def timing(raw: RawMidi) -> events.Timing:
    """Tempo map and metre in quarter notes (exact tick ratios as floats), as the run keeps them."""
    tpq = raw.ticks_per_quarter
    tempos = [[quarters(t, tpq), tempo_bpm(us)] for t, us in raw.tempos]
    if not tempos or tempos[0][0] > 0:
        tempos.insert(0, [0.0, tempo_bpm(DEFAULT_TEMPO)])
    signatures = [[quarters(t, tpq), n, d] for t, n, d in raw.time_signatures]
    if not signatures or signatures[0][0] > 0:
        signatures.insert(0, [0.0, 4, 4])
    return {"tempos": tempos, "time_signatures": signatures}


# ----------------------------------------------------------------------------- writing

def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _track(events: list[tuple[int, int, bytes]]) -> bytes:
    """Events (tick, order, bytes) -> an MTrk chunk; `order` breaks ties (note-offs before note-ons)."""
    body = bytearray()
    last = 0
    for tick, _, payload in sorted(events, key=lambda e: (e[0], e[1])):
        body += _vlq(tick - last) + payload
        last = tick
    body += _vlq(0) + b"\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


def write(notes, tempos=((0.0, 120.0),), *, time_signatures=((0.0, 4, 4),), parts=None,
          ticks_per_quarter: int = WRITE_TICKS_PER_QUARTER, title: str = "", markers=()) -> bytes:
    """A format-1 MIDI file: track 0 holds the tempo map and metre, one track per part.

    `notes` are (onset, end, pitch[, velocity[, part]]) in quarter notes; `tempos` are
    (quarter, bpm); `time_signatures` (quarter, numerator, denominator); `parts` are
    {"program", "channel", "name"} (default: one piano part); `markers` are (quarter, text) marker
    meta events on track 0.
    """
    parts = list(parts or [{"program": 0, "channel": 1, "name": ""}])

    def tick(q) -> int:
        return int(round(float(q) * ticks_per_quarter))

    conductor: list[tuple[int, int, bytes]] = []
    if title:
        name = title.encode("latin-1", "replace")[:127]
        conductor.append((0, 0, b"\xff\x03" + _vlq(len(name)) + name))
    for at, numerator, denominator in time_signatures:
        power = max(0, int(denominator).bit_length() - 1)
        conductor.append((tick(at), 1, b"\xff\x58\x04" + bytes([int(numerator) & 0xFF, power, 24, 8])))
    for at, bpm in tempos:
        value = max(1, min(0xFFFFFF, int(round(60_000_000.0 / float(bpm)))))
        conductor.append((tick(at), 2, b"\xff\x51\x03" + value.to_bytes(3, "big")))
    for at, text in markers:
        data = str(text).encode("latin-1", "replace")[:127]
        conductor.append((tick(at), 2, b"\xff\x06" + _vlq(len(data)) + data))
    tracks = [_track(conductor)]
    per_part: list[list[tuple[int, int, bytes]]] = [[] for _ in parts]
    for number, part in enumerate(parts):
        channel = (int(part.get("channel", 1)) - 1) & 0x0F
        name = str(part.get("name", "")).encode("latin-1", "replace")[:127]
        if name:
            per_part[number].append((0, 0, b"\xff\x03" + _vlq(len(name)) + name))
        per_part[number].append((0, 1, bytes([0xC0 | channel, int(part.get("program", 0)) & 0x7F])))
    for note in notes:
        onset, end, pitch = note[0], note[1], int(note[2])
        velocity = int(note[3]) if len(note) > 3 else 80
        number = int(note[4]) if len(note) > 4 and 0 <= int(note[4]) < len(parts) else 0
        channel = (int(parts[number].get("channel", 1)) - 1) & 0x0F
        start, stop = tick(onset), tick(end)
        if stop <= start:
            stop = start + 1
        velocity = max(1, min(127, velocity))
        per_part[number].append((start, 3, bytes([0x90 | channel, pitch & 0x7F, velocity])))
        per_part[number].append((stop, 2, bytes([0x80 | channel, pitch & 0x7F, 0])))
    tracks.extend(_track(events) for events in per_part)
    header = b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks), ticks_per_quarter)
    return header + b"".join(tracks)

