"""Web export: a static site that generates with the exported .tflite on the visitor's device (LiteRT.js)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import TypedDict

from keras_music import config as config_lib, corpus, events
from keras_music import defaults, run as run_lib, storage
from keras_music.errors import KerasMusicError

SITE_FILE = "web.json"
SITE_FORMAT = "keras_music.web"
SITE_VERSION = 1
MODELS_DIR = "models"

# The page's own sources ship inside the package (package data), so a wheel can export a site too.
SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web_page")
SOURCE_FILES = ("index.html", "style.css", "app.js", "sampler.js", "music.js", "player.js", "encoder.js", "live.js",
                "worker.js")

# LiteRT.js, fetched with npm at export time and never kept in the repository. Pinned to the
# version the tests ran with; the integrity hashes are the registry's own (npm view NAME@V dist.integrity),
# so a mirror or a cache that serves other bytes is refused.
RUNTIME_VERSION = "2.5.3"
RUNTIME_PACKAGES = {
    "@litertjs/core": (RUNTIME_VERSION, "sha512-PlGmbMOq9WitX7FO0jhbdJw9GthatsyuCQXjTt/wJZo0FLaw48q4tz8IwqgqCIkviYGr9OFDL1kCnN4nzWoyJQ=="),
    "@litertjs/wasm-utils": (RUNTIME_VERSION, "sha512-4fJiw6tBQnIs+0jH/OQ16nYOiSl8/+zZnn5h2ul8aTKHi05sVqZW580Tmk78pC2kT39A9OYBVdFawteZ/sI1kQ=="),
}
# LiteRT.js picks one build by what the browser offers: relaxed SIMD (default), without it (compat),
# or with threads when asked and the page is cross-origin isolated (threaded). The JSPI build is
# only needed for WebNN / mixed WebGPU, which the page does not use.
RUNTIME_BUILDS = {"default": "litert_wasm_internal", "compat": "litert_wasm_compat_internal",
                  "threaded": "litert_wasm_threaded_internal"}
RUNTIME_DIR = "litert"
RUNTIME_FILES = (
    ("@litertjs/core", "dist/index.js", "litert/core/index.js"),
    ("@litertjs/core", "package.json", "litert/core/package.json"),
    ("@litertjs/wasm-utils", "dist/index.js", "litert/wasm-utils/index.js"),
    ("@litertjs/wasm-utils", "package.json", "litert/wasm-utils/package.json"),
) + tuple(("@litertjs/core", f"wasm/{stem}{ext}", f"litert/wasm/{stem}{ext}")
          for stem in RUNTIME_BUILDS.values() for ext in (".js", ".wasm"))
RUNTIME_MANIFEST = "runtime.json"
NPM_TIMEOUT_SECONDS = 600

# Preferred default model, best first: the smallest file that keeps the greedy tokens.
DEFAULT_MODEL_ORDER = tuple(run_lib.TFLITE_FILES[q] for q in ("dynamic", "float16", "none"))


class WebExportError(KerasMusicError, RuntimeError):
    """The web export cannot be built (npm missing or unable to fetch, the page's sources missing) or found."""


class Download(TypedDict):
    """What a visitor's browser fetches with one runtime build: bytes as served, and gzipped."""

    bytes: int
    gzip_bytes: int


class SiteSummary(TypedDict):
    """A written site's sizes (the export report's `web`): `path` (relative to export/), `files` and `bytes`
    on disk, the `default_model`, every model's file name, the `runtime` and the `download` per build."""

    path: str
    files: int
    bytes: int
    default_model: str
    models: list[str]
    runtime: str
    download: dict[str, Download]


def sources_dir() -> str:
    missing = [name for name in SOURCE_FILES if not os.path.isfile(os.path.join(SOURCES, name))]
    if missing:
        raise WebExportError(f"the web page's sources are missing ({', '.join(missing)} in {SOURCES}); reinstall "
                             "keras_music (its package data holds them)")
    return SOURCES


def site_directory(path: str, required: bool = True) -> str | None:
    """The web export in `path`: a site folder itself (with web.json) or a run directory's export/web/."""
    for candidate in (path, run_lib.path(path, run_lib.EXPORT, run_lib.WEB)):
        if os.path.isfile(os.path.join(candidate, SITE_FILE)):
            return candidate
    if required:
        raise WebExportError(f"{path} holds no web export (no {SITE_FILE} in it or in export/web/): build one with "
                             "python -m keras_music.export --run-dir RUN --web")
    return None


# ----------------------------------------------------------------------------- the runtime (npm)

def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _runtime_ready(directory: str) -> bool:
    """True when `directory` holds every runtime file with the hashes its manifest recorded."""
    try:
        with open(os.path.join(directory, RUNTIME_MANIFEST), encoding="utf-8") as handle:
            manifest = json.load(handle)
        files = manifest["files"]
        return (manifest.get("version") == RUNTIME_VERSION
                and sorted(files) == sorted(target for _, _, target in RUNTIME_FILES)
                and all(_sha256(os.path.join(directory, name)) == digest for name, digest in files.items()))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def default_runtime_cache() -> str:
    return os.path.join(corpus.default_cache_dir(), f"litertjs-{RUNTIME_VERSION}")


def _registry(npm: str) -> str:
    try:
        result = subprocess.run([npm, "config", "get", "registry"], capture_output=True, text=True, timeout=60)
        return result.stdout.strip() or "the npm registry"
    except (OSError, subprocess.SubprocessError):
        return "the npm registry"


def fetch_runtime(directory: str | None = None, log=print) -> str:
    """The LiteRT.js files the page needs, fetched once with npm into `directory` (a cache); returns it.

    Raises WebExportError, saying what to do, when node or npm is missing, the registry
    cannot be reached, or what it served does not match the pinned versions and hashes.
    """
    directory = directory or default_runtime_cache()
    if _runtime_ready(directory):
        return directory
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        raise WebExportError(f"the web export fetches the LiteRT.js runtime (@litertjs/core {RUNTIME_VERSION}) with "
                             f"npm, but {'npm' if not npm else 'node'} is not on PATH: install Node.js 18+ with npm "
                             "(e.g. apt-get install nodejs npm) and run the export again")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="keras_music-npm-") as work:
        _npm_install(npm, work, cache=directory)
        _check_integrity(work)
        with storage.atomic_directory(directory) as out:
            _copy_runtime(os.path.join(work, "node_modules"), out)
    log(f"LiteRT.js {RUNTIME_VERSION} fetched with npm in {time.perf_counter() - started:.1f} s")
    return directory


