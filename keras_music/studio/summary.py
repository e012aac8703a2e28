"""A run in words for the studio's page: a one-card summary and labelled records, never a machine path."""

from __future__ import annotations

import math

# Keys of metrics.json and evaluation.json (flattened 'a.b') with their label and unit.
# Units: "nats", "bits", "%" (a 0-1 share shown as a percentage), "s" (a duration), "" (a count or ratio).
LABELS = {
    "epochs": ("epochs trained", ""),
    "stopped": ("why training stopped", ""),
    "stopped_detail": ("stopping detail", ""),
    "best_epoch": ("best epoch (lowest validation loss)", ""),
    "train_loss": ("training loss", "nats per token"),
    "val_loss": ("validation loss", "nats per token"),
    "val_perplexity": ("validation perplexity", "per token"),
    "val_accuracy": ("validation accuracy (next token)", "%"),
    "tokens_seen": ("training tokens seen", ""),
    "tokens_per_second": ("training speed", "tokens/s"),
    "train_seconds": ("training time", "s"),
    "wall_seconds": ("wall-clock time", "s"),
    "parameters": ("parameters", ""),
    "vocabulary_size": ("vocabulary", "tokens"),
    "validation_unknown_rate": ("validation tokens outside the vocabulary", "%"),
    "strategy": ("distribution strategy", ""),
    "replicas": ("replicas", ""),
    "settings.num_samples": ("pieces generated per temperature", ""),
    "settings.length": ("generated length", "events"),
    "settings.seed": ("seed", ""),
    "settings.representation": ("representation", ""),
    "settings.vocabulary_size": ("vocabulary", "tokens"),
    "settings.data_transpose": ("transposition of the data", "semitones"),
    "held_out.pieces": ("held-out pieces", ""),
    "held_out.tokens": ("held-out tokens", ""),
    "held_out.events": ("held-out events", ""),
    "held_out.unknown_tokens": ("held-out tokens outside the vocabulary", ""),
    "model_quality.nll_nats": ("held-out loss", "nats per token"),
    "model_quality.nll_bits": ("held-out loss", "bits per token"),
    "model_quality.perplexity": ("held-out perplexity", "per token"),
    "model_quality.event_nll_nats": ("held-out loss", "nats per event"),
    "model_quality.event_nll_bits": ("held-out loss", "bits per event"),
    "model_quality.event_perplexity": ("held-out perplexity", "per event"),
    "model_quality.tokens": ("tokens scored", ""),
    "model_quality.events": ("events scored", ""),
    "model_quality.accuracy": ("held-out accuracy (next token)", "%"),
    "model_quality.pieces": ("pieces scored", ""),
    "model_quality.unknown_tokens": ("tokens outside the vocabulary", ""),
    "model_quality.floored_probabilities": ("probabilities floored (would be zero)", ""),
    "ngram.best_order": ("best n-gram order", ""),
    "ngram.training_pieces": ("n-gram training pieces", ""),
    "ngram.training_tokens": ("n-gram training tokens", ""),
    "lstm_vs_ngram.best_order": ("n-gram compared with", "order"),
    "lstm_vs_ngram.perplexity_ratio": ("LSTM / best n-gram perplexity", "per token"),
    "lstm_vs_ngram.event_perplexity_ratio": ("LSTM / best n-gram perplexity", "per event"),
}
STOPPED = {"completed": "all epochs trained", "early_stopping": "stopped early",
           "time_budget": "stopped by the time budget", "nan_loss": "stopped: the loss became NaN"}


