"""Tests for keras_music.experiment_claims: means with standard errors, the two-standard-error verdicts, claims."""

import math

import pytest

from keras_music import experiment_claims as claims


def test_mean_se_uses_the_sample_standard_deviation_of_finite_values():
    summary = claims.mean_se([1.0, 3.0, None, math.nan, math.inf])
    assert summary == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "se": pytest.approx(1.0), "n": 2}
    single = claims.mean_se([4.0])
    assert single["mean"] == 4.0 and single["n"] == 1 and math.isnan(single["std"]) and math.isnan(single["se"])
    empty = claims.mean_se(iter([]))
    assert empty["n"] == 0 and math.isnan(empty["mean"])


def test_verdict_needs_two_standard_errors_in_the_claimed_direction():
    assert claims.verdict(1.0, 0.5, +1) == "supports"
    assert claims.verdict(-1.0, 0.5, +1) == "contradicts"
    assert claims.verdict(0.99, 0.5, +1) == "cannot tell"
    assert claims.verdict(0.0, 0.0, +1) == "cannot tell"
    assert claims.verdict(1.0, math.nan, +1) == "cannot tell"
    assert claims.verdict(math.nan, 0.1, -1) == "cannot tell"


def test_verdicts_follow_the_two_standard_error_rule():
    assert claims.compare_groups([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], direction=+1)["verdict"] == "supports"
    assert claims.compare_groups([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], direction=-1)["verdict"] == "contradicts"
    assert claims.compare_groups([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], direction=+1)["verdict"] == "cannot tell"
    assert claims.compare_groups([1.0], [5.0, 6.0], direction=+1)["verdict"] == "cannot tell"  # n < 2
    assert claims.compare_groups([1.0, None, float("nan")], [5.0, 6.0], direction=+1)["verdict"] == "cannot tell"
    result = claims.compare_groups([1.0, 3.0], [4.0, 6.0], direction=+1)
    assert result["difference"] == pytest.approx(3.0)
    assert result["se"] == pytest.approx(math.sqrt(2 / 2 + 2 / 2))  # s² = 2 in each group, n = 2
    paired = claims.compare_paired({"a": 3.0, "b": 4.0, "c": 5.0}, {"a": 2.0, "b": 3.1, "c": 3.9}, direction=-1)
    assert paired["pairs"] == 3 and paired["verdict"] == "supports"


def test_compare_paired_uses_only_items_both_sides_scored():
    paired = claims.compare_paired({"a": 3.0, "b": 4.0, "c": None, "d": 1.0}, {"a": 2.0, "b": 2.0, "c": 1.0},
                                   direction=-1)
    assert paired["pairs"] == 2
    assert paired["difference"] == pytest.approx(-1.5)
    assert paired["se"] == pytest.approx(0.5)
    assert (paired["original"]["mean"], paired["modified"]["mean"]) == (3.5, 2.0)
    assert paired["verdict"] == "supports"  # 1.5 lower is three standard errors, and lower was expected


def test_slope_and_combination():
    rising = claims.slope([0.5, 0.5, 1.0, 1.0, 1.5, 1.5], [1.0, 1.1, 2.0, 2.1, 3.0, 3.1], direction=+1)
    assert rising["slope"] == pytest.approx(2.0) and rising["verdict"] == "supports"
    assert claims.slope([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], direction=+1)["verdict"] == "cannot tell"  # one temperature
    assert claims.slope([0.5, 1.0, None, 1.5], [1.0, 2.0, 5.0, math.nan], direction=+1)["n"] == 2
    assert claims.combine(["supports"]) == "supports"
    assert claims.combine(["supports", "cannot tell", "cannot tell"]) == "cannot tell"
    assert claims.combine(["supports", "supports", "cannot tell"]) == "supports"
    assert claims.combine(["supports", "supports", "contradicts"]) == "cannot tell"
    assert claims.combine(["contradicts", "cannot tell", "contradicts", "cannot tell"]) == "contradicts"
    assert claims.combine([]) == "cannot tell"


def test_rule_states_the_spread_factor_and_every_verdict():
    assert f"{claims.SPREAD_FACTOR:g} × its standard error" in claims.RULE
    for verdict in claims.VERDICTS:
        assert verdict in claims.RULE
    assert [claim["id"] for claim in claims.CLAIMS] == [1, 2, 3, 4, 5]


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
    verdicts = {c["id"]: c["verdict"] for c in claims.judge_claims(original, modified)}
    # Modified is higher everywhere: transitions, rhythm and coherence support; novelty is
    # higher (distinct ratio and entropy up) with longer repetitions: mixed, so cannot tell.
    assert verdicts == {1: "supports", 2: "supports", 3: "supports", 4: "cannot tell", 5: "supports"}
    verdicts = {c["id"]: c["verdict"] for c in claims.judge_claims(modified, original)}
    assert verdicts[1] == verdicts[2] == verdicts[3] == "contradicts"


def test_judge_claims_names_each_measure():
    original = fake_evaluation(0.0, [3.0, 3.2, 2.9, 3.1])
    modified = fake_evaluation(0.5, [2.5, 2.71, 2.38, 2.6])
    judged = {c["id"]: c for c in claims.judge_claims(original, modified, names=("small", "large"))}
    assert [(m["config"], m["measure"]) for m in judged[5]["measures"]] == [
        ("small", "pitch_entropy"), ("small", "scale_consistency"),
        ("large", "pitch_entropy"), ("large", "scale_consistency")]
    # Pitch entropy is 3 + T per piece: the slope over both temperatures is 1.
    assert judged[5]["measures"][0]["slope"] == pytest.approx(1.0) and judged[5]["measures"][0]["n"] == 10
    held_out = judged[3]["measures"][2]
    assert held_out["measure"] == "held_out_perplexity" and held_out["pairs"] == 4
    assert held_out["original"]["perplexity"] == original["model_quality"]["perplexity"]
    assert held_out["modified"]["perplexity"] == modified["model_quality"]["perplexity"]
    assert held_out["difference"] == pytest.approx(-0.5025)
    pooled = judged[1]["measures"][0]
    assert pooled["original"]["n"] == pooled["modified"]["n"] == 10 and pooled["difference"] == pytest.approx(0.5)
