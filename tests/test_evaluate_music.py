"""Tests for keras_music.evaluate_music: metrics of generated pieces per temperature beside the held-out ones."""

import math
import types
from fractions import Fraction

import numpy as np
import pytest

from keras_music import dataset, evaluate_music as music_lib, events, music_metrics, ngram, run as run_lib, sampling
from keras_music.evaluate_music import EvaluationSettings
from keras_music.generate import Generator

pytestmark = pytest.mark.slow


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

    def generate(self, num_samples=1, sampling_settings=None, *, seed=0, **_):
        length, temperature = sampling_settings.length, sampling_settings.temperature
        self.calls.append({"num_samples": num_samples, "length": length, "temperature": temperature, "seed": seed})
        rng = sampling.make_rng(seed)
        banned = [self.vocabulary.pad_id, self.vocabulary.unk_id, self.vocabulary.boundary_id]
        pieces = []
        lengths = list(length) if isinstance(length, tuple) else [length] * num_samples
        for row in range(num_samples):
            ids = []
            while sum(self.vocabulary.tokens[i].startswith("dur:") for i in ids) < lengths[row]:
                probabilities = self.model.probabilities(ids)[None, :]
                ids.append(int(sampling.sample_next(probabilities, rng, temperature=temperature, top_k=0, top_p=1.0,
                                                    banned=banned)[0]))
            pieces.append(fake_piece(self.vocabulary.decode(ids)))
        return pieces


def test_matched_length_gives_each_generated_piece_a_held_out_piece_length(tiny_run):
    real = [{"events": 7}, {"events": 3}]
    assert music_lib.generation_lengths("matched", real, num_samples=5) == {"length": [7, 3, 7, 3, 7], "min_length": 7}
    assert music_lib.generation_lengths(12, real, num_samples=5) == {"length": 12}
    generator = NGramGenerator(tiny_run)
    music = music_lib.music_report(tiny_run, EvaluationSettings(num_samples=3, length="matched", temperatures=(1.0,),
                                                                     seed=0), generator=generator)
    held_out = [row["events"] for row in music["real"]["pieces"]]
    assert generator.calls[0]["length"] == tuple(held_out[i % len(held_out)] for i in range(3))
    assert [row["events"] for row in music["generated"]["1"]["pieces"]] == list(generator.calls[0]["length"])


def test_generated_metrics_use_only_generated_notes(tiny_run):
    # Primer: two events of pitch 40; generated part: a C major scale fragment.
    primer = ["pitch:40", "dur:1", "hold:40", "dur:1/2"]
    generated = ["pitch:60", "dur:1", "pitch:62", "dur:1", "pitch:64", "dur:1", "pitch:65", "dur:1",
                 "pitch:67", "dur:2", "rest", "dur:1"]
    piece = fake_piece(primer + generated, primer_events=2)
    notes, sonorities = music_lib.generated_part(piece)
    np.testing.assert_allclose(notes, [[0, 1, 60], [1, 1, 62], [2, 1, 64], [3, 1, 65], [4, 2, 67]])
    assert len(sonorities) == 6 and sonorities[0].pitches == (60,)
    assert music_metrics.pitch_entropy(notes) == pytest.approx(math.log2(5))
    # With the primer's note the piece has 6 distinct pitches.
    assert music_metrics.pitch_entropy(piece.notes) == pytest.approx(math.log2(6))

    class PrimedGenerator:
        def generate(self, num_samples=1, sampling_settings=None, **_):
            return [piece] * num_samples

    music = music_lib.music_report(tiny_run, EvaluationSettings(num_samples=2, length=6, temperatures=(1.0,),
                                                                     seed=0), generator=PrimedGenerator())
    rows = music["generated"]["1"]["pieces"]
    assert rows[0]["metrics"]["pitch_entropy"] == pytest.approx(math.log2(5))
    assert rows[0]["events"] == 6
    expected = music_metrics.piece_metrics(notes, events.event_keys(sonorities), time_signature=(4, 4),
                                     matrix=np.array(music["transition_matrix"]))
    for name, value in expected.items():
        assert rows[0]["metrics"][name] == pytest.approx(value, nan_ok=True), name
    # The generated part starts 1.5 quarters in; moved to 0 it has no empty beat
    # (left in place, the primer's beat would count as empty).
    assert rows[0]["metrics"]["empty_beat_rate"] == 0.0


def test_generated_part_keeps_a_note_that_starts_at_the_primer_end():
    piece = fake_piece(["pitch:60", "dur:1/3", "pitch:60", "dur:1/3", "pitch:61", "dur:1/3", "pitch:62",
                        "dur:1"], primer_events=3)
    notes, sonorities = music_lib.generated_part(piece)
    np.testing.assert_allclose(notes, [[0, 1, 62]], atol=1e-9)
    assert sonorities[0].duration == Fraction(1)


