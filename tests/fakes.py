"""In-memory stand-ins for every port the stages drive, for unit tests of the workflow.

Each fake keeps what a test needs to see (the stored objects, every status write, every
patch, every emitted event, every query) and can be told to fail the way its adapter
fails: `ConflictError` for a stale or raced write, `TransientError` for an unreachable
server, `NotFoundError` for a missing object. Nothing here does network I/O.

Tests build Arbiter events only through `event()` and look at results only through the
stored status dicts and the recorded events: the JSON contract, not the stages' internals.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jsonpatch
from cloudevents.http import CloudEvent

from analytics.measurements import Counts, Histogram, Measurement, PointValue, measurement_to_dict
from functions.core import assess, events, finish, iterate, start, sweep
from functions.core.backends import Patch
from functions.core.context import Context
from functions.core.errors import (
    ArbiterError,
    ConflictError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from functions.core.events import PING, TRIGGERS, ExperimentRef, make_event
from functions.core.metrics import MetricSpec
from functions.core.ports import Occurrence
from functions.core.resources import KFSERVING, KNATIVE, KSERVE, ObjectRef
from functions.core.settings import Settings
from functions.core.status import MeasurementRecord, Status
from functions.core.story import StoryTeller
from local.controllers import kfserving_status, knative_status, kserve_status
from local.harness import seed_metric_library

# The emulator's own RFC 7386 merge, so a patch lands here exactly as it does there.
from local.kubeapi import _merge
from tests.support.stages import apiserver_event

Obj = dict[str, Any]

T0: Final = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
EXPERIMENTS: Final = ("arbiter.dev", "v1alpha1", "experiments")
METRICS: Final = ("arbiter.dev", "v1alpha1", "metrics")
INTERVAL: Final = 60
BASELINE_REVISION: Final = "iris-predictor-00001"
CANDIDATE_REVISION: Final = "iris-predictor-00002"

HANDLERS: Final[dict[str, Callable[[Context, CloudEvent], None]]] = {
    "start": start.handle,
    "iterate": iterate.handle,
    "assess": assess.handle,
    "finish": finish.handle,
}


class FakeClock:
    """Manual time: it moves when the test advances it or a stage sleeps (a read-back poll)."""

    def __init__(self, start: datetime = T0) -> None:
        self._now = start
        self.slept = 0.0

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.advance(seconds)


class RecordingSink:
    """The broker's ingress: records each event; refuses the next `fail(n)` emits."""

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self._failures = 0

    def fail(self, times: int = 1) -> None:
        self._failures += times

    def emit(self, event: CloudEvent) -> None:
        if self._failures:
            self._failures -= 1
            raise TransientError(f"broker refused {event['type']} (injected)")
        self.events.append(event)

    def since(self, mark: int) -> list[CloudEvent]:
        return self.events[mark:]

    def of_type(self, event_type: str) -> list[CloudEvent]:
        return [e for e in self.events if e["type"] == event_type]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


class FakeRecorder:
    """Kubernetes Events in memory, named as the adapter names them (a repeat is dropped);
    refuses the next `fail(n)` records."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Occurrence]] = []  # (experiment name, occurrence)
        self._seen: set[tuple[str, str, str]] = set()
        self._failures = 0

    def fail(self, times: int = 1) -> None:
        self._failures += times

    def record(self, regarding: Mapping[str, Any], occurrence: Occurrence, at: datetime) -> None:
        if self._failures:
            self._failures -= 1
            raise TransientError("events refused (injected)")
        meta = regarding["metadata"]
        name = (str(meta.get("uid")), occurrence.reason, occurrence.key)
        if name not in self._seen:
            self._seen.add(name)
            self.events.append((str(meta["name"]), occurrence))

    def reasons(self, name: str | None = None) -> list[str]:
        return [o.reason for n, o in self.events if name is None or n == name]


class FakeAddressables:
    """Addressables' `status.address.url` by reference; NotFoundError for any other."""

    def __init__(self) -> None:
        self.urls: dict[ObjectRef, str | None] = {}
        self.asked: list[ObjectRef] = []

    def url(self, ref: ObjectRef) -> str | None:
        self.asked.append(ref)
        if ref not in self.urls:
            raise NotFoundError(f"{ref}: not found")
        return self.urls[ref]


