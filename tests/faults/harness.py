"""A fault-injecting Knative stand-in around the four functions.

`Harness` owns one emulated API server (with the KServe/Knative controller stand-ins), the
four functions served by functions-framework (`tests.support.stages.Pipeline`), a clock the
test drives, an ApiServerSource played by diffing the Experiments after every delivery, a
PingSource (`tick`), and a broker that routes by the Trigger contract with Knative's
delivery rules: 5xx, 404, 408, 409, 429 and a lost connection are retried `retry` times (the
Broker manifest's `spec.delivery.retry`), any other 4xx goes to the dead-letter list.

Faults:
- per event, at the broker's ingress (`EventFault`): lose it, duplicate it k times (in turn
  or concurrently, one thread per copy), reorder it behind the next event, or hold it past
  the next `n` pings;
- per port call (`PortFault`), wrapping the store, the traffic objects and the metrics: the
  API answering 409/500 or timing out (through the Kubernetes adapter's own translation),
  Prometheus down, slow past the query timeout, answering garbage, NaN or nothing (through
  `PrometheusProxy`, so the real Prometheus adapter sees it), and a function killed right
  after or right before a write (the delivery then has no answer and the broker retries).
A fault applies while the event in flight matches, for a bounded number of delivery attempts
(one whole retry window is `retry + 1`) or until `heal()`.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudevents.http import CloudEvent
from kubernetes import client

from tests.faults import contract as c
from tests.faults import world
from tests.support.stages import ManualClock, Pipeline, QueueSink, apiserver_event

RETRIED: frozenset[int] = frozenset({404, 408, 409, 429})
BACKOFF_S = 0.5


class Killed(BaseException):
    """The function process died mid-event: the broker sees no answer. A BaseException, as
    no handler of a dying process runs: the stages' `except Exception` (recording a bug on
    the experiment) must not see it."""


@dataclass
class Match:
    """Which events a fault applies to (None matches anything)."""

    type: str | None = None
    iteration: int | None = None
    namespace: str | None = None
    name: str | None = None

    def __call__(self, event: CloudEvent | None) -> bool:
        if event is None:
            return self.type is None and self.iteration is None
        attrs = event.get_attributes()
        ref = ref_of(event)
        return (
            (self.type is None or attrs.get("type") == self.type)
            and (self.iteration is None or str(attrs.get(c.EXT_ITERATION)) == str(self.iteration))
            and (self.namespace is None or (ref is not None and ref[0] == self.namespace))
            and (self.name is None or (ref is not None and ref[1] == self.name))
        )


@dataclass
class EventFault:
    """lose | dup | reorder | delay, applied to the first `times` matching events."""

    match: Match
    action: str
    copies: int = 2
    concurrent: bool = False
    pings: int = 1
    times: int = 1
    used: int = 0


@dataclass
class PortFault:
    """op: write_status | list | get | patch | get_target | measure.
    kind: 409 | 500 | timeout | kill-after | kill-before | down | slow | garbage | nan | empty.
    Active during matching deliveries, for `attempts` delivery attempts (None: until healed),
    skipping the first `skip` calls."""

    op: str
    kind: str
    during: Match = field(default_factory=Match)
    attempts: int | None = 1
    skip: int = 0
    seen: set[int] = field(default_factory=set)
    calls: int = 0
    hits: int = 0
    healed: bool = False


@dataclass
class Record:
    stage: str
    type: str
    iteration: str | None
    ref: tuple[str, str] | None
    attempt: int
    status: int | None  # None: the function died, no answer
    copy: int = 0


@dataclass
class TargetWrite:
    """A patch of a traffic object and the experiment whose event caused it."""

    by: tuple[str, str] | None
    target: tuple[str, str]
    resource_version: int


def ref_of(event: CloudEvent) -> tuple[str, str] | None:
    attrs = event.get_attributes()
    if attrs.get(c.EXT_NAME):
        return str(attrs.get(c.EXT_NAMESPACE) or "default"), str(attrs[c.EXT_NAME])
    data = event.get_data()
    if isinstance(data, dict) and isinstance(data.get("metadata"), dict):
        meta = data["metadata"]
        return str(meta.get("namespace") or "default"), str(meta.get("name"))
    return None


class PrometheusProxy:
    """Forwards queries to the real Prometheus, or fails them the way `mode` says."""

    def __init__(self, upstream: str, slow_s: float = 0.8) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.slow_s = slow_s
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                # /fault/<mode>/api/v1/query: the mode travels in the path, so each
                # delivery's queries carry their own fault, whatever the other threads do.
                mode, path = "ok", self.path
                if path.startswith("/fault/"):
                    mode, _, rest = path[len("/fault/") :].partition("/")
                    path = "/" + rest
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if mode == "down":
                    self._answer(503, b"Service Unavailable", "text/plain")
                    return
                if mode == "slow":
                    time.sleep(proxy.slow_s)
                if mode == "garbage":
                    self._answer(200, b"<html>gateway says hello</html>", "text/html")
                    return
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname or "127.0.0.1", proxy.upstream.port, timeout=10
                )
                # Plain bodies only: the proxy rewrites them and sends no Content-Encoding back.
                skip = ("host", "accept-encoding")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                conn.request(self.command, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                if mode in ("nan", "empty") and response.status == 200:
                    doc = json.loads(data)
                    result = (doc.get("data") or {}).get("result")
                    if isinstance(result, list):
                        if mode == "empty":
                            doc["data"]["result"] = []
                        else:
                            for series in result:
                                if "value" in series:
                                    series["value"][1] = "NaN"
                    data = json.dumps(doc).encode()
                self._answer(response.status, data, "application/json")

            def _answer(self, status: int, data: bytes, kind: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): as with a real slow server

            do_GET = do_POST = _serve  # noqa: N815 - http.server's naming

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> PrometheusProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _InFlight(threading.local):
    event: CloudEvent | None = None
    delivery: int = -1
    killed: bool = False


class Harness:
    """One world: API server, controllers, the four functions, broker, sources, clock."""

    def __init__(self, server: c.KubeApiServer, api: client.ApiClient, proxy: PrometheusProxy):
        self.server = server
        self.api = api
        self.proxy = proxy
        self.clock = ManualClock(datetime.fromtimestamp(world.T0 + 60, UTC))
        self.sink = QueueSink()
        self.raw_store = c.KubeExperimentStore(api)
        self.retries = c.broker_retries()
        self.event_faults: list[EventFault] = []
        self.port_faults: list[PortFault] = []
        self.records: list[Record] = []
        self.routed: list[CloudEvent] = []  # every event the broker took in, in order
        self.dead: list[Record] = []
        self.writes: list[TargetWrite] = []
        self.faults_injected = 0
        self.server_errors: list[Record] = []
        self._inflight = _InFlight()
        self._delivery_ids = 0
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], dict[str, Any]] = {}
        self._held: list[tuple[int, CloudEvent]] = []  # (release after ping n, event)
        self._behind: list[CloudEvent] = []  # reordered: released after the next event
        self.pings = 0
        self.ctx = c.context(
            store=_FaultyStore(self),
            objects=_FaultyObjects(self),
            metrics=_FaultyMetrics(self),
            sink=self.sink,
            clock=self.clock,
            # The clock's PingSource on the emulator, unfaulted: start creates it, the sweep
            # deletes it when nothing is live (functions/core/clock.py).
            pings=c.KubePingSources(self.api),
        )
        self.pipeline = Pipeline(self.ctx, self.sink)

    def close(self) -> None:
        self.pipeline.close()

    # -- seeding and deleting, as a user or a controller would ------------------------------

    def seed(self, group: tuple[str, str, str], namespace: str, body: dict[str, Any]) -> Any:
        return self.server.seed(*group, namespace, body)

    def seed_metrics(self, *namespaces: str) -> None:
        c.seed_metric_library(self.server, set(namespaces))

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Create an Experiment as `kubectl apply` would (the source announces it)."""
        ns = doc["metadata"]["namespace"]
        created: dict[str, Any] = client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            c.EXPERIMENTS[0], c.EXPERIMENTS[1], ns, c.EXPERIMENTS[2], doc
        )
        return created

    def experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.server.get(*c.EXPERIMENTS, namespace, name)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return dict((self.experiment(namespace, name) or {}).get("status") or {})

    def delete_experiment(self, namespace: str, name: str) -> None:
        self._poll_source()
        try:
            client.CustomObjectsApi(self.api).delete_namespaced_custom_object(
                c.EXPERIMENTS[0], c.EXPERIMENTS[1], namespace, c.EXPERIMENTS[2], name
            )
        except client.ApiException as e:
            if e.status != 404:
                raise

    def delete_target(self, group: tuple[str, str, str], namespace: str, name: str) -> None:
        client.CustomObjectsApi(self.api).delete_namespaced_custom_object(
            group[0], group[1], namespace, group[2], name
        )

    # -- the broker --------------------------------------------------------------------------

    def publish(self, event: CloudEvent) -> None:
        self.sink.queue.append(event)
        self.drain()

    def tick(self, seconds: float = world.INTERVAL) -> None:
        """One PingSource firing `seconds` after the last; held events are released after."""
        self.clock.advance(seconds)
        self.pings += 1
        self.publish(c.ping_event())
        due = [e for n, e in self._held if n <= self.pings]
        self._held = [(n, e) for n, e in self._held if n > self.pings]
        for event in due:
            self.sink.queue.append(event)
        self.drain()

    def run(self, pings: int) -> None:
        self.drain()
        for _ in range(pings):
            self.tick()

    def drain(self, limit: int = 5000) -> None:
        routed = 0
        while True:
            self._poll_source()
            if not self.sink.queue:
                if self._behind:
                    self.sink.queue.extend(self._behind)
                    self._behind = []
                    continue
                return
            event = self.sink.queue.popleft()
            released = bool(self._behind)
            self._route(event)
            if released:
                self.sink.queue.extendleft(reversed(self._behind))
                self._behind = []
            routed += 1
            if routed > limit:
                raise AssertionError(f"event storm: more than {limit} events routed")

    def _route(self, event: CloudEvent) -> None:
        self.routed.append(event)
        copies, concurrent = 1, False
        for fault in self.event_faults:
            if fault.used >= fault.times or not fault.match(event):
                continue
            fault.used += 1
            self.faults_injected += 1
            if fault.action == "lose":
                return
            if fault.action == "delay":
                self._held.append((self.pings + fault.pings, event))
                return
            if fault.action == "reorder":
                self._behind.append(event)
                return
            copies, concurrent = fault.copies, fault.concurrent
            break
        for stage in c.routes(event["type"]):
            if concurrent and copies > 1:
                threads = [
                    threading.Thread(target=self._dispatch, args=(stage, event, i))
                    for i in range(copies)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            else:
                for i in range(copies):
                    self._dispatch(stage, event, i)

    def _dispatch(self, stage: str, event: CloudEvent, copy: int) -> None:
        ref = ref_of(event)
        iteration = event.get_attributes().get(c.EXT_ITERATION)
        for attempt in range(1, self.retries + 2):
            with self._lock:
                self._delivery_ids += 1
                delivery = self._delivery_ids
            self._inflight.event, self._inflight.delivery = event, delivery
            self._inflight.killed = False
            try:
                status: int | None = self.pipeline.deliver(stage, event)
            except Killed:
                status = None
            finally:
                self._inflight.event = None
            if self._inflight.killed:
                status = None
            record = Record(stage, event["type"], iteration, ref, attempt, status, copy)
            self.records.append(record)
            if status == 500:
                self.server_errors.append(record)
            if status is not None and 200 <= status < 300:
                return
            if status is not None and status < 500 and status not in RETRIED:
                self.dead.append(record)
                return
            if attempt <= self.retries:
                self.clock.advance(BACKOFF_S * 2 ** (attempt - 1))
        self.dead.append(record)

    # -- the ApiServerSource ----------------------------------------------------------------

    def _poll_source(self) -> None:
        listed = {
            (o["metadata"]["namespace"], o["metadata"]["name"]): o for o in self.raw_store.list()
        }
        routed_updates = bool(c.routes(c.APISERVER_UPDATE))
        for key, obj in listed.items():
            old = self._seen.get(key)
            if old is None or old["metadata"].get("uid") != obj["metadata"].get("uid"):
                self.sink.queue.append(apiserver_event("add", obj))
            elif routed_updates and old["metadata"].get("resourceVersion") != obj["metadata"].get(
                "resourceVersion"
            ):
                self.sink.queue.append(apiserver_event("update", obj))
        for key, obj in self._seen.items():
            if key not in listed:
                self.sink.queue.append(apiserver_event("delete", obj))
        self._seen = listed

    # -- port faults --------------------------------------------------------------------------

    def heal(self) -> None:
        for fault in self.port_faults:
            fault.healed = True

    def fault_for(self, op: str) -> PortFault | None:
        event, delivery = self._inflight.event, self._inflight.delivery
        with self._lock:
            for fault in self.port_faults:
                if fault.op != op or fault.healed or not fault.during(event):
                    continue
                fault.calls += 1
                if fault.calls <= fault.skip:
                    continue
                if delivery not in fault.seen:
                    if fault.attempts is not None and len(fault.seen) >= fault.attempts:
                        continue
                    fault.seen.add(delivery)
                    self.faults_injected += 1
                fault.hits += 1
                return fault
        return None

    def killed(self) -> Killed:
        self._inflight.killed = True
        return Killed("the function was killed mid-event")

    def record_write(self, target: tuple[str, str], stored: dict[str, Any]) -> None:
        # A write is made for the experiment the target names as its holder afterwards
        # (`arbiter.dev/held-by: ns/name/uid`): start handles events about other experiments
        # (a ping, another's `finished`) and acts for the one it starts. A write that leaves
        # no holder (a release) is the in-flight event's experiment's.
        meta = stored.get("metadata") or {}
        held = str((meta.get("annotations") or {}).get(c.HELD_BY) or "").split("/")
        event = self._inflight.event
        by = (held[0], held[1]) if len(held) == 3 else (ref_of(event) if event else None)
        self.writes.append(TargetWrite(by, target, int(meta.get("resourceVersion") or 0)))

    # -- what the invariants read ------------------------------------------------------------

    def deliveries(self) -> int:
        return len(self.records)

    def history(self, group: tuple[str, str, str], namespace: str, name: str) -> list[Any]:
        return self.server.history(*group, namespace, name)

    def answers(self) -> Iterator[int | None]:
        return (r.status for r in self.records)


def _fail(harness: Harness, op: str, what: str, action: Callable[[], Any]) -> Any:
    fault = harness.fault_for(op)
    if fault is None:
        return action()
    if fault.kind == "kill-before":
        raise harness.killed()
    if fault.kind == "kill-after":
        action()
        raise harness.killed()
    raise c.api_failure(what, fault.kind)


class _FaultyStore:
    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.inner = harness.raw_store

    def get(self, ref: Any) -> Any:
        return _fail(self.h, "get", f"Experiment {ref}", lambda: self.inner.get(ref))

    def list(self) -> Any:
        return _fail(self.h, "list", "Experiments", self.inner.list)

    def write_status(self, obj: Any, status: Any) -> Any:
        return _fail(
            self.h,
            "write_status",
            "Experiment status",
            lambda: self.inner.write_status(obj, status),
        )

    def get_metric(self, namespace: str, name: str) -> Any:
        return self.inner.get_metric(namespace, name)

    def patch_metadata(self, obj: Any, metadata: Any) -> Any:
        return _fail(
            self.h,
            "patch_metadata",
            "Experiment metadata",
            lambda: self.inner.patch_metadata(obj, metadata),
        )


class _FaultyObjects:
    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.inner = c.KubeObjects(harness.api)

    def get(self, ref: Any) -> Any:
        return _fail(self.h, "get_target", str(ref), lambda: self.inner.get(ref))

    def patch(self, patch: Any) -> Any:
        def apply() -> Any:
            stored = self.inner.patch(patch)
            self.h.record_write((patch.ref.namespace, patch.ref.name), stored)
            return stored

        return _fail(self.h, "patch", f"patch {patch.ref}", apply)


class _FaultyMetrics:
    """The real Prometheus adapter, pointed at the proxy path that plays this call's fault."""

    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self._sources: dict[str, Any] = {}

    def _source(self, mode: str) -> Any:
        if mode not in self._sources:
            self._sources[mode] = c.prometheus(f"{self.h.proxy.url}/fault/{mode}")
        return self._sources[mode]

    def measure(self, spec: Any, variables: Any, at: Any) -> Any:
        fault = self.h.fault_for("measure")
        if fault is not None and fault.kind in ("kill-before", "kill-after"):
            raise self.h.killed()
        return self._source(fault.kind if fault else "ok").measure(spec, variables, at)
