"""Tests for keras_music.evaluate: one run's whole evaluation, the files it writes, and its command line."""

import argparse
import json
import math
import os

import pytest

from conftest import usage_error

from keras_music import cli, evaluate, evaluate_report, formatting as fmt, music_metrics, run as run_lib, storage
from keras_music.evaluate_music import EvaluationSettings

pytestmark = pytest.mark.slow


def test_length_argument_takes_matched_or_a_positive_integer():
    assert cli.piece_length("matched") == "matched"
    assert cli.piece_length("Matched ") == "matched"
    assert cli.piece_length("40") == 40
    for bad in ("0", "-3", "long"):
        with pytest.raises(argparse.ArgumentTypeError, match="'matched' or a positive integer"):
            cli.piece_length(bad)


@pytest.fixture(scope="module")
def evaluation(tiny_run, tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("evaluation"))
    settings = EvaluationSettings(num_samples=4, length=24, temperatures=(0.5, 1.5), seed=3, orders=(1, 2, 3))
    result = evaluate.evaluate_run(tiny_run, settings, out_dir=out_dir)
    return result, out_dir


def test_writes_every_file_and_section(evaluation):
    result, out_dir = evaluation
    for name in ("evaluation.json", "evaluation.md", "metric_distributions.png", "metrics_vs_temperature.png"):
        assert os.path.getsize(os.path.join(out_dir, name)) > 0, name
    with open(os.path.join(out_dir, "metric_distributions.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    written = json.loads(storage.read_text(os.path.join(out_dir, "evaluation.json")))
    assert written == result
    for key in ("settings", "held_out", "model_quality", "ngram", "lstm_vs_ngram", "music_metrics", "figures"):
        assert key in written, key
    music = written["music_metrics"]
    assert sorted(music["generated"]) == ["0.5", "1.5"]
    assert set(music["comparison"]["0.5"]) == set(music_metrics.METRIC_DESCRIPTIONS)
    assert len(music["generated"]["1.5"]["pieces"]) == 4
    assert set(music["real"]["summary"]) == set(music_metrics.METRIC_DESCRIPTIONS)
    report = storage.read_text(os.path.join(out_dir, "evaluation.md"))
    for heading in ("## Model quality", "## Music metrics", "## Generated vs real", "## How to read this"):
        assert heading in report
    for row in ("| LSTM |", "| 1-gram", "| 2-gram", "| 3-gram", "T = 0.5", "T = 1.5", "held-out real"):
        assert row in report
    for description in music_metrics.METRIC_DESCRIPTIONS.values():
        assert description in report
    # The tiny config trains without transposition, and the report says so.
    assert result["settings"]["data_transpose"] == 0
    assert result["ngram"]["note"] == ("n-grams are fit on the same 3 training pieces as the LSTM "
                                       "(no transposition augmentation)")
    assert written["figures"] == ["metric_distributions.png", "metrics_vs_temperature.png"]
    # The markdown is evaluate_report's rendering of exactly the JSON written beside it.
    assert report == evaluate_report.render_evaluation(written)


def test_perplexity_and_bits_follow_from_nll(evaluation):
    result, _ = evaluation
    scored = [result["model_quality"], *result["ngram"]["orders"].values()]
    assert len(scored) == 4
    for scores in scored:
        assert scores["perplexity"] == pytest.approx(math.exp(scores["nll_nats"]), rel=1e-12)
        assert scores["nll_bits"] == pytest.approx(scores["nll_nats"] / math.log(2), rel=1e-12)
        assert scores["event_perplexity"] == pytest.approx(math.exp(scores["event_nll_nats"]), rel=1e-12)
        assert scores["event_nll_nats"] == pytest.approx(
            scores["nll_nats"] * scores["tokens"] / scores["events"], rel=1e-12)
    lstm, ratios = result["model_quality"], result["lstm_vs_ngram"]
    best = result["ngram"]["orders"][str(ratios["best_order"])]
    assert ratios["perplexity_ratio"] == pytest.approx(lstm["perplexity"] / best["perplexity"])
    assert best["perplexity"] == min(s["perplexity"] for s in result["ngram"]["orders"].values())
    assert result["ngram"]["perplexity_by_order"] == {
        order: scores["perplexity"] for order, scores in result["ngram"]["orders"].items()}


def test_counts_match_prepared(evaluation, tiny_run):
    result, _ = evaluation
    prepared = storage.read_json(run_lib.path(tiny_run, run_lib.PREPARED))
    lstm = result["model_quality"]
    assert lstm["events"] == prepared["validation_events"]
    assert lstm["tokens"] == prepared["tokens"]["validation"]
    assert lstm["pieces"] == prepared["pieces"]["validation"]
    for scores in result["ngram"]["orders"].values():
        assert (scores["tokens"], scores["events"]) == (lstm["tokens"], lstm["events"])


@pytest.mark.parametrize("setting, message", [
    ({"num_samples": 0}, "num_samples must be an integer >= 1, got 0"),
    ({"length": -1}, "length must be an integer >= 1, got -1"),
    ({"temperatures": (-0.5,)}, r"temperature must be a finite number >= 0 \(0 means greedy\), got -0.5"),
    ({"temperatures": ()}, "temperatures must name at least one temperature, got none"),
    ({"orders": (0, 1)}, r"orders must be integers in 1..20, got \(0, 1\)"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
])
def test_evaluate_run_rejects_bad_settings_before_writing(tiny_run, tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        evaluate.evaluate_run(tiny_run, EvaluationSettings(**setting), out_dir=str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("arguments, message", [
    (["--num-samples", "0"], "argument --num-samples: expected an integer in 1..1000, got 0"),
    (["--num-samples", "-3"], "argument --num-samples: expected an integer in 1..1000, got -3"),
    (["--length", "-1"], "argument --length: expected 'matched' or a positive integer, got '-1'"),
    (["--length", "ten"], "argument --length: expected 'matched' or a positive integer, got 'ten'"),
    (["--temperature", "-0.5"], "argument --temperature: temperature must be >= 0 (0 means greedy), got -0.5"),
    (["--temperature", "1.0", "nan"], "argument --temperature: temperature must be >= 0 (0 means greedy), got nan"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    (["--orders", "0-2"], "argument --orders: n-gram orders must be integers >= 1, got '0-2'"),
    (["--orders", "3-1"], "argument --orders: expected n-gram orders like 1-5 or 1,2,3, got '3-1'"),
    (["--orders", "abc"], "argument --orders: expected n-gram orders like 1-5 or 1,2,3, got 'abc'"),
])
def test_cli_bad_values_exit_2(tiny_run, arguments, message, capsys):
    line = usage_error(evaluate.main, ["--run-dir", tiny_run, *arguments], capsys)
    assert line == f"python -m keras_music.evaluate: error: {message}"


def test_cli_missing_run_dir_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        evaluate.main(["--run-dir", str(tmp_path / "nowhere")])
    assert raised.value.code == 2
    assert f"error: argument --run-dir: run directory {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err


def test_orders_argument():
    assert evaluate.orders_argument("1-5") == (1, 2, 3, 4, 5)
    assert evaluate.orders_argument("3,1,3") == (1, 3)
    assert evaluate.orders_argument("2") == (2,)
    assert evaluate.orders_argument("1-20")[-1] == 20
    assert evaluate.DEFAULT_ORDERS == tuple(range(1, 13))
    with pytest.raises(argparse.ArgumentTypeError, match="above 20"):
        evaluate.orders_argument("1-21")


def test_cli_writes_report(tiny_run, tmp_path, capsys):
    out_dir = str(tmp_path / "report")
    with pytest.raises(SystemExit) as raised:
        evaluate.main(["--run-dir", tiny_run, "--num-samples", "2", "--length", "8", "--temperature", "1.0",
                       "--orders", "1-2", "--out", out_dir, "--quiet"])
    assert raised.value.code == 0
    # One temperature: nothing to plot against temperature.
    assert sorted(os.listdir(out_dir)) == ["evaluation.json", "evaluation.md", "metric_distributions.png"]
    written = storage.read_json(os.path.join(out_dir, "evaluation.json"))
    assert written["settings"]["temperatures"] == [1.0] and written["figures"] == ["metric_distributions.png"]
    assert sorted(written["ngram"]["orders"]) == ["1", "2"]
    lstm, ratios = written["model_quality"], written["lstm_vs_ngram"]
    assert capsys.readouterr().out.splitlines() == [
        f"held-out: {lstm['tokens']} tokens, {lstm['events']} events; LSTM perplexity "
        f"{fmt.number(lstm['perplexity'])}/token ({fmt.number(lstm['nll_bits'])} bits), "
        f"{fmt.number(lstm['event_perplexity'])}/event, accuracy {fmt.number(lstm['accuracy'])}",
        f"LSTM / best n-gram ({ratios['best_order']}-gram) perplexity: {fmt.number(ratios['perplexity_ratio'])}",
        f"report: {os.path.join(out_dir, 'evaluation.md')}",
    ]
