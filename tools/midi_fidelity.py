"""Round-trip real MIDI files through keras_music and judge the result with mido, an independent reader.

    python tools/midi_fidelity.py ../shared/real-midi/piano-midi-de --out OUT [--set data.grid=24]

Runs `python -m keras_music.roundtrip` on the sources, then reads every source and its
decoded file with mido (never with keras_music's reader) and reports: notes back within
1/24 quarter of their onset, within 30 ms of their onset in seconds, files whose end time
stays within 1%, time signatures and programs kept, files flagged by the self-check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import mido

PERCUSSION = 9  # 0-based channel 10


def read(path: str) -> dict:
    """Onsets (quarters and seconds) per pitch, end time, time signatures and programs, via mido."""
    midi = mido.MidiFile(path)
    tpq = midi.ticks_per_beat
    tick, seconds, tempo = 0, 0.0, 500_000
    onsets: dict[int, list[tuple[float, float]]] = {}
    signatures: dict[float, tuple[int, int]] = {}
    programs_by_channel: dict[int, int] = {}
    programs: set[int] = set()
    end = 0.0
    for message in mido.merge_tracks(midi.tracks):
        if message.time:
            seconds += mido.tick2second(message.time, tpq, tempo)
            tick += message.time
        if message.type == "set_tempo":
            tempo = message.tempo
        elif message.type == "time_signature":
            signatures[tick / tpq] = (message.numerator, message.denominator)
        elif message.type == "program_change":
            programs_by_channel[message.channel] = message.program
        elif message.type in ("note_on", "note_off") and message.channel != PERCUSSION:
            if message.type == "note_on" and message.velocity > 0:
                onsets.setdefault(message.note, []).append((tick / tpq, seconds))
                programs.add(programs_by_channel.get(message.channel, 0))
            end = max(end, seconds)
    return {"onsets": onsets, "end": end, "signatures": sorted(signatures.items()), "programs": programs,
            "notes": sum(len(v) for v in onsets.values())}


def matched(source: list[float], output: list[float], tolerance: float) -> int:
    """One-to-one matches of sorted onsets within the tolerance (greedy, in time order)."""
    source, output = sorted(source), sorted(output)
    i = j = count = 0
    while i < len(source) and j < len(output):
        if abs(source[i] - output[j]) <= tolerance:
            count, i, j = count + 1, i + 1, j + 1
        elif output[j] < source[i]:
            j += 1
        else:
            i += 1
    return count


def compare(source_path: str, output_path: str) -> dict:
    source, output = read(source_path), read(output_path)
    beat = seconds = 0
    for pitch, times in source["onsets"].items():
        back = output["onsets"].get(pitch, [])
        beat += matched([q for q, _ in times], [q for q, _ in back], 1 / 24 + 1e-9)
        seconds += matched([s for _, s in times], [s for _, s in back], 0.030)
    end_ok = abs(output["end"] - source["end"]) <= 0.01 * max(source["end"], 1e-9)
    # A signature repeated at the same bar position is one change; compare positions and values.
    return {"notes": source["notes"], "within_beat": beat, "within_30ms": seconds,
            "end_source": source["end"], "end_output": output["end"], "end_ok": end_ok,
            "signatures_ok": source["signatures"] == output["signatures"] or
            (not source["signatures"] and output["signatures"] == [(0.0, (4, 4))]),
            "programs_ok": source["programs"] == output["programs"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--json", default=None, help="write the per-file comparison here")
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "keras_music.roundtrip", *args.sources, "--out", args.out, "--quiet"]
    for override in args.overrides:
        command += ["--set", override]
    started = time.time()
    subprocess.run(command, check=True)
    print(f"roundtrip: {time.time() - started:.1f} s")
    with open(os.path.join(args.out, "fidelity.json")) as handle:
        fidelity = json.load(handle)
    rows = []
    for piece in fidelity["pieces"]:
        if piece["status"] != "used":
            rows.append({"file": piece["file"], "skipped": piece.get("reason")})
            continue
        output = os.path.join(args.out, piece["outputs"][0])
        rows.append({"file": piece["file"], **compare(piece["file"], output)})
    used = [r for r in rows if "notes" in r]
    notes = sum(r["notes"] for r in used)
    summary = {
        "files": len(rows), "used": len(used), "flagged": fidelity["flagged"],
        "skipped": [(r["file"], r["skipped"]) for r in rows if "skipped" in r],
        "notes": notes,
        "within_1/24_beat": sum(r["within_beat"] for r in used) / max(1, notes),
        "within_30ms": sum(r["within_30ms"] for r in used) / max(1, notes),
        "end_within_1%": sum(r["end_ok"] for r in used),
        "time_signatures_kept": sum(r["signatures_ok"] for r in used),
        "programs_kept": sum(r["programs_ok"] for r in used),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"summary": summary, "files": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
