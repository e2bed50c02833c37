"""Manual control over in-memory ports (functions/core/control.py, honoured by the clock in
functions/core/sweep.py): pause freezes the split and the interval, abort rolls back with
reason Aborted, promote is itself the recorded decision, a request is handled once by its
id, and a request that cannot be honoured is recorded as refused, never raised.
"""

from __future__ import annotations

from typing import Any

from cloudevents.http import CloudEvent

from functions.core import control, sweep
from functions.core.events import APISERVER_UPDATE, DUE, MEASURED
from functions.core.settings import Settings
from functions.core.status import Stage, Status, Version
from tests.fakes import (
    BASELINE_REVISION,
    CANDIDATE_REVISION,
    INTERVAL,
    T0,
    World,
    added,
    canary_percent,
    condition,
    deleted,
    experiment,
    kserve_world,
    ping,
    serve,
)
from tests.support.stages import apiserver_event

NS = "demo"
A = "iris-canary"


def world(errors: int = 2, **spec: Any) -> World:
    """A running canary; by default its candidate is too close to the error limit for the
    analysis to decide for many iterations (errors=0: it is promoted at the first look)."""
    w = kserve_world(NS)
    serve(w.metrics, BASELINE_REVISION, ok=200, errors=0)
    serve(w.metrics, CANDIDATE_REVISION, ok=200 - errors, errors=errors)
    w.publish(added(w.store.add(experiment(namespace=NS, name=A, **spec))))
    return w


def tick(w: World, seconds: float = INTERVAL) -> None:
    w.clock.advance(seconds)
    w.publish(ping())


def status(w: World) -> dict[str, Any]:
    return w.store.status(NS, A)


def request(w: World, action: str, request_id: str, **fields: Any) -> None:
    """What `arbiter <action>` writes: spec.control and the pending label."""
    stored = w.store.experiments[(NS, A)]
    stored["spec"]["control"] = {"action": action, "id": request_id, **fields}
    stored["metadata"].setdefault("labels", {})[control.PENDING_LABEL] = "true"
    stored["metadata"]["generation"] = stored["metadata"].get("generation", 1) + 1


def labelled(w: World) -> bool:
    return control.PENDING_LABEL in (w.store.stored(NS, A)["metadata"].get("labels") or {})


def update_event(w: World) -> CloudEvent:
    """What the arbiter-control source sends for the labelled Experiment."""
    ev = apiserver_event("update", w.store.stored(NS, A))
    ev[control.EXTENSION] = control.EXTENSION_VALUE
    return ev


def test_pause_freezes_the_split_and_the_interval_and_resume_shifts_the_deadline() -> None:
    w = world()
    tick(w)
    assert status(w)["completedIterations"] == 1
    split = canary_percent(w.objects)
    request(w, "pause", "p1", reason="investigating", requestedBy="ann")
    tick(w, 10)  # the clock honours it on its next tick

    paused = status(w)
    assert paused["pausedAt"]
    assert condition(paused, "Paused")["status"] == "True"
    assert paused["control"]["appliedId"] == "p1"
    assert not labelled(w), "handled: the label comes off"
    for _ in range(5):
        tick(w)
    assert status(w)["completedIterations"] == 1, "nothing measured while paused"
    assert canary_percent(w.objects) == split, "the split in force keeps serving"

    # Paused 10 s into the interval, for 310 s: the iteration is due 50 s after resuming.
    request(w, "resume", "r1")
    tick(w, 10)
    resumed = status(w)
    assert "pausedAt" not in resumed
    assert resumed["pausedSeconds"] == 310
    assert condition(resumed, "Paused")["status"] == "False"
    tick(w, 45)
    assert status(w)["completedIterations"] == 1, "the interval did not run while paused"
    tick(w, 10)
    assert status(w)["completedIterations"] == 2


