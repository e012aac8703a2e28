"""Every exported artifact against Keras: held-out windows teacher-forced, greedy runs, speed, and the checks."""

from __future__ import annotations

import dataclasses
import time
from typing import TypedDict

import numpy as np

from keras_music import backends, cli, events, run as run_lib
from keras_music import sampling
from keras_music.export_tflite import ARTIFACT_NAMES

# Tolerances every export is held to (export_report.json records the measured figures).
SAVED_MODEL_MAX_ABS = 1e-5
TFLITE_FLOAT32_MAX_ABS = 1e-4
FLOAT16_TOP1 = 0.99
DYNAMIC_TOP1 = 0.95
DYNAMIC_SIZE_RATIO = 0.30
# Below this float32 file size the flatbuffer's fixed overhead dominates, so the
# dynamic-range size ratio says nothing about the weights and is only reported.
SIZE_RATIO_MIN_BYTES = 1 << 20

# Tokens of a held-out window that open a greedy run.
PRIMER_LENGTH = 16
# The `generate` signature counts events, not tokens: its greedy runs are greedy_steps / 4
# events long (a sonority is a few tokens), so they cost about as much as the other runs.
TOKENS_PER_EVENT = 4


class Thresholds(TypedDict):
    """The report's `thresholds`: the tolerances above, by name."""

    saved_model_max_abs: float
    tflite_float32_max_abs: float
    float16_top1_agreement: float
    dynamic_top1_agreement: float
    dynamic_size_ratio: float
    size_ratio_min_float32_bytes: int


class Differences(TypedDict):
    """Probabilities of an artifact against the reference's: largest and mean |dp|, over how many positions,
    and how often the (ban-masked) top token agrees."""

    max_abs: float
    mean_abs: float
    positions: int
    top1_agreement: float


class Combined(TypedDict):
    """Windows and greedy runs together, weighted by positions."""

    max_abs: float
    mean_abs: float
    top1_agreement: float


class KerasFigures(TypedDict):
    """The reference's own figures: its step model against its sequence model, and its greedy speed."""

    step_vs_sequence_model: Differences
    steps_per_second: float | None


class ArtifactFigures(TypedDict, total=False):
    """One artifact against Keras: teacher-forced `windows`, along the greedy paths (`greedy`), both
    (`overall`), whether its free greedy runs are identical (`greedy_identical`, per run
    `greedy_runs_identical`) and `steps_per_second`; the SavedModel's also `serving_default`,
    `generate_greedy_identical` and `generate_steps_per_second`."""

    windows: Differences
    greedy: Differences
    overall: Combined
    greedy_identical: bool
    greedy_runs_identical: list[bool]
    steps_per_second: float | None
    serving_default: Differences
    generate_greedy_identical: bool
    generate_steps_per_second: float | None


class Parity(TypedDict, total=False):
    """measure_parity's figures: the reference's (`keras`), then one entry per exported artifact."""

    keras: KerasFigures
    saved_model: ArtifactFigures
    tflite_float32: ArtifactFigures
    tflite_float16: ArtifactFigures
    tflite_dynamic: ArtifactFigures


class Check(TypedDict, total=False):
    """One threshold applied: `artifact`, `metric`, its `value`, `operator` and `limit`, whether it `applies`
    and `passed`, and a `note` when it does not apply."""

    artifact: str
    metric: str
    value: float | bool | None
    operator: str
    limit: float | bool
    applies: bool
    passed: bool
    note: str


class ParityDescription(TypedDict):
    """The report's `parity_data`: what the artifacts were compared on."""

    split: str
    windows: int
    window_length: int
    greedy_runs: int
    greedy_steps: int
    greedy_primer_lengths: list[int]
    banned_ids: list
    generate_length_events: int
    reference: str


