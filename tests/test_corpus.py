"""Tests for keras_music.corpus: sources, manifest entries for every file, cache, timeouts, splits."""

import json
import os
import shutil

import pytest

from keras_music import corpus
from conftest import write_chorales_as_midi

# The conftest's corrupt.mid: a header and a track chunk that promise more bytes than follow.
CORRUPT_REASON = "parse error: unreadable MIDI: MidiException: badly formed midi string: missing leading MTrk"


def settings(**kw):
    return corpus.ParseSettings(**kw)


def test_corrupt_empty_and_unsupported_files_are_listed_with_reasons(tmp_path, midi_folder):
    folder = tmp_path / "mixed"
    shutil.copytree(midi_folder, folder)
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
    assert by_name["corrupt.mid"]["reason"] == CORRUPT_REASON
    assert by_name["noise.mid"]["reason"] == "parse error: not a MIDI file (no MThd header)"


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


# ----------------------------------------------------------------------------- issue 16: interrupts, bounded reads, cache

def slow_midi_folder(directory, count=8, notes=30000):
    """MIDI files that each take a worker a second or two to parse (distinct content, so none is a cache hit).

    Written byte by byte (a note on, then its note off 120 ticks later): a MIDI library
    takes far longer to build tracks this long.
    """
    import struct

    os.makedirs(directory, exist_ok=True)
    for k in range(count):
        events = bytearray()
        for i in range(notes):
            pitch = 48 + (i + k) % 24
            events += bytes((0x00, 0x90, pitch, 80, 0x78, 0x80, pitch, 0))
        events += b"\x00\xff\x2f\x00"
        data = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(events)) + events
        with open(os.path.join(directory, f"slow{k:02d}.mid"), "wb") as handle:
            handle.write(data)
    return directory


@pytest.fixture(scope="module")
def slow_folder(tmp_path_factory):
    return slow_midi_folder(str(tmp_path_factory.mktemp("slow")))


def tagged_processes(tag):
    """Live processes whose environment carries `tag` (the command and every worker it started)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environment = handle.read()
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if tag.encode() in environment and state != b"Z":
            found.append(int(entry))
    return found


def start_prepare(folder, out, cache, tag):
    import subprocess
    import sys

    environment = dict(os.environ, KERAS_MUSIC_CACHE=str(cache), KERAS_MUSIC_TEST_TAG=tag)
    # A session of its own, so a signal to its process group reaches it and its workers
    # the way Ctrl-C in a terminal does.
    return subprocess.Popen([sys.executable, "-m", "keras_music.prepare", "--data", str(folder), "--out", str(out),
                             "--quiet", "--set", "data.workers=2"], env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=as_in_a_terminal)


def as_in_a_terminal():
    """SIGINT as a foreground command in a terminal has it.

    A test runner started in the background by a shell without job control ignores
    SIGINT, and its children would inherit that: Ctrl-C could then never reach them.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cache_entries(cache):
    return [f for _, _, files in os.walk(cache) for f in files if f.endswith(".json")]


def wait_until(predicate, seconds):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_ctrl_c_while_parsing_stops_every_process_and_a_rerun_resumes(slow_folder, tmp_path, monkeypatch):
    import signal
    import time
    import uuid

    cache, tag = tmp_path / "cache", uuid.uuid4().hex
    process = start_prepare(slow_folder, tmp_path / "out", cache, tag)
    try:
        assert wait_until(lambda: cache_entries(cache) or process.poll() is not None, 240), "no file was parsed"
        assert process.poll() is None
        # The command, its resource tracker and both workers: files are still being parsed.
        assert len(tagged_processes(tag)) >= 4, "parsing was over before the first result was cached"
        os.killpg(process.pid, signal.SIGINT)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        assert time.monotonic() - started < 10, "the interrupt took more than 10 s to stop prepare"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130
    assert "interrupted; rerun the same command to continue" in stderr and "Traceback" not in stderr
    assert wait_until(lambda: not tagged_processes(tag), 5), "workers outlived the interrupted prepare"
    # Files parsed before the interrupt were cached one by one: the rerun parses only the rest.
    done = len(cache_entries(cache))
    assert 1 <= done < 8
    parsed = []
    original = corpus._parse_parallel

    def counting(jobs, *args, **kwargs):
        parsed.extend(name for _, name, _ in jobs)
        return original(jobs, *args, **kwargs)

    monkeypatch.setattr(corpus, "_parse_parallel", counting)
    entries = corpus.parse_sources([slow_folder], settings(), workers=2, cache_dir=str(cache), show_progress=False)
    assert len(parsed) == 8 - done
    assert [e["status"] for e in entries] == ["used"] * 8


