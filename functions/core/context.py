"""What a stage works with: its ports and settings, gathered once per process at the edge."""

from __future__ import annotations

from dataclasses import dataclass

from functions.core.metrics import MetricsSource
from functions.core.ports import Clock, EventSink, ExperimentStore, Objects, PingSources
from functions.core.settings import Settings


@dataclass(frozen=True)
class Context:
    store: ExperimentStore
    objects: Objects
    metrics: MetricsSource
    sink: EventSink
    pings: PingSources
    clock: Clock
    settings: Settings
