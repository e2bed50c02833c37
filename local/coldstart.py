"""Cold start: each function's time from process start to its first answered real event.

Every function scales to zero, so the first event after a quiet spell pays for starting
Python, functions-framework and whatever the stage imports. `python -m local.coldstart`
(`make coldstart`) measures it beside a bare functions-framework function that does
nothing, in one run, interleaved round by round, so the machine's load touches all alike:

- bare     any event, answered by an empty function: the framework's own floor;
- start    an Experiment added (as ApiServerSource sends it): validates, sets the first split;
- iterate  `experiment.due`: reads every metric of both versions from a /metrics endpoint;
- assess   `experiment.measured` (the one iterate emitted): the full analysis, then promotes;
- finish   `experiment.concluded` (the one assess emitted): promotes and closes.

Each function is started as Knative starts it (functions-framework with FUNCTION_TARGET,
FUNCTION_SOURCE and K_SINK, as `arbiter run` does) against the API emulator, and the event
is posted until the process answers; the time counts from the spawn to the 2xx. A second
event of the same kind on another experiment, to the now warm process, gives the work the
stage does per event, so cold − warm is what starting costs. Every stage's follow-up event
is checked, so a stage that answers without doing its work fails the run.

The emulated KServe has converged by the time a patch is answered (the status follows the
spec at once): with a polling controller the stages would wait out its period and a
read-back poll, which is the controller's latency, not the function's start.

With `--size` it also installs the project's runtime dependencies (`pip install .`, what
the image installs) into a fresh virtualenv and reports their size on disk.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import kmock
import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

from functions.core import events
from functions.core.events import ExperimentRef
from local.controllers import kserve_status
from local.harness import ROOT, free_port, seed_metric_library
from local.kubeapi import KubeApiEmulator, KubeApiServer, register_resources
from local.lifecycle import stop_process

STAGES: Final = ("start", "iterate", "assess", "finish")
ISVC: Final = ("serving.kserve.io", "v1beta1", "inferenceservices")
EXPERIMENTS: Final = ("arbiter.dev", "v1alpha1", "experiments")
REVISIONS: Final = ("iris-predictor-00001", "iris-predictor-00002")
BUCKETS: Final = ("50", "100", "250", "500", "+Inf")
_TIMEOUT: Final = 60.0

BARE: Final = '''"""A function that answers every event and does nothing: the framework's floor."""

import functions_framework


@functions_framework.cloud_event
def bare(event):
    pass
