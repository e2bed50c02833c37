"""`arbiter run`: a whole experiment on one machine, every piece real and on 127.0.0.1.

`LocalRun` starts, in order: the Kubernetes API emulator (loaded with the Metric library
and the sample's objects) and the controller stand-ins that report traffic in status; the
simulated model versions; Prometheus scraping them; the four functions, each its own
functions-framework process started as Knative starts it (FUNCTION_TARGET, K_SINK); the
local broker routing by eventing/'s Trigger manifests, with the PingSource and the
ApiServerSource played against it; the traffic generator. Then it creates the Experiment
and watches its status until it ends. Everything is stopped on exit, error or Ctrl-C.

Against a real cluster (`kubeconfig`), the emulator, the stand-ins, the simulated versions
and the local Prometheus are skipped: the cluster's objects and Prometheus are used.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import numpy as np
import requests
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from functions.core import status as st
from functions.core.backends import kserve
from functions.core.events import TRIGGERS
from functions.core.resources import EXPERIMENT, METRIC, ObjectRef
from functions.core.settings import Settings
from functions.core.timestamps import parse_time
from local.autoscale import ScaleToZero, function_process
from local.broker import LocalBroker, load_manifests
from local.lifecycle import stop_process
from local.queueproxy import generation
from local.sample import DEFAULT_KNATIVE, Planned, Sample, TargetSim
from local.servers import ScrapeTarget
from local.sources import ApiServerSourcePlayer, LivePingSources
from local.view import LiveView, ManyView, promise, verdict

ROOT: Final = Path(__file__).resolve().parents[1]
EVENTING: Final = ROOT / "eventing"
METRICS: Final = ROOT / "config" / "metrics"
PROMETHEUS: Final = ROOT / "config" / "prometheus"
# The generation whose queue-proxy labels every series with the revision itself.
OPENCENSUS_GENERATION: Final = "1.18"
_EXPERIMENTS: Final = (EXPERIMENT.group, EXPERIMENT.version, EXPERIMENT.plural)


class RunError(RuntimeError):
    """The run could not be set up (a component did not start); exit code 1."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float, what: str, ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).status_code in ok:
                return
        time.sleep(0.1)
    raise RunError(f"{what} did not answer at {url} within {timeout:g} s")


@dataclass(frozen=True)
class Options:
    speed: float = 1.0
    output: Path | None = None
    kubeconfig: str | None = None
    prometheus_url: str | None = None
    seed: int = 1
    timeout_s: float | None = None
    direct_metrics: bool = False
    # Start each function on its first event, stop it after this many idle (simulated)
    # seconds, as Knative scales to zero; None keeps all four up for the whole run.
    idle_seconds: float | None = None


