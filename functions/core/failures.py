"""A failure of a known experiment, recorded on that experiment.

`guarded` runs one stage's work on the experiment an event names. When the experiment is at
fault (a PermanentError that is not an InvalidEventError: the event's fault changes no
status) or the work hits a bug (any other exception), `record` writes it on the experiment,
by the experiment's stage:
- not holding its target yet (Pending, Waiting, Initializing): stage Failed, with the
  Failed condition;
- Running: the decision to roll back (an abort, as functions/core/sweep.py records one) with
  the Failed condition, then `experiment.concluded`, so finish restores the baseline;
- Finishing: the Failed condition; the recorded decision stays, and the clock re-sends it
  until the finish deadline;
and the event is answered 422 (PermanentError). Nothing escapes as an unexplained 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Final, TypeVar

from functions.core import events, sweep
from functions.core import status as st
from functions.core.context import Context
from functions.core.errors import InvalidEventError, PermanentError, TransientError
from functions.core.events import ExperimentRef
from functions.core.status import TERMINAL, ConditionType, Stage, Status

log = logging.getLogger(__name__)

T = TypeVar("T")

# An exception's own words, kept short: they land in a status condition.
_MAX_DETAIL: Final = 300


def aborted(status: Status, reason: str, message: str, now: datetime) -> Status:
    """`status` ending the safe way: the abort recorded as its decision (stage Finishing),
    and the Failed condition saying why before finish confirms it."""
    decided = sweep.with_decision(status, events.Concluded.abort(reason, message), now)
    return decided.with_condition(ConditionType.FAILED, True, reason, message, now)


def _failed(status: Status, reason: str, message: str, now: datetime) -> Status | None:
    if status.stage in TERMINAL:
        return None
    if status.stage is Stage.RUNNING:
        return aborted(status, reason, message, now)
    marked = status.with_condition(ConditionType.FAILED, True, reason, message, now)
    if status.stage is Stage.FINISHING:
        return None if marked == status else replace(marked, last_update_time=now)
    return replace(marked, stage=Stage.FAILED, message=message, last_update_time=now)


def record(ctx: Context, ref: ExperimentRef, reason: str, message: str, stage: str) -> None:
    """Record on the experiment that `stage` failed for good (see the module docstring)."""
    obj = st.current(ctx.store, ref)
    if obj is None:
        return
    now = ctx.clock.now()
    was_running = False

    def change(status: Status) -> Status | None:
        nonlocal was_running
        was_running = status.stage is Stage.RUNNING
        return _failed(status, reason, message, now)

    written = st.update(ctx.store, obj, change)
    if written is None or not was_running:
        return
    decision = st.recorded_decision(written)
    if decision is not None:
        ctx.sink.emit(events.make(decision, ref, written.iterations_done, stage=stage))


def guarded(ctx: Context, stage: str, ref: ExperimentRef, reason: str, work: Callable[[], T]) -> T:
    """`work()`, with a failure the experiment causes recorded on it under `reason` (a bug
    under InternalError) and answered as a PermanentError."""
    try:
        return work()
    except (InvalidEventError, TransientError):
        raise
    except PermanentError as e:
        record(ctx, ref, reason, str(e), stage)
        raise
    except Exception as e:
        log.exception("%s: %s: unexpected error", stage, ref)
        detail = f"{type(e).__name__}: {e}"[:_MAX_DETAIL]
        message = f"{stage} failed unexpectedly ({detail}); details in the function's log"
        record(ctx, ref, "InternalError", message, stage)
        raise PermanentError(f"experiment {ref}: {message}") from None
