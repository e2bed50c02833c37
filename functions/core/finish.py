"""The finish stage: promote the recommended version or restore the baseline, and close.

Promotion and rollback are separate paths; an experiment that failed (a bad metric, too
many transient failures) only ever rolls back. The outcome counts once the objects report
the final split. An Experiment deleted while it held traffic has its baseline restored,
then `experiment.finished` frees the target for whoever waits for it.

Nothing leaves an experiment Finishing: the clock re-sends `experiment.concluded` every
ping (functions/core/sweep.py); a target that is gone ends it Failed at once (nothing to
restore), and past ARBITER_FINISH_DEADLINE_SECONDS finish makes one last attempt to restore
the baseline and ends it Failed with a condition saying whether that worked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from cloudevents.http import CloudEvent

from analytics.analysis import Action
from analytics.model import Experiment, TestingPattern
from functions.core import events, rollout, sweep
from functions.core import status as st
from functions.core.context import Context
from functions.core.errors import ArbiterError, NotFoundError, PermanentError
from functions.core.events import ExperimentRef
from functions.core.status import ACTIVE, TERMINAL, ConditionType, Outcome, Stage, Status
from functions.core.traffic import model_for

log = logging.getLogger(__name__)


def handle(ctx: Context, event: CloudEvent) -> None:
    if event["type"] == events.APISERVER_DELETE:
        if events.experiment_ref(event) is None:
            raise PermanentError(f"event {event['id']}: {event['type']} without an experiment")
        data = event.get_data()
        if isinstance(data, Mapping):
            deleted(ctx, dict(data))
        return
    if event["type"] == events.DELETING:
        request = events.parse(event, events.Deleting)
        obj = st.current(ctx.store, request.ref)
        if obj is not None and sweep.deleting(obj):
            deleted(ctx, obj)
        return
    concluded = events.parse(event, events.Concluded)
    st.retry_on_conflict(lambda: finish(ctx, concluded.ref, concluded.iteration, concluded.payload))


def deleted(ctx: Context, obj: dict[str, Any]) -> None:
    """The experiment was deleted: if it held traffic, give it back to the baseline."""
    ref = st.ref_of(obj)
    status = Status.read(obj)
    stage = status.stage
    if stage in ACTIVE:
        experiment = st.resolved_experiment(obj)
        moves = experiment.spec.strategy.testing_pattern is not TestingPattern.CONFORMANCE
        if moves and experiment.spec.version_info is not None:
            rollout.rollback(ctx, model_for(experiment.spec, experiment.namespace))
            log.info("finish: %s deleted while %s; baseline restored", ref, stage)
    gone = events.Finished(
        outcome=Outcome.ABORTED if stage in ACTIVE else stage, reason="ExperimentDeleted"
    )
    ctx.sink.emit(events.make(gone, ref, status.iterations_done, stage="finish"))


def finish(ctx: Context, ref: ExperimentRef, iteration: int, concluded: events.Concluded) -> None:
    obj = st.current(ctx.store, ref)
    if obj is None:
        return
    status = Status.read(obj)
    if status.stage in TERMINAL:
        ctx.sink.emit(_finished(obj, status))  # repeat: re-announce, change nothing
        return
    if status.stage not in ACTIVE:
        log.info("finish: %s is %s; nothing to conclude", ref, status.stage)
        return
    try:
        experiment = _restorable(obj)
    except PermanentError as e:
        message = f"cannot restore the baseline: the stored spec does not parse: {e}"
        _end_failed(ctx, obj, status, "InvalidSpec", message)
        return
    model = model_for(experiment.spec, experiment.namespace)
    info = experiment.spec.version_info
    baseline = info.baseline.name if info else ""
    target = experiment.spec.target
    if sweep.finish_overdue(ctx, status):
        _last_attempt(ctx, obj, status, experiment)
        return
    failed = concluded.failed
    promote = concluded.action is Action.PROMOTE and not failed
    split: dict[str, int] | None = None
    outcome: Outcome
    try:
        if experiment.spec.strategy.testing_pattern is TestingPattern.CONFORMANCE:
            # Conformance validates the version that serves; it never moves traffic.
            outcome = Outcome.VALIDATED if promote else Outcome.NOT_VALIDATED
            version, message = baseline, concluded.message or outcome.value
        elif promote and concluded.version is not None:
            version = concluded.version
            split = rollout.promote(ctx, model, version)
            outcome, message = Outcome.PROMOTED, concluded.message or f"promoted {version}"
        else:
            split = rollout.rollback(ctx, model)
            version = baseline
            outcome = Outcome.ABORTED if failed else Outcome.ROLLED_BACK
            message = concluded.message or f"rolled back to {baseline}"
    except NotFoundError as e:
        # The target is gone: there is no traffic left to restore, and retrying cannot help.
        _end_failed(ctx, obj, status, "TargetNotFound", f"{target}: {e}; nothing to restore")
        return
    now = ctx.clock.now()
    reason = concluded.reason or concluded.rule or outcome.value
    status = replace(
        status,
        stage=Stage.FAILED if failed else Stage.COMPLETED,
        outcome=outcome,
        message=message,
        last_update_time=now,
        version_recommended_for_promotion=version,
    ).with_condition(
        ConditionType.FAILED if failed else ConditionType.COMPLETED, True, reason, message, now
    )
    if split:
        status = status.with_split(split)
    ctx.store.write_status(obj, status.to_dict())
    ctx.sink.emit(_finished(obj, status))


def _restorable(obj: Mapping[str, Any]) -> Experiment:
    """The experiment as far as restoring its traffic needs it. A spec stored before a bound
    it violates existed may not parse any more; its duration does not matter to a restore."""
    try:
        return st.resolved_experiment(obj)
    except PermanentError:
        spec = {k: v for k, v in (obj.get("spec") or {}).items() if k != "duration"}
        return st.resolved_experiment({**obj, "spec": spec})


def _last_attempt(
    ctx: Context, obj: Mapping[str, Any], status: Status, experiment: Experiment
) -> None:
    """Finishing ran past its deadline: one last restore of the baseline, never a promotion,
    and the experiment ends Failed either way, with a condition saying which."""
    limit = ctx.settings.finish_deadline_seconds
    late = f"Finishing for longer than ARBITER_FINISH_DEADLINE_SECONDS={limit:g}"
    target = experiment.spec.target
    split: dict[str, int] | None = None
    if experiment.spec.strategy.testing_pattern is TestingPattern.CONFORMANCE:
        message = f"{late}; Conformance moves no traffic"
    else:
        try:
            split = rollout.rollback(ctx, model_for(experiment.spec, experiment.namespace))
        except NotFoundError as e:
            message = f"{late}; {target}: {e}; nothing to restore"
        except ArbiterError as e:
            message = f"{late}; rollback of {target} not read back: {e}"
        else:
            message = f"{late}; baseline of {target} restored"
    _end_failed(ctx, obj, status, "FinishDeadlineExceeded", message, split)


def _end_failed(
    ctx: Context,
    obj: Mapping[str, Any],
    status: Status,
    reason: str,
    message: str,
    split: Mapping[str, int] | None = None,
) -> None:
    """End the experiment Failed (outcome Aborted) with a condition naming what failed, and
    free its target."""
    now = ctx.clock.now()
    info_baseline = status.versions[0].name if status.versions else None
    status = replace(
        status,
        stage=Stage.FAILED,
        outcome=Outcome.ABORTED,
        message=f"{reason}: {message}",
        last_update_time=now,
        version_recommended_for_promotion=info_baseline,
    ).with_condition(ConditionType.FAILED, True, reason, message, now)
    if split:
        status = status.with_split(split)
    ctx.store.write_status(dict(obj), status.to_dict())
    log.warning("finish: %s failed: %s: %s", st.ref_of(obj), reason, message)
    ctx.sink.emit(_finished(obj, status))


def _finished(obj: Mapping[str, Any], status: Status) -> CloudEvent:
    done = events.Finished(
        outcome=status.outcome,
        stage=status.stage,
        version=status.version_recommended_for_promotion,
        message=status.message,
    )
    return events.make(done, st.ref_of(obj), status.iterations_done, stage="finish")
