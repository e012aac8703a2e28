"""Tests for keras_music.piece_files: what a piece's MIDI, MusicXML, PNG and JSON hold, and whole-piece writes."""

import dataclasses
import json
import os
from fractions import Fraction

import mido
import pytest

from keras_music import events, generate, piece_files, pieces
from keras_music.sampling import SamplingSettings


@pytest.fixture(scope="module")
def generator(tiny_run):
    return generate.Generator(tiny_run, log=lambda message: None)


def canonical(piece):
    notes = [(a, a + d, p) for a, d, p in piece.notes]
    return events.sonorities_to_tokens(events.notes_to_sonorities(notes))


def vocabulary_tokens(generator, prefix):
    return [t for t in generator.vocabulary.tokens if t.startswith(prefix)]


def crafted_piece(generator):
    """Chords whose members end at different times and partly tied pitches, from the run's vocabulary."""
    pitches = [int(t.split(":")[1]) for t in vocabulary_tokens(generator, "pitch:")]
    durations = vocabulary_tokens(generator, "dur:")
    low, mid, high = pitches[2], pitches[len(pitches) // 2], pitches[-3]
    tokens = [f"pitch:{low}", f"pitch:{mid}", f"pitch:{high}", durations[1],
              f"hold:{mid}", durations[0], f"pitch:{low}", f"hold:{mid}", f"pitch:{high}", durations[-1],
              "rest", durations[0], f"pitch:{mid}", durations[1]]
    sonorities = events.tokens_to_sonorities(tokens)
    return pieces.Piece(tokens=tokens, primer_tokens=[], ids=generator.vocabulary.encode(tokens),
                        sonorities=sonorities, notes=events.sonorities_to_notes(sonorities), primer_events=0,
                        stop_reason="length", repairs={})


def midi_notes(piece):
    """The piece's notes as read_back gives them: (onset, end, pitch), the timeline's start included."""
    start = Fraction(piece.timing["start"])
    return sorted((start + Fraction(a).limit_denominator(96), start + Fraction(a + d).limit_denominator(96), int(p))
                  for a, d, p in piece.notes)


def musicxml_metre_and_tempo(path):
    from music21 import converter, meter, tempo

    parsed = converter.parse(path)
    signature = parsed.recurse().getElementsByClass(meter.TimeSignature)[0]
    mark = parsed.recurse().getElementsByClass(tempo.MetronomeMark)[0]
    return parsed, (signature.numerator, signature.denominator), mark.number


def test_a_piece_midi_holds_its_notes_tempo_map_metre_and_program(generator, tmp_path):
    from midi_truth import read_back

    piece = crafted_piece(generator)
    piece = dataclasses.replace(piece, timing={"start": 1.0, "tempos": [[0.0, 72.0], [2.0, 96.0]],
                                               "time_signatures": [[0.0, 3, 4]], "program": 40})
    path = tmp_path / "piece.mid"
    path.write_bytes(piece_files.piece_midi(piece, "a title"))
    notes, tempos, signatures = read_back(str(path))
    assert [(a, b, p) for a, b, p, _ in notes] == midi_notes(piece)
    assert {program for *_, program in notes} == {40}
    assert tempos == [(0, mido.bpm2tempo(72)), (2, mido.bpm2tempo(96))]
    assert signatures == [(0, 3, 4)]
    names = [m.name for track in mido.MidiFile(str(path)).tracks for m in track if m.type == "track_name"]
    assert "a title" in names


def test_written_midi_and_musicxml_reparse_into_the_same_events(generator, tmp_path):
    from music21 import converter

    from midi_truth import read_back

    written_pieces = generator.generate(num_samples=2, seed=8, sampling=SamplingSettings(length=25, temperature=1.2))
    written_pieces.append(crafted_piece(generator))
    paths = generator.write(written_pieces, str(tmp_path), tempo=120, instrument="Violin", prefix="take")
    assert len(paths) == 5 * len(written_pieces)  # MIDI, MusicXML, PNG, Ogg audio, JSON
    for number, piece in enumerate(written_pieces, start=1):
        stem = tmp_path / f"take-{number:02d}"
        expected = canonical(piece)
        assert expected
        # MIDI is judged with mido, an independent reader: every note where the piece has it.
        notes, tempos, _ = read_back(str(stem) + ".mid")
        start = Fraction(piece.timing["start"])
        written = [(a - start, b - a, p) for a, b, p, _ in notes]
        assert written == sorted((Fraction(a).limit_denominator(96), Fraction(d).limit_denominator(96), int(p))
                                 for a, d, p in piece.notes)
        assert {program for *_, program in notes} == {40}  # music21's Violin is GM program 41 (40 from 0)
        assert tempos == [(0, 500_000)]
        parsed = converter.parse(str(stem) + ".musicxml")
        assert events.stream_to_tokens(parsed, shift=0) == expected
        with open(str(stem) + ".png", "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
        record = json.loads((tmp_path / f"take-{number:02d}.json").read_text())
        assert record["tokens"] == piece.tokens and record["primer_tokens"] == piece.primer_tokens
        assert record["stop_reason"] == piece.stop_reason and record["repairs"] == piece.repairs
        assert record["settings"]["tempo"] == 120 and record["settings"]["instrument"] == "Violin"
        assert record["timing"]["tempos"] == [[0.0, 120.0]] and record["timing"]["program"] == 40
        assert record["files"]["audio"] == f"take-{number:02d}.ogg"
        with open(str(stem) + ".ogg", "rb") as handle:
            assert handle.read(4) == b"OggS"
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_bad_timing_in_a_manifest_never_reaches_the_files(generator, tmp_path):
    from midi_truth import read_back

    timing = pieces.record_timing({"start": float("nan"), "tempos": [[0.0, -5.0], [1.0, 90.0]],
                                   "time_signatures": [[0.0, 4, 3], [0.0, 0, 4], ["x", 3, 4]],
                                   "parts": [{"program": 400}], "notes": [[0, 24, 60, 0]]})
    piece = generator.generate(num_samples=1, seed=3, primer_tokens=[], sampling=SamplingSettings(length=4))[0]
    piece = dataclasses.replace(piece, timing=dict(timing, tempos=[[0.0, 90.0]]))
    writer = piece_files.Writer(generator.run_dir, log=lambda message: None, audio="none")
    paths = writer.write([piece], str(tmp_path / "out"))
    assert sorted(os.path.basename(p) for p in paths) == [f"sample-01{e}" for e in (".json", ".mid", ".musicxml",
                                                                                    ".png")]
    notes, tempos, signatures = read_back(str(tmp_path / "out" / "sample-01.mid"))
    assert [(a, b, p) for a, b, p, _ in notes] == midi_notes(piece)
    assert tempos == [(0, mido.bpm2tempo(90))] and signatures == [(0, 4, 4)]
    assert {program for *_, program in notes} == {0}
    parsed, metre, bpm = musicxml_metre_and_tempo(str(tmp_path / "out" / "sample-01.musicxml"))
    assert metre == (4, 4) and bpm == 90
    assert events.stream_to_tokens(parsed, shift=0) == canonical(piece)


def piece_files_in(directory):
    return sorted(os.listdir(directory))


def test_an_interrupted_write_leaves_whole_pieces_and_numbers_never_mix(generator, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    first = generator.generate(num_samples=2, seed=1, primer_tokens=[], sampling=SamplingSettings(length=4))
    generator.write(first, out, audio="none")
    before = {name: open(os.path.join(out, name), "rb").read() for name in piece_files_in(out)}
    assert sorted(before) == [f"sample-0{n}{e}" for n in (1, 2) for e in (".json", ".mid", ".musicxml", ".png")]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    second = generator.generate(num_samples=2, seed=2, primer_tokens=[], sampling=SamplingSettings(length=4))
    monkeypatch.setattr(piece_files, "plot_piano_roll", interrupted)  # Ctrl-C in the middle of a piece
    with pytest.raises(KeyboardInterrupt):
        generator.write(second, out, audio="none")
    # The earlier pieces are untouched, no half piece and no temporary file is left.
    assert {name: open(os.path.join(out, name), "rb").read() for name in piece_files_in(out)} == before
    monkeypatch.undo()
    # A write killed outright leaves its hidden staging folder; the next write removes it.
    os.makedirs(os.path.join(out, ".sample-3.tmp-killed"))
    paths = generator.write(second, out, audio="none")
    assert [os.path.basename(p) for p in paths if p.endswith(".json")] == ["sample-03.json", "sample-04.json"]
    assert piece_files_in(out) == sorted(list(before) + [f"sample-0{n}{e}" for n in (3, 4)
                                                         for e in (".json", ".mid", ".musicxml", ".png")])
    for name, data in before.items():
        assert open(os.path.join(out, name), "rb").read() == data
    assert json.loads(open(os.path.join(out, "sample-03.json")).read())["seed"] == 2


def test_the_run_samples_are_replaced_as_one_set(generator, tmp_path):
    out = str(tmp_path / "samples")
    for seed in (1, 2):
        generator.write(generator.generate(num_samples=2, seed=seed, primer_tokens=[], sampling=SamplingSettings(length=4)), out, audio="none",
                        replace=True)
    assert piece_files_in(out) == [f"sample-0{n}{e}" for n in (1, 2) for e in (".json", ".mid", ".musicxml", ".png")]
    assert json.loads(open(os.path.join(out, "sample-01.json")).read())["seed"] == 2


def test_numbers_continue_after_the_pieces_already_there(tmp_path):
    assert piece_files.next_number(str(tmp_path / "missing")) == 1
    for name in ("sample-01.mid", "sample-07.json", "sample-x.mid", "take-12.mid", "notes.txt"):
        (tmp_path / name).write_text("")
    assert piece_files.next_number(str(tmp_path)) == 8
    assert piece_files.next_number(str(tmp_path), "take") == 13
    assert piece_files.next_number(str(tmp_path), "piece") == 1
