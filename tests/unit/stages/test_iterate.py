"""The iterate stage over in-memory ports: the ping fan-out and one iteration's measurements."""

from __future__ import annotations

from typing import Any

from cloudevents.http import CloudEvent

from analytics.measurements import NoData
from functions.core.errors import TransientError
from functions.core.events import (
    CONCLUDED,
    DUE,
    EXT_ITERATION,
    EXT_NAMESPACE,
    EXT_UID,
    MEASURED,
    digest,
)
from functions.core.metrics import MetricError
from functions.core.settings import Settings
from functions.core.status import CONFLICT_ATTEMPTS
from tests.fakes import (
    BASELINE_REVISION,
    CANDIDATE_REVISION,
    INTERVAL,
    World,
    added,
    canary_percent,
    condition,
    event,
    experiment,
    kserve_world,
    payload,
    ping,
    serve,
)

NS = "demo"
NAME = "iris-canary"
METRICS = ("request-count", "error-rate", "latency")


def running(w: World, namespace: str = NS, name: str = NAME, **spec: Any) -> dict[str, Any]:
    obj = w.store.add(experiment(namespace, name, **spec))
    assert w.deliver("start", added(obj)) == 200
    assert w.store.status(namespace, name)["stage"] == "Running"
    return w.store.stored(namespace, name)


def scripted_world(*namespaces: str) -> World:
    w = kserve_world(*namespaces)
    serve(w.metrics, BASELINE_REVISION, 200, 1)
    serve(w.metrics, CANDIDATE_REVISION, 180, 20)
    return w


def set_status(w: World, namespace: str, name: str, **fields: Any) -> None:
    stored = w.store.stored(namespace, name)
    w.store.write_status(stored, {**(stored.get("status") or {}), **fields})


def test_a_ping_fans_out_one_due_event_per_running_experiment_whose_interval_passed() -> None:
    w = scripted_world(NS, "other", "late", "queued", "done")
    running(w)
    running(w, "other")
    w.clock.advance(INTERVAL / 2)
    running(w, "late")  # started half an interval later: not due yet
    w.store.add(experiment("queued"))  # never started: not running
    set_status(w, "queued", NAME, stage="Waiting")
    running(w, "done")
    set_status(w, "done", NAME, stage="Completed")
    w.clock.advance(INTERVAL / 2)
    mark, writes = len(w.sink.events), len(w.store.writes)
    assert w.deliver("iterate", ping()) == 200
    emitted = w.sink.since(mark)
    # the tick only hands out work: one due event per due experiment, nothing measured,
    # each request recorded first so that a repeated ping does not hand it out again
    assert [e["type"] for e in emitted] == [DUE, DUE]
    assert {e[EXT_NAMESPACE] for e in emitted} == {NS, "other"}
    assert {e[EXT_ITERATION] for e in emitted} == {"1"}
    assert w.metrics.calls == []
    assert len(w.store.writes) == writes + 2
    for ns in (NS, "other"):
        assert w.store.status(ns, NAME)["measurement"] == {
            "iteration": 1,
            "requestedAt": "2026-01-01T00:02:00Z",
        }
    assert w.deliver("iterate", ping()) == 200
    assert len(w.sink.since(mark)) == 2, "asked for already"


def test_a_ping_before_the_interval_passes_hands_out_nothing() -> None:
    w = scripted_world(NS)
    running(w)
    w.clock.advance(INTERVAL - 1)
    mark = len(w.sink.events)
    assert w.deliver("iterate", ping()) == 200
    assert w.sink.since(mark) == []


def test_the_due_iteration_follows_the_completed_ones() -> None:
    w = scripted_world(NS)
    obj = running(w)
    w.clock.advance(INTERVAL)
    set_status(w, NS, NAME, completedIterations=3, lastIterationTime="2026-01-01T00:01:30Z")
    mark = len(w.sink.events)
    w.deliver("iterate", ping())
    assert w.sink.since(mark) == [], "30 s since the last iteration"
    w.clock.advance(INTERVAL / 2)
    w.deliver("iterate", ping())
    [due] = w.sink.since(mark)
    assert due[EXT_ITERATION] == "4" and due[EXT_UID] == obj["metadata"]["uid"]


