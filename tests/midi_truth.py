"""MIDI files with known ground truth, written with mido, and mido's reading of them (independent of keras_music)."""

from fractions import Fraction as F

import mido

TPQ = 480


def build(path, tracks, ticks_per_beat=TPQ):
    """tracks: lists of (absolute tick, mido message); written with delta times."""
    song = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    for events in tracks:
        track = mido.MidiTrack()
        now = 0
        for tick, message in sorted(events, key=lambda e: e[0]):
            track.append(message.copy(time=tick - now))
            now = tick
        song.tracks.append(track)
    song.save(path)
    return str(path)


def note(onset, end, pitch, channel=0, zero_velocity_off=False, tpq=TPQ):
    """Two timed messages for a note from `onset` to `end` quarter notes."""
    off = (mido.Message("note_on", note=pitch, velocity=0, channel=channel) if zero_velocity_off
           else mido.Message("note_off", note=pitch, channel=channel))
    return [(round(onset * tpq), mido.Message("note_on", note=pitch, velocity=90, channel=channel)),
            (round(end * tpq), off)]


def read_back(path):
    """Notes (onset, end, pitch, program), tempo map (quarter, microseconds per quarter) and metre, read by mido."""
    song = mido.MidiFile(path)
    tpq = song.ticks_per_beat
    tick = 0
    programs, sounding, notes, tempos, signatures = {}, {}, [], [], []
    for message in mido.merge_tracks(song.tracks):
        tick += message.time
        q = F(tick, tpq)
        if message.type == "set_tempo":
            tempos.append((q, message.tempo))  # microseconds per quarter, the file's own unit
        elif message.type == "time_signature":
            signatures.append((q, message.numerator, message.denominator))
        elif message.type == "program_change":
            programs[message.channel] = message.program
        elif message.type in ("note_on", "note_off"):
            key = (message.channel, message.note)
            if key in sounding:
                onset = sounding.pop(key)
                notes.append((onset, q, message.note, programs.get(message.channel, 0)))
            if message.type == "note_on" and message.velocity > 0:
                sounding[key] = q
    return sorted(notes), tempos, signatures


def write_ground_truth(directory):
    """A file with every hard case, and the notes, tempo map and metre a faithful round trip must give back."""
    conductor = [(0, mido.MetaMessage("time_signature", numerator=4, denominator=4)),
                 (0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(100))),
                 (8 * TPQ, mido.MetaMessage("time_signature", numerator=3, denominator=4)),
                 (14 * TPQ, mido.MetaMessage("time_signature", numerator=6, denominator=8))]
    piano = [(0, mido.Message("program_change", program=0, channel=0))]
    expected = []
    # A pickup: nothing sounds for the first three beats of the 4/4 bar.
    piano += note(3, 4, 67)
    expected.append((F(3), F(4), 67, 0))
    for i in range(8):  # 32nds
        piano += note(4 + F(i, 8), 4 + F(i + 1, 8), 60 + i, zero_velocity_off=True)
        expected.append((4 + F(i, 8), 4 + F(i + 1, 8), 60 + i, 0))
    for i in range(6):  # sixteenth triplets
        piano += note(5 + F(i, 6), 5 + F(i + 1, 6), 72 - i)
        expected.append((5 + F(i, 6), 5 + F(i + 1, 6), 72 - i, 0))
    for i in range(3):  # eighth triplets
        piano += note(6 + F(i, 3), 6 + F(i + 1, 3), 55 + i)
        expected.append((6 + F(i, 3), 6 + F(i + 1, 3), 55 + i, 0))
    # Overlapping unison: the re-attack at 9 ends the first note there; the second lasts to 11.
    piano += note(8, 10, 48) + note(9, 11, 48)
    expected += [(F(8), F(9), 48, 0), (F(9), F(11), 48, 0)]
    for i in range(6):
        piano += note(11 + i, 12 + i, 50 + i)
        expected.append((F(11 + i), F(12 + i), 50 + i, 0))
    # Doubled track: the same notes again on another channel, struck at the same instants.
    doubled = [(0, mido.Message("program_change", program=0, channel=2))]
    for i in range(6):
        doubled += note(11 + i, 12 + i, 50 + i, channel=2)
    # A second instrument (violin, program 40) with a tempo change on its own track.
    violin = [(0, mido.Message("program_change", program=40, channel=1)),
              (10 * TPQ, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(60)))]
    for i in range(5):
        violin += note(12 + 1.5 * i, 13.5 + 1.5 * i, 79 + i, channel=1)
        expected.append((F(12) + F(3, 2) * i, F(27, 2) + F(3, 2) * i, 79 + i, 40))
    drums = [(0, mido.Message("program_change", program=0, channel=9))]
    for i in range(10):
        drums += note(i, i + F(1, 2), 36 + i % 3, channel=9)
    path = build(directory / "truth.mid", [conductor, piano, violin, doubled, drums])
    return {"path": path, "notes": sorted(expected), "tempos": [(F(0), mido.bpm2tempo(100)), (F(10), mido.bpm2tempo(60))],
            "signatures": [(F(0), 4, 4), (F(8), 3, 4), (F(14), 6, 8)]}
