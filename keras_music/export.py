"""Export a run as a SavedModel (serve, step, generate) and TFLite step models, checked against Keras."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from keras_music import formatting as fmt, run as run_lib, storage, web_export
from keras_music.errors import KerasMusicError

REPORT = "export_report.json"
REPORT_FORMAT = "keras_music.export_report"
REPORT_VERSION = 1

# Quantization name -> TFLite file; "none" is the float32 model, always written.
QUANTIZATIONS = ("none", "float16", "dynamic")
ARTIFACT_NAMES = {"none": "tflite_float32", "float16": "tflite_float16", "dynamic": "tflite_dynamic"}

SIGNATURES = ("serving_default", "step", "generate", "initial_state")

# Tolerances every export is held to (export_report.json records the measured figures).
SAVED_MODEL_MAX_ABS = 1e-5
TFLITE_FLOAT32_MAX_ABS = 1e-4
FLOAT16_TOP1 = 0.99
DYNAMIC_TOP1 = 0.95
DYNAMIC_SIZE_RATIO = 0.30
# Below this float32 file size the flatbuffer's fixed overhead dominates, so the
# dynamic-range size ratio says nothing about the weights and is only reported.
SIZE_RATIO_MIN_BYTES = 1 << 20

PRIMER_LENGTH = 16


class ExportError(KerasMusicError, RuntimeError):
    """A conversion failed, needed non-builtin ops, or an artifact does not load."""


def export_dir(run_dir: str) -> str:
    return run_lib.path(run_dir, run_lib.EXPORT)


def banned_ids(vocabulary) -> list[int]:
    """Ids generation never emits: padding and unknown (the boundary may end a piece)."""
    return [vocabulary.pad_id, vocabulary.unk_id]


# ----------------------------------------------------------------------------- SavedModel

def write_saved_model(model, vocabulary, vocab_file: str, directory: str) -> None:
    """The run's SavedModel: serving_default, step, generate, initial_state, and vocab.json as an asset.

    Written with keras.export.ExportArchive, which saves the Keras 3 variables with
    the graph (a plain tf.Module around the model loses them).
    """
    import keras
    import tensorflow as tf

    from keras_music import model as model_lib

    step_model = model_lib.StepModel(model)
    num_rows, hidden_size = step_model.state_shape
    vocabulary_size = len(vocabulary)
    tokens = tf.constant(vocabulary.tokens, dtype=tf.string)
    banned = tf.constant([i in banned_ids(vocabulary) for i in range(vocabulary_size)], dtype=tf.bool)
    boundary = tf.constant([vocabulary.boundary_id], dtype=tf.int32)

    def serve(tokens_in):
        return {"probabilities": model(tokens_in, training=False)}

    def step(token, state):
        out = step_model(token, state)
        return {"probabilities": out["probabilities"], "next_state": out["next_state"]}

    def initial_state(batch_size):
        return {"state": tf.zeros(tf.stack([batch_size, num_rows, hidden_size]), dtype=tf.float32)}

    def choose(probabilities, temperature, seed, index):
        greedy = tf.argmax(tf.where(banned[None, :], -1.0, probabilities), axis=-1, output_type=tf.int32)

        def sample():
            with tf.name_scope("sample"):
                log_probabilities = tf.math.log(tf.where(banned[None, :], 0.0, probabilities))
                top = tf.reduce_max(log_probabilities, axis=-1, keepdims=True)
                # Shifting by the row maximum keeps the best token at log 1 = 0, so small
                # temperatures sharpen instead of overflowing every logit to -inf.
                top = tf.where(tf.math.is_finite(top), top, tf.zeros_like(top))
                logits = (log_probabilities - top) / temperature
                drawn = tf.random.stateless_categorical(logits, 1, seed=tf.stack([seed, index]),
                                                        dtype=tf.int32)[:, 0]
                return tf.where(tf.math.is_finite(top[:, 0]), drawn, greedy)

        return tf.cond(temperature > 0.0, sample, lambda: greedy)

    def generate(primer, num_steps, temperature, seed):
        checks = [tf.debugging.assert_non_negative(num_steps, message="generate: num_steps must be >= 0"),
                  tf.debugging.assert_less(primer, vocabulary_size,
                                           message=f"generate: primer ids must be < {vocabulary_size}"),
                  tf.debugging.assert_non_negative(primer, message="generate: primer ids must be >= 0")]
        with tf.control_dependencies(checks):
            primer = tf.cond(tf.size(primer) > 0, lambda: tf.identity(primer), lambda: boundary)
            num_steps = tf.identity(num_steps)
        state = tf.zeros([1, num_rows, hidden_size], tf.float32)
        probabilities = tf.zeros([1, vocabulary_size], tf.float32)

        def prime(i, state, probabilities):
            out = step_model(tf.reshape(primer[i], [1]), state)
            return i + 1, out["next_state"], out["probabilities"]

        _, state, probabilities = tf.while_loop(lambda i, *_: i < tf.size(primer), prime,
                                                (tf.constant(0), state, probabilities))
        ids = tf.TensorArray(tf.int32, size=num_steps, element_shape=tf.TensorShape([]))

        def extend(i, state, probabilities, ids):
            chosen = choose(probabilities, temperature, seed, i)
            out = step_model(chosen, state)
            return i + 1, out["next_state"], out["probabilities"], ids.write(i, chosen[0])

        _, _, _, ids = tf.while_loop(lambda i, *_: i < num_steps, extend,
                                     (tf.constant(0), state, probabilities, ids))
        ids = ids.stack()
        return {"ids": ids, "tokens": tf.gather(tokens, ids)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens")])
    archive.add_endpoint("step", step, input_signature=[
        tf.TensorSpec([None], tf.int32, name="token"),
        tf.TensorSpec([None, num_rows, hidden_size], tf.float32, name="state")])
    archive.add_endpoint("generate", generate, input_signature=[
        tf.TensorSpec([None], tf.int32, name="primer"),
        tf.TensorSpec([], tf.int32, name="num_steps"),
        tf.TensorSpec([], tf.float32, name="temperature"),
        tf.TensorSpec([], tf.int32, name="seed")])
    archive.add_endpoint("initial_state", initial_state,
                         input_signature=[tf.TensorSpec([], tf.int32, name="batch_size")])
    # ExportArchive has no public hook for assets; attaching the Asset to the root it
    # saves copies vocab.json into assets/ and makes it reachable after loading as
    # `loaded.vocabulary_file.asset_path`.
    root = getattr(archive, "_tf_trackable", None)
    if root is None:
        raise ExportError(f"keras {keras.__version__}: ExportArchive has no root trackable to attach "
                          "vocab.json to (expected ExportArchive._tf_trackable)")
    root.vocabulary_file = tf.saved_model.Asset(vocab_file)
    archive.write_out(directory, verbose=False)


def write_step_saved_model(model, directory: str) -> None:
    """A SavedModel with only the batch-1 `step` signature: what the TFLite converter reads.

    Static shapes keep every op a TFLite builtin.
    """
    import keras
    import tensorflow as tf

    from keras_music import model as model_lib

    step_model = model_lib.StepModel(model)

    def step(token, state):
        out = step_model(token, state)
        return {"probabilities": out["probabilities"], "next_state": out["next_state"]}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("step", step, input_signature=[
        tf.TensorSpec([1], tf.int32, name="token"),
        tf.TensorSpec([1, *step_model.state_shape], tf.float32, name="state")])
    archive.write_out(directory, verbose=False)


# ----------------------------------------------------------------------------- TFLite

def convert_tflite(step_saved_model: str, quantization: str) -> bytes:
    """Convert the batch-1 step SavedModel, restricted to builtin ops so a Flex need fails here."""
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r} (expected one of {', '.join(QUANTIZATIONS)})")
    converter = tf.lite.TFLiteConverter.from_saved_model(step_saved_model, signature_keys=["step"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization in ("float16", "dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        data = converter.convert()
    except Exception as error:  # the converter raises ConverterError and friends
        raise ExportError(f"TFLite conversion ({quantization}) failed with builtin ops only: "
                          f"{type(error).__name__}: {str(error).strip()[:2000]}") from None
    check_builtin_only(data, run_lib.TFLITE_FILES[quantization])
    return data


def tflite_operators(data: bytes) -> list[str]:
    """Operator names a .tflite flatbuffer uses; custom (incl. Flex) ops appear as `CUSTOM:<code>`."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    found = set()
    for code in model.operatorCodes or []:
        # Old files keep small codes in the deprecated field; newer ones in builtinCode.
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            found.add(f"CUSTOM:{custom}")
        else:
            found.add(names.get(builtin, f"UNKNOWN:{builtin}"))
    return sorted(found)


