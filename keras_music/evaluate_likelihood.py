"""How well a run's LSTM predicts its held-out pieces, beside Kneser-Ney n-grams fit on its training pieces."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np

from keras_music import events, run as run_lib
from keras_music import infill, ngram, sampling
from keras_music.cli import progress
from keras_music.evaluate_held_out import HeldOutPiece, load_split
from keras_music.generate import Generator
from keras_music.sampling import SamplingSettings

# Held-out perplexity on the Bach chorales keeps improving up to order 8 and is
# flat by 12, so the baseline is compared at its best order, not a truncated one.
DEFAULT_ORDERS = tuple(range(1, 13))
MAX_ORDER = 20

def token_log_probs(model, pieces, **options):
    """keras_music.model.token_log_probs: the LSTM's log probabilities of whole pieces (training's whole-piece
    validation shares it). Imported when called, so this module's names load without TensorFlow."""
    from keras_music import model as model_lib

    return model_lib.token_log_probs(model, pieces, **options)


# ----------------------------------------------------------------------------- LSTM likelihood


def never_sampled(vocabulary) -> np.ndarray | None:
    """Bool per id: the control tokens and infilling sentinels, which a generator feeds but never samples
    (None for a vocabulary without them, whose scores need no renormalising)."""
    mask = np.array([events.is_control(t) or events.is_fim(t) for t in vocabulary.tokens], bool)
    return mask if mask.any() else None


def _safe_exp(value: float) -> float:
    if not math.isfinite(value):
        return value
    return math.exp(value) if value < 700 else math.inf


def likelihood_summary(total_nll: float, tokens: int, *, events_count: int) -> dict:
    """NLL (nats and bits) and perplexity per token and per event from a total NLL in nats."""
    nll = total_nll / tokens if tokens else math.nan
    event_nll = total_nll / events_count if events_count else math.nan
    return {
        "nll_nats": nll,
        "nll_bits": nll / math.log(2),
        "perplexity": _safe_exp(nll),
        "event_nll_nats": event_nll,
        "event_nll_bits": event_nll / math.log(2),
        "event_perplexity": _safe_exp(event_nll),
        "tokens": tokens,
        "events": events_count,
    }


def model_quality(run_dir: str, pieces: list[HeldOutPiece] | None = None, *, model=None, vocabulary=None,
                  show_progress: bool = False) -> dict:
    """Per-token and per-event NLL, perplexity and top-1 accuracy of the run's model on its held-out pieces.

    Held-out pieces carry no control tokens: a run trained with controls or infilling is scored as
    unconditioned generation samples, its distribution renormalised over the tokens it may sample
    (`never_sampled`); `raw_perplexity` keeps the plain softmax's per-token number beside it.
    """
    vocabulary = vocabulary or run_lib.load_vocabulary(run_dir)
    pieces = pieces if pieces is not None else load_split(run_dir, "validation", vocabulary=vocabulary)
    model = model or run_lib.load_model(run_dir, vocabulary)
    excluded = never_sampled(vocabulary)
    log_probs, hits = token_log_probs(model, [p.ids for p in pieces], boundary_id=vocabulary.boundary_id,
                                      pad_id=vocabulary.pad_id, show_progress=show_progress, excluded=excluded)
    raw_nll = None
    if excluded is not None:
        raw, _ = token_log_probs(model, [p.ids for p in pieces], boundary_id=vocabulary.boundary_id,
                                 pad_id=vocabulary.pad_id)
        raw_nll = -float(sum(lp.sum() for lp in raw))
    tokens = sum(len(p.ids) for p in pieces)
    if tokens == 0:
        raise run_lib.RunError(f"{run_dir}: the held-out split has no tokens to score")
    total_nll = -float(sum(lp.sum() for lp in log_probs))
    result = likelihood_summary(total_nll, tokens, events_count=sum(p.events for p in pieces))
    result["accuracy"] = float(sum(int(h.sum()) for h in hits)) / tokens
    if raw_nll is not None:
        result["renormalized"] = "over the tokens a generator samples (controls and sentinels left out)"
        result["raw_nll_nats"] = raw_nll / tokens
        result["raw_perplexity"] = _safe_exp(raw_nll / tokens)
    result["pieces"] = len(pieces)
    result["unknown_tokens"] = int(sum(int(np.sum(p.ids == vocabulary.unk_id)) for p in pieces))
    from keras_music.model import PROBABILITY_FLOOR

    result["floored_probabilities"] = int(sum(int(np.sum(lp <= math.log(PROBABILITY_FLOOR))) for lp in log_probs))
    result["per_piece"] = [
        {"name": p.name, "tokens": len(p.ids), "events": p.events,
         "nll_nats": -float(lp.mean()) if len(lp) else math.nan,
         "accuracy": float(h.mean()) if len(h) else math.nan}
        for p, lp, h in zip(pieces, log_probs, hits)
    ]
    return result


