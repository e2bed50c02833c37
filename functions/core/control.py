"""Manual control of a running experiment: the request a person writes, read, checked and
turned into the status that honours it.

A person (`arbiter pause|resume|abort|promote`, or any client of the API) writes one request
into the spec, `spec.control: {action, version, reason, requestedBy, id}`, and labels the
Experiment `arbiter.dev/control-pending: "true"`. The clock (functions/core/sweep.py) reads
the request before anything else on every ping; the labelled Experiment's update event
(the arbiter-control ApiServerSource in eventing/) wakes it sooner for that one experiment,
and the label comes off once the request is handled, so status writes of experiments
without a pending request wake nothing.

A request is handled once: its `id` is recorded in `status.control.appliedId`, with what it
asked and, when it could not be honoured, why (`refused`). Re-applying the same request
(same id) changes nothing; a new request carries a new id. A request is never raised as an
error: one that cannot be honoured (an unknown action, abort without a reason, promote
without a version or a reason, of a version not in the experiment, or of a Conformance
experiment, any request once a decision is recorded or the experiment ended) is recorded as
refused with the reason, and the experiment goes on as before.

- pause: nothing is measured and no traffic moves (the split in force keeps serving) until
  resume. Paused time counts toward ARBITER_MAX_EXPERIMENT_SECONDS; the interval does not
  run while paused: resume shifts `lastIterationTime` by the paused time, so the next
  iteration comes due as long after the resume as it was still to wait at the pause.
- resume: adds the paused time to `status.pausedSeconds` and clears `pausedAt`.
- abort: the decision to roll back is recorded (reason Aborted); finish restores the
  baseline through the one rollback path.
- promote: the decision to promote `version` is recorded (rule ManualPromotion, the message
  naming who asked and why): the request is itself the recorded decision, and finish
  promotes it through the one promotion path (holder check, read-back).

A request reaching an experiment that has not started yet stays pending until it runs.

`spec.strategy.promotion: Manual` (default Automatic): when the analysis recommends a
promotion, assess records it in `status.awaitingPromotion` and the experiment waits
(condition AwaitingPromotion): no more iterations, the split in force keeps serving, never
promoted on its own; `arbiter promote` (any version) or `arbiter abort` ends it, and past
ARBITER_MAX_EXPERIMENT_SECONDS the clock rolls it back like any experiment that ran too long.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from analytics.parse import Bound
from analytics.recommendation import Action
from functions.core import events
from functions.core.status import (
    TERMINAL,
    ConditionType,
    ControlRecord,
    Stage,
    Status,
)
from functions.core.timestamps import elapsed

PENDING_LABEL: Final = "arbiter.dev/control-pending"
# The extension attribute the arbiter-control ApiServerSource adds to its events, and its
# value: the iterate Trigger takes Experiment updates only with it.
EXTENSION: Final = "arbitercontrol"
EXTENSION_VALUE: Final = "pending"
# What the CRD bounds (config/crd/experiments.yaml; a manifest test compares): the CLI
# checks a reason's length before it writes one.
ID_MAX_LENGTH: Final = 128
REASON_MAX_LENGTH: Final = 1024
BOUNDS: Final = {
    f"{where}.{key}": Bound(max_length=length)
    for where in ("spec.control", "status.control")
    for key, length in (
        ("id" if where == "spec.control" else "appliedId", ID_MAX_LENGTH),
        ("version", 253),
        ("reason", REASON_MAX_LENGTH),
        ("requestedBy", 253),
    )
} | {"status.control.action": Bound(max_length=64), "status.pausedSeconds": Bound(minimum=0)}
MANUAL_RULE: Final = "ManualPromotion"
ABORTED: Final = "Aborted"


class ControlAction(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    PROMOTE = "promote"


class Promotion(StrEnum):
    AUTOMATIC = "Automatic"
    MANUAL = "Manual"


@dataclass(frozen=True)
class Request:
    """`spec.control` as written: `action` is kept as text, so an unknown one can be
    recorded as refused rather than lost."""

    id: str
    action: str
    version: str | None = None
    reason: str | None = None
    requested_by: str | None = None

    @classmethod
    def read(cls, obj: Mapping[str, Any]) -> Request | None:
        """The request in the spec; None when there is none (or it has no id to tell it by)."""
        spec = obj.get("spec")
        raw = spec.get("control") if isinstance(spec, Mapping) else None
        if not isinstance(raw, Mapping):
            return None
        request_id = _text(raw.get("id"))
        if not request_id:
            return None
        return cls(
            request_id,
            _text(raw.get("action")) or "",
            _text(raw.get("version")) or None,
            (_text(raw.get("reason")) or "").strip() or None,
            _text(raw.get("requestedBy")) or None,
        )

    @property
    def who(self) -> str:
        return self.requested_by or "an operator"

    def record(self, now: datetime, refused: str | None = None) -> ControlRecord:
        return ControlRecord(
            self.id, self.action, now, self.version, self.reason, self.requested_by, refused
        )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _strategy(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec")
    strategy = spec.get("strategy") if isinstance(spec, Mapping) else None
    return strategy if isinstance(strategy, Mapping) else {}


def promotion(obj: Mapping[str, Any]) -> Promotion:
    """`spec.strategy.promotion` (Automatic when absent; the CRD admits no other value)."""
    manual = _strategy(obj).get("promotion") == Promotion.MANUAL
    return Promotion.MANUAL if manual else Promotion.AUTOMATIC


def conformance(obj: Mapping[str, Any]) -> bool:
    return _strategy(obj).get("testingPattern") == "Conformance"


def pending(obj: Mapping[str, Any]) -> bool:
    """The Experiment carries the label that says a request waits to be handled."""
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return isinstance(labels, Mapping) and PENDING_LABEL in labels


def unhandled(obj: Mapping[str, Any], status: Status) -> Request | None:
    """The request in the spec when status does not record it as handled."""
    request = Request.read(obj)
    if request is None or (status.control and status.control.applied_id == request.id):
        return None
    return request


def holds_still(obj: Mapping[str, Any], status: Status) -> bool:
    """Nothing may be measured or moved: paused, or a pause (or an end) asked for and not
    handled yet, so a stage that runs before the clock honours it too."""
    if status.paused:
        return True
    request = unhandled(obj, status)
    return request is not None and request.action in {
        ControlAction.PAUSE,
        ControlAction.ABORT,
        ControlAction.PROMOTE,
    }


def problem(obj: Mapping[str, Any], status: Status, request: Request) -> str | None:
    """Why `request` cannot be honoured, or None."""
    try:
        action = ControlAction(request.action)
    except ValueError:
        allowed = ", ".join(a.value for a in ControlAction)
        return f"spec.control.action: {request.action!r} is not one of {allowed}"
    if action is ControlAction.PROMOTE and conformance(obj):
        return "a Conformance experiment validates the version that serves; it promotes nothing"
    if status.stage in TERMINAL:
        return f"the experiment has ended ({status.stage}); nothing to {action.value}"
    if status.stage is Stage.FINISHING:
        decided = status.recommendation
        what = "" if decided is None else f": {decided.action.value} {decided.version or ''}"
        return f"a decision is recorded already{what.rstrip()}; it is being carried out"
    if action in {ControlAction.ABORT, ControlAction.PROMOTE} and not request.reason:
        return f"spec.control.reason: {action.value} needs a reason (arbiter {action} --reason)"
    if action is ControlAction.PROMOTE:
        names = [v.name for v in status.versions]
        if not request.version:
            return "spec.control.version: promote needs the version to promote (--version)"
        if request.version not in names:
            return (
                f"spec.control.version: {request.version!r} is not a version of this "
                f"experiment ({', '.join(names)})"
            )
    return None


def with_paused_time(status: Status, now: datetime, reason: str) -> Status:
    """`status` no longer paused: the time paused added to pausedSeconds, and the interval
    deadline (lastIterationTime) shifted by it, so the interval did not run while paused."""
    if status.paused_at is None:
        return status
    paused = max(0.0, elapsed(now, status.paused_at))
    last = status.last_iteration_time
    return replace(
        status,
        paused_at=None,
        paused_seconds=(status.paused_seconds or 0.0) + paused,
        last_iteration_time=None if last is None else last + (now - status.paused_at),
    ).with_condition(ConditionType.PAUSED, False, reason, f"paused {paused:.0f} s", now)


def applied(
    obj: Mapping[str, Any], status: Status, now: datetime
) -> tuple[Status, events.Concluded | None] | None:
    """The status honouring the unhandled request in the spec, and the decision it records
    (abort, promote) for the caller to record with it; None when there is nothing to handle
    (none, handled already, or the experiment has not started yet)."""
    request = unhandled(obj, status)
    if request is None or status.stage not in {Stage.RUNNING, Stage.FINISHING, *TERMINAL}:
        return None
    why = problem(obj, status, request)
    if why is not None:
        refused = replace(status, control=request.record(now, refused=why), last_update_time=now)
        condition = (ConditionType.CONTROL_APPLIED, False, "Refused", f"{request.action}: {why}")
        return refused.with_condition(*condition, now), None
    action = ControlAction(request.action)
    done = replace(status, control=request.record(now), last_update_time=now)
    because = f" ({request.reason})" if request.reason else ""
    message = f"{action.value} requested by {request.who}{because}"
    done = done.with_condition(ConditionType.CONTROL_APPLIED, True, action.title(), message, now)
    decision: events.Concluded | None = None
    if action is ControlAction.PAUSE:
        if not status.paused:
            done = replace(done, paused_at=now, message=f"paused: {message}").with_condition(
                ConditionType.PAUSED, True, "Paused", message, now
            )
    elif action is ControlAction.RESUME:
        if status.paused:
            done = replace(with_paused_time(done, now, "Resumed"), message=f"resumed: {message}")
    elif action is ControlAction.ABORT:
        decision = events.Concluded.abort(ABORTED, f"aborted by {request.who}: {request.reason}")
    else:
        decision = events.Concluded(
            Action.PROMOTE,
            f"{request.version} promoted by {request.who}: {request.reason}",
            request.version,
            MANUAL_RULE,
        )
    if decision is not None and status.awaiting_promotion is not None:
        done = replace(done, awaiting_promotion=None).with_condition(
            ConditionType.AWAITING_PROMOTION, False, action.title(), message, now
        )
    return done, decision
