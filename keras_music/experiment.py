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

from keras_music import cli, config as config_lib, defaults, evaluate, evaluate_likelihood as likelihood, experiment_report
from keras_music import run as run_lib, storage
from keras_music.evaluate_music import EvaluationSettings, temperature_key
from keras_music.experiment_claims import RULE, judge_claims, mean_se
from keras_music.experiment_configs import (MIN_SCALED_HIDDEN, ExperimentError, StudyRun, apply_token_budget,
                                           resolve_runs, tokens_per_epoch)
from keras_music.experiment_report import LEARNING_CURVES_PNG, METRICS_PNG
from keras_music.sampling import SamplingSettings
from keras_music import listening, train
from keras_music.generate import Generator

DEFAULT_TEMPERATURES = defaults.TEMPERATURES
DEFAULT_NUM_SAMPLES = 20
DEFAULT_LENGTH = cli.MATCHED
DEFAULT_WRITE_SAMPLES = 2

REPORT_MD = "report.md"
REPORT_JSON = "report.json"

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


# ----------------------------------------------------------------------------- running


class RecordingGenerator:
    """Passes evaluate_run's generate calls to a real Generator and keeps the pieces per temperature."""

    def __init__(self, generator):
        self.generator = generator
        self.pieces: dict[str, list] = {}

    def generate(self, num_samples=1, sampling: SamplingSettings | None = None, **kwargs):
        sampling = SamplingSettings() if sampling is None else sampling
        pieces = self.generator.generate(num_samples, sampling, **kwargs)
        self.pieces[temperature_key(sampling.temperature)] = pieces
        return pieces


def _train_run(run: StudyRun, budget_tokens: int | None, *, user_keys: set, show_progress: bool, log) -> dict:
    import keras

    storage.makedirs(run.run_dir)
    prepared = train.prepare_run(run.config, run.run_dir, show_progress=show_progress, log=log)
    per_epoch = tokens_per_epoch(run.config, prepared)
    if budget_tokens is not None and "train.epochs" not in user_keys:
        apply_token_budget(run, budget_tokens, per_epoch=per_epoch)
    keras.backend.clear_session()
    metrics_json = train.train(run.config, run.run_dir, show_progress=show_progress, log=log)
    return dict(metrics_json, tokens_per_epoch=per_epoch)


def _train_all(runs, budget_tokens, *, overrides, show_progress: bool, log) -> dict:
    user_keys = {config_lib.parse_override(text)[0] for text in overrides}
    trained = {}
    for run in runs:
        log(f"[{run.name}] training into {run.run_dir} "
            f"({'; '.join(run.applied) or 'settings as in ' + run.config_file})")
        # --quiet keeps the experiment's own stage lines but drops train's per-epoch ones.
        train_log = (lambda *a, n=run.name: log(f"[{n}]", *a)) if show_progress else (lambda *a: None)
        trained[run.name] = _train_run(run, budget_tokens, user_keys=user_keys, show_progress=show_progress,
                                       log=train_log)
    return trained


def _write_listening_samples(run: StudyRun, recorder: RecordingGenerator, *, count: int, log) -> dict:
    written = {}
    if count < 1:
        return written
    for key, pieces in recorder.pieces.items():
        out_dir = run_lib.path(run.run_dir, run_lib.GENERATED, f"experiment-T{key}")
        try:
            paths = recorder.generator.write(pieces[:count], out_dir)
        except Exception as error:  # listening copies are a convenience; the measurements are already taken
            log(f"{run.name}: could not write sample pieces at T = {key}: {type(error).__name__}: {error}")
            continue
        written[key] = [p for p in paths if p.endswith(".mid")]
    return written


