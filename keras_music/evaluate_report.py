"""evaluation.md and the evaluation's figures, drawn from evaluate_run's result."""

from __future__ import annotations

import math

import numpy as np

from keras_music import cli, formatting as fmt, music_metrics, plots
from keras_music.evaluate_controls import render_section
from keras_music.evaluate_music import metric_values, temperature_key


def length_phrase(length) -> str:
    if length == cli.MATCHED:
        return "as long as the held-out pieces (piece i has the events of held-out piece i)"
    return f"of up to {length} events"


# ----------------------------------------------------------------------------- evaluation.md


def _evaluation_header(result: dict) -> list[str]:
    settings, held_out = result["settings"], result["held_out"]
    return [
        f"# Evaluation of {result['run_dir']}",
        "",
        f"Held-out split: {fmt.plural(held_out['pieces'], 'piece')}, {held_out['tokens']} tokens, "
        f"{held_out['events']} events ({settings['representation']} representation, vocabulary "
        f"{settings['vocabulary_size']}; {held_out['unknown_tokens']} held-out tokens are `<unk>`). "
        f"Generated: {settings['num_samples']} pieces {length_phrase(settings['length'])} per temperature, "
        f"seed {settings['seed']}.",
    ]


def _quality_row(label: str, scores: dict, *, ratio: str) -> str:
    return (f"| {label} | {fmt.number(scores['nll_nats'])} | {fmt.number(scores['nll_bits'])} "
            f"| {fmt.number(scores['perplexity'])} | {fmt.number(scores['accuracy'])} "
            f"| {fmt.number(scores['event_nll_nats'])} | {fmt.number(scores['event_perplexity'])} | {ratio} |")


def _model_quality_section(result: dict) -> list[str]:
    baseline, ratios = result["ngram"], result["lstm_vs_ngram"]
    unit = "event (sonority)" if result["settings"]["representation"] == "note" else "event (one token each)"
    lines = [
        "",
        "## Model quality on the held-out split",
        "",
        "Every held-out piece is scored from its start (after `<piece>`); NLL is the mean negative "
        f"log-likelihood per token, and per {unit} it is the piece's total NLL divided by its events.",
        "",
        "| model | NLL nats/token | NLL bits/token | perplexity/token | top-1 accuracy | NLL nats/event "
        "| perplexity/event | LSTM perplexity / this |",
        "|---|---|---|---|---|---|---|---|",
        _quality_row("LSTM", result["model_quality"], ratio="1.000"),
    ]
    for order, scores in baseline["orders"].items():
        marker = " (best)" if int(order) == baseline["best_order"] else ""
        lines.append(_quality_row(f"{order}-gram{marker}", scores,
                                  ratio=fmt.number(ratios["per_order"][order]["perplexity_ratio"])))
    ratio = ratios["perplexity_ratio"]
    verdict = ("the LSTM predicts the held-out music better than every n-gram" if ratio is not None and ratio < 1
               else "the LSTM does not beat the best n-gram")
    return lines + [
        "",
        f"**LSTM perplexity / best n-gram ({ratios['best_order']}-gram) perplexity = {fmt.number(ratio)} per token, "
        f"{fmt.number(ratios['event_perplexity_ratio'])} per event**: {verdict} (below 1 = better than the baseline).",
        "",
        f"The n-grams are interpolated modified Kneser-Ney models; {baseline['note']}.",
    ]


def _music_metrics_section(music: dict, keys: list[str]) -> list[str]:
    lines = [
        "",
        "## Music metrics (mean ± std over pieces)",
        "",
        "Generated pieces start from `<piece>` alone (no primer; had there been one, only the generated "
        "part would be measured) and are measured in 4/4; real pieces in their own time signature.",
        "",
        "| metric | " + " | ".join(f"T = {k}" for k in keys) + " | held-out real |",
        "|---|" + "---|" * (len(keys) + 1),
    ]
    for name in music["metric_names"]:
        cells = [fmt.mean_std(music["generated"][k]["summary"][name]) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt.mean_std(music['real']['summary'][name])} |")
    return lines


