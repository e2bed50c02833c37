"""The finish stage over in-memory ports: promote, roll back, validate, and clean up a deletion."""

from __future__ import annotations

from typing import Any

import pytest

from analytics.analysis import Action
from functions.core.events import CONCLUDED, EXT_ITERATION, FINISHED, STARTED, Concluded
from functions.core.resources import KNATIVE, KSERVE, ObjectRef
from functions.core.status import CONFLICT_ATTEMPTS
from tests.fakes import (
    BASELINE_REVISION,
    CANDIDATE_REVISION,
    World,
    added,
    canary_percent,
    condition,
    decided,
    deleted,
    event,
    experiment,
    kserve_world,
    payload,
)

NS = "demo"
NAME = "iris-canary"
ISVC = ObjectRef(KSERVE, "InferenceService", NS, "iris")


def running(w: World, name: str = NAME, **spec: Any) -> dict[str, Any]:
    obj = w.store.add(experiment(name=name, **spec))
    assert w.deliver("start", added(obj)) == 200
    return w.store.stored(NS, name)


def concluded(obj: dict[str, Any], **data: Any) -> Any:
    """A conclusion at iteration 3 saying `data`, whatever the status records."""
    return event(CONCLUDED, obj, 3, data)


def conclude(w: World, obj: dict[str, Any], action: str, **fields: Any) -> Any:
    """The decision recorded at iteration 3 (stage Finishing), and the event announcing it."""
    return decided(w.store, obj, Concluded(Action(action), **fields))


def weights(status: dict[str, Any]) -> dict[str, int]:
    return {w["name"]: w["value"] for w in status["currentWeightDistribution"]}


def set_status(w: World, name: str = NAME, **fields: Any) -> None:
    stored = w.store.stored(NS, name)
    w.store.write_status(stored, {**(stored.get("status") or {}), **fields})


def test_a_promotion_moves_all_traffic_to_the_winner_and_completes() -> None:
    w = kserve_world(NS)
    obj = running(w)
    set_status(w, completedIterations=3)
    ev = conclude(
        w, obj, "promote", version=CANDIDATE_REVISION, rule="winner-found", message="promote it"
    )
    mark = len(w.sink.events)
    assert w.deliver("finish", ev) == 200
    status = w.store.status(NS, NAME)
    assert (status["stage"], status["outcome"]) == ("Completed", "Promoted")
    assert status["versionRecommendedForPromotion"] == CANDIDATE_REVISION
    assert status["message"] == "promote it"
    assert weights(status) == {BASELINE_REVISION: 0, CANDIDATE_REVISION: 100}
    done = condition(status, "Completed")
    assert (done["status"], done["reason"], done["message"]) == (
        "True",
        "winner-found",
        "promote it",
    )
    assert canary_percent(w.objects) == 100
    predictor = w.objects.stored(ISVC)["status"]["components"]["predictor"]
    assert predictor["latestRolledoutRevision"] == CANDIDATE_REVISION
    [finished] = w.sink.since(mark)
    assert finished["type"] == FINISHED and finished[EXT_ITERATION] == "3"
    assert payload(finished) == {
        "outcome": "Promoted",
        "stage": "Completed",
        "version": CANDIDATE_REVISION,
        "message": "promote it",
    }


def test_a_rollback_restores_the_baseline_and_completes() -> None:
    w = kserve_world(NS)
    obj = running(w)
    assert canary_percent(w.objects) == 20
    assert w.deliver("finish", conclude(w, obj, "rollback")) == 200
    status = w.store.status(NS, NAME)
    assert (status["stage"], status["outcome"]) == ("Completed", "RolledBack")
    assert status["versionRecommendedForPromotion"] == BASELINE_REVISION
    assert status["message"] == f"rolled back to {BASELINE_REVISION}"
    assert weights(status) == {BASELINE_REVISION: 100, CANDIDATE_REVISION: 0}
    assert canary_percent(w.objects) == 0
    assert condition(status, "Completed")["reason"] == "RolledBack"
    assert payload(w.sink.events[-1])["outcome"] == "RolledBack"


