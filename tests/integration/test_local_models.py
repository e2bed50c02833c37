"""The simulated model versions, over real HTTP: real KServe model servers behind the
queue-proxy stand-in, the profile they follow, and the metrics each Knative generation
exports."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import urllib3
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from scipy import stats

from analytics.measurements import Counts, NoData, PointValue
from functions.adapters.prometheus import PrometheusSource
from functions.core.metrics import MetricSpec, TransientMetricsError, variables_for
from local.harness import ROOT, free_port, prometheus_config
from local.queueproxy import (
    GENERATIONS,
    OPENCENSUS_BUCKETS_MS,
    OTEL_BUCKETS_S,
    RequestMetrics,
)
from local.servers import ModelVersion, Profile, iris, train

# Each version is a KServe process (~5 s to import kserve), measured for real latency.
pytestmark = [pytest.mark.slow, pytest.mark.exclusive]

# Two-sided tail below which a count is called inconsistent with its binomial model.
ALPHA = 1e-4
JSON = {"Content-Type": "application/json"}
REVISION = "sklearn-iris-predictor-00001"


@pytest.fixture(scope="module")
def http() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(maxsize=8, retries=False, timeout=10.0)
    yield pool
    pool.clear()


def predict(
    http: urllib3.PoolManager, version: ModelVersion, instances: Any
) -> tuple[int, dict[str, Any]]:
    response = http.request(
        "POST",
        version.model_url + ":predict",
        body=json.dumps({"instances": instances}).encode(),
        headers=JSON,
    )
    return response.status, json.loads(response.data)


def families(http: urllib3.PoolManager, url: str) -> dict[str, list[Sample]]:
    """The /metrics samples by family name, parsed by prometheus_client's own parser."""
    text = http.request("GET", url).data.decode()
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def total(rows: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in rows if s.name == name and labels.items() <= s.labels.items())


def test_profile_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        Profile(error_rate=1.5)
    with pytest.raises(ValueError, match="latency_median_ms"):
        Profile(latency_median_ms=0)
    with pytest.raises(ValueError, match="model"):
        Profile(model="better")  # type: ignore[arg-type]


def test_the_worse_model_is_measurably_less_accurate() -> None:
    data = iris()
    good = np.mean(np.asarray(train("good").predict(data.features)) == data.labels)
    worse = np.mean(np.asarray(train("worse").predict(data.features)) == data.labels)
    assert good >= 0.95 and worse <= good - 0.1


@pytest.fixture(scope="module")
def v118(http: urllib3.PoolManager) -> Iterator[ModelVersion]:
    profile = Profile(error_rate=0.2, latency_median_ms=20.0, latency_sigma=0.5, model="worse")
    with ModelVersion(
        "sklearn-iris",
        REVISION,
        profile,
        np.random.default_rng(3),
        namespace="models",
        knative="1.18",
    ) as version:
        yield version


def test_serves_kserve_v1_and_v2_with_the_trained_model(
    http: urllib3.PoolManager, v118: ModelVersion
) -> None:
    rows = iris().features[:20].tolist()
    expected = train("worse").predict(np.asarray(rows))
    ready = json.loads(http.request("GET", v118.model_url).data)
    assert ready == {"name": "sklearn-iris", "ready": True}  # KServe's v1 readiness answer
    answers = [predict(http, v118, rows) for _ in range(10)]
    assert next(body["predictions"] for code, body in answers if code == 200) == expected
    v2 = http.request(
        "POST",
        f"{v118.url}/v2/models/sklearn-iris/infer",
        body=json.dumps(
            {"inputs": [{"name": "x", "shape": [20, 4], "datatype": "FP64", "data": rows}]}
        ).encode(),
        headers=JSON,
    )
    if v2.status == 200:  # a simulated failure is a 500 here too
        assert json.loads(v2.data)["outputs"][0]["data"] == expected
    else:
        assert v2.status == 500
    # KServe's own metrics, on the model server's port, labelled by model only.
    own = families(http, v118.server_metrics_url)
    predicted = [s for s in own["request_predict_seconds"] if s.name.endswith("_count")]
    assert {tuple(s.labels) for s in predicted} == {("model_name",)}
    assert sum(s.value for s in predicted) >= 11


