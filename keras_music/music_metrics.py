"""Objective music metrics for note arrays and event sequences, in pure numpy."""

import math
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

__all__ = [
    "METRIC_DESCRIPTIONS",
    "compare_distances",
    "compare_distributions",
    "distinct_event_ratio",
    "empty_beat_rate",
    "groove_consistency",
    "key_correlation",
    "longest_repetition",
    "melody_pitches",
    "n_pitches_used",
    "note_transition_logprob",
    "piece_metrics",
    "pitch_class_entropy",
    "pitch_entropy",
    "pitch_range",
    "polyphony",
    "restatement_rate",
    "scale_consistency",
    "transition_matrix",
]

# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
KRUMHANSL_KESSLER_MAJOR = np.array(
    [6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]
)
KRUMHANSL_KESSLER_MINOR = np.array(
    [6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]
)
MAJOR_KEY_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MINOR_KEY_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")

# Same scale masks as MusPy: major and natural minor, tonic C, rolled to each root.
_MAJOR_SCALE = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], bool)
_MINOR_SCALE = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0], bool)

# Float onsets that come from summed durations (e.g. triplets) differ by
# round-off; this slack keeps a value that is meant to sit on a boundary
# from falling into the previous beat or bar.
_BOUNDARY_SLACK = 1e-9
# Onsets that agree to this many decimals of a quarter note are one onset.
_ONSET_DECIMALS = 6

METRIC_DESCRIPTIONS: dict[str, str] = {
    "pitch_entropy": "Shannon entropy (bits) of the MIDI pitch histogram over notes",
    "pitch_class_entropy": "Shannon entropy (bits) of the pitch-class histogram over notes",
    "groove_consistency": "1 - mean Hamming distance between consecutive bars' onset patterns "
    "(1 = every bar has the same rhythm)",
    "scale_consistency": "largest fraction of notes inside one major or natural minor scale",
    "key_correlation": "best Pearson correlation of the duration-weighted pitch-class "
    "histogram with a Krumhansl-Kessler key profile (tonal clarity)",
    "n_pitches_used": "number of distinct MIDI pitches",
    "pitch_range": "highest minus lowest MIDI pitch (semitones)",
    "polyphony": "mean number of pitches sounding at time steps where any pitch sounds",
    "empty_beat_rate": "fraction of beats in which no note sounds",
    "note_transition_logprob": "mean natural-log probability of the melody's pitch-class "
    "transitions under a reference transition matrix",
    "distinct_event_ratio": "distinct events / total events (low = repetitive vocabulary)",
    "longest_repetition": "length in events of the longest passage that occurs twice "
    "without overlap (loop detector)",
    "restatement_rate": "share of the piece's 8-event passages that restate an earlier passage "
    "of it exactly (self-similarity: 0 = nothing comes back)",
}

# Passage length of restatement_rate, in events (two bars of quarter-note chords).
RESTATEMENT_EVENTS = 8


# ----------------------------------------------------------------------------
# Validation and shared helpers
# ----------------------------------------------------------------------------


