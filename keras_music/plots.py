"""Figures written the same way by every stage: headless matplotlib, atomic PNG writes."""

from __future__ import annotations

import math

from keras_music import storage


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path: str, dpi: int = 90) -> None:
    """Write the figure as a PNG atomically and free it (also when writing fails)."""
    try:
        with storage.atomic_local_path(path, suffix=".png") as tmp:
            figure.savefig(tmp, dpi=dpi)
    finally:
        pyplot().close(figure)


def metric_grid(count: int, columns: int = 4):
    """A figure with one small axis per metric, `columns` to a row."""
    rows = math.ceil(count / columns)
    return pyplot().subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)


def finish_metric_grid(figure, axes, *, used: int, title: str, path: str, right: float = 0.92) -> None:
    """Hide unused axes, add one shared legend and the title, then save."""
    for axis in list(axes.flat)[used:]:
        axis.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="upper right", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0, right, 0.96))
    save(figure, path, dpi=80)
