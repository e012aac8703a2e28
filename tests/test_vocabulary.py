"""Tests for keras_music.vocabulary: building from counts, ids, encode/decode, vocab.json and its checks."""

import errno
import io
import json
import os

import numpy as np
import pytest

from keras_music import storage, vocabulary as vocabulary_lib
from keras_music.vocabulary import Vocabulary, VocabularyError

SPECIALS = ["<pad>", "<unk>", "<piece>"]
PIECES = [["pitch:64", "dur:1", "pitch:60", "dur:1/2", "rest", "dur:1/2"],
          ["hold:60", "pitch:60", "dur:2", "pitch:62", "dur:1/2", "pitch:60", "dur:1"]]


# ----------------------------------------------------------------------------- building

def test_build_counts_tokens_and_orders_them_pitch_hold_rest_duration():
    vocabulary = vocabulary_lib.build(PIECES)
    assert vocabulary.tokens == SPECIALS + ["pitch:60", "pitch:62", "pitch:64", "hold:60", "rest", "dur:1/2",
                                            "dur:1", "dur:2"]
    assert vocabulary.counts == {"pitch:64": 1, "dur:1": 2, "pitch:60": 3, "dur:1/2": 3, "rest": 1, "hold:60": 1,
                                 "dur:2": 1, "pitch:62": 1}
    assert vocabulary.representation == "note" and vocabulary.classic_step == 0.5


def test_min_count_drops_rare_tokens():
    vocabulary = vocabulary_lib.build(PIECES, min_count=2)
    assert vocabulary.tokens == SPECIALS + ["pitch:60", "dur:1/2", "dur:1"]
    assert vocabulary.encode(["pitch:62", "pitch:60"]) == [vocabulary.unk_id, 3]


def test_transposed_copies_add_tokens_without_counting_them():
    vocabulary = vocabulary_lib.build([["pitch:60", "dur:1"]], transpose=1)
    assert vocabulary.tokens == SPECIALS + ["pitch:59", "pitch:60", "pitch:61", "dur:1"]
    assert vocabulary.counts == {"pitch:60": 1, "dur:1": 1, "pitch:59": 0, "pitch:61": 0}
    # A shift that would move a pitch off the piano's keys (21..108) adds nothing for the whole piece.
    edge = vocabulary_lib.build([["pitch:108", "pitch:100", "dur:1"]], transpose=1)
    assert edge.tokens == SPECIALS + ["pitch:99", "pitch:100", "pitch:107", "pitch:108", "dur:1"]
    # A piece already off the keys keeps its own tokens and gains no shifted copy (before: 0..127 was the limit).
    outside = vocabulary_lib.build([["pitch:127", "pitch:100", "dur:1"]], transpose=1)
    assert outside.tokens == SPECIALS + ["pitch:100", "pitch:127", "dur:1"]


def test_classic_tokens_sort_after_note_kinds_by_name():
    vocabulary = vocabulary_lib.build([["C4", "0.4.7", "B-3", "C4"]], representation="classic", classic_step=0.25)
    assert vocabulary.tokens == SPECIALS + ["0.4.7", "B-3", "C4"]
    assert (vocabulary.representation, vocabulary.classic_step) == ("classic", 0.25)


# ----------------------------------------------------------------------------- ids

def test_special_tokens_have_fixed_ids():
    vocabulary = vocabulary_lib.build(PIECES)
    assert (vocabulary.pad_id, vocabulary.unk_id, vocabulary.boundary_id) == (0, 1, 2)
    assert vocabulary.tokens[:3] == ["<pad>", "<unk>", "<piece>"]
    assert vocabulary.encode(SPECIALS) == [0, 1, 2]
    assert len(vocabulary) == 11


@pytest.mark.parametrize("tokens, message", [
    (["<unk>", "<pad>", "<piece>", "rest"], r"must start with \['<pad>', '<unk>', '<piece>'\]"),
    (["<pad>", "<unk>"], "must start with"),
    (SPECIALS + ["rest", "dur:1", "rest"], r"duplicate tokens: \['rest'\]"),
])
def test_a_vocabulary_needs_the_special_tokens_first_and_no_duplicates(tokens, message):
    with pytest.raises(VocabularyError, match=message):
        Vocabulary(tokens)