def thresholds() -> Thresholds:
    """The tolerances as export_report.json records them."""
    return {
        "saved_model_max_abs": SAVED_MODEL_MAX_ABS,
        "tflite_float32_max_abs": TFLITE_FLOAT32_MAX_ABS,
        "float16_top1_agreement": FLOAT16_TOP1,
        "dynamic_top1_agreement": DYNAMIC_TOP1,
        "dynamic_size_ratio": DYNAMIC_SIZE_RATIO,
        "size_ratio_min_float32_bytes": SIZE_RATIO_MIN_BYTES,
    }


# ----------------------------------------------------------------------------- parity data

def held_out_windows(run_dir: str, seq_length: int, *, boundary_id: int, count: int, vocabulary=None):
    """Up to `count` non-overlapping windows of the held-out stream (pieces after boundary tokens).

    Returns (int32 [n, length], split). The training split is the fallback for runs
    without held-out pieces; a stream shorter than seq_length gives one shorter window.
    The shards are checked against prepared.json (and the ids against `vocabulary`).
    """
    directory = run_lib.data_dir(run_dir)
    vocabulary = vocabulary or run_lib.load_vocabulary(run_dir)
    for split in ("validation", "train"):
        pieces = [ids for _, ids in run_lib.named_pieces(run_dir, split, vocabulary=vocabulary)]
        if not pieces:
            continue
        stream = np.concatenate([np.concatenate([[boundary_id], piece]) for piece in pieces]).astype(np.int32)
        length = min(seq_length, len(stream))
        windows = [stream[i:i + length] for i in range(0, len(stream) - length + 1, length)][:count]
        return np.stack(windows), split
    raise run_lib.RunError(f"{directory} has no validation or training shards to check parity on "
                           "(rerun python -m keras_music.train or prepare)")


