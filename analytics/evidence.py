"""What a measurement says about the one number an objective or reward bounds.

An objective on a histogram bounds the share of requests above a bucket bound; on counts,
a rate; on moments, a mean. `quantity` reduces any measurement to that number's evidence,
and `bounds` computes every confidence-sequence bound an analysis needs in one vectorised
call per kind (each call costs about the same for 1 or 100 bounds).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analytics import sequential
from analytics.measurements import Counts, Histogram, Measurement, Moments, NoData, PointValue


class Kind(enum.Enum):
    COUNTS = "counts"
    MEAN = "mean"
    POINT = "point"
    NONE = "none"


@dataclass(frozen=True)
class Quantity:
    """One version's evidence about one bounded number.

    `scale` steers the count prior towards the region of interest (the limit).
    `bucket_bound` records which histogram bound a share was counted above.
    """

    kind: Kind
    estimate: float | None
    counts: Counts | None = None
    moments: Moments | None = None
    scale: float = sequential.DEFAULT_SCALE
    bucket_bound: float | None = None
    note: str = ""

    @property
    def sample_size(self) -> float | None:
        if self.counts is not None:
            return self.counts.trials
        if self.moments is not None:
            return self.moments.count
        return None


def quantity(
    measurement: Measurement | None,
    *,
    bucket_limit: float | None = None,
    scale: float = sequential.DEFAULT_SCALE,
) -> Quantity:
    """Reduce a measurement to the evidence about the number an objective bounds.

    Args:
        measurement: the version's measurement of the metric, or None if absent.
        bucket_limit: for histograms, the latency whose nearest bucket bound is counted above.
        scale: the prior centre for count sequences (see `analytics.sequential`).
    """
    if measurement is None or isinstance(measurement, NoData):
        reason = measurement.reason if isinstance(measurement, NoData) else "no data yet"
        return Quantity(Kind.NONE, None, note=reason)
    if isinstance(measurement, PointValue):
        return Quantity(Kind.POINT, measurement.value, note="point value, no sample size")
    if isinstance(measurement, Histogram):
        if bucket_limit is None:
            raise ValueError("a histogram objective needs upperLimit to choose its bucket bound")
        bound, counts = measurement.exceedance(bucket_limit)
        if counts.trials <= 0:
            return Quantity(Kind.NONE, None, bucket_bound=bound, note="no requests yet")
        return Quantity(Kind.COUNTS, counts.rate, counts=counts, scale=scale, bucket_bound=bound)
    if isinstance(measurement, Counts):
        if measurement.trials <= 0:
            return Quantity(Kind.NONE, None, note="no trials yet")
        return Quantity(Kind.COUNTS, measurement.rate, counts=measurement, scale=scale)
    if isinstance(measurement, Moments):
        if measurement.count <= 0 or measurement.mean is None:
            return Quantity(Kind.NONE, None, note="no observations yet")
        if measurement.sum_of_squares is None:
            return Quantity(
                Kind.POINT,
                measurement.mean,
                note="mean without sum of squares: plain comparison",
            )
        return Quantity(Kind.MEAN, measurement.mean, moments=measurement)
    raise TypeError(f"unknown measurement {measurement!r}")


@dataclass(frozen=True)
class Request:
    quantity: Quantity
    alpha: float


def bounds(requests: Sequence[Request]) -> list[tuple[float, float]]:
    """Confidence-sequence (lower, upper) for each request, in order.

    Point values and missing data get (-inf, inf): they carry no interval.
    """
    out: list[tuple[float, float]] = [(-math.inf, math.inf)] * len(requests)
    count_ix = [i for i, r in enumerate(requests) if r.quantity.kind is Kind.COUNTS]
    mean_ix = [i for i, r in enumerate(requests) if r.quantity.kind is Kind.MEAN]
    if count_ix:
        cs = [requests[i].quantity.counts for i in count_ix]
        lo, hi = sequential.binomial_cs(
            np.array([c.events for c in cs if c is not None]),
            np.array([c.trials for c in cs if c is not None]),
            np.array([requests[i].alpha for i in count_ix]),
            np.array([requests[i].quantity.scale for i in count_ix]),
        )
        for j, i in enumerate(count_ix):
            out[i] = (float(lo[j]), float(hi[j]))
    if mean_ix:
        ms = [requests[i].quantity.moments for i in mean_ix]
        lo, hi = sequential.mean_cs(
            np.array([m.count for m in ms if m is not None]),
            np.array([m.total for m in ms if m is not None]),
            np.array([m.sum_of_squares or 0.0 for m in ms if m is not None]),
            np.array([requests[i].alpha for i in mean_ix]),
        )
        for j, i in enumerate(mean_ix):
            out[i] = (float(lo[j]), float(hi[j]))
    return out
