"""What the studio does: runs, generation, uploads and blind A/B stimuli and votes, behind the HTTP routes."""

from __future__ import annotations

import dataclasses
import os
import random
import re
import sys
import threading
import time
import uuid
from fractions import Fraction

from keras_music import audio as audio_lib, defaults, events, listening, run as run_lib, storage, web_export
from keras_music import controls, corpus, infill as infill_lib
from keras_music.controls import ControlSettings
from keras_music.errors import KerasMusicError
from keras_music.generate import GenerateError
from keras_music.generate import Generator
from keras_music.pieces import Piece
from keras_music.sampling import SamplingSettings
from keras_music.studio import summary

MAX_LENGTH = defaults.MAX_LENGTH  # events per generated piece
QUEUE = 2  # requests that may wait for the one running generation before "busy" answers
ID = re.compile(r"^[0-9a-f]{32}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
PRIMER_TOKENS = 32
AB_TEMPO = 90.0  # bpm of every A/B excerpt unless --tempo is given
# While listeners vote, a side is topped up with fresh excerpts until it holds this many times --ab-pool.
POOL_GROWTH = 4
# ... but only once no listener has asked for anything for this long: a render never competes with a burst.
POOL_QUIET_SECONDS = 1.0


def _controls_of(generator) -> dict | None:
    """What the studio's form may ask a run for: None for a run without control tokens."""
    tokens = generator.vocabulary.tokens
    if not controls.has_controls(tokens):
        return None
    normalize = bool(generator.config.data.normalize_key)
    keys = []
    for mode in controls.MODES:
        for name in events.PITCH_NAMES:
            label = f"{name.replace('-', 'b')} {mode}"
            if controls.requested_key(label, normalize)[0] in tokens:
                keys.append(label)
    return {"keys": keys, "levels": ["low", "medium", "high"], "density_bins": controls.DENSITY_BINS,
            "polyphony_bins": controls.POLYPHONY_BINS, "normalize_key": normalize}


def _requested_controls(body: dict) -> ControlSettings:
    """The key, density and polyphony of a /api/generate body (strings, or a bin number), unset when absent, and
    `bar_limits` (default true: the sampler keeps steered bars in their bins), `key_prior` (default
    defaults.KEY_PRIOR) and `key_guidance` (default defaults.KEY_GUIDANCE)."""
    out = {}
    for name in ("key", "density", "polyphony"):
        value = body.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            example = '"D minor"' if name == "key" else '"high" or "1-4:low,5-8:high"'
            raise StudioError(f"{name} must be a string such as {example}, got {value!r}")
        out[name] = value
    limits = body.get("bar_limits")
    if limits is not None:
        if not isinstance(limits, bool):
            raise StudioError(f"bar_limits must be true or false, got {limits!r}")
        out["bar_limits"] = limits
    for name in ("key_guidance", "key_prior"):
        weight = body.get(name)
        if weight is not None:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
                raise StudioError(f"{name} must be a number >= 0 (0 turns it off), got {weight!r}")
            out[name] = float(weight)
    return ControlSettings(**out)


def _sampling_of(body: dict, vocabulary_size: int, *, max_length: int | None = None) -> SamplingSettings:
    """The temperature, top-k and top-p of a request body (and, given `max_length`, its length and min_length)."""
    settings = {"temperature": _number(body, "temperature", default=defaults.TEMPERATURE, low=0.0, high=5.0),
                "top_k": int(_number(body, "top_k", default=defaults.TOP_K, low=0, high=vocabulary_size, integer=True)),
                "top_p": _number(body, "top_p", default=defaults.TOP_P, low=1e-6, high=1.0)}
    if max_length is not None:
        settings["length"] = int(_number(body, "length", default=defaults.LENGTH, low=1, high=max_length, integer=True))
        settings["min_length"] = int(_number(body, "min_length", default=defaults.MIN_LENGTH, low=0, high=max_length,
                                             integer=True))
    return SamplingSettings(**settings)


@dataclasses.dataclass(frozen=True)
class StudioSettings:
    """How the studio serves: the SoundFont and tempo it writes with, the A/B excerpts' length in seconds
    and pool size per side, and the longest piece a request may ask for (events)."""

    soundfont: str | None = None
    tempo: float | None = None
    ab_seconds: float = 20.0
    ab_pool: int = 8
    max_length: int = MAX_LENGTH


class StudioError(KerasMusicError, ValueError):
    """A request the studio refuses; `status` is the HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Side:
    run: str  # run label
    temperature: float | None  # None: the run's real held-out pieces

    @property
    def name(self) -> str:
        return f"{listening.REAL}:{self.run}" if self.temperature is None else f"{self.run}@{self.temperature:g}"


class Studio:
    """Runs, generators, the output area and the listening store behind the HTTP API."""

    def __init__(self, run_dirs, out_dir: str, *, db: str, settings: StudioSettings | None = None, log=None):
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.runs: dict[str, str] = {}
        for run_dir in run_dirs:
            label = os.path.basename(os.path.realpath(run_dir)) or "run"
            while label in self.runs:
                label += "+"
            self.runs[label] = run_dir
        self.out_dir = os.path.abspath(out_dir)
        os.makedirs(self.out_dir, exist_ok=True)
        self.store = listening.Store(db)
        settings = StudioSettings() if settings is None else settings
        self.soundfont = settings.soundfont
        audio_lib.soundfont_bytes(self.soundfont)  # a bad --soundfont fails at start, not on the first request
        self.tempo, self.ab_seconds = settings.tempo, settings.ab_seconds
        self.ab_pool, self.max_length = settings.ab_pool, settings.max_length
        # Generated pieces keep their own timing unless --tempo says otherwise; A/B excerpts all
        # share one tempo so that neither side can be told apart by it.
        self.ab_tempo = self.tempo or AB_TEMPO
        self.generators = {label: Generator(run_dir, log=self.log) for label, run_dir in self.runs.items()}
        self._lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending = 0
        for generator in self.generators.values():
            # The first step traces the model; do it now rather than in the first request.
            generator.generate(primer_tokens=[], sampling=SamplingSettings(length=2))
            generator.held_out_pieces()
        # The A/B pool: excerpts rendered ahead, per side, so that dealing a pair never waits on a model.
        self._kinds: dict[str, str] = {}
        self._pool_lock = threading.Lock()
        self._sides: dict[str, Side] = {}
        self._heard: dict[str, set] = {}
        self._uses = self.store.stimulus_uses()
        self._pool = self.store.all_stimuli()
        self._pool_failures = 0
        self._last_pool_failure = ""
        self._last_request = 0.0  # monotonic time of the last A/B request; top-ups wait for a quiet moment
        self._register_defaults()
        self._wake, self._closed = threading.Event(), threading.Event()
        self._filler = threading.Thread(target=self._fill, name="ab-pool", daemon=True)
        self._filler.start()

    # ------------------------------------------------------------------ one generation at a time

    def exclusive(self, work):
        with self._pending_lock:
            if self._pending > QUEUE:
                raise StudioError("busy: another generation is running and the queue is full; try again in a "
                                  "few seconds", 503)
            self._pending += 1
        try:
            with self._lock:
                return work()
        finally:
            with self._pending_lock:
                self._pending -= 1

    # ------------------------------------------------------------------ runs

    def run_label(self, label) -> str:
        if label is None:
            return next(iter(self.runs))
        if label not in self.runs:
            raise StudioError(f"unknown run {label!r} (served: {', '.join(self.runs)})", 404)
        return label

    def describe_runs(self) -> list[dict]:
        out = []
        for label, run_dir in self.runs.items():
            generator = self.generators[label]
            metrics = run_lib.read_training_record(run_dir)
            evaluation = run_lib.read_evaluation(run_dir)
            held_out = len(generator.held_out_pieces())
            out.append({
                "name": label, "representation": generator.representation,
                "vocabulary_size": len(generator.vocabulary), "held_out": held_out,
                "controls": _controls_of(generator),
                "infill": events.FIM_MIDDLE in generator.vocabulary.index,
                "metrics": _scalars(metrics), "evaluation": _scalars(evaluation),
                "summary": summary.summarize_run(label, generator.representation,
                                                 vocabulary_size=len(generator.vocabulary),
                                                 held_out=held_out, metrics=metrics, evaluation=evaluation,
                                                 recommended=defaults.TEMPERATURE),
                "details": [summary.records(metrics, "Training"), summary.records(evaluation, "Evaluation")],
                "curves_url": (f"/runs/{label}/{run_lib.TRAINING_CURVES}"
                               if os.path.isfile(run_lib.path(run_dir, run_lib.TRAINING_CURVES)) else None),
                "web_url": f"/web/{label}/" if web_export.site_directory(run_dir, required=False) else None,
            })
        return out

    def run_file(self, label: str, name: str) -> str:
        if name != run_lib.TRAINING_CURVES:
            raise StudioError(f"no such run file {name!r}", 404)
        path = run_lib.path(self.runs[self.run_label(label)], name)
        if not os.path.isfile(path):
            raise StudioError(f"{label} has no {name}", 404)
        return path

    # ------------------------------------------------------------------ generation

    def generate(self, body: dict) -> dict:
        label = self.run_label(body.get("run"))
        generator = self.generators[label]
        sampling = _sampling_of(body, len(generator.vocabulary), max_length=self.max_length)
        seed = int(_number(body, "seed", default=random.randrange(2 ** 31), low=0, high=2 ** 31 - 1, integer=True))
        primer = body.get("primer", "held_out")
        asked = _requested_controls(body)
        try:
            # A bad control fails now, not after waiting for the model.
            generator.control_request(asked)
        except KerasMusicError as error:
            raise StudioError(str(error)) from None
        kwargs = {}
        if primer == "none":
            kwargs["primer_tokens"] = []
        elif isinstance(primer, str) and primer.startswith("held_out:"):
            kwargs["primer_tokens"] = self.held_out_opening(generator, primer.partition(":")[2])
        elif isinstance(primer, str) and primer.startswith("upload:"):
            kwargs["primer"] = self.primer_path(primer.partition(":")[2])
        elif primer != "held_out":
            raise StudioError(f"primer must be 'held_out', 'held_out:N', 'upload:ID' or 'none', got {primer!r}")
        piece_id = uuid.uuid4().hex
        directory = os.path.join(self.out_dir, "pieces", piece_id)

        def work():
            started = time.perf_counter()
            try:
                pieces = generator.generate(1, sampling, seed=seed, controls=asked, **kwargs)
            except GenerateError as error:
                raise StudioError(str(error)) from None
            sampled = time.perf_counter()
            paths = generator.write(pieces, directory, tempo=self.tempo, prefix="piece", soundfont=self.soundfont)
            return pieces[0], paths, sampled - started, time.perf_counter() - sampled

        piece, paths, sample_seconds, write_seconds = self.exclusive(work)
        answer = self._answer(piece_id, label, seed=seed, piece=piece, paths=paths, generator=generator)
        answer["timing"] = {"sample_seconds": round(sample_seconds, 3), "write_seconds": round(write_seconds, 3)}
        return answer

    def _answer(self, piece_id: str, label: str, *, seed: int, piece, paths, generator) -> dict:
        """What /api/generate and /api/infill answer about a piece written to `paths`: its numbers, notes and files.

        `bars` is how many bars /api/infill counts in the piece's MIDI file (laid out from the start of
        its timeline up to its last note's end); `start` is where its notes begin on that timeline."""
        names = {os.path.splitext(p)[1]: os.path.basename(p) for p in paths}
        self._hide_paths(os.path.join(os.path.dirname(paths[0]), names[".json"]), label, generator=generator)
        base = f"/files/pieces/{piece_id}/"
        with open(os.path.join(os.path.dirname(paths[0]), names[".ogg"]), "rb") as handle:
            seconds = audio_lib.duration(handle.read())
        grid = int(generator.config.data.grid)
        start = float(piece.timing.get("start", 0.0))
        ends = [start + float(a) + float(b) for a, b, _ in piece.notes]
        last = Fraction(round(max(ends) * grid), grid) if ends else Fraction(0)
        return {
            "id": piece_id, "run": label, "seed": seed, "events": piece.events, "primer_events": piece.primer_events,
            "stop_reason": piece.stop_reason, "tempo": self.tempo or piece.timing["tempos"][0][1], "seconds": seconds,
            "quarters": float(sum(s.duration for s in piece.sonorities)),
            "primer_quarters": piece.primer_duration, "start": start,
            "bars": len(controls.bars(piece.timing.get("time_signatures"), last, grid)) if ends else 0,
            "notes": [[float(a), float(b), int(p)] for a, b, p in piece.notes],
            "controls": piece.settings.get("controls"), "infill": piece.infill,
            "urls": {"midi": base + names[".mid"], "musicxml": base + names[".musicxml"],
                     "audio": base + names[".ogg"], "png": base + names[".png"], "json": base + names[".json"]},
        }

    # ------------------------------------------------------------------ infilling (keras_music.infill)

    def infill(self, body: dict) -> dict:
        """Fill bars `bars` ("A-B") of `piece` ("upload:ID", an uploaded file, or "piece:ID", a piece made here).

        The answer is /api/generate's, with the piece's `infill` record (its `source` the request's
        "upload:ID" or "piece:ID"); errors name the piece and the run, never a path of this machine."""
        label = self.run_label(body.get("run"))
        generator = self.generators[label]
        if events.FIM_MIDDLE not in generator.vocabulary.index:
            raise StudioError(f"run {label} was trained without infilling (its vocabulary has no "
                              f"{events.FIM_MIDDLE}), so it cannot fill bars: serve a run trained with "
                              "data.infill_rate > 0")
        sampling = _sampling_of(body, len(generator.vocabulary))
        seed = int(_number(body, "seed", default=random.randrange(2 ** 31), low=0, high=2 ** 31 - 1, integer=True))
        source, bars = body.get("piece"), body.get("bars")
        if isinstance(source, str) and source.startswith("upload:"):
            item = source.partition(":")[2]
            path, name = self.primer_path(item), f"uploaded file {item}"
        elif isinstance(source, str) and source.startswith("piece:"):
            item = source.partition(":")[2]
            path, name = self.piece_path(item), f"piece {item}"
        else:
            raise StudioError(f"piece must be 'upload:ID' (an uploaded file) or 'piece:ID' (a piece made here), "
                              f"got {source!r}")
        if not isinstance(bars, (str, int)) or isinstance(bars, bool):
            raise StudioError(f"bars must be a bar range such as \"5-6\", got {bars!r}")
        try:
            first, last = infill_lib.parse_bars(bars)
        except infill_lib.InfillError as error:
            raise StudioError(str(error)) from None
        piece_id = uuid.uuid4().hex
        directory = os.path.join(self.out_dir, "pieces", piece_id)
        # What the messages and records say instead of this machine's paths.
        public = ((f"infill file {path}", name), (path, name), (generator.run_dir, f"run {label}"))

        def work():
            try:
                pieces = generator.infill(path, (first, last), sampling=sampling, seed=seed)
            except KerasMusicError as error:
                raise StudioError(_replaced(str(error), public)) from None
            piece = dataclasses.replace(pieces[0], primer_source=f"{source} (bars {first}-{last} filled)",
                                        infill={**pieces[0].infill, "source": source})
            return piece, generator.write([piece], directory, tempo=self.tempo, prefix="piece",
                                          soundfont=self.soundfont)

        piece, paths = self.exclusive(work)
        answer = self._answer(piece_id, label, seed=seed, piece=piece, paths=paths, generator=generator)
        answer["events"] = events.count_events(piece.tokens)  # the filled bars' (the rest is the source's)
        return answer

    def _hide_paths(self, record_path: str, label: str, *, generator) -> None:
        """The piece's JSON record as served: the run by its label, and no path of this machine in it."""
        record = storage.read_json(record_path)
        public = ((generator.run_dir, f"run {label}"), (self.out_dir, "studio"))
        record["run_dir"] = label
        if isinstance(record.get("primer_source"), str):
            record["primer_source"] = _replaced(record["primer_source"], public)
        storage.write_json(record_path, record)

    def piece_path(self, piece_id: str) -> str:
        """The MIDI file of a piece made here (by /api/generate or /api/infill)."""
        path = os.path.join(self.out_dir, "pieces", piece_id, "piece-01.mid") if ID.match(piece_id) else ""
        if not path or not os.path.isfile(path):
            raise StudioError(f"unknown piece {piece_id!r}: make one with POST /api/generate (or upload a file with "
                              "POST /api/primers and give 'upload:ID')", 404)
        return path

    @staticmethod
    def held_out_opening(generator, index: str) -> list[str]:
        pieces = generator.held_out_pieces()
        if not index.isdigit() or not 0 <= int(index) < len(pieces):
            raise StudioError(f"held-out piece {index!r} does not exist (the run has {len(pieces)})")
        tokens = pieces[int(index)]
        if generator.representation == "note":
            ends = [end for end in events.event_ends(tokens, "note") if end <= PRIMER_TOKENS]
            return tokens[:ends[-1]] if ends else tokens[:PRIMER_TOKENS]
        return tokens[:PRIMER_TOKENS]

    # ------------------------------------------------------------------ uploads

    def add_primer(self, filename: str, data: bytes) -> dict:
        extension = os.path.splitext(filename)[1].lower()
        if extension not in corpus.SCORE_EXTENSIONS:
            raise StudioError(f"{filename!r} is not a score file (expected one of {', '.join(corpus.SCORE_EXTENSIONS)})",
                              415)
        primer_id = uuid.uuid4().hex
        path = os.path.join(self.out_dir, "primers", primer_id + extension)
        storage.write_bytes(path, data)
        # Read as a corpus file is (bounded, parsed in a worker under the parse timeout, cached): a
        # hostile upload costs a reason, never the server. Generation parses it again with the run's settings.
        parsed = corpus.parse_path(path, corpus.ParseSettings(normalize_key=False))
        if parsed.get("status") != "used":
            os.remove(path)
            raise StudioError(f"{filename} is not usable music: {parsed.get('reason', 'cannot be read')}", 422)
        return {"id": primer_id, "name": filename, "notes": len(parsed["notes"])}

    def primer_path(self, primer_id: str) -> str:
        directory = os.path.join(self.out_dir, "primers")
        if ID.match(primer_id or "") and os.path.isdir(directory):
            for name in os.listdir(directory):
                if os.path.splitext(name)[0] == primer_id:
                    return os.path.join(directory, name)
        raise StudioError(f"unknown primer {primer_id!r}: upload it first with POST /api/primers", 404)

    # ------------------------------------------------------------------ files

    def output_file(self, area: str, item: str, *, name: str) -> str:
        if area != "pieces" or not ID.match(item) or not FILE_NAME.match(name):
            raise StudioError("not found", 404)
        path = os.path.realpath(os.path.join(self.out_dir, area, item, name))
        # Belt and braces: whatever the patterns allow, nothing outside the output area is served.
        if not path.startswith(os.path.realpath(self.out_dir) + os.sep) or not os.path.isfile(path):
            raise StudioError("not found", 404)
        return path

    # ------------------------------------------------------------------ A/B

    def parse_side(self, text) -> Side:
        if not isinstance(text, str):
            raise StudioError(f"a side is 'RUN@TEMPERATURE' or '{listening.REAL}:RUN', got {text!r}")
        if text.startswith(listening.REAL + ":"):
            return Side(self.run_label(text.partition(":")[2]), None)
        run, at, value = text.rpartition("@")
        try:
            temperature = float(value)
        except ValueError:
            temperature = -1.0
        if not at or not 0.05 <= temperature <= 3.0:
            raise StudioError(f"a side is 'RUN@TEMPERATURE' (0.05-3) or '{listening.REAL}:RUN', got {text!r}")
        return Side(self.run_label(run), temperature)

    def default_comparisons(self) -> list[str]:
        labels = list(self.runs)
        names = [f"{a}@1 vs {b}@1" for i, a in enumerate(labels) for b in labels[i + 1:]]
        return names + [f"{listening.REAL}:{label} vs {label}@1" for label in labels]

    def comparison(self, body: dict) -> tuple[str, Side, Side]:
        name = body.get("comparison") or self.default_comparisons()[0]
        if not isinstance(name, str) or " vs " not in name:
            raise StudioError(f"comparison must be 'SIDE vs SIDE', got {name!r}")
        first, second = (self.parse_side(part.strip()) for part in name.split(" vs ", 1))
        if second.temperature is None:
            first, second = second, first  # the real side comes first: preference = found the human
        if first.name == second.name or second.temperature is None:
            raise StudioError(f"comparison {name!r} needs two different sides, at most one of them real")
        name = f"{first.name} vs {second.name}"
        if name not in self._kinds:  # registered once per process: a pair costs one write, its own
            kind = "real" if first.temperature is None else "prefer"
            self.store.add_comparison(name, kind, first=first.name, second=second.name,
                                      first_dir=os.path.realpath(self.runs[first.run]),
                                      second_dir=os.path.realpath(self.runs[second.run]))
            self._kinds[name] = kind
        return name, first, second

    def _register_defaults(self):
        for name in self.default_comparisons():
            _, first, second = self.comparison({"comparison": name})
            for side in (first, second):
                self._sides[side.name] = side
                self._pool.setdefault(side.name, [])

    def next_pair(self, body: dict, listener: str = "") -> dict:
        """A pair drawn from the rendered pool at once; 503 with a retry hint while a side's pool is still empty."""
        self._last_request = time.monotonic()
        name, first, second = self.comparison(body)
        with self._pool_lock:
            for side in (first, second):
                if side.name not in self._sides:
                    self._sides[side.name] = side
                    self._pool.setdefault(side.name, [])
            missing = [side.name for side in (first, second) if not self._pool[side.name]]
            if not missing:
                first_id, second_id = (self._draw(side.name, listener) for side in (first, second))
        if missing:
            self._wake.set()
            raise StudioError(f"busy: the excerpts of {' and '.join(missing)} are still being rendered; "
                              "try again in a few seconds", 503)
        first_is = random.choice("ab")
        pair = self.store.add_pair(name, first_id, second_stimulus=second_id, first_is=first_is, listener=listener)
        self._wake.set()  # top the pool up behind this listener
        return {"pair_id": pair, "comparison": name,
                "question": "Which one is the human?" if self._kinds[name] == "real" else "Which do you prefer?",
                "a": {"audio_url": f"/api/ab/audio/{pair}/a"}, "b": {"audio_url": f"/api/ab/audio/{pair}/b"}}

    def _draw(self, side: str, listener: str) -> str:
        """The least-dealt excerpt of a side that this listener has not heard yet (any, once they heard all)."""
        heard = self._heard.setdefault(listener, set()) if listener else set()
        candidates = [s for s in self._pool[side] if s not in heard] or self._pool[side]
        fewest = min(self._uses.get(s, 0) for s in candidates)
        chosen = random.choice([s for s in candidates if self._uses.get(s, 0) == fewest])
        self._uses[chosen] = self._uses.get(chosen, 0) + 1
        heard.add(chosen)
        return chosen

    # ------------------------------------------------------------------ the A/B pool, filled in the background

    def pool_status(self) -> dict:
        with self._pool_lock:
            sides = {name: {"rendered": len(ids), "fresh": sum(1 for s in ids if not self._uses.get(s)),
                            "target": self.ab_pool} for name, ids in self._pool.items() if name in self._sides}
        return {"filled": all(v["rendered"] >= self.ab_pool for v in sides.values()), "sides": sides,
                "failures": self._pool_failures}

    def wait_for_pool(self, timeout: float = 600.0, *, max_failures: int | None = None) -> dict:
        """Block until every side has --ab-pool excerpts; TimeoutError after `timeout` seconds, and
        RuntimeError (naming the last failure) once more than `max_failures` renders have failed."""
        deadline = time.monotonic() + timeout
        while not self.pool_status()["filled"]:
            if max_failures is not None and self._pool_failures > max_failures:
                raise RuntimeError(f"the A/B pool stopped filling: {self._pool_failures} renders failed, the last with "
                                   f"{self._last_pool_failure}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the A/B pool did not fill in {timeout:g} s: {self.pool_status()}")
            time.sleep(0.05)
        return self.pool_status()

    def _wanted(self) -> Side | None:
        """The side to render next: one short of --ab-pool first, then one whose fresh excerpts ran low."""
        with self._pool_lock:
            sides = [(self._sides[name], ids) for name, ids in self._pool.items() if name in self._sides]
            short = [side for side, ids in sides if len(ids) < self.ab_pool]
            if short:
                return min(short, key=lambda side: len(self._pool[side.name]))
            if time.monotonic() - self._last_request < POOL_QUIET_SECONDS:
                return None
            low = [side for side, ids in sides if len(ids) < self.ab_pool * POOL_GROWTH
                   and sum(1 for s in ids if not self._uses.get(s)) < self.ab_pool]
            return low[0] if low else None

    def _fill(self):
        try:  # Linux: lower this thread's CPU priority only, so requests come first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        while not self._closed.is_set():
            side = self._wanted()
            if side is None:
                self._wake.wait(POOL_QUIET_SECONDS / 2)
                self._wake.clear()
                continue
            try:
                stimulus = self.render_stimulus(side)
            except Exception as failure:  # logged and retried later; listeners get 503s meanwhile, not a crash
                self._pool_failures += 1
                self._last_pool_failure = f"{type(failure).__name__}: {failure}"
                self.log(f"studio: rendering an excerpt of {side.name} failed: {self._last_pool_failure}")
                self._closed.wait(min(30.0, 2.0 ** self._pool_failures))
                continue
            with self._pool_lock:
                self._pool.setdefault(side.name, []).append(stimulus)

    def close(self):
        """Stop the pool's background renderer (the server stopping)."""
        self._closed.set()
        self._wake.set()
        self._filler.join(30)

    def render_stimulus(self, side: Side) -> str:
        """Render one excerpt of this side into the output area and the store; returns its id."""
        generator = self.generators[side.run]
        # Every stimulus lasts the same whole number of quarter notes, so pairs match in length.
        quarters = Fraction(max(1, round(self.ab_seconds * self.ab_tempo / 60)))
        step = Fraction(generator.config.data.classic_step).limit_denominator(generator.config.data.grid)
        if side.temperature is None:
            candidates = [events.tokens_to_sonorities(p, generator.representation, classic_step=step)
                          for p in generator.held_out_pieces()]
            candidates = [c for c in candidates if c]
            if not candidates:
                raise StudioError(f"{side.run} has no held-out pieces to compare with", 409)
            long_enough = [c for c in candidates if sum(s.duration for s in c) >= quarters]
            sonorities = random.choice(long_enough or candidates)
        else:
            # A sixteenth per event at least, so the piece always reaches the target before trimming.
            length = min(self.max_length, int(quarters * 4))
            with self._lock:  # the model is shared with /api/generate, one sampler at a time
                sampling = SamplingSettings(temperature=side.temperature, length=length, min_length=length)
                piece = generator.generate(1, sampling, seed=random.randrange(2 ** 31), primer_tokens=[])[0]
            sonorities = piece.sonorities
        sonorities = trim(sonorities, quarters)
        return self._write_stimulus(side, generator, sonorities=sonorities,
                                    seconds=float(quarters) * 60 / self.ab_tempo)

    def _write_stimulus(self, side: Side, generator, *, sonorities, seconds: float) -> str:
        piece = Piece(tokens=[], primer_tokens=[], ids=[], sonorities=sonorities,
                      notes=events.sonorities_to_notes(sonorities), primer_events=0, stop_reason="length",
                      repairs={}, settings={"side": side.name})
        item = uuid.uuid4().hex
        paths = generator.write([piece], os.path.join(self.out_dir, "stimuli", item), tempo=self.ab_tempo,
                                prefix="stimulus", audio=audio_lib.NONE)
        midi = next(p for p in paths if p.endswith(".mid"))
        # Rendered to the excerpt's exact length: MIDI writers pad the end differently, and a
        # longer excerpt could give its side away.
        sound = audio_lib.render_file(midi, os.path.splitext(midi)[0] + ".ogg", "ogg", self.soundfont, seconds)
        with open(sound, "rb") as handle:
            seconds = audio_lib.duration(handle.read())
        return self.store.add_stimulus(side.name, os.path.relpath(sound, self.out_dir), seconds=seconds)

    def pair_audio(self, pair: str, side: str) -> str:
        self._last_request = time.monotonic()
        if not ID.match(pair):
            raise StudioError("not found", 404)
        try:
            relative = self.store.pair_file(pair, side)
        except listening.ListeningError as error:
            raise StudioError(str(error), error.status) from None
        path = os.path.realpath(os.path.join(self.out_dir, relative))
        if not path.startswith(os.path.realpath(self.out_dir) + os.sep) or not os.path.isfile(path):
            raise StudioError("not found", 404)
        return path

    def vote(self, body: dict, listener: str = "") -> dict:
        self._last_request = time.monotonic()
        pair, choice, reason = body.get("pair_id"), body.get("choice"), body.get("reason", "")
        if not isinstance(pair, str) or not ID.match(pair):
            raise StudioError(f"unknown pair {pair!r}", 404)
        if not isinstance(reason, str) or len(reason) > 2000:
            raise StudioError("reason must be text of at most 2000 characters")
        try:
            return self.store.vote(pair, choice, reason.strip(), listener)
        except listening.ListeningError as error:
            raise StudioError(str(error), error.status) from None


def trim(sonorities, quarters: Fraction) -> list:
    """The first `quarters` quarter notes of a piece (the last sonority cut short to fit)."""
    out, total = [], Fraction(0)
    for sonority in sonorities:
        if total >= quarters:
            break
        duration = min(Fraction(sonority.duration), quarters - total)
        out.append(dataclasses.replace(sonority, duration=duration))
        total += duration
    return out


def _replaced(text: str, pairs) -> str:
    """`text` with each (old, new) pair replaced, in order, on one line."""
    for old, new in pairs:
        text = text.replace(str(old), new)
    return " ".join(text.split())


def _scalars(record) -> dict:
    """Numbers and short strings of a JSON record, one level of nesting flattened ('a.b')."""
    out = {}
    if not isinstance(record, dict):
        return out
    for key, value in record.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float, str)) or isinstance(item, str) and (
                    len(item) > 40 or "/" in item or "\\" in item):  # machine paths stay on the machine
                continue
            out[key if sub is None else f"{key}.{sub}"] = item
    return dict(list(out.items())[:40])


def _number(body: dict, key: str, *, default, low, high, integer: bool = False):
    value = body.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
        raise StudioError(f"{key} must be {'an integer' if integer else 'a number'} in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise StudioError(f"{key} must be in [{low}, {high}], got {value!r}")
    return value