def test_paused_time_counts_toward_the_maximum_duration() -> None:
    w = world()
    w.settings = Settings(readback_timeout_seconds=1.0, max_experiment_seconds=600)
    tick(w)
    request(w, "pause", "p1")
    tick(w)
    for _ in range(9):
        tick(w)
    ended = status(w)
    assert ended["stage"] == "Failed"
    assert condition(ended, "Failed")["reason"] == "MaxDurationExceeded"
    assert "pausedAt" not in ended and ended["pausedSeconds"] > 0
    assert canary_percent(w.objects) == 0


def test_abort_rolls_back_with_reason_aborted() -> None:
    w = world()
    tick(w)
    assert canary_percent(w.objects), "the candidate takes traffic"
    request(w, "abort", "a1", reason="bad dashboards", requestedBy="ann")
    tick(w, 5)
    ended = status(w)
    assert ended["stage"] == "Failed" and ended["outcome"] == "Aborted"
    failed = condition(ended, "Failed")
    assert failed["reason"] == "Aborted"
    assert "ann" in failed["message"] and "bad dashboards" in failed["message"]
    assert ended["control"] == {
        "appliedId": "a1",
        "action": "abort",
        "appliedAt": ended["control"]["appliedAt"],
        "reason": "bad dashboards",
        "requestedBy": "ann",
    }
    assert canary_percent(w.objects) == 0, "baseline restored"


def test_promote_is_the_recorded_decision_and_the_version_serves_everything() -> None:
    w = world()
    tick(w)
    request(w, "promote", "m1", version=CANDIDATE_REVISION, reason="looks good")
    # Sooner than the next tick: the control source's update, routed by the gated Trigger
    # (which World's type-only routing does not know), then what it causes, as published.
    assert w.deliver("iterate", update_event(w)) == 200
    for ev in list(w.sink.events):
        if ev["type"].endswith("concluded"):
            w.publish(ev)
    ended = status(w)
    assert ended["outcome"] == "Promoted"
    assert ended["recommendation"]["action"] == "promote"
    assert ended["recommendation"]["version"] == CANDIDATE_REVISION
    assert ended["recommendation"]["rule"] == control.MANUAL_RULE
    assert "looks good" in ended["recommendation"]["message"]
    assert ended["versionRecommendedForPromotion"] == CANDIDATE_REVISION
    assert {w["name"]: w["value"] for w in ended["currentWeightDistribution"]} == {
        BASELINE_REVISION: 0,
        CANDIDATE_REVISION: 100,
    }


def test_the_update_event_drives_the_clock_for_that_experiment_only() -> None:
    w = world()
    tick(w)
    request(w, "pause", "p1")
    assert w.deliver("iterate", update_event(w)) == 200
    assert status(w)["pausedAt"]
    assert not labelled(w)
    # Once the label is off, the label-selected watch reports the object "deleted": finish
    # must leave the experiment (still stored) and its traffic alone.
    split = canary_percent(w.objects)
    assert w.deliver("finish", deleted(w.store.stored(NS, A))) == 200
    assert status(w)["stage"] == "Running"
    assert canary_percent(w.objects) == split


def test_a_request_is_handled_once() -> None:
    w = world()
    tick(w)
    request(w, "pause", "p1")
    tick(w, 5)
    first = status(w)["control"]
    tick(w, 5)
    w.deliver("iterate", update_event(w))
    assert status(w)["control"] == first, "the same id again: nothing changes"
    request(w, "resume", "r1")
    tick(w, 5)
    assert status(w)["control"]["appliedId"] == "r1"
    assert "pausedAt" not in status(w)


REFUSED = [
    ({"action": "promote", "version": CANDIDATE_REVISION}, "reason"),
    ({"action": "promote", "reason": "x"}, "--version"),
    ({"action": "promote", "reason": "x", "version": "nope"}, "'nope' is not a version"),
    ({"action": "abort"}, "needs a reason"),
    ({"action": "explode"}, "'explode' is not one of"),
]


