"""A Status with every field set, so tests can check every key a stage may write."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from analytics.conditional import PairTest, RatioTest
from analytics.recommendation import Action, Recommendation
from functions.core.status import (
    Condition,
    ConditionType,
    ControlRecord,
    MeasurementRecord,
    Outcome,
    Stage,
    Status,
    Version,
    VersionWeight,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def full_status() -> Status:
    status = Status(
        stage=Stage.FINISHING,
        message="iteration 3 of 10: promote",
        outcome=Outcome.PROMOTED,
        init_time=T0,
        start_time=T0.replace(minute=1),
        last_iteration_time=T0.replace(minute=3),
        last_update_time=T0.replace(minute=3, second=5),
        observed_generation=2,
        completed_iterations=3,
        transient_failures=1,
        versions=(Version("a", "a-00001"), Version("b", "b-00002")),
        weights=(VersionWeight("a", 70), VersionWeight("b", 30)),
        analysis={"aggregatedMetrics": {"data": {"x": {"data": {"a": {"value": 1}}}}}},
        recommendation=Recommendation(Action.PROMOTE, "b", "all-objectives-met", "promote b"),
        version_recommended_for_promotion="b",
        conditions=(
            Condition(ConditionType.TARGET_ACQUIRED, True, "TargetAcquired", "", T0),
            Condition(ConditionType.VERSIONS_READY, False, "Waiting", "waiting for b", T0),
        ),
        desired_weights=(VersionWeight("a", 70), VersionWeight("b", 30)),
        finishing_time=T0.replace(minute=3, second=6),
        abort_reason="MaxDurationExceeded",
        history=(
            {
                "iteration": 3,
                "time": "2026-01-01T00:03:00Z",
                "split": [70, 30],
                "estimates": [[[0.01, 0.005, 0.02, 1]], [[0.02, None, None, 0]]],
                "action": "promote",
                "rule": "all-objectives-met",
            },
        ),
        measurement=MeasurementRecord(
            3, T0.replace(minute=3), T0.replace(minute=3, second=1), "0" * 64, failed=True
        ),
        ratio_tests={"error-rate": {"b": RatioTest(1.5).fold(3, 4, 300, 10, 700)}},
        reward_tests={"conversion": {("a", "b"): PairTest().fold(3, 40, 300, 90, 700)}},
        control=ControlRecord(
            "20260101T000300Z-ab12", "promote", T0.replace(minute=3), "b", "ok", "ann", "late"
        ),
        paused_at=T0.replace(minute=2),
        paused_seconds=30.5,
        awaiting_promotion=Recommendation(Action.PROMOTE, "b", "all-objectives-met", "promote b"),
        notifications=(
            {
                "event": "concluded",
                "sink": "spec.notify[0]",
                "target": "https://hooks.example.com/arbiter",
                "attempts": 2,
                "lastAttempt": "2026-01-01T00:03:07Z",
                "delivered": True,
                "refused": False,
                "error": "spec.notify[0]: https://hooks.example.com/arbiter: refused: 503",
            },
        ),
    )
    unset = [f.name for f in dataclasses.fields(status) if not getattr(status, f.name)]
    assert not unset, f"full_status leaves {unset} unset"
    return status
