"""Tests for keras_music.evaluate_report: evaluation.md byte for byte, and the evaluation's figures."""

import math

from keras_music import evaluate_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

METRICS = ("pitch_entropy", "key_correlation")
DESCRIPTIONS = {"pitch_entropy": "entropy of pitches", "key_correlation": "how clearly one key"}


def scores(nll, accuracy, events_ratio=2.5):
    return {"nll_nats": nll, "nll_bits": nll / math.log(2), "perplexity": math.exp(nll), "accuracy": accuracy,
            "event_nll_nats": nll * events_ratio, "event_perplexity": math.exp(nll * events_ratio)}


def evaluation_result(pieces=2, representation="note", ratio=0.8):
    """A small evaluate_run-shaped result (as read back from evaluation.json: NaN written as null)."""
    generated = {}
    for key, base in (("0.5", 2.0), ("1", 3.0)):
        rows = [{"events": 10 + i, "notes": 12 + i, "stop_reason": "length" if i else "end", "repairs": i,
                 "metrics": {"pitch_entropy": base + 0.5 * i, "key_correlation": None if i else 0.75}}
                for i in range(2)]
        generated[key] = {
            "pieces": rows,
            "summary": {"pitch_entropy": {"mean": base + 0.25, "std": 0.25, "n": 2, "n_undefined": 0},
                        "key_correlation": {"mean": 0.75, "std": 0.0, "n": 1, "n_undefined": 1}},
            "stop_reasons": {"end": 1, "length": 1},
        }
    real_rows = [{"name": f"p{i}.mid", "events": 25, "time_signature": [3, 4],
                  "metrics": {"pitch_entropy": 3.5 + i, "key_correlation": 0.8}} for i in range(pieces)]
    return {
        "run_dir": "runs/demo",
        "settings": {"num_samples": 2, "length": "matched", "temperatures": [0.5, 1.0], "seed": 3,
                     "orders": [1, 2], "representation": representation, "vocabulary_size": 40,
                     "data_transpose": 0, "generated_time_signature": [4, 4]},
        "held_out": {"pieces": pieces, "tokens": 120, "events": 48, "unknown_tokens": 1},
        "model_quality": dict(scores(2.0, 0.25), tokens=120, events=48),
        "ngram": {"orders": {"1": scores(3.0, 0.1), "2": scores(2.5, 0.2)}, "best_order": 2,
                  "note": "n-grams are fit on the same 3 training pieces as the LSTM (no transposition augmentation)"},
        "lstm_vs_ngram": {"best_order": 2, "perplexity_ratio": ratio, "event_perplexity_ratio": 0.5,
                          "per_order": {"1": {"perplexity_ratio": 0.25}, "2": {"perplexity_ratio": ratio}}},
        "music_metrics": {
            "temperatures": [0.5, 1.0],
            "metric_names": list(METRICS),
            "descriptions": dict(DESCRIPTIONS),
            "real": {"pieces": real_rows,
                     "summary": {"pitch_entropy": {"mean": 4.0, "std": 0.5, "n": pieces, "n_undefined": 0},
                                 "key_correlation": {"mean": 0.8, "std": 0.0, "n": pieces, "n_undefined": 0}}},
            "generated": generated,
            "comparison": {key: {"pitch_entropy": {"overlapping_area": 0.125, "kl_divergence": 1.5},
                                 "key_correlation": {"overlapping_area": None, "kl_divergence": None}}
                           for key in generated},
        },
        "figures": ["metric_distributions.png", "metrics_vs_temperature.png"],
    }


# ----------------------------------------------------------------------------- markdown

