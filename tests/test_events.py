"""Tests for keras_music.events: literal tokens, exact round trips, tolerant decoding."""

from fractions import Fraction as F

import numpy as np
import pytest
from music21 import chord, converter, note, stream, tie

from keras_music import corpus, events


def two_voice_score():
    """Soprano C5 half, D5 quarter, rest quarter; bass C3 whole note (held across)."""
    soprano, bass = stream.Part(), stream.Part()
    soprano.append([note.Note("C5", quarterLength=2), note.Note("D5", quarterLength=1), note.Rest(quarterLength=1)])
    bass.append(note.Note("C3", quarterLength=4))
    score = stream.Score()
    score.insert(0, soprano)
    score.insert(0, bass)
    return score


def test_note_representation_literal_tokens():
    tokens = events.stream_to_tokens(two_voice_score())
    assert tokens == ["pitch:48", "pitch:72", "dur:2", "hold:48", "pitch:74", "dur:1", "hold:48", "dur:1"]


def test_rests_triplets_and_sixteenths_keep_their_durations():
    part = stream.Part()
    part.append([note.Note("E4", quarterLength=F(1, 3)), note.Note("F4", quarterLength=F(1, 3)),
                 note.Note("G4", quarterLength=F(1, 3)), note.Rest(quarterLength=F(1, 4)),
                 note.Note("A4", quarterLength=F(3, 4))])
    tokens = events.stream_to_tokens(part)
    assert tokens == ["pitch:64", "dur:1/3", "pitch:65", "dur:1/3", "pitch:67", "dur:1/3", "rest", "dur:1/4",
                      "pitch:69", "dur:3/4"]


def test_classic_representation_is_the_tutorials():
    part = stream.Part()
    part.append([note.Note("C#4"), chord.Chord(["C4", "E4", "G4"]), note.Rest(), note.Note("B-3")])
    assert events.stream_to_tokens(part, "classic") == ["C#4", "0.4.7", "B-3"]
    sonorities = events.tokens_to_sonorities(["C#4", "0.4.7"], "classic", classic_step=F(1, 2))
    assert sonorities == [events.Sonority((61,), (False,), F(1, 2)),
                          events.Sonority((60, 64, 67), (False, False, False), F(1, 2))]


def test_long_notes_split_into_held_continuations():
    sonorities = events.notes_to_sonorities([(0, 10, 60), (10, 22, 62)], max_duration=8)
    assert [(s.pitches, s.held, s.duration) for s in sonorities] == [
        ((60,), (False,), F(8)), ((60,), (True,), F(2)), ((62,), (False,), F(8)), ((62,), (True,), F(4))]


def test_overlapping_unisons_fold_to_one_note_at_a_time():
    # Voice A holds C4 for 0-2, voice B re-attacks it at 1-3.
    sonorities = events.notes_to_sonorities([(0, 2, 60), (1, 3, 60)])
    assert [(s.pitches, s.held, s.duration) for s in sonorities] == [
        ((60,), (False,), F(1)), ((60,), (False,), F(2))]


def test_tied_chords_merge_into_one_note():
    part = stream.Part()
    first = chord.Chord(["C4", "E4"], quarterLength=1)
    first.notes[0].tie = tie.Tie("start")
    second = chord.Chord(["C4", "F4"], quarterLength=1)
    second.notes[0].tie = tie.Tie("stop")
    part.append([first, second])
    assert events.score_notes(part) == [(F(0), F(1), 64), (F(0), F(2), 60), (F(1), F(2), 65)]
    assert events.stream_to_tokens(part) == ["pitch:60", "pitch:64", "dur:1", "hold:60", "pitch:65", "dur:1"]


def test_decoding_repairs_ill_formed_generated_tokens():
    report = events.DecodeReport()
    sonorities = events.tokens_to_sonorities(
        ["<piece>", "hold:60", "dur:1", "pitch:62", "dur:0", "dur:1/2", "bogus", "pitch:64"], report=report)
    assert sonorities == [events.Sonority((60,), (False,), F(1)), events.Sonority((62,), (False,), F(1, 2))]
    assert report.repairs == {"hold of a pitch that was not sounding": 1, "non-positive duration": 1,
                              "unparseable token": 1, "pitches without a duration at the end": 1}


def test_transpose_token():
    assert events.transpose_token("pitch:60", 2) == "pitch:62"
    assert events.transpose_token("hold:127", 1) is None
    assert events.transpose_token("dur:1/2", 5) == "dur:1/2"
    assert events.transpose_token("0.4.7", 2, representation="classic") == "2.6.9"
    assert events.transpose_token("B3", 1, representation="classic") == "C4"


def test_sonorities_to_notes_merges_held_pitches():
    sonorities = events.notes_to_sonorities([(0, 4, 48), (0, 2, 72), (2, 3, 74)])
    notes = events.sonorities_to_notes(sonorities)
    np.testing.assert_array_equal(notes, [[0, 4, 48], [0, 2, 72], [2, 1, 74]])


