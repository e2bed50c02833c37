"""Simulated model versions for the local run: real KServe model servers with a profile.

A `ModelVersion` stands in for one revision of an InferenceService predictor: one process
(`local.modelserver`) running a real `kserve.ModelServer` with the iris classifier trained
here at start-up, behind the queue-proxy stand-in (`local.queueproxy`) of the Knative
generation the run plays. Requests go to the proxy (`url`, `model_url`), which forwards them
to KServe, as Knative's queue-proxy forwards to the user-container; KServe answers the real
v1 and v2 predict protocols and Content-Type rules. The version behaves as its `Profile`
says: a share of requests answered 500, and a lognormal latency the model really waits, so
the durations the proxy measures are real whatever the run's `--speed`.

Prometheus scrapes two targets per version (`scrape_targets`): the proxy's metrics port
(the generation's request-duration histogram; in the OpenTelemetry generations with the
revision's labels attached per target, see local.queueproxy) and KServe's own `/metrics`
(`request_predict_seconds` by `model_name`, and the ground-truth reward counters
`model_prediction_correct_total` / `model_prediction_total` by revision).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal, Self

import numpy as np
import urllib3

from local.lifecycle import Component, stop_process
from local.modelserver import ENV, ServerConfig
from local.queueproxy import (
    DEFAULT_GENERATION,
    PROBE_HEADER,
    Generation,
    RevisionInfo,
    generation,
)

Quality = Literal["good", "worse"]

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ScrapeTarget:
    """One port Prometheus scrapes, described as Kubernetes service discovery (role: pod)
    describes a pod's container port: `meta` holds the `__meta_kubernetes_*` labels the
    scrape configurations in config/prometheus keep and relabel by. Prometheus drops
    labels starting with `__` after relabelling, so only what the rules copy reaches the
    series — exactly as in a cluster."""

    address: str  # host:port
    path: str
    meta: Mapping[str, str]


def pod_meta(
    namespace: str, pod: str, container: str, port: str, pod_labels: Mapping[str, str]
) -> dict[str, str]:
    """The discovery labels of one container port of a pod (Prometheus' kubernetes_sd
    role: pod; a label's name has every character but [a-zA-Z0-9_] made `_`)."""
    meta = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_container_name": container,
        "__meta_kubernetes_pod_container_port_name": port,
    }
    for key, value in pod_labels.items():
        meta["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
    return meta


class ModelVersion(Component):
    """One simulated model revision: a KServe model server process behind its queue-proxy.

    `name` is the model name in the v1/v2 URLs (KServe uses the InferenceService's name);
    `revision` and `configuration` are the Knative names (`configuration` defaults to the
    revision name without its `-00001` suffix, the Knative Service's name too). `knative`
    is the generation whose queue-proxy metrics the proxy exports ("1.18" or "1.19").
    `rng` seeds the process's error and latency draws. `log_path` receives the process's
    output (a temporary file by default). `launch()` starts the process without waiting;
    `start()` launches and waits until the model answers through the proxy.
    """

    READY_TIMEOUT_S: Final = 60.0

    def __init__(
        self,
        name: str,
        revision: str,
        profile: Profile,
        rng: np.random.Generator,
        *,
        namespace: str = "default",
        configuration: str | None = None,
        knative: str = DEFAULT_GENERATION,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self.revision = revision
        self.profile = profile
        self.namespace = namespace
        self.configuration = configuration or _REVISION_SUFFIX.sub("", revision)
        self.generation: Generation = generation(knative)
        self.info = RevisionInfo(namespace, self.configuration, self.configuration, revision)
        self._seed = int(rng.integers(2**63))
        self._log_path = log_path
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ports: tuple[int, int, int] | None = None

    @property
    def url(self) -> str:
        """The proxy's base URL, `http://127.0.0.1:PORT`: where requests for the revision go."""
        if self._ports is None:
            raise RuntimeError(f"model version {self.revision} is not running")
        return f"http://127.0.0.1:{self._ports[1]}"

    @property
    def model_url(self) -> str:
        """The model's v1 URL; `:predict` appended is the predict endpoint."""
        return f"{self.url}/v1/models/{self.name}"

    @property
    def metrics_url(self) -> str:
        """The queue-proxy stand-in's metrics (queue-proxy's port 9091)."""
        assert self._ports is not None, f"model version {self.revision} is not running"
        return f"http://127.0.0.1:{self._ports[2]}/metrics"

    @property
    def server_metrics_url(self) -> str:
        """KServe's own /metrics, on the model server's port."""
        assert self._ports is not None, f"model version {self.revision} is not running"
        return f"http://127.0.0.1:{self._ports[0]}/metrics"

    def scrape_targets(self) -> list[ScrapeTarget]:
        """What Prometheus can scrape for this version, as its pod's ports: the proxy's
        metrics port (queue-proxy's http-usermetric, 9091) and the model server's (the
        kserve-container's user-port, 8080), with the pod labels Knative and KServe set."""
        assert self._ports is not None, f"model version {self.revision} is not running"
        i = self.info
        labels = {
            "serving.knative.dev/revision": i.revision,
            "serving.knative.dev/configuration": i.configuration,
            "serving.knative.dev/service": i.service,
            "serving.kserve.io/inferenceservice": self.name,
        }
        return [
            ScrapeTarget(
                f"127.0.0.1:{port}",
                "/metrics",
                pod_meta(i.namespace, i.pod, container, port_name, labels),
            )
            for port, container, port_name in (
                (self._ports[2], "queue-proxy", "http-usermetric"),
                (self._ports[0], "kserve-container", "user-port"),
            )
        ]

    def launch(self) -> Self:
        """Train the model here and start the server process; do not wait for it."""
        model = train(self.profile.model)
        data = iris()
        self._ports = (_free_port(), _free_port(), _free_port())
        config = ServerConfig(
            model_name=self.name,
            namespace=self.namespace,
            service=self.info.service,
            configuration=self.configuration,
            revision=self.revision,
            error_rate=self.profile.error_rate,
            latency_median_ms=self.profile.latency_median_ms,
            latency_sigma=self.profile.latency_sigma,
            coef=model.coef.tolist(),
            intercept=model.intercept.tolist(),
            truth=[
                (row, int(y))
                for row, y in zip(data.features.tolist(), data.labels.tolist(), strict=True)
            ],
            seed=self._seed,
            generation=self.generation.name,
            http_port=self._ports[0],
            proxy_port=self._ports[1],
            metrics_port=self._ports[2],
        )
        if self._log_path is not None:
            # w+b: readable too, so a failed start can quote the end of it (`_tail`).
            self._log = self._log_path.open("w+b")
        else:
            self._log = tempfile.TemporaryFile(prefix=f"model-{self.revision}-")  # noqa: SIM115
        env = {
            **os.environ,
            ENV: config.to_env(),
            # What Knative sets in the user-container's environment.
            "K_REVISION": self.revision,
            "K_CONFIGURATION": self.configuration,
            "K_SERVICE": self.info.service,
        }
        self._process = subprocess.Popen(
            [sys.executable, "-m", "local.modelserver"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> Self:
        """Wait until the model answers ready through the proxy; RuntimeError if not."""
        assert self._process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        http = urllib3.PoolManager(retries=False, timeout=1.0)
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"model server {self.revision} exited with {self._process.returncode}: "
                        + self._tail()
                    )
                with contextlib.suppress(urllib3.exceptions.HTTPError):
                    # As Knative's probes: marked, so queue-proxy leaves it out of its metrics.
                    probe = {PROBE_HEADER: "queue"}
                    if http.request("GET", self.model_url, headers=probe).status == 200:
                        return self
                time.sleep(0.1)
        finally:
            http.clear()
        raise RuntimeError(
            f"model server {self.revision} not ready within {timeout:g} s: " + self._tail()
        )

    def start(self) -> Self:
        """Launch (unless `launch()` already did) and wait until ready."""
        if self._process is None:
            self.launch()
        return self.wait_ready()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, grace_s=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _tail(self) -> str:
        if self._log is None:
            return "(no output)"
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - 2000))
        return self._log.read().decode(errors="replace")