def _npm_install(npm: str, work: str, *, cache: str) -> None:
    """npm install of the pinned packages into `work`, scripts off, failing fast when the registry is unreachable."""
    package = {"name": "keras-music-web-runtime", "private": True, "description": "fetched by keras_music",
               "dependencies": {name: version for name, (version, _) in RUNTIME_PACKAGES.items()}}
    with open(os.path.join(work, "package.json"), "w", encoding="utf-8") as handle:
        json.dump(package, handle)
    command = [npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--update-notifier=false",
               "--fetch-retries=1", "--fetch-retry-mintimeout=1000", "--fetch-retry-maxtimeout=5000",
               "--loglevel=error"]
    try:
        result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=NPM_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise WebExportError(f"npm did not fetch @litertjs/core {RUNTIME_VERSION} from {_registry(npm)} within "
                             f"{NPM_TIMEOUT_SECONDS} s; check the network or the npm registry setting") from None
    if result.returncode != 0:
        tail = " | ".join(line.strip() for line in (result.stderr or result.stdout).strip().splitlines()[-6:])
        raise WebExportError(f"npm could not fetch @litertjs/core {RUNTIME_VERSION} from {_registry(npm)} "
                             f"(exit {result.returncode}): {tail or 'no output'}. The web export needs the npm "
                             "registry once; the runtime is then cached in " + cache)


def _check_integrity(work: str) -> None:
    """What npm installed in `work` is the pinned version with the registry's own integrity hash, or refused."""
    try:
        with open(os.path.join(work, "package-lock.json"), encoding="utf-8") as handle:
            locked = json.load(handle).get("packages", {})
    except (OSError, ValueError):
        locked = {}
    for name, (version, integrity) in RUNTIME_PACKAGES.items():
        entry = locked.get(f"node_modules/{name}", {})
        if entry.get("version") != version or entry.get("integrity") != integrity:
            raise WebExportError(f"npm installed {name} {entry.get('version')} with integrity "
                                 f"{entry.get('integrity')}, expected {version} with {integrity}: the registry "
                                 "or npm cache served other files; refusing to ship them")


