"""The iterate stage: find the experiments whose interval is due and measure them.

A ping (or `experiment.started`) runs the clock (functions/core/sweep.py): one
`experiment.due` per due experiment, so many experiments on one tick are measured by
parallel deliveries, not one after another in one request; every other experiment holding
its target is re-driven too. On `experiment.due` it reads every metric of every version
from the metrics source and emits one `experiment.measured` carrying them. It writes
nothing but the count of transient failures; the measurements travel in the event, and
`assess` records them with the iteration.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from cloudevents.http import CloudEvent

from analytics.measurements import Measurement, measurement_to_dict
from analytics.model import Experiment
from functions.core import events, sweep
from functions.core import status as st
from functions.core.context import Context
from functions.core.errors import NotFoundError, PermanentError, TransientError
from functions.core.events import ExperimentRef
from functions.core.metrics import MetricError, MetricSpec, variables_for
from functions.core.status import Stage, Status
from functions.core.tenancy import metric_allowed

log = logging.getLogger(__name__)


def handle(ctx: Context, event: CloudEvent) -> None:
    if event["type"] == events.DUE:
        due = events.parse(event, events.Due)
        measure(ctx, due.ref, due.iteration)
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
    if status.stage is not Stage.RUNNING:
        return
    completed = status.iterations_done
    if iteration != completed + 1:
        log.info("iterate: %s iteration %d is stale (done: %d)", ref, iteration, completed)
        return
    experiment = st.resolved_experiment(obj)
    now = ctx.clock.now()
    started = status.start_time or now
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
    measured = events.Measured({"data": data}, measured_at=now)
    ctx.sink.emit(events.make(measured, st.ref_of(obj), iteration, stage="iterate"))


def _measure_all(
    ctx: Context, obj: Mapping[str, Any], experiment: Experiment, started: datetime, now: datetime
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
        # Which library measured, and in which units, travel with the measurements into
        # status.analysis.aggregatedMetrics (Status.metrics_library reads them back).
        data[name] = {
            "data": per_version,
            "library": spec.library or "custom",
            **({"units": spec.units} if spec.units else {}),
        }
    return data


def _count_failure(ctx: Context, ref: ExperimentRef) -> int:
    obj = ctx.store.get(ref)
    status = Status.read(obj)
    failures = (status.transient_failures or 0) + 1
    ctx.store.write_status(obj, replace(status, transient_failures=failures).to_dict())
    return failures


def _abort(ctx: Context, obj: Mapping[str, Any], iteration: int, reason: str, message: str) -> None:
    """End the experiment the safe way: finish restores the baseline, never promotes."""
    conclusion = events.Concluded.abort(reason, message)
    ctx.sink.emit(events.make(conclusion, st.ref_of(obj), iteration, stage="iterate"))
