"""The adapters' error mapping, with the real clients: what each failure becomes for a stage.

`functions.adapters.kubernetes` (its own REST calls; an official client's configuration
handed over with `KubeApi.of`) runs against the emulated API server for what it really
answers (404, 409 on a stale resourceVersion, 400/422 on a bad patch), against a tiny HTTP
server for what it cannot be made to answer (429, 5xx, a redirect, a timeout) and against a
closed port. `functions.adapters.sink.HttpEventSink` posts
to pytest-httpserver. The mapping decides retries: TransientError answers 503 (Knative
redelivers), PermanentError 422 (dead letter), so a wrong one loses events or loops.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from functions.adapters import kubernetes as kube_adapter
from functions.adapters import sink as sink_adapter
from functions.adapters.kubernetes import KubeApi, KubeExperimentStore, KubeObjects
from functions.adapters.sink import FileToken, HttpEventSink
from functions.core.backends import Patch
from functions.core.errors import (
    ConflictError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from functions.core.events import (
    EXT_ITERATION,
    EXT_NAME,
    EXT_NAMESPACE,
    EXT_UID,
    MEASURED,
    ExperimentRef,
    make_event,
)
from functions.core.resources import KSERVE, ObjectRef
from local.harness import free_port
from local.kubeapi import KubeApiServer

pytest_plugins = ["tests.support.kube"]

NS = "team-a"
EXPERIMENTS = ("arbiter.dev", "v1alpha1", "experiments")
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
ISVC_REF = ObjectRef(KSERVE, "InferenceService", NS, "iris")
REF = ExperimentRef(NS, "exp", "uid-1")


def experiment() -> dict[str, Any]:
    return {
        "apiVersion": "arbiter.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "exp", "namespace": NS},
        "spec": {"target": f"{NS}/iris"},
    }


def isvc() -> dict[str, Any]:
    return {
        "apiVersion": KSERVE,
        "kind": "InferenceService",
        "metadata": {"name": "iris", "namespace": NS},
        "spec": {"predictor": {"canaryTrafficPercent": 0}},
    }


def api_for(url: str) -> KubeApi:
    return KubeApi(url)


# --- the Kubernetes adapter against the emulator -----------------------------------------


@pytest.fixture
def store(kube: KubeApiServer, kube_api: client.ApiClient) -> KubeExperimentStore:
    return KubeExperimentStore(kube_api)


@pytest.fixture
def objects(kube: KubeApiServer, kube_api: client.ApiClient) -> KubeObjects:
    return KubeObjects(kube_api)


def test_a_missing_experiment_metric_or_object_is_not_found(
    store: KubeExperimentStore, objects: KubeObjects
) -> None:
    with pytest.raises(NotFoundError, match="Experiment team-a/exp"):
        store.get(REF)
    with pytest.raises(NotFoundError, match="Metric team-a/latency"):
        store.get_metric(NS, "latency")
    with pytest.raises(NotFoundError, match="InferenceService team-a/iris"):
        objects.get(ISVC_REF)
    with pytest.raises(NotFoundError):
        objects.patch(Patch(ISVC_REF, "merge", {"spec": {}}))


def test_a_status_write_carries_the_resource_version_it_read(
    kube: KubeApiServer, store: KubeExperimentStore
) -> None:
    kube.seed(*EXPERIMENTS, NS, experiment())
    read = store.get(REF)
    written = store.write_status(read, {"stage": "Running"})
    assert written["status"] == {"stage": "Running"}
    assert written["metadata"]["resourceVersion"] != read["metadata"]["resourceVersion"]
    assert [o["metadata"]["name"] for o in store.list()] == ["exp"]
    # the second write from the same (now stale) read lost the race
    with pytest.raises(ConflictError, match="changed since read"):
        store.write_status(read, {"stage": "Failed"})
    assert store.get(REF)["status"] == {"stage": "Running"}


def test_a_status_write_for_a_deleted_experiment_is_not_found(
    kube: KubeApiServer, store: KubeExperimentStore
) -> None:
    kube.seed(*EXPERIMENTS, NS, experiment())
    read = store.get(REF)
    kube.reset()
    with pytest.raises(NotFoundError):
        store.write_status(read, {"stage": "Running"})


def test_merge_and_json_patches_land_and_bad_ones_are_permanent(
    kube: KubeApiServer, objects: KubeObjects
) -> None:
    kube.seed(*ISVC, NS, isvc())
    patched = objects.patch(
        Patch(ISVC_REF, "merge", {"spec": {"predictor": {"canaryTrafficPercent": 20}}})
    )
    assert patched["spec"]["predictor"]["canaryTrafficPercent"] == 20
    pointer = "/spec/predictor/canaryTrafficPercent"
    patched = objects.patch(Patch(ISVC_REF, "json", [{"op": "add", "path": pointer, "value": 40}]))
    assert objects.get(ISVC_REF)["spec"]["predictor"]["canaryTrafficPercent"] == 40
    # the emulator answers 422: the JSON patch does not apply to the object
    with pytest.raises(PermanentError, match="422") as unapplicable:
        objects.patch(Patch(ISVC_REF, "json", [{"op": "remove", "path": "/spec/nothing"}]))
    assert not isinstance(unapplicable.value, (TransientError, NotFoundError))


# --- the Kubernetes adapter against answers the emulator never gives ----------------------


@pytest.fixture
def answering(httpserver: HTTPServer) -> Iterator[tuple[HTTPServer, KubeExperimentStore]]:
    api = api_for(httpserver.url_for("/"))
    yield httpserver, KubeExperimentStore(api)
    api.close()


def finish_slow_request(server: HTTPServer) -> None:
    """Let the single-threaded server finish the request the client gave up on, so it is
    not logged into the next test's server."""
    deadline = time.monotonic() + 5
    while not server.log and time.monotonic() < deadline:
        time.sleep(0.05)


