"""The lab report's study as one command: train its two settings alike, sample, measure, and judge its claims."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import shlex
import sys
import time

import numpy as np

from keras_music import cli, config as config_lib, evaluate, events, formatting as fmt, metrics, plots, run as run_lib, storage
from keras_music.errors import KerasMusicError

DEFAULT_TEMPERATURES = (0.5, 0.8, 1.0, 1.2)
DEFAULT_NUM_SAMPLES = 20
DEFAULT_LENGTH = cli.MATCHED
DEFAULT_WRITE_SAMPLES = 2
# Smallest hidden size --scale produces: below it an LSTM of three layers says little.
MIN_SCALED_HIDDEN = 8
# With a wall-clock budget the budget, not the epoch count, must end training.
BUDGET_EPOCHS = 1000
# A difference counts only when it is at least this many standard errors.
SPREAD_FACTOR = 2.0

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
LEARNING_CURVES_PNG = "learning_curves.png"
METRICS_PNG = "metrics_by_temperature.png"
VERDICTS = ("supports", "contradicts", "cannot tell")

RECOMMENDED_COMMAND = (
    "python -m keras_music.experiment --configs configs/original.yaml configs/modified.yaml "
    "--scale 0.125 --budget 12 --num-samples 32 --out runs/experiment-bach")
EPILOG = f"""\
The recommended study on the Bach chorales that ship with music21, on a 2-core laptop
CPU in at most about 40 minutes (hidden sizes 1024 -> 128 and 2048 -> 256, 12 minutes of
training per config, then sampling and evaluation):

  {RECOMMENDED_COMMAND}

Full size (the lab report's models as written; needs a GPU and hours):

  python -m keras_music.experiment --configs configs/original.yaml configs/modified.yaml

Rerunning the same command with the same --out resumes interrupted trainings.
"""

# The lab report's claims about the modified setting against the original, each with
# the measurements that decide it. "direction" +1: modified should be higher.
CLAIMS = (
    {"id": 1, "claim": "smoother transitions",
     "operationalisation": "higher note_transition_logprob for modified (generated pieces of all temperatures pooled)",
     "measures": (("note_transition_logprob", +1),)},
    {"id": 2, "claim": "stronger rhythm",
     "operationalisation": "higher groove_consistency for modified (all temperatures pooled)",
     "measures": (("groove_consistency", +1),)},
    {"id": 3, "claim": "more coherent melody",
     "operationalisation": "higher scale_consistency and key_correlation (all temperatures pooled) and lower "
                           "held-out perplexity (paired per-piece NLL per token) for modified",
     "measures": (("scale_consistency", +1), ("key_correlation", +1), ("held_out_perplexity", -1))},
    {"id": 4, "claim": "less novelty",
     "operationalisation": "lower distinct_event_ratio, lower pitch_entropy, higher longest_repetition for modified "
                           "(all temperatures pooled)",
     "measures": (("distinct_event_ratio", -1), ("pitch_entropy", -1), ("longest_repetition", +1))},
    {"id": 5, "claim": "temperature trades stability for variety",
     "operationalisation": "for every config, pitch_entropy rises and scale_consistency falls with temperature "
                           "(least-squares slope over all generated pieces)",
     "measures": (("pitch_entropy", +1), ("scale_consistency", -1))},
)

RULE = (
    f"Each measure compares two groups and gets a verdict: the difference (modified − original; for claim 5 the "
    f"least-squares slope of the metric against temperature) must be at least {SPREAD_FACTOR:g} × its standard "
    "error to count. Counting and in the claimed direction: supports; counting and against it: contradicts; "
    f"smaller than {SPREAD_FACTOR:g} standard errors, or too few values (fewer than 2 per group, or one "
    "temperature only): cannot tell. Standard errors: sqrt(s₁²/n₁ + s₂²/n₂) for two groups of pieces (s with "
    "n − 1); the standard error of the mean per-piece difference for held-out NLL (the same held-out pieces "
    "under both models); the ordinary least-squares standard error for slopes. A claim with several measures "
    "supports when at least half of them support and none contradicts, contradicts when at least half "
    "contradict and none supports, and cannot tell otherwise.")


class ExperimentError(KerasMusicError, ValueError):
    """The study cannot run as asked; the message says why."""


@dataclasses.dataclass
class StudyRun:
    name: str
    config_file: str
    config: config_lib.Config
    run_dir: str
    configured_hidden_size: int
    applied: list[str]  # the key=value settings the experiment chose (scale, budget)


# ----------------------------------------------------------------------------- configs


def scaled_hidden(hidden_size: int, factor: float) -> int:
    return max(MIN_SCALED_HIDDEN, int(round(hidden_size * factor)))


def _names(files) -> list[str]:
    names = []
    for file in files:
        stem = os.path.splitext(os.path.basename(str(file).rstrip("/")))[0] or "config"
        name, suffix = stem, 1
        while name in names:
            suffix += 1
            name = f"{stem}-{suffix}"
        names.append(name)
    return names


def resolve_runs(config_files, out_dir: str, sources=(), overrides=(), scale: float | None = None,
                 budget_minutes: float | None = None, budget_tokens: int | None = None) -> list[StudyRun]:
    """One resolved config per file: file < --set < what --scale/--budget choose (except keys --set names)."""
    if budget_minutes is not None and budget_tokens is not None:
        raise ExperimentError("give either a wall-clock budget or a token budget, not both")
    overrides = list(overrides)
    user_keys = {config_lib.parse_override(text)[0] for text in overrides}
    runs = []
    for name, file in zip(_names(config_files), config_files):
        base = config_lib.load([file], overrides)
        applied = []
        if scale is not None:
            applied.append(f"model.hidden_size={scaled_hidden(base.model.hidden_size, scale)}")
        budget_keys = []
        if budget_minutes is not None:
            # A cosine schedule must know its length in advance and a wall-clock budget
            # does not, so budgeted runs keep each config's learning rate constant.
            budget_keys = [("train.time_budget_minutes", f"{budget_minutes!r}"), ("train.epochs", str(BUDGET_EPOCHS)),
                           ("train.lr_schedule", "constant"), ("train.early_stopping_patience", "0")]
        elif budget_tokens is not None:
            # train.epochs follows from the prepared data (run_study); the schedule stays.
            budget_keys = [("train.time_budget_minutes", "0"), ("train.early_stopping_patience", "0")]
        applied += [f"{key}={value}" for key, value in budget_keys if key not in user_keys]
        config = config_lib.load([file], overrides + applied)
        if sources:
            config = config_lib.validate(dataclasses.replace(
                config, data=dataclasses.replace(config.data, sources=tuple(sources))))
        runs.append(StudyRun(name, str(file), config, storage.join(out_dir, name), base.model.hidden_size, applied))
    return runs


def tokens_per_epoch(config: config_lib.Config, prepared: dict) -> int:
    from keras_music import train

    return train.epoch_steps(config, prepared["lengths"]["train"]) * config.train.batch_size * config.data.seq_length


# ----------------------------------------------------------------------------- statistics (pure numpy)


def mean_se(values) -> dict:
    """Mean, sample standard deviation (n − 1), standard error of the mean, count of finite values."""
    x = metrics.finite_values(values)
    n = len(x)
    std = float(x.std(ddof=1)) if n >= 2 else math.nan
    return {"mean": float(x.mean()) if n else math.nan, "std": std,
            "se": std / math.sqrt(n) if n >= 2 else math.nan, "n": n}


def verdict(difference: float, se: float, direction: int) -> str:
    if not (math.isfinite(difference) and math.isfinite(se)):
        return "cannot tell"
    if difference == 0 or abs(difference) < SPREAD_FACTOR * se:
        return "cannot tell"
    return "supports" if np.sign(difference) == np.sign(direction) else "contradicts"


def compare_groups(original, modified, direction: int) -> dict:
    """Difference of means (modified − original) of two independent groups, its standard error and verdict."""
    a, b = mean_se(original), mean_se(modified)
    difference = b["mean"] - a["mean"]
    se = math.sqrt(a["se"] ** 2 + b["se"] ** 2) if a["n"] >= 2 and b["n"] >= 2 else math.nan
    return {"original": a, "modified": b, "difference": difference, "se": se,
            "verdict": verdict(difference, se, direction)}


def compare_paired(original: dict, modified: dict, direction: int) -> dict:
    """Like compare_groups for values keyed by the same items (held-out pieces): mean of per-item differences."""
    shared = [k for k in original if k in modified and original[k] is not None and modified[k] is not None]
    differences = metrics.finite_values([modified[k] - original[k] for k in shared])
    summary = mean_se(differences)
    return {"original": mean_se([original[k] for k in shared]), "modified": mean_se([modified[k] for k in shared]),
            "difference": summary["mean"], "se": summary["se"], "pairs": summary["n"],
            "verdict": verdict(summary["mean"], summary["se"], direction)}


def slope(x, y, direction: int) -> dict:
    """Least-squares slope of y on x with its standard error and verdict (finite pairs only)."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y)
             if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))]
    n = len(pairs)
    result = {"slope": math.nan, "se": math.nan, "n": n, "verdict": "cannot tell"}
    if n < 3:
        return result
    xs, ys = np.array(pairs).T
    sxx = float(((xs - xs.mean()) ** 2).sum())
    if sxx == 0:
        return result
    b = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / sxx)
    residuals = ys - (ys.mean() + b * (xs - xs.mean()))
    se = math.sqrt(float((residuals ** 2).sum()) / (n - 2) / sxx)
    result.update(slope=b, se=se, verdict=verdict(b, se, direction))
    return result