class FakeAlerts:
    """The alert sinks: records what each URL received; refuses the next `fail(n)` sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, CloudEvent]] = []
        self._failures = 0

    def fail(self, times: int = 1) -> None:
        self._failures += times

    def send(self, url: str, event: CloudEvent) -> None:
        if self._failures:
            self._failures -= 1
            raise TransientError(f"{url} refused {event['type']}: 503 (injected)")
        self.sent.append((url, event))

    def types(self, url: str | None = None) -> list[str]:
        return [e["type"] for u, e in self.sent if url is None or u == url]


class _Failures:
    """Errors queued per method name, raised one per call before the call does anything."""

    def __init__(self) -> None:
        self._queued: dict[str, list[ArbiterError]] = {}

    def add(self, method: str, error: ArbiterError, times: int = 1) -> None:
        self._queued.setdefault(method, []).extend([error] * times)

    def check(self, method: str) -> None:
        queued = self._queued.get(method)
        if queued:
            raise queued.pop(0)


class FakeStore:
    """Experiments and Metrics in memory, with the API server's optimistic concurrency.

    Every status write bumps the object's resourceVersion (and is recorded in `writes`); a
    write carrying an older resourceVersion raises ConflictError, as a 409 would.
    `conflict(n)` makes the next n writes lose a race against another writer.
    """

    def __init__(self) -> None:
        self.experiments: dict[tuple[str, str], Obj] = {}
        self.metrics: dict[tuple[str, str], Obj] = {}
        self.writes: list[Obj] = []
        self.failures = _Failures()
        self._versions = itertools.count(1)
        self._uids = itertools.count(1)
        self._conflicts = 0

    def seed(
        self, group: str, version: str, plural: str, namespace: str | None, body: Mapping[str, Any]
    ) -> Obj:
        """Store an object as `KubeApiServer.seed` would (so the harness' seeders work here)."""
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace or meta.get("namespace") or "default"
        key = (meta["namespace"], meta["name"])
        if plural == "metrics":
            self.metrics[key] = obj
            return copy.deepcopy(obj)
        if plural != "experiments":
            raise ValueError(f"FakeStore keeps experiments and metrics, not {plural}")
        n = next(self._uids)
        meta.setdefault("uid", f"uid-{meta['name']}-{n}")
        # Creation order is the queueing order; one second apart keeps it unambiguous.
        meta.setdefault("creationTimestamp", f"2026-01-01T00:00:{n:02d}Z")
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._versions))
        self.experiments[key] = obj
        return copy.deepcopy(obj)

    def add(self, body: Mapping[str, Any]) -> Obj:
        meta = body.get("metadata") or {}
        return self.seed(*EXPERIMENTS, meta.get("namespace"), body)

    def with_metric_library(self, *namespaces: str) -> FakeStore:
        seed_metric_library(self, set(namespaces))
        return self

    def stored(self, namespace: str, name: str) -> Obj:
        """The stored object as it is now (a copy), for assertions."""
        return copy.deepcopy(self.experiments[(namespace, name)])

    def status(self, namespace: str, name: str) -> Obj:
        return dict(self.stored(namespace, name).get("status") or {})

    def delete(self, namespace: str, name: str) -> Obj:
        """Remove an experiment; returns its last state, as a delete event carries it."""
        return self.experiments.pop((namespace, name))

    def request_delete(self, namespace: str, name: str) -> Obj | None:
        """Delete as the API server does: an object with finalizers only gets its
        deletionTimestamp (returned); one without is removed (None)."""
        stored = self.experiments[(namespace, name)]
        if not stored["metadata"].get("finalizers"):
            self.experiments.pop((namespace, name))
            return None
        stored["metadata"].setdefault("deletionTimestamp", "2026-01-01T00:30:00Z")
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(stored)

    def patch_metadata(self, obj: Mapping[str, Any], metadata: Mapping[str, Any]) -> Obj:
        self.failures.check("patch_metadata")
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        stored = self.experiments.get(key)
        if stored is None:
            raise NotFoundError(f"Experiment {key[0]}/{key[1]}: not found")
        if meta.get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            raise ConflictError(f"Experiment {key[0]}/{key[1]}: changed since read")
        stored["metadata"] = _merge(stored["metadata"], dict(metadata))
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        if stored["metadata"].get("deletionTimestamp") and not stored["metadata"].get("finalizers"):
            # The last finalizer is gone: the deletion completes.
            self.experiments.pop(key)
        return copy.deepcopy(stored)

    def conflict(self, times: int = 1) -> None:
        self._conflicts += times

    def get(self, ref: ExperimentRef) -> Obj:
        self.failures.check("get")
        obj = self.experiments.get((ref.namespace, ref.name))
        if obj is None:
            raise NotFoundError(f"Experiment {ref}: not found")
        return copy.deepcopy(obj)

    def list(self) -> list[Obj]:
        self.failures.check("list")
        return [copy.deepcopy(o) for o in self.experiments.values()]

    def write_status(self, obj: Mapping[str, Any], status: Mapping[str, Any]) -> Obj:
        self.failures.check("write_status")
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        stored = self.experiments.get(key)
        if stored is None:
            raise NotFoundError(f"Experiment {key[0]}/{key[1]}: not found")
        if self._conflicts:
            # Someone else wrote first: the stored object moves on, this write is stale.
            self._conflicts -= 1
            stored["metadata"]["resourceVersion"] = str(next(self._versions))
        if meta.get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            raise ConflictError(f"Experiment {key[0]}/{key[1]}: changed since read")
        stored["status"] = copy.deepcopy(dict(status))
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        self.writes.append(copy.deepcopy(stored))
        return copy.deepcopy(stored)

    def get_metric(self, namespace: str, name: str) -> Obj:
        self.failures.check("get_metric")
        obj = self.metrics.get((namespace, name))
        if obj is None:
            raise NotFoundError(f"Metric {namespace}/{name}: not found")
        return copy.deepcopy(obj)


