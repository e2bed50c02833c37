"""The queue-proxy stand-in: the sidecar Knative puts in front of every revision's model.

`QueueProxy` forwards every request to the model server behind it (as queue-proxy forwards
to the user-container) and, on a metrics port of its own (queue-proxy's 9091), exports the
request-duration histogram of the Knative generation it plays. The generations differ in
name, unit, buckets and labels, so a Metric library written for one finds nothing in the
other; `GENERATIONS` pins each one to the knative/serving source that emits it:

- "1.18" (OpenCensus; Knative up to 1.18): `revision_app_request_latencies_{bucket,sum,count}`
  in milliseconds, and `revision_app_request_count`, labelled on the series with
  `namespace_name`, `service_name`, `configuration_name`, `revision_name`, `pod_name`,
  `response_code` and `response_code_class` (pkg/queue/request_metric.go at knative-v1.18.0).
- "1.19" (OpenTelemetry; Knative 1.19 and later, the default): as current releases export
  it, `kn_serving_invocation_duration_seconds_{bucket,sum,count}` in seconds, with only
  `http_response_status_code` (and the exporter's `otel_scope_*`) on the series. Its
  history: PR #15961 (commit 6dff362787, 1.19.0) introduced the instrument as
  `kn.queueproxy.app.duration` recording whole seconds; PR #16290 (commit ce76741c2d)
  renamed it `kn.serving.invocation.duration` and PR #16358 (commit 4004491765) records
  `latency.Seconds()`. config/prometheus/knative-1.19 renames the old name, so one
  library (config/metrics/knative-1.19) reads every 1.19+ release; the stand-in plays
  the current one.

Each generation's name is a folder of the Metric library (config/metrics/knative-<name>)
and of the scrape configurations (config/prometheus/knative-<name>): a generation the
library cannot read is not offered.

In the OpenTelemetry generation the revision and namespace are resource attributes
(`kn.revision.name`, `k8s.namespace.name`, ...): the exporter puts them on `target_info`,
never on the series. A cluster's Prometheus copies them onto the series when it scrapes
the pod, by relabelling the pod's namespace and `serving.knative.dev/revision` label
(config/prometheus/knative-1.19/prometheus.yml). The local run has no pods, so it runs
that very file's rules: each proxy is a static target carrying the `__meta_kubernetes_*`
labels Kubernetes service discovery would give its pod (local.servers.ScrapeTarget).

In a version's process the proxy serves on the model server's own event loop
(local.modelserver), so that it never waits on the GIL for a thread of its own: a
Python proxy thread contending with the server it times added its waits to every latency
it recorded. `start()` runs it on a thread of its own for standalone use.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, UnknownMetricFamily
from prometheus_client.registry import Collector

# Requests Knative's own probes send carry this header; queue-proxy leaves them out of the
# request metrics (netheader.IsProbe).
PROBE_HEADER: Final = "K-Network-Probe"
# The headers aiohttp sets itself on the forwarded request and response.
_HOP_HEADERS: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
)

# OpenCensus queue-proxy buckets, milliseconds (pkg/queue/request_metric.go, knative-v1.18.0).
OPENCENSUS_BUCKETS_MS: Final = (
    5, 10, 20, 40, 60, 80, 100, 150, 200, 250, 300, 350, 400, 450, 500,
    600, 700, 800, 900, 1000, 2000, 5000, 10000, 20000, 50000, 100000,
)  # fmt: skip
# OpenTelemetry queue-proxy buckets, seconds (latencyBounds, knative-v1.19.0 and later).
OTEL_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
OTEL_SCOPE: Final = "knative.dev/serving/pkg/queue"


@dataclass(frozen=True)
class Generation:
    """What one Knative generation's queue-proxy exports for a request's duration.

    `metric` is the Prometheus family name (its `_bucket`/`_sum`/`_count` series); a
    duration in seconds is multiplied by `scale` (1000 for milliseconds). `otel`
    generations keep the revision off the series (see the module doc).
    """

    name: str
    releases: str
    metric: str
    unit: str
    scale: float
    buckets: tuple[float, ...]
    otel: bool


GENERATIONS: Final[Mapping[str, Generation]] = {
    "1.18": Generation(
        "1.18",
        "Knative Serving 1.18 and earlier (OpenCensus)",
        "revision_app_request_latencies",
        "milliseconds",
        1000.0,
        OPENCENSUS_BUCKETS_MS,
        otel=False,
    ),
    "1.19": Generation(
        "1.19",
        "Knative Serving 1.19 and later (OpenTelemetry)",
        "kn_serving_invocation_duration_seconds",
        "seconds",
        1.0,
        OTEL_BUCKETS_S,
        otel=True,
    ),
}
DEFAULT_GENERATION: Final = "1.19"


def generation(name: str) -> Generation:
    """The generation called `name` ("1.18" or "1.19").

    Raises:
        ValueError: naming the accepted values.
    """
    found = GENERATIONS.get(name)
    if found is None:
        accepted = ", ".join(f'"{g}"' for g in GENERATIONS)
        raise ValueError(f"unknown Knative generation {name!r}: use one of {accepted}")
    return found


@dataclass(frozen=True)
class RevisionInfo:
    """The Knative names of the revision a proxy stands in front of."""

    namespace: str
    service: str
    configuration: str
    revision: str

    @property
    def pod(self) -> str:
        return f"{self.revision}-deployment-local"

    def resource_attributes(self) -> dict[str, str]:
        """The OpenTelemetry resource the OTel queue-proxy reports (sharedmain/otel.go)."""
        return {
            "k8s.namespace.name": self.namespace,
            "kn.service.name": self.service,
            "kn.configuration.name": self.configuration,
            "kn.revision.name": self.revision,
            "service.name": self.service,
            "service.instance.id": self.pod,
            "telemetry.sdk.language": "go",
            "telemetry.sdk.name": "opentelemetry",
        }


class _OpenCensusCount(Collector):
    """`revision_app_request_count` under its exact name: prometheus_client would append
    `_total` to a counter."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        self._labels = labels
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], int] = {}

    def inc(self, values: tuple[str, ...], by: int = 1) -> None:
        with self._lock:
            self._counts[values] = self._counts.get(values, 0) + by

    def collect(self) -> Iterator[UnknownMetricFamily]:
        family = UnknownMetricFamily(
            "revision_app_request_count",
            "The number of requests that are routed to user-container",
            labels=self._labels,
        )
        with self._lock:
            counts = sorted(self._counts.items())
        for values, count in counts:
            family.add_metric(list(values), count)
        yield family


