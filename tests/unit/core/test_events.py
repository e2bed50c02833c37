"""Arbiter's event payloads: each one through both HTTP modes and back, and bad data refused
with the field named."""

from __future__ import annotations

from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

from analytics.recommendation import Action, Recommendation
from functions.core import events
from functions.core.errors import PermanentError
from functions.core.events import ExperimentRef
from tests.support.status import T0

REF = ExperimentRef("demo", "canary", "uid-1")

PAYLOADS: list[events.Payload] = [
    events.Started(),
    events.Due(),
    events.Measured({"data": {"latency": {"data": {"a": {"value": 3}}}}}, T0),
    events.Measured({"data": {}}),
    events.Assessed(),
    events.Concluded.recommended(
        Recommendation(Action.PROMOTE, "b", "all-objectives-met", "promote b")
    ),
    events.Concluded.recommended(Recommendation(Action.ROLLBACK, None, "objective-violated", "m")),
    events.Concluded.abort("MetricUnavailable", "metric 'x' not found"),
    events.Finished(outcome="Promoted", stage="Completed", version="b", message="promoted b"),
    events.Finished(outcome="Aborted", reason="ExperimentDeleted"),
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__)
def test_each_payload_survives_both_http_modes(payload: events.Payload) -> None:
    event = events.make(payload, REF, 4, stage="assess")
    assert event["type"] == payload.TYPE
    assert event["source"] == f"{events.SOURCE}/assess"
    for headers, body in (to_binary(event), to_structured(event)):
        request = events.parse(from_http(headers, body), type(payload))
        assert (request.ref, request.iteration, request.payload) == (REF, 4, payload)
        assert request.id == event["id"]


def test_ids_stay_deterministic() -> None:
    first = events.make(events.Due(), REF, 2, stage="iterate")
    again = events.make(events.Due(), REF, 2, stage="iterate")
    assert first["id"] == again["id"] == "uid-1.2.due"


def test_the_concluded_data_keeps_the_shapes_finish_has_always_read() -> None:
    rec = Recommendation(Action.PROMOTE, "b", "all-objectives-met", "promote b")
    assert events.Concluded.recommended(rec).to_data() == {
        "action": "promote",
        "rule": "all-objectives-met",
        "message": "promote b",
        "version": "b",
    }
    assert events.Concluded.abort("AnalysisFailed", "bad").to_data() == {
        "action": "rollback",
        "failed": True,
        "reason": "AnalysisFailed",
        "message": "bad",
    }
    assert events.Measured({"data": {}}, T0).to_data() == {
        "measuredAt": "2026-01-01T00:00:00Z",
        "aggregatedMetrics": {"data": {}},
    }


def test_a_conclusion_is_never_continue() -> None:
    with pytest.raises(ValueError, match="continue"):
        events.Concluded(Action.CONTINUE)


def event_with(kind: type[events.Payload], data: Any, **attributes: str) -> CloudEvent:
    base = events.make_event(kind.TYPE, REF, 1)
    return CloudEvent({**base.get_attributes(), **attributes}, data)


@pytest.mark.parametrize(
    ("kind", "data", "field"),
    [
        (events.Measured, {}, "data.aggregatedMetrics"),
        (events.Measured, {"aggregatedMetrics": [1]}, "data.aggregatedMetrics"),
        (events.Measured, {"aggregatedMetrics": {}, "measuredAt": "soon"}, "data.measuredAt"),
        (events.Measured, {"aggregatedMetrics": {}, "measuredAt": 17}, "data.measuredAt"),
        (events.Concluded, {}, "data.action"),
        (events.Concluded, {"action": "continue"}, "data.action"),
        (events.Concluded, {"action": "celebrate"}, "data.action"),
        (events.Concluded, {"action": "promote", "version": 2}, "data.version"),
        (events.Concluded, {"action": "rollback", "failed": "yes"}, "data.failed"),
        (events.Concluded, {"action": "rollback", "message": ["m"]}, "data.message"),
        (events.Finished, {"outcome": 1}, "data.outcome"),
        (events.Due, ["not", "an", "object"], "data must be a JSON object"),
    ],
)
def test_data_that_does_not_parse_is_refused_naming_the_field(
    kind: type[events.Payload], data: Any, field: str
) -> None:
    with pytest.raises(PermanentError, match=field.replace(".", r"\.")) as e:
        events.parse(event_with(kind, data), kind)
    assert "uid-1.1." in str(e.value), "the refusal names the event"


def test_an_event_of_another_type_or_about_no_experiment_is_refused() -> None:
    measured = events.make(events.Measured({"data": {}}), REF, 1, stage="iterate")
    with pytest.raises(PermanentError, match=events.CONCLUDED):
        events.parse(measured, events.Concluded)
    anonymous = CloudEvent({"type": events.DUE, "source": "s", events.EXT_ITERATION: "1"}, {})
    with pytest.raises(PermanentError, match="without an experiment"):
        events.parse(anonymous, events.Due)
    bad_iteration = event_with(events.Due, {}, **{events.EXT_ITERATION: "two"})
    with pytest.raises(PermanentError, match="iteration"):
        events.parse(bad_iteration, events.Due)


def test_empty_hand_offs_accept_no_data_and_ignore_extra_fields() -> None:
    for data in (None, {}, {"later": "field"}):
        assert events.parse(event_with(events.Started, data), events.Started).payload == (
            events.Started()
        )
