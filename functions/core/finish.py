"""The finish stage: promote the recommended version or restore the baseline, and close.

Promotion and rollback are separate paths; an experiment that failed (a bad metric, too
many transient failures) only ever rolls back. The outcome counts once the objects report
the final split. An Experiment deleted while it held traffic has its baseline restored,
then `experiment.finished` frees the target for whoever waits for it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from cloudevents.http import CloudEvent

from analytics.analysis import Action
from analytics.model import TestingPattern
from functions.core import events, rollout
from functions.core import status as st
from functions.core.backends import model_for
from functions.core.context import Context
from functions.core.errors import PermanentError
from functions.core.events import ExperimentRef
from functions.core.status import ACTIVE, TERMINAL, ConditionType, Outcome, Stage, Status

log = logging.getLogger(__name__)


def handle(ctx: Context, event: CloudEvent) -> None:
    if event["type"] == events.APISERVER_DELETE:
        if events.experiment_ref(event) is None:
            raise PermanentError(f"event {event['id']}: {event['type']} without an experiment")
        data = event.get_data()
        if isinstance(data, Mapping):
            deleted(ctx, dict(data))
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
    experiment = st.resolved_experiment(obj)
    model = model_for(experiment.spec, experiment.namespace)
    failed = concluded.failed
    promote = concluded.action is Action.PROMOTE and not failed
    info = experiment.spec.version_info
    baseline = info.baseline.name if info else ""
    split: dict[str, int] | None = None
    outcome: Outcome
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


def _finished(obj: Mapping[str, Any], status: Status) -> CloudEvent:
    done = events.Finished(
        outcome=status.outcome,
        stage=status.stage,
        version=status.version_recommended_for_promotion,
        message=status.message,
    )
    return events.make(done, st.ref_of(obj), status.iterations_done, stage="finish")