# Rendered by the code before it moved into this module; any change to the report's
# wording, numbers or layout shows up here first.
EVALUATION_MD = """\
# Evaluation of runs/demo

Held-out split: 2 pieces, 120 tokens, 48 events (note representation, vocabulary 40; 1 held-out tokens are `<unk>`). Generated: 2 pieces as long as the held-out pieces (piece i has the events of held-out piece i) per temperature, seed 3.

## Model quality on the held-out split

Every held-out piece is scored from its start (after `<piece>`); NLL is the mean negative log-likelihood per token, and per event (sonority) it is the piece's total NLL divided by its events.

| model | NLL nats/token | NLL bits/token | perplexity/token | top-1 accuracy | NLL nats/event | perplexity/event | LSTM perplexity / this |
|---|---|---|---|---|---|---|---|
| LSTM | 2.000 | 2.885 | 7.389 | 0.250 | 5.000 | 148.413 | 1.000 |
| 1-gram | 3.000 | 4.328 | 20.086 | 0.100 | 7.500 | 1808.042 | 0.250 |
| 2-gram (best) | 2.500 | 3.607 | 12.182 | 0.200 | 6.250 | 518.013 | 0.800 |

**LSTM perplexity / best n-gram (2-gram) perplexity = 0.800 per token, 0.500 per event**: the LSTM predicts the held-out music better than every n-gram (below 1 = better than the baseline).

The n-grams are interpolated modified Kneser-Ney models; n-grams are fit on the same 3 training pieces as the LSTM (no transposition augmentation).

## Music metrics (mean ± std over pieces)

Generated pieces start from `<piece>` alone (no primer; had there been one, only the generated part would be measured) and are measured in 4/4; real pieces in their own time signature.

| metric | T = 0.5 | T = 1 | held-out real |
|---|---|---|---|
| pitch_entropy | 2.250 ± 0.250 | 3.250 ± 0.250 | 4.000 ± 0.500 |
| key_correlation | 0.750 ± 0.000 (1 n/a) | 0.750 ± 0.000 (1 n/a) | 0.800 ± 0.000 |

## Generated vs real: overlapping area / KL divergence (Yang & Lerch 2020)

OA = overlap of the two Gaussian-KDE densities (1 = same distribution, 0 = disjoint); KL = KL(real ‖ generated) in nats (0 = same). The real distribution comes from 2 held-out pieces; with so few, these numbers are rough.

| metric | OA T = 0.5 | KL T = 0.5 | OA T = 1 | KL T = 1 |
|---|---|---|---|---|
| pitch_entropy | 0.125 | 1.500 | 0.125 | 1.500 |
| key_correlation | n/a | n/a | n/a | n/a |

## Generation

| temperature | pieces | mean events | stop reasons | repairs |
|---|---|---|---|---|
| 0.5 | 2 | 10.5 | end: 1, length: 1 | 1 |
| 1 | 2 | 10.5 | end: 1, length: 1 | 1 |

## How to read this

- Perplexity is exp(NLL): the number of equally likely choices the model is as uncertain as. Lower is better; compare the LSTM with the n-grams on the same pieces, not across corpora or representations.
- Per-event numbers put representations with different tokens per event on one scale.
- A good model's generated metrics sit near the held-out real values; higher temperature usually raises pitch entropy and the number of pitches, and lowers tonal measures.
- n/a: the metric is undefined for that piece (e.g. too few notes); such values are left out of means.

- `pitch_entropy`: entropy of pitches.
- `key_correlation`: how clearly one key.

## Figures

![metric_distributions.png](metric_distributions.png)
![metrics_vs_temperature.png](metrics_vs_temperature.png)
"""


def test_evaluation_markdown_is_unchanged():
    assert evaluate_report.render_evaluation(evaluation_result()) == EVALUATION_MD


def test_evaluation_markdown_follows_the_representation_the_held_out_count_and_the_ratio():
    text = evaluate_report.render_evaluation(evaluation_result(pieces=12, representation="classic", ratio=1.25))
    changed = set(text.splitlines()) - set(EVALUATION_MD.splitlines())
    assert changed == {
        "Held-out split: 12 pieces, 120 tokens, 48 events (classic representation, vocabulary 40; 1 held-out "
        "tokens are `<unk>`). Generated: 2 pieces as long as the held-out pieces (piece i has the events of "
        "held-out piece i) per temperature, seed 3.",
        "Every held-out piece is scored from its start (after `<piece>`); NLL is the mean negative log-likelihood "
        "per token, and per event (one token each) it is the piece's total NLL divided by its events.",
        "| 2-gram (best) | 2.500 | 3.607 | 12.182 | 0.200 | 6.250 | 518.013 | 1.250 |",
        "**LSTM perplexity / best n-gram (2-gram) perplexity = 1.250 per token, 0.500 per event**: the LSTM does "
        "not beat the best n-gram (below 1 = better than the baseline).",
        "OA = overlap of the two Gaussian-KDE densities (1 = same distribution, 0 = disjoint); KL = KL(real ‖ "
        "generated) in nats (0 = same). The real distribution comes from 12 held-out pieces.",
    }


