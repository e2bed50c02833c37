"""The start stage: validate, take the target, wait for the versions, set the first split.

Woken by an Experiment being added (ApiServerSource), by a ping (to re-check experiments
that wait for their versions or their target) and by `experiment.finished` (a target was
freed). It never sleeps waiting for a Ready condition: it records what it waits for and
the next ping looks again, so the function can scale to zero meanwhile.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from cloudevents.http import CloudEvent

from analytics.model import DeploymentPattern, Experiment, TestingPattern
from analytics.split import initial_weights
from functions.core import events, rollout
from functions.core import status as st
from functions.core.context import Context
from functions.core.errors import NotFoundError, PermanentError
from functions.core.events import ExperimentRef
from functions.core.traffic import model_for

log = logging.getLogger(__name__)


def handle(ctx: Context, event: CloudEvent) -> None:
    ref = events.experiment_ref(event)
    listed: list[dict[str, Any]] | None = None
    if event["type"] == events.APISERVER_ADD and ref is not None:
        refs = [ref]
    else:
        # A ping or a freed target: look again at everything not yet running. The one list
        # also serves every target check in this sweep: a stale entry can only make an
        # experiment wait one more ping, never take a target someone holds.
        listed = ctx.store.list()
        refs = [
            st.ref_of(obj)
            for obj in listed
            if st.stage_of(obj) in (st.PENDING, st.WAITING, st.INITIALIZING)
        ]
    failures: list[str] = []
    for r in refs:
        try:
            st.retry_on_conflict(functools.partial(start_one, ctx, r, listed))
        except PermanentError as e:
            if ref is not None:
                raise
            failures.append(str(e))  # recorded in that experiment's status; go on
    if failures:
        log.warning("start: %d experiment(s) could not start: %s", len(failures), failures)


def _blocker(
    obj: Mapping[str, Any], target: str, experiments: list[dict[str, Any]]
) -> Mapping[str, Any] | None:
    """The experiment holding `target`, or queued ahead of `obj` for it (oldest first, so
    two starts racing for a target agree on who goes first)."""

    def key(o: Mapping[str, Any]) -> tuple[str, str, str]:
        meta = o.get("metadata") or {}
        return (
            str(meta.get("creationTimestamp") or ""),
            str(meta.get("namespace")),
            str(meta.get("name")),
        )

    me = key(obj)
    for other in sorted(experiments, key=key):
        if key(other) == me or (other.get("spec") or {}).get("target") != target:
            continue
        stage = st.stage_of(other)
        if stage in st.ACTIVE or (stage not in st.TERMINAL and key(other) < me):
            return other
    return None


def _fail(ctx: Context, obj: dict[str, Any], reason: str, message: str) -> None:
    now = ctx.clock.now()
    status = st.status_of(obj)
    status.update(
        stage=st.FAILED,
        message=message,
        lastUpdateTime=st.iso(now),
        conditions=st.with_condition(status, st.FAILED_CONDITION, True, reason, message, now),
    )
    ctx.store.write_status(obj, status)


def start_one(
    ctx: Context, ref: ExperimentRef, experiments: list[dict[str, Any]] | None = None
) -> None:
    """Start one experiment, or record what it waits for. `experiments` is a listing to
    check the target against (listed afresh when not given)."""
    obj = st.current(ctx.store, ref)
    if obj is None:
        return
    stage = st.stage_of(obj)
    if stage in st.TERMINAL:
        return
    if stage in st.ACTIVE:
        if stage == st.RUNNING and not st.status_of(obj).get("completedIterations"):
            # Re-announce: the first announcement may have been lost after the write.
            ctx.sink.emit(events.make_event(events.STARTED, st.ref_of(obj), 0, stage="start"))
        return
    problems = st.spec_problems(obj)
    if problems:
        message = "invalid spec: " + "; ".join(problems)
        _fail(ctx, obj, "InvalidSpec", message)
        raise PermanentError(f"experiment {ref}: {message}")
    experiment = st.resolved_experiment(obj)
    now = ctx.clock.now()
    status = st.status_of(obj)
    status.setdefault("initTime", st.iso(now))
    status["lastUpdateTime"] = st.iso(now)
    status["observedGeneration"] = (obj.get("metadata") or {}).get("generation")

    blocker = _blocker(
        obj,
        experiment.spec.target,
        ctx.store.list() if experiments is None else experiments,
    )
    if blocker is not None:
        other = st.ref_of(blocker)
        message = (
            f"waiting for experiment {other} ({st.stage_of(blocker)}) to release target "
            f"{experiment.spec.target}"
        )
        status.update(
            stage=st.WAITING,
            message=message,
            conditions=st.with_condition(
                status, st.TARGET_ACQUIRED, False, "TargetBusy", message, now
            ),
        )
        ctx.store.write_status(obj, status)
        return
    status["conditions"] = st.with_condition(
        status, st.TARGET_ACQUIRED, True, "TargetAcquired", "", now
    )

    model = model_for(experiment.spec, experiment.namespace)
    try:
        objects = rollout.fetch(ctx, model)
        resolution = model.resolve(objects)
        waiting_for = resolution.waiting_for
    except NotFoundError as e:
        resolution, waiting_for = None, f"{e} to exist"
    if resolution is None or not resolution.ready:
        started = st.parse_time(status["initTime"]) or now
        waited = (now - started).total_seconds()
        if waited > ctx.settings.ready_timeout_seconds:
            message = (
                f"gave up after {waited:.0f} s (ARBITER_READY_TIMEOUT_SECONDS="
                f"{ctx.settings.ready_timeout_seconds:g}) waiting for {waiting_for}"
            )
            _fail(ctx, obj, "VersionsNotReady", message)
            return
        message = f"waiting for {waiting_for}"
        status.update(
            stage=st.INITIALIZING,
            message=message,
            conditions=st.with_condition(status, st.VERSIONS_READY, False, "Waiting", message, now),
        )
        ctx.store.write_status(obj, status)
        return

    names = resolution.names or (
        experiment.spec.version_info.names if experiment.spec.version_info else ()
    )
    status["versions"] = [{"name": n, "revision": resolution.revisions.get(n, n)} for n in names]
    obj_resolved = {**obj, "status": status}
    experiment = st.resolved_experiment(obj_resolved)
    weights = _first_split(ctx, experiment, model)
    status.update(
        stage=st.RUNNING,
        startTime=st.iso(now),
        lastIterationTime=st.iso(now),
        completedIterations=0,
        transientFailures=0,
        message=f"running: 0 of {experiment.spec.duration.total_iterations} iterations done",
        conditions=st.with_condition(
            {"conditions": status["conditions"]},
            st.VERSIONS_READY,
            True,
            "VersionsReady",
            ", ".join(f"{v['name']}={v['revision']}" for v in status["versions"]),
            now,
        ),
    )
    if weights is not None:
        status["currentWeightDistribution"] = [{"name": n, "value": w} for n, w in weights.items()]
    ctx.store.write_status(obj, status)
    ctx.sink.emit(events.make_event(events.STARTED, st.ref_of(obj), 0, stage="start"))


def _first_split(ctx: Context, experiment: Experiment, model: Any) -> dict[str, int] | None:
    spec = experiment.spec
    if spec.strategy.testing_pattern is TestingPattern.CONFORMANCE:
        return None
    if spec.strategy.deployment_pattern is DeploymentPattern.FIXED_SPLIT:
        # FixedSplit keeps the split the user set on the objects; nothing moves.
        current = model.split(rollout.fetch(ctx, model))
        if current is not None and sum(current.values()) == 100:
            return dict(current)
    weights = initial_weights(spec)
    return None if weights is None else rollout.set_split(ctx, model, weights)
