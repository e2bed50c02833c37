"""The simulated model versions, over real HTTP: KServe v1 predict, profiles, and metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from scipy import stats

from local.servers import LABELS, LATENCY_BUCKETS_MS, ModelVersion, Profile, iris

# Two-sided tail below which a count is called inconsistent with its binomial model.
ALPHA = 1e-4


@pytest.fixture(scope="module")
def http() -> Iterator[urllib3.PoolManager]:
    pool = urllib3.PoolManager(maxsize=2, retries=False, timeout=10.0)
    yield pool
    pool.clear()


def predict(
    http: urllib3.PoolManager, version: ModelVersion, instances: Any
) -> tuple[int, dict[str, Any]]:
    response = http.request(
        "POST", version.model_url + ":predict", body=json.dumps({"instances": instances}).encode()
    )
    return response.status, json.loads(response.data)


def samples(http: urllib3.PoolManager, version: ModelVersion) -> dict[str, list[Sample]]:
    """The /metrics samples by family name, parsed by prometheus_client's own parser."""
    text = http.request("GET", version.url + "/metrics").data.decode()
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


@pytest.mark.slow  # trains both models (and imports sklearn) on first use
def test_predicts_iris_classes_and_the_worse_model_is_less_accurate(
    http: urllib3.PoolManager,
) -> None:
    data = iris()
    rows = data.features.tolist()
    accuracy = {}
    with (
        ModelVersion(
            "sklearn-iris", "sklearn-iris-predictor-00001", Profile(), np.random.default_rng(1)
        ) as good,
        ModelVersion(
            "sklearn-iris",
            "sklearn-iris-predictor-00002",
            Profile(model="worse", latency_median_ms=1),
            np.random.default_rng(2),
        ) as worse,
    ):
        for version in (good, worse):
            ready = json.loads(http.request("GET", version.model_url).data)
            assert ready == {"name": "sklearn-iris", "ready": True}
            code, body = predict(http, version, rows)
            assert code == 200
            predictions = body["predictions"]
            assert len(predictions) == len(rows) and set(predictions) <= {0, 1, 2}
            correct = int(np.sum(np.asarray(predictions) == data.labels))
            accuracy[version.revision] = correct / len(rows)

            # The reward counters saw the same predictions: one per instance, labelled.
            families = samples(http, version)
            ok = {"revision_name": version.revision, "response_code": "200"}
            assert total(families["model_prediction"], "model_prediction_total", **ok) == 150
            scored = total(families["model_prediction_correct"], "model_prediction_correct_total")
            assert scored == correct
    assert accuracy["sklearn-iris-predictor-00001"] >= 0.95
    assert (
        accuracy["sklearn-iris-predictor-00002"] <= accuracy["sklearn-iris-predictor-00001"] - 0.1
    )


@pytest.mark.slow
def test_errors_and_latencies_follow_the_profile_and_are_exported(
    http: urllib3.PoolManager,
) -> None:
    n, error_rate, median = 2000, 0.2, 100.0
    profile = Profile(error_rate=error_rate, latency_median_ms=median, latency_sigma=0.5)
    instance = [iris().features[0].tolist()]
    with ModelVersion(
        "sklearn-iris",
        "sklearn-iris-predictor-00003",
        profile,
        np.random.default_rng(3),
        namespace="models",
        time_scale=float("inf"),  # latency exported, never slept
    ) as version:
        started = time.monotonic()
        codes = [predict(http, version, instance)[0] for _ in range(n)]
        elapsed = time.monotonic() - started
        families = samples(http, version)

    failures = codes.count(500)
    assert codes.count(200) + failures == n
    assert stats.binomtest(failures, n, error_rate).pvalue > ALPHA
    # The median is 100 ms of simulated latency: slept, 2000 requests would take > 100 s.
    assert elapsed < n * median / 1000 / 2

    counts = families["revision_app_request_count"]
    expected_labels = {
        "namespace_name": "models",
        "configuration_name": "sklearn-iris-predictor",
        "revision_name": "sklearn-iris-predictor-00003",
    }
    assert {tuple(sorted(s.labels)) for s in counts} == {tuple(sorted(LABELS))}
    assert all(expected_labels.items() <= s.labels.items() for s in counts)
    by_code = {
        (s.labels["response_code"], s.labels["response_code_class"]): s.value for s in counts
    }
    assert by_code == {("200", "2xx"): n - failures, ("500", "5xx"): failures}
    # Every sample is named exactly as queue-proxy names it, so cluster queries work here.
    assert {s.name for s in counts} == {"revision_app_request_count"}

    latencies = families["revision_app_request_latencies"]
    assert total(latencies, "revision_app_request_latencies_count") == n
    failed_count = total(
        latencies, "revision_app_request_latencies_count", response_code_class="5xx"
    )
    assert failed_count == failures
    bounds = {
        float(s.labels["le"])
        for s in latencies
        if s.name == "revision_app_request_latencies_bucket"
    }
    assert bounds == {*map(float, LATENCY_BUCKETS_MS), float("inf")}
    # Uncompressed latencies: half of them at most the 100 ms median, the mean that of the
    # lognormal, exp(sigma²/2) times the median.
    at_median = total(latencies, "revision_app_request_latencies_bucket", le="100.0")
    assert stats.binomtest(int(at_median), n, 0.5).pvalue > ALPHA
    mean = total(latencies, "revision_app_request_latencies_sum") / n
    assert mean == pytest.approx(median * np.exp(0.5**2 / 2), rel=0.05)


def test_sleeps_the_compressed_latency_and_exports_the_simulated_one(
    http: urllib3.PoolManager,
) -> None:
    profile = Profile(latency_median_ms=200.0, latency_sigma=0.0)
    instance = [iris().features[0].tolist()]
    with ModelVersion(
        "sklearn-iris", "r-00001", profile, np.random.default_rng(4), time_scale=10.0
    ) as version:
        durations = []
        for _ in range(5):
            started = time.monotonic()
            assert predict(http, version, instance)[0] == 200
            durations.append(time.monotonic() - started)
        families = samples(http, version)
    # 200 ms simulated, compressed tenfold: 20 ms of wall clock (plus overhead), never 200.
    assert min(durations) >= 0.02 and float(np.median(durations)) < 0.1, durations
    latencies = families["revision_app_request_latencies"]
    assert total(latencies, "revision_app_request_latencies_sum") == pytest.approx(1000.0)
    assert total(latencies, "revision_app_request_latencies_bucket", le="150.0") == 0
    assert total(latencies, "revision_app_request_latencies_bucket", le="200.0") == 5


def test_bad_requests_are_answered_and_counted(http: urllib3.PoolManager) -> None:
    with ModelVersion(
        "sklearn-iris", "r-00001", Profile(latency_median_ms=1), np.random.default_rng(5)
    ) as version:
        code, body = predict(http, version, [[1.0, 2.0]])
        assert code == 400 and "shape (1, 2)" in body["error"]
        response = http.request("POST", version.model_url + ":predict", body=b"not json")
        assert response.status == 400
        other = http.request("POST", version.url + "/v1/models/other:predict", body=b"{}")
        assert other.status == 404
        families = samples(http, version)
    counts = families["revision_app_request_count"]
    assert [
        (s.labels["response_code"], s.labels["response_code_class"], s.value) for s in counts
    ] == [("400", "4xx", 2.0)]
    # nothing was scored: the scored series exist from the start (so increase() sees the
    # first one) but stay at zero
    assert all(s.value == 0 for s in families.get("model_prediction", []))
