"""The Prometheus adapter and the Metric library against the real Prometheus.

The server holds `queue_proxy_history()` (tests/support/prometheus.py), backfilled by
promtool and queried at the fixed time AT, so every value below is exact: it is what the
history was written to contain, not what the code under test computes. Retries and
refusals are checked against pytest-httpserver, where the answers can be chosen.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from analytics.measurements import Counts, Histogram, Measurement, Moments, NoData, PointValue
from functions.adapters.prometheus import PrometheusSource
from functions.core.iterate import window_counts
from functions.core.metrics import (
    MetricQueryError,
    MetricSpec,
    TransientMetricsError,
    variables_for,
)
from local.harness import free_port
from tests.support.prometheus import (
    AT,
    ELAPSED,
    INSTALL_HINT,
    ISVC,
    KFSERVING_CANARY,
    KFSERVING_DEFAULT,
    KFSERVING_NAMESPACE,
    KFSERVING_TRANSFORMER,
    KSERVE_BASELINE,
    KSERVE_CANDIDATE,
    NAMESPACE,
    T0,
    OpenMetrics,
    PrometheusTSDB,
    missing_binaries,
)
from tests.support.prometheus_fixtures import prometheus_history  # noqa: F401

LIBRARY = Path(__file__).resolve().parents[2] / "config" / "metrics"
WHEN = datetime.fromtimestamp(AT, UTC)
INF = math.inf
COUNT = "revision_app_request_latencies_count"
SEL = f'namespace_name="{NAMESPACE}",revision_name="$revision"'


@pytest.fixture(scope="module")
def source(prometheus_history: PrometheusTSDB) -> Iterator[PrometheusSource]:  # noqa: F811
    with PrometheusSource(prometheus_history.url, timeout_s=5.0, retries=0) as s:
        yield s


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    return ("127.0.0.1", 0)


def spec(kind: str, name: str = "m", **templates: str) -> MetricSpec:
    return MetricSpec.parse({"metadata": {"name": name}, "spec": {"type": kind, **templates}})


def variables(revision: str, namespace: str = NAMESPACE, name: str = ISVC) -> dict[str, str]:
    return variables_for(
        name=name,
        namespace=namespace,
        revision=revision,
        elapsed_seconds=ELAPSED,
        interval_seconds=10,
    )


def increase(metric: str, extra: str = "") -> str:
    return f"sum(increase({metric}{{{SEL}{extra}}}[${{elapsed}}s]))"


# --- one measurement per type, exact -----------------------------------------------------


def test_counter_gives_the_exact_point_value(source: PrometheusSource) -> None:
    m = spec("Counter", query=increase(COUNT))
    assert source.measure(m, variables(KSERVE_CANDIDATE), WHEN) == PointValue(600.0)
    errors = spec("Counter", query=increase(COUNT, ',response_code_class="5xx"'))
    assert source.measure(errors, variables(KSERVE_CANDIDATE), WHEN) == PointValue(60.0)


def test_ratio_gives_events_out_of_trials(source: PrometheusSource) -> None:
    m = spec(
        "Ratio",
        numerator=increase(COUNT, ',response_code_class="5xx"'),
        denominator=increase(COUNT),
    )
    assert source.measure(m, variables(KSERVE_CANDIDATE), WHEN) == Counts(events=60, trials=600)


def test_mean_gives_count_sum_and_sum_of_squares(source: PrometheusSource) -> None:
    m = spec(
        "Mean",
        sum=increase("revision_app_request_latencies_sum"),
        count=increase(COUNT),
        # queue-proxy keeps no sum of squares; any third query shows where the role lands.
        sumOfSquares=increase("revision_app_request_latencies_sum") + " * 10",
    )
    assert source.measure(m, variables(KSERVE_CANDIDATE), WHEN) == Moments(
        count=600, total=86640, sum_of_squares=866400
    )


def test_histogram_reproduces_the_cumulative_counts_written(source: PrometheusSource) -> None:
    m = spec(
        "Histogram",
        query=f"sum by (le) (increase(revision_app_request_latencies_bucket{{{SEL}}}"
        "[${elapsed}s]))",
    )
    got = source.measure(m, variables(KSERVE_CANDIDATE), WHEN)
    assert got == Histogram(
        bounds=(5, 10, 50, 100, 250, 500, 1000, INF),
        cumulative=(0, 180, 360, 360, 540, 540, 600, 600),
    )


# --- no data is not zero -----------------------------------------------------------------


@pytest.mark.parametrize(
    "metric",
    [
        spec("Counter", query=increase(COUNT)),
        spec("Ratio", numerator=increase(COUNT), denominator=increase(COUNT)),
        spec("Mean", sum=increase(COUNT), count=increase(COUNT)),
        spec("Histogram", query=f"sum by (le) (rate(x_bucket{{{SEL}}}[1m]))"),
    ],
    ids=lambda m: m.type.value,
)
def test_an_absent_series_is_no_data(source: PrometheusSource, metric: MetricSpec) -> None:
    got = source.measure(metric, variables("sklearn-iris-predictor-00099"), WHEN)
    assert isinstance(got, NoData)
    assert "returned no series" in got.reason


def test_nan_is_no_data(source: PrometheusSource) -> None:
    gauge = spec("Gauge", query="sum(zero) / sum(zero)")
    got = source.measure(gauge, {}, WHEN)
    assert got == NoData("metrics/m: spec.query returned NaN")
    ratio = spec("Ratio", numerator="sum(zero)", denominator="sum(zero) / sum(zero)")
    assert isinstance(source.measure(ratio, {}, WHEN), NoData)


def test_infinity_is_no_data_too(source: PrometheusSource) -> None:
    got = source.measure(spec("Gauge", query="(sum(zero) + 1) / sum(zero)"), {}, WHEN)
    assert got == NoData("metrics/m: spec.query returned +Inf")
    buckets = spec(
        "Histogram",
        query=f"sum by (le) (increase(revision_app_request_latencies_bucket{{{SEL}}}[1m])) / 0",
    )
    assert isinstance(source.measure(buckets, variables(KSERVE_CANDIDATE), WHEN), NoData)


def test_a_scalar_result_is_one_value(source: PrometheusSource) -> None:
    got = source.measure(spec("Gauge", query="scalar(sum(zero)) + 2.5"), {}, WHEN)
    assert got == PointValue(2.5)


def test_a_naive_time_is_utc(source: PrometheusSource) -> None:
    m = spec("Counter", query=increase(COUNT))
    naive = WHEN.replace(tzinfo=None)
    assert source.measure(m, variables(KSERVE_CANDIDATE), naive) == PointValue(600.0)


def test_the_query_time_is_what_makes_the_history_visible(source: PrometheusSource) -> None:
    """Without `at` the server's now is used; the history is from 2023, so nothing is there."""
    m = spec("Counter", query=increase(COUNT))
    assert isinstance(source.measure(m, variables(KSERVE_CANDIDATE), None), NoData)


