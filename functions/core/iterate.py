"""The iterate stage: find the experiments whose interval is due and measure them.

A ping (or `experiment.started`, or the update event of an Experiment with a pending
manual control request, for that one experiment) runs the clock (functions/core/sweep.py):
for each due experiment the request for iteration completed + 1 is recorded in `status.measurement`,
then one `experiment.due` is emitted, so many experiments on one tick are measured by
parallel deliveries, not one after another in one request; every other experiment holding
its target is re-driven too.

On `experiment.due` it reads every metric of every version, records when, and the digest of
what it read, in `status.measurement`, and only then emits `experiment.measured` carrying
the data: assess believes the data only when its digest is the recorded one. A due event
for an iteration measured less than an interval ago is a repeat: acknowledged, and nothing
is sent again (a measurement lost on its way is asked for again one interval on).

A metric a maxRatio objective judges, and the first reward, are read twice: since the
start, and over this iteration's own window (since `status.lastIterationTime`, the same
template with `$elapsed` the window's length), rounded to counts and carried as the
event's `windows` for the conditional tests assess keeps in `status.ratioTests` and
`status.rewardTests`.

Nothing is measured while the experiment is paused, or a pause or an end is asked for and
not yet handled (functions/core/control.py).

A measurement that cannot be taken for good (a missing Metric, a template that does not
render) ends the experiment the safe way (`failures.guarded`). A transient failure is
counted once per request in `status.transientFailures`, however often the broker delivers
the event; past ARBITER_MAX_TRANSIENT_FAILURES failed requests in a row, the decision to roll
back is recorded and announced.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from cloudevents.http import CloudEvent

from analytics.measurements import Counts, Histogram, Measurement, measurement_to_dict
from analytics.model import Experiment
from analytics.parse import MAX_PAIR_VERSIONS
from functions.core import control, events, failures, sweep
from functions.core import status as st
from functions.core.context import Context
from functions.core.errors import NotFoundError, PermanentError, TransientError
from functions.core.events import ExperimentRef
from functions.core.metrics import MetricError, MetricQueryError, MetricSpec, variables_for
from functions.core.status import MeasurementRecord, Stage, Status
from functions.core.tenancy import metric_allowed

log = logging.getLogger(__name__)

STAGE: Final = "iterate"


def handle(ctx: Context, event: CloudEvent) -> None:
    if event["type"] == events.DUE:
        due = events.parse(event, events.Due)
        failures.guarded(
            ctx,
            STAGE,
            due.ref,
            "MetricUnavailable",
            lambda: measure(ctx, due.ref, due.iteration),
        )
        return
    if event["type"] == events.APISERVER_UPDATE:
        # An Experiment with a pending control request changed (the arbiter-control source
        # watches only those): run the clock for that one experiment now.
        ref = events.experiment_ref(event)
        if ref is not None:
            sweep.drive(ctx, ref)
        return
    # A ping (or experiment.started): the clock re-drives every experiment that holds its
    # target, each on its own (functions/core/sweep.py).
    sweep.sweep(ctx)


def metric_names(experiment: Experiment) -> list[str]:
    """Every metric the analysis reads, each once, in a stable order."""
    c = experiment.spec.criteria
    names = [
        *([c.request_count] if c.request_count else []),
        *(o.metric for o in c.objectives),
        *(r.metric for r in c.rewards),
        *c.indicators,
    ]
    return list(dict.fromkeys(names))


def _metric(ctx: Context, experiment: Experiment, name: str) -> MetricSpec:
    namespace, _, short = name.rpartition("/")
    if namespace and not metric_allowed(namespace, experiment.namespace, ctx.settings):
        # Tenancy: a Metric of another namespace is not this experiment's to read.
        raise PermanentError(
            f"metric {name!r} (spec.criteria): namespace {namespace} is neither the "
            f"experiment's namespace {experiment.namespace} nor {ctx.settings.system_namespace}"
        )
    try:
        resource = ctx.store.get_metric(namespace or experiment.namespace, short)
    except NotFoundError:
        raise PermanentError(
            f"metric {name!r} (spec.criteria) not found in namespace "
            f"{namespace or experiment.namespace}; apply it or use namespace/name"
        ) from None
    try:
        return MetricSpec.parse(resource)
    except MetricError as e:
        raise PermanentError(f"metric {name!r}: {'; '.join(e.problems)}") from None


def measure(ctx: Context, ref: ExperimentRef, iteration: int) -> None:
    obj = st.current(ctx.store, ref)
    if obj is None:
        return
    status = Status.read(obj)
    completed = status.iterations_done
    if status.stage is not Stage.RUNNING or iteration != completed + 1:
        log.info(
            "iterate: %s iteration %d ignored (stage %s, done %d)",
            ref,
            iteration,
            status.stage,
            completed,
        )
        return
    if control.holds_still(obj, status):
        log.info("iterate: %s iteration %d: paused or ending on request", ref, iteration)
        return
    interval = sweep.interval_seconds(obj)
    now = ctx.clock.now()
    record = status.measurement
    if measured_lately(record, iteration, now, interval):
        log.info("iterate: %s iteration %d already measured; not sent again", ref, iteration)
        return
    # The request this delivery serves: the recorded one, or (none recorded, or its
    # measurement gone stale) a new one made now.
    pending = record is not None and record.iteration == iteration and record.digest is None
    requested_at = (record.requested_at if pending and record else None) or now
    experiment = st.resolved_experiment(obj)
    started = status.start_time or now
    # This iteration's own window starts where the last recorded one ended.
    window_start = status.last_iteration_time or started
    window_seconds = max(1, int((now - window_start).total_seconds()))
    try:
        data = _measure_all(ctx, obj, experiment, started, now)
        windows = _measure_windows(ctx, experiment, window_seconds, now)
    except TransientError as e:
        _failed_transiently(ctx, obj, iteration, requested_at, now, e)
        return
    measured = events.Measured(
        {"data": data},
        measured_at=now,
        windows=windows,
        window_seconds=window_seconds if windows else None,
    )
    taken = MeasurementRecord(iteration, requested_at, now, measured.digest)
    if st.update(ctx.store, obj, functools.partial(_record, taken=taken, interval=interval)):
        ctx.sink.emit(events.make(measured, st.ref_of(obj), iteration, stage=STAGE))
    else:
        log.info("iterate: %s iteration %d was recorded by another delivery", ref, iteration)


def measured_lately(
    record: MeasurementRecord | None, iteration: int, now: datetime, interval: float
) -> bool:
    """True when `iteration` was measured less than an interval ago (a repeat)."""
    return (
        record is not None
        and record.iteration == iteration
        and record.digest is not None
        and record.is_fresh(now, interval)
    )


def _record(status: Status, taken: MeasurementRecord, interval: float) -> Status | None:
    iteration = taken.iteration
    if status.stage is not Stage.RUNNING or iteration != status.iterations_done + 1:
        return None
    if taken.measured_at is None or measured_lately(
        status.measurement, iteration, taken.measured_at, interval
    ):
        return None
    return replace(status, measurement=taken)


def window_limits(experiment: Experiment) -> dict[str, float | None]:
    """metric -> the upperLimit that picks a histogram's bucket, for each metric measured
    window by window: those a maxRatio objective judges (the first such objective per
    metric, as the running test is kept per metric), and the first reward of up to
    MAX_PAIR_VERSIONS versions (its pairwise tests; only counts yield a window)."""
    limits: dict[str, float | None] = {}
    for o in experiment.spec.criteria.objectives:
        if o.max_ratio is not None and o.metric not in limits:
            limits[o.metric] = o.upper_limit
    info, rewards = experiment.spec.version_info, experiment.spec.criteria.rewards
    if rewards and info is not None and len(info.names) <= MAX_PAIR_VERSIONS:
        limits.setdefault(rewards[0].metric, None)
    return limits


def window_counts(m: Measurement, upper_limit: float | None) -> tuple[int, int] | None:
    """One version's (events, trials) in the window, rounded to counts (Prometheus'
    `increase` extrapolates); None when the window holds nothing to count."""
    if isinstance(m, Histogram):
        if upper_limit is None:
            return None
        m = m.exceedance(upper_limit)[1]
    if not isinstance(m, Counts) or not m.trials > 0:
        return None
    trials = round(m.trials)
    return min(round(max(m.events, 0.0)), trials), trials


def _measure_windows(
    ctx: Context, experiment: Experiment, seconds: int, now: datetime
) -> dict[str, dict[str, tuple[int, int]]]:
    """Each version's own counts over the last `seconds`, for every `window_limits` metric:
    the same template rendered with `$elapsed` the window's length."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for name, limit in window_limits(experiment).items():
        spec = _metric(ctx, experiment, name)
        try:
            measured = _measure_versions(ctx, experiment, name, spec, seconds, now)
        except MetricQueryError as e:
            # Over a window of a few seconds Prometheus' increase() can extrapolate a ratio's
            # numerator past its denominator. The window then counts nothing, as a missed
            # scrape does; the reading since the start, which was checked, still stands.
            log.info("iterate: no window counts for %s this iteration: %s", name, e)
            continue
        counts = {
            version: c
            for version, m in measured.items()
            if (c := window_counts(m, limit)) is not None
        }
        if counts:
            out[name] = counts
    return out


