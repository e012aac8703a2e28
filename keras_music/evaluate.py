"""Objective evaluation of a run: held-out likelihood against n-gram baselines, music metrics of generated vs real pieces."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import numpy as np

from keras_music import cli, events, formatting as fmt, metrics, plots, run as run_lib, storage

DEFAULT_NUM_SAMPLES = 20
MAX_NUM_SAMPLES = 1000
# Generated pieces as long as the held-out pieces they are compared with: pitch entropy,
# pitch range and most other metrics grow with a piece's length, so sets of unlike lengths
# differ for that reason alone.
DEFAULT_LENGTH = cli.MATCHED
# The recommended temperature (sampling.DEFAULT_TEMPERATURE) with a safer and two wilder ones.
DEFAULT_TEMPERATURES = (0.5, 0.9, 1.0, 1.5)
# Held-out perplexity on the Bach chorales keeps improving up to order 8 and is
# flat by 12, so the baseline is compared at its best order, not a truncated one.
DEFAULT_ORDERS = tuple(range(1, 13))
MAX_ORDER = 20
DEFAULT_TIME_SIGNATURE = (4, 4)

EVALUATION_DIR = "evaluation"
EVALUATION_JSON = "evaluation.json"
EVALUATION_MD = "evaluation.md"
DISTRIBUTIONS_PNG = "metric_distributions.png"
TEMPERATURE_PNG = "metrics_vs_temperature.png"

# One forward pass holds batch x time x vocabulary float32 probabilities; this caps
# it (about 128 MB) so long held-out pieces with a large vocabulary still fit.
MAX_OUTPUT_CELLS = 1 << 25
MAX_BATCH_PIECES = 32
# Floor for a probability before its log: a float32 softmax can underflow to 0 for a
# token the model rules out completely, and one -inf would hide every other number.
PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)

METRIC_NAMES = tuple(metrics.METRIC_DESCRIPTIONS)


@dataclasses.dataclass
class HeldOutPiece:
    """One piece of a split as stored in the run's shards, with what evaluation needs to know about it."""

    name: str
    ids: np.ndarray
    events: int
    time_signature: tuple[int, int]


# ----------------------------------------------------------------------------- reading the run


def _progress(iterable=None, show: bool = False, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not show, file=sys.stderr, **kwargs)


def _count_events(ids, vocabulary, entry) -> int:
    if vocabulary.representation == "classic":
        # Every classic token is one event; <unk> stands for a real (rare) token.
        return len(ids)
    if entry and isinstance(entry.get("events"), int):
        # The manifest counted sonorities before encoding, so an unknown duration
        # token (now <unk>) still counts as the event it ends.
        return int(entry["events"])
    return events.count_events(vocabulary.decode(ids), "note")


def _time_signature(entry) -> tuple[int, int]:
    signature = (entry or {}).get("time_signature")
    try:
        numerator, denominator = (int(v) for v in signature)
        if numerator >= 1 and denominator >= 1:
            return numerator, denominator
    except (TypeError, ValueError):
        pass
    return DEFAULT_TIME_SIGNATURE


def load_split(run_dir: str, split: str, vocabulary=None) -> list[HeldOutPiece]:
    """The pieces of one split (train or validation) of a run, in shard order."""
    vocabulary = vocabulary or run_lib.load_vocabulary(run_dir)
    # Checked against prepared.json: a missing or damaged shard is an error, never a smaller split.
    named = run_lib.named_pieces(run_dir, split, vocabulary)
    if not named:
        raise run_lib.RunError(f"{run_lib.data_dir(run_dir)} has no {split} pieces: {run_dir} has no {split} split")
    entries = run_lib.manifest_entries(run_dir)
    out = []
    for name, ids in named:
        entry = entries.get(name)
        ids = np.asarray(ids, dtype=np.int32)
        out.append(HeldOutPiece(name, ids, _count_events(ids, vocabulary, entry), _time_signature(entry)))
    return out


# ----------------------------------------------------------------------------- LSTM likelihood