@pytest.mark.parametrize("action", ["rollback", "promote"])
def test_a_failed_experiment_only_ever_rolls_back(action: str) -> None:
    w = kserve_world(NS)
    obj = running(w)
    ev = conclude(
        w,
        obj,
        action,
        version=CANDIDATE_REVISION,
        failed=True,
        reason="TransientFailures",
        message="6 transient failures in a row",
    )
    assert w.deliver("finish", ev) == 200
    status = w.store.status(NS, NAME)
    assert (status["stage"], status["outcome"]) == ("Failed", "Aborted")
    assert status["versionRecommendedForPromotion"] == BASELINE_REVISION
    failed = condition(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "TransientFailures")
    assert failed["message"] == "6 transient failures in a row"
    assert "Completed" not in {c["type"] for c in status["conditions"]}
    assert canary_percent(w.objects) == 0


def test_a_promotion_naming_no_version_rolls_back() -> None:
    w = kserve_world(NS)
    obj = running(w)
    assert w.deliver("finish", conclude(w, obj, "promote")) == 200
    assert w.store.status(NS, NAME)["outcome"] == "RolledBack"
    assert canary_percent(w.objects) == 0


@pytest.mark.parametrize(
    ("action", "failed", "outcome"),
    [
        ("promote", False, "Validated"),
        ("rollback", False, "NotValidated"),
        ("promote", True, "NotValidated"),
    ],
)
def test_conformance_is_validated_or_not_without_moving_traffic(
    action: str, failed: bool, outcome: str
) -> None:
    w = kserve_world(NS)
    obj = running(
        w,
        strategy={"testingPattern": "Conformance", "deploymentPattern": "Progressive"},
        versionInfo={"baseline": {"name": "current"}},
    )
    ev = conclude(w, obj, action, version="current", failed=failed)
    assert w.deliver("finish", ev) == 200
    status = w.store.status(NS, NAME)
    assert status["outcome"] == outcome
    assert status["stage"] == ("Failed" if failed else "Completed")
    assert status["versionRecommendedForPromotion"] == "current"
    assert w.objects.patches == []


def test_a_repeated_conclusion_writes_nothing_and_sends_nothing_again() -> None:
    w = kserve_world(NS)
    obj = running(w)
    once = conclude(w, obj, "rollback")
    w.deliver("finish", once)
    before = w.store.stored(NS, NAME)
    patches, mark = len(w.objects.patches), len(w.sink.events)
    for again in (once, concluded(obj, action="promote", version=CANDIDATE_REVISION)):
        assert w.deliver("finish", again) == 200
    assert w.store.stored(NS, NAME) == before
    assert len(w.objects.patches) == patches
    assert w.sink.since(mark) == [], "a finish per duplicate would multiply the events"


def test_a_conclusion_for_an_experiment_not_holding_its_target_is_ignored() -> None:
    w = kserve_world(NS)
    obj = w.store.add(experiment())
    for stage in (None, "Waiting", "Initializing"):
        if stage:
            set_status(w, stage=stage)
        assert w.deliver("finish", concluded(obj, action="rollback")) == 200, stage
    assert w.sink.events == [] and w.objects.patches == []
    assert w.store.status(NS, NAME)["stage"] == "Initializing"


def test_a_conclusion_about_an_earlier_namesake_changes_nothing() -> None:
    w = kserve_world(NS)
    obj = running(w)
    earlier = {**obj, "metadata": {**obj["metadata"], "uid": "some-earlier-uid"}}
    before, mark = w.store.stored(NS, NAME), len(w.sink.events)
    assert w.deliver("finish", concluded(earlier, action="rollback")) == 200
    assert w.store.stored(NS, NAME) == before
    assert w.sink.since(mark) == [] and canary_percent(w.objects) == 20


def test_a_lost_write_race_is_retried_and_the_outcome_recorded_once() -> None:
    w = kserve_world(NS)
    obj = running(w)
    ev = conclude(w, obj, "rollback")
    writes, mark = len(w.store.writes), len(w.sink.events)
    w.store.conflict(3)
    assert w.deliver("finish", ev) == 200
    assert w.store.status(NS, NAME)["outcome"] == "RolledBack"
    assert len(w.store.writes) == writes + 1
    assert [e["type"] for e in w.sink.since(mark)] == [FINISHED]


def test_a_write_that_keeps_losing_leaves_the_experiment_to_the_redelivery() -> None:
    w = kserve_world(NS)
    obj = running(w)
    ev = conclude(w, obj, "rollback")
    mark = len(w.sink.events)
    w.store.conflict(CONFLICT_ATTEMPTS)
    assert w.deliver("finish", ev) == 503
    assert w.store.status(NS, NAME)["stage"] == "Finishing"
    assert w.sink.since(mark) == []
    assert w.deliver("finish", ev) == 200
    assert w.store.status(NS, NAME)["outcome"] == "RolledBack"


