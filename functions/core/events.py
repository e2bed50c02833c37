"""The CloudEvent contract: every event type and extension attribute Arbiter emits or accepts.

The Trigger manifests in `eventing/` filter on these very strings; a test cross-checks them.
`make_event` and `experiment_ref` are the only places that build or read the attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cloudevents.http import CloudEvent

from functions.core.errors import PermanentError

SOURCE: Final = "arbiter.dev/functions"

# Emitted by Arbiter's own stages (reverse-DNS, one per hand-off in the event flow).
STARTED: Final = "dev.arbiter.experiment.started"
DUE: Final = "dev.arbiter.experiment.due"
MEASURED: Final = "dev.arbiter.experiment.measured"
ASSESSED: Final = "dev.arbiter.experiment.assessed"
CONCLUDED: Final = "dev.arbiter.experiment.concluded"
FINISHED: Final = "dev.arbiter.experiment.finished"

# Emitted by Knative sources we subscribe to.
APISERVER_ADD: Final = "dev.knative.apiserver.resource.add"
APISERVER_UPDATE: Final = "dev.knative.apiserver.resource.update"
APISERVER_DELETE: Final = "dev.knative.apiserver.resource.delete"
PING: Final = "dev.knative.sources.ping"

# Which event types wake which stage; the Trigger manifests must say exactly this.
TRIGGERS: Final[dict[str, tuple[str, ...]]] = {
    "start": (APISERVER_ADD, FINISHED, PING),
    "iterate": (PING, STARTED, DUE),
    "assess": (MEASURED,),
    "finish": (CONCLUDED, APISERVER_DELETE),
}

# Extension attributes carried by every Arbiter event (lower-case alphanumerics, per spec),
# so Triggers can filter on them and handlers can drop duplicates.
EXT_NAMESPACE: Final = "experimentnamespace"
EXT_NAME: Final = "experimentname"
EXT_UID: Final = "experimentuid"
EXT_ITERATION: Final = "iteration"


@dataclass(frozen=True)
class ExperimentRef:
    """Which experiment an event is about; `uid` tells a re-created namesake apart."""

    namespace: str
    name: str
    uid: str | None = None

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def make_event(
    event_type: str,
    ref: ExperimentRef,
    iteration: int,
    data: Mapping[str, Any] | None = None,
    stage: str = "",
) -> CloudEvent:
    """An Arbiter event about one experiment at one iteration.

    The id is derived from (uid, iteration, type), so a stage that runs twice for the same
    step emits the same id and a broker or handler can recognise the repeat.
    """
    attributes = {
        "type": event_type,
        "source": f"{SOURCE}/{stage}" if stage else SOURCE,
        "id": f"{ref.uid or ref}.{iteration}.{event_type.rsplit('.', 1)[-1]}",
        "subject": f"{ref.namespace}/{ref.name}",
        "datacontenttype": "application/json",
        EXT_NAMESPACE: ref.namespace,
        EXT_NAME: ref.name,
        EXT_ITERATION: str(iteration),
    }
    if ref.uid:
        attributes[EXT_UID] = ref.uid
    return CloudEvent(attributes, dict(data or {}))


def _object_ref(obj: object) -> ExperimentRef | None:
    if not isinstance(obj, Mapping):
        return None
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not meta.get("name"):
        return None
    uid = meta.get("uid")
    return ExperimentRef(
        str(meta.get("namespace") or "default"), str(meta["name"]), str(uid) if uid else None
    )


def experiment_ref(event: CloudEvent) -> ExperimentRef | None:
    """The experiment an event is about, or None for events about no one (a ping).

    Arbiter's own events carry it in extension attributes; ApiServerSource events carry
    the whole object as data.
    """
    attrs = event.get_attributes()
    if attrs.get(EXT_NAME):
        return ExperimentRef(
            str(attrs.get(EXT_NAMESPACE) or "default"),
            str(attrs[EXT_NAME]),
            str(attrs[EXT_UID]) if attrs.get(EXT_UID) else None,
        )
    if str(attrs.get("type", "")).startswith("dev.knative.apiserver."):
        ref = _object_ref(event.get_data())
        if ref is None:
            raise PermanentError(
                f"event {attrs.get('id')}: ApiServerSource data is not an object with "
                "metadata.name; is the source in Resource mode?"
            )
        return ref
    return None


def iteration_of(event: CloudEvent) -> int:
    """The iteration an Arbiter event carries; a missing or bad one is a permanent error."""
    raw = event.get_attributes().get(EXT_ITERATION)
    try:
        value = int(str(raw))
    except ValueError:
        raise PermanentError(
            f"event {event.get_attributes().get('id')}: extension attribute "
            f"{EXT_ITERATION!r} must be an integer, got {raw!r}"
        ) from None
    if value < 0:
        raise PermanentError(f"event {event['id']}: {EXT_ITERATION} must be >= 0, got {value}")
    return value
