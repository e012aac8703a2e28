"""The studio web app: generate and hear pieces, and run blind A/B listening tests over trained runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import sys
import threading
import time
import uuid
from fractions import Fraction

from keras_music import audio as audio_lib, events, listening, run as run_lib, sampling, storage
from keras_music.errors import KerasMusicError

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_UPLOAD_BYTES = 2 * 1024 * 1024  # scores are small; a 2 MB MIDI is already a long symphony
MAX_JSON_BYTES = 64 * 1024
MAX_LENGTH = 1000  # events per generated piece
QUEUE = 2  # requests that may wait for the one running generation before "busy" answers
ID = re.compile(r"^[0-9a-f]{32}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
PRIMER_TOKENS = 32
AB_TEMPO = 90.0  # bpm of every A/B excerpt unless --tempo is given
# Cross-origin isolation: what LiteRT.js's threaded build needs (SharedArrayBuffer); harmless for the default one.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


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

    def __init__(self, run_dirs, out_dir: str, db: str, soundfont: str | None = None, tempo: float | None = None,
                 ab_seconds: float = 20.0, ab_pool: int = 8, max_length: int = MAX_LENGTH, log=None):
        from keras_music.generate import Generator

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
        self.soundfont = soundfont
        audio_lib.soundfont_bytes(soundfont)  # a bad --soundfont fails at start, not on the first request
        self.tempo, self.ab_seconds, self.ab_pool, self.max_length = tempo, ab_seconds, ab_pool, max_length
        # Generated pieces keep their own timing unless --tempo says otherwise; A/B excerpts all
        # share one tempo so that neither side can be told apart by it.
        self.ab_tempo = tempo or AB_TEMPO
        self.generators = {label: Generator(run_dir, log=self.log) for label, run_dir in self.runs.items()}
        self._lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending = 0
        for generator in self.generators.values():
            # The first step traces the model; do it now rather than in the first request.
            generator.generate(length=2, primer_tokens=[])
            generator.held_out_pieces()

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
            metrics = _read_json(run_lib.path(run_dir, run_lib.METRICS))
            evaluation = _read_json(run_lib.path(run_dir, "evaluation.json"))
            out.append({
                "name": label, "run_dir": run_dir, "representation": generator.representation,
                "vocabulary_size": len(generator.vocabulary), "held_out": len(generator.held_out_pieces()),
                "metrics": _scalars(metrics), "evaluation": _scalars(evaluation),
                "curves_url": (f"/runs/{label}/training_curves.png"
                               if os.path.isfile(run_lib.path(run_dir, "training_curves.png")) else None),
                "web_url": f"/web/{label}/" if web_directory(run_dir, required=False) else None,
            })
        return out

    def run_file(self, label: str, name: str) -> str:
        if name not in ("training_curves.png",):
            raise StudioError(f"no such run file {name!r}", 404)
        path = run_lib.path(self.runs[self.run_label(label)], name)
        if not os.path.isfile(path):
            raise StudioError(f"{label} has no {name}", 404)
        return path

    # ------------------------------------------------------------------ generation

    def generate(self, body: dict) -> dict:
        label = self.run_label(body.get("run"))
        generator = self.generators[label]
        temperature = _number(body, "temperature", sampling.DEFAULT_TEMPERATURE, 0.0, 5.0)
        top_k = int(_number(body, "top_k", 0, 0, len(generator.vocabulary), integer=True))
        top_p = _number(body, "top_p", 1.0, 1e-6, 1.0)
        length = int(_number(body, "length", 64, 1, self.max_length, integer=True))
        seed = int(_number(body, "seed", random.randrange(2 ** 31), 0, 2 ** 31 - 1, integer=True))
        primer = body.get("primer", "held_out")
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
            from keras_music.generate import GenerateError

            started = time.perf_counter()
            try:
                pieces = generator.generate(length=length, temperature=temperature, top_k=top_k, top_p=top_p,
                                            seed=seed, **kwargs)
            except GenerateError as error:
                raise StudioError(str(error)) from None
            sampled = time.perf_counter()
            paths = generator.write(pieces, directory, tempo=self.tempo, prefix="piece", soundfont=self.soundfont)
            return pieces[0], paths, sampled - started, time.perf_counter() - sampled

        piece, paths, sample_seconds, write_seconds = self.exclusive(work)
        names = {os.path.splitext(p)[1]: os.path.basename(p) for p in paths}
        base = f"/files/pieces/{piece_id}/"
        with open(os.path.join(directory, names[".ogg"]), "rb") as handle:
            seconds = audio_lib.duration(handle.read())
        return {
            "id": piece_id, "run": label, "seed": seed, "events": piece.events, "primer_events": piece.primer_events,
            "stop_reason": piece.stop_reason, "tempo": self.tempo or piece.timing["tempos"][0][1], "seconds": seconds,
            "quarters": float(sum(s.duration for s in piece.sonorities)),
            "primer_quarters": piece.primer_duration,
            "notes": [[float(a), float(b), int(p)] for a, b, p in piece.notes],
            "timing": {"sample_seconds": round(sample_seconds, 3), "write_seconds": round(write_seconds, 3)},
            "urls": {"midi": base + names[".mid"], "musicxml": base + names[".musicxml"],
                     "audio": base + names[".ogg"], "png": base + names[".png"], "json": base + names[".json"]},
        }

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
        from keras_music import corpus

        extension = os.path.splitext(filename)[1].lower()
        if extension not in corpus.SCORE_EXTENSIONS:
            raise StudioError(f"{filename!r} is not a score file (expected one of {', '.join(corpus.SCORE_EXTENSIONS)})",
                              415)
        # The same guarded parse as corpus files: any failure comes back as a reason, never an exception.
        parsed = corpus.parse_bytes(filename, data, corpus.ParseSettings(normalize_key=False, min_events=1))
        if parsed["status"] != "parsed":
            raise StudioError(f"{filename} is not usable music: {parsed['reason']}", 422)
        primer_id = uuid.uuid4().hex
        storage.write_bytes(os.path.join(self.out_dir, "primers", primer_id + extension), data)
        return {"id": primer_id, "name": filename, "notes": len(parsed["notes"])}

    def primer_path(self, primer_id: str) -> str:
        directory = os.path.join(self.out_dir, "primers")
        if ID.match(primer_id or "") and os.path.isdir(directory):
            for name in os.listdir(directory):
                if os.path.splitext(name)[0] == primer_id:
                    return os.path.join(directory, name)
        raise StudioError(f"unknown primer {primer_id!r}: upload it first with POST /api/primers", 404)

    # ------------------------------------------------------------------ files

    def output_file(self, area: str, item: str, name: str) -> str:
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
        kind = "real" if first.temperature is None else "prefer"
        self.store.add_comparison(name, kind, first.name, second.name, os.path.realpath(self.runs[first.run]),
                                  os.path.realpath(self.runs[second.run]))
        return name, first, second

    def next_pair(self, body: dict) -> dict:
        name, first, second = self.comparison(body)
        first_id, second_id = self.exclusive(lambda: (self.stimulus(first), self.stimulus(second)))
        first_is = random.choice("ab")
        pair = self.store.add_pair(name, first_id, second_id, first_is)
        kind = self.store_kind(name)
        return {"pair_id": pair, "comparison": name,
                "question": "Which one is the human?" if kind == "real" else "Which do you prefer?",
                "a": {"audio_url": f"/api/ab/audio/{pair}/a"}, "b": {"audio_url": f"/api/ab/audio/{pair}/b"}}

    def store_kind(self, name: str) -> str:
        return next((r["kind"] for r in self.store.results() if r["name"] == name), "prefer")

    def stimulus(self, side: Side) -> str:
        """A rendered piece for this side: a new one while the pool is short, else one drawn from the pool."""
        pool = self.store.stimuli(side.name)
        if len(pool) >= self.ab_pool:
            return random.choice(pool)["id"]
        generator = self.generators[side.run]
        # Every stimulus lasts the same whole number of quarter notes, so pairs match in length.
        quarters = Fraction(max(1, round(self.ab_seconds * self.ab_tempo / 60)))
        step = Fraction(generator.config.data.classic_step).limit_denominator(generator.config.data.grid)
        if side.temperature is None:
            candidates = [events.tokens_to_sonorities(p, generator.representation, step)
                          for p in generator.held_out_pieces()]
            candidates = [c for c in candidates if c]
            if not candidates:
                raise StudioError(f"{side.run} has no held-out pieces to compare with", 409)
            long_enough = [c for c in candidates if sum(s.duration for s in c) >= quarters]
            sonorities = random.choice(long_enough or candidates)
        else:
            # A sixteenth per event at least, so the piece always reaches the target before trimming.
            length = min(self.max_length, int(quarters * 4))
            piece = generator.generate(length=length, min_length=length, temperature=side.temperature,
                                       seed=random.randrange(2 ** 31), primer_tokens=[])[0]
            sonorities = piece.sonorities
        sonorities = trim(sonorities, quarters)
        return self._write_stimulus(side, generator, sonorities, float(quarters) * 60 / self.ab_tempo)

    def _write_stimulus(self, side: Side, generator, sonorities, seconds: float) -> str:
        from keras_music.generate import Piece

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
        return self.store.add_stimulus(side.name, os.path.relpath(sound, self.out_dir), seconds)

    def pair_audio(self, pair: str, side: str) -> str:
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

    def vote(self, body: dict) -> dict:
        pair, choice, reason = body.get("pair_id"), body.get("choice"), body.get("reason", "")
        if not isinstance(pair, str) or not ID.match(pair):
            raise StudioError(f"unknown pair {pair!r}", 404)
        if not isinstance(reason, str) or len(reason) > 2000:
            raise StudioError("reason must be text of at most 2000 characters")
        try:
            return self.store.vote(pair, choice, reason.strip())
        except listening.ListeningError as error:
            raise StudioError(str(error), error.status) from None


def web_directory(path: str, required: bool = True) -> str | None:
    """The web export in `path`: a site folder itself (with web.json) or a run directory's export/web/."""
    from keras_music import export, web_export

    for candidate in (path, os.path.join(export.export_dir(path), web_export.WEB_DIR)):
        if os.path.isfile(os.path.join(candidate, web_export.SITE_FILE)):
            return candidate
    if required:
        raise StudioError(f"{path} holds no web export (no {web_export.SITE_FILE} in it or in export/web/): build "
                          "one with python -m keras_music.export --run-dir RUN --web", 404)
    return None