def token_log_probs(model, pieces, boundary_id: int, pad_id: int = 0, show_progress: bool = False):
    """Natural-log probability and top-1 hit of every token of every piece under the sequence model.

    Each piece is fed as [boundary] + piece[:-1] and every piece token is scored, so
    the first token is predicted from the start of a piece, as in training. Pieces
    are batched by length and padded on the right: an LSTM reads left to right, so
    padding after a piece cannot change the outputs at the piece's own positions,
    and the padded positions are never scored.

    Returns:
      (log_probs, hits): lists with one float64 / bool array per piece, in input order.
    """
    import tensorflow as tf

    pieces = [np.asarray(p, dtype=np.int32) for p in pieces]
    vocabulary_size = int(model.outputs[0].shape[-1])
    forward = tf.function(lambda tokens: model(tokens, training=False),
                          input_signature=[tf.TensorSpec([None, None], tf.int32)])
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
    batches, current = [], []
    for i in order:
        if not len(pieces[i]):
            continue
        width = len(pieces[i])
        if current and ((len(current) + 1) * width * vocabulary_size > MAX_OUTPUT_CELLS
                        or len(current) >= MAX_BATCH_PIECES):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    log_probs = [np.zeros(0) for _ in pieces]
    hits = [np.zeros(0, dtype=bool) for _ in pieces]
    bar = _progress(total=sum(len(p) for p in pieces), show=show_progress, desc="scoring held-out", unit="token")
    for batch in batches:
        width = max(len(pieces[i]) for i in batch)
        tokens = np.full((len(batch), width), pad_id, dtype=np.int32)
        for row, i in enumerate(batch):
            tokens[row, 0] = boundary_id
            tokens[row, 1:len(pieces[i])] = pieces[i][:-1]
        probabilities = forward(tokens).numpy()
        for row, i in enumerate(batch):
            targets = pieces[i]
            steps = np.arange(len(targets))
            chosen = probabilities[row, steps, targets].astype(np.float64)
            log_probs[i] = np.log(np.maximum(chosen, PROBABILITY_FLOOR))
            hits[i] = probabilities[row, steps].argmax(axis=-1) == targets
            bar.update(len(targets))
    bar.close()
    return log_probs, hits


def _likelihood_summary(total_nll: float, tokens: int, events_count: int) -> dict:
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


def _safe_exp(value: float) -> float:
    if not math.isfinite(value):
        return value
    return math.exp(value) if value < 700 else math.inf


def model_quality(run_dir: str, pieces: list[HeldOutPiece] | None = None, model=None, vocabulary=None,
                  show_progress: bool = False) -> dict:
    """Per-token and per-event NLL, perplexity and top-1 accuracy of the run's model on its held-out pieces."""
    vocabulary = vocabulary or run_lib.load_vocabulary(run_dir)
    pieces = pieces if pieces is not None else load_split(run_dir, "validation", vocabulary)
    model = model or run_lib.load_model(run_dir, vocabulary)
    log_probs, hits = token_log_probs(model, [p.ids for p in pieces], vocabulary.boundary_id,
                                      vocabulary.pad_id, show_progress)
    tokens = sum(len(p.ids) for p in pieces)
    if tokens == 0:
        raise run_lib.RunError(f"{run_dir}: the held-out split has no tokens to score")
    total_nll = -float(sum(lp.sum() for lp in log_probs))
    result = _likelihood_summary(total_nll, tokens, sum(p.events for p in pieces))
    result["accuracy"] = float(sum(int(h.sum()) for h in hits)) / tokens
    result["pieces"] = len(pieces)
    result["unknown_tokens"] = int(sum(int(np.sum(p.ids == vocabulary.unk_id)) for p in pieces))
    result["floored_probabilities"] = int(sum(int(np.sum(lp <= math.log(PROBABILITY_FLOOR))) for lp in log_probs))
    result["per_piece"] = [
        {"name": p.name, "tokens": len(p.ids), "events": p.events,
         "nll_nats": -float(lp.mean()) if len(lp) else math.nan,
         "accuracy": float(h.mean()) if len(h) else math.nan}
        for p, lp, h in zip(pieces, log_probs, hits)
    ]
    return result


# ----------------------------------------------------------------------------- n-gram baseline


