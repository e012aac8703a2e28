"""Tests for keras_music.prepare: sharded preparation merges into exactly the unsharded result."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from keras_music import dataset, prepare, storage
from conftest import REPO, TINY, tiny_config

SIX_CHORALES = ("bach/bwv66.6", "bach/bwv4.8", "bach/bwv26.6", "bach/bwv10.7", "bach/bwv153.1", "bach/bwv269")


def run_main(argv) -> int:
    """prepare.main in this process; returns its exit status (main always ends in sys.exit)."""
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(argv)
    return exit_info.value.code


def cli_args(out, *extra, sources=SIX_CHORALES):
    args = ["--config", TINY, "--out", str(out), "--quiet"]
    for source in sources:
        args += ["--data", source]
    return args + list(extra)


def split_contents(directory, split):
    """(names, id arrays) of every piece in a split's TFRecord shards, in file order."""
    import tensorflow as tf

    files = dataset.shard_files(os.path.join(directory, "data"), split)
    names = [tf.train.Example.FromString(record.numpy()).features.feature["name"].bytes_list.value[0].decode()
             for record in tf.data.TFRecordDataset(files)]
    return names, dataset.read_pieces(files)


def assert_same_prepared(expected_dir, actual_dir):
    with open(os.path.join(expected_dir, "vocab.json"), "rb") as a, open(os.path.join(actual_dir, "vocab.json"), "rb") as b:
        assert a.read() == b.read()
    assert storage.read_json(os.path.join(actual_dir, "corpus_manifest.json")) == \
        storage.read_json(os.path.join(expected_dir, "corpus_manifest.json"))
    expected_info = storage.read_json(os.path.join(expected_dir, "prepared.json"))
    actual_info = storage.read_json(os.path.join(actual_dir, "prepared.json"))
    expected_info.pop("seconds")
    actual_info.pop("seconds")
    assert actual_info == expected_info
    for split in ("train", "validation"):
        expected_names, expected_ids = split_contents(expected_dir, split)
        actual_names, actual_ids = split_contents(actual_dir, split)
        assert actual_names == expected_names and expected_names, split
        assert len(actual_ids) == len(expected_ids)
        for a, b in zip(actual_ids, expected_ids):
            np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("unsharded"))
    prepare.prepare(tiny_config(sources=SIX_CHORALES), out, show_progress=False, log=lambda *a: None)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three finished shards of the six chorales (not merged)."""
    out = tmp_path_factory.mktemp("sharded")
    for index in range(3):
        assert run_main(cli_args(out, "--num-shards", "3", "--shard-index", str(index))) == 0
    return str(out)


def copy_of(shards, tmp_path):
    target = str(tmp_path / "prepared")
    shutil.copytree(shards, target)
    return target


def test_three_shards_merged_equal_the_unsharded_preparation(shards, unsharded, tmp_path):
    out = copy_of(shards, tmp_path)
    parts = [storage.read_json(os.path.join(out, "parts", f"shard-{i}-of-3", "manifest_part.json"))
             for i in range(3)]
    assert [len(p["files"]) for p in parts] == [2, 2, 2]
    assert len({f for p in parts for f in p["files"]}) == 6
    assert not os.path.exists(os.path.join(out, "prepared.json"))
    assert run_main(["--config", TINY, "--out", out, "--merge", "--quiet"]) == 0
    assert_same_prepared(unsharded, out)
    with open(os.path.join(out, "config.yaml")) as handle:
        assert "bach/bwv269" in handle.read()


def test_skipped_files_keep_their_place_when_sharded(tmp_path, midi_folder):
    folder = tmp_path / "mixed"
    shutil.copytree(midi_folder, folder)
    (folder / "notes.txt").write_text("not music")
    sources = (str(folder),)
    full, sharded = str(tmp_path / "full"), str(tmp_path / "sharded")
    assert run_main(cli_args(full, sources=sources)) == 0
    for index in range(2):
        assert run_main(cli_args(sharded, "--num-shards", "2", "--shard-index", str(index), sources=sources)) == 0
    # --data at merge time is optional, but when given it must be the shards' sources.
    assert run_main(cli_args(sharded, "--merge", sources=sources)) == 0
    assert_same_prepared(full, sharded)
    reasons = {os.path.basename(f["file"]): f.get("reason", "") for f in
               storage.read_json(os.path.join(sharded, "corpus_manifest.json"))["files"]}
    assert reasons["notes.txt"].startswith("unsupported file type")
    assert reasons["corrupt.mid"].startswith("parse error: unreadable MIDI: MidiException: ")


def test_merge_with_a_missing_shard_names_it(shards, tmp_path, capsys):
    out = copy_of(shards, tmp_path)
    shutil.rmtree(os.path.join(out, "parts", "shard-1-of-3"))
    assert run_main(["--config", TINY, "--out", out, "--merge"]) == 1
    error = capsys.readouterr().err
    assert "1 of 3 shards missing" in error and "shard-1-of-3" in error and "--shard-index I for I in 1" in error
    assert "Traceback" not in error
    assert not os.path.exists(os.path.join(out, "prepared.json"))


def test_an_unfinished_shard_counts_as_missing(shards, tmp_path, capsys):
    out = copy_of(shards, tmp_path)
    os.remove(os.path.join(out, "parts", "shard-2-of-3", "manifest_part.json"))
    assert run_main(["--config", TINY, "--out", out, "--merge"]) == 1
    assert "shard-2-of-3" in capsys.readouterr().err


def test_merge_with_nothing_to_merge_says_how_to_make_shards(tmp_path, capsys):
    assert run_main(["--out", str(tmp_path / "empty"), "--merge"]) == 1
    error = capsys.readouterr().err
    assert "nothing to merge" in error and "--num-shards N --shard-index I" in error


def test_merge_settings_must_match_the_shards(shards, tmp_path, capsys):
    out = copy_of(shards, tmp_path)
    assert run_main(["--config", TINY, "--out", out, "--merge", "--set", "data.min_count=2"]) == 1
    error = capsys.readouterr().err
    assert "data.min_count is 2 here but 1 in the shards" in error
    assert run_main(["--config", TINY, "--out", out, "--merge", "--data", "bach/bwv66.6"]) == 1
    assert "differs from the shards' sources" in capsys.readouterr().err


def test_shards_that_disagree_or_were_changed_are_refused(shards, tmp_path, capsys):
    out = copy_of(shards, tmp_path)
    part_file = os.path.join(out, "parts", "shard-2-of-3", "manifest_part.json")
    part = storage.read_json(part_file)
    storage.write_json(part_file, dict(part, settings=dict(part["settings"], max_duration=4.0)))
    assert run_main(["--config", TINY, "--out", out, "--merge"]) == 1
    assert "shards disagree on settings: data.max_duration is 8.0 in shard 0 but 4.0 in shard 2" in \
        capsys.readouterr().err
    storage.write_json(part_file, part)
    parsed_file = os.path.join(out, "parts", "shard-2-of-3", "parsed.json")
    with open(parsed_file, "ab") as handle:
        handle.write(b" ")
    assert run_main(["--config", TINY, "--out", out, "--merge"]) == 1
    assert "does not match its manifest_part.json" in capsys.readouterr().err


def test_parts_of_two_shardings_need_num_shards(shards, tmp_path, capsys):
    out = copy_of(shards, tmp_path)
    os.makedirs(os.path.join(out, "parts", "shard-0-of-2"))
    assert run_main(["--config", TINY, "--out", out, "--merge"]) == 1
    assert "different shardings (2 shards, 3 shards)" in capsys.readouterr().err
    assert run_main(["--config", TINY, "--out", out, "--merge", "--num-shards", "3"]) == 0
    assert os.path.exists(os.path.join(out, "prepared.json"))


def test_re_preparing_removes_stale_tfrecord_shards(unsharded, tmp_path):
    out = str(tmp_path / "again")
    shutil.copytree(unsharded, out)
    stale = os.path.join(out, "data", "train-00001-of-00002.tfrecord")
    with open(stale, "wb") as handle:
        handle.write(b"left over from a bigger corpus")
    prepare.prepare(tiny_config(sources=SIX_CHORALES), out, show_progress=False, log=lambda *a: None)
    assert not os.path.exists(stale)
    assert_same_prepared(unsharded, out)


def test_typical_timing_is_the_median_tempo_and_the_most_common_metre():
    def entry(bpm, signature, program=0):
        return {"notes": [[0, 96, 60, 0]], "grid": 24, "tempos": [[0.0, bpm]], "time_signature": signature,
                "parts": [{"program": program}]}

    used = [entry(80, [3, 4]), entry(100, [3, 4], 40), entry(140, [4, 4], 40)]
    assert prepare.typical_timing(used) == {"tempo": 100.0, "time_signature": [3, 4], "program": 40}
    # A tempo map counts each tempo by how long it lasts within the notes' span.
    weighted = {"notes": [[0, 10 * 24, 60, 0]], "grid": 24, "tempos": [[0.0, 60.0], [1.0, 90.0], [9.0, 200.0]]}
    assert prepare.piece_tempo(weighted) == 90.0


def edit_part(out, index, **changes):
    part_file = os.path.join(out, "parts", f"shard-{index}-of-3", "manifest_part.json")
    storage.write_json(part_file, dict(storage.read_json(part_file), **changes))


def edit_entries(out, index, change):
    """Change shard `index`'s parsed.json with change(parsed) and make its part vouch for the result."""
    import hashlib
    import json

    entries_file = os.path.join(out, "parts", f"shard-{index}-of-3", "parsed.json")
    parsed = json.loads(open(entries_file, "rb").read())
    change(parsed)
    payload = json.dumps(parsed).encode()
    with open(entries_file, "wb") as handle:
        handle.write(payload)
    edit_part(out, index, entries_sha256=hashlib.sha256(payload).hexdigest())