'''


class ConvergedKServe(KubeApiEmulator):
    """The emulator with a KServe that has converged when a write is answered."""

    def _commit(
        self,
        key: tuple[kmock.resource, str | None, str],
        old: Any,
        new: Any,
        *,
        deleted: bool = False,
    ) -> dict[str, Any]:
        resource = key[0]
        if not deleted and (resource.group, resource.plural) == (ISVC[0], ISVC[2]):
            new = {**new, "status": kserve_status(new, now=0.0, ready_at=0.0)}
        return super()._commit(key, old, new, deleted=deleted)


def inference_service(namespace: str) -> dict[str, Any]:
    """A model whose candidate revision is deployed and Ready, still serving no traffic."""
    obj: dict[str, Any] = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "iris", "namespace": namespace},
        "spec": {
            "predictor": {
                "canaryTrafficPercent": 0,
                "sklearn": {"storageUri": "gs://kfserving-examples/models/sklearn/1.0/model-2"},
            }
        },
        "status": {
            "components": {
                "predictor": {
                    "latestRolledoutRevision": REVISIONS[0],
                    "latestCreatedRevision": REVISIONS[1],
                    "latestReadyRevision": REVISIONS[1],
                }
            }
        },
    }
    obj["status"] = kserve_status(obj, now=0.0, ready_at=0.0)
    return obj


def experiment(namespace: str) -> dict[str, Any]:
    """A canary of one iteration: the first analysis is the last, so assess concludes."""
    return {
        "apiVersion": "arbiter.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "canary", "namespace": namespace},
        "spec": {
            "target": f"{namespace}/iris",
            "strategy": {
                "testingPattern": "Canary",
                "deploymentPattern": "Progressive",
                "weights": {"maxCandidateWeight": 100, "maxCandidateWeightIncrement": 10},
            },
            "criteria": {
                "requestCount": "request-count",
                "objectives": [
                    {"metric": "error-rate", "upperLimit": "0.02"},
                    {"metric": "latency", "upperLimit": 250, "quantile": 0.95},
                ],
            },
            "duration": {"intervalSeconds": 10, "iterationsPerLoop": 1},
        },
    }


def exposition(namespaces: Sequence[str]) -> str:
    """Both versions' queue-proxy histograms in every namespace: plenty of fast requests and
    a few errors, so the one analysis is conclusive and promotes the candidate."""
    lines = ["# TYPE revision_app_request_latencies histogram"]
    for ns in namespaces:
        for revision in REVISIONS:
            for code, count in (("2xx", 20_000), ("5xx", 20)):
                labels = (
                    f'namespace_name="{ns}",revision_name="{revision}",response_code_class="{code}"'
                )
                cumulative = (count * 9 // 10, count, count, count, count)
                lines += [
                    f'revision_app_request_latencies_bucket{{{labels},le="{le}"}} {n}'
                    for le, n in zip(BUCKETS, cumulative, strict=True)
                ]
                lines.append(f"revision_app_request_latencies_count{{{labels}}} {count}")
                lines.append(f"revision_app_request_latencies_sum{{{labels}}} {count * 40}")
    return "\n".join(lines) + "\n"


@dataclass
class Outside:
    """What the functions talk to besides the API server: the broker's ingress (every event
    they emit is kept) and the versions' /metrics."""

    metrics: str
    received: list[CloudEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, event_type: str, namespace: str) -> CloudEvent:
        with self.lock:
            for e in self.received:
                attrs = e.get_attributes()
                if attrs["type"] == event_type and attrs.get(events.EXT_NAMESPACE) == namespace:
                    self.received.remove(e)
                    return e
        raise RuntimeError(f"no {event_type} was emitted for {namespace}")

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        outside = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(200, outside.metrics.encode(), "text/plain; version=0.0.4")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                event = from_http(dict(self.headers), body)
                with outside.lock:
                    outside.received.append(event)
                self._answer(202, b"", "text/plain")

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, name="outside", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()


def _post(session: requests.Session, url: str, event: CloudEvent) -> requests.Response:
    headers, body = to_binary(event)
    return session.post(url, headers=headers, data=body, timeout=_TIMEOUT)


@dataclass(frozen=True)
class Timing:
    cold: float  # seconds from spawn to the first answer
    cpu: float  # CPU seconds the function's processes used until then
    warm: float  # seconds the warm process took for the second event


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants (gunicorn's worker).

    Wall time on a shared machine is mostly waiting for a core; CPU time is the work a
    start costs, and varies far less with the neighbours' load.
    """
    # Fields after the command's closing parenthesis: the parent pid is the 2nd, utime and
    # stime the 12th and 13th (proc(5) numbers them 4, 14 and 15).
    stats: dict[int, list[str]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                stats[int(proc.name)] = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    total, pending = 0, [pid]
    while pending:
        parent = pending.pop()
        fields = stats.get(parent)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
            pending += [child for child, f in stats.items() if int(f[1]) == parent]
    return total / os.sysconf("SC_CLK_TCK")


def measure(
    target: str,
    source: Path,
    env: Mapping[str, str],
    first: CloudEvent,
    second: CloudEvent,
    log: Path,
) -> Timing:
    """Spawn the function, post `first` until it is answered (cold), then `second` (warm)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    process_env = {
        **env,
        "FUNCTION_TARGET": target,
        "FUNCTION_SOURCE": str(source),
        "FUNCTION_SIGNATURE_TYPE": "cloudevent",
        "PORT": str(port),
    }
    executable = Path(sys.executable).with_name("functions-framework")
    session = requests.Session()
    with log.open("a") as out:
        began = time.perf_counter()
        process = subprocess.Popen(
            [str(executable), "--host", "127.0.0.1", "--port", str(port)],
            env=process_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        while True:
            try:
                response = _post(session, url, first)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.perf_counter() - began > _TIMEOUT:
                    raise RuntimeError(f"{target} never answered; see {log}") from None
                time.sleep(0.002)
        cold = time.perf_counter() - began
        cpu = cpu_seconds(process.pid)
        _check(target, response, log)
        began = time.perf_counter()
        response = _post(session, url, second)
        warm = time.perf_counter() - began
        _check(target, response, log)
        return Timing(cold, cpu, warm)
    finally:
        session.close()
        stop_process(process, grace_s=10)


def _check(target: str, response: requests.Response, log: Path) -> None:
    if not 200 <= response.status_code < 300:
        raise RuntimeError(f"{target} answered {response.status_code}: {response.text}; see {log}")


def _ref(server: KubeApiServer, namespace: str) -> ExperimentRef:
    obj = server.get(*EXPERIMENTS, namespace, "canary")
    if obj is None:
        raise RuntimeError(f"experiment {namespace}/canary is gone")
    return ExperimentRef(namespace, "canary", str(obj["metadata"]["uid"]))


def run_round(
    server: KubeApiServer, outside: Outside, env: Mapping[str, str], workdir: Path, n: int
) -> dict[str, Timing]:
    """One round: bare, then the four stages carrying two fresh experiments (the first
    event of each process, then the warm one) from added to promoted."""
    cold_ns, warm_ns = f"coldstart-{n}-cold", f"coldstart-{n}-warm"
    # Only this round's series: iterate scrapes the whole page once per metric and version.
    outside.metrics = exposition([cold_ns, warm_ns])
    objs = {}
    for ns in (cold_ns, warm_ns):
        seed_metric_library(server, {ns})
        server.seed(*ISVC, ns, inference_service(ns))
        objs[ns] = server.seed(*EXPERIMENTS, ns, experiment(ns))
    ping = CloudEvent({"type": events.PING, "source": "coldstart"}, {})
    bare = workdir / "bare" / "main.py"
    out = {"bare": measure("bare", bare, env, ping, ping, workdir / "bare.log")}

    def source(stage: str) -> Path:
        return ROOT / "functions" / stage / "main.py"

    def added(ns: str) -> CloudEvent:
        meta = objs[ns]["metadata"]
        return CloudEvent(
            {
                "type": events.APISERVER_ADD,
                "source": "https://10.96.0.1:443",
                "subject": f"/apis/arbiter.dev/v1alpha1/namespaces/{ns}/experiments/{meta['name']}",
            },
            objs[ns],
        )

    def log(stage: str) -> Path:
        return workdir / f"{stage}.log"

    out["start"] = measure(
        "start", source("start"), env, added(cold_ns), added(warm_ns), log("start")
    )
    for ns in (cold_ns, warm_ns):
        outside.take(events.STARTED, ns)
    due = [events.make_event(events.DUE, _ref(server, ns), 1) for ns in (cold_ns, warm_ns)]
    out["iterate"] = measure("iterate", source("iterate"), env, due[0], due[1], log("iterate"))
    measured = [outside.take(events.MEASURED, ns) for ns in (cold_ns, warm_ns)]
    out["assess"] = measure(
        "assess", source("assess"), env, measured[0], measured[1], log("assess")
    )
    concluded = [outside.take(events.CONCLUDED, ns) for ns in (cold_ns, warm_ns)]
    for e in concluded:
        if (e.get_data() or {}).get("action") != "promote":
            raise RuntimeError(f"assess did not promote: {e.get_data()}")
    out["finish"] = measure(
        "finish", source("finish"), env, concluded[0], concluded[1], log("finish")
    )
    for ns in (cold_ns, warm_ns):
        finished = outside.take(events.FINISHED, ns).get_data() or {}
        if finished.get("outcome") != "Promoted":
            raise RuntimeError(f"finish did not promote in {ns}: {finished}")
    return out


EVENTS: Final = {
    "bare": "any (does nothing)",
    "start": "Experiment added",
    "iterate": "experiment.due",
    "assess": "experiment.measured",
    "finish": "experiment.concluded",
}


def report(rounds: list[dict[str, Timing]]) -> str:
    names = ("bare", *STAGES)
    bare = statistics.median(r["bare"].cold for r in rounds)
    bare_cpu = statistics.median(r["bare"].cpu for r in rounds)
    lines = [
        f"{'function':9} {'first event':21} {'cold s':>7} {'min-max':>11} {'x bare':>7}"
        f" {'cpu s':>6} {'x bare':>7} {'warm s':>7}",
    ]
    for name in names:
        cold = [r[name].cold for r in rounds]
        cpu = statistics.median(r[name].cpu for r in rounds)
        warm = statistics.median(r[name].warm for r in rounds)
        median = statistics.median(cold)
        lines.append(
            f"{name:9} {EVENTS[name]:21} {median:7.3f} {min(cold):5.2f}-{max(cold):<5.2f}"
            f" {median / bare:7.2f} {cpu:6.2f} {cpu / bare_cpu:7.2f} {warm:7.3f}"
        )
    return "\n".join(lines)


def installed_size(workdir: Path) -> str:
    """Install what the image installs (pyproject.toml, README.md, analytics/ and functions/,
    then `pip install .`) into a fresh virtualenv and say how much it takes on disk."""
    context = workdir / "image"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    for package in ("analytics", "functions"):
        shutil.copytree(
            ROOT / package, context / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    venv = workdir / "runtime-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    empty = _megabytes(site)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "."],
        check=True,
        cwd=context,
    )
    total = _megabytes(site)
    biggest = sorted(
        (
            (_megabytes(p), p.name)
            for p in site.iterdir()
            if p.is_dir() and not p.name.endswith("-info") and p.name not in ("pip", "__pycache__")
        ),
        reverse=True,
    )[:8]
    top = ", ".join(f"{name} {mb:.0f}" for mb, name in biggest)
    return (
        f"runtime dependencies installed: {total - empty:.0f} MB "
        f"(site-packages {total:.0f} MB, less the fresh virtualenv's {empty:.0f} MB of pip)\n"
        f"largest (MB): {top}"
    )


def _megabytes(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the functions' cold starts beside a bare functions-framework function."""
    parser = argparse.ArgumentParser(prog="python -m local.coldstart", description=main.__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds (median taken)")
    parser.add_argument(
        "--size", action="store_true", help="also install the runtime into a fresh virtualenv"
    )
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coldstart-")))
        (workdir / "bare").mkdir()
        (workdir / "bare" / "main.py").write_text(BARE)
        server = KubeApiServer()
        server.emulator = ConvergedKServe()
        register_resources(server.emulator)
        stack.enter_context(server)
        outside = Outside(metrics="")  # each round serves its own series
        url = stack.enter_context(outside.serve())
        env = {
            **os.environ,
            # As in a pod: no kubeconfig to read (a pod's service account is two small files).
            "KUBECONFIG": "",
            "ARBITER_KUBERNETES_URL": server.url,
            "K_SINK": url + "/",
            "ARBITER_METRICS_TARGETS": url + "/metrics",
            "ARBITER_READBACK_TIMEOUT_SECONDS": "10",
            "ARBITER_LOG_LEVEL": "WARNING",
        }
        # Round 0 warms the disk cache and writes the bytecode; it is not counted.
        run_round(server, outside, env, workdir, 0)
        rounds = []
        for n in range(1, args.rounds + 1):
            rounds.append(run_round(server, outside, env, workdir, n))
            seconds = {k: [round(v.cold, 3), round(v.cpu, 2)] for k, v in rounds[-1].items()}
            print(f"round {n} (cold s, cpu s): {json.dumps(seconds)}", flush=True)
        print()
        print(
            f"cold start: process start to first answered event, median of {args.rounds} rounds "
            f"({os.cpu_count()} cores)"
        )
        print(report(rounds))
        if args.size:
            print()
            print(installed_size(workdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
