"""Resolve sources, parse them with music21 in parallel (cached, with timeouts), report every skip."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import warnings
from fractions import Fraction

from tqdm.auto import tqdm

from keras_music import events, storage
from keras_music import midi
from keras_music.errors import KerasMusicError

SCORE_EXTENSIONS = (".mid", ".midi", ".xml", ".mxl", ".musicxml", ".abc", ".krn")
MIDI_EXTENSIONS = (".mid", ".midi")
# Bump when parsing or note extraction changes, so stale cache entries are never reused.
PARSE_VERSION = 6
GLOB_CHARACTERS = set("*?[")
# Larger source files are skipped unread: no score keras_music can learn from is this big,
# and reading one whole would only exhaust memory.
MAX_SOURCE_BYTES = 128 << 20
CACHE_FORMAT = "keras_music.parse_cache"
# Jobs handed to the worker pool ahead of the ones running: enough to keep every worker
# busy, few enough that an interrupt has little to throw away.
QUEUED_PER_WORKER = 2


class CorpusError(KerasMusicError, ValueError):
    """The sources cannot yield a usable corpus; the message says which and why."""


@dataclasses.dataclass
class SourceFile:
    name: str  # what the manifest shows: a path, URI, or corpus:<name>/<file>
    path: str  # where to read the bytes
    skip: str | None = None  # already known reason to skip (e.g. unsupported type)


@dataclasses.dataclass
class ParseSettings:
    normalize_key: bool = True
    min_events: int = 8
    max_duration: float = 8.0
    timeout: float = 120.0
    grid: int = events.GRID  # divisions of a quarter note that onsets and ends snap to
    # Estimate the key even when the notes are not transposed (the key control needs it).
    estimate_key: bool = False

    def cache_key(self) -> str:
        # min_events is applied after the cache, so it is not part of the key.
        key = {"v": PARSE_VERSION, "normalize_key": self.normalize_key, "grid": self.grid,
               "max_duration": self.max_duration}
        if self.estimate_key and not self.normalize_key:
            # Only then do the records differ; every other key stays what it was before this setting.
            key["estimate_key"] = True
        text = json.dumps(key, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- sources

def resolve_sources(sources) -> tuple[list[SourceFile], list[SourceFile]]:
    """Expand sources into files; returns (candidates, already-skipped).

    Accepted: directories (recursive), files, globs (local or remote), remote URIs, and
    music21 corpus names such as `bach` (the chorales that ship with music21).
    """
    files: list[SourceFile] = []
    for source in sources:
        source = str(source)
        found: list[SourceFile] = []
        if storage.is_remote(source):
            if GLOB_CHARACTERS & set(source):
                found = [SourceFile(p, p) for p in storage.glob(source)]
            elif storage.isdir(source):
                found = [SourceFile(p, p) for p in storage.walk_files(source)]
            elif storage.exists(source):
                found = [SourceFile(source, source)]
        elif os.path.isdir(source):
            walk_errors: list = []
            found = [SourceFile(p, p) for p in storage.walk_files(source, walk_errors)]
            found += [SourceFile(p, p, skip=reason) for p, reason in walk_errors]
        elif os.path.isfile(source):
            found = [SourceFile(source, source)]
        elif GLOB_CHARACTERS & set(source):
            found = [SourceFile(p, p) for p in storage.glob(source) if os.path.isfile(p)]
        else:
            found = _corpus_files(source)
            if found is None:
                raise CorpusError(
                    f"source {source!r} is not an existing file, directory, glob match, URI or "
                    "music21 corpus name (e.g. bach)")
        if not found:
            raise CorpusError(f"source {source!r} matched no files")
        files.extend(found)
    seen = set()
    candidates, skipped = [], []
    for f in files:
        if f.name in seen:
            continue
        seen.add(f.name)
        if f.skip is None and not f.name.lower().endswith(SCORE_EXTENSIONS):
            f.skip = f"unsupported file type (expected one of {', '.join(SCORE_EXTENSIONS)})"
        (skipped if f.skip else candidates).append(f)
    return candidates, skipped


def resolve_files(sources) -> list[SourceFile]:
    """Every source file in manifest order: files already known to be skipped first, then the rest.

    Deterministic for the same sources, so separate processes can split the list by position.
    """
    candidates, skipped = resolve_sources(sources)
    return skipped + candidates


def _corpus_files(name: str) -> list[SourceFile] | None:
    from music21 import corpus

    paths = list(corpus.getComposer(name)) if "/" not in name else []
    if not paths:
        try:
            work = corpus.getWork(name)
        except Exception:  # music21 raises CorpusException for unknown names
            return None
        paths = work if isinstance(work, list) else [work]
    if not paths:
        return None
    root = os.path.commonpath([os.path.dirname(str(p)) for p in paths])
    return [SourceFile(f"corpus:{name}/{os.path.relpath(str(p), root)}", str(p)) for p in sorted(paths, key=str)]


# ----------------------------------------------------------------------------- parsing one file

def parse_bytes(name: str, data: bytes, *, settings: ParseSettings) -> dict:
    """Parse one file's bytes into notes; never raises: failures come back as a skip reason."""
    if not data:
        return {"status": "skipped", "reason": "empty file"}
    if os.path.splitext(name)[1].lower() in MIDI_EXTENSIONS:
        return _parse_midi(data, settings)
    return _parse_score(name, data, settings=settings)