def check_builtin_only(data: bytes, name: str) -> list[str]:
    operators = tflite_operators(data)
    extra = [op for op in operators if op.startswith(("CUSTOM", "UNKNOWN")) or "Flex" in op]
    if extra:
        raise ExportError(f"{name} needs non-builtin ops {extra}: a phone's LiteRT runtime without the "
                          "Flex delegate cannot run it")
    return operators


def convert_all(step_saved_model: str, out_dir: str, quantizations) -> None:
    """Write one .tflite file per quantization into out_dir (in this process)."""
    for quantization in quantizations:
        data = convert_tflite(step_saved_model, quantization)
        with open(os.path.join(out_dir, run_lib.TFLITE_FILES[quantization]), "wb") as handle:
            handle.write(data)


def _needs_separate_process() -> bool:
    # The converter must run CPU-only; once TensorFlow in this process sees a GPU,
    # hiding it again is impossible, so the conversion moves to a CPU-only child.
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def convert_in_subprocess(step_saved_model: str, out_dir: str, quantizations) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1")
    code = ("import sys; from keras_music import export; "
            "export.convert_all(sys.argv[1], sys.argv[2], sys.argv[3].split(','))")
    result = subprocess.run([sys.executable, "-c", code, step_saved_model, out_dir, ",".join(quantizations)],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise ExportError(f"TFLite conversion in a CPU-only process failed (exit {result.returncode}):\n{tail}")


# ----------------------------------------------------------------------------- parity data

def held_out_windows(run_dir: str, seq_length: int, boundary_id: int, count: int, vocabulary=None):
    """Up to `count` non-overlapping windows of the held-out stream (pieces after boundary tokens).

    Returns (int32 [n, length], split). The training split is the fallback for runs
    without held-out pieces; a stream shorter than seq_length gives one shorter window.
    The shards are checked against prepared.json (and the ids against `vocabulary`).
    """
    import numpy as np

    directory = run_lib.data_dir(run_dir)
    vocabulary = vocabulary or run_lib.load_vocabulary(run_dir)
    for split in ("validation", "train"):
        pieces = [ids for _, ids in run_lib.named_pieces(run_dir, split, vocabulary)]
        if not pieces:
            continue
        stream = np.concatenate([np.concatenate([[boundary_id], piece]) for piece in pieces]).astype(np.int32)
        length = min(seq_length, len(stream))
        windows = [stream[i:i + length] for i in range(0, len(stream) - length + 1, length)][:count]
        return np.stack(windows), split
    raise run_lib.RunError(f"{directory} has no validation or training shards to check parity on "
                           "(rerun python -m keras_music.train or prepare)")


# ----------------------------------------------------------------------------- parity runners

class _Runner:
    """One artifact driven one token at a time: step(ids [batch], state) -> (probabilities, state)."""

    batched = True

    def initial_state(self, batch_size: int):
        import numpy as np

        return np.zeros((batch_size,) + tuple(self.state_shape), np.float32)


class _KerasRunner(_Runner):
    def __init__(self, step_model):
        self.step_model = step_model
        self.state_shape = step_model.state_shape

    def step(self, ids, state):
        return self.step_model.step(ids, state)


class _SavedModelRunner(_Runner):
    def __init__(self, loaded, state_shape):
        self.function = loaded.signatures["step"]
        self.state_shape = state_shape

    def step(self, ids, state):
        import numpy as np
        import tensorflow as tf

        out = self.function(token=tf.constant(np.asarray(ids, np.int32)), state=tf.constant(state))
        return out["probabilities"].numpy(), out["next_state"].numpy()


class _TFLiteRunner(_Runner):
    batched = False

    def __init__(self, path: str, state_shape):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=path)
        self.runner = self.interpreter.get_signature_runner("step")
        self.state_shape = state_shape

    def step(self, ids, state):
        import numpy as np

        out = self.runner(token=np.asarray(ids, np.int32).reshape(1), state=np.asarray(state, np.float32))
        return out["probabilities"], out["next_state"]


