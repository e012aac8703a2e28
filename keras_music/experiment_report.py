"""report.md of the study and its figures, drawn from run_study's result."""

from __future__ import annotations

import math
import os

from keras_music import formatting as fmt, plots
from keras_music import listening
from keras_music.evaluate_music import temperature_key
from keras_music.evaluate_report import length_phrase
from keras_music.experiment_claims import SPREAD_FACTOR
from keras_music.experiment_configs import BUDGET_EPOCHS, MIN_SCALED_HIDDEN

# The study's figures, linked from its report.
LEARNING_CURVES_PNG = "learning_curves.png"
METRICS_PNG = "metrics_by_temperature.png"


def _config_table(header: str, result: dict, *, rows) -> list[str]:
    """A markdown table with one column per config: `rows` are (label, cell of a run's summary)."""
    names = result["names"]
    lines = [header + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(result["runs"][n]) for n in names) + " |")
    return lines


def _hidden_size(run: dict) -> str:
    settings = run["settings"]
    if settings["configured_hidden_size"] != settings["hidden_size"]:
        return f"{settings['configured_hidden_size']} → **{settings['hidden_size']}**"
    return f"{settings['hidden_size']} (not scaled)"


WHAT_WAS_TRAINED = (
    ("config file", lambda r: f"`{r['config_file']}`"),
    ("hidden_size (configured → trained)", _hidden_size),
    ("embedding_size × layers", lambda r: f"{r['settings']['embedding_size']} × {r['settings']['num_layers']}"),
    ("seq_length", lambda r: str(r["settings"]["seq_length"])),
    ("batch_size", lambda r: str(r["settings"]["batch_size"])),
    ("learning_rate (schedule)", lambda r: f"{r['settings']['learning_rate']:g} ({r['settings']['lr_schedule']})"),
    ("epochs allowed", lambda r: str(r["settings"]["epochs"])),
    ("time budget", lambda r: (f"{r['settings']['time_budget_minutes']:g} min"
                               if r["settings"]["time_budget_minutes"] else "none")),
    ("early stopping patience", lambda r: str(r["settings"]["early_stopping_patience"] or "off")),
    ("settings chosen by the experiment", lambda r: ", ".join(f"`{a}`" for a in r["applied_settings"]) or "none"),
)

PER_CONFIG_RESULTS = (
    ("parameters", lambda r: fmt.number(r["training"]["parameters"], grouped=True)),
    ("epochs (stopped by)", lambda r: f"{r['training']['epochs']} ({r['training']['stopped']})"),
    ("tokens seen", lambda r: fmt.number(r["training"]["tokens_seen"], grouped=True)),
    ("training time", lambda r: fmt.minutes(r["training"]["train_seconds"])),
    ("wall time (incl. data and final evaluation)", lambda r: fmt.minutes(r["training"]["wall_seconds"])),
    ("tokens per second", lambda r: fmt.number(r["training"]["tokens_per_second"], 0, grouped=True)),
    ("held-out loss (NLL nats/token)", lambda r: fmt.number(r["quality"]["nll_nats"], grouped=True)),
    ("held-out perplexity per token", lambda r: fmt.number(r["quality"]["perplexity"], grouped=True)),
    ("held-out accuracy per token", lambda r: fmt.number(r["quality"]["accuracy"], grouped=True)),
    ("held-out NLL nats/event", lambda r: fmt.number(r["quality"]["event_nll_nats"], grouped=True)),
    ("held-out perplexity per event", lambda r: fmt.number(r["quality"]["event_perplexity"], grouped=True)),
    ("held-out accuracy per event", lambda r: fmt.number(r["quality"].get("event_accuracy"), grouped=True)),
    ("best n-gram baseline (order)", lambda r: f"{r['ngram']['best_order']}-gram"),
    ("n-gram perplexity per token by order",
     lambda r: ", ".join(f"{order}: {fmt.number(value, grouped=True)}"
                         for order, value in r["ngram"]["perplexity_by_order"].items())),
    ("best n-gram perplexity per token / per event",
     lambda r: f"{fmt.number(r['ngram']['perplexity'], grouped=True)} / "
               f"{fmt.number(r['ngram']['event_perplexity'], grouped=True)}"),
    ("LSTM / n-gram perplexity per token (below 1: LSTM better)",
     lambda r: fmt.number(r["ngram"]["perplexity_ratio"], grouped=True)),
    ("LSTM / n-gram perplexity per event", lambda r: fmt.number(r["ngram"]["event_perplexity_ratio"], grouped=True)),
    ("full evaluation", lambda r: f"[{r['evaluation']}]({r['evaluation']})"),
)