def _error_reason(error: Exception) -> str:
    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    return f"parse error: {type(error).__name__}: {text}" if text else f"parse error: {type(error).__name__}"


def _parse_midi(data: bytes, settings: ParseSettings) -> dict:
    """MIDI read from its events (exact ticks), quantised on the grid, checked against the raw notes."""
    grid = settings.grid
    try:
        raw = midi.read(data)
    except midi.MidiError as error:
        return {"status": "skipped", "reason": f"parse error: {error}"}
    except Exception as error:  # a reader bug on hostile bytes must cost one file, not the run
        return {"status": "skipped", "reason": _error_reason(error)}
    if not raw.notes:
        dropped = ", ".join(f"{n} {why}" for why, n in raw.dropped.items())
        return {"status": "skipped", "reason": "no notes (no pitched notes with a duration"
                + (f"; dropped {dropped})" if dropped else ")")}
    if max(n[1] for n in raw.notes) > midi.MAX_QUARTERS * raw.ticks_per_quarter:
        return {"status": "skipped", "reason": f"timeline too long: notes beyond {midi.MAX_QUARTERS} quarter notes"}
    notes, account = midi.quantize(raw, grid)
    shift, key_name = 0, ""
    if settings.normalize_key:
        shift, key_name = events.estimate_key(notes)
    elif settings.estimate_key:
        key_name = events.estimate_key(notes)[1]
    kept = [[a, b, p + shift, part] for a, b, p, part in notes if 0 <= p + shift <= 127]
    if len(kept) < len(notes):
        account["notes_dropped"]["out of range after transposition"] = len(notes) - len(kept)
    if not kept:
        return {"status": "skipped", "reason": "no notes (all out of range after transposition)"}
    timing = midi.timing(raw)
    account["tempo_changes"] = len(timing["tempos"])
    account["time_signature_changes"] = len(timing["time_signatures"])
    check = check_timeline(raw, kept, shift=shift, grid=grid, max_duration=settings.max_duration)
    record = {
        "status": "parsed", "format": "midi", "grid": grid, "notes": kept,
        "start": kept[0][0] / grid, **timing,
        "time_signature": timing["time_signatures"][0][1:],
        "parts": raw.parts, "key": key_name, "shift": shift, "midi": account, "check": check,
    }
    record["events"] = check.pop("events")
    if not check["ok"]:
        return {"status": "skipped", "midi": account, "check": check,
                "reason": f"timeline drift: {check['notes_misplaced']} of {check['notes_checked']} notes not "
                          f"where the file has them after tokenising (end moved {check['end_drift']:g} quarters)"}
    return record


