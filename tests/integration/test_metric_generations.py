"""Every generation's Metric library against the real Prometheus, and the same verdicts.

Upstream facts these libraries rest on (read in the sources at the tags named):
- knative/serving knative-v1.18.0 pkg/queue/request_metric.go: OpenCensus views
  `revision_app_request_latencies` in milliseconds (stats.UnitMilliseconds), labelled
  namespace_name, revision_name, response_code_class — config/metrics/knative-1.18.
- knative/serving knative-v1.19.0 pkg/queue/request_metric.go (commit 6dff362787, "otel
  instrumentation of the queue-proxy", #15961): the Float64Histogram
  `kn.queueproxy.app.duration`, unit "s", attribute semconv http.response.status_code;
  pkg/queue/sharedmain/otel.go puts k8s.namespace.name and kn.revision.name on the
  *resource*, not on the series. Renamed `kn.serving.invocation.duration` by commit
  ce76741c2d ("fix metric names", #16290), first released in knative-v1.20.1 and
  knative-v1.21.0; knative-v1.20.0's vendored knative.dev/pkg/observability/metrics
  exports with otlptranslator.UnderscoreEscapingWithSuffixes, so Prometheus sees
  `kn_serving_invocation_duration_seconds_{bucket,sum,count}` and
  `http_response_status_code` — config/metrics/knative-1.19, with the namespace and revision
  relabelled on by config/prometheus/knative-1.19 (which also renames the 1.19.0-1.20.0
  family). Until commit 4004491765 (#16358; knative-v1.20.2, knative-v1.21.0) the recorded
  value was `float64(latency / time.Second)`, whole seconds.
- kserve/kserve python/kserve/kserve/metrics.py (v0.20): prometheus_client Histograms
  request_{preprocess,predict,postprocess,explain}_seconds labelled only model_name —
  config/metrics/kserve-modelserver.

The history (tests/support/prometheus.py) holds the same requests in each shape, so each
library's answers are the same numbers, converted to milliseconds where the source is in
seconds (spec.queryUnits), and one experiment reaches the same verdict on any of them.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml
from pytest_httpserver import HTTPServer

from analytics.analysis import analyze
from analytics.document import to_dict
from analytics.measurements import (
    Counts,
    Histogram,
    Measurement,
    Moments,
    NoData,
    PointValue,
    measurement_to_dict,
)
from analytics.parse import parse_experiment
from functions.adapters.prometheus import PrometheusSource
from functions.core.metrics import LIBRARY_LABEL, MetricSpec, queries_for, variables_for
from local.harness import kustomization_files
from tests.support.prometheus import (
    AT,
    ELAPSED,
    ISVC,
    KSERVE_BASELINE,
    KSERVE_CANDIDATE,
    KSERVE_REJECTING,
    NAMESPACE,
    PrometheusTSDB,
)
from tests.support.prometheus_fixtures import prometheus_history  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
METRICS = ROOT / "config" / "metrics"
SCRAPE = ROOT / "config" / "prometheus"
WHEN = datetime.fromtimestamp(AT, UTC)
INF = math.inf
GENERATIONS = ("knative-1.18", "knative-1.19")
# The same seven names in both queue-proxy generations.
NAMES = (
    "request-count",
    "error-count",
    "error-rate",
    "error-rate-non-2xx",
    "mean-latency",
    "latency",
    "p95-latency",
)
BOUNDS_MS = (5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, INF)
# Written by hand from the history: baseline 600 requests, 0 errors, 22320 ms in all;
# candidate 600, 60 of them 5xx, 86640 ms.
EXPECTED: dict[str, tuple[Measurement, Measurement]] = {
    "request-count": (PointValue(600), PointValue(600)),
    "error-count": (PointValue(0), PointValue(60)),
    "error-rate": (Counts(0, 600), Counts(60, 600)),
    "error-rate-non-2xx": (Counts(0, 600), Counts(60, 600)),
    "mean-latency": (Moments(600, 22320), Moments(600, 86640)),
    "latency": (
        Histogram(BOUNDS_MS, (0, 240, 480, 600, 600, 600, 600, 600)),
        Histogram(BOUNDS_MS, (0, 180, 360, 360, 540, 540, 600, 600)),
    ),
    "p95-latency": (PointValue(87.5), PointValue(750)),
}
# The model server sees the same predict calls, with no status code.
MODEL_EXPECTED: dict[str, tuple[Measurement, Measurement]] = {
    "model-request-count": EXPECTED["request-count"],
    "model-mean-latency": EXPECTED["mean-latency"],
    "model-latency": EXPECTED["latency"],
    "model-p95-latency": EXPECTED["p95-latency"],
}


def load(path: Path) -> MetricSpec:
    return MetricSpec.parse(yaml.safe_load(path.read_text()))


def library(folder: str) -> dict[str, MetricSpec]:
    """The Metrics `kubectl apply -k config/metrics/<folder>` installs, by name."""
    specs = [load(p) for p in kustomization_files(METRICS / folder)]
    return {s.name: s for s in specs}


def variables(revision: str) -> dict[str, str]:
    return variables_for(
        name=ISVC, namespace=NAMESPACE, revision=revision, elapsed_seconds=ELAPSED,
        interval_seconds=10,
    )  # fmt: skip


def close(got: Measurement, want: Measurement) -> bool:
    """Equal, up to the last bits of a sum of seconds converted to milliseconds."""
    if type(got) is not type(want):
        return False
    if isinstance(got, Moments) and isinstance(want, Moments):
        return got.count == want.count and got.total == pytest.approx(want.total, rel=1e-12)
    if isinstance(got, PointValue) and isinstance(want, PointValue):
        return got.value == pytest.approx(want.value, rel=1e-12)
    return got == want


@pytest.fixture(scope="module")
def source(prometheus_history: PrometheusTSDB) -> Iterator[PrometheusSource]:  # noqa: F811
    with PrometheusSource(prometheus_history.url, timeout_s=5.0, retries=0) as s:
        yield s


# --- the libraries' layout ------------------------------------------------------------------


@pytest.mark.parametrize("folder", GENERATIONS)
def test_each_queue_proxy_generation_installs_the_same_names(folder: str) -> None:
    specs = library(folder)
    assert sorted(specs) == sorted(NAMES)
    assert {s.library for s in specs.values()} == {folder}
    assert {s.units for s in specs.values() if "latency" in s.name} == {"milliseconds"}


def test_the_default_installs_one_generation_and_the_libraries_with_names_of_their_own() -> None:
    listed = yaml.safe_load((METRICS / "kustomization.yaml").read_text())["resources"]
    assert sum(entry in GENERATIONS for entry in listed) == 1
    names = [load(p).name for p in kustomization_files(METRICS)]
    assert len(names) == len(set(names)), "two Metrics of one name in the default install"


def test_every_metric_names_its_library_by_label() -> None:
    for path in METRICS.rglob("*.yaml"):
        if path.name == "kustomization.yaml":
            continue
        doc = yaml.safe_load(path.read_text())
        assert doc["metadata"]["labels"][LIBRARY_LABEL] == path.parent.name, path


# --- measured through the Prometheus adapter ------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_knative_1_19_library_measures_what_the_1_18_library_does(
    source: PrometheusSource, name: str
) -> None:
    old, new = library("knative-1.18")[name], library("knative-1.19")[name]
    for revision, want in zip((KSERVE_BASELINE, KSERVE_CANDIDATE), EXPECTED[name], strict=True):
        got_old = source.measure(old, variables(revision), WHEN)
        got_new = source.measure(new, variables(revision), WHEN)
        assert got_old == want
        assert close(got_new, want), (got_new, want)
    assert isinstance(source.measure(new, variables("sklearn-iris-predictor-00099"), WHEN), NoData)


@pytest.mark.parametrize("name", list(MODEL_EXPECTED))
def test_the_model_server_library_measures_the_same_requests(
    source: PrometheusSource, name: str
) -> None:
    metric = library("kserve-modelserver")[name]
    for revision, want in zip(
        (KSERVE_BASELINE, KSERVE_CANDIDATE), MODEL_EXPECTED[name], strict=True
    ):
        got = source.measure(metric, variables(revision), WHEN)
        assert close(got, want), (name, got, want)


@pytest.mark.parametrize("folder", GENERATIONS)
def test_error_rate_counts_5xx_and_the_non_2xx_variant_counts_4xx_too(
    source: PrometheusSource, folder: str
) -> None:
    specs = library(folder)
    rejecting = variables(KSERVE_REJECTING)
    assert source.measure(specs["error-rate"], rejecting, WHEN) == Counts(60, 600)
    assert source.measure(specs["error-rate-non-2xx"], rejecting, WHEN) == Counts(180, 600)


# --- one experiment, the same verdict on either generation ----------------------------------

SAMPLE = ROOT / "samples" / "experiments" / "canary-progressive.yaml"


def verdict(source: PrometheusSource, folder: str, p95_limit_ms: float) -> dict[str, Any]:
    """canary-progressive's criteria, measured by `folder`'s library, analysed as assess
    does; returns the analysis document without the measurements."""
    doc = yaml.safe_load(SAMPLE.read_text())
    spec = doc["spec"]
    spec["versionInfo"] = {
        "baseline": {"name": "v1", "variables": [{"name": "revision", "value": KSERVE_BASELINE}]},
        "candidates": [
            {"name": "v2", "variables": [{"name": "revision", "value": KSERVE_CANDIDATE}]}
        ],
    }
    spec["criteria"]["objectives"][1]["upperLimit"] = p95_limit_ms
    specs = library(folder)
    data: dict[str, Any] = {}
    for name in {*spec["criteria"].get("indicators", []), spec["criteria"]["requestCount"]} | {
        o["metric"] for o in spec["criteria"]["objectives"]
    }:
        metric = specs[name.rpartition("/")[2]]
        data[name] = {
            "data": {
                version: measurement_to_dict(source.measure(metric, variables(revision), WHEN))
                for version, revision in (("v1", KSERVE_BASELINE), ("v2", KSERVE_CANDIDATE))
            }
        }
    doc["status"] = {
        "completedIterations": 10,
        "currentWeightDistribution": [{"name": "v1", "value": 50}, {"name": "v2", "value": 50}],
        "analysis": {"aggregatedMetrics": {"data": data}},
    }
    report = to_dict(analyze(parse_experiment(doc), np.random.default_rng(0)))
    return {k: report[k] for k in ("versionAssessments", "winnerAssessment", "recommendation")}


@pytest.mark.parametrize(
    ("p95_limit_ms", "candidate_latency_ok"), [(100.0, False), (250.0, False), (1000.0, True)]
)
def test_one_experiment_gets_the_same_verdict_from_either_generation(
    source: PrometheusSource, p95_limit_ms: float, candidate_latency_ok: bool
) -> None:
    """`upperLimit: 250` means 250 ms on both: the 1.19 histogram's le="0.25" bucket is read
    as 250, so the verdicts (and the messages with the estimates behind them) are identical."""
    old = verdict(source, "knative-1.18", p95_limit_ms)
    new = verdict(source, "knative-1.19", p95_limit_ms)
    assert new == old
    # Not vacuous: per version, [error-rate, latency] objective verdicts. The candidate's 10%
    # 5xx fail the error objective; 10% of its requests take 700 ms, 40% over 100 ms.
    assert old["versionAssessments"] == {"v1": [True, True], "v2": [False, candidate_latency_ok]}
    assert old["recommendation"]["action"] == "rollback"


# --- the scrape configurations ---------------------------------------------------------------


def scrape_config(folder: str) -> list[dict[str, Any]]:
    jobs = yaml.safe_load((SCRAPE / folder / "prometheus.yml").read_text())["scrape_configs"]
    assert isinstance(jobs, list)
    return jobs


def as_static(job: Mapping[str, Any], meta: Mapping[str, str], target: str) -> dict[str, Any]:
    """The job with its Kubernetes pod discovery replaced by one static target carrying the
    `__meta_kubernetes_*` labels a pod target has: Debian's Prometheus is built without
    kubernetes_sd, and a static target lets the relabelling run for real."""
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    static = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
    static["static_configs"] = [{"targets": [target], "labels": dict(meta)}]
    return static


POD_META = {
    "knative-1.18": ("queue-proxy", "http-usermetric"),
    "knative-1.19": ("queue-proxy", "http-usermetric"),
    "kserve-modelserver": ("kserve-container", "user-port"),
}


def pod_meta(folder: str, revision: str) -> dict[str, str]:
    container, port = POD_META[folder]
    return {
        "__meta_kubernetes_namespace": NAMESPACE,
        "__meta_kubernetes_pod_name": f"{revision}-deployment-a",
        "__meta_kubernetes_pod_container_name": container,
        "__meta_kubernetes_pod_container_port_name": port,
        "__meta_kubernetes_pod_label_serving_knative_dev_revision": revision,
        "__meta_kubernetes_pod_label_serving_knative_dev_configuration": f"{ISVC}-predictor",
    }


@pytest.mark.parametrize("folder", list(POD_META))
def test_promtool_accepts_a_prometheus_yml_using_the_fragment(tmp_path: Path, folder: str) -> None:
    jobs = [
        as_static(j, pod_meta(folder, KSERVE_BASELINE), "127.0.0.1:9")
        for j in scrape_config(folder)
    ]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump({"global": {"scrape_interval": "15s"}, "scrape_configs": jobs})
    )
    checked = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A PodMonitor relabeling in prometheus.yml spelling."""
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {names.get(k, k): v for k, v in rule.items()}


