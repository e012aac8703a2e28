"""The studio over HTTP: the page, the JSON API, generated files and web exports, as one Starlette app."""

from __future__ import annotations

import functools
import json
import os

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from keras_music import audio as audio_lib, listening, web_export
from keras_music.studio.service import StudioError

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_UPLOAD_BYTES = 2 * 1024 * 1024  # scores are small; a 2 MB MIDI is already a long symphony
MAX_JSON_BYTES = 64 * 1024
# Cross-origin isolation: what LiteRT.js's threaded build needs (SharedArrayBuffer); harmless for the default one.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


def create_app(studio):
    """The studio's app: its routes, its static files, and each run's web export at /web/RUN/."""
    routes = [*ROUTES, Mount("/static", StaticFiles(directory=STATIC))]
    for label, run_dir in studio.runs.items():
        site = web_export.site_directory(run_dir, required=False)
        if site:
            routes.append(Mount(f"/web/{label}", web_site(site)))
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, Exception: failed})
    app.state.studio = studio  # how every handler reaches the runs, generators and votes
    return app


# ----------------------------------------------------------------------------- requests and answers

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


async def read_capped(request, cap: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise StudioError(f"request body over {cap} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request) -> dict:
    await refuse_oversized(request, MAX_JSON_BYTES, "request body")
    data = await read_capped(request, MAX_JSON_BYTES)
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except ValueError:
        raise StudioError("request body is not JSON") from None
    if not isinstance(body, dict):
        raise StudioError("request body must be a JSON object")
    return body


def refusing(work):
    """An endpoint that answers a StudioError with its message and status."""

    @functools.wraps(work)
    async def endpoint(request):
        try:
            return await work(request)
        except StudioError as failure:
            return error(str(failure), failure.status)

    return endpoint


# ----------------------------------------------------------------------------- endpoints

def json_action(action: str):
    """An endpoint that hands the request's JSON body to the studio's method `action` (in a worker thread) and
    answers with what it returns."""

    async def endpoint(request):
        body = await json_body(request)
        return JSONResponse(await run_in_threadpool(getattr(request.app.state.studio, action), body))

    endpoint.__name__ = action
    return refusing(endpoint)


@refusing
async def index(request):
    return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")


@refusing
async def runs(request):
    return JSONResponse({"runs": await run_in_threadpool(request.app.state.studio.describe_runs)})


@refusing
async def run_file(request):
    return FileResponse(request.app.state.studio.run_file(request.path_params["run"], request.path_params["name"]))


@refusing
async def primers(request):
    filename = os.path.basename(request.query_params.get("filename", ""))
    if not filename:
        raise StudioError("name the upload: POST /api/primers?filename=NAME.mid with the file as the body")
    await refuse_oversized(request, MAX_UPLOAD_BYTES, "upload")
    data = await read_capped(request, MAX_UPLOAD_BYTES)
    return JSONResponse(await run_in_threadpool(request.app.state.studio.add_primer, filename, data))


@refusing
async def files(request):
    params = request.path_params
    return FileResponse(request.app.state.studio.output_file(params["area"], params["item"], params["name"]))


@refusing
async def comparisons(request):
    return JSONResponse({"comparisons": request.app.state.studio.default_comparisons()})


@refusing
async def ab_audio(request):
    path = await run_in_threadpool(request.app.state.studio.pair_audio, request.path_params["pair"],
                                   request.path_params["side"])
    # Served under the pair's id only, with no file name, so nothing tells the listener which is which.
    return FileResponse(path, media_type=audio_lib.MEDIA_TYPES["ogg"], headers={"Cache-Control": "no-store"})


@refusing
async def ab_results(request):
    results = await run_in_threadpool(request.app.state.studio.store.results)
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
    request.app.state.studio.log(f"studio: {request.method} {request.url.path}: {type(exc).__name__}: {exc}")
    return error(f"internal error ({type(exc).__name__}); see the studio's log", 500)


ROUTES = (
    Route("/", index),
    Route("/api/runs", runs),
    Route("/runs/{run}/{name}", run_file),
    Route("/api/generate", json_action("generate"), methods=["POST"]),
    Route("/api/primers", primers, methods=["POST"]),
    Route("/files/{area}/{item}/{name}", files),
    Route("/api/ab/comparisons", comparisons),
    Route("/api/ab/next", json_action("next_pair"), methods=["POST"]),
    Route("/api/ab/audio/{pair}/{side}", ab_audio),
    Route("/api/ab/vote", json_action("vote"), methods=["POST"]),
    Route("/api/ab/results", ab_results),
)


# ----------------------------------------------------------------------------- web exports

def web_site(directory: str, isolate: bool = True):
    """An ASGI app serving a web export's files, with the cross-origin isolation headers when `isolate`."""
    import mimetypes

    mimetypes.add_type("application/wasm", ".wasm")
    mimetypes.add_type("text/javascript", ".js")
    mimetypes.add_type("application/octet-stream", ".tflite")
    static = StaticFiles(directory=directory, html=True)
    extra = [(k.lower().encode(), v.encode()) for k, v in ISOLATION_HEADERS.items()] if isolate else []

    async def app(scope, receive, send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start" and extra:
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        await static(scope, receive, send_with_headers)

    return app


def create_web_app(directory: str, isolate: bool = True):
    """Only a web export, at /: what `--web-export` serves (no runs loaded, no TensorFlow)."""
    return Starlette(routes=[Mount("/", web_site(web_export.site_directory(directory), isolate))])