class LocalRun:
    def __init__(self, sample: Sample, options: Options, out: TextIO = sys.stdout) -> None:
        self.sample = sample
        self.options = options
        self.out = out
        self.interval = min(
            max(1, round(p.duration.interval_seconds / options.speed)) for p in sample.planned
        )
        self.history: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        self.finals: dict[str, dict[str, Any]] = {}  # by namespace/name, with several
        self.pings: LivePingSources | None = None
        self.broker: LocalBroker | None = None
        # The queue-proxy generation the versions play (see `_generation`).
        self.knative = sample.knative or DEFAULT_KNATIVE
        self.scaler: ScaleToZero | None = None

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # The experiment, time-compressed -------------------------------------------------------

    def experiment(self, planned: Planned | None = None) -> dict[str, Any]:
        planned = planned or self.sample.planned[0]
        exp: dict[str, Any] = json.loads(json.dumps(planned.experiment))
        exp.setdefault("spec", {}).setdefault("duration", {})["intervalSeconds"] = (
            self._interval_of(planned)
        )
        exp.pop("status", None)
        return exp

    def _interval_of(self, planned: Planned) -> int:
        return max(1, round(planned.duration.interval_seconds / self.options.speed))

    # Components -----------------------------------------------------------------------------

    def _direct(self) -> bool:
        """Whether the run reads the versions' /metrics itself (no Prometheus)."""
        return not self.options.prometheus_url and (
            self.options.direct_metrics or shutil.which("prometheus") is None
        )

    def _generation(self) -> None:
        """Without Prometheus nothing can put the revision on the OpenTelemetry queue-proxy's
        series (its scrape rules do), so the versions play Knative 1.18 unless the sample
        names a generation; one that names an OpenTelemetry generation is refused."""
        if not self._direct() or not generation(self.knative).otel:
            return
        if self.sample.knative is not None:
            raise RunError(
                f"Knative {self.knative}'s queue-proxy keeps the revision off its series "
                "(Prometheus' scrape rules put it there): install the Debian package "
                'prometheus, or run the sample with knative: "1.18"'
            )
        self.knative = OPENCENSUS_GENERATION
        self.say(
            f"knative     no Prometheus to relabel Knative {DEFAULT_KNATIVE}'s series: the "
            f"versions play Knative {OPENCENSUS_GENERATION}'s queue-proxy (revision on "
            "every series) and the run reads its Metric library"
        )

    def _emulator(self, stack: contextlib.ExitStack, workdir: Path) -> tuple[client.ApiClient, str]:
        from local.controllers import TrafficControllers  # noqa: PLC0415
        from local.kubeapi import KubeApiServer  # noqa: PLC0415

        server = stack.enter_context(KubeApiServer())
        kubeconfig = str(server.write_kubeconfig(workdir / "kubeconfig"))
        seed_metric_library(
            server,
            {
                "arbiter-system",
                *(str(p.experiment["metadata"]["namespace"]) for p in self.sample.planned),
                *(str(o["metadata"]["namespace"]) for o in self.sample.objects),
            },
            self.knative,
        )
        for obj in self.sample.objects:
            ref = ObjectRef(
                str(obj["apiVersion"]), str(obj["kind"]), obj["metadata"]["namespace"], ""
            )
            server.seed(ref.group, ref.version, ref.plural, ref.namespace, obj)
        api = server.api_client()
        stack.callback(api.close)
        controllers = TrafficControllers(api, ready_delay_s=self.sample.ready_delay_s)
        stack.enter_context(controllers)
        self.say(f"kubernetes  API emulator at {server.url} (kubeconfig {kubeconfig})")
        return api, kubeconfig

    def _versions(self, stack: contextlib.ExitStack, workdir: Path) -> dict[str, Any]:
        """One KServe model server process per version, behind its queue-proxy stand-in:
        all launched at once, then waited for (each import of kserve takes a while)."""
        from local.servers import ModelVersion  # noqa: PLC0415

        rng = np.random.default_rng(self.options.seed)
        servers = {}
        for v in self.sample.versions:
            server = ModelVersion(
                v.model,
                v.key,
                v.profile,
                np.random.default_rng(rng.integers(2**32)),
                namespace=v.namespace,
                knative=self.knative,
                log_path=workdir / f"model-{v.key}.log",
            )
            stack.callback(server.stop)
            servers[v.key] = server.launch()
        for v in self.sample.versions:
            server = servers[v.key]
            try:
                server.wait_ready()
            except RuntimeError as e:
                raise RunError(str(e)) from None
            p = v.profile
            if len(self.sample.targets) == 1:
                self.say(
                    f"version     {v.key} at {server.url}: {p.error_rate:.1%} errors, latency "
                    f"median {p.latency_median_ms:g} ms, {p.model} model (KServe model server "
                    f"behind a Knative {server.generation.name} queue-proxy)"
                )
        if len(self.sample.targets) > 1:
            self.say(
                f"versions    {len(servers)} KServe model servers behind Knative "
                f"{self.knative} queue-proxies, on {len(self.sample.targets)} targets"
            )
        return servers

    def _prometheus(
        self, stack: contextlib.ExitStack, workdir: Path, targets: list[ScrapeTarget]
    ) -> str:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RunError(
                "prometheus is not installed: `sudo apt-get install --no-install-recommends "
                "prometheus` (or `make os-deps`), or pass --prometheus-url"
            )
        port = free_port()
        (workdir / "prometheus.yml").write_text(
            yaml.safe_dump(prometheus_config(targets, self.knative))
        )
        log = (workdir / "prometheus.log").open("w")
        stack.callback(log.close)
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(stop_process, process)
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/-/ready", 30, "Prometheus")
        self.say(f"metrics     Prometheus at {url}, scraping every 1 s (first rates after ~7 s)")
        return url

    def _functions(
        self, stack: contextlib.ExitStack, workdir: Path, env: dict[str, str]
    ) -> dict[str, str]:
        ports = {stage: free_port() for stage in TRIGGERS}
        urls = {}
        for stage, port in ports.items():
            log = (workdir / f"function-{stage}.log").open("w")
            stack.callback(log.close)
            process = function_process(stage, port, env, log)
            stack.callback(stop_process, process)
            urls[f"arbiter-{stage}"] = f"http://127.0.0.1:{port}/"
        for name, url in urls.items():
            _wait_http(url, 30, f"function {name}", ok=(400, 405))
        self.say("functions   " + ", ".join(f"{n} {u}" for n, u in urls.items()))
        return urls

    def _scaled_functions(
        self, stack: contextlib.ExitStack, workdir: Path, env: dict[str, str]
    ) -> dict[str, str]:
        """The four functions at zero: each starts on its first event (see local.autoscale)."""
        assert self.options.idle_seconds is not None
        idle_s = self.options.idle_seconds / self.options.speed
        self.scaler = ScaleToZero(
            {stage: free_port() for stage in TRIGGERS}, env, workdir, idle_s=idle_s
        )
        stack.enter_context(self.scaler)
        self.say(
            f"functions   scaled to zero: each starts on its first event and stops after "
            f"{self.options.idle_seconds:g} s idle ({idle_s:g} s at --speed "
            f"{self.options.speed:g}); the broker holds deliveries while one starts"
        )
        return self.scaler.urls

    def _report_cold_starts(self) -> None:
        if self.scaler is not None:
            self.say("cold starts " + ", ".join(str(c) for c in self.scaler.cold_starts()))

    # The run ----------------------------------------------------------------------------------

    def run(self) -> int:
        with contextlib.ExitStack() as stack:
            workdir = self._workdir(stack)
            self.say(
                f"sample      {self.sample.path}: "
                f"{self.sample.duration.interval_seconds} s intervals run as {self.interval} s"
                f" (--speed {self.options.speed:g})"
            )
            local = self.options.kubeconfig is None
            direct = ""
            if local:
                self._generation()
                api, kubeconfig = self._emulator(stack, workdir)
                servers = self._versions(stack, workdir)
                targets = [t for s in servers.values() for t in s.scrape_targets()]
                if self.options.prometheus_url:
                    prometheus = self.options.prometheus_url
                elif self._direct():
                    prometheus = ""
                    direct = ",".join(
                        f"http://{t.address}{t.path}"
                        for s in servers.values()
                        for t in s.scrape_targets()
                    )
                    self.say(
                        "metrics     no Prometheus: DirectMetricsSource reads the versions' "
                        "/metrics (totals since they started) — install the Debian package "
                        "prometheus for the real thing"
                    )
                else:
                    prometheus = self._prometheus(stack, workdir, targets)
            else:
                kubeconfig = str(self.options.kubeconfig)
                api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
                stack.callback(api.close)
                servers = {}
                prometheus = self.options.prometheus_url or ""
                self.say(f"kubernetes  the cluster of {kubeconfig}; Prometheus {prometheus}")
            broker_port = free_port()
            sink = f"http://127.0.0.1:{broker_port}/"
            start_functions = (
                self._functions if self.options.idle_seconds is None else self._scaled_functions
            )
            functions = start_functions(
                stack,
                workdir,
                {
                    # The emulator is reached as through `kubectl proxy`, so the functions take
                    # the path they take in a pod (no kubeconfig, no official client); an
                    # inherited KUBECONFIG must not point them at another cluster.
                    "KUBECONFIG": "" if local else kubeconfig,
                    "ARBITER_KUBERNETES_URL": api.configuration.host if local else "",
                    "K_SINK": sink,
                    "ARBITER_PROMETHEUS_URL": prometheus,
                    "ARBITER_METRICS_TARGETS": direct,
                    "ARBITER_READY_TIMEOUT_SECONDS": str(max(60, 30 * self.interval)),
                    "ARBITER_READBACK_TIMEOUT_SECONDS": "10",
                    "ARBITER_LOG_LEVEL": "INFO",
                },
            )
            manifests = load_manifests(EVENTING / "broker.yaml", EVENTING / "triggers.yaml")
            broker = LocalBroker.from_manifests(
                manifests,
                functions,
                time_scale=self.options.speed,
                dead_letter_path=workdir / "dead-letters.jsonl",
                event_log_path=workdir / "events.jsonl",
                port=broker_port,
                activator=self.scaler,
            )
            stack.enter_context(broker)
            self.broker = broker
            self.say(f"broker      {broker.url}, routing by eventing/triggers.yaml")
            sources = [
                d
                for d in load_manifests(EVENTING / "apiserversource.yaml")
                if d.get("kind") == "ApiServerSource"
            ]
            apiserver = ApiServerSourcePlayer(api, sources[0], broker.url, watch_timeout=2)
            stack.enter_context(apiserver)
            # The cluster pings every minute; locally a tick every half interval keeps the
            # iterations on time however much time is compressed.
            ping_period = max(0.5, self.interval / 2)
            # The clock's PingSource is played while it exists: start creates it, the sweep
            # deletes it once no experiment is live (functions/core/clock.py).
            ping = LivePingSources(
                api,
                Settings().system_namespace,
                broker.url,
                time_scale=60.0 / ping_period,
            )
            stack.enter_context(ping)
            self.pings = ping
            self.say(
                f"sources     ApiServerSource (Experiments), and the PingSource every "
                f"{ping_period:g} s while start keeps it"
            )
            if servers:
                for target in self.sample.targets:
                    self._traffic(stack, api, servers, target)
            if len(self.sample.planned) > 1:
                return self._watch_many(api)
            code = self._watch(api, stack)
            self._report_cold_starts()
            return code
        raise AssertionError("unreachable")

    def _traffic(
        self,
        stack: contextlib.ExitStack,
        api: client.ApiClient,
        servers: dict[str, Any],
        target: TargetSim,
    ) -> None:
        from local.loadgen import TrafficGenerator  # noqa: PLC0415

        many = len(self.sample.targets) > 1
        index = self.sample.targets.index(target)
        routes = {v.key: servers[v.key].model_url for v in target.versions}
        generator = TrafficGenerator(
            api,
            target.router,
            routes,
            target.rate_rps,
            np.random.default_rng(
                [self.options.seed + 1, index] if many else self.options.seed + 1
            ),
            # Many targets share two cores: fewer senders each, and the split re-read once
            # a second rather than four times.
            workers=4 if many else 32,
            refresh_s=1.0 if many else 0.25,
        )
        stack.enter_context(generator)
        if target.preview and target.preview_rps > 0:
            self._preview(stack, api, target, routes, index)
        per_interval = target.rate_rps * self.interval
        if many and index > 0:
            return
        what = f"each of the {len(self.sample.targets)} targets" if many else str(target.router)
        self.say(
            f"traffic     {generator.rate} to {what}, kept at this rate under "
            f"--speed, so each {self.interval} s interval carries ~{per_interval:g} requests"
        )

    def _preview(
        self,
        stack: contextlib.ExitStack,
        api: client.ApiClient,
        target: TargetSim,
        routes: dict[str, str],
        index: int,
    ) -> None:
        """Preview traffic to the `latest` tag URL KServe publishes in status, as a user's
        validation job would send it; said plainly when the InferenceService cannot have one."""
        router = target.router
        got = client.CustomObjectsApi(api).get_namespaced_custom_object(
            router.group, router.version, router.namespace, router.plural, router.name
        )
        obj: dict[str, Any] = got if isinstance(got, dict) else {}
        if router.kind == "InferenceService" and not kserve.tag_routing(obj):
            self.say(
                f"preview     NONE: {router.namespace}/{router.name} has no `latest` tag URL "
                f'(KServe tags it only under annotation {kserve.TAG_ROUTING_ANNOTATION}: "true"),'
                " so the candidate gets no preview traffic"
            )
            return
        many = len(self.sample.targets) > 1
        preview = Preview(
            api,
            router,
            routes,
            target.preview_rps,
            np.random.default_rng(
                [self.options.seed + 2, index] if many else self.options.seed + 2
            ),
        )
        stack.enter_context(preview)
        self.say(
            f"preview     {target.preview_rps:g} req/s to the `latest` tag URL in "
            f"{router.name}'s status ({kserve.tag_url(obj, kserve.LATEST_TAG)}), once published"
        )

    def _watch(self, api: client.ApiClient, stack: contextlib.ExitStack) -> int:
        objects = client.CustomObjectsApi(api)
        exp = self.experiment()
        ns, name = exp["metadata"]["namespace"], exp["metadata"]["name"]
        objects.create_namespaced_custom_object(*_EXPERIMENTS[:2], ns, _EXPERIMENTS[2], exp)
        self.say(f"experiment  {ns}/{name} created\n")
        view = LiveView(self.out)
        total = self.sample.duration.total_iterations
        timeout = self.options.timeout_s or (total * self.interval * 3 + 120)
        deadline = time.monotonic() + timeout
        last_version = None
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                got = objects.get_namespaced_custom_object(
                    *_EXPERIMENTS[:2], ns, _EXPERIMENTS[2], name
                )
                obj = got if isinstance(got, dict) else {}
            except ApiException as e:
                raise RunError(f"experiment {ns}/{name} disappeared: {e.status}") from None
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version != last_version:
                self.history.append({"at": time.time(), "status": obj.get("status") or {}})
                last_version = version
            status = obj.get("status") or {}
            view.update(obj, self._fraction(status))
            if status.get("stage") in st.TERMINAL:
                break
            time.sleep(0.25)
        else:
            self.say(f"\ntimed out after {timeout:g} s")
        self.final = obj
        self._save(objects)
        self.say("\n" + verdict(obj))
        self.say(promise(obj, self.sample.expect))
        return 0 if (obj.get("status") or {}).get("stage") == st.Stage.COMPLETED else 1

    def _watch_many(self, api: client.ApiClient) -> int:
        """Create every experiment, follow them all (one line per ending), report each."""
        objects = client.CustomObjectsApi(api)
        planned = {p.key: p for p in self.sample.planned}
        began = time.monotonic()
        for p in self.sample.planned:
            exp = self.experiment(p)
            ns = exp["metadata"]["namespace"]
            objects.create_namespaced_custom_object(*_EXPERIMENTS[:2], ns, _EXPERIMENTS[2], exp)
        per_target: dict[str, float] = {}
        for p in self.sample.planned:  # queued experiments run one after another
            span = p.duration.total_iterations * self._interval_of(p)
            per_target[p.target] = per_target.get(p.target, 0.0) + span
        # Starting and finishing take longer with many experiments on two cores.
        timeout = self.options.timeout_s or (max(per_target.values()) * 3 + 120 + 5 * len(planned))
        self.say(
            f"experiments {len(planned)} created on {len(per_target)} targets; "
            f"giving up after {timeout:g} s\n"
        )
        view = ManyView(self.out, {k: p.expect for k, p in planned.items()}, began)
        deadline = began + timeout
        while time.monotonic() < deadline:
            try:
                listed = objects.list_cluster_custom_object(*_EXPERIMENTS)
            except ApiException as e:
                raise RunError(f"could not list the experiments: {e.status}") from None
            items = listed.get("items") if isinstance(listed, dict) else None
            for obj in items or []:
                meta = obj.get("metadata") or {}
                key = f"{meta.get('namespace')}/{meta.get('name')}"
                if key in planned:
                    self.finals[key] = obj
            view.update(self.finals)
            if len(self.finals) == len(planned) and all(
                (o.get("status") or {}).get("stage") in st.TERMINAL for o in self.finals.values()
            ):
                break
            time.sleep(0.5)
        else:
            self.say(f"\ntimed out after {timeout:g} s")
        wall = time.monotonic() - began
        self._save_many()
        self.say("\n" + view.report(self.finals))
        delivered = self._deliveries()
        self.say(
            f"wall time   {wall:.0f} s for {len(planned)} experiments; {delivered} deliveries "
            f"({delivered / max(wall, 1e-9):.1f}/s)"
        )
        self._report_cold_starts()
        return 0 if view.all_kept(self.finals) else 1

    def _deliveries(self) -> int:
        if self.broker is None:
            return 0
        return sum(
            1
            for r in self.broker.records()
            if r.get("record") == "delivery" and r.get("outcome") == "delivered"
        )

    def _save_many(self) -> None:
        if self.options.output is None:
            return
        (self.options.output / "experiments.json").write_text(
            json.dumps(list(self.finals.values()), indent=2) + "\n"
        )

    def _fraction(self, status: dict[str, Any]) -> float | None:
        last = parse_time(status.get("lastIterationTime"))
        if last is None:
            return None
        return min(1.0, (time.time() - last.timestamp()) / self.interval)

    def _workdir(self, stack: contextlib.ExitStack) -> Path:
        if self.options.output is not None:
            self.options.output.mkdir(parents=True, exist_ok=True)
            return self.options.output
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="arbiter-run-")))

    def _save(self, objects: client.CustomObjectsApi) -> None:
        if self.options.output is None:
            return
        # The traffic objects as the experiment left them: what a promotion wrote is part
        # of what a sample promises (a KFServing canary copied over the default).
        targets = []
        for target in self.sample.targets:
            r = target.router
            with contextlib.suppress(ApiException, OSError):
                targets.append(
                    objects.get_namespaced_custom_object(
                        r.group, r.version, r.namespace, r.plural, r.name
                    )
                )
        (self.options.output / "targets.json").write_text(json.dumps(targets, indent=2) + "\n")
        (self.options.output / "status-history.json").write_text(
            json.dumps(self.history, indent=2) + "\n"
        )
        (self.options.output / "experiment.json").write_text(
            json.dumps(self.final, indent=2) + "\n"
        )


