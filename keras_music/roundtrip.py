"""Audit: encode sources exactly as training would, decode them back to MIDI, and account for every note."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from fractions import Fraction

from keras_music import cli
from keras_music import config as config_lib, corpus, events, midi, storage
from keras_music.prepare import parse_settings, tokens_for

FIDELITY = "fidelity.json"


def decoded_notes(entry: dict, tokens: list[str], *, data: config_lib.DataConfig) -> list[list]:
    """The entry's tokens decoded back to [onset, end, pitch, part] in quarter notes on its own timeline.

    Tokens carry no instrument (parts are merged for the model), so each decoded note
    takes the part of the source note struck at the same grid point and pitch.
    """
    grid = int(entry.get("grid", events.GRID))
    step = Fraction(data.classic_step).limit_denominator(grid)
    sonorities = events.tokens_to_sonorities(tokens, data.representation, classic_step=step)
    start = Fraction(entry["notes"][0][0], grid)
    part_of = {(n[0], n[2]): (n[3] if len(n) > 3 else 0) for n in entry["notes"]}
    out = []
    for onset, duration, pitch in events.sonorities_to_notes(sonorities):
        at = Fraction(onset).limit_denominator(grid) + start
        end = at + Fraction(duration).limit_denominator(grid)
        out.append([float(at), float(end), int(pitch), part_of.get((round(at * grid), int(pitch)), 0)])
    return out


def write_piece(entry: dict, notes: list[list], *, path: str, musicxml: bool = False) -> list[str]:
    """MIDI (and optionally MusicXML) of decoded notes with the source's tempo map, metre and parts."""
    parts = entry.get("parts") or [{"program": 0, "channel": 1, "name": ""}]
    payload = midi.write([(a, b, p, 80, part) for a, b, p, part in notes], entry.get("tempos") or [[0.0, 120.0]],
                         time_signatures=entry.get("time_signatures") or [[0.0, 4, 4]], parts=parts,
                         title=os.path.basename(path))
    storage.write_bytes(path, payload)
    written = [path]
    if musicxml:
        grid = int(entry.get("grid", events.GRID))
        sonorities = events.notes_to_sonorities([(Fraction(a).limit_denominator(grid), Fraction(b).limit_denominator(grid), p)
                                                 for a, b, p, _ in notes], Fraction(8), grid)
        tempo = (entry.get("tempos") or [[0, 120.0]])[0][1]
        signature = tuple((entry.get("time_signatures") or [[0, 4, 4]])[0][1:])
        score = events.sonorities_to_stream(sonorities, tempo=tempo, time_signature=signature)
        xml_path = os.path.splitext(path)[0] + ".musicxml"
        with storage.atomic_local_path(xml_path, suffix=".musicxml") as tmp:
            score.write("musicxml", fp=tmp)
        written.append(xml_path)
    return written