def check_timeline(raw, notes, *, shift: int, grid: int, max_duration: float) -> dict:
    """Tokenise the notes, decode them, and compare with the file's raw note events.

    Every raw note (left out ones aside) must come back on its pitch within half a grid
    step of its own onset, and the piece must end where the file's last note ends.
    Returns the verdict and the number of events (sonorities) the tokens hold.
    """
    tpq = raw.ticks_per_quarter
    sonorities = events.notes_to_sonorities([(Fraction(a, grid), Fraction(b, grid), p) for a, b, p, _ in notes],
                                            Fraction(max_duration), grid)
    decoded = events.sonorities_to_notes(events.tokens_to_sonorities(events.sonorities_to_tokens(sonorities)))
    start = notes[0][0]  # grid steps: the tokens begin at the first note
    onsets: dict[int, set[int]] = {}
    for onset, _, pitch in decoded:
        onsets.setdefault(int(pitch), set()).add(start + round(onset * grid))
    checked = misplaced = 0
    first_misplaced = None
    for onset, _end, pitch, _, _ in raw.notes:
        if not 0 <= pitch + shift <= 127:
            continue
        checked += 1
        point = midi.to_grid(onset, tpq, grid=grid)
        close = abs(2 * (onset * grid - point * tpq)) <= tpq  # within half a grid step, in integers
        if not close or point not in onsets.get(pitch + shift, ()):
            misplaced += 1
            if first_misplaced is None:
                first_misplaced = onset / tpq
    decoded_end = start / grid + (float((decoded[:, 0] + decoded[:, 1]).max()) if len(decoded) else 0.0)
    raw_end = max(end for _, end, p, _, _ in raw.notes if 0 <= p + shift <= 127) / tpq
    drift = abs(decoded_end - raw_end)
    return {"ok": misplaced == 0 and drift <= 1.0 / grid + 1e-9, "notes_checked": checked,
            "notes_misplaced": misplaced, "first_misplaced_at": first_misplaced, "end_drift": round(drift, 6),
            "events": len(sonorities)}


def _parse_score(name: str, data: bytes, *, settings: ParseSettings) -> dict:
    """MusicXML / ABC / Humdrum through music21's score parser."""
    extension = os.path.splitext(name)[1].lower()
    with tempfile.TemporaryDirectory(prefix="keras_music-parse-") as tmp:
        path = os.path.join(tmp, "score" + extension)
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            from music21 import converter

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                score = converter.parse(path, forceSource=True)
        except Exception as error:  # music21 raises many error types; all mean "unparseable"
            return {"status": "skipped", "reason": _error_reason(error)}
    grid = settings.grid
    try:
        notes = events.score_notes(score, grid)
        if not notes:
            return {"status": "skipped", "reason": "no notes (no pitched notes with a duration)"}
        shift, key_name = 0, ""
        if settings.normalize_key or settings.estimate_key:
            shift, key_name = events.estimate_key(notes)
            if not settings.normalize_key:
                shift = 0
        notes = [(a, b, p + shift) for a, b, p in notes if 0 <= p + shift <= 127]
        if not notes:
            return {"status": "skipped", "reason": "no notes (all out of range after transposition)"}
        timing = events.score_timing(score)
        instruments = score.flatten().getElementsByClass("Instrument")
        program = next((int(i.midiProgram) for i in instruments if i.midiProgram is not None), 0)
    except Exception as error:  # a score music21 accepted but whose content is malformed
        return {"status": "skipped", "reason": _error_reason(error)}
    return {
        "status": "parsed", "format": "score", "grid": grid,
        "notes": [[int(a * grid), int(b * grid), int(p), 0] for a, b, p in notes],
        "start": float(notes[0][0]), **timing,
        "time_signature": timing["time_signatures"][0][1:],
        "parts": [{"track": 0, "channel": 1, "program": program, "name": ""}],
        "key": key_name,
        "shift": shift,
    }


def notes_from_record(record: dict) -> list[tuple[Fraction, Fraction, int]]:
    """(onset, end, pitch) in quarter notes on the piece's own timeline (leading silence kept)."""
    grid = int(record.get("grid", events.GRID))
    return [(Fraction(n[0], grid), Fraction(n[1], grid), n[2]) for n in record["notes"]]