def combine(verdicts) -> str:
    verdicts = list(verdicts)
    needed = math.ceil(len(verdicts) / 2)
    supports, contradicts = verdicts.count("supports"), verdicts.count("contradicts")
    if verdicts and supports >= needed and not contradicts:
        return "supports"
    if verdicts and contradicts >= needed and not supports:
        return "contradicts"
    return "cannot tell"


def _pooled_values(music: dict, metric: str) -> list:
    return [row["metrics"].get(metric) for key in music["generated"] for row in music["generated"][key]["pieces"]]


def _temperature_values(music: dict, metric: str) -> tuple[list, list]:
    xs, ys = [], []
    for temperature in music["temperatures"]:
        for row in music["generated"][evaluate.temperature_key(temperature)]["pieces"]:
            xs.append(temperature)
            ys.append(row["metrics"].get(metric))
    return xs, ys


def judge_claims(original: dict, modified: dict, names=("original", "modified")) -> list[dict]:
    """Verdicts for CLAIMS from two evaluate_run results (the first is the report's original setting)."""
    out = []
    for claim in CLAIMS:
        measures = []
        if claim["id"] == 5:
            for name, evaluation in zip(names, (original, modified)):
                for metric, direction in claim["measures"]:
                    result = slope(*_temperature_values(evaluation["music_metrics"], metric), direction)
                    measures.append(dict(result, measure=metric, config=name, direction=direction))
        else:
            for metric, direction in claim["measures"]:
                if metric == "held_out_perplexity":
                    per_piece = [{p["name"] or str(i): p.get("nll_nats")
                                  for i, p in enumerate(e["model_quality"].get("per_piece", []))}
                                 for e in (original, modified)]
                    result = compare_paired(per_piece[0], per_piece[1], direction)
                    result["original"]["perplexity"] = original["model_quality"]["perplexity"]
                    result["modified"]["perplexity"] = modified["model_quality"]["perplexity"]
                else:
                    result = compare_groups(_pooled_values(original["music_metrics"], metric),
                                            _pooled_values(modified["music_metrics"], metric), direction)
                measures.append(dict(result, measure=metric, direction=direction))
        out.append({"id": claim["id"], "claim": claim["claim"], "operationalisation": claim["operationalisation"],
                    "measures": measures, "verdict": combine(m["verdict"] for m in measures)})
    return out