def _teacher_forced(runner, windows, progress=None):
    """Probabilities [n, time, vocab] after each input token of each window."""
    import numpy as np

    groups = [windows] if runner.batched else [windows[i:i + 1] for i in range(len(windows))]
    outputs = []
    for group in groups:
        state = runner.initial_state(len(group))
        steps = []
        for t in range(group.shape[1]):
            probabilities, state = runner.step(group[:, t], state)
            steps.append(probabilities)
            if progress is not None:
                progress.update(1)
        outputs.append(np.stack(steps, axis=1))
    return np.concatenate(outputs, axis=0)


def _greedy_run(runner, primer, num_steps: int, banned):
    """Free greedy generation: (ids [num_steps], probabilities [num_steps, vocab], seconds per step)."""
    import numpy as np

    from keras_music import sampling

    if num_steps == 0:
        return np.zeros(0, np.int32), np.zeros((0, 0), np.float32), 0.0
    state = runner.initial_state(1)
    probabilities = None
    for token in primer:
        probabilities, state = runner.step(np.array([token], np.int32), state)
    ids, seen = [], []
    started = time.perf_counter()
    for _ in range(num_steps):
        chosen = int(sampling.greedy(probabilities, banned)[0])
        ids.append(chosen)
        seen.append(probabilities[0])
        probabilities, state = runner.step(np.array([chosen], np.int32), state)
    elapsed = time.perf_counter() - started
    return np.array(ids, np.int32), np.stack(seen), elapsed / max(1, num_steps)