def test_encode_decode_round_trip_with_unknown_tokens():
    vocabulary = vocabulary_lib.build(PIECES)
    tokens = ["<piece>", "pitch:60", "pitch:99", "dur:1", "dur:3/7", "rest", "dur:1/2"]
    unknown: list[str] = []
    ids = vocabulary.encode(tokens, unknown)
    assert ids == [2, 3, 1, 9, 1, 7, 8]
    assert unknown == ["pitch:99", "dur:3/7"]
    assert vocabulary.decode(ids) == ["<piece>", "pitch:60", "<unk>", "dur:1", "<unk>", "rest", "dur:1/2"]
    assert vocabulary.decode(np.array(ids, np.int32)) == vocabulary.decode(ids)
    known = [t for t in tokens if t not in unknown]
    assert vocabulary.decode(vocabulary.encode(known)) == known


@pytest.mark.parametrize("bad_id", [-1, 11, 1000])
def test_decoding_an_id_outside_the_vocabulary_is_an_error(bad_id):
    vocabulary = vocabulary_lib.build(PIECES)
    with pytest.raises(VocabularyError, match=f"token id {bad_id} is outside the vocabulary of 11 tokens"):
        vocabulary.decode([3, bad_id])


def test_transposition_table_maps_each_token_to_its_shifted_id():
    vocabulary = Vocabulary(SPECIALS + ["pitch:60", "pitch:62", "hold:60", "dur:1"])
    table, valid = vocabulary.transposition_table(2)
    assert table.shape == valid.shape == (7, 5) and table.dtype == np.int32
    pitch_60, pitch_62, hold_60, dur_1 = 3, 4, 5, 6
    # Columns are shifts -2, -1, 0, +1, +2: a missing shifted token maps to itself, marked invalid.
    assert table[pitch_60].tolist() == [pitch_60, pitch_60, pitch_60, pitch_60, pitch_62]
    assert valid[pitch_60].tolist() == [False, False, True, False, True]
    assert table[pitch_62].tolist() == [pitch_60, pitch_62, pitch_62, pitch_62, pitch_62]
    assert valid[hold_60].tolist() == [False, False, True, False, False]
    assert table[dur_1].tolist() == [dur_1] * 5 and valid[dur_1].all()
    assert table[:3].tolist() == [[0] * 5, [1] * 5, [2] * 5] and valid[:3].all()


def test_transposition_keeps_every_shifted_piece_on_the_piano_keys():
    # pitch:20 and pitch:109 lie off the 88 keys (21..108) yet are in the vocabulary, as a corpus may have them.
    tokens = ["pitch:20", "pitch:21", "pitch:22", "pitch:107", "pitch:108", "pitch:109", "hold:108", "dur:1"]
    vocabulary = Vocabulary(SPECIALS + tokens)
    ids = {token: vocabulary.index[token] for token in tokens}
    table, valid = vocabulary.transposition_table(1)
    # Columns are shifts -1, 0, +1. A shift is valid only onto 21..108; shift 0 always is, even off the keys.
    assert valid[ids["pitch:21"]].tolist() == [False, True, True]  # 20 is below A0
    assert table[ids["pitch:21"]].tolist() == [ids["pitch:21"], ids["pitch:21"], ids["pitch:22"]]
    assert valid[ids["pitch:108"]].tolist() == [True, True, False]  # 109 is in the vocabulary, but above C8
    assert table[ids["pitch:108"]].tolist() == [ids["pitch:107"], ids["pitch:108"], ids["pitch:108"]]
    assert valid[ids["hold:108"]].tolist() == [False, True, False]  # hold:107 is not in the vocabulary
    assert valid[ids["pitch:20"]].tolist() == [False, True, True]  # moved up it lands on A0
    assert valid[ids["pitch:109"]].tolist() == [True, True, False]
    assert valid[ids["dur:1"]].all() and valid[:3].all()


