"""What a stage works with: its ports and settings, gathered once per process at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudevents.http import CloudEvent

from functions.core.errors import PermanentError
from functions.core.metrics import MetricsSource
from functions.core.ports import (
    Addressables,
    AlertSink,
    Clock,
    EventSink,
    ExperimentStore,
    Objects,
    PingSources,
)
from functions.core.resources import ObjectRef
from functions.core.settings import Settings


class Unwired:
    """The alert ports of a context that wired none: every sink fails, and says why."""

    def url(self, ref: ObjectRef) -> str | None:
        raise PermanentError(f"{ref}: no Addressable resolver is wired in this process")

    def send(self, url: str, event: CloudEvent) -> None:
        raise PermanentError(f"{url}: no alert sender is wired in this process")


@dataclass(frozen=True)
class Context:
    store: ExperimentStore
    objects: Objects
    metrics: MetricsSource
    sink: EventSink
    pings: PingSources
    clock: Clock
    settings: Settings
    # The alert sinks an experiment names (functions/core/notify.py).
    addresses: Addressables = field(default_factory=Unwired)
    alerts: AlertSink = field(default_factory=Unwired)
