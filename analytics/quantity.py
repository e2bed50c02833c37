"""Kubernetes resource quantities ("0.01", "1k", "500m", "250n") as floats.

iter8 serialises limits and metric values as Quantity strings, so an iter8 experiment's
status cannot be read without this. The analytics package may not import the kubernetes
client (import-linter), hence this small parser of the documented grammar.
"""

from __future__ import annotations

import re
from typing import Final

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


def parse_quantity(value: object) -> float:
    """Return a number or Quantity string as a float.

    >>> parse_quantity("250m"), parse_quantity("1k"), parse_quantity(0.5)
    (0.25, 1000.0, 0.5)

    Raises:
        ValueError: the value is neither a number nor a Quantity string.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a number or a quantity string, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            return float(match.group(1)) * _SUFFIXES[match.group(2)]
    raise ValueError(f"expected a number or a quantity string like '0.01' or '250m', got {value!r}")
