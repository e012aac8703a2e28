"""MIDI in and out: files with known ground truth built with mido, round-tripped, read back with mido."""

import json
import os
from fractions import Fraction as F

import mido
import pytest

from keras_music import config, corpus, midi, roundtrip

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


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
    """A file with every hard case, and the notes, tempo map and metre a faithful round trip must give back."""
    directory = tmp_path_factory.mktemp("truth")
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


@pytest.fixture(scope="module")
def round_tripped(ground_truth, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("roundtrip"))
    settings = config.load([], ["data.min_events=1", f"data.sources=[{ground_truth['path']}]"])
    record = roundtrip.roundtrip(settings, out, show_progress=False)
    return out, record


def test_round_trip_keeps_every_note_the_tempo_map_the_metre_the_pickup_and_the_programs(ground_truth, round_tripped):
    out, _ = round_tripped
    notes, tempos, signatures = read_back(os.path.join(out, "truth.mid"))
    assert notes == ground_truth["notes"]
    assert tempos == ground_truth["tempos"]
    assert signatures == ground_truth["signatures"]
    assert notes[0][0] == 3  # the pickup keeps its place in the bar
    assert {n[3] for n in notes} == {0, 40}
    assert all(n[2] >= 48 for n in notes)  # no drum notes (36-38) came through


def test_every_note_is_accounted_for_in_the_fidelity_record(ground_truth, round_tripped):
    out, record = round_tripped
    with open(os.path.join(out, "fidelity.json")) as handle:
        assert json.load(handle) == json.loads(json.dumps(record))
    piece = record["pieces"][0]
    account = piece["midi"]
    pitched = len(ground_truth["notes"]) + 6  # plus the doubled track's six notes
    assert account["notes_read"] == pitched + 10
    assert account["notes_dropped"] == {"percussion": 10}
    assert account["duplicates_merged"] == 6
    assert account["notes_on_grid"] == pitched and account["notes_moved"] == 0
    assert account["tempo_changes"] == 2 and account["time_signature_changes"] == 3
    assert piece["check"]["ok"] and piece["check"]["notes_misplaced"] == 0
    assert piece["notes_written"] == len(ground_truth["notes"])
    assert [p["program"] for p in piece["parts"]] == [0, 40, 0]


def test_off_grid_notes_move_to_the_nearest_point_and_never_vanish(tmp_path):
    # 1/100 of a quarter is below the grid: it becomes one grid step; 1/5 is off the grid.
    events = sum((note(a, b, p, tpq=1000) for a, b, p in [(0, F(1, 100), 60), (1, F(6, 5), 62), (2, 3, 64),
                                                            (3, 4, 65)]), [])
    path = build(tmp_path / "off.mid", [events], ticks_per_beat=1000)
    record = corpus.parse_bytes(path, open(path, "rb").read(), corpus.ParseSettings(normalize_key=False, grid=24))
    assert record["status"] == "parsed"
    account = record["midi"]
    assert account["notes_moved"] == 2 and account["notes_on_grid"] == 2
    assert account["notes_lengthened"] == 1
    # 6/5 quarter -> nearest 24th is 29/24; the move is |6/5 - 29/24| = 1/120 quarter.
    assert account["largest_move"] == pytest.approx(float(F(1, 100)))
    assert [n[:3] for n in record["notes"]] == [[0, 1, 60], [24, 29, 62], [48, 72, 64], [72, 96, 65]]


def test_a_coarser_grid_is_applied_as_configured(tmp_path):
    events = note(0, F(1, 8), 60) + note(F(1, 8), F(1, 4), 62) + note(1, 2, 64)
    path = build(tmp_path / "grid.mid", [events])
    data = open(path, "rb").read()
    fine = corpus.parse_bytes(path, data, corpus.ParseSettings(normalize_key=False, grid=24))
    coarse = corpus.parse_bytes(path, data, corpus.ParseSettings(normalize_key=False, grid=4))
    assert fine["midi"]["notes_moved"] == 0
    assert coarse["midi"]["notes_moved"] == 2
    assert corpus.notes_from_record(fine)[:2] == [(0, F(1, 8), 60), (F(1, 8), F(1, 4), 62)]
    # 1/8 rounds up to 1/4 on a quarter-of-a-quarter grid (halves round up).
    assert corpus.notes_from_record(coarse)[:2] == [(0, F(1, 4), 60), (F(1, 4), F(1, 4) + F(1, 4), 62)]


