"""How numbers are written in every report, table and message: one rule each."""

from __future__ import annotations

import math
import numbers


def number(value, digits: int = 3, grouped: bool = False) -> str:
    """A value for a report: `n/a` when missing or not finite, ints as they are, floats to `digits` places.

    grouped writes ints with thousands separators (and bools as true/false). Values of
    1e5 and more get four significant digits: the digits after the point of a per-event
    perplexity in the millions say nothing.
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if grouped and isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if grouped else str(value)
    if abs(value) >= 1e5:
        return f"{value:.4g}"
    return f"{value:.{digits}f}"


def signed(value, digits: int = 3) -> str:
    """number() with a + on positive values (differences)."""
    text = number(value, digits, grouped=True)
    return "+" + text if value is not None and text != "n/a" and value > 0 else text


def mean_std(summary: dict) -> str:
    """`mean ± std` of a summary, `mean (n=…)` without a spread, and how many values were undefined."""
    if summary.get("mean") is None:
        return "n/a"
    if summary.get("std") is None:
        return f"{number(summary['mean'])} (n={summary['n']})"
    text = f"{number(summary['mean'])} ± {number(summary['std'])}"
    if summary.get("n_undefined"):
        text += f" ({summary['n_undefined']} n/a)"
    return text


def plural(count: int, noun: str) -> str:
    """`1 event`, `2 events`."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def minutes(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f} min"


def table_cell(value, digits: int = 2) -> str:
    """A value in a fixed-width table: `-` when missing, yes/no, tiny or huge floats in e-notation."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and (value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5)):
        return f"{value:.1e}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def nan_if_none(value) -> float:
    """A plotted value: None (a missing value in JSON) becomes NaN, which matplotlib leaves out."""
    return math.nan if value is None else float(value)


def shown(value) -> str:
    """A bad argument as an error message shows it: numbers plainly, anything else by repr."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return str(value)
    return repr(value)