def record_sonorities(record: dict, max_duration) -> list:
    return events.notes_to_sonorities(notes_from_record(record), Fraction(max_duration),
                                      int(record.get("grid", events.GRID)))


# ----------------------------------------------------------------------------- records read back: checks, cache

def check_record(record) -> str | None:
    """What is wrong with a parse record read back (from the cache or a shard's part), or None.

    A record is what parse_bytes returns: a skip with its reason, or notes on a grid with
    the piece's timing. Anything else (an edited or damaged file) must be parsed again,
    never used: a bad time signature would only fail much later, in generate.
    """
    if not isinstance(record, dict) or record.get("status") not in ("parsed", "skipped"):
        return "no status"
    if record["status"] == "skipped":
        return None if isinstance(record.get("reason"), str) else "a skip without a reason"
    grid = record.get("grid", events.GRID)
    if not _is_int(grid, 1, high=960):
        return f"grid {grid!r}"
    notes = record.get("notes")
    if not isinstance(notes, list) or not notes:
        return "no notes"
    for note in notes:
        if not (isinstance(note, list) and len(note) in (3, 4) and all(_is_int(v) for v in note)
                and 0 <= note[0] < note[1] and 0 <= note[2] <= 127 and (len(note) == 3 or note[3] >= 0)):
            return f"note {note!r}"
    if not _is_number(record.get("start", 0.0)):
        return f"start {record.get('start')!r}"
    signature = record.get("time_signature", [4, 4])
    if not (isinstance(signature, list) and len(signature) == 2 and events.valid_time_signature(*signature)):
        return f"time signature {signature!r}"
    for entry in record.get("time_signatures", [[0.0, 4, 4]]):
        if not (isinstance(entry, list) and len(entry) == 3 and _is_number(entry[0]) and entry[0] >= 0
                and events.valid_time_signature(entry[1], entry[2])):
            return f"time signature change {entry!r}"
    for entry in record.get("tempos", [[0.0, 120.0]]):
        if not (isinstance(entry, list) and len(entry) == 2 and _is_number(entry[0]) and entry[0] >= 0
                and _is_number(entry[1]) and entry[1] > 0):
            return f"tempo change {entry!r}"
    events_count = record.get("events")
    if events_count is not None and not _is_int(events_count, 0):
        return f"event count {events_count!r}"
    parts = record.get("parts", [])
    if not isinstance(parts, list) or not all(isinstance(p, dict) and _is_int(p.get("program", 0), 0, high=127)
                                              for p in parts):
        return "parts"
    if not _is_int(record.get("shift", 0), -127, high=127):
        return f"shift {record.get('shift')!r}"
    return None


def _is_int(value, low=None, *, high=None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)
            and (high is None or value <= high))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _record_digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


class ParseCache:
    """Parsed notes on local disk, keyed by the file's content hash and the parse settings.

    Each entry carries the sha256 of its record; an entry that fails it or check_record
    (truncated, edited, bit-flipped) is a miss: the file is parsed again and the entry
    rewritten.
    """

    def __init__(self, directory: str | None, settings: ParseSettings):
        self.directory = directory
        self.suffix = settings.cache_key()

    def _path(self, digest: str) -> str:
        return storage.join(self.directory, "parsed", digest[:2], f"{digest}-{self.suffix}.json")

    def get(self, digest: str) -> dict | None:
        if not self.directory:
            return None
        try:
            data = json.loads(storage.read_text(self._path(digest), MAX_SOURCE_BYTES))
        except Exception:  # missing, unreadable or corrupt (OSError, ValueError, tf.errors.* remotely): a miss
            return None
        if isinstance(data, dict) and data.get("format") == CACHE_FORMAT:
            record = data.get("record")
            if not isinstance(record, dict) or data.get("sha256") != _record_digest(record):
                return None
        else:
            record = data  # an entry written before entries carried a checksum
        return record if check_record(record) is None else None

    def put(self, digest: str, record: dict) -> None:
        # Timeouts and crashes may be transient, so they are not cached.
        if not self.directory or record.get("reason", "").startswith(("timed out", "parse crashed", "not parsed")):
            return
        entry = {"format": CACHE_FORMAT, "sha256": _record_digest(record), "record": record}
        try:
            storage.write_text(self._path(digest), json.dumps(entry, separators=(",", ":")))
        except Exception:  # OSError locally, tf.errors.* remotely: an unwritable cache only costs speed
            pass


