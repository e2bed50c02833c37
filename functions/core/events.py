"""The CloudEvent contract: every event type, extension attribute and payload Arbiter emits
or accepts.

The Trigger manifests in `eventing/` filter on these very strings; a test cross-checks them.
`make_event` and `experiment_ref` are the only places that build or read the attributes;
each of Arbiter's own event types has one payload class, and `make` and `parse` are the only
places that turn payloads into event data and back. An event that does not parse, or an
Arbiter event without the experiment's uid and iteration, is refused with an
InvalidEventError naming the attribute or field, so the runtime answers 4xx, nobody retries
it, and no experiment's status changes because of it.

Event data is a hint, never the truth: each stage acts on what the experiment's status
records. The one payload whose data a stage uses, `experiment.measured`, is believed only
when its digest is the one iterate recorded in status before emitting it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from functools import cached_property
from typing import Any, ClassVar, Final, Generic, Protocol, Self, TypeGuard, TypeVar

from cloudevents.http import CloudEvent

from analytics.recommendation import Action, Recommendation
from functions.core.errors import InvalidEventError
from functions.core.timestamps import iso, parse_time

SOURCE: Final = "arbiter.dev/functions"

# Emitted by Arbiter's own stages (reverse-DNS, one per hand-off in the event flow).
STARTED: Final = "dev.arbiter.experiment.started"
DUE: Final = "dev.arbiter.experiment.due"
MEASURED: Final = "dev.arbiter.experiment.measured"
ASSESSED: Final = "dev.arbiter.experiment.assessed"
CONCLUDED: Final = "dev.arbiter.experiment.concluded"
FINISHED: Final = "dev.arbiter.experiment.finished"
# The clock found an Experiment being deleted (its finalizer holds it): restore its baseline.
DELETING: Final = "dev.arbiter.experiment.deleting"
# Sent only to an experiment's alert sinks (functions/core/notify.py), never to the broker,
# with `concluded` and `finished`: the experiment ended Failed.
FAILED: Final = "dev.arbiter.experiment.failed"

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
    "finish": (CONCLUDED, APISERVER_DELETE, DELETING),
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
            raise InvalidEventError(
                f"event {attrs.get('id')}: ApiServerSource data is not an object with "
                "metadata.name; is the source in Resource mode?"
            )
        return ref
    return None


def iteration_of(event: CloudEvent) -> int:
    """The iteration an Arbiter event carries; a missing or bad one refuses the event."""
    raw = event.get_attributes().get(EXT_ITERATION)
    if raw is None:
        raise InvalidEventError(
            f"event {event.get_attributes().get('id')}: extension attribute "
            f"{EXT_ITERATION!r} is required"
        )
    text = str(raw)
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_ITERATION_DIGITS:
        raise InvalidEventError(
            f"event {event.get_attributes().get('id')}: extension attribute "
            f"{EXT_ITERATION!r} must be a non-negative integer, got {raw!r}"
        )
    return int(text)


# An iteration is a count of intervals; nine digits is far past any experiment's length.
_MAX_ITERATION_DIGITS: Final = 9

E = TypeVar("E", bound=Enum)


class Data:
    """An event's data as a payload reads it: every accessor refuses a bad field by name."""

    def __init__(self, event_id: str, raw: Mapping[str, Any]) -> None:
        self.event_id = event_id
        self.raw = raw

    @classmethod
    def of(cls, event: CloudEvent) -> Data:
        event_id = str(event.get_attributes().get("id"))
        raw = event.get_data()
        if raw is None:
            return cls(event_id, {})
        if not isinstance(raw, Mapping):
            raise InvalidEventError(f"event {event_id}: data must be a JSON object")
        return cls(event_id, raw)

    def refuse(self, key: str, expected: str) -> InvalidEventError:
        got = repr(self.raw[key]) if key in self.raw else "nothing"
        return InvalidEventError(
            f"event {self.event_id}: data.{key} must be {expected}, got {got[:200]}"
        )

    def text(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is None or isinstance(value, str):
            return value
        raise self.refuse(key, "a string")

    def flag(self, key: str) -> bool:
        value = self.raw.get(key, False)
        if isinstance(value, bool):
            return value
        raise self.refuse(key, "true or false")

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.raw.get(key)
        if isinstance(value, Mapping):
            return value
        raise self.refuse(key, "an object")

    def time(self, key: str) -> datetime | None:
        value = self.raw.get(key)
        if value is None:
            return None
        parsed = parse_time(value)
        if parsed is None:
            raise self.refuse(key, "an RFC 3339 time with an offset")
        return parsed

    def choice(self, key: str, allowed: tuple[E, ...]) -> E:
        value = self.raw.get(key)
        for option in allowed:
            if value == option.value:
                return option
        raise self.refuse(key, " or ".join(str(o.value) for o in allowed))


class Payload(Protocol):
    """What one event type carries in its data."""

    TYPE: ClassVar[str]

    def to_data(self) -> dict[str, Any]: ...

    @classmethod
    def from_data(cls, data: Data) -> Self: ...


P = TypeVar("P", bound=Payload)


@dataclass(frozen=True)
class _Empty:
    """A hand-off that says only which experiment and iteration: its attributes are all."""

    def to_data(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_data(cls, data: Data) -> Self:
        return cls()


@dataclass(frozen=True)
class Started(_Empty):
    """start took the target and set the first split (iteration 0)."""

    TYPE: ClassVar[str] = STARTED


@dataclass(frozen=True)
class Due(_Empty):
    """The iteration's interval has passed: measure it."""

    TYPE: ClassVar[str] = DUE


@dataclass(frozen=True)
class Assessed(_Empty):
    """The iteration is recorded and traffic moved; the experiment goes on."""

    TYPE: ClassVar[str] = ASSESSED


def _canonical(value: object) -> object:
    """`value` with every number as a float, so a re-encoding that writes 1206.0 as 1206 (as
    a broker in another language may) digests the same."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            return value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return repr(value)


def digest(data: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of event data: sorted keys, no spaces, numbers as floats."""
    text = json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Deleting(_Empty):
    """The experiment is being deleted and still holds its target: restore the baseline."""

    TYPE: ClassVar[str] = DELETING


WindowCounts = Mapping[str, Mapping[str, tuple[int, int]]]
"""metric -> version -> (events, trials) over one iteration's own window."""


@dataclass(frozen=True)
class Measured:
    """Every metric of every version for one iteration, in `aggregatedMetrics` shape (which
    the analysis validates), and when they were read.

    `windows` holds, for each metric a maxRatio objective judges and the first reward,
    each version's own counts over this iteration's window alone (`window_seconds` long,
    since the last iteration): what assess folds into the conditional tests
    (status.ratioTests, status.rewardTests). A
    version without data in the window (a missed scrape) is left out.

    iterate records the data's `digest` in status before it emits the event; assess uses
    the data only when it is what iterate recorded."""

    TYPE: ClassVar[str] = MEASURED
    aggregated_metrics: Mapping[str, Any]
    measured_at: datetime | None = None
    windows: WindowCounts = field(default_factory=dict)
    window_seconds: int | None = None

    @cached_property
    def digest(self) -> str:
        return digest(self.to_data())

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.measured_at is not None:
            data["measuredAt"] = iso(self.measured_at)
        data["aggregatedMetrics"] = dict(self.aggregated_metrics)
        if self.windows:
            data["windows"] = {
                "seconds": self.window_seconds,
                "data": {
                    metric: {v: {"events": e, "trials": n} for v, (e, n) in by_version.items()}
                    for metric, by_version in self.windows.items()
                },
            }
        return data

    @classmethod
    def from_data(cls, data: Data) -> Self:
        windows, seconds = _windows(data)
        measured = cls(
            dict(data.mapping("aggregatedMetrics")), data.time("measuredAt"), windows, seconds
        )
        try:
            measured.digest  # noqa: B018 - computed here, so odd data is the event's fault
        except (RecursionError, ValueError, TypeError) as e:
            raise InvalidEventError(
                f"event {data.event_id}: data has no canonical form ({type(e).__name__})"
            ) from None
        return measured


def _windows(data: Data) -> tuple[dict[str, dict[str, tuple[int, int]]], int | None]:
    """`windows` of an experiment.measured event: whole counts, events never above trials."""
    if data.raw.get("windows") is None:
        return {}, None
    raw = data.mapping("windows")
    seconds = raw.get("seconds")
    if not _whole(seconds) or not isinstance(raw.get("data"), Mapping):
        raise data.refuse("windows", "an object with whole seconds and data")
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for metric, by_version in raw["data"].items():
        if not isinstance(by_version, Mapping):
            raise data.refuse("windows", "metric -> version -> {events, trials}")
        for version, counts in by_version.items():
            events = counts.get("events") if isinstance(counts, Mapping) else None
            trials = counts.get("trials") if isinstance(counts, Mapping) else None
            if not (_whole(events) and _whole(trials) and events <= trials):
                raise data.refuse("windows", "whole counts with events <= trials")
            out.setdefault(str(metric), {})[str(version)] = (events, trials)
    return out, seconds


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_CONCLUSIONS: Final = (Action.PROMOTE, Action.ROLLBACK)


@dataclass(frozen=True)
class Concluded:
    """The experiment's end was decided: promote `version`, or roll back. `failed` marks an
    experiment that could not go on. Sent only once the decision is recorded in status
    (functions/core/sweep.py: `with_decision`, `recorded_decision`), which is what finish
    acts on; the event is its echo."""

    TYPE: ClassVar[str] = CONCLUDED
    action: Action
    message: str = ""
    version: str | None = None
    rule: str = ""
    failed: bool = False
    reason: str = ""

    def __post_init__(self) -> None:
        if self.action not in _CONCLUSIONS:
            raise ValueError(f"a conclusion is promote or rollback, not {self.action.value}")

    @classmethod
    def recommended(cls, rec: Recommendation) -> Concluded:
        """The analysis recommends ending it (its action is promote or rollback)."""
        return cls(rec.action, rec.message, rec.version, rec.rule)

    @classmethod
    def abort(cls, reason: str, message: str) -> Concluded:
        """End it the safe way: finish restores the baseline, never promotes."""
        return cls(Action.ROLLBACK, message, failed=True, reason=reason)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"action": self.action.value}
        if self.failed:
            data["failed"] = True
        if self.reason:
            data["reason"] = self.reason
        if self.rule:
            data["rule"] = self.rule
        data["message"] = self.message
        if self.version is not None:
            data["version"] = self.version
        return data

    @classmethod
    def from_data(cls, data: Data) -> Self:
        return cls(
            action=data.choice("action", _CONCLUSIONS),
            message=data.text("message") or "",
            version=data.text("version"),
            rule=data.text("rule") or "",
            failed=data.flag("failed"),
            reason=data.text("reason") or "",
        )


@dataclass(frozen=True)
class Finished:
    """The experiment ended and its target is free. `outcome` is the status's outcome, or,
    for an experiment deleted before it concluded, the stage it was deleted in."""

    TYPE: ClassVar[str] = FINISHED
    outcome: str | None = None
    stage: str | None = None
    version: str | None = None
    message: str | None = None
    reason: str | None = None

    def to_data(self) -> dict[str, Any]:
        fields = {
            "outcome": self.outcome,
            "stage": self.stage,
            "version": self.version,
            "message": self.message,
            "reason": self.reason,
        }
        return {k: str(v) for k, v in fields.items() if v is not None}

    @classmethod
    def from_data(cls, data: Data) -> Self:
        return cls(*(data.text(k) for k in ("outcome", "stage", "version", "message", "reason")))


@dataclass(frozen=True)
class Request(Generic[P]):
    """An Arbiter event as a stage acts on it."""

    id: str
    ref: ExperimentRef
    iteration: int
    payload: P


def make(payload: Payload, ref: ExperimentRef, iteration: int, *, stage: str) -> CloudEvent:
    """The event carrying `payload` about one experiment at one iteration, from `stage`."""
    return make_event(payload.TYPE, ref, iteration, payload.to_data(), stage=stage)


def parse(event: CloudEvent, kind: type[P]) -> Request[P]:
    """The event as a `kind` request; an InvalidEventError for anything that is not one,
    including an event without the experiment's uid or iteration (it could be about any
    namesake, at any point of its run)."""
    event_id = str(event.get_attributes().get("id"))
    if event["type"] != kind.TYPE:
        raise InvalidEventError(f"event {event_id}: type {event['type']}, expected {kind.TYPE}")
    ref = experiment_ref(event)
    if ref is None:
        raise InvalidEventError(f"event {event_id}: {kind.TYPE} without an experiment")
    if not ref.uid:
        raise InvalidEventError(
            f"event {event_id}: {kind.TYPE} about {ref} without extension attribute "
            f"{EXT_UID!r}; Arbiter's events name the experiment's uid"
        )
    return Request(event_id, ref, iteration_of(event), kind.from_data(Data.of(event)))