def _masked_top1(probabilities, banned):
    import numpy as np

    masked = np.array(probabilities, np.float64, copy=True)
    masked[..., banned] = -1.0
    return masked.argmax(axis=-1)


def _differences(candidate, reference, banned) -> dict:
    import numpy as np

    difference = np.abs(np.asarray(candidate, np.float64) - np.asarray(reference, np.float64))
    return {"max_abs": float(difference.max()) if difference.size else 0.0,
            "mean_abs": float(difference.mean()) if difference.size else 0.0,
            "positions": int(np.prod(difference.shape[:-1])),
            "top1_agreement": float(np.mean(_masked_top1(candidate, banned) == _masked_top1(reference, banned)))
            if difference.size else 1.0}


def _combined(windows: dict, greedy: dict) -> dict:
    total = windows["positions"] + greedy["positions"]
    return {
        "max_abs": max(windows["max_abs"], greedy["max_abs"]),
        "mean_abs": (windows["mean_abs"] * windows["positions"] + greedy["mean_abs"] * greedy["positions"])
        / max(1, total),
        "top1_agreement": (windows["top1_agreement"] * windows["positions"]
                           + greedy["top1_agreement"] * greedy["positions"]) / max(1, total),
    }


def _progress(total: int, show: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not show, file=sys.stderr, desc=description, unit="step", leave=False)