def test_a_due_experiment_is_measured_per_metric_and_version_and_the_digest_recorded() -> None:
    w = scripted_world(NS)
    obj = running(w)
    w.clock.advance(INTERVAL)
    mark, writes = len(w.sink.events), len(w.store.writes)
    assert w.deliver("iterate", event(DUE, obj, 1)) == 200
    [measured] = w.sink.since(mark)
    assert measured["type"] == MEASURED
    assert (measured[EXT_ITERATION], measured[EXT_UID]) == ("1", obj["metadata"]["uid"])
    data = payload(measured)
    assert data["measuredAt"] == "2026-01-01T00:02:00Z"
    by_metric = data["aggregatedMetrics"]["data"]
    assert set(by_metric) == set(METRICS)
    candidate = by_metric["error-rate"]["data"][CANDIDATE_REVISION]
    assert candidate == {"events": 120.0, "trials": 1200.0}
    assert by_metric["request-count"]["data"][BASELINE_REVISION] == {"value": 1206.0}
    assert by_metric["latency"]["data"][BASELINE_REVISION]["buckets"][-1] == {
        "le": "+Inf",
        "count": 1206.0,
    }
    # what was measured is recorded before it is announced: when, and the data's digest
    assert len(w.store.writes) == writes + 1
    assert w.store.status(NS, NAME)["measurement"] == {
        "iteration": 1,
        "requestedAt": "2026-01-01T00:02:00Z",
        "measuredAt": "2026-01-01T00:02:00Z",
        "digest": digest(data),
    }
    # every query is rendered for the target and the version's resolved revision
    assert len(w.metrics.calls) == len(METRICS) * 2
    variables = {(name, v["revision"]): v for name, v, _ in w.metrics.calls}
    v = variables[("error-rate", CANDIDATE_REVISION)]
    assert (v["name"], v["namespace"], v["elapsed"], v["interval"]) == ("iris", NS, "60", "60")
    assert all(at == w.clock.now() for _, _, at in w.metrics.calls)


def test_a_version_without_data_is_measured_as_empty_never_as_zero() -> None:
    w = scripted_world(NS)
    obj = running(w)
    w.metrics.set("error-rate", CANDIDATE_REVISION, NoData("no series yet"), 1)
    w.clock.advance(INTERVAL)
    mark = len(w.sink.events)
    w.deliver("iterate", event(DUE, obj, 1))
    [measured] = w.sink.since(mark)
    assert payload(measured)["aggregatedMetrics"]["data"]["error-rate"]["data"] == {
        BASELINE_REVISION: {"events": 6.0, "trials": 1206.0},
        CANDIDATE_REVISION: {},
    }


def test_a_repeated_due_event_measures_nothing_and_sends_nothing_again() -> None:
    w = scripted_world(NS)
    obj = running(w)
    w.clock.advance(INTERVAL)
    mark = len(w.sink.events)
    w.deliver("iterate", event(DUE, obj, 1))
    writes, calls = len(w.store.writes), len(w.metrics.calls)
    w.clock.advance(INTERVAL - 1)
    assert w.deliver("iterate", event(DUE, obj, 1)) == 200
    assert [e["type"] for e in w.sink.since(mark)] == [MEASURED]
    assert (len(w.store.writes), len(w.metrics.calls)) == (writes, calls)


