"""tools/small_corpus.py's split: held-out pieces, nested user folders and a base corpus, disjoint and stable."""

import os

import pytest

import small_corpus


def test_the_split_is_disjoint_nested_and_independent_of_listing(tmp_path):
    piano = tmp_path / "piano"
    for composer in ("a", "b", "c"):
        (piano / composer).mkdir(parents=True)
        for i in range(12):
            (piano / composer / f"{composer}{i}.mid").write_bytes(f"{composer}{i}".encode())
    (piano / "a" / "notes.txt").write_text("not a MIDI file")
    folders = small_corpus.split_folder(str(piano), str(tmp_path / "out"), 6, [5, 10, 20])
    listed = {name: sorted(os.listdir(path)) for name, path in folders.items()}
    assert len(listed["held-out"]) == 6 and len(listed["base"]) == 36 - 6 - 20
    assert [len(listed[f"pool-{n}"]) for n in (5, 10, 20)] == [5, 10, 20]
    # Folders nest; held-out, pool and base never share a piece, and every MIDI file is in one of them.
    assert set(listed["pool-5"]) < set(listed["pool-10"]) < set(listed["pool-20"])
    assert not set(listed["held-out"]) & set(listed["pool-20"])
    assert not set(listed["base"]) & (set(listed["pool-20"]) | set(listed["held-out"]))
    assert len(set(listed["held-out"]) | set(listed["pool-20"]) | set(listed["base"])) == 36
    # The copies hold the files' bytes; the order comes from the names, not from the listing.
    name = listed["held-out"][0]
    composer, file = name.split("_", 1)
    assert (tmp_path / "out" / "folders" / "held-out" / name).read_bytes() == (piano / composer / file).read_bytes()
    again = small_corpus.split_folder(str(piano), str(tmp_path / "again"), 6, [20, 5, 10])
    assert {n: sorted(os.listdir(p)) for n, p in again.items()} == listed
    assert small_corpus.rank(["x", "y", "z"]) == small_corpus.rank(["z", "y", "x"])


def test_a_folder_too_small_for_the_split_says_how_many_it_needs(tmp_path):
    (tmp_path / "p").mkdir()
    for i in range(5):
        (tmp_path / "p" / f"{i}.mid").write_bytes(b"x")
    with pytest.raises(SystemExit, match=r"has 5 MIDI files: expected more than 13"):
        small_corpus.split_folder(str(tmp_path / "p"), str(tmp_path / "out"), 3, [10])
