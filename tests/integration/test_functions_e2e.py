"""start → iterate → assess → finish, end to end, through the broker contract.

Real pieces: the four functions served by functions-framework (test client, binary and
structured CloudEvents), the official kubernetes client against the emulated API server
(with the KServe controller stand-in reporting traffic in status), and the real Prometheus
loaded with fixed queue-proxy histories and queried at the functions' clock, so every
measurement is exact. Events are routed by `functions.core.events.TRIGGERS`, the same
contract the Trigger manifests encode.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from kubernetes import client

from functions.adapters.kubeevents import KubeEventRecorder
from functions.adapters.kubernetes import KubeExperimentStore, KubeObjects, KubePingSources
from functions.adapters.prometheus import PrometheusSource
from functions.core import events
from functions.core.context import Context
from functions.core.settings import Settings
from functions.core.story import StoryTeller
from local.controllers import TrafficControllers
from local.harness import seed_metric_library
from local.kubeapi import KubeApiServer
from tests.support.prometheus import OpenMetrics, PrometheusTSDB, missing_binaries
from tests.support.stages import ManualClock, Pipeline, QueueSink, apiserver_event

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z: the histories start here, counters at 0
STEP = 10
MINUTES = 15
BUCKETS = (10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, math.inf)
INTERVAL = 60
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
EXPERIMENTS = ("arbiter.dev", "v1alpha1", "experiments")

# (namespace, revision, requests per 10 s step at 40 ms, 5xx per step at 300 ms)
REVISIONS = (
    ("good", "iris-predictor-00001", 200, 1),
    ("good", "iris-predictor-00002", 200, 1),
    ("bad", "iris-predictor-00001", 200, 1),
    ("bad", "iris-predictor-00002", 180, 20),
)


def history() -> str:
    om = OpenMetrics()
    for namespace, revision, ok, errors in REVISIONS:
        for code, n, ms in ((200, ok, 40.0), (500, errors, 300.0)):
            labels = {
                "namespace_name": namespace,
                "configuration_name": "iris-predictor",
                "revision_name": revision,
                "response_code": str(code),
                "response_code_class": f"{code // 100}xx",
            }
            steps = MINUTES * 60 // STEP
            om.histogram(
                "revision_app_request_latencies",
                labels,
                (
                    (T0 + i * STEP, {b: (i * n if ms <= b else 0) for b in BUCKETS}, i * n * ms)
                    for i in range(steps + 1)
                ),
            )
    return om.text()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = missing_binaries()
    assert not missing, f"{missing} not installed: run `make os-deps`"
    db = PrometheusTSDB(tmp_path_factory.mktemp("e2e-prometheus"))
    db.backfill(history())
    with db:
        yield db.url


@contextlib.contextmanager
def emulated_cluster() -> Iterator[tuple[KubeApiServer, client.ApiClient]]:
    with KubeApiServer() as server:
        api = server.api_client()
        with TrafficControllers(api, period_s=0.05):
            yield server, api
        api.close()


@pytest.fixture
def cluster() -> Iterator[tuple[KubeApiServer, client.ApiClient]]:
    with emulated_cluster() as pair:
        yield pair


def inference_service(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "iris", "namespace": namespace},
        "spec": {
            "predictor": {
                "canaryTrafficPercent": 0,
                "sklearn": {"storageUri": "gs://kfserving-examples/models/sklearn/1.0/model-2"},
            }
        },
        "status": {
            "components": {
                "predictor": {
                    "latestRolledoutRevision": "iris-predictor-00001",
                    "latestCreatedRevision": "iris-predictor-00002",
                    "latestReadyRevision": "iris-predictor-00002",
                }
            }
        },
    }


def experiment(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "arbiter.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "iris-canary", "namespace": namespace},
        "spec": {
            "target": f"{namespace}/iris",
            "strategy": {
                "testingPattern": "Canary",
                "deploymentPattern": "Progressive",
                "weights": {"maxCandidateWeight": 100, "maxCandidateWeightIncrement": 20},
            },
            "criteria": {
                "requestCount": "request-count",
                "objectives": [
                    {"metric": "error-rate", "upperLimit": "0.01"},
                    {"metric": "latency", "upperLimit": 250, "quantile": 0.95},
                ],
            },
            "duration": {"intervalSeconds": INTERVAL, "iterationsPerLoop": 8},
        },
    }


def seed(server: KubeApiServer, namespace: str) -> dict[str, Any]:
    seed_metric_library(server, {namespace})
    server.seed(*ISVC, namespace, inference_service(namespace))
    return server.seed(*EXPERIMENTS, namespace, experiment(namespace))


def pipeline(api: client.ApiClient, url: str, structured: bool = False) -> Pipeline:
    clock = ManualClock(datetime.fromtimestamp(T0 + 60, UTC))
    sink = QueueSink()
    recorder = KubeEventRecorder(api, "arbiter.dev/functions", "e2e")
    ctx = Context(
        store=StoryTeller(KubeExperimentStore(api), recorder, clock),
        objects=KubeObjects(api),
        metrics=PrometheusSource(url, timeout_s=5, retries=0),
        sink=sink,
        pings=KubePingSources(api),
        clock=clock,
        settings=Settings(readback_timeout_seconds=5),
    )
    return Pipeline(ctx, sink, structured=structured)


def run_to_end(p: Pipeline, server: KubeApiServer, namespace: str) -> dict[str, Any]:
    obj = server.get(*EXPERIMENTS, namespace, "iris-canary")
    assert obj is not None
    p.publish(apiserver_event("add", obj))
    clock = p.ctx.clock
    assert isinstance(clock, ManualClock)
    for _ in range(12):
        current = server.get(*EXPERIMENTS, namespace, "iris-canary") or {}
        if (current.get("status") or {}).get("stage") in ("Completed", "Failed"):
            return current
        clock.advance(INTERVAL)
        p.ping()
    raise AssertionError(f"not finished after 12 intervals: {current.get('status')}")


def story(api: client.ApiClient, namespace: str) -> list[tuple[str, str, str]]:
    """`kubectl get events -n <namespace>` about the experiment: (type, reason, note), in
    the order they happened."""
    listed = client.EventsV1Api(api).list_namespaced_event(namespace).items
    about = [e for e in listed if e.regarding.name == "iris-canary"]
    about.sort(key=lambda e: (e.event_time, int(e.metadata.resource_version)))
    return [(e.type, e.reason, e.note) for e in about]


def canary_history(server: KubeApiServer, namespace: str) -> list[int | None]:
    """Every distinct canaryTrafficPercent the InferenceService's spec went through."""
    seen: list[int | None] = []
    for version in server.history(*ISVC, namespace, "iris"):
        value = ((version or {}).get("spec") or {}).get("predictor", {}).get("canaryTrafficPercent")
        if not seen or seen[-1] != value:
            seen.append(value)
    return seen


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_a_good_candidate_is_ramped_up_then_promoted(
    cluster: tuple[KubeApiServer, client.ApiClient], prometheus: str, structured: bool
) -> None:
    server, api = cluster
    seed(server, "good")
    p = pipeline(api, prometheus, structured)
    try:
        final = run_to_end(p, server, "good")
    finally:
        p.close()
    status = final["status"]
    assert status["stage"] == "Completed", status
    assert status["outcome"] == "Promoted"
    assert status["versionRecommendedForPromotion"] == "iris-predictor-00002"
    assert status["currentWeightDistribution"] == [
        {"name": "iris-predictor-00001", "value": 0},
        {"name": "iris-predictor-00002", "value": 100},
    ]
    ramp = canary_history(server, "good")
    assert ramp[0] == 0 and ramp[1] == 20 and ramp[-1] == 100, ramp
    assert ramp == sorted(ramp), f"a good canary's weight never goes down: {ramp}"
    # the ramp moves by at most the increment; only the promotion itself jumps to 100
    assert len(ramp) > 3, f"evidence this close to the limit takes several looks: {ramp}"
    assert all(b - a <= 20 for a, b in itertools.pairwise(ramp[:-1])), ramp
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Completed"] == "True" and conditions["VersionsReady"] == "True"
    assert "Failed" not in conditions
    assert set(p.answers()) == {200}, [d for d in p.deliveries if d.status != 200]
    types = [d.type for d in p.deliveries]
    assert types.count(events.CONCLUDED) == 1 and types.count(events.FINISHED) == 1
    told = story(api, "good")
    reasons = [r for _, r, _ in told]
    assert reasons[0] == "Started" and reasons[-1] == "Promoted", told
    assert reasons.count("Concluded") == reasons.count("Promoted") == 1
    moves = [n for _, r, n in told if r == "TrafficMoved"]
    assert len(moves) == len(ramp) - 1, (moves, ramp)  # every split read back, told once
    assert moves[-1].endswith(f"iris-predictor-00002 {ramp[-2]} → 100"), moves
    assert all(t == "Normal" for t, _, _ in told), told


