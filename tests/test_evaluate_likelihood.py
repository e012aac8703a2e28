"""Tests for keras_music.evaluate_likelihood: the LSTM's held-out likelihood and the n-gram baselines beside it."""

import math

import numpy as np
import pytest

from keras_music import dataset, events, evaluate_likelihood as likelihood, model as model_lib, ngram, run as run_lib

pytestmark = pytest.mark.slow


def stored_pieces(run_dir, *splits):
    data_dir = run_lib.data_dir(run_dir)
    return dataset.read_pieces([file for split in splits for file in dataset.shard_files(data_dir, split)])


def test_lstm_nll_equals_direct_model_computation(tiny_run):
    quality = likelihood.model_quality(tiny_run)
    model = run_lib.load_model(tiny_run)
    held_out = stored_pieces(tiny_run, "validation")
    total_nll = total_hits = 0.0
    for ids, piece in zip(held_out, quality["per_piece"], strict=True):
        probabilities = model.predict(np.array([[2, *ids[:-1]]], dtype=np.int32), verbose=0)[0]
        chosen = probabilities[np.arange(len(ids)), ids].astype(np.float64)
        hits = probabilities.argmax(-1) == ids
        assert piece["tokens"] == len(ids)
        assert piece["nll_nats"] == pytest.approx(-np.mean(np.log(chosen)), rel=1e-6)
        assert piece["accuracy"] == pytest.approx(np.mean(hits))
        total_nll -= float(np.sum(np.log(chosen)))
        total_hits += float(np.sum(hits))
    tokens = sum(len(ids) for ids in held_out)
    assert quality["tokens"] == tokens and quality["pieces"] == len(held_out)
    assert quality["nll_nats"] == pytest.approx(total_nll / tokens, rel=1e-6)
    assert quality["accuracy"] == pytest.approx(total_hits / tokens)
    assert quality["perplexity"] == pytest.approx(math.exp(quality["nll_nats"]))
    unk_id = run_lib.load_vocabulary(tiny_run).unk_id
    assert quality["unknown_tokens"] == sum(int(np.sum(np.asarray(ids) == unk_id)) for ids in held_out) > 0
    assert quality["floored_probabilities"] == 0