def drop_last_entry(parsed):
    del parsed["indexes"][-1], parsed["entries"][-1]


def claim_position_one(parsed):
    parsed["indexes"][0] = 1


@pytest.mark.parametrize("damage, message", [
    (lambda out: edit_part(out, 1, format="other"), "shard-1-of-3/manifest_part.json is not a keras_music shard "
                                                    "manifest"),
    (lambda out: edit_part(out, 1, shard_index=0), "shard-1-of-3/manifest_part.json describes shard 0 of 3, "
                                                   "expected shard 1 of 3"),
    (lambda out: edit_part(out, 2, parse_version=1), "shard-2-of-3 was parsed by another keras_music version "
                                                     "(parse version 1, this one is"),
    (lambda out: edit_part(out, 2, total_files=7), "shards saw different source files (6 in shard 0, 7 in shard 2)"),
    (lambda out: edit_entries(out, 2, claim_position_one), "shard-2-of-3/parsed.json holds file position 1, which "
                                                           "does not belong to shard 2"),
    (lambda out: edit_entries(out, 0, drop_last_entry), "the shards hold 5 of 6 files; rerun every shard"),
])
def test_merge_refuses_parts_that_do_not_fit_together(shards, tmp_path, damage, message):
    out = copy_of(shards, tmp_path)
    damage(out)
    with pytest.raises(prepare.PrepareError) as error:
        prepare.merge(tiny_config(sources=SIX_CHORALES), out)
    assert message in str(error.value)
    assert not os.path.exists(os.path.join(out, "prepared.json"))