def test_a_candidate_with_ten_percent_errors_is_rolled_back_at_the_first_look(
    cluster: tuple[KubeApiServer, client.ApiClient], prometheus: str
) -> None:
    server, api = cluster
    seed(server, "bad")
    p = pipeline(api, prometheus)
    try:
        final = run_to_end(p, server, "bad")
    finally:
        p.close()
    status = final["status"]
    assert status["stage"] == "Completed", status
    assert status["outcome"] == "RolledBack"
    assert status["completedIterations"] == 1
    assert status["recommendation"]["rule"] == "objective-violated"
    assert "error-rate" in status["recommendation"]["message"]
    assert canary_history(server, "bad") == [0, 20, 0]
    assert status["currentWeightDistribution"][0] == {"name": "iris-predictor-00001", "value": 100}
    evidence = status["analysis"]["evidence"]["versions"]["iris-predictor-00002"]
    error_rate = next(e for e in evidence if e["metric"] == "error-rate")
    assert error_rate["verdict"] == "violated"
    # exact: 60 s of 180 ok + 20 failed per 10 s step, read at the functions' clock
    assert error_rate["sampleSize"] == pytest.approx(1200.0)
    assert error_rate["estimate"] == pytest.approx(0.1)
    told = story(api, "bad")
    assert [r for _, r, _ in told if r in ("Started", "Concluded", "RolledBack")] == [
        "Started",
        "Concluded",
        "RolledBack",
    ], told
    assert (
        "Warning",
        "ObjectiveViolated",
        "iris-predictor-00002: error-rate undecided → violated, estimate 0.1",
    ) in told
    assert [n for _, r, n in told if r == "TrafficMoved"] == [
        "iris-predictor-00001 → 80, iris-predictor-00002 → 20",
        "iris-predictor-00001 80 → 100, iris-predictor-00002 20 → 0",
    ]


