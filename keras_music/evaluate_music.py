"""Music metrics of generated pieces per sampling temperature beside the held-out real pieces, and their overlap."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from keras_music import cli, defaults, events, music_metrics, run as run_lib
from keras_music.cli import progress
from keras_music.evaluate_held_out import DEFAULT_TIME_SIGNATURE, HeldOutPiece, load_split
from keras_music.evaluate_likelihood import DEFAULT_ORDERS, check_orders
from keras_music.generate import Generator
from keras_music.sampling import SamplingSettings

METRIC_NAMES = tuple(music_metrics.METRIC_DESCRIPTIONS)
DEFAULT_NUM_SAMPLES = 20
# Generated pieces as long as the held-out pieces they are compared with: pitch entropy,
# pitch range and most other metrics grow with a piece's length, so sets of unlike lengths
# differ for that reason alone.
DEFAULT_LENGTH = cli.MATCHED
DEFAULT_TEMPERATURES = defaults.TEMPERATURES
# Pieces per requested control value in the control report (0: no report).
DEFAULT_CONTROLS_SAMPLES = 8


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    """What an evaluation generates and scores; checked once, when made (ValueError naming the bad setting).

    Attributes:
      num_samples: pieces generated per temperature (>= 1).
      length: events per generated piece (>= 1), or "matched": piece i as long as held-out piece i.
      temperatures: one or more finite temperatures >= 0 (0 is greedy).
      seed: the sampling seed (>= 0).
      orders: the n-gram orders compared with the LSTM (1..evaluate_likelihood.MAX_ORDER).
      controls_samples: pieces per requested control value for a run with control tokens (0: no report).
    """

    num_samples: int = DEFAULT_NUM_SAMPLES
    length: int | str = DEFAULT_LENGTH
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    seed: int = 0
    orders: tuple[int, ...] = DEFAULT_ORDERS
    controls_samples: int = DEFAULT_CONTROLS_SAMPLES

    def __post_init__(self):
        checked = (("num_samples", self.num_samples, 1), ("seed", self.seed, 0)) + (
            () if self.length == cli.MATCHED else (("length", self.length, 1),))
        for name, value, low in checked:
            if not _is_count(value) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        temperatures = tuple(self.temperatures)
        if not temperatures:
            raise ValueError("temperatures must name at least one temperature, got none")
        for t in temperatures:
            if isinstance(t, bool) or not isinstance(t, (int, float, np.number)) or not (0 <= t < math.inf):
                raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {t!r}")
        object.__setattr__(self, "temperatures", tuple(float(t) for t in temperatures))
        object.__setattr__(self, "orders", check_orders(self.orders))
        if not _is_count(self.controls_samples) or self.controls_samples < 0:
            raise ValueError(f"controls_samples must be an integer >= 0 (0: no control report), "
                             f"got {self.controls_samples!r}")

    def record(self) -> dict:
        """The settings as evaluation.json gives them."""
        return {"num_samples": self.num_samples, "length": self.length, "temperatures": list(self.temperatures),
                "seed": self.seed, "orders": list(self.orders)}


def temperature_key(temperature: float) -> str:
    """The key a temperature's results are stored under: 1.0 -> "1", 0.5 -> "0.5"."""
    return f"{float(temperature):g}"


# ----------------------------------------------------------------------------- pieces as notes


def decode_sonorities(ids, vocabulary):
    return events.tokens_to_sonorities(vocabulary.decode(ids), vocabulary.representation,
                                       classic_step=vocabulary.classic_step)


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


# ----------------------------------------------------------------------------- metrics per piece


def transition_matrix_for(pieces: list[HeldOutPiece], vocabulary) -> np.ndarray:
    return music_metrics.transition_matrix([piece_notes(decode_sonorities(p.ids, vocabulary)) for p in pieces])


def real_piece_metrics(pieces: list[HeldOutPiece], vocabulary, *, matrix, show_progress: bool = False) -> list[dict]:
    out = []
    for piece in progress(pieces, show=show_progress, desc="metrics of held-out pieces", unit="piece"):
        sonorities = decode_sonorities(piece.ids, vocabulary)
        values = music_metrics.piece_metrics(piece_notes(sonorities), events.event_keys(sonorities),
                                       time_signature=piece.time_signature, matrix=matrix)
        out.append({"name": piece.name, "events": len(sonorities), "time_signature": list(piece.time_signature),
                    "metrics": values})
    return out