@pytest.mark.parametrize("folder", list(POD_META))
def test_the_podmonitor_applies_the_fragments_rules(folder: str) -> None:
    """The operator adds its own target selection; the rules that shape the series must be
    the fragment's, or the library reads different labels depending on how Prometheus runs."""
    monitor = yaml.safe_load((SCRAPE / folder / "podmonitor.yaml").read_text())
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "PodMonitor"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (job,) = scrape_config(folder)
    assert endpoint["port"] == POD_META[folder][1]
    keep, *shaping = job["relabel_configs"]
    assert keep["action"] == "keep"
    # The operator already puts namespace and pod on every series (knative-1.18's fragment
    # adds the same two itself).
    operator_default = {"namespace", "pod"}
    wanted = [r for r in shaping if r["target_label"] not in operator_default]
    assert [_rule(r) for r in endpoint.get("relabelings", [])] == wanted
    assert [_rule(r) for r in endpoint.get("metricRelabelings", [])] == job.get(
        "metric_relabel_configs", []
    )


# What a Knative 1.19.0 queue-proxy serves on :9091 to Prometheus 2 (names underscore-escaped
# by client_golang's content negotiation; the revision and namespace only on target_info).
_SCOPE = 'otel_scope_name="knative.dev/serving/pkg/queue",otel_scope_version=""'
_CODE = f'http_response_status_code="200",{_SCOPE}'
_FAMILY = "kn_queueproxy_app_duration_seconds"
QUEUE_PROXY_1_19_0 = "\n".join(
    [
        f"# TYPE {_FAMILY} histogram",
        f'{_FAMILY}_bucket{{{_CODE},le="0.005"}} 3',
        f'{_FAMILY}_bucket{{{_CODE},le="+Inf"}} 5',
        f"{_FAMILY}_sum{{{_CODE}}} 1",
        f"{_FAMILY}_count{{{_CODE}}} 5",
        "# TYPE target_info gauge",
        f'target_info{{k8s_namespace_name="{NAMESPACE}",kn_revision_name="{KSERVE_BASELINE}"}} 1',
        "",
    ]
)