@dataclasses.dataclass(frozen=True)
class ParityData:
    """What every artifact is compared on: held-out windows, and greedy runs of `greedy_steps` from `primers`."""

    split: str  # the split the windows come from
    windows: np.ndarray  # int32 [n, length]
    primers: list  # the boundary alone, then the openings of the first two windows
    greedy_steps: int
    banned: list  # ids greedy choice skips (as generation does)
    grammar: dict | None = None  # the vocabulary's grammar table, for the portable greedy runs of `generate`

    @property
    def generate_length(self) -> int:
        """Events of each greedy `generate` run (min_length too, so <piece> cannot end it early); 0: none."""
        return max(1, self.greedy_steps // TOKENS_PER_EVENT) if self.greedy_steps else 0

    def describe(self) -> ParityDescription:
        """The report's `parity_data` block."""
        return {
            "split": self.split,
            "windows": int(len(self.windows)),
            "window_length": int(self.windows.shape[1]),
            "greedy_runs": len(self.primers),
            "greedy_steps": self.greedy_steps,
            "greedy_primer_lengths": [int(len(p)) for p in self.primers],
            "banned_ids": self.banned,
            "generate_length_events": self.generate_length,
            "reference": "Keras StepModel on model.keras (the sequence model for serving_default)",
        }


def parity_data(run_dir: str, vocabulary, *, seq_length: int, windows: int, greedy_steps: int,
                banned) -> ParityData:
    """Up to `windows` held-out windows of `seq_length` and the greedy runs' primers."""
    held_out, split = held_out_windows(run_dir, seq_length, boundary_id=vocabulary.boundary_id, count=windows,
                                       vocabulary=vocabulary)
    primers = [np.array([vocabulary.boundary_id], np.int32)]
    primers += [window[:PRIMER_LENGTH] for window in held_out[:2]]
    grammar = events.grammar_table(vocabulary.tokens, vocabulary.representation)
    return ParityData(split=split, windows=held_out, primers=primers, greedy_steps=greedy_steps, banned=banned,
                      grammar=grammar)


# ----------------------------------------------------------------------------- one backend's runs

def _teacher_forced(backend, windows, *, progress=None):
    """Probabilities [n, time, vocab] after each input token of each window."""
    lstm_state = backend.initial_state(len(windows))
    steps = []
    for t in range(windows.shape[1]):
        probabilities, lstm_state = backend.step(windows[:, t], lstm_state)
        steps.append(probabilities)
        if progress is not None:
            progress.update(1)
    return np.stack(steps, axis=1)


def _greedy_run(backend, primer, *, num_steps: int, banned):
    """Free greedy generation: (ids [num_steps], probabilities [num_steps, vocab], seconds per step)."""
    if num_steps == 0:
        return np.zeros(0, np.int32), np.zeros((0, 0), np.float32), 0.0
    lstm_state = backend.initial_state(1)
    probabilities = None
    for token in primer:
        probabilities, lstm_state = backend.step(np.array([token], np.int32), lstm_state)
    ids, seen = [], []
    started = time.perf_counter()
    for _ in range(num_steps):
        chosen = int(sampling.greedy(probabilities, banned)[0])
        ids.append(chosen)
        seen.append(probabilities[0])
        probabilities, lstm_state = backend.step(np.array([chosen], np.int32), lstm_state)
    elapsed = time.perf_counter() - started
    return np.array(ids, np.int32), np.stack(seen), elapsed / max(1, num_steps)


def portable_greedy(backend, primer, *, grammar_table: dict, length: int, min_length: int):
    """The portable piece loop at temperature 0 (export/README.md) with a backend's step: (ids, stop reason),
    what the `generate` signature must reproduce token for token."""
    lstm_state = [backend.initial_state(1)]

    def step(token: int):
        probabilities, lstm_state[0] = backend.step(np.array([token], np.int32), lstm_state[0])
        return probabilities

    return sampling.one_piece(step, primer, grammar_table=grammar_table, length=length, min_length=min_length,
                              choose=lambda probabilities, allowed: sampling.greedy(probabilities, [0, 1], allowed)[0])


# ----------------------------------------------------------------------------- differences

def _masked_top1(probabilities, banned):
    masked = np.array(probabilities, np.float64, copy=True)
    masked[..., banned] = -1.0
    return masked.argmax(axis=-1)


def _differences(candidate, reference, *, banned) -> Differences:
    difference = np.abs(np.asarray(candidate, np.float64) - np.asarray(reference, np.float64))
    return {"max_abs": float(difference.max()) if difference.size else 0.0,
            "mean_abs": float(difference.mean()) if difference.size else 0.0,
            "positions": int(np.prod(difference.shape[:-1])),
            "top1_agreement": float(np.mean(_masked_top1(candidate, banned) == _masked_top1(reference, banned)))
            if difference.size else 1.0}


def _combined(windows: Differences, greedy: Differences) -> Combined:
    total = windows["positions"] + greedy["positions"]
    return {
        "max_abs": max(windows["max_abs"], greedy["max_abs"]),
        "mean_abs": (windows["mean_abs"] * windows["positions"] + greedy["mean_abs"] * greedy["positions"])
        / max(1, total),
        "top1_agreement": (windows["top1_agreement"] * windows["positions"]
                           + greedy["top1_agreement"] * greedy["positions"]) / max(1, total),
    }


def _steps_per_second(seconds: list, parity_steps: int):
    return 1.0 / float(np.mean(seconds)) if parity_steps else None


# ----------------------------------------------------------------------------- the comparison

class _Reference:
    """What Keras gives: the sequence model and step model on the windows, and the greedy paths."""

    def __init__(self, model, data: ParityData):
        import tensorflow as tf

        keras = backends.KerasBackend(None, model=model)
        self.sequence_model = model(tf.constant(data.windows), training=False).numpy()
        self.windows = _teacher_forced(keras, data.windows)
        self.runs = []  # (primer, greedy ids, probabilities each id was chosen from)
        seconds = []
        for primer in data.primers:
            ids, probabilities, per_step = _greedy_run(keras, primer, num_steps=data.greedy_steps,
                                                       banned=data.banned)
            self.runs.append((primer, ids, probabilities))
            seconds.append(per_step)
        # The portable loop's greedy pieces (grammar, events), what `generate` must equal.
        self.pieces = [(primer, *portable_greedy(keras, primer, grammar_table=data.grammar,
                                                 length=data.generate_length, min_length=data.generate_length))
                       for primer in data.primers] if data.generate_length and data.grammar else []
        self.figures: KerasFigures = {
            "step_vs_sequence_model": _differences(self.windows, self.sequence_model, banned=data.banned),
            "steps_per_second": _steps_per_second(seconds, data.greedy_steps),
        }


def _artifact_figures(backend, data: ParityData, *, reference: _Reference, progress) -> ArtifactFigures:
    """One artifact against the reference: teacher-forced windows, scored along and free greedy runs, speed.

    Along each Keras greedy path the artifact is teacher-forced (so one early divergence
    does not make every later step incomparable); its own free greedy run says whether
    its greedy sequence is identical.
    """
    steps, banned = data.greedy_steps, data.banned
    window_probabilities = _teacher_forced(backend, data.windows, progress=progress)
    forced, identical, seconds = [], [], []
    for primer, reference_ids, _ in reference.runs:
        path = np.concatenate([primer, reference_ids[:-1]]).astype(np.int32)[None, :] \
            if steps else np.asarray(primer, np.int32)[None, :]
        forced.append(_teacher_forced(backend, path, progress=progress)[0, len(primer) - 1:])
        ids, _, per_step = _greedy_run(backend, primer, num_steps=steps, banned=banned)
        identical.append(bool(np.array_equal(ids, reference_ids)))
        seconds.append(per_step)
        progress.update(len(primer) + steps)
    greedy_reference = np.concatenate([r[2] for r in reference.runs]) if steps else \
        np.zeros((0, data.windows.shape[-1]))
    greedy_candidate = np.concatenate(forced)[:len(greedy_reference)] if steps else greedy_reference
    window_figures = _differences(window_probabilities, reference.windows, banned=banned)
    greedy_figures = _differences(greedy_candidate, greedy_reference, banned=banned)
    return {
        "windows": window_figures,
        "greedy": greedy_figures,
        "overall": _combined(window_figures, greedy_figures),
        "greedy_identical": all(identical),
        "greedy_runs_identical": identical,
        "steps_per_second": _steps_per_second(seconds, steps),
    }


def _saved_model_signatures(loaded, data: ParityData, *, reference: _Reference) -> ArtifactFigures:
    """serving_default against the Keras sequence model; the in-graph generate loop against the portable greedy
    loop run with the Keras step model (same ids and stop reason)."""
    import tensorflow as tf

    served = loaded.signatures["serving_default"](tokens=tf.constant(data.windows))["probabilities"].numpy()
    generate = loaded.signatures["generate"]
    identical, seconds = [], []
    length = tf.constant(data.generate_length)
    for primer, reference_ids, reason in reference.pieces:
        arguments = dict(primer=tf.constant(np.asarray(primer, np.int32)), length=length, min_length=length,
                         temperature=tf.constant(0.0, tf.float64), top_k=tf.constant(0),
                         top_p=tf.constant(1.0, tf.float64), seed=tf.constant(0, tf.int64))
        generate(**arguments)  # the first call pays one-off graph set-up
        started = time.perf_counter()
        out = generate(**arguments)
        seconds.append((time.perf_counter() - started) / max(1, len(out["ids"])))
        identical.append(bool(np.array_equal(out["ids"].numpy(), reference_ids))
                         and out["stop_reason"].numpy().decode() == reason)
    return {"serving_default": _differences(served, reference.sequence_model, banned=data.banned),
            "generate_greedy_identical": all(identical),
            "generate_steps_per_second": _steps_per_second(seconds, len(seconds))}


@dataclasses.dataclass(frozen=True)
class Exported:
    """The files an export has just written, as the parity check reads them."""

    vocab_file: str  # the exported vocab.json
    saved_model: str  # the SavedModel's folder
    loaded: object  # that SavedModel, loaded back
    tflite: dict  # quantization -> its .tflite file


def measure_parity(run_dir: str, model, *, exported: Exported, data: ParityData,
                   show_progress: bool = False) -> Parity:
    """Every artifact against Keras: probabilities over windows and along greedy runs, speed.

    Windows are teacher-forced (each artifact reads the same tokens); the Keras step
    model generates the greedy reference paths.
    """
    artifacts = {"saved_model": backends.SavedModelBackend(run_dir, path=exported.saved_model,
                                                           loaded=exported.loaded)}
    for quantization, path in exported.tflite.items():
        artifacts[ARTIFACT_NAMES[quantization]] = backends.TFLiteBackend(run_dir, path=path)
    reference = _Reference(model, data)
    results: Parity = {"keras": reference.figures}
    # Per artifact: the windows, and per greedy run the teacher-forced pass (primer +
    # steps - 1 tokens) and the free run.
    per_artifact = data.windows.shape[1] + sum(2 * (len(p) + data.greedy_steps) - 1 for p in data.primers)
    with cli.progress(total=len(artifacts) * per_artifact, show=show_progress, desc="parity", unit="step",
                      leave=False) as progress:
        for name, backend in artifacts.items():
            results[name] = _artifact_figures(backend, data, reference=reference, progress=progress)
    saved = results["saved_model"]
    saved.update(_saved_model_signatures(exported.loaded, data, reference=reference))
    saved["overall"]["max_abs"] = max(saved["overall"]["max_abs"], saved["serving_default"]["max_abs"])
    return results


# ----------------------------------------------------------------------------- checks

def evaluate_checks(report: dict) -> list[Check]:
    """Thresholds applied to a report's figures; each check says what was compared and whether it passed."""
    checks = []
    artifacts = report["artifacts"]

    def add(artifact, metric, *, value, operator, limit, applies=True, note=None):
        if operator == "<=":
            passed = value is not None and value <= limit
        elif operator == ">=":
            passed = value is not None and value >= limit
        else:
            passed = value == limit
        entry: Check = {"artifact": artifact, "metric": metric, "value": value, "operator": operator,
                        "limit": limit, "applies": applies, "passed": bool(passed) if applies else True}
        if note:
            entry["note"] = note
        checks.append(entry)

    if "saved_model" in artifacts:
        saved = artifacts["saved_model"]
        add("saved_model", "max_abs_probability_difference", value=saved["overall"]["max_abs"], operator="<=",
            limit=SAVED_MODEL_MAX_ABS)
        add("saved_model", "greedy_identical", value=saved["greedy_identical"], operator="==", limit=True)
        add("saved_model", "generate_greedy_identical", value=saved["generate_greedy_identical"], operator="==",
            limit=True)
    if "tflite_float32" in artifacts:
        lite = artifacts["tflite_float32"]
        add("tflite_float32", "max_abs_probability_difference", value=lite["overall"]["max_abs"], operator="<=",
            limit=TFLITE_FLOAT32_MAX_ABS)
        add("tflite_float32", "greedy_identical", value=lite["greedy_identical"], operator="==", limit=True)
    if "tflite_float16" in artifacts:
        add("tflite_float16", "top1_agreement", value=artifacts["tflite_float16"]["overall"]["top1_agreement"],
            operator=">=", limit=FLOAT16_TOP1)
    if "tflite_dynamic" in artifacts:
        add("tflite_dynamic", "top1_agreement", value=artifacts["tflite_dynamic"]["overall"]["top1_agreement"],
            operator=">=", limit=DYNAMIC_TOP1)
        ratio = report.get("dynamic_size_ratio")
        float32_bytes = artifacts.get("tflite_float32", {}).get("bytes", 0)
        applies = ratio is not None and float32_bytes >= SIZE_RATIO_MIN_BYTES
        add("tflite_dynamic", "size_ratio_to_float32", value=ratio, operator="<=", limit=DYNAMIC_SIZE_RATIO,
            applies=applies, note=None if applies else (f"not applied: the float32 file ({float32_bytes} bytes) "
                                                        f"is below {SIZE_RATIO_MIN_BYTES} bytes, where fixed "
                                                        "overhead dominates"))
    return checks
