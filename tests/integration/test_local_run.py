"""`arbiter run`: every local sample, end to end and time-compressed, keeps its promise.

Each run is the real thing as a subprocess: the API emulator, simulated versions,
Prometheus, four functions-framework processes, the broker and its sources, traffic.
Samples run two at a time, the next as soon as one ends (tests/support/local_runs.py), to
keep the suite short on two cores.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from local.controllers import TrafficControllers
from local.harness import seed_metric_library
from local.kubeapi import KubeApiServer
from local.sample import DEFAULT_KNATIVE, load
from tests.support.local_runs import DIRECT, ROOT, SAMPLES, SPEED, Result
from tests.support.prometheus import OpenMetrics, PrometheusTSDB

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]

ARBITER = Path(sys.executable).with_name("arbiter")
# The Metric libraries that measure a sample besides its generation's queue-proxy library
# (knative-<generation>): the KFServing sample names the kfserving-* Metrics, the bad-latency
# one judges the model server's own histogram (kserve-modelserver).
LIBRARY = {
    "canary-kfserving": ("kfserving-v1alpha2",),
    "canary-bad-latency": ("kserve-modelserver",),
}


def start(sample: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(ARBITER), "run", str(sample), "--speed", SPEED, "--output", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def runs(local_runs: dict[str, Result]) -> dict[str, Result]:
    """Every sample's run (and DIRECT's), from the session's queue of local runs."""
    return local_runs


def test_there_are_the_samples_the_issue_names() -> None:
    assert {p.stem for p in SAMPLES} >= {
        "canary-good",
        "canary-bad-errors",
        "canary-bad-latency",
        "ab-reward",
        "abn-4-versions",
        "bluegreen",
        "fixed-split",
        "conformance",
        "canary-httproute",
        "canary-kfserving",
        "canary-knative",
    }


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_each_sample_keeps_its_promise(
    runs: dict[str, tuple[int, str, Path, float]], sample: Path
) -> None:
    code, text, out, seconds = runs[sample.stem]
    assert code == 0, text
    assert "promise:    kept" in text, text
    assert seconds < 240, f"{sample.stem} took {seconds:.0f} s at --speed {SPEED}"
    final = json.loads((out / "experiment.json").read_text())
    loaded = load(sample)
    assert final["status"]["outcome"] == loaded.expect["outcome"]
    # The default generation's queue-proxy unless the sample names its own, measured by
    # that generation's library (the other generations: test_local_generations.py).
    knative = loaded.knative or DEFAULT_KNATIVE
    assert f"behind a Knative {knative} queue-proxy" in text
    libraries = LIBRARY.get(sample.stem, (f"knative-{knative}",))
    assert set(libraries) <= set(final["status"]["metricsLibrary"].split(", "))
    # what it shows: a table row per iteration and the verdict
    assert "versions: v1=" in text and "\noutcome:" in text
    # --output keeps the event log and the status history
    history = json.loads((out / "status-history.json").read_text())
    stages = [h["status"].get("stage") for h in history]
    assert stages[-1] == "Completed" and "Running" in stages
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    types = {e["event"]["type"] for e in events if e.get("record") == "accepted"}
    assert {"dev.arbiter.experiment.started", "dev.arbiter.experiment.finished"} <= types


def test_traffic_moves_the_way_each_pattern_says(
    runs: dict[str, tuple[int, str, Path, float]],
) -> None:
    def splits(name: str) -> list[list[int]]:
        history = json.loads((runs[name][2] / "status-history.json").read_text())
        seen: list[list[int]] = []
        for h in history:
            split = [w["value"] for w in h["status"].get("currentWeightDistribution") or []]
            if split and (not seen or seen[-1] != split):
                seen.append(split)
        return seen

    fixed = splits("fixed-split")
    assert fixed[0] == [70, 30] and all(s == [70, 30] for s in fixed[:-1]), fixed
    blue_green = splits("bluegreen")
    assert blue_green == [[100, 0], [0, 100]], blue_green
    ramp = splits("canary-good")
    assert ramp[0] == [90, 10] and ramp[-1] == [0, 100], ramp
    assert all(b[1] - a[1] <= 10 for a, b in itertools.pairwise(ramp[:-1])), ramp
    assert splits("canary-bad-errors")[-1] == [100, 0]
    # The HTTPRoute's weights, read back as shares once the Gateway stand-in accepted them.
    route = splits("canary-httproute")
    assert route[0] == [80, 20] and route[-1] == [0, 100], route
    assert all(b[1] - a[1] <= 20 for a, b in itertools.pairwise(route[:-1])), route
    # A Knative Service's spec.traffic by tag, read back from status.traffic.
    service = splits("canary-knative")
    assert service[0] == [80, 20] and service[-1] == [0, 100], service
    assert all(b[1] - a[1] <= 20 for a, b in itertools.pairwise(service[:-1])), service


