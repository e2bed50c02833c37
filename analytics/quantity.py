"""Kubernetes resource quantities ("0.01", "1k", "500m", "250n") as floats.

iter8 serialises limits and metric values as Quantity strings, so an iter8 experiment's
status cannot be read without this. The analytics package may not import the kubernetes
client (import-linter), hence this small parser of the documented grammar.

Every value is bounded before it is converted: a string by its length, a number by its
magnitude (compared exactly, so a 400-digit integer is refused instead of overflowing
`float()`), and the result by the same magnitude.
"""

from __future__ import annotations

import math
import re
from typing import Final

# The longest quantity string accepted; the CRD states the same maxLength for limits.
MAX_LENGTH: Final = 40
# Far beyond any limit or any count and sum Prometheus returns for an interval, and small
# enough that squares and products of such values stay finite floats.
MAX_MAGNITUDE: Final = 1e30
# How much of a refused value a message quotes.
QUOTE_LENGTH: Final = 40

_SUFFIXES: Final[dict[str, float]] = {
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}
_PATTERN: Final = re.compile(
    r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)\s*$"
)


def quote(value: object, length: int = QUOTE_LENGTH) -> str:
    """A short rendering of `value` for a message: at most `length` characters of its repr
    and an ellipsis. Only a prefix of a long string is rendered, a container is named by
    its type and size, and a huge integer by its size, so quoting costs no more than the
    message it goes into."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int) and value.bit_length() > 128:
        return f"<an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits>"
    if isinstance(value, list | tuple | dict | set | frozenset):
        noun = "item" if len(value) == 1 else "items"
        return f"<a {type(value).__name__} of {len(value)} {noun}>"
    if isinstance(value, str) and len(value) > length:
        return repr(value[:length]) + "…"
    text = repr(value)
    return text if len(text) <= length else text[:length] + "…"


def parse_quantity(value: object, max_magnitude: float = MAX_MAGNITUDE) -> float:
    """Return a number or Quantity string as a float.

    >>> parse_quantity("250m"), parse_quantity("1k"), parse_quantity(0.5)
    (0.25, 1000.0, 0.5)

    Raises:
        ValueError: the value is neither a number nor a Quantity string, is longer than
            MAX_LENGTH characters, or is not finite or beyond `max_magnitude`.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a number or a quantity string, got {quote(value)}")
    if isinstance(value, int):
        # Compared as an integer: float() of a 400-digit one would raise OverflowError.
        if abs(value) > max_magnitude:
            raise ValueError(f"must be at most {max_magnitude:g} in magnitude, got {quote(value)}")
        return float(value)
    if isinstance(value, float):
        result = value
    elif isinstance(value, str):
        if len(value) > MAX_LENGTH:
            raise ValueError(
                f"a quantity string is at most {MAX_LENGTH} characters, got {len(value)}: "
                f"{quote(value)}"
            )
        match = _PATTERN.match(value)
        if not match:
            raise ValueError(_malformed(value))
        # float() of the (bounded) digits is inf, never an error, when they are too large.
        result = float(match.group(1)) * _SUFFIXES[match.group(2)]
    else:
        raise ValueError(_malformed(value))
    if not math.isfinite(result):
        raise ValueError(f"must be finite, got {quote(value)}")
    if abs(result) > max_magnitude:
        raise ValueError(f"must be at most {max_magnitude:g} in magnitude, got {quote(value)}")
    return result


def _malformed(value: object) -> str:
    return f"expected a number or a quantity string like '0.01' or '250m', got {quote(value)}"