def test_transposition_draws_only_shifts_that_keep_the_piece_on_the_keys():
    import tensorflow as tf

    from keras_music import dataset

    vocabulary = vocabulary_lib.build([["pitch:104", "dur:1", "pitch:107", "dur:1"]], transpose=3)
    # Shifts +2 and +3 would reach 109 and 110: building adds no token for them.
    assert [t for t in vocabulary.tokens if t.startswith("pitch:")] == [f"pitch:{p}" for p in range(101, 109)]
    transpose = dataset._transposer(*vocabulary.transposition_table(3))
    piece = tf.constant(vocabulary.encode(["pitch:104", "dur:1", "pitch:107", "dur:1"]), tf.int32)
    moved = {tuple(vocabulary.decode(transpose(piece, tf.constant(draw, tf.int64)).numpy())) for draw in range(40)}
    assert moved == {(f"pitch:{104 + s}", "dur:1", f"pitch:{107 + s}", "dur:1") for s in (-3, -2, -1, 0, 1)}
    # A piece that reaches 108 is never moved up, even when the vocabulary holds higher pitches.
    wide = Vocabulary(SPECIALS + [f"pitch:{p}" for p in range(100, 113)] + ["dur:1"])
    transpose = dataset._transposer(*wide.transposition_table(3))
    top = tf.constant(wide.encode(["pitch:105", "dur:1", "pitch:108", "dur:1"]), tf.int32)
    highest = {max(int(t[6:]) for t in wide.decode(transpose(top, tf.constant(d, tf.int64)).numpy())
                   if t.startswith("pitch:")) for d in range(40)}
    assert highest == {105, 106, 107, 108}


# ----------------------------------------------------------------------------- fingerprint

def test_fingerprint_depends_on_what_ids_mean_not_on_counts():
    tokens = SPECIALS + ["pitch:60", "pitch:62", "dur:1"]
    base = Vocabulary(tokens).fingerprint()
    assert len(base) == 64 and base == Vocabulary(list(tokens), counts={"pitch:60": 9}).fingerprint()
    assert Vocabulary(SPECIALS + ["pitch:62", "pitch:60", "dur:1"]).fingerprint() != base
    assert Vocabulary(tokens, classic_step=0.25).fingerprint() != base
    assert Vocabulary(SPECIALS + ["C4", "D4"], "classic").fingerprint() != \
        Vocabulary(SPECIALS + ["C4", "D4"], "note").fingerprint()


# ----------------------------------------------------------------------------- vocab.json

def test_save_and_load_round_trip(tmp_path):
    vocabulary = vocabulary_lib.build(PIECES, min_count=1, transpose=1)
    path = str(tmp_path / "vocab.json")
    vocabulary.save(path)
    loaded = Vocabulary.load(path)
    assert loaded.tokens == vocabulary.tokens
    # vocab.json holds one count per token (0 for the special tokens).
    assert loaded.counts == {t: vocabulary.counts.get(t, 0) for t in vocabulary.tokens}
    assert (loaded.representation, loaded.classic_step) == ("note", 0.5)
    assert loaded.fingerprint() == vocabulary.fingerprint()
    data = json.load(open(path))
    assert data["format"] == "keras_music.vocabulary" and data["version"] == 1 and data["size"] == len(vocabulary)
    assert data["special_tokens"] == {"pad": "<pad>", "unknown": "<unk>", "boundary": "<piece>"}
    assert data["counts"] == [vocabulary.counts.get(t, 0) for t in vocabulary.tokens]
    assert data["grammar"]["rules"] == "note" and len(data["grammar"]["kinds"]) == len(vocabulary)
    assert os.listdir(tmp_path) == ["vocab.json"]


def test_a_failed_save_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = str(tmp_path / "vocab.json")
    old = Vocabulary(SPECIALS + ["rest", "dur:1"])
    old.save(path)
    before = open(path, "rb").read()
    real_open = open

    class Full(io.BufferedWriter):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)

    def full_disk(file, mode="r", *args, **kwargs):
        if "w" in mode:
            return Full(io.FileIO(file, "w"))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(storage, "open", full_disk, raising=False)
    with pytest.raises(OSError) as error:
        vocabulary_lib.build(PIECES).save(path)
    assert error.value.errno == errno.ENOSPC and error.value.filename == path
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["vocab.json"]
    assert Vocabulary.load(path).tokens == old.tokens


def vocab_json(**changes):
    data = Vocabulary(SPECIALS + ["pitch:60", "dur:1"], counts={"pitch:60": 2, "dur:1": 2}).to_json()
    data.update(changes)
    return data