def test_a_kfserving_promotion_copies_the_canary_over_the_default(
    runs: dict[str, tuple[int, str, Path, float]],
) -> None:
    """KFServing v1alpha2 under Knative 1.18's queue-proxy: the kfserving-* Metrics found
    both predictors' series by configuration_name (else nothing would have been measured and
    nothing promoted), and the promotion left the candidate's predictor, framework and all,
    as spec.default, with the canary gone; traffic follows the default's new revision."""
    out = runs["canary-kfserving"][2]
    final = json.loads((out / "experiment.json").read_text())["status"]
    assert final["outcome"] == "Promoted" and final["metricsLibrary"] == "kfserving-v1alpha2"
    metrics = final["analysis"]["aggregatedMetrics"]["data"]
    counted = metrics["arbiter-system/kfserving-request-count"]["data"]
    # ~300 requests an interval between them, over several intervals
    assert counted["default"]["value"] > 100 and counted["canary"]["value"] > 100, counted
    (isvc,) = json.loads((out / "targets.json").read_text())
    candidate = load(ROOT / "samples/local/canary-kfserving.yaml").objects[0]["spec"]["canary"]
    assert isvc["spec"]["default"] == candidate, isvc["spec"]
    assert list(isvc["spec"]["default"]["predictor"]) == ["xgboost"]
    assert "canary" not in isvc["spec"] and "canaryTrafficPercent" not in isvc["spec"]
    assert isvc["status"]["default"]["predictor"]["name"].endswith("-predictor-canary-00001")
    assert isvc["status"]["traffic"] == 100 and isvc["status"]["canaryTraffic"] == 0


def test_a_bad_sample_is_exit_code_2_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    sample = yaml.safe_load_all((ROOT / "samples/local/canary-good.yaml").read_text())
    docs = list(sample)
    docs[1]["spec"]["strategy"]["testingPattern"] = "Canary-ish"
    bad.write_text(yaml.safe_dump_all(docs))
    done = subprocess.run(
        [str(ARBITER), "run", str(bad)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 2
    assert str(bad) in done.stderr and "spec.strategy.testingPattern" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    missing = subprocess.run(
        [str(ARBITER), "run", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


@pytest.fixture
def cluster_and_prometheus(tmp_path: Path) -> Iterator[tuple[KubeApiServer, Path, str]]:
    """A stand-in 'cluster' (emulator + controller stand-ins) and a Prometheus with data."""
    om = OpenMetrics()
    t0 = int(time.time()) - 3600
    for revision in ("sklearn-iris-predictor-00001", "sklearn-iris-predictor-00002"):
        labels = {
            "namespace_name": "arbiter-demo",
            "revision_name": revision,
            "response_code_class": "2xx",
        }
        om.histogram(
            "revision_app_request_latencies",
            labels,
            ((t0 + 10 * i, {50.0: 10 * i, float("inf"): 10 * i}, 300.0 * i) for i in range(400)),
        )
    db = PrometheusTSDB(tmp_path / "prom")
    db.backfill(om.text())
    with KubeApiServer() as server, db:
        api = server.api_client()
        with TrafficControllers(api, period_s=0.05):
            docs = list(yaml.safe_load_all((ROOT / "samples/local/canary-good.yaml").read_text()))
            isvc = docs[0]
            isvc["status"]["components"]["predictor"]["latestReadyRevision"] = (
                "sklearn-iris-predictor-00002"
            )
            server.seed("serving.kserve.io", "v1beta1", "inferenceservices", "arbiter-demo", isvc)
            seed_metric_library(server, {"arbiter-system"})
            yield server, server.write_kubeconfig(tmp_path / "kubeconfig"), db.url
        api.close()


def test_against_a_cluster_it_uses_the_cluster_and_starts_no_simulation(
    cluster_and_prometheus: tuple[KubeApiServer, Path, str], tmp_path: Path
) -> None:
    server, kubeconfig, prometheus = cluster_and_prometheus
    done = subprocess.run(
        [
            str(ARBITER),
            "run",
            "samples/local/canary-good.yaml",
            "--kubeconfig",
            str(kubeconfig),
            "--prometheus-url",
            prometheus,
            "--speed",
            "10",
            "--timeout",
            "8",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    text = done.stdout
    assert "API emulator" not in text and "version     " not in text, text
    assert f"the cluster of {kubeconfig}" in text
    exp: dict[str, Any] | None = server.get(
        "arbiter.dev", "v1alpha1", "experiments", "arbiter-demo", "sklearn-iris-canary"
    )
    assert exp is not None, "the experiment was created in the cluster"
    assert exp["status"]["stage"] in ("Running", "Finishing", "Completed"), exp["status"]
    isvc = server.get(
        "serving.kserve.io", "v1beta1", "inferenceservices", "arbiter-demo", "sklearn-iris"
    )
    assert isvc is not None
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] > 0, "start set the first split"
    started = datetime.fromisoformat(exp["status"]["startTime"].replace("Z", "+00:00"))
    assert started <= datetime.now(UTC)


def test_without_prometheus_the_run_reads_the_versions_directly_and_says_so(
    runs: dict[str, tuple[int, str, Path, float]],
) -> None:
    code, text, _, _ = runs[DIRECT]
    assert code == 0, text
    assert "DirectMetricsSource" in text and "Prometheus at" not in text
    # canary-good names no generation: without Prometheus to relabel the OpenTelemetry
    # series, the versions play the one whose series carry the revision.
    assert "the versions play Knative 1.18's queue-proxy" in text
    assert "behind a Knative 1.18 queue-proxy" in text
    assert "promise:    kept" in text


def test_without_prometheus_an_opentelemetry_generation_named_is_refused(
    tmp_path: Path,
) -> None:
    sample = tmp_path / "canary-good-1.19.yaml"
    documents = list(yaml.safe_load_all((ROOT / "samples/local/canary-good.yaml").read_text()))
    for doc in documents:
        if doc.get("kind") == "LocalRun":
            doc["spec"]["knative"] = "1.19"
    sample.write_text(yaml.safe_dump_all(documents))
    proc = start(sample, tmp_path / "out", "--direct-metrics")
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, text
    assert "Knative 1.19's queue-proxy keeps the revision off its series" in text
    assert 'knative: "1.18"' in text and "Traceback" not in text
