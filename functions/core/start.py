"""The start stage: validate, take the target, wait for the versions, set the first split.

Validation includes what the experiment may touch (functions.core.tenancy): its own
namespace only, field paths the target's owner allows, a version list the backend can
carry. Before the first split moves, the Experiment gets the restore finalizer and the
target its holder annotation (functions.core.ownership), and the split is recorded in
status (desiredWeightDistribution) before it is applied.

Woken by an Experiment being added (ApiServerSource), by a ping (to re-check experiments
that wait for their versions or their target) and by `experiment.finished` (a target was
freed). It never sleeps waiting for a Ready condition: it records what it waits for and
the next ping looks again, so the function can scale to zero meanwhile. Every experiment it
starts or looks at again keeps the clock's PingSource in place (functions/core/clock.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from cloudevents.http import CloudEvent

from analytics.model import DeploymentPattern, Experiment, TestingPattern
from analytics.split import initial_weights
from functions.core import clock, events, failures, ownership, rollout, sweep, tenancy
from functions.core import status as st
from functions.core.backends import backend_for
from functions.core.context import Context
from functions.core.errors import NotFoundError, PermanentError, TransientError
from functions.core.events import ExperimentRef
from functions.core.iterate import metric_names
from functions.core.status import ACTIVE, TERMINAL, ConditionType, Stage, Status, Version

log = logging.getLogger(__name__)

# What a sweep looks at again: experiments that have not taken their target yet.
_NOT_STARTED: Final = frozenset({Stage.PENDING, Stage.WAITING, Stage.INITIALIZING})


def handle(ctx: Context, event: CloudEvent) -> None:
    ref = events.experiment_ref(event)
    listed: list[dict[str, Any]] | None = None
    # One experiment added: its failure is the event's. Otherwise (a ping, a freed target:
    # experiment.finished names the experiment that ended, not one to start) a sweep, where
    # one experiment's failure is recorded on it and never stops the others.
    single = event["type"] == events.APISERVER_ADD and ref is not None
    if single and ref is not None:
        refs = [ref]
    else:
        # A ping or a freed target: look again at everything not yet running. The one list
        # also serves every target check in this sweep: a stale entry can only make an
        # experiment wait one more ping, never take a target someone holds.
        listed = ctx.store.list()
        refs = [st.ref_of(obj) for obj in listed if _unstarted(Status.read(obj))]
    if refs:
        _keep_clock(ctx, single)
    elif listed and clock.from_heartbeat(str(event["source"])) and any(map(clock.live, listed)):
        # Live experiments past start, and no clock: only a lost event or a hand gets here.
        try:
            clock.ensure_present(ctx)
        except TransientError as e:
            log.warning("start: could not check the clock: %s", e)
    failed: list[str] = []
    for r in refs:
        try:
            st.retry_on_conflict(functools.partial(start_one, ctx, r, listed))
        except TransientError as e:
            if single:
                raise
            # The next ping tries again; the others go on now.
            log.warning("start: %s: transient, next ping retries: %s", r, e)
        except PermanentError as e:
            _record(ctx, r, e)
            if single:
                raise
            failed.append(f"{r}: {e}")
        except Exception as e:  # one experiment never stops the others
            _record(ctx, r, e)
            if single:
                raise PermanentError(f"experiment {r}: {type(e).__name__}: {e}") from e
            failed.append(f"{r}: {e}")
    if failed:
        log.warning("start: %d experiment(s) could not start: %s", len(failed), failed)


def _keep_clock(ctx: Context, single: bool) -> None:
    """The pings that re-drive these experiments keep coming (functions/core/clock.py);
    before anything else, so an experiment that fails half-way is re-driven too."""
    try:
        clock.ensure(ctx)
    except TransientError as e:
        if single:
            raise  # the add event is retried: nothing else would start the clock for it
        # On a ping the clock exists; on a freed target the experiments waiting are live,
        # so no sweep deletes it. The next ping tries again.
        log.warning("start: could not keep the clock: %s", e)


def _unstarted(status: Status) -> bool:
    # A first split recorded but not read back (the patch failed after the write-ahead)
    # counts as not started: the sweep applies it.
    pending_split = (
        status.stage is Stage.RUNNING
        and not status.iterations_done
        and bool(status.desired)
        and status.desired != status.split
    )
    return status.stage in _NOT_STARTED or pending_split


def _target_key(target: str, namespace: str) -> str:
    ns, _, name = target.rpartition("/")
    return f"{ns or namespace}/{name}"


def _record(ctx: Context, ref: ExperimentRef, error: Exception) -> None:
    """A failure on one experiment, recorded on it by its stage (functions/core/failures.py;
    nothing when start_one already ended it with its own condition); never raises."""
    if isinstance(error, PermanentError):
        reason = "CannotStart"
    else:
        reason = "InternalError"
        log.error("start: %s", ref, exc_info=error)
    message = f"start could not proceed: {type(error).__name__}: {error}"
    try:
        failures.record(ctx, ref, reason, message, stage="start")
    except Exception:  # nothing more to do for it on this ping
        log.exception("start: %s: could not record the failure", ref)


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
    # `iris` and `demo/iris` in namespace demo are one target.
    mine = _target_key(target, st.ref_of(obj).namespace)
    for other in sorted(experiments, key=key):
        theirs = _target_key(
            str((other.get("spec") or {}).get("target")), st.ref_of(other).namespace
        )
        if key(other) == me or theirs != mine:
            continue
        stage = Status.read(other).stage
        if stage in ACTIVE or (stage not in TERMINAL and key(other) < me):
            return other
    return None


def _fail(ctx: Context, obj: dict[str, Any], reason: str, message: str) -> None:
    now = ctx.clock.now()
    status = replace(Status.read(obj), stage=Stage.FAILED, message=message, last_update_time=now)
    status = status.with_condition(ConditionType.FAILED, True, reason, message, now)
    ctx.store.write_status(obj, status.to_dict())


def _generation(obj: Mapping[str, Any]) -> int | None:
    generation = (obj.get("metadata") or {}).get("generation")
    return generation if isinstance(generation, int) else None


def start_one(
    ctx: Context, ref: ExperimentRef, experiments: list[dict[str, Any]] | None = None
) -> None:
    """Start one experiment, or record what it waits for. `experiments` is a listing to
    check the target against (listed afresh when not given)."""
    obj = st.current(ctx.store, ref)
    if obj is None:
        return
    status = Status.read(obj)
    if status.stage in TERMINAL:
        return
    if status.stage in ACTIVE:
        if _unstarted(status):
            # The first split was recorded but not applied: apply it, and announce the
            # start this delivery completes. A start already complete is not announced
            # again (a repeat per duplicate would multiply every later event; were the
            # first announcement lost, the clock measures the experiment when it is due).
            obj = _apply_first_split(ctx, obj)
            ctx.sink.emit(events.make(events.Started(), st.ref_of(obj), 0, stage="start"))
        return
    problems = st.spec_problems(obj)
    if problems:
        message = "invalid spec: " + "; ".join(problems)
        _fail(ctx, obj, "InvalidSpec", message)
        raise PermanentError(f"experiment {ref}: {message}")
    too_long = sweep.duration_problem(obj, ctx.settings)
    if too_long is not None:
        # Bounded so nobody holds a target for ever (the clock also ends a running one then).
        _fail(ctx, obj, "DurationTooLong", too_long)
        raise PermanentError(f"experiment {ref}: {too_long}")
    experiment = st.resolved_experiment(obj)
    refused = tenancy.namespace_problems(
        experiment.spec, experiment.namespace, metric_names(experiment), ctx.settings
    ) + tenancy.expressible_problems(experiment.spec)
    if refused:
        _refuse(ctx, obj, ref, refused)
    now = ctx.clock.now()
    status = replace(
        status,
        init_time=status.init_time or now,
        last_update_time=now,
        observed_generation=_generation(obj),
    )

    blocker = _blocker(
        obj,
        experiment.spec.target,
        ctx.store.list() if experiments is None else experiments,
    )
    if blocker is not None:
        other = st.ref_of(blocker)
        message = (
            f"waiting for experiment {other} ({Status.read(blocker).stage}) to release target "
            f"{experiment.spec.target}"
        )
        status = replace(status, stage=Stage.WAITING, message=message).with_condition(
            ConditionType.TARGET_ACQUIRED, False, "TargetBusy", message, now
        )
        ctx.store.write_status(obj, status.to_dict())
        return
    status = status.with_condition(ConditionType.TARGET_ACQUIRED, True, "TargetAcquired", "", now)

    model = backend_for(experiment.spec, experiment.namespace)
    try:
        objects = rollout.fetch(ctx, model)
        resolution = model.resolve(objects)
        waiting_for = resolution.waiting_for
    except NotFoundError as e:
        resolution, waiting_for = None, f"{e} to exist"
    if resolution is None or not resolution.ready:
        waited = (now - (status.init_time or now)).total_seconds()
        if waited > ctx.settings.ready_timeout_seconds:
            message = (
                f"gave up after {waited:.0f} s (ARBITER_READY_TIMEOUT_SECONDS="
                f"{ctx.settings.ready_timeout_seconds:g}) waiting for {waiting_for}"
            )
            _fail(ctx, obj, "VersionsNotReady", message)
            return
        message = f"waiting for {waiting_for}"
        status = replace(status, stage=Stage.INITIALIZING, message=message).with_condition(
            ConditionType.VERSIONS_READY, False, "Waiting", message, now
        )
        ctx.store.write_status(obj, status.to_dict())
        return

    refused = tenancy.field_path_problems(
        experiment.spec, experiment.namespace, objects, ctx.settings
    )
    if refused:
        _refuse(ctx, obj, ref, refused)

    names = resolution.names or (
        experiment.spec.version_info.names if experiment.spec.version_info else ()
    )
    versions = tuple(Version(n, resolution.revisions.get(n, n)) for n in names)
    status = replace(status, versions=versions)
    experiment = st.resolved_experiment({**obj, "status": status.to_dict()})
    weights = _first_split(ctx, experiment, model)

    # Before anything moves: the finalizer, so a deletion waits for the restore; then the
    # target, taken conditionally, so a racing start cannot take it too.
    holder = st.ref_of(obj)
    obj = ownership.add_finalizer(ctx, obj)
    try:
        ownership.ensure_held(ctx, model, holder, rollout.fetch(ctx, model))
    except ownership.NotHolderError as e:
        message = f"waiting for the target to be released: {e}"
        status = replace(status, stage=Stage.WAITING, message=message).with_condition(
            ConditionType.TARGET_ACQUIRED, False, "TargetHeld", message, now
        )
        ctx.store.write_status(obj, status.to_dict())
        return
    status = replace(
        status,
        stage=Stage.RUNNING,
        start_time=now,
        last_iteration_time=now,
        completed_iterations=0,
        transient_failures=0,
        message=f"running: 0 of {experiment.spec.duration.total_iterations} iterations done",
    ).with_condition(
        ConditionType.VERSIONS_READY,
        True,
        "VersionsReady",
        ", ".join(f"{v.name}={v.revision}" for v in versions),
        now,
    )
    if weights is not None:
        # Write-ahead: the split is recorded before it is applied, so a failed write leaves
        # the traffic untouched.
        status = status.with_desired(weights)
    obj = ctx.store.write_status(obj, status.to_dict())
    obj = _apply_first_split(ctx, obj)
    ctx.sink.emit(events.make(events.Started(), st.ref_of(obj), 0, stage="start"))


def _refuse(
    ctx: Context, obj: dict[str, Any], ref: ExperimentRef, problems: list[tenancy.Problem]
) -> None:
    """Fail an experiment that asks for what it may not touch, naming the fields."""
    message = "; ".join(p.message for p in problems)
    _fail(ctx, obj, problems[0].reason, message)
    raise PermanentError(f"experiment {ref}: {message}")


def _apply_first_split(ctx: Context, obj: dict[str, Any]) -> dict[str, Any]:
    """Apply the recorded first split and record it as read back (nothing to do when it
    already is)."""
    status = Status.read(obj)
    desired = status.desired
    if not desired or desired == status.split:
        return obj
    experiment = st.resolved_experiment(obj)
    model = backend_for(experiment.spec, experiment.namespace)
    applied = rollout.set_split(ctx, model, desired, holder=st.ref_of(obj))
    status = replace(status.with_split(applied), last_update_time=ctx.clock.now())
    return ctx.store.write_status(obj, status.to_dict())


def _first_split(ctx: Context, experiment: Experiment, model: Any) -> dict[str, int] | None:
    """The split to start at (None: traffic does not move)."""
    spec = experiment.spec
    if spec.strategy.testing_pattern is TestingPattern.CONFORMANCE:
        return None
    if spec.strategy.deployment_pattern is DeploymentPattern.FIXED_SPLIT:
        # FixedSplit keeps the split the user set on the objects; nothing moves.
        current = model.split(rollout.fetch(ctx, model))
        if current is not None and sum(current.values()) == 100:
            return dict(current)
    weights = initial_weights(spec)
    return None if weights is None else dict(weights)
