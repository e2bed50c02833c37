"""What a metric says about one version: a point value, or evidence the statistics can weigh.

iter8 v2 recorded bare point values (no sample size); they are kept, and compared plainly.
Counts, moments and histogram buckets carry their sample size, so the anytime-valid
procedures in `analytics.sequential` can weigh them. `NoData` is its own state: "nothing
measured yet" must never read as zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NoData:
    reason: str = "no data yet"


@dataclass(frozen=True)
class PointValue:
    """A gauge with no sample size; only a plain comparison is possible."""

    value: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"value must be a finite number, got {self.value}")


@dataclass(frozen=True)
class Counts:
    """`events` out of `trials`, e.g. errors out of requests, conversions out of visits.

    Prometheus' increase() extrapolates, so both may be non-integers.
    """

    events: float
    trials: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.events) and math.isfinite(self.trials)):
            raise ValueError("events and trials must be finite numbers")
        if self.events < 0 or self.trials < 0:
            raise ValueError(f"events and trials must be >= 0, got {self.events}/{self.trials}")
        if self.events > self.trials:
            raise ValueError(f"events ({self.events}) exceed trials ({self.trials})")

    @property
    def rate(self) -> float | None:
        return self.events / self.trials if self.trials > 0 else None


@dataclass(frozen=True)
class Moments:
    """A sum over `count` observations, with the sum of squares when the source keeps one."""

    count: float
    total: float
    sum_of_squares: float | None = None

    def __post_init__(self) -> None:
        values = [self.count, self.total] + (
            [] if self.sum_of_squares is None else [self.sum_of_squares]
        )
        if not all(math.isfinite(v) for v in values):
            raise ValueError("count, sum and sumOfSquares must be finite numbers")
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        if self.sum_of_squares is not None and self.sum_of_squares < 0:
            raise ValueError(f"sumOfSquares must be >= 0, got {self.sum_of_squares}")

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count > 0 else None


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts, as Prometheus' `_bucket{le=...}` series hold them.

    `bounds` ascend and end with +inf; `cumulative[i]` counts observations <= bounds[i].
    """

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.bounds) != len(self.cumulative) or not self.bounds:
            raise ValueError("buckets need one count per bound")
        if any(b2 <= b1 for b1, b2 in zip(self.bounds, self.bounds[1:], strict=False)):
            raise ValueError("bucket bounds must be strictly increasing")
        if not math.isinf(self.bounds[-1]):
            raise ValueError("the last bucket bound must be +Inf")
        if any(c < 0 or not math.isfinite(c) for c in self.cumulative):
            raise ValueError("bucket counts must be finite and >= 0")
        if any(c2 < c1 for c1, c2 in zip(self.cumulative, self.cumulative[1:], strict=False)):
            raise ValueError("bucket counts must be cumulative (non-decreasing in le)")

    @property
    def count(self) -> float:
        return self.cumulative[-1]

    def exceedance(self, limit: float) -> tuple[float, Counts]:
        """Requests slower than the finite bucket bound nearest `limit`.

        Counting above a real bucket bound is exact; an interpolated quantile is not
        (docs/statistics.md#latency-from-histogram-buckets), so latency objectives are
        judged this way.
        """
        finite = [(abs(b - limit), i) for i, b in enumerate(self.bounds) if math.isfinite(b)]
        if not finite:
            raise ValueError("histogram has no finite bucket bound")
        _, index = min(finite)
        total = self.cumulative[-1]
        return self.bounds[index], Counts(events=total - self.cumulative[index], trials=total)

    def quantile(self, q: float) -> float | None:
        """Prometheus-style interpolated quantile, for display only."""
        total = self.cumulative[-1]
        if total <= 0:
            return None
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in zip(self.bounds, self.cumulative, strict=True):
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound
                width = count - lower_count
                share = (rank - lower_count) / width if width > 0 else 1.0
                return lower_bound + (bound - lower_bound) * share
            lower_bound, lower_count = bound, count
        return lower_bound


Measurement = NoData | PointValue | Counts | Moments | Histogram


def json_number(x: float | None) -> float | str | None:
    """A number as JSON can carry it: infinities spelled as Prometheus spells them."""
    if x is None:
        return None
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return round(x, 10)


def measurement_to_dict(m: Measurement) -> dict[str, Any]:
    """A measurement in the `aggregatedMetrics` shape that analytics.parse reads back.

    It lives here, beside the types, rather than with the Analysis document, so `iterate`
    can write measurements without importing the statistics (numpy, scipy) it never runs.
    """
    if isinstance(m, NoData):
        return {}
    if isinstance(m, PointValue):
        return {"value": m.value}
    if isinstance(m, Counts):
        return {"events": m.events, "trials": m.trials}
    if isinstance(m, Moments):
        out: dict[str, Any] = {"count": m.count, "sum": m.total}
        if m.sum_of_squares is not None:
            out["sumOfSquares"] = m.sum_of_squares
        return out
    if isinstance(m, Histogram):
        return {
            "buckets": [
                {"le": json_number(b), "count": c}
                for b, c in zip(m.bounds, m.cumulative, strict=True)
            ]
        }
    raise TypeError(f"not a measurement: {m!r}")
