"""The Slack recipe (samples/recipes/slack-alerts.yaml): its adapter script, run as the
Knative Service runs it (python -c, PORT and SLACK_WEBHOOK_URL from the environment),
turns the notification Arbiter sends into one Slack incoming-webhook message."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from pytest_httpserver import HTTPServer

from functions.adapters.alerts import HttpAlertSink
from functions.core import notify
from functions.core.errors import TransientError
from functions.core.events import ExperimentRef
from functions.core.status import ConditionType, Outcome, Stage, Status
from local.harness import free_port
from tests.support.status import T0

ROOT = Path(__file__).resolve().parents[2]


def adapter_container() -> dict[str, object]:
    docs = list(yaml.safe_load_all((ROOT / "samples/recipes/slack-alerts.yaml").read_text()))
    (service,) = [d for d in docs if d["kind"] == "Service"]
    (container,) = service["spec"]["template"]["spec"]["containers"]
    return dict(container)


@pytest.fixture
def adapter(httpserver: HTTPServer) -> Iterator[str]:
    container = adapter_container()
    assert container["command"] == ["python", "-c"]
    (script,) = container["args"]  # type: ignore[misc]
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "SLACK_WEBHOOK_URL": httpserver.url_for("/services/T0/B0/x"),
    }
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 10
    while True:
        try:
            requests.get(url, timeout=1)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "the adapter did not start"
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_a_finished_experiment_becomes_one_slack_message(
    adapter: str, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/services/T0/B0/x", method="POST").respond_with_data("ok")
    status = Status(
        stage=Stage.COMPLETED,
        outcome=Outcome.PROMOTED,
        message="candidate v2 satisfies all objectives",
        version_recommended_for_promotion="v2",
        completed_iterations=4,
    ).with_condition(ConditionType.COMPLETED, True, "winner-conclusive", "", T0)
    ref = ExperimentRef("demo", "iris", "uid-1")
    event = notify.notification(ref, status, "finished", "finish")
    HttpAlertSink().send(adapter, event)
    ((request, _),) = [(r, s) for r, s in httpserver.log if r.path == "/services/T0/B0/x"]
    assert request.get_json() == {
        "text": "Experiment demo/iris finished: Promoted | version v2 | reason winner-conclusive"
        " | candidate v2 satisfies all objectives"
    }


def test_a_slack_outage_is_answered_5xx_so_the_broker_retries(adapter: str) -> None:
    # Nothing expects the webhook's request: pytest-httpserver answers 500.
    status = Status(stage=Stage.FAILED, outcome=Outcome.ABORTED)
    event = notify.notification(ExperimentRef("demo", "iris", "uid-1"), status, "failed", "iterate")
    with pytest.raises(TransientError, match="502"):
        HttpAlertSink().send(adapter, event)
