"""What a measurement says about the one number an objective or reward bounds.

An objective on a histogram bounds the share of requests above a bucket bound; on counts,
a rate; on moments, a mean. `quantity` reduces any measurement to that number's evidence,
and `bounds` computes every confidence-sequence bound an analysis needs in one vectorised
call per kind (each call costs about the same for 1 or 100 bounds).

`Arrays` is the same evidence for R replicates and K versions at once, shape (R, K): the
form every array function of the analysis takes (`analytics.bayes`, `analytics.winner`,
`analytics.allocation`), so one experiment is simply R = 1 (`stack`) and the benchmark's
thousands of replicates run the very same code.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analytics import sequential
from analytics.measurements import Counts, Histogram, Measurement, Moments, NoData, PointValue

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


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


@dataclass(frozen=True, eq=False)
class Arrays:
    """One metric's evidence per replicate and version, shape (R, K), all of one kind.

    Counts: `a` events out of `b` trials. Means: `a` observations summing to `b`, with
    `sum_of_squares`. `present` marks versions with data; elsewhere the numbers mean
    nothing. `scale` is the count prior's centre, as in `Quantity`.
    """

    is_counts: bool
    a: FloatArray
    b: FloatArray
    sum_of_squares: FloatArray
    present: BoolArray
    scale: float = sequential.DEFAULT_SCALE
    pairs: FloatArray | None = None
    """(R, K, K) log evidence that version i's rate exceeds version j's, from the windowed
    pairwise test (`analytics.conditional.PairTest`), when the status keeps one; without it
    the pairwise rule compares the cumulative counts."""

    @property
    def estimate(self) -> FloatArray:
        num, den = (self.a, self.b) if self.is_counts else (self.b, self.a)
        return np.asarray(np.where(self.present, num / np.where(self.present, den, 1.0), np.nan))

    @property
    def sample_size(self) -> FloatArray:
        return self.b if self.is_counts else self.a

    def bounds(self, alpha: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Confidence-sequence (lower, upper), broadcasting `alpha` against (R, K); the
        whole line where there is no data."""
        if self.is_counts:
            lo, hi = sequential.binomial_cs(self.a, self.b, alpha, self.scale)
        else:
            lo, hi = sequential.mean_cs(self.a, self.b, self.sum_of_squares, alpha)
        return np.where(self.present, lo, -np.inf), np.where(self.present, hi, np.inf)


def stack(quantities: Sequence[Quantity]) -> Arrays:
    """One replicate's quantities, in version order, as (1, K) `Arrays`.

    Counts and means are the statistical kinds; a version with neither (no data, a point
    value) is not `present`. Should counts and means be mixed, the counts are taken.
    """
    counts = any(q.kind is Kind.COUNTS for q in quantities)
    a, b, ss, present = [], [], [], []
    scale = sequential.DEFAULT_SCALE
    for q in quantities:
        if q.counts is not None and q.kind is Kind.COUNTS:
            a.append(q.counts.events)
            b.append(q.counts.trials)
            ss.append(0.0)
            scale = q.scale
        elif q.moments is not None and q.kind is Kind.MEAN:
            a.append(q.moments.count)
            b.append(q.moments.total)
            ss.append(q.moments.sum_of_squares or 0.0)
        else:
            a.append(0.0)
            b.append(0.0)
            ss.append(0.0)
        present.append(q.kind is (Kind.COUNTS if counts else Kind.MEAN))

    def row(x: list[float]) -> FloatArray:
        return np.array([x], dtype=np.float64)

    return Arrays(counts, row(a), row(b), row(ss), np.array([present]), scale)
