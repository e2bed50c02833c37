"""Simulated model versions for the local run: KServe v1 predict servers with a profile.

A `ModelVersion` stands in for one revision of an InferenceService predictor. It serves
KServe's v1 protocol on 127.0.0.1 (`GET /v1/models/<name>` readiness, `POST
/v1/models/<name>:predict` with `{"instances": [[4 floats], ...]}` → `{"predictions": [...]}`)
with an sklearn iris classifier trained at start-up, and it behaves as its `Profile` says:
a share of requests answered 500, and a lognormal latency.

Each server exports, at `/metrics` from its own registry, what Knative's queue-proxy exports
for a revision, so the Metric library's PromQL works unchanged against the local run:
- `revision_app_request_latencies_{bucket,sum,count}`: a histogram in milliseconds with
  queue-proxy's bucket bounds;
- `revision_app_request_count`: requests by response code. Exposed untyped under exactly
  that name (queue-proxy's), because prometheus_client's text format appends `_total` to
  every counter it types as one;
- `model_prediction_correct_total` and `model_prediction_total`: predictions whose instance is
  an iris row, and how many of those were right — a ground-truth reward for A/B experiments
  (counted per instance, not per request).
All carry `namespace_name`, `configuration_name`, `revision_name`, `response_code` and
`response_code_class`.

Time compression: the run compresses time `time_scale`-fold. Latency is drawn in simulated
milliseconds and exported as drawn (uncompressed), so histograms, means and quantiles look
as they would in a cluster; only the wall-clock sleep is divided by `time_scale`
(`math.inf` skips it).
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Self

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import UnknownMetricFamily
from prometheus_client.registry import Collector

from local.lifecycle import Component

log = logging.getLogger(__name__)

Quality = Literal["good", "worse"]

# Knative queue-proxy's latency buckets, in milliseconds.
LATENCY_BUCKETS_MS: Final = (
    5, 10, 20, 40, 60, 80, 100, 150, 200, 250, 300, 350, 400, 450, 500,
    600, 700, 800, 900, 1000, 2000, 5000, 10000, 20000, 50000, 100000,
)  # fmt: skip
LABELS: Final = (
    "namespace_name",
    "configuration_name",
    "revision_name",
    "response_code",
    "response_code_class",
)
_N_FEATURES: Final = 4
_REVISION_SUFFIX = re.compile(r"-\d{5}$")


@dataclass(frozen=True)
class Profile:
    """How a version behaves: its failure rate, its latency, and its model's quality.

    Latency is lognormal with median `latency_median_ms` and log-scale spread
    `latency_sigma` (the standard deviation of its logarithm; 0 makes it constant).
    A "worse" model is trained on corrupted labels and is measurably less accurate.
    """

    error_rate: float = 0.0
    latency_median_ms: float = 20.0
    latency_sigma: float = 0.3
    model: Quality = "good"

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {self.error_rate}")
        if not self.latency_median_ms > 0.0:
            raise ValueError(f"latency_median_ms must be positive, got {self.latency_median_ms}")
        if not self.latency_sigma >= 0.0:
            raise ValueError(f"latency_sigma must be non-negative, got {self.latency_sigma}")
        if self.model not in ("good", "worse"):
            raise ValueError(f"model must be 'good' or 'worse', got {self.model!r}")


@dataclass(frozen=True)
class IrisData:
    """The iris data set: 150 rows of 4 features, and their classes 0, 1, 2."""

    features: np.ndarray[Any, np.dtype[np.float64]]
    labels: np.ndarray[Any, np.dtype[np.int64]]


@functools.cache
def iris() -> IrisData:
    """The iris data set shipped with scikit-learn (no download)."""
    from sklearn.datasets import load_iris  # type: ignore[import-untyped]  # noqa: PLC0415

    features, labels = load_iris(return_X_y=True)
    return IrisData(np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.int64))


@dataclass(frozen=True)
class IrisClassifier:
    """A fitted multinomial logistic regression, kept as its coefficients.

    Predicting is the model's own decision rule (argmax of the linear scores): calling
    sklearn's `predict` costs ~0.7 ms of input validation per request, which would dominate
    a time-compressed run's CPU.
    """

    coef: np.ndarray[Any, np.dtype[np.float64]]
    intercept: np.ndarray[Any, np.dtype[np.float64]]

    def predict(self, instances: np.ndarray[Any, np.dtype[np.float64]]) -> list[int]:
        scores = instances @ self.coef.T + self.intercept
        return [int(c) for c in np.argmax(scores, axis=1)]


@functools.cache
def train(quality: Quality) -> IrisClassifier:
    """Train the iris model for `quality` (cached: every version of a run shares it).

    "worse" is trained as by a labeller who confuses the species: the virginica flowers
    with petals shorter than their median are labelled versicolor. Its accuracy on iris is
    about 0.81, against 0.97 for "good".
    """
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]  # noqa: PLC0415

    data = iris()
    labels = data.labels.copy()
    if quality == "worse":
        virginica = data.labels == 2
        short = data.features[:, 2] < np.median(data.features[virginica, 2])
        labels[virginica & short] = 1
    model = LogisticRegression(max_iter=1000).fit(data.features, labels)
    return IrisClassifier(
        np.asarray(model.coef_, dtype=np.float64), np.asarray(model.intercept_, dtype=np.float64)
    )


@functools.cache
def _truth() -> dict[tuple[float, ...], int]:
    # iris has one duplicated row, with the same class: the features identify the class.
    data = iris()
    return {
        tuple(map(float, row)): int(y) for row, y in zip(data.features, data.labels, strict=True)
    }


class _RequestCounter(Collector):
    """`revision_app_request_count` under queue-proxy's exact name (see the module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], int] = {}

    def inc(self, labels: Sequence[str]) -> None:
        key = tuple(labels)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def collect(self) -> Iterator[UnknownMetricFamily]:
        family = UnknownMetricFamily(
            "revision_app_request_count",
            "The number of requests that are routed to user-container",
            labels=LABELS,
        )
        with self._lock:
            counts = dict(self._counts)
        for key, count in sorted(counts.items()):
            family.add_metric(list(key), count)
        yield family


