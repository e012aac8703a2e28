"""The studio's command line: serve trained runs (or one web export) on a local web page."""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import socket
import sys

import uvicorn

from keras_music import cli, listening, run as run_lib, storage, web_export
from keras_music.studio.routes import create_app, create_web_app
from keras_music.studio.service import AB_TEMPO, MAX_LENGTH, Studio, StudioSettings


def parse_args(argv=None):
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
                        help="address to bind; the default is reachable from this machine only; with another (e.g. "
                             "0.0.0.0) the studio prints the link for listeners (/listen) and an admin token that "
                             "generating, uploads and the results need from other machines")
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
                        help="excerpts rendered per A/B side in the background from start-up, and topped up with "
                             "fresh ones while listeners vote; a pair is dealt from them at once")
    parser.add_argument("--max-length", type=cli.positive_int, default=MAX_LENGTH, metavar="EVENTS",
                        help="the longest piece a request may ask for")
    args = parser.parse_args(argv)
    if args.web_export is not None:
        if args.run_dir:
            parser.error("argument --web-export: serves a web export alone; leave out --run-dir")
        if web_export.site_directory(args.web_export, required=False) is None:
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
    try:
        parser, args = parse_args(argv)
    except argparse.ArgumentTypeError as error:  # runs/latest missing with no --run-dir
        print(f"python -m keras_music.studio: error: {error}", file=sys.stderr)
        cli.finish(cli.USAGE_EXIT)
    if args.web_export is not None:
        serve(parser, create_web_app(args.web_export), host=args.host, port=args.port,
              what=f"web export {os.path.realpath(web_export.site_directory(args.web_export))}")
        cli.finish(0)
    beside = os.path.dirname(os.path.realpath(args.run_dir[0]))
    with cli.user_errors(parser):
        for run_dir in args.run_dir:
            if storage.is_remote(run_dir):
                parser.error(f"argument --run-dir: the studio serves local run directories, got {run_dir}")
            run_lib.load_config(run_dir)
        print("loading runs ...", file=sys.stderr)
        settings = StudioSettings(soundfont=args.soundfont, tempo=args.tempo, ab_seconds=args.ab_seconds,
                                  ab_pool=args.ab_pool, max_length=args.max_length)
        studio = Studio(args.run_dir, args.out or os.path.join(beside, "studio"),
                        db=args.db or os.path.join(beside, listening.DB_NAME), settings=settings)
        token = None if is_loopback(args.host) else secrets.token_urlsafe(18)
        serve(parser, create_app(studio, admin_token=token), host=args.host, port=args.port,
              what=f"runs: {', '.join(studio.runs)}; votes: {studio.store.path}", token=token)
    cli.finish(0)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def reachable_address(host: str) -> str:
    """The address other machines reach a server bound to `host` at (for 0.0.0.0: this machine's outward one)."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    try:
        # Connecting a UDP socket sends nothing; it only asks the kernel which interface would be used.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()


def share_lines(host: str, port: int, *, token: str) -> list[str]:
    """What the studio prints when it listens beyond this machine: the listeners' link and the owner's."""
    address = reachable_address(host)
    base = f"http://{address if ':' not in address else f'[{address}]'}:{port}"
    return [f"studio: give listeners this link: {base}/listen",
            f"studio: admin token (generate, uploads, results from other machines): {token}",
            f"studio: your page from another machine: {base}/?token={token}"]


def serve(parser, app, *, host: str, port: int, what: str, token: str | None = None) -> None:
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
    if token:
        print("\n".join(share_lines(host, port, token=token)), flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