def generated_piece_metrics(pieces, matrix) -> list[dict]:
    out = []
    for piece in pieces:
        notes, sonorities = generated_part(piece)
        values = music_metrics.piece_metrics(notes, events.event_keys(sonorities),
                                             time_signature=DEFAULT_TIME_SIGNATURE, matrix=matrix)
        repairs = getattr(piece, "repairs", None) or {}
        out.append({"events": len(sonorities), "notes": int(len(notes)),
                    "stop_reason": getattr(piece, "stop_reason", None),
                    "repairs": int(sum(repairs.values())) if isinstance(repairs, dict) else int(repairs or 0),
                    "metrics": values})
    return out


# ----------------------------------------------------------------------------- sets of pieces


def summarize_values(values) -> dict:
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return {
        "mean": float(finite.mean()) if len(finite) else math.nan,
        "std": float(finite.std()) if len(finite) else math.nan,
        "n": int(len(finite)),
        "n_undefined": int(len(values) - len(finite)),
    }


def metric_values(rows, name) -> list[float]:
    """One metric's value in every row (NaN where a row lacks it)."""
    return [row["metrics"].get(name, math.nan) for row in rows]


def stop_reasons(rows) -> dict:
    reasons: dict[str, int] = {}
    for row in rows:
        reason = str(row.get("stop_reason"))
        reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def generation_lengths(length, real_rows, *, num_samples: int) -> dict:
    """Sampling length settings: `matched` gives piece i exactly the events of held-out piece i (cycling)."""
    if length != cli.MATCHED:
        return {"length": length}
    if not real_rows:
        raise ValueError("length 'matched' needs at least one held-out piece")
    # Capped at the longest piece generate makes (a held-out piece longer than that is rare).
    lengths = [min(defaults.MAX_LENGTH, max(1, int(real_rows[i % len(real_rows)]["events"])))
               for i in range(num_samples)]
    return {"length": lengths, "min_length": max(lengths)}


def _summaries(rows) -> dict:
    return {name: summarize_values(metric_values(rows, name)) for name in METRIC_NAMES}


def music_report(run_dir: str, settings: EvaluationSettings | None = None, *, pieces=None, train_pieces=None,
                 vocabulary=None, generator=None, show_progress: bool = False) -> dict:
    """Metrics of generated pieces per temperature and of held-out real pieces, and their comparison.

    `settings` gives the pieces generated per temperature, their length, the temperatures and the seed.
    """
    settings = EvaluationSettings() if settings is None else settings
    temperatures = settings.temperatures
    vocabulary = vocabulary or run_lib.load_vocabulary(run_dir)
    pieces = pieces if pieces is not None else load_split(run_dir, "validation", vocabulary=vocabulary)
    train_pieces = train_pieces if train_pieces is not None else load_split(run_dir, "train", vocabulary=vocabulary)
    matrix = transition_matrix_for(train_pieces, vocabulary)
    real = real_piece_metrics(pieces, vocabulary, matrix=matrix, show_progress=show_progress)
    if generator is None:
        generator = Generator(run_dir)
    generated, comparisons = {}, {}
    for temperature in progress(temperatures, show=show_progress and len(temperatures) > 1,
                                desc="temperatures", unit="temperature"):
        key = temperature_key(temperature)
        # No primer: pieces come from the model's own openings, so the generated set does
        # not borrow material from the held-out pieces it is compared with.
        sampling = SamplingSettings(temperature=float(temperature),
                                    **generation_lengths(settings.length, real, num_samples=settings.num_samples))
        samples = generator.generate(settings.num_samples, sampling, seed=settings.seed, primer_tokens=[],
                                     show_progress=show_progress)
        rows = generated_piece_metrics(samples, matrix)
        generated[key] = {"pieces": rows, "summary": _summaries(rows), "stop_reasons": stop_reasons(rows)}
        comparisons[key] = {name: music_metrics.compare_distributions(metric_values(rows, name), metric_values(real, name))
                            for name in METRIC_NAMES}
    return {
        "temperatures": [float(t) for t in temperatures],
        "metric_names": list(METRIC_NAMES),
        "descriptions": dict(music_metrics.METRIC_DESCRIPTIONS),
        "transition_matrix": matrix.tolist(),
        "real": {"pieces": real, "summary": _summaries(real)},
        "generated": generated,
        "comparison": comparisons,
    }