def _stems(entries: list[dict]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for entry in entries:
        stem = os.path.splitext(os.path.basename(entry["file"].rstrip("/")))[0] or "piece"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


def roundtrip(config: config_lib.Config, out_dir: str, musicxml: bool = False, show_progress: bool = True) -> dict:
    """Parse (key normalisation off), tokenise, decode and write every source; returns the fidelity record."""
    data = dataclasses.replace(config.data, normalize_key=False)
    entries = corpus.parse_sources(data.sources, parse_settings(data), workers=data.workers,
                                   cache_dir=data.cache_dir, show_progress=show_progress)
    storage.makedirs(out_dir)
    files = []
    for entry, stem in zip(entries, _stems(entries)):
        row = {key: entry[key] for key in ("file", "status", "reason", "format", "events", "midi", "check",
                                           "key", "parts") if key in entry}
        if entry.get("status") == "used":
            tokens = tokens_for(entry, data)
            notes = decoded_notes(entry, tokens, data=data)
            row["tokens"] = len(tokens)
            row["notes_written"] = len(notes)
            row["tempo_changes"] = len(entry.get("tempos") or [])
            row["time_signatures"] = entry.get("time_signatures")
            row["outputs"] = [os.path.basename(p) for p in write_piece(entry, notes,
                                                                       path=storage.join(out_dir, stem + ".mid"),
                                                                       musicxml=musicxml)]
        files.append(row)
    used = [f for f in files if f["status"] == "used"]
    totals = {key: sum(f.get("midi", {}).get(key, 0) for f in used)
              for key in ("notes_read", "notes_on_grid", "notes_moved", "duplicates_merged", "notes_lengthened")}
    totals["notes_dropped"] = sum(sum(f.get("midi", {}).get("notes_dropped", {}).values()) for f in files)
    record = {"format": "keras_music.fidelity", "version": 1, "grid": data.grid,
              "representation": data.representation, "files": len(files), "used": len(used),
              "flagged": sum(1 for f in files if str(f.get("reason", "")).startswith("timeline drift")),
              "totals": totals, "pieces": files}
    storage.write_json(storage.join(out_dir, FIDELITY), record)
    return record


def table(record: dict) -> str:
    """One line per file: what was read, kept on the grid, moved, merged, dropped, and the timing kept."""
    header = f"{'file':<40} {'status':<8} {'read':>7} {'exact':>7} {'moved':>6} {'max move':>8} {'merged':>6} " \
             f"{'dropped':>7} {'tempos':>6} {'metres':>6}  check"
    lines = [header, "-" * len(header)]
    for f in record["pieces"]:
        name = f["file"] if len(f["file"]) <= 40 else "..." + f["file"][-37:]
        account = f.get("midi") or {}
        if f["status"] != "used":
            lines.append(f"{name:<40} {'skipped':<8} {f.get('reason', '')}")
            continue
        dropped = sum(account.get("notes_dropped", {}).values())
        check = f.get("check")
        verdict = "n/a (score)" if check is None else ("ok" if check["ok"] else "DRIFT")
        lines.append(f"{name:<40} {'used':<8} {account.get('notes_read', f.get('notes_written', 0)):>7} "
                     f"{account.get('notes_on_grid', '-'):>7} {account.get('notes_moved', '-'):>6} "
                     f"{account.get('largest_move', 0):>8.4f} {account.get('duplicates_merged', '-'):>6} "
                     f"{dropped:>7} {f.get('tempo_changes', 0):>6} {len(f.get('time_signatures') or []):>6}  {verdict}")
    t = record["totals"]
    lines.append(f"{record['used']} of {record['files']} files used, {record['flagged']} flagged by the self-check; "
                 f"{t['notes_read']} notes read, {t['notes_on_grid']} on the grid, {t['notes_moved']} moved to it "
                 f"(grid 1/{record['grid']} quarter), {t['duplicates_merged']} duplicates merged, "
                 f"{t['notes_dropped']} dropped")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_music.roundtrip",
        description="See what the model will see of your files: encode each source exactly as training would "
                    "(key normalisation off), decode the tokens back, and write DIR/<stem>.mid with the source's "
                    "tempo map, time signatures and instruments, plus DIR/fidelity.json and a table of what "
                    "happened to every note (kept on the grid, moved, merged, dropped).")
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="files, directories (recursive), globs, URIs or music21 corpus names")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the decoded files and fidelity.json go")
    parser.add_argument("--musicxml", action="store_true", help="also write DIR/<stem>.musicxml")
    config_lib.add_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    return parser, parser.parse_args(argv)


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    with cli.user_errors(parser):
        config = config_lib.load(args.config, args.overrides)
        config = config_lib.with_sources(config, args.sources)
        record = roundtrip(config, args.out, musicxml=args.musicxml, show_progress=not args.quiet)
        if not args.quiet:
            print(table(record))
        print(f"wrote {record['used']} decoded file{'s' if record['used'] != 1 else ''} and "
              f"{storage.join(args.out, FIDELITY)}")
        if record["used"] == 0:
            print(f"{parser.prog}: error: no usable pieces in {', '.join(args.sources)}", file=sys.stderr)
            cli.finish(cli.DATA_EXIT)
    cli.finish(0)


if __name__ == "__main__":
    main()
