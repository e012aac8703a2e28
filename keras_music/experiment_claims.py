"""The lab report's claims and the statistics that judge them: means with standard errors, slopes, verdicts."""

from __future__ import annotations

import math

import numpy as np

from keras_music import music_metrics
from keras_music.evaluate_music import temperature_key

# A difference counts only when it is at least this many standard errors.
SPREAD_FACTOR = 2.0
VERDICTS = ("supports", "contradicts", "cannot tell")

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



# ----------------------------------------------------------------------------- statistics (pure numpy)


def mean_se(values) -> dict:
    """Mean, sample standard deviation (n − 1), standard error of the mean, count of finite values."""
    x = music_metrics.finite_values(values)
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


def compare_groups(original, modified, *, direction: int) -> dict:
    """Difference of means (modified − original) of two independent groups, its standard error and verdict."""
    a, b = mean_se(original), mean_se(modified)
    difference = b["mean"] - a["mean"]
    se = math.sqrt(a["se"] ** 2 + b["se"] ** 2) if a["n"] >= 2 and b["n"] >= 2 else math.nan
    return {"original": a, "modified": b, "difference": difference, "se": se,
            "verdict": verdict(difference, se, direction)}


def compare_paired(original: dict, modified: dict, *, direction: int) -> dict:
    """Like compare_groups for values keyed by the same items (held-out pieces): mean of per-item differences."""
    shared = [k for k in original if k in modified and original[k] is not None and modified[k] is not None]
    differences = music_metrics.finite_values([modified[k] - original[k] for k in shared])
    summary = mean_se(differences)
    return {"original": mean_se([original[k] for k in shared]), "modified": mean_se([modified[k] for k in shared]),
            "difference": summary["mean"], "se": summary["se"], "pairs": summary["n"],
            "verdict": verdict(summary["mean"], summary["se"], direction)}


def slope(x, y, *, direction: int) -> dict:
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
        for row in music["generated"][temperature_key(temperature)]["pieces"]:
            xs.append(temperature)
            ys.append(row["metrics"].get(metric))
    return xs, ys


def _slope_measures(claim: dict, named_evaluations) -> list[dict]:
    """Claim 5: each metric's slope against temperature, per (config name, evaluation)."""
    measures = []
    for name, evaluation in named_evaluations:
        for metric, direction in claim["measures"]:
            x, y = _temperature_values(evaluation["music_metrics"], metric)
            result = slope(x, y, direction=direction)
            measures.append(dict(result, measure=metric, config=name, direction=direction))
    return measures


def _held_out_perplexity(original: dict, modified: dict, *, direction: int) -> dict:
    """Paired per-piece held-out NLL of the two models, with each model's perplexity beside it."""
    per_piece = [{p["name"] or str(i): p.get("nll_nats") for i, p in enumerate(e["model_quality"].get("per_piece", []))}
                 for e in (original, modified)]
    result = compare_paired(per_piece[0], per_piece[1], direction=direction)
    result["original"]["perplexity"] = original["model_quality"]["perplexity"]
    result["modified"]["perplexity"] = modified["model_quality"]["perplexity"]
    return result


def _difference_measures(claim: dict, original: dict, *, modified: dict) -> list[dict]:
    """Claims 1-4: modified minus original, metric by metric."""
    measures = []
    for metric, direction in claim["measures"]:
        if metric == "held_out_perplexity":
            result = _held_out_perplexity(original, modified, direction=direction)
        else:
            result = compare_groups(_pooled_values(original["music_metrics"], metric),
                                    _pooled_values(modified["music_metrics"], metric), direction=direction)
        measures.append(dict(result, measure=metric, direction=direction))
    return measures


def judge_claims(original: dict, modified: dict, *, names=("original", "modified")) -> list[dict]:
    """Verdicts for CLAIMS from two evaluate_run results (the first is the report's original setting)."""
    out = []
    for claim in CLAIMS:
        if claim["id"] == 5:
            measures = _slope_measures(claim, zip(names, (original, modified)))
        else:
            measures = _difference_measures(claim, original, modified=modified)
        out.append({"id": claim["id"], "claim": claim["claim"], "operationalisation": claim["operationalisation"],
                    "measures": measures, "verdict": combine(m["verdict"] for m in measures)})
    return out