def test_written_midi_and_musicxml_reparse_to_the_same_tokens(tmp_path):
    tokens = events.stream_to_tokens(converter.parse("tinyNotation: 4/4 c4 d8 e8 f4. g8 a2 r4 b4"))
    score = events.sonorities_to_stream(events.tokens_to_sonorities(tokens))
    for fmt, name in (("midi", "piece.mid"), ("musicxml", "piece.musicxml")):
        path = str(tmp_path / name)
        score.write(fmt, fp=path)
        assert events.stream_to_tokens(converter.parse(path)) == tokens, fmt


@pytest.mark.slow
def test_whole_bach_corpus_round_trips_through_music21_streams():
    entries = corpus.parse_sources(["bach"], corpus.ParseSettings(normalize_key=False), show_progress=False)
    used = [e for e in entries if e["status"] == "used"]
    assert len(used) >= 400
    mismatched = []
    for entry in used:
        sonorities = events.notes_to_sonorities(corpus.notes_from_record(entry))
        tokens = events.sonorities_to_tokens(sonorities)
        assert events.tokens_to_sonorities(tokens) == sonorities
        rebuilt = events.stream_to_tokens(events.sonorities_to_stream(events.tokens_to_sonorities(tokens)))
        if rebuilt != tokens:
            mismatched.append(entry["file"])
    assert mismatched == []


def test_token_representations():
    assert events.token_representations("pitch:60") == {"note"}
    assert events.token_representations("dur:1/3") == {"note"}
    assert events.token_representations("rest") == {"note"}
    assert events.token_representations("C#4") == {"classic"}
    assert events.token_representations("0.4.7") == {"classic"}
    assert events.token_representations("<piece>") == {"note", "classic"}
    assert events.token_representations("banana") == set()


def test_shift_to_c_moves_the_tonic_to_c_major_or_a_minor_the_shorter_way():
    assert [events.shift_to_c(tonic, "major") for tonic in range(12)] == [0, -1, -2, -3, -4, -5, -6, 5, 4, 3, 2, 1]
    assert [events.shift_to_c(tonic, "minor") for tonic in range(12)] == [-3, -4, -5, -6, 5, 4, 3, 2, 1, 0, -1, -2]


def test_key_shift_of_a_score():
    d_major = converter.parse("tinyNotation: 4/4 d4 e4 f#4 g4 a4 b4 c#'4 d'4 a4 f#4 d2")
    assert events.key_shift(d_major) == (-2, "D major")


def test_key_estimation_from_the_duration_weighted_pitch_class_profile():
    d_major_scale = [62, 64, 66, 67, 69, 71, 73, 74]
    notes = [(i, i + 1, p) for i, p in enumerate(d_major_scale + [62, 66, 69, 62])]
    assert events.estimate_key(notes) == (-2, "D major")
    a_minor = [57, 60, 64, 57, 59, 60, 62, 64, 65, 64, 62, 60, 59, 57, 56, 57]
    assert events.estimate_key([(i, i + 1, p) for i, p in enumerate(a_minor)]) == (0, "A minor")
    # Durations weigh: the same seven white keys are C major with C, G and E long, A minor with A, E and C long.
    def white_keys(long):
        notes, time = [], 0
        for pitch in (60, 62, 64, 65, 67, 69, 71):
            notes.append((time, time + long.get(pitch, 1), pitch))
            time += long.get(pitch, 1)
        return notes

    assert events.estimate_key(white_keys({60: 4, 67: 4, 64: 2})) == (0, "C major")
    assert events.estimate_key(white_keys({69: 4, 64: 4, 60: 2})) == (0, "A minor")
    # G# minor and A-flat major: spelled as music21 spells them.
    assert events.estimate_key([(i, i + 1, p + 11) for i, p in enumerate(a_minor)]) == (1, "G# minor")
    assert events.estimate_key([(a, b, p - 6) for a, b, p in notes]) == (4, "A- major")
    assert events.estimate_key([]) == (0, "unknown")
    assert events.estimate_key([(0, 1, 60), (1, 2, 61), (2, 3, 62), (3, 4, 63), (4, 5, 64), (5, 6, 65),
                                (6, 7, 66), (7, 8, 67), (8, 9, 68), (9, 10, 69), (10, 11, 70), (11, 12, 71)]) \
        == (0, "unknown")


def test_key_estimation_names_the_key_music21_names_on_the_chorales():
    """One estimator for MIDI and scores: on real chorales it agrees with music21's analyze("key")."""
    from music21 import corpus as music21_corpus

    paths = sorted(str(p) for p in music21_corpus.getComposer("bach"))[::40]
    assert len(paths) >= 10
    for path in paths:
        score = music21_corpus.parse(path)
        wanted = score.analyze("key")
        shift, name = events.estimate_key(events.score_notes(score))
        assert name.split() == [wanted.tonic.name, wanted.mode], path
        assert shift == events.shift_to_c(wanted.tonic.pitchClass, wanted.mode)