def test_huge_ticks_round_trip_exactly_and_absurd_ones_are_skipped(tmp_path):
    far = 10_000_000  # ticks: 10,416 quarter notes of silence, then two notes
    events = note(0, 1, 60, tpq=960) + note(1, 2, 62, tpq=960)
    events += [(far, mido.Message("note_on", note=64, velocity=80)), (far + 960, mido.Message("note_off", note=64)),
               (far + 960, mido.Message("note_on", note=65, velocity=80)), (far + 1920, mido.Message("note_off", note=65))]
    path = build(tmp_path / "far.mid", [events], ticks_per_beat=960)
    out = str(tmp_path / "out")
    roundtrip.roundtrip(config.load([], ["data.min_events=1", f"data.sources=[{path}]"]), out, show_progress=False)
    notes, _, _ = read_back(os.path.join(out, "far.mid"))
    assert [(n[0], n[1], n[2]) for n in notes] == [(0, 1, 60), (1, 2, 62), (F(far, 960), F(far, 960) + 1, 64),
                                                   (F(far, 960) + 1, F(far, 960) + 2, 65)]
    absurd = build(tmp_path / "absurd.mid", [note(0, 1, 60, tpq=24) + [(0x0FFFFFFF, mido.Message("note_on", note=61, velocity=80)),
                                                               (0x0FFFFFFF + 10, mido.Message("note_off", note=61))]],
                   ticks_per_beat=24)
    record = corpus.parse_bytes(absurd, open(absurd, "rb").read(), corpus.ParseSettings())
    assert record["status"] == "skipped" and record["reason"].startswith("timeline too long")


def test_percussion_only_and_zero_length_files_are_skipped_with_their_counts(tmp_path):
    drums = build(tmp_path / "drums.mid", [sum((note(i, i + 1, 36, channel=9) for i in range(8)), [])])
    record = corpus.parse_bytes(drums, open(drums, "rb").read(), corpus.ParseSettings())
    assert record == {"status": "skipped", "reason": "no notes (no pitched notes with a duration; dropped 8 percussion)"}
    zero = build(tmp_path / "zero.mid", [sum((note(i, i, 60 + i) for i in range(4)), [])])
    record = corpus.parse_bytes(zero, open(zero, "rb").read(), corpus.ParseSettings())
    assert record["status"] == "skipped" and "4 too short (zero length in the file)" in record["reason"]


def test_the_self_check_flags_a_file_whose_timeline_drifted(ground_truth, monkeypatch):
    real = corpus.events.notes_to_sonorities

    def lose_the_first_sonority(*args, **kwargs):
        return real(*args, **kwargs)[1:]

    monkeypatch.setattr(corpus.events, "notes_to_sonorities", lose_the_first_sonority)
    data = open(ground_truth["path"], "rb").read()
    record = corpus.parse_bytes(ground_truth["path"], data, corpus.ParseSettings(normalize_key=False))
    assert record["status"] == "skipped"
    assert record["reason"].startswith("timeline drift:")
    assert record["check"]["notes_misplaced"] > 0 and not record["check"]["ok"]


def test_key_estimation_from_the_pitch_class_profile():
    grid = 24
    d_major_scale = [62, 64, 66, 67, 69, 71, 73, 74]
    notes = [(i * grid, (i + 1) * grid, p) for i, p in enumerate(d_major_scale + [62, 66, 69, 62])]
    assert midi.estimate_key(notes, grid) == (-2, "D major")
    a_minor = [57, 60, 64, 57, 59, 60, 62, 64, 65, 64, 62, 60, 59, 57, 56, 57]
    notes = [(i * grid, (i + 1) * grid, p) for i, p in enumerate(a_minor)]
    assert midi.estimate_key(notes, grid) == (0, "A minor")


def test_roundtrip_command_prints_a_table_and_reports_skips(ground_truth, tmp_path, capsys):
    junk = tmp_path / "notes.mid"
    junk.write_bytes(b"not a midi file at all")
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        roundtrip.main([ground_truth["path"], str(junk), "--out", out, "--set", "data.min_events=1", "--quiet"])
    assert exit_info.value.code == 0
    with pytest.raises(SystemExit) as exit_info:
        roundtrip.main([ground_truth["path"], str(junk), "--out", out, "--set", "data.min_events=1"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "truth.mid" in printed and "skipped" in printed and "no MThd header" in printed
    assert "1 of 2 files used, 0 flagged" in printed
    assert sorted(os.listdir(out)) == ["fidelity.json", "truth.mid"]


def test_roundtrip_musicxml_holds_the_same_notes(ground_truth, tmp_path):
    from music21 import converter

    from keras_music import events

    out = str(tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        roundtrip.main([ground_truth["path"], "--out", out, "--set", "data.min_events=1", "--musicxml", "--quiet"])
    assert exit_info.value.code == 0
    score = converter.parse(os.path.join(out, "truth.musicxml"))
    notes = events.score_notes(score)
    first = ground_truth["notes"][0][0]  # MusicXML starts at the first note
    expected = events.canonical_notes([(a - first, b - first, p) for a, b, p, _ in ground_truth["notes"]])
    assert events.canonical_notes(notes) == expected
