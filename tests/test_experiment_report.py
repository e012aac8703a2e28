"""Tests for keras_music.experiment_report: the study's report.md byte for byte, and its figures."""

import copy
import math

import pytest

from keras_music import experiment_report

from test_evaluate_report import DESCRIPTIONS, METRICS, PNG_SIGNATURE, dashed, legend_labels, means, read_head, visible


def _summary(mean, se, n=4):
    return {"mean": mean, "std": None if se is None else se * 2, "se": se, "n": n}


def study_run(index, name, hidden, scale, budget_minutes, samples):
    """One config's summary in a study result."""
    return {
        "config_file": f"configs/{name}.yaml",
        "run_dir": name,
        "evaluation": f"{name}/evaluation/evaluation.md",
        "applied_settings": [f"model.hidden_size={hidden // 2}"] if scale else [],
        "settings": {"seq_length": 16 * (index + 1), "hidden_size": hidden // 2 if scale else hidden,
                     "configured_hidden_size": hidden, "embedding_size": 8, "num_layers": 3, "dropout": 0.0,
                     "batch_size": 4, "learning_rate": 0.005 / (index * 9 + 1), "lr_schedule": "cosine",
                     "epochs": 3, "time_budget_minutes": budget_minutes or 0, "early_stopping_patience": index,
                     "seed": 0},
        "training": {"parameters": 3026 + 1000 * index, "epochs": 3, "stopped": "completed",
                     "tokens_per_epoch": 600, "tokens_seen": 1800, "train_seconds": 12.0 + index,
                     "wall_seconds": 30.0, "tokens_per_second": 150.4 - index, "best_epoch": 3,
                     "partial_epochs_counted_whole": index == 1},
        "history": [{"epoch": e, "tokens_seen": 600 * e, "seconds": 4.0 * e, "loss": 4.0 - 0.5 * e - index,
                     "val_loss": None if e == 2 else 4.2 - 0.4 * e} for e in (1, 2, 3)],
        "quality": {"nll_nats": 3.9 - index, "nll_bits": 5.6, "perplexity": 49.4 - 10 * index, "accuracy": 0.125,
                    "event_nll_nats": 18.7, "event_perplexity": 1.32e8, "tokens": 325, "events": 68,
                    "pieces": 1, "event_accuracy": None if index else 0.0625, "events_scored": 68},
        "ngram": {"best_order": 4, "perplexity": 27.4, "event_perplexity": 7465000.0,
                  "perplexity_ratio": 1.8 - index, "event_perplexity_ratio": 17.7,
                  "perplexity_by_order": {"1": 47.8, "4": 27.4}},
        "music": {key: {"pitch_entropy": _summary(3.0 + float(key) + index, 0.1),
                        "key_correlation": _summary(0.7, None, 1)} for key in ("0.5", "1")},
        "stop_reasons": {"0.5": {"length": 2}, "1": {"length": 2}},
        "samples": ({"0.5": [f"{name}/generated/experiment-T0.5/sample_00.mid"], "1": []} if samples
                    else {}),
    }


STUDY_CLAIMS = [
    {"id": 3, "claim": "more coherent melody", "operationalisation": "higher key_correlation, lower perplexity",
     "verdict": "cannot tell", "measures": [
         {"measure": "key_correlation", "direction": 1, "original": _summary(0.7, 0.01, 8),
          "modified": _summary(0.72, 0.01, 8), "difference": 0.02, "se": 0.0141, "verdict": "cannot tell"},
         {"measure": "held_out_perplexity", "direction": -1, "pairs": 1,
          "original": dict(_summary(3.9, None, 1), perplexity=49.4),
          "modified": dict(_summary(2.9, None, 1), perplexity=39.4),
          "difference": -1.0, "se": None, "verdict": "cannot tell"}]},
    {"id": 5, "claim": "temperature trades stability for variety", "operationalisation": "slopes",
     "verdict": "supports", "measures": [
         {"measure": "pitch_entropy", "config": name, "direction": 1, "slope": 1.0 + index, "se": 0.25,
          "n": 8, "verdict": "supports"} for index, name in enumerate(("original", "modified"))]},
]