def ngram_baseline(run_dir: str, orders=DEFAULT_ORDERS, pieces: list[HeldOutPiece] | None = None,
                   train_pieces: list[HeldOutPiece] | None = None, vocabulary=None,
                   show_progress: bool = False) -> dict:
    """Kneser-Ney n-grams of each order fit on the training split and scored on the held-out pieces.

    Returns `orders` (keyed by the order as a string: ngram.NGramModel.evaluate's
    numbers plus per-event NLL/perplexity) and `best_order`.
    """
    from keras_music import ngram

    orders = _check_orders(orders)
    vocabulary = vocabulary or run_lib.load_vocabulary(run_dir)
    pieces = pieces if pieces is not None else load_split(run_dir, "validation", vocabulary)
    train_pieces = train_pieces if train_pieces is not None else load_split(run_dir, "train", vocabulary)
    held_out = [p.ids for p in pieces]
    training = [p.ids for p in train_pieces]
    events_count = sum(p.events for p in pieces)
    results = {}
    models = ngram.fit_orders(training, len(vocabulary), orders)
    for order in _progress(orders, show=show_progress, desc="n-gram baselines", unit="order"):
        scores = models[order].evaluate(held_out)
        summary = _likelihood_summary(scores["nll_nats"] * scores["tokens"], scores["tokens"], events_count)
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


def _check_orders(orders) -> tuple[int, ...]:
    orders = tuple(orders)
    if not orders or any(isinstance(o, bool) or int(o) != o or not 1 <= o <= MAX_ORDER for o in orders):
        raise ValueError(f"orders must be integers in 1..{MAX_ORDER}, got {orders!r}")
    return tuple(sorted({int(o) for o in orders}))


# ----------------------------------------------------------------------------- music metrics


def decode_sonorities(ids, vocabulary):
    return events.tokens_to_sonorities(vocabulary.decode(ids), vocabulary.representation, vocabulary.classic_step)


def piece_notes(sonorities) -> np.ndarray:
    return events.sonorities_to_notes(sonorities)


def generated_part(piece) -> tuple[np.ndarray, list]:
    """Notes and sonorities a Generator piece added after its primer.

    Notes that begin inside the primer (including ones held past its end) are
    dropped and the rest are moved so the generated part starts at time 0, so that
    beat- and bar-based metrics do not count the primer's time as silence.
    """
    primer_events = int(getattr(piece, "primer_events", 0) or 0)
    sonorities = list(piece.sonorities)
    primer_end = float(sum(s.duration for s in sonorities[:primer_events]))
    notes = np.asarray(piece.notes, dtype=np.float64).reshape(-1, 3)
    # Onsets are sums of grid fractions converted to float; the slack keeps a note
    # starting exactly at the primer's end on the generated side.
    kept = notes[notes[:, 0] >= primer_end - 1e-9].copy()
    kept[:, 0] = np.maximum(kept[:, 0] - primer_end, 0.0)
    return kept, sonorities[primer_events:]


def transition_matrix_for(pieces: list[HeldOutPiece], vocabulary) -> np.ndarray:
    return metrics.transition_matrix([piece_notes(decode_sonorities(p.ids, vocabulary)) for p in pieces])


def real_piece_metrics(pieces: list[HeldOutPiece], vocabulary, matrix, show_progress: bool = False) -> list[dict]:
    out = []
    for piece in _progress(pieces, show=show_progress, desc="metrics of held-out pieces", unit="piece"):
        sonorities = decode_sonorities(piece.ids, vocabulary)
        values = metrics.piece_metrics(piece_notes(sonorities), events.event_keys(sonorities),
                                       piece.time_signature, matrix)
        out.append({"name": piece.name, "events": len(sonorities), "time_signature": list(piece.time_signature),
                    "metrics": values})
    return out


def generated_piece_metrics(pieces, matrix) -> list[dict]:
    out = []
    for piece in pieces:
        notes, sonorities = generated_part(piece)
        values = metrics.piece_metrics(notes, events.event_keys(sonorities), DEFAULT_TIME_SIGNATURE, matrix)
        repairs = getattr(piece, "repairs", None) or {}
        out.append({"events": len(sonorities), "notes": int(len(notes)),
                    "stop_reason": getattr(piece, "stop_reason", None),
                    "repairs": int(sum(repairs.values())) if isinstance(repairs, dict) else int(repairs or 0),
                    "metrics": values})
    return out