def event_accuracy(run_dir: str) -> dict:
    """Fraction of held-out events (sonorities) whose every token the model predicts top-1 from the true past."""
    vocabulary = run_lib.load_vocabulary(run_dir)
    pieces = load_split(run_dir, "validation", vocabulary=vocabulary)
    model = run_lib.load_model(run_dir, vocabulary)
    _, hits = token_log_probs(model, [p.ids for p in pieces], boundary_id=vocabulary.boundary_id,
                              pad_id=vocabulary.pad_id)
    ends_event = np.array([events.ends_event(t, vocabulary.representation) for t in vocabulary.tokens])
    correct = total = 0
    for piece, hit in zip(pieces, hits):
        ends = np.flatnonzero(ends_event[piece.ids])
        start = 0
        for end in ends:
            total += 1
            correct += int(hit[start:end + 1].all())
            start = end + 1
    return {"event_accuracy": correct / total if total else math.nan, "events_scored": total}


# ----------------------------------------------------------------------------- n-gram baseline


def check_orders(orders) -> tuple[int, ...]:
    """Sorted distinct n-gram orders, each an integer in 1..MAX_ORDER (ValueError otherwise)."""
    orders = tuple(orders)
    if not orders or any(isinstance(o, bool) or int(o) != o or not 1 <= o <= MAX_ORDER for o in orders):
        raise ValueError(f"orders must be integers in 1..{MAX_ORDER}, got {orders!r}")
    return tuple(sorted({int(o) for o in orders}))


def ngram_baseline(run_dir: str, orders=DEFAULT_ORDERS, *, pieces: list[HeldOutPiece] | None = None,
                   train_pieces: list[HeldOutPiece] | None = None, vocabulary=None,
                   show_progress: bool = False) -> dict:
    """Kneser-Ney n-grams of each order fit on the training split and scored on the held-out pieces.

    Returns `orders` (keyed by the order as a string: ngram.NGramModel.evaluate's
    numbers plus per-event NLL/perplexity) and `best_order`.
    """
    orders = check_orders(orders)
    vocabulary = vocabulary or run_lib.load_vocabulary(run_dir)
    pieces = pieces if pieces is not None else load_split(run_dir, "validation", vocabulary=vocabulary)
    train_pieces = train_pieces if train_pieces is not None else load_split(run_dir, "train", vocabulary=vocabulary)
    held_out = [p.ids for p in pieces]
    training = [p.ids for p in train_pieces]
    excluded = never_sampled(vocabulary)
    if excluded is not None:
        # The held-out pieces carry no controls: the n-grams learn the music without them, as it is scored.
        training = [ids[~excluded[ids]] for ids in training]
    events_count = sum(p.events for p in pieces)
    results = {}
    models = ngram.fit_orders(training, len(vocabulary), orders=orders)
    for order in progress(orders, show=show_progress, desc="n-gram baselines", unit="order"):
        scores = models[order].evaluate(held_out)
        summary = likelihood_summary(scores["nll_nats"] * scores["tokens"], scores["tokens"], events_count=events_count)
        # The per-token numbers are ngram's own, untouched.
        summary.update(scores)
        results[str(order)] = summary
    best = ngram.best_order({int(k): v for k, v in results.items()})
    return {
        "orders": results,
        "best_order": best,
        # The whole curve at a glance: where it stops improving shows whether
        # the orders reached far enough for `best_order` to be the real best.
        "perplexity_by_order": {order: scores["perplexity"] for order, scores in results.items()},
        "training_pieces": len(training),
        "training_tokens": int(sum(len(t) for t in training)),
    }


def ngram_note(training_pieces: int, transpose: int) -> str:
    """What the n-grams were fit on, against what the LSTM saw."""
    if transpose:
        return (f"n-grams are fit on the {training_pieces} untransposed training pieces; the LSTM also saw "
                f"them transposed by up to +/-{transpose} semitones (data.transpose={transpose})")
    return (f"n-grams are fit on the same {training_pieces} training pieces as the LSTM "
            "(no transposition augmentation)")


