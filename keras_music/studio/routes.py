"""The studio over HTTP: the page, the JSON API, generated files and web exports, as one Starlette app."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import mimetypes
import os
import re
import secrets

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from keras_music import audio as audio_lib, defaults, listening, web_export
from keras_music.studio.service import StudioError

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_UPLOAD_BYTES = 2 * 1024 * 1024  # scores are small; a 2 MB MIDI is already a long symphony
MAX_JSON_BYTES = 64 * 1024
# Cross-origin isolation: what LiteRT.js's threaded build needs (SharedArrayBuffer); harmless for the default one.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
LISTENER_COOKIE = "km_listener"
ADMIN_COOKIE = "km_admin"
ADMIN_HEADER = "X-Admin-Token"
LISTENER = re.compile(r"^[0-9a-f]{32}$")
YEAR = 365 * 24 * 3600


def create_app(studio, admin_token: str | None = None):
    """The studio's app: its routes, its static files, and each run's web export at /web/RUN/.

    Requests from this machine may do anything; from elsewhere, generating, uploading and reading the
    results need `admin_token` (header, cookie, or ?token= on the page's link), and without one are refused."""
    routes = [*ROUTES, Mount("/static", StaticFiles(directory=STATIC))]
    for label, run_dir in studio.runs.items():
        site = web_export.site_directory(run_dir, required=False)
        if site:
            routes.append(Mount(f"/web/{label}", web_site(site)))
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(studio.close)  # the pool's renderer stops with the server

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, Exception: failed},
                    lifespan=lifespan)
    app.state.studio = studio  # how every handler reaches the runs, generators and votes
    app.state.admin_token = admin_token
    return app


# ----------------------------------------------------------------------------- who is asking

def is_local(request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_admin(request) -> bool:
    """From this machine, or carrying the admin token."""
    if is_local(request):
        return True
    token = request.app.state.admin_token
    offered = (request.headers.get(ADMIN_HEADER) or request.cookies.get(ADMIN_COOKIE)
               or request.query_params.get("token") or "")
    return bool(token) and secrets.compare_digest(offered.encode(), token.encode())


def require_admin(request) -> None:
    if not is_admin(request):
        raise StudioError("only the studio's owner may do this: it needs the admin token the studio printed at "
                          "start (listeners: open /listen)", 403)


def listener_of(request, assign: bool = False) -> tuple[str, bool]:
    """(the listener id from the cookie, whether it is new); a new one when `assign` and there is none."""
    listener = request.cookies.get(LISTENER_COOKIE, "")
    if LISTENER.match(listener):
        return listener, False
    return (secrets.token_hex(16), True) if assign else ("", False)


def with_listener(response, listener: str, *, new: bool):
    if new:
        response.set_cookie(LISTENER_COOKIE, listener, max_age=YEAR, httponly=True, samesite="lax")
    return response


# ----------------------------------------------------------------------------- requests and answers

def error(message: str, status: int) -> JSONResponse:
    headers = {"Retry-After": "3"} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def refuse_oversized(request, cap: int, *, what: str) -> None:
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
    await refuse_oversized(request, MAX_JSON_BYTES, what="request body")
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

def json_action(action: str, admin: bool = False):
    """An endpoint that hands the request's JSON body to the studio's method `action` (in a worker thread) and
    answers with what it returns; `admin`: only for the studio's owner."""

    async def endpoint(request):
        if admin:
            require_admin(request)
        body = await json_body(request)
        return JSONResponse(await run_in_threadpool(getattr(request.app.state.studio, action), body))

    endpoint.__name__ = action
    return refusing(endpoint)


@refusing
async def index(request):
    if not is_admin(request):
        return RedirectResponse("/listen", status_code=303)
    response = FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")
    token = request.query_params.get("token")
    if token and not is_local(request):  # the owner's link: remember the token for the page's requests
        response.set_cookie(ADMIN_COOKIE, token, httponly=True, samesite="strict")
    return response


@refusing
async def listen(request):
    return FileResponse(os.path.join(STATIC, "listen.html"), media_type="text/html")


async def favicon(request):
    return FileResponse(os.path.join(STATIC, "favicon.svg"), media_type="image/svg+xml",
                        headers={"Cache-Control": "max-age=86400"})


@refusing
async def ab_next(request):
    listener, new = listener_of(request, assign=True)
    body = await json_body(request)
    pair = await run_in_threadpool(request.app.state.studio.next_pair, body, listener)
    return with_listener(JSONResponse(pair), listener, new=new)


@refusing
async def ab_vote(request):
    # Only a listener id the client already carries is checked: scripts without cookies vote as the pair's listener.
    listener, _ = listener_of(request)
    body = await json_body(request)
    return JSONResponse(await run_in_threadpool(request.app.state.studio.vote, body, listener))


@refusing
async def ab_pool(request):
    return JSONResponse(request.app.state.studio.pool_status())


async def generation_defaults(request):
    return JSONResponse(defaults.as_dict())


@refusing
async def runs(request):
    return JSONResponse({"runs": await run_in_threadpool(request.app.state.studio.describe_runs)})


@refusing
async def run_file(request):
    return FileResponse(request.app.state.studio.run_file(request.path_params["run"], request.path_params["name"]))


@refusing
async def primers(request):
    require_admin(request)
    filename = os.path.basename(request.query_params.get("filename", ""))
    if not filename:
        raise StudioError("name the upload: POST /api/primers?filename=NAME.mid with the file as the body")
    await refuse_oversized(request, MAX_UPLOAD_BYTES, what="upload")
    data = await read_capped(request, MAX_UPLOAD_BYTES)
    return JSONResponse(await run_in_threadpool(request.app.state.studio.add_primer, filename, data))


@refusing
async def files(request):
    params = request.path_params
    return FileResponse(request.app.state.studio.output_file(params["area"], params["item"], name=params["name"]))


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
    require_admin(request)
    store = request.app.state.studio.store
    if request.query_params.get("by") == "listener":
        return JSONResponse({"listeners": await run_in_threadpool(store.results_by_listener)})
    results = await run_in_threadpool(store.results)
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
    Route("/listen", listen),
    Route("/favicon.ico", favicon),
    Route("/api/defaults", generation_defaults),
    Route("/api/runs", runs),
    Route("/runs/{run}/{name}", run_file),
    Route("/api/generate", json_action("generate", admin=True), methods=["POST"]),
    Route("/api/infill", json_action("infill", admin=True), methods=["POST"]),
    Route("/api/primers", primers, methods=["POST"]),
    Route("/files/{area}/{item}/{name}", files),
    Route("/api/ab/comparisons", comparisons),
    Route("/api/ab/pool", ab_pool),
    Route("/api/ab/next", ab_next, methods=["POST"]),
    Route("/api/ab/audio/{pair}/{side}", ab_audio),
    Route("/api/ab/vote", ab_vote, methods=["POST"]),
    Route("/api/ab/results", ab_results),
)


# ----------------------------------------------------------------------------- web exports

def web_site(directory: str, isolate: bool = True):
    """An ASGI app serving a web export's files, with the cross-origin isolation headers when `isolate`."""
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