def summarize_values(values) -> dict:
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return {
        "mean": float(finite.mean()) if len(finite) else math.nan,
        "std": float(finite.std()) if len(finite) else math.nan,
        "n": int(len(finite)),
        "n_undefined": int(len(values) - len(finite)),
    }


def _metric_values(rows, name) -> list[float]:
    return [row["metrics"].get(name, math.nan) for row in rows]


def temperature_key(temperature: float) -> str:
    return f"{float(temperature):g}"


def music_metrics(run_dir: str, num_samples: int = DEFAULT_NUM_SAMPLES, length: int = DEFAULT_LENGTH,
                  temperatures=DEFAULT_TEMPERATURES, seed: int = 0, pieces=None, train_pieces=None,
                  vocabulary=None, generator=None, show_progress: bool = False) -> dict:
    """Metrics of generated pieces per temperature and of held-out real pieces, and their comparison."""
    vocabulary = vocabulary or run_lib.load_vocabulary(run_dir)
    pieces = pieces if pieces is not None else load_split(run_dir, "validation", vocabulary)
    train_pieces = train_pieces if train_pieces is not None else load_split(run_dir, "train", vocabulary)
    matrix = transition_matrix_for(train_pieces, vocabulary)
    real = real_piece_metrics(pieces, vocabulary, matrix, show_progress)
    if generator is None:
        from keras_music.generate import Generator

        generator = Generator(run_dir)
    generated, summaries, comparisons = {}, {}, {}
    for temperature in _progress(temperatures, show=show_progress and len(temperatures) > 1,
                                 desc="temperatures", unit="temperature"):
        key = temperature_key(temperature)
        # No primer: pieces come from the model's own openings, so the generated set does
        # not borrow material from the held-out pieces it is compared with.
        samples = generator.generate(num_samples=num_samples, temperature=float(temperature), seed=seed,
                                     primer_tokens=[], show_progress=show_progress,
                                     **generation_lengths(length, real, num_samples))
        rows = generated_piece_metrics(samples, matrix)
        generated[key] = rows
        summaries[key] = {name: summarize_values(_metric_values(rows, name)) for name in METRIC_NAMES}
        comparisons[key] = {name: metrics.compare_distributions(_metric_values(rows, name),
                                                                _metric_values(real, name))
                            for name in METRIC_NAMES}
    return {
        "temperatures": [float(t) for t in temperatures],
        "metric_names": list(METRIC_NAMES),
        "descriptions": dict(metrics.METRIC_DESCRIPTIONS),
        "transition_matrix": matrix.tolist(),
        "real": {"pieces": real,
                 "summary": {name: summarize_values(_metric_values(real, name)) for name in METRIC_NAMES}},
        "generated": {key: {"pieces": generated[key], "summary": summaries[key],
                            "stop_reasons": _stop_reasons(generated[key])} for key in generated},
        "comparison": comparisons,
    }


def generation_lengths(length, real_rows, num_samples: int) -> dict:
    """Generator length settings: `matched` gives piece i exactly the events of held-out piece i (cycling)."""
    if length != cli.MATCHED:
        return {"length": length}
    if not real_rows:
        raise ValueError("length 'matched' needs at least one held-out piece")
    lengths = [max(1, int(real_rows[i % len(real_rows)]["events"])) for i in range(num_samples)]
    return {"length": lengths, "min_length": max(lengths)}


def _stop_reasons(rows) -> dict:
    reasons: dict[str, int] = {}
    for row in rows:
        reason = str(row.get("stop_reason"))
        reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


# ----------------------------------------------------------------------------- the whole evaluation


def evaluate_run(run_dir: str, num_samples: int = DEFAULT_NUM_SAMPLES, length: int = DEFAULT_LENGTH,
                 temperatures=DEFAULT_TEMPERATURES, seed: int = 0, orders=DEFAULT_ORDERS, out_dir: str | None = None,
                 show_progress: bool = False, generator=None) -> dict:
    """Evaluate a run and write evaluation.json, evaluation.md and plots into out_dir (default RUN/evaluation).

    `generator` replaces keras_music.generate.Generator(run_dir) (any object with
    the same `generate` method), for callers that already hold one.
    """
    _check_settings(num_samples, length, temperatures, seed)
    orders = _check_orders(orders)
    out_dir = out_dir or run_lib.path(run_dir, EVALUATION_DIR)
    # One evaluation writes a directory at a time; the run itself is only read.
    with run_lib.lock(out_dir, "python -m keras_music.evaluate"):
        return _evaluate_run(run_dir, num_samples, length, temperatures, seed, orders, out_dir, show_progress,
                             generator)