def measure_parity(model, loaded, tflite_paths: dict, windows, greedy_primers, parity_steps: int, banned,
                   show_progress: bool = False) -> dict:
    """Every artifact against Keras: probabilities over windows and along greedy runs, speed.

    Windows are teacher-forced (each artifact reads the same tokens). For the greedy
    runs the Keras step model generates the reference path; each artifact is scored
    along that path (so one early divergence does not make every later step
    incomparable) and also generates freely to tell whether its greedy sequence is
    identical.
    """
    import numpy as np
    import tensorflow as tf

    from keras_music import model as model_lib

    step_model = model_lib.StepModel(model)
    keras_runner = _KerasRunner(step_model)
    state_shape = step_model.state_shape
    runners = {"saved_model": _SavedModelRunner(loaded, state_shape)}
    for quantization, path in tflite_paths.items():
        runners[ARTIFACT_NAMES[quantization]] = _TFLiteRunner(path, state_shape)

    results: dict = {}
    sequence_probabilities = model(tf.constant(windows), training=False).numpy()
    keras_windows = _teacher_forced(keras_runner, windows)
    served = loaded.signatures["serving_default"](tokens=tf.constant(windows))["probabilities"].numpy()

    reference_runs = []
    keras_seconds = []
    for primer in greedy_primers:
        ids, probabilities, seconds = _greedy_run(keras_runner, primer, parity_steps, banned)
        reference_runs.append((primer, ids, probabilities))
        keras_seconds.append(seconds)
    results["keras"] = {
        "step_vs_sequence_model": _differences(keras_windows, sequence_probabilities, banned),
        "steps_per_second": 1.0 / float(np.mean(keras_seconds)) if parity_steps else None,
    }

    total = sum(windows.shape[1] if runner.batched else windows.size for runner in runners.values())
    # Per greedy run: the teacher-forced pass (primer + steps - 1 tokens) and the free run.
    total += sum(2 * (len(p) + parity_steps) - 1 for p in greedy_primers) * len(runners)
    with _progress(total, show_progress, "parity") as progress:
        for name, runner in runners.items():
            window_probabilities = _teacher_forced(runner, windows, progress)
            forced, identical, seconds = [], [], []
            for primer, reference_ids, _ in reference_runs:
                path = np.concatenate([primer, reference_ids[:-1]]).astype(np.int32)[None, :] \
                    if parity_steps else np.asarray(primer, np.int32)[None, :]
                forced.append(_teacher_forced(runner, path, progress)[0, len(primer) - 1:])
                ids, _, per_step = _greedy_run(runner, primer, parity_steps, banned)
                identical.append(bool(np.array_equal(ids, reference_ids)))
                seconds.append(per_step)
                progress.update(len(primer) + parity_steps)
            greedy_reference = np.concatenate([r[2] for r in reference_runs]) if parity_steps else \
                np.zeros((0, windows.shape[-1]))
            greedy_candidate = np.concatenate(forced)[:len(greedy_reference)] if parity_steps else greedy_reference
            window_figures = _differences(window_probabilities, keras_windows, banned)
            greedy_figures = _differences(greedy_candidate, greedy_reference, banned)
            results[name] = {
                "windows": window_figures,
                "greedy": greedy_figures,
                "overall": _combined(window_figures, greedy_figures),
                "greedy_identical": all(identical),
                "greedy_runs_identical": identical,
                "steps_per_second": 1.0 / float(np.mean(seconds)) if parity_steps else None,
            }

    saved = results["saved_model"]
    saved["serving_default"] = _differences(served, sequence_probabilities, banned)
    saved["overall"]["max_abs"] = max(saved["overall"]["max_abs"], saved["serving_default"]["max_abs"])
    # The in-graph generate loop must reproduce the Keras greedy path exactly.
    generate = loaded.signatures["generate"]
    generated_identical = []
    generate_seconds = []
    for primer, reference_ids, _ in reference_runs:
        arguments = dict(primer=tf.constant(np.asarray(primer, np.int32)), num_steps=tf.constant(parity_steps),
                         temperature=tf.constant(0.0), seed=tf.constant(0))
        generate(**arguments)  # the first call pays one-off graph set-up
        started = time.perf_counter()
        out = generate(**arguments)
        generate_seconds.append((time.perf_counter() - started) / max(1, parity_steps))
        generated_identical.append(bool(np.array_equal(out["ids"].numpy(), reference_ids)))
    saved["generate_greedy_identical"] = all(generated_identical)
    saved["generate_steps_per_second"] = 1.0 / float(np.mean(generate_seconds)) if parity_steps else None
    return results


