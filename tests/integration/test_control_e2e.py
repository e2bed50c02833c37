"""Manual control end to end: `arbiter pause|resume|abort|promote` against the Kubernetes API
emulator, honoured by the four functions (functions-framework apps) reading real Prometheus.

The CLI writes spec.control and the control-pending label with a merge patch; the next
clock tick (or, sooner, the arbiter-control source's update event, delivered to iterate as
its Trigger routes it) applies it: pause freezes the split across ticks, abort restores the
baseline with reason Aborted, promote serves the named version and records the decision,
and under `promotion: Manual` nothing is promoted until a person says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

import cli
from functions.core import control
from local.harness import seed_metric_library
from local.kubeapi import KubeApiServer
from tests.integration.test_functions_e2e import (
    EXPERIMENTS,
    INTERVAL,
    ISVC,
    cluster,
    experiment,
    inference_service,
    pipeline,
    prometheus,
    seed,
)
from tests.support.stages import ManualClock, Pipeline, apiserver_event

pytestmark = pytest.mark.slow

__all__ = ["cluster", "prometheus"]  # the fixtures, shared with test_functions_e2e

NS = "good"  # revisions close enough to the limit that deciding takes several looks
NAME = "iris-canary"
CANDIDATE = "iris-predictor-00002"
BASELINE = "iris-predictor-00001"


@pytest.fixture
def kubeconfig(
    cluster: tuple[KubeApiServer, client.ApiClient],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _ = cluster
    monkeypatch.setenv("KUBECONFIG", str(server.write_kubeconfig(tmp_path / "config", NS)))


def arbiter(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tick(p: Pipeline, seconds: float = INTERVAL) -> None:
    clock = p.ctx.clock
    assert isinstance(clock, ManualClock)
    clock.advance(seconds)
    p.ping()


def stored(server: KubeApiServer) -> dict[str, Any]:
    obj = server.get(*EXPERIMENTS, NS, NAME)
    assert obj is not None
    return obj


def status_of(server: KubeApiServer) -> dict[str, Any]:
    return dict(stored(server).get("status") or {})


def canary(server: KubeApiServer) -> Any:
    return (server.get(*ISVC, NS, "iris") or {})["spec"]["predictor"].get("canaryTrafficPercent")


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == kind)


def started(server: KubeApiServer, api: client.ApiClient, url: str) -> Pipeline:
    """The experiment added and one iteration in: the candidate takes 40% (20 to start)."""
    obj = seed(server, NS)
    p = pipeline(api, url)
    p.publish(apiserver_event("add", obj))
    tick(p)
    assert status_of(server)["completedIterations"] == 1
    assert canary(server) == 40
    return p


def control_update(server: KubeApiServer) -> Any:
    """What the arbiter-control source sends for the labelled Experiment."""
    event = apiserver_event("update", stored(server))
    event[control.EXTENSION] = control.EXTENSION_VALUE
    return event


def test_pause_freezes_the_split_across_ticks_and_resume_goes_on(
    cluster: tuple[KubeApiServer, client.ApiClient],
    prometheus: str,
    kubeconfig: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, api = cluster
    p = started(server, api, prometheus)
    try:
        code, out, err = arbiter(capsys, "pause", NAME, "--reason", "dashboards look odd")
        assert (code, err) == (0, "")
        assert "requested pause of experiment good/iris-canary" in out
        assert "next clock tick" in out
        spec = stored(server)["spec"]["control"]
        assert spec["action"] == "pause" and spec["id"]
        assert stored(server)["metadata"]["labels"][control.PENDING_LABEL] == "true"

        # Sooner than the tick: the update event, delivered twice (a duplicate).
        assert p.deliver("iterate", control_update(server)) == 200
        first = status_of(server)["control"]
        assert p.deliver("iterate", control_update(server)) == 200
        assert status_of(server)["control"] == first, "applied once"
        assert first["appliedId"] == spec["id"] and "refused" not in first
        assert control.PENDING_LABEL not in (stored(server)["metadata"].get("labels") or {})
        for _ in range(3):
            tick(p)
        paused = status_of(server)
        assert paused["completedIterations"] == 1, "nothing measured while paused"
        assert canary(server) == 40, "the split in force keeps serving"
        assert condition(paused, "Paused")["status"] == "True"

        code, out, _ = arbiter(capsys, "describe", NAME)
        assert code == 0
        assert "Paused:      since" in out
        assert "Control:     pause by" in out and "dashboards look odd" in out

        assert arbiter(capsys, "resume", NAME)[0] == 0
        tick(p, 1)
        resumed = status_of(server)
        assert "pausedAt" not in resumed and resumed["pausedSeconds"] >= 3 * INTERVAL
        # The interval did not run while paused: 1 s in, then the rest of it.
        tick(p)
        assert status_of(server)["completedIterations"] == 2
    finally:
        p.close()
    assert set(p.answers()) == {200}, [d for d in p.deliveries if d.status != 200]


def test_abort_restores_the_baseline_with_reason_aborted(
    cluster: tuple[KubeApiServer, client.ApiClient],
    prometheus: str,
    kubeconfig: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, api = cluster
    p = started(server, api, prometheus)
    try:
        assert arbiter(capsys, "abort", NAME)[0] == 2, "abort needs --reason"
        code, _, err = arbiter(
            capsys, "abort", NAME, "--reason", "incident 42", "--requested-by", "ann"
        )
        assert (code, err) == (0, "")
        tick(p, 1)
    finally:
        p.close()
    status = status_of(server)
    assert (status["stage"], status["outcome"]) == ("Failed", "Aborted")
    failed = condition(status, "Failed")
    assert failed["reason"] == "Aborted"
    assert "ann" in failed["message"] and "incident 42" in failed["message"]
    assert status["control"]["action"] == "abort" and status["control"]["requestedBy"] == "ann"
    assert canary(server) == 0
    assert status["currentWeightDistribution"][0] == {"name": BASELINE, "value": 100}


def test_promote_serves_the_named_version_with_the_decision_in_status(
    cluster: tuple[KubeApiServer, client.ApiClient],
    prometheus: str,
    kubeconfig: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, api = cluster
    p = started(server, api, prometheus)
    try:
        assert arbiter(capsys, "promote", NAME, "--reason", "x")[0] == 2, "needs --version"
        code, _, err = arbiter(capsys, "promote", NAME, "--version", "nope", "--reason", "x")
        assert code == 2 and "not a version of good/iris-canary" in err
        code, _, err = arbiter(
            capsys, "promote", NAME, "--version", CANDIDATE, "--reason", "load test passed"
        )
        assert (code, err) == (0, "")
        p.publish(control_update(server))  # not routed: only the gated Trigger takes it
        assert p.deliver("iterate", control_update(server)) == 200
        concluded = [e for e in p.sink.emitted if e["type"].endswith("concluded")]
        p.publish(concluded[-1])
    finally:
        p.close()
    status = status_of(server)
    assert (status["stage"], status["outcome"]) == ("Completed", "Promoted")
    assert status["recommendation"]["rule"] == control.MANUAL_RULE
    assert status["recommendation"]["version"] == CANDIDATE
    assert "load test passed" in status["recommendation"]["message"]
    assert status["currentWeightDistribution"] == [
        {"name": BASELINE, "value": 0},
        {"name": CANDIDATE, "value": 100},
    ]
    assert canary(server) is None or canary(server) == 100


def test_promote_on_conformance_is_refused_by_the_cli(
    cluster: tuple[KubeApiServer, client.ApiClient],
    kubeconfig: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, _ = cluster
    doc = experiment(NS)
    doc["spec"]["strategy"] = {"testingPattern": "Conformance"}
    server.seed(*EXPERIMENTS, NS, doc)
    code, _, err = arbiter(capsys, "promote", NAME, "--version", BASELINE, "--reason", "x")
    assert code == 2 and "Conformance" in err
    assert "control" not in stored(server)["spec"], "nothing written"
    assert arbiter(capsys, "pause", "no-such-experiment")[0] == 2


def test_manual_promotion_waits_for_a_person_then_promotes(
    cluster: tuple[KubeApiServer, client.ApiClient],
    prometheus: str,
    kubeconfig: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, api = cluster
    seed_metric_library(server, {NS})
    server.seed(*ISVC, NS, inference_service(NS))
    doc = experiment(NS)
    doc["spec"]["strategy"]["promotion"] = "Manual"
    p = pipeline(api, prometheus)
    try:
        p.publish(apiserver_event("add", server.seed(*EXPERIMENTS, NS, doc)))
        for _ in range(12):
            tick(p)
            if status_of(server).get("awaitingPromotion"):
                break
        waiting = status_of(server)
        assert waiting["stage"] == "Running"
        assert waiting["awaitingPromotion"]["version"] == CANDIDATE
        done, split = waiting["completedIterations"], canary(server)
        for _ in range(3):
            tick(p)
        assert status_of(server)["completedIterations"] == done
        assert status_of(server)["stage"] == "Running", "never promoted on its own"
        assert canary(server) == split
        out = arbiter(capsys, "describe", NAME)[1]
        assert "Awaiting:    manual promotion, iris-predictor-00002 recommended" in out

        assert arbiter(capsys, "promote", NAME, "--version", CANDIDATE, "--reason", "ok")[0] == 0
        tick(p, 1)
    finally:
        p.close()
    status = status_of(server)
    assert (status["stage"], status["outcome"]) == ("Completed", "Promoted")
    assert status["versionRecommendedForPromotion"] == CANDIDATE
    assert condition(status, "AwaitingPromotion")["status"] == "False"
