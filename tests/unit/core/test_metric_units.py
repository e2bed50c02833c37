"""Metric units: queryUnits conversion (to_units), its validation, and the library label.

An objective's limit must mean the same whichever library measures it: Knative <= 1.18's
queue-proxy histogram is in milliseconds, 1.19+'s and the KServe model server's in seconds.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from analytics.measurements import Counts, Histogram, Moments, NoData, PointValue
from functions.adapters.direct import _matches
from functions.core.metrics import MetricError, MetricSpec, to_units
from functions.core.status import Status


def spec(kind: str = "Histogram", labels: dict[str, str] | None = None, **extra: Any) -> MetricSpec:
    templates = {
        "Histogram": {"query": "q"},
        "Gauge": {"query": "q"},
        "Counter": {"query": "q"},
        "Mean": {"sum": "s", "count": "c", "sumOfSquares": "ss"},
        "Ratio": {"numerator": "n", "denominator": "d"},
    }[kind]
    metadata: dict[str, Any] = {"name": "m", **({"labels": labels} if labels else {})}
    return MetricSpec.parse({"metadata": metadata, "spec": {"type": kind, **templates, **extra}})


SECONDS = {"units": "milliseconds", "queryUnits": "seconds"}


def test_bucket_bounds_in_seconds_become_exact_milliseconds() -> None:
    """A float product can miss: 0.0041 * 1000 is 4.1000000000000005, and a bound must stay
    exactly the number a limit names. Decimal arithmetic on the bound's repr does not."""
    assert 0.0041 * 1000 != 4.1  # the hazard
    bounds = (0.0041, 0.005, 0.01, 0.025, 0.075, 0.1, 0.25, 0.5, 2.5, math.inf)
    got = to_units(spec(**SECONDS), Histogram(bounds, tuple(range(len(bounds)))))
    assert isinstance(got, Histogram)
    assert got.bounds == (4.1, 5.0, 10.0, 25.0, 75.0, 100.0, 250.0, 500.0, 2500.0, math.inf)
    assert got.cumulative == tuple(range(len(bounds)))


def test_a_mean_scales_its_sum_and_its_sum_of_squares_by_the_square() -> None:
    got = to_units(spec("Mean", **SECONDS), Moments(count=4, total=0.5, sum_of_squares=0.25))
    assert got == Moments(count=4, total=500.0, sum_of_squares=250000.0)


def test_a_gauge_scales_and_counts_never_do() -> None:
    assert to_units(spec("Gauge", **SECONDS), PointValue(0.0875)) == PointValue(87.5)
    assert to_units(spec("Gauge", **SECONDS), NoData("none")) == NoData("none")
    assert to_units(spec("Ratio"), Counts(1, 10)) == Counts(1, 10)


def test_without_query_units_nothing_changes() -> None:
    histogram = Histogram((0.25, math.inf), (1, 2))
    assert to_units(spec(units="milliseconds"), histogram) is histogram


def test_milliseconds_to_seconds_scales_down() -> None:
    metric = spec("Gauge", units="seconds", queryUnits="milliseconds")
    assert to_units(metric, PointValue(250)) == PointValue(0.25)


@pytest.mark.parametrize(
    ("kind", "extra", "field"),
    [
        ("Histogram", {"units": "milliseconds", "queryUnits": "minutes"}, "spec.queryUnits"),
        ("Histogram", {"queryUnits": "seconds"}, "spec.units"),
        ("Histogram", {"units": "bytes", "queryUnits": "seconds"}, "spec.units"),
        ("Counter", SECONDS, "spec.queryUnits"),
        ("Ratio", SECONDS, "spec.queryUnits"),
    ],
)
def test_query_units_that_cannot_convert_are_refused_naming_the_field(
    kind: str, extra: dict[str, str], field: str
) -> None:
    with pytest.raises(MetricError) as caught:
        spec(kind, **extra)
    assert any(f"metrics/m: {field}:" in p for p in caught.value.problems), caught.value.problems


def test_the_library_label_is_read() -> None:
    assert spec(labels={"arbiter.dev/metrics-library": "knative-1.19"}).library == "knative-1.19"
    assert spec().library is None


def test_the_status_says_which_libraries_measured() -> None:
    def status(*libraries: str | None) -> Status:
        data = {
            f"m{i}": {"data": {}, **({} if lib is None else {"library": lib})}
            for i, lib in enumerate(libraries)
        }
        return Status(analysis={"aggregatedMetrics": {"data": data}})

    assert Status().metrics_library is None
    assert "metricsLibrary" not in Status().to_dict()
    one = status("knative-1.19", "knative-1.19")
    assert one.metrics_library == "knative-1.19"
    assert one.to_dict()["metricsLibrary"] == "knative-1.19"
    assert status("knative-1.19", "kserve-modelserver", None).metrics_library == (
        "knative-1.19, kserve-modelserver"
    )


def test_the_direct_reader_understands_the_negative_regex_matcher() -> None:
    """knative-1.19's error-rate-non-2xx selects http_response_status_code!~"2.."."""
    non_2xx = [("http_response_status_code", "!~", "2..")]
    assert _matches({"http_response_status_code": "404"}, non_2xx)
    assert _matches({"http_response_status_code": "503"}, non_2xx)
    assert not _matches({"http_response_status_code": "200"}, non_2xx)
