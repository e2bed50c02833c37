"""The traffic generator: each backend's split rule, and real traffic routed by a real API.

The split is read from `local.kubeapi.KubeApiServer` through the official client,
and the requests go over HTTP to simulated model versions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes.client
import numpy as np
import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats

from functions.core.events import ExperimentRef
from functions.core.resources import KFSERVING, KNATIVE, KSERVE, ObjectRef
from local.kubeapi import KubeApiServer
from local.loadgen import (
    NO_RESPONSE,
    Share,
    TrafficGenerator,
    TrafficStats,
    read_split,
    route_split,
)
from local.servers import ModelVersion, Profile

ALPHA = 1e-4  # two-sided tail below which a count is inconsistent with the split
ISTIO = "networking.istio.io/v1beta1"
NS = "default"
# The experiment the rollout calls act for (the target is adopted on its first move).
HOLDER = ExperimentRef(NS, "exp", "uid-1")


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer() as server:
        yield server


@pytest.fixture(scope="module")
def api(kube: KubeApiServer) -> Iterator[kubernetes.client.ApiClient]:
    client = kube.api_client()
    yield client
    client.close()


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def sent(generator: TrafficGenerator) -> int:
    return sum(generator.stats().sent.values())


def isvc(name: str, percent: int | None, *, ready: str = "rev-2") -> dict[str, Any]:
    predictor: dict[str, Any] = {"model": {"modelFormat": {"name": "sklearn"}}}
    if percent is not None:
        predictor["canaryTrafficPercent"] = percent
    return {
        "apiVersion": KSERVE,
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"predictor": predictor},
        "status": {
            "components": {
                "predictor": {
                    "latestRolledoutRevision": "rev-1",
                    "latestCreatedRevision": "rev-2",
                    "latestReadyRevision": ready,
                }
            }
        },
    }


KSERVE_REF = ObjectRef(KSERVE, "InferenceService", NS, "isvc")


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (isvc("isvc", 30), {"rev-1": 70.0, "rev-2": 30.0}),
        (isvc("isvc", 0), {"rev-1": 100.0, "rev-2": 0.0}),
        # No canaryTrafficPercent, or 100: KServe promotes the latest ready revision.
        (isvc("isvc", None), {"rev-2": 100.0}),
        (isvc("isvc", 100), {"rev-2": 100.0}),
        # A latest revision that is not ready gets nothing, whatever the percent says.
        (isvc("isvc", 30, ready="rev-1"), {"rev-1": 100.0}),
    ],
)
def test_kserve_split_follows_canary_traffic_percent(
    obj: dict[str, Any], expected: dict[str, float]
) -> None:
    shares = read_split(KSERVE_REF, obj)
    # Per revision: Knative resolves a latest target to the latest *ready* revision, so a
    # revision can serve two targets (the `latest` one and the `prev` one).
    split: dict[str, float] = {}
    for share in shares:
        split[share.keys[0]] = split.get(share.keys[0], 0.0) + share.percent
    assert split == expected


def test_kserve_first_revision_takes_everything_once_ready() -> None:
    status = {"components": {"predictor": {"latestCreatedRevision": "rev-1"}}}
    assert read_split(KSERVE_REF, {"status": status}) == ()
    status["components"]["predictor"]["latestReadyRevision"] = "rev-1"
    assert read_split(KSERVE_REF, {"status": status}) == (Share(("rev-1",), 100.0),)


def test_kfserving_split_by_default_and_canary() -> None:
    ref = ObjectRef(KFSERVING, "InferenceService", NS, "isvc")
    status = {
        "default": {"predictor": {"name": "isvc-default-00001"}},
        "canary": {"predictor": {"name": "isvc-canary-00001"}},
    }
    spec: dict[str, Any] = {"default": {}, "canary": {}, "canaryTrafficPercent": 25}
    assert read_split(ref, {"spec": spec, "status": status}) == (
        Share(("isvc-default-00001", "default"), 75.0),
        Share(("isvc-canary-00001", "canary"), 25.0),
    )
    # Promoted or rolled back: no canary, everything to the default.
    assert read_split(ref, {"spec": {"default": {}}}) == (Share(("default",), 100.0),)


def test_knative_split_by_revision_tag_and_latest() -> None:
    ref = ObjectRef(KNATIVE, "Service", NS, "svc")
    obj = {
        "spec": {
            "traffic": [
                {"revisionName": "svc-00001", "percent": 50},
                {"tag": "candidate", "revisionName": "svc-00002", "percent": 30},
                {"latestRevision": True, "percent": 20},
            ]
        },
        "status": {"latestReadyRevisionName": "svc-00003"},
    }
    assert read_split(ref, obj) == (
        Share(("svc-00001",), 50.0),
        Share(("svc-00002", "candidate"), 30.0),
        Share(("svc-00003",), 20.0),
    )
    assert read_split(ref, {"status": obj["status"]}) == (Share(("svc-00003",), 100.0),)


def test_istio_split_by_route_weight() -> None:
    ref = ObjectRef(ISTIO, "VirtualService", NS, "vs")
    routes = [
        {"destination": {"host": "v1.default.svc.cluster.local"}, "weight": 60},
        {"destination": {"host": "models", "subset": "v2"}, "weight": 40},
    ]
    assert read_split(ref, {"spec": {"http": [{"route": routes}]}}) == (
        Share(("v1.default.svc.cluster.local", "v1"), 60.0),
        Share(("v2", "models"), 40.0),
    )
    lone = {"destination": {"host": "v1.default.svc.cluster.local"}}  # no weight: all of it
    assert read_split(ref, {"spec": {"http": [{"route": [lone]}]}})[0].percent == 100.0


def test_unknown_kinds_and_destinations() -> None:
    with pytest.raises(ValueError, match="no known traffic router"):
        read_split(ObjectRef("apps/v1", "Deployment", NS, "d"), {})
    shares = (Share(("rev-1",), 60.0), Share(("rev-9", "other"), 40.0))
    assert route_split(shares, {"rev-1": "http://x"}) == {"rev-1": 60.0, None: 40.0}


def test_rate_is_kept_in_simulated_time_up_to_the_wall_clock_cap(
    api: kubernetes.client.ApiClient,
) -> None:
    def rate(rps: float, scale: float) -> tuple[float, float]:
        generator = TrafficGenerator(
            api, KSERVE_REF, {}, rps, np.random.default_rng(0), scale, instances=[[0.0] * 4]
        )
        return generator.rate.simulated_rps, generator.rate.wall_rps

    assert rate(2.0, 10.0) == (2.0, 20.0)
    assert rate(20.0, 100.0) == (3.0, 300.0)  # capped at 300 req/s of wall clock


def binomial_ok(
    stats_before: TrafficStats, stats_after: TrafficStats, version: str, p: float
) -> bool:
    def count(s: TrafficStats, v: str) -> int:
        return s.sent.get(v, 0)

    hits = count(stats_after, version) - count(stats_before, version)
    n = sum(stats_after.sent.values()) - sum(stats_before.sent.values())
    return bool(stats.binomtest(hits, n, p).pvalue > ALPHA)


@pytest.mark.slow
def test_routes_a_canary_split_and_follows_its_changes(
    kube: KubeApiServer, api: kubernetes.client.ApiClient
) -> None:
    kube.seed("serving.kserve.io", "v1beta1", "inferenceservices", NS, isvc("canary", 30))
    objects = kubernetes.client.CustomObjectsApi(api)

    def set_percent(percent: int | None) -> None:
        body = {"spec": {"predictor": {"canaryTrafficPercent": percent}}}
        objects.patch_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", NS, "inferenceservices", "canary", body
        )

    rng = np.random.default_rng(7)
    fast = Profile(latency_median_ms=1.0, latency_sigma=0.0)
    # Both processes launched before either is waited for: they start side by side.
    v1 = ModelVersion("canary", "rev-1", fast, rng.spawn(1)[0], knative="1.18").launch()
    v2 = ModelVersion("canary", "rev-2", fast, rng.spawn(1)[0], knative="1.18").launch()
    with v1, v2:
        ref = ObjectRef(KSERVE, "InferenceService", NS, "canary")
        generator = TrafficGenerator(
            api, ref, {"rev-1": v1.url, "rev-2": v2.model_url}, 3.0, rng, time_scale=100.0
        )
        with generator:
            start = generator.stats()
            assert start.split == {"rev-1": 70.0, "rev-2": 30.0}  # read before the first send
            wait_until(lambda: sent(generator) >= 600)
            first = generator.stats()

            set_percent(80)
            assert generator.wait_for_split({"rev-1": 20, "rev-2": 80})
            switched = generator.stats()
            wait_until(lambda: sent(generator) >= sum(switched.sent.values()) + 600)
            second = generator.stats()

            set_percent(None)  # promotion: the latest ready revision takes everything
            assert generator.wait_for_split({"rev-2": 100})
            promoted = generator.stats()
            wait_until(lambda: sent(generator) >= sum(promoted.sent.values()) + 50)
        final = generator.stats()

        served = {v.revision: _served(v) for v in (v1, v2)}

    assert binomial_ok(start, first, "rev-2", 0.3)
    assert binomial_ok(switched, second, "rev-2", 0.8)
    assert final.sent["rev-1"] == promoted.sent["rev-1"]  # nothing to rev-1 after promotion
    assert final.sent["rev-2"] >= promoted.sent["rev-2"] + 50
    # Every request sent was answered, and each version counted what it answered.
    assert final.responses == {v: {200: n} for v, n in final.sent.items()}
    assert served == final.sent
    assert final.unrouted == 0 and final.split_errors == 0 and final.split_reads > 3


def _served(version: ModelVersion) -> int:
    """Requests the version counted, from its /metrics as Prometheus would scrape it (the
    OpenCensus queue-proxy's revision_app_request_count: the versions play Knative 1.18)."""
    text = urllib3.request("GET", version.metrics_url).data.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return int(sum(s.value for s in families["revision_app_request_count"].samples))


def test_reads_a_virtual_service_through_the_api(
    kube: KubeApiServer, api: kubernetes.client.ApiClient
) -> None:
    routes = [
        {"destination": {"host": "iris-a.default.svc.cluster.local"}, "weight": 25},
        {"destination": {"host": "iris-b.default.svc.cluster.local"}, "weight": 75},
    ]
    body = {
        "apiVersion": ISTIO,
        "kind": "VirtualService",
        "metadata": {"name": "iris", "namespace": NS},
        "spec": {"hosts": ["iris.example.com"], "http": [{"route": routes}]},
    }
    kube.seed("networking.istio.io", "v1beta1", "virtualservices", NS, body)
    ref = ObjectRef(ISTIO, "VirtualService", NS, "iris")
    urls = {"iris-a": "http://127.0.0.1:1", "iris-b": "http://127.0.0.1:2"}
    generator = TrafficGenerator(
        api, ref, urls, 1.0, np.random.default_rng(0), instances=[[0.0] * 4]
    )
    assert generator.refresh() == {"iris-a": 25.0, "iris-b": 75.0}


def test_a_missing_target_routes_nothing(api: kubernetes.client.ApiClient) -> None:
    ref = ObjectRef(KSERVE, "InferenceService", NS, "absent")
    generator = TrafficGenerator(
        api, ref, {"rev-1": "http://127.0.0.1:1"}, 200.0, np.random.default_rng(0)
    )
    with generator:
        wait_until(lambda: generator.stats().unrouted >= 20)
    final = generator.stats()
    assert final.sent == {} and final.split is None and final.split_errors >= 1


@pytest.mark.slow
def test_a_slow_version_does_not_hold_back_the_schedule(
    kube: KubeApiServer, api: kubernetes.client.ApiClient
) -> None:
    kube.seed("serving.kserve.io", "v1beta1", "inferenceservices", NS, isvc("slow", 0))
    slow = Profile(latency_median_ms=500.0, latency_sigma=0.0)
    ref = ObjectRef(KSERVE, "InferenceService", NS, "slow")
    with ModelVersion("slow", "rev-1", slow, np.random.default_rng(1)) as version:
        generator = TrafficGenerator(
            api, ref, {"rev-1": version.url}, 50.0, np.random.default_rng(2), workers=2
        )
        started = time.monotonic()
        with generator:
            # 40 arrivals at 50/s take ~0.8 s; two workers on 500 ms requests send ~4 of them.
            wait_until(lambda: sum(generator.stats().sent.values()) + generator.stats().shed >= 40)
            elapsed = time.monotonic() - started
        final = generator.stats()
    assert elapsed < 3.0
    assert final.shed > final.sent["rev-1"]
    assert final.sent["rev-1"] <= 2 * (elapsed / 0.5 + 1)
    assert sum(final.responses["rev-1"].values()) == final.sent["rev-1"]
    assert NO_RESPONSE not in final.responses["rev-1"]


# -- the backends' webhooks, as the emulator enforces them, and promotion through them ------


def _refusal(call: Callable[[], Any]) -> str:
    with pytest.raises(kubernetes.client.ApiException) as refused:
        call()
    assert refused.value.status == 400
    return str(refused.value.body)


def knative_service(name: str, traffic: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": KNATIVE,
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        # Knative's CRD requires a container (config/core/300-resources/service.yaml).
        "spec": {
            "template": {"spec": {"containers": [{"image": "ghcr.io/arbiter/model:1"}]}},
            "traffic": traffic,
        },
    }


def test_the_emulator_refuses_latest_revision_false_without_a_revision_name(
    kube: KubeApiServer, api: kubernetes.client.ApiClient
) -> None:
    """knative/serving pkg/apis/serving/v1/route_validation.go (knative-v1.23.0):
    `TrafficTarget.Validate` starts with `validateLatestRevision`, which denies a spec entry
    whose `latestRevision` disagrees with having a `revisionName` — so the entry Arbiter used
    to write for a tagged version, `{tag, percent, latestRevision: false}`, is refused."""
    objects = kubernetes.client.CustomObjectsApi(api)
    g, v, p = "serving.knative.dev", "v1", "services"
    unpinned = [
        {"revisionName": "svc-1", "percent": 80, "latestRevision": False},
        {"tag": "next", "percent": 20, "latestRevision": False},
    ]
    body = knative_service("unpinned", unpinned)
    message = _refusal(lambda: objects.create_namespaced_custom_object(g, v, NS, p, body))
    assert "spec.traffic[1].latestRevision" in message
    assert kube.get(g, v, p, NS, "unpinned") is None

    pinned = [unpinned[0], {**unpinned[1], "revisionName": "svc-2"}]
    objects.create_namespaced_custom_object(g, v, NS, p, knative_service("pinned", pinned))
    patch = {"spec": {"traffic": unpinned}}
    message = _refusal(lambda: objects.patch_namespaced_custom_object(g, v, NS, p, "pinned", patch))
    assert "may not set revisionName '' when latestRevision is false" in message
    sums_to_90 = {"spec": {"traffic": [{**pinned[0], "percent": 70}, pinned[1]]}}
    message = _refusal(
        lambda: objects.patch_namespaced_custom_object(g, v, NS, p, "pinned", sums_to_90)
    )
    assert "sum to 90, want 100" in message
    assert kube.get(g, v, p, NS, "pinned")["spec"]["traffic"] == pinned


def kfserving_isvc(name: str, default: str, canary: str | None, percent: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"default": {"predictor": {default: {"storageUri": f"gs://{default}"}}}}
    if canary is not None:
        spec["canary"] = {"predictor": {canary: {"storageUri": f"gs://{canary}"}}}
        spec["canaryTrafficPercent"] = percent
    return {
        "apiVersion": KFSERVING,
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def test_the_emulator_refuses_a_kfserving_predictor_with_two_frameworks(
    api: kubernetes.client.ApiClient,
) -> None:
    """kfserving v0.4.1 pkg/apis/serving/v1alpha2/predictor.go: `getPredictor` fails with
    ExactlyOnePredictorViolatedError ("Exactly one of [Custom, ONNX, Tensorflow, Triton,
    SKLearn, XGBoost] must be specified in PredictorSpec") unless one framework is set, and
    inferenceservice_validation.go runs it for the default and the canary on create and
    update."""
    objects = kubernetes.client.CustomObjectsApi(api)
    g, v, p = "serving.kubeflow.org", "v1alpha2", "inferenceservices"
    body = kfserving_isvc("two", "sklearn", None, 0)
    body["spec"]["default"]["predictor"]["xgboost"] = {"storageUri": "gs://x"}
    message = _refusal(lambda: objects.create_namespaced_custom_object(g, v, NS, p, body))
    assert "spec.default.predictor: exactly one of" in message
    assert "['sklearn', 'xgboost']" in message


def _context(api: kubernetes.client.ApiClient) -> Any:
    from functions.adapters.kubernetes import KubeObjects
    from functions.core.context import Context
    from functions.core.settings import Settings
    from functions.runtime import SystemClock

    unused: Any = None  # rollout reads and patches objects only
    return Context(
        store=unused,
        objects=KubeObjects(api),
        metrics=unused,
        sink=unused,
        pings=unused,
        clock=SystemClock(),
        settings=Settings(readback_timeout_seconds=10.0),
    )


def _experiment(version_info: dict[str, Any]) -> Any:
    from analytics.parse import parse_experiment

    doc = {
        "apiVersion": "arbiter.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "e", "namespace": NS},
        "spec": {
            "target": f"{NS}/x",
            "strategy": {"testingPattern": "Canary", "deploymentPattern": "Progressive"},
            "versionInfo": version_info,
        },
    }
    return parse_experiment(doc, require_versions=False)


@pytest.mark.slow
def test_a_kfserving_promotion_across_frameworks_is_accepted_and_takes_effect(
    kube: KubeApiServer, api: kubernetes.client.ApiClient
) -> None:
    from functions.core import rollout
    from functions.core.backends import backend_for
    from local.controllers import TrafficControllers

    g, v, p = "serving.kubeflow.org", "v1alpha2", "inferenceservices"
    objects = kubernetes.client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(
        g, v, NS, p, kfserving_isvc("iris-kfs", "sklearn", "xgboost", 10)
    )
    ref = {"apiVersion": KFSERVING, "kind": "InferenceService", "name": "iris-kfs"}
    exp = _experiment(
        {"baseline": {"name": "sk"}, "candidates": [{"name": "xgb", "weightObjRef": ref}]}
    )
    backend = backend_for(exp.spec, NS)
    ctx = _context(api)
    with TrafficControllers(api, period_s=0.05):
        assert rollout.set_split(ctx, backend, {"sk": 40, "xgb": 60}, holder=HOLDER) == {
            "sk": 40,
            "xgb": 60,
        }
        canary_revision = kube.get(g, v, p, NS, "iris-kfs")["status"]["canary"]["predictor"]
        # What promotion used to send: merged into the default, both frameworks remain.
        old = {"spec": {"default": {"predictor": {"xgboost": {}}}, "canary": None}}
        message = _refusal(
            lambda: objects.patch_namespaced_custom_object(g, v, NS, p, "iris-kfs", old)
        )
        assert "['sklearn', 'xgboost']" in message
        assert rollout.promote(ctx, backend, "xgb", holder=HOLDER) == {"sk": 100, "xgb": 0}
    stored = kube.get(g, v, p, NS, "iris-kfs")
    assert stored["spec"] == {"default": {"predictor": {"xgboost": {"storageUri": "gs://xgboost"}}}}
    assert stored["status"]["default"]["predictor"]["name"] == canary_revision["name"]
    assert "canary" not in stored["status"] and stored["status"]["canaryTraffic"] == 0


@pytest.mark.slow
def test_a_knative_split_by_tag_is_accepted_and_reported(
    kube: KubeApiServer, api: kubernetes.client.ApiClient
) -> None:
    from functions.core import rollout
    from functions.core.backends import backend_for
    from local.controllers import TrafficControllers

    g, v, p = "serving.knative.dev", "v1", "services"
    traffic = [
        {"revisionName": "ks-1", "percent": 100, "latestRevision": False},
        {"tag": "next", "revisionName": "ks-2", "percent": 0, "latestRevision": False},
    ]
    kube.seed(g, v, p, NS, {**knative_service("ks", traffic), "status": {"traffic": traffic}})
    ksvc = {"apiVersion": KNATIVE, "kind": "Service", "name": "ks"}
    exp = _experiment(
        {
            "baseline": {
                "name": "v1",
                "weightObjRef": ksvc,
                "variables": [{"name": "revision", "value": "ks-1"}],
            },
            "candidates": [{"name": "v2", "variables": [{"name": "tag", "value": "next"}]}],
        }
    )
    backend = backend_for(exp.spec, NS)
    ctx = _context(api)
    with TrafficControllers(api, period_s=0.05):
        assert rollout.set_split(ctx, backend, {"v1": 70, "v2": 30}, holder=HOLDER) == {
            "v1": 70,
            "v2": 30,
        }
        assert rollout.promote(ctx, backend, "v2", holder=HOLDER) == {"v1": 0, "v2": 100}
    stored = kube.get(g, v, p, NS, "ks")
    assert stored["spec"]["traffic"][1] == {
        "revisionName": "ks-2",
        "tag": "next",
        "percent": 100,
        "latestRevision": False,
    }