class Preview:
    """Requests at a steady rate to the URL of the InferenceService's `latest` tag, whatever
    the split, so a BlueGreen candidate at 0% can be judged.

    The URL is read from `status.components.predictor.traffic` (re-read every `refresh_s`:
    the tag follows the latest ready revision); the local ingress resolves it to the version
    serving the tag's revision and sends with the tag's Host, as Knative's would. Nothing is
    sent while the status has no `latest` URL; `sent` and `resolved` tell what happened.
    """

    def __init__(
        self,
        api: client.ApiClient,
        router: ObjectRef,
        routes: Mapping[str, str],
        rate_rps: float,
        rng: np.random.Generator,
        refresh_s: float = 0.5,
    ) -> None:
        self._objects = client.CustomObjectsApi(api)
        self._router = router
        self._routes = dict(routes)
        self._rate = rate_rps
        self._rng = rng
        self._refresh_s = refresh_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="preview", daemon=True)
        self._session = requests.Session()
        self._body = json.dumps({"instances": [[6.8, 2.8, 4.8, 1.4]]})
        self.resolved: tuple[str, str] | None = None  # (tag URL, revision)
        self.sent = 0

    def __enter__(self) -> Preview:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._session.close()

    def resolve(self) -> tuple[str, str] | None:
        """The `latest` tag URL and its revision, as the status says now."""
        r = self._router
        with contextlib.suppress(ApiException, requests.RequestException, OSError):
            obj = self._objects.get_namespaced_custom_object(
                r.group, r.version, r.namespace, r.plural, r.name
            )
            self.resolved = kserve.latest_url(obj if isinstance(obj, dict) else {})
        return self.resolved

    def _loop(self) -> None:
        next_read = 0.0
        while not self._stop.wait(float(self._rng.exponential(1 / self._rate))):
            if time.monotonic() >= next_read:
                self.resolve()
                next_read = time.monotonic() + self._refresh_s
            if self.resolved is None or self.resolved[1] not in self._routes:
                continue
            url, revision = self.resolved
            host = url.split("://", 1)[-1]
            with contextlib.suppress(requests.RequestException):
                self._session.post(
                    f"{self._routes[revision]}:predict",
                    data=self._body,
                    headers={"Content-Type": "application/json", "Host": host},
                    timeout=5,
                )
                self.sent += 1


