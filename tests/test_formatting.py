"""How numbers are written in reports and messages (keras_music.formatting)."""

import math

import pytest

from keras_music import formatting as fmt


@pytest.mark.parametrize("value, digits, grouped, text", [
    (None, 3, False, "n/a"), (math.nan, 3, False, "n/a"), (math.inf, 3, False, "n/a"),
    (3.14159, 3, False, "3.142"), (3.14159, 1, False, "3.1"), (12345, 3, False, "12345"),
    (12345, 3, True, "12,345"), (True, 3, True, "true"), (2.5e6, 3, False, "2.5e+06"), (123456.7, 2, True, "1.235e+05"),
    (-0.5, 2, False, "-0.50"),
])
def test_number(value, digits, grouped, text):
    assert fmt.number(value, digits, grouped=grouped) == text


def test_signed_marks_only_positive_differences():
    assert fmt.signed(0.25) == "+0.250"
    assert fmt.signed(-0.25) == "-0.250"
    assert fmt.signed(0.0) == "0.000"
    assert fmt.signed(None) == "n/a"
    assert fmt.signed(1500) == "+1,500"


def test_mean_std_with_and_without_a_spread_and_undefined_values():
    assert fmt.mean_std({"mean": None, "std": None, "n": 0}) == "n/a"
    assert fmt.mean_std({"mean": 2.0, "std": None, "n": 1}) == "2.000 (n=1)"
    assert fmt.mean_std({"mean": 2.0, "std": 0.5, "n": 4}) == "2.000 ± 0.500"
    assert fmt.mean_std({"mean": 2.0, "std": 0.5, "n": 4, "n_undefined": 3}) == "2.000 ± 0.500 (3 n/a)"


def test_plural_minutes_and_table_cells():
    assert [fmt.plural(n, "event") for n in (0, 1, 2)] == ["0 events", "1 event", "2 events"]
    assert fmt.minutes(90) == "1.5 min" and fmt.minutes(None) == "n/a"
    assert [fmt.table_cell(v) for v in (None, True, False, 0.0, 1e-4, 2e5, 0.123456, 7)] == \
        ["-", "yes", "no", "0.00", "1.0e-04", "2.0e+05", "0.12", "7"]
    assert fmt.table_cell(0.123456, 4) == "0.1235"


def test_nan_if_none_and_shown():
    assert math.isnan(fmt.nan_if_none(None)) and fmt.nan_if_none(2) == 2.0
    assert fmt.shown(0.5) == "0.5" and fmt.shown(3) == "3"
    assert fmt.shown("0.5") == "'0.5'" and fmt.shown(True) == "True" and fmt.shown(None) == "None"