def study_result(scale=0.5, budget_minutes=None, budget_tokens=1000, samples=True, listening=False, seconds=754.0):
    """A small run_study-shaped result (as read back from report.json)."""
    runs = {name: study_run(index, name, hidden, scale, budget_minutes, samples)
            for index, (name, hidden) in enumerate((("original", 16), ("modified", 24)))}
    return {
        "format": "keras_music.experiment", "version": 1, "created": "2024-01-01T00:00:00",
        "settings": {"configs": ["configs/original.yaml", "configs/modified.yaml"], "sources": ["bach/bwv66.6"],
                     "overrides": ["model.dropout=0.1"] if budget_minutes else [], "scale": scale,
                     "budget_minutes": budget_minutes, "budget_tokens": budget_tokens, "temperatures": [0.5, 1.0],
                     "num_samples": 4, "length": 12, "seed": 0, "ngram_orders": [1, 4],
                     "command": "python -m keras_music.experiment --configs a.yaml b.yaml" if scale else ""},
        "names": ["original", "modified"],
        "compared": ["original", "modified"],
        "data": {"train_pieces": 3, "validation_pieces": 1, "train_tokens": 1912, "vocabulary_size": 82,
                 "representation": "note", "same_held_out": True, "held_out": ["p0.mid"]},
        "scaled": scale is not None,
        "budgeted": budget_minutes is not None or budget_tokens is not None,
        "runs": runs,
        "metric_names": list(METRICS),
        "descriptions": dict(DESCRIPTIONS),
        "real": {"pitch_entropy": _summary(4.25, None, 1), "key_correlation": _summary(0.74, None, 1)},
        "rule": "A difference counts at 2 standard errors.",
        "claims": copy.deepcopy(STUDY_CLAIMS),
        "figures": ["learning_curves.png", "metrics_by_temperature.png"],
        "seconds": seconds,
        "listening": ([{"name": "original-vs-modified", "question": "which is more musical?", "votes": 7,
                        "preference": 0.714, "ci95": [0.35, 0.92], "p_value": 0.45}] if listening else []),
    }


# ----------------------------------------------------------------------------- markdown

