"""Tests for keras_music.evaluate: held-out likelihood, n-gram baseline, music metrics and the report."""

import argparse
import importlib.util
import json
import math
import os
import types
from fractions import Fraction

import numpy as np
import pytest

from keras_music import cli, dataset, evaluate, events, metrics, ngram, run as run_lib, sampling, storage

pytestmark = pytest.mark.slow


def _generate_module_ready() -> bool:
    if importlib.util.find_spec("keras_music.generate") is None:
        return False
    try:
        from keras_music.generate import Generator  # noqa: F401
    except ImportError:
        return False
    return True


needs_generator = pytest.mark.skipif(not _generate_module_ready(), reason="keras_music.generate is not available")


def fake_piece(tokens, primer_events=0, stop_reason="length"):
    sonorities = events.tokens_to_sonorities(tokens)
    return types.SimpleNamespace(tokens=list(tokens), primer_tokens=[events.BOUNDARY], ids=None,
                                 sonorities=sonorities, notes=events.sonorities_to_notes(sonorities),
                                 primer_events=primer_events, stop_reason=stop_reason, repairs={})


class NGramGenerator:
    """A controlled stand-in for generate.Generator: samples a bigram model of the run's training pieces.

    Same `generate` signature and Piece fields, seeded numpy sampling through
    keras_music.sampling, so the temperature effect is deterministic.
    """

    def __init__(self, run_dir):
        self.vocabulary = run_lib.load_vocabulary(run_dir)
        training = dataset.read_pieces(dataset.shard_files(run_lib.data_dir(run_dir), "train"))
        self.model = ngram.NGramModel(2, len(self.vocabulary)).fit(training)
        self.calls = []

    def generate(self, num_samples=1, length=200, temperature=1.0, top_k=0, top_p=1.0, seed=0, **_):
        self.calls.append({"num_samples": num_samples, "length": length, "temperature": temperature, "seed": seed})
        rng = sampling.make_rng(seed)
        banned = [self.vocabulary.pad_id, self.vocabulary.unk_id, self.vocabulary.boundary_id]
        pieces = []
        lengths = list(length) if isinstance(length, list) else [length] * num_samples
        for row in range(num_samples):
            ids = []
            while sum(self.vocabulary.tokens[i].startswith("dur:") for i in ids) < lengths[row]:
                probabilities = self.model.probabilities(ids)[None, :]
                ids.append(int(sampling.sample_next(probabilities, rng, temperature, 0, 1.0, banned)[0]))
            pieces.append(fake_piece(self.vocabulary.decode(ids)))
        return pieces


def test_matched_length_gives_each_generated_piece_a_held_out_piece_length(tiny_run):
    real = [{"events": 7}, {"events": 3}]
    assert evaluate.generation_lengths("matched", real, 5) == {"length": [7, 3, 7, 3, 7], "min_length": 7}
    assert evaluate.generation_lengths(12, real, 5) == {"length": 12}
    generator = NGramGenerator(tiny_run)
    music = evaluate.music_metrics(tiny_run, num_samples=3, length="matched", temperatures=(1.0,), seed=0,
                                   generator=generator)
    held_out = [row["events"] for row in music["real"]["pieces"]]
    assert generator.calls[0]["length"] == [held_out[i % len(held_out)] for i in range(3)]
    assert [row["events"] for row in music["generated"]["1"]["pieces"]] == generator.calls[0]["length"]


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
    generator = None
    if not _generate_module_ready():
        generator = NGramGenerator(tiny_run)
    result = evaluate.evaluate_run(tiny_run, num_samples=4, length=24, temperatures=(0.5, 1.5), seed=3,
                                   orders=(1, 2, 3), out_dir=out_dir, generator=generator)
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
    assert set(music["comparison"]["0.5"]) == set(metrics.METRIC_DESCRIPTIONS)
    assert len(music["generated"]["1.5"]["pieces"]) == 4
    assert set(music["real"]["summary"]) == set(metrics.METRIC_DESCRIPTIONS)
    report = storage.read_text(os.path.join(out_dir, "evaluation.md"))
    for heading in ("## Model quality", "## Music metrics", "## Generated vs real", "## How to read this"):
        assert heading in report
    for row in ("| LSTM |", "| 1-gram", "| 2-gram", "| 3-gram", "T = 0.5", "T = 1.5", "held-out real"):
        assert row in report
    for description in metrics.METRIC_DESCRIPTIONS.values():
        assert description in report
    assert "untransposed" in report or "no transposition augmentation" in report


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


