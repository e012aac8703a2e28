"""Export a run as a SavedModel (serve, step, generate) and TFLite step models, checked against Keras."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from typing import TypedDict
from importlib import metadata
import hashlib
import json
import shutil

import numpy as np

from keras_music import (controls, export_parity, export_saved_model, export_tflite, formatting as fmt,
                         run as run_lib, storage, web_export)
from keras_music.export_saved_model import SIGNATURES, ExportError
from keras_music.export_tflite import ARTIFACT_NAMES, QUANTIZATIONS
from keras_music.vocabulary import Vocabulary
from keras_music import cli
import keras_music

REPORT = run_lib.EXPORT_REPORT
REPORT_FORMAT = "keras_music.export_report"
REPORT_VERSION = 1
COMMAND = "python -m keras_music.export"
# What the web page's model menu says each .tflite file is.
WEB_DESCRIPTIONS = {"none": "float32", "float16": "float16 weights", "dynamic": "dynamic-range int8 weights"}


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """What an export writes and how hard it checks it.

    `quantize`: the TFLite variants among QUANTIZATIONS (model.tflite, "none", is always
    written). `parity_windows` held-out windows and greedy runs of `parity_steps` tokens
    compare every artifact against Keras. `separate_conversion` runs the TFLite converter
    in a CPU-only child process (None: only when this process sees a GPU). `web` also
    writes RUN/export/web/, the static site that generates in the browser (keras_music.web_export).
    """

    quantize: tuple[str, ...] = QUANTIZATIONS
    parity_windows: int = 8
    parity_steps: int = 200
    separate_conversion: bool | None = None
    web: bool = False

    def __post_init__(self):
        if self.parity_windows < 1:
            raise ValueError(f"parity_windows must be >= 1, got {self.parity_windows}")
        if self.parity_steps < 0:
            raise ValueError(f"parity_steps must be >= 0, got {self.parity_steps}")
        object.__setattr__(self, "quantize", tuple(q for q in QUANTIZATIONS if q in set(self.quantize) | {"none"}))


class Artifact(export_parity.ArtifactFigures, total=False):
    """One file's entry in the report's `artifacts`: its parity figures, and where it is and what it holds.

    Fields besides the figures: `path` (relative to export/), `bytes`; the SavedModel's
    `signatures`; a .tflite file's `quantization` (what its weights are), `operators` and `builtin_only`.
    """

    path: str
    bytes: int
    signatures: list[str]
    quantization: str
    operators: list[str]
    builtin_only: bool


class ExportReport(TypedDict, total=False):
    """export_report.json: what was exported with which versions, and how close each artifact is to Keras.

    Fields: `format`/`version`, `created`, `versions` (of TensorFlow, Keras, LiteRT, numpy,
    keras_music, Python), `model` (sizes and representation), `files` (bytes by path),
    `parity_data`, `keras` (the reference's own figures), `artifacts` (by name),
    `dynamic_size_ratio`/`float16_size_ratio` (to the float32 file), `thresholds`, `web`
    (with --web), `checks`, `passed`, `vocabulary_fingerprint` and `sha256` (by path).
    """

    format: str
    version: int
    created: str
    versions: dict[str, str | None]
    model: dict
    files: dict[str, int]
    parity_data: export_parity.ParityDescription
    keras: export_parity.KerasFigures
    artifacts: dict[str, Artifact]
    dynamic_size_ratio: float | None
    float16_size_ratio: float | None
    thresholds: export_parity.Thresholds
    web: web_export.SiteSummary
    checks: list[export_parity.Check]
    passed: bool
    vocabulary_fingerprint: str
    sha256: dict[str, str]


@dataclasses.dataclass(frozen=True)
class _Source:
    """What an export reads from the run before it writes anything."""

    run_dir: str
    vocabulary: Vocabulary
    model: object  # the trained keras.Model
    sizes: dict  # model.describe
    data: export_parity.ParityData


def export_dir(run_dir: str) -> str:
    return run_lib.path(run_dir, run_lib.EXPORT)


def export(run_dir: str, settings: ExportSettings = ExportSettings(), *, show_progress: bool = False,
           log=print) -> ExportReport:
    """Write RUN/export/ (SavedModel, TFLite files, vocab.json, export_report.json) atomically.

    Returns the report; report["passed"] says whether every threshold held. The
    artifacts are written either way so a failed check can be inspected. The run
    directory is locked meanwhile, and unfinished export folders of a killed earlier
    export are removed first.
    """
    with run_lib.lock(run_dir, COMMAND):
        source = _read_run(run_dir, settings)
        if settings.separate_conversion is None:
            settings = dataclasses.replace(settings, separate_conversion=export_tflite.needs_separate_process())
        # Fetched before the long conversion, so a missing npm fails in seconds.
        runtime = web_export.fetch_runtime(log=log) if settings.web else None
        removed = remove_stale_exports(run_dir)
        if removed:
            log(f"removed {removed} unfinished export folder(s) left by an interrupted export")
        with storage.atomic_directory(export_dir(run_dir)) as out, \
                tempfile.TemporaryDirectory(prefix="keras_music-step-") as scratch:
            exported = _write_models(source, out, scratch=scratch, settings=settings, log=log)
            parity = export_parity.measure_parity(run_dir, source.model, exported=exported, data=source.data,
                                                  show_progress=show_progress)
            artifacts = _artifacts(parity, exported)
            web_summary = _write_web(run_dir, out, vocab_file=exported.vocab_file, tflite_paths=exported.tflite,
                                     runtime=runtime) if settings.web else None
            report = _report(source, parity, artifacts=artifacts, vocab_file=exported.vocab_file,
                             web_summary=web_summary)
            # Generators that load these files check them against the checksums first.
            report["sha256"] = file_digests(out)
            storage.write_json(os.path.join(out, REPORT), report)
    return report


def _read_run(run_dir: str, settings: ExportSettings) -> _Source:
    """The run's vocabulary, model and parity data (held-out windows and greedy primers)."""
    from keras_music import model as model_lib

    config = run_lib.load_config(run_dir)
    vocabulary = run_lib.load_vocabulary(run_dir)
    model = run_lib.load_model(run_dir, vocabulary)
    sizes = model_lib.describe(model)
    data = export_parity.parity_data(run_dir, vocabulary, seq_length=config.data.seq_length,
                                     windows=settings.parity_windows, greedy_steps=settings.parity_steps,
                                     banned=list(vocabulary.banned_ids))
    return _Source(run_dir, vocabulary, model, sizes, data)


def exported_vocabulary(run_dir: str, vocabulary: Vocabulary) -> bytes:
    """The export's vocab.json: the run's, and for a run with key tokens the key prior's log ratios per key
    token ("key_prior": {"log_ratios": ...}, export/README.md "Key prior"), which on-device generators read."""
    data = storage.read_bytes(run_lib.path(run_dir, run_lib.VOCAB))
    counts = run_lib.key_pitch_counts(run_dir, vocabulary=vocabulary)
    if not counts:
        return data
    shipped = json.loads(data)
    shipped["key_prior"] = {"log_ratios": controls.key_log_ratios(counts)}
    return (json.dumps(shipped, indent=2, allow_nan=False) + "\n").encode("utf-8")


def _write_models(source: _Source, out: str, *, scratch: str, settings: ExportSettings,
                  log) -> export_parity.Exported:
    """vocab.json, the SavedModel (out/saved_model) and the .tflite files into out; returns them, reloaded."""
    vocab_file = os.path.join(out, run_lib.EXPORT_VOCAB)
    with open(vocab_file, "wb") as handle:
        handle.write(exported_vocabulary(source.run_dir, source.vocabulary))
    saved_model_dir = os.path.join(out, run_lib.SAVED_MODEL)
    started = time.perf_counter()
    export_saved_model.write_saved_model(source.model, source.vocabulary, vocab_file=vocab_file,
                                         directory=saved_model_dir)
    log(f"SavedModel written in {time.perf_counter() - started:.1f} s")
    step_dir = os.path.join(scratch, "step_saved_model")
    export_saved_model.write_step_saved_model(source.model, step_dir)
    started = time.perf_counter()
    export_tflite.convert(step_dir, out, quantizations=settings.quantize,
                          separate_process=settings.separate_conversion)
    log(f"TFLite ({', '.join(settings.quantize)}) converted in {time.perf_counter() - started:.1f} s")
    tflite = {q: os.path.join(out, run_lib.TFLITE_FILES[q]) for q in settings.quantize}
    return export_parity.Exported(vocab_file=vocab_file, saved_model=saved_model_dir,
                                  loaded=_reload(saved_model_dir), tflite=tflite)


def _reload(saved_model_dir: str):
    """The written SavedModel loaded back, with every signature the contract promises."""
    import tensorflow as tf

    loaded = tf.saved_model.load(saved_model_dir)
    missing = [name for name in SIGNATURES if name not in loaded.signatures]
    if missing:
        raise ExportError(f"{saved_model_dir} lacks signatures {missing} after reloading")
    return loaded


def _artifacts(parity: export_parity.Parity, exported: export_parity.Exported) -> dict[str, Artifact]:
    """The report's `artifacts`: each file's parity figures with its path, size and (TFLite) operators."""
    artifacts = {"saved_model": dict(parity["saved_model"], path=run_lib.SAVED_MODEL,
                                     bytes=directory_size(exported.saved_model),
                                     signatures=sorted(exported.loaded.signatures.keys()))}
    for quantization, path in exported.tflite.items():
        with open(path, "rb") as handle:
            operators = export_tflite.check_builtin_only(handle.read(), run_lib.TFLITE_FILES[quantization])
        name = ARTIFACT_NAMES[quantization]
        artifacts[name] = dict(parity[name], path=run_lib.TFLITE_FILES[quantization], bytes=os.path.getsize(path),
                               quantization=export_tflite.WEIGHTS[quantization], operators=operators,
                               builtin_only=True)
    return artifacts


def _write_web(run_dir: str, out: str, *, vocab_file: str, tflite_paths: dict[str, str],
               runtime: str) -> web_export.SiteSummary:
    """RUN/export/web/, the static site that generates with the .tflite files in a browser; returns its summary."""
    return web_export.write_site(
        os.path.join(out, run_lib.WEB), vocab_file,
        models=[(path, WEB_DESCRIPTIONS[quantization]) for quantization, path in tflite_paths.items()],
        runtime_dir=runtime, run_name=os.path.basename(run_dir.rstrip("/")),
        timing=run_lib.load_prepared(run_dir).get("timing"), encoding=_encoding(run_dir))


def _encoding(run_dir: str) -> dict | None:
    """The run's note encoding settings (grid, max_duration, key normalisation), for the page's live encoder."""
    try:
        data = run_lib.load_config(run_dir).data
    except run_lib.RunError:
        return None
    return {"grid": data.grid, "max_duration": data.max_duration, "normalize_key": data.normalize_key,
            "transpose": data.transpose}


def _report(source: _Source, parity: export_parity.Parity, *, artifacts: dict[str, Artifact], vocab_file: str,
            web_summary: web_export.SiteSummary | None) -> ExportReport:
    """export_report.json (without the checksums): versions, model, files, parity figures and checks."""
    float32_bytes = artifacts["tflite_float32"]["bytes"]
    report: ExportReport = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
        "model": dict(source.sizes, representation=source.vocabulary.representation),
        "files": {run_lib.EXPORT_VOCAB: os.path.getsize(vocab_file)},
        "parity_data": source.data.describe(),
        "keras": parity["keras"],
        "artifacts": artifacts,
        "dynamic_size_ratio": (artifacts["tflite_dynamic"]["bytes"] / float32_bytes
                               if "tflite_dynamic" in artifacts else None),
        "float16_size_ratio": (artifacts["tflite_float16"]["bytes"] / float32_bytes
                               if "tflite_float16" in artifacts else None),
        "thresholds": export_parity.thresholds(),
    }
    for artifact in artifacts.values():
        report["files"][artifact["path"]] = artifact["bytes"]
    if web_summary:
        report["web"] = web_summary
    report["checks"] = export_parity.evaluate_checks(report)
    report["passed"] = all(check["passed"] for check in report["checks"])
    report["vocabulary_fingerprint"] = source.vocabulary.fingerprint()
    return report


