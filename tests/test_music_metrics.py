"""Tests for keras_music.music_metrics: hand-computed values and a MusPy cross-check."""

import ast
import math
import pathlib
import random

import music21
import muspy
import numpy as np
import pytest

from keras_music import music_metrics

EMPTY = np.zeros((0, 3))
# C D E F, one quarter note each.
C_D_E_F = np.array([[0, 1, 60], [1, 1, 62], [2, 1, 64], [3, 1, 65]], float)
C_MAJOR_SCALE = np.array(
    [[i, 1, p] for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])], float
)


def notes(*rows):
    return np.array(rows, dtype=float).reshape(-1, 3)


# ----------------------------------------------------------------------------
# Module hygiene
# ----------------------------------------------------------------------------


def test_imports_only_numpy_and_standard_library():
    tree = ast.parse(pathlib.Path(music_metrics.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"math", "collections", "numpy"}, imported


# ----------------------------------------------------------------------------
# Pitch metrics
# ----------------------------------------------------------------------------


def test_pitch_entropy_four_distinct_pitches_is_two_bits():
    assert music_metrics.pitch_entropy(C_D_E_F) == pytest.approx(2.0, abs=1e-12)


def test_pitch_entropy_of_half_quarter_quarter_is_one_and_a_half_bits():
    piece = notes([0, 1, 60], [1, 1, 60], [2, 1, 62], [3, 1, 64])
    assert music_metrics.pitch_entropy(piece) == pytest.approx(1.5, abs=1e-12)


def test_pitch_class_entropy_merges_octaves():
    piece = notes([0, 1, 60], [1, 1, 72], [2, 1, 62], [3, 1, 74])
    assert music_metrics.pitch_entropy(piece) == pytest.approx(2.0, abs=1e-12)
    assert music_metrics.pitch_class_entropy(piece) == pytest.approx(1.0, abs=1e-12)


def test_entropy_of_one_pitch_is_zero():
    piece = notes([0, 1, 60], [1, 1, 60])
    assert music_metrics.pitch_entropy(piece) == 0.0
    assert music_metrics.pitch_class_entropy(piece) == 0.0
    assert math.copysign(1.0, music_metrics.pitch_entropy(piece)) == 1.0


def test_pitch_class_entropy_of_chromatic_scale_is_log2_12():
    piece = notes(*[[i, 1, 60 + i] for i in range(12)])
    assert music_metrics.pitch_class_entropy(piece) == pytest.approx(3.584962500721156, abs=1e-12)


def test_pitch_counts_and_range():
    assert music_metrics.n_pitches_used(C_D_E_F) == 4
    assert music_metrics.pitch_range(C_D_E_F) == 5
    assert music_metrics.n_pitches_used(notes([0, 1, 60], [0, 1, 60], [1, 1, 48])) == 2
    assert music_metrics.pitch_range(notes([0, 1, 60], [0, 1, 60], [1, 1, 48])) == 12
    assert music_metrics.pitch_range(notes([0, 1, 60])) == 0


def test_scale_consistency():
    assert music_metrics.scale_consistency(C_MAJOR_SCALE) == 1.0
    chromatic = notes(*[[i, 1, 60 + i] for i in range(12)])
    assert music_metrics.scale_consistency(chromatic) == pytest.approx(7 / 12)
    # No diatonic scale holds three consecutive semitones; C minor and Db major hold 3 of 4.
    assert music_metrics.scale_consistency(notes([0, 1, 60], [1, 1, 61], [2, 1, 62], [3, 1, 63])) == 0.75


def test_scale_consistency_counts_notes_not_durations():
    # Eight C major notes and one long F#: 8 of 9 notes fit C major (or E minor, ...).
    piece = np.vstack([C_MAJOR_SCALE, notes([8, 100, 66])])
    assert music_metrics.scale_consistency(piece) == pytest.approx(8 / 9)


def test_key_correlation_c_major_scale():
    r, key = music_metrics.key_correlation(C_MAJOR_SCALE)
    assert key == "C major"
    assert r == pytest.approx(0.9013524118114133, abs=1e-12)
    # Independent check of the Pearson formula: duration histogram C=2, other white keys 1.
    histogram = [2, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1]
    profile = [6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]
    assert r == pytest.approx(np.corrcoef(histogram, profile)[0, 1], abs=1e-12)


def test_key_correlation_single_pitch_class():
    # One class: r = (y_0 - mean y) / (sqrt(11/12) ||y - mean y||); the major
    # tonic weight 6.35 beats the minor 6.33, rotated to D.
    r, key = music_metrics.key_correlation(notes([0, 2, 62], [2, 1, 74]))
    assert key == "D major"
    assert r == pytest.approx(0.6844726949095993, abs=1e-12)


def test_key_correlation_a_minor_weighted_by_duration():
    piece = notes(
        [0, 4, 57], [4, 1, 59], [5, 1, 60], [6, 1, 62], [7, 1, 64],
        [8, 1, 65], [9, 1, 67], [10, 4, 69], [14, 2, 64], [16, 4, 57],
    )
    r, key = music_metrics.key_correlation(piece)
    assert key == "A minor"
    assert r == pytest.approx(0.8008819114772441, abs=1e-12)


def test_key_correlation_undefined_for_flat_histogram():
    assert music_metrics.key_correlation(notes(*[[i, 1, 60 + i] for i in range(12)])) == (
        pytest.approx(math.nan, nan_ok=True),
        "",
    )
    r, key = music_metrics.key_correlation(notes([0, 0, 60]))
    assert math.isnan(r) and key == ""


# ----------------------------------------------------------------------------
# Groove, polyphony, empty beats
# ----------------------------------------------------------------------------


def test_groove_two_identical_bars_is_one():
    # Staccato quarters so the piece ends before the second barline (2 bars).
    piece = notes(*[[i, 0.5, 60 + i] for i in range(8)])
    assert music_metrics.groove_consistency(piece) == 1.0


def test_groove_trailing_empty_bar_when_piece_ends_on_barline():
    # MusPy counts floor(48 / 48) + 1 = 2 bars: bar 1 has 4 onsets, bar 2 none.
    assert music_metrics.groove_consistency(C_D_E_F) == pytest.approx(1 - 4 / 48)


def test_groove_alternating_patterns():
    # Bars A B A, A = onsets at beats 0 1 2 3, B = 0 2; hamming(A, B) = 2 twice.
    bar_a = [[0, 0.5, 60], [1, 0.5, 62], [2, 0.5, 64], [3, 0.5, 65]]
    bar_b = [[4, 2, 67], [6, 1, 65]]
    bar_a_again = [[8 + o, d, p] for o, d, p in bar_a]
    piece = notes(*bar_a, *bar_b, *bar_a_again)
    assert music_metrics.groove_consistency(piece) == pytest.approx(1 - 4 / (48 * 2))
    assert music_metrics.groove_consistency(piece) == pytest.approx(0.9583333333333334)


def test_groove_in_three_four_with_coarse_grid():
    # Bar = 3 quarters = 12 steps at resolution 4; onsets {0, 4, 8} then {0}.
    piece = notes([0, 1, 60], [1, 1, 62], [2, 1, 64], [3, 0.5, 65])
    assert music_metrics.groove_consistency(piece, (3, 4), resolution=4) == pytest.approx(1 - 2 / 12)


def test_groove_onsets_off_grid_are_rounded():
    # 1/3 quarter is 4 steps at resolution 12; float sums must not shift bars.
    third = 1 / 3
    bar = [[k * third, third * 0.5, 60] for k in range(12)]
    piece = notes(*bar, *[[4 + o, d, p] for o, d, p in bar])
    assert music_metrics.groove_consistency(piece) == 1.0


def test_groove_undefined_cases():
    assert math.isnan(music_metrics.groove_consistency(EMPTY))
    assert math.isnan(music_metrics.groove_consistency(notes([0, 1, 60], [1, 2, 62])))
    with pytest.raises(ValueError, match="resolution 1"):
        music_metrics.groove_consistency(C_D_E_F, (3, 8), resolution=1)
    with pytest.raises(ValueError, match="resolution"):
        music_metrics.groove_consistency(C_D_E_F, resolution=0)
    with pytest.raises(ValueError, match="time_signature"):
        music_metrics.groove_consistency(C_D_E_F, time_signature=(4, 0))


def test_polyphony():
    assert music_metrics.polyphony(C_D_E_F) == 1.0
    # Triad for 2 quarters, then one note for 2, a rest, one note: (3*2 + 2 + 1) / 5.
    piece = notes([0, 2, 60], [0, 2, 64], [0, 2, 67], [2, 2, 72], [5, 1, 72])
    assert music_metrics.polyphony(piece) == pytest.approx(9 / 5)
    # A doubled pitch counts once, as in a binary piano roll.
    assert music_metrics.polyphony(notes([0, 1, 60], [0, 1, 60])) == 1.0
    # Overlapping same-pitch notes cover 3 quarters, plus E for 1: 4 / 3.
    assert music_metrics.polyphony(notes([0, 2, 60], [1, 2, 60], [0, 1, 64])) == pytest.approx(4 / 3)


def test_polyphony_undefined_cases():
    assert math.isnan(music_metrics.polyphony(EMPTY))
    assert math.isnan(music_metrics.polyphony(notes([0, 0, 60], [1, 0, 62])))


def test_empty_beat_rate():
    assert music_metrics.empty_beat_rate(C_D_E_F) == 0.0
    # 3.5 quarters -> 4 beats; beats 0-1 (ends on beat 1) and 3 covered.
    piece = notes([0, 1, 60], [3, 0.5, 62])
    assert music_metrics.empty_beat_rate(piece) == 0.25
    # 6/8: beats are eighths; 2.25 quarters -> 5 beats; 0-1 and 4 covered.
    piece = notes([0, 0.5, 60], [2, 0.25, 62])
    assert music_metrics.empty_beat_rate(piece, (6, 8)) == pytest.approx(0.4)
    # A long rest: 8 beats plus the closing one, 2 covered.
    assert music_metrics.empty_beat_rate(notes([0, 0.5, 60], [8, 0.5, 60])) == pytest.approx(1 - 2 / 9)


def test_empty_beat_rate_undefined_cases():
    assert math.isnan(music_metrics.empty_beat_rate(EMPTY))
    assert math.isnan(music_metrics.empty_beat_rate(notes([0, 0, 60])))


# ----------------------------------------------------------------------------
# Transitions
# ----------------------------------------------------------------------------

# Melody C E G C over a bass: onset 0 has 48 and 60, onset 1 has 55 and 64.
ARPEGGIO = notes([0, 1, 48], [0, 1, 60], [1, 1, 64], [1, 1, 55], [2, 1, 67], [3, 1, 72])


def test_melody_is_top_note_per_onset():
    assert music_metrics.melody_pitches(ARPEGGIO).tolist() == [60, 64, 67, 72]
    assert music_metrics.melody_pitches(EMPTY).tolist() == []
    # 0.1 + 0.2 != 0.3 in floats, but it is the same onset.
    piece = notes([0.1 + 0.2, 1, 60], [0.3, 1, 67], [0, 1, 62])
    assert music_metrics.melody_pitches(piece).tolist() == [62, 67]


def test_transition_matrix_without_smoothing():
    matrix = music_metrics.transition_matrix([ARPEGGIO], smoothing=0.0)
    expected = np.full((12, 12), 1 / 12)
    for row, col in [(0, 4), (4, 7), (7, 0)]:
        expected[row] = 0.0
        expected[row, col] = 1.0
    np.testing.assert_allclose(matrix, expected, atol=1e-15)


def test_transition_matrix_with_smoothing_and_piece_boundaries():
    matrix = music_metrics.transition_matrix([notes([0, 1, 60], [1, 1, 62]), notes([0, 1, 64], [1, 1, 65])])
    assert matrix.shape == (12, 12)
    np.testing.assert_allclose(matrix.sum(axis=1), np.ones(12))
    assert matrix[0, 2] == pytest.approx(2 / 13)
    assert matrix[0, 3] == pytest.approx(1 / 13)
    assert matrix[4, 5] == pytest.approx(2 / 13)
    # No transition crosses from the first piece's D into the second piece's E.
    assert matrix[2, 4] == pytest.approx(1 / 12)


def test_transition_matrix_rejects_bad_input():
    with pytest.raises(TypeError, match="list of pieces"):
        music_metrics.transition_matrix(ARPEGGIO)
    with pytest.raises(ValueError, match="smoothing"):
        music_metrics.transition_matrix([ARPEGGIO], smoothing=-1)


def test_note_transition_logprob():
    matrix = music_metrics.transition_matrix([ARPEGGIO], smoothing=1.0)
    # Each of the 3 transitions has probability 2/13.
    assert music_metrics.note_transition_logprob(ARPEGGIO, matrix) == pytest.approx(-1.8718021769015913)
    uniform = np.full((12, 12), 1 / 12)
    assert music_metrics.note_transition_logprob(ARPEGGIO, uniform) == pytest.approx(-2.4849066497880004)
    assert math.isnan(music_metrics.note_transition_logprob(notes([0, 1, 60], [0, 1, 64]), uniform))
    assert math.isnan(music_metrics.note_transition_logprob(EMPTY, uniform))
    impossible = music_metrics.transition_matrix([ARPEGGIO], smoothing=0.0)
    assert music_metrics.note_transition_logprob(notes([0, 1, 60], [1, 1, 61]), impossible) == -math.inf
    with pytest.raises(ValueError, match="12, 12"):
        music_metrics.note_transition_logprob(ARPEGGIO, np.ones((3, 3)))


# ----------------------------------------------------------------------------
# Event-sequence metrics
# ----------------------------------------------------------------------------


def test_distinct_event_ratio():
    assert music_metrics.distinct_event_ratio(["a", "b", "a", "c"]) == 0.75
    assert music_metrics.distinct_event_ratio([(60, 1.0), (60, 1.0)]) == 0.5
    assert music_metrics.distinct_event_ratio([1, 2, 3]) == 1.0
    assert math.isnan(music_metrics.distinct_event_ratio([]))


@pytest.mark.parametrize(
    "events, expected",
    [
        ([1, 2, 3, 1, 2, 3, 4], 3),
        (["a", "a", "a"], 1),
        (["a", "a", "a", "a"], 2),
        ([1, 2, 1, 2, 1], 2),
        ([1, 2, 3], 0),
        ([1], 0),
        ([], 0),
        ([(60, 1.0), ("rest", 0.5), (60, 1.0), ("rest", 0.5)], 2),
    ],
)
def test_longest_repetition_literals(events, expected):
    assert music_metrics.longest_repetition(events) == expected


def _naive_longest_repetition(events):
    n = len(events)
    best = 0
    for length in range(1, n // 2 + 1):
        for i in range(n - length + 1):
            for j in range(i + length, n - length + 1):
                if events[i : i + length] == events[j : j + length]:
                    best = length
    return best


def test_longest_repetition_matches_brute_force():
    rng = random.Random(7)
    for _ in range(60):
        events = [rng.choice("ab" if rng.random() < 0.5 else "abcd") for _ in range(rng.randrange(0, 24))]
        assert music_metrics.longest_repetition(events) == _naive_longest_repetition(events), events


def test_longest_repetition_is_fast_on_5000_events():
    rng = np.random.default_rng(0)
    events = rng.integers(0, 6, size=5000).tolist()
    loop = list(range(100, 400))
    events[1000:1300] = loop
    events[4000:4300] = loop
    assert music_metrics.longest_repetition(events) >= 300
    assert music_metrics.longest_repetition([7] * 5000) == 2500


# ----------------------------------------------------------------------------
# piece_metrics and validation
# ----------------------------------------------------------------------------

BASE_KEYS = {
    "pitch_entropy", "pitch_class_entropy", "groove_consistency", "scale_consistency",
    "key_correlation", "n_pitches_used", "pitch_range", "polyphony", "empty_beat_rate",
}


def test_piece_metrics_keys_and_values():
    result = music_metrics.piece_metrics(C_D_E_F)
    assert set(result) == BASE_KEYS
    assert all(isinstance(value, float) for value in result.values())
    assert result["pitch_entropy"] == pytest.approx(2.0)
    assert result["n_pitches_used"] == 4.0
    assert result["pitch_range"] == 5.0

    full = music_metrics.piece_metrics(
        ARPEGGIO, events=[1, 2, 3, 1, 2, 3, 4], matrix=np.full((12, 12), 1 / 12)
    )
    assert set(full) == BASE_KEYS | {"note_transition_logprob", "distinct_event_ratio", "longest_repetition",
                                     "restatement_rate"}
    assert full["longest_repetition"] == 3.0
    assert full["distinct_event_ratio"] == pytest.approx(4 / 7)
    assert set(full) <= set(music_metrics.METRIC_DESCRIPTIONS)
    assert all(music_metrics.METRIC_DESCRIPTIONS[key] for key in full)


def test_empty_piece_gives_defined_values():
    result = music_metrics.piece_metrics(EMPTY, events=[], matrix=np.full((12, 12), 1 / 12))
    counts = {"n_pitches_used", "pitch_range", "longest_repetition"}
    assert set(result) == set(music_metrics.METRIC_DESCRIPTIONS)
    assert {key: result[key] for key in counts} == dict.fromkeys(counts, 0.0)
    undefined = [key for key in result if key not in counts]
    assert len(undefined) == 10 and all(math.isnan(result[key]) for key in undefined), undefined
    # A plain empty list is an empty piece too.
    assert math.isnan(music_metrics.pitch_entropy([]))


def test_invalid_notes_name_the_problem():
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        music_metrics.pitch_entropy(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="integer-valued"):
        music_metrics.pitch_entropy(notes([0, 1, 60.5]))
    with pytest.raises(ValueError, match="durations"):
        music_metrics.polyphony(notes([0, -1, 60]))
    with pytest.raises(ValueError, match="finite"):
        music_metrics.pitch_range(notes([math.nan, 1, 60]))


# ----------------------------------------------------------------------------
# compare_distributions / compare_distances
# ----------------------------------------------------------------------------


def test_compare_distributions_means_and_stds():
    result = music_metrics.compare_distributions([1, 2, 3, 4], [2, 4, 6])
    assert result["generated_mean"] == 2.5
    assert result["generated_std"] == pytest.approx(1.118033988749895)
    assert result["real_mean"] == 4.0
    assert result["real_std"] == pytest.approx(1.632993161855452)
    assert (result["n_generated"], result["n_real"]) == (4, 3)
    # Scott: std(ddof=1) * n^(-1/5) for [1, 2, 3, 4].
    assert result["bandwidth_generated"] == pytest.approx(1.2909944487358056 * 4 ** -0.2)
    assert result["reason"] == ""


def test_compare_distributions_identical_sets():
    values = [0.1, 0.5, 0.4, 0.9, 0.7]
    result = music_metrics.compare_distributions(values, values)
    assert result["overlapping_area"] == pytest.approx(1.0, abs=1e-6)
    assert result["kl_divergence"] == pytest.approx(0.0, abs=1e-9)


def test_compare_distributions_far_apart_sets():
    result = music_metrics.compare_distributions([0.0, 0.1, 0.2, 0.3], [100.0, 100.1, 100.3])
    assert result["overlapping_area"] < 1e-6
    assert math.isfinite(result["kl_divergence"]) and result["kl_divergence"] > 1000


def test_compare_distributions_matches_gaussian_closed_form():
    # One value per set with a fixed bandwidth: two unit Gaussians d apart,
    # OA = erfc(d / (2 sqrt 2)), KL = d^2 / 2.
    result = music_metrics.compare_distributions([0.0], [1.0], bandwidth=1.0)
    assert result["overlapping_area"] == pytest.approx(0.6170750774519738, abs=1e-4)
    assert result["kl_divergence"] == pytest.approx(0.5, abs=1e-6)
    result = music_metrics.compare_distributions([0.0], [3.0], bandwidth=1.0)
    assert result["overlapping_area"] == pytest.approx(0.1336144025377161, abs=1e-4)
    assert result["kl_divergence"] == pytest.approx(4.5, abs=1e-6)


def test_compare_distributions_degenerate_cases():
    same = music_metrics.compare_distributions([1.0, 1.0], [1.0, 1.0, 1.0])
    assert (same["overlapping_area"], same["kl_divergence"]) == (1.0, 0.0)
    assert "identical" in same["reason"]

    collapsed = music_metrics.compare_distributions([3.0], [1, 2, 3, 4, 5])
    assert "generated set floored" in collapsed["reason"]
    assert 0 < collapsed["overlapping_area"] < 0.1
    assert math.isfinite(collapsed["kl_divergence"]) and collapsed["kl_divergence"] > 1

    empty = music_metrics.compare_distributions([math.nan], [1.0, 2.0])
    assert math.isnan(empty["overlapping_area"]) and math.isnan(empty["kl_divergence"])
    assert math.isnan(empty["generated_mean"]) and empty["n_generated"] == 0
    assert "no finite values" in empty["reason"]

    dropped = music_metrics.compare_distributions([1.0, math.nan, 3.0], [1.0, 2.0])
    assert dropped["n_generated"] == 2 and dropped["generated_mean"] == 2.0

    with pytest.raises(ValueError, match="bandwidth"):
        music_metrics.compare_distributions([1, 2], [1, 2], bandwidth=0)


def test_compare_distances():
    result = music_metrics.compare_distances([0.0, 1.0], [0.0, 1.0])
    # intra sets {1}, inter {0, 1, 1, 0}.
    assert result["intra_generated_mean"] == 1.0
    assert result["intra_real_mean"] == 1.0
    assert result["inter_mean"] == 0.5
    assert result["inter_std"] == 0.5
    rng = np.random.default_rng(3)
    real = rng.normal(size=40)
    similar = music_metrics.compare_distances(rng.normal(size=40), real)
    different = music_metrics.compare_distances(rng.normal(5.0, 1.0, size=40), real)
    assert similar["real_intra_vs_inter_overlapping_area"] > 0.8
    assert different["real_intra_vs_inter_overlapping_area"] < 0.2
    assert similar["real_intra_vs_inter_kl_divergence"] < different["real_intra_vs_inter_kl_divergence"]


# ----------------------------------------------------------------------------
# Cross-check against MusPy on Bach chorales written as MIDI
# ----------------------------------------------------------------------------

CHORALES = [
    ("bach/bwv66.6", (4, 4)),
    ("bach/bwv26.6", (4, 4)),
    ("bach/bwv4.8", (4, 4)),
    ("bach/bwv10.7", (4, 4)),
    ("bach/bwv153.1", (4, 4)),
    ("bach/bwv269", (3, 4)),
]


@pytest.fixture(scope="module")
def chorale_midis(tmp_path_factory):
    directory = tmp_path_factory.mktemp("chorales")
    loaded = []
    for name, time_signature in CHORALES:
        path = directory / (name.replace("/", "_") + ".mid")
        music21.corpus.parse(name).write("midi", fp=str(path))
        music = muspy.read_midi(str(path))
        # Times are integer ticks; dividing by ticks per quarter gives quarter notes.
        rows = [
            [note.time / music.resolution, note.duration / music.resolution, note.pitch]
            for track in music.tracks
            if not track.is_drum
            for note in track.notes
        ]
        loaded.append((name, time_signature, music, np.array(rows, dtype=float)))
    return loaded


def test_chorales_agree_with_muspy(chorale_midis):
    for name, time_signature, music, piece in chorale_midis:
        assert len(piece) > 50, name
        resolution = music.resolution
        beats_per_bar = time_signature[0]
        pairs = {
            "pitch_entropy": (music_metrics.pitch_entropy(piece), muspy.pitch_entropy(music)),
            "pitch_class_entropy": (
                music_metrics.pitch_class_entropy(piece), muspy.pitch_class_entropy(music),
            ),
            "scale_consistency": (music_metrics.scale_consistency(piece), muspy.scale_consistency(music)),
            "groove_consistency": (
                music_metrics.groove_consistency(piece, time_signature, resolution=resolution),
                muspy.groove_consistency(music, measure_resolution=beats_per_bar * resolution),
            ),
            "polyphony": (music_metrics.polyphony(piece, resolution=resolution), muspy.polyphony(music)),
            "empty_beat_rate": (
                music_metrics.empty_beat_rate(piece, time_signature), muspy.empty_beat_rate(music),
            ),
            "pitch_range": (music_metrics.pitch_range(piece), muspy.pitch_range(music)),
            "n_pitches_used": (music_metrics.n_pitches_used(piece), muspy.n_pitches_used(music)),
        }
        for metric, (ours, theirs) in pairs.items():
            assert math.isfinite(ours), (name, metric)
            assert ours == pytest.approx(theirs, abs=1e-6), (name, metric, ours, theirs)


def test_chorales_default_grid_agrees_with_muspy(chorale_midis):
    # Chorale rhythms lie on a 12-per-quarter grid, so MusPy at resolution 12
    # sees the same notes as our default grid. Groove depends on the grid
    # (hamming distance is divided by steps per bar); polyphony does not.
    for name, time_signature, music, piece in chorale_midis:
        ticks = np.concatenate([piece[:, 0], piece[:, 0] + piece[:, 1]]) * 12
        assert np.allclose(ticks, np.round(ticks)), name
        coarse = music.deepcopy().adjust_resolution(12)
        assert music_metrics.groove_consistency(piece, time_signature) == pytest.approx(
            muspy.groove_consistency(coarse, measure_resolution=time_signature[0] * 12), abs=1e-9
        ), name
        assert music_metrics.polyphony(piece) == pytest.approx(muspy.polyphony(music), abs=1e-9), name
        assert music_metrics.polyphony(piece) == pytest.approx(muspy.polyphony(coarse), abs=1e-9), name


def test_chorales_have_plausible_keys(chorale_midis):
    for name, _, _, piece in chorale_midis:
        r, key = music_metrics.key_correlation(piece)
        assert 0.6 < r <= 1.0, name
        assert key.endswith((" major", " minor")), name
    # bwv66.6 is in F# minor (music21's own analysis agrees).
    assert music_metrics.key_correlation(chorale_midis[0][3])[1] == "F# minor"


def test_random_sparse_pieces_agree_with_muspy():
    # Chorales never rest for a whole beat, so empty beats and sparse bars are
    # checked on random pieces built directly as MusPy objects.
    rng = np.random.default_rng(11)
    resolution = 12
    for _ in range(30):
        n = int(rng.integers(1, 25))
        times = rng.integers(0, 16 * resolution, size=n)
        durations = rng.integers(0, 3 * resolution, size=n)
        pitches = rng.integers(40, 90, size=n)
        music = muspy.Music(
            resolution=resolution,
            tracks=[
                muspy.Track(notes=[
                    muspy.Note(time=int(t), pitch=int(p), duration=int(d), velocity=64)
                    for t, d, p in zip(times, durations, pitches)
                ])
            ],
        )
        piece = np.column_stack([times / resolution, durations / resolution, pitches])
        pairs = [
            (music_metrics.groove_consistency(piece), muspy.groove_consistency(music, 4 * resolution)),
            (music_metrics.empty_beat_rate(piece), muspy.empty_beat_rate(music)),
            (music_metrics.polyphony(piece), muspy.polyphony(music)),
            (music_metrics.scale_consistency(piece), muspy.scale_consistency(music)),
            (music_metrics.pitch_entropy(piece), muspy.pitch_entropy(music)),
            (music_metrics.pitch_range(piece), muspy.pitch_range(music)),
        ]
        for ours, theirs in pairs:
            assert ours == pytest.approx(theirs, abs=1e-9, nan_ok=True), (piece.tolist(), ours, theirs)


@pytest.mark.parametrize("events, length, expected", [
    (list("abcdefgh"), 8, 0.0),  # one passage, nothing before it
    (list("abcabcabc"), 3, 4 / 7),  # every passage after the first three comes back
    (list("abcdabcd"), 4, 1 / 5),  # the theme restated once: 1 of its 5 passages
    (list("aaaa"), 2, 2 / 3),  # overlapping earlier passages count
    (list("abc"), 4, None),  # shorter than a passage
])
def test_restatement_rate_literals(events, length, expected):
    value = music_metrics.restatement_rate(events, length)
    assert math.isnan(value) if expected is None else value == pytest.approx(expected)


def test_restatement_rate_matches_brute_force_and_is_in_the_piece_metrics():
    rng = np.random.default_rng(3)
    for _ in range(100):
        events = [int(x) for x in rng.integers(0, 3, size=int(rng.integers(8, 40)))]
        passages = [tuple(events[i:i + 8]) for i in range(len(events) - 7)]
        naive = sum(p in passages[:i] for i, p in enumerate(passages)) / len(passages)
        assert music_metrics.restatement_rate(events) == pytest.approx(naive)
    notes = np.array([[i, 1.0, 60 + i % 4] for i in range(16)], float)
    values = music_metrics.piece_metrics(notes, events=[60 + i % 4 for i in range(16)])
    assert values["restatement_rate"] == pytest.approx(5 / 9)
