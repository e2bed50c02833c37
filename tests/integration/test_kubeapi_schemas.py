"""The local API server refuses what the real one refuses for the kinds with published
schemas: an HTTPRoute, VirtualService or Knative Service write that breaks its CRD's schema
(or, for HTTPRoute, a CEL rule) answers 422 Invalid naming each field, and changes nothing.
The Gateway stand-in's status writes pass the same check, and the router follows the route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from functions.core.backends import httproute
from functions.core.resources import HTTPROUTE, ISTIO_VIRTUAL_SERVICE, KNATIVE_SERVICE
from local.controllers import TrafficControllers
from local.kubeapi import KubeApiServer
from local.loadgen import read_split, route_split
from local.schemas import SchemaValidator

pytest_plugins = ["tests.support.kube"]

NS = "team-a"


def route(*weights: int | None, port: int | None = 80) -> dict[str, Any]:
    refs = []
    for i, weight in enumerate(weights):
        ref: dict[str, Any] = {"name": f"svc-{i}"}
        if port is not None:
            ref["port"] = port
        if weight is not None:
            ref["weight"] = weight
        refs.append(ref)
    return {
        "apiVersion": HTTPROUTE.api_version,
        "kind": "HTTPRoute",
        "metadata": {"name": "iris", "namespace": NS},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": refs}]},
    }


@pytest.fixture
def objects(kube: KubeApiServer, kube_api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def create(api: client.CustomObjectsApi, body: dict[str, Any], plural: str = "httproutes") -> Any:
    group, version = body["apiVersion"].rsplit("/", 1)
    return api.create_namespaced_custom_object(group, version, NS, plural, body)


def refused(api: client.CustomObjectsApi, body: dict[str, Any], plural: str = "httproutes") -> Any:
    with pytest.raises(client.ApiException) as caught:
        create(api, body, plural)
    assert caught.value.status == 422, caught.value.body
    return json.loads(caught.value.body)


def test_a_weight_out_of_range_is_422_invalid_naming_the_field(
    objects: client.CustomObjectsApi,
) -> None:
    status = refused(objects, route(-1, 1_000_001))
    assert status["reason"] == "Invalid" and status["code"] == 422
    assert status["message"].startswith('HTTPRoute.gateway.networking.k8s.io "iris" is invalid: [')
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": "Invalid value: -1: spec.rules[0].backendRefs[0].weight in body should "
            "be greater than or equal to 0",
            "field": "spec.rules[0].backendRefs[0].weight",
        },
        {
            "reason": "FieldValueInvalid",
            "message": "Invalid value: 1000001: spec.rules[0].backendRefs[1].weight in body "
            "should be less than or equal to 1000000",
            "field": "spec.rules[0].backendRefs[1].weight",
        },
    ]
    assert status["details"]["kind"] == "HTTPRoute" and status["details"]["name"] == "iris"


def test_more_than_16_backend_refs_and_a_service_without_port_are_refused(
    objects: client.CustomObjectsApi,
) -> None:
    too_many = refused(objects, route(*[1] * (httproute.MAX_BACKEND_REFS + 1)))
    (cause,) = too_many["details"]["causes"]
    assert cause == {
        "reason": "FieldValueTooMany",
        "message": "Too many: 17: must have at most 16 items",
        "field": "spec.rules[0].backendRefs",
    }
    no_port = refused(objects, route(1, port=None))
    assert no_port["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": 'Invalid value: "object": Must have port for Service reference',
            "field": "spec.rules[0].backendRefs[0]",
        }
    ]
    # The limits themselves are accepted.
    create(objects, route(*[httproute.MAX_WEIGHT] + [0] * (httproute.MAX_BACKEND_REFS - 1)))


def test_a_patch_the_schema_refuses_changes_nothing(objects: client.CustomObjectsApi) -> None:
    created = create(objects, route(100, 0))
    args = ("gateway.networking.k8s.io", "v1", NS, "httproutes", "iris")
    bad = [{"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": -5}]
    with pytest.raises(client.ApiException) as caught:
        objects.patch_namespaced_custom_object(
            *args, bad, _content_type="application/json-patch+json"
        )
    assert caught.value.status == 422
    assert "spec.rules[0].backendRefs[1].weight" in caught.value.body
    after = objects.get_namespaced_custom_object(*args)
    assert after["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    # A status the schema refuses (a condition without its required fields) is refused too.
    broken = {**after, "status": {"parents": [{"parentRef": {"name": "gw"}, "conditions": []}]}}
    with pytest.raises(client.ApiException) as caught:
        objects.replace_namespaced_custom_object_status(*args, broken)
    assert caught.value.status == 422 and "status.parents[0].controllerName" in caught.value.body


def test_virtualservice_and_knative_service_writes_are_checked_too(
    objects: client.CustomObjectsApi,
) -> None:
    vs = {
        "apiVersion": ISTIO_VIRTUAL_SERVICE.api_version,
        "kind": "VirtualService",
        "metadata": {"name": "vs", "namespace": NS},
        "spec": {
            "hosts": ["a"],
            "http": [{"route": [{"destination": {"host": "a"}, "weight": "x"}]}],
        },
    }
    (cause,) = refused(objects, vs, "virtualservices")["details"]["causes"]
    assert cause["field"] == "spec.http[0].route[0].weight"
    assert (
        cause["reason"] == "FieldValueTypeInvalid" and "must be of type integer" in cause["message"]
    )
    vs["spec"]["http"][0]["route"][0]["weight"] = 100
    create(objects, vs, "virtualservices")
    ksvc = {
        "apiVersion": KNATIVE_SERVICE.api_version,
        "kind": "Service",
        "metadata": {"name": "ksvc", "namespace": NS},
        "spec": {"template": {"spec": {"containers": [{"image": "x", "ports": "80"}]}}},
    }
    (cause,) = refused(objects, ksvc, "services")["details"]["causes"]
    assert cause["field"] == "spec.template.spec.containers[0].ports"


def test_the_gateway_stand_in_accepts_the_route_and_the_router_follows_the_weights(
    kube: KubeApiServer, kube_api: client.ApiClient, objects: client.CustomObjectsApi
) -> None:
    create(objects, route(3, 1))
    TrafficControllers(kube_api).reconcile_once()  # its status write passes the schema
    obj = objects.get_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", NS, "httproutes", "iris"
    )
    (parent,) = obj["status"]["parents"]
    assert parent["controllerName"] == httproute.LOCAL_CONTROLLER
    assert {c["type"]: c["status"] for c in parent["conditions"]} == {
        "Accepted": "True",
        "ResolvedRefs": "True",
    }
    ref = HTTPROUTE.ref(NS, "iris")
    urls = {"svc-0": "http://a", "svc-1": "http://b"}
    assert route_split(read_split(ref, obj), urls) == {"svc-0": 75.0, "svc-1": 25.0}


def test_without_the_validator_packages_the_write_fails_saying_what_to_run(
    tmp_path: Path,
) -> None:
    with KubeApiServer() as server:
        server.emulator.schemas = SchemaValidator(directory=tmp_path)
        api = client.CustomObjectsApi(server.api_client())
        with pytest.raises(client.ApiException) as caught:
            create(api, route(1))
        assert caught.value.status == 500
        assert "make node-deps" in caught.value.body and "node_modules" in caught.value.body
        # Kinds without a published schema are not affected.
        api.create_namespaced_custom_object(
            "arbiter.dev", "v1alpha1", NS, "metrics", {"metadata": {"name": "m"}, "spec": {}}
        )
