"""Tests for keras_music.evaluate_held_out: a run's split as evaluation reads it."""

import types

import numpy as np
import pytest

from keras_music import dataset, evaluate_held_out as held_out_lib, events, run as run_lib, storage

pytestmark = pytest.mark.slow


def test_load_split_reads_the_shards_in_order_with_the_manifest_counts(tiny_run):
    prepared = storage.read_json(run_lib.path(tiny_run, run_lib.PREPARED))
    data_dir = run_lib.data_dir(tiny_run)
    for split in ("train", "validation"):
        pieces = held_out_lib.load_split(tiny_run, split)
        stored = dataset.read_pieces(dataset.shard_files(data_dir, split))
        assert [p.ids.tolist() for p in pieces] == [list(ids) for ids in stored]
        assert all(p.ids.dtype == np.int32 for p in pieces)
        assert sum(p.events for p in pieces) == prepared["events"][split]
        assert all(p.time_signature == (4, 4) for p in pieces)
    assert [p.name for p in held_out_lib.load_split(tiny_run, "validation")] == run_lib.held_out_names(tiny_run)


def test_time_signature_and_events_come_from_the_manifest_when_it_has_them(tiny_run, monkeypatch):
    (name,) = run_lib.held_out_names(tiny_run)
    monkeypatch.setattr(run_lib, "manifest_entries", lambda run_dir: {name: {"events": 5, "time_signature": [3, 4]}})
    (piece,) = held_out_lib.load_split(tiny_run, "validation")
    assert (piece.events, piece.time_signature) == (5, (3, 4))


def test_without_a_manifest_events_are_counted_from_the_tokens(tiny_run, monkeypatch):
    from_manifest = held_out_lib.load_split(tiny_run, "validation")
    monkeypatch.setattr(run_lib, "manifest_entries", lambda run_dir: {})
    pieces = held_out_lib.load_split(tiny_run, "validation")
    vocabulary = run_lib.load_vocabulary(tiny_run)
    assert [p.events for p in pieces] == [events.count_events(vocabulary.decode(p.ids), "note") for p in pieces]
    # The manifest counted before encoding, so it also counts events whose duration became <unk>.
    assert all(p.events <= q.events for p, q in zip(pieces, from_manifest))
    assert all(p.time_signature == held_out_lib.DEFAULT_TIME_SIGNATURE for p in pieces)


@pytest.mark.parametrize("signature", [None, [0, 4], [3], "3/4", [3, "x"]])
def test_a_missing_or_bad_time_signature_falls_back_to_four_four(signature):
    assert held_out_lib._time_signature({"time_signature": signature}) == (4, 4)
    assert held_out_lib._time_signature(None) == (4, 4)


def test_every_classic_token_is_one_event():
    vocabulary = types.SimpleNamespace(representation="classic")
    assert held_out_lib._count_events(np.arange(7), vocabulary, entry={"events": 3}) == 7


def test_an_empty_split_is_an_error_that_names_it(tiny_run, monkeypatch):
    monkeypatch.setattr(run_lib, "named_pieces", lambda run_dir, split, vocabulary: [])
    with pytest.raises(run_lib.RunError, match=f"has no validation pieces: {tiny_run} has no validation split"):
        held_out_lib.load_split(tiny_run, "validation")