# --- permanent refusals ------------------------------------------------------------------


def test_a_bad_query_is_a_permanent_error_naming_metric_field_and_query(
    source: PrometheusSource,
) -> None:
    m = spec("Counter", "broken", query="sum(rate(x[5m])")
    with pytest.raises(MetricQueryError) as caught:
        source.measure(m, {}, WHEN)
    message = str(caught.value)
    assert message.startswith("metrics/broken: spec.query: Prometheus refused the query (HTTP 400")
    assert "parse error" in message
    assert message.endswith(": sum(rate(x[5m])")


def test_an_execution_error_is_permanent_too(source: PrometheusSource) -> None:
    """422: the query parses but cannot be evaluated (two series end up with one labelset)."""
    pod = f"{KSERVE_CANDIDATE}-deployment-a"
    query = f'abs({{__name__=~"revision_app_request_latencies_(count|sum)",pod_name="{pod}"}})'
    with pytest.raises(MetricQueryError, match=r"HTTP 422: .*same labelset"):
        source.measure(spec("Gauge", query=query), {}, WHEN)


def test_several_series_where_one_is_expected_is_an_error(source: PrometheusSource) -> None:
    m = spec("Counter", "request-count", query=f"increase({COUNT}{{{SEL}}}[${{elapsed}}s])")
    with pytest.raises(MetricQueryError) as caught:
        source.measure(m, variables(KSERVE_BASELINE), WHEN)
    assert str(caught.value).startswith(
        "metrics/request-count: spec.query: query must return one series; wrap it in sum(); got 2 ("
    )


