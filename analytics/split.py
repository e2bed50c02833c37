"""The split an experiment starts from, in plain Python.

`start` sets this split and nothing else, so it lives apart from `analytics.allocation`
(numpy, and scipy through the posterior draws): a start function that imports it stays
as light as the web framework it runs in. `percentages` is `allocation.to_percentages`
for one split — the same largest-remainder rounding, operation for operation, so both give
the same integers (a property test holds them to it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from analytics.model import DeploymentPattern, ExperimentSpec, TestingPattern


def percentages(weights: Sequence[float], total: int = 100) -> list[int]:
    """Round non-negative weights to integers summing to `total` (largest remainder).

    Ties in the remainder go to the earlier version; all-zero weights split evenly.

    >>> percentages([1, 1, 1])
    [34, 33, 33]
    """
    w = [float(x) for x in weights]
    # A left-to-right sum, as numpy sums a short row (Python 3.12's sum() compensates).
    s = 0.0
    for x in w:
        s += x
    shares = [x / s for x in w] if s > 0 else [1.0 / len(w)] * len(w)
    exact = [share * total for share in shares]
    floor = [math.floor(e + 1e-9) for e in exact]
    short = total - sum(floor)
    # Largest remainder first, earlier index on ties (a stable sort on the negation).
    order = sorted(range(len(w)), key=lambda i: -(exact[i] - floor[i]))
    bumped = set(order[:short])
    return [f + (1 if i in bumped else 0) for i, f in enumerate(floor)]


def initial_weights(spec: ExperimentSpec) -> dict[str, int] | None:
    """The split an experiment starts from (None for Conformance)."""
    if spec.version_info is None:
        raise ValueError("spec.versionInfo is not resolved yet")
    names = spec.version_info.names
    if spec.strategy.testing_pattern is TestingPattern.CONFORMANCE:
        return None
    pattern = spec.strategy.deployment_pattern
    k = len(names) - 1
    if pattern is DeploymentPattern.BLUE_GREEN:
        raw = [100.0] + [0.0] * k
    elif pattern is DeploymentPattern.FIXED_SPLIT:
        raw = [1.0] * len(names)
    else:
        w = spec.strategy.weights
        first = min(w.max_candidate_weight_increment, w.max_candidate_weight)
        raw = [100.0 - first] + [first / k] * k
    return dict(zip(names, percentages(raw), strict=True))