def test_requests_that_cannot_be_honoured_are_recorded_as_refused() -> None:
    w = world()
    tick(w)
    split = canary_percent(w.objects)
    for i, (fields, words) in enumerate(REFUSED):
        action = fields.pop("action")
        request(w, action, f"bad{i}", **fields)
        tick(w, 1)
        recorded = status(w)
        assert recorded["control"]["appliedId"] == f"bad{i}"
        assert words in recorded["control"]["refused"], recorded["control"]
        assert condition(recorded, "ControlApplied")["reason"] == "Refused"
        assert recorded["stage"] == "Running"
        assert not labelled(w)
    assert canary_percent(w.objects) == split
    assert set(w.stage_answers("iterate")) == {200}


def test_promote_on_conformance_is_refused() -> None:
    obj = experiment(namespace=NS, name=A, strategy={"testingPattern": "Conformance"})
    obj["spec"]["control"] = {"action": "promote", "id": "m1", "version": "v1", "reason": "x"}
    running = Status(stage=Stage.RUNNING, versions=(Version("v1"),))
    result = control.applied(obj, running, T0)
    assert result is not None
    refused, decision = result
    assert decision is None
    assert refused.stage is Stage.RUNNING and refused.recommendation is None
    assert refused.control is not None and refused.control.refused
    assert "Conformance" in refused.control.refused
    # Pause and abort are a Conformance experiment's as much as any.
    obj["spec"]["control"] = {"action": "abort", "id": "a1", "reason": "x"}
    result = control.applied(obj, running, T0)
    assert result is not None and result[1] is not None and result[1].reason == "Aborted"


def test_a_request_after_the_end_is_refused() -> None:
    w = world()
    tick(w)
    request(w, "abort", "a1", reason="stop")
    tick(w, 1)
    request(w, "promote", "m1", version=CANDIDATE_REVISION, reason="too late")
    tick(w, 1)
    ended = status(w)
    assert ended["outcome"] == "Aborted"
    assert "has ended" in ended["control"]["refused"]


def test_pause_holds_a_measurement_already_asked_for() -> None:
    w = world()
    w.clock.advance(INTERVAL)
    # The tick asks for the measurement, but the due event is held back (in flight).
    sweep.sweep(w.ctx)
    (due,) = w.sink.of_type(DUE)
    request(w, "pause", "p1")
    w.publish(due)
    assert not w.sink.of_type(MEASURED), "a pause asked for holds iterate too"
    assert status(w).get("completedIterations") == 0


def test_manual_promotion_waits_for_a_person_then_promotes() -> None:
    w = world(
        errors=0,
        strategy={
            "testingPattern": "Canary",
            "deploymentPattern": "Progressive",
            "weights": {"maxCandidateWeight": 100, "maxCandidateWeightIncrement": 20},
            "promotion": "Manual",
        },
    )
    for _ in range(12):
        tick(w)
        if status(w).get("awaitingPromotion"):
            break
    waiting = status(w)
    assert waiting["stage"] == "Running", "never promoted on its own"
    assert waiting["awaitingPromotion"]["version"] == CANDIDATE_REVISION
    assert condition(waiting, "AwaitingPromotion")["status"] == "True"
    assert waiting["recommendation"]["action"] == "continue"
    done, split = waiting["completedIterations"], canary_percent(w.objects)
    for _ in range(3):
        tick(w)
    assert status(w)["completedIterations"] == done, "no more iterations while waiting"
    assert canary_percent(w.objects) == split, "the split in force keeps serving"
    assert status(w)["stage"] == "Running"

    request(w, "promote", "m1", version=BASELINE_REVISION, reason="keep the old one")
    tick(w, 1)
    ended = status(w)
    assert ended["outcome"] == "Promoted"
    assert ended["versionRecommendedForPromotion"] == BASELINE_REVISION
    assert condition(ended, "AwaitingPromotion")["status"] == "False"
    assert "awaitingPromotion" not in ended
    assert canary_percent(w.objects) == 0


def test_an_update_without_a_request_changes_nothing() -> None:
    w = world()
    tick(w)
    before = w.store.stored(NS, A)
    assert w.deliver("iterate", update_event(w)) == 200
    assert w.store.stored(NS, A) == before
    assert APISERVER_UPDATE not in {e["type"] for e in w.sink.events}
