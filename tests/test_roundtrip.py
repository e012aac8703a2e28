"""The roundtrip command: MIDI through parse and write, judged by mido (tests/midi_truth.py), never by keras_music."""

import json
import os
from fractions import Fraction as F

import mido
import pytest

from midi_truth import build, note, read_back

from keras_music import config, corpus, roundtrip


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
    record = corpus.parse_bytes(absurd, open(absurd, "rb").read(), settings=corpus.ParseSettings())
    assert record["status"] == "skipped" and record["reason"].startswith("timeline too long")


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