def test_a_measurement_lost_on_its_way_is_asked_for_again_one_interval_on() -> None:
    w = scripted_world(NS)
    running(w)
    w.clock.advance(INTERVAL)
    w.deliver("iterate", ping())
    [due] = w.sink.events[-1:]
    w.deliver("iterate", due)  # measured, recorded; its event never reaches assess
    first = w.sink.events[-1]
    mark = len(w.sink.events)
    w.clock.advance(INTERVAL - 1)
    w.deliver("iterate", ping())
    assert w.sink.since(mark) == [], "less than an interval: still on its way"
    w.clock.advance(1)
    w.deliver("iterate", ping())
    [again] = w.sink.since(mark)
    assert again["type"] == DUE and again[EXT_ITERATION] == "1"
    w.deliver("iterate", again)
    remeasured = w.sink.events[-1]
    assert remeasured["type"] == MEASURED and payload(remeasured) != payload(first)
    record = w.store.status(NS, NAME)["measurement"]
    assert record["digest"] == digest(payload(remeasured))


def test_stale_and_early_due_events_are_acknowledged_and_ignored() -> None:
    w = scripted_world(NS)
    obj = running(w)
    set_status(w, NS, NAME, completedIterations=2)
    w.clock.advance(INTERVAL)
    mark, writes = len(w.sink.events), len(w.store.writes)
    for iteration in (1, 2, 4):
        assert w.deliver("iterate", event(DUE, obj, iteration)) == 200
    assert w.sink.since(mark) == [] and w.metrics.calls == []
    assert len(w.store.writes) == writes


def test_a_due_event_for_an_experiment_not_running_is_ignored() -> None:
    w = scripted_world(NS)
    obj = running(w)
    w.clock.advance(INTERVAL)
    for stage in ("Finishing", "Completed", "Failed"):
        set_status(w, NS, NAME, stage=stage)
        mark = len(w.sink.events)
        assert w.deliver("iterate", event(DUE, obj, 1)) == 200
        assert w.sink.since(mark) == [], stage
    assert w.metrics.calls == []


def test_a_due_event_about_an_earlier_namesake_changes_nothing() -> None:
    w = scripted_world(NS)
    obj = running(w)
    w.clock.advance(INTERVAL)
    mark, writes = len(w.sink.events), len(w.store.writes)
    earlier = {**obj, "metadata": {**obj["metadata"], "uid": "some-earlier-uid"}}
    assert w.deliver("iterate", event(DUE, earlier, 1)) == 200
    assert w.sink.since(mark) == [] and w.metrics.calls == []
    assert len(w.store.writes) == writes


def test_a_due_event_without_an_experiment_is_permanent() -> None:
    w = scripted_world(NS)
    bare = CloudEvent({"type": DUE, "source": "test", "iteration": "1"}, {})
    assert w.deliver("iterate", bare) == 422


def test_a_transient_failure_is_counted_and_the_event_is_left_to_be_redelivered() -> None:
    w = scripted_world(NS)
    obj = running(w)
    w.clock.advance(INTERVAL)
    mark = len(w.sink.events)
    w.metrics.fail(TransientError("prometheus unreachable"))
    w.store.conflict(1)  # the count itself loses a race once, and is retried
    assert w.deliver("iterate", event(DUE, obj, 1)) == 503
    assert w.store.status(NS, NAME)["transientFailures"] == 1
    assert w.sink.since(mark) == []
    # the redelivery measures; the count is assess' to reset when it records the iteration
    assert w.deliver("iterate", event(DUE, obj, 1)) == 200
    assert [e["type"] for e in w.sink.since(mark)] == [MEASURED]


def test_a_count_that_keeps_losing_races_is_still_transient() -> None:
    w = scripted_world(NS)
    obj = running(w)
    w.clock.advance(INTERVAL)
    w.metrics.fail(TransientError("prometheus unreachable"))
    w.store.conflict(CONFLICT_ATTEMPTS)
    assert w.deliver("iterate", event(DUE, obj, 1)) == 503
    assert w.store.status(NS, NAME)["transientFailures"] == 0


