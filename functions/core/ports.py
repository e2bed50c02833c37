"""The ports the stages drive: the experiment store, the traffic objects, the clock's
PingSource, metrics, events, the Kubernetes Events that tell an experiment's story, and the
alert sinks it names.

`MetricsSource` lives with the metric templates (functions.core.metrics) and is re-exported.

Adapters implement these against the Kubernetes API, Prometheus and the broker; tests of
pure workflow logic may implement them in memory. Every method raises only the errors of
functions.core.errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cloudevents.http import CloudEvent

from functions.core.backends import Patch
from functions.core.events import ExperimentRef
from functions.core.metrics import MetricsSource
from functions.core.resources import ObjectRef

Obj = dict[str, Any]


class ExperimentStore(Protocol):
    def get(self, ref: ExperimentRef) -> Obj:
        """The experiment as stored now; NotFoundError if it is gone."""
        ...

    def list(self) -> list[Obj]:
        """Every experiment the functions may act on."""
        ...

    def write_status(self, obj: Obj, status: Mapping[str, Any]) -> Obj:
        """Merge `status` into the experiment's status, only if the object is still at the
        resourceVersion `obj` was read at (ConflictError otherwise). Returns the stored object."""
        ...

    def patch_metadata(self, obj: Obj, metadata: Mapping[str, Any]) -> Obj:
        """Merge `metadata` (finalizers) into the experiment's metadata, only if the object
        is still at the resourceVersion `obj` was read at (ConflictError otherwise).
        Returns the stored object; NotFoundError once removing the last finalizer of an
        object being deleted has let the deletion complete."""
        ...

    def get_metric(self, namespace: str, name: str) -> Obj:
        """A Metric resource; NotFoundError if it does not exist."""
        ...


class Objects(Protocol):
    """Reads and patches the objects that carry traffic."""

    def get(self, ref: ObjectRef) -> Obj: ...

    def patch(self, patch: Patch) -> Obj: ...


class PingSources(Protocol):
    """The clock's PingSource (functions/core/clock.py), by namespace and name."""

    def get(self, namespace: str, name: str) -> Obj:
        """The PingSource as stored now; NotFoundError if there is none."""
        ...

    def create(self, body: Mapping[str, Any]) -> Obj:
        """Create the PingSource `body` describes; ConflictError if it exists already."""
        ...

    def annotate(self, namespace: str, name: str, annotations: Mapping[str, str]) -> Obj:
        """Merge `annotations` into its metadata (its resourceVersion moves); NotFoundError
        if there is none."""
        ...

    def delete(self, namespace: str, name: str, resource_version: str) -> None:
        """Delete it only if it is still at `resource_version` (ConflictError otherwise;
        NotFoundError if it is gone)."""
        ...


class EventSink(Protocol):
    def emit(self, event: CloudEvent) -> None:
        """Deliver an event to the broker; TransientError if it cannot."""
        ...


@dataclass(frozen=True)
class Occurrence:
    """One thing that happened to an experiment, as a Kubernetes Event tells it.

    `reason` is CamelCase (what `kubectl get events` shows), `action` what was done
    (machine-readable), `note` the human-readable detail. `key` tells this occurrence apart
    from every other of the same reason on the same experiment (a transition and its
    iteration): the Event's name derives from it, so recording it twice is recording it once.
    """

    reason: str
    action: str
    note: str
    key: str
    warning: bool = False


class EventRecorder(Protocol):
    def record(self, regarding: Mapping[str, Any], occurrence: Occurrence, at: datetime) -> None:
        """Record `occurrence` as an Event on the object `regarding` (as stored). One already
        recorded is not an error; anything else raises an error of functions.core.errors."""
        ...


class Addressables(Protocol):
    """Resolves an Addressable (Knative's duck type: `status.address.url`)."""

    def url(self, ref: ObjectRef) -> str | None:
        """The object's address, None while it has none; NotFoundError if it does not exist."""
        ...


class AlertSink(Protocol):
    def send(self, url: str, event: CloudEvent) -> None:
        """POST `event` to `url`; TransientError if it was not accepted."""
        ...


class Clock(Protocol):
    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


__all__ = [
    "Addressables",
    "AlertSink",
    "Clock",
    "EventRecorder",
    "EventSink",
    "ExperimentStore",
    "MetricsSource",
    "Objects",
    "Occurrence",
    "PingSources",
]
