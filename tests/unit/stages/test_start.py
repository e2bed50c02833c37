"""The start stage over in-memory ports: validation, the target queue, readiness, first split."""

from __future__ import annotations

from analytics.analysis import Action
from functions.core.events import DUE, EXT_ITERATION, EXT_UID, FINISHED, STARTED, Concluded
from functions.core.settings import Settings
from functions.core.status import CONFLICT_ATTEMPTS
from tests.fakes import (
    BASELINE_REVISION,
    CANDIDATE_REVISION,
    INTERVAL,
    added,
    canary_percent,
    condition,
    decided,
    experiment,
    inference_service,
    kserve_world,
    ping,
)

NS = "demo"
NAME = "iris-canary"


def test_an_added_experiment_takes_its_target_and_starts_at_the_first_split() -> None:
    w = kserve_world(NS)
    obj = w.store.add(experiment())
    assert w.deliver("start", added(obj)) == 200
    status = w.store.status(NS, NAME)
    assert status["stage"] == "Running"
    assert status["versions"] == [
        {"name": BASELINE_REVISION, "revision": BASELINE_REVISION},
        {"name": CANDIDATE_REVISION, "revision": CANDIDATE_REVISION},
    ]
    # the first step is capped by maxCandidateWeightIncrement (20)
    assert status["currentWeightDistribution"] == [
        {"name": BASELINE_REVISION, "value": 80},
        {"name": CANDIDATE_REVISION, "value": 20},
    ]
    assert canary_percent(w.objects) == 20
    assert (status["completedIterations"], status["transientFailures"]) == (0, 0)
    assert status["startTime"] == status["initTime"] == status["lastIterationTime"]
    assert status["startTime"] == "2026-01-01T00:01:00Z"
    assert status["observedGeneration"] == 1
    assert condition(status, "TargetAcquired")["status"] == "True"
    ready = condition(status, "VersionsReady")
    assert ready["status"] == "True"
    assert CANDIDATE_REVISION in ready["message"]
    [started] = w.sink.events
    assert started["type"] == STARTED
    assert started[EXT_UID] == obj["metadata"]["uid"]
    assert started[EXT_ITERATION] == "0"


def test_declared_version_names_keep_their_names_and_get_the_resolved_revisions() -> None:
    w = kserve_world(NS)
    obj = w.store.add(
        experiment(versionInfo={"baseline": {"name": "current"}, "candidates": [{"name": "next"}]})
    )
    assert w.deliver("start", added(obj)) == 200
    status = w.store.status(NS, NAME)
    assert status["versions"] == [
        {"name": "current", "revision": BASELINE_REVISION},
        {"name": "next", "revision": CANDIDATE_REVISION},
    ]
    assert status["currentWeightDistribution"] == [
        {"name": "current", "value": 80},
        {"name": "next", "value": 20},
    ]


def test_a_repeated_add_writes_nothing_and_sends_nothing_again() -> None:
    w = kserve_world(NS)
    obj = w.store.add(experiment())
    w.deliver("start", added(obj))
    before = w.store.stored(NS, NAME)
    writes, patches = len(w.store.writes), len(w.objects.patches)
    assert w.deliver("start", added(obj)) == 200
    assert w.store.stored(NS, NAME) == before
    assert (len(w.store.writes), len(w.objects.patches)) == (writes, patches)
    assert w.sink.types() == [STARTED], "a start per duplicate would multiply the events"


def test_an_add_after_the_first_iteration_or_the_end_changes_and_emits_nothing() -> None:
    w = kserve_world(NS)
    obj = w.store.add(experiment())
    w.deliver("start", added(obj))
    stored = w.store.stored(NS, NAME)
    w.store.write_status(stored, {**stored["status"], "completedIterations": 1})
    for stage in ("Running", "Completed", "Failed"):
        stored = w.store.stored(NS, NAME)
        w.store.write_status(stored, {**stored["status"], "stage": stage})
        mark, writes = len(w.sink.events), len(w.store.writes)
        assert w.deliver("start", added(obj)) == 200
        assert w.sink.since(mark) == [], stage
        assert len(w.store.writes) == writes, stage


def test_an_add_about_an_earlier_namesake_changes_nothing() -> None:
    w = kserve_world(NS)
    obj = w.store.add(experiment())
    earlier = {**obj, "metadata": {**obj["metadata"], "uid": "some-earlier-uid"}}
    assert w.deliver("start", added(earlier)) == 200
    assert "status" not in w.store.stored(NS, NAME)
    assert w.store.writes == [] and w.objects.patches == [] and w.sink.events == []


