"""A hostile corpus made by code: every bad file is listed with a specific reason and the run goes on."""

import json
import os
import re
import subprocess
import sys
import tempfile

import mido
import pytest

from keras_music import corpus
from conftest import TINY, write_chorales_as_midi

CHORALES = ("bach/bwv66.6", "bach/bwv4.8", "bach/bwv26.6")


def midi_file(path, messages_by_track, ticks_per_beat=480):
    song = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    for messages in messages_by_track:
        track = mido.MidiTrack()
        track.extend(messages)
        song.tracks.append(track)
    song.save(path)


def exactly(reason):
    return re.escape(reason)


def starting(prefix):
    """A reason that ends in a third-party parser's own message."""
    return re.escape(prefix) + ".+"


def damaged_copies(directory, good):
    with open(good[0], "rb") as handle:
        whole = handle.read()
    with open(os.path.join(directory, "truncated.mid"), "wb") as handle:
        handle.write(whole[:len(whole) // 3])
    with open(os.path.join(directory, "random.mid"), "wb") as handle:
        handle.write(bytes(range(256)) * 4)
    open(os.path.join(directory, "empty.mid"), "wb").close()
    return {"truncated.mid": ("skipped", starting("parse error: unreadable MIDI: MidiException: ")),
            "random.mid": ("skipped", exactly("parse error: not a MIDI file (no MThd header)")),
            "empty.mid": ("skipped", exactly("empty file"))}


def absurd_meta_messages():
    """24 plain notes under the extremes of MIDI's tempo range and a 255/128 metre."""
    absurd = [mido.MetaMessage("set_tempo", tempo=1, time=0),
              mido.MetaMessage("time_signature", numerator=255, denominator=128, time=0),
              mido.MetaMessage("set_tempo", tempo=16777215, time=100)]
    for i in range(24):
        absurd += [mido.Message("note_on", note=60 + i % 7, velocity=80, time=0),
                   mido.Message("note_off", note=60 + i % 7, time=480)]
    return absurd


def midi_oddities(directory):
    drums = [mido.Message("note_on", channel=9, note=36 + i % 10, velocity=90, time=0 if i == 0 else 240)
             for i in range(40)] + [mido.Message("note_off", channel=9, note=36, time=240)]
    midi_file(os.path.join(directory, "drums_only.mid"), [drums])
    zero = []
    for i in range(30):
        zero += [mido.Message("note_on", note=60 + i % 12, velocity=80, time=0 if i == 0 else 120),
                 mido.Message("note_off", note=60 + i % 12, time=0)]
    midi_file(os.path.join(directory, "zero_length.mid"), [zero])
    midi_file(os.path.join(directory, "absurd_meta.mid"), [absurd_meta_messages()])
    # Every pitch on every melodic channel at once: one sonority, however many notes.
    cluster = []
    for channel in range(16):
        if channel == 9:
            continue
        cluster += [mido.Message("note_on", channel=channel, note=n, velocity=64, time=0) for n in range(128)]
    cluster += [mido.Message("note_off", channel=c, note=n, time=1920 if (c, n) == (0, 0) else 0)
                for c in range(16) if c != 9 for n in range(128)]
    midi_file(os.path.join(directory, "cluster.mid"), [cluster])
    no_notes = "no notes (no pitched notes with a duration; dropped "
    return {"drums_only.mid": ("skipped", exactly(no_notes + "40 percussion)")),
            "zero_length.mid": ("skipped", exactly(no_notes + "30 too short (zero length in the file))")),
            # Legal values, however extreme: the notes are read as they are (see the test below).
            "absurd_meta.mid": ("used", ""),
            "cluster.mid": ("skipped", exactly("too short: 1 events < 8"))}


def broken_scores(directory):
    with open(os.path.join(directory, "broken.musicxml"), "w") as handle:
        handle.write('<?xml version="1.0"?><score-partwise><part-list><score-part id="P1">'
                     "<part-name>x</part-name></score-part></part-list><part id='P1'><measure")
    with open(os.path.join(directory, "bad.abc"), "w") as handle:
        handle.write("X:1\nT:broken\nM:4/4\nK:C\n|: ]][[ (((( zz9/0/0 &&& :|\n")
    return {"broken.musicxml": ("skipped", starting("parse error: ParseError: unclosed token")),
            "bad.abc": ("skipped", starting("parse error: ABCHandlerException: Bad chord indicator"))}


def odd_names(directory, good):
    """Copies of good files under a non-ASCII and a non-UTF-8 name, and a symlink loop."""
    unicode_name = "chœur – 合唱.mid"
    with open(good[1], "rb") as source, open(os.path.join(directory, unicode_name), "wb") as target:
        target.write(source.read())
    raw = os.path.join(os.fsencode(directory), b"latin1-\xe9t\xe9.mid")
    with open(good[2], "rb") as source, open(raw, "wb") as target:
        target.write(source.read())
    loop = os.path.join(directory, "loop")
    os.makedirs(loop)
    os.symlink("..", os.path.join(loop, "back"))
    return {unicode_name: ("skipped", exactly(f"duplicate of {good[1]}")),
            os.fsdecode(b"latin1-\xe9t\xe9.mid"): ("skipped", exactly(f"duplicate of {good[2]}"))}


def build_hostile_corpus(directory):
    """Returns {file name: (expected status, pattern its whole reason matches ("" for none))}."""
    os.makedirs(directory, exist_ok=True)
    good = write_chorales_as_midi(directory, CHORALES)
    expected = {os.path.basename(p): ("used", "") for p in good}
    expected.update(damaged_copies(directory, good))
    expected.update(midi_oddities(directory))
    expected.update(broken_scores(directory))
    expected.update(odd_names(directory, good))
    return expected


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("hostile"))
    return directory, build_hostile_corpus(directory)


def test_every_hostile_file_is_listed_with_a_specific_reason(hostile):
    directory, expected = hostile
    entries = corpus.parse_sources([directory], corpus.ParseSettings(timeout=60), workers=2, cache_dir=None,
                                   show_progress=False)
    corpus.mark_duplicates(entries)
    by_name = {}
    for entry in entries:
        # Through the symlink loop each file is reachable once more; it is walked once.
        assert "loop/back" not in entry["file"]
        by_name[os.path.basename(entry["file"])] = entry
    assert set(by_name) == set(expected)
    for name, (status, reason) in expected.items():
        entry = by_name[name]
        assert entry["status"] == status, (name, entry)
        assert re.fullmatch(reason, entry.get("reason", "")), (name, entry.get("reason"))


def test_absurd_tempos_and_metre_are_read_as_the_file_says(tmp_path):
    # 1 and 16,777,215 microseconds per quarter are MIDI's extreme tempos; tokens carry no
    # tempo, so the notes are learnt as they are and the tempo map is kept for writing.
    path = str(tmp_path / "absurd_meta.mid")
    midi_file(path, [absurd_meta_messages()])
    record = corpus.parse_bytes(path, open(path, "rb").read(), settings=corpus.ParseSettings(normalize_key=False))
    assert record["status"] == "parsed" and record["check"]["ok"] and record["events"] == 24
    # The notes start after the second tempo change, 100 ticks (5/24 of a quarter) in.
    assert record["notes"] == [[5 + 24 * i, 5 + 24 * (i + 1), 60 + i % 7, 0] for i in range(24)]
    assert record["tempos"] == [[0.0, 60_000_000.0], [100 / 480, 60_000_000 / 16_777_215]]
    # A denominator of 128 (2 ** 7) is beyond what the reader takes (up to 2 ** 6): 4/4 stands.
    assert record["time_signatures"] == [[0.0, 4, 4]] and record["time_signature"] == [4, 4]


def test_training_on_the_hostile_corpus_succeeds_without_a_traceback(hostile, tmp_path):
    directory, expected = hostile
    result = subprocess.run([sys.executable, "-m", "keras_music.train", "--config", TINY, "--data", directory,
                             "--run-dir", str(tmp_path / "run"), "--quiet", "--set", "train.num_samples=0",
                             "--set", "train.epochs=1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    manifest = json.load(open(tmp_path / "run" / "corpus_manifest.json"))
    assert manifest["summary"]["files"] == len(expected)
    used = {os.path.basename(f["file"]) for f in manifest["files"] if f["status"] == "used"}
    assert used == {name for name, (status, _) in expected.items() if status == "used"}
    assert used == {"bach_bwv66.6.mid", "bach_bwv4.8.mid", "bach_bwv26.6.mid", "absurd_meta.mid"}


def test_unreadable_file_is_skipped_with_its_reason():
    # root reads any file regardless of its mode, so the check runs as an unprivileged user.
    directory = tempfile.mkdtemp()
    os.chmod(directory, 0o755)
    locked = os.path.join(directory, "locked.mid")
    write_chorales_as_midi(directory, ("bach/bwv66.6",))
    os.rename(os.path.join(directory, "bach_bwv66.6.mid"), locked)
    os.chmod(locked, 0o000)
    # Imports first: the interpreter's own files may be unreadable to that user.
    script = ("import json, os, sys\n"
              "import logging, tqdm.auto\n"
              "from keras_music import corpus\n"
              "if os.geteuid() == 0:\n"
              "    os.setgid(65534); os.setuid(65534)\n"
              "entries = corpus.parse_sources([sys.argv[1]], corpus.ParseSettings(), workers=1, cache_dir=None,"
              " show_progress=False)\n"
              "print(json.dumps(entries))\n")
    result = subprocess.run([sys.executable, "-c", script, directory], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HOME": directory})
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout.strip().splitlines()[-1])
    assert entries == [{"file": locked, "status": "skipped", "reason": "unreadable: Permission denied"}]