def _evaluate_run(run_dir, num_samples, length, temperatures, seed, orders, out_dir, show_progress, generator):
    temperatures = tuple(float(t) for t in temperatures)
    config = run_lib.load_config(run_dir)
    vocabulary = run_lib.load_vocabulary(run_dir)
    held_out = load_split(run_dir, "validation", vocabulary)
    training = load_split(run_dir, "train", vocabulary)
    lstm = model_quality(run_dir, held_out, vocabulary=vocabulary, show_progress=show_progress)
    baseline = ngram_baseline(run_dir, orders, held_out, training, vocabulary, show_progress)
    best = baseline["orders"][str(baseline["best_order"])]
    transpose = int(config.data.transpose)
    comparison = {
        "best_order": baseline["best_order"],
        "perplexity_ratio": lstm["perplexity"] / best["perplexity"],
        "event_perplexity_ratio": lstm["event_perplexity"] / best["event_perplexity"],
        "per_order": {k: {"perplexity_ratio": lstm["perplexity"] / v["perplexity"],
                          "event_perplexity_ratio": lstm["event_perplexity"] / v["event_perplexity"]}
                      for k, v in baseline["orders"].items()},
    }
    if transpose:
        baseline["note"] = (f"n-grams are fit on the {len(training)} untransposed training pieces; the LSTM also saw "
                            f"them transposed by up to +/-{transpose} semitones (data.transpose={transpose})")
    else:
        baseline["note"] = (f"n-grams are fit on the same {len(training)} training pieces as the LSTM "
                            "(no transposition augmentation)")
    music = music_metrics(run_dir, num_samples, length, temperatures, seed, held_out, training, vocabulary,
                          generator, show_progress)
    result = {
        "run_dir": str(run_dir),
        "settings": {"num_samples": num_samples, "length": length, "temperatures": list(temperatures),
                     "seed": seed, "orders": list(orders), "representation": vocabulary.representation,
                     "vocabulary_size": len(vocabulary), "data_transpose": transpose,
                     "generated_time_signature": list(DEFAULT_TIME_SIGNATURE)},
        "held_out": {"pieces": len(held_out), "tokens": lstm["tokens"], "events": lstm["events"],
                     "unknown_tokens": lstm["unknown_tokens"]},
        "model_quality": lstm,
        "ngram": baseline,
        "lstm_vs_ngram": comparison,
        "music_metrics": music,
    }
    storage.makedirs(out_dir)
    figures = []
    plot_distributions(music, storage.join(out_dir, DISTRIBUTIONS_PNG))
    figures.append(DISTRIBUTIONS_PNG)
    if len(temperatures) > 1:
        plot_metrics_vs_temperature(music, storage.join(out_dir, TEMPERATURE_PNG))
        figures.append(TEMPERATURE_PNG)
    result["figures"] = figures
    result = storage.json_ready(result)
    storage.write_json(storage.join(out_dir, EVALUATION_JSON), result)
    storage.write_text(storage.join(out_dir, EVALUATION_MD), render_markdown(result))
    return result


def length_phrase(length) -> str:
    if length == cli.MATCHED:
        return "as long as the held-out pieces (piece i has the events of held-out piece i)"
    return f"of up to {length} events"


def _check_settings(num_samples, length, temperatures, seed) -> None:
    checked = (("num_samples", num_samples, 1), ("seed", seed, 0)) + (
        () if length == cli.MATCHED else (("length", length, 1),))
    for name, value, low in checked:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    temperatures = tuple(temperatures)
    if not temperatures:
        raise ValueError("temperatures must name at least one temperature, got none")
    for t in temperatures:
        if isinstance(t, bool) or not isinstance(t, (int, float, np.number)) or not (0 <= t < math.inf):
            raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {t!r}")


# ----------------------------------------------------------------------------- report


