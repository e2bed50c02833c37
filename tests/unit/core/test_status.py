"""The Experiment status schema: reading what is stored, writing what the CRD keeps."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from analytics.recommendation import Action, Recommendation
from functions.core.status import (
    ACTIVE,
    TERMINAL,
    Condition,
    ConditionType,
    MeasurementRecord,
    Outcome,
    Stage,
    Status,
    Version,
    VersionWeight,
    resolved_document,
)
from tests.support.status import T0, full_status

# A Running experiment's status as the stages stored it before Status existed.
STORED: dict[str, Any] = {
    "stage": "Running",
    "message": "iteration 2 of 10: collecting evidence",
    "initTime": "2026-01-01T00:00:00Z",
    "startTime": "2026-01-01T00:00:10Z",
    "lastIterationTime": "2026-01-01T00:00:50Z",
    "lastUpdateTime": "2026-01-01T00:00:51Z",
    "observedGeneration": 1,
    "completedIterations": 2,
    "transientFailures": 0,
    "versions": [
        {"name": "iris-predictor-00001", "revision": "iris-predictor-00001"},
        {"name": "iris-predictor-00002", "revision": "iris-predictor-00002"},
    ],
    "currentWeightDistribution": [
        {"name": "iris-predictor-00001", "value": 80},
        {"name": "iris-predictor-00002", "value": 20},
    ],
    "analysis": {"aggregatedMetrics": {"data": {}}, "evidence": {"versions": {}}},
    "recommendation": {
        "action": "continue",
        "rule": "collecting-evidence",
        "message": "collecting evidence",
    },
    "conditions": [
        {
            "type": "TargetAcquired",
            "status": "True",
            "reason": "TargetAcquired",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        },
        {
            "type": "VersionsReady",
            "status": "True",
            "reason": "VersionsReady",
            "message": "iris-predictor-00001=iris-predictor-00001",
            "lastTransitionTime": "2026-01-01T00:00:10Z",
        },
    ],
}


def test_a_status_survives_the_round_trip_through_its_stored_form() -> None:
    status = full_status()
    assert Status.from_dict(status.to_dict()) == status
    assert Status.read({"status": status.to_dict()}) == status


def test_todays_stored_status_reads_typed_and_writes_back_unchanged() -> None:
    status = Status.read({"metadata": {"name": "x"}, "status": STORED})
    assert status.stage is Stage.RUNNING
    assert status.iterations_done == 2
    assert status.start_time == T0 + timedelta(seconds=10)
    assert status.split == {"iris-predictor-00001": 80, "iris-predictor-00002": 20}
    assert status.versions[1] == Version("iris-predictor-00002", "iris-predictor-00002")
    assert status.recommendation == Recommendation(
        Action.CONTINUE, None, "collecting-evidence", "collecting evidence"
    )
    assert status.concluding is None
    assert status.to_dict() == STORED


def test_fields_never_written_stay_out_of_the_stored_form() -> None:
    assert Status().to_dict() == {"stage": "Pending"}
    waiting = Status(stage=Stage.WAITING, message="waiting", init_time=T0)
    assert waiting.to_dict() == {
        "stage": "Waiting",
        "message": "waiting",
        "initTime": "2026-01-01T00:00:00Z",
    }
    assert waiting.iterations_done == 0 and waiting.split == {}


@pytest.mark.parametrize(
    ("field", "bad", "default"),
    [
        ("stage", "Paused", Stage.PENDING),
        ("stage", 3, Stage.PENDING),
        ("outcome", "Won", None),
        ("message", ["m"], ""),
        ("initTime", "yesterday", None),
        ("startTime", "2026-01-01T00:00:00", None),  # no offset: not comparable with now
        ("completedIterations", "2", None),
        ("completedIterations", -1, None),
        ("completedIterations", True, None),
        ("transientFailures", 1.5, None),
        ("observedGeneration", "1", None),
        ("versions", {"name": "a"}, ()),
        ("currentWeightDistribution", [{"name": "a", "value": "80"}], ()),
        ("currentWeightDistribution", [{"name": "a", "value": 80}, "b"], ()),
        ("analysis", [1, 2], None),
        ("recommendation", {"action": "celebrate", "rule": "r", "message": "m"}, None),
        ("recommendation", "promote", None),
        ("versionRecommendedForPromotion", 2, None),
        ("conditions", "Ready", ()),
        ("measurement", {"iteration": -1, "digest": "d"}, None),
        ("measurement", "measured", None),
    ],
)
def test_a_malformed_stored_value_reads_as_its_default(field: str, bad: Any, default: Any) -> None:
    stored = {**STORED, field: bad}
    status = Status.read({"status": stored})
    attribute = {
        "initTime": "init_time",
        "startTime": "start_time",
        "completedIterations": "completed_iterations",
        "transientFailures": "transient_failures",
        "observedGeneration": "observed_generation",
        "currentWeightDistribution": "weights",
        "versionRecommendedForPromotion": "version_recommended_for_promotion",
    }.get(field, field)
    assert getattr(status, attribute) == default
    # everything else is read as it was
    assert status.to_dict() == {k: v for k, v in STORED.items() if k != field} | (
        {"stage": "Pending"} if field == "stage" else {}
    )


def test_a_status_that_is_not_an_object_reads_as_a_new_one() -> None:
    for stored in (None, "Running", [STORED]):
        assert Status.read({"status": stored}) == Status()
    assert Status.read({}) == Status()


def test_malformed_entries_are_dropped_one_by_one_where_each_stands_alone() -> None:
    stored = {
        "versions": [{"name": "a", "revision": "a-1"}, {"revision": "x"}, "b", {"name": "c"}],
        "conditions": [
            {"type": "Sleepy", "status": "True"},
            7,
            {"type": "Completed", "status": "maybe"},
        ],
    }
    status = Status.read({"status": stored})
    assert status.versions == (Version("a", "a-1"), Version("c"))
    assert status.conditions == (Condition(ConditionType.COMPLETED, None),)
    assert status.to_dict()["conditions"] == [
        {"type": "Completed", "status": "Unknown", "reason": "", "message": ""}
    ]


def test_a_condition_moves_its_transition_time_only_when_it_changes() -> None:
    later = T0 + timedelta(minutes=5)
    status = Status(conditions=(Condition(ConditionType.TARGET_ACQUIRED, False, "Busy", "m", T0),))
    same = status.with_condition(ConditionType.TARGET_ACQUIRED, False, "StillBusy", "m2", later)
    assert same.conditions == (
        Condition(ConditionType.TARGET_ACQUIRED, False, "StillBusy", "m2", T0),
    )
    flipped = same.with_condition(ConditionType.TARGET_ACQUIRED, True, "Acquired", "", later)
    assert flipped.conditions[0].last_transition_time == later
    added = flipped.with_condition(ConditionType.FAILED, True, "InvalidSpec", "bad", later)
    assert [c.type for c in added.conditions] == [
        ConditionType.TARGET_ACQUIRED,
        ConditionType.FAILED,
    ]
    assert status.conditions[0].reason == "Busy", "the original is left as it was"


def test_the_split_and_the_concluding_recommendation() -> None:
    status = Status().with_split({"a": 90, "b": 10})
    assert status.weights == (VersionWeight("a", 90), VersionWeight("b", 10))
    assert status.to_dict()["currentWeightDistribution"] == [
        {"name": "a", "value": 90},
        {"name": "b", "value": 10},
    ]
    rec = Recommendation(Action.ROLLBACK, None, "objective-violated", "error-rate too high")
    assert dataclasses.replace(status, recommendation=rec).concluding == rec


def test_stage_and_outcome_names_are_the_stored_strings() -> None:
    assert [s.value for s in Stage] == [
        "Pending",
        "Waiting",
        "Initializing",
        "Running",
        "Finishing",
        "Completed",
        "Failed",
    ]
    assert {"Completed", "Failed"} == TERMINAL and {"Running", "Finishing"} == ACTIVE
    assert "Completed" in TERMINAL and Stage.RUNNING == "Running"
    assert [o.value for o in Outcome] == [
        "Promoted",
        "RolledBack",
        "Aborted",
        "Validated",
        "NotValidated",
    ]


def test_the_resolved_versions_fill_an_experiment_without_version_info() -> None:
    obj = {
        "spec": {"target": "ns/iris"},
        "status": Status(versions=(Version("a", "a-1"), Version("b", "b-2"))).to_dict(),
    }
    info = resolved_document(obj)["spec"]["versionInfo"]
    assert info == {
        "baseline": {"name": "a", "variables": [{"name": "revision", "value": "a-1"}]},
        "candidates": [{"name": "b", "variables": [{"name": "revision", "value": "b-2"}]}],
    }


def test_a_measurement_record_is_fresh_for_less_than_the_interval() -> None:
    requested = MeasurementRecord(4, requested_at=T0)
    assert requested.is_fresh(T0 + timedelta(seconds=59), 60)
    assert not requested.is_fresh(T0 + timedelta(seconds=60), 60)
    taken = MeasurementRecord(4, T0, T0 + timedelta(seconds=30), "d" * 64)
    assert taken.is_fresh(T0 + timedelta(seconds=89), 60), "counted from when it was taken"
    assert not MeasurementRecord(4).is_fresh(T0, 60)
