"""Alert sinks: an experiment's conclusion, end and failure, sent to the sinks it names.

`spec.notify` lists at most MAX_SINKS sinks, each either
- `ref: {apiVersion, kind, name}`: an Addressable in the experiment's own namespace (a
  Knative Service or a Broker, ADDRESSABLE_KINDS), sent to its `status.address.url`; or
- `uri`: sent to as written, only if it starts with a prefix of the operator's allow-list
  ARBITER_NOTIFY_URIS (empty: no URI). A tenant never chooses an arbitrary address.

What is due derives from the status alone (`due`): `dev.arbiter.experiment.concluded` once a
decision is recorded, then `.finished` when it ends Completed or `.failed` when it ends
Failed, each a CloudEvent carrying the experiment, the outcome, the winner and the reason.
`status.notifications` keeps one record per notification and sink; each attempt is
recorded (conditionally, on the resourceVersion read) before it is made, so two stages
looking at once send it once, and a redelivered stage event sends nothing again. A sink
that does not accept it is tried again on a later clock tick (no sooner than
RETRY_AFTER_SECONDS), ARBITER_NOTIFY_ATTEMPTS times in all. A refused sink is never sent
to. The condition Notified says how it went: False naming the field and what to do when a
sink was refused or given up, True once every due notification was delivered.

`finish` delivers right after the end, and the clock (functions/core/sweep.py) on every
tick for experiments that have ended, so an experiment that ended without finish (Failed
at start) is announced too. Delivery never fails a stage: problems go to the log and
the condition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from cloudevents.http import CloudEvent

from functions.core import events
from functions.core import status as st
from functions.core.context import Context
from functions.core.errors import ArbiterError, ConflictError, NotFoundError
from functions.core.events import ExperimentRef
from functions.core.resources import KNATIVE_BROKER, KNATIVE_SERVICE, ObjectRef, Resource
from functions.core.status import ConditionType, Stage, Status
from functions.core.timestamps import elapsed, iso, parse_time

log = logging.getLogger(__name__)

MAX_SINKS: Final = 5
# The CRD's bounds on a notification record.
MAX_ATTEMPTS: Final = 100
ERROR_LIMIT: Final = 2048
# The Addressables an experiment may name; the functions' ClusterRoles grant `get` on these.
ADDRESSABLE_KINDS: Final[tuple[Resource, ...]] = (KNATIVE_SERVICE, KNATIVE_BROKER)
# Long enough that an attempt still under way (a sink's timeout is 10 s) is not repeated.
RETRY_AFTER_SECONDS: Final = 30.0
KINDS: Final = {"concluded": events.CONCLUDED, "finished": events.FINISHED, "failed": events.FAILED}


@dataclass(frozen=True)
class Sink:
    """One entry of spec.notify: where it is (`spec.notify[i]`), what it names, and either
    the URL to send to or why it is refused."""

    where: str
    target: str
    url: str | None = None
    refused: str | None = None


def due(status: Status) -> list[str]:
    """The notifications the status calls for, in order: concluded, then finished or failed."""
    kinds = []
    ended = status.stage in (Stage.FINISHING, Stage.COMPLETED, Stage.FAILED)
    if ended and st.recorded_decision(status) is not None:
        kinds.append("concluded")
    if status.stage is Stage.COMPLETED:
        kinds.append("finished")
    elif status.stage is Stage.FAILED:
        kinds.append("failed")
    return kinds


def entries(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = obj.get("spec")
    raw = spec.get("notify") if isinstance(spec, Mapping) else None
    if not isinstance(raw, list):
        return []
    return [e if isinstance(e, Mapping) else {} for e in raw[:MAX_SINKS]]


def _target(entry: Mapping[str, Any]) -> str:
    ref = entry.get("ref")
    if isinstance(ref, Mapping):
        return f"{ref.get('apiVersion')}/{ref.get('kind')}/{ref.get('name')}"
    return str(entry.get("uri"))


def resolve(ctx: Context, namespace: str, i: int, entry: Mapping[str, Any]) -> Sink:
    """Where spec.notify[i] sends to, or why it may not; NotFoundError and TransientError
    for an Addressable that is not there (yet)."""
    where = f"spec.notify[{i}]"
    target = _target(entry)
    ref, uri = entry.get("ref"), entry.get("uri")
    if isinstance(uri, str) and ref is None:
        allowed = ctx.settings.notify_uris
        if any(uri.startswith(prefix) for prefix in allowed):
            return Sink(where, target, url=uri)
        listed = ", ".join(allowed) if allowed else "empty"
        return Sink(
            where,
            target,
            refused=(
                f"{where}.uri: {uri} does not start with a prefix of ARBITER_NOTIFY_URIS "
                f"({listed}): name an Addressable in namespace {namespace} instead "
                f"({where}.ref), or ask the operator to allow the URI's prefix"
            ),
        )
    if not isinstance(ref, Mapping) or uri is not None:
        return Sink(where, target, refused=f"{where}: give exactly one of ref and uri")
    kinds = {(r.api_version, r.kind) for r in ADDRESSABLE_KINDS}
    if (ref.get("apiVersion"), ref.get("kind")) not in kinds:
        names = " or ".join(f"{r.kind} ({r.api_version})" for r in ADDRESSABLE_KINDS)
        return Sink(
            where,
            target,
            refused=f"{where}.ref: {ref.get('kind')} ({ref.get('apiVersion')}) is not an "
            f"Addressable Arbiter sends to: name a {names}",
        )
    if ref.get("namespace") not in (None, namespace):
        return Sink(
            where,
            target,
            refused=f"{where}.ref.namespace: {ref.get('namespace')} is not the experiment's "
            f"namespace {namespace}: an experiment notifies only sinks in its own namespace",
        )
    name = ref.get("name")
    if not isinstance(name, str) or not name:
        return Sink(where, target, refused=f"{where}.ref.name: required")
    found = ObjectRef(str(ref["apiVersion"]), str(ref["kind"]), namespace, name)
    url = ctx.addresses.url(found)
    if not url:
        raise NotFoundError(f"{found} has no status.address.url yet")
    return Sink(where, target, url=url)


def _record_key(record: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(record.get("event")), str(record.get("sink")), str(record.get("target")))


def _wanted(record: Mapping[str, Any] | None, now: datetime, attempts: int) -> bool:
    if record is None:
        return True
    tried = record.get("attempts")
    tried = tried if isinstance(tried, int) else 0
    if record.get("delivered") or record.get("refused") or tried >= attempts:
        return False
    last = parse_time(record.get("lastAttempt"))
    return last is None or elapsed(now, last) >= RETRY_AFTER_SECONDS


def _payload(status: Status, kind: str) -> dict[str, Any]:
    decision = st.recorded_decision(status)
    condition_type = {"finished": ConditionType.COMPLETED, "failed": ConditionType.FAILED}
    condition = next((c for c in status.conditions if c.type is condition_type.get(kind)), None)
    reason = (
        (decision.reason or decision.rule if decision is not None else "")
        if kind == "concluded"
        else (condition.reason if condition is not None else "")
    )
    analysis = status.analysis or {}
    winner = ((analysis.get("winnerAssessment") or {}).get("data") or {}).get("winner")
    fields = {
        "stage": status.stage.value,
        "outcome": None if status.outcome is None else status.outcome.value,
        "action": None if decision is None else decision.action.value,
        "version": status.version_recommended_for_promotion,
        "winner": winner,
        "reason": reason or None,
        "message": status.message or None,
    }
    return {k: v for k, v in fields.items() if v is not None}


def notification(ref: ExperimentRef, status: Status, kind: str, stage: str) -> CloudEvent:
    """The CloudEvent a sink receives: the experiment in the extension attributes (as every
    Arbiter event) and in `data.experiment`, with the outcome, winner and reason."""
    data = {
        "experiment": {"namespace": ref.namespace, "name": ref.name, "uid": ref.uid},
        **_payload(status, kind),
    }
    return events.make_event(KINDS[kind], ref, status.iterations_done, data, stage=stage)


def deliver_current(ctx: Context, ref: ExperimentRef) -> None:
    """`deliver` for the experiment as stored now (nothing if it is gone)."""
    try:
        obj = st.current(ctx.store, ref)
    except ArbiterError as e:
        log.warning("notify: %s: not read, the clock tries again: %s", ref, e)
        return
    if obj is not None:
        deliver(ctx, obj)


def deliver(ctx: Context, obj: Mapping[str, Any]) -> None:
    """Send what is due and not yet sent to every sink of spec.notify; see the module
    docstring. Never raises: what fails is logged and recorded."""
    try:
        _deliver(ctx, dict(obj))
    except ConflictError:
        log.info("notify: %s: someone wrote first; the next tick looks again", st.ref_of(obj))
    except ArbiterError as e:
        log.warning("notify: %s: %s; the next tick looks again", st.ref_of(obj), e)


def _deliver(ctx: Context, obj: dict[str, Any]) -> None:
    sinks = entries(obj)
    status = Status.read(obj)
    kinds = due(status)
    if not sinks or not kinds:
        return
    ref = st.ref_of(obj)
    now = ctx.clock.now()
    limit = min(max(1, ctx.settings.notify_attempts), MAX_ATTEMPTS)
    records = {_record_key(r): r for r in status.notifications}
    todo = [
        (kind, i)
        for kind in kinds
        for i, entry in enumerate(sinks)
        if _wanted(records.get((kind, f"spec.notify[{i}]", _target(entry))), now, limit)
    ]
    if not todo:
        return
    resolved: dict[int, Sink | str] = {}
    for i in sorted({i for _, i in todo}):
        try:
            resolved[i] = resolve(ctx, ref.namespace, i, sinks[i])
        except ArbiterError as e:
            resolved[i] = f"spec.notify[{i}]: {e}"
    # Claim every attempt before making it: a conditional write, so of two stages looking
    # at once one claims and sends, the other gets a ConflictError and sends nothing.
    claims: dict[tuple[str, str, str], dict[str, Any]] = {}
    for kind, i in todo:
        key = (kind, f"spec.notify[{i}]", _target(sinks[i]))
        old = records.get(key) or {}
        tried = old.get("attempts")
        record: dict[str, Any] = {
            "event": kind,
            "sink": key[1],
            "target": key[2],
            "attempts": (tried if isinstance(tried, int) else 0) + 1,
            "lastAttempt": iso(now),
        }
        sink = resolved[i]
        if isinstance(sink, Sink) and sink.refused:
            record["refused"] = True
            record["error"] = sink.refused[:ERROR_LIMIT]
        elif isinstance(sink, str):
            record["error"] = sink[:ERROR_LIMIT]
        claims[key] = record
    claimed = _with_records(status, claims.values())
    obj = ctx.store.write_status(obj, claimed.to_dict())
    results: dict[tuple[str, str, str], dict[str, Any]] = {}
    for key, record in claims.items():
        sink = resolved[int(key[1].removeprefix("spec.notify[").rstrip("]"))]
        if not isinstance(sink, Sink) or sink.url is None:
            continue
        try:
            ctx.alerts.send(sink.url, notification(ref, status, key[0], _stage(ctx)))
        except ArbiterError as e:
            results[key] = {**record, "error": f"{sink.where}: {sink.url}: {e}"[:ERROR_LIMIT]}
            log.warning("notify: %s: %s not delivered to %s: %s", ref, key[0], sink.url, e)
        else:
            delivered = {k: v for k, v in record.items() if k != "error"}
            results[key] = {**delivered, "delivered": True}
            log.info("notify: %s: %s delivered to %s", ref, key[0], sink.url)
    st.update(
        ctx.store,
        obj,
        lambda s: _settled(_with_records(s, results.values()), kinds, sinks, limit, now),
    )


def _stage(ctx: Context) -> str:
    return ctx.settings.function_target or "notify"


def _with_records(status: Status, records: Iterable[Mapping[str, Any]]) -> Status:
    """`status` with these records replacing those of the same notification and sink."""
    new = {_record_key(r): dict(r) for r in records}
    kept = [r for r in status.notifications if _record_key(r) not in new]
    return replace(status, notifications=tuple([*kept, *new.values()]))


def _settled(
    status: Status,
    kinds: list[str],
    sinks: list[Mapping[str, Any]],
    limit: int,
    now: datetime,
) -> Status:
    """`status` with the Notified condition saying where the due notifications stand."""
    records = {_record_key(r): r for r in status.notifications}
    wanted = [
        records.get((k, f"spec.notify[{i}]", _target(e)))
        for k in kinds
        for i, e in enumerate(sinks)
    ]
    given_up = [
        r
        for r in wanted
        if r is not None
        and not r.get("delivered")
        and (r.get("refused") or (r.get("attempts") or 0) >= limit)
    ]
    if given_up:
        refused = any(r.get("refused") for r in given_up)
        message = "; ".join(
            dict.fromkeys(
                f"{r.get('event')}: {r.get('error') or 'not delivered'}" for r in given_up
            )
        )
        if not refused:
            message += f" (gave up after ARBITER_NOTIFY_ATTEMPTS={limit} attempts)"
        reason = "SinkRefused" if refused else "DeliveryFailed"
        return status.with_condition(ConditionType.NOTIFIED, False, reason, message, now)
    if all(r is not None and r.get("delivered") for r in wanted):
        message = f"{', '.join(kinds)} delivered to {len(sinks)} sink(s)"
        return status.with_condition(ConditionType.NOTIFIED, True, "Delivered", message, now)
    return status