# ----------------------------------------------------------------------------- running


class RecordingGenerator:
    """Passes evaluate_run's generate calls to a real Generator and keeps the pieces per temperature."""

    def __init__(self, generator):
        self.generator = generator
        self.pieces: dict[str, list] = {}

    def generate(self, *args, **kwargs):
        pieces = self.generator.generate(*args, **kwargs)
        self.pieces[evaluate.temperature_key(kwargs.get("temperature", 1.0))] = pieces
        return pieces


def event_accuracy(run_dir: str) -> dict:
    """Fraction of held-out events (sonorities) whose every token the model predicts top-1 from the true past."""
    vocabulary = run_lib.load_vocabulary(run_dir)
    pieces = evaluate.load_split(run_dir, "validation", vocabulary)
    model = run_lib.load_model(run_dir, vocabulary)
    _, hits = evaluate.token_log_probs(model, [p.ids for p in pieces], vocabulary.boundary_id, vocabulary.pad_id)
    ends_event = np.array([events.ends_event(t, vocabulary.representation) for t in vocabulary.tokens])
    correct = total = 0
    for piece, hit in zip(pieces, hits):
        ends = np.flatnonzero(ends_event[piece.ids])
        start = 0
        for end in ends:
            total += 1
            correct += int(hit[start:end + 1].all())
            start = end + 1
    return {"event_accuracy": correct / total if total else math.nan, "events_scored": total}


def _train_run(run: StudyRun, budget_tokens: int | None, user_keys: set, show_progress: bool, log) -> dict:
    import keras

    from keras_music import train

    storage.makedirs(run.run_dir)
    prepared = train.prepare_run(run.config, run.run_dir, show_progress, log)
    per_epoch = tokens_per_epoch(run.config, prepared)
    if budget_tokens is not None and "train.epochs" not in user_keys:
        if per_epoch < 1:
            raise ExperimentError(f"{run.name}: the training split has fewer tokens than one batch of "
                                  f"{run.config.train.batch_size} x {run.config.data.seq_length}; lower them or "
                                  "add data")
        epochs = max(1, math.ceil(budget_tokens / per_epoch))
        run.config = config_lib.validate(dataclasses.replace(
            run.config, train=dataclasses.replace(run.config.train, epochs=epochs)))
        run.applied.append(f"train.epochs={epochs}")
    keras.backend.clear_session()
    metrics_json = train.train(run.config, run.run_dir, show_progress=show_progress, log=log)
    return dict(metrics_json, tokens_per_epoch=per_epoch)


def _write_listening_samples(run: StudyRun, recorder: RecordingGenerator, count: int, log) -> dict:
    written = {}
    if count < 1:
        return written
    for key, pieces in recorder.pieces.items():
        out_dir = run_lib.path(run.run_dir, "generated", f"experiment-T{key}")
        try:
            paths = recorder.generator.write(pieces[:count], out_dir)
        except Exception as error:  # listening copies are a convenience; the measurements are already taken
            log(f"{run.name}: could not write sample pieces at T = {key}: {type(error).__name__}: {error}")
            continue
        written[key] = [p for p in paths if p.endswith(".mid")]
    return written


def run_study(config_files, out_dir: str, sources=(), overrides=(), scale: float | None = None,
              budget_minutes: float | None = None, budget_tokens: int | None = None,
              temperatures=DEFAULT_TEMPERATURES, num_samples: int = DEFAULT_NUM_SAMPLES,
              length: int = DEFAULT_LENGTH, seed: int = 0, write_samples: int = DEFAULT_WRITE_SAMPLES,
              show_progress: bool = True, log=None, command: str = "") -> dict:
    """Train every config into OUT/<name>, evaluate each, and write report.md, report.json and plots into OUT."""
    from keras_music.generate import Generator

    log = log or (lambda *a: print(*a, file=sys.stderr))
    if len(config_files) < 2:
        raise ExperimentError(f"the study compares at least two configs, got {len(config_files)}")
    temperatures = tuple(float(t) for t in dict.fromkeys(temperatures))
    started = time.time()
    if seed is not None:
        overrides = [*overrides, f"train.seed={int(seed)}"]
    runs = resolve_runs(config_files, out_dir, sources, overrides, scale, budget_minutes, budget_tokens)
    user_keys = {config_lib.parse_override(text)[0] for text in overrides}
    storage.makedirs(out_dir)
    trained = {}
    for run in runs:
        log(f"[{run.name}] training into {run.run_dir} "
            f"({'; '.join(run.applied) or 'settings as in ' + run.config_file})")
        # --quiet keeps the experiment's own stage lines but drops train's per-epoch ones.
        train_log = (lambda *a, n=run.name: log(f"[{n}]", *a)) if show_progress else (lambda *a: None)
        trained[run.name] = _train_run(run, budget_tokens, user_keys, show_progress, train_log)
    evaluations, samples, accuracy = {}, {}, {}
    for run in runs:
        log(f"[{run.name}] sampling {num_samples} pieces at each of {len(temperatures)} temperatures and evaluating")
        recorder = RecordingGenerator(Generator(run.run_dir))
        evaluations[run.name] = evaluate.evaluate_run(
            run.run_dir, num_samples, length, temperatures, seed or 0, evaluate.DEFAULT_ORDERS,
            run_lib.path(run.run_dir, evaluate.EVALUATION_DIR), show_progress=show_progress, generator=recorder)
        accuracy[run.name] = event_accuracy(run.run_dir)
        samples[run.name] = _write_listening_samples(run, recorder, write_samples, log)
    result = assemble(runs, trained, evaluations, accuracy, samples, out_dir, {
        "configs": [r.config_file for r in runs], "sources": list(runs[0].config.data.sources),
        "overrides": [o for o in overrides if not o.startswith("train.seed=")], "scale": scale,
        "budget_minutes": budget_minutes, "budget_tokens": budget_tokens, "temperatures": list(temperatures),
        "num_samples": num_samples, "length": length, "seed": seed or 0,
        "ngram_orders": list(evaluate.DEFAULT_ORDERS), "command": command})
    plot_learning_curves(result, storage.join(out_dir, LEARNING_CURVES_PNG))
    plot_metrics_by_temperature(result, storage.join(out_dir, METRICS_PNG))
    result["seconds"] = round(time.time() - started, 1)
    result["listening"] = listening_results(out_dir, [run.run_dir for run in runs[:2]])
    result = storage.json_ready(result)
    storage.write_json(storage.join(out_dir, REPORT_JSON), result)
    storage.write_text(storage.join(out_dir, REPORT_MD), render_report(result))
    return result


