"""The restore finalizer and the holder annotation through the official client.

Against the emulated API server (local.kubeapi) with the KServe controller stand-in:
start puts the finalizer on the Experiment and the holder annotation on the
InferenceService; a delete through the client only marks the Experiment; restore_deleted
restores the baseline, reads it back, releases the target and lets the deletion complete.
A stale take of the target loses with a 409, as two racing starts would.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from functions.adapters.kubernetes import KubeExperimentStore, KubeObjects, KubePingSources
from functions.core import finish, ownership, start, status
from functions.core.backends import Patch, backend_for
from functions.core.context import Context
from functions.core.errors import ConflictError
from functions.core.events import ExperimentRef
from functions.core.resources import KSERVE, ObjectRef
from functions.core.settings import Settings
from local.controllers import TrafficControllers
from local.harness import seed_metric_library
from local.kubeapi import KubeApiServer
from tests.support.stages import ManualClock, QueueSink, apiserver_event

pytestmark = pytest.mark.slow

NS = "demo"
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
EXPERIMENTS = ("arbiter.dev", "v1alpha1", "experiments")
ISVC_REF = ObjectRef(KSERVE, "InferenceService", NS, "iris")


class NoMetrics:
    def measure(self, *_: Any) -> Any:
        raise AssertionError("start and finish read no metrics")


@pytest.fixture
def cluster() -> Iterator[tuple[KubeApiServer, client.ApiClient]]:
    with KubeApiServer() as server:
        api = server.api_client()
        with TrafficControllers(api, period_s=0.05):
            yield server, api
        api.close()


def seed(server: KubeApiServer) -> dict[str, Any]:
    seed_metric_library(server, {NS})
    server.seed(
        *ISVC,
        NS,
        {
            "apiVersion": KSERVE,
            "kind": "InferenceService",
            "metadata": {"name": "iris", "namespace": NS},
            "spec": {"predictor": {"canaryTrafficPercent": 0, "sklearn": {"storageUri": "gs://m"}}},
            "status": {
                "components": {
                    "predictor": {
                        "latestRolledoutRevision": "iris-predictor-00001",
                        "latestCreatedRevision": "iris-predictor-00002",
                        "latestReadyRevision": "iris-predictor-00002",
                    }
                }
            },
        },
    )
    return server.seed(
        *EXPERIMENTS,
        NS,
        {
            "apiVersion": "arbiter.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "iris-canary", "namespace": NS},
            "spec": {
                "target": "iris",
                "strategy": {
                    "testingPattern": "Canary",
                    "deploymentPattern": "Progressive",
                    "weights": {"maxCandidateWeight": 100, "maxCandidateWeightIncrement": 20},
                },
                "criteria": {
                    "requestCount": "request-count",
                    "objectives": [{"metric": "error-rate", "upperLimit": "0.01"}],
                },
                "duration": {"intervalSeconds": 60, "iterationsPerLoop": 8},
            },
        },
    )


def context(api: client.ApiClient) -> tuple[Context, QueueSink]:
    sink = QueueSink()
    ctx = Context(
        store=KubeExperimentStore(api),
        objects=KubeObjects(api),
        metrics=NoMetrics(),
        sink=sink,
        pings=KubePingSources(api),
        clock=ManualClock(datetime(2026, 1, 1, 0, 1, tzinfo=UTC)),
        settings=Settings(readback_timeout_seconds=5),
    )
    return ctx, sink


def test_a_deletion_waits_for_the_restore_and_the_target_is_released(
    cluster: tuple[KubeApiServer, client.ApiClient],
) -> None:
    server, api = cluster
    obj = seed(server)
    ctx, _ = context(api)
    start.handle(ctx, apiserver_event("add", obj))
    custom = client.CustomObjectsApi(api)
    stored = custom.get_namespaced_custom_object(*EXPERIMENTS[:2], NS, "experiments", "iris-canary")
    assert stored["status"]["stage"] == "Running"
    assert stored["metadata"]["finalizers"] == [ownership.FINALIZER]
    meta = stored["metadata"]
    isvc = custom.get_namespaced_custom_object(*ISVC[:2], NS, ISVC[2], "iris")
    assert isvc["metadata"]["annotations"][ownership.HELD_BY] == (f"{NS}/iris-canary/{meta['uid']}")
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 20

    custom.delete_namespaced_custom_object(*EXPERIMENTS[:2], NS, "experiments", "iris-canary")
    marked = custom.get_namespaced_custom_object(*EXPERIMENTS[:2], NS, "experiments", "iris-canary")
    assert marked["metadata"]["deletionTimestamp"], "the finalizer holds the deletion"

    finish.restore_deleted(ctx, status.ref_of(marked))
    isvc = custom.get_namespaced_custom_object(*ISVC[:2], NS, ISVC[2], "iris")
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
    traffic = isvc["status"]["components"]["predictor"]["traffic"]
    assert [t["percent"] for t in traffic if t.get("latestRevision")] in ([0], [])
    assert ownership.HELD_BY not in (isvc["metadata"].get("annotations") or {})
    assert server.get(*EXPERIMENTS, NS, "iris-canary") is None, "the deletion completed"


def test_a_stale_take_of_the_target_loses_to_the_holder(
    cluster: tuple[KubeApiServer, client.ApiClient],
) -> None:
    server, api = cluster
    seed(server)
    ctx, _ = context(api)
    objects = KubeObjects(api)
    seen = objects.get(ISVC_REF)
    # The first start takes it. The controller stand-in writes the status every 50 ms, so
    # that conditional take may itself lose to a status write: it reads again and retries,
    # as `ensure_held` does (CI saw the 409 on a loaded machine).
    for _ in range(50):
        fresh = objects.get(ISVC_REF)["metadata"]["resourceVersion"]
        body = {
            "metadata": {
                "resourceVersion": fresh,
                "annotations": {ownership.HELD_BY: "demo/a/uid-a"},
            }
        }
        try:
            objects.patch(Patch(ISVC_REF, "merge", body))
            break
        except ConflictError:
            continue
    else:
        raise AssertionError("the first take lost to status writes 50 times running")
    # A second start that read the object before the first took it: its conditional patch
    # is refused (409), it reads the object again and finds the first holding it.
    with pytest.raises(ownership.NotHolderError, match="held by experiment demo/a/uid-a"):
        ownership.ensure_held(
            ctx,
            _model(ctx),
            ExperimentRef(NS, "b", "uid-b"),
            {ISVC_REF: seen},
        )
    assert objects.get(ISVC_REF)["metadata"]["annotations"][ownership.HELD_BY] == "demo/a/uid-a"


def test_a_take_that_loses_only_to_a_status_write_is_tried_again_and_holds(
    cluster: tuple[KubeApiServer, client.ApiClient],
) -> None:
    """The target's controller writes its status all the time, and each write moves the
    resourceVersion the conditional take carries: such a 409 is not a rival's take."""
    server, api = cluster
    seed(server)
    ctx, _ = context(api)
    objects = KubeObjects(api)
    seen = objects.get(ISVC_REF)
    objects.patch(Patch(ISVC_REF, "merge", {"metadata": {"labels": {"touched": "yes"}}}))
    ownership.ensure_held(ctx, _model(ctx), ExperimentRef(NS, "b", "uid-b"), {ISVC_REF: seen})
    assert objects.get(ISVC_REF)["metadata"]["annotations"][ownership.HELD_BY] == "demo/b/uid-b"


def _model(ctx: Context) -> Any:
    experiment = status.resolved_experiment(ctx.store.get(ExperimentRef(NS, "iris-canary")))
    return backend_for(experiment.spec, NS)