def test_repeated_and_stale_events_are_acknowledged_and_change_nothing(
    cluster: tuple[KubeApiServer, client.ApiClient], prometheus: str
) -> None:
    server, api = cluster
    seed(server, "good")
    p = pipeline(api, prometheus)
    try:
        obj = server.get(*EXPERIMENTS, "good", "iris-canary")
        assert obj is not None
        p.publish(apiserver_event("add", obj))
        clock = p.ctx.clock
        assert isinstance(clock, ManualClock)
        clock.advance(INTERVAL)
        p.ping()
        measured = next(e for e in p.sink.emitted if e["type"] == events.MEASURED)
        before = server.get(*EXPERIMENTS, "good", "iris-canary")
        assert before is not None and before["status"]["completedIterations"] == 1
        emitted = len(p.sink.emitted)
        # the same measurement again, the add again, and an event about an older namesake
        assert p.deliver("assess", copy.deepcopy(measured)) == 200
        assert p.deliver("start", apiserver_event("add", obj)) == 200
        stale = copy.deepcopy(measured)
        stale[events.EXT_UID] = "some-earlier-uid"
        assert p.deliver("assess", stale) == 200
        after = server.get(*EXPERIMENTS, "good", "iris-canary")
        assert after is not None
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        # a step found recorded is acknowledged, and its follow-up is not sent again
        assert p.sink.emitted[emitted:] == []
    finally:
        p.close()