def test_a_histogram_needs_one_series_per_le(source: PrometheusSource) -> None:
    no_le = spec("Histogram", "latency", query=increase(COUNT))
    with pytest.raises(MetricQueryError, match=r"^metrics/latency: .*sum by \(le\)"):
        source.measure(no_le, variables(KSERVE_CANDIDATE), WHEN)
    per_pod = spec(
        "Histogram",
        "latency",
        query="increase(revision_app_request_latencies_bucket"
        f'{{namespace_name="{NAMESPACE}"}}[${{elapsed}}s])',
    )
    with pytest.raises(MetricQueryError, match="several series with le="):
        source.measure(per_pod, variables(KSERVE_CANDIDATE), WHEN)


# --- transient failures: bounded retries -------------------------------------------------


def test_an_unreachable_server_is_transient_after_the_configured_retries() -> None:
    slept: list[float] = []
    url = f"http://127.0.0.1:{free_port()}"  # the port is closed again once chosen
    started = time.monotonic()
    with (
        PrometheusSource(url, timeout_s=1.0, retries=2, backoff=0.05, sleep=slept.append) as s,
        pytest.raises(TransientMetricsError) as caught,
    ):
        s.measure(spec("Counter", "request-count", query="sum(up)"), {}, WHEN)
    assert time.monotonic() - started < 1.0
    assert slept == [0.05, 0.1]
    assert str(caught.value).startswith(
        f"metrics/request-count: spec.query: Prometheus at {url} failed 3 times; last: "
        "ConnectionError"
    )


def _vector(value: str) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [AT, value]}]},
    }


def test_5xx_is_retried_and_the_query_carries_time_and_timeout(httpserver: HTTPServer) -> None:
    for _ in range(2):
        httpserver.expect_ordered_request("/api/v1/query").respond_with_json(
            {"status": "error", "errorType": "unavailable", "error": "restarting"}, status=503
        )
    httpserver.expect_ordered_request("/api/v1/query").respond_with_json(_vector("42"))
    with PrometheusSource(httpserver.url_for("/"), 2.5, 2, 0.0) as s:
        got = s.measure(spec("Gauge", query="sum(up)"), {}, WHEN)
    assert got == PointValue(42.0)
    assert len(httpserver.log) == 3
    sent = httpserver.log[-1][0].args
    assert (sent["query"], sent["time"], sent["timeout"]) == ("sum(up)", f"{AT}.000", "2.5")


def test_5xx_every_time_is_transient_after_retries_plus_one_requests(
    httpserver: HTTPServer,
) -> None:
    httpserver.expect_request("/api/v1/query").respond_with_json(
        {"status": "error", "errorType": "internal", "error": "boom"}, status=500
    )
    with (
        PrometheusSource(httpserver.url_for("/"), 1.0, 1, 0.0) as s,
        pytest.raises(TransientMetricsError, match=r"failed 2 times; last: HTTP 500: boom$"),
    ):
        s.measure(spec("Gauge", query="sum(up)"), {}, WHEN)
    assert len(httpserver.log) == 2


def test_a_4xx_is_not_retried(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/query").respond_with_json(
        {"status": "error", "errorType": "bad_data", "error": "invalid parameter"}, status=400
    )
    with (
        PrometheusSource(httpserver.url_for("/"), 1.0, 3, 0.0) as s,
        pytest.raises(MetricQueryError, match=r"\(HTTP 400: invalid parameter\): sum\(up\)$"),
    ):
        s.measure(spec("Gauge", query="sum(up)"), {}, WHEN)
    assert len(httpserver.log) == 1


