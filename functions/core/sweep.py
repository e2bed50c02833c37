"""The clock: every ping re-drives every experiment that has not ended, each on its own.

Events get lost (a delivery the broker gave up on, an API server failing through a whole
retry window), so no experiment may depend on one event arriving. On every ping `sweep`
lists the experiments once and, for each one that holds its target, sends the event that
moves it on, derived from its status alone:

- Running: `experiment.due` once its interval has passed, the request recorded in
  `status.measurement` first, and not again while a request (or its measurement) is less
  than an interval old, so duplicated pings hand each iteration out once and a measurement
  lost on its way is asked for again one interval on; past its maximum duration
  (ARBITER_MAX_EXPERIMENT_SECONDS from its start) the decision to roll back is recorded
  (reason MaxDurationExceeded) and `experiment.concluded` sent.
- Finishing: `experiment.concluded` again, for the decision recorded in status at the
  iteration it was recorded (once it has been Finishing for a read-back timeout, so as not
  to race the first); finish acts on that decision alone, and past
  ARBITER_FINISH_DEADLINE_SECONDS it makes a last attempt to restore the baseline and ends
  the experiment Failed, never leaving it Finishing. One Finishing without a decision gets
  the decision to roll back recorded first.
- being deleted (its finalizer holds it): `experiment.deleting`, so finish restores the
  baseline even when the delete event was lost.
- ended (Completed or Failed): its alert sinks' notifications not yet delivered
  (functions/core/notify.py; nothing when it names no sinks or all were sent).

Experiments that have not started yet are start's to re-check on the same ping. A ping that
finds no experiment live deletes the PingSource that sends the pings (functions/core/clock.py),
so that all four functions can scale to zero; start creates it again.

Before any of that, a manual control request (functions/core/control.py) is handled: its
effect recorded in status, an abort or a promotion recorded as the decision and announced,
then the pending label removed. A paused experiment, or one waiting for a Manual
promotion, is not measured; the maximum duration still counts for both. `drive` does the
same for one experiment, woken by its update event while a request is pending.

One experiment never stops the others: whatever goes wrong while handling one (an
exception of any kind, a stored spec no bound admits) is recorded on that experiment and
the sweep goes on. Only a failed listing fails the ping (a TransientError: 503).

Every duration here is compared as elapsed seconds, never added to a time, so no stored or
received number, however large, can overflow.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from analytics.model import Duration
from analytics.recommendation import Recommendation
from functions.core import clock, control, events, notify, ownership
from functions.core import status as st
from functions.core.context import Context
from functions.core.errors import ConflictError, PermanentError, TransientError
from functions.core.settings import Settings
from functions.core.status import (
    TERMINAL,
    ConditionType,
    MeasurementRecord,
    Outcome,
    Stage,
    Status,
)
from functions.core.timestamps import elapsed

log = logging.getLogger(__name__)

STAGE: Final = "iterate"  # the sweep runs in iterate's ping handling


# --- the decision that ends an experiment, as status records it -----------------------
# The one place that knows how a decision is stored: finish and the sweep go through these.


def with_decision(status: Status, decision: events.Concluded, now: datetime) -> Status:
    """`status` with `decision` recorded and the stage Finishing (its deadline from now)."""
    rec = Recommendation(decision.action, decision.version, decision.rule, decision.message)
    # A decision ends a pause: the time paused is counted, the condition says it is over.
    status = control.with_paused_time(status, now, "Concluded")
    return replace(
        status,
        stage=Stage.FINISHING,
        recommendation=rec,
        abort_reason=(decision.reason or "Aborted") if decision.failed else None,
        finishing_time=status.finishing_time or now,
        last_update_time=now,
        message=decision.message or status.message,
    )


def conclude(
    ctx: Context,
    ref: events.ExperimentRef,
    decision: events.Concluded,
    stages: tuple[Stage, ...] = (Stage.RUNNING,),
) -> None:
    """Record `decision` in status (if the experiment is in one of `stages` with none
    recorded), then announce the decision recorded."""

    def record() -> Status | None:
        obj = st.current(ctx.store, ref)
        if obj is None:
            return None
        status = Status.read(obj)
        if status.stage not in stages or st.recorded_decision(status) is not None:
            return status  # decided already (or ended): the recorded decision stands
        status = with_decision(status, decision, ctx.clock.now())
        ctx.store.write_status(obj, status.to_dict())
        return status

    status = st.retry_on_conflict(record)
    if status is None or status.stage in TERMINAL:
        return
    recorded = st.recorded_decision(status) or decision
    ctx.sink.emit(events.make(recorded, ref, status.iterations_done, stage=STAGE))


# --- deadlines ---------------------------------------------------------------------------


def finishing_since(status: Status) -> datetime | None:
    """When the experiment became Finishing (the latest write before, for one recorded by
    a version that did not stamp it)."""
    return (
        status.finishing_time
        or status.last_update_time
        or status.last_iteration_time
        or status.start_time
    )


def finish_overdue(ctx: Context, status: Status) -> bool:
    """Finishing for longer than ARBITER_FINISH_DEADLINE_SECONDS."""
    if status.stage is not Stage.FINISHING:
        return False
    since = finishing_since(status)
    if since is None:
        return False
    return elapsed(ctx.clock.now(), since) > ctx.settings.finish_deadline_seconds


def _number(raw: Mapping[str, Any], key: str, default: float) -> float | None:
    """A duration field as a finite number; None when it is not one (left to the parser)."""
    value = raw.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def duration_problem(obj: Mapping[str, Any], settings: Settings) -> str | None:
    """Why the spec's duration cannot fit in ARBITER_MAX_EXPERIMENT_SECONDS, or None.

    Read from the raw spec with floats, so an absurd interval or count is a problem to
    report, not an OverflowError.
    """
    spec = obj.get("spec")
    raw = (spec.get("duration") if isinstance(spec, Mapping) else None) or {}
    if not isinstance(raw, Mapping):
        return None
    interval = _number(raw, "intervalSeconds", Duration.interval_seconds)
    per_loop = _number(raw, "iterationsPerLoop", Duration.iterations_per_loop)
    loops = _number(raw, "maxLoops", Duration.max_loops)
    if interval is None or per_loop is None or loops is None:
        return None
    total = interval * per_loop * loops  # a float: at worst inf, never an overflow
    limit = settings.max_experiment_seconds
    if total <= limit:
        return None
    return (
        f"spec.duration: {per_loop * loops:.0f} iterations of {interval:g} s take "
        f"{total:.4g} s, more than ARBITER_MAX_EXPERIMENT_SECONDS={limit:g}"
    )


def interval_seconds(obj: Mapping[str, Any]) -> float:
    """The spec's interval (the parser's default when absent or not a finite number)."""
    spec = obj.get("spec")
    raw = (spec.get("duration") if isinstance(spec, Mapping) else None) or {}
    value = _number(raw, "intervalSeconds", Duration.interval_seconds) if raw else None
    return float(Duration.interval_seconds) if value is None else value


# --- the sweep ---------------------------------------------------------------------------


def sweep(ctx: Context) -> None:
    """Re-drive every experiment that holds its target; see the module docstring. Then end
    the clock if none is live (functions/core/clock.py)."""
    # Read before the listing: a start after this read changes it, so the delete fails.
    held = clock.read(ctx)
    listed = ctx.store.list()  # the one call whose failure fails the ping
    now = ctx.clock.now()
    for obj in listed:
        try:
            visit(ctx, obj, now)
        except TransientError as e:
            # The next ping tries again; the others go on now.
            log.warning("sweep: %s: transient, next ping retries: %s", st.ref_of(obj), e)
        except Exception as e:  # isolation: one experiment never fails the rest
            log.exception("sweep: %s failed", st.ref_of(obj))
            isolate(ctx, obj, e)
    # Judged on the listing: a visit only ever moves an experiment towards its end, so one
    # that ended during this sweep keeps the clock one more ping, never less.
    clock.end_if_idle(ctx, held, listed)


def drive(ctx: Context, ref: events.ExperimentRef) -> None:
    """The clock for one experiment (its update event while a control request is pending)."""
    obj = st.current(ctx.store, ref)
    if obj is None:
        return
    try:
        visit(ctx, obj, ctx.clock.now())
    except TransientError:
        raise  # the broker redelivers; the next ping would do it anyway
    except Exception as e:  # the same isolation as a sweep: recorded on the experiment
        log.exception("clock: %s failed", ref)
        isolate(ctx, obj, e)


def visit(ctx: Context, obj: Mapping[str, Any], now: datetime) -> None:
    """Handle a pending control request, then send the one event that moves this
    experiment on, if any is due."""
    obj = handle_control(ctx, obj, now)
    status = Status.read(obj)
    ref = st.ref_of(obj)
    if ownership.deleting(obj):
        ctx.sink.emit(events.make(events.Deleting(), ref, status.iterations_done, stage=STAGE))
    elif status.stage in TERMINAL:
        notify.deliver(ctx, obj)
    elif status.stage is Stage.RUNNING:
        _drive_running(ctx, obj, status, now)
    elif status.stage is Stage.FINISHING:
        _drive_finishing(ctx, obj, status, now)


def handle_control(ctx: Context, obj: Mapping[str, Any], now: datetime) -> Mapping[str, Any]:
    """Record the effect of the unhandled control request (once: by its id), announce the
    decision it records, and remove the pending label; the experiment as stored after."""
    ref = st.ref_of(obj)
    decided: list[events.Concluded] = []

    def change(status: Status) -> Status | None:
        result = control.applied(obj, status, now)
        if result is None:
            return None
        status, decision = result
        decided[:] = [] if decision is None else [decision]
        return status if decision is None else with_decision(status, decision, now)

    written = None if ownership.deleting(obj) else st.update(ctx.store, dict(obj), change)
    if written is not None:
        decision = st.recorded_decision(written) if decided else None
        if decision is not None and written.stage is Stage.FINISHING:
            ctx.sink.emit(events.make(decision, ref, written.iterations_done, stage=STAGE))
        obj = st.current(ctx.store, ref) or obj
    if control.pending(obj) and control.unhandled(obj, Status.read(obj)) is None:
        # Handled (or none left): the update events of this experiment wake nobody now.
        # Losing a race is fine: the next visit removes it.
        with contextlib.suppress(ConflictError):
            obj = ctx.store.patch_metadata(dict(obj), {"labels": {control.PENDING_LABEL: None}})
    return obj


def _drive_running(ctx: Context, obj: Mapping[str, Any], status: Status, now: datetime) -> None:
    ref = st.ref_of(obj)
    problem = duration_problem(obj, ctx.settings)
    if problem is not None:
        # Stored before the bound existed (or under a larger one): end it the safe way.
        conclude(ctx, ref, events.Concluded.abort("DurationOutOfBounds", problem))
        return
    started = status.start_time or status.init_time
    limit = ctx.settings.max_experiment_seconds
    if started is not None and elapsed(now, started) > limit:
        message = (
            f"still running {elapsed(now, started):.0f} s after its start, past "
            f"ARBITER_MAX_EXPERIMENT_SECONDS={limit:g}: rolled back"
        )
        conclude(ctx, ref, events.Concluded.abort("MaxDurationExceeded", message))
        return
    if status.paused or status.awaiting_promotion is not None:
        # Paused, or a Manual promotion waits for a person: the split in force keeps
        # serving and nothing is measured (the maximum duration above still counts).
        return
    change = functools.partial(requested, interval=interval_seconds(obj), now=now)
    request = st.update(ctx.store, dict(obj), change)
    if request is not None and request.measurement is not None:
        iteration = request.measurement.iteration
        ctx.sink.emit(events.make(events.Due(), ref, iteration, stage=STAGE))


def requested(status: Status, interval: float, now: datetime) -> Status | None:
    """The status asking for the next iteration's measurement; None when the interval has
    not passed, or it was asked for (or taken) less than an interval ago."""
    if status.stage is not Stage.RUNNING:
        return None
    last = status.last_iteration_time or status.start_time
    since = None if last is None else elapsed(now, last)
    # A last time further ahead than one interval is no time the clock gave: measure now.
    if since is not None and -interval <= since < interval:
        return None
    iteration = status.iterations_done + 1
    record = status.measurement
    if record is not None and record.iteration == iteration and record.is_fresh(now, interval):
        return None
    return replace(status, measurement=MeasurementRecord(iteration, requested_at=now))


def _drive_finishing(ctx: Context, obj: Mapping[str, Any], status: Status, now: datetime) -> None:
    ref = st.ref_of(obj)
    if status.finishing_time is None:
        # Start the finish deadline no later than the first sweep that sees it Finishing.
        stamped = replace(status, finishing_time=finishing_since(status) or now)
        # Losing a race is fine: someone wrote first (finish, most likely); the next ping
        # stamps it if it is still Finishing. The re-send below must not wait for it.
        with contextlib.suppress(ConflictError):
            ctx.store.write_status(dict(obj), stamped.to_dict())
    since = finishing_since(status)
    if since is not None and elapsed(now, since) < ctx.settings.readback_timeout_seconds:
        # Just decided: finish may still be applying the first announcement (it waits up to
        # a read-back timeout for the split); the next ping re-sends it if need be.
        return
    decision = st.recorded_decision(status)
    if decision is None:
        # Finishing with no decision recorded: nothing to promote; record the decision to
        # restore the baseline, as finish acts on recorded decisions only.
        conclude(
            ctx,
            ref,
            events.Concluded.abort(
                "NoDecisionRecorded", "Finishing without a recorded decision: baseline restored"
            ),
            stages=(Stage.FINISHING,),
        )
        return
    ctx.sink.emit(events.make(decision, ref, status.iterations_done, stage=STAGE))


def isolate(ctx: Context, obj: Mapping[str, Any], error: Exception) -> None:
    """Record on this experiment what went wrong with it; end it the safe way where it
    cannot proceed. Never raises: the sweep goes on with the others."""
    ref = st.ref_of(obj)
    kind = "PermanentError" if isinstance(error, PermanentError) else type(error).__name__
    message = f"the clock could not drive it on: {kind}: {error}"
    try:
        if Status.read(obj).stage is Stage.RUNNING:
            conclude(ctx, ref, events.Concluded.abort("CannotProceed", message))
            return
    except Exception:  # fall through to marking it Failed
        log.exception("sweep: %s: could not end it the safe way", ref)
    try:
        st.retry_on_conflict(lambda: mark_failed(ctx, ref, "CannotProceed", message))
    except Exception:  # nothing more to do for it on this ping
        log.exception("sweep: %s: could not record the failure", ref)


def mark_failed(ctx: Context, ref: events.ExperimentRef, reason: str, message: str) -> None:
    """End the experiment Failed with a condition saying why (unless it has ended)."""
    obj = st.current(ctx.store, ref)
    if obj is None:
        return
    status = Status.read(obj)
    if status.stage in TERMINAL:
        return
    now = ctx.clock.now()
    status = replace(
        status,
        stage=Stage.FAILED,
        outcome=status.outcome or Outcome.ABORTED,
        message=message,
        last_update_time=now,
    ).with_condition(ConditionType.FAILED, True, reason, message, now)
    ctx.store.write_status(obj, status.to_dict())