def default_cache_dir() -> str:
    return os.environ.get("KERAS_MUSIC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "keras_music")


# ----------------------------------------------------------------------------- parsing every file

def parse_sources(sources, settings: ParseSettings, *, workers: int = 0, cache_dir: str | None = "",
                  show_progress: bool = True) -> list[dict]:
    """Parse every source file; returns one manifest entry per file (used or skipped), in order.

    Used entries carry `notes`, `time_signature`, `key`, `sha256`. A file that cannot be
    read or parsed is an entry with a reason, never an exception.
    """
    return parse_files(resolve_files(sources), settings, workers=workers, cache_dir=cache_dir,
                       show_progress=show_progress)


def parse_files(files: list[SourceFile], settings: ParseSettings, *, workers: int = 0, cache_dir: str | None = "",
                show_progress: bool = True) -> list[dict]:
    """parse_sources for an already resolved list of files (e.g. one shard of it), in the given order."""
    cache = ParseCache(default_cache_dir() if cache_dir == "" else cache_dir, settings)
    entries: list[dict] = []
    jobs = []
    pending: dict[int, dict] = {}
    for f in files:
        entry = {"file": f.name}
        entries.append(entry)
        if f.skip:
            entry.update(status="skipped", reason=f.skip)
            continue
        try:
            data = storage.read_bytes(f.path, MAX_SOURCE_BYTES)
        except (storage.NotARegularFile, storage.FileTooLarge) as error:
            # FIFOs and devices would block or never end; they are never opened for reading.
            entry.update(status="skipped", reason=error.strerror)
            continue
        except (OSError, Exception) as error:  # tf.errors.* from remote filesystems too
            entry.update(status="skipped", reason=f"unreadable: {getattr(error, 'strerror', None) or error}")
            continue
        extension = os.path.splitext(f.name)[1].lower().encode("utf-8", "surrogateescape")
        digest = hashlib.sha256(data + extension).hexdigest()
        entry["sha256"] = digest
        cached = cache.get(digest)
        if cached is not None:
            entry.update(cached)
            continue
        index = len(jobs)
        jobs.append((index, f.name, data))
        pending[index] = entry

    def keep(index: int, record: dict) -> None:
        # Cached as each file finishes, so an interrupted parse resumes where it stopped.
        entry = pending[index]
        cache.put(entry["sha256"], record)
        entry.update(record)

    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(jobs), desc="parsing", unit="file", disable=not show_progress or not jobs,
               file=sys.stderr)
    try:
        if jobs and workers == 1 and settings.timeout <= 0:
            for index, name, data in jobs:
                keep(index, parse_bytes(name, data, settings=settings))
                bar.update(1)
        elif jobs:
            _parse_parallel(jobs, settings, workers, bar.update, keep)
    finally:
        bar.close()
    return [_finish(entry, settings) for entry in entries]


def parse_path(path: str, settings: ParseSettings, *, cache_dir: str | None = "") -> dict:
    """One file read and parsed like a corpus file (bounded size, parse timeout in a worker), no minimum length.

    Returns the manifest entry: status "used" with notes, or "skipped" with the reason.
    """
    settings = dataclasses.replace(settings, min_events=1)
    return parse_files([SourceFile(path, path)], settings, workers=1, cache_dir=cache_dir, show_progress=False)[0]


def _finish(entry: dict, settings: ParseSettings) -> dict:
    if entry.get("status") == "parsed":
        # MIDI workers count the events while checking the timeline (same grid and max_duration: both key the cache).
        count = entry.get("events")
        if count is None:
            count = len(record_sonorities(entry, settings.max_duration))
        if count < settings.min_events:
            entry.update(status="skipped", reason=f"too short: {count} events < {settings.min_events}")
            entry.pop("notes", None)
            entry.pop("events", None)
        else:
            entry["status"] = "used"
            entry["events"] = count
    return entry