class _TargetInfo(Collector):
    """`target_info`: the resource attributes, as the OpenTelemetry Prometheus exporter
    publishes them (dots become underscores)."""

    def __init__(self, attributes: Mapping[str, str]) -> None:
        self._labels = {k.replace(".", "_"): v for k, v in attributes.items()}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("target_info", "Target metadata", labels=list(self._labels))
        family.add_metric(list(self._labels.values()), 1)
        yield family


class RequestMetrics:
    """The request metrics one proxy exports for its generation, on a registry of its own."""

    OPENCENSUS_LABELS: Final = (
        "namespace_name",
        "service_name",
        "configuration_name",
        "revision_name",
        "pod_name",
        "response_code",
        "response_code_class",
    )
    OTEL_LABELS: Final = (
        "http_response_status_code",
        "otel_scope_name",
        "otel_scope_version",
        "otel_scope_schema_url",
    )

    def __init__(self, gen: Generation, info: RevisionInfo) -> None:
        self.generation = gen
        self.info = info
        self.registry = CollectorRegistry(auto_describe=True)
        labels = self.OTEL_LABELS if gen.otel else self.OPENCENSUS_LABELS
        self._histogram = Histogram(
            gen.metric,
            "The duration of task execution" if gen.otel else "The response time in millisecond",
            labels,
            buckets=gen.buckets,
            registry=self.registry,
        )
        self._count: _OpenCensusCount | None = None
        if gen.otel:
            self.registry.register(_TargetInfo(info.resource_attributes()))
        else:
            self._count = _OpenCensusCount(self.OPENCENSUS_LABELS)
            self.registry.register(self._count)
        # The 200 and 500 series exist from the start: a series that first appears with
        # its first error gives `increase()` nothing for that error.
        for code in (200, 500):
            self._histogram.labels(*self._values(code))

    def _values(self, code: int) -> tuple[str, ...]:
        if self.generation.otel:
            return (str(code), OTEL_SCOPE, "", "")
        i = self.info
        return (
            i.namespace,
            i.service,
            i.configuration,
            i.revision,
            i.pod,
            str(code),
            f"{code // 100}xx",
        )

    def observe(self, code: int, seconds: float) -> None:
        """Record one request answered `code` after `seconds`."""
        values = self._values(code)
        self._histogram.labels(*values).observe(seconds * self.generation.scale)
        if self._count is not None:
            self._count.inc(values)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class QueueProxy:
    """Forwards `port` to the model server at `upstream`; `/metrics` on `metrics_port`.

    Started with `start()` (binds both ports, serves from a daemon thread); `stop()` closes.
    """

    def __init__(
        self,
        upstream: str,
        metrics: RequestMetrics,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        metrics_port: int = 0,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.metrics = metrics
        self._host = host
        self._ports = (port, metrics_port)
        self.bound: tuple[int, int] = (0, 0)
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._session: aiohttp.ClientSession | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="queue-proxy")
        self._thread.daemon = True

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.bound[0]}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._host}:{self.bound[1]}/metrics"

    def start(self) -> QueueProxy:
        """Serve from a loop on a daemon thread of its own (standalone use; the model server
        process runs it on its own loop instead, see `open`)."""
        self._thread.start()
        self.bound = asyncio.run_coroutine_threadsafe(self.open(), self._loop).result(30)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    async def open(self) -> tuple[int, int]:
        """Bind both ports and serve on the running loop; the ports bound."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
        )
        proxy = web.Application()
        proxy.router.add_route("*", "/{path:.*}", self._forward)
        metrics = web.Application()
        metrics.router.add_get("/metrics", self._metrics)
        bound = []
        for app, port in zip((proxy, metrics), self._ports, strict=True):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, self._host, port)
            await site.start()
            self._runners.append(runner)
            server = site._server  # the only way to learn a port bound as 0
            assert isinstance(server, asyncio.Server)
            bound.append(int(server.sockets[0].getsockname()[1]))
        return bound[0], bound[1]

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read()
        # Timed from the forward to the user-container's last byte: Knative's queue-proxy
        # (Go) adds microseconds around that, while this stand-in's own Python work around
        # it (parsing, copying headers) is not the revision's and stays out of its latency.
        started = time.perf_counter()
        try:
            async with self._session.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body
            ) as upstream:
                payload = await upstream.read()
                code = upstream.status
                elapsed = time.perf_counter() - started
                response = web.Response(
                    status=code,
                    body=payload,
                    headers={
                        k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS
                    },
                )
        except aiohttp.ClientError as e:
            # queue-proxy answers 502 when the user-container cannot be reached.
            code = 502
            elapsed = time.perf_counter() - started
            response = web.Response(status=code, text=f"error reaching the model server: {e}")
        if PROBE_HEADER not in request.headers:
            self.metrics.observe(code, elapsed)
        return response
