"""Tests for keras_music.experiment: the two-config study end to end on tiny configs, its statistics and its CLI."""

import json
import math
import os
import re

import pytest
import yaml

from keras_music import experiment, run as run_lib

from conftest import FOUR_CHORALES, TINY

pytestmark = pytest.mark.slow


def write_config(directory, name, hidden_size, seq_length):
    with open(TINY) as handle:
        data = yaml.safe_load(handle)
    data["model"]["hidden_size"] = hidden_size
    data["data"]["seq_length"] = seq_length
    path = os.path.join(directory, name + ".yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(data, handle)
    return path


def run_main(argv):
    with pytest.raises(SystemExit) as exit_info:
        experiment.main(argv)
    return exit_info.value.code


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("configs"))
    return write_config(directory, "small", 16, 16), write_config(directory, "large", 24, 32)


@pytest.fixture(scope="module")
def study(configs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("study") / "out")
    argv = ["--configs", *configs, "--scale", "0.5", "--budget-tokens", "1000", "--num-samples", "2",
            "--length", "12", "--write-samples", "1", "--out", out, "--quiet"]
    for source in FOUR_CHORALES:
        argv += ["--data", source]
    assert run_main(argv) == 0
    with open(os.path.join(out, experiment.REPORT_JSON)) as handle:
        result = json.load(handle)
    with open(os.path.join(out, experiment.REPORT_MD)) as handle:
        report = handle.read()
    return out, result, report


