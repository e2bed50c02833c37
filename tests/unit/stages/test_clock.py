"""The clock over in-memory ports: every ping re-drives every stage until it ends, each
experiment on its own (functions/core/sweep.py, and start's own sweep).

Lost events, an API server failing through a whole retry window and a target deleted under
a Finishing experiment must not leave it Finishing; no experiment runs past its maximum
duration; nothing one experiment holds (an absurd interval, a time in year 9999, a bug)
stops the ping for the others.
"""

from __future__ import annotations

from typing import Any

import pytest
from cloudevents.http import CloudEvent

from functions.core import sweep
from functions.core.errors import PermanentError, TransientError
from functions.core.events import (
    CONCLUDED,
    DELETING,
    DUE,
    EXT_ITERATION,
    FINISHED,
    MEASURED,
    PING,
    TRIGGERS,
)
from functions.core.resources import KSERVE, ObjectRef
from functions.core.settings import Settings
from functions.core.status import Status
from tests.fakes import (
    BASELINE_REVISION,
    CANDIDATE_REVISION,
    INTERVAL,
    RecordingSink,
    World,
    added,
    canary_percent,
    condition,
    event,
    experiment,
    kserve_world,
    ping,
    serve,
)

NS = "demo"
A = "iris-canary"
B = "iris-next"
ISVC = ObjectRef(KSERVE, "InferenceService", NS, "iris")


