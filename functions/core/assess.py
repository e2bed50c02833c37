"""The assess stage: turn one iteration's measurements into verdicts, traffic and status.

On `experiment.measured` it runs the same analysis as `arbiter analyze`, moves traffic to
the next split (read back before it counts), records the iteration in status, and emits
`experiment.assessed` — or `experiment.concluded` once a recommendation to promote or roll
back fires. The randomness of the split is seeded by (uid, iteration), so a redelivered
event recomputes exactly the same decision.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from cloudevents.http import CloudEvent

from analytics.analysis import Action, analyze
from analytics.document import to_dict
from analytics.model import DeploymentPattern, TestingPattern
from functions.core import events, rollout
from functions.core import status as st
from functions.core.backends import model_for
from functions.core.context import Context
from functions.core.errors import PermanentError
from functions.core.events import ExperimentRef

log = logging.getLogger(__name__)


def rng_for(uid: str, iteration: int) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big")
    return np.random.default_rng([seed, iteration])


def handle(ctx: Context, event: CloudEvent) -> None:
    ref = events.experiment_ref(event)
    if ref is None:
        raise PermanentError(f"event {event['id']}: {events.MEASURED} without an experiment")
    iteration = events.iteration_of(event)
    data = event.get_data()
    if not isinstance(data, Mapping) or not isinstance(data.get("aggregatedMetrics"), Mapping):
        raise PermanentError(f"event {event['id']}: data.aggregatedMetrics is missing")
    try:
        st.retry_on_conflict(lambda: assess(ctx, ref, iteration, data))
    except PermanentError as e:
        # Measurements the analysis cannot use would leave the experiment running with
        # nobody to end it: end it the safe way (finish restores the baseline) and say why.
        ctx.sink.emit(
            events.make_event(
                events.CONCLUDED,
                ref,
                iteration,
                {
                    "action": "rollback",
                    "failed": True,
                    "reason": "AnalysisFailed",
                    "message": str(e),
                },
                stage="assess",
            )
        )
        raise


def _follow_up(status: Mapping[str, Any], ref: ExperimentRef, iteration: int) -> CloudEvent:
    rec = status.get("recommendation") or {}
    if rec.get("action") in ("promote", "rollback"):
        return events.make_event(events.CONCLUDED, ref, iteration, rec, stage="assess")
    return events.make_event(events.ASSESSED, ref, iteration, {}, stage="assess")


def assess(ctx: Context, ref: ExperimentRef, iteration: int, data: Mapping[str, Any]) -> None:
    obj = st.current(ctx.store, ref)
    if obj is None:
        return
    status = st.status_of(obj)
    completed = int(status.get("completedIterations") or 0)
    stage = st.stage_of(obj)
    if iteration == completed and stage in (st.RUNNING, st.FINISHING):
        # Already recorded; the follow-up may have been lost after the write: send it again
        # (same id, so a receiver that saw it already can tell).
        ctx.sink.emit(_follow_up(status, st.ref_of(obj), iteration))
        return
    if stage != st.RUNNING or iteration != completed + 1:
        log.info(
            "assess: %s iteration %d ignored (stage %s, done %d)", ref, iteration, stage, completed
        )
        return

    aggregated = dict(data["aggregatedMetrics"])
    analysis_in = {**(status.get("analysis") or {}), "aggregatedMetrics": aggregated}
    doc = {**obj, "status": {**status, "analysis": analysis_in}}
    experiment = st.resolved_experiment(doc)
    uid = str(st.ref_of(obj).uid or ref)
    analysis = analyze(experiment, rng_for(uid, iteration))
    report = to_dict(analysis)
    action = analysis.recommendation.action
    spec = experiment.spec

    current = {w["name"]: w["value"] for w in status.get("currentWeightDistribution") or []}
    weights = dict(analysis.weights) if analysis.weights is not None else None
    moves = (
        action is Action.CONTINUE
        and weights is not None
        and spec.strategy.testing_pattern is not TestingPattern.CONFORMANCE
        and spec.strategy.deployment_pattern is not DeploymentPattern.FIXED_SPLIT
        and weights != current
    )
    if moves and weights is not None:
        current = rollout.set_split(ctx, model_for(spec, experiment.namespace), weights)

    now = ctx.clock.now()
    status.update(
        completedIterations=iteration,
        lastIterationTime=str(data.get("measuredAt") or st.iso(now)),
        lastUpdateTime=st.iso(now),
        transientFailures=0,
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
        recommendation=report["recommendation"],
        versionRecommendedForPromotion=report["versionRecommendedForPromotion"],
        message=(
            f"iteration {iteration} of {spec.duration.total_iterations}: "
            f"{report['recommendation']['message']}"
        ),
    )
    if current:
        status["currentWeightDistribution"] = [{"name": n, "value": w} for n, w in current.items()]
    if action is not Action.CONTINUE:
        status["stage"] = st.FINISHING
    ctx.store.write_status(obj, status)
    ctx.sink.emit(_follow_up(status, st.ref_of(obj), iteration))
