"""Tests for keras_music.experiment: the two-config study end to end on tiny configs, and its CLI."""

import json
import os
import re

import pytest

from keras_music import experiment, experiment_claims, experiment_report, model as model_lib, run as run_lib

from conftest import FOUR_CHORALES
from test_experiment_configs import write_config

pytestmark = pytest.mark.slow


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
    for figure in (experiment_report.LEARNING_CURVES_PNG, experiment_report.METRICS_PNG):
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
    for temperature in ("0.5", "0.9", "1", "1.5"):
        assert f"T = {temperature} |" in header
    assert header.rstrip().endswith("| held-out real |")
    rows = table_after(report, "| metric | config |")
    assert {(row[0], row[1]) for row in rows} == {(m, c) for m in result["metric_names"] for c in ("small", "large")}
    real = {row[0]: row[-1] for row in rows}
    assert real["pitch_entropy"] != "n/a"


def test_claims_table_has_one_verdict_per_claim(study):
    _, result, report = study
    rows = table_after(report, "| # | claim (modified vs original) |")
    assert [int(row[0]) for row in rows] == [claim["id"] for claim in experiment_claims.CLAIMS]
    for row, claim in zip(rows, result["claims"]):
        assert row[-1] in experiment_claims.VERDICTS
        assert row[-1] == claim["verdict"] == experiment_claims.combine(m["verdict"] for m in claim["measures"])
    assert "Rule:" in report and "2 × its standard error" in report


def test_report_json_agrees_with_the_run_directories(study):
    out, result, _ = study
    assert result["names"] == ["small", "large"] and result["compared"] == ["small", "large"]
    assert result["data"]["same_held_out"] is True
    assert result["settings"]["budget_tokens"] == 1000 and result["scaled"] and result["budgeted"]
    for name, run in result["runs"].items():
        run_dir = os.path.join(out, run["run_dir"])
        with open(run_lib.path(run_dir, run_lib.TRAINING_RECORD)) as handle:
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
        for key in ("0.5", "0.9", "1", "1.5"):
            assert run["music"][key]["pitch_entropy"]["n"] <= 2
        # Every study model is an ordinary run: the model loads with its vocabulary, at its trained size.
        model = run_lib.load_model(run_dir)
        assert model.outputs[0].shape[-1] == result["data"]["vocabulary_size"]
        assert [layer.units for layer in model_lib.lstm_layers(model)] == [run["settings"]["hidden_size"]] * 3
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


def test_report_only_adds_the_votes_gathered_since_without_retraining(study, tmp_path, capsys):
    import shutil

    from keras_music import listening

    out, result, report = study
    copy = str(tmp_path / "out")
    shutil.copytree(out, copy)
    models = {name: os.path.getmtime(run_lib.path(copy, result["runs"][name]["run_dir"], run_lib.MODEL))
              for name in result["names"]}
    # Nothing new: the report reads exactly as the study wrote it.
    assert run_main(["--report-only", "--out", copy]) == 0
    with open(os.path.join(copy, experiment.REPORT_MD)) as handle:
        assert handle.read() == report
    first, second = result["compared"]
    dirs = [os.path.join(copy, result["runs"][name]["run_dir"]) for name in (first, second)]
    store = listening.Store(os.path.join(copy, listening.DB_NAME))
    name = f"{first}@1 vs {second}@1"
    store.add_comparison(name, "prefer", first=f"{first}@1", second=f"{second}@1", first_dir=dirs[0], second_dir=dirs[1])
    a = store.add_stimulus(f"{first}@1", "a.ogg", seconds=8.0)
    b = store.add_stimulus(f"{second}@1", "b.ogg", seconds=8.0)
    for number in range(5):
        store.vote(store.add_pair(name, a, second_stimulus=b, first_is="a", listener=f"listener{number % 3}"),
                   "a" if number < 4 else "b")
    capsys.readouterr()
    assert run_main(["--report-only", "--out", copy]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "listening: 5 votes in 1 comparison"
    with open(os.path.join(copy, experiment.REPORT_MD)) as handle:
        updated = handle.read()
    assert f"| {name} | which do you prefer? (preference = share who picked {first}@1) | 3 | 5 | 0.800 |" in updated
    with open(os.path.join(copy, experiment.REPORT_JSON)) as handle:
        assert json.load(handle)["listening"][0]["votes"] == 5
    assert {name: os.path.getmtime(run_lib.path(copy, result["runs"][name]["run_dir"], run_lib.MODEL))
            for name in result["names"]} == models


def test_report_only_needs_a_finished_study(tmp_path, capsys):
    assert run_main(["--report-only"]) == 2
    assert "argument --report-only: needs --out DIR" in capsys.readouterr().err
    assert run_main(["--report-only", "--out", str(tmp_path)]) == 1  # a missing study is an error, not a usage one
    assert "--report-only re-renders the report of a study that finished" in capsys.readouterr().err