class LosingSink(RecordingSink):
    """A broker that loses the next `lose(type, n)` events of a type (accepted, never
    delivered): what a delivery the broker gave up on looks like to everyone else."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: list[CloudEvent] = []
        self._losing: dict[str, int] = {}

    def lose(self, event_type: str, times: int = 1) -> None:
        self._losing[event_type] = self._losing.get(event_type, 0) + times

    def emit(self, event: CloudEvent) -> None:
        if self._losing.get(event["type"]):
            self._losing[event["type"]] -= 1
            self.lost.append(event)
            return
        super().emit(event)


def world(*namespaces: str, **settings: Any) -> World:
    w = kserve_world(*(namespaces or (NS,)))
    w.sink = LosingSink()
    w.settings = Settings(readback_timeout_seconds=1.0, **settings)
    return w


def sink(w: World) -> LosingSink:
    assert isinstance(w.sink, LosingSink)
    return w.sink


def add(w: World, name: str = A, namespace: str = NS, **spec: Any) -> None:
    obj = w.store.add(experiment(namespace=namespace, name=name, **spec))
    w.publish(added(obj))


def stage(w: World, name: str = A, namespace: str = NS) -> str:
    return str(w.store.status(namespace, name).get("stage"))


def tick(w: World, seconds: float = INTERVAL) -> None:
    w.clock.advance(seconds)
    w.publish(ping())


def bad_candidate(w: World) -> None:
    """The candidate answers 10% errors: the first look rolls it back."""
    serve(w.metrics, BASELINE_REVISION, ok=200, errors=0)
    serve(w.metrics, CANDIDATE_REVISION, ok=180, errors=20)


def good_versions(w: World) -> None:
    serve(w.metrics, BASELINE_REVISION, ok=200, errors=0)
    serve(w.metrics, CANDIDATE_REVISION, ok=200, errors=0)


def finishing_with_concluded_lost(w: World) -> None:
    """A decided to roll back (recorded: Finishing) but its `concluded` was lost."""
    bad_candidate(w)
    add(w)
    sink(w).lose(CONCLUDED)
    tick(w)
    assert stage(w) == "Finishing"
    assert [e["type"] for e in sink(w).lost] == [CONCLUDED]


def set_status(w: World, name: str = A, namespace: str = NS, **fields: Any) -> None:
    stored = w.store.stored(namespace, name)
    w.store.write_status(stored, {**(stored.get("status") or {}), **fields})


def set_spec(w: World, name: str = A, namespace: str = NS, **fields: Any) -> None:
    """Change the stored spec behind the functions' back (an edit, or an object stored
    before a bound it violates existed)."""
    w.store.experiments[(namespace, name)]["spec"].update(fields)


# --- F3: nothing stays Finishing ------------------------------------------------------


def test_a_lost_concluded_is_sent_again_by_the_next_ping_and_the_waiting_experiment_starts() -> (
    None
):
    w = world()
    finishing_with_concluded_lost(w)
    add(w, B)
    assert stage(w, B) == "Waiting"
    moved = canary_percent(w.objects)
    assert moved, "the first split moved traffic to the candidate"

    tick(w)

    status = w.store.status(NS, A)
    assert status["stage"] == "Completed"
    assert status["outcome"] == "RolledBack"
    assert {v["name"]: v["value"] for v in status["currentWeightDistribution"]} == {
        BASELINE_REVISION: 100,
        CANDIDATE_REVISION: 0,
    }
    assert stage(w, B) == "Running", "the freed target goes to the one waiting for it"
    assert set(w.stage_answers("finish")) == {200}


def test_an_api_server_failing_through_the_whole_retry_window_is_finished_by_a_later_ping() -> None:
    w = world()
    bad_candidate(w)
    add(w)
    # The API server answers 500 to every read of the target while the broker retries.
    retries = 3
    w.objects.failures.add("get", TransientError("500 Internal Server Error"), 1 + retries)
    tick(w)
    assert w.stage_answers("finish") == [503]
    (lost,) = w.sink.of_type(CONCLUDED)
    for _ in range(retries):
        assert w.deliver("finish", lost) == 503
    assert stage(w) == "Finishing", "the broker gave up; nothing else would end it"

    tick(w)

    assert w.store.status(NS, A)["outcome"] == "RolledBack"
    assert canary_percent(w.objects) == 0


def test_a_deleted_target_ends_a_finishing_experiment_failed_with_a_condition() -> None:
    w = world()
    finishing_with_concluded_lost(w)
    del w.objects.objects[ISVC]

    tick(w)

    status = w.store.status(NS, A)
    assert status["stage"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["reason"] == "TargetNotFound"
    assert "demo/iris" in failed["message"]
    assert "nothing to restore" in failed["message"]
    assert w.stage_answers("finish") == [200], "an answer, not a bare 422"
    assert w.sink.of_type(FINISHED), "the target is freed for whoever waits"


def test_past_the_finish_deadline_the_baseline_is_restored_once_more_and_it_ends_failed() -> None:
    w = world(finish_deadline_seconds=600)
    finishing_with_concluded_lost(w)
    # The target's controller stops reporting: every read-back times out.
    w.objects.lagging = True
    tick(w)
    assert w.stage_answers("finish") == [503]
    assert stage(w) == "Finishing"
    patches = len(w.objects.patches)

    tick(w, 600)

    status = w.store.status(NS, A)
    assert status["stage"] == "Failed"
    assert status["outcome"] == "Aborted"
    failed = condition(status, "Failed")
    assert failed["reason"] == "FinishDeadlineExceeded"
    assert "ARBITER_FINISH_DEADLINE_SECONDS=600" in failed["message"]
    assert "rollback of demo/iris not read back" in failed["message"]
    assert len(w.objects.patches) > patches, "a last restore of the baseline was attempted"
    assert w.objects.stored(ISVC)["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert w.stage_answers("finish")[-1] == 200
    assert w.sink.of_type(FINISHED)


def test_past_the_finish_deadline_a_restore_that_works_still_ends_it_failed_never_promoted() -> (
    None
):
    w = world(finish_deadline_seconds=600)
    good_versions(w)
    add(w)
    set_status(
        w,
        stage="Finishing",
        finishingTime="2026-01-01T00:01:00Z",
        recommendation={"action": "promote", "version": CANDIDATE_REVISION, "message": "go"},
    )
    sink(w).lose(CONCLUDED, 100)  # nothing reaches finish until the deadline

    tick(w, 601)
    w.publish(sink(w).lost[-1])

    status = w.store.status(NS, A)
    assert status["stage"] == "Failed"
    assert "baseline of demo/iris restored" in condition(status, "Failed")["message"]
    assert canary_percent(w.objects) == 0


def test_a_finishing_experiment_without_a_finishing_time_gets_one_from_the_first_sweep() -> None:
    w = world()
    finishing_with_concluded_lost(w)
    w.store.experiments[(NS, A)]["status"].pop("finishingTime")
    sink(w).lose(CONCLUDED)
    tick(w)
    assert Status.read(w.store.stored(NS, A)).finishing_time is not None


def test_a_lost_race_stamping_the_finishing_time_does_not_hold_back_the_re_send() -> None:
    w = world()
    finishing_with_concluded_lost(w)
    w.store.experiments[(NS, A)]["status"].pop("finishingTime")
    w.store.conflict(1)  # the stamp loses a race
    tick(w)
    assert stage(w) == "Completed"


def test_finishing_without_a_recorded_decision_restores_the_baseline() -> None:
    w = world()
    good_versions(w)
    add(w)
    set_status(w, stage="Finishing")
    tick(w)
    status = w.store.status(NS, A)
    assert status["stage"] == "Failed"
    assert condition(status, "Failed")["reason"] == "NoDecisionRecorded"
    assert canary_percent(w.objects) == 0


# --- deletion ----------------------------------------------------------------------------


def test_an_experiment_being_deleted_is_sent_to_finish_which_restores_the_baseline() -> None:
    w = world()
    good_versions(w)
    add(w)
    assert canary_percent(w.objects)
    w.store.experiments[(NS, A)]["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:30Z"

    tick(w)

    assert [e["type"] for e in w.sink.events if e["type"] == DELETING] == [DELETING]
    assert canary_percent(w.objects) == 0
    assert w.sink.of_type(FINISHED)
    assert DELETING in TRIGGERS["finish"]


def test_a_deleting_event_for_an_experiment_not_being_deleted_changes_nothing() -> None:
    w = world()
    good_versions(w)
    add(w)
    before = canary_percent(w.objects)
    assert w.deliver("finish", event(DELETING, w.store.stored(NS, A), 0)) == 200
    assert canary_percent(w.objects) == before


# --- F2: a maximum duration ------------------------------------------------------------


def test_a_running_experiment_past_its_maximum_duration_is_rolled_back_with_the_reason() -> None:
    w = world(max_experiment_seconds=300)
    good_versions(w)
    add(w, **{"duration": {"intervalSeconds": INTERVAL, "iterationsPerLoop": 4}})
    assert canary_percent(w.objects)
    sink(w).lose(DUE, 100)  # it never gets measured: only the clock can end it

    tick(w, 301)

    status = w.store.status(NS, A)
    assert status["stage"] == "Failed"
    assert status["outcome"] == "Aborted"
    assert status["abortReason"] == "MaxDurationExceeded"
    failed = condition(status, "Failed")
    assert failed["reason"] == "MaxDurationExceeded"
    assert "ARBITER_MAX_EXPERIMENT_SECONDS=300" in failed["message"]
    assert canary_percent(w.objects) == 0


def test_the_max_duration_decision_is_recorded_before_it_is_announced() -> None:
    w = world(max_experiment_seconds=300)
    good_versions(w)
    add(w, **{"duration": {"intervalSeconds": INTERVAL, "iterationsPerLoop": 4}})
    sink(w).lose(DUE, 100)
    sink(w).lose(CONCLUDED)
    tick(w, 301)
    status = w.store.status(NS, A)
    assert status["stage"] == "Finishing"
    assert status["recommendation"]["action"] == "rollback"
    tick(w)  # the lost announcement is sent again from status
    assert w.store.status(NS, A)["abortReason"] == "MaxDurationExceeded"
    assert stage(w) == "Failed"


def test_a_conformance_experiment_longer_than_the_maximum_duration_is_refused_at_start() -> None:
    w = world()
    # Each number within any bound of its own: 100000 iterations of 20 s is 23 days.
    add(
        w,
        strategy={"testingPattern": "Conformance"},
        duration={"intervalSeconds": 20, "iterationsPerLoop": 100_000},
    )
    status = w.store.status(NS, A)
    assert status["stage"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["reason"] == "DurationTooLong"
    assert "ARBITER_MAX_EXPERIMENT_SECONDS=604800" in failed["message"]
    add(w, B)
    assert stage(w, B) == "Running", "the target is free"


# --- F5: one experiment never halts the others ---------------------------------------


def two_running(w: World) -> None:
    # Too little traffic to decide anything for a few iterations: both keep running.
    serve(w.metrics, BASELINE_REVISION, ok=3, errors=0)
    serve(w.metrics, CANDIDATE_REVISION, ok=3, errors=0)
    add(w, A, "demo")
    add(w, A, "other")
    assert stage(w, A, "demo") == stage(w, A, "other") == "Running"


def test_an_absurd_interval_stored_on_a_running_experiment_ends_it_and_the_others_go_on() -> None:
    w = world("demo", "other")
    two_running(w)
    set_spec(w, A, "demo", duration={"intervalSeconds": 100_000_000_000_000})

    tick(w)

    assert set(w.stage_answers("iterate")) == {200}
    status = w.store.status("demo", A)
    assert status["stage"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["reason"] == "DurationOutOfBounds"
    assert "ARBITER_MAX_EXPERIMENT_SECONDS" in failed["message"]
    assert canary_percent(w.objects, "demo") == 0
    assert w.store.status("other", A)["completedIterations"] == 1


def test_a_pending_experiment_stored_with_an_absurd_interval_fails_at_start() -> None:
    w = world("demo", "other")
    good_versions(w)
    w.store.add(
        experiment(namespace="demo", name=A, duration={"intervalSeconds": 100_000_000_000_000})
    )
    w.store.add(experiment(namespace="other", name=A))

    tick(w)

    assert set(w.stage_answers("start")) == {200}
    status = w.store.status("demo", A)
    assert status["stage"] == "Failed"
    # DurationTooLong here; InvalidSpec where the parser bounds the interval itself.
    assert "spec.duration" in condition(status, "Failed")["message"]
    assert stage(w, A, "other") == "Running"


def test_a_measured_event_from_year_9999_is_refused_and_the_clock_goes_on() -> None:
    w = world("demo", "other")
    two_running(w)
    sink(w).lose(MEASURED)  # demo's real measurement of iteration 1, held back ...
    tick(w)
    (held,) = sink(w).lost
    assert held["experimentnamespace"] == "demo"
    forged = {**(held.get_data() or {}), "measuredAt": "9999-12-31T23:59:59Z"}
    # ... a copy stamped in year 9999 is not what iterate recorded ...
    assert w.deliver("assess", event(MEASURED, w.store.stored("demo", A), 1, forged)) == 422
    # ... and the measurement itself is recorded at the time iterate took it.
    assert w.deliver("assess", held) == 200

    last = Status.read(w.store.stored("demo", A)).last_iteration_time
    assert last is not None
    assert last <= w.clock.now()

    tick(w)
    assert set(w.stage_answers("iterate")) == {200}
    assert w.store.status("demo", A)["completedIterations"] == 2
    assert w.store.status("other", A)["completedIterations"] == 2


def test_a_stored_time_in_year_9999_does_not_stop_the_ping() -> None:
    w = world("demo", "other")
    two_running(w)
    set_status(w, A, "demo", lastIterationTime="9999-12-31T23:59:59Z")
    set_status(w, A, "other", lastIterationTime="9999-12-31T23:59:59-01:00")

    tick(w)

    pings = [a for stage, kind, _, a in w.answers if stage == "iterate" and kind == PING]
    assert pings == [200]
    assert {e["experimentnamespace"] for e in w.sink.of_type(DUE)} == {"demo", "other"}
    # Each due event is then answered on its own: a stored time outside the parser's bounds
    # is refused for that experiment (422), never a crash of the sweep.
    assert set(w.stage_answers("iterate")) <= {200, 422}


def test_any_failure_handling_one_experiment_is_recorded_on_it_and_the_others_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = world("demo", "other")
    two_running(w)
    real = sweep._drive_running

    def broken(ctx: Any, obj: dict[str, Any], status: Status, now: Any) -> None:
        if obj["metadata"]["namespace"] == "demo":
            raise OverflowError("date value out of range")
        real(ctx, obj, status, now)

    monkeypatch.setattr(sweep, "_drive_running", broken)

    tick(w)

    assert set(w.stage_answers("iterate")) == {200}
    status = w.store.status("demo", A)
    assert status["stage"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["reason"] == "CannotProceed"
    assert "OverflowError: date value out of range" in failed["message"]
    assert canary_percent(w.objects, "demo") == 0
    assert w.store.status("other", A)["completedIterations"] == 1


def test_only_a_failed_listing_fails_the_ping() -> None:
    w = world()
    w.store.failures.add("list", TransientError("503 from the API server"))
    assert w.deliver("iterate", ping()) == 503


def test_a_transient_failure_on_one_experiment_leaves_it_for_the_next_ping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = world("demo", "other")
    two_running(w)
    w.sink.fail(1)  # the first due is refused by the broker
    w.clock.advance(INTERVAL)
    assert w.deliver("iterate", ping()) == 200
    assert len(w.sink.of_type(DUE)) == 1
    assert stage(w, A, "demo") == stage(w, A, "other") == "Running"


def test_one_experiment_failing_in_starts_sweep_does_not_stop_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from functions.core import start

    w = world("demo", "other")
    good_versions(w)
    w.store.add(experiment(namespace="demo", name=A))
    w.store.add(experiment(namespace="other", name=A))
    real = start._first_split

    def broken(ctx: Any, exp: Any, model: Any) -> Any:
        if exp.namespace == "demo":
            raise OverflowError("cannot convert float infinity to integer")
        return real(ctx, exp, model)

    monkeypatch.setattr(start, "_first_split", broken)

    tick(w)

    assert set(w.stage_answers("start")) == {200}
    failed = condition(w.store.status("demo", A), "Failed")
    assert failed["reason"] == "InternalError"
    assert "OverflowError" in failed["message"]
    assert stage(w, A, "other") == "Running"


def test_a_ping_right_after_the_decision_does_not_race_the_first_announcement() -> None:
    w = world()
    finishing_with_concluded_lost(w)
    mark = len(w.sink.events)
    w.publish(ping())  # the same instant: finish may still be applying it
    assert not [e for e in w.sink.since(mark) if e["type"] == CONCLUDED]
    w.clock.advance(w.settings.readback_timeout_seconds)
    w.publish(ping())
    assert stage(w) == "Completed"


def test_a_repeated_measurement_sends_nothing_and_the_clock_re_sends_its_decision() -> None:
    w = world()
    good_versions(w)
    add(w)
    set_status(
        w,
        stage="Finishing",
        completedIterations=1,
        recommendation={"action": "rollback", "message": "too long"},
        abortReason="MaxDurationExceeded",
    )
    mark = len(w.sink.events)
    repeat = event(MEASURED, w.store.stored(NS, A), 1, {"aggregatedMetrics": {"data": {}}})
    assert w.deliver("assess", repeat) == 200
    assert w.sink.since(mark) == [], "a re-send per duplicate would multiply the events"
    w.clock.advance(w.settings.readback_timeout_seconds)
    assert w.deliver("iterate", ping()) == 200
    (again,) = w.sink.since(mark)
    assert again["type"] == CONCLUDED and again[EXT_ITERATION] == "1"
    data = again.get_data()
    assert isinstance(data, dict)
    assert (data["failed"], data["reason"]) == (True, "MaxDurationExceeded")


def test_a_freed_target_wakes_a_sweep_where_one_failure_never_stops_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from functions.core import start
    from functions.core.events import FINISHED

    w = world("demo", "other")
    good_versions(w)
    w.store.add(experiment(namespace="demo", name=A))
    w.store.add(experiment(namespace="other", name=A))
    real = start._first_split

    def broken(ctx: Any, exp: Any, model: Any) -> Any:
        if exp.namespace == "demo":
            raise PermanentError("demo/iris: a field the owner does not allow")
        return real(ctx, exp, model)

    monkeypatch.setattr(start, "_first_split", broken)
    freed = event(FINISHED, w.store.stored("demo", A), 3, {"outcome": "RolledBack"})

    assert w.deliver("start", freed) == 200

    failed = condition(w.store.status("demo", A), "Failed")
    assert failed["reason"] == "CannotStart"
    assert stage(w, A, "other") == "Running"