def _evaluate_all(runs, study: StudySettings, *, show_progress: bool, log):
    """Each run's evaluation, event accuracy and listening samples, keyed by run name."""
    evaluations, samples, accuracy = {}, {}, {}
    settings = EvaluationSettings(num_samples=study.num_samples, length=study.length, temperatures=study.temperatures,
                                  seed=study.seed or 0, orders=likelihood.DEFAULT_ORDERS)
    for run in runs:
        log(f"[{run.name}] sampling {study.num_samples} pieces at each of {len(study.temperatures)} temperatures "
            "and evaluating")
        recorder = RecordingGenerator(Generator(run.run_dir))
        evaluations[run.name] = evaluate.evaluate_run(
            run.run_dir, settings, out_dir=run_lib.path(run.run_dir, run_lib.EVALUATION),
            show_progress=show_progress, generator=recorder)
        accuracy[run.name] = likelihood.event_accuracy(run.run_dir)
        samples[run.name] = _write_listening_samples(run, recorder, count=study.write_samples, log=log)
    return evaluations, accuracy, samples


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """What the study trains and measures: the configs (the report's original setting first), the data and
    overrides every config shares, the scale and budget, and the sampling it evaluates with.

    `seed` None leaves each config's train.seed; temperatures are kept once each, in order.
    """

    configs: tuple[str, ...]
    sources: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    scale: float | None = None
    budget_minutes: float | None = None
    budget_tokens: int | None = None
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    num_samples: int = DEFAULT_NUM_SAMPLES
    length: int | str = DEFAULT_LENGTH
    seed: int | None = 0
    write_samples: int = DEFAULT_WRITE_SAMPLES

    def __post_init__(self):
        if len(self.configs) < 2:
            raise ExperimentError(f"the study compares at least two configs, got {len(self.configs)}")
        for name in ("configs", "sources", "overrides"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "temperatures", tuple(float(t) for t in dict.fromkeys(self.temperatures)))


def run_study(settings: StudySettings, out_dir: str, *, show_progress: bool = True, log=None,
              command: str = "") -> dict:
    """Train every config into OUT/<name>, evaluate each, and write report.md, report.json and plots into OUT."""
    log = log or (lambda *a: print(*a, file=sys.stderr))
    started = time.time()
    overrides = list(settings.overrides)
    if settings.seed is not None:
        overrides.append(f"train.seed={int(settings.seed)}")
    runs = resolve_runs(settings.configs, out_dir, sources=settings.sources, overrides=overrides,
                        scale=settings.scale, budget_minutes=settings.budget_minutes,
                        budget_tokens=settings.budget_tokens)
    storage.makedirs(out_dir)
    trained = _train_all(runs, settings.budget_tokens, overrides=overrides, show_progress=show_progress, log=log)
    evaluations, accuracy, samples = _evaluate_all(runs, settings, show_progress=show_progress, log=log)
    result = assemble(runs, trained, evaluations=evaluations, accuracy=accuracy, samples=samples, out_dir=out_dir,
                      settings={
        "configs": [r.config_file for r in runs], "sources": list(runs[0].config.data.sources),
        "overrides": [o for o in overrides if not o.startswith("train.seed=")], "scale": settings.scale,
        "budget_minutes": settings.budget_minutes, "budget_tokens": settings.budget_tokens,
        "temperatures": list(settings.temperatures), "num_samples": settings.num_samples, "length": settings.length,
        "seed": settings.seed or 0, "ngram_orders": list(likelihood.DEFAULT_ORDERS), "command": command})
    experiment_report.plot_learning_curves(result, storage.join(out_dir, LEARNING_CURVES_PNG))
    experiment_report.plot_metrics_by_temperature(result, storage.join(out_dir, METRICS_PNG))
    result["seconds"] = round(time.time() - started, 1)
    result["listening"] = listening_results(out_dir, [run.run_dir for run in runs[:2]])
    result = storage.json_ready(result)
    storage.write_json(storage.join(out_dir, REPORT_JSON), result)
    storage.write_text(storage.join(out_dir, REPORT_MD), experiment_report.render_study(result))
    return result


def rerender_report(out_dir: str) -> dict:
    """OUT/report.md and report.json again from the study's report.json, with the blind A/B votes gathered
    since; nothing is trained, sampled or evaluated."""
    path = storage.join(out_dir, REPORT_JSON)
    try:
        result = storage.read_json(path)
    except (OSError, ValueError) as error:
        raise ExperimentError(f"{path} cannot be read ({type(error).__name__}): --report-only re-renders the report "
                              "of a study that finished; run the study first with --configs ... --out "
                              f"{out_dir}") from None
    if not isinstance(result, dict) or result.get("format") != "keras_music.experiment":
        raise ExperimentError(f"{path} is not a study's report (format keras_music.experiment)")
    run_dirs = [storage.join(out_dir, result["runs"][name]["run_dir"]) for name in result["compared"]]
    result["listening"] = listening_results(out_dir, run_dirs)
    storage.write_json(path, result)
    storage.write_text(storage.join(out_dir, REPORT_MD), experiment_report.render_study(result))
    return result


