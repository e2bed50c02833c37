"""The edge every stage runs behind: errors become the answers Knative's retry rules expect.

A PermanentError answers 422 (not retried: dead letter), a TransientError 503 (retried with
backoff). These are checked here through functions-framework's own app, once for every stage
entry point, instead of only inside slow end-to-end flows.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from functions_framework import create_app

from functions import runtime
from functions.core import events
from functions.core.errors import ConflictError
from tests import fakes

STAGES = ("start", "iterate", "assess", "finish")


@pytest.fixture
def world() -> Iterator[fakes.World]:
    w = fakes.kserve_world("demo")
    runtime.use_context(w.ctx)
    yield w
    runtime.use_context(None)


def _post(stage: str, event: CloudEvent) -> int:
    app = create_app(target=stage, source=f"functions/{stage}/main.py", signature_type="cloudevent")
    headers, body = to_binary(event)
    return int(app.test_client().post("/", headers=headers, data=body).status_code)


@pytest.mark.parametrize("stage", ["iterate", "assess", "finish"])
def test_an_event_that_cannot_be_parsed_is_refused_with_422(world: fakes.World, stage: str) -> None:
    event_type = {"iterate": events.DUE, "assess": events.MEASURED, "finish": events.CONCLUDED}
    bad = CloudEvent(
        {
            "type": event_type[stage],
            "source": "test",
            events.EXT_NAMESPACE: "demo",
            events.EXT_NAME: "iris-canary",
            events.EXT_UID: "uid-1",
            events.EXT_ITERATION: "not-a-number",
        },
        {},
    )
    assert _post(stage, bad) == 422


def test_a_transient_failure_answers_503_so_the_broker_retries(world: fakes.World) -> None:
    world.store.failures.add("list", ConflictError("the API server is busy"))
    assert _post("iterate", fakes.ping()) == 503


def test_every_stage_answers_2xx_to_an_event_about_nobody(world: fakes.World) -> None:
    gone = fakes.event(events.DUE, fakes.ref(fakes.experiment(), uid="gone"), 1)
    assert _post("iterate", gone) == 200