def test_killing_the_parent_leaves_no_worker_behind(slow_folder, tmp_path):
    import signal
    import uuid

    cache, tag = tmp_path / "cache", uuid.uuid4().hex
    process = start_prepare(slow_folder, tmp_path / "out", cache, tag)
    try:
        assert wait_until(lambda: len(tagged_processes(tag)) >= 3 or process.poll() is not None, 240)
        assert process.poll() is None
        os.kill(process.pid, signal.SIGKILL)  # the parent only: its workers must notice by themselves
        process.wait(timeout=30)
        assert wait_until(lambda: not tagged_processes(tag), 5), "parse workers outlived their parent"
    finally:
        for pid in tagged_processes(tag):
            os.kill(pid, signal.SIGKILL)


def test_fifos_devices_and_huge_files_are_skipped_unread(tmp_path, monkeypatch):
    import subprocess
    import sys

    folder = tmp_path / "corpus"
    write_chorales_as_midi(str(folder), ("bach/bwv66.6", "bach/bwv4.8", "bach/bwv26.6"))
    os.mkfifo(folder / "hang.mid")
    os.symlink("/dev/zero", folder / "zero.mid")
    # Without a bound, the FIFO blocks the read forever and /dev/zero reads until memory runs out.
    result = subprocess.run([sys.executable, "-m", "keras_music.prepare", "--data", str(folder), "--out",
                             str(tmp_path / "out"), "--quiet", "--set", "data.workers=1"], capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    manifest = json.load(open(tmp_path / "out" / "corpus_manifest.json"))
    reasons = {os.path.basename(f["file"]): f.get("reason") for f in manifest["files"]}
    assert reasons["hang.mid"] == "not a regular file (a FIFO)"
    assert reasons["zero.mid"] == "not a regular file (a character device)"
    assert manifest["summary"]["used"] == 3
    monkeypatch.setattr(corpus, "MAX_SOURCE_BYTES", 1000)
    entry = corpus.parse_sources([str(folder / "bach_bwv66.6.mid")], settings(), workers=1, cache_dir=None,
                                 show_progress=False)[0]
    assert entry["status"] == "skipped" and entry["reason"].startswith("too large: ")


@pytest.mark.parametrize("damage", ["truncated", "bad notes", "bad time signature", "edited record"])
def test_a_damaged_cache_entry_is_parsed_again(tmp_path, damage):
    folder = tmp_path / "one"
    write_chorales_as_midi(str(folder), ("bach/bwv66.6",))
    cache = str(tmp_path / "cache")
    first = corpus.parse_sources([str(folder)], settings(), workers=1, cache_dir=cache, show_progress=False)[0]
    assert first["status"] == "used"
    (path,) = [os.path.join(root, f) for root, _, files in os.walk(cache) for f in files]
    text = open(path).read()
    stored = json.loads(text)
    record = stored.get("record", stored)
    if damage == "truncated":
        text = text[:len(text) // 2]
    elif damage == "bad notes":
        text = json.dumps(dict(record, notes=[["x", 1, 60, 0]]))  # an entry without a checksum
    elif damage == "bad time signature":
        text = json.dumps(dict(record, time_signature=[4, 3], time_signatures=[[0.0, 4, 3]]))
    else:
        stored["record"]["time_signature"] = [0, 4]  # the checksum no longer matches
        text = json.dumps(stored)
    with open(path, "w") as handle:
        handle.write(text)
    again = corpus.parse_sources([str(folder)], settings(), workers=1, cache_dir=cache, show_progress=False)[0]
    assert again == first
    # Rewritten whole: the entry holds the parse record again (before the corpus marks it used).
    rewritten = corpus.ParseCache(cache, settings()).get(first["sha256"])
    assert rewritten["status"] == "parsed"
    assert dict(rewritten, status="used", file=first["file"], sha256=first["sha256"]) == first


def test_file_names_that_are_not_utf8_go_through_prepare(tmp_path):
    from keras_music import dataset, prepare
    from conftest import tiny_config

    folder = tmp_path / "names"
    paths = write_chorales_as_midi(str(folder), ("bach/bwv66.6", "bach/bwv4.8", "bach/bwv26.6"))
    odd = os.path.join(os.fsencode(str(folder)), b"caf\xe9-\xff.mid")
    os.rename(paths[0], odd)
    out = str(tmp_path / "out")
    info = prepare.prepare(tiny_config(sources=(str(folder),)), out, show_progress=False, log=lambda *a: None)
    assert info["pieces"]["train"] + info["pieces"]["validation"] == 3
    manifest = json.load(open(os.path.join(out, "corpus_manifest.json")))
    names = {os.fsencode(f["file"]) for f in manifest["files"]}
    assert odd in names
    stored = [name for split in ("train", "validation")
              for name, _ in dataset.read_named_pieces(dataset.shard_files(os.path.join(out, "data"), split))]
    assert os.fsdecode(odd) in stored