def test_a_lost_write_race_is_retried_and_the_split_is_set_once() -> None:
    w = kserve_world(NS)
    obj = w.store.add(experiment())
    w.store.conflict(2)
    assert w.deliver("start", added(obj)) == 200
    assert w.store.status(NS, NAME)["stage"] == "Running"
    # two writes: Running with the split asked for (write-ahead), then the split read back
    assert len(w.store.writes) == 2
    assert len(w.objects.patches) == 1, "the retry finds the split in effect"
    assert w.sink.types() == [STARTED]


def test_a_write_that_keeps_losing_is_left_to_the_broker_to_redeliver() -> None:
    w = kserve_world(NS)
    obj = w.store.add(experiment())
    w.store.conflict(CONFLICT_ATTEMPTS)
    assert w.deliver("start", added(obj)) == 503
    assert "status" not in w.store.stored(NS, NAME)
    assert w.sink.events == []
    assert w.deliver("start", added(obj)) == 200
    assert w.store.status(NS, NAME)["stage"] == "Running"
    assert w.sink.types() == [STARTED]


def test_a_refused_announcement_is_made_up_for_by_the_next_ping() -> None:
    w = kserve_world(NS)
    obj = w.store.add(experiment())
    w.sink.fail(1)
    assert w.deliver("start", added(obj)) == 503
    assert w.store.status(NS, NAME)["stage"] == "Running"
    writes = len(w.store.writes)
    assert w.deliver("start", added(obj)) == 200
    assert len(w.store.writes) == writes and w.sink.events == []
    # `started` only wakes iterate early; the clock measures the first interval anyway
    w.clock.advance(INTERVAL)
    w.deliver("iterate", ping())
    assert w.sink.types() == [DUE]


def test_a_second_experiment_on_a_busy_target_waits_naming_the_holder() -> None:
    w = kserve_world(NS)
    first = w.store.add(experiment())
    second = w.store.add(experiment(name="iris-canary-2"))
    w.deliver("start", added(first))
    mark, patches = len(w.sink.events), len(w.objects.patches)
    assert w.deliver("start", added(second)) == 200
    waiting = w.store.status(NS, "iris-canary-2")
    assert waiting["stage"] == "Waiting"
    assert f"{NS}/{NAME}" in waiting["message"] and f"{NS}/iris" in waiting["message"]
    acquired = condition(waiting, "TargetAcquired")
    assert (acquired["status"], acquired["reason"]) == ("False", "TargetBusy")
    assert f"{NS}/{NAME}" in acquired["message"]
    assert w.sink.since(mark) == [] and len(w.objects.patches) == patches
    # a ping while the holder runs changes nothing for the waiter
    w.deliver("start", ping())
    assert w.store.status(NS, "iris-canary-2")["stage"] == "Waiting"
    assert w.store.status(NS, NAME)["stage"] == "Running"


def test_a_waiting_experiment_starts_once_the_holder_has_finished() -> None:
    w = kserve_world(NS)
    first = w.store.add(experiment())
    second = w.store.add(experiment(name="iris-canary-2"))
    w.deliver("start", added(first))
    w.deliver("start", added(second))
    # the holder is rolled back; `finished` frees the target and start looks again
    w.publish(decided(w.store, first, Concluded(Action.ROLLBACK), iteration=0))
    assert w.store.status(NS, NAME)["stage"] == "Completed"
    assert [e["type"] for e in w.sink.events if e["type"] in (FINISHED, STARTED)] == [
        STARTED,
        FINISHED,
        STARTED,
    ]
    status = w.store.status(NS, "iris-canary-2")
    assert status["stage"] == "Running"
    assert condition(status, "TargetAcquired")["status"] == "True"
    assert canary_percent(w.objects) == 20
    assert set(w.stage_answers("start")) == {200}


def test_the_older_of_two_queued_experiments_goes_first_whichever_is_added_first() -> None:
    w = kserve_world(NS)
    older = w.store.add(experiment(name="older"))
    younger = w.store.add(experiment(name="younger"))
    w.deliver("start", added(younger))
    assert w.store.status(NS, "younger")["stage"] == "Waiting"
    assert f"{NS}/older" in w.store.status(NS, "younger")["message"]
    w.deliver("start", added(older))
    assert w.store.status(NS, "older")["stage"] == "Running"
    w.deliver("start", ping())
    assert w.store.status(NS, "younger")["stage"] == "Waiting"


def test_experiments_on_different_targets_do_not_queue() -> None:
    w = kserve_world(NS, "other")
    a = w.store.add(experiment())
    b = w.store.add(experiment(namespace="other"))
    w.deliver("start", added(a))
    w.deliver("start", added(b))
    assert w.store.status(NS, NAME)["stage"] == "Running"
    assert w.store.status("other", NAME)["stage"] == "Running"