def test_a_slow_server_times_out_as_transient(httpserver: HTTPServer) -> None:
    def slow(request: Request) -> Response:
        time.sleep(0.5)  # the server's slowness under test, not a wait for anything
        return Response("{}", content_type="application/json")

    httpserver.expect_request("/api/v1/query").respond_with_handler(slow)
    started = time.monotonic()
    with (
        PrometheusSource(httpserver.url_for("/"), timeout_s=0.1, retries=0) as s,
        pytest.raises(TransientMetricsError, match="failed 1 time; last: ReadTimeout"),
    ):
        s.measure(spec("Gauge", query="sum(up)"), {}, WHEN)
    assert time.monotonic() - started < 0.45


# --- the Metric library (config/metrics) --------------------------------------------------

BASELINE_BUCKETS = (0, 240, 480, 600, 600, 600, 600, 600)
CANDIDATE_BUCKETS = (0, 180, 360, 360, 540, 540, 600, 600)
BOUNDS = (5, 10, 50, 100, 250, 500, 1000, INF)
# metric (without the kfserving- prefix) -> (baseline, candidate), written by hand from the
# history: baseline 600 requests, 0 errors, 22320 ms; candidate 600, 60 errors, 86640 ms.
EXPECTED: dict[str, tuple[Measurement, Measurement]] = {
    "request-count": (PointValue(600), PointValue(600)),
    "error-count": (PointValue(0), PointValue(60)),
    "error-rate": (Counts(0, 600), Counts(60, 600)),
    "error-rate-non-2xx": (Counts(0, 600), Counts(60, 600)),
    "mean-latency": (Moments(600, 22320), Moments(600, 86640)),
    "latency": (Histogram(BOUNDS, BASELINE_BUCKETS), Histogram(BOUNDS, CANDIDATE_BUCKETS)),
    # histogram_quantile: rank 570 of 600 falls in (50, 100] at 90/120 for the baseline and
    # in (500, 1000] at 30/60 for the candidate.
    "p95-latency": (PointValue(87.5), PointValue(750)),
}
# library folder -> (namespace, baseline revision, candidate revision) in the history
LIBRARIES = {
    LIBRARY / "knative-1.18": (NAMESPACE, KSERVE_BASELINE, KSERVE_CANDIDATE),
    LIBRARY / "kfserving-v1alpha2": (KFSERVING_NAMESPACE, KFSERVING_DEFAULT, KFSERVING_CANARY),
}
FILES = sorted(
    p for folder in LIBRARIES for p in folder.glob("*.yaml") if p.stem != "kustomization"
)


def load(path: Path) -> MetricSpec:
    return MetricSpec.parse(yaml.safe_load(path.read_text()))


def test_the_library_is_the_seven_metrics_twice() -> None:
    names = sorted(load(p).name for p in FILES)
    assert names == sorted([*EXPECTED, *(f"kfserving-{n}" for n in EXPECTED)])


@pytest.mark.parametrize("folder", list(LIBRARIES), ids=lambda p: p.name)
def test_each_kustomization_lists_every_file(folder: Path) -> None:
    listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
    present = [p.name for p in folder.iterdir() if p.name != "kustomization.yaml"]
    assert sorted(listed) == sorted(present)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_every_library_metric_measures_exactly(source: PrometheusSource, path: Path) -> None:
    metric = load(path)
    namespace, baseline, candidate = LIBRARIES[path.parent]
    expected = EXPECTED[metric.name.removeprefix("kfserving-")]
    got = tuple(
        source.measure(metric, variables(revision, namespace), WHEN)
        for revision in (baseline, candidate)
    )
    assert got == expected
    gone = source.measure(metric, variables("sklearn-iris-predictor-00099", namespace), WHEN)
    assert isinstance(gone, NoData)


