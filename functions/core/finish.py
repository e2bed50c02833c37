"""The finish stage: promote the recommended version or restore the baseline, and close.

Promotion and rollback are separate paths; an experiment that failed (a bad metric, too
many transient failures) only ever rolls back. The outcome counts once the objects report
the final split. An Experiment deleted while it held traffic has its baseline restored,
then `experiment.finished` frees the target for whoever waits for it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cloudevents.http import CloudEvent

from analytics.model import TestingPattern
from functions.core import events, rollout
from functions.core import status as st
from functions.core.backends import model_for
from functions.core.context import Context
from functions.core.errors import PermanentError
from functions.core.events import ExperimentRef

log = logging.getLogger(__name__)

PROMOTED = "Promoted"
ROLLED_BACK = "RolledBack"
ABORTED = "Aborted"
VALIDATED = "Validated"
NOT_VALIDATED = "NotValidated"


def handle(ctx: Context, event: CloudEvent) -> None:
    ref = events.experiment_ref(event)
    if ref is None:
        raise PermanentError(f"event {event['id']}: {event['type']} without an experiment")
    if event["type"] == events.APISERVER_DELETE:
        data = event.get_data()
        if isinstance(data, Mapping):
            deleted(ctx, dict(data))
        return
    data = event.get_data()
    if not isinstance(data, Mapping) or data.get("action") not in ("promote", "rollback"):
        raise PermanentError(f"event {event['id']}: data.action must be promote or rollback")
    st.retry_on_conflict(lambda: finish(ctx, ref, events.iteration_of(event), data))


def deleted(ctx: Context, obj: dict[str, Any]) -> None:
    """The experiment was deleted: if it held traffic, give it back to the baseline."""
    ref = st.ref_of(obj)
    stage = st.stage_of(obj)
    if stage in st.ACTIVE:
        experiment = st.resolved_experiment(obj)
        moves = experiment.spec.strategy.testing_pattern is not TestingPattern.CONFORMANCE
        if moves and experiment.spec.version_info is not None:
            rollout.rollback(ctx, model_for(experiment.spec, experiment.namespace))
            log.info("finish: %s deleted while %s; baseline restored", ref, stage)
    iteration = int(st.status_of(obj).get("completedIterations") or 0)
    ctx.sink.emit(
        events.make_event(
            events.FINISHED,
            ref,
            iteration,
            {"outcome": ABORTED if stage in st.ACTIVE else stage, "reason": "ExperimentDeleted"},
            stage="finish",
        )
    )


def finish(ctx: Context, ref: ExperimentRef, iteration: int, data: Mapping[str, Any]) -> None:
    obj = st.current(ctx.store, ref)
    if obj is None:
        return
    status = st.status_of(obj)
    if st.stage_of(obj) in st.TERMINAL:
        ctx.sink.emit(_finished(obj, status))  # repeat: re-announce, change nothing
        return
    if st.stage_of(obj) not in st.ACTIVE:
        log.info("finish: %s is %s; nothing to conclude", ref, st.stage_of(obj))
        return
    experiment = st.resolved_experiment(obj)
    model = model_for(experiment.spec, experiment.namespace)
    failed = bool(data.get("failed"))
    version = data.get("version")
    split: dict[str, int] | None = None
    if experiment.spec.strategy.testing_pattern is TestingPattern.CONFORMANCE:
        # Conformance validates the version that serves; it never moves traffic.
        passed = data["action"] == "promote" and not failed
        outcome = VALIDATED if passed else NOT_VALIDATED
        message = str(data.get("message") or outcome)
        version = experiment.spec.version_info.baseline.name if experiment.spec.version_info else ""
    elif data["action"] == "promote" and not failed and isinstance(version, str):
        split = rollout.promote(ctx, model, version)
        outcome, message = PROMOTED, str(data.get("message") or f"promoted {version}")
    else:
        split = rollout.rollback(ctx, model)
        baseline = (
            experiment.spec.version_info.baseline.name if experiment.spec.version_info else ""
        )
        version = baseline
        outcome = ABORTED if failed else ROLLED_BACK
        message = str(data.get("message") or f"rolled back to {baseline}")
    now = ctx.clock.now()
    reason = str(data.get("reason") or data.get("rule") or outcome)
    status.update(
        stage=st.FAILED if failed else st.COMPLETED,
        outcome=outcome,
        message=message,
        lastUpdateTime=st.iso(now),
        versionRecommendedForPromotion=version,
        conditions=st.with_condition(
            status,
            st.FAILED_CONDITION if failed else st.COMPLETED_CONDITION,
            True,
            reason,
            message,
            now,
        ),
    )
    if split:
        status["currentWeightDistribution"] = [{"name": n, "value": w} for n, w in split.items()]
    ctx.store.write_status(obj, status)
    ctx.sink.emit(_finished(obj, status))


def _finished(obj: Mapping[str, Any], status: Mapping[str, Any]) -> CloudEvent:
    return events.make_event(
        events.FINISHED,
        st.ref_of(obj),
        int(status.get("completedIterations") or 0),
        {
            "outcome": status.get("outcome"),
            "stage": status.get("stage"),
            "version": status.get("versionRecommendedForPromotion"),
            "message": status.get("message"),
        },
        stage="finish",
    )