def compare_with_ngrams(lstm: dict, baseline: dict) -> dict:
    """LSTM perplexity over each n-gram's (per token and per event); below 1 the LSTM predicts better."""
    best = baseline["orders"][str(baseline["best_order"])]
    return {
        "best_order": baseline["best_order"],
        "perplexity_ratio": lstm["perplexity"] / best["perplexity"],
        "event_perplexity_ratio": lstm["event_perplexity"] / best["event_perplexity"],
        "per_order": {k: {"perplexity_ratio": lstm["perplexity"] / v["perplexity"],
                          "event_perplexity_ratio": lstm["event_perplexity"] / v["event_perplexity"]}
                      for k, v in baseline["orders"].items()},
    }


# ----------------------------------------------------------------------------- infilling (runs trained with it)

# Held-out pieces the infilling check cuts a gap in (one gap of 1-4 bars each, seeded).
MAX_INFILL_GAPS = 64


def infill_gaps(run_dir: str, pieces: list[HeldOutPiece], *, vocabulary, seed: int = 0,
                max_gaps: int = MAX_INFILL_GAPS) -> list[dict]:
    """One gap per held-out piece (up to `max_gaps`): the piece's name, the gap and its suffix/prefix/middle tokens."""
    data = run_lib.load_config(run_dir).data
    grid, window = int(data.grid), int(data.seq_length)
    entries = run_lib.manifest_entries(run_dir, strict=False)
    rng = random.Random(seed)
    out = []
    for piece in pieces:
        if len(out) >= max_gaps:
            break
        entry = entries.get(piece.name) or {}
        sonorities = events.tokens_to_sonorities(vocabulary.decode(piece.ids), "note")
        start = events.quantize(entry.get("start") or 0, grid)
        signatures = entry.get("time_signatures")
        for gap in infill.training_gaps(sonorities, start, time_signatures=signatures, rng=rng, count=1, grid=grid):
            parts = infill.cut(sonorities, start, gap)
            suffix, prefix, middle = infill.context_tokens(parts, start, grid=grid)
            if middle:
                out.append({"piece": piece.name, "gap": gap, "suffix": suffix, "prefix": prefix, "middle": middle,
                            "context": infill.generation_context(parts, suffix, prefix=prefix,
                                                                 window=infill.example_length(window),
                                                                 lengths=infill.has_lengths(vocabulary.tokens)),
                            "ticks": int(gap.duration * grid), "duration": Fraction(gap.duration)})
    return out


def _distributions(model, sequences) -> list[np.ndarray]:
    """Float64 [len - 1, vocab]: row j is the next-token distribution after the sequence's first j + 1 tokens,
    fed from the model's start state (one sequence at a time)."""
    out = []
    for ids in sequences:
        tokens = np.asarray([ids[:-1]], np.int32)
        out.append(np.asarray(model(tokens, training=False))[0].astype(np.float64))
    return out


def _nll(probabilities: np.ndarray, target: int, *, allowed: np.ndarray | None = None) -> float:
    """-log of the target's probability, the distribution first renormalised over `allowed` if given."""
    from keras_music.model import PROBABILITY_FLOOR

    if allowed is not None:
        probabilities = np.where(allowed, probabilities, 0.0)
        probabilities = probabilities / max(probabilities.sum(), PROBABILITY_FLOOR)
    return -float(np.log(max(probabilities[target], PROBABILITY_FLOOR)))


