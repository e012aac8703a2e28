"""Tests for keras_music.plots: headless figures written as PNG atomically, the shared metric grid."""

import math
import os

import numpy as np
import pytest

from keras_music import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def files_in(directory):
    return sorted(name for name in os.listdir(directory))


def read_head(path, size=8):
    with open(path, "rb") as handle:
        return handle.read(size)


def test_pyplot_draws_without_a_display():
    plt = plots.pyplot()
    assert plt.get_backend().lower() == "agg"


def test_save_writes_a_png_and_frees_the_figure(tmp_path):
    plt = plots.pyplot()
    figure, axis = plt.subplots()
    axis.plot([0, 1, 2], [1.0, math.nan, 3.0])
    path = str(tmp_path / "nested" / "figure.png")
    plots.save(figure, path, dpi=40)
    assert read_head(path) == PNG_SIGNATURE
    # Only the finished file: the temporary name it was drawn under is gone.
    assert files_in(tmp_path / "nested") == ["figure.png"]
    assert not plt.fignum_exists(figure.number)


def test_a_failed_save_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    plt = plots.pyplot()
    path = tmp_path / "figure.png"
    path.write_bytes(b"the previous figure")
    figure, _ = plt.subplots()

    def broken_savefig(file_name, **_):
        with open(file_name, "wb") as handle:
            handle.write(PNG_SIGNATURE + b"half a picture")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="No space left"):
        plots.save(figure, str(path))
    assert path.read_bytes() == b"the previous figure"
    assert files_in(tmp_path) == ["figure.png"]
    assert not plt.fignum_exists(figure.number)


@pytest.mark.parametrize("count, rows", [(1, 1), (4, 1), (5, 2), (12, 3)])
def test_metric_grid_has_four_columns_and_enough_rows(count, rows):
    figure, axes = plots.metric_grid(count)
    try:
        assert axes.shape == (rows, 4)
        assert tuple(figure.get_size_inches()) == (16.0, 3.0 * rows)
    finally:
        plots.pyplot().close(figure)


def test_finish_metric_grid_hides_unused_panels_and_shares_one_legend(tmp_path):
    figure, axes = plots.metric_grid(5)
    for index, axis in enumerate(axes.flat[:5]):
        axis.plot([0, 1], [index, math.nan], label="generated")
        axis.axhline(np.nan, label="held-out real")
    path = str(tmp_path / "grid.png")
    plots.finish_metric_grid(figure, axes, used=5, title="five metrics", path=path)
    assert [axis.axison for axis in axes.flat] == [True] * 5 + [False] * 3
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["generated", "held-out real"]
    assert figure.get_suptitle() == "five metrics"
    assert read_head(path) == PNG_SIGNATURE


def test_finish_metric_grid_without_labels_draws_no_legend(tmp_path):
    figure, axes = plots.metric_grid(2)
    axes.flat[0].plot([1, 2], [math.nan, math.nan])
    path = str(tmp_path / "grid.png")
    plots.finish_metric_grid(figure, axes, used=2, title="nothing labelled", path=path)
    assert figure.legends == []
    assert read_head(path) == PNG_SIGNATURE