def listening_results(out_dir: str, run_dirs) -> list[dict]:
    """Blind A/B results between the two compared runs, from the studio's votes in OUT/listening.sqlite."""
    from keras_music import listening

    path = storage.join(out_dir, listening.DB_NAME)
    if storage.is_remote(path) or not storage.exists(path):
        return []
    try:
        return listening.Store(path).results_for_runs(run_dirs)
    except Exception as error:  # sqlite3 errors: a damaged vote file must not cost the study's report
        print(f"warning: cannot read listening results from {path}: {error}", file=sys.stderr)
        return []


def _relative(path: str, root: str) -> str:
    if storage.is_remote(path) or storage.is_remote(root):
        return path[len(root):].lstrip("/") if path.startswith(root) else path
    return os.path.relpath(path, root)


def assemble(runs, trained, evaluations, accuracy, samples, out_dir, settings) -> dict:
    """The JSON-ready summary the report and plots are drawn from."""
    first = evaluations[runs[0].name]
    held_out = {r.name: run_lib.held_out_names(r.run_dir) for r in runs}
    prepared = storage.read_json(run_lib.path(runs[0].run_dir, run_lib.PREPARED))
    out_runs = {}
    for run in runs:
        t, e = trained[run.name], evaluations[run.name]
        quality, baseline, ratios = e["model_quality"], e["ngram"], e["lstm_vs_ngram"]
        best = baseline["orders"][str(baseline["best_order"])]
        music = e["music_metrics"]
        per_epoch = t["tokens_per_epoch"]
        c = run.config
        elapsed, tokens, history = 0.0, 0, []
        for h in t.get("history", []):
            elapsed += h.get("seconds", 0.0)
            # An epoch cut short by the time budget is only partly trained; train.py records
            # whole epochs unless its history carries the steps each epoch actually ran.
            steps = h.get("steps")
            tokens += int(steps) * c.train.batch_size * c.data.seq_length if steps is not None else per_epoch
            history.append({"epoch": int(h["epoch"]), "tokens_seen": tokens, "seconds": elapsed,
                            "loss": h.get("loss"), "val_loss": h.get("val_loss")})
        out_runs[run.name] = {
            "config_file": run.config_file,
            "run_dir": _relative(run.run_dir, out_dir),
            "evaluation": _relative(run_lib.path(run.run_dir, evaluate.EVALUATION_DIR, evaluate.EVALUATION_MD),
                                    out_dir),
            "applied_settings": list(run.applied),
            "settings": {"seq_length": c.data.seq_length, "hidden_size": c.model.hidden_size,
                         "configured_hidden_size": run.configured_hidden_size,
                         "embedding_size": c.model.embedding_size, "num_layers": c.model.num_layers,
                         "dropout": c.model.dropout, "batch_size": c.train.batch_size,
                         "learning_rate": c.train.learning_rate, "lr_schedule": c.train.lr_schedule,
                         "epochs": c.train.epochs, "time_budget_minutes": c.train.time_budget_minutes,
                         "early_stopping_patience": c.train.early_stopping_patience, "seed": c.train.seed},
            "training": {"parameters": t.get("parameters"), "epochs": t.get("epochs"), "stopped": t.get("stopped"),
                         "tokens_per_epoch": per_epoch, "tokens_seen": t.get("tokens_seen"),
                         "train_seconds": t.get("train_seconds"), "wall_seconds": t.get("wall_seconds"),
                         "tokens_per_second": t.get("tokens_per_second"), "best_epoch": t.get("best_epoch"),
                         "partial_epochs_counted_whole": any("steps" not in h for h in t.get("history", []))},
            "history": history,
            "quality": {k: quality.get(k) for k in ("nll_nats", "nll_bits", "perplexity", "accuracy",
                                                    "event_nll_nats", "event_perplexity", "tokens", "events",
                                                    "pieces")} | accuracy[run.name],
            "ngram": {"best_order": baseline["best_order"], "perplexity": best["perplexity"],
                      "event_perplexity": best["event_perplexity"], "perplexity_ratio": ratios["perplexity_ratio"],
                      "event_perplexity_ratio": ratios["event_perplexity_ratio"],
                      "perplexity_by_order": {order: scores["perplexity"]
                                              for order, scores in baseline["orders"].items()}},
            "music": {evaluate.temperature_key(temperature): {
                name: mean_se(row["metrics"].get(name) for row in
                              music["generated"][evaluate.temperature_key(temperature)]["pieces"])
                for name in music["metric_names"]} for temperature in music["temperatures"]},
            "stop_reasons": {k: v["stop_reasons"] for k, v in music["generated"].items()},
            "samples": {k: [_relative(p, out_dir) for p in v] for k, v in samples.get(run.name, {}).items()},
        }
    names = [r.name for r in runs]
    real_music = first["music_metrics"]
    claims = judge_claims(evaluations[names[0]], evaluations[names[1]], names[:2])
    return {
        "format": "keras_music.experiment", "version": 1,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": settings,
        "names": names,
        "compared": names[:2],
        "data": {"train_pieces": prepared["pieces"]["train"], "validation_pieces": prepared["pieces"]["validation"],
                 "train_tokens": prepared["tokens"]["train"], "vocabulary_size": prepared["vocabulary_size"],
                 "representation": runs[0].config.data.representation,
                 "same_held_out": all(v == held_out[names[0]] for v in held_out.values()),
                 "held_out": held_out[names[0]]},
        "scaled": settings["scale"] is not None,
        "budgeted": settings["budget_minutes"] is not None or settings["budget_tokens"] is not None,
        "runs": out_runs,
        "metric_names": list(real_music["metric_names"]),
        "descriptions": dict(real_music["descriptions"]),
        "real": {name: mean_se(row["metrics"].get(name) for row in real_music["real"]["pieces"])
                 for name in real_music["metric_names"]},
        "rule": RULE,
        "claims": claims,
        "figures": [LEARNING_CURVES_PNG, METRICS_PNG],
    }


