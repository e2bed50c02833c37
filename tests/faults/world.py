"""The objects a fault run plays with: fixed metric histories, Experiments, their targets.

Histories are Knative queue-proxy series, one namespace per kind of candidate, backfilled
into a real Prometheus once per process (see conftest.py):
- `good`, `other`, `spare`: the candidate as healthy as the baseline (0.5% errors, 40 ms);
- `bad`: the candidate answers 10% of requests with a 5xx;
- `reset`: like `good`, but every counter of the candidate resets to 0 half-way through
  (a restarted queue-proxy), which `increase()` must see through;
- `abn`: three revisions behind an Istio VirtualService, all healthy, the third fastest.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Final

from tests.support.prometheus import OpenMetrics

T0: Final = 1_767_225_600  # 2026-01-01T00:00:00Z: the histories start here, counters at 0
STEP: Final = 10
MINUTES: Final = 45
INTERVAL: Final = 60
BUCKETS: Final = (10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, math.inf)
RESET_AT_STEP: Final = 15  # two and a half minutes in

BASELINE: Final = "iris-predictor-00001"
CANDIDATE: Final = "iris-predictor-00002"
ABN: Final = ("abn-a", "abn-b", "abn-c")

# (namespace, revision, requests per step at `ms`, 5xx per step at 300 ms, ms, resets)
REVISIONS: Final = (
    *(
        (ns, rev, 200, 1, 40.0, False)
        for ns in ("good", "other", "spare")
        for rev in (BASELINE, CANDIDATE)
    ),
    ("bad", BASELINE, 200, 1, 40.0, False),
    ("bad", CANDIDATE, 180, 20, 40.0, False),
    ("reset", BASELINE, 200, 1, 40.0, False),
    ("reset", CANDIDATE, 200, 1, 40.0, True),
    ("abn", "abn-a", 200, 1, 80.0, False),
    ("abn", "abn-b", 200, 1, 60.0, False),
    ("abn", "abn-c", 200, 1, 20.0, False),
)


def history() -> str:
    om = OpenMetrics()
    steps = MINUTES * 60 // STEP
    for namespace, revision, ok, errors, fast_ms, resets in REVISIONS:
        for code, n, ms in ((200, ok, fast_ms), (500, errors, 300.0)):
            labels = {
                "namespace_name": namespace,
                "configuration_name": "iris-predictor",
                "revision_name": revision,
                "response_code": str(code),
                "response_code_class": f"{code // 100}xx",
            }

            def count(i: int, n: int = n, resets: bool = resets) -> int:
                return (i - RESET_AT_STEP if resets and i >= RESET_AT_STEP else i) * n

            om.histogram(
                "revision_app_request_latencies",
                labels,
                (
                    (
                        T0 + i * STEP,
                        {b: (count(i) if ms <= b else 0) for b in BUCKETS},
                        count(i) * ms,
                    )
                    for i in range(steps + 1)
                ),
            )
    return om.text()


def inference_service(namespace: str, name: str = "iris") -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "predictor": {
                "canaryTrafficPercent": 0,
                "sklearn": {"storageUri": "gs://kfserving-examples/models/sklearn/1.0/model-2"},
            }
        },
        "status": {
            "components": {
                "predictor": {
                    "latestRolledoutRevision": BASELINE,
                    "latestCreatedRevision": CANDIDATE,
                    "latestReadyRevision": CANDIDATE,
                }
            }
        },
    }


def virtual_service(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": "iris", "namespace": namespace},
        "spec": {
            "hosts": [f"iris.{namespace}.example.com"],
            "http": [
                {
                    "route": [
                        {"destination": {"host": f"{v}.{namespace}.svc"}, "weight": w}
                        for v, w in zip(ABN, (100, 0, 0), strict=True)
                    ]
                }
            ],
        },
    }


def canary(
    namespace: str,
    name: str = "iris-canary",
    *,
    target: str | None = None,
    iterations: int = 8,
    interval: int | str = INTERVAL,
    deployment: str = "Progressive",
) -> dict[str, Any]:
    strategy: dict[str, Any] = {"testingPattern": "Canary", "deploymentPattern": deployment}
    if deployment == "Progressive":
        strategy["weights"] = {"maxCandidateWeight": 80, "maxCandidateWeightIncrement": 20}
    return {
        "apiVersion": "arbiter.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "target": target or f"{namespace}/iris",
            "strategy": strategy,
            "criteria": {
                "requestCount": "request-count",
                "objectives": [
                    {"metric": "error-rate", "upperLimit": "0.01"},
                    {"metric": "latency", "upperLimit": 250, "quantile": 0.95},
                ],
            },
            "duration": {"intervalSeconds": interval, "iterationsPerLoop": iterations},
        },
    }


def bluegreen(namespace: str, name: str = "iris-bluegreen") -> dict[str, Any]:
    return canary(namespace, name, deployment="BlueGreen")


def abn(namespace: str = "abn", name: str = "iris-abn", iterations: int = 8) -> dict[str, Any]:
    def version(i: int, v: str) -> dict[str, Any]:
        return {
            "name": v,
            "variables": [{"name": "revision", "value": v}],
            "weightObjRef": {
                "apiVersion": "networking.istio.io/v1beta1",
                "kind": "VirtualService",
                "name": "iris",
                "namespace": namespace,
                "fieldPath": f".spec.http[0].route[{i}].weight",
            },
        }

    return {
        "apiVersion": "arbiter.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "target": f"{namespace}/iris",
            "strategy": {
                "testingPattern": "A/B/n",
                "deploymentPattern": "Progressive",
                "weights": {"maxCandidateWeight": 80, "maxCandidateWeightIncrement": 20},
            },
            "criteria": {
                "requestCount": "request-count",
                "rewards": [{"metric": "mean-latency", "preferredDirection": "Low"}],
                "objectives": [{"metric": "error-rate", "upperLimit": "0.02"}],
            },
            "duration": {"intervalSeconds": INTERVAL, "iterationsPerLoop": iterations},
            "versionInfo": {
                "baseline": version(0, ABN[0]),
                "candidates": [version(i, v) for i, v in enumerate(ABN[1:], 1)],
            },
        },
    }


def renamed(doc: dict[str, Any], name: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["metadata"]["name"] = name
    return out