def _copy_runtime(node_modules: str, out: str) -> None:
    """The runtime's files from npm's node_modules into `out`, with a manifest of their hashes."""
    digests = {}
    for name, inside, target in RUNTIME_FILES:
        source = os.path.join(node_modules, *name.split("/"), *inside.split("/"))
        if not os.path.isfile(source):
            raise WebExportError(f"{name} {RUNTIME_VERSION} has no {inside}: the package layout changed")
        os.makedirs(os.path.dirname(os.path.join(out, target)), exist_ok=True)
        shutil.copyfile(source, os.path.join(out, target))
        digests[target] = _sha256(os.path.join(out, target))
    manifest = {"version": RUNTIME_VERSION, "packages": {n: v for n, (v, _) in RUNTIME_PACKAGES.items()},
                "files": digests}
    with open(os.path.join(out, RUNTIME_MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)


# ----------------------------------------------------------------------------- the site

def _gzipped_size(path: str) -> int:
    with open(path, "rb") as handle:
        return len(gzip.compress(handle.read(), compresslevel=6, mtime=0))


def download_files(site: dict, build: str = "default") -> list[str]:
    """Site-relative paths a visitor's browser fetches with `build` and the default model."""
    stem = RUNTIME_BUILDS[build]
    return (list(SOURCE_FILES) + [SITE_FILE, site["vocab"], site["models_by_name"][site["default_model"]]]
            + [f"{RUNTIME_DIR}/core/index.js", f"{RUNTIME_DIR}/wasm-utils/index.js",
               f"{RUNTIME_DIR}/wasm/{stem}.js", f"{RUNTIME_DIR}/wasm/{stem}.wasm"])


def write_site(directory: str, vocab_file: str, *, models, runtime_dir: str, run_name: str = "",
               timing: dict | None = None, encoding: dict | None = None) -> SiteSummary:
    """Write the static site into `directory` (an empty or new directory); returns its summary.

    models: (path of a .tflite file, what its weights are) pairs, from the export.
    timing: the corpus's tempo, time signature and program (prepared.json "timing"),
    which the page uses for playback and the MIDI file.
    encoding: the run's data settings the page's encoder follows for live play (grid, max_duration,
    normalize_key, transpose); keras_music's defaults when not given.
    """
    sources = sources_dir()
    if not _runtime_ready(runtime_dir):
        raise WebExportError(f"{runtime_dir} does not hold a complete LiteRT.js {RUNTIME_VERSION} runtime")
    os.makedirs(os.path.join(directory, MODELS_DIR), exist_ok=True)
    for name in SOURCE_FILES:
        shutil.copyfile(os.path.join(sources, name), os.path.join(directory, name))
    shutil.copyfile(vocab_file, os.path.join(directory, run_lib.EXPORT_VOCAB))
    entries = []
    for path, quantization in models:
        name = os.path.basename(path)
        shutil.copyfile(path, os.path.join(directory, MODELS_DIR, name))
        entries.append({"name": name, "file": f"{MODELS_DIR}/{name}", "quantization": quantization,
                        "bytes": os.path.getsize(path)})
    if not entries:
        raise WebExportError("the web export needs at least one .tflite model")
    names = [entry["name"] for entry in entries]
    default = next((name for name in DEFAULT_MODEL_ORDER if name in names), names[0])
    for _, _, target in RUNTIME_FILES:
        os.makedirs(os.path.dirname(os.path.join(directory, target)), exist_ok=True)
        shutil.copyfile(os.path.join(runtime_dir, target), os.path.join(directory, target))
    timing = dict(timing or {})
    site = {
        "format": SITE_FORMAT,
        "version": SITE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": run_name,
        "vocab": run_lib.EXPORT_VOCAB,
        "models": entries,
        "default_model": default,
        "timing": {"tempo": float(timing.get("tempo", defaults.TEMPO)),
                   "time_signature": [int(n) for n in timing.get("time_signature", (4, 4))],
                   "program": int(timing.get("program", 0))},
        # How the run encoded notes (config "data"): live play encodes what is played the same way.
        "encoding": _encoding(encoding),
        # The page's settings start from keras_music's defaults (the tempo from "timing").
        "defaults": defaults.as_dict(),
        "runtime": {"package": "@litertjs/core", "version": RUNTIME_VERSION, "wasm": f"{RUNTIME_DIR}/wasm/",
                    "builds": {build: f"{RUNTIME_DIR}/wasm/{stem}.wasm" for build, stem in RUNTIME_BUILDS.items()}},
    }
    storage.write_json(os.path.join(directory, SITE_FILE), site)
    return describe(directory)


def _encoding(encoding: dict | None) -> dict:
    data = config_lib.DataConfig()
    encoding = dict(encoding or {})
    return {"grid": int(encoding.get("grid", events.GRID)),
            "max_duration": float(encoding.get("max_duration", data.max_duration)),
            "normalize_key": bool(encoding.get("normalize_key", data.normalize_key)),
            "transpose": int(encoding.get("transpose", data.transpose))}


def describe(directory: str) -> SiteSummary:
    """Sizes of a written site: everything on disk, and what a visitor downloads per runtime build."""
    with open(os.path.join(directory, SITE_FILE), encoding="utf-8") as handle:
        site = json.load(handle)
    site["models_by_name"] = {entry["name"]: entry["file"] for entry in site["models"]}
    files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names]
    download = {}
    for build in RUNTIME_BUILDS:
        paths = [os.path.join(directory, *name.split("/")) for name in download_files(site, build)]
        download[build] = {"bytes": sum(os.path.getsize(p) for p in paths),
                           "gzip_bytes": sum(_gzipped_size(p) for p in paths)}
    return {"path": run_lib.WEB, "files": len(files), "bytes": sum(os.path.getsize(p) for p in files),
            "default_model": site["default_model"], "models": [e["name"] for e in site["models"]],
            "runtime": f"@litertjs/core {RUNTIME_VERSION}", "download": download}