# ----------------------------------------------------------------------------- report


def _direction(direction: int) -> str:
    return "higher" if direction > 0 else "lower"


def scaling_lines(result: dict) -> list[str]:
    settings = result["settings"]
    names = result["names"]
    lines = ["| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label, cell):
        lines.append(f"| {label} | " + " | ".join(cell(result["runs"][n]) for n in names) + " |")

    row("config file", lambda r: f"`{r['config_file']}`")
    row("hidden_size (configured → trained)", lambda r: (
        f"{r['settings']['configured_hidden_size']} → **{r['settings']['hidden_size']}**"
        if r["settings"]["configured_hidden_size"] != r["settings"]["hidden_size"]
        else f"{r['settings']['hidden_size']} (not scaled)"))
    row("embedding_size × layers", lambda r: f"{r['settings']['embedding_size']} × {r['settings']['num_layers']}")
    row("seq_length", lambda r: str(r["settings"]["seq_length"]))
    row("batch_size", lambda r: str(r["settings"]["batch_size"]))
    row("learning_rate (schedule)", lambda r: f"{r['settings']['learning_rate']:g} ({r['settings']['lr_schedule']})")
    row("epochs allowed", lambda r: str(r["settings"]["epochs"]))
    row("time budget", lambda r: (f"{r['settings']['time_budget_minutes']:g} min"
                                  if r["settings"]["time_budget_minutes"] else "none"))
    row("early stopping patience", lambda r: str(r["settings"]["early_stopping_patience"] or "off"))
    row("settings chosen by the experiment", lambda r: ", ".join(f"`{a}`" for a in r["applied_settings"]) or "none")
    if settings["scale"] is not None:
        lines += ["", f"`--scale {settings['scale']:g}`: hidden_size = max({MIN_SCALED_HIDDEN}, "
                      f"round(configured × {settings['scale']:g})); nothing else was scaled."]
    if settings["budget_minutes"] is not None:
        lines += ["", f"`--budget {settings['budget_minutes']:g}`: every config trains for the same "
                      f"{settings['budget_minutes']:g} minute{'' if settings['budget_minutes'] == 1 else 's'} of "
                      "wall-clock time (train.time_budget_minutes), with "
                      f"train.epochs={BUDGET_EPOCHS} so that the budget ends training, a constant learning rate "
                      "(a cosine schedule needs the run's length in advance, which a wall-clock budget does not "
                      "give) and early stopping off. The evaluated model is each run's best-validation checkpoint. "
                      "The budget clock starts with training, so data preparation does not count against it; "
                      "the first epoch's graph tracing does."]
        if any(result["runs"][n]["training"].get("partial_epochs_counted_whole") for n in names):
            lines[-1] += (" Tokens seen count the last, budget-stopped epoch as a whole epoch (the run's history "
                          "records epochs, not steps), so they overstate by less than one epoch.")
    if settings["budget_tokens"] is not None:
        lines += ["", f"`--budget-tokens {settings['budget_tokens']:,}`: every config trains for "
                      f"ceil({settings['budget_tokens']:,} / tokens per epoch) epochs, so each sees at least that "
                      "many training tokens (at most one epoch more), with its own learning-rate schedule and "
                      "early stopping off."]
    if settings["overrides"]:
        lines += ["", "`--set` for every config: " + ", ".join(f"`{o}`" for o in settings["overrides"]) + "."]
    return lines


def render_report(result: dict) -> str:
    settings, data = result["settings"], result["data"]
    names, runs = result["names"], result["runs"]
    keys = [evaluate.temperature_key(t) for t in settings["temperatures"]]
    original, modified = result["compared"]
    lines = [
        "# The lab report's study, measured",
        "",
        "Configs: " + ", ".join(f"**{n}** (`{runs[n]['config_file']}`)" for n in names) + "; claims compare "
        f"**{original}** (the report's original setting) with **{modified}** (its modified setting).",
        "",
        f"Data: {', '.join(f'`{s}`' for s in settings['sources'])}; {data['train_pieces']} training pieces "
        f"({fmt.number(data['train_tokens'], grouped=True)} tokens), {data['validation_pieces']} held-out "
        f"piece{'' if data['validation_pieces'] == 1 else 's'}, split by piece with "
        f"seed {settings['seed']}; {data['representation']} representation, vocabulary "
        f"{data['vocabulary_size']}. Every config saw the same held-out pieces: "
        f"{'yes' if data['same_held_out'] else '**no** (the configs differ in a data setting)'}.",
        "",
        f"Generated: {settings['num_samples']} pieces {evaluate.length_phrase(settings['length'])} per temperature "
        f"({', '.join(keys)}) per config, no primer, sampling seed {settings['seed']}.",
        "",
    ]
    if settings.get("command"):
        lines += ["Command:", "", "```", settings["command"], "```", ""]
    caveats = []
    if result["scaled"] or result["budgeted"]:
        hidden = ", ".join(f"{n} {runs[n]['settings']['configured_hidden_size']} → "
                           f"{runs[n]['settings']['hidden_size']}" for n in names)
        caveats.append(
            "**These are not the lab report's models.** "
            + (f"Hidden sizes were scaled ({hidden}). " if result["scaled"] else "")
            + ("Training was cut to the same budget for every config. " if result["budgeted"] else "")
            + "The numbers compare the two settings as trained here; full-size models trained to convergence "
              "may rank differently. Run without --scale and --budget/--budget-tokens on a GPU for the report's "
              "models.")
    caveats += [
        "The modified setting changes four things at once (seq_length, hidden_size, batch_size, learning_rate); "
        "a difference cannot be attributed to any one of them.",
        _training_length_caveat(settings),
        f"Verdicts rest on {settings['num_samples']} pieces per temperature and a {SPREAD_FACTOR:g}-standard-error "
        "rule per measure, without correction for the number of measures: read them as a summary of these "
        "samples, not as significance tests. Generated pieces are measured in 4/4.",
    ]
    lines += ["## Caveats", ""] + [f"- {c}" for c in caveats] + ["", "## What was trained", ""]
    lines += scaling_lines(result)
    lines += ["", "## Per-config results", "",
              "Held-out numbers score every held-out piece from its start with the evaluated (best-validation) "
              "model; per event = per sonority (the piece's total NLL over its events). Accuracy per event: "
              "every token of the event is the model's top-1 choice given the true past.", "",
              "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label, cell):
        lines.append(f"| {label} | " + " | ".join(cell(runs[n]) for n in names) + " |")

    row("parameters", lambda r: fmt.number(r["training"]["parameters"], grouped=True))
    row("epochs (stopped by)", lambda r: f"{r['training']['epochs']} ({r['training']['stopped']})")
    row("tokens seen", lambda r: fmt.number(r["training"]["tokens_seen"], grouped=True))
    row("training time", lambda r: fmt.minutes(r["training"]["train_seconds"]))
    row("wall time (incl. data and final evaluation)", lambda r: fmt.minutes(r["training"]["wall_seconds"]))
    row("tokens per second", lambda r: fmt.number(r["training"]["tokens_per_second"], 0, grouped=True))
    row("held-out loss (NLL nats/token)", lambda r: fmt.number(r["quality"]["nll_nats"], grouped=True))
    row("held-out perplexity per token", lambda r: fmt.number(r["quality"]["perplexity"], grouped=True))
    row("held-out accuracy per token", lambda r: fmt.number(r["quality"]["accuracy"], grouped=True))
    row("held-out NLL nats/event", lambda r: fmt.number(r["quality"]["event_nll_nats"], grouped=True))
    row("held-out perplexity per event", lambda r: fmt.number(r["quality"]["event_perplexity"], grouped=True))
    row("held-out accuracy per event", lambda r: fmt.number(r["quality"].get("event_accuracy"), grouped=True))
    row("best n-gram baseline (order)", lambda r: f"{r['ngram']['best_order']}-gram")
    row("n-gram perplexity per token by order",
        lambda r: ", ".join(f"{order}: {fmt.number(value, grouped=True)}" for order, value in r["ngram"]["perplexity_by_order"].items()))
    row("best n-gram perplexity per token / per event",
        lambda r: f"{fmt.number(r['ngram']['perplexity'], grouped=True)} / {fmt.number(r['ngram']['event_perplexity'], grouped=True)}")
    row("LSTM / n-gram perplexity per token (below 1: LSTM better)", lambda r: fmt.number(r["ngram"]["perplexity_ratio"], grouped=True))
    row("LSTM / n-gram perplexity per event", lambda r: fmt.number(r["ngram"]["event_perplexity_ratio"], grouped=True))
    row("full evaluation", lambda r: f"[{r['evaluation']}]({r['evaluation']})")
    lines += ["", "## Learning curves", "",
              "Validation loss against training tokens seen and against training time, both configs on one "
              "plot (from each run's metrics.json history).", "",
              f"![learning curves]({LEARNING_CURVES_PNG})", "",
              "## Music metrics by temperature", "",
              "Mean ± standard deviation over pieces (n/a values left out); the last column is the held-out "
              "real pieces, the same for every config.", "",
              "| metric | config | " + " | ".join(f"T = {k}" for k in keys) + " | held-out real |",
              "|---|---|" + "---|" * (len(keys) + 1)]
    for metric in result["metric_names"]:
        for name in names:
            cells = [fmt.mean_std(runs[name]["music"][k][metric]) for k in keys]
            lines.append(f"| {metric} | {name} | " + " | ".join(cells) + f" | {fmt.mean_std(result['real'][metric])} |")
    lines += ["", f"![metrics by temperature]({METRICS_PNG})", "", "## The lab report's claims", "",
              f"Rule: {result['rule']}", "",
              "| # | claim (modified vs original) | measured as | verdict |", "|---|---|---|---|"]
    for claim in result["claims"]:
        lines.append(f"| {claim['id']} | {claim['claim']} | {claim['operationalisation']} | {claim['verdict']} |")
    lines += ["", "### Measures behind the verdicts", "",
              f"| # | measure | expected for {modified} | {original} mean (n) | {modified} mean (n) "
              f"| difference | {SPREAD_FACTOR:g} × SE | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    slopes = []
    for claim in result["claims"]:
        for m in claim["measures"]:
            if "slope" in m:
                slopes.append((claim["id"], m))
                continue
            label = m["measure"]
            a, b = m["original"], m["modified"]
            if label == "held_out_perplexity":
                label = "held-out perplexity (paired per-piece NLL nats/token)"
                a_text = f"ppl {fmt.number(a.get('perplexity'), grouped=True)}; NLL {fmt.number(a['mean'], grouped=True)} ({a['n']})"
                b_text = f"ppl {fmt.number(b.get('perplexity'), grouped=True)}; NLL {fmt.number(b['mean'], grouped=True)} ({b['n']})"
            else:
                a_text, b_text = f"{fmt.number(a['mean'], grouped=True)} ({a['n']})", f"{fmt.number(b['mean'], grouped=True)} ({b['n']})"
            spread = None if m["se"] is None else SPREAD_FACTOR * m["se"]
            lines.append(f"| {claim['id']} | {label} | {_direction(m['direction'])} | {a_text} | {b_text} "
                         f"| {fmt.signed(m['difference'])} | {fmt.number(spread, grouped=True)} | {m['verdict']} |")
    if slopes:
        lines += ["", "| # | config | measure | expected with temperature | slope per unit of temperature (n) "
                      f"| {SPREAD_FACTOR:g} × SE | verdict |", "|---|---|---|---|---|---|---|"]
        for claim_id, m in slopes:
            spread = None if m["se"] is None else SPREAD_FACTOR * m["se"]
            expected = "rises" if m["direction"] > 0 else "falls"
            lines.append(f"| {claim_id} | {m['config']} | {m['measure']} | {expected} | {fmt.signed(m['slope'])} "
                         f"({m['n']}) | {fmt.number(spread, grouped=True)} | {m['verdict']} |")
    lines += ["", "## Listening", ""]
    listed = False
    for name in names:
        for key, paths in runs[name]["samples"].items():
            if paths:
                listed = True
                lines.append(f"- {name}, T = {key}: " + ", ".join(f"[{os.path.basename(p)}]({p})" for p in paths))
    if not listed:
        lines.append("No sample pieces were written (--write-samples 0).")
    if result.get("listening"):
        from keras_music import listening

        lines += ["", "Blind A/B votes from `python -m keras_music.studio` (95% Wilson intervals; exact two-sided "
                      "binomial test against 0.5):", ""] + listening.report_lines(result["listening"])
    else:
        lines += ["", "No blind listening votes yet: serve both runs with `python -m keras_music.studio --run-dir "
                      "OUT/<original> --run-dir OUT/<modified>`, vote, and rerun this command with the same --out "
                      "to add them here."]
    lines += ["", "Every run directory is an ordinary keras_music run: generate more with "
                  "`python -m keras_music.generate --run-dir OUT/<config>`, export with "
                  "`python -m keras_music.export --run-dir OUT/<config>`.", "", "## Metrics", ""]
    lines += [f"- `{name}`: {text}." for name, text in result["descriptions"].items()]
    if result.get("seconds") is not None:
        lines += ["", f"The whole study took {fmt.minutes(result['seconds'])}."]
    return "\n".join(lines) + "\n"


def _training_length_caveat(settings: dict) -> str:
    if settings["budget_minutes"] is not None:
        return ("A wall-clock budget favours the setting that processes more tokens per second (see tokens per "
                "second below); it is not the lab report's training length.")
    if settings["budget_tokens"] is not None:
        return ("A token budget gives every setting the same amount of data whatever its speed; it favours the "
                "setting that learns more per token and is not the lab report's training length.")
    return ("Each config trained for its own train.epochs (with its early stopping), so they saw different numbers "
            "of tokens and took different times (see the table).")


# ----------------------------------------------------------------------------- plots


def plot_learning_curves(result: dict, out_path: str) -> None:
    """Validation (solid) and training (dotted) loss of every config against tokens seen and training time."""
    figure, (by_tokens, by_time) = plots.pyplot().subplots(1, 2, figsize=(11, 4.2))
    for index, name in enumerate(result["names"]):
        history = result["runs"][name]["history"]
        if not history:
            continue
        color = f"C{index}"
        tokens = [h["tokens_seen"] for h in history]
        minutes = [fmt.nan_if_none(h["seconds"]) / 60 for h in history]
        for axis, x in ((by_tokens, tokens), (by_time, minutes)):
            axis.plot(x, [fmt.nan_if_none(h["val_loss"]) for h in history], marker="o", color=color, label=f"{name} validation")
            axis.plot(x, [fmt.nan_if_none(h["loss"]) for h in history], linestyle=":", color=color, label=f"{name} training")
    by_tokens.set_xlabel("training tokens seen")
    by_time.set_xlabel("training time (minutes)")
    for axis in (by_tokens, by_time):
        axis.set_ylabel("cross-entropy (nats/token)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("learning curves: " + " vs ".join(
        f"{n} (hidden {result['runs'][n]['settings']['hidden_size']})" for n in result["names"]))
    figure.tight_layout()
    plots.save(figure, out_path, dpi=90)


def plot_metrics_by_temperature(result: dict, out_path: str) -> None:
    """Per metric: each config's mean ± standard error against temperature, the held-out real mean dashed."""
    names = result["metric_names"]
    temperatures = result["settings"]["temperatures"]
    keys = [evaluate.temperature_key(t) for t in temperatures]
    figure, axes = plots.metric_grid(len(names))
    for ax, metric in zip(axes.flat, names):
        for index, config in enumerate(result["names"]):
            summaries = [result["runs"][config]["music"][k][metric] for k in keys]
            ax.errorbar(temperatures, [fmt.nan_if_none(s["mean"]) for s in summaries],
                        yerr=[0.0 if s["se"] is None else s["se"] for s in summaries],
                        marker="o", capsize=3, color=f"C{index}", label=config)
        real = fmt.nan_if_none(result["real"][metric]["mean"])
        if math.isfinite(real):
            ax.axhline(real, color="0.3", linestyle="--", label="held-out real")
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("temperature", fontsize=8)
        ax.tick_params(labelsize=8)
    plots.finish_metric_grid(figure, axes, len(names), "music metrics against temperature (mean ± standard error; dashed: held-out real mean)", out_path, right=0.9)


# ----------------------------------------------------------------------------- command line


def scale_factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a factor in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"--scale must be in (0, 1] (e.g. 0.125 for 1/8 of hidden_size), got {text}")
    return value


def budget_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of minutes, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"--budget must be a positive number of minutes, got {text}")
    return value


