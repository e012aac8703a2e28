"""Reading MIDI: exact ticks onto the grid, what is dropped and why, the timeline self-check, the key estimate."""

from fractions import Fraction as F

import pytest

from midi_truth import build, note

from keras_music import corpus, midi


def test_off_grid_notes_move_to_the_nearest_point_and_never_vanish(tmp_path):
    # 1/100 of a quarter is below the grid: it becomes one grid step; 1/5 is off the grid.
    events = sum((note(a, b, p, tpq=1000) for a, b, p in [(0, F(1, 100), 60), (1, F(6, 5), 62), (2, 3, 64),
                                                            (3, 4, 65)]), [])
    path = build(tmp_path / "off.mid", [events], ticks_per_beat=1000)
    record = corpus.parse_bytes(path, open(path, "rb").read(),
                                settings=corpus.ParseSettings(normalize_key=False, grid=24))
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
    fine = corpus.parse_bytes(path, data, settings=corpus.ParseSettings(normalize_key=False, grid=24))
    coarse = corpus.parse_bytes(path, data, settings=corpus.ParseSettings(normalize_key=False, grid=4))
    assert fine["midi"]["notes_moved"] == 0
    assert coarse["midi"]["notes_moved"] == 2
    assert corpus.notes_from_record(fine)[:2] == [(0, F(1, 8), 60), (F(1, 8), F(1, 4), 62)]
    # 1/8 rounds up to 1/4 on a quarter-of-a-quarter grid (halves round up).
    assert corpus.notes_from_record(coarse)[:2] == [(0, F(1, 4), 60), (F(1, 4), F(1, 4) + F(1, 4), 62)]


def test_percussion_only_and_zero_length_files_are_skipped_with_their_counts(tmp_path):
    drums = build(tmp_path / "drums.mid", [sum((note(i, i + 1, 36, channel=9) for i in range(8)), [])])
    record = corpus.parse_bytes(drums, open(drums, "rb").read(), settings=corpus.ParseSettings())
    assert record == {"status": "skipped", "reason": "no notes (no pitched notes with a duration; dropped 8 percussion)"}
    zero = build(tmp_path / "zero.mid", [sum((note(i, i, 60 + i) for i in range(4)), [])])
    record = corpus.parse_bytes(zero, open(zero, "rb").read(), settings=corpus.ParseSettings())
    assert record["status"] == "skipped" and "4 too short (zero length in the file)" in record["reason"]


def test_the_self_check_flags_a_file_whose_timeline_drifted(ground_truth, monkeypatch):
    real = corpus.events.notes_to_sonorities

    def lose_the_first_sonority(*args, **kwargs):
        return real(*args, **kwargs)[1:]

    monkeypatch.setattr(corpus.events, "notes_to_sonorities", lose_the_first_sonority)
    data = open(ground_truth["path"], "rb").read()
    record = corpus.parse_bytes(ground_truth["path"], data, settings=corpus.ParseSettings(normalize_key=False))
    assert record["status"] == "skipped"
    assert record["reason"].startswith("timeline drift:")
    assert record["check"]["notes_misplaced"] > 0 and not record["check"]["ok"]