# ----------------------------------------------------------------------------- checks and report

def evaluate_checks(report: dict) -> list[dict]:
    """Thresholds applied to a report's figures; each check says what was compared and whether it passed."""
    checks = []
    artifacts = report["artifacts"]

    def add(artifact, metric, value, operator, limit, applies=True, note=None):
        if operator == "<=":
            passed = value is not None and value <= limit
        elif operator == ">=":
            passed = value is not None and value >= limit
        else:
            passed = value == limit
        entry = {"artifact": artifact, "metric": metric, "value": value, "operator": operator, "limit": limit,
                 "applies": applies, "passed": bool(passed) if applies else True}
        if note:
            entry["note"] = note
        checks.append(entry)

    if "saved_model" in artifacts:
        saved = artifacts["saved_model"]
        add("saved_model", "max_abs_probability_difference", saved["overall"]["max_abs"], "<=", SAVED_MODEL_MAX_ABS)
        add("saved_model", "greedy_identical", saved["greedy_identical"], "==", True)
        add("saved_model", "generate_greedy_identical", saved["generate_greedy_identical"], "==", True)
    if "tflite_float32" in artifacts:
        lite = artifacts["tflite_float32"]
        add("tflite_float32", "max_abs_probability_difference", lite["overall"]["max_abs"], "<=",
            TFLITE_FLOAT32_MAX_ABS)
        add("tflite_float32", "greedy_identical", lite["greedy_identical"], "==", True)
    if "tflite_float16" in artifacts:
        add("tflite_float16", "top1_agreement", artifacts["tflite_float16"]["overall"]["top1_agreement"], ">=",
            FLOAT16_TOP1)
    if "tflite_dynamic" in artifacts:
        add("tflite_dynamic", "top1_agreement", artifacts["tflite_dynamic"]["overall"]["top1_agreement"], ">=",
            DYNAMIC_TOP1)
        ratio = report.get("dynamic_size_ratio")
        float32_bytes = artifacts.get("tflite_float32", {}).get("bytes", 0)
        applies = ratio is not None and float32_bytes >= SIZE_RATIO_MIN_BYTES
        add("tflite_dynamic", "size_ratio_to_float32", ratio, "<=", DYNAMIC_SIZE_RATIO, applies=applies,
            note=None if applies else f"not applied: the float32 file ({float32_bytes} bytes) is below "
                                      f"{SIZE_RATIO_MIN_BYTES} bytes, where fixed overhead dominates")
    return checks


def _directory_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _versions() -> dict:
    from importlib import metadata

    import keras
    import numpy as np
    import tensorflow as tf

    import keras_music

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


def export(run_dir: str, quantize=QUANTIZATIONS, parity_windows: int = 8, parity_steps: int = 200,
           show_progress: bool = False, log=print, separate_conversion: bool | None = None,
           web: bool = False) -> dict:
    """Write RUN/export/ (SavedModel, TFLite files, vocab.json, export_report.json) atomically.

    Returns the report; report["passed"] says whether every threshold held. The
    artifacts are written either way so a failed check can be inspected.
    `separate_conversion` runs the TFLite converter in a CPU-only child process
    (None: only when this process sees a GPU). `web` also writes RUN/export/web/, the
    static site that generates in the browser (keras_music.web_export). The run directory
    is locked meanwhile, and unfinished export folders of a killed earlier export are removed first.
    """
    with run_lib.lock(run_dir, "python -m keras_music.export"):
        return _export(run_dir, quantize, parity_windows, parity_steps, show_progress, log, separate_conversion, web)