# ----------------------------------------------------------------------------- worker processes

def _parse_parallel(jobs, settings: ParseSettings, workers: int, progress, on_result=None) -> dict[int, dict]:
    """Parse (index, name, data) jobs in worker processes; a hung file is killed after the timeout.

    Jobs are handed out a few at a time, and `on_result(index, record)` runs as each
    file finishes (the caller caches it there), so an interrupt loses only the files
    being parsed. On any exception (KeyboardInterrupt included) every worker is killed
    at once. Workers also exit by themselves when this process dies.
    """
    pool = _ParsePool(jobs, settings, workers=workers, progress=progress, on_result=on_result)
    completed = False
    try:
        pool.run()
        completed = True
    finally:
        pool.close(completed)
    return pool.out


class _ParsePool:
    """The worker processes of one _parse_parallel call, the jobs they hold and the records they sent back."""

    def __init__(self, jobs, settings: ParseSettings, *, workers: int, progress, on_result):
        self.jobs, self.settings, self.workers = jobs, settings, workers
        self.progress, self.on_result = progress, on_result
        self.context = multiprocessing.get_context("spawn")
        self.tasks, self.results = self.context.Queue(), self.context.Queue()
        self.processes: dict[int, multiprocessing.Process] = {}
        self.running: dict[int, tuple[int, float]] = {}  # pid -> (index, start time)
        self.out: dict[int, dict] = {}
        self.submitted = 0
        self.idle_deaths = 0
        self.parent = os.getpid()
        for _ in range(min(workers, len(jobs))):
            self.start()

    def run(self) -> None:
        """Hand out jobs and collect records until every job has one."""
        self.feed()
        while len(self.out) < len(self.jobs):
            if self.receive():
                continue
            self.stop_overdue()
            self.replace_dead()
            if not self.processes:
                # Workers that die before taking any file (e.g. the parent cannot be
                # re-imported by `spawn`): parse the rest here instead of losing it.
                for index, name, data in self.jobs:
                    if index not in self.out:
                        self.finish(index, parse_bytes(name, data, settings=self.settings))

    def start(self) -> None:
        process = self.context.Process(target=_worker, args=(self.tasks, self.results, self.settings, self.parent),
                                       daemon=True)
        with _sigint_ignored():
            process.start()
        self.processes[process.pid] = process

    def feed(self) -> None:
        while (self.submitted < len(self.jobs)
               and self.submitted - len(self.out) < QUEUED_PER_WORKER * max(1, len(self.processes))):
            self.tasks.put(self.jobs[self.submitted])
            self.submitted += 1

    def finish(self, index: int, record: dict) -> None:
        self.out[index] = record
        if self.on_result is not None:
            self.on_result(index, record)
        self.progress(1)

    def receive(self) -> bool:
        """Take one message from the workers (a file started, or its record); False if none came in time."""
        try:
            kind, index, payload = self.results.get(timeout=0.25)
        except queue.Empty:
            return False
        if kind == "start":
            self.running[payload] = (index, time.monotonic())
        elif index not in self.out:
            for pid, (i, _) in list(self.running.items()):
                if i == index:
                    del self.running[pid]
            self.finish(index, payload)
            self.feed()
        return True

    def stop_overdue(self) -> None:
        """Kill the workers whose file has run past the timeout; the file is skipped, the worker replaced."""
        now = time.monotonic()
        for pid, (index, started) in list(self.running.items()):
            if now - started > self.settings.timeout and index not in self.out:
                self.processes[pid].kill()
                self.processes[pid].join()
                del self.processes[pid], self.running[pid]
                self.finish(index, {"status": "skipped",
                                    "reason": f"timed out: parsing took longer than {self.settings.timeout:g} s"})
                self.start()
                self.feed()

    def replace_dead(self) -> None:
        """A worker that died costs the file it held; it is replaced (unless workers keep dying idle)."""
        for pid, process in list(self.processes.items()):
            if process.is_alive():
                continue
            del self.processes[pid]
            if pid in self.running:
                index, _ = self.running.pop(pid)
                if index not in self.out:
                    self.finish(index, {"status": "skipped",
                                        "reason": f"parse crashed the worker (exit code {process.exitcode})"})
            else:
                self.idle_deaths += 1
            if self.idle_deaths <= 2 * self.workers:
                self.start()
            self.feed()

    def close(self, completed: bool) -> None:
        """Workers stop when told after a complete run, and are killed otherwise."""
        if completed:
            for _ in self.processes:
                self.tasks.put(None)
            for process in self.processes.values():
                process.join(timeout=5)
        for process in self.processes.values():
            if process.is_alive():
                process.kill()
        for process in self.processes.values():
            process.join(timeout=2)
        # Undelivered jobs must not keep this process alive at exit waiting to flush them.
        for channel in (self.tasks, self.results):
            channel.cancel_join_thread()
            channel.close()