class FakePingSources:
    """The clock's PingSource store, with the API server's resourceVersions and delete
    preconditions. `before[method]` runs just before that method acts (once), so a test can
    interleave another stage's call between a sweep's read and its delete."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        self.calls: list[str] = []
        self.failures = _Failures()
        self.before: dict[str, Callable[[], None]] = {}
        self._versions = itertools.count(1)

    def _enter(self, method: str) -> None:
        hook = self.before.pop(method, None)
        if hook is not None:
            hook()
        self.calls.append(method)
        self.failures.check(method)

    def stored(self, namespace: str, name: str) -> Obj | None:
        found = self.objects.get((namespace, name))
        return None if found is None else copy.deepcopy(found)

    def get(self, namespace: str, name: str) -> Obj:
        self._enter("get")
        found = self.stored(namespace, name)
        if found is None:
            raise NotFoundError(f"PingSource {namespace}/{name}: not found")
        return found

    def create(self, body: Mapping[str, Any]) -> Obj:
        self._enter("create")
        obj = copy.deepcopy(dict(body))
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        if key in self.objects:
            raise ConflictError(f"PingSource {key[0]}/{key[1]}: already exists")
        meta["resourceVersion"] = str(next(self._versions))
        self.objects[key] = obj
        return copy.deepcopy(obj)

    def annotate(self, namespace: str, name: str, annotations: Mapping[str, str]) -> Obj:
        self._enter("annotate")
        stored = self.objects.get((namespace, name))
        if stored is None:
            raise NotFoundError(f"PingSource {namespace}/{name}: not found")
        meta = stored["metadata"]
        meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
        meta["resourceVersion"] = str(next(self._versions))
        return copy.deepcopy(stored)

    def delete(self, namespace: str, name: str, resource_version: str) -> None:
        self._enter("delete")
        stored = self.objects.get((namespace, name))
        if stored is None:
            raise NotFoundError(f"PingSource {namespace}/{name}: not found")
        if stored["metadata"]["resourceVersion"] != resource_version:
            raise ConflictError(f"PingSource {namespace}/{name}: precondition failed")
        del self.objects[(namespace, name)]


class FakeObjects:
    """The traffic objects, with their controllers: after a patch (and at seeding) an
    InferenceService or Knative Service reports its split in status exactly as the local
    controller stand-ins compute it. `lagging = True` stops that, so read-backs time out."""

    def __init__(self) -> None:
        self.objects: dict[ObjectRef, Obj] = {}
        # Patches that move traffic; those that only touch metadata (the holder annotation)
        # are kept apart, so tests counting traffic writes see only those.
        self.patches: list[Patch] = []
        self.metadata_patches: list[Patch] = []
        self.failures = _Failures()
        self.lagging = False
        self._versions = itertools.count(1)

    @staticmethod
    def ref_of(obj: Mapping[str, Any]) -> ObjectRef:
        meta = obj["metadata"]
        return ObjectRef(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])

    def seed(self, obj: Mapping[str, Any], reconcile: bool = True) -> Obj:
        ref = self.ref_of(obj)
        self.objects[ref] = copy.deepcopy(dict(obj))
        self.objects[ref]["metadata"]["resourceVersion"] = str(next(self._versions))
        if reconcile:
            self._reconcile(ref)
        return copy.deepcopy(self.objects[ref])

    def stored(self, obj_or_ref: Mapping[str, Any] | ObjectRef) -> Obj:
        ref = obj_or_ref if isinstance(obj_or_ref, ObjectRef) else self.ref_of(obj_or_ref)
        return copy.deepcopy(self.objects[ref])

    def _reconcile(self, ref: ObjectRef) -> None:
        obj = self.objects[ref]
        if ref.api_version == KSERVE and ref.kind == "InferenceService":
            obj["status"] = kserve_status(obj, now=0.0, ready_at=0.0)
        elif ref.api_version == KFSERVING and ref.kind == "InferenceService":
            obj["status"] = kfserving_status(obj)
        elif ref.api_version == KNATIVE and ref.kind == "Service":
            obj["status"] = knative_status(obj)

    def get(self, ref: ObjectRef) -> Obj:
        self.failures.check("get")
        obj = self.objects.get(ref)
        if obj is None:
            raise NotFoundError(f"{ref}: not found")
        return copy.deepcopy(obj)

    def patch(self, patch: Patch) -> Obj:
        self.failures.check("patch")
        obj = self.objects.get(patch.ref)
        if obj is None:
            raise NotFoundError(f"patch {patch.ref}: not found")
        if patch.kind == "merge":
            # A resourceVersion in a merge patch is a precondition, as on the API server.
            expected = ((patch.body or {}).get("metadata") or {}).get("resourceVersion")
            if expected is not None and expected != obj["metadata"].get("resourceVersion"):
                raise ConflictError(f"patch {patch.ref}: changed since read")
        if patch.kind == "merge" and set(patch.body or {}) == {"metadata"}:
            self.metadata_patches.append(patch)  # holder annotations: no traffic moves
        else:
            self.patches.append(patch)
        if patch.kind == "merge":
            patched = _merge(obj, patch.body)
        else:
            patched = jsonpatch.apply_patch(obj, patch.body, in_place=False)
        patched["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[patch.ref] = patched
        if not self.lagging:
            self._reconcile(patch.ref)
        return copy.deepcopy(self.objects[patch.ref])


@dataclass(frozen=True)
class Windows:
    """A version's (events, trials) served in each interval k = 1, 2, ... after `origin`,
    as a Prometheus counter would hold them: a query over the last `elapsed` seconds at
    `at` counts the intervals that ended in that range, so cumulative queries and one
    iteration's window both read the same script."""

    per_interval: tuple[tuple[float, float], ...]
    origin: datetime = T0
    interval: int = INTERVAL

    def over(self, at: datetime, elapsed: int) -> Counts:
        now = int((at - self.origin).total_seconds())
        chosen = self.per_interval[max(0, now - elapsed) // self.interval : now // self.interval]
        return Counts(events=sum(e for e, _ in chosen), trials=sum(n for _, n in chosen))


Scripted = Measurement | ArbiterError | Windows


class FakeMetrics:
    """Measurements scripted per (metric, revision[, iteration]).

    A version is known by the revision its queries are rendered with (`$revision`); the
    iteration is inferred from the query's variables (elapsed // interval), which is exact
    when the test advances the clock by whole intervals. An error scripted in place of a
    measurement is raised; `fail(error, n)` raises it on the next n queries, whatever they are.
    """

    def __init__(self) -> None:
        self.script: dict[tuple[str, str, int | None], Scripted] = {}
        self.calls: list[tuple[str, dict[str, str], datetime | None]] = []
        self._failures: list[ArbiterError] = []

    def set(
        self, metric: str, revision: str, value: Scripted, iteration: int | None = None
    ) -> None:
        self.script[(metric, revision, iteration)] = value

    def fail(self, error: ArbiterError, times: int = 1) -> None:
        self._failures.extend([error] * times)

    def measure(
        self, spec: MetricSpec, variables: Mapping[str, str], at: datetime | None
    ) -> Measurement:
        self.calls.append((spec.name, dict(variables), at))
        if self._failures:
            raise self._failures.pop(0)
        revision = variables["revision"]
        iteration = int(variables["elapsed"]) // max(1, int(variables["interval"]))
        for key in ((spec.name, revision, iteration), (spec.name, revision, None)):
            if key in self.script:
                value = self.script[key]
                if isinstance(value, ArbiterError):
                    raise value
                if isinstance(value, Windows):
                    assert at is not None, "a Windows script needs the time of the query"
                    return value.over(at, int(variables["elapsed"]))
                return value
        raise AssertionError(f"no measurement scripted for {spec.name} of {revision}")


def context(
    store: FakeStore | None = None,
    objects: FakeObjects | None = None,
    metrics: FakeMetrics | None = None,
    sink: RecordingSink | None = None,
    clock: FakeClock | None = None,
    settings: Settings | None = None,
    recorder: FakeRecorder | None = None,
    addresses: FakeAddressables | None = None,
    alerts: FakeAlerts | None = None,
    pings: FakePingSources | None = None,
) -> Context:
    """A stage context over fakes (fresh ones for any not given); the store records its
    Kubernetes Events through the StoryTeller, as on a cluster."""
    clock = clock or FakeClock()
    return Context(
        store=StoryTeller(store or FakeStore(), recorder or FakeRecorder(), clock),
        objects=objects or FakeObjects(),
        metrics=metrics or FakeMetrics(),
        sink=sink or RecordingSink(),
        pings=FakePingSources() if pings is None else pings,
        clock=clock,
        settings=settings or Settings(readback_timeout_seconds=1.0),
        addresses=addresses or FakeAddressables(),
        alerts=alerts or FakeAlerts(),
    )


# --- events: the only place tests build Arbiter's events ---------------------------------


def ref(obj: Mapping[str, Any], uid: str | None = None) -> ExperimentRef:
    meta = obj["metadata"]
    return ExperimentRef(meta["namespace"], meta["name"], uid or meta.get("uid"))


def event(
    event_type: str,
    about: Mapping[str, Any] | ExperimentRef,
    iteration: int,
    data: Mapping[str, Any] | None = None,
) -> CloudEvent:
    """An Arbiter event about an experiment (a stored object or a ref) at `iteration`."""
    target = about if isinstance(about, ExperimentRef) else ref(about)
    return make_event(event_type, target, iteration, data)


def added(obj: Mapping[str, Any]) -> CloudEvent:
    return apiserver_event("add", dict(obj))


def deleted(obj: Mapping[str, Any]) -> CloudEvent:
    return apiserver_event("delete", dict(obj))


def ping(name: str = "arbiter-tick") -> CloudEvent:
    """A ping from the PingSource `name`, with the source Knative's ping adapter gives it."""
    source = f"/apis/v1/namespaces/arbiter-system/pingsources/{name}"
    return CloudEvent({"type": PING, "source": source}, {})


def recorded(store: FakeStore, ev: CloudEvent) -> CloudEvent:
    """`ev`, an `experiment.measured`, recorded in its experiment's status as iterate records
    what it measured before it emits it (iteration, time and digest); returns `ev`."""
    request = events.parse(ev, events.Measured)
    stored = store.stored(request.ref.namespace, request.ref.name)
    at = request.payload.measured_at
    record = MeasurementRecord(request.iteration, at, at, request.payload.digest)
    store.write_status(stored, {**(stored.get("status") or {}), "measurement": record.to_dict()})
    return ev


def decided(
    store: FakeStore, obj: Mapping[str, Any], decision: events.Concluded, iteration: int = 3
) -> CloudEvent:
    """`decision` recorded in the experiment's status after `iteration` iterations (stage
    Finishing), as assess, an abort or the clock records one; returns the
    `experiment.concluded` that announces it."""
    stored = store.stored(obj["metadata"]["namespace"], obj["metadata"]["name"])
    status = replace(Status.read(stored), completed_iterations=iteration)
    store.write_status(stored, sweep.with_decision(status, decision, T0).to_dict())
    return events.make(decision, ref(stored), iteration, stage="assess")


def aggregated(
    measurements: Mapping[str, Mapping[str, Measurement]], measured_at: datetime | None = None
) -> dict[str, Any]:
    """`experiment.measured` data for metric -> version -> measurement."""
    data = {
        metric: {"data": {v: measurement_to_dict(m) for v, m in by_version.items()}}
        for metric, by_version in measurements.items()
    }
    out: dict[str, Any] = {"aggregatedMetrics": {"data": data}}
    if measured_at is not None:
        out["measuredAt"] = measured_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


# --- documents ---------------------------------------------------------------------------


def experiment(namespace: str = "demo", name: str = "iris-canary", **spec: Any) -> Obj:
    """A KServe canary like the samples': error-rate and p95 latency objectives, 8 loops of
    60 s, ramping by at most 20 points; `spec` fields replace the defaults."""
    body: Obj = {
        "target": f"{namespace}/iris",
        "strategy": {
            "testingPattern": "Canary",
            "deploymentPattern": "Progressive",
            "weights": {"maxCandidateWeight": 100, "maxCandidateWeightIncrement": 20},
        },
        "criteria": {
            "requestCount": "request-count",
            "objectives": [
                {"metric": "error-rate", "upperLimit": "0.01"},
                {"metric": "latency", "upperLimit": 250, "quantile": 0.95},
            ],
        },
        "duration": {"intervalSeconds": INTERVAL, "iterationsPerLoop": 8},
    }
    body.update(spec)
    return {
        "apiVersion": "arbiter.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def inference_service(namespace: str = "demo", name: str = "iris", ready: bool = True) -> Obj:
    """A KServe InferenceService with a rolled-out baseline and a candidate revision."""
    return {
        "apiVersion": KSERVE,
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"predictor": {"canaryTrafficPercent": 0, "sklearn": {"storageUri": "gs://m"}}},
        "status": {
            "components": {
                "predictor": {
                    "latestRolledoutRevision": BASELINE_REVISION,
                    "latestCreatedRevision": CANDIDATE_REVISION,
                    "latestReadyRevision": CANDIDATE_REVISION if ready else BASELINE_REVISION,
                }
            }
        },
    }


LATENCY_BOUNDS: Final = (10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, math.inf)


def served(ok: int, errors: int, iteration: int) -> dict[str, Measurement]:
    """What Prometheus measures for a revision answering `ok` requests at 40 ms and `errors`
    5xx at 300 ms every 10 s, cumulative over `iteration` intervals of 60 s: request-count,
    error-rate and latency, as the Metric library defines them."""
    steps = iteration * INTERVAL // 10
    good, bad = steps * ok, steps * errors
    total = float(good + bad)
    cumulative = tuple(
        float((good if b >= 40 else 0) + (bad if b >= 300 else 0)) for b in LATENCY_BOUNDS
    )
    return {
        "request-count": PointValue(total),
        "error-rate": Counts(events=float(bad), trials=total),
        "latency": Histogram(LATENCY_BOUNDS, cumulative),
    }


def serve(
    metrics: FakeMetrics,
    revision: str,
    ok: int,
    errors: int,
    iterations: Iterable[int] = range(1, 21),
) -> None:
    """Script `served(ok, errors, k)` as the revision's measurements at each iteration k."""
    for k in iterations:
        for metric, m in served(ok, errors, k).items():
            metrics.set(metric, revision, m, k)


def canary_percent(objects: FakeObjects, namespace: str = "demo", name: str = "iris") -> Any:
    isvc = objects.stored(ObjectRef(KSERVE, "InferenceService", namespace, name))
    return isvc["spec"]["predictor"].get("canaryTrafficPercent")


# --- a world of fakes, and the broker's routing ------------------------------------------


@dataclass
class World:
    """One set of fakes and the context over them; `publish` routes events as the broker
    does (by the Trigger contract), calling the stages' handlers directly."""

    store: FakeStore = field(default_factory=FakeStore)
    objects: FakeObjects = field(default_factory=FakeObjects)
    metrics: FakeMetrics = field(default_factory=FakeMetrics)
    sink: RecordingSink = field(default_factory=RecordingSink)
    clock: FakeClock = field(default_factory=FakeClock)
    settings: Settings = field(default_factory=lambda: Settings(readback_timeout_seconds=1.0))
    recorder: FakeRecorder = field(default_factory=FakeRecorder)
    addresses: FakeAddressables = field(default_factory=FakeAddressables)
    alerts: FakeAlerts = field(default_factory=FakeAlerts)
    pings: FakePingSources = field(default_factory=FakePingSources)
    # (stage, event type, iteration, answer): 200, or 422 / 503 as runtime.run would answer.
    answers: list[tuple[str, str, str | None, int]] = field(default_factory=list)

    @property
    def ctx(self) -> Context:
        return context(
            self.store,
            self.objects,
            self.metrics,
            self.sink,
            self.clock,
            self.settings,
            self.recorder,
            self.addresses,
            self.alerts,
            self.pings,
        )

    def deliver(self, stage: str, ev: CloudEvent) -> int:
        """Run one stage on one event; the HTTP answer runtime.run would give."""
        try:
            HANDLERS[stage](self.ctx, ev)
            answer = 200
        except PermanentError:
            answer = 422
        except TransientError:
            answer = 503
        self.answers.append((stage, ev["type"], ev.get_attributes().get("iteration"), answer))
        return answer

    def publish(self, ev: CloudEvent, max_events: int = 500) -> None:
        """Route `ev` and everything it causes to every stage whose Trigger matches it."""
        queue = [ev]
        mark = len(self.sink.events)
        routed = 0
        while queue:
            current = queue.pop(0)
            for stage, types in TRIGGERS.items():
                if current["type"] in types:
                    self.deliver(stage, current)
            queue.extend(self.sink.since(mark))
            mark = len(self.sink.events)
            routed += 1
            if routed > max_events:
                raise AssertionError(f"event storm: more than {max_events} events routed")

    def stage_answers(self, stage: str) -> list[int]:
        return [a for s, _, _, a in self.answers if s == stage]

    def run_to_end(self, obj: Mapping[str, Any], looks: int = 12) -> Obj:
        """Add the experiment, then tick one interval at a time until it is terminal."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        self.publish(added(self.store.stored(ns, name)))
        for _ in range(looks):
            status = self.store.status(ns, name)
            if status.get("stage") in ("Completed", "Failed"):
                return status
            self.clock.advance(INTERVAL)
            self.publish(ping())
        raise AssertionError(f"not finished after {looks} intervals: {status}")


def kserve_world(*namespaces: str) -> World:
    """Fakes holding the Metric library and a ready InferenceService `iris` per namespace."""
    world = World()
    world.store.with_metric_library(*namespaces)
    for ns in namespaces:
        world.objects.seed(inference_service(ns))
    return world


def condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The status condition of type `kind` (AssertionError naming the ones there if none)."""
    found = [c for c in status.get("conditions") or [] if c.get("type") == kind]
    assert found, f"no {kind} condition in {status.get('conditions')}"
    return dict(found[0])


def payload(ev: CloudEvent) -> dict[str, Any]:
    """An event's data, which every Arbiter event carries as a JSON object."""
    data = ev.get_data()
    assert isinstance(data, Mapping), f"{ev['type']} carries {data!r}, not an object"
    return dict(data)