def test_too_few_usable_pieces_are_an_error_and_the_manifest_says_why(tmp_path):
    out = str(tmp_path / "one")
    with pytest.raises(prepare.PrepareError) as error:
        prepare.prepare(tiny_config(sources=("bach/bwv66.6",)), out, show_progress=False, log=lambda *a: None)
    manifest = os.path.join(out, "corpus_manifest.json")
    assert str(error.value) == ("need at least 2 usable pieces to split train/validation by piece, got 1; "
                                f"see {manifest}")
    assert storage.read_json(manifest)["summary"]["used"] == 1
    assert sorted(os.listdir(out)) == ["corpus_manifest.json"]
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "empty.mid").write_bytes(b"")
    (folder / "notes.txt").write_text("not music")
    with pytest.raises(prepare.PrepareError) as error:
        prepare.prepare(tiny_config(sources=(str(folder),)), str(tmp_path / "none"), show_progress=False)
    assert str(error.value).startswith(f"no usable pieces in {folder}: 2 files, all skipped (1 unsupported file type "
                                       "(expected one of .mid")
    assert str(error.value).endswith(f"1 empty file); see {tmp_path / 'none' / 'corpus_manifest.json'}")


def test_a_trained_run_keeps_its_files_unless_the_same_vocabulary_comes_out(unsharded, tmp_path):
    config = tiny_config(sources=SIX_CHORALES)
    expected = storage.read_json(os.path.join(unsharded, "prepared.json"))["vocabulary_fingerprint"]
    out = str(tmp_path / "run")
    with pytest.raises(prepare.PrepareError, match="gives another vocabulary than the one its model was trained with"):
        prepare.prepare(config, out, show_progress=False, log=lambda *a: None, expected_vocabulary="0" * 64)
    # Nor does an unusable corpus write its manifest over the run's.
    with pytest.raises(prepare.PrepareError, match="need at least 2 usable pieces"):
        prepare.prepare(tiny_config(sources=("bach/bwv66.6",)), out, show_progress=False, expected_vocabulary=expected)
    assert not os.path.exists(out)
    prepare.prepare(config, out, show_progress=False, log=lambda *a: None, expected_vocabulary=expected)
    assert_same_prepared(unsharded, out)