def test_errors_and_real_latencies_follow_the_profile_as_knative_1_18_exports_them(
    http: urllib3.PoolManager, v118: ModelVersion
) -> None:
    """Knative 1.18 queue-proxy (OpenCensus, pkg/queue/request_metric.go at knative-v1.18.0):
    revision_app_request_latencies in milliseconds, buckets 5 ... 100000, labelled on the
    series with the revision, namespace and response code (class)."""
    before = families(http, v118.metrics_url)
    n = 400
    instance = [iris().features[0].tolist()]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: predict(http, v118, instance)[0], range(n)))
    after = families(http, v118.metrics_url)
    failures = codes.count(500)
    assert codes.count(200) + failures == n
    assert stats.binomtest(failures, n, 0.2).pvalue > ALPHA

    latencies = after["revision_app_request_latencies"]
    count = "revision_app_request_latencies_count"
    done = total(latencies, count) - total(before["revision_app_request_latencies"], count)
    assert done == n
    assert (
        total(latencies, count, response_code_class="5xx")
        - total(before["revision_app_request_latencies"], count, response_code_class="5xx")
        == failures
    )
    assert all(
        s.labels["revision_name"] == REVISION
        and s.labels["namespace_name"] == "models"
        and s.labels["configuration_name"] == "sklearn-iris-predictor"
        for s in latencies
    )
    bounds = {float(s.labels["le"]) for s in latencies if s.name.endswith("_bucket")}
    assert bounds == {*map(float, OPENCENSUS_BUCKETS_MS), float("inf")}
    # Really waited: the measured mean is at least the lognormal's (20 ms · e^(σ²/2)), in ms.
    mean = total(latencies, "revision_app_request_latencies_sum") / total(latencies, count)
    assert mean >= 20.0 * np.exp(0.5**2 / 2) * 0.9
    counts = after["revision_app_request_count"]
    assert {s.name for s in counts} == {"revision_app_request_count"}  # no _total appended
    # The reward counters, on KServe's /metrics: one per instance answered.
    own = families(http, v118.server_metrics_url)
    assert total(own["model_prediction"], "model_prediction_total", revision_name=REVISION) >= (
        n - failures
    )


def test_bad_requests_are_answered_by_kserve_and_counted(
    http: urllib3.PoolManager, v118: ModelVersion
) -> None:
    before = total(
        families(http, v118.metrics_url)["revision_app_request_count"],
        "revision_app_request_count",
        response_code_class="4xx",
    )
    # Validated before any simulated failure: a bad request is always KServe's 400.
    assert [predict(http, v118, [[1.0, 2.0]])[0] for _ in range(3)] == [400] * 3
    other = http.request("POST", v118.url + "/v1/models/other:predict", body=b"{}", headers=JSON)
    assert other.status == 404  # KServe's ModelNotFound
    after = total(
        families(http, v118.metrics_url)["revision_app_request_count"],
        "revision_app_request_count",
        response_code_class="4xx",
    )
    assert after - before == 4


def test_the_opentelemetry_generation_exports_seconds_without_the_revision(
    http: urllib3.PoolManager,
) -> None:
    """The OpenTelemetry queue-proxy, read in knative/serving (git tags):

    - knative-v1.19.0 pkg/queue/request_metric.go (commit 6dff362787, PR #15961):
      `kn.queueproxy.app.duration`, unit "s", latencyBounds 0.005 ... 10, attribute
      `http.response.status_code` only;
    - knative-v1.20.2 / v1.21.0 (commits ce76741c2d, PR #16290, and 4004491765, PR #16358):
      renamed `kn.serving.invocation.duration`, recording `latency.Seconds()` — what the
      stand-in plays (config/prometheus/knative-1.19 renames the older name);
    - pkg/queue/sharedmain/otel.go: the revision, configuration, service and namespace are
      resource attributes (`kn.revision.name`, `k8s.namespace.name`, ...), which the
      Prometheus exporter (go.opentelemetry.io/otel/exporters/prometheus v0.59.0) puts on
      `target_info`, adding `_seconds` for unit "s" and `otel_scope_*` labels to the series.
    """
    metric = "kn_serving_invocation_duration_seconds"
    profile = Profile(latency_median_ms=300.0, latency_sigma=0.0)
    with ModelVersion(
        "iris", "iris-00002", profile, np.random.default_rng(5), namespace="ns", knative="1.19"
    ) as version:
        for _ in range(3):
            assert predict(http, version, [[5.1, 3.5, 1.4, 0.2]])[0] == 200
        got = families(http, version.metrics_url)
        targets = version.scrape_targets()
    assert "revision_app_request_latencies" not in got
    series = got[metric]
    assert {s.name for s in series} == {f"{metric}_bucket", f"{metric}_sum", f"{metric}_count"}
    assert {frozenset(s.labels) - {"le"} for s in series} == {frozenset(RequestMetrics.OTEL_LABELS)}
    bounds = {float(s.labels["le"]) for s in series if s.name.endswith("_bucket")}
    assert bounds == {*OTEL_BUCKETS_S, float("inf")}
    ok = {"http_response_status_code": "200"}
    assert total(series, f"{metric}_count", **ok) == 3
    assert total(series, f"{metric}_sum", **ok) == pytest.approx(0.9, abs=0.3)
    assert total(series, f"{metric}_bucket", le="0.25", **ok) == 0
    assert total(series, f"{metric}_bucket", le="0.5", **ok) == 3
    (info,) = got["target_info"]
    assert info.labels["kn_revision_name"] == "iris-00002"
    assert info.labels["k8s_namespace_name"] == "ns"
    # The pod's discovery labels, which config/prometheus/knative-1.19 relabels onto the
    # series (the revision's label, the namespace) and keeps the port by.
    proxy = next(
        t for t in targets if t.meta["__meta_kubernetes_pod_container_name"] == "queue-proxy"
    )
    assert proxy.address == version.metrics_url.removeprefix("http://").removesuffix("/metrics")
    assert proxy.meta["__meta_kubernetes_pod_container_port_name"] == "http-usermetric"
    assert proxy.meta["__meta_kubernetes_namespace"] == "ns"
    assert proxy.meta["__meta_kubernetes_pod_label_serving_knative_dev_revision"] == "iris-00002"


