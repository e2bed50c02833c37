"""Arbiter on a real cluster: install it, run a canary that should be promoted and one that
should be rolled back against real InferenceServices, and check outcome and traffic.

Needs what docs/cluster.md#end-to-end-check-on-your-cluster lists: KUBECONFIG naming a
cluster with Knative Serving and Eventing, KServe (Serverless mode) and a Prometheus scraping
the queue-proxy as config/prometheus/ says; `kubectl`; the functions' image pushed where the
cluster pulls it (ARBITER_IMAGE, else the `images:` entry of config/kustomization.yaml);
and a way to reach the InferenceService (E2E_INGRESS: the ingress gateway's URL; requests
carry the service's host name). E2E_METRICS picks the Metric library (default knative-1.19).
It changes the cluster: it installs Arbiter and creates the namespace arbiter-demo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from cli import main as arbiter

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "arbiter-demo"
ISVC = "sklearn-iris"
TIMEOUT = "30m"
IRIS = {"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}


def kubectl(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["kubectl", *args], input=stdin, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr.strip()}"
    return result.stdout


def with_image(rendered: str) -> str:
    image = os.environ.get("ARBITER_IMAGE")
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        if image and doc.get("kind") == "Service" and "serving.knative.dev" in doc["apiVersion"]:
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container["image"] = image
    return yaml.safe_dump_all(docs)


@pytest.fixture(scope="module")
def installed() -> None:
    assert os.environ.get("KUBECONFIG"), "set KUBECONFIG (make e2e says so before pytest runs)"
    assert shutil.which("kubectl"), "kubectl is not on PATH"
    library = os.environ.get("E2E_METRICS", "knative-1.19")
    kubectl("apply", "-f", "-", stdin=with_image(kubectl("kustomize", str(ROOT / "config"))))
    kubectl("apply", "-k", str(ROOT / "config" / "metrics" / library))
    kubectl("apply", "-k", str(ROOT / "eventing"))
    kubectl(
        "wait", "--for=condition=Ready", "ksvc", "--all", "-n", "arbiter-system", "--timeout=5m"
    )


@pytest.fixture
def baseline(installed: None) -> Iterator[None]:
    kubectl("apply", "-f", str(ROOT / "samples/kserve/namespace.yaml"))
    kubectl("delete", "isvc", ISVC, "-n", NAMESPACE, "--ignore-not-found", "--wait")
    kubectl("apply", "-f", str(ROOT / "samples/kserve/sklearn-iris.yaml"))
    kubectl("wait", "--for=condition=Ready", f"isvc/{ISVC}", "-n", NAMESPACE, "--timeout=10m")
    yield
    kubectl("delete", "exp", "--all", "-n", NAMESPACE, "--wait")


@pytest.fixture
def load(baseline: None) -> Iterator[None]:
    """Steady requests to the InferenceService through the ingress, for the metrics."""
    url = kubectl("get", "isvc", ISVC, "-n", NAMESPACE, "-o", "jsonpath={.status.url}")
    ingress = os.environ.get("E2E_INGRESS", url)
    host = urlsplit(url).netloc
    stop = threading.Event()

    def send() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    session.post(
                        f"{ingress.rstrip('/')}/v1/models/{ISVC}:predict",
                        json=IRIS,
                        headers={"Host": host},
                        timeout=10,
                    )
                except requests.RequestException:
                    time.sleep(0.5)
                time.sleep(0.05)

    threads = [threading.Thread(target=send, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    yield
    stop.set()
    for t in threads:
        t.join(timeout=15)


def experiment(name: str, **objective: Any) -> str:
    doc = yaml.safe_load((ROOT / "samples/experiments/canary-progressive.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["duration"] = {"intervalSeconds": 60, "iterationsPerLoop": 15}
    if objective:
        doc["spec"]["criteria"]["objectives"] = [objective]
    return yaml.safe_dump(doc)


def canary_percent() -> int:
    out = kubectl(
        "get",
        "isvc",
        ISVC,
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.spec.predictor.canaryTrafficPercent}",
    )
    return int(out or 100)


def test_a_good_canary_is_promoted(load: None) -> None:
    kubectl("apply", "-f", str(ROOT / "samples/kserve/sklearn-iris-canary.yaml"))
    kubectl("apply", "-f", "-", stdin=experiment("e2e-good"))
    code = arbiter(
        ["wait", "e2e-good", "-n", NAMESPACE, "--for", "outcome=Promoted", "--timeout", TIMEOUT]
    )
    assert code == 0, "the same model as its baseline was not promoted"
    assert canary_percent() == 100


def test_a_candidate_breaking_its_objective_is_rolled_back(load: None) -> None:
    kubectl("apply", "-f", str(ROOT / "samples/kserve/sklearn-iris-canary.yaml"))
    # No real model answers within a microsecond: the candidate must fail this objective.
    impossible = {"metric": "arbiter-system/mean-latency", "upperLimit": "0.001"}
    kubectl("apply", "-f", "-", stdin=experiment("e2e-bad", **impossible))
    code = arbiter(
        ["wait", "e2e-bad", "-n", NAMESPACE, "--for", "outcome=RolledBack", "--timeout", TIMEOUT]
    )
    assert code == 0, "a candidate failing its objective was not rolled back"
    assert canary_percent() == 0
