"""The iterate stage: find the experiments whose interval is due and measure them.

A ping (or `experiment.started`) fans out: one `experiment.due` per due experiment, so
many experiments on one tick are measured by parallel deliveries, not one after another
in one request. On `experiment.due` it reads every metric of every version from the
metrics source and emits one `experiment.measured` carrying them. It writes nothing but
the count of transient failures; the measurements travel in the event, and `assess`
records them with the iteration.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from cloudevents.http import CloudEvent

from analytics.measurements import Measurement, measurement_to_dict
from analytics.model import Duration, Experiment
from functions.core import events
from functions.core import status as st
from functions.core.context import Context
from functions.core.errors import NotFoundError, PermanentError, TransientError
from functions.core.events import ExperimentRef
from functions.core.metrics import MetricError, MetricSpec, variables_for

log = logging.getLogger(__name__)


def handle(ctx: Context, event: CloudEvent) -> None:
    if event["type"] == events.DUE:
        ref = events.experiment_ref(event)
        if ref is None:
            raise PermanentError(f"event {event['id']}: {events.DUE} without an experiment")
        measure(ctx, ref, events.iteration_of(event))
        return
    now = ctx.clock.now()
    for obj in ctx.store.list():
        if st.stage_of(obj) != st.RUNNING:
            continue
        status = st.status_of(obj)
        last = st.parse_time(status.get("lastIterationTime") or status.get("startTime"))
        interval = _interval(obj)
        if last is None or now >= last + timedelta(seconds=interval):
            iteration = int(status.get("completedIterations") or 0) + 1
            ctx.sink.emit(events.make_event(events.DUE, st.ref_of(obj), iteration, stage="iterate"))


def _interval(obj: Mapping[str, Any]) -> float:
    # Read raw on every ping rather than parsing each experiment: start validated the spec;
    # the default is the parser's.
    duration = (obj.get("spec") or {}).get("duration") or {}
    try:
        return float(duration.get("intervalSeconds") or Duration.interval_seconds)
    except (TypeError, ValueError):
        return float(Duration.interval_seconds)


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
    if obj is None or st.stage_of(obj) != st.RUNNING:
        return
    status = st.status_of(obj)
    completed = int(status.get("completedIterations") or 0)
    if iteration != completed + 1:
        log.info("iterate: %s iteration %d is stale (done: %d)", ref, iteration, completed)
        return
    experiment = st.resolved_experiment(obj)
    now = ctx.clock.now()
    started = st.parse_time(status.get("startTime")) or now
    try:
        data = _measure_all(ctx, obj, experiment, started, now)
    except PermanentError as e:
        _abort(ctx, obj, iteration, "MetricUnavailable", str(e))
        raise
    except TransientError as e:
        failures = st.retry_on_conflict(lambda: _count_failure(ctx, ref))
        if failures > ctx.settings.max_transient_failures:
            message = (
                f"{failures} transient failures in a row (ARBITER_MAX_TRANSIENT_FAILURES="
                f"{ctx.settings.max_transient_failures}); last: {e}"
            )
            _abort(ctx, obj, iteration, "TransientFailures", message)
            return
        raise
    ctx.sink.emit(
        events.make_event(
            events.MEASURED,
            st.ref_of(obj),
            iteration,
            {"measuredAt": st.iso(now), "aggregatedMetrics": {"data": data}},
            stage="iterate",
        )
    )


def _measure_all(
    ctx: Context, obj: Mapping[str, Any], experiment: Experiment, started: Any, now: Any
) -> dict[str, Any]:
    info = experiment.spec.version_info
    if info is None:
        raise PermanentError("spec.versionInfo: versions were never resolved")
    target_ns, _, target_name = experiment.spec.target.rpartition("/")
    data: dict[str, Any] = {}
    for name in metric_names(experiment):
        spec = _metric(ctx, experiment, name)
        per_version: dict[str, Any] = {}
        for version in info.versions:
            variables = variables_for(
                name=target_name,
                namespace=target_ns or experiment.namespace,
                revision=version.variables.get("revision", version.name),
                elapsed_seconds=max(1, int((now - started).total_seconds())),
                interval_seconds=int(experiment.spec.duration.interval_seconds),
                version_variables=version.variables,
            )
            try:
                m: Measurement = ctx.metrics.measure(spec, variables, now)
            except MetricError as e:
                raise PermanentError(f"metric {name!r}: {'; '.join(e.problems)}") from None
            per_version[version.name] = measurement_to_dict(m)
        data[name] = {"data": per_version}
    return data


def _count_failure(ctx: Context, ref: ExperimentRef) -> int:
    obj = ctx.store.get(ref)
    status = st.status_of(obj)
    status["transientFailures"] = int(status.get("transientFailures") or 0) + 1
    ctx.store.write_status(obj, status)
    return int(status["transientFailures"])


def _abort(ctx: Context, obj: Mapping[str, Any], iteration: int, reason: str, message: str) -> None:
    """End the experiment the safe way: finish restores the baseline, never promotes."""
    ctx.sink.emit(
        events.make_event(
            events.CONCLUDED,
            st.ref_of(obj),
            iteration,
            {"action": "rollback", "failed": True, "reason": reason, "message": message},
            stage="iterate",
        )
    )