def test_pitch_entropy_rises_with_temperature_controlled(tiny_run):
    # A bigram model of the training pieces sampled with seeded numpy: at T = 0.3
    # it keeps to its few most likely continuations, at T = 3.0 it wanders over
    # the whole pitch vocabulary.
    music = music_lib.music_report(tiny_run, EvaluationSettings(num_samples=6, length=30, temperatures=(0.3, 3.0),
                                                                     seed=11), generator=NGramGenerator(tiny_run))
    low = music["generated"]["0.3"]["summary"]["pitch_entropy"]
    high = music["generated"]["3"]["summary"]["pitch_entropy"]
    assert low["n"] == high["n"] == 6
    assert high["mean"] > low["mean"] + 0.5
    assert (music["generated"]["3"]["summary"]["n_pitches_used"]["mean"]
            > music["generated"]["0.3"]["summary"]["n_pitches_used"]["mean"])


def test_pitch_entropy_rises_with_temperature_real_generator(tiny_run):
    music = music_lib.music_report(tiny_run, EvaluationSettings(num_samples=8, length=40, temperatures=(0.3, 3.0),
                                                                     seed=5), generator=Generator(tiny_run))
    # Seeded, so deterministic; seeds 0, 5 and 11 all give gaps above 2 bits.
    low = music["generated"]["0.3"]["summary"]["pitch_entropy"]
    high = music["generated"]["3"]["summary"]["pitch_entropy"]
    assert low["n"] >= 4 and high["n"] >= 4
    assert high["mean"] > low["mean"] + 1.0




def test_music_metrics_measures_every_metric_per_temperature(tiny_run):
    generator = NGramGenerator(tiny_run)
    music = music_lib.music_report(tiny_run, EvaluationSettings(num_samples=3, length=8, temperatures=(0.5, 1.0),
                                                                     seed=2), generator=generator)
    assert [call["temperature"] for call in generator.calls] == [0.5, 1.0]
    assert all(call["seed"] == 2 and call["length"] == 8 for call in generator.calls)
    assert music["temperatures"] == [0.5, 1.0]
    assert music["metric_names"] == list(music_metrics.METRIC_DESCRIPTIONS) == list(music["descriptions"])
    assert list(music["generated"]) == list(music["comparison"]) == ["0.5", "1"]
    for key in ("0.5", "1"):
        at = music["generated"][key]
        assert len(at["pieces"]) == 3 and at["stop_reasons"] == {"length": 3}
        assert set(at["summary"]) == set(music["comparison"][key]) == set(music_metrics.METRIC_DESCRIPTIONS)
        values = [row["metrics"]["pitch_entropy"] for row in at["pieces"]]
        assert at["summary"]["pitch_entropy"]["mean"] == pytest.approx(np.mean(values))
        comparison = music["comparison"][key]["pitch_entropy"]
        assert comparison["n_generated"] == 3 and comparison["n_real"] == len(music["real"]["pieces"])
    (real,) = music["real"]["pieces"]
    assert real["name"] == run_lib.held_out_names(tiny_run)[0] and real["time_signature"] == [4, 4]
    np.testing.assert_allclose(np.sum(music["transition_matrix"], axis=1), 1.0)


def test_summarize_values_leaves_undefined_values_out():
    summary = music_lib.summarize_values([1.0, 3.0, math.nan, math.inf])
    assert summary == {"mean": 2.0, "std": 1.0, "n": 2, "n_undefined": 2}
    empty = music_lib.summarize_values([math.nan])
    assert math.isnan(empty["mean"]) and math.isnan(empty["std"]) and (empty["n"], empty["n_undefined"]) == (0, 1)


def test_stop_reasons_are_counted_by_name():
    rows = [{"stop_reason": "length"}, {"stop_reason": "end"}, {"stop_reason": "length"}, {}]
    assert music_lib.stop_reasons(rows) == {"length": 2, "end": 1, "None": 1}


def test_metric_values_mark_missing_metrics_nan():
    values = music_lib.metric_values([{"metrics": {"polyphony": 2.0}}, {"metrics": {}}], "polyphony")
    assert values[0] == 2.0 and math.isnan(values[1])


def test_temperature_key_writes_the_shortest_number():
    assert [music_lib.temperature_key(t) for t in (1.0, 0.5, 1.25, 3)] == ["1", "0.5", "1.25", "3"]


def test_generation_lengths_need_a_held_out_piece_to_match():
    with pytest.raises(ValueError, match="at least one held-out piece"):
        music_lib.generation_lengths("matched", [], num_samples=3)
    assert music_lib.generation_lengths("matched", [{"events": 0}], num_samples=2) == {"length": [1, 1],
                                                                                      "min_length": 1}


def test_generated_piece_metrics_count_repairs_and_keep_the_stop_reason():
    tokens = ["pitch:60", "dur:1", "pitch:64", "dur:1", "pitch:67", "dur:2"]
    piece = fake_piece(tokens, stop_reason="end")
    piece.repairs = {"duration": 2, "pitch": 1}
    plain = fake_piece(tokens)
    plain.repairs = 4
    rows = music_lib.generated_piece_metrics([piece, plain], np.full((12, 12), 1 / 12))
    assert [(r["events"], r["notes"], r["stop_reason"], r["repairs"]) for r in rows] == [
        (3, 3, "end", 3), (3, 3, "length", 4)]
    assert rows[0]["metrics"]["n_pitches_used"] == 3.0
    assert rows[0]["metrics"]["note_transition_logprob"] == pytest.approx(math.log(1 / 12))
