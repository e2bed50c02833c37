"""Kubernetes Events on the Experiment (functions.adapters.kubeevents) and the alert sinks'
adapters (functions.adapters.alerts), against the emulated API server and a tiny HTTP server.

The emulator refuses an events.k8s.io/v1 Event as the API server does
(kubernetes/kubernetes pkg/apis/core/validation/events.go, `ValidateEventCreate`, at
04791b4906602ffda5ccf9bc4c84d3329f1d7080), so the adapter is checked against the real rule;
the body is also read by the official client's model (kubernetes-client/python 37,
kubernetes/client/models/events_v1_event.py), field names and types included.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from pytest_httpserver import HTTPServer

from functions.adapters.alerts import HttpAlertSink, KubeAddressables
from functions.adapters.kubeevents import (
    KubeEventRecorder,
    event_body,
    event_name,
    micro_time,
)
from functions.adapters.kubernetes import KubeApi
from functions.core.errors import NotFoundError, PermanentError, TransientError
from functions.core.events import CONCLUDED, ExperimentRef, make_event
from functions.core.ports import Occurrence
from functions.core.resources import KNATIVE_BROKER
from local.kubeapi import KubeApiServer, event_problems

pytest_plugins = ["tests.support.kube"]

NS = "team-a"
AT = datetime(2026, 1, 1, 0, 1, 2, 345678, tzinfo=UTC)
EXPERIMENT = {
    "apiVersion": "arbiter.dev/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": "exp", "namespace": NS, "uid": "uid-1", "resourceVersion": "7"},
}
MOVED = Occurrence("TrafficMoved", "SetSplit", "v1 80 → 60, v2 20 → 40", "2:{...}")
EVENTS = ("events.k8s.io", "v1", "events")


def listed(api: client.ApiClient) -> list[Any]:
    """`kubectl get events -n team-a`, through the official client."""
    return list(client.EventsV1Api(api).list_namespaced_event(NS).items)


def test_an_event_is_created_with_everything_the_api_server_requires(
    kube: KubeApiServer, kube_api: client.ApiClient
) -> None:
    KubeEventRecorder(kube_api, "arbiter.dev/assess", "arbiter-assess-00001-pod").record(
        EXPERIMENT, MOVED, AT
    )
    (event,) = listed(kube_api)
    assert (event.reason, event.action, event.type) == ("TrafficMoved", "SetSplit", "Normal")
    assert event.note == "v1 80 → 60, v2 20 → 40"
    assert event.reporting_controller == "arbiter.dev/assess"
    assert event.reporting_instance == "arbiter-assess-00001-pod"
    assert event.event_time == AT
    regarding = event.regarding
    assert (regarding.kind, regarding.name, regarding.namespace, regarding.uid) == (
        "Experiment",
        "exp",
        NS,
        "uid-1",
    )
    assert regarding.api_version == "arbiter.dev/v1alpha1"
    assert regarding.resource_version == "7"
    assert event.metadata.name == event_name(EXPERIMENT, MOVED)
    assert re.fullmatch(r"exp\.[0-9a-f]{16}", event.metadata.name)


def test_the_same_occurrence_recorded_twice_is_one_event(
    kube: KubeApiServer, kube_api: client.ApiClient
) -> None:
    recorder = KubeEventRecorder(KubeApi.of(kube_api), "arbiter.dev/assess", "pod")
    recorder.record(EXPERIMENT, MOVED, AT)
    recorder.record(EXPERIMENT, MOVED, AT.replace(second=9))  # a redelivered write
    recorder.record(EXPERIMENT, Occurrence("TrafficMoved", "SetSplit", "x", "3:{...}"), AT)
    assert len(listed(kube_api)) == 2


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("eventTime", None, "eventTime: Required value"),
        ("reportingController", None, "reportingController: Required value"),
        ("reportingController", "Arbiter Start", "reportingController: Invalid value"),
        ("reportingInstance", None, "reportingInstance: Required value"),
        ("action", None, "action: Required value"),
        ("reason", None, "reason: Required value"),
        ("reason", "R" * 129, "reason: Invalid value: can have at most 128"),
        ("type", "Info", "type: Invalid value"),
        ("note", "é" * 513, "note: Invalid value: can have at most 1024"),
    ],
)
def test_the_emulator_refuses_an_event_the_api_server_refuses(
    kube: KubeApiServer, field: str, value: Any, problem: str
) -> None:
    body = event_body(EXPERIMENT, MOVED, AT, "arbiter.dev/iterate", "pod")
    assert event_problems(body) == []
    body[field] = value
    with pytest.raises(PermanentError, match=re.escape(problem)) as refused:
        KubeApi(kube.url).create_namespaced_event(NS, body, what="Event")
    assert "422" in str(refused.value)


def test_what_the_adapter_sends_keeps_to_the_limits_and_reads_as_the_official_model() -> None:
    long = Occurrence("R" * 200, "A" * 200, "é" * 2000, "k", warning=True)
    body = event_body(EXPERIMENT, long, AT, "arbiter.dev/finish", "p" * 300)
    assert event_problems(body) == []
    assert len(body["note"].encode()) <= 1024 and body["note"].endswith("…")
    assert body["type"] == "Warning"
    assert micro_time(AT) == "2026-01-01T00:01:02.345678Z"
    model = client.EventsV1Event.model_validate(body)
    assert model.event_time == AT and model.regarding is not None
    required = {n for n, f in client.EventsV1Event.model_fields.items() if f.is_required()}
    assert required == {"event_time"}


def test_api_server_errors_are_transient_or_permanent_and_a_conflict_is_done(
    httpserver: HTTPServer,
) -> None:
    recorder = KubeEventRecorder(KubeApi(httpserver.url_for("/")), "arbiter.dev/start", "pod")
    path = f"/apis/events.k8s.io/v1/namespaces/{NS}/events"
    for code, raised in ((503, TransientError), (403, PermanentError), (409, None)):
        httpserver.clear()
        httpserver.expect_request(path, method="POST").respond_with_data(
            json.dumps({"kind": "Status", "message": f"m{code}"}), status=code
        )
        if raised is None:
            recorder.record(EXPERIMENT, MOVED, AT)  # AlreadyExists: recorded before
        else:
            with pytest.raises(raised, match=f"m{code}"):
                recorder.record(EXPERIMENT, MOVED, AT)


def test_an_addressable_resolves_to_its_status_address_url(
    kube: KubeApiServer, kube_api: client.ApiClient
) -> None:
    addresses = KubeAddressables(kube_api)
    ref = KNATIVE_BROKER.ref(NS, "alerts")
    with pytest.raises(NotFoundError):
        addresses.url(ref)
    kube.seed("eventing.knative.dev", "v1", "brokers", NS, {"metadata": {"name": "alerts"}})
    assert addresses.url(ref) is None
    url = "http://broker-ingress.knative-eventing.svc.cluster.local/team-a/alerts"
    kube.seed(
        "eventing.knative.dev",
        "v1",
        "brokers",
        NS,
        {"metadata": {"name": "alerts"}, "status": {"address": {"url": url}}},
    )
    assert addresses.url(ref) == url


def test_an_alert_is_a_binary_cloudevent_without_the_brokers_credentials(
    httpserver: HTTPServer,
) -> None:
    httpserver.expect_request("/hook", method="POST").respond_with_data("", status=202)
    event = make_event(CONCLUDED, ExperimentRef(NS, "exp", "uid-1"), 3, {"outcome": "x"})
    HttpAlertSink().send(httpserver.url_for("/hook"), event)
    ((request, _),) = httpserver.log
    assert request.headers["ce-type"] == CONCLUDED
    assert "Authorization" not in request.headers
    httpserver.clear()
    httpserver.expect_request("/hook", method="POST").respond_with_data("", status=500)
    with pytest.raises(TransientError, match="500"):
        HttpAlertSink().send(httpserver.url_for("/hook"), event)


def test_the_emulator_serves_events_as_a_namespaced_kind(kube: KubeApiServer) -> None:
    assert kube.get(*EVENTS, NS, "nothing") is None
