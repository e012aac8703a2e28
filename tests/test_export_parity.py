"""Tests for keras_music.export_parity: the held-out windows, the figures, and checks that pass and fail."""

import numpy as np
import pytest

from keras_music import export_parity, export_saved_model, export_tflite, model as model_lib, run as run_lib


@pytest.fixture(scope="module")
def vocabulary(tiny_run):
    return run_lib.load_vocabulary(tiny_run)


def validation_stream(run_dir, vocabulary):
    pieces = [ids for _, ids in run_lib.named_pieces(run_dir, "validation", vocabulary=vocabulary)]
    return np.concatenate([np.concatenate([[vocabulary.boundary_id], piece]) for piece in pieces]).astype(np.int32)


def test_windows_are_consecutive_slices_of_the_held_out_stream(tiny_run, vocabulary):
    stream = validation_stream(tiny_run, vocabulary)
    windows, split = export_parity.held_out_windows(tiny_run, 32, boundary_id=vocabulary.boundary_id, count=3)
    assert split == "validation" and windows.dtype == np.int32 and len(stream) >= 3 * 32
    np.testing.assert_array_equal(windows, stream[:3 * 32].reshape(3, 32))
    # A stream shorter than the window length gives one window of the whole stream.
    whole, _ = export_parity.held_out_windows(tiny_run, len(stream) + 100, boundary_id=vocabulary.boundary_id,
                                               count=8)
    np.testing.assert_array_equal(whole, stream[None, :])


def test_parity_data_describes_what_is_compared(tiny_run, vocabulary):
    data = export_parity.parity_data(tiny_run, vocabulary, seq_length=32, windows=4, greedy_steps=50, banned=[0, 1])
    assert data.windows.shape == (4, 32) and data.split == "validation"
    assert [p.tolist() for p in data.primers] == [[vocabulary.boundary_id], data.windows[0][:16].tolist(),
                                                  data.windows[1][:16].tolist()]
    assert data.describe() == {
        "split": "validation", "windows": 4, "window_length": 32, "greedy_runs": 3, "greedy_steps": 50,
        "greedy_primer_lengths": [1, 16, 16], "banned_ids": [0, 1], "generate_length_events": 12,
        "reference": "Keras StepModel on model.keras (the sequence model for serving_default)"}


def test_differences_skip_banned_ids_for_top1_and_combine_by_positions():
    reference = np.array([[[0.5, 0.1, 0.3, 0.1], [0.1, 0.2, 0.3, 0.4]]])
    candidate = np.array([[[0.1, 0.5, 0.3, 0.1], [0.1, 0.2, 0.4, 0.3]]])
    figures = export_parity._differences(candidate, reference, banned=[0, 1])
    assert figures["positions"] == 2 and figures["max_abs"] == pytest.approx(0.4)
    assert figures["mean_abs"] == pytest.approx((0.4 + 0.4 + 0.1 + 0.1) / 8)
    assert figures["top1_agreement"] == 0.5  # ids 0 and 1 are out of the race: the first rows agree on 2
    empty = export_parity._differences(np.zeros((0, 4)), np.zeros((0, 4)), banned=[0, 1])
    assert empty == {"max_abs": 0.0, "mean_abs": 0.0, "positions": 0, "top1_agreement": 1.0}
    combined = export_parity._combined(figures, {"max_abs": 0.1, "mean_abs": 0.0, "positions": 6,
                                                 "top1_agreement": 1.0})
    assert combined == pytest.approx({"max_abs": 0.4, "mean_abs": figures["mean_abs"] * 2 / 8,
                                      "top1_agreement": (0.5 * 2 + 6) / 8})


def passing_report(float32_bytes=40_000, dynamic_bytes=30_000):
    def figures(max_abs, top1):
        return {"overall": {"max_abs": max_abs, "top1_agreement": top1}, "greedy_identical": True}

    return {"artifacts": {"saved_model": dict(figures(1e-6, 1.0), generate_greedy_identical=True),
                          "tflite_float32": dict(figures(5e-5, 1.0), bytes=float32_bytes),
                          "tflite_float16": figures(1e-3, 0.995),
                          "tflite_dynamic": dict(figures(1e-2, 0.96), bytes=dynamic_bytes)},
            "dynamic_size_ratio": dynamic_bytes / float32_bytes}


def test_checks_pass_on_figures_within_the_limits_and_name_each_one():
    checks = export_parity.evaluate_checks(passing_report())
    assert [(c["artifact"], c["metric"], c["operator"], c["limit"]) for c in checks] == [
        ("saved_model", "max_abs_probability_difference", "<=", export_parity.SAVED_MODEL_MAX_ABS),
        ("saved_model", "greedy_identical", "==", True),
        ("saved_model", "generate_greedy_identical", "==", True),
        ("tflite_float32", "max_abs_probability_difference", "<=", export_parity.TFLITE_FLOAT32_MAX_ABS),
        ("tflite_float32", "greedy_identical", "==", True),
        ("tflite_float16", "top1_agreement", ">=", export_parity.FLOAT16_TOP1),
        ("tflite_dynamic", "top1_agreement", ">=", export_parity.DYNAMIC_TOP1),
        ("tflite_dynamic", "size_ratio_to_float32", "<=", export_parity.DYNAMIC_SIZE_RATIO)]
    assert all(c["passed"] for c in checks)
    # A small float32 file: the size ratio (0.75 here) is reported but not held against the export.
    ratio = checks[-1]
    assert not ratio["applies"] and ratio["value"] == 0.75 and "fixed overhead dominates" in ratio["note"]