def status_body(code: int) -> str:
    return json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": f"m{code}"}
    )


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
def test_overload_and_server_errors_are_transient(
    answering: tuple[HTTPServer, KubeExperimentStore], code: int
) -> None:
    server, store = answering
    server.expect_request(re.compile(".*")).respond_with_data(
        status_body(code), status=code, content_type="application/json"
    )
    with pytest.raises(TransientError, match=f"answered {code} m{code}") as raised:
        store.get(REF)
    assert not isinstance(raised.value, ConflictError)


@pytest.mark.parametrize("code", [400, 401, 403, 405, 410, 415, 422])
def test_refusals_are_permanent(
    answering: tuple[HTTPServer, KubeExperimentStore], code: int
) -> None:
    server, store = answering
    server.expect_request(re.compile(".*")).respond_with_data(
        status_body(code), status=code, content_type="application/json"
    )
    with pytest.raises(PermanentError, match=f"answered {code} m{code}") as raised:
        store.list()
    assert not isinstance(raised.value, NotFoundError)


@pytest.mark.parametrize(("code", "error"), [(404, NotFoundError), (409, ConflictError)])
def test_not_found_and_conflict_keep_their_meaning_whoever_answers(
    answering: tuple[HTTPServer, KubeExperimentStore], code: int, error: type[Exception]
) -> None:
    server, store = answering
    server.expect_request(re.compile(".*")).respond_with_data(
        status_body(code), status=code, content_type="application/json"
    )
    with pytest.raises(error):
        store.write_status(experiment(), {"stage": "Running"})


def test_an_answer_that_is_not_an_object_is_transient(
    answering: tuple[HTTPServer, KubeExperimentStore],
) -> None:
    server, store = answering
    server.expect_request(re.compile(".*")).respond_with_json(["not", "an", "object"])
    with pytest.raises(TransientError, match="answered list"):
        store.get(REF)