def test_an_outcome_not_yet_reported_by_the_objects_is_not_recorded() -> None:
    w = kserve_world(NS)
    obj = running(w)
    ev = conclude(w, obj, "rollback")
    w.objects.lagging = True
    mark = len(w.sink.events)
    assert w.deliver("finish", ev) == 503
    assert w.store.status(NS, NAME)["stage"] == "Finishing"
    assert w.sink.since(mark) == []
    w.objects.lagging = False
    assert w.deliver("finish", ev) == 200
    assert w.store.status(NS, NAME)["outcome"] == "RolledBack"


def test_a_conclusion_without_a_known_action_is_permanent() -> None:
    w = kserve_world(NS)
    obj = running(w)
    assert w.deliver("finish", concluded(obj, action="celebrate")) == 422
    assert w.store.status(NS, NAME)["stage"] == "Running"


def test_deleting_an_active_experiment_restores_the_baseline_and_frees_the_target() -> None:
    w = kserve_world(NS)
    obj = running(w)
    w.store.add(experiment(name="next"))
    w.deliver("start", added(w.store.stored(NS, "next")))
    assert w.store.status(NS, "next")["stage"] == "Waiting"
    set_status(w, completedIterations=2)
    last = w.store.delete(NS, NAME)
    mark = len(w.sink.events)
    w.publish(deleted(last))
    finished = [e for e in w.sink.since(mark) if e["type"] == FINISHED]
    assert len(finished) == 1 and finished[0][EXT_ITERATION] == "2"
    assert payload(finished[0]) == {"outcome": "Aborted", "reason": "ExperimentDeleted"}
    assert finished[0]["experimentuid"] == obj["metadata"]["uid"]
    # the waiter took the freed target and set its own first split
    assert w.store.status(NS, "next")["stage"] == "Running"
    assert [p.body["spec"]["predictor"]["canaryTrafficPercent"] for p in w.objects.patches] == [
        20,
        0,
        20,
    ]
    assert w.sink.types()[-1] == STARTED


@pytest.mark.parametrize("stage", ["Waiting", "Completed", "Failed"])
def test_deleting_an_experiment_not_holding_traffic_moves_nothing(stage: str) -> None:
    w = kserve_world(NS)
    w.store.add(experiment())
    set_status(w, stage=stage)
    last = w.store.delete(NS, NAME)
    assert w.deliver("finish", deleted(last)) == 200
    assert w.objects.patches == []
    [finished] = w.sink.events
    assert payload(finished) == {"outcome": stage, "reason": "ExperimentDeleted"}


def test_deleting_a_running_conformance_experiment_moves_nothing() -> None:
    w = kserve_world(NS)
    running(
        w,
        strategy={"testingPattern": "Conformance", "deploymentPattern": "Progressive"},
        versionInfo={"baseline": {"name": "current"}},
    )
    last = w.store.delete(NS, NAME)
    assert w.deliver("finish", deleted(last)) == 200
    assert w.objects.patches == []
    assert payload(w.sink.events[-1])["outcome"] == "Aborted"


def test_a_knative_service_is_promoted_by_its_traffic_block() -> None:
    w = World()
    w.store.with_metric_library(NS)
    service = ObjectRef(KNATIVE, "Service", NS, "iris")
    w.objects.seed(
        {
            "apiVersion": KNATIVE,
            "kind": "Service",
            "metadata": {"name": "iris", "namespace": NS},
            "spec": {"traffic": [{"revisionName": "iris-00001", "percent": 100}]},
        }
    )
    ref = {"apiVersion": KNATIVE, "kind": "Service", "name": "iris"}
    info = {
        "baseline": {"name": "iris-00001", "weightObjRef": ref},
        "candidates": [{"name": "iris-00002", "weightObjRef": ref}],
    }
    obj = running(w, versionInfo=info)
    assert w.store.status(NS, NAME)["stage"] == "Running"
    assert w.deliver("finish", conclude(w, obj, "promote", version="iris-00002")) == 200
    assert w.store.status(NS, NAME)["outcome"] == "Promoted"
    traffic = w.objects.stored(service)["status"]["traffic"]
    assert {t["revisionName"]: t["percent"] for t in traffic} == {
        "iris-00001": 0,
        "iris-00002": 100,
    }