def test_checks_fail_on_each_figure_past_its_limit():
    report = passing_report(float32_bytes=4 << 20, dynamic_bytes=2 << 20)
    artifacts = report["artifacts"]
    artifacts["saved_model"]["overall"]["max_abs"] = 2e-5
    artifacts["saved_model"]["generate_greedy_identical"] = False
    artifacts["tflite_float32"]["greedy_identical"] = False
    artifacts["tflite_float16"]["overall"]["top1_agreement"] = 0.98
    artifacts["tflite_dynamic"]["overall"]["top1_agreement"] = None
    failed = [(c["artifact"], c["metric"]) for c in export_parity.evaluate_checks(report) if not c["passed"]]
    assert failed == [("saved_model", "max_abs_probability_difference"), ("saved_model", "generate_greedy_identical"),
                      ("tflite_float32", "greedy_identical"), ("tflite_float16", "top1_agreement"),
                      ("tflite_dynamic", "top1_agreement"), ("tflite_dynamic", "size_ratio_to_float32")]
    assert export_parity.thresholds() == {
        "saved_model_max_abs": 1e-5, "tflite_float32_max_abs": 1e-4, "float16_top1_agreement": 0.99,
        "dynamic_top1_agreement": 0.95, "dynamic_size_ratio": 0.30, "size_ratio_min_float32_bytes": 1 << 20}


def test_parity_holds_for_the_model_exported_and_tells_another_model_apart(tiny_run, vocabulary, tmp_path):
    import tensorflow as tf

    trained = run_lib.load_model(tiny_run, vocabulary)
    sizes = model_lib.describe(trained)
    untrained = model_lib.build_model(sizes["vocabulary_size"], sizes["embedding_size"], sizes["hidden_size"],
                                      sizes["num_layers"], dropout=0.0)
    # The untrained model's artifacts, compared once against itself and once against the trained model.
    vocab_file = str(tmp_path / "vocab.json")
    with open(run_lib.path(tiny_run, run_lib.VOCAB), "rb") as source, open(vocab_file, "wb") as copy:
        copy.write(source.read())
    saved_model = str(tmp_path / "saved_model")
    export_saved_model.write_saved_model(untrained, vocabulary, vocab_file=vocab_file, directory=saved_model)
    export_saved_model.write_step_saved_model(untrained, str(tmp_path / "step"))
    export_tflite.convert_all(str(tmp_path / "step"), str(tmp_path), quantizations=["none"])
    loaded = tf.saved_model.load(saved_model)
    paths = {"none": str(tmp_path / "model.tflite")}
    data = export_parity.parity_data(tiny_run, vocabulary, seq_length=32, windows=2, greedy_steps=12,
                                     banned=list(vocabulary.banned_ids))

    exported = export_parity.Exported(vocab_file=vocab_file, saved_model=saved_model, loaded=loaded, tflite=paths)
    same = export_parity.measure_parity(tiny_run, untrained, exported=exported, data=data)
    assert list(same) == ["keras", "saved_model", "tflite_float32"]
    assert same["keras"]["step_vs_sequence_model"]["max_abs"] <= 1e-5
    assert same["saved_model"]["overall"]["max_abs"] <= 1e-5 and same["saved_model"]["greedy_identical"]
    assert same["saved_model"]["generate_greedy_identical"]
    assert same["tflite_float32"]["overall"]["max_abs"] <= 1e-4 and same["tflite_float32"]["greedy_identical"]
    assert same["saved_model"]["windows"]["positions"] == 2 * 32 and same["saved_model"]["greedy"]["positions"] == 36
    assert same["saved_model"]["greedy_runs_identical"] == [True, True, True]

    other = export_parity.measure_parity(tiny_run, trained, exported=exported, data=data)
    for name in ("saved_model", "tflite_float32"):
        assert other[name]["overall"]["max_abs"] > 1e-2
    assert not other["saved_model"]["generate_greedy_identical"]
    report = {"artifacts": {name: dict(figures, bytes=1) for name, figures in other.items() if name != "keras"}}
    failed = {(c["artifact"], c["metric"]) for c in export_parity.evaluate_checks(report) if not c["passed"]}
    assert {("saved_model", "max_abs_probability_difference"), ("saved_model", "generate_greedy_identical"),
            ("tflite_float32", "max_abs_probability_difference")} <= failed