def number(value, digits: int = 3) -> str:
    """A number as people write it: 3.33, 0.633, 12,480, 8.5 x 10^8."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and not 1e-3 <= abs(value) < 1e5:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{float(mantissa):g} × 10^{int(exponent)}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:,.{max(0, digits - len(str(int(abs(value)))))}f}"


def duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def shown(key: str, value) -> tuple[str, str]:
    """(label, value with its unit) of one record entry."""
    label, unit = LABELS.get(key) or (key.rpartition(".")[2].replace("_", " "), "")
    if unit == "%" and isinstance(value, (int, float)):
        return label, f"{100 * value:.1f}%"
    if unit == "s" and isinstance(value, (int, float)):
        return label, duration(value)
    if key == "stopped":
        return label, STOPPED.get(value, str(value))
    if unit == "order":
        return label, f"{value}-gram"
    return label, f"{number(value)} {unit}".strip()


def _is_path(key: str, value) -> bool:
    return key.endswith("dir") or isinstance(value, str) and ("/" in value or "\\" in value)


def records(record, title: str) -> dict:
    """A titled group of labelled rows from a JSON record (one level of nesting), leaving out paths and lists."""
    rows = []
    if isinstance(record, dict):
        for key, value in record.items():
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for sub, item in items:
                name = key if sub is None else f"{key}.{sub}"
                if (isinstance(item, bool) or not isinstance(item, (int, float, str)) or _is_path(name, item)
                        or isinstance(item, str) and len(item) > 80):
                    continue
                rows.append(list(shown(name, item)))
    return {"title": title, "rows": rows}


def overlap(evaluation: dict, recommended: float) -> dict | None:
    """Overlapping areas of generated vs held-out metric distributions at the evaluated temperature nearest
    the recommended one (1 = the distributions coincide)."""
    music = (evaluation or {}).get("music_metrics") or {}
    comparison = music.get("comparison") or {}
    if not comparison:
        return None
    key = min(comparison, key=lambda k: abs(float(k) - recommended))
    descriptions = music.get("descriptions", {})
    metrics = [{"name": name, "label": name.replace("_", " "), "area": round(float(row["overlapping_area"]), 3),
                "description": descriptions.get(name, "")}
               for name, row in comparison[key].items()
               if isinstance(row, dict) and isinstance(row.get("overlapping_area"), (int, float))]
    if not metrics:
        return None
    metrics.sort(key=lambda m: -m["area"])
    mean = sum(m["area"] for m in metrics) / len(metrics)
    return {"temperature": float(key), "recommended": recommended, "mean": round(mean, 3), "metrics": metrics}


def summarize_run(label: str, representation: str, *, vocabulary_size: int, held_out: int, metrics: dict | None,
                  evaluation: dict | None, recommended: float) -> dict:
    """The run in a few sentences and numbers, for a musician or an ML engineer at a glance."""
    metrics, evaluation = metrics or {}, evaluation or {}
    lines, numbers = [], []
    parameters = metrics.get("parameters")
    lines.append(f"A three-layer LSTM{f' with {number(parameters)} parameters' if parameters else ''} over "
                 f"{vocabulary_size} {representation}-representation tokens; {held_out} held-out "
                 f"piece{'s' if held_out != 1 else ''} it never trained on.")
    quality, ratios = evaluation.get("model_quality") or {}, evaluation.get("lstm_vs_ngram") or {}
    if isinstance(quality.get("perplexity"), (int, float)):
        text = f"Held-out perplexity {quality['perplexity']:.2f} per token"
        if isinstance(ratios.get("perplexity_ratio"), (int, float)):
            ratio = ratios["perplexity_ratio"]
            text += (f", {ratio:.2f}x the best n-gram ({ratios.get('best_order')}-gram): "
                     f"{'better than' if ratio < 1 else 'not yet better than'} counting note patterns")
        lines.append(text + ".")
        numbers.append({"label": "held-out perplexity", "value": f"{quality['perplexity']:.2f} per token"})
        if "perplexity_ratio" in ratios:
            numbers.append({"label": f"vs best n-gram ({ratios.get('best_order')}-gram)",
                            "value": f"{ratios['perplexity_ratio']:.2f}x"})
        if isinstance(quality.get("accuracy"), (int, float)):
            numbers.append({"label": "next-token accuracy", "value": f"{100 * quality['accuracy']:.1f}%"})
    else:
        lines.append("Not evaluated yet: run python -m keras_music.evaluate on this run for held-out perplexity, "
                     "the n-gram comparison and the music metrics.")
    if metrics.get("epochs") is not None:
        text = f"Trained {metrics['epochs']} epoch{'s' if metrics['epochs'] != 1 else ''}"
        if isinstance(metrics.get("wall_seconds"), (int, float)):
            text += f", {duration(metrics['wall_seconds'])}"
        stopped, best = metrics.get("stopped"), metrics.get("best_epoch")
        if stopped == "early_stopping" and best is not None:
            text += f", stopped early at {best}"
        elif stopped in STOPPED:
            text += f", {STOPPED[stopped]}" + (f" (best epoch {best})" if best is not None else "")
        lines.append(text + ".")
        numbers.append({"label": "epochs", "value": f"{metrics['epochs']}"})
        if isinstance(metrics.get("val_loss"), (int, float)):
            numbers.append({"label": "validation loss", "value": f"{metrics['val_loss']:.3f} nats/token"})
    areas = overlap(evaluation, recommended)
    if areas:
        best, worst = areas["metrics"][0], areas["metrics"][-1]
        lines.append(f"At temperature {areas['temperature']:g} generated and held-out pieces overlap by "
                     f"{areas['mean']:.2f} on average (1 = alike): closest in {best['label']} ({best['area']:.2f}), "
                     f"furthest in {worst['label']} ({worst['area']:.2f}).")
    return {"run": label, "lines": lines, "numbers": numbers, "overlap": areas,
            "evaluated": bool(quality)}