def test_a_bad_spec_fails_permanently_with_a_condition_naming_the_field() -> None:
    w = kserve_world(NS)
    obj = w.store.add(
        experiment(
            versionInfo={"baseline": {"name": "a"}, "candidates": [{"name": "b"}, {"name": "c"}]}
        )
    )
    assert w.deliver("start", added(obj)) == 422
    status = w.store.status(NS, NAME)
    assert status["stage"] == "Failed"
    failed = condition(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "InvalidSpec")
    assert (
        "spec.versionInfo.candidates: Canary needs exactly 1 candidate, got 2" in failed["message"]
    )
    assert failed["message"] in status["message"]
    assert w.sink.events == [] and w.objects.patches == []


def test_a_ping_records_a_bad_spec_and_still_starts_the_others() -> None:
    w = kserve_world(NS, "other")
    w.store.add(experiment(duration={"intervalSeconds": -5, "iterationsPerLoop": 8}))
    w.store.add(experiment(namespace="other"))
    assert w.deliver("start", ping()) == 200
    bad = w.store.status(NS, NAME)
    assert bad["stage"] == "Failed"
    assert "spec.duration.intervalSeconds" in condition(bad, "Failed")["message"]
    assert w.store.status("other", NAME)["stage"] == "Running"
    assert [e["experimentnamespace"] for e in w.sink.events] == ["other"]


def test_a_candidate_not_ready_yet_is_waited_for_then_started_by_a_ping() -> None:
    w = kserve_world()
    w.store.with_metric_library(NS)
    w.objects.seed(inference_service(ready=False), reconcile=False)
    obj = w.store.add(experiment())
    assert w.deliver("start", added(obj)) == 200
    status = w.store.status(NS, NAME)
    assert status["stage"] == "Initializing"
    ready = condition(status, "VersionsReady")
    assert (ready["status"], ready["reason"]) == ("False", "Waiting")
    assert CANDIDATE_REVISION in ready["message"] and "Ready" in ready["message"]
    assert condition(status, "TargetAcquired")["status"] == "True"
    assert w.sink.events == [] and w.objects.patches == []

    w.objects.seed(inference_service())
    w.clock.advance(30)
    assert w.deliver("start", ping()) == 200
    status = w.store.status(NS, NAME)
    assert status["stage"] == "Running"
    assert status["initTime"] == "2026-01-01T00:01:00Z"
    assert status["startTime"] == "2026-01-01T00:01:30Z"
    assert condition(status, "VersionsReady")["status"] == "True"
    assert w.sink.types() == [STARTED]


def test_a_missing_target_is_waited_for_until_the_ready_timeout_then_fails() -> None:
    w = kserve_world()
    w.store.with_metric_library(NS)
    w.settings = Settings(ready_timeout_seconds=120, readback_timeout_seconds=1)
    obj = w.store.add(experiment())
    assert w.deliver("start", added(obj)) == 200
    status = w.store.status(NS, NAME)
    assert status["stage"] == "Initializing"
    assert "to exist" in condition(status, "VersionsReady")["message"]
    w.clock.advance(120)
    w.deliver("start", ping())
    assert w.store.status(NS, NAME)["stage"] == "Initializing", "not past the timeout yet"
    w.clock.advance(1)
    assert w.deliver("start", ping()) == 200
    status = w.store.status(NS, NAME)
    assert status["stage"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["reason"] == "VersionsNotReady"
    assert "ARBITER_READY_TIMEOUT_SECONDS=120" in failed["message"]
    assert w.sink.events == []


def test_conformance_starts_without_moving_traffic() -> None:
    w = kserve_world(NS)
    obj = w.store.add(
        experiment(
            strategy={"testingPattern": "Conformance", "deploymentPattern": "Progressive"},
            versionInfo={"baseline": {"name": "current"}},
        )
    )
    assert w.deliver("start", added(obj)) == 200
    status = w.store.status(NS, NAME)
    assert status["stage"] == "Running"
    assert status["versions"] == [{"name": "current", "revision": BASELINE_REVISION}]
    assert "currentWeightDistribution" not in status
    assert w.objects.patches == []
    assert w.sink.types() == [STARTED]


def test_a_fixed_split_keeps_the_split_the_user_set() -> None:
    w = kserve_world()
    w.store.with_metric_library(NS)
    isvc = inference_service()
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = 30
    w.objects.seed(isvc)
    obj = w.store.add(
        experiment(strategy={"testingPattern": "Canary", "deploymentPattern": "FixedSplit"})
    )
    assert w.deliver("start", added(obj)) == 200
    assert w.store.status(NS, NAME)["currentWeightDistribution"] == [
        {"name": BASELINE_REVISION, "value": 70},
        {"name": CANDIDATE_REVISION, "value": 30},
    ]
    assert w.objects.patches == []
