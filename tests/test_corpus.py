"""Tests for keras_music.corpus: sources, manifest entries for every file, cache, timeouts, splits."""

import os

import pytest

from keras_music import corpus
from conftest import write_chorales_as_midi


def settings(**kw):
    return corpus.ParseSettings(**kw)


def test_corrupt_empty_and_unsupported_files_are_listed_with_reasons(tmp_path, midi_folder):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in os.listdir(midi_folder):
        (folder / name).write_bytes((tmp_path / ".." / midi_folder / name).read_bytes()
                                    if False else open(os.path.join(midi_folder, name), "rb").read())
    (folder / "empty.mid").write_bytes(b"")
    (folder / "notes.txt").write_text("not music")
    (folder / "noise.mid").write_bytes(os.urandom(300))
    entries = corpus.parse_sources([str(folder)], settings(), workers=2, show_progress=False)
    by_name = {os.path.basename(e["file"]): e for e in entries}
    assert set(by_name) == {"bach_bwv66.6.mid", "bach_bwv4.8.mid", "bach_bwv26.6.mid", "bach_bwv10.7.mid",
                            "corrupt.mid", "empty.mid", "notes.txt", "noise.mid"}
    assert all(by_name[f"bach_{n}.mid"]["status"] == "used" and by_name[f"bach_{n}.mid"]["events"] > 20
               for n in ("bwv66.6", "bwv4.8", "bwv26.6", "bwv10.7"))
    assert by_name["empty.mid"]["reason"] == "empty file"
    assert by_name["notes.txt"]["reason"].startswith("unsupported file type")
    assert by_name["corrupt.mid"]["status"] == "skipped"
    assert by_name["corrupt.mid"]["reason"].startswith(("parse error", "no notes"))
    assert by_name["noise.mid"]["reason"].startswith("parse error")


def test_second_parse_comes_from_the_cache(tmp_path, monkeypatch):
    folder = tmp_path / "two"
    write_chorales_as_midi(str(folder), ("bach/bwv66.6", "bach/bwv4.8"))
    cache = str(tmp_path / "cache")
    first = corpus.parse_sources([str(folder)], settings(), workers=1, cache_dir=cache, show_progress=False)

    def no_parsing(*args, **kwargs):
        raise AssertionError("a cached file was parsed again")

    monkeypatch.setattr(corpus, "_parse_parallel", no_parsing)
    monkeypatch.setattr(corpus, "parse_bytes", no_parsing)
    second = corpus.parse_sources([str(folder)], settings(), workers=1, cache_dir=cache, show_progress=False)
    assert second == first
    # Other settings are a different cache key: they must parse again.
    with pytest.raises(AssertionError, match="parsed again"):
        corpus.parse_sources([str(folder)], settings(normalize_key=False), workers=1, cache_dir=cache,
                             show_progress=False)


def test_a_parse_that_takes_too_long_is_stopped(tmp_path):
    import mido

    # 30,000 sixteenth notes: music21 needs far longer than the 1 s allowed to parse them.
    track = mido.MidiTrack()
    for i in range(30000):
        track.append(mido.Message("note_on", note=48 + i % 24, velocity=80, time=0))
        track.append(mido.Message("note_off", note=48 + i % 24, time=120))
    song = mido.MidiFile(ticks_per_beat=480)
    song.tracks.append(track)
    slow = tmp_path / "slow" / "long.mid"
    slow.parent.mkdir()
    song.save(str(slow))
    entries = corpus.parse_sources([str(slow.parent)], settings(timeout=1.0), workers=1, cache_dir=None,
                                   show_progress=False)
    assert entries[0]["status"] == "skipped"
    assert entries[0]["reason"] == "timed out: parsing took longer than 1 s"


def test_unknown_source_is_a_clear_error():
    with pytest.raises(corpus.CorpusError, match="'no/such/place' is not an existing file"):
        corpus.resolve_sources(["no/such/place"])


def test_split_is_by_piece_deterministic_and_independent_of_order():
    entries = [{"file": f"f{i}", "status": "used", "sha256": f"{i:064x}", "events": 10} for i in range(20)]
    corpus.split_by_piece(entries, 0.2, seed=1)
    first = {e["file"]: e["split"] for e in entries}
    reordered = list(reversed([dict(e) for e in entries]))
    corpus.split_by_piece(reordered, 0.2, seed=1)
    assert {e["file"]: e["split"] for e in reordered} == first
    assert sorted(first.values()).count("validation") == 4
    corpus.split_by_piece(entries, 0.2, seed=2)
    assert {e["file"]: e["split"] for e in entries} != first


def test_duplicate_content_is_skipped_so_no_piece_is_in_both_splits():
    entries = [{"file": "a", "status": "used", "sha256": "x"}, {"file": "b", "status": "used", "sha256": "x"}]
    corpus.mark_duplicates(entries)
    assert entries[1] == {"file": "b", "status": "skipped", "sha256": "x", "reason": "duplicate of a"}