def file_digests(directory: str) -> dict:
    """sha256 of every file below a local directory, by '/'-joined relative path (the report excluded)."""
    digests = {}
    for folder, _, files in os.walk(directory):
        for name in files:
            file = os.path.join(folder, name)
            relative = os.path.relpath(file, directory).replace(os.sep, "/")
            if relative == REPORT:
                continue
            with open(file, "rb") as handle:
                digests[relative] = hashlib.sha256(handle.read()).hexdigest()
    return dict(sorted(digests.items()))


def remove_stale_exports(run_dir: str) -> int:
    """Remove the hidden `.export.tmp-*` folders a killed export left beside export/ (callers hold the run's lock)."""
    if storage.is_remote(run_dir) or not os.path.isdir(run_dir):
        return 0
    removed = 0
    for name in os.listdir(run_dir):
        folder = os.path.join(run_dir, name)
        if name.startswith("." + run_lib.EXPORT + ".tmp-") and os.path.isdir(folder) and not os.path.islink(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def directory_size(path: str) -> int:
    """Bytes of every file below a local directory."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _versions() -> dict:
    import keras
    import tensorflow as tf

    try:
        litert = metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        litert = None
    return {"tensorflow": tf.__version__, "keras": keras.__version__, "ai_edge_litert": litert,
            "numpy": np.__version__, "keras_music": keras_music.__version__, "python": sys.version.split()[0]}


def parse_quantize(text: str) -> tuple[str, ...]:
    """`none,float16,dynamic` -> the quantizations to write; model.tflite (none) is always written."""
    chosen = [part.strip() for part in str(text).split(",") if part.strip()]
    unknown = [part for part in chosen if part not in QUANTIZATIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--quantize takes a comma list of {', '.join(QUANTIZATIONS)}, "
                                         f"got {text!r}")
    return tuple(q for q in QUANTIZATIONS if q in chosen or q == "none")


# ----------------------------------------------------------------------------- table

def format_table(report: dict) -> str:
    """The report as aligned text: one row per artifact, then every check."""
    header = ["artifact", "size", "max|dp| win", "max|dp| greedy", "mean|dp|", "top-1", "greedy same", "steps/s"]
    rows = []
    for name, artifact in report["artifacts"].items():
        rows.append([
            name,
            f"{artifact['bytes'] / 1024:.1f} KiB",
            fmt.table_cell(artifact["windows"]["max_abs"]),
            fmt.table_cell(artifact["greedy"]["max_abs"]),
            fmt.table_cell(artifact["overall"]["mean_abs"]),
            f"{100 * artifact['overall']['top1_agreement']:.2f}%",
            fmt.table_cell(artifact["greedy_identical"]),
            fmt.table_cell(artifact.get("steps_per_second"), 0),
        ])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    keras_figures = report.get("keras", {})
    if keras_figures.get("steps_per_second"):
        lines.append(f"keras step model: {keras_figures['steps_per_second']:.0f} steps/s; step vs sequence model "
                     f"max|dp| {fmt.table_cell(keras_figures['step_vs_sequence_model']['max_abs'])}")
    saved = report["artifacts"].get("saved_model", {})
    if "serving_default" in saved:
        lines.append(f"serving_default vs Keras sequence model: max|dp| {fmt.table_cell(saved['serving_default']['max_abs'])}"
                     f"; generate (temperature 0) equals Keras greedy: "
                     f"{fmt.table_cell(saved['generate_greedy_identical'])}")
    if report.get("dynamic_size_ratio") is not None:
        lines.append(f"dynamic-range size / float32 size: {report['dynamic_size_ratio']:.3f}")
    web = report.get("web")
    if web:
        visit = web["download"]["default"]
        lines.append(f"web export: {web['path']}/ ({web['files']} files, {web['bytes'] / 2 ** 20:.1f} MiB); a visitor "
                     f"downloads {visit['bytes'] / 2 ** 20:.1f} MiB ({visit['gzip_bytes'] / 2 ** 20:.1f} MiB gzipped) "
                     f"with {web['default_model']} and {web['runtime']}")
    lines.append("")
    lines.append("checks:")
    for check in report["checks"]:
        status = "PASS" if check["passed"] else "FAIL"
        if not check["applies"]:
            status = "n/a "
        lines.append(f"  {status}  {check['artifact']}: {check['metric']} = {fmt.table_cell(check['value'], 4)} "
                     f"(needs {check['operator']} {fmt.table_cell(check['limit'], 4)})"
                     + (f" [{check['note']}]" if check.get("note") else ""))
    lines.append("all checks passed" if report["passed"] else "SOME CHECKS FAILED")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Export a trained run into RUN/export/: a SavedModel (serving_default, step, generate, "
                    "initial_state), TFLite step models (float32 and quantized, builtin ops only), vocab.json "
                    "and export_report.json with parity figures against Keras. Exits 1 if a parity threshold "
                    "fails (the artifacts and report are still written).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run-dir", required=True, type=cli.existing_run_dir, metavar="DIR",
                        help="trained run directory (with model.keras and vocab.json)")
    parser.add_argument("--quantize", type=parse_quantize, default=",".join(QUANTIZATIONS), metavar="LIST",
                        help="comma list of TFLite variants among none (float32, always written), float16, dynamic")
    parser.add_argument("--parity-windows", type=cli.positive_int, default=8, metavar="N",
                        help="held-out windows (of the run's seq_length) compared artifact against Keras")
    parser.add_argument("--parity-steps", type=cli.non_negative_int, default=200, metavar="N",
                        help="length of each greedy generation run compared against Keras")
    parser.add_argument("--web", action="store_true",
                        help="also write RUN/export/web/: a static site that generates with the .tflite files in the "
                             "visitor's browser (LiteRT.js, fetched with npm at export time; needs node and npm)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or timing lines")
    return parser, parser.parse_args(argv)


def main(argv=None) -> int:
    # Conversion must be CPU-only; hiding GPUs has to happen before TensorFlow loads.
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    parser, args = parse_args(argv)

    with cli.user_errors(parser):
        # One writer of the run at a time: export() holds the run's lock, so it never runs beside train or
        # another export.
        settings = ExportSettings(quantize=args.quantize, parity_windows=args.parity_windows,
                                  parity_steps=args.parity_steps, web=args.web)
        report = export(args.run_dir, settings, show_progress=not args.quiet,
                        log=(lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr)))
        print(format_table(report))
        print(f"\nwritten: {export_dir(args.run_dir)}")
        if not report["passed"]:
            failed = [c for c in report["checks"] if not c["passed"]]
            print(f"{parser.prog}: {len(failed)} parity check(s) failed: " + "; ".join(
                f"{c['artifact']} {c['metric']} = {c['value']} (needs {c['operator']} {c['limit']})" for c in failed),
                file=sys.stderr)
            cli.finish(cli.DATA_EXIT)
    cli.finish(0)


if __name__ == "__main__":
    main()