# Rendered by the code before it moved into this module; any change to the report's
# wording, numbers or layout shows up here first.
STUDY_MD = """\
# The lab report's study, measured

Configs: **original** (`configs/original.yaml`), **modified** (`configs/modified.yaml`); claims compare **original** (the report's original setting) with **modified** (its modified setting).

Data: `bach/bwv66.6`; 3 training pieces (1,912 tokens), 1 held-out piece, split by piece with seed 0; note representation, vocabulary 82. Every config saw the same held-out pieces: yes.

Generated: 4 pieces of up to 12 events per temperature (0.5, 1) per config, no primer, sampling seed 0.

Command:

```
python -m keras_music.experiment --configs a.yaml b.yaml
```

## Caveats

- **These are not the lab report's models.** Hidden sizes were scaled (original 16 → 8, modified 24 → 12). Training was cut to the same budget for every config. The numbers compare the two settings as trained here; full-size models trained to convergence may rank differently. Run without --scale and --budget/--budget-tokens on a GPU for the report's models.
- The modified setting changes four things at once (seq_length, hidden_size, batch_size, learning_rate); a difference cannot be attributed to any one of them.
- A token budget gives every setting the same amount of data whatever its speed; it favours the setting that learns more per token and is not the lab report's training length.
- Verdicts rest on 4 pieces per temperature and a 2-standard-error rule per measure, without correction for the number of measures: read them as a summary of these samples, not as significance tests. Generated pieces are measured in 4/4.

## What was trained

| setting | original | modified |
|---|---|---|
| config file | `configs/original.yaml` | `configs/modified.yaml` |
| hidden_size (configured → trained) | 16 → **8** | 24 → **12** |
| embedding_size × layers | 8 × 3 | 8 × 3 |
| seq_length | 16 | 32 |
| batch_size | 4 | 4 |
| learning_rate (schedule) | 0.005 (cosine) | 0.0005 (cosine) |
| epochs allowed | 3 | 3 |
| time budget | none | none |
| early stopping patience | off | 1 |
| settings chosen by the experiment | `model.hidden_size=8` | `model.hidden_size=12` |

`--scale 0.5`: hidden_size = max(8, round(configured × 0.5)); nothing else was scaled.

`--budget-tokens 1,000`: every config trains for ceil(1,000 / tokens per epoch) epochs, so each sees at least that many training tokens (at most one epoch more), with its own learning-rate schedule and early stopping off.

## Per-config results

Held-out numbers score every held-out piece from its start with the evaluated (best-validation) model; per event = per sonority (the piece's total NLL over its events). Accuracy per event: every token of the event is the model's top-1 choice given the true past.

| | original | modified |
|---|---|---|
| parameters | 3,026 | 4,026 |
| epochs (stopped by) | 3 (completed) | 3 (completed) |
| tokens seen | 1,800 | 1,800 |
| training time | 0.2 min | 0.2 min |
| wall time (incl. data and final evaluation) | 0.5 min | 0.5 min |
| tokens per second | 150 | 149 |
| held-out loss (NLL nats/token) | 3.900 | 2.900 |
| held-out perplexity per token | 49.400 | 39.400 |
| held-out accuracy per token | 0.125 | 0.125 |
| held-out NLL nats/event | 18.700 | 18.700 |
| held-out perplexity per event | 1.32e+08 | 1.32e+08 |
| held-out accuracy per event | 0.062 | n/a |
| best n-gram baseline (order) | 4-gram | 4-gram |
| n-gram perplexity per token by order | 1: 47.800, 4: 27.400 | 1: 47.800, 4: 27.400 |
| best n-gram perplexity per token / per event | 27.400 / 7.465e+06 | 27.400 / 7.465e+06 |
| LSTM / n-gram perplexity per token (below 1: LSTM better) | 1.800 | 0.800 |
| LSTM / n-gram perplexity per event | 17.700 | 17.700 |
| full evaluation | [original/evaluation/evaluation.md](original/evaluation/evaluation.md) | [modified/evaluation/evaluation.md](modified/evaluation/evaluation.md) |

## Learning curves

Validation loss against training tokens seen and against training time, both configs on one plot (from each run's metrics.json history).

![learning curves](learning_curves.png)

## Music metrics by temperature

Mean ± standard deviation over pieces (n/a values left out); the last column is the held-out real pieces, the same for every config.

| metric | config | T = 0.5 | T = 1 | held-out real |
|---|---|---|---|---|
| pitch_entropy | original | 3.500 ± 0.200 | 4.000 ± 0.200 | 4.250 (n=1) |
| pitch_entropy | modified | 4.500 ± 0.200 | 5.000 ± 0.200 | 4.250 (n=1) |
| key_correlation | original | 0.700 (n=1) | 0.700 (n=1) | 0.740 (n=1) |
| key_correlation | modified | 0.700 (n=1) | 0.700 (n=1) | 0.740 (n=1) |

![metrics by temperature](metrics_by_temperature.png)

## The lab report's claims

Rule: A difference counts at 2 standard errors.

| # | claim (modified vs original) | measured as | verdict |
|---|---|---|---|
| 3 | more coherent melody | higher key_correlation, lower perplexity | cannot tell |
| 5 | temperature trades stability for variety | slopes | supports |

### Measures behind the verdicts

| # | measure | expected for modified | original mean (n) | modified mean (n) | difference | 2 × SE | verdict |
|---|---|---|---|---|---|---|---|
| 3 | key_correlation | higher | 0.700 (8) | 0.720 (8) | +0.020 | 0.028 | cannot tell |
| 3 | held-out perplexity (paired per-piece NLL nats/token) | lower | ppl 49.400; NLL 3.900 (1) | ppl 39.400; NLL 2.900 (1) | -1.000 | n/a | cannot tell |

| # | config | measure | expected with temperature | slope per unit of temperature (n) | 2 × SE | verdict |
|---|---|---|---|---|---|---|
| 5 | original | pitch_entropy | rises | +1.000 (8) | 0.500 | supports |
| 5 | modified | pitch_entropy | rises | +2.000 (8) | 0.500 | supports |

## Listening

- original, T = 0.5: [sample_00.mid](original/generated/experiment-T0.5/sample_00.mid)
- modified, T = 0.5: [sample_00.mid](modified/generated/experiment-T0.5/sample_00.mid)

No blind listening votes yet: serve both runs with `python -m keras_music.studio --run-dir OUT/<original> --run-dir OUT/<modified>`, vote, then `python -m keras_music.experiment --report-only --out OUT` adds them here without retraining.

Every run directory is an ordinary keras_music run: generate more with `python -m keras_music.generate --run-dir OUT/<config>`, export with `python -m keras_music.export --run-dir OUT/<config>`.

## Metrics

- `pitch_entropy`: entropy of pitches.
- `key_correlation`: how clearly one key.

The whole study took 12.6 min.
"""


def test_study_markdown_is_unchanged():
    assert experiment_report.render_study(study_result()) == STUDY_MD


