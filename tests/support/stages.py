"""Drive the four functions as Knative would, inside one test process.

`Pipeline` serves each stage through functions-framework's own app (`create_app`, the
test client), wires them to the emulated API server and real Prometheus with a clock the
test controls, and routes every emitted event by the Trigger contract
(`functions.core.events.TRIGGERS`) in binary mode, as the broker would, until the queue is
empty. It records every delivery and answer so tests can assert on the event flow.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from flask import Flask
from functions_framework import create_app

from functions import runtime
from functions.core.context import Context
from functions.core.events import TRIGGERS

STAGES = ("start", "iterate", "assess", "finish")


class ManualClock:
    """The functions' clock: time moves only when the test says; sleeps are real but short,
    so read-backs see the controller stand-ins' status writes."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, 0.05))


class QueueSink:
    """The broker's ingress as the functions see it: what they emit is queued for routing."""

    def __init__(self) -> None:
        self.queue: collections.deque[CloudEvent] = collections.deque()
        self.emitted: list[CloudEvent] = []

    def emit(self, event: CloudEvent) -> None:
        self.emitted.append(event)
        self.queue.append(event)


@dataclass
class Delivery:
    stage: str
    type: str
    iteration: str | None
    status: int
    body: str


@dataclass
class Pipeline:
    ctx: Context
    sink: QueueSink
    structured: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    apps: dict[str, Flask] = field(default_factory=dict)

    def __post_init__(self) -> None:
        runtime.use_context(self.ctx)
        for stage in STAGES:
            self.apps[stage] = create_app(
                target=stage, source=f"functions/{stage}/main.py", signature_type="cloudevent"
            )

    def close(self) -> None:
        runtime.use_context(None)

    def deliver(self, stage: str, event: CloudEvent) -> int:
        headers, body = to_structured(event) if self.structured else to_binary(event)
        response = self.apps[stage].test_client().post("/", headers=headers, data=body)
        self.deliveries.append(
            Delivery(
                stage,
                event["type"],
                event.get_attributes().get("iteration"),
                response.status_code,
                response.get_data(as_text=True),
            )
        )
        return int(response.status_code)

    def publish(self, event: CloudEvent, max_events: int = 500) -> None:
        """Route `event` and everything it causes, as the broker would (without retries)."""
        self.sink.queue.append(event)
        routed = 0
        while self.sink.queue:
            current = self.sink.queue.popleft()
            for stage, types in TRIGGERS.items():
                if current["type"] in types:
                    self.deliver(stage, current)
            routed += 1
            if routed > max_events:
                raise AssertionError(f"event storm: more than {max_events} events routed")

    def ping(self) -> None:
        self.publish(
            CloudEvent(
                {"type": "dev.knative.sources.ping", "source": "/apis/v1/pingsources/arbiter"},
                {},
            )
        )

    def answers(self, stage: str | None = None) -> list[int]:
        return [d.status for d in self.deliveries if stage is None or d.stage == stage]


def apiserver_event(kind: str, obj: dict[str, Any]) -> CloudEvent:
    """What Knative's ApiServerSource (Resource mode) sends for an Experiment."""
    meta = obj["metadata"]
    return CloudEvent(
        {
            "type": f"dev.knative.apiserver.resource.{kind}",
            "source": "https://10.96.0.1:443",
            "subject": f"/apis/arbiter.dev/v1alpha1/namespaces/{meta['namespace']}/experiments/"
            f"{meta['name']}",
        },
        obj,
    )