def _measure_versions(
    ctx: Context,
    experiment: Experiment,
    name: str,
    spec: MetricSpec,
    elapsed_seconds: int,
    now: datetime,
) -> dict[str, Measurement]:
    info = experiment.spec.version_info
    if info is None:
        raise PermanentError("spec.versionInfo: versions were never resolved")
    target_ns, _, target_name = experiment.spec.target.rpartition("/")
    out: dict[str, Measurement] = {}
    for version in info.versions:
        variables = variables_for(
            name=target_name,
            namespace=target_ns or experiment.namespace,
            revision=version.variables.get("revision", version.name),
            elapsed_seconds=elapsed_seconds,
            interval_seconds=int(experiment.spec.duration.interval_seconds),
            version_variables=version.variables,
        )
        try:
            out[version.name] = ctx.metrics.measure(spec, variables, now)
        except MetricError as e:
            raise PermanentError(f"metric {name!r}: {'; '.join(e.problems)}") from None
    return out


def _measure_all(
    ctx: Context, obj: Mapping[str, Any], experiment: Experiment, started: datetime, now: datetime
) -> dict[str, Any]:
    elapsed = max(1, int((now - started).total_seconds()))
    data: dict[str, Any] = {}
    for name in metric_names(experiment):
        spec = _metric(ctx, experiment, name)
        per_version = {
            version: measurement_to_dict(m)
            for version, m in _measure_versions(ctx, experiment, name, spec, elapsed, now).items()
        }
        # Which library measured, and in which units, travel with the measurements into
        # status.analysis.aggregatedMetrics (Status.metrics_library reads them back).
        data[name] = {
            "data": per_version,
            "library": spec.library or "custom",
            **({"units": spec.units} if spec.units else {}),
        }
    return data