def listening_results(out_dir: str, run_dirs) -> list[dict]:
    """Blind A/B results between the two compared runs, from the studio's votes in OUT/listening.sqlite."""
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


# ----------------------------------------------------------------------------- the report's numbers


def _history(trained: dict, config: config_lib.Config) -> list[dict]:
    """Each epoch's losses with the training tokens and seconds spent up to its end."""
    elapsed, tokens, history = 0.0, 0, []
    for h in trained.get("history", []):
        elapsed += h.get("seconds", 0.0)
        # An epoch cut short by the time budget is only partly trained; train.py records
        # whole epochs unless its history carries the steps each epoch actually ran.
        steps = h.get("steps")
        tokens += (int(steps) * config.train.batch_size * config.data.seq_length if steps is not None
                   else trained["tokens_per_epoch"])
        history.append({"epoch": int(h["epoch"]), "tokens_seen": tokens, "seconds": elapsed,
                        "loss": h.get("loss"), "val_loss": h.get("val_loss")})
    return history


def _settings(run: StudyRun) -> dict:
    c = run.config
    return {"seq_length": c.data.seq_length, "hidden_size": c.model.hidden_size,
            "configured_hidden_size": run.configured_hidden_size,
            "embedding_size": c.model.embedding_size, "num_layers": c.model.num_layers,
            "dropout": c.model.dropout, "batch_size": c.train.batch_size,
            "learning_rate": c.train.learning_rate, "lr_schedule": c.train.lr_schedule,
            "epochs": c.train.epochs, "time_budget_minutes": c.train.time_budget_minutes,
            "early_stopping_patience": c.train.early_stopping_patience, "seed": c.train.seed}


def _training(t: dict) -> dict:
    return {"parameters": t.get("parameters"), "epochs": t.get("epochs"), "stopped": t.get("stopped"),
            "tokens_per_epoch": t["tokens_per_epoch"], "tokens_seen": t.get("tokens_seen"),
            "train_seconds": t.get("train_seconds"), "wall_seconds": t.get("wall_seconds"),
            "tokens_per_second": t.get("tokens_per_second"), "best_epoch": t.get("best_epoch"),
            "partial_epochs_counted_whole": any("steps" not in h for h in t.get("history", []))}


def _quality(evaluation: dict, accuracy: dict) -> dict:
    quality = evaluation["model_quality"]
    return {k: quality.get(k) for k in ("nll_nats", "nll_bits", "perplexity", "accuracy", "event_nll_nats",
                                        "event_perplexity", "tokens", "events", "pieces")} | accuracy


def _ngram(evaluation: dict) -> dict:
    baseline, ratios = evaluation["ngram"], evaluation["lstm_vs_ngram"]
    best = baseline["orders"][str(baseline["best_order"])]
    return {"best_order": baseline["best_order"], "perplexity": best["perplexity"],
            "event_perplexity": best["event_perplexity"], "perplexity_ratio": ratios["perplexity_ratio"],
            "event_perplexity_ratio": ratios["event_perplexity_ratio"],
            "perplexity_by_order": {order: scores["perplexity"] for order, scores in baseline["orders"].items()}}


def _music_by_temperature(music: dict) -> dict:
    """Mean and standard error of every metric over the generated pieces of each temperature."""
    return {temperature_key(temperature): {
        name: mean_se(row["metrics"].get(name) for row in music["generated"][temperature_key(temperature)]["pieces"])
        for name in music["metric_names"]} for temperature in music["temperatures"]}


def _run_summary(run: StudyRun, trained: dict, *, evaluation: dict, accuracy: dict, samples: dict,
                 out_dir: str) -> dict:
    music = evaluation["music_metrics"]
    return {
        "config_file": run.config_file,
        "run_dir": _relative(run.run_dir, out_dir),
        "evaluation": _relative(run_lib.path(run.run_dir, run_lib.EVALUATION, run_lib.EVALUATION_MD), out_dir),
        "applied_settings": list(run.applied),
        "settings": _settings(run),
        "training": _training(trained),
        "history": _history(trained, run.config),
        "quality": _quality(evaluation, accuracy),
        "ngram": _ngram(evaluation),
        "music": _music_by_temperature(music),
        "stop_reasons": {k: v["stop_reasons"] for k, v in music["generated"].items()},
        "samples": {k: [_relative(p, out_dir) for p in v] for k, v in samples.items()},
    }