def _worker(tasks, results, settings, parent_pid=None):
    # Runs in a child process: parse until told to stop (None). Ctrl-C reaches the whole
    # process group; the parent decides what happens, so the worker ignores it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        _watch_parent(parent_pid)
    while True:
        task = tasks.get()
        if task is None:
            return
        index, name, data = task
        results.put(("start", index, os.getpid()))
        results.put(("done", index, parse_bytes(name, data, settings=settings)))


def _watch_parent(parent_pid: int) -> None:
    """Exit this worker as soon as the process that started it is gone (e.g. killed with SIGKILL)."""

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.25)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@contextlib.contextmanager
def _sigint_ignored():
    # A child inherits an ignored SIGINT through fork and exec, so a Ctrl-C during its
    # start-up cannot print a KeyboardInterrupt traceback from it.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- the manifest

def mark_duplicates(entries: list[dict]) -> None:
    """Skip files whose content repeats an earlier used file, so no piece is in both splits."""
    first: dict[str, str] = {}
    for entry in entries:
        if entry.get("status") != "used":
            continue
        digest = entry["sha256"]
        if digest in first:
            entry.update(status="skipped", reason=f"duplicate of {first[digest]}")
            entry.pop("notes", None)
        else:
            first[digest] = entry["file"]


def split_by_piece(entries: list[dict], val_fraction: float, *, seed: int, held_out=None) -> None:
    """Assign `split` (train/validation) by piece, from content hashes, not order or paths.

    With `held_out` (file names), exactly those files' pieces are the validation split.
    """
    used = [e for e in entries if e.get("status") == "used"]
    if held_out:
        for entry in used:
            entry["split"] = "validation" if entry["file"] in held_out else "train"
        return
    ranked = sorted(used, key=lambda e: hashlib.sha256(f"{seed}:{e['sha256']}".encode()).hexdigest())
    count = max(1, round(len(used) * val_fraction)) if len(used) > 1 else 0
    for position, entry in enumerate(ranked):
        entry["split"] = "validation" if position < count else "train"


def summarize(entries: list[dict]) -> dict:
    reasons: dict[str, int] = {}
    for entry in entries:
        if entry.get("status") != "used":
            reason = entry.get("reason", "unknown").split(":")[0]
            reasons[reason] = reasons.get(reason, 0) + 1
    used = [e for e in entries if e.get("status") == "used"]
    return {
        "files": len(entries),
        "used": len(used),
        "skipped": len(entries) - len(used),
        "skip_reasons": reasons,
        "train_pieces": sum(1 for e in used if e.get("split") == "train"),
        "validation_pieces": sum(1 for e in used if e.get("split") == "validation"),
        "events": sum(e.get("events", 0) for e in used),
    }


def manifest_json(entries: list[dict], extra: dict | None = None) -> dict:
    """The manifest as written to disk: every file, without the bulky notes."""
    files = [{k: v for k, v in e.items() if k != "notes"} for e in entries]
    return {"format": "keras_music.corpus_manifest", "version": 1, "summary": summarize(entries),
            **(extra or {}), "files": files}