def kustomization_files(folder: Path) -> list[Path]:
    """The manifest files `kubectl apply -k folder` applies: the kustomization's resources,
    following listed sub-folders into their own kustomizations."""
    listed = yaml.safe_load((folder / "kustomization.yaml").read_text()) or {}
    files: list[Path] = []
    for entry in listed.get("resources") or []:
        path = folder / str(entry)
        files.extend(kustomization_files(path) if path.is_dir() else [path])
    return files


def prometheus_config(targets: list[ScrapeTarget], knative: str) -> dict[str, Any]:
    """The local Prometheus's configuration: the scrape jobs of config/prometheus for the
    generation's queue-proxy and for the KServe model server, as shipped, scraping every
    second. Only their service discovery changes: each job is given every target as a
    static one carrying its pod's discovery labels, and the job's own rules keep its
    container's port and relabel the revision and namespace onto the series."""
    jobs = []
    for folder in (f"knative-{generation(knative).name}", "kserve-modelserver"):
        shipped = yaml.safe_load((PROMETHEUS / folder / "prometheus.yml").read_text())
        for job in shipped["scrape_configs"]:
            local = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
            local["static_configs"] = [
                {"targets": [t.address], "labels": {**t.meta, "__metrics_path__": t.path}}
                for t in targets
            ]
            jobs.append(local)
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": jobs,
    }


