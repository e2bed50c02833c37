"""The finish stage: carry out the decision recorded in status, and close.

`experiment.concluded` only wakes finish: it acts on the decision status records (stage
Finishing, functions/core/status.py `recorded_decision`) for the iteration it was recorded
at, and never on the event's own action or version; any other conclusion (none recorded,
another iteration, an experiment that has ended) is acknowledged and ignored.

Promotion and rollback are separate paths; an experiment that failed (a bad metric, too
many transient failures) only ever rolls back. The outcome counts once the objects report
the final split. An Experiment deleted while it held traffic has its baseline restored,
then `experiment.finished` frees the target for whoever waits for it.

Only the experiment holding the target moves it (functions.core.ownership): a late or
repeated event of one that no longer holds it changes nothing. The end releases the
target's holder annotation and removes the Experiment's restore finalizer; a deletion the
finalizer holds is finished by `restore_deleted`.

Nothing leaves an experiment Finishing: the clock re-sends `experiment.concluded` every
ping (functions/core/sweep.py); a target that is gone ends it Failed at once (nothing to
restore), and past ARBITER_FINISH_DEADLINE_SECONDS finish makes one last attempt to restore
the baseline and ends it Failed with a condition saying whether that worked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from cloudevents.http import CloudEvent

from analytics.model import Experiment, TestingPattern
from analytics.recommendation import Action
from functions.core import events, failures, notify, ownership, rollout, sweep
from functions.core import status as st
from functions.core.backends import TrafficBackend, backend_for
from functions.core.context import Context
from functions.core.errors import ArbiterError, NotFoundError, PermanentError
from functions.core.events import ExperimentRef
from functions.core.status import ACTIVE, TERMINAL, ConditionType, Outcome, Stage, Status
from functions.core.tenancy import RefusedError

log = logging.getLogger(__name__)

STAGE: Final = "finish"


def handle(ctx: Context, event: CloudEvent) -> None:
    if event["type"] == events.APISERVER_DELETE:
        if events.experiment_ref(event) is None:
            raise PermanentError(f"event {event['id']}: {event['type']} without an experiment")
        data = event.get_data()
        if isinstance(data, Mapping):
            deleted(ctx, dict(data))
        return
    if event["type"] == events.DELETING:
        restore_deleted(ctx, events.parse(event, events.Deleting).ref)
        return
    concluded = events.parse(event, events.Concluded)
    ref, iteration = concluded.ref, concluded.iteration
    try:
        failures.guarded(
            ctx,
            STAGE,
            ref,
            "FinishFailed",
            lambda: st.retry_on_conflict(lambda: finish(ctx, ref, iteration, concluded.payload)),
        )
    finally:
        # The alert sinks hear of the decision and the end at once; what is not delivered
        # now, the clock delivers on a later tick.
        notify.deliver_current(ctx, ref)


def deleted(ctx: Context, obj: dict[str, Any]) -> None:
    """The experiment was deleted: if it held traffic, give it back to the baseline.

    Only if it was: a watch with a label selector reports an object whose label no longer
    matches as deleted (the arbiter-control source, once the control-pending label comes
    off), so an experiment still stored and not being deleted is left alone."""
    ref = st.ref_of(obj)
    stored = st.current(ctx.store, ref)
    if stored is not None and not ownership.deleting(stored):
        log.info("finish: %s reported deleted but still stored; ignored", ref)
        return
    status = Status.read(obj)
    stage = status.stage
    if stage in ACTIVE:
        model = _restorable(obj)
        if model is not None:
            try:
                rollout.rollback(ctx, model, holder=ref)
            except ownership.NotHolderError as e:
                # A late or repeated delete: another experiment holds the target now.
                log.info("finish: %s deleted; not restoring: %s", ref, e)
                return
            ownership.release(ctx, model, ref)
            log.info("finish: %s deleted while %s; baseline restored", ref, stage)
    gone = events.Finished(
        outcome=Outcome.ABORTED if stage in ACTIVE else stage, reason="ExperimentDeleted"
    )
    ctx.sink.emit(events.make(gone, ref, status.iterations_done, stage="finish"))


def finish(ctx: Context, ref: ExperimentRef, iteration: int, hint: events.Concluded) -> None:
    obj = st.current(ctx.store, ref)
    if obj is None:
        return
    status = Status.read(obj)
    if status.stage in TERMINAL:
        # A repeat: its announcement went out with the end. Only make sure the release
        # happened (it may have been lost after the terminal write); send nothing again.
        _let_go(ctx, obj)
        return
    concluded = st.recorded_decision(status)
    if status.stage is not Stage.FINISHING or concluded is None:
        log.info("finish: %s is %s with no decision recorded; ignored", ref, status.stage)
        return
    if iteration != status.iterations_done:
        log.info(
            "finish: %s: the decision was recorded at iteration %d, not %d; ignored",
            ref,
            status.iterations_done,
            iteration,
        )
        return
    if hint != concluded:
        log.warning(
            "finish: %s: the event says %s, the status records %s; acting on the status",
            ref,
            hint.to_data(),
            concluded.to_data(),
        )
    try:
        experiment = _experiment_to_restore(obj)
    except PermanentError as e:
        message = f"cannot restore the baseline: the stored spec does not parse: {e}"
        _end_failed(ctx, obj, status, "InvalidSpec", message)
        return
    model = backend_for(experiment.spec, experiment.namespace)
    holder = st.ref_of(obj)
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
            split = rollout.promote(ctx, model, version, holder=holder)
            outcome, message = Outcome.PROMOTED, concluded.message or f"promoted {version}"
        else:
            split = rollout.rollback(ctx, model, holder=holder)
            version = baseline
            outcome = Outcome.ABORTED if failed else Outcome.ROLLED_BACK
            message = concluded.message or f"rolled back to {baseline}"
    except NotFoundError as e:
        # The target is gone: there is no traffic left to restore, and retrying cannot help.
        _end_failed(ctx, obj, status, "TargetNotFound", f"{target}: {e}; nothing to restore")
        return
    except RefusedError as e:
        # Not this experiment's to move (another holds the target, or a field its owner
        # does not allow): end it without touching the traffic, and say why.
        version, split, failed, outcome = baseline, None, True, Outcome.ABORTED
        message = f"traffic left as it is: {e}"
        concluded = replace(concluded, reason="TrafficRefused")
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
    if not failed and any(c.type is ConditionType.FAILED for c in status.conditions):
        # An earlier attempt failed and said so (functions/core/failures.py); this one did not.
        status = status.with_condition(ConditionType.FAILED, False, reason, message, now)
    if split:
        status = status.with_split(split).with_desired(split)
    obj = ctx.store.write_status(obj, status.to_dict())
    _let_go(ctx, obj)
    ctx.sink.emit(_finished(obj, status))


def _experiment_to_restore(obj: Mapping[str, Any]) -> Experiment:
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
            backend = backend_for(experiment.spec, experiment.namespace)
            split = rollout.rollback(ctx, backend, holder=st.ref_of(obj))
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
        status = status.with_split(split).with_desired(split)
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


def _restorable(obj: Mapping[str, Any]) -> TrafficBackend | None:
    """The traffic model to restore on deletion; None when the experiment never moved
    traffic (Conformance, no versions resolved) or its spec cannot name the objects."""
    try:
        experiment = _experiment_to_restore(obj)
        if experiment.spec.strategy.testing_pattern is TestingPattern.CONFORMANCE:
            return None
        if experiment.spec.version_info is None:
            return None
        model = backend_for(experiment.spec, experiment.namespace)
        model.refs  # noqa: B018 - a spec that cannot name its objects raises here
        return model
    except PermanentError:
        return None


def _let_go(ctx: Context, obj: dict[str, Any]) -> None:
    """The experiment is over: release its target and remove its restore finalizer (both
    idempotent; another holder's annotation is left alone)."""
    ref = st.ref_of(obj)
    try:
        experiment = st.resolved_experiment(obj)
        model: TrafficBackend | None = backend_for(experiment.spec, experiment.namespace)
    except PermanentError:
        model = None
    if model is not None:
        try:
            ownership.release(ctx, model, ref)
        except PermanentError as e:
            log.warning("finish: %s: could not release its target: %s", ref, e)
    ownership.remove_finalizer(ctx, obj)


def restore_deleted(ctx: Context, ref: ExperimentRef) -> None:
    """An experiment carrying the restore finalizer is being deleted: restore the baseline
    if it holds the target, read it back, release the target, record the end and remove the
    finalizer, which lets the deletion complete. An API failure is a TransientError: the
    deletion waits and the event is retried, so the restore is never lost."""
    st.retry_on_conflict(lambda: _restore_deleted(ctx, ref))


def _restore_deleted(ctx: Context, ref: ExperimentRef) -> None:
    obj = st.current(ctx.store, ref)
    if obj is None or not ownership.deleting(obj) or not ownership.has_finalizer(obj):
        return
    holder = st.ref_of(obj)
    status = Status.read(obj)
    model = _restorable(obj)
    restored: dict[str, int] | None = None
    if model is not None:
        try:
            restored = rollout.rollback(ctx, model, holder=holder)
        except ownership.NotHolderError as e:
            log.info("finish: %s deleted; not restoring: %s", ref, e)
        except NotFoundError as e:
            log.info("finish: %s deleted; its target is gone: %s", ref, e)
        else:
            ownership.release(ctx, model, holder)
            log.info("finish: %s deleted while %s; baseline restored", ref, status.stage)
    if status.stage not in TERMINAL:
        now = ctx.clock.now()
        message = f"deleted while {status.stage}" + ("; baseline restored" if restored else "")
        status = replace(
            status,
            stage=Stage.FAILED,
            outcome=Outcome.ABORTED,
            message=message,
            last_update_time=now,
        ).with_condition(ConditionType.FAILED, True, "ExperimentDeleted", message, now)
        if restored:
            status = status.with_split(restored).with_desired(restored)
        obj = ctx.store.write_status(obj, status.to_dict())
    ownership.remove_finalizer(ctx, obj)
    gone = events.Finished(outcome=Outcome.ABORTED, reason="ExperimentDeleted")
    ctx.sink.emit(events.make(gone, holder, status.iterations_done, stage="finish"))