def library(folder: str) -> dict[str, MetricSpec]:
    return {
        p.stem: MetricSpec.parse(doc)
        for p in (ROOT / "config" / "metrics" / folder).glob("*.yaml")
        if (doc := yaml.safe_load(p.read_text())).get("kind") == "Metric"
    }


@pytest.mark.parametrize("knative", sorted(GENERATIONS))
def test_the_generation_library_reads_the_local_prometheus(
    http: urllib3.PoolManager, tmp_path: Path, knative: str
) -> None:
    """Every Metric of config/metrics/knative-<generation> and of kserve-modelserver finds
    the version's requests in a Prometheus scraping with config/prometheus' own jobs
    (prometheus_config): the stand-in and the scrape rules give exactly what the queries
    read, and each job keeps only its own container's port."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run `make os-deps`"
    profile = Profile(latency_median_ms=5.0, latency_sigma=0.0)
    metrics = {**library(f"knative-{knative}"), **library("kserve-modelserver")}
    variables = variables_for(
        name="iris", namespace="ns", revision="iris-00003", elapsed_seconds=60, interval_seconds=10
    )
    with ModelVersion(
        "iris", "iris-00003", profile, np.random.default_rng(6), namespace="ns", knative=knative
    ) as version:
        # KServe creates its histograms' series at a model's first request: one before the
        # first scrape, so that increase() sees the ones after.
        assert predict(http, version, [[5.1, 3.5, 1.4, 0.2]])[0] == 200
        config = prometheus_config(version.scrape_targets(), knative)
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        prometheus = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        source = PrometheusSource(f"http://127.0.0.1:{port}", retries=0)

        def measure(name: str) -> object:
            with contextlib.suppress(TransientMetricsError):
                return source.measure(metrics[name], variables, None)
            return None

        def wait_for(name: str, ok: Callable[[object], bool]) -> object:
            got = measure(name)
            deadline = time.monotonic() + 30
            while not ok(got) and time.monotonic() < deadline:
                time.sleep(0.5)
                got = measure(name)
            return got

        try:
            # Every series exists before the requests measured: increase() sees each.
            first = wait_for("request-count", lambda m: isinstance(m, PointValue))
            for _ in range(5):
                assert predict(http, version, [[5.1, 3.5, 1.4, 0.2]])[0] == 200
            count = wait_for("request-count", lambda m: isinstance(m, PointValue) and m.value >= 5)
            time.sleep(1.5)  # a scrape of the model server's port too
            got = {name: measure(name) for name in metrics}
            jobs = requests.get(
                f"http://127.0.0.1:{port}/api/v1/query",
                {"query": "count by (job) (up)"},
                timeout=2,
            ).json()["data"]["result"]
        finally:
            source.close()
            prometheus.terminate()
            prometheus.wait(10)
    assert first == PointValue(0.0), first
    # increase() extrapolates past the first and last scrape of a series this young (by up
    # to half a scrape interval or more on each side of a few seconds sampled: 7.09 seen), so
    # about 5, never fewer; and under 10, which a series counted by both jobs would reach.
    assert isinstance(count, PointValue) and 5 <= count.value < 10, count
    assert not [name for name, m in got.items() if m is None or isinstance(m, NoData)], got
    errors = got["error-rate"]
    assert isinstance(errors, Counts) and errors.events == 0 and errors.trials >= 5, errors
    model_count = got["model-request-count"]
    assert isinstance(model_count, PointValue) and model_count.value >= 5, model_count
    # One target per job: each job's keep rule took only its own container's port.
    assert {r["metric"]["job"]: r["value"][1] for r in jobs} == {
        "knative-queue-proxy": "1",
        "kserve-model-server": "1",
    }


def test_a_server_that_does_not_come_up_says_why_from_its_own_log(tmp_path: Path) -> None:
    """A failed start quotes the end of the server's log (written to a file the run keeps),
    not a traceback of reading a write-only file."""
    profile = Profile(latency_median_ms=5.0, latency_sigma=0.0)
    version = ModelVersion(
        "iris", "iris-00009", profile, np.random.default_rng(1), log_path=tmp_path / "m.log"
    )
    version.launch()
    try:
        with pytest.raises(RuntimeError, match=r"not ready within 0\.01 s") as failed:
            version.wait_ready(timeout=0.01)
        assert isinstance(failed.value.args[0], str)
    finally:
        version.stop()