def middle_nll(model, gaps: list[dict], *, vocabulary, grid: int) -> list[dict]:
    """Per gap, the middle's total NLL after the FIM context (fed from the start state, `<fim_suffix>` first,
    as `generate --infill` feeds it) and after `<piece>` and the whole prefix (a left-to-right continuation):
    from the softmax alone (`fim`, `prefix`) and as each generator samples (`fim_masked`: the grammar and
    `infill.GapMask`, which knows how much of the gap is left; `prefix_masked`: the grammar alone)."""
    grammar = sampling.Grammar(events.grammar_table(vocabulary.tokens, vocabulary.representation))
    mask = infill.GapMask(vocabulary.tokens, grid)
    out = []
    for gap in gaps:
        middle = vocabulary.encode(gap["middle"])
        context = vocabulary.encode(gap["context"])
        lead = [vocabulary.boundary_id] + vocabulary.encode(gap["prefix"])
        totals = {}
        for name, head, gapped in (("fim", context, True), ("prefix", lead, False)):
            probabilities = _distributions(model, [head + middle])[0]
            # The middle continues the prefix: the grammar reads from <fim_prefix> on, as `Generator.fill` does.
            start = len(head) - head[::-1].index(mask.prefix_id) if gapped and mask.prefix_id in head else 0
            state = grammar.start(1)
            for token in head[start:]:
                grammar.advance(state, np.array([token]))
            remaining, raw, masked = np.array([gap["ticks"]]), 0.0, 0.0
            for offset, token in enumerate(middle):
                allowed = grammar.allowed(state)
                if gapped:
                    allowed = mask.allowed(allowed, state.phase == 0, remaining)
                row = probabilities[len(head) - 1 + offset]
                raw += _nll(row, token)
                masked += _nll(row, token, allowed=allowed[0])
                grammar.advance(state, np.array([token]))
                remaining = remaining - mask.ticks[token]
            totals[name], totals[f"{name}_masked"] = raw, masked
        out.append(totals)
    return out


def infill_quality(run_dir: str, pieces: list[HeldOutPiece], *, vocabulary, generator=None, seed: int = 0,
                   temperature: float = 0.9, model=None, max_gaps: int = MAX_INFILL_GAPS) -> dict:
    """For held-out gaps: NLL per token of the true middle after suffix + prefix (FIM order, the context
    `generate --infill` feeds: the suffix's opening and the prefix's end in one window) and after the whole
    prefix alone (the same bars continued left to right), and the share of sampled fills with the gap's exact
    duration."""
    gaps = infill_gaps(run_dir, pieces, vocabulary=vocabulary, seed=seed, max_gaps=max_gaps)
    if not gaps:
        return {"gaps": 0, "note": "no held-out piece has bars enough for a gap with music before and after it"}
    model = model or run_lib.load_model(run_dir, vocabulary)
    scores = middle_nll(model, gaps, vocabulary=vocabulary, grid=run_lib.load_config(run_dir).data.grid)
    details, totals = [], {"fim": 0.0, "prefix": 0.0, "fim_masked": 0.0, "prefix_masked": 0.0}
    for gap, score in zip(gaps, scores):
        n = len(gap["middle"])
        for name in totals:
            totals[name] += score[name]
        details.append({"piece": gap["piece"], "bars": [gap["gap"].first, gap["gap"].last],
                        "onset": float(gap["gap"].onset), "offset": float(gap["gap"].offset),
                        "middle_tokens": n, "nll_fim": score["fim"] / n, "nll_prefix_only": score["prefix"] / n,
                        "nll_fim_masked": score["fim_masked"] / n,
                        "nll_prefix_only_masked": score["prefix_masked"] / n})
    if generator is None:
        generator = Generator(run_dir)
    contexts = [vocabulary.encode(g["context"]) for g in gaps]
    fills, _ = generator.fill(contexts, [g["ticks"] for g in gaps], seed=seed, sampling=SamplingSettings(temperature=temperature))
    exact = 0
    for detail, gap, fill in zip(details, gaps, fills):
        filled = sum((Fraction(t.partition(":")[2]) for t in vocabulary.decode(fill) if t.startswith("dur:")),
                     Fraction(0))
        detail["fill_tokens"] = len(fill)
        detail["fill_exact"] = filled == gap["duration"]
        exact += detail["fill_exact"]
    tokens = sum(d["middle_tokens"] for d in details)
    nll = {name: total / tokens for name, total in totals.items()}
    return {"gaps": len(gaps), "middle_tokens": tokens, "nll_fim": nll["fim"], "nll_prefix_only": nll["prefix"],
            "nll_reduction": 1 - nll["fim"] / nll["prefix"] if nll["prefix"] > 0 else 0.0,
            "nll_fim_masked": nll["fim_masked"], "nll_prefix_only_masked": nll["prefix_masked"],
            "nll_reduction_masked": 1 - nll["fim_masked"] / nll["prefix_masked"] if nll["prefix_masked"] > 0 else 0.0,
            "fills": len(fills), "exact_fills": int(exact), "exact_share": exact / len(fills),
            "temperature": float(temperature), "seed": int(seed), "details": details}