@pytest.mark.parametrize("flags, message", [
    (["--num-shards", "3", "--shard-index", "3"], "expected 0..2 for --num-shards 3, got 3"),
    (["--num-shards", "3", "--shard-index", "-1"], "expected an integer >= 0, got -1"),
    (["--num-shards", "0", "--shard-index", "0"], "expected a positive integer, got 0"),
    (["--num-shards", "-2", "--shard-index", "0"], "expected a positive integer, got -2"),
    (["--shard-index", "1"], "--shard-index needs --num-shards"),
    (["--num-shards", "2"], "--num-shards needs --shard-index"),
    (["--merge", "--num-shards", "2", "--shard-index", "0"], "drop --shard-index"),
])
def test_bad_shard_flags_are_usage_errors(tmp_path, capsys, flags, message):
    assert run_main(["--out", str(tmp_path / "out"), *flags]) == 2
    error = capsys.readouterr().err
    assert message in error and "usage:" in error
    assert not os.path.exists(tmp_path / "out")


def test_help_describes_sharding():
    result = subprocess.run([sys.executable, "-m", "keras_music.prepare", "--help"], capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    for flag in ("--data", "--out", "--num-shards", "--shard-index", "--merge", "--config", "--set"):
        assert flag in result.stdout
    assert "s3://" in result.stdout


def test_held_out_sources_are_exactly_the_validation_split(tmp_path, capsys):
    from music21 import corpus as m21

    # Two chorales written as MIDI files in a folder of their own are the held-out split; the four named ones train.
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in SIX_CHORALES[4:]:
        m21.parse(name).write("midi", fp=str(folder / (name.replace("/", "_") + ".mid")))
    out = tmp_path / "prepared"
    assert run_main(cli_args(out, "--held-out", str(folder), sources=SIX_CHORALES[:4])) == 0
    names, _ = split_contents(str(out), "validation")
    assert sorted(os.path.basename(n) for n in names) == sorted(os.listdir(folder))
    train_names, _ = split_contents(str(out), "train")
    assert sorted(n.split("/")[1] for n in train_names) == sorted(n.split("/")[1] for n in SIX_CHORALES[:4])
    manifest = storage.read_json(os.path.join(str(out), "corpus_manifest.json"))
    assert manifest["held_out"] == [str(folder)]
    assert storage.read_json(os.path.join(str(out), "prepared.json"))["settings"]["held_out"] == [str(folder)]
    # Held-out sources without music, and sharding with them, are one line each.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not music")
    assert run_main(cli_args(tmp_path / "p2", "--held-out", str(empty), sources=SIX_CHORALES[:4])) == 1
    assert "data.held_out" in capsys.readouterr().err.strip().splitlines()[-1]
    assert run_main(cli_args(tmp_path / "p3", "--held-out", str(folder), "--num-shards", "2", "--shard-index", "0",
                             sources=SIX_CHORALES[:4])) == 1
    assert "not supported with --num-shards" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_full_vocabulary_holds_every_piano_token_seen_or_not(tmp_path):
    from fractions import Fraction

    out = str(tmp_path / "full")
    prepare.prepare(tiny_config("data.full_vocabulary=true", sources=SIX_CHORALES[:2]), out, show_progress=False,
                    log=lambda *a: None)
    tokens = storage.read_json(os.path.join(out, "vocab.json"))["tokens"]
    for pitch in (21, 60, 108):
        assert f"pitch:{pitch}" in tokens and f"hold:{pitch}" in tokens
    durations = {Fraction(t[4:]) for t in tokens if t.startswith("dur:")}
    # Every 1/24 of a quarter from 1/24 to data.max_duration (8 quarters): 192 durations.
    assert {Fraction(k, 24) for k in range(1, 193)} <= durations
    assert "rest" in tokens
    plain = str(tmp_path / "plain")
    prepare.prepare(tiny_config(sources=SIX_CHORALES[:2]), plain, show_progress=False, log=lambda *a: None)
    assert set(storage.read_json(os.path.join(plain, "vocab.json"))["tokens"]) < set(tokens)
    assert len(tokens) - len(set(storage.read_json(os.path.join(plain, "vocab.json"))["tokens"])) > 250
