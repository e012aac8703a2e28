"""A piece's files: MIDI, MusicXML, piano-roll PNG, audio and a JSON record, written whole or not at all."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from keras_music import audio as audio_lib, events, run as run_lib, storage
from keras_music import midi, plots
from keras_music.pieces import Piece, with_overrides

_STAGING = ".{prefix}-{number}.tmp-"


def piece_midi(piece: Piece, title: str = "") -> bytes:
    """The piece as a MIDI file: its notes at their place on the timeline, its tempo map, metre and program."""
    start = float(piece.timing.get("start", 0.0))
    notes = [(start + onset, start + onset + duration, int(pitch), 80, 0)
             for onset, duration, pitch in np.asarray(piece.notes, float).reshape(-1, 3)]
    parts = [{"program": int(piece.timing.get("program", 0)), "channel": 1, "name": title}]
    return midi.write(notes, piece.timing["tempos"], time_signatures=piece.timing["time_signatures"], parts=parts,
                      title=title,
                      markers=infill_markers(piece))


def infill_markers(piece: Piece) -> list[tuple[float, str]]:
    """Marker meta events around the bars an infilled piece filled: `infill A-B start` and `infill A-B end`."""
    if not piece.infill:
        return []
    bars = "-".join(str(b) for b in piece.infill["bars"])
    return [(piece.infill["onset"], f"infill {bars} start"), (piece.infill["offset"], f"infill {bars} end")]


def plot_piano_roll(piece: Piece, path: str, *, title: str = "") -> None:
    """Pitch against time in quarter notes; the primer region and notes are drawn apart from generated ones."""
    from matplotlib.patches import Rectangle

    notes = np.asarray(piece.notes, float).reshape(-1, 3)
    primer_end = piece.primer_duration
    total = float(sum(s.duration for s in piece.sonorities)) or 1.0
    figure, axis = plots.pyplot().subplots(figsize=(min(24.0, 6 + total / 8), 4.5))
    given = notes[:, 0] < primer_end if len(notes) else np.zeros(0, bool)
    if piece.infill:  # the filled bars are the generated part; the file's bars around them are given
        start = float(piece.timing.get("start", 0.0))
        low, high = piece.infill["onset"] - start, piece.infill["offset"] - start
        axis.axvspan(low, high, color="lightyellow", zorder=0, label=f"filled bars {piece.infill['bars'][0]}-"
                                                                     f"{piece.infill['bars'][1]}")
        given = ~((notes[:, 0] >= low) & (notes[:, 0] < high)) if len(notes) else given
    elif primer_end > 0:
        axis.axvspan(0, primer_end, color="0.88", zorder=0, label="primer")
    for is_primer, color, label in ((True, "0.45", "primer notes" if not piece.infill else "the file's notes"),
                                    (False, "tab:blue", "generated notes")):
        chosen = notes[given == is_primer] if len(notes) else notes
        for onset, duration, pitch in chosen:
            axis.add_patch(Rectangle((onset, pitch - 0.4), duration, 0.8, color=color, linewidth=0, zorder=2))
        if len(chosen):
            axis.plot([], [], color=color, linewidth=6, label=label)
    low, high = (notes[:, 2].min(), notes[:, 2].max()) if len(notes) else (60, 72)
    axis.set_xlim(0, total)
    axis.set_ylim(low - 2, high + 2)
    axis.set_xlabel("time (quarter notes)")
    axis.set_ylabel("MIDI pitch")
    axis.set_title(title or "piano roll")
    axis.grid(alpha=0.25, zorder=1)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    plots.save(figure, path, dpi=90)


def next_number(out_dir: str, prefix: str = "sample") -> int:
    """The number after every `prefix-N.*` file already in `out_dir` (1 for a new or empty directory)."""
    if not storage.isdir(out_dir):
        return 1
    pattern = re.compile(r"^" + re.escape(prefix) + r"-(\d+)\.")
    numbers = [int(m.group(1)) for m in map(pattern.match, storage.listdir(out_dir)) if m]
    return max(numbers, default=0) + 1


def _staging_dir(out_dir: str, prefix: str, *, number: int) -> str:
    """A hidden local directory in which one piece's files are made before they are moved into `out_dir`."""
    parent = None if storage.is_remote(out_dir) else out_dir
    if parent:
        os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=_STAGING.format(prefix=prefix, number=number), dir=parent)


def _remove_staging(out_dir: str, prefix: str) -> None:
    """Staging directories left by a write that was killed outright (the out-dir lock proves nobody uses them)."""
    if storage.is_remote(out_dir) or not os.path.isdir(out_dir):
        return
    pattern = re.compile(r"^\." + re.escape(prefix) + r"-\d+\.tmp-")
    for name in os.listdir(out_dir):
        if pattern.match(name) and os.path.isdir(os.path.join(out_dir, name)):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


def _move_into(path: str, out_dir: str) -> str:
    final = storage.join(out_dir, os.path.basename(path))
    if storage.is_remote(final):
        storage.write_bytes(final, storage.read_bytes(path))
    else:
        os.replace(path, final)
    return final