def test_a_timeout_is_transient(
    answering: tuple[HTTPServer, KubeExperimentStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, store = answering
    monkeypatch.setattr(kube_adapter, "_TIMEOUT", 0.2)

    def slow(request: Request) -> Response:
        time.sleep(0.5)
        return Response("{}", content_type="application/json")

    server.expect_request(re.compile(".*")).respond_with_handler(slow)
    with pytest.raises(TransientError, match="unreachable"):
        store.get(REF)
    finish_slow_request(server)


def test_a_refused_connection_is_transient() -> None:
    api = api_for(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(TransientError, match="unreachable"):
            KubeExperimentStore(api).get(REF)
        with pytest.raises(TransientError, match="unreachable"):
            KubeObjects(api).patch(Patch(ISVC_REF, "merge", {}))
    finally:
        api.close()


def test_the_service_account_is_read_in_a_pod(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    api = KubeApi.in_cluster(env, tmp_path)
    assert api is not None
    assert api.host == "https://10.96.0.1:443"
    assert api._session.verify == str(tmp_path / "ca.crt")
    six = KubeApi.in_cluster({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}, tmp_path)
    assert six is not None and six.host == "https://[fd00::1]:443"
    assert KubeApi.in_cluster({}, tmp_path) is None


def test_the_token_is_read_afresh_for_every_request(httpserver: HTTPServer, tmp_path: Path) -> None:
    # Projected service account tokens are rotated in place by the kubelet.
    token = tmp_path / "token"
    token.write_text("first")
    seen: list[str | None] = []

    def answer(request: Request) -> Response:
        seen.append(request.headers.get("Authorization"))
        return Response(json.dumps(experiment()), content_type="application/json")

    httpserver.expect_request(re.compile(".*")).respond_with_handler(answer)
    store = KubeExperimentStore(KubeApi(httpserver.url_for("/"), token=FileToken(str(token))))
    store.get(REF)
    token.write_text("second")
    store.get(REF)
    assert seen == ["Bearer first", "Bearer second"]


def test_an_official_clients_credentials_are_carried_over(httpserver: HTTPServer) -> None:
    seen: list[str | None] = []

    def answer(request: Request) -> Response:
        seen.append(request.headers.get("Authorization"))
        return Response(json.dumps({"items": []}), content_type="application/json")

    httpserver.expect_request(re.compile(".*")).respond_with_handler(answer)
    configuration = client.Configuration()
    configuration.host = httpserver.url_for("/").rstrip("/")
    configuration.api_key = {"authorization": "from-kubeconfig"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    with client.ApiClient(configuration) as official:
        assert KubeExperimentStore(official).list() == []
    assert seen == ["Bearer from-kubeconfig"]


def test_a_redirect_is_refused_not_followed(
    answering: tuple[HTTPServer, KubeExperimentStore],
) -> None:
    # The API server never redirects; following one would carry the token elsewhere.
    server, store = answering
    server.expect_request(re.compile(".*")).respond_with_data(
        "", status=302, headers={"Location": "http://elsewhere.invalid/"}
    )
    with pytest.raises(PermanentError, match="answered 302"):
        store.get(REF)
    assert len(server.log) == 1


# --- the event sink ----------------------------------------------------------------------


def measured() -> Any:
    return make_event(MEASURED, REF, 3, {"aggregatedMetrics": {"data": {}}}, stage="iterate")


def test_an_accepted_event_arrives_in_binary_mode_with_its_attributes(
    httpserver: HTTPServer,
) -> None:
    httpserver.expect_oneshot_request("/", method="POST").respond_with_data("", status=202)
    event = measured()
    HttpEventSink(httpserver.url_for("/")).emit(event)
    [(request, _)] = httpserver.log
    headers = request.headers
    assert headers["ce-type"] == MEASURED
    assert headers["ce-id"] == event["id"] == "uid-1.3.measured"
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-source"] == "arbiter.dev/functions/iterate"
    assert headers[f"ce-{EXT_NAMESPACE}"] == NS
    assert headers[f"ce-{EXT_NAME}"] == "exp"
    assert headers[f"ce-{EXT_UID}"] == "uid-1"
    assert headers[f"ce-{EXT_ITERATION}"] == "3"
    assert headers["content-type"].startswith("application/json")
    assert json.loads(request.get_data()) == {"aggregatedMetrics": {"data": {}}}


@pytest.mark.parametrize("code", [200, 201, 202, 204])
def test_any_2xx_is_delivered(httpserver: HTTPServer, code: int) -> None:
    httpserver.expect_request("/").respond_with_data("", status=code)
    HttpEventSink(httpserver.url_for("/")).emit(measured())
    assert len(httpserver.log) == 1


@pytest.mark.parametrize("code", [300, 304, 400, 404, 413, 429, 500, 502, 503])
def test_a_broker_that_does_not_accept_the_event_is_transient(
    httpserver: HTTPServer, code: int
) -> None:
    httpserver.expect_request("/").respond_with_data("", status=code)
    with pytest.raises(TransientError, match=f"refused {MEASURED}: {code}"):
        HttpEventSink(httpserver.url_for("/")).emit(measured())


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_a_delivery(httpserver: HTTPServer, code: int) -> None:
    # Followed, a 301/302/303 turns the POST into a bodiless GET: a 2xx there would count
    # an event as delivered that no broker ever received.
    httpserver.expect_request("/").respond_with_data(
        "", status=code, headers={"Location": httpserver.url_for("/elsewhere")}
    )
    httpserver.expect_request("/elsewhere").respond_with_data("", status=200)
    with pytest.raises(TransientError, match=f"refused {MEASURED}: {code}"):
        HttpEventSink(httpserver.url_for("/")).emit(measured())
    assert [r.path for r, _ in httpserver.log] == ["/"]


def test_an_unreachable_broker_is_transient() -> None:
    with pytest.raises(TransientError, match="unreachable"):
        HttpEventSink(f"http://127.0.0.1:{free_port()}/").emit(measured())


def test_a_broker_that_does_not_answer_in_time_is_transient(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sink_adapter, "_TIMEOUT", 0.2)

    def slow(request: Request) -> Response:
        time.sleep(0.5)
        return Response("", status=202)

    httpserver.expect_request("/").respond_with_handler(slow)
    with pytest.raises(TransientError, match="unreachable"):
        HttpEventSink(httpserver.url_for("/")).emit(measured())
    finish_slow_request(httpserver)


@pytest.mark.parametrize("url", [None, ""])
def test_no_sink_is_permanent(url: str | None) -> None:
    with pytest.raises(PermanentError, match="K_SINK is not set") as raised:
        HttpEventSink(url).emit(measured())
    assert not isinstance(raised.value, TransientError)
