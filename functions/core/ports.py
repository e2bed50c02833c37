"""The ports the stages drive: the experiment store, the traffic objects, the clock's
PingSource, metrics, events.

`MetricsSource` lives with the metric templates (functions.core.metrics) and is re-exported.

Adapters implement these against the Kubernetes API, Prometheus and the broker; tests of
pure workflow logic may implement them in memory. Every method raises only the errors of
functions.core.errors.
"""

from __future__ import annotations

from collections.abc import Mapping
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


class Clock(Protocol):
    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


__all__ = ["Clock", "EventSink", "ExperimentStore", "MetricsSource", "Objects", "PingSources"]