@pytest.mark.parametrize("content, message", [
    ([1, 2], 'not a keras_music vocabulary (expected "format": "keras_music.vocabulary")'),
    ({"format": "other"}, "not a keras_music vocabulary"),
    (vocab_json(version=2), "vocabulary version 2 is not supported (expected 1)"),
    (vocab_json(tokens="pitch:60"), '"tokens" must be a list of strings'),
    (vocab_json(tokens=SPECIALS + [60]), '"tokens" must be a list of strings'),
    (vocab_json(representation="drums"), "unknown representation 'drums' (expected note or classic)"),
    (vocab_json(size=7), '"size" is 7 but 5 tokens are listed'),
    (vocab_json(classic_step=0), '"classic_step" must be a positive number of quarter notes, got 0'),
    (vocab_json(classic_step=True), '"classic_step" must be a positive number'),
    (vocab_json(classic_step="1/2"), '"classic_step" must be a positive number'),
    (vocab_json(tokens=["<unk>", "<pad>", "<piece>", "pitch:60", "dur:1"]), "must start with"),
    (vocab_json(tokens=SPECIALS + ["pitch:60", "pitch:128"]), "1 token(s) are not valid note tokens: 'pitch:128'"),
    (vocab_json(tokens=SPECIALS + ["pitch:60", "pitch:60"]), "duplicate tokens: ['pitch:60']"),
    (vocab_json(counts=[0, 0, 0, 2]), '"counts" must list one integer >= 0 per token'),
    (vocab_json(counts=[0, 0, 0, -1, 2]), '"counts" must list one integer >= 0 per token'),
    (vocab_json(counts=[0, 0, 0, True, 2]), '"counts" must list one integer >= 0 per token'),
])
def test_malformed_vocab_json_is_refused_naming_the_file(tmp_path, content, message):
    path = str(tmp_path / "vocab.json")
    with open(path, "w") as handle:
        json.dump(content, handle)
    with pytest.raises(VocabularyError) as error:
        Vocabulary.load(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_unreadable_vocab_json_is_named(tmp_path):
    missing = str(tmp_path / "missing.json")
    with pytest.raises(VocabularyError, match="missing.json does not exist: a run directory needs the vocab.json"):
        Vocabulary.load(missing)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{")
    with pytest.raises(VocabularyError, match="binary.json is not UTF-8 text"):
        Vocabulary.load(str(binary))
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": ')
    with pytest.raises(VocabularyError, match=r"broken.json is not valid JSON \(Expecting value"):
        Vocabulary.load(str(broken))


def test_from_json_names_the_source_it_is_given():
    with pytest.raises(VocabularyError, match="^export/vocab.json: vocabulary version 3"):
        Vocabulary.from_json(vocab_json(version=3), "export/vocab.json")
    assert Vocabulary.from_json(vocab_json()).counts == {"<pad>": 0, "<unk>": 0, "<piece>": 0, "pitch:60": 2,
                                                         "dur:1": 2}


# ----------------------------------------------------------------------------- token syntax

@pytest.mark.parametrize("token, expected", [
    ("pitch:0", True), ("pitch:127", True), ("hold:60", True), ("rest", True),
    ("dur:1", True), ("dur:1/2", True), ("dur:15/4", True),
    ("pitch:128", False), ("pitch:060", False), ("pitch:-1", False), ("hold:", False), ("note:60", False),
    ("dur:2/4", False), ("dur:4/1", False), ("dur:0", False), ("dur:1/0", False), ("dur:-1/2", False),
    ("dur:0.5", False), ("C4", False), ("0.4.7", False),
])
def test_note_token_syntax(token, expected):
    assert vocabulary_lib.valid_token(token, "note") is expected


@pytest.mark.parametrize("token, expected", [
    ("C4", True), ("C#4", True), ("B-3", True), ("C-1", True), ("G9", True), ("0.4.7", True), ("11", True),
    ("G#9", False), ("Db4", False), ("H4", False), ("7.4.0", False), ("0.0", False), ("12", False), ("00", False),
    ("0..4", False), ("pitch:60", False), ("rest", False),
])
def test_classic_token_syntax(token, expected):
    assert vocabulary_lib.valid_token(token, "classic") is expected


def test_special_tokens_are_valid_only_at_their_own_id():
    for position, token in enumerate(SPECIALS):
        assert vocabulary_lib.valid_token(token, "note", position=position)
        assert vocabulary_lib.valid_token(token, "classic")
        assert not vocabulary_lib.valid_token(token, "note", position=position + 3)
    assert not vocabulary_lib.valid_token("<unk>", "note", position=0)