def _as_notes(notes) -> np.ndarray:
    """Return `notes` as a validated float array of shape (n, 3)."""
    array = np.asarray(notes, dtype=float)
    if array.size == 0:
        return np.zeros((0, 3))
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(
            f"notes must have shape (n, 3) with columns onset, duration, pitch; "
            f"got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("notes must be finite; got NaN or infinite values")
    if np.any(array[:, 0] < 0):
        raise ValueError(f"note onsets must be >= 0; got minimum {array[:, 0].min()}")
    if np.any(array[:, 1] < 0):
        raise ValueError(f"note durations must be >= 0; got minimum {array[:, 1].min()}")
    pitches = array[:, 2]
    if np.any(np.abs(pitches - np.rint(pitches)) > 1e-6):
        raise ValueError("note pitches must be integer-valued MIDI numbers")
    if np.any((pitches < 0) | (pitches > 127)):
        raise ValueError(
            f"note pitches must lie in 0..127; got {pitches.min():g}..{pitches.max():g}"
        )
    return array


def _pitches(notes: np.ndarray) -> np.ndarray:
    return np.rint(notes[:, 2]).astype(np.int64)


def _check_time_signature(time_signature) -> float:
    """Return the bar length in quarter notes for a (numerator, denominator) pair."""
    try:
        numerator, denominator = time_signature
    except (TypeError, ValueError):
        raise ValueError(
            f"time_signature must be a (numerator, denominator) pair; got {time_signature!r}"
        ) from None
    for name, value in (("numerator", numerator), ("denominator", denominator)):
        if int(value) != value or value < 1:
            raise ValueError(
                f"time_signature {name} must be a positive integer; got {value!r}"
            )
    return int(numerator) * 4.0 / int(denominator)


def _check_resolution(resolution) -> int:
    if int(resolution) != resolution or resolution < 1:
        raise ValueError(f"resolution must be a positive integer; got {resolution!r}")
    return int(resolution)


def _to_ticks(quarters: np.ndarray, resolution: int) -> np.ndarray:
    """Round times in quarter notes to the nearest step of a `resolution` grid."""
    return np.floor(quarters * resolution + 0.5).astype(np.int64)


def _floor_index(values: np.ndarray, step: float) -> np.ndarray:
    return np.floor(values / step + _BOUNDARY_SLACK).astype(np.int64)


def _entropy_bits(counts: np.ndarray) -> float:
    total = counts.sum()
    if total <= 0:
        return math.nan
    prob = counts[counts > 0] / total
    # "+ 0.0" turns the -0.0 of a one-symbol histogram into 0.0.
    return float(-np.sum(prob * np.log2(prob))) + 0.0


def _union_length(starts: np.ndarray, ends: np.ndarray) -> int:
    """Total length covered by the union of half-open intervals [start, end)."""
    if len(starts) == 0:
        return 0
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    # With starts sorted, the interval holding the running maximum end covers
    # everything from the current start up to that end, so only the part past
    # it is new.
    previous_max = np.concatenate(([np.iinfo(np.int64).min], np.maximum.accumulate(ends)[:-1]))
    return int(np.sum(np.maximum(0, ends - np.maximum(starts, previous_max))))


# ----------------------------------------------------------------------------
# Pitch metrics
# ----------------------------------------------------------------------------


def pitch_entropy(notes) -> float:
    """Shannon entropy of the MIDI pitch histogram, in bits.

    ``H = -sum_p P(p) log2 P(p)`` where ``P(p)`` is the number of notes with
    MIDI pitch ``p`` divided by the number of notes (MusPy's
    ``pitch_entropy``). Returns nan for an empty piece.
    """
    notes = _as_notes(notes)
    return _entropy_bits(np.bincount(_pitches(notes), minlength=128).astype(float))


def pitch_class_entropy(notes) -> float:
    """Shannon entropy of the pitch-class histogram, in bits.

    ``H = -sum_{c=0}^{11} P(c) log2 P(c)`` where ``P(c)`` is the fraction of
    notes with ``pitch % 12 == c`` (MusPy's ``pitch_class_entropy``). At most
    ``log2(12)``. Returns nan for an empty piece.
    """
    notes = _as_notes(notes)
    return _entropy_bits(np.bincount(_pitches(notes) % 12, minlength=12).astype(float))


def n_pitches_used(notes) -> int:
    """Number of distinct MIDI pitches: ``|{pitch_i}|``. 0 for an empty piece."""
    notes = _as_notes(notes)
    return int(len(np.unique(_pitches(notes))))


def pitch_range(notes) -> int:
    """Pitch range in semitones: ``max(pitch) - min(pitch)``.

    Returns 0 for an empty piece, as MusPy's ``pitch_range`` does.
    """
    notes = _as_notes(notes)
    if len(notes) == 0:
        return 0
    pitches = _pitches(notes)
    return int(pitches.max() - pitches.min())


def scale_consistency(notes) -> float:
    """Largest fraction of notes that lie in one major or natural minor scale.

    ``max_{root, mode} #(notes with pitch % 12 in scale(root, mode)) / #(notes)``
    over the 12 major and 12 natural minor scales, counting notes (not
    durations), as MusPy's ``scale_consistency``. Returns nan for an empty
    piece.
    """
    notes = _as_notes(notes)
    if len(notes) == 0:
        return math.nan
    counts = np.bincount(_pitches(notes) % 12, minlength=12)
    best = 0
    for scale in (_MAJOR_SCALE, _MINOR_SCALE):
        for root in range(12):
            best = max(best, int(counts[np.roll(scale, root)].sum()))
    return best / len(notes)


def key_correlation(notes) -> tuple[float, str]:
    """Best Krumhansl-Kessler key-profile correlation and the key it picks.

    ``h_c = sum of durations of notes with pitch % 12 == c``; for each of the
    24 keys, ``r = pearson(h, roll(profile_mode, tonic))`` with the
    Krumhansl-Kessler major/minor profiles, where
    ``pearson(x, y) = sum((x - mean x)(y - mean y)) /
    sqrt(sum((x - mean x)^2) sum((y - mean y)^2))``. Returns the largest ``r``
    and the key name (``"C major"``, ``"F# minor"``; majors use the spellings
    C Db D Eb E F F# G Ab A Bb B, minors C C# D Eb E F F# G G# A Bb B). Ties
    go to the first key in the order C major .. B major, C minor .. B minor.
    Returns ``(nan, "")`` when the histogram is constant (empty piece, only
    zero-length notes, or all 12 classes equally long), where the
    correlation is undefined.
    """
    notes = _as_notes(notes)
    histogram = np.bincount(_pitches(notes) % 12, weights=notes[:, 1], minlength=12)
    centred = histogram - histogram.mean()
    norm = math.sqrt(float(np.sum(centred**2)))
    if norm == 0.0:
        return math.nan, ""
    best_r, best_key = -math.inf, ""
    for profile, mode, names in (
        (KRUMHANSL_KESSLER_MAJOR, "major", MAJOR_KEY_NAMES),
        (KRUMHANSL_KESSLER_MINOR, "minor", MINOR_KEY_NAMES),
    ):
        for tonic in range(12):
            rotated = np.roll(profile, tonic)
            rotated_centred = rotated - rotated.mean()
            r = float(
                np.sum(centred * rotated_centred)
                / (norm * math.sqrt(float(np.sum(rotated_centred**2))))
            )
            if r > best_r:
                best_r, best_key = r, f"{names[tonic]} {mode}"
    return best_r, best_key


# ----------------------------------------------------------------------------
# Melody transitions
# ----------------------------------------------------------------------------


def melody_pitches(notes) -> np.ndarray:
    """The melody line: the highest MIDI pitch at each distinct onset, in time order.

    Onsets are compared after rounding to 1e-6 quarter notes so float
    round-off does not split a chord. Notes still sounding from an earlier
    onset are not considered (a skyline by onset only).
    """
    notes = _as_notes(notes)
    if len(notes) == 0:
        return np.zeros(0, dtype=np.int64)
    onsets = np.round(notes[:, 0], _ONSET_DECIMALS)
    pitches = _pitches(notes)
    order = np.lexsort((pitches, onsets))
    onsets, pitches = onsets[order], pitches[order]
    # After sorting by (onset, pitch) the top note of each onset is the last one.
    is_last = np.append(onsets[1:] != onsets[:-1], True)
    return pitches[is_last]


def _transition_counts(notes) -> np.ndarray:
    classes = melody_pitches(notes) % 12
    counts = np.zeros((12, 12))
    np.add.at(counts, (classes[:-1], classes[1:]), 1.0)
    return counts


def transition_matrix(pieces: Iterable, smoothing: float = 1.0) -> np.ndarray:
    """Pitch-class transition probabilities estimated over a list of pieces.

    A transition is a pair of consecutive melody notes (see
    ``melody_pitches``: the highest pitch at each distinct onset) within one
    piece; transitions never cross piece boundaries, and repeated notes count
    as self-transitions. With ``C[i, j]`` the number of transitions from
    pitch class ``i`` to ``j`` summed over all pieces and ``s = smoothing``:
    ``P[i, j] = (C[i, j] + s) / (sum_k C[i, k] + 12 s)``. Rows whose
    denominator is zero (``s = 0`` and pitch class ``i`` never followed by a
    note) are uniform, ``1/12``. Every row sums to 1.
    """
    if isinstance(pieces, np.ndarray) and pieces.ndim == 2:
        raise TypeError(
            "transition_matrix expects a list of pieces (each an (n, 3) array); "
            f"got a single array of shape {pieces.shape}"
        )
    if not (smoothing >= 0 and math.isfinite(smoothing)):
        raise ValueError(f"smoothing must be a finite number >= 0; got {smoothing!r}")
    counts = np.zeros((12, 12))
    for piece in pieces:
        counts += _transition_counts(piece)
    counts += smoothing
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(totals > 0, counts / totals, 1.0 / 12.0)
    return matrix


def note_transition_logprob(notes, matrix) -> float:
    """Mean natural-log probability of the melody's pitch-class transitions.

    ``(1 / T) sum_t ln matrix[c_t, c_{t+1}]`` over the ``T`` transitions
    between consecutive melody notes (see ``transition_matrix``), whose pitch
    classes are ``c_t``. Returns nan when the piece has fewer than 2 melody
    notes and ``-inf`` when a transition has probability 0.
    """
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (12, 12):
        raise ValueError(f"matrix must have shape (12, 12); got {matrix.shape}")
    if np.any(matrix < 0) or not np.all(np.isfinite(matrix)):
        raise ValueError("matrix must hold finite probabilities >= 0")
    classes = melody_pitches(notes) % 12
    if len(classes) < 2:
        return math.nan
    with np.errstate(divide="ignore"):
        return float(np.mean(np.log(matrix[classes[:-1], classes[1:]])))


# ----------------------------------------------------------------------------
# Rhythm and texture metrics
# ----------------------------------------------------------------------------


def groove_consistency(notes, time_signature=(4, 4), *, resolution: int = 12) -> float:
    """Rhythmic consistency between consecutive bars (MusPy's definition).

    Times are rounded to a grid of ``resolution`` steps per quarter note;
    a bar has ``R = resolution * numerator * 4 / denominator`` steps. With
    ``L`` the end of the last note in steps, the piece has
    ``T = floor(L / R) + 1`` bars, so a piece ending exactly on a barline
    gets a trailing empty bar, as in MusPy. ``G_b`` is bar ``b``'s binary
    onset vector (1 where a note starts) and
    ``groove = 1 - sum_{b=1}^{T-1} hamming(G_b, G_{b+1}) / (R (T - 1))``.
    The value depends on the grid: a finer ``resolution`` divides the same
    Hamming distances by more steps, so compare pieces at one resolution.
    Returns nan when ``T < 2`` (including an empty piece). Equals
    ``muspy.groove_consistency(music, measure_resolution=R)`` on the same
    notes.
    """
    notes = _as_notes(notes)
    resolution = _check_resolution(resolution)
    bar_steps = resolution * _check_time_signature(time_signature)
    if abs(bar_steps - round(bar_steps)) > 1e-9:
        raise ValueError(
            f"resolution {resolution} does not divide the bar of time signature "
            f"{tuple(time_signature)} into whole steps"
        )
    bar_steps = int(round(bar_steps))
    if len(notes) == 0:
        return math.nan
    starts = _to_ticks(notes[:, 0], resolution)
    ends = np.maximum(_to_ticks(notes[:, 0] + notes[:, 1], resolution), starts)
    n_bars = int(ends.max()) // bar_steps + 1
    if n_bars < 2:
        return math.nan
    # Work on the set of onset steps, not a dense bars x steps array, so a
    # fine grid (e.g. a MIDI file's 10080 ticks per quarter) stays cheap.
    onset_steps = np.unique(starts)
    bar_of = onset_steps // bar_steps
    per_bar = np.bincount(bar_of, minlength=n_bars)
    # Each bar's onsets are compared with its neighbour on both sides except
    # for the first and last bar; positions shared with the next bar cancel.
    shared_with_next = int(np.count_nonzero(np.isin(onset_steps + bar_steps, onset_steps)))
    hamming_total = 2 * len(onset_steps) - per_bar[0] - per_bar[-1] - 2 * shared_with_next
    return 1.0 - float(hamming_total) / (bar_steps * (n_bars - 1))


def polyphony(notes, resolution: int = 12) -> float:
    """Mean number of pitches sounding where at least one sounds (MusPy's definition).

    Times are rounded to ``resolution`` steps per quarter note and the piece
    is viewed as a binary piano roll ``roll[t, p]`` (a pitch doubled by two
    notes at once counts once). ``polyphony = sum_{t,p} roll[t, p] /
    #{t : sum_p roll[t, p] > 0}``. Computed from interval unions, so the
    cost does not grow with ``resolution``. Returns nan when no note has a
    positive length on the grid (including an empty piece).
    """
    notes = _as_notes(notes)
    resolution = _check_resolution(resolution)
    if len(notes) == 0:
        return math.nan
    starts = _to_ticks(notes[:, 0], resolution)
    ends = np.maximum(_to_ticks(notes[:, 0] + notes[:, 1], resolution), starts)
    sounding_steps = _union_length(starts, ends)
    if sounding_steps == 0:
        return math.nan
    pitches = _pitches(notes)
    cells = sum(
        _union_length(starts[pitches == pitch], ends[pitches == pitch])
        for pitch in np.unique(pitches)
    )
    return cells / sounding_steps


def empty_beat_rate(notes, time_signature=(4, 4)) -> float:
    """Fraction of beats in which no note sounds (MusPy's definition).

    A beat lasts ``4 / denominator`` quarter notes (a quarter note in x/4,
    as in MusPy, whose beat is always a quarter; an eighth in x/8). With
    ``L`` the end of the last note, the piece has ``B = floor(L / beat) + 1``
    beats; a note covers beats ``floor(onset / beat)`` to
    ``floor((onset + duration) / beat)`` inclusive, so, as in MusPy, a note
    ending exactly on a beat also marks the beat it ends on.
    ``empty_beat_rate = 1 - #(covered beats) / B``. Returns nan when
    ``L = 0`` (including an empty piece).
    """
    notes = _as_notes(notes)
    _check_time_signature(time_signature)
    beat = 4.0 / int(time_signature[1])
    if len(notes) == 0:
        return math.nan
    ends = notes[:, 0] + notes[:, 1]
    length = float(ends.max())
    if length <= 0:
        return math.nan
    n_beats = int(_floor_index(np.array([length]), beat)[0]) + 1
    first = _floor_index(notes[:, 0], beat)
    last = np.minimum(_floor_index(ends, beat), n_beats - 1)
    coverage = np.zeros(n_beats + 1, dtype=np.int64)
    np.add.at(coverage, first, 1)
    np.add.at(coverage, last + 1, -1)
    covered = int(np.count_nonzero(np.cumsum(coverage)[:n_beats]))
    return 1.0 - covered / n_beats


# ----------------------------------------------------------------------------
# Event-sequence metrics
# ----------------------------------------------------------------------------


def _event_ids(events: Sequence[Hashable]) -> np.ndarray:
    lookup: dict = {}
    return np.array([lookup.setdefault(event, len(lookup)) for event in events], dtype=np.int64)


def distinct_event_ratio(events: Sequence[Hashable]) -> float:
    """Distinct events over events: ``|set(events)| / len(events)``.

    1 when no event repeats, ``1/n`` for a single repeated event. Returns nan
    for an empty sequence.
    """
    events = list(events)
    if not events:
        return math.nan
    return len(set(events)) / len(events)


def _longest_run(matches: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D boolean array."""
    if not matches.any():
        return 0
    padded = np.concatenate(([False], matches, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return int(np.max(edges[1::2] - edges[0::2]))


def longest_repetition(events: Sequence[Hashable]) -> int:
    """Length of the longest contiguous passage that occurs twice without overlap.

    ``max L`` such that ``events[i:i+L] == events[j:j+L]`` for some
    ``i + L <= j``: occurrences may touch but not overlap, so ``[a, a, a]``
    gives 1 and ``[1, 2, 3, 1, 2, 3, 4]`` gives 3. For each shift
    ``d = j - i`` the events are compared with the sequence shifted by ``d``;
    a run of ``r`` matches yields a non-overlapping repeat of ``min(r, d)``.
    O(n^2) element comparisons, vectorised per shift, with shifts that cannot
    beat the best so far skipped. Returns 0 when nothing repeats (including
    empty and one-event sequences).
    """
    ids = _event_ids(events)
    n = len(ids)
    best = 0
    # A repeat at shift d is at most min(d, n - d) long, which peaks at d = n/2;
    # visiting shifts by that bound, largest first, lets the loop stop early.
    shifts = np.arange(1, n)
    bounds = np.minimum(shifts, n - shifts)
    for d, bound in sorted(zip(shifts.tolist(), bounds.tolist()), key=lambda x: -x[1]):
        if bound <= best:
            break
        best = max(best, min(d, _longest_run(ids[:-d] == ids[d:])))
    return best


# ----------------------------------------------------------------------------
# All metrics of one piece
# ----------------------------------------------------------------------------


def restatement_rate(events: Sequence[Hashable], length: int = RESTATEMENT_EVENTS) -> float:
    """Share of the ``length``-event passages (every start) that equal a passage starting earlier.

    A self-similarity measure beside ``longest_repetition``: a piece that states a theme and
    restates it (or loops) scores high, one that never comes back to its material scores 0.
    Overlapping earlier passages count (a held chord repeated ``length + 1`` times restates one
    passage). Returns nan when the piece has fewer than ``length`` events.
    """
    ids = _event_ids(events)
    count = len(ids) - length + 1
    if length < 1 or count < 1:
        return math.nan
    seen: set = set()
    restated = 0
    for start in range(count):
        passage = ids[start:start + length].tobytes()
        restated += passage in seen
        seen.add(passage)
    return restated / count


def piece_metrics(notes, events=None, *, time_signature=(4, 4), matrix=None) -> dict[str, float]:
    """All scalar metrics of one piece, as floats, keyed as in ``METRIC_DESCRIPTIONS``.

    Always present: pitch_entropy, pitch_class_entropy, groove_consistency
    (resolution 12), scale_consistency, key_correlation (the correlation
    only), n_pitches_used, pitch_range, polyphony (resolution 12),
    empty_beat_rate. ``note_transition_logprob`` is added when ``matrix`` is
    given; ``distinct_event_ratio``, ``longest_repetition`` and
    ``restatement_rate`` when ``events`` is given. Each value follows its function's formula and
    empty-piece rule.
    """
    notes = _as_notes(notes)
    result = {
        "pitch_entropy": pitch_entropy(notes),
        "pitch_class_entropy": pitch_class_entropy(notes),
        "groove_consistency": groove_consistency(notes, time_signature=time_signature),
        "scale_consistency": scale_consistency(notes),
        "key_correlation": key_correlation(notes)[0],
        "n_pitches_used": float(n_pitches_used(notes)),
        "pitch_range": float(pitch_range(notes)),
        "polyphony": polyphony(notes),
        "empty_beat_rate": empty_beat_rate(notes, time_signature=time_signature),
    }
    if matrix is not None:
        result["note_transition_logprob"] = note_transition_logprob(notes, matrix)
    if events is not None:
        events = list(events)
        result["distinct_event_ratio"] = distinct_event_ratio(events)
        result["longest_repetition"] = float(longest_repetition(events))
        result["restatement_rate"] = restatement_rate(events)
    return {key: float(value) for key, value in result.items()}


# ----------------------------------------------------------------------------
# Yang & Lerch distribution comparison
# ----------------------------------------------------------------------------

# Bandwidth used for a set whose Scott bandwidth is zero or undefined, as a
# fraction of the pooled standard deviation of both sets.
_FLOOR_BANDWIDTH_FRACTION = 1e-2
_MAX_GRID_POINTS = 200_001
_KDE_CHUNK_CELLS = 1 << 20


def finite_values(values) -> np.ndarray:
    """The finite numbers among `values` (any iterable) as a flat float array; None, NaN and infinities dropped."""
    if not isinstance(values, np.ndarray):
        values = list(values)
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def _scott_bandwidth(values: np.ndarray) -> float:
    """Scott's rule, ``std(ddof=1) * n^(-1/5)``; 0 when undefined or no spread."""
    if len(values) < 2:
        return 0.0
    return float(np.std(values, ddof=1)) * len(values) ** (-0.2)


def _log_kde(grid: np.ndarray, values: np.ndarray, *, bandwidth: float) -> np.ndarray:
    """Log density of a Gaussian KDE, via log-sum-exp so far tails do not underflow."""
    out = np.empty(len(grid))
    chunk = max(1, _KDE_CHUNK_CELLS // len(values))
    log_norm = math.log(len(values) * bandwidth * math.sqrt(2.0 * math.pi))
    for begin in range(0, len(grid), chunk):
        z = (grid[begin : begin + chunk, None] - values[None, :]) / bandwidth
        exponent = -0.5 * z * z
        peak = exponent.max(axis=1)
        out[begin : begin + chunk] = (
            peak + np.log(np.exp(exponent - peak[:, None]).sum(axis=1)) - log_norm
        )
    return out


def _trapezoid(y: np.ndarray, dx: float) -> float:
    return float(np.sum(y[1:] + y[:-1]) * 0.5 * dx)


def _kde_overlap(p_values: np.ndarray, q_values: np.ndarray, *, bandwidth) -> dict:
    """OA and KL(p || q) of the KDEs of two finite sets, with the degenerate cases."""
    result = {
        "overlapping_area": math.nan,
        "kl_divergence": math.nan,
        "bandwidth_p": math.nan,
        "bandwidth_q": math.nan,
        "reason": "",
    }
    if len(p_values) == 0 or len(q_values) == 0:
        result["reason"] = "a set has no finite values"
        return result
    pooled = np.concatenate((p_values, q_values))
    pooled_std = float(np.std(pooled))
    if pooled_std == 0.0:
        # Both KDEs are the same kernel at the same point for any bandwidth.
        result.update(overlapping_area=1.0, kl_divergence=0.0, bandwidth_p=0.0, bandwidth_q=0.0)
        result["reason"] = "all values identical; the distributions coincide"
        return result
    reasons = []
    if bandwidth is None:
        bandwidths = []
        for label, values in (("p", p_values), ("q", q_values)):
            h = _scott_bandwidth(values)
            if h <= 0:
                h = _FLOOR_BANDWIDTH_FRACTION * pooled_std
                reasons.append(f"bandwidth of set {label} floored (fewer than 2 values or no spread)")
            bandwidths.append(h)
        h_p, h_q = bandwidths
    else:
        if not (bandwidth > 0 and math.isfinite(bandwidth)):
            raise ValueError(f"bandwidth must be a finite number > 0 or None; got {bandwidth!r}")
        h_p = h_q = float(bandwidth)
    h_min, h_max = min(h_p, h_q), max(h_p, h_q)
    low, high = pooled.min() - 6.0 * h_max, pooled.max() + 6.0 * h_max
    n_points = int(min(_MAX_GRID_POINTS, math.ceil((high - low) / (h_min / 50.0)) + 1))
    if n_points == _MAX_GRID_POINTS:
        reasons.append("grid capped; narrow kernels are under-resolved")
    grid, dx = np.linspace(low, high, n_points, retstep=True)
    log_p = _log_kde(grid, p_values, bandwidth=h_p)
    log_q = _log_kde(grid, q_values, bandwidth=h_q)
    p, q = np.exp(log_p), np.exp(log_q)
    result.update(
        overlapping_area=_trapezoid(np.minimum(p, q), dx),
        # KL is >= 0 in exact arithmetic; clip quadrature noise.
        kl_divergence=max(0.0, _trapezoid(p * (log_p - log_q), dx)),
        bandwidth_p=h_p,
        bandwidth_q=h_q,
        reason="; ".join(reasons),
    )
    return result


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    if len(values) == 0:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values))


def compare_distributions(generated, real, *, bandwidth=None) -> dict:
    """Compare one metric's values over generated and real pieces (Yang & Lerch 2020).

    Non-finite values (e.g. nan metrics of empty pieces) are dropped first.
    Returns ``generated_mean``, ``generated_std``, ``real_mean``,
    ``real_std`` (population std, ``ddof=0``), ``n_generated``, ``n_real``,
    and the agreement of the two Gaussian KDEs ``p_r`` (real) and ``p_g``
    (generated), ``p(x) = 1/(n h) sum_i phi((x - x_i)/h)``:

    - ``overlapping_area``: ``OA = integral min(p_r(x), p_g(x)) dx`` (1 = same
      distribution, 0 = disjoint);
    - ``kl_divergence``: ``KL(real || generated) = integral p_r(x)
      ln(p_r(x) / p_g(x)) dx``, in nats.

    The bandwidth ``h`` of each set is Scott's rule ``std(ddof=1) n^(-1/5)``
    (as ``scipy.stats.gaussian_kde``) unless ``bandwidth`` fixes one value
    for both. Both densities are evaluated on one uniform grid from 6 max-h
    below the smallest value to 6 max-h above the largest, with spacing
    min-h / 50 (at most 200001 points), and integrated with the trapezoid
    rule; log densities use log-sum-exp so KL stays finite for far-apart sets.

    Degenerate cases never raise and are explained in ``reason`` ("" when
    none): a set with no finite values gives nan OA/KL; when every value of
    both sets is identical, OA = 1 and KL = 0; a single set with fewer than 2
    values or no spread gets the floor bandwidth ``0.01 * std(pooled values)``.
    ``bandwidth_generated`` and ``bandwidth_real`` report what was used.
    """
    generated = finite_values(generated)
    real = finite_values(real)
    generated_mean, generated_std = _mean_std(generated)
    real_mean, real_std = _mean_std(real)
    comparison = _kde_overlap(real, generated, bandwidth=bandwidth)
    reason = comparison["reason"].replace("set p", "real set").replace("set q", "generated set")
    return {
        "generated_mean": generated_mean,
        "generated_std": generated_std,
        "real_mean": real_mean,
        "real_std": real_std,
        "n_generated": len(generated),
        "n_real": len(real),
        "overlapping_area": comparison["overlapping_area"],
        "kl_divergence": comparison["kl_divergence"],
        "bandwidth_generated": comparison["bandwidth_q"],
        "bandwidth_real": comparison["bandwidth_p"],
        "reason": reason,
    }


def _pairwise_distances(values: np.ndarray) -> np.ndarray:
    upper = np.triu_indices(len(values), k=1)
    return np.abs(values[:, None] - values[None, :])[upper]


def compare_distances(generated, real, *, bandwidth=None) -> dict:
    """Yang & Lerch's intra-set / inter-set comparison of one metric.

    After dropping non-finite values: intra-set distances
    ``|x_i - x_j|, i < j`` within each set, and inter-set distances
    ``|g_i - r_j|`` for all pairs. Returns the mean and population std of
    each (``intra_generated_*``, ``intra_real_*``, ``inter_*``) and, using
    ``compare_distributions``' KDE, grid and degenerate-case rules,
    ``real_intra_vs_inter_overlapping_area`` / ``_kl_divergence``
    (``OA(intra_real, inter)`` and ``KL(intra_real || inter)``) and the same
    for the generated set. If the generated set resembles the real one, the
    real set's intra-set distances look like the inter-set distances (OA
    near 1, KL near 0). ``reason`` collects the degenerate-case notes.
    """
    generated = finite_values(generated)
    real = finite_values(real)
    distances = {
        "intra_generated": _pairwise_distances(generated),
        "intra_real": _pairwise_distances(real),
        "inter": np.abs(generated[:, None] - real[None, :]).ravel(),
    }
    result: dict = {}
    for name, values in distances.items():
        result[f"{name}_mean"], result[f"{name}_std"] = _mean_std(values)
    reasons = []
    for label in ("real", "generated"):
        comparison = _kde_overlap(distances[f"intra_{label}"], distances["inter"], bandwidth=bandwidth)
        result[f"{label}_intra_vs_inter_overlapping_area"] = comparison["overlapping_area"]
        result[f"{label}_intra_vs_inter_kl_divergence"] = comparison["kl_divergence"]
        if comparison["reason"]:
            reason = comparison["reason"].replace("set p", f"intra-{label} set")
            reasons.append(f"{label}: " + reason.replace("set q", "inter set"))
    result["reason"] = "; ".join(reasons)
    return result