def test_right_padded_batches_score_like_single_pieces(tiny_run):
    model = run_lib.load_model(tiny_run)
    pieces = stored_pieces(tiny_run, "train", "validation")
    pieces = pieces + [pieces[0][:5]]
    assert len({len(p) for p in pieces}) > 2
    batched, batched_hits = likelihood.token_log_probs(model, pieces, boundary_id=2)
    for piece, log_probs, hits in zip(pieces, batched, batched_hits):
        alone, alone_hits = likelihood.token_log_probs(model, [piece], boundary_id=2)
        assert log_probs.shape == (len(piece),)
        np.testing.assert_allclose(log_probs, alone[0], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(hits, alone_hits[0])


def test_empty_pieces_score_nothing(tiny_run):
    model = run_lib.load_model(tiny_run)
    log_probs, hits = likelihood.token_log_probs(model, [[], [5, 6, 7]], boundary_id=2)
    assert log_probs[0].shape == hits[0].shape == (0,)
    assert log_probs[1].shape == hits[1].shape == (3,) and np.all(log_probs[1] < 0)


def test_batches_group_pieces_shortest_first_under_both_caps(monkeypatch):
    pieces = [np.zeros(n) for n in (5, 0, 3, 8, 3, 4)]
    assert model_lib._batches_by_length(pieces, 10) == [[2, 4, 5, 0, 3]]
    monkeypatch.setattr(model_lib, "MAX_BATCH_PIECES", 2)
    assert model_lib._batches_by_length(pieces, 10) == [[2, 4], [5, 0], [3]]
    # Two pieces padded to width 3 over 10 tokens make 60 output cells; a third of width 4, 120: over 90.
    monkeypatch.setattr(model_lib, "MAX_BATCH_PIECES", 32)
    monkeypatch.setattr(model_lib, "MAX_OUTPUT_CELLS", 90)
    assert model_lib._batches_by_length(pieces, 10) == [[2, 4], [5], [0], [3]]


def test_event_accuracy_counts_events_whose_every_token_is_the_top_choice(tiny_run):
    result = likelihood.event_accuracy(tiny_run)
    vocabulary = run_lib.load_vocabulary(tiny_run)
    model = run_lib.load_model(tiny_run)
    held_out = stored_pieces(tiny_run, "validation")
    _, hits = likelihood.token_log_probs(model, held_out, boundary_id=vocabulary.boundary_id, pad_id=vocabulary.pad_id)
    correct = total = 0
    for ids, hit in zip(held_out, hits):
        event_hit = True
        for token, token_hit in zip(vocabulary.decode(ids), hit):
            event_hit = event_hit and bool(token_hit)
            if events.ends_event(token, vocabulary.representation):
                total += 1
                correct += event_hit
                event_hit = True
    assert result == {"event_accuracy": correct / total, "events_scored": total}
    assert total > 0


def test_ngram_numbers_equal_ngram_evaluate(tiny_run):
    baseline = likelihood.ngram_baseline(tiny_run, (3, 1, 2))
    training = stored_pieces(tiny_run, "train")
    held_out = stored_pieces(tiny_run, "validation")
    vocabulary_size = len(run_lib.load_vocabulary(tiny_run))
    assert list(baseline["orders"]) == ["1", "2", "3"]
    for order in (1, 2, 3):
        direct = ngram.NGramModel(order, vocabulary_size).fit(training).evaluate(held_out)
        reported = baseline["orders"][str(order)]
        for key, value in direct.items():
            assert reported[key] == value, (order, key)
        assert reported["event_nll_nats"] == pytest.approx(reported["nll_nats"] * reported["tokens"]
                                                           / reported["events"])
    assert baseline["best_order"] == min((s["perplexity"], int(o)) for o, s in baseline["orders"].items())[1]
    assert baseline["perplexity_by_order"] == {o: s["perplexity"] for o, s in baseline["orders"].items()}
    assert (baseline["training_pieces"], baseline["training_tokens"]) == (len(training), sum(map(len, training)))


def test_likelihood_summary_per_token_and_per_event():
    summary = likelihood.likelihood_summary(20.0, 10, events_count=4)
    assert summary["nll_nats"] == 2.0 and summary["event_nll_nats"] == 5.0
    assert summary["nll_bits"] == pytest.approx(2 / math.log(2))
    assert summary["perplexity"] == pytest.approx(math.exp(2)) and summary["event_perplexity"] == pytest.approx(math.exp(5))
    assert (summary["tokens"], summary["events"]) == (10, 4)
    assert math.isnan(likelihood.likelihood_summary(1.0, 0, events_count=0)["perplexity"])
    assert likelihood.likelihood_summary(1e6, 1, events_count=1)["perplexity"] == math.inf


def test_check_orders_sorts_and_rejects():
    assert likelihood.check_orders([3, 1, 3, 2.0]) == (1, 2, 3)
    for bad in ((), (0,), (21,), (1.5,), (True,)):
        with pytest.raises(ValueError, match="orders must be integers in 1..20"):
            likelihood.check_orders(bad)


def test_compare_with_ngrams_divides_the_lstm_perplexity_by_each_order():
    lstm = {"perplexity": 6.0, "event_perplexity": 60.0}
    baseline = {"best_order": 2, "orders": {"1": {"perplexity": 12.0, "event_perplexity": 30.0},
                                            "2": {"perplexity": 4.0, "event_perplexity": 120.0}}}
    assert likelihood.compare_with_ngrams(lstm, baseline) == {
        "best_order": 2, "perplexity_ratio": 1.5, "event_perplexity_ratio": 0.5,
        "per_order": {"1": {"perplexity_ratio": 0.5, "event_perplexity_ratio": 2.0},
                      "2": {"perplexity_ratio": 1.5, "event_perplexity_ratio": 0.5}}}


def test_ngram_note_says_whether_the_lstm_saw_transpositions():
    assert likelihood.ngram_note(3, 0) == ("n-grams are fit on the same 3 training pieces as the LSTM "
                                           "(no transposition augmentation)")
    assert likelihood.ngram_note(3, 5) == ("n-grams are fit on the 3 untransposed training pieces; the LSTM also "
                                           "saw them transposed by up to +/-5 semitones (data.transpose=5)")