def web_site(directory: str, isolate: bool = True):
    """An ASGI app serving a web export's files, with the cross-origin isolation headers when `isolate`."""
    import mimetypes

    from starlette.staticfiles import StaticFiles

    mimetypes.add_type("application/wasm", ".wasm")
    mimetypes.add_type("text/javascript", ".js")
    mimetypes.add_type("application/octet-stream", ".tflite")
    files = StaticFiles(directory=directory, html=True)
    extra = [(k.lower().encode(), v.encode()) for k, v in ISOLATION_HEADERS.items()] if isolate else []

    async def app(scope, receive, send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start" and extra:
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        await files(scope, receive, send_with_headers)

    return app


def create_web_app(directory: str, isolate: bool = True):
    """Only a web export, at /: what `--web-export` serves (no runs loaded, no TensorFlow)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    return Starlette(routes=[Mount("/", web_site(web_directory(directory), isolate))])


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


def _read_json(path: str):
    try:
        return storage.read_json(path)
    except (OSError, ValueError):
        return None


def _scalars(record) -> dict:
    """Numbers and short strings of a JSON record, one level of nesting flattened ('a.b')."""
    out = {}
    if not isinstance(record, dict):
        return out
    for key, value in record.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float, str)) or isinstance(item, str) and len(item) > 40:
                continue
            out[key if sub is None else f"{key}.{sub}"] = item
    return dict(list(out.items())[:40])


def _number(body: dict, key: str, default, low, high, integer: bool = False):
    value = body.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
        raise StudioError(f"{key} must be {'an integer' if integer else 'a number'} in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise StudioError(f"{key} must be in [{low}, {high}], got {value!r}")
    return value


# ----------------------------------------------------------------------------- HTTP

def create_app(studio: Studio):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def error(message: str, status: int) -> JSONResponse:
        headers = {"Retry-After": "3"} if status == 503 else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def refuse_oversized(request, cap: int, what: str) -> None:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            if int(declared) <= 4 * cap:
                # Read what the client is still sending, so it gets the 413 instead of a reset connection.
                async for _ in request.stream():
                    pass
            raise StudioError(f"{what} over {cap} bytes", 413)

    async def json_body(request) -> dict:
        await refuse_oversized(request, MAX_JSON_BYTES, "request body")
        data = await _read_capped(request, MAX_JSON_BYTES)
        if not data.strip():
            return {}
        try:
            body = json.loads(data)
        except ValueError:
            raise StudioError("request body is not JSON") from None
        if not isinstance(body, dict):
            raise StudioError("request body must be a JSON object")
        return body

    async def _read_capped(request, cap: int) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise StudioError(f"request body over {cap} bytes", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    def handler(work):
        async def endpoint(request):
            try:
                return await work(request)
            except StudioError as failure:
                return error(str(failure), failure.status)
        return endpoint

    @handler
    async def index(request):
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    @handler
    async def runs(request):
        return JSONResponse({"runs": await run_in_threadpool(studio.describe_runs)})

    @handler
    async def run_file(request):
        return FileResponse(studio.run_file(request.path_params["run"], request.path_params["name"]))

    @handler
    async def generate(request):
        body = await json_body(request)
        return JSONResponse(await run_in_threadpool(studio.generate, body))

    @handler
    async def primers(request):
        filename = os.path.basename(request.query_params.get("filename", ""))
        if not filename:
            raise StudioError("name the upload: POST /api/primers?filename=NAME.mid with the file as the body")
        await refuse_oversized(request, MAX_UPLOAD_BYTES, "upload")
        data = await _read_capped(request, MAX_UPLOAD_BYTES)
        return JSONResponse(await run_in_threadpool(studio.add_primer, filename, data))

    @handler
    async def files(request):
        params = request.path_params
        return FileResponse(studio.output_file(params["area"], params["item"], params["name"]))

    @handler
    async def comparisons(request):
        return JSONResponse({"comparisons": studio.default_comparisons()})

    @handler
    async def ab_next(request):
        body = await json_body(request)
        return JSONResponse(await run_in_threadpool(studio.next_pair, body))

    @handler
    async def ab_audio(request):
        path = await run_in_threadpool(studio.pair_audio, request.path_params["pair"], request.path_params["side"])
        # Served under the pair's id only, with no file name, so nothing tells the listener which is which.
        return FileResponse(path, media_type=audio_lib.MEDIA_TYPES["ogg"], headers={"Cache-Control": "no-store"})

    @handler
    async def ab_vote(request):
        body = await json_body(request)
        return JSONResponse(await run_in_threadpool(studio.vote, body))

    @handler
    async def ab_results(request):
        results = await run_in_threadpool(studio.store.results)
        if request.query_params.get("format") == "csv":
            return Response(listening.results_csv(results), media_type="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="listening-results.csv"'})
        headers = ({"Content-Disposition": 'attachment; filename="listening-results.json"'}
                   if request.query_params.get("format") == "json" else None)
        return JSONResponse({"comparisons": results, "interval": "Wilson score, 95%",
                             "test": "exact two-sided binomial against 0.5"}, headers=headers)

    async def not_found(request, exc):
        return error("not found", getattr(exc, "status_code", 404))

    async def failed(request, exc):
        # One line for the user and the log; never a traceback in a response.
        studio.log(f"studio: {request.method} {request.url.path}: {type(exc).__name__}: {exc}")
        return error(f"internal error ({type(exc).__name__}); see the studio's log", 500)

    routes = [
        Route("/", index),
        Route("/api/runs", runs),
        Route("/runs/{run}/{name}", run_file),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/primers", primers, methods=["POST"]),
        Route("/files/{area}/{item}/{name}", files),
        Route("/api/ab/comparisons", comparisons),
        Route("/api/ab/next", ab_next, methods=["POST"]),
        Route("/api/ab/audio/{pair}/{side}", ab_audio),
        Route("/api/ab/vote", ab_vote, methods=["POST"]),
        Route("/api/ab/results", ab_results),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    for label, run_dir in studio.runs.items():
        site = web_directory(run_dir, required=False)
        if site:
            routes.append(Mount(f"/web/{label}", web_site(site)))
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, Exception: failed})


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    from keras_music import cli

    parser = argparse.ArgumentParser(
        prog="python -m keras_music.studio",
        description="A local web page over trained runs: generate pieces and hear them, see piano rolls, "
                    "training curves and evaluation numbers, and run blind A/B listening tests whose votes are "
                    "kept in SQLite. The page uses a JSON HTTP API that scripts can call too.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run-dir", action="append", type=cli.existing_run_dir, metavar="DIR", default=None,
                        help="trained run directory to serve (repeatable; default: runs/latest); a run with a web "
                             "export (export --web) also gets its in-browser page at /web/RUN/")
    parser.add_argument("--web-export", default=None, metavar="DIR",
                        help="serve only this web export (RUN/export/web, or a run directory that has one) at /, "
                             "with the COOP/COEP headers LiteRT.js's threaded build needs; loads no runs")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; the default is reachable from this machine only")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0 = any free port)")
    parser.add_argument("--db", default=None, metavar="FILE",
                        help=f"SQLite file of the listening votes (default: {listening.DB_NAME} beside the first run)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where generated pieces, uploads and A/B stimuli go (default: studio/ beside the first run)")
    parser.add_argument("--soundfont", default=None, metavar="FILE.sf2",
                        help="General MIDI SoundFont for the audio (default: TimGM6mb.sf2 from pretty_midi)")
    parser.add_argument("--tempo", type=float, default=None, metavar="BPM",
                        help="one tempo for every rendered piece (default: generated pieces keep their primer's or "
                             f"the corpus's timing, and A/B excerpts all play at {AB_TEMPO:g} bpm)")
    parser.add_argument("--ab-seconds", type=float, default=20.0, metavar="S", help="length of every A/B excerpt")
    parser.add_argument("--ab-pool", type=cli.positive_int, default=8, metavar="N",
                        help="excerpts rendered per A/B side; later pairs are drawn at random from them")
    parser.add_argument("--max-length", type=cli.positive_int, default=MAX_LENGTH, metavar="EVENTS",
                        help="the longest piece a request may ask for")
    args = parser.parse_args(argv)
    if args.web_export is not None:
        if args.run_dir:
            parser.error("argument --web-export: serves a web export alone; leave out --run-dir")
        if web_directory(args.web_export, required=False) is None:
            parser.error(f"argument --web-export: {args.web_export} holds no web export (no web.json in it or in "
                         "export/web/); build one with python -m keras_music.export --run-dir RUN --web")
    else:
        args.run_dir = args.run_dir or [cli.existing_run_dir("runs/latest")]
    if not 0 <= args.port <= 65535:
        parser.error(f"argument --port: expected 0-65535, got {args.port}")
    if (args.tempo is not None and not 0 < args.tempo < 1000) or not 1 <= args.ab_seconds <= 300:
        parser.error("argument --tempo must be in (0, 1000) and --ab-seconds in [1, 300]")
    return parser, args


def main(argv=None):
    from keras_music import cli

    try:
        parser, args = parse_args(argv)
    except argparse.ArgumentTypeError as error:  # runs/latest missing with no --run-dir
        print(f"python -m keras_music.studio: error: {error}", file=sys.stderr)
        cli.finish(cli.USAGE_EXIT)
    if args.web_export is not None:
        serve(parser, args.host, args.port, create_web_app(args.web_export),
              f"web export {os.path.realpath(web_directory(args.web_export))}")
        cli.finish(0)
    beside = os.path.dirname(os.path.realpath(args.run_dir[0]))
    with cli.user_errors(parser):
        for run_dir in args.run_dir:
            if storage.is_remote(run_dir):
                parser.error(f"argument --run-dir: the studio serves local run directories, got {run_dir}")
            run_lib.load_config(run_dir)
        print("loading runs ...", file=sys.stderr)
        studio = Studio(args.run_dir, args.out or os.path.join(beside, "studio"),
                        args.db or os.path.join(beside, listening.DB_NAME), soundfont=args.soundfont,
                        tempo=args.tempo, ab_seconds=args.ab_seconds, ab_pool=args.ab_pool,
                        max_length=args.max_length)
        serve(parser, args.host, args.port, create_app(studio),
              f"runs: {', '.join(studio.runs)}; votes: {studio.store.path}")
    cli.finish(0)


def serve(parser, host: str, port: int, app, what: str) -> None:
    import socket

    import uvicorn

    from keras_music import cli

    # Bind the socket here so a port in use is a one-line error and --port 0 can print the real port.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        print(f"{parser.prog}: error: cannot listen on {host}:{port}: {error.strerror}", file=sys.stderr)
        cli.finish(cli.DATA_EXIT)
    bound, port = sock.getsockname()[:2]
    print(f"studio: http://{bound if ':' not in bound else f'[{bound}]'}:{port}/ ({what})", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