def parse_args(argv=None):

    parser = argparse.ArgumentParser(
        prog="python -m keras_music.experiment",
        description="Reproduce the lab report's study: train each config on the same data, split and seed "
                    "(OUT/<config-name>/ are ordinary run directories), sample the same number of pieces per "
                    "temperature, evaluate everything, and write OUT/report.md, OUT/report.json and plots with a "
                    "verdict on each of the report's claims.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", required=True, metavar="FILE.yaml",
                        help="config files, the report's original setting first and its modified setting second "
                             "(e.g. configs/original.yaml configs/modified.yaml); more are trained and tabulated too")
    parser.add_argument("--data", action="append", default=[], metavar="SRC",
                        help="training data for every config (repeatable; replaces data.sources), as for "
                             "keras_music.train (default: the configs' sources, the embedded Bach chorales)")
    parser.add_argument("--scale", type=scale_factor, default=None, metavar="F",
                        help=f"shrink model.hidden_size to max({MIN_SCALED_HIDDEN}, round(hidden_size * F)) for a "
                             "laptop CPU; nothing else changes (default: full size)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=budget_minutes, default=None, metavar="MINUTES",
                        help="the same wall-clock training budget for every config (constant learning rate, "
                             "early stopping off; default: each config's own epochs)")
    budget.add_argument("--budget-tokens", type=cli.positive_int, default=None, metavar="N",
                        help="the same number of training tokens for every config: epochs = ceil(N / tokens "
                             "per epoch), early stopping off")
    parser.add_argument("--temperatures", type=cli.temperature, nargs="+", default=None, metavar="T",
                        help="sampling temperatures (default: "
                             f"{' '.join(f'{t:g}' for t in DEFAULT_TEMPERATURES)})")
    parser.add_argument("--num-samples", type=cli.positive_int, default=DEFAULT_NUM_SAMPLES, metavar="N",
                        help=f"pieces generated per temperature and config (default: {DEFAULT_NUM_SAMPLES})")
    parser.add_argument("--length", type=cli.piece_length, default=DEFAULT_LENGTH, metavar="EVENTS|matched",
                        help="events (sonorities) per generated piece, or 'matched' (each as long as a "
                             f"held-out piece) (default: {DEFAULT_LENGTH})")
    parser.add_argument("--seed", type=cli.non_negative_int, default=0, metavar="S",
                        help="seed for the data split, training and sampling, the same for every config (default: 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config key for every config, e.g. --set model.embedding_size=32 "
                             "(repeatable; wins over the files and over what --budget chooses)")
    parser.add_argument("--write-samples", type=cli.non_negative_int, default=DEFAULT_WRITE_SAMPLES, metavar="N",
                        help="generated pieces per temperature and config also written as MIDI/MusicXML for "
                             f"listening, into OUT/<config>/generated/ (default: {DEFAULT_WRITE_SAMPLES})")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output directory (default: runs/experiment-<timestamp>); rerun with the same "
                             "--out to resume")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or training log lines (stage lines still go to stderr)")
    args = parser.parse_args(argv)
    if len(args.configs) < 2:
        parser.error(f"argument --configs: the study compares at least two configs, got {len(args.configs)}")
    return parser, args


def main(argv=None):

    parser, args = parse_args(argv)
    command = "python -m keras_music.experiment " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    with cli.user_errors(parser):
        out_dir = args.out or run_lib.timestamped_dir("runs", "experiment-")
        try:
            result = run_study(args.configs, out_dir, args.data, args.overrides, args.scale, args.budget,
                               args.budget_tokens, args.temperatures or DEFAULT_TEMPERATURES, args.num_samples,
                               args.length, args.seed, args.write_samples, show_progress=not args.quiet,
                               command=command)
        except ExperimentError as error:
            parser.error(str(error))
        for claim in result["claims"]:
            print(f"claim {claim['id']} ({claim['claim']}): {claim['verdict']}")
        print(f"report: {storage.join(out_dir, REPORT_MD)}")
    cli.finish(0)


if __name__ == "__main__":
    main()