def _overlap_section(music: dict, keys: list[str], *, held_out_pieces: int) -> list[str]:
    lines = [
        "",
        "## Generated vs real: overlapping area / KL divergence (Yang & Lerch 2020)",
        "",
        "OA = overlap of the two Gaussian-KDE densities (1 = same distribution, 0 = disjoint); "
        "KL = KL(real ‖ generated) in nats (0 = same). The real distribution comes from "
        f"{fmt.plural(held_out_pieces, 'held-out piece')}"
        + ("; with so few, these numbers are rough." if held_out_pieces < 10 else "."),
        "",
        "| metric | " + " | ".join(f"OA T = {k} | KL T = {k}" for k in keys) + " |",
        "|---|" + "---|---|" * len(keys),
    ]
    for name in music["metric_names"]:
        cells = []
        for k in keys:
            c = music["comparison"][k][name]
            cells += [fmt.number(c["overlapping_area"]), fmt.number(c["kl_divergence"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _generation_section(music: dict, keys: list[str]) -> list[str]:
    lines = ["", "## Generation", "", "| temperature | pieces | mean events | stop reasons | repairs |",
             "|---|---|---|---|---|"]
    for k in keys:
        rows = music["generated"][k]["pieces"]
        mean_events = fmt.number(float(np.mean([r["events"] for r in rows])), 1) if rows else "n/a"
        reasons = ", ".join(f"{r}: {n}" for r, n in music["generated"][k]["stop_reasons"].items())
        lines.append(f"| {k} | {len(rows)} | {mean_events} | {reasons} | {sum(r['repairs'] for r in rows)} |")
    return lines


def _how_to_read_section(music: dict) -> list[str]:
    lines = [
        "",
        "## How to read this",
        "",
        "- Perplexity is exp(NLL): the number of equally likely choices the model is as uncertain as. Lower "
        "is better; compare the LSTM with the n-grams on the same pieces, not across corpora or representations.",
        "- Per-event numbers put representations with different tokens per event on one scale.",
        "- A good model's generated metrics sit near the held-out real values; higher temperature usually "
        "raises pitch entropy and the number of pitches, and lowers tonal measures.",
        "- n/a: the metric is undefined for that piece (e.g. too few notes); such values are left out of means.",
        "",
    ]
    return lines + [f"- `{name}`: {description}." for name, description in music["descriptions"].items()]


def render_evaluation(result: dict) -> str:
    """evaluation.md of one run, from evaluate_run's result."""
    music = result["music_metrics"]
    keys = [temperature_key(t) for t in result["settings"]["temperatures"]]
    lines = _evaluation_header(result)
    lines += _model_quality_section(result)
    lines += _music_metrics_section(music, keys)
    lines += _overlap_section(music, keys, held_out_pieces=result["held_out"]["pieces"])
    lines += _generation_section(music, keys)
    if "controls" in result:
        lines += render_section(result["controls"])
    lines += _how_to_read_section(music)
    lines += _infill_section(result.get("infill"))
    lines += ["", "## Figures", ""] + [f"![{figure}]({figure})" for figure in result.get("figures", [])]
    return "\n".join(lines) + "\n"


def _infill_section(infill: dict | None) -> list[str]:
    """Infilling (runs trained with data.infill_rate > 0): the middle's NLL with and without the suffix, exact fills."""
    if not infill:
        return []
    lines = ["", "## Infilling", ""]
    if not infill.get("gaps"):
        return lines + [infill.get("note", "no gaps")]
    return lines + [
        f"{fmt.plural(infill['gaps'], 'held-out gap')} of 1-4 bars (one per piece, seed {infill['seed']}), "
        f"{infill['middle_tokens']} middle tokens. NLL per token of the true middle:",
        "",
        "| context | model alone | as sampled (grammar; with the gap, its exact length) |",
        "|---|---|---|",
        f"| suffix + prefix (fill-in-the-middle order) | {fmt.number(infill['nll_fim'])} | "
        f"{fmt.number(infill['nll_fim_masked'])} |",
        f"| prefix only (left-to-right continuation of the same bars) | {fmt.number(infill['nll_prefix_only'])} | "
        f"{fmt.number(infill['nll_prefix_only_masked'])} |",
        "",
        f"Knowing what comes after the gap lowers the middle's NLL by {fmt.number(100 * infill['nll_reduction'])}% "
        f"in the model alone and by {fmt.number(100 * infill['nll_reduction_masked'])}% as the two generators "
        "sample (`generate --infill` draws each token under the grammar and the gap mask, which knows how much "
        "of the gap is left; a continuation under the grammar alone). Sampled fills "
        f"(temperature {fmt.number(infill['temperature'])}) with the gap's exact duration: {infill['exact_fills']} "
        f"of {infill['fills']} ({fmt.number(100 * infill['exact_share'])}%).",
    ]


# ----------------------------------------------------------------------------- figures


def plot_distributions(music: dict, out_path: str) -> None:
    """Per metric: histograms of generated values per temperature over the held-out real ones."""
    names = music["metric_names"]
    keys = [temperature_key(t) for t in music["temperatures"]]
    figure, axes = plots.metric_grid(len(names))
    for ax, name in zip(axes.flat, names):
        real = music_metrics.finite_values(metric_values(music["real"]["pieces"], name))
        generated = {k: music_metrics.finite_values(metric_values(music["generated"][k]["pieces"], name)) for k in keys}
        pooled = np.concatenate([real, *generated.values()])
        if len(pooled) == 0:
            ax.set_title(f"{name} (undefined)")
            ax.axis("off")
            continue
        low, high = float(pooled.min()), float(pooled.max())
        if high - low < 1e-12:
            low, high = low - 0.5, high + 0.5
        bins = np.linspace(low, high, 21)
        if len(real):
            ax.hist(real, bins=bins, density=True, color="0.7", label="held-out real")
        for k in keys:
            if len(generated[k]):
                ax.hist(generated[k], bins=bins, density=True, histtype="step", linewidth=1.5, label=f"T = {k}")
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=8)
    plots.finish_metric_grid(figure, axes, used=len(names),
                             title="metric distributions: generated (per temperature) vs held-out real", path=out_path)


def plot_metrics_vs_temperature(music: dict, out_path: str) -> None:
    """Per metric: generated mean ± std against temperature, the held-out real mean as a line."""
    names = music["metric_names"]
    temperatures = music["temperatures"]
    keys = [temperature_key(t) for t in temperatures]
    figure, axes = plots.metric_grid(len(names))
    for ax, name in zip(axes.flat, names):
        summaries = [music["generated"][k]["summary"][name] for k in keys]
        means = np.array([fmt.nan_if_none(s["mean"]) for s in summaries])
        stds = np.array([fmt.nan_if_none(s["std"]) for s in summaries])
        ax.errorbar(temperatures, means, yerr=stds, marker="o", capsize=3, label="generated")
        real = music["real"]["summary"][name]
        real_mean, real_std = fmt.nan_if_none(real["mean"]), fmt.nan_if_none(real["std"])
        if math.isfinite(real_mean):
            ax.axhline(real_mean, color="0.3", linestyle="--", label="held-out real")
            if math.isfinite(real_std) and real_std > 0:
                ax.axhspan(real_mean - real_std, real_mean + real_std, color="0.85", zorder=0)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("temperature", fontsize=8)
        ax.tick_params(labelsize=8)
    plots.finish_metric_grid(figure, axes, used=len(names),
                             title="metrics against sampling temperature (mean ± std; dashed: held-out real mean)",
                             path=out_path)
