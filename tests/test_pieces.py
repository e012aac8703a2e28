"""Tests for keras_music.pieces: a piece's timeline (tempo map, metre, program, start) and what a piece reports."""

import numpy as np

from keras_music import events, pieces


def test_bad_timing_in_a_manifest_entry_is_left_out():
    timing = pieces.record_timing({"start": float("nan"), "tempos": [[0.0, -5.0], [1.0, 90.0]],
                                   "time_signatures": [[0.0, 4, 3], [0.0, 0, 4], ["x", 3, 4]],
                                   "parts": [{"program": 400}], "notes": [[0, 24, 60, 0]]})
    assert timing == {"start": 0.0, "tempos": [[1.0, 90.0]], "time_signatures": [[0.0, 4, 4]], "program": 0}
    assert pieces.record_timing({}) == pieces.default_timing()
    assert pieces.record_timing({"tempos": [[0.0, float("inf")]], "start": -2,
                                 "time_signatures": [[float("nan"), 3, 4]]}) == pieces.default_timing()


def test_record_timing_takes_the_program_of_the_part_with_most_notes():
    record = {"start": 1.5, "tempos": [[0, 72], [8, 96]], "time_signatures": [[0, 3, 4]],
              "parts": [{"program": 0}, {"program": 40}, {"program": 73}],
              "notes": [[0, 1, 60, 0], [0, 1, 64, 1], [1, 1, 65, 1], [2, 1, 67, 2]]}
    assert pieces.record_timing(record) == {"start": 1.5, "tempos": [[0.0, 72.0], [8.0, 96.0]],
                                            "time_signatures": [[0.0, 3, 4]], "program": 40}
    # A note naming a part the record does not list falls back to the first part's program.
    assert pieces.record_timing(dict(record, notes=[[0, 1, 60, 9]]))["program"] == 0


def test_within_primer_keeps_only_what_is_in_force_by_the_primers_end():
    timing = {"start": 1.0, "tempos": [[12.0, 150.0], [0.0, 72.0], [2.0, 96.0]],
              "time_signatures": [[0.0, 3, 4], [20.0, 4, 4]], "program": 40}
    assert pieces.within_primer(timing, 4.0) == {"start": 1.0, "tempos": [[0.0, 72.0], [2.0, 96.0]],
                                                 "time_signatures": [[0.0, 3, 4]], "program": 40}
    # A change exactly where the piece starts is kept even for an empty primer.
    assert pieces.within_primer(dict(timing, start=2.0), 0.0)["tempos"] == [[0.0, 72.0], [2.0, 96.0]]
    # With nothing before the end, the earliest entry stays.
    assert pieces.within_primer(dict(timing, tempos=[[30.0, 60.0]]), 1.0)["tempos"] == [[30.0, 60.0]]


def test_overrides_replace_the_tempo_map_and_the_program_only():
    timing = {"start": 0.5, "tempos": [[0.0, 72.0], [2.0, 96.0]], "time_signatures": [[0.0, 3, 4]], "program": 40}
    assert pieces.with_overrides(timing) == timing
    assert pieces.with_overrides(timing, tempo=100, program=19) == {
        "start": 0.5, "tempos": [[0.0, 100.0]], "time_signatures": [[0.0, 3, 4]], "program": 19}
    assert timing["tempos"] == [[0.0, 72.0], [2.0, 96.0]]  # the piece's own timing is left alone


def test_a_piece_reports_its_events_primer_length_and_metre():
    tokens = ["pitch:60", "pitch:64", "dur:1", "rest", "dur:1/2", "pitch:67", "dur:2"]
    sonorities = events.tokens_to_sonorities(tokens)
    piece = pieces.Piece(tokens=tokens[3:], primer_tokens=tokens[:3], ids=[], sonorities=sonorities,
                         notes=events.sonorities_to_notes(sonorities), primer_events=1, stop_reason="length",
                         repairs={}, timing={"start": 4.0, "tempos": [[0.0, 120.0]], "program": 0,
                                             "time_signatures": [[0.0, 4, 4], [4.0, 3, 4], [8.0, 6, 8]]})
    assert piece.events == 2
    assert piece.primer_duration == 1.0
    assert piece.time_signature == (3, 4)
    np.testing.assert_array_equal(piece.notes, [[0, 1, 60], [0, 1, 64], [1.5, 2, 67]])
    assert pieces.Piece(tokens=[], primer_tokens=[], ids=[], sonorities=[], notes=np.zeros((0, 3)),
                        primer_events=0, stop_reason="length", repairs={}).time_signature == (4, 4)
