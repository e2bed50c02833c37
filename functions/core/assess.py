"""The assess stage: turn one iteration's measurements into verdicts, traffic and status.

On `experiment.measured` it runs the same analysis as `arbiter analyze`, moves traffic to
the next split (read back before it counts), records the iteration in status, and emits
`experiment.assessed` — or `experiment.concluded` once a recommendation to promote or roll
back fires. A new split is recorded in status (desiredWeightDistribution) before it is
applied. The randomness of the split is seeded by (uid, iteration), so a redelivered
event recomputes exactly the same decision.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace

import numpy as np
from cloudevents.http import CloudEvent

from analytics.analysis import analyze
from analytics.document import to_dict
from analytics.model import DeploymentPattern, TestingPattern
from analytics.recommendation import Action
from functions.core import events, rollout, sweep
from functions.core import status as st
from functions.core.backends import model_for
from functions.core.context import Context
from functions.core.errors import PermanentError
from functions.core.events import ExperimentRef
from functions.core.status import Stage, Status

log = logging.getLogger(__name__)


def rng_for(uid: str, iteration: int) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big")
    return np.random.default_rng([seed, iteration])


def handle(ctx: Context, event: CloudEvent) -> None:
    measured = events.parse(event, events.Measured)
    ref, iteration = measured.ref, measured.iteration
    try:
        st.retry_on_conflict(lambda: assess(ctx, ref, iteration, measured.payload))
    except PermanentError as e:
        # Measurements the analysis cannot use would leave the experiment running with
        # nobody to end it: end it the safe way (finish restores the baseline) and say why.
        conclusion = events.Concluded.abort("AnalysisFailed", str(e))
        ctx.sink.emit(events.make(conclusion, ref, iteration, stage="assess"))
        raise


def _follow_up(status: Status, ref: ExperimentRef, iteration: int) -> CloudEvent:
    # The decision as recorded, whoever recorded it (the clock may have: MaxDurationExceeded).
    decision = sweep.recorded_decision(status)
    if decision is not None:
        return events.make(decision, ref, iteration, stage="assess")
    return events.make(events.Assessed(), ref, iteration, stage="assess")


def assess(ctx: Context, ref: ExperimentRef, iteration: int, measured: events.Measured) -> None:
    obj = st.current(ctx.store, ref)
    if obj is None:
        return
    status = Status.read(obj)
    completed = status.iterations_done
    stage = status.stage
    if iteration == completed and stage in (Stage.RUNNING, Stage.FINISHING):
        # Already recorded; the follow-up may have been lost after the write: send it again
        # (same id, so a receiver that saw it already can tell).
        ctx.sink.emit(_follow_up(status, st.ref_of(obj), iteration))
        return
    if stage is not Stage.RUNNING or iteration != completed + 1:
        log.info(
            "assess: %s iteration %d ignored (stage %s, done %d)", ref, iteration, stage, completed
        )
        return

    aggregated = dict(measured.aggregated_metrics)
    analysis_in = {**(status.analysis or {}), "aggregatedMetrics": aggregated}
    doc = {**obj, "status": replace(status, analysis=analysis_in).to_dict()}
    experiment = st.resolved_experiment(doc)
    uid = str(st.ref_of(obj).uid or ref)
    analysis = analyze(experiment, rng_for(uid, iteration))
    report = to_dict(analysis)
    action = analysis.recommendation.action
    spec = experiment.spec

    current = status.split
    weights = dict(analysis.weights) if analysis.weights is not None else None
    moves = (
        action is Action.CONTINUE
        and weights is not None
        and spec.strategy.testing_pattern is not TestingPattern.CONFORMANCE
        and spec.strategy.deployment_pattern is not DeploymentPattern.FIXED_SPLIT
        and weights != current
    )
    if moves and weights is not None:
        # Write-ahead: record the split asked for before applying it. A redelivery of this
        # event recomputes the same decision (seeded), so the record stays true.
        status = status.with_desired(weights)
        obj = ctx.store.write_status(obj, status.to_dict())
        current = rollout.set_split(
            ctx, model_for(spec, experiment.namespace), weights, holder=st.ref_of(obj)
        )

    now = ctx.clock.now()
    status = replace(
        status,
        completed_iterations=iteration,
        # The event's time is a hint: never later than now (a time far ahead would stop
        # the clock from ever finding the next iteration due).
        last_iteration_time=min(measured.measured_at or now, now),
        last_update_time=now,
        transient_failures=0,
        analysis={
            "aggregatedMetrics": aggregated,
            "versionAssessments": {"data": report["versionAssessments"]},
            "winnerAssessment": {
                "data": report["winnerAssessment"],
                "message": analysis.winner.message,
            },
            "weights": {"data": report["weights"]},
            "evidence": report["evidence"],
        },
        recommendation=analysis.recommendation,
        version_recommended_for_promotion=analysis.version_recommended_for_promotion,
        message=(
            f"iteration {iteration} of {spec.duration.total_iterations}: "
            f"{analysis.recommendation.message}"
        ),
    )
    if current:
        status = status.with_split(current)
    # The iteration as `arbiter report` plots it: a bounded history kept in the status.
    names = [v.name for v in spec.version_info.versions] if spec.version_info else []
    entry = st.history_entry(
        iteration, now, names, status.split, report["evidence"], analysis.recommendation
    )
    status = replace(status, history=st.with_history(status.history, entry))
    if action is not Action.CONTINUE:
        status = replace(status, stage=Stage.FINISHING, finishing_time=now)
    ctx.store.write_status(obj, status.to_dict())
    ctx.sink.emit(_follow_up(status, st.ref_of(obj), iteration))
