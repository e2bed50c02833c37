"""The assess stage: turn one iteration's measurements into verdicts, traffic and status.

On `experiment.measured` it runs the same analysis as `arbiter analyze`, moves traffic to
the next split (read back before it counts), records the iteration in status, and emits
`experiment.assessed`. Once a recommendation to promote or roll back fires, it records that
decision in status (stage Finishing) in the same write, then emits `experiment.concluded`.
A new split is recorded in status (desiredWeightDistribution) before it is applied. The
randomness of the split is seeded by (uid, iteration), so a redelivered event recomputes
exactly the same decision.

The measurements are believed only when they are what iterate recorded: the iteration
after the completed ones, with the digest in `status.measurement`. Anything else is stale
(acknowledged and ignored) or forged (refused, 422; the experiment is left alone). An
iteration already recorded is acknowledged without sending its follow-up again: a re-send
per duplicate would multiply every later event.

Under `spec.strategy.promotion: Manual` a recommendation to promote is not a decision: it
is recorded in `status.awaitingPromotion` and waits for `arbiter promote` or `arbiter
abort` (functions/core/control.py). Nothing is assessed while paused.

The measurements' `windows` (each version's own counts this iteration) are folded into
`status.ratioTests` once, keyed by the iteration, before the analysis judges maxRatio
conditions by them; the first reward's, into `status.rewardTests`, which the A/B/n
stopping rule reads.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Final

import numpy as np
from cloudevents.http import CloudEvent

from analytics.analysis import analyze
from analytics.assessment import RatioTests
from analytics.conditional import PairTest, RatioTest
from analytics.document import status_analysis
from analytics.model import DeploymentPattern, Experiment, TestingPattern
from analytics.parse import MAX_PAIR_VERSIONS
from analytics.recommendation import Action, Recommendation
from functions.core import control, events, failures, rollout, sweep
from functions.core import status as st
from functions.core.backends import backend_for
from functions.core.context import Context
from functions.core.errors import InvalidEventError
from functions.core.events import Request
from functions.core.status import ConditionType, Stage, Status

log = logging.getLogger(__name__)

STAGE: Final = "assess"


def rng_for(uid: str, iteration: int) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big")
    return np.random.default_rng([seed, iteration])


def handle(ctx: Context, event: CloudEvent) -> None:
    measured = events.parse(event, events.Measured)
    failures.guarded(
        ctx,
        STAGE,
        measured.ref,
        "AnalysisFailed",
        lambda: st.retry_on_conflict(lambda: assess(ctx, measured)),
    )


def _believed(status: Status, request: Request[events.Measured]) -> bool:
    """Whether the measurements are the ones iterate recorded for the iteration after the
    completed ones: True to use them, False when they are stale; InvalidEventError when
    nothing recorded could have produced them."""
    iteration, measured = request.iteration, request.payload
    record = status.measurement
    at = measured.measured_at
    if record is not None and record.iteration == iteration:
        if record.digest is not None and record.digest == measured.digest:
            return True
        # Measured again since (a lost event is asked for again one interval on): an
        # earlier measurement of the same iteration is stale, not forged.
        newer = record.measured_at or record.requested_at
        if at is not None and newer is not None and at < newer:
            return False
    recorded = "nothing" if record is None else record.to_dict()
    raise InvalidEventError(
        f"event {request.id}: {events.MEASURED} for {request.ref} iteration {iteration} "
        f"is not what iterate recorded (status.measurement: {recorded}); ignored"
    )


def fold_windows(
    experiment: Experiment,
    tests: RatioTests,
    iteration: int,
    windows: events.WindowCounts,
) -> dict[str, dict[str, RatioTest]]:
    """The running test of every maxRatio metric and candidate, with iteration `iteration`'s
    window folded in once (`RatioTest.fold` ignores an iteration it has seen). A window
    missing a version's counts (a missed scrape) adds nothing but marks the iteration seen;
    a test kept for another margin (the spec changed) starts afresh, and one of a metric no
    longer judged by a ratio is dropped. The first maxRatio objective of a metric sets it."""
    info = experiment.spec.version_info
    if info is None:
        return {}
    baseline = info.baseline.name
    out: dict[str, dict[str, RatioTest]] = {}
    for o in experiment.spec.criteria.objectives:
        if o.max_ratio is None or o.metric in out:
            continue
        counts = windows.get(o.metric, {})
        kept = tests.get(o.metric, {})
        out[o.metric] = {}
        for candidate in info.candidates:
            test = kept.get(candidate.name)
            if test is None or not math.isclose(test.margin, o.max_ratio):
                test = RatioTest(o.max_ratio)
            c, b = counts.get(candidate.name), counts.get(baseline)
            window = (*c, *b) if c is not None and b is not None else (0, 0, 0, 0)
            out[o.metric][candidate.name] = test.fold(iteration, *window)
    return out


def fold_reward_windows(
    experiment: Experiment,
    tests: Mapping[str, Mapping[tuple[str, str], PairTest]],
    iteration: int,
    windows: events.WindowCounts,
) -> dict[str, dict[tuple[str, str], PairTest]]:
    """The first reward's pairwise tests, every pair of versions, with iteration
    `iteration`'s window folded in once: what the A/B/n stopping rule reads. They start
    with the first window measured for that metric (iterate measures one only for a reward
    on counts) and are kept only for up to MAX_PAIR_VERSIONS versions; a missing version's
    counts add nothing."""
    info, rewards = experiment.spec.version_info, experiment.spec.criteria.rewards
    if info is None or not rewards or len(info.names) > MAX_PAIR_VERSIONS:
        return {}
    metric = rewards[0].metric
    kept = tests.get(metric, {})
    counts = windows.get(metric)
    if counts is None and not kept:
        return {}
    counts = counts or {}
    out: dict[tuple[str, str], PairTest] = {}
    for version, rival in itertools.combinations(info.names, 2):
        test = kept.get((version, rival)) or PairTest()
        a, b = counts.get(version), counts.get(rival)
        window = (*a, *b) if a is not None and b is not None else (0, 0, 0, 0)
        out[(version, rival)] = test.fold(iteration, *window)
    return {metric: out}


def assess(ctx: Context, request: Request[events.Measured]) -> None:
    ref, iteration, measured = request.ref, request.iteration, request.payload
    obj = st.current(ctx.store, ref)
    if obj is None:
        return
    status = Status.read(obj)
    completed = status.iterations_done
    stage = status.stage
    if stage is not Stage.RUNNING or iteration != completed + 1:
        # Recorded already (its follow-up went out with the write), stale or early.
        log.info(
            "assess: %s iteration %d ignored (stage %s, done %d)", ref, iteration, stage, completed
        )
        return
    if control.holds_still(obj, status):
        # Paused, or a pause or an end asked for: no traffic moves, nothing is recorded. The
        # clock asks for this iteration again once resumed (the record goes stale).
        log.info("assess: %s iteration %d: paused or ending on request", ref, iteration)
        return
    if not _believed(status, request):
        log.info("assess: %s iteration %d: a superseded measurement, ignored", ref, iteration)
        return

    aggregated = dict(measured.aggregated_metrics)
    analysis_in = {**(status.analysis or {}), "aggregatedMetrics": aggregated}
    doc = {**obj, "status": replace(status, analysis=analysis_in).to_dict()}
    experiment = st.resolved_experiment(doc)
    if measured.windows:
        # This iteration's own counts join the running conditional tests, once: a test
        # that has seen this iteration (a redelivery after the write-ahead) keeps it.
        tests = fold_windows(experiment, status.ratio_tests, iteration, measured.windows)
        pairs = fold_reward_windows(experiment, status.reward_tests, iteration, measured.windows)
        status = replace(status, ratio_tests=tests, reward_tests=pairs)
        experiment = replace(
            experiment,
            status=replace(experiment.status, ratio_tests=tests, reward_tests=pairs),
        )
    uid = str(st.ref_of(obj).uid or ref)
    analysis = analyze(experiment, rng_for(uid, iteration))
    stored = status_analysis(analysis, aggregated)
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
        # event recomputes the same decision (seeded), so the record stays true, and is not
        # written again (a write per copy would make concurrent copies lose every race).
        if status.desired != weights:
            status = status.with_desired(weights)
            obj = ctx.store.write_status(obj, status.to_dict())
        current = rollout.set_split(
            ctx, backend_for(spec, experiment.namespace), weights, holder=st.ref_of(obj)
        )

    now = ctx.clock.now()
    taken = status.measurement.measured_at if status.measurement else None
    status = replace(
        status,
        completed_iterations=iteration,
        # When iterate measured (as recorded); never later than now, so a clock ahead of
        # ours cannot stop the next iteration from ever coming due.
        last_iteration_time=min(taken or now, now),
        last_update_time=now,
        transient_failures=0,
        analysis=stored,
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
        iteration, now, names, status.split, stored["evidence"], analysis.recommendation
    )
    status = replace(status, history=st.with_history(status.history, entry, st.tests_size(status)))
    follow_up: events.Payload = events.Assessed()
    if (
        action is Action.PROMOTE
        and control.promotion(obj) is control.Promotion.MANUAL
        and spec.strategy.testing_pattern is not TestingPattern.CONFORMANCE
    ):
        # promotion: Manual: the recommendation waits for a person (arbiter promote or
        # abort); the split in force keeps serving and the clock measures no more. It is
        # recorded apart from `recommendation`, which must not read as a decision taken.
        rec = analysis.recommendation
        waiting = f"awaiting manual promotion (recommended: {rec.version}): {rec.message}"
        status = replace(
            status,
            awaiting_promotion=rec,
            recommendation=Recommendation(Action.CONTINUE, rec.version, rec.rule, waiting),
            message=f"iteration {iteration}: {waiting}",
        ).with_condition(ConditionType.AWAITING_PROMOTION, True, "Recommended", waiting, now)
    elif action is not Action.CONTINUE:
        # The decision is recorded (stage Finishing) before experiment.concluded says it.
        follow_up = events.Concluded.recommended(analysis.recommendation)
        status = sweep.with_decision(status, follow_up, now)
        if weights is not None and spec.strategy.testing_pattern is not TestingPattern.CONFORMANCE:
            # The split the decision ends on is written ahead like every other: finish then
            # applies a split the status already asked for.
            status = status.with_desired(weights)
    ctx.store.write_status(obj, status.to_dict())
    ctx.sink.emit(events.make(follow_up, st.ref_of(obj), iteration, stage=STAGE))