def _budget_minutes_note(result: dict) -> str:
    minutes = result["settings"]["budget_minutes"]
    note = (f"`--budget {minutes:g}`: every config trains for the same {minutes:g} "
            f"minute{'' if minutes == 1 else 's'} of wall-clock time (train.time_budget_minutes), with "
            f"train.epochs={BUDGET_EPOCHS} so that the budget ends training, a constant learning rate "
            "(a cosine schedule needs the run's length in advance, which a wall-clock budget does not "
            "give) and early stopping off. The evaluated model is each run's best-validation checkpoint. "
            "The budget clock starts with training, so data preparation does not count against it; "
            "the first epoch's graph tracing does.")
    if any(result["runs"][n]["training"].get("partial_epochs_counted_whole") for n in result["names"]):
        note += (" Tokens seen count the last, budget-stopped epoch as a whole epoch (the run's history "
                 "records epochs, not steps), so they overstate by less than one epoch.")
    return note


def scaling_lines(result: dict) -> list[str]:
    """The "What was trained" table and a note on each setting the study chose for every config."""
    settings = result["settings"]
    lines = _config_table("| setting | ", result, rows=WHAT_WAS_TRAINED)
    if settings["scale"] is not None:
        lines += ["", f"`--scale {settings['scale']:g}`: hidden_size = max({MIN_SCALED_HIDDEN}, "
                      f"round(configured × {settings['scale']:g})); nothing else was scaled."]
    if settings["budget_minutes"] is not None:
        lines += ["", _budget_minutes_note(result)]
    if settings["budget_tokens"] is not None:
        lines += ["", f"`--budget-tokens {settings['budget_tokens']:,}`: every config trains for "
                      f"ceil({settings['budget_tokens']:,} / tokens per epoch) epochs, so each sees at least that "
                      "many training tokens (at most one epoch more), with its own learning-rate schedule and "
                      "early stopping off."]
    if settings["overrides"]:
        lines += ["", "`--set` for every config: " + ", ".join(f"`{o}`" for o in settings["overrides"]) + "."]
    return lines


def _study_header(result: dict) -> list[str]:
    settings, data, runs = result["settings"], result["data"], result["runs"]
    original, modified = result["compared"]
    keys = [temperature_key(t) for t in settings["temperatures"]]
    lines = [
        "# The lab report's study, measured",
        "",
        "Configs: " + ", ".join(f"**{n}** (`{runs[n]['config_file']}`)" for n in result["names"])
        + "; claims compare "
        f"**{original}** (the report's original setting) with **{modified}** (its modified setting).",
        "",
        f"Data: {', '.join(f'`{s}`' for s in settings['sources'])}; {data['train_pieces']} training pieces "
        f"({fmt.number(data['train_tokens'], grouped=True)} tokens), {data['validation_pieces']} held-out "
        f"piece{'' if data['validation_pieces'] == 1 else 's'}, split by piece with "
        f"seed {settings['seed']}; {data['representation']} representation, vocabulary "
        f"{data['vocabulary_size']}. Every config saw the same held-out pieces: "
        f"{'yes' if data['same_held_out'] else '**no** (the configs differ in a data setting)'}.",
        "",
        f"Generated: {settings['num_samples']} pieces {length_phrase(settings['length'])} per temperature "
        f"({', '.join(keys)}) per config, no primer, sampling seed {settings['seed']}.",
    ]
    if settings.get("command"):
        lines += ["", "Command:", "", "```", settings["command"], "```"]
    return lines