def test_the_1_19_fragment_puts_the_librarys_labels_on_a_scraped_queue_proxy(
    tmp_path: Path,
) -> None:
    """Real Prometheus scraping a 1.19.0-shaped queue-proxy through the knative-1.19
    fragment's rules: the old family is renamed, and the namespace and revision the library
    selects on are on every series."""
    with HTTPServer(host="127.0.0.1", port=0) as exporter:
        exporter.expect_request("/metrics").respond_with_data(
            QUEUE_PROXY_1_19_0, content_type="text/plain; version=0.0.4"
        )
        target = f"127.0.0.1:{exporter.port}"
        jobs = [
            {**as_static(j, pod_meta("knative-1.19", KSERVE_BASELINE), target),
             "scrape_interval": "1s"}
            for j in scrape_config("knative-1.19")
        ]  # fmt: skip
        with PrometheusTSDB(tmp_path, scrape_configs=jobs) as prometheus:
            series = _wait_for_series(
                prometheus.url, "kn_serving_invocation_duration_seconds_count"
            )
            old = _query(prometheus.url, "kn_queueproxy_app_duration_seconds_count")
            # The library's own selector, as rendered for this revision, finds it.
            rendered = queries_for(
                library("knative-1.19")["request-count"], variables(KSERVE_BASELINE)
            )["query"]
            selector = re.search(r"kn_serving_invocation_duration_seconds_count\{[^}]*\}", rendered)
            assert selector is not None, rendered
            selected = _query(prometheus.url, selector.group(0))
    (labels,) = series
    assert labels["k8s_namespace_name"] == NAMESPACE
    assert labels["kn_revision_name"] == KSERVE_BASELINE
    assert labels["http_response_status_code"] == "200"
    assert old == []
    assert selected == series


def _query(url: str, promql: str) -> list[dict[str, str]]:
    answer = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    return [dict(item["metric"]) for item in answer["data"]["result"]]


def _wait_for_series(url: str, promql: str, timeout_s: float = 20.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _query(url, promql)
        if found:
            return found
        time.sleep(0.2)  # the next 1 s scrape
    raise AssertionError(f"no {promql} series after {timeout_s} s of scraping")
