"""DirectMetricsSource: the library's metrics read straight from real versions' /metrics."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from analytics.measurements import Counts, Histogram, Moments, PointValue
from functions.adapters.direct import DirectMetricsSource
from functions.core.metrics import MetricQueryError, MetricSpec, variables_for
from local.servers import ModelVersion, Profile

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = {
    p.stem: MetricSpec.parse(yaml.safe_load(p.read_text()))
    for p in (ROOT / "config" / "metrics" / "knative-1.18").glob("*.yaml")
    if yaml.safe_load(p.read_text()).get("kind") == "Metric"
}


@pytest.fixture(scope="module")
def versions() -> Iterator[tuple[ModelVersion, ModelVersion, int, int]]:
    """Two revisions; the first answered 400 requests, about a third of them with 500."""
    busy = ModelVersion(
        "iris",
        "iris-00001",
        Profile(error_rate=0.3, latency_median_ms=1.0),
        np.random.default_rng(7),
        namespace="demo",
        knative="1.18",  # the OpenCensus queue-proxy: the revision is on its series
    )
    idle = ModelVersion(
        "iris",
        "iris-00002",
        Profile(),
        np.random.default_rng(8),
        namespace="demo",
        knative="1.18",
    )
    with busy.launch(), idle.launch():  # both processes start side by side
        body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
        errors = 0
        for _ in range(400):
            request = urllib.request.Request(
                f"{busy.model_url}:predict", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                urllib.request.urlopen(request, timeout=5).read()
            except urllib.error.HTTPError as e:
                assert e.code == 500
                errors += 1
        yield busy, idle, 400, errors


def measure(source: DirectMetricsSource, metric: str, revision: str) -> object:
    variables = variables_for(
        name="iris", namespace="demo", revision=revision, elapsed_seconds=60, interval_seconds=10
    )
    return source.measure(LIBRARY[metric], variables, None)


def test_the_library_reads_exact_totals(
    versions: tuple[ModelVersion, ModelVersion, int, int],
) -> None:
    busy, idle, sent, errors = versions
    source = DirectMetricsSource([busy.metrics_url, idle.metrics_url])
    assert 0 < errors < sent
    assert measure(source, "request-count", "iris-00001") == PointValue(sent)
    assert measure(source, "error-count", "iris-00001") == PointValue(errors)
    assert measure(source, "error-rate", "iris-00001") == Counts(errors, sent)
    latency = measure(source, "latency", "iris-00001")
    assert isinstance(latency, Histogram) and latency.cumulative[-1] == sent
    mean = measure(source, "mean-latency", "iris-00001")
    assert isinstance(mean, Moments) and mean.count == sent and mean.total > 0
    # the idle revision exports its series at zero from the start: zero, not "no data"
    assert measure(source, "request-count", "iris-00002") == PointValue(0)
    assert measure(source, "error-rate", "iris-00002") == Counts(0, 0)


def test_a_query_it_cannot_evaluate_is_refused_by_name(
    versions: tuple[ModelVersion, ModelVersion, int, int],
) -> None:
    busy, _, _, _ = versions
    with pytest.raises(MetricQueryError, match="histogram_quantile"):
        measure(DirectMetricsSource([busy.metrics_url]), "p95-latency", "iris-00001")


def test_a_window_shorter_than_the_experiment_counts_only_what_it_covers(
    versions: tuple[ModelVersion, ModelVersion, int, int],
) -> None:
    """The conditional ratio test reads each iteration's own window: the same template with
    `$elapsed` the window. Runs last: it sends the idle revision requests."""
    _, idle, _, _ = versions
    source = DirectMetricsSource([idle.metrics_url])
    t1 = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)

    def rate(at: datetime, elapsed: int) -> object:
        variables = variables_for(
            name="iris",
            namespace="demo",
            revision="iris-00002",
            elapsed_seconds=elapsed,
            interval_seconds=60,
        )
        return source.measure(LIBRARY["error-rate"], variables, at)

    body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()

    def send(n: int) -> None:
        for _ in range(n):
            request = urllib.request.Request(
                f"{idle.model_url}:predict", data=body, headers={"Content-Type": "application/json"}
            )
            urllib.request.urlopen(request, timeout=5).read()

    send(7)
    assert rate(t1, 60) == Counts(0, 7)  # no earlier reading: the experiment so far
    send(5)
    t2 = t1 + timedelta(seconds=60)
    assert rate(t2, 60) == Counts(0, 5)  # since the reading at t1
    assert rate(t2, 120) == Counts(0, 12)  # the cumulative figure is unchanged