def test_study_markdown_for_a_wall_clock_budget_with_votes_and_no_samples():
    result = study_result(scale=None, budget_minutes=1.5, budget_tokens=None, samples=False, listening=True,
                          seconds=None)
    text = experiment_report.render_study(result)
    lines = text.splitlines()
    assert "Command:" not in lines
    assert ("- **These are not the lab report's models.** Training was cut to the same budget for every config. "
            "The numbers compare the two settings as trained here; full-size models trained to convergence may "
            "rank differently. Run without --scale and --budget/--budget-tokens on a GPU for the report's "
            "models.") in lines
    assert ("- A wall-clock budget favours the setting that processes more tokens per second (see tokens per "
            "second below); it is not the lab report's training length.") in lines
    assert "| hidden_size (configured → trained) | 16 (not scaled) | 24 (not scaled) |" in lines
    assert "| time budget | 1.5 min | 1.5 min |" in lines
    budget = next(line for line in lines if line.startswith("`--budget 1.5`"))
    assert "the same 1.5 minutes of wall-clock time" in budget and "train.epochs=1000" in budget
    # One run's history counts its budget-stopped epoch whole, so the note says so.
    assert budget.endswith("so they overstate by less than one epoch.")
    assert "`--set` for every config: `model.dropout=0.1`." in lines
    assert not any(line.startswith("`--scale") or line.startswith("`--budget-tokens") for line in lines)
    assert "No sample pieces were written (--write-samples 0)." in lines
    assert "| original-vs-modified | which is more musical? | - | 7 | 0.714 | 0.350-0.920 | 0.45 |" in lines
    assert not any(line.startswith("No blind listening votes yet") for line in lines)
    assert not any(line.startswith("The whole study took") for line in lines)


def test_study_markdown_without_scale_or_budget():
    text = experiment_report.render_study(study_result(scale=None, budget_minutes=None, budget_tokens=None))
    lines = text.splitlines()
    assert not any("These are not the lab report's models" in line for line in lines)
    assert ("- Each config trained for its own train.epochs (with its early stopping), so they saw different "
            "numbers of tokens and took different times (see the table).") in lines
    # No note on scale, budget or --set follows the table.
    assert lines[lines.index("| settings chosen by the experiment | none | none |") + 2] == "## Per-config results"


# ----------------------------------------------------------------------------- figures


def test_learning_curves_have_a_panel_for_tokens_and_one_for_time(tmp_path, saved_figures):
    result = study_result()
    result["runs"]["modified"]["history"] = []
    path = str(tmp_path / experiment_report.LEARNING_CURVES_PNG)
    experiment_report.plot_learning_curves(result, path)
    assert read_head(path) == PNG_SIGNATURE
    (figure,) = saved_figures
    by_tokens, by_time = figure.axes
    assert (by_tokens.get_xlabel(), by_time.get_xlabel()) == ("training tokens seen", "training time (minutes)")
    assert figure.get_suptitle() == "learning curves: original (hidden 8) vs modified (hidden 12)"
    for axis in (by_tokens, by_time):
        assert [line.get_label() for line in axis.lines] == ["original validation", "original training"]
    validation = by_tokens.lines[0].get_ydata()
    assert validation[0] == pytest.approx(3.8) and math.isnan(validation[1])
    assert list(by_time.lines[0].get_xdata()) == pytest.approx([4 / 60, 8 / 60, 12 / 60])


def test_metrics_by_temperature_has_a_line_per_config(tmp_path, saved_figures):
    result = study_result()
    result["real"]["key_correlation"]["mean"] = None
    path = str(tmp_path / experiment_report.METRICS_PNG)
    experiment_report.plot_metrics_by_temperature(result, path)
    assert read_head(path) == PNG_SIGNATURE
    (figure,) = saved_figures
    panels = visible(figure)
    assert [axis.get_title() for axis in panels] == list(METRICS)
    assert sorted(legend_labels(figure)) == ["held-out real", "modified", "original"]
    assert [list(line.get_ydata()) for line in means(panels[0])] == [[3.5, 4.0], [4.5, 5.0]]
    assert [list(line.get_ydata()) for line in dashed(panels[0])] == [[4.25, 4.25]]
    # No held-out real mean for key_correlation: only the two configs' lines.
    assert len(means(panels[1])) == 2 and dashed(panels[1]) == []


def test_figures_of_results_read_back_from_json_survive_missing_values(tmp_path):
    result = copy.deepcopy(study_result())
    for run in result["runs"].values():
        for summaries in run["music"].values():
            summaries["pitch_entropy"] = {"mean": None, "std": None, "se": None, "n": 0}
        for epoch in run["history"]:
            epoch.update(loss=None, val_loss=None, seconds=None)
    experiment_report.plot_learning_curves(result, str(tmp_path / "curves.png"))
    experiment_report.plot_metrics_by_temperature(result, str(tmp_path / "metrics.png"))
    for name in ("curves.png", "metrics.png"):
        assert read_head(str(tmp_path / name)) == PNG_SIGNATURE