def metric_library(knative: str | None = None) -> list[Path]:
    """The Metric files `kubectl apply -k config/metrics` applies, with the queue-proxy
    library swapped for the one reading Knative `knative`'s (config/metrics/knative-<it>);
    None keeps the shipped default."""
    if knative is None:
        return kustomization_files(METRICS)
    chosen = f"knative-{generation(knative).name}"
    listed = yaml.safe_load((METRICS / "kustomization.yaml").read_text()) or {}
    files: list[Path] = []
    for entry in listed.get("resources") or []:
        name = chosen if str(entry).startswith("knative-") else str(entry)
        path = METRICS / name
        files.extend(kustomization_files(path) if path.is_dir() else [path])
    return files


def seed_metric_library(server: Any, namespaces: set[str], knative: str | None = None) -> None:
    """Store the Metric library for Knative `knative` (`metric_library`; by default the
    shipped config/metrics, sub-libraries included) in each namespace,
    as `kubectl apply -k config/metrics` would for arbiter-system."""
    for path in metric_library(knative):
        doc = yaml.safe_load(path.read_text())
        if doc.get("kind") != METRIC.kind:
            continue
        for ns in sorted(namespaces):
            body = {**doc, "metadata": {**doc["metadata"], "namespace": ns}}
            server.seed(METRIC.group, METRIC.version, METRIC.plural, ns, body)
