"""The assess stage over in-memory ports: verdicts, the next split, the record, the conclusion."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from cloudevents.http import CloudEvent

from analytics.analysis import Action
from functions.core.events import (
    ASSESSED,
    CONCLUDED,
    EXT_ITERATION,
    EXT_UID,
    FINISHED,
    MEASURED,
    Concluded,
)
from functions.core.status import CONFLICT_ATTEMPTS
from tests.fakes import (
    BASELINE_REVISION,
    CANDIDATE_REVISION,
    INTERVAL,
    T0,
    World,
    added,
    aggregated,
    canary_percent,
    condition,
    decided,
    event,
    experiment,
    kserve_world,
    payload,
    recorded,
    serve,
    served,
)

NS = "demo"
NAME = "iris-canary"
GOOD = (200, 1)  # requests and 5xx per 10 s: 0.5 % errors against a 1 % limit
BAD = (180, 20)  # 10 % errors


def running(w: World, **spec: Any) -> dict[str, Any]:
    obj = w.store.add(experiment(**spec))
    assert w.deliver("start", added(obj)) == 200
    return w.store.stored(NS, NAME)


def measured(
    w: World,
    obj: dict[str, Any],
    iteration: int,
    candidate: tuple[int, int] | None = GOOD,
    record: bool = True,
) -> CloudEvent:
    """What iterate records and emits at `iteration` with the baseline serving GOOD (and the
    candidate, unless the experiment has none); `record=False`: what it could not emit."""
    base = served(*GOOD, iteration)
    cand = served(*candidate, iteration) if candidate is not None else None
    data = aggregated(
        {
            m: {BASELINE_REVISION: base[m], **({CANDIDATE_REVISION: cand[m]} if cand else {})}
            for m in base
        },
        T0 + timedelta(seconds=iteration * INTERVAL),
    )
    ev = event(MEASURED, obj, iteration, data)
    return recorded(w.store, ev) if record else ev


def weights(status: dict[str, Any]) -> dict[str, int]:
    return {w["name"]: w["value"] for w in status["currentWeightDistribution"]}


def test_an_iteration_is_recorded_and_traffic_moves_by_at_most_the_increment() -> None:
    w = kserve_world(NS)
    obj = running(w)
    stored = w.store.stored(NS, NAME)
    w.store.write_status(stored, {**stored["status"], "transientFailures": 2})
    w.clock.advance(INTERVAL)
    mark = len(w.sink.events)
    first = measured(w, obj, 1)
    assert w.deliver("assess", first) == 200
    status = w.store.status(NS, NAME)
    assert status["stage"] == "Running"
    assert status["completedIterations"] == 1
    assert status["lastIterationTime"] == "2026-01-01T00:02:00Z"
    assert status["transientFailures"] == 0, "a recorded iteration resets the count"
    assert status["recommendation"]["action"] == "continue"
    assert status["message"].startswith("iteration 1 of 8: ")
    analysis = status["analysis"]
    assert set(analysis) == {
        "aggregatedMetrics",
        "versionAssessments",
        "winnerAssessment",
        "weights",
        "evidence",
    }
    assert analysis["aggregatedMetrics"] == payload(first)["aggregatedMetrics"]
    # from 80/20: up by the increment (20), no more, and the objects report it
    assert weights(status) == {BASELINE_REVISION: 60, CANDIDATE_REVISION: 40}
    assert canary_percent(w.objects) == 40
    [assessed] = w.sink.since(mark)
    assert assessed["type"] == ASSESSED
    assert (assessed[EXT_ITERATION], assessed[EXT_UID]) == ("1", obj["metadata"]["uid"])


def test_a_good_candidate_is_ramped_up_within_the_caps_then_promoted() -> None:
    w = kserve_world(NS)
    serve(w.metrics, BASELINE_REVISION, *GOOD)
    serve(w.metrics, CANDIDATE_REVISION, *GOOD)
    obj = w.store.add(experiment())
    status = w.run_to_end(obj)
    assert (status["stage"], status["outcome"]) == ("Completed", "Promoted")
    assert status["versionRecommendedForPromotion"] == CANDIDATE_REVISION
    assert weights(status) == {BASELINE_REVISION: 0, CANDIDATE_REVISION: 100}
    ramp = [0] + [p.body["spec"]["predictor"]["canaryTrafficPercent"] for p in w.objects.patches]
    assert ramp[1] == 20 and ramp[-1] == 100, ramp
    assert ramp == sorted(ramp), f"a good canary's weight never goes down: {ramp}"
    assert len(ramp) > 3, f"evidence this close to the limit takes several looks: {ramp}"
    assert all(b - a <= 20 for a, b in itertools.pairwise(ramp[:-1])), ramp
    assert condition(status, "Completed")["status"] == "True"
    assert condition(status, "VersionsReady")["status"] == "True"
    assert "Failed" not in {c["type"] for c in status["conditions"]}
    assert {a for *_, a in w.answers} == {200}
    assert w.sink.types().count(CONCLUDED) == 1 and w.sink.types().count(FINISHED) == 1


def test_the_candidate_never_gets_more_than_the_maximum_weight_before_promotion() -> None:
    w = kserve_world(NS)
    serve(w.metrics, BASELINE_REVISION, *GOOD)
    serve(w.metrics, CANDIDATE_REVISION, *GOOD)
    obj = w.store.add(
        experiment(
            strategy={
                "testingPattern": "Canary",
                "deploymentPattern": "Progressive",
                "weights": {"maxCandidateWeight": 50, "maxCandidateWeightIncrement": 10},
            }
        )
    )
    w.run_to_end(obj)
    ramp = [p.body["spec"]["predictor"]["canaryTrafficPercent"] for p in w.objects.patches]
    assert ramp[0] == 10, ramp
    assert max(ramp[:-1]) <= 50 and ramp[-1] == 100, ramp
    assert all(b - a <= 10 for a, b in itertools.pairwise(ramp[:-1])), ramp


def test_a_violated_objective_concludes_with_a_rollback_at_the_first_look() -> None:
    w = kserve_world(NS)
    obj = running(w)
    w.clock.advance(INTERVAL)
    mark = len(w.sink.events)
    assert w.deliver("assess", measured(w, obj, 1, candidate=BAD)) == 200
    status = w.store.status(NS, NAME)
    assert (status["stage"], status["completedIterations"]) == ("Finishing", 1)
    assert status["recommendation"]["rule"] == "objective-violated"
    assert "error-rate" in status["recommendation"]["message"]
    evidence = status["analysis"]["evidence"]["versions"][CANDIDATE_REVISION]
    error_rate = next(e for e in evidence if e["metric"] == "error-rate")
    assert error_rate["verdict"] == "violated"
    assert error_rate["sampleSize"] == 1200.0 and error_rate["estimate"] == 0.1
    assert canary_percent(w.objects) == 20, "assess concludes; finish moves the traffic"
    [concluded] = w.sink.since(mark)
    assert concluded["type"] == CONCLUDED and concluded[EXT_ITERATION] == "1"
    data = payload(concluded)
    assert (data["action"], data["version"]) == ("rollback", BASELINE_REVISION)
    # the decision is in status before the event says it: Finishing at iteration 1
    assert status["recommendation"]["action"] == "rollback"
    assert status["finishingTime"] == "2026-01-01T00:02:00Z" and "abortReason" not in status

    w.publish(concluded)
    status = w.store.status(NS, NAME)
    assert (status["stage"], status["outcome"]) == ("Completed", "RolledBack")
    assert status["completedIterations"] == 1
    ramp = [p.body["spec"]["predictor"]["canaryTrafficPercent"] for p in w.objects.patches]
    assert ramp == [20, 0]
    assert weights(status)[BASELINE_REVISION] == 100


def test_a_repeated_measurement_writes_nothing_and_sends_nothing_again() -> None:
    w = kserve_world(NS)
    obj = running(w)
    once = measured(w, obj, 1)
    w.deliver("assess", once)
    before = w.store.stored(NS, NAME)
    mark, patches = len(w.sink.events), len(w.objects.patches)
    assert w.deliver("assess", once) == 200
    assert w.store.stored(NS, NAME) == before
    assert len(w.objects.patches) == patches
    assert w.sink.since(mark) == [], "a follow-up per duplicate would multiply every event"


def test_a_repeated_concluding_measurement_leaves_the_decision_to_finish() -> None:
    w = kserve_world(NS)
    obj = running(w)
    once = measured(w, obj, 1, candidate=BAD)
    w.deliver("assess", once)
    writes, mark = len(w.store.writes), len(w.sink.events)
    assert w.deliver("assess", once) == 200
    assert w.sink.since(mark) == [] and len(w.store.writes) == writes
    status = w.store.status(NS, NAME)
    assert (status["stage"], status["completedIterations"]) == ("Finishing", 1)
    assert status["recommendation"]["action"] == "rollback"


def test_stale_and_early_measurements_are_acknowledged_and_ignored() -> None:
    w = kserve_world(NS)
    obj = running(w)
    w.deliver("assess", measured(w, obj, 1))
    w.deliver("assess", measured(w, obj, 2))
    late_and_early = [measured(w, obj, iteration) for iteration in (1, 4)]
    before = w.store.stored(NS, NAME)
    mark = len(w.sink.events)
    for ev in late_and_early:
        assert w.deliver("assess", ev) == 200
    assert w.store.stored(NS, NAME) == before
    assert w.sink.since(mark) == []


def test_a_measurement_after_the_end_changes_nothing() -> None:
    w = kserve_world(NS)
    obj = running(w)
    late = measured(w, obj, 1)
    w.publish(decided(w.store, obj, Concluded(Action.ROLLBACK, "stop"), iteration=0))
    assert w.store.status(NS, NAME)["stage"] == "Completed"
    before = w.store.stored(NS, NAME)
    mark = len(w.sink.events)
    assert w.deliver("assess", late) == 200
    assert w.store.stored(NS, NAME) == before
    assert w.sink.since(mark) == []


def test_a_measurement_about_an_earlier_namesake_changes_nothing() -> None:
    w = kserve_world(NS)
    obj = running(w)
    earlier = {**obj, "metadata": {**obj["metadata"], "uid": "some-earlier-uid"}}
    ev = measured(w, earlier, 1)
    writes, patches, mark = len(w.store.writes), len(w.objects.patches), len(w.sink.events)
    assert w.deliver("assess", ev) == 200
    assert (len(w.store.writes), len(w.objects.patches)) == (writes, patches)
    assert w.sink.since(mark) == []


def test_a_lost_write_race_is_retried_and_the_iteration_recorded_once() -> None:
    w = kserve_world(NS)
    obj = running(w)
    ev = measured(w, obj, 1)
    writes, patches, mark = len(w.store.writes), len(w.objects.patches), len(w.sink.events)
    w.store.conflict(2)
    assert w.deliver("assess", ev) == 200
    status = w.store.status(NS, NAME)
    assert status["completedIterations"] == 1
    assert weights(status) == {BASELINE_REVISION: 60, CANDIDATE_REVISION: 40}
    # two writes: the split asked for (write-ahead, before the patch), then the iteration
    assert len(w.store.writes) == writes + 2
    assert len(w.objects.patches) == patches + 1, "the retry finds the split in effect"
    assert [e["type"] for e in w.sink.since(mark)] == [ASSESSED]


def test_a_write_that_keeps_losing_is_left_to_the_broker_and_concludes_nothing() -> None:
    w = kserve_world(NS)
    obj = running(w)
    ev = measured(w, obj, 1)
    mark = len(w.sink.events)
    w.store.conflict(CONFLICT_ATTEMPTS)
    assert w.deliver("assess", ev) == 503
    assert w.store.status(NS, NAME)["completedIterations"] == 0
    assert w.sink.since(mark) == []


def test_a_split_not_yet_reported_is_not_recorded_and_the_redelivery_completes_it() -> None:
    w = kserve_world(NS)
    obj = running(w)
    w.objects.lagging = True
    mark = len(w.sink.events)
    assert w.deliver("assess", measured(w, obj, 1)) == 503
    assert w.clock.slept >= w.settings.readback_timeout_seconds
    assert w.store.status(NS, NAME)["completedIterations"] == 0
    assert w.sink.since(mark) == []
    w.objects.lagging = False
    assert w.deliver("assess", measured(w, obj, 1)) == 200
    status = w.store.status(NS, NAME)
    assert status["completedIterations"] == 1
    assert weights(status)[CANDIDATE_REVISION] == 40
    assert [e["type"] for e in w.sink.since(mark)] == [ASSESSED]


def test_measurements_the_analysis_cannot_use_end_the_experiment_safely() -> None:
    w = kserve_world(NS)
    obj = running(w)
    broken = {
        "aggregatedMetrics": {
            "data": {
                "latency": {
                    "data": {
                        BASELINE_REVISION: {"buckets": [{"le": "+Inf", "count": 10}]},
                        CANDIDATE_REVISION: {"value": 3},
                    }
                }
            }
        }
    }
    mark = len(w.sink.events)
    # as iterate recorded them: the data is authentic, the analysis cannot use it
    assert w.deliver("assess", recorded(w.store, event(MEASURED, obj, 1, broken))) == 422
    status = w.store.status(NS, NAME)
    assert status["completedIterations"] == 0
    assert (status["stage"], status["abortReason"]) == ("Finishing", "AnalysisFailed")
    assert condition(status, "Failed")["reason"] == "AnalysisFailed", "said at once"
    [concluded] = w.sink.since(mark)
    data = payload(concluded)
    assert (data["action"], data["failed"], data["reason"]) == ("rollback", True, "AnalysisFailed")
    assert "mixes histogram" in data["message"]

    w.publish(concluded)
    status = w.store.status(NS, NAME)
    assert (status["stage"], status["outcome"]) == ("Failed", "Aborted")
    failed = condition(status, "Failed")
    assert failed["reason"] == "AnalysisFailed" and "mixes histogram" in failed["message"]
    assert canary_percent(w.objects) == 0, "baseline restored"


def test_a_measured_event_without_measurements_is_permanent_and_changes_nothing() -> None:
    w = kserve_world(NS)
    obj = running(w)
    mark, writes = len(w.sink.events), len(w.store.writes)
    assert w.deliver("assess", event(MEASURED, obj, 1, {"measuredAt": "x"})) == 422
    assert w.sink.since(mark) == [] and len(w.store.writes) == writes


def test_conformance_and_fixed_split_record_iterations_without_moving_traffic() -> None:
    for strategy, version_info, candidate in (
        ({"testingPattern": "Canary", "deploymentPattern": "FixedSplit"}, None, GOOD),
        (
            {"testingPattern": "Conformance", "deploymentPattern": "Progressive"},
            {"baseline": {"name": BASELINE_REVISION}},
            None,
        ),
    ):
        w = kserve_world(NS)
        spec: dict[str, Any] = {"strategy": strategy}
        if version_info is not None:
            spec["versionInfo"] = version_info
        obj = running(w, **spec)
        patches = len(w.objects.patches)
        assert w.deliver("assess", measured(w, obj, 1, candidate)) == 200, strategy
        assert w.store.status(NS, NAME)["completedIterations"] == 1, strategy
        assert len(w.objects.patches) == patches, strategy


def test_measurements_naming_a_version_the_experiment_lacks_are_refused() -> None:
    # A Conformance experiment has only its baseline; measurements of a second version
    # cannot come from iterate, so the event is refused rather than analysed.
    w = kserve_world(NS)
    obj = running(
        w,
        strategy={"testingPattern": "Conformance", "deploymentPattern": "Progressive"},
        versionInfo={"baseline": {"name": BASELINE_REVISION}},
    )
    writes = len(w.store.writes)
    assert w.deliver("assess", measured(w, obj, 1, GOOD, record=False)) == 422
    assert len(w.store.writes) == writes