def _export(run_dir, quantize, parity_windows, parity_steps, show_progress, log, separate_conversion,
            web) -> dict:
    import numpy as np
    import tensorflow as tf

    from keras_music import model as model_lib

    if parity_windows < 1:
        raise ValueError(f"parity_windows must be >= 1, got {parity_windows}")
    if parity_steps < 0:
        raise ValueError(f"parity_steps must be >= 0, got {parity_steps}")
    quantize = tuple(q for q in QUANTIZATIONS if q in set(quantize) | {"none"})
    config = run_lib.load_config(run_dir)
    vocabulary = run_lib.load_vocabulary(run_dir)
    model = run_lib.load_model(run_dir, vocabulary)
    sizes = model_lib.describe(model)
    banned = banned_ids(vocabulary)
    windows, split = held_out_windows(run_dir, config.data.seq_length, vocabulary.boundary_id, parity_windows,
                                      vocabulary)
    primers = [np.array([vocabulary.boundary_id], np.int32)]
    primers += [window[:PRIMER_LENGTH] for window in windows[:2]]
    if separate_conversion is None:
        separate_conversion = _needs_separate_process()
    # Fetched before the long conversion, so a missing npm fails in seconds.
    runtime = web_export.fetch_runtime(log=log) if web else None

    destination = export_dir(run_dir)
    removed = remove_stale_exports(run_dir)
    if removed:
        log(f"removed {removed} unfinished export folder(s) left by an interrupted export")
    with storage.atomic_directory(destination) as out, \
            tempfile.TemporaryDirectory(prefix="keras_music-step-") as scratch:
        vocab_file = os.path.join(out, run_lib.EXPORT_VOCAB)
        with open(vocab_file, "wb") as handle:
            handle.write(storage.read_bytes(run_lib.path(run_dir, run_lib.VOCAB)))
        saved_model_dir = os.path.join(out, run_lib.SAVED_MODEL)
        started = time.perf_counter()
        write_saved_model(model, vocabulary, vocab_file, saved_model_dir)
        log(f"SavedModel written in {time.perf_counter() - started:.1f} s")
        step_dir = os.path.join(scratch, "step_saved_model")
        write_step_saved_model(model, step_dir)
        started = time.perf_counter()
        if separate_conversion:
            convert_in_subprocess(step_dir, out, quantize)
        else:
            convert_all(step_dir, out, quantize)
        log(f"TFLite ({', '.join(quantize)}) converted in {time.perf_counter() - started:.1f} s")

        loaded = tf.saved_model.load(saved_model_dir)
        missing = [name for name in SIGNATURES if name not in loaded.signatures]
        if missing:
            raise ExportError(f"{saved_model_dir} lacks signatures {missing} after reloading")
        tflite_paths = {q: os.path.join(out, run_lib.TFLITE_FILES[q]) for q in quantize}
        parity = measure_parity(model, loaded, tflite_paths, windows, primers, parity_steps, banned,
                                show_progress=show_progress)

        artifacts = {"saved_model": dict(parity["saved_model"], path=run_lib.SAVED_MODEL,
                                         bytes=_directory_size(saved_model_dir),
                                         signatures=sorted(loaded.signatures.keys()))}
        for quantization, path in tflite_paths.items():
            with open(path, "rb") as handle:
                operators = check_builtin_only(handle.read(), run_lib.TFLITE_FILES[quantization])
            name = ARTIFACT_NAMES[quantization]
            artifacts[name] = dict(parity[name], path=run_lib.TFLITE_FILES[quantization], bytes=os.path.getsize(path),
                                   quantization={"none": "float32", "float16": "float16",
                                                 "dynamic": "dynamic-range int8 weights"}[quantization],
                                   operators=operators, builtin_only=True)
        float32_bytes = artifacts["tflite_float32"]["bytes"]
        web_summary = None
        if web:
            described = {"none": "float32", "float16": "float16 weights", "dynamic": "dynamic-range int8 weights"}
            web_summary = web_export.write_site(
                os.path.join(out, web_export.WEB_DIR), vocab_file,
                [(tflite_paths[q], described[q]) for q in quantize], runtime,
                run_name=os.path.basename(run_dir.rstrip("/")), timing=run_lib.load_prepared(run_dir).get("timing"))
        report = {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
            "model": dict(sizes, representation=vocabulary.representation),
            "files": {run_lib.EXPORT_VOCAB: os.path.getsize(vocab_file)},
            "parity_data": {
                "split": split,
                "windows": int(len(windows)),
                "window_length": int(windows.shape[1]),
                "greedy_runs": len(primers),
                "greedy_steps": parity_steps,
                "greedy_primer_lengths": [int(len(p)) for p in primers],
                "banned_ids": banned,
                "reference": "Keras StepModel on model.keras (the sequence model for serving_default)",
            },
            "keras": parity["keras"],
            "artifacts": artifacts,
            "dynamic_size_ratio": (artifacts["tflite_dynamic"]["bytes"] / float32_bytes
                                   if "tflite_dynamic" in artifacts else None),
            "float16_size_ratio": (artifacts["tflite_float16"]["bytes"] / float32_bytes
                                   if "tflite_float16" in artifacts else None),
            "thresholds": {
                "saved_model_max_abs": SAVED_MODEL_MAX_ABS,
                "tflite_float32_max_abs": TFLITE_FLOAT32_MAX_ABS,
                "float16_top1_agreement": FLOAT16_TOP1,
                "dynamic_top1_agreement": DYNAMIC_TOP1,
                "dynamic_size_ratio": DYNAMIC_SIZE_RATIO,
                "size_ratio_min_float32_bytes": SIZE_RATIO_MIN_BYTES,
            },
        }
        for name, artifact in artifacts.items():
            report["files"][artifact["path"]] = artifact["bytes"]
        if web_summary:
            report["web"] = web_summary
        report["checks"] = evaluate_checks(report)
        report["passed"] = all(check["passed"] for check in report["checks"])
        report["vocabulary_fingerprint"] = vocabulary.fingerprint()
        # Generators that load these files check them against the checksums first.
        report["sha256"] = file_digests(out)
        storage.write_json(os.path.join(out, REPORT), report)
    return report


def file_digests(directory: str) -> dict:
    """sha256 of every file below a local directory, by '/'-joined relative path (the report excluded)."""
    import hashlib

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
    import shutil

    if storage.is_remote(run_dir) or not os.path.isdir(run_dir):
        return 0
    removed = 0
    for name in os.listdir(run_dir):
        folder = os.path.join(run_dir, name)
        if name.startswith("." + run_lib.EXPORT + ".tmp-") and os.path.isdir(folder) and not os.path.islink(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


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
    from keras_music import cli

    parser = argparse.ArgumentParser(
        prog="python -m keras_music.export",
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
    from keras_music import cli

    with cli.user_errors(parser):
        try:
            # One writer of the run at a time: an export never runs beside train or another export.
            with run_lib.lock(args.run_dir, "python -m keras_music.export"):
                report = export(args.run_dir, quantize=args.quantize, parity_windows=args.parity_windows,
                                parity_steps=args.parity_steps, show_progress=not args.quiet, web=args.web,
                                log=(lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr)))
        except (ExportError, web_export.WebExportError) as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            cli.finish(cli.DATA_EXIT)
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
