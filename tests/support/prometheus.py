"""A real Prometheus for tests, loaded with fixed history so query results are exact.

`OpenMetrics` writes samples with explicit timestamps; `PrometheusTSDB` turns them into TSDB
blocks with `promtool tsdb create-blocks-from openmetrics` and serves them with the real
`prometheus` binary on a free 127.0.0.1 port (no scraping: the config has no targets), so a
query at a fixed time sees exactly the data written. `queue_proxy_history()` is the data set
the Metric library is tested against: Knative queue-proxy series for a KServe v1beta1 and a
KFServing v1alpha2 InferenceService, with values chosen so every library query has a round,
exactly representable answer.

What promtool and Prometheus 2.42 (Debian bookworm) need, found by trying:
- each series' samples in increasing time order, the file ending with `# EOF`; old data is
  fine (blocks are cut at 2 h boundaries; retention counts from the newest block, and a long
  retention is set anyway);
- a range selector `[600s]` evaluated at t includes a sample at exactly t - 600 s, so with
  samples at both ends `increase()` is the plain difference, with no extrapolation; an
  instant selector looks back 5 minutes, so query within 5 minutes after the last sample.

No pytest here: `tests/support/prometheus_fixtures.py` wraps it in a session fixture.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

import requests

from local.harness import free_port

PROMETHEUS: Final = "prometheus"
PROMTOOL: Final = "promtool"
INSTALL_HINT: Final = (
    "run `make os-deps` (Debian: apt-get install --no-install-recommends prometheus)"
)

# The fixed history: samples every STEP seconds from T0 to AT, queried at AT.
T0: Final = 1_700_000_000  # 2023-11-14T22:13:20Z
STEP: Final = 10
STEPS: Final = 60
AT: Final = T0 + STEP * STEPS  # query time; `[600s]` at AT spans the whole history
ELAPSED: Final = AT - T0

Labels = Mapping[str, str]


def missing_binaries() -> list[str]:
    return [b for b in (PROMETHEUS, PROMTOOL) if shutil.which(b) is None]


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (
        (k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
        for k, v in labels.items()
    )
    return "{" + ",".join(f'{k}="{v}"' for k, v in escaped) + "}"


@dataclass
class _Family:
    type: str
    lines: list[str] = field(default_factory=list)


class OpenMetrics:
    """An OpenMetrics exposition with explicit timestamps (seconds), built family by family.

    Each call adds one labelled series with all its points; points must be given in time
    order (promtool rejects out-of-order samples within a series).
    """

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def _family(self, name: str, kind: str) -> _Family:
        family = self._families.setdefault(name, _Family(kind))
        if family.type != kind:
            raise ValueError(f"{name} is already a {family.type}, not a {kind}")
        return family

    @staticmethod
    def _check_order(times: Sequence[float]) -> None:
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise ValueError("points must be in strictly increasing time order")

    def gauge(self, name: str, labels: Labels, points: Iterable[tuple[float, float]]) -> None:
        points = list(points)
        self._check_order([t for t, _ in points])
        family = self._family(name, "gauge")
        family.lines += [f"{name}{_labels(labels)} {_number(v)} {t}" for t, v in points]

    def counter(self, name: str, labels: Labels, points: Iterable[tuple[float, float]]) -> None:
        """A counter family `name`; its samples are written as `name_total`."""
        points = list(points)
        self._check_order([t for t, _ in points])
        family = self._family(name, "counter")
        family.lines += [f"{name}_total{_labels(labels)} {_number(v)} {t}" for t, v in points]

    def histogram(
        self,
        name: str,
        labels: Labels,
        points: Iterable[tuple[float, Mapping[float, float], float]],
    ) -> None:
        """Points are (time, cumulative count per upper bound, sum); +Inf is the count."""
        points = list(points)
        self._check_order([t for t, _, _ in points])
        family = self._family(name, "histogram")
        for t, buckets, total in points:
            if math.inf not in buckets:
                raise ValueError("a histogram point needs the +Inf bucket")
            for bound in sorted(buckets):
                le = {**labels, "le": _number(bound) if math.isfinite(bound) else "+Inf"}
                family.lines.append(f"{name}_bucket{_labels(le)} {_number(buckets[bound])} {t}")
            family.lines.append(f"{name}_count{_labels(labels)} {_number(buckets[math.inf])} {t}")
            family.lines.append(f"{name}_sum{_labels(labels)} {_number(total)} {t}")

    def text(self) -> str:
        out: list[str] = []
        for name, family in self._families.items():
            out.append(f"# TYPE {name} {family.type}")
            out += family.lines
        out.append("# EOF")
        return "\n".join(out) + "\n"


class PrometheusTSDB:
    """Backfill a TSDB from OpenMetrics text and serve it with the real Prometheus.

    Usage: `db = PrometheusTSDB(workdir); db.backfill(text); with db: query db.url`.
    `start()` waits for `/-/ready`; `stop()` (or leaving the `with`) always ends the process.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        prometheus: str = PROMETHEUS,
        promtool: str = PROMTOOL,
        scrape_configs: Sequence[Mapping[str, object]] = (),
    ) -> None:
        self.workdir = Path(workdir)
        # Jobs to scrape besides the backfill (none by default: exact history only).
        self.scrape_configs = [dict(job) for job in scrape_configs]
        self.storage = self.workdir / "tsdb"
        self._prometheus = prometheus
        self._promtool = promtool
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self.workdir / "prometheus.log"
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None or self._process is None:
            raise RuntimeError("Prometheus is not running; call start() first")
        return f"http://127.0.0.1:{self.port}"

    def backfill(self, openmetrics: str) -> None:
        """Write `openmetrics` to a file and turn it into blocks under `self.storage`."""
        if self._process is not None:
            raise RuntimeError("backfill before start(): Prometheus loads blocks at start-up")
        self.workdir.mkdir(parents=True, exist_ok=True)
        source = self.workdir / f"history-{len(list(self.workdir.glob('history-*.om')))}.om"
        source.write_text(openmetrics)
        done = subprocess.run(
            [
                self._promtool,
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                str(source),
                str(self.storage),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"promtool could not backfill {source} (exit {done.returncode}):\n"
                f"{done.stderr or done.stdout}"
            )

    def start(self, ready_timeout_s: float = 15.0) -> str:
        """Start Prometheus on a free port and wait until it is ready; returns its URL."""
        if self._process is not None:
            return self.url
        config = self.workdir / "prometheus.yml"
        # By default no scrape targets: every sample comes from the backfill.
        config.write_text(json.dumps({"scrape_configs": self.scrape_configs}))
        self.storage.mkdir(parents=True, exist_ok=True)
        problem = ""
        for _ in range(3):  # another process may take the free port before Prometheus binds
            self.port = free_port()
            with self._log.open("wb") as log:
                self._process = subprocess.Popen(
                    [
                        self._prometheus,
                        f"--config.file={config}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        f"--storage.tsdb.path={self.storage}",
                        "--storage.tsdb.retention.time=100y",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            problem = self._wait_ready(ready_timeout_s)
            if not problem:
                return self.url
            self.stop()
        raise RuntimeError(f"Prometheus did not become ready: {problem}")

    def _wait_ready(self, timeout_s: float) -> str:
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        ready = f"http://127.0.0.1:{self.port}/-/ready"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return f"it exited with {self._process.returncode}:\n{self._log.read_text()}"
            try:
                if requests.get(ready, timeout=1).status_code == 200:
                    return ""
            except requests.RequestException:
                pass
            time.sleep(0.02)  # poll interval of the readiness check
        return f"not ready after {timeout_s} s:\n{self._log.read_text()}"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> PrometheusTSDB:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- the queue-proxy history the Metric library is tested against -------------------------

QUEUE_PROXY: Final = "revision_app_request_latencies"
# Upper bounds in milliseconds (a subset of queue-proxy's own), +Inf last.
BUCKETS: Final = (5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, math.inf)
NAMESPACE: Final = "models"
ISVC: Final = "sklearn-iris"
# KServe v1beta1: one Knative Service `<isvc>-predictor`, revisions -00001, -00002.
KSERVE_BASELINE: Final = "sklearn-iris-predictor-00001"
KSERVE_CANDIDATE: Final = "sklearn-iris-predictor-00002"
# KFServing v1alpha2: Knative Services `<isvc>-predictor-default` and `-canary`.
KFSERVING_NAMESPACE: Final = "legacy-models"
KFSERVING_DEFAULT: Final = "sklearn-iris-predictor-default-7dbxq"
KFSERVING_CANARY: Final = "sklearn-iris-predictor-canary-b4mzn"
KFSERVING_TRANSFORMER: Final = "sklearn-iris-transformer-default-x2kpl"


@dataclass(frozen=True)
class Traffic:
    """Requests one pod answers in every STEP: latency in ms -> requests at that latency."""

    pod: str
    code: int
    per_step: Mapping[float, int]


# Per revision; the two baselines serve the same traffic, as do the two candidates, so one
# table of expected values covers both libraries.
BASELINE_TRAFFIC: Final = (
    Traffic("deployment-a", 200, {8.0: 3, 40.0: 2, 90.0: 1}),
    Traffic("deployment-b", 200, {8.0: 1, 40.0: 2, 90.0: 1}),
)
CANDIDATE_TRAFFIC: Final = (
    Traffic("deployment-a", 200, {8.0: 3, 40.0: 3, 200.0: 3}),
    Traffic("deployment-a", 500, {700.0: 1}),
)

# A revision that rejects input: per step 7 answered 200, 2 answered 404 and 1 503, so over
# the history 600 requests, 120 4xx and 60 5xx (error-rate 0.1, error-rate-non-2xx 0.3).
KSERVE_REJECTING: Final = "sklearn-iris-predictor-00003"
REJECTING_TRAFFIC: Final = (
    Traffic("deployment-a", 200, {8.0: 7}),
    Traffic("deployment-a", 404, {8.0: 2}),
    Traffic("deployment-a", 503, {40.0: 1}),
)


def _add_revision(
    om: OpenMetrics,
    namespace: str,
    configuration: str,
    revision: str,
    traffic: Sequence[Traffic],
) -> None:
    for t in traffic:
        labels = {
            "namespace_name": namespace,
            "configuration_name": configuration,
            "service_name": configuration,
            "revision_name": revision,
            "pod_name": f"{revision}-{t.pod}",
            "response_code": str(t.code),
            "response_code_class": f"{t.code // 100}xx",
        }
        per_bucket = {b: sum(n for ms, n in t.per_step.items() if ms <= b) for b in BUCKETS}
        per_sum = sum(ms * n for ms, n in t.per_step.items())
        om.histogram(
            QUEUE_PROXY,
            labels,
            (
                (T0 + i * STEP, {b: i * n for b, n in per_bucket.items()}, i * per_sum)
                for i in range(STEPS + 1)
            ),
        )


# Knative Serving >= 1.19: the OpenTelemetry queue-proxy histogram, in seconds, as
# config/prometheus/knative-1.19 leaves it (namespace and revision relabelled onto it).
OTEL_QUEUE_PROXY: Final = "kn_serving_invocation_duration_seconds"
# Upper bounds in seconds, the same instants as BUCKETS (a subset of the queue-proxy's own,
# pkg/queue/request_metric.go latencyBounds).
OTEL_BUCKETS: Final = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, math.inf)
# The KServe model server's predict histogram (python/kserve/kserve/metrics.py), seconds, as
# config/prometheus/kserve-modelserver leaves it.
MODEL_SERVER: Final = "request_predict_seconds"


def _add_otel_revision(
    om: OpenMetrics, namespace: str, configuration: str, revision: str, traffic: Sequence[Traffic]
) -> None:
    """The same traffic as `_add_revision` writes, in the shapes Knative >= 1.19 and the KServe
    model server give it once scraped with config/prometheus/: seconds, the namespace and
    revision as k8s_namespace_name and kn_revision_name. The model server has no status code
    (it times every predict call, failed or not), so its series are one per pod."""
    per_pod: dict[str, dict[float, int]] = {}
    for t in traffic:
        merged = per_pod.setdefault(t.pod, {})
        for ms, n in t.per_step.items():
            merged[ms] = merged.get(ms, 0) + n
    series = [
        (
            OTEL_QUEUE_PROXY,
            t.pod,
            {
                "http_response_status_code": str(t.code),
                "otel_scope_name": "knative.dev/serving/pkg/queue",
            },
            t.per_step,
        )
        for t in traffic
    ] + [(MODEL_SERVER, pod, {"model_name": ISVC}, steps) for pod, steps in per_pod.items()]
    for name, pod, own, per_step in series:
        labels = {
            **own,
            "k8s_namespace_name": namespace,
            "kn_revision_name": revision,
            "kn_configuration_name": configuration,
            "k8s_pod_name": f"{revision}-{pod}",
        }
        per_bucket = {
            s: sum(n for ms, n in per_step.items() if ms <= ms_bound)
            for s, ms_bound in zip(OTEL_BUCKETS, BUCKETS, strict=True)
        }
        per_sum_ms = sum(ms * n for ms, n in per_step.items())
        om.histogram(
            name,
            labels,
            (
                # The sum divided last: each is the double nearest the exact seconds.
                (T0 + i * STEP, {b: i * n for b, n in per_bucket.items()}, i * per_sum_ms / 1000)
                for i in range(STEPS + 1)
            ),
        )


def queue_proxy_history() -> OpenMetrics:
    """Ten minutes of queue-proxy histograms, counters starting at 0 at T0.

    Over the whole history each baseline revision served 600 requests, none failed,
    latency sum 22320 ms; each candidate 600 requests, 60 of them 5xx, sum 86640 ms. A
    transformer revision in the KFServing namespace serves traffic no predictor query may
    count. `zero` is a gauge that is 0 throughout (so `zero / zero` is NaN).
    The KServe namespace also holds the same traffic in the Knative >= 1.19 and model-server
    shapes (`_add_otel_revision`), so every library reads the same requests, and a third
    revision, KSERVE_REJECTING, whose 4xx tell error-rate from error-rate-non-2xx.
    """
    om = OpenMetrics()
    _add_revision(om, NAMESPACE, f"{ISVC}-predictor", KSERVE_BASELINE, BASELINE_TRAFFIC)
    _add_revision(om, NAMESPACE, f"{ISVC}-predictor", KSERVE_CANDIDATE, CANDIDATE_TRAFFIC)
    _add_otel_revision(om, NAMESPACE, f"{ISVC}-predictor", KSERVE_BASELINE, BASELINE_TRAFFIC)
    _add_otel_revision(om, NAMESPACE, f"{ISVC}-predictor", KSERVE_CANDIDATE, CANDIDATE_TRAFFIC)
    for add in (_add_revision, _add_otel_revision):
        add(om, NAMESPACE, f"{ISVC}-predictor", KSERVE_REJECTING, REJECTING_TRAFFIC)
    for configuration, revision, traffic in (
        (f"{ISVC}-predictor-default", KFSERVING_DEFAULT, BASELINE_TRAFFIC),
        (f"{ISVC}-predictor-canary", KFSERVING_CANARY, CANDIDATE_TRAFFIC),
        (f"{ISVC}-transformer-default", KFSERVING_TRANSFORMER, CANDIDATE_TRAFFIC),
    ):
        _add_revision(om, KFSERVING_NAMESPACE, configuration, revision, traffic)
    om.gauge("zero", {}, ((T0 + i * STEP, 0.0) for i in range(STEPS + 1)))
    return om