class _Metrics:
    """The metric families one version exports, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latencies = Histogram(
            "revision_app_request_latencies",
            "The response time in millisecond",
            LABELS,
            buckets=LATENCY_BUCKETS_MS,
            registry=self.registry,
        )
        self.requests = _RequestCounter()
        self.registry.register(self.requests)
        self.correct = Counter(
            "model_prediction_correct",
            "Predictions on instances with a known class that were right",
            LABELS,
            registry=self.registry,
        )
        self.scored = Counter(
            "model_prediction",
            "Predictions on instances with a known class",
            LABELS,
            registry=self.registry,
        )


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the traffic generator's pool reuses sockets
    # Headers and body in one segment: written separately, Nagle's algorithm and the
    # client's delayed ACK hold every response ~40 ms.
    wbufsize = -1
    disable_nagle_algorithm = True
    server: _Server
    timeout = 30  # idle keep-alive connections give their thread back

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.server.version.revision, *args)

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, payload: Mapping[str, Any]) -> None:
        self._send(code, json.dumps(payload).encode())

    def do_GET(self) -> None:
        version = self.server.version
        if self.path == "/metrics":
            self._send(200, generate_latest(version.metrics.registry), CONTENT_TYPE_LATEST)
        elif self.path == f"/v1/models/{version.name}":
            self._json(200, {"name": version.name, "ready": True})
        elif self.path == "/v1/models":
            self._json(200, {"models": [version.name]})
        elif self.path == "/":
            self._json(200, {"status": "alive"})
        else:
            self._json(404, {"error": f"no route for {self.path}"})

    def do_POST(self) -> None:
        version = self.server.version
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path != f"/v1/models/{version.name}:predict":
            self._json(404, {"error": f"no route for {self.path}; model is {version.name}"})
            return
        code, payload = version.handle_predict(body)
        self._json(code, payload)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    version: ModelVersion


class ModelVersion(Component):
    """One simulated model revision, served over HTTP on 127.0.0.1 until stopped.

    `name` is the model name in the v1 URLs (KServe uses the InferenceService's name);
    `revision` and `configuration` are the Knative names the metrics are labelled with
    (`configuration` defaults to the revision name without its `-00001` suffix).
    `rng` drives the errors and latencies; it is used under a lock, so one generator serves
    every request thread.
    """

    def __init__(
        self,
        name: str,
        revision: str,
        profile: Profile,
        rng: np.random.Generator,
        *,
        namespace: str = "default",
        configuration: str | None = None,
        time_scale: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.name = name
        self.revision = revision
        self.profile = profile
        self.namespace = namespace
        self.configuration = configuration or _REVISION_SUFFIX.sub("", revision)
        self.time_scale = time_scale
        self.metrics = _Metrics()
        self._rng = rng
        self._rng_lock = threading.Lock()
        self._host = host
        self._port = port
        self._model: IrisClassifier | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The server's base URL, `http://127.0.0.1:PORT`."""
        if self._server is None:
            raise RuntimeError(f"model version {self.revision} is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def model_url(self) -> str:
        """The model's v1 URL; `:predict` appended is the predict endpoint."""
        return f"{self.url}/v1/models/{self.name}"

    def start(self) -> Self:
        """Train the model, bind a port and serve from a daemon thread; ready on return."""
        self._model = train(self.profile.model)
        _truth()  # built now, not by the first request, whose latency would show it
        # Export the 200 and 500 series at 0 from the start: a series that first appears
        # with its first error gives `increase()` nothing for that error, and error counts
        # (rare by design) would read low.
        for code in (200, 500):
            labels = (
                self.namespace,
                self.configuration,
                self.revision,
                str(code),
                f"{code // 100}xx",
            )
            self.metrics.latencies.labels(*labels)
            if code == 200:  # only answered predictions are scored
                self.metrics.correct.labels(*labels)
                self.metrics.scored.labels(*labels)
        server = _Server((self._host, self._port), _Handler)
        server.version = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"model-{self.revision}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def _draw(self) -> tuple[float, bool]:
        profile = self.profile
        with self._rng_lock:
            latency = profile.latency_median_ms * math.exp(
                profile.latency_sigma * float(self._rng.standard_normal())
            )
            failed = bool(self._rng.random() < profile.error_rate)
        return latency, failed

    def handle_predict(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer one predict request: (HTTP status, JSON payload), metrics recorded.

        Metrics are recorded before the response is sent, so a client that has its answer
        finds the request counted.
        """
        latency_ms, failed = self._draw()
        instances = _parse_instances(body)
        payload: dict[str, Any]
        correct = scored = 0
        if isinstance(instances, str):
            code, payload = 400, {"error": instances}
        elif failed:
            code, payload = 500, {"error": "simulated failure"}
        else:
            assert self._model is not None
            predictions = self._model.predict(instances)
            truth = _truth()
            for row, predicted in zip(instances, predictions, strict=True):
                expected = truth.get(tuple(map(float, row)))
                if expected is not None:
                    scored += 1
                    correct += int(predicted == expected)
            code, payload = 200, {"predictions": predictions}
        # Wall-clock sleep compressed; the exported latency stays the simulated one.
        time.sleep(latency_ms / 1000.0 / self.time_scale)
        labels = (
            self.namespace,
            self.configuration,
            self.revision,
            str(code),
            f"{code // 100}xx",
        )
        self.metrics.latencies.labels(*labels).observe(latency_ms)
        self.metrics.requests.inc(labels)
        if scored:
            self.metrics.scored.labels(*labels).inc(scored)
            self.metrics.correct.labels(*labels).inc(correct)
        return code, payload


def _parse_instances(body: bytes) -> np.ndarray[Any, np.dtype[np.float64]] | str:
    """The request's instances as an (n, 4) array, or what is wrong with the request."""
    try:
        request = json.loads(body)
    except ValueError as e:
        return f"request body is not JSON: {e}"
    instances = request.get("instances") if isinstance(request, dict) else None
    if not isinstance(instances, list) or not instances:
        return 'expected {"instances": [[4 numbers], ...]}'
    try:
        array = np.asarray(instances, dtype=np.float64)
    except (TypeError, ValueError):
        return "instances must be lists of 4 numbers"
    if array.ndim != 2 or array.shape[1] != _N_FEATURES or not np.isfinite(array).all():
        return f"instances must be lists of {_N_FEATURES} finite numbers, got shape {array.shape}"
    return array
