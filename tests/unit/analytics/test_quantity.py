"""Kubernetes quantities as iter8 serialised limits and values ("0.01", "1k", "500m")."""

from __future__ import annotations

import pytest

from analytics.quantity import parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.01", 0.01),
        ("10m", 0.01),  # how iter8 serialises upperLimit 0.01 (iter8 v2)
        ("1k", 1000.0),  # and upperLimit 1000
        ("412500m", 412.5),
        ("250n", 250e-9),
        ("5u", 5e-6),
        ("2M", 2e6),
        ("3G", 3e9),
        ("1T", 1e12),
        ("1P", 1e15),
        ("1E", 1e18),
        ("1Ki", 1024.0),
        ("1Mi", 1024.0**2),
        ("1.5Gi", 1.5 * 1024.0**3),
        ("1Ti", 1024.0**4),
        ("1Pi", 1024.0**5),
        ("1Ei", 1024.0**6),
        ("1e3", 1000.0),
        ("1.5E-2", 0.015),
        (".5", 0.5),
        ("5.", 5.0),
        ("-3", -3.0),
        ("+7", 7.0),
        ("  42  ", 42.0),
        ("0", 0.0),
    ],
)
def test_quantity_strings_parse_to_their_value(text: str, expected: float) -> None:
    assert parse_quantity(text) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("number", [0, 7, -2, 0.25, 1e-9])
def test_numbers_pass_through_as_floats(number: float) -> None:
    result = parse_quantity(number)
    assert isinstance(result, float)
    assert result == number


@pytest.mark.parametrize("bad", ["", "abc", "1 k", "1kk", "1ki", "0.01%", "1x", "--1", "m"])
def test_malformed_strings_are_rejected_with_the_value_in_the_message(bad: str) -> None:
    with pytest.raises(ValueError, match="quantity string") as info:
        parse_quantity(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [True, False, None, [1], {"value": 1}])
def test_non_numbers_are_rejected(bad: object) -> None:
    # A YAML `true` is a bool, and bool is an int in Python: it must not read as 1.
    with pytest.raises(ValueError, match="expected a number"):
        parse_quantity(bad)