@pytest.mark.parametrize("metric", ["error-rate", "latency"])
def test_one_iterations_window_is_the_same_template_over_the_window(
    source: PrometheusSource, metric: str
) -> None:
    """iterate reads a maxRatio metric's own window by rendering `$elapsed` as the seconds
    since the last iteration; on the steady history the last minute holds a tenth of it,
    and rounding to counts absorbs `increase`'s extrapolation."""
    spec = load(LIBRARY / "knative-1.18" / f"{metric}.yaml")
    window = variables_for(
        name=ISVC,
        namespace=NAMESPACE,
        revision=KSERVE_CANDIDATE,
        elapsed_seconds=ELAPSED // 10,
        interval_seconds=10,
    )
    cumulative = window_counts(source.measure(spec, variables(KSERVE_CANDIDATE), WHEN), 250)
    assert cumulative is not None
    events, trials = cumulative
    assert window_counts(source.measure(spec, window, WHEN), 250) == (events // 10, trials // 10)


def test_only_the_v1alpha2_library_ignores_a_transformer_revision(
    source: PrometheusSource,
) -> None:
    """Same namespace and series; only the KFServing queries pin the predictor configuration."""
    transformer = variables(KFSERVING_TRANSFORMER, KFSERVING_NAMESPACE)
    kserve = load(LIBRARY / "knative-1.18" / "request-count.yaml")
    kfserving = load(LIBRARY / "kfserving-v1alpha2" / "request-count.yaml")
    assert source.measure(kserve, transformer, WHEN) == PointValue(600)
    assert isinstance(source.measure(kfserving, transformer, WHEN), NoData)


# --- the test support itself ---------------------------------------------------------------


def test_missing_binaries_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture fails (never skips) with these names and INSTALL_HINT."""
    monkeypatch.setenv("PATH", "")
    assert missing_binaries() == ["prometheus", "promtool"]
    assert "make os-deps" in INSTALL_HINT


def test_a_backfill_promtool_rejects_says_why(tmp_path: Path) -> None:
    if missing_binaries():
        pytest.fail(f"promtool not found: {INSTALL_HINT}")
    with pytest.raises(RuntimeError, match="promtool could not backfill"):
        PrometheusTSDB(tmp_path).backfill("# TYPE x gauge\nx{ 1 2\n# EOF\n")


def test_openmetrics_refuses_points_out_of_time_order() -> None:
    with pytest.raises(ValueError, match="increasing time order"):
        OpenMetrics().gauge("g", {}, [(T0 + 10, 1.0), (T0, 2.0)])


@pytest.mark.parametrize(
    ("numerator", "denominator", "events"),
    [("10.9", "10", 10.0), ("12", "10", 10.0), ("104", "100", 100.0), ("7", "10", 7.0)],
)
def test_a_ratio_a_scrape_apart_is_read_as_all_of_them(
    httpserver: HTTPServer, numerator: str, denominator: str, events: float
) -> None:
    """increase() extrapolates each counter from its own samples, so a numerator scraped a
    moment after its denominator can come out a little larger over a short window."""
    m = spec("Ratio", numerator="sum(num)", denominator="sum(den)")

    def answer(request: Request) -> Response:
        value = numerator if request.args["query"] == "sum(num)" else denominator
        return Response(json.dumps(_vector(value)), content_type="application/json")

    httpserver.expect_request("/api/v1/query").respond_with_handler(answer)
    with PrometheusSource(httpserver.url_for("/"), 1.0, 0, 0.0) as s:
        assert s.measure(m, {}, WHEN) == Counts(events, float(denominator))


def test_a_numerator_far_over_its_denominator_is_still_an_error(httpserver: HTTPServer) -> None:
    m = spec("Ratio", numerator="sum(num)", denominator="sum(den)")

    def answer(request: Request) -> Response:
        value = "20" if request.args["query"] == "sum(num)" else "10"
        return Response(json.dumps(_vector(value)), content_type="application/json")

    httpserver.expect_request("/api/v1/query").respond_with_handler(answer)
    with (
        PrometheusSource(httpserver.url_for("/"), 1.0, 0, 0.0) as s,
        pytest.raises(MetricQueryError, match="exceed trials"),
    ):
        s.measure(m, {}, WHEN)