def test_evaluation_markdown_without_a_ratio_or_figures():
    result = evaluation_result()
    result["lstm_vs_ngram"]["perplexity_ratio"] = None
    del result["figures"]
    text = evaluate_report.render_evaluation(result)
    assert ("**LSTM perplexity / best n-gram (2-gram) perplexity = n/a per token, 0.500 per event**: the LSTM does "
            "not beat the best n-gram (below 1 = better than the baseline).") in text
    assert text.endswith("## Figures\n\n")


def test_length_phrase():
    assert evaluate_report.length_phrase("matched") == ("as long as the held-out pieces (piece i has the events of "
                                               "held-out piece i)")
    assert evaluate_report.length_phrase(40) == "of up to 40 events"


# ----------------------------------------------------------------------------- figures


def visible(figure):
    return [axis for axis in figure.axes if axis.axison]


def legend_labels(figure):
    (legend,) = figure.legends
    return [text.get_text() for text in legend.get_texts()]


def means(axis):
    """The plotted means: the marked lines (error-bar caps are lines too)."""
    return [line for line in axis.lines if line.get_marker() == "o"]


def dashed(axis):
    return [line for line in axis.lines if line.get_linestyle() == "--"]


def read_head(path):
    with open(path, "rb") as handle:
        return handle.read(8)


def test_distribution_figure_has_a_histogram_panel_per_metric(tmp_path, saved_figures):
    path = str(tmp_path / "distributions.png")
    evaluate_report.plot_distributions(evaluation_result()["music_metrics"], path)
    assert read_head(path) == PNG_SIGNATURE
    (figure,) = saved_figures
    assert [axis.get_title() for axis in visible(figure)] == list(METRICS)
    assert legend_labels(figure) == ["held-out real", "T = 0.5", "T = 1"]


def test_distribution_figure_marks_a_metric_without_values(tmp_path, saved_figures):
    music = evaluation_result()["music_metrics"]
    for rows in [music["real"]["pieces"]] + [music["generated"][k]["pieces"] for k in music["generated"]]:
        for row in rows:
            row["metrics"]["key_correlation"] = math.nan
    evaluate_report.plot_distributions(music, str(tmp_path / "distributions.png"))
    (figure,) = saved_figures
    assert [axis.get_title() for axis in visible(figure)] == ["pitch_entropy"]
    assert figure.axes[1].get_title() == "key_correlation (undefined)"


def test_temperature_figure_plots_means_against_temperature(tmp_path, saved_figures):
    music = evaluation_result()["music_metrics"]
    music["real"]["summary"]["key_correlation"] = {"mean": None, "std": None, "n": 0, "n_undefined": 2}
    music["generated"]["1"]["summary"]["pitch_entropy"]["mean"] = math.nan
    path = str(tmp_path / "temperature.png")
    evaluate_report.plot_metrics_vs_temperature(music, path)
    assert read_head(path) == PNG_SIGNATURE
    (figure,) = saved_figures
    panels = visible(figure)
    assert [axis.get_title() for axis in panels] == list(METRICS)
    assert {axis.get_xlabel() for axis in panels} == {"temperature"}
    (generated,) = means(panels[0])
    assert list(generated.get_xdata()) == [0.5, 1.0]
    assert generated.get_ydata()[0] == 2.25 and math.isnan(generated.get_ydata()[1])
    # The real mean is a dashed line where it exists, and absent where every value was undefined.
    assert [line.get_ydata()[0] for line in dashed(panels[0])] == [4.0]
    assert dashed(panels[1]) == []
    assert sorted(legend_labels(figure)) == ["generated", "held-out real"]
