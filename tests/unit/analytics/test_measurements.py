"""Measurement values: their validation, "no data" as its own state, histogram arithmetic."""

from __future__ import annotations

import math

import pytest

from analytics.measurements import Counts, Histogram, Moments, NoData, PointValue

INF = math.inf


def test_no_data_is_not_zero() -> None:
    nothing: object = NoData()
    assert nothing != PointValue(0.0)
    assert nothing != Counts(0.0, 0.0)
    assert NoData().reason == "no data yet"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_point_values_must_be_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        PointValue(bad)


def test_counts_rate_and_empty_counts() -> None:
    assert Counts(5, 1000).rate == pytest.approx(0.005)
    # Prometheus' increase() extrapolates: fractional counts are legitimate.
    assert Counts(2.5, 10.0).rate == pytest.approx(0.25)
    assert Counts(0, 0).rate is None


@pytest.mark.parametrize(
    ("events", "trials", "match"),
    [
        (-1, 10, ">= 0"),
        (1, -10, ">= 0"),
        (11, 10, "exceed"),
        (math.nan, 10, "finite"),
        (1, math.inf, "finite"),
    ],
)
def test_counts_reject_impossible_values(events: float, trials: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Counts(events, trials)


def test_moments_mean() -> None:
    assert Moments(count=4, total=10).mean == pytest.approx(2.5)
    assert Moments(count=0, total=0).mean is None
    # A sum may be negative (e.g. a signed score); only the count and sum of squares may not.
    assert Moments(count=2, total=-3, sum_of_squares=5).mean == pytest.approx(-1.5)


@pytest.mark.parametrize(
    ("count", "total", "squares", "match"),
    [(-1, 0, None, "count"), (1, 1, -1, "sumOfSquares"), (1, math.nan, None, "finite")],
)
def test_moments_reject_impossible_values(
    count: float, total: float, squares: float | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        Moments(count, total, squares)


@pytest.mark.parametrize(
    ("bounds", "cumulative", "match"),
    [
        ((), (), "one count per bound"),
        ((1.0, INF), (1.0,), "one count per bound"),
        ((2.0, 1.0, INF), (0.0, 1.0, 2.0), "strictly increasing"),
        ((1.0, 1.0, INF), (0.0, 1.0, 2.0), "strictly increasing"),
        ((1.0, 2.0), (0.0, 1.0), r"\+Inf"),
        ((1.0, INF), (3.0, 2.0), "cumulative"),
        ((1.0, INF), (-1.0, 2.0), ">= 0"),
        ((1.0, INF), (math.nan, 2.0), "finite"),
    ],
)
def test_histograms_reject_malformed_buckets(
    bounds: tuple[float, ...], cumulative: tuple[float, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        Histogram(bounds, cumulative)


LATENCY = Histogram((100.0, 250.0, 500.0, INF), (600.0, 900.0, 980.0, 1000.0))


@pytest.mark.parametrize(
    ("limit", "bound", "above"),
    [
        (250.0, 250.0, 100.0),  # a limit on a bound counts exactly above it
        (240.0, 250.0, 100.0),  # otherwise the nearest bound, not an interpolation
        (260.0, 250.0, 100.0),
        (400.0, 500.0, 20.0),
        (10_000.0, 500.0, 20.0),  # +Inf is never a usable bound
        (1.0, 100.0, 400.0),
        (175.0, 100.0, 400.0),  # equidistant: the lower, stricter bound
    ],
)
def test_exceedance_counts_requests_above_the_bucket_bound_nearest_the_limit(
    limit: float, bound: float, above: float
) -> None:
    got_bound, counts = LATENCY.exceedance(limit)
    assert got_bound == bound
    assert counts == Counts(events=above, trials=1000.0)


def test_exceedance_needs_a_finite_bound() -> None:
    with pytest.raises(ValueError, match="finite bucket bound"):
        Histogram((INF,), (5.0,)).exceedance(1.0)


def test_quantile_interpolates_like_prometheus() -> None:
    # Prometheus' own docs example (docs/statistics.md#latency-from-histogram-buckets): every
    # request in the (0.2, 0.3] bucket reports p95 = 0.295 s whatever the true latency, and
    # after a +100 ms shift into (0.3, 0.45] it reports 0.4425 s. That bias is why
    # objectives count exceedances instead.
    bounds = (0.1, 0.2, 0.3, 0.45, INF)
    assert Histogram(bounds, (0, 0, 100, 100, 100)).quantile(0.95) == pytest.approx(0.295)
    assert Histogram(bounds, (0, 0, 0, 100, 100)).quantile(0.95) == pytest.approx(0.4425)


def test_quantile_edge_cases() -> None:
    assert Histogram((1.0, INF), (0.0, 0.0)).quantile(0.5) is None
    # A rank that falls in the +Inf bucket reports the highest finite bound.
    assert Histogram((1.0, 2.0, INF), (10.0, 10.0, 100.0)).quantile(0.9) == 2.0
    assert Histogram((1.0, INF), (10.0, 10.0)).quantile(0.5) == pytest.approx(0.5)
    assert LATENCY.count == 1000.0