@dataclasses.dataclass(frozen=True)
class Writer:
    """Writes pieces of a run as files, each with its own timing unless `tempo` (bpm) or `program` override it.

    `instrument` is the music21 name written into the MusicXML, `program` its General MIDI
    program for the MIDI file; `audio` is ogg, wav, flac or none.
    """

    run_dir: str
    log: Callable[[str], None]  # told when numbering continues after pieces already in the folder
    tempo: float | None = None
    instrument: str | None = None
    program: int | None = None
    prefix: str = "sample"
    audio: str = audio_lib.DEFAULT_FORMAT
    soundfont: str | None = None

    def write(self, pieces: list[Piece], out_dir: str, *, replace: bool = False) -> list[str]:
        """Every piece's files into `out_dir`, numbered after the pieces already there; returns the paths.

        Each piece is made in a hidden staging folder and moved in whole, its JSON record
        last. With `replace`, `out_dir` is replaced as a whole instead (numbering from 1).
        """
        if replace:
            with storage.atomic_directory(out_dir) as staging:
                paths = self._write_all(pieces, staging, first=1)
            return [storage.join(out_dir, os.path.basename(p)) for p in paths]
        with run_lib.lock(out_dir, "python -m keras_music.generate"):
            _remove_staging(out_dir, self.prefix)
            first = next_number(out_dir, self.prefix)
            if first > 1:
                self.log(f"{out_dir} already holds pieces up to {self.prefix}-{first - 1:02d}: the new ones are "
                         f"numbered from {self.prefix}-{first:02d}")
            return self._write_all(pieces, out_dir, first=first)

    def _write_all(self, pieces: list[Piece], out_dir: str, *, first: int) -> list[str]:
        width = max(2, len(str(first + len(pieces) - 1)))
        paths = []
        with ThreadPoolExecutor(max_workers=1) as renderer:
            for offset, piece in enumerate(pieces):
                paths += self._write_whole(piece, first + offset, width=width, out_dir=out_dir, renderer=renderer)
        return paths

    def _write_whole(self, piece: Piece, number: int, *, width: int, out_dir: str, renderer) -> list[str]:
        """One piece made in a hidden staging directory, then moved into `out_dir` with its JSON record last."""
        staging = _staging_dir(out_dir, self.prefix, number=number)
        try:
            written = self._write_piece(piece, number, width=width, directory=staging, renderer=renderer)
            # The record goes last: a piece whose JSON exists is complete.
            written.sort(key=lambda p: p.endswith(".json"))
            return [_move_into(path, out_dir) for path in written]
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _write_piece(self, piece: Piece, number: int, *, width: int, directory: str, renderer) -> list[str]:
        """One piece's files into `directory`; its audio renders on `renderer` while the MusicXML and piano roll
        are written."""
        piece = dataclasses.replace(piece, timing=with_overrides(piece.timing, self.tempo, program=self.program))
        stem = os.path.join(directory, f"{self.prefix}-{number:0{width}d}")
        title = f"{self.prefix} {number} (keras_music)"
        score = events.sonorities_to_stream(piece.sonorities, tempo=piece.timing["tempos"][0][1],
                                            instrument=self.instrument or "Piano",
                                            time_signature=tuple(piece.time_signature), title=title)
        midi, musicxml, png, record = (stem + ".mid", stem + ".musicxml", stem + ".png", stem + ".json")
        storage.write_bytes(midi, piece_midi(piece, title))
        # Rendered from the written MIDI file, so the audio is exactly what the MIDI plays; the
        # renderer releases the GIL, so it runs beside the MusicXML and the piano roll.
        rendering = (renderer.submit(audio_lib.render_file, midi, stem + audio_lib.EXTENSIONS[self.audio], self.audio,
                                     self.soundfont) if self.audio != audio_lib.NONE else None)
        try:
            with storage.atomic_local_path(musicxml, suffix=".musicxml") as tmp:
                score.write("musicxml", fp=tmp)
            plot_piano_roll(piece, png, title=title)
        finally:
            sound = rendering.result() if rendering is not None else None  # never leave it writing into `directory`
        files = {"midi": os.path.basename(midi), "musicxml": os.path.basename(musicxml), "png": os.path.basename(png)}
        if sound:
            files["audio"] = os.path.basename(sound)
        storage.write_json(record, {
            "format": "keras_music.generated_piece", "version": 1,
            "run_dir": str(self.run_dir), "seed": piece.seed, "index": piece.index,
            "settings": dict(piece.settings, tempo=None if self.tempo is None else float(self.tempo),
                             instrument=self.instrument),
            "timing": piece.timing,
            "stop_reason": piece.stop_reason, "events": piece.events, "primer_events": piece.primer_events,
            "primer_source": piece.primer_source, "unknown_primer_tokens": piece.unknown_primer_tokens,
            "repairs": piece.repairs, "primer_tokens": piece.primer_tokens, "tokens": piece.tokens,
            "ids": piece.ids, "files": files,
            **({"infill": piece.infill} if piece.infill else {}),
        })
        return [p for p in (midi, musicxml, png, sound, record) if p]