def test_a_bad_spec_fails_with_a_condition_naming_the_field(
    cluster: tuple[KubeApiServer, client.ApiClient], prometheus: str
) -> None:
    server, api = cluster
    bad = experiment("good")
    bad["spec"]["strategy"]["testingPattern"] = "Canary"
    bad["spec"]["versionInfo"] = {
        "baseline": {"name": "a"},
        "candidates": [{"name": "b"}, {"name": "c"}],
    }
    obj = server.seed(*EXPERIMENTS, "good", bad)
    p = pipeline(api, prometheus)
    try:
        assert p.deliver("start", apiserver_event("add", obj)) == 422
    finally:
        p.close()
    status = (server.get(*EXPERIMENTS, "good", "iris-canary") or {})["status"]
    assert status["stage"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert (
        "spec.versionInfo.candidates: Canary needs exactly 1 candidate, got 2"
        in (failed["message"])
    )


def test_a_ping_fans_out_one_due_event_per_running_experiment(
    cluster: tuple[KubeApiServer, client.ApiClient], prometheus: str
) -> None:
    server, api = cluster
    objs = [seed(server, ns) for ns in ("good", "bad")]
    p = pipeline(api, prometheus)
    try:
        for obj in objs:
            p.publish(apiserver_event("add", obj))
        clock = p.ctx.clock
        assert isinstance(clock, ManualClock)
        clock.advance(INTERVAL)
        before = len(p.sink.emitted)
        ping = CloudEvent({"type": events.PING, "source": "/apis/v1/pingsources/arbiter"}, {})
        assert p.deliver("iterate", ping) == 200
        emitted = p.sink.emitted[before:]
    finally:
        p.close()
    # the tick only hands out work: one due event per experiment, nothing measured in it
    assert [e["type"] for e in emitted] == [events.DUE, events.DUE]
    assert {e[events.EXT_NAMESPACE] for e in emitted} == {"good", "bad"}
    assert {e[events.EXT_ITERATION] for e in emitted} == {"1"}


def test_a_second_experiment_on_a_target_waits_then_starts_when_the_first_ends(
    cluster: tuple[KubeApiServer, client.ApiClient], prometheus: str
) -> None:
    server, api = cluster
    first = seed(server, "bad")
    second_doc = experiment("bad")
    second_doc["metadata"]["name"] = "iris-canary-2"
    second = server.seed(*EXPERIMENTS, "bad", second_doc)
    p = pipeline(api, prometheus)
    try:
        p.publish(apiserver_event("add", first))
        p.publish(apiserver_event("add", second))
        waiting = (server.get(*EXPERIMENTS, "bad", "iris-canary-2") or {})["status"]
        assert waiting["stage"] == "Waiting"
        assert "bad/iris-canary" in waiting["message"] and "bad/iris" in waiting["message"]
        acquired = next(c for c in waiting["conditions"] if c["type"] == "TargetAcquired")
        assert (acquired["status"], acquired["reason"]) == ("False", "TargetBusy")
        run_to_end(p, server, "bad")  # the first is rolled back; finished frees the target
        after = (server.get(*EXPERIMENTS, "bad", "iris-canary-2") or {})["status"]
    finally:
        p.close()
    assert after["stage"] in ("Running", "Finishing", "Completed"), after


def test_measurements_the_analysis_cannot_use_end_the_experiment_safely(
    cluster: tuple[KubeApiServer, client.ApiClient], prometheus: str
) -> None:
    server, api = cluster
    obj = seed(server, "good")
    p = pipeline(api, prometheus)
    try:
        p.publish(apiserver_event("add", obj))
        current = server.get(*EXPERIMENTS, "good", "iris-canary") or {}
        ref = events.ExperimentRef("good", "iris-canary", current["metadata"]["uid"])
        broken = {
            "aggregatedMetrics": {
                "data": {
                    "latency": {
                        "data": {
                            "iris-predictor-00001": {"buckets": [{"le": "+Inf", "count": 10}]},
                            "iris-predictor-00002": {"value": 3},
                        }
                    }
                }
            }
        }
        # as iterate would have recorded them: authentic, and unusable
        measured = events.make_event(events.MEASURED, ref, 1, broken)
        digest = events.parse(measured, events.Measured).payload.digest
        record = {"iteration": 1, "requestedAt": "2026-01-01T00:02:00Z", "digest": digest}
        store = KubeExperimentStore(api)
        current = store.get(ref)
        store.write_status(current, {**current["status"], "measurement": record})
        p.publish(measured)
    finally:
        p.close()
    assert 422 in p.answers("assess")
    status = (server.get(*EXPERIMENTS, "good", "iris-canary") or {})["status"]
    assert status["stage"] == "Failed" and status["outcome"] == "Aborted"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "AnalysisFailed" and "mixes histogram" in failed["message"]
    isvc = server.get(*ISVC, "good", "iris") or {}
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0, "baseline restored"


def forged_promotion(namespace: str) -> CloudEvent:
    """What the issue posted to the broker: a conclusion naming the experiment by namespace,
    name and iteration only (no uid), promoting the candidate."""
    return CloudEvent(
        {
            "type": events.CONCLUDED,
            "source": "somebody",
            "id": "forged-1",
            events.EXT_NAMESPACE: namespace,
            events.EXT_NAME: "iris-canary",
            events.EXT_ITERATION: "7",
        },
        {"action": "promote", "version": "iris-predictor-00002"},
    )


def test_forged_events_promote_nothing_and_the_measurements_decide(
    cluster: tuple[KubeApiServer, client.ApiClient], prometheus: str
) -> None:
    server, api = cluster
    obj = seed(server, "bad")  # the candidate answers 10 % of its requests with errors
    p = pipeline(api, prometheus)
    try:
        p.publish(apiserver_event("add", obj))
        running = server.get(*EXPERIMENTS, "bad", "iris-canary") or {}
        assert running["status"]["stage"] == "Running"
        # 1. a conclusion without the uid: refused before anything is read
        p.publish(forged_promotion("bad"))
        assert p.deliveries[-1].stage == "finish" and p.deliveries[-1].status == 422
        assert "experimentuid" in p.deliveries[-1].body
        # 2. measurements iterate never took, showing a flawless candidate
        ref = events.ExperimentRef("bad", "iris-canary", running["metadata"]["uid"])
        flawless = {
            "measuredAt": "2026-01-01T00:01:30Z",
            "aggregatedMetrics": {
                "data": {
                    "request-count": {
                        "data": {
                            "iris-predictor-00001": {"value": 1e4},
                            "iris-predictor-00002": {"value": 1e4},
                        }
                    },
                    "error-rate": {
                        "data": {
                            "iris-predictor-00001": {"events": 0, "trials": 1e4},
                            "iris-predictor-00002": {"events": 0, "trials": 1e4},
                        }
                    },
                }
            },
        }
        p.publish(events.make_event(events.MEASURED, ref, 1, flawless))
        assert p.deliveries[-1].stage == "assess" and p.deliveries[-1].status == 422
        after = server.get(*EXPERIMENTS, "bad", "iris-canary") or {}
        assert after["metadata"]["resourceVersion"] == running["metadata"]["resourceVersion"]
        assert canary_history(server, "bad") == [0, 20], "nothing was promoted"
        # the experiment goes on, and its own measurements roll the candidate back
        final = run_to_end(p, server, "bad")
    finally:
        p.close()
    assert (final["status"]["stage"], final["status"]["outcome"]) == ("Completed", "RolledBack")
    assert canary_history(server, "bad") == [0, 20, 0]


def test_a_stale_rollback_for_an_earlier_iteration_is_ignored(
    cluster: tuple[KubeApiServer, client.ApiClient], prometheus: str
) -> None:
    server, api = cluster
    obj = seed(server, "good")
    p = pipeline(api, prometheus)
    try:
        p.publish(apiserver_event("add", obj))
        clock = p.ctx.clock
        assert isinstance(clock, ManualClock)
        for _ in range(2):
            clock.advance(INTERVAL)
            p.ping()
        at_two = server.get(*EXPERIMENTS, "good", "iris-canary") or {}
        assert (at_two["status"]["stage"], at_two["status"]["completedIterations"]) == (
            "Running",
            2,
        )
        ref = events.ExperimentRef("good", "iris-canary", at_two["metadata"]["uid"])
        stale = events.make_event(
            events.CONCLUDED, ref, 1, {"action": "rollback", "version": "iris-predictor-00001"}
        )
        p.publish(stale)
        assert p.deliveries[-1].stage == "finish" and p.deliveries[-1].status == 200
        after = server.get(*EXPERIMENTS, "good", "iris-canary") or {}
        assert after["metadata"]["resourceVersion"] == at_two["metadata"]["resourceVersion"]
        final = run_to_end(p, server, "good")
    finally:
        p.close()
    assert (final["status"]["stage"], final["status"]["outcome"]) == ("Completed", "Promoted")


def concurrent_copies(p: Pipeline, event: CloudEvent, copies: int) -> None:
    """Route `event` and everything it causes as a broker delivering each event `copies`
    times at once: every wave's deliveries run on their own threads, together."""
    p.sink.queue.append(event)
    with ThreadPoolExecutor(max_workers=32) as pool:
        while p.sink.queue:
            wave = list(p.sink.queue)
            p.sink.queue.clear()
            jobs = [
                pool.submit(p.deliver, stage, copy.deepcopy(e))
                for e in wave
                for stage, types in events.TRIGGERS.items()
                if e["type"] in types
                for _ in range(copies)
            ]
            for job in jobs:
                job.result()


def delivered_with_copies(
    server: KubeApiServer, api: client.ApiClient, url: str, namespace: str, copies: int
) -> tuple[int, tuple[Any, ...], list[tuple[str, str]]]:
    p = pipeline(api, url)
    try:
        obj = server.get(*EXPERIMENTS, namespace, "iris-canary")
        assert obj is not None
        concurrent_copies(p, apiserver_event("add", obj), copies)
        clock = p.ctx.clock
        assert isinstance(clock, ManualClock)
        for _ in range(12):
            status = (server.get(*EXPERIMENTS, namespace, "iris-canary") or {})["status"]
            if status["stage"] in ("Completed", "Failed"):
                break
            clock.advance(INTERVAL)
            ping = CloudEvent({"type": events.PING, "source": "/apis/v1/pingsources/x"}, {})
            concurrent_copies(p, ping, copies)
    finally:
        p.close()
    assert set(p.answers()) == {200}, [d for d in p.deliveries if d.status != 200]
    outcome = (status["stage"], status.get("outcome"), status["completedIterations"])
    told = [(reason, note) for _, reason, note in story(api, namespace)]
    return len(p.deliveries), outcome, told


@pytest.mark.parametrize("namespace", ["bad", "good"], ids=["rolled-back", "promoted"])
def test_concurrent_duplicates_cost_at_most_k_times_the_clean_deliveries(
    prometheus: str, namespace: str
) -> None:
    """The issue measured 16 deliveries clean and 1,564 with four concurrent copies."""
    runs = {}
    for copies in (1, 4):
        with emulated_cluster() as (server, api):
            seed(server, namespace)
            runs[copies] = delivered_with_copies(server, api, prometheus, namespace, copies)
    (clean, outcome, told), (delivered, same, retold) = runs[1], runs[4]
    assert outcome[:2] == ("Completed", "RolledBack" if namespace == "bad" else "Promoted")
    assert same == outcome, "the copies changed the experiment"
    # Each status change is told once however many copies ran: the same Events as a clean run.
    assert sorted(retold) == sorted(told), (told, retold)
    assert delivered <= 4 * clean, f"{delivered} deliveries, clean {clean}"
