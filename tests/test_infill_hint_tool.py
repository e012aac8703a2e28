"""tools/infill_side_experiment.py's gap hint: zero outside a middle, the suffix's first sonority and the gap left."""

import numpy as np
import pytest

import infill_side_experiment as experiment
from keras_music import events

TOKENS = ["<pad>", "<unk>", "<piece>", "pitch:60", "pitch:64", "hold:67", "pitch:67", "rest", "dur:1", "dur:2",
          "dur:1/2", *events.FIM_TOKENS, *events.FIM_LENGTH_TOKENS]


def ids(*names):
    return [TOKENS.index(n) for n in names]


def test_the_hint_reads_the_suffix_and_counts_down_the_gap_only_inside_the_middle():
    hint = experiment.Hint(TOKENS, grid=24)
    sequence = ids("<fim_suffix>", "pitch:60", "hold:67", "dur:1", "pitch:64", "dur:2", "<fim_prefix>", "pitch:67",
                   "dur:1", "<fim_middle>", "<fim_len:4>", "pitch:60", "dur:2", "rest", "dur:1", "pitch:64",
                   "dur:1/2", "pitch:67", "dur:1/2", "<fim_end>")
    side = hint(sequence)
    assert side.shape == (len(sequence), experiment.SIZE)
    middle, end = sequence.index(TOKENS.index("<fim_middle>")), sequence.index(TOKENS.index("<fim_end>"))
    # Off before <fim_middle> and from <fim_end> on; on at every step in between.
    assert not side[:middle].any() and not side[end:].any() and (side[middle:end, 0] == 1).all()
    # The gap holds 2 + 1 + 1/2 + 1/2 = 4 quarters, i.e. 16 sixteenths; each row says what is left after its token.
    left = [int(np.flatnonzero(row[experiment._REMAINING:experiment._QUARTERS])[0]) for row in side[middle:end]]
    assert left == [16, 16, 16, 8, 8, 4, 4, 2, 2, 0]
    assert np.allclose(side[middle:end, experiment._QUARTERS], np.array(left) / 4 / 16)
    # The suffix's first sonority: C4 struck and G4 held over from the gap; the pitch classes of its first
    # two sonorities (C, G, E), each a third.
    first = side[middle]
    pitches = np.flatnonzero(first[experiment._PITCHES:experiment._HELD]) + events.PIANO_LOW
    held = np.flatnonzero(first[experiment._HELD:experiment._CLASSES]) + events.PIANO_LOW
    assert pitches.tolist() == [60, 67] and held.tolist() == [67]
    classes = first[experiment._CLASSES:]
    assert np.allclose(classes[[0, 4, 7]], 1 / 3) and np.isclose(classes.sum(), 1)
    # A known gap length wins over the middle's own durations (scoring a middle cut before its end).
    assert int(np.flatnonzero(hint(sequence[:12], gap_ticks=96)[11, experiment._REMAINING:experiment._QUARTERS])[0]) == 16


def test_ordinary_windows_and_prefix_only_continuations_get_no_hint():
    hint = experiment.Hint(TOKENS, grid=24)
    assert not hint(ids("<piece>", "pitch:60", "dur:1", "pitch:64", "dur:2")).any()
    assert not hint(ids("pitch:60", "dur:1", "<fim_middle>", "pitch:64", "dur:2")).any()
    assert not hint([]).any()


def test_the_hinted_model_starts_as_the_base_model_and_shares_its_weights():
    from keras_music import model as model_lib

    base = model_lib.build_model(len(TOKENS), embedding_size=8, hidden_size=16, num_layers=2)
    hinted = experiment.build(base, experiment.SIZE)
    tokens = np.array([ids("<fim_suffix>", "pitch:60", "dur:1", "<fim_prefix>", "pitch:64", "dur:2", "<fim_middle>",
                           "<fim_len:2>", "pitch:67", "dur:1")], np.int32)
    side = np.random.default_rng(0).random((1, tokens.shape[1], experiment.SIZE)).astype(np.float32)
    # The projection starts at zero: any hint gives the base model's probabilities.
    assert np.allclose(np.asarray(hinted([tokens, side])), np.asarray(base(tokens)), atol=1e-6)
    # Training the hinted model trains the base model's own LSTM and head.
    shared = {id(v) for v in base.weights}
    assert sum(id(v) in shared for v in hinted.weights) == len(base.weights) == len(hinted.weights) - 1


def test_the_tail_share_counts_the_last_sonority_and_the_last_four_quarters_of_each_middle():
    class Vocabulary:
        tokens, boundary_id = TOKENS, 2

        def encode(self, names):
            return ids(*names)

    class Uniform:  # every token equally likely: the NLL shares are the token shares
        def __call__(self, tokens, training=False):
            return np.full(np.shape(tokens) + (len(TOKENS),), 1 / len(TOKENS), np.float32)

    hint = experiment.Hint(TOKENS, grid=24)
    # Six quarters: C-E (2) | rest (1) | E (1) | G (1/2) | C (1/2) | E-G (1). The last four quarters are the
    # sonorities from the rest on (11 of the 14 tokens); the last sonority is E-G (3 tokens).
    middle = ["pitch:60", "pitch:64", "dur:2", "rest", "dur:1", "pitch:64", "dur:1", "pitch:67", "dur:1/2",
              "pitch:60", "dur:1/2", "pitch:64", "pitch:67", "dur:1"]
    gap = {"middle": middle, "prefix": ["pitch:60", "dur:1"], "ticks": 6 * 24}
    shares = experiment.tail_share(Uniform(), [gap], vocabulary=Vocabulary(), hint=hint)
    assert shares["last_sonority"]["tokens"] == pytest.approx(3 / 14)
    assert shares["last_sonority"]["nll"] == pytest.approx(3 / 14)
    assert shares["last_4_quarters"]["tokens"] == pytest.approx(11 / 14)
    assert shares["nll_per_token"] == pytest.approx(np.log(len(TOKENS)), rel=1e-5)