def _training_length_caveat(settings: dict) -> str:
    if settings["budget_minutes"] is not None:
        return ("A wall-clock budget favours the setting that processes more tokens per second (see tokens per "
                "second below); it is not the lab report's training length.")
    if settings["budget_tokens"] is not None:
        return ("A token budget gives every setting the same amount of data whatever its speed; it favours the "
                "setting that learns more per token and is not the lab report's training length.")
    return ("Each config trained for its own train.epochs (with its early stopping), so they saw different numbers "
            "of tokens and took different times (see the table).")


def _caveats(result: dict) -> list[str]:
    settings, runs = result["settings"], result["runs"]
    caveats = []
    if result["scaled"] or result["budgeted"]:
        hidden = ", ".join(f"{n} {runs[n]['settings']['configured_hidden_size']} → "
                           f"{runs[n]['settings']['hidden_size']}" for n in result["names"])
        caveats.append(
            "**These are not the lab report's models.** "
            + (f"Hidden sizes were scaled ({hidden}). " if result["scaled"] else "")
            + ("Training was cut to the same budget for every config. " if result["budgeted"] else "")
            + "The numbers compare the two settings as trained here; full-size models trained to convergence "
              "may rank differently. Run without --scale and --budget/--budget-tokens on a GPU for the report's "
              "models.")
    return caveats + [
        "The modified setting changes four things at once (seq_length, hidden_size, batch_size, learning_rate); "
        "a difference cannot be attributed to any one of them.",
        _training_length_caveat(settings),
        f"Verdicts rest on {settings['num_samples']} pieces per temperature and a {SPREAD_FACTOR:g}-standard-error "
        "rule per measure, without correction for the number of measures: read them as a summary of these "
        "samples, not as significance tests. Generated pieces are measured in 4/4.",
    ]


def _metrics_by_temperature_section(result: dict) -> list[str]:
    names, runs = result["names"], result["runs"]
    keys = [temperature_key(t) for t in result["settings"]["temperatures"]]
    lines = ["", "## Music metrics by temperature", "",
             "Mean ± standard deviation over pieces (n/a values left out); the last column is the held-out "
             "real pieces, the same for every config.", "",
             "| metric | config | " + " | ".join(f"T = {k}" for k in keys) + " | held-out real |",
             "|---|---|" + "---|" * (len(keys) + 1)]
    for metric in result["metric_names"]:
        for name in names:
            cells = [fmt.mean_std(runs[name]["music"][k][metric]) for k in keys]
            lines.append(f"| {metric} | {name} | " + " | ".join(cells) + f" | {fmt.mean_std(result['real'][metric])} |")
    return lines + ["", f"![metrics by temperature]({METRICS_PNG})"]


def _spread(measure: dict):
    return None if measure["se"] is None else SPREAD_FACTOR * measure["se"]


def _direction(direction: int) -> str:
    return "higher" if direction > 0 else "lower"


def _group_mean(summary: dict, held_out: bool) -> str:
    """`mean (n)`; for held-out NLL the model's perplexity first."""
    text = f"{fmt.number(summary['mean'], grouped=True)} ({summary['n']})"
    return f"ppl {fmt.number(summary.get('perplexity'), grouped=True)}; NLL {text}" if held_out else text


def _difference_row(claim_id: int, m: dict) -> str:
    held_out = m["measure"] == "held_out_perplexity"
    label = "held-out perplexity (paired per-piece NLL nats/token)" if held_out else m["measure"]
    a_text, b_text = _group_mean(m["original"], held_out), _group_mean(m["modified"], held_out)
    return (f"| {claim_id} | {label} | {_direction(m['direction'])} | {a_text} | {b_text} "
            f"| {fmt.signed(m['difference'])} | {fmt.number(_spread(m), grouped=True)} | {m['verdict']} |")


def _slope_row(claim_id: int, m: dict) -> str:
    expected = "rises" if m["direction"] > 0 else "falls"
    return (f"| {claim_id} | {m['config']} | {m['measure']} | {expected} | {fmt.signed(m['slope'])} "
            f"({m['n']}) | {fmt.number(_spread(m), grouped=True)} | {m['verdict']} |")