def test_past_the_transient_limit_the_experiment_is_concluded_with_a_rollback() -> None:
    w = scripted_world(NS)
    w.settings = Settings(max_transient_failures=2, readback_timeout_seconds=1)
    running(w)
    mark = len(w.sink.events)
    w.metrics.fail(TransientError("prometheus unreachable"), times=100)
    # each interval's request fails, however often the broker delivers it: counted once
    for failures in (1, 2):
        w.clock.advance(INTERVAL)
        w.deliver("iterate", ping())
        due = w.sink.events[-1]
        assert [w.deliver("iterate", due) for _ in range(6)] == [503] * 6
        status = w.store.status(NS, NAME)
        assert (status["stage"], status["transientFailures"]) == ("Running", failures)
    w.clock.advance(INTERVAL)
    w.deliver("iterate", ping())
    assert w.deliver("iterate", w.sink.events[-1]) == 200
    status = w.store.status(NS, NAME)
    assert (status["stage"], status["transientFailures"]) == ("Finishing", 3)
    assert status["abortReason"] == "TransientFailures"
    assert condition(status, "Failed")["reason"] == "TransientFailures"
    assert [e["type"] for e in w.sink.since(mark)] == [DUE, DUE, DUE, CONCLUDED]
    concluded = w.sink.events[-1]
    assert concluded[EXT_ITERATION] == "0", "announced at the iteration it was decided after"
    data = payload(concluded)
    assert (data["action"], data["failed"], data["reason"]) == (
        "rollback",
        True,
        "TransientFailures",
    )
    assert "ARBITER_MAX_TRANSIENT_FAILURES=2" in data["message"]
    assert "prometheus unreachable" in data["message"]
    # and finish ends it the safe way
    w.publish(concluded)
    status = w.store.status(NS, NAME)
    assert (status["stage"], status["outcome"]) == ("Failed", "Aborted")
    assert canary_percent(w.objects) == 0


def test_a_missing_metric_fails_permanently_and_concludes_with_a_rollback() -> None:
    w = scripted_world(NS)
    criteria = {"objectives": [{"metric": "no-such-metric", "upperLimit": 1}]}
    obj = running(w, criteria=criteria)
    w.clock.advance(INTERVAL)
    mark = len(w.sink.events)
    assert w.deliver("iterate", event(DUE, obj, 1)) == 422
    [concluded] = w.sink.since(mark)
    data = payload(concluded)
    assert (data["action"], data["failed"], data["reason"]) == (
        "rollback",
        True,
        "MetricUnavailable",
    )
    assert "no-such-metric" in data["message"] and NS in data["message"]


def test_a_template_that_does_not_render_fails_permanently_naming_the_metric() -> None:
    w = scripted_world(NS)
    obj = running(w)
    w.metrics.set("latency", CANDIDATE_REVISION, MetricError(["metrics/latency: $oops unknown"]), 1)
    w.clock.advance(INTERVAL)
    mark = len(w.sink.events)
    assert w.deliver("iterate", event(DUE, obj, 1)) == 422
    [concluded] = w.sink.since(mark)
    assert payload(concluded)["reason"] == "MetricUnavailable"
    assert "'latency'" in payload(concluded)["message"]


def test_each_measurement_says_which_library_measured_it_and_in_which_units() -> None:
    """The library and units travel with the measurements into status.analysis, from which
    status.metricsLibrary is derived (functions/core/status.py)."""
    w = scripted_world(NS)
    obj = running(w)
    w.clock.advance(INTERVAL)
    mark = len(w.sink.events)
    assert w.deliver("iterate", event(DUE, obj, 1)) == 200
    [measured] = w.sink.since(mark)
    by_metric = payload(measured)["aggregatedMetrics"]["data"]
    assert {m: e["library"] for m, e in by_metric.items()} == dict.fromkeys(METRICS, "knative-1.18")
    assert by_metric["latency"]["units"] == "milliseconds"
    assert "units" not in by_metric["error-rate"]