def test_lstm_nll_equals_direct_model_computation(evaluation, tiny_run):
    result, _ = evaluation
    model = run_lib.load_model(tiny_run)
    held_out = dataset.read_pieces(dataset.shard_files(run_lib.data_dir(tiny_run), "validation"))
    ids = held_out[0]
    probabilities = model.predict(np.array([[2, *ids[:-1]]], dtype=np.int32), verbose=0)[0]
    chosen = probabilities[np.arange(len(ids)), ids].astype(np.float64)
    expected_nll = -np.mean(np.log(chosen))
    expected_accuracy = np.mean(probabilities.argmax(-1) == ids)
    piece = result["model_quality"]["per_piece"][0]
    assert piece["tokens"] == len(ids)
    assert piece["nll_nats"] == pytest.approx(expected_nll, rel=1e-6)
    assert piece["accuracy"] == pytest.approx(expected_accuracy)
    if len(held_out) == 1:
        assert result["model_quality"]["nll_nats"] == pytest.approx(expected_nll, rel=1e-6)


def test_right_padded_batches_score_like_single_pieces(tiny_run):
    model = run_lib.load_model(tiny_run)
    data_dir = run_lib.data_dir(tiny_run)
    pieces = dataset.read_pieces(dataset.shard_files(data_dir, "train") + dataset.shard_files(data_dir, "validation"))
    pieces = pieces + [pieces[0][:5]]
    assert len({len(p) for p in pieces}) > 2
    batched, batched_hits = evaluate.token_log_probs(model, pieces, boundary_id=2)
    for piece, log_probs, hits in zip(pieces, batched, batched_hits):
        alone, alone_hits = evaluate.token_log_probs(model, [piece], boundary_id=2)
        assert log_probs.shape == (len(piece),)
        np.testing.assert_allclose(log_probs, alone[0], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(hits, alone_hits[0])


def test_ngram_numbers_equal_ngram_evaluate(evaluation, tiny_run):
    result, _ = evaluation
    data_dir = run_lib.data_dir(tiny_run)
    training = dataset.read_pieces(dataset.shard_files(data_dir, "train"))
    held_out = dataset.read_pieces(dataset.shard_files(data_dir, "validation"))
    vocabulary_size = len(run_lib.load_vocabulary(tiny_run))
    for order in (1, 2, 3):
        direct = ngram.NGramModel(order, vocabulary_size).fit(training).evaluate(held_out)
        reported = result["ngram"]["orders"][str(order)]
        for key, value in direct.items():
            assert reported[key] == value, (order, key)
    assert result["ngram"]["training_pieces"] == len(training)


def test_generated_metrics_use_only_generated_notes(tiny_run):
    # Primer: two events of pitch 40; generated part: a C major scale fragment.
    primer = ["pitch:40", "dur:1", "hold:40", "dur:1/2"]
    generated = ["pitch:60", "dur:1", "pitch:62", "dur:1", "pitch:64", "dur:1", "pitch:65", "dur:1",
                 "pitch:67", "dur:2", "rest", "dur:1"]
    piece = fake_piece(primer + generated, primer_events=2)
    notes, sonorities = evaluate.generated_part(piece)
    np.testing.assert_allclose(notes, [[0, 1, 60], [1, 1, 62], [2, 1, 64], [3, 1, 65], [4, 2, 67]])
    assert len(sonorities) == 6 and sonorities[0].pitches == (60,)
    assert metrics.pitch_entropy(notes) == pytest.approx(math.log2(5))
    # With the primer's note the piece has 6 distinct pitches.
    assert metrics.pitch_entropy(piece.notes) == pytest.approx(math.log2(6))

    class PrimedGenerator:
        def generate(self, num_samples=1, **_):
            return [piece] * num_samples

    music = evaluate.music_metrics(tiny_run, num_samples=2, length=6, temperatures=(1.0,), seed=0,
                                   generator=PrimedGenerator())
    rows = music["generated"]["1"]["pieces"]
    assert rows[0]["metrics"]["pitch_entropy"] == pytest.approx(math.log2(5))
    assert rows[0]["events"] == 6
    expected = metrics.piece_metrics(notes, events.event_keys(sonorities), (4, 4),
                                     np.array(music["transition_matrix"]))
    for name, value in expected.items():
        assert rows[0]["metrics"][name] == pytest.approx(value, nan_ok=True), name
    # The generated part starts 1.5 quarters in; moved to 0 it has no empty beat
    # (left in place, the primer's beat would count as empty).
    assert rows[0]["metrics"]["empty_beat_rate"] == 0.0


def test_generated_part_keeps_a_note_that_starts_at_the_primer_end():
    piece = fake_piece(["pitch:60", "dur:1/3", "pitch:60", "dur:1/3", "pitch:61", "dur:1/3", "pitch:62",
                        "dur:1"], primer_events=3)
    notes, sonorities = evaluate.generated_part(piece)
    np.testing.assert_allclose(notes, [[0, 1, 62]], atol=1e-9)
    assert sonorities[0].duration == Fraction(1)


def test_pitch_entropy_rises_with_temperature_controlled(tiny_run):
    # A bigram model of the training pieces sampled with seeded numpy: at T = 0.3
    # it keeps to its few most likely continuations, at T = 3.0 it wanders over
    # the whole pitch vocabulary.
    music = evaluate.music_metrics(tiny_run, num_samples=6, length=30, temperatures=(0.3, 3.0), seed=11,
                                   generator=NGramGenerator(tiny_run))
    low = music["generated"]["0.3"]["summary"]["pitch_entropy"]
    high = music["generated"]["3"]["summary"]["pitch_entropy"]
    assert low["n"] == high["n"] == 6
    assert high["mean"] > low["mean"] + 0.5
    assert (music["generated"]["3"]["summary"]["n_pitches_used"]["mean"]
            > music["generated"]["0.3"]["summary"]["n_pitches_used"]["mean"])


@needs_generator
def test_pitch_entropy_rises_with_temperature_real_generator(tiny_run):
    from keras_music.generate import Generator

    music = evaluate.music_metrics(tiny_run, num_samples=8, length=40, temperatures=(0.3, 3.0), seed=5,
                                   generator=Generator(tiny_run))
    # Seeded, so deterministic; seeds 0, 5 and 11 all give gaps above 2 bits.
    low = music["generated"]["0.3"]["summary"]["pitch_entropy"]
    high = music["generated"]["3"]["summary"]["pitch_entropy"]
    assert low["n"] >= 4 and high["n"] >= 4
    assert high["mean"] > low["mean"] + 1.0


def test_evaluate_run_rejects_bad_settings(tiny_run, tmp_path):
    for kwargs in ({"num_samples": 0}, {"length": -1}, {"temperatures": (-0.5,)}, {"temperatures": ()},
                   {"orders": (0, 1)}, {"seed": -1}):
        with pytest.raises(ValueError):
            evaluate.evaluate_run(tiny_run, out_dir=str(tmp_path), **kwargs)


@pytest.mark.parametrize("arguments", [
    ["--num-samples", "0"],
    ["--num-samples", "-3"],
    ["--length", "-1"],
    ["--length", "ten"],
    ["--temperature", "-0.5"],
    ["--temperature", "1.0", "nan"],
    ["--seed", "-1"],
    ["--orders", "0-2"],
    ["--orders", "3-1"],
    ["--orders", "abc"],
])
def test_cli_bad_values_exit_2(tiny_run, arguments, capsys):
    with pytest.raises(SystemExit) as raised:
        evaluate.main(["--run-dir", tiny_run, *arguments])
    assert raised.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_missing_run_dir_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        evaluate.main(["--run-dir", str(tmp_path / "nowhere")])
    assert raised.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_orders_argument():
    assert evaluate.orders_argument("1-5") == (1, 2, 3, 4, 5)
    assert evaluate.orders_argument("3,1,3") == (1, 3)
    assert evaluate.orders_argument("2") == (2,)
    assert evaluate.orders_argument("1-20")[-1] == 20
    assert evaluate.DEFAULT_ORDERS == tuple(range(1, 13))
    with pytest.raises(argparse.ArgumentTypeError, match="above 20"):
        evaluate.orders_argument("1-21")


@needs_generator
def test_cli_writes_report(tiny_run, tmp_path, capsys):
    out_dir = str(tmp_path / "report")
    with pytest.raises(SystemExit) as raised:
        evaluate.main(["--run-dir", tiny_run, "--num-samples", "2", "--length", "8", "--temperature", "1.0",
                       "--orders", "1-2", "--out", out_dir, "--quiet"])
    assert raised.value.code == 0
    assert "perplexity" in capsys.readouterr().out
    assert os.path.exists(os.path.join(out_dir, "evaluation.md"))
    assert os.path.exists(os.path.join(out_dir, "metric_distributions.png"))
    # One temperature: nothing to plot against temperature.
    assert not os.path.exists(os.path.join(out_dir, "metrics_vs_temperature.png"))
    written = storage.read_json(os.path.join(out_dir, "evaluation.json"))
    assert written["settings"]["temperatures"] == [1.0]
    assert sorted(written["ngram"]["orders"]) == ["1", "2"]