def assemble(runs, trained, *, evaluations, accuracy, samples, out_dir, settings) -> dict:
    """The JSON-ready summary the report and plots are drawn from."""
    names = [r.name for r in runs]
    held_out = {r.name: run_lib.held_out_names(r.run_dir) for r in runs}
    prepared = run_lib.load_prepared(runs[0].run_dir, required=True)
    real_music = evaluations[names[0]]["music_metrics"]
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
        "runs": {run.name: _run_summary(run, trained[run.name], evaluation=evaluations[run.name],
                                        accuracy=accuracy[run.name],
                                        samples=samples.get(run.name, {}), out_dir=out_dir) for run in runs},
        "metric_names": list(real_music["metric_names"]),
        "descriptions": dict(real_music["descriptions"]),
        "real": {name: mean_se(row["metrics"].get(name) for row in real_music["real"]["pieces"])
                 for name in real_music["metric_names"]},
        "rule": RULE,
        "claims": judge_claims(evaluations[names[0]], evaluations[names[1]], names=names[:2]),
        "figures": [LEARNING_CURVES_PNG, METRICS_PNG],
    }


# ----------------------------------------------------------------------------- command line


scale_factor = cli.number_type("scale_factor", float, accept=lambda value: 0 < value <= 1,
                               expected="a factor in (0, 1]",
                               out_of_range="--scale must be in (0, 1] (e.g. 0.125 for 1/8 of hidden_size), got {text}")
budget_minutes = cli.number_type("budget_minutes", float, accept=lambda value: 0 < value < math.inf,
                                 expected="a positive number of minutes",
                                 out_of_range="--budget must be a positive number of minutes, got {text}")


def parse_args(argv=None):

    parser = argparse.ArgumentParser(
        prog="python -m keras_music.experiment",
        description="Reproduce the lab report's study: train each config on the same data, split and seed "
                    "(OUT/<config-name>/ are ordinary run directories), sample the same number of pieces per "
                    "temperature, evaluate everything, and write OUT/report.md, OUT/report.json and plots with a "
                    "verdict on each of the report's claims.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=None, metavar="FILE.yaml",
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
    parser.add_argument("--report-only", action="store_true",
                        help="re-render OUT/report.md (and report.json) of a finished study with the blind "
                             "listening votes gathered since in OUT/listening.sqlite; trains nothing (needs --out)")
    args = parser.parse_args(argv)
    if args.report_only:
        if args.out is None:
            parser.error("argument --report-only: needs --out DIR, the study's output directory")
        return parser, args
    if args.configs is None:
        parser.error("the following arguments are required: --configs")
    if len(args.configs) < 2:
        parser.error(f"argument --configs: the study compares at least two configs, got {len(args.configs)}")
    return parser, args


def main(argv=None):

    parser, args = parse_args(argv)
    command = "python -m keras_music.experiment " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    if args.report_only:
        with cli.user_errors(parser):
            result = rerender_report(args.out)
            votes = sum(r["votes"] for r in result["listening"])
            print(f"listening: {votes} vote{'s' if votes != 1 else ''} in {len(result['listening'])} comparison"
                  f"{'s' if len(result['listening']) != 1 else ''}")
            print(f"report: {storage.join(args.out, REPORT_MD)}")
        cli.finish(0)
    with cli.user_errors(parser):
        out_dir = args.out or run_lib.timestamped_dir("runs", "experiment-")
        settings = StudySettings(configs=args.configs, sources=args.data, overrides=args.overrides,
                                 scale=args.scale, budget_minutes=args.budget, budget_tokens=args.budget_tokens,
                                 temperatures=args.temperatures or DEFAULT_TEMPERATURES,
                                 num_samples=args.num_samples, length=args.length, seed=args.seed,
                                 write_samples=args.write_samples)
        result = run_study(settings, out_dir, show_progress=not args.quiet, command=command)
        for claim in result["claims"]:
            print(f"claim {claim['id']} ({claim['claim']}): {claim['verdict']}")
        print(f"report: {storage.join(out_dir, REPORT_MD)}")
    cli.finish(0)


if __name__ == "__main__":
    main()