def table_after(report, header_start):
    """Rows (lists of cells) of the first markdown table whose header line starts with header_start."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


# ----------------------------------------------------------------------------- the study end to end


def test_report_has_every_section(study):
    out, result, report = study
    for heading in ("## Caveats", "## What was trained", "## Per-config results", "## Learning curves",
                    "## Music metrics by temperature", "## The lab report's claims",
                    "### Measures behind the verdicts"):
        assert heading in report, heading
    for figure in (experiment.LEARNING_CURVES_PNG, experiment.METRICS_PNG):
        assert f"]({figure})" in report
        with open(os.path.join(out, figure), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    per_config = {row[0]: row[1:] for row in table_after(report, "| | small | large |")}
    for label in ("parameters", "tokens seen", "training time", "tokens per second", "held-out loss (NLL nats/token)",
                  "held-out perplexity per token", "held-out accuracy per token", "held-out perplexity per event",
                  "held-out accuracy per event", "best n-gram perplexity per token / per event",
                  "LSTM / n-gram perplexity per token (below 1: LSTM better)"):
        assert label in per_config, label
        assert len(per_config[label]) == 2 and all(cell and cell != "n/a" for cell in per_config[label]), label


def test_metrics_table_has_every_temperature_and_the_real_pieces(study):
    _, result, report = study
    header = next(line for line in report.splitlines() if line.startswith("| metric | config |"))
    for temperature in ("0.5", "0.8", "1", "1.2"):
        assert f"T = {temperature} |" in header
    assert header.rstrip().endswith("| held-out real |")
    rows = table_after(report, "| metric | config |")
    assert {(row[0], row[1]) for row in rows} == {(m, c) for m in result["metric_names"] for c in ("small", "large")}
    real = {row[0]: row[-1] for row in rows}
    assert real["pitch_entropy"] != "n/a"


def test_claims_table_has_one_verdict_per_claim(study):
    _, result, report = study
    rows = table_after(report, "| # | claim (modified vs original) |")
    assert [int(row[0]) for row in rows] == [claim["id"] for claim in experiment.CLAIMS]
    for row, claim in zip(rows, result["claims"]):
        assert row[-1] in experiment.VERDICTS
        assert row[-1] == claim["verdict"] == experiment.combine(m["verdict"] for m in claim["measures"])
    assert "Rule:" in report and "2 × its standard error" in report


def test_report_json_agrees_with_the_run_directories(study):
    out, result, _ = study
    assert result["names"] == ["small", "large"] and result["compared"] == ["small", "large"]
    assert result["data"]["same_held_out"] is True
    assert result["settings"]["budget_tokens"] == 1000 and result["scaled"] and result["budgeted"]
    for name, run in result["runs"].items():
        run_dir = os.path.join(out, run["run_dir"])
        with open(run_lib.path(run_dir, run_lib.METRICS)) as handle:
            metrics_json = json.load(handle)
        with open(os.path.join(out, run["evaluation"]).replace(".md", ".json")) as handle:
            evaluation = json.load(handle)
        assert run["training"]["tokens_seen"] == metrics_json["tokens_seen"] >= 1000
        assert run["training"]["parameters"] == metrics_json["parameters"]
        assert [h["val_loss"] for h in run["history"]] == [h["val_loss"] for h in metrics_json["history"]]
        assert run["history"][-1]["tokens_seen"] == metrics_json["tokens_seen"]
        assert run["quality"]["perplexity"] == pytest.approx(evaluation["model_quality"]["perplexity"])
        assert run["ngram"]["perplexity_ratio"] == pytest.approx(evaluation["lstm_vs_ngram"]["perplexity_ratio"])
        assert 0 <= run["quality"]["event_accuracy"] <= 1 and run["quality"]["events_scored"] > 0
        for key in ("0.5", "0.8", "1", "1.2"):
            assert run["music"][key]["pitch_entropy"]["n"] <= 2
        # Every study model is an ordinary run: the model loads with its vocabulary.
        assert run_lib.load_model(run_dir) is not None
        assert any(path.endswith(".mid") for paths in run["samples"].values() for path in paths)


def test_scale_halves_hidden_sizes_as_the_report_states(study):
    out, result, report = study
    for name, configured, trained in (("small", 16, 8), ("large", 24, 12)):
        run = result["runs"][name]
        assert run["settings"]["configured_hidden_size"] == configured
        assert run["settings"]["hidden_size"] == trained
        assert run_lib.load_config(os.path.join(out, run["run_dir"])).model.hidden_size == trained
    assert "| hidden_size (configured → trained) | 16 → **8** | 24 → **12** |" in report
    assert "`--scale 0.5`" in report and "These are not the lab report's models" in report


# ----------------------------------------------------------------------------- configs and budgets


def test_wall_clock_budget_settings_and_set_wins(configs, tmp_path):
    runs = experiment.resolve_runs(configs, str(tmp_path), budget_minutes=2.5, scale=0.125)
    for run in runs:
        train = run.config.train
        assert (train.time_budget_minutes, train.epochs, train.lr_schedule, train.early_stopping_patience) == \
            (2.5, experiment.BUDGET_EPOCHS, "constant", 0)
        assert run.config.model.hidden_size == experiment.MIN_SCALED_HIDDEN  # 16 * 0.125 = 2 -> floor 8
    runs = experiment.resolve_runs(configs, str(tmp_path), overrides=["train.lr_schedule=cosine",
                                                                      "model.hidden_size=100"],
                                   budget_minutes=1.0, scale=0.5)
    assert all(r.config.train.lr_schedule == "cosine" and r.config.model.hidden_size == 50 for r in runs)
    assert [r.name for r in runs] == ["small", "large"]
    with pytest.raises(experiment.ExperimentError):
        experiment.resolve_runs(configs, str(tmp_path), budget_minutes=1.0, budget_tokens=10)


def test_full_size_configs_resolve_unchanged(tmp_path):
    repo = os.path.dirname(TINY)
    files = [os.path.join(repo, "original.yaml"), os.path.join(repo, "modified.yaml")]
    original, modified = experiment.resolve_runs(files, str(tmp_path))
    assert (original.config.data.seq_length, original.config.model.hidden_size, original.config.train.batch_size,
            original.config.train.learning_rate) == (100, 1024, 8, 5e-3)
    assert (modified.config.data.seq_length, modified.config.model.hidden_size, modified.config.train.batch_size,
            modified.config.train.learning_rate) == (200, 2048, 64, 5e-4)
    assert original.applied == modified.applied == []


def test_scaled_hidden():
    assert experiment.scaled_hidden(1024, 0.125) == 128
    assert experiment.scaled_hidden(2048, 0.125) == 256
    assert experiment.scaled_hidden(24, 0.5) == 12
    assert experiment.scaled_hidden(16, 0.01) == experiment.MIN_SCALED_HIDDEN


# ----------------------------------------------------------------------------- statistics


def test_verdicts_follow_the_two_standard_error_rule():
    assert experiment.compare_groups([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], +1)["verdict"] == "supports"
    assert experiment.compare_groups([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], -1)["verdict"] == "contradicts"
    assert experiment.compare_groups([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], +1)["verdict"] == "cannot tell"
    assert experiment.compare_groups([1.0], [5.0, 6.0], +1)["verdict"] == "cannot tell"  # n < 2
    assert experiment.compare_groups([1.0, None, float("nan")], [5.0, 6.0], +1)["verdict"] == "cannot tell"
    result = experiment.compare_groups([1.0, 3.0], [4.0, 6.0], +1)
    assert result["difference"] == pytest.approx(3.0)
    assert result["se"] == pytest.approx(math.sqrt(2 / 2 + 2 / 2))  # s² = 2 in each group, n = 2
    paired = experiment.compare_paired({"a": 3.0, "b": 4.0, "c": 5.0}, {"a": 2.0, "b": 3.1, "c": 3.9}, -1)
    assert paired["pairs"] == 3 and paired["verdict"] == "supports"


def test_slope_and_combination():
    rising = experiment.slope([0.5, 0.5, 1.0, 1.0, 1.5, 1.5], [1.0, 1.1, 2.0, 2.1, 3.0, 3.1], +1)
    assert rising["slope"] == pytest.approx(2.0) and rising["verdict"] == "supports"
    assert experiment.slope([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], +1)["verdict"] == "cannot tell"  # one temperature
    assert experiment.combine(["supports"]) == "supports"
    assert experiment.combine(["supports", "cannot tell", "cannot tell"]) == "cannot tell"
    assert experiment.combine(["supports", "supports", "cannot tell"]) == "supports"
    assert experiment.combine(["supports", "supports", "contradicts"]) == "cannot tell"
    assert experiment.combine(["contradicts", "cannot tell", "contradicts", "cannot tell"]) == "contradicts"
    assert experiment.combine([]) == "cannot tell"


def fake_evaluation(shift, per_piece_nll, temperatures=(0.5, 1.0)):
    """An evaluate_run-shaped result whose every metric is `shift` higher than a fixed base, per piece."""
    generated = {}
    for t in temperatures:
        pieces = [{"metrics": {"note_transition_logprob": -2.0 + shift + 0.01 * i,
                               "groove_consistency": 0.8 + shift + 0.01 * i,
                               "scale_consistency": 0.9 - 0.1 * t + shift + 0.01 * i,
                               "key_correlation": 0.7 + shift + 0.01 * i,
                               "distinct_event_ratio": 0.5 + shift + 0.01 * i,
                               "pitch_entropy": 3.0 + t + shift + 0.01 * i,
                               "longest_repetition": 4.0 + shift + 0.01 * i}} for i in range(5)]
        generated[f"{t:g}"] = {"pieces": pieces}
    return {"music_metrics": {"temperatures": list(temperatures), "generated": generated},
            "model_quality": {"perplexity": math.exp(sum(per_piece_nll) / len(per_piece_nll)),
                              "per_piece": [{"name": f"p{i}", "nll_nats": v} for i, v in enumerate(per_piece_nll)]}}


def test_judge_claims_on_controlled_numbers():
    original = fake_evaluation(0.0, [3.0, 3.2, 2.9, 3.1])
    modified = fake_evaluation(0.5, [2.5, 2.71, 2.38, 2.6])
    verdicts = {c["id"]: c["verdict"] for c in experiment.judge_claims(original, modified)}
    # Modified is higher everywhere: transitions, rhythm and coherence support; novelty is
    # higher (distinct ratio and entropy up) with longer repetitions: mixed, so cannot tell.
    assert verdicts == {1: "supports", 2: "supports", 3: "supports", 4: "cannot tell", 5: "supports"}
    verdicts = {c["id"]: c["verdict"] for c in experiment.judge_claims(modified, original)}
    assert verdicts[1] == verdicts[2] == verdicts[3] == "contradicts"


# ----------------------------------------------------------------------------- command line


@pytest.mark.parametrize("extra, message", [
    (["--scale", "0"], "--scale"),
    (["--scale", "1.5"], "--scale"),
    (["--budget", "-1"], "--budget"),
    (["--budget", "1", "--budget-tokens", "100"], "not allowed with"),
    (["--num-samples", "0"], "--num-samples"),
    (["--temperatures", "-0.5"], "temperature"),
])
def test_bad_arguments_exit_2(configs, tmp_path, capsys, extra, message):
    out = str(tmp_path / "never")
    assert run_main(["--configs", *configs, "--out", out, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(out)


def test_one_config_and_missing_config_file_are_usage_errors(configs, tmp_path, capsys):
    out = str(tmp_path / "never")
    assert run_main(["--configs", configs[0], "--out", out]) == 2
    assert "at least two configs" in capsys.readouterr().err
    missing = str(tmp_path / "nowhere.yaml")
    assert run_main(["--configs", configs[0], missing, "--out", out]) == 2
    assert missing in capsys.readouterr().err
    assert not os.path.exists(out)


def test_help_names_the_recommended_command(capsys):
    assert run_main(["--help"]) == 0
    text = capsys.readouterr().out
    assert re.sub(r"\s+", " ", experiment.RECOMMENDED_COMMAND) in re.sub(r"\s+", " ", text)
