"""Kubernetes quantities as iter8 serialised limits and values ("0.01", "1k", "500m")."""

from __future__ import annotations

import pytest

from analytics.quantity import MAX_LENGTH, QUOTE_LENGTH, parse_quantity, quote


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


# --- bounds: refused with a short message, never an OverflowError ------------------------


def test_a_huge_integer_is_refused_by_magnitude_without_converting_it() -> None:
    # float(10**400) raises OverflowError; the bound is compared as an integer first.
    with pytest.raises(ValueError, match="at most 1e\\+30 in magnitude") as info:
        parse_quantity(10**400)
    assert "401 digits" in str(info.value) and len(str(info.value)) < 120


@pytest.mark.parametrize("text", ["1" * 400, "9" * 41, "x" * 100_000])
def test_a_long_string_is_refused_by_length_before_the_pattern(text: str) -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_LENGTH} characters, got {len(text)}") as e:
        parse_quantity(text)
    assert len(str(e.value)) < 200  # quotes a prefix, not the value


@pytest.mark.parametrize("value", ["1e400", float("inf"), float("nan"), "-1e400"])
def test_infinite_values_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="must be finite"):
        parse_quantity(value)


@pytest.mark.parametrize("value", ["1e31", -(10**31), 2e30, "2000000000000E"])
def test_values_beyond_the_magnitude_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="in magnitude"):
        parse_quantity(value)


def test_the_magnitude_is_the_callers_to_narrow() -> None:
    assert parse_quantity("1E", max_magnitude=1e18) == 1e18
    with pytest.raises(ValueError, match="at most 1e\\+18 in magnitude"):
        parse_quantity(10**18 + 1, max_magnitude=1e18)


def test_quote_keeps_messages_short() -> None:
    assert quote("abc") == "'abc'"
    assert quote("y" * 10_000) == repr("y" * QUOTE_LENGTH) + "…"
    assert quote(list(range(10_000))) == "<a list of 10000 items>"
    assert quote({"a": 1}) == "<a dict of 1 item>"
    assert quote(10**5000) == "<an integer of about 5001 digits>"
    assert quote(None) == "None" and quote(True) == "True"
