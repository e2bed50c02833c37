"""The experiment's story: one Kubernetes Event per status change, derived in one place."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from analytics.recommendation import Action, Recommendation
from functions.core.status import (
    Condition,
    ConditionType,
    Outcome,
    Stage,
    Status,
    VersionWeight,
)
from functions.core.story import StoryTeller, story
from tests.fakes import (
    BASELINE_REVISION,
    CANDIDATE_REVISION,
    T0,
    FakeClock,
    FakeRecorder,
    FakeStore,
    experiment,
    kserve_world,
    serve,
)

GOOD = (200, 1)
BAD = (180, 20)


def told(before: Status, after: Status, **raw: Any) -> list[tuple[str, bool, str]]:
    new = {**after.to_dict(), **raw}
    return [(o.reason, o.warning, o.note) for o in story(before.to_dict(), new)]


def evidence(verdicts: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "evidence": {
            "versions": {
                v: [
                    {"metric": f"m{i}", "verdict": verdict, "estimate": 0.01}
                    for i, verdict in enumerate(vs)
                ]
                for v, vs in verdicts.items()
            }
        }
    }


RUNNING = Status(stage=Stage.RUNNING, completed_iterations=2)


def test_nothing_changed_tells_nothing() -> None:
    assert story(RUNNING.to_dict(), RUNNING.to_dict()) == []
    assert story({}, {}) == []
    # A write that only stamps times and the measurement request changes no story.
    stamped = replace(RUNNING, last_update_time=T0, transient_failures=1)
    assert told(RUNNING, stamped) == []


def test_each_stage_change_is_one_event() -> None:
    pending = Status()
    assert told(pending, replace(pending, stage=Stage.WAITING, message="queued")) == [
        ("Waiting", False, "queued")
    ]
    assert [r for r, _, _ in told(pending, replace(pending, stage=Stage.INITIALIZING))] == [
        "Initializing"
    ]
    assert [r for r, _, _ in told(pending, replace(pending, stage=Stage.RUNNING))] == ["Started"]


def test_a_decision_is_concluded_and_an_abort_is_a_warning() -> None:
    promote = Recommendation(Action.PROMOTE, "v2", "winner-conclusive", "v2 is better")
    finishing = replace(RUNNING, stage=Stage.FINISHING, recommendation=promote, message="m")
    ((reason, warning, note),) = told(RUNNING, finishing)
    assert (reason, warning) == ("Concluded", False)
    assert "promote v2" in note and "winner-conclusive" in note
    rollback = Recommendation(Action.ROLLBACK, None, "", "no data")
    aborting = replace(finishing, recommendation=rollback, abort_reason="MetricUnavailable")
    ((reason, warning, note),) = told(RUNNING, aborting)
    assert (reason, warning) == ("Aborting", True)
    assert note.startswith("MetricUnavailable: restore the baseline")


def test_the_end_is_told_by_its_outcome_or_as_a_failure() -> None:
    finishing = replace(RUNNING, stage=Stage.FINISHING)
    done = replace(
        finishing,
        stage=Stage.COMPLETED,
        outcome=Outcome.PROMOTED,
        message="promoted v2",
        version_recommended_for_promotion="v2",
    ).with_condition(ConditionType.COMPLETED, True, "winner-conclusive", "promoted v2", T0)
    # The Completed condition is the stage's own story: one Event, not two.
    assert told(finishing, done) == [("Promoted", False, "Promoted: promoted v2 (version v2)")]
    failed = replace(
        finishing, stage=Stage.FAILED, outcome=Outcome.ABORTED, message="target gone"
    ).with_condition(ConditionType.FAILED, True, "TargetNotFound", "target gone", T0)
    assert told(finishing, failed) == [("Failed", True, "Aborted: TargetNotFound: target gone")]


def test_traffic_moves_are_told_from_before_to_after() -> None:
    before = replace(RUNNING, weights=(VersionWeight("v1", 80), VersionWeight("v2", 20)))
    after = before.with_split({"v1": 60, "v2": 40})
    assert told(before, after) == [("TrafficMoved", False, "v1 80 → 60, v2 20 → 40")]
    assert told(RUNNING, after) == [("TrafficMoved", False, "v1 → 60, v2 → 40")]
    # The split asked for (written ahead) is not a move: only the split read back is.
    assert told(before, before.with_desired({"v1": 60, "v2": 40})) == []


def test_each_verdict_change_per_version_and_objective_is_one_event() -> None:
    before = replace(RUNNING, analysis=evidence({"v1": ["undecided"], "v2": ["undecided"]}))
    decided = evidence({"v1": ["satisfied"], "v2": ["violated"]})
    after = replace(RUNNING, analysis=decided, completed_iterations=3)
    assert told(before, after) == [
        ("ObjectiveSatisfied", False, "v1: m0 undecided → satisfied, estimate 0.01"),
        ("ObjectiveViolated", True, "v2: m0 undecided → violated, estimate 0.01"),
    ]
    assert told(after, replace(after, completed_iterations=4)) == []


def test_winner_and_recommendation_are_told_while_running() -> None:
    analysis = {"winnerAssessment": {"data": {"winner": "v2"}, "message": "v2 wins"}}
    after = replace(RUNNING, analysis=analysis, version_recommended_for_promotion="v2")
    assert told(RUNNING, after) == [
        ("WinnerFound", False, "v2: v2 wins"),
        ("RecommendedForPromotion", False, "v2"),
    ]


def test_conditions_are_told_by_reason_and_trouble_is_a_warning() -> None:
    ready = RUNNING.with_condition(ConditionType.VERSIONS_READY, True, "VersionsReady", "", T0)
    assert told(RUNNING, ready) == [("VersionsReady", False, "VersionsReady=True")]
    late = ready.with_condition(ConditionType.VERSIONS_READY, False, "NotReady", "v2 down", T0)
    assert told(ready, late) == [("NotReady", True, "VersionsReady=False: v2 down")]
    # A Failed condition on an experiment that keeps its stage (a finish that will retry).
    failing = RUNNING.with_condition(ConditionType.FAILED, True, "FinishFailed", "boom", T0)
    assert told(RUNNING, failing) == [("FinishFailed", True, "Failed=True: boom")]
    # A reason that is no identifier reads as the condition's type.
    odd = (Condition(ConditionType.NOTIFIED, False, "not one", "x", T0),)
    assert [r for r, _, _ in told(RUNNING, replace(RUNNING, conditions=odd))] == ["Notified"]


def test_each_manual_request_is_told_once_by_its_id() -> None:
    before = {**RUNNING.to_dict(), "control": {"appliedId": "r1", "action": "pause"}}
    after = {
        **RUNNING.to_dict(),
        "control": {
            "appliedId": "r2",
            "action": "promote",
            "version": "v2",
            "requestedBy": "ana",
            "reason": "CHG-1",
        },
    }
    assert [(o.reason, o.warning, o.note) for o in story(before, after)] == [
        ("ControlRequested", False, "promote v2 requested by ana: CHG-1")
    ]
    # The same request written again (a redelivery, another field moving) is not told again.
    assert story(after, {**after, "message": "later"}) == []
    refused = {**after, "control": {"appliedId": "r3", "action": "promote", "refused": "no"}}
    ((o,),) = [story(after, refused)]
    assert (o.reason, o.warning) == ("ControlRefused", True)
    assert o.note == "promote requested by someone; refused: no"


def test_a_pause_ending_is_resumed_not_trouble_and_control_applied_is_not_told_twice() -> None:
    paused = replace(RUNNING, control=None).with_condition(
        ConditionType.PAUSED, True, "Paused", "pause requested by ana", T0
    )
    paused = paused.with_condition(ConditionType.CONTROL_APPLIED, True, "Pause", "ok", T0)
    told = story(RUNNING.to_dict(), paused.to_dict())
    assert [(o.reason, o.warning) for o in told] == [("Paused", False)]
    resumed = paused.with_condition(ConditionType.PAUSED, False, "Concluded", "paused 120 s", T0)
    ((o,),) = [story(paused.to_dict(), resumed.to_dict())]
    assert (o.reason, o.warning) == ("Resumed", False)


def test_a_write_is_told_once_after_it_is_stored_and_recording_failures_do_not_fail_it() -> None:
    store, recorder = FakeStore(), FakeRecorder()
    teller = StoryTeller(store, recorder, FakeClock())
    obj = store.add(experiment())
    stored = teller.write_status(obj, replace(Status(), stage=Stage.WAITING).to_dict())
    assert recorder.reasons() == ["Waiting"]
    recorder.fail()
    teller.write_status(stored, replace(Status(), stage=Stage.RUNNING).to_dict())
    assert store.status("demo", "iris-canary")["stage"] == "Running"
    assert recorder.reasons() == ["Waiting"]


def test_the_story_of_a_canary_that_promotes() -> None:
    w = kserve_world("demo")
    serve(w.metrics, BASELINE_REVISION, *GOOD)
    serve(w.metrics, CANDIDATE_REVISION, *GOOD)
    status = w.run_to_end(w.store.add(experiment()))
    assert status["outcome"] == "Promoted"
    reasons = w.recorder.reasons()
    assert reasons[0] == "Started" and reasons[-1] == "Promoted"
    assert reasons.index("Concluded") < reasons.index("Promoted")
    assert "TrafficMoved" in reasons and "ObjectiveSatisfied" in reasons
    assert "ObjectiveViolated" not in reasons and "Failed" not in reasons
    # Told once each: no transition is recorded twice.
    assert len({(o.reason, o.key) for _, o in w.recorder.events}) == len(w.recorder.events)


def test_the_story_of_a_canary_that_rolls_back() -> None:
    w = kserve_world("demo")
    serve(w.metrics, BASELINE_REVISION, *GOOD)
    serve(w.metrics, CANDIDATE_REVISION, *BAD)
    status = w.run_to_end(w.store.add(experiment()))
    assert status["outcome"] == "RolledBack"
    events = [o for _, o in w.recorder.events]
    reasons = [o.reason for o in events]
    assert reasons[0] == "Started" and reasons[-1] == "RolledBack"
    violated = [o for o in events if o.reason == "ObjectiveViolated"]
    assert violated and all(o.warning for o in violated)
    # The verdicts lead up to the decision they make, told in that order.
    assert max(i for i, r in enumerate(reasons) if r == "ObjectiveViolated") < reasons.index(
        "Concluded"
    )
    assert any(CANDIDATE_REVISION in o.note for o in violated)
    (moved_back,) = [o for o in events if o.reason == "TrafficMoved"][-1:]
    assert f"{CANDIDATE_REVISION} " in moved_back.note and moved_back.note.endswith("→ 0")