def _claims_section(result: dict) -> list[str]:
    original, modified = result["compared"]
    lines = ["", "## The lab report's claims", "", f"Rule: {result['rule']}", "",
             "| # | claim (modified vs original) | measured as | verdict |", "|---|---|---|---|"]
    lines += [f"| {c['id']} | {c['claim']} | {c['operationalisation']} | {c['verdict']} |" for c in result["claims"]]
    lines += ["", "### Measures behind the verdicts", "",
              f"| # | measure | expected for {modified} | {original} mean (n) | {modified} mean (n) "
              f"| difference | {SPREAD_FACTOR:g} × SE | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    measures = [(claim["id"], m) for claim in result["claims"] for m in claim["measures"]]
    lines += [_difference_row(claim_id, m) for claim_id, m in measures if "slope" not in m]
    slopes = [_slope_row(claim_id, m) for claim_id, m in measures if "slope" in m]
    if slopes:
        lines += ["", "| # | config | measure | expected with temperature | slope per unit of temperature (n) "
                      f"| {SPREAD_FACTOR:g} × SE | verdict |", "|---|---|---|---|---|---|---|"] + slopes
    return lines


def _listening_section(result: dict) -> list[str]:
    samples = [f"- {name}, T = {key}: " + ", ".join(f"[{os.path.basename(p)}]({p})" for p in paths)
               for name in result["names"] for key, paths in result["runs"][name]["samples"].items() if paths]
    lines = ["", "## Listening", ""] + (samples or ["No sample pieces were written (--write-samples 0)."])
    if result.get("listening"):
        lines += ["", "Blind A/B votes from `python -m keras_music.studio` (95% Wilson intervals; exact two-sided "
                      "binomial test against 0.5):", ""] + listening.report_lines(result["listening"])
    else:
        lines += ["", "No blind listening votes yet: serve both runs with `python -m keras_music.studio --run-dir "
                      "OUT/<original> --run-dir OUT/<modified>`, vote, then `python -m keras_music.experiment "
                      "--report-only --out OUT` adds them here without retraining."]
    return lines + ["", "Every run directory is an ordinary keras_music run: generate more with "
                        "`python -m keras_music.generate --run-dir OUT/<config>`, export with "
                        "`python -m keras_music.export --run-dir OUT/<config>`."]


def render_study(result: dict) -> str:
    """report.md of the study, from run_study's result."""
    lines = _study_header(result)
    lines += ["", "## Caveats", ""] + [f"- {c}" for c in _caveats(result)]
    lines += ["", "## What was trained", ""] + scaling_lines(result)
    lines += ["", "## Per-config results", "",
              "Held-out numbers score every held-out piece from its start with the evaluated (best-validation) "
              "model; per event = per sonority (the piece's total NLL over its events). Accuracy per event: "
              "every token of the event is the model's top-1 choice given the true past.", ""]
    lines += _config_table("| | ", result, rows=PER_CONFIG_RESULTS)
    lines += ["", "## Learning curves", "",
              "Validation loss against training tokens seen and against training time, both configs on one "
              "plot (from each run's metrics.json history).", "",
              f"![learning curves]({LEARNING_CURVES_PNG})"]
    lines += _metrics_by_temperature_section(result)
    lines += _claims_section(result)
    lines += _listening_section(result)
    lines += ["", "## Metrics", ""] + [f"- `{name}`: {text}." for name, text in result["descriptions"].items()]
    if result.get("seconds") is not None:
        lines += ["", f"The whole study took {fmt.minutes(result['seconds'])}."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures


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
            axis.plot(x, [fmt.nan_if_none(h["val_loss"]) for h in history], marker="o", color=color,
                      label=f"{name} validation")
            axis.plot(x, [fmt.nan_if_none(h["loss"]) for h in history], linestyle=":", color=color,
                      label=f"{name} training")
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
    keys = [temperature_key(t) for t in temperatures]
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
    plots.finish_metric_grid(figure, axes, used=len(names),
                             title="music metrics against temperature (mean ± standard error; "
                             "dashed: held-out real mean)", path=out_path, right=0.9)