def _failed_transiently(
    ctx: Context,
    obj: dict[str, Any],
    iteration: int,
    requested_at: datetime,
    now: datetime,
    error: TransientError,
) -> None:
    """Count the failure once for this request, then leave the event to the broker's retries;
    past the limit, record and announce the safe ending instead."""
    change = functools.partial(
        _count_failure,
        request=MeasurementRecord(iteration, requested_at, failed=True),
        limit=ctx.settings.max_transient_failures,
        now=now,
        error=error,
    )
    counted = st.update(ctx.store, obj, change)
    decision = None if counted is None else st.recorded_decision(counted)
    if counted is not None and decision is not None and counted.stage is Stage.FINISHING:
        ctx.sink.emit(events.make(decision, st.ref_of(obj), counted.iterations_done, stage=STAGE))
        return
    raise error


def _count_failure(
    status: Status, request: MeasurementRecord, limit: int, now: datetime, error: Exception
) -> Status | None:
    """The status counting this request's failure, or None if it is counted already (a
    redelivery of the same event) or the experiment moved on."""
    iteration = request.iteration
    if status.stage is not Stage.RUNNING or iteration != status.iterations_done + 1:
        return None
    if status.measurement == request:
        return None
    failures_in_a_row = (status.transient_failures or 0) + 1
    status = replace(status, transient_failures=failures_in_a_row, measurement=request)
    if failures_in_a_row <= limit:
        return status
    message = (
        f"{failures_in_a_row} measurement requests in a row failed transiently "
        f"(ARBITER_MAX_TRANSIENT_FAILURES={limit}); last: {error}"
    )
    return failures.aborted(status, "TransientFailures", message, now)