def render_markdown(result: dict) -> str:
    settings = result["settings"]
    lstm = result["model_quality"]
    baseline = result["ngram"]
    ratios = result["lstm_vs_ngram"]
    music = result["music_metrics"]
    keys = [temperature_key(t) for t in settings["temperatures"]]
    unit = "event (sonority)" if settings["representation"] == "note" else "event (one token each)"
    lines = [
        f"# Evaluation of {result['run_dir']}",
        "",
        f"Held-out split: {fmt.plural(result['held_out']['pieces'], 'piece')}, {result['held_out']['tokens']} tokens, "
        f"{result['held_out']['events']} events ({settings['representation']} representation, vocabulary "
        f"{settings['vocabulary_size']}; {result['held_out']['unknown_tokens']} held-out tokens are `<unk>`). "
        f"Generated: {settings['num_samples']} pieces {length_phrase(settings['length'])} per temperature, "
        f"seed {settings['seed']}.",
        "",
        "## Model quality on the held-out split",
        "",
        "Every held-out piece is scored from its start (after `<piece>`); NLL is the mean negative "
        f"log-likelihood per token, and per {unit} it is the piece's total NLL divided by its events.",
        "",
        "| model | NLL nats/token | NLL bits/token | perplexity/token | top-1 accuracy | NLL nats/event "
        "| perplexity/event | LSTM perplexity / this |",
        "|---|---|---|---|---|---|---|---|",
        f"| LSTM | {fmt.number(lstm['nll_nats'])} | {fmt.number(lstm['nll_bits'])} | {fmt.number(lstm['perplexity'])} "
        f"| {fmt.number(lstm['accuracy'])} | {fmt.number(lstm['event_nll_nats'])} | {fmt.number(lstm['event_perplexity'])} | 1.000 |",
    ]
    for order, scores in baseline["orders"].items():
        marker = " (best)" if int(order) == baseline["best_order"] else ""
        lines.append(
            f"| {order}-gram{marker} | {fmt.number(scores['nll_nats'])} | {fmt.number(scores['nll_bits'])} "
            f"| {fmt.number(scores['perplexity'])} | {fmt.number(scores['accuracy'])} | {fmt.number(scores['event_nll_nats'])} "
            f"| {fmt.number(scores['event_perplexity'])} | {fmt.number(ratios['per_order'][order]['perplexity_ratio'])} |")
    ratio = ratios["perplexity_ratio"]
    verdict = ("the LSTM predicts the held-out music better than every n-gram" if ratio is not None and ratio < 1
               else "the LSTM does not beat the best n-gram")
    lines += [
        "",
        f"**LSTM perplexity / best n-gram ({ratios['best_order']}-gram) perplexity = {fmt.number(ratio)} per token, "
        f"{fmt.number(ratios['event_perplexity_ratio'])} per event**: {verdict} (below 1 = better than the baseline).",
        "",
        f"The n-grams are interpolated modified Kneser-Ney models; {baseline['note']}.",
        "",
        "## Music metrics (mean ± std over pieces)",
        "",
        "Generated pieces start from `<piece>` alone (no primer; had there been one, only the generated "
        "part would be measured) and are measured in 4/4; real pieces in their own time signature.",
        "",
        "| metric | " + " | ".join(f"T = {k}" for k in keys) + " | held-out real |",
        "|---|" + "---|" * (len(keys) + 1),
    ]
    for name in music["metric_names"]:
        cells = [fmt.mean_std(music["generated"][k]["summary"][name]) for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt.mean_std(music['real']['summary'][name])} |")
    lines += [
        "",
        "## Generated vs real: overlapping area / KL divergence (Yang & Lerch 2020)",
        "",
        "OA = overlap of the two Gaussian-KDE densities (1 = same distribution, 0 = disjoint); "
        "KL = KL(real ‖ generated) in nats (0 = same). The real distribution comes from "
        f"{fmt.plural(result['held_out']['pieces'], 'held-out piece')}"
        + ("; with so few, these numbers are rough." if result["held_out"]["pieces"] < 10 else "."),
        "",
        "| metric | " + " | ".join(f"OA T = {k} | KL T = {k}" for k in keys) + " |",
        "|---|" + "---|---|" * len(keys),
    ]
    for name in music["metric_names"]:
        cells = []
        for k in keys:
            c = music["comparison"][k][name]
            cells += [fmt.number(c["overlapping_area"]), fmt.number(c["kl_divergence"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Generation", "", "| temperature | pieces | mean events | stop reasons | repairs |",
              "|---|---|---|---|---|"]
    for k in keys:
        rows = music["generated"][k]["pieces"]
        mean_events = fmt.number(float(np.mean([r["events"] for r in rows])), 1) if rows else "n/a"
        reasons = ", ".join(f"{r}: {n}" for r, n in music["generated"][k]["stop_reasons"].items())
        lines.append(f"| {k} | {len(rows)} | {mean_events} | {reasons} | {sum(r['repairs'] for r in rows)} |")
    lines += [
        "",
        "## How to read this",
        "",
        "- Perplexity is exp(NLL): the number of equally likely choices the model is as uncertain as. Lower "
        "is better; compare the LSTM with the n-grams on the same pieces, not across corpora or representations.",
        "- Per-event numbers put representations with different tokens per event on one scale.",
        "- A good model's generated metrics sit near the held-out real values; higher temperature usually "
        "raises pitch entropy and the number of pitches, and lowers tonal measures.",
        "- n/a: the metric is undefined for that piece (e.g. too few notes); such values are left out of means.",
        "",
    ]
    lines += [f"- `{name}`: {description}." for name, description in music["descriptions"].items()]
    lines += ["", "## Figures", ""]
    lines += [f"![{figure}]({figure})" for figure in result.get("figures", [])]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def plot_distributions(music: dict, out_path: str) -> None:
    """Per metric: histograms of generated values per temperature over the held-out real ones."""
    names = music["metric_names"]
    keys = [temperature_key(t) for t in music["temperatures"]]
    figure, axes = plots.metric_grid(len(names))
    for ax, name in zip(axes.flat, names):
        real = metrics.finite_values(_metric_values(music["real"]["pieces"], name))
        generated = {k: metrics.finite_values(_metric_values(music["generated"][k]["pieces"], name)) for k in keys}
        pooled = np.concatenate([real, *generated.values()])
        if len(pooled) == 0:
            ax.set_title(f"{name} (undefined)")
            ax.axis("off")
            continue
        low, high = float(pooled.min()), float(pooled.max())
        if high - low < 1e-12:
            low, high = low - 0.5, high + 0.5
        bins = np.linspace(low, high, 21)
        if len(real):
            ax.hist(real, bins=bins, density=True, color="0.7", label="held-out real")
        for k in keys:
            if len(generated[k]):
                ax.hist(generated[k], bins=bins, density=True, histtype="step", linewidth=1.5, label=f"T = {k}")
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=8)
    plots.finish_metric_grid(figure, axes, len(names), "metric distributions: generated (per temperature) vs held-out real", out_path)


def plot_metrics_vs_temperature(music: dict, out_path: str) -> None:
    """Per metric: generated mean ± std against temperature, the held-out real mean as a line."""
    names = music["metric_names"]
    temperatures = music["temperatures"]
    keys = [temperature_key(t) for t in temperatures]
    figure, axes = plots.metric_grid(len(names))
    for ax, name in zip(axes.flat, names):
        summaries = [music["generated"][k]["summary"][name] for k in keys]
        means = np.array([fmt.nan_if_none(s["mean"]) for s in summaries])
        stds = np.array([fmt.nan_if_none(s["std"]) for s in summaries])
        ax.errorbar(temperatures, means, yerr=stds, marker="o", capsize=3, label="generated")
        real = music["real"]["summary"][name]
        real_mean, real_std = fmt.nan_if_none(real["mean"]), fmt.nan_if_none(real["std"])
        if math.isfinite(real_mean):
            ax.axhline(real_mean, color="0.3", linestyle="--", label="held-out real")
            if math.isfinite(real_std) and real_std > 0:
                ax.axhspan(real_mean - real_std, real_mean + real_std, color="0.85", zorder=0)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("temperature", fontsize=8)
        ax.tick_params(labelsize=8)
    plots.finish_metric_grid(figure, axes, len(names), "metrics against sampling temperature (mean ± std; dashed: held-out real mean)", out_path)


# ----------------------------------------------------------------------------- command line


def orders_argument(text: str) -> tuple[int, ...]:
    """`1-5`, `3`, or `1,2,4` -> sorted distinct orders."""
    try:
        orders = []
        for part in text.replace(" ", ",").split(","):
            if not part:
                continue
            if "-" in part:
                low, high = (int(v) for v in part.split("-", 1))
                if high < low:
                    raise ValueError
                orders.extend(range(low, high + 1))
            else:
                orders.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected n-gram orders like 1-5 or 1,2,3, got {text!r}") from None
    if not orders or min(orders) < 1:
        raise argparse.ArgumentTypeError(f"n-gram orders must be integers >= 1, got {text!r}")
    if max(orders) > MAX_ORDER:
        raise argparse.ArgumentTypeError(f"n-gram orders above {MAX_ORDER} are not supported, got {text!r}")
    return tuple(sorted(set(orders)))


def parse_args(argv=None):

    parser = argparse.ArgumentParser(
        prog="python -m keras_music.evaluate",
        description="Evaluate a trained run: held-out NLL / perplexity / accuracy against Kneser-Ney n-gram "
                    "baselines, and music metrics of generated pieces (per temperature) beside held-out real "
                    "ones. Writes evaluation.json, evaluation.md and plots.")
    parser.add_argument("--run-dir", required=True, type=cli.existing_run_dir, metavar="DIR",
                        help="run directory written by keras_music.train")
    parser.add_argument("--num-samples", type=cli.bounded_int(1, MAX_NUM_SAMPLES), default=DEFAULT_NUM_SAMPLES,
                        metavar="N", help=f"generated pieces per temperature (default: {DEFAULT_NUM_SAMPLES}; at most "
                                          f"{MAX_NUM_SAMPLES})")
    parser.add_argument("--length", type=cli.piece_length, default=DEFAULT_LENGTH, metavar="N|matched",
                        help="events (sonorities) to generate per piece, or 'matched': each piece exactly as "
                             "long as a held-out piece, so length-dependent metrics compare like with like "
                             f"(default: {DEFAULT_LENGTH})")
    parser.add_argument("--temperature", type=cli.temperature, nargs="+", action="extend", default=None,
                        metavar="T", help="sampling temperatures, repeatable or several values "
                                          f"(default: {' '.join(f'{t:g}' for t in DEFAULT_TEMPERATURES)})")
    parser.add_argument("--seed", type=cli.non_negative_int, default=0, metavar="S",
                        help="sampling seed, the same for every temperature (default: 0)")
    parser.add_argument("--orders", type=orders_argument, default=DEFAULT_ORDERS, metavar="ORDERS",
                        help=f"n-gram baseline orders, e.g. 1-8 or 2,3 (default: 1-{DEFAULT_ORDERS[-1]}; "
                             f"at most {MAX_ORDER})")
    parser.add_argument("--out", default=None, metavar="DIR", help="output directory (default: RUN/evaluation)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser, parser.parse_args(argv)


def main(argv=None) -> int:
    parser, args = parse_args(argv)

    with cli.user_errors(parser):
        temperatures = tuple(dict.fromkeys(args.temperature)) if args.temperature else DEFAULT_TEMPERATURES
        out_dir = args.out or run_lib.path(args.run_dir, EVALUATION_DIR)
        result = evaluate_run(args.run_dir, args.num_samples, args.length, temperatures, args.seed, args.orders,
                              out_dir, show_progress=not args.quiet)
        lstm = result["model_quality"]
        ratios = result["lstm_vs_ngram"]
        print(f"held-out: {lstm['tokens']} tokens, {lstm['events']} events; LSTM perplexity "
              f"{fmt.number(lstm['perplexity'])}/token ({fmt.number(lstm['nll_bits'])} bits), {fmt.number(lstm['event_perplexity'])}"
              f"/event, accuracy {fmt.number(lstm['accuracy'])}")
        print(f"LSTM / best n-gram ({ratios['best_order']}-gram) perplexity: {fmt.number(ratios['perplexity_ratio'])}")
        print(f"report: {storage.join(out_dir, EVALUATION_MD)}")
    cli.finish(0)


if __name__ == "__main__":
    main()
