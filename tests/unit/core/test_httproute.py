"""The Gateway API HTTPRoute backend: which rule and backends are the versions, the weights
written, the shares read back, readiness from status.parents, and the upstream facts pinned."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from analytics.parse import parse_experiment
from functions.core.backends import CEL_RULES, HTTPRouteBackend, ObjectRef, backend_for, httproute
from functions.core.errors import PermanentError
from functions.core.resources import HTTPROUTE
from functions.core.tenancy import expressible_problems

ROUTE = ObjectRef("gateway.networking.k8s.io/v1", "HTTPRoute", "demo", "iris")
GATEWAY_API = Path("/work/.mirror/kubernetes-sigs+gateway-api/repo")
GATEWAY_API_TAG = "v1.6.1"


def experiment(*services: str, variables: dict[str, str] | None = None) -> Any:
    ref = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "name": "iris"}
    baseline, *candidates = services
    doc = {
        "apiVersion": "arbiter.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "e", "namespace": "demo"},
        "spec": {
            "target": "demo/iris",
            "strategy": {
                "testingPattern": "Canary" if len(services) == 2 else "A/B/n",
                "deploymentPattern": "Progressive",
            },
            "criteria": {"rewards": [{"metric": "m", "preferredDirection": "High"}]}
            if len(services) > 2
            else {},
            "versionInfo": {
                "baseline": {
                    "name": baseline,
                    "weightObjRef": ref,
                    "variables": [{"name": k, "value": v} for k, v in (variables or {}).items()],
                },
                "candidates": [{"name": c, "weightObjRef": ref} for c in candidates],
            },
        },
    }
    return parse_experiment(doc, require_versions=False)


def route(*backends: tuple[str, int | None], generation: int = 1) -> dict[str, Any]:
    refs = []
    for name, weight in backends:
        ref: dict[str, Any] = {"name": name, "port": 80}
        if weight is not None:
            ref["weight"] = weight
        refs.append(ref)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "iris", "namespace": "demo", "generation": generation},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": refs}]},
    }


def accepted(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "status": httproute.expected_status(obj)}


def test_an_httproute_weight_obj_ref_picks_the_httproute_backend() -> None:
    exp = experiment("iris-v1", "iris-v2")
    backend = backend_for(exp.spec, exp.namespace)
    assert isinstance(backend, HTTPRouteBackend)
    assert backend.refs == (ROUTE,)
    assert HTTPROUTE.ref("demo", "iris") == ROUTE


def test_resolve_waits_for_every_parent_to_accept_then_names_the_services() -> None:
    exp = experiment("iris-v1", "iris-v2")
    backend = backend_for(exp.spec, exp.namespace)
    obj = route(("iris-v1", 100), ("iris-v2", 0))
    waiting = backend.resolve({ROUTE: obj})
    assert (
        not waiting.ready and "parent gw to report condition Accepted True" in waiting.waiting_for
    )
    assert backend.split({ROUTE: obj}) is None  # nothing accepted: no split in effect yet
    ready = backend.resolve({ROUTE: accepted(obj)})
    assert ready.ready
    assert dict(ready.revisions) == {"iris-v1": "iris-v1", "iris-v2": "iris-v2"}


def test_resolve_names_a_missing_backend_and_a_foreign_one_carrying_weight() -> None:
    backend = backend_for(experiment("iris-v1", "iris-v2").spec, "demo")
    missing = backend.resolve({ROUTE: accepted(route(("iris-v1", 100)))})
    assert not missing.ready
    assert (
        "backendRef for Service iris-v2" in missing.waiting_for
        and "weight 0" in missing.waiting_for
    )
    foreign = accepted(route(("iris-v1", 90), ("iris-v2", 0), ("legacy", 10)))
    refused = backend.resolve({ROUTE: foreign})
    assert not refused.ready and "backendRefs[2] (legacy)" in refused.waiting_for
    with pytest.raises(PermanentError, match="iris-v2"):
        backend.apply({"iris-v1": 100}, {ROUTE: route(("iris-v1", 100))})


def test_a_ready_condition_reported_false_is_quoted() -> None:
    obj = accepted(route(("iris-v1", 100), ("iris-v2", 0)))
    obj["status"]["parents"][0]["conditions"][0].update(
        status="False", reason="NotAllowedByListeners", message="no listener"
    )
    backend = backend_for(experiment("iris-v1", "iris-v2").spec, "demo")
    waiting = backend.resolve({ROUTE: obj}).waiting_for
    assert "Accepted True (NotAllowedByListeners: no listener)" in waiting


def test_weights_are_written_as_percents_guarded_by_the_names_read() -> None:
    backend = backend_for(experiment("iris-v1", "iris-v2").spec, "demo")
    obj = accepted(route(("iris-v1", None), ("iris-v2", 0)))
    (patch,) = backend.apply({"iris-v1": 70, "iris-v2": 30}, {ROUTE: obj})
    assert patch.kind == "json"
    assert patch.body[0] == {
        "op": "test",
        "path": "/spec/rules/0/backendRefs/0/name",
        "value": "iris-v1",
    }
    patched = jsonpatch.apply_patch(obj, patch.body)
    assert [r["weight"] for r in patched["spec"]["rules"][0]["backendRefs"]] == [70, 30]
    # The list moved between read and write: the test op fails rather than mis-weighting.
    swapped = route(("iris-v2", 0), ("iris-v1", 100))
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(swapped, patch.body)


def test_shares_are_read_back_by_normalising_once_the_generation_is_accepted() -> None:
    backend = backend_for(experiment("iris-v1", "iris-v2").spec, "demo")
    # Weights someone else wrote: 3:1 is 75/25; an absent weight is 1.
    obj = accepted(route(("iris-v1", 3), ("iris-v2", None)))
    assert backend.split({ROUTE: obj}) == {"iris-v1": 75, "iris-v2": 25}
    newer = {**obj, "metadata": {**obj["metadata"], "generation": 2}}
    assert backend.split({ROUTE: newer}) is None  # the Gateway has not programmed it yet
    assert backend.settled(
        "rollback", None, {ROUTE: accepted(route(("iris-v1", 5), ("iris-v2", 0)))}
    )
    assert not backend.settled("promote", "iris-v2", {ROUTE: obj})


@pytest.mark.parametrize(
    ("weights", "percents"),
    [
        ([1, 1, 1], [34, 33, 33]),
        ([0, 0], [0, 0]),
        ([1_000_000, 1], [100, 0]),
        ([2, 1, 1], [50, 25, 25]),
        ([70, 30], [70, 30]),
    ],
)
def test_shares_sum_to_100_by_largest_remainder(weights: list[int], percents: list[int]) -> None:
    assert httproute.shares(weights) == percents


def test_a_service_variable_maps_a_version_to_its_backend() -> None:
    exp = experiment("baseline", "candidate", variables={"service": "iris-v1", "revision": "r1"})
    backend = backend_for(exp.spec, exp.namespace)
    obj = accepted(route(("iris-v1", 100), ("candidate", 0)))
    assert dict(backend.resolve({ROUTE: obj}).revisions) == {
        "baseline": "r1",
        "candidate": "candidate",
    }
    assert backend.split({ROUTE: obj}) == {"baseline": 100, "candidate": 0}


def test_routes_and_status_as_the_local_gateway_reports_them() -> None:
    obj = route(("iris-v1", 3), ("iris-v2", 1))
    assert [(r.revision, r.percent) for r in httproute.routes(obj)] == [
        ("iris-v1", 75),
        ("iris-v2", 25),
    ]
    status = httproute.expected_status(obj)
    (parent,) = status["parents"]
    assert parent["parentRef"] == {"name": "gw"}
    assert {c["type"]: (c["status"], c["observedGeneration"]) for c in parent["conditions"]} == {
        "Accepted": ("True", 1),
        "ResolvedRefs": ("True", 1),
    }
    # Idempotent: the stand-in writes only when something changed.
    assert httproute.expected_status({**obj, "status": status}) == status
    obj["spec"]["rules"][0]["backendRefs"].append({"name": "x", "kind": "ConfigMap", "group": ""})
    (parent,) = httproute.expected_status(obj)["parents"]
    assert parent["conditions"][1]["reason"] == "InvalidKind"


def test_the_cel_rule_a_service_backend_needs_a_port() -> None:
    obj = route(("iris-v1", 1))
    assert CEL_RULES[HTTPROUTE](obj) == []
    del obj["spec"]["rules"][0]["backendRefs"][0]["port"]
    assert CEL_RULES[HTTPROUTE](obj) == [
        'spec.rules[0].backendRefs[0]: Invalid value: "object": '
        "Must have port for Service reference"
    ]
    obj["spec"]["rules"][0]["backendRefs"][0].update(group="example.com", kind="Backend")
    assert CEL_RULES[HTTPROUTE](obj) == []


def test_more_versions_than_a_rule_has_backend_refs_is_not_expressible() -> None:
    exp = experiment(*(f"v{i}" for i in range(httproute.MAX_BACKEND_REFS + 1)))
    (problem,) = expressible_problems(exp.spec)
    assert problem.reason == "NotExpressible"
    assert "at most 16 versions; this experiment has 17 versions" in problem.message
    assert expressible_problems(experiment(*(f"v{i}" for i in range(16))).spec) == []


def _upstream(path: str) -> str:
    if not GATEWAY_API.is_dir():
        pytest.fail(f"{GATEWAY_API}: fetch github:kubernetes-sigs/gateway-api to check the facts")
    return subprocess.run(
        ["git", "-C", str(GATEWAY_API), "show", f"{GATEWAY_API_TAG}:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _markers_before(source: str, declaration: str) -> str:
    """The kubebuilder markers in the comment block right above `declaration`."""
    lines = source.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(declaration))
    block = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("//"):
            break
        block.append(line)
    return "\n".join(reversed(block))


def test_the_gateway_api_facts_match_the_spec() -> None:
    """kubernetes-sigs/gateway-api v1.6.1: apis/v1/shared_types.go `BackendRef.Weight`
    (default 1, 0..1,000,000), apis/v1/httproute_types.go (rules and backendRefs at most 16
    each), apis/v1/object_reference_types.go (a Service backend needs a port), and the route
    condition types."""
    shared = _upstream("apis/v1/shared_types.go")
    weight = _markers_before(shared, "Weight *int32")
    assert f"+kubebuilder:default={httproute.DEFAULT_WEIGHT}\n" in weight + "\n"
    assert "+kubebuilder:validation:Minimum=0" in weight
    assert f"+kubebuilder:validation:Maximum={httproute.MAX_WEIGHT}" in weight
    assert "Weight is not a percentage" in weight
    routes = _upstream("apis/v1/httproute_types.go")
    rules = _markers_before(routes, "Rules []HTTPRouteRule")
    assert f"+kubebuilder:validation:MaxItems={httproute.MAX_RULES}" in rules
    refs = _markers_before(routes, "BackendRefs []HTTPBackendRef")
    assert f"+kubebuilder:validation:MaxItems={httproute.MAX_BACKEND_REFS}" in refs
    for kind in httproute.READY_CONDITIONS:
        assert re.search(rf'RouteCondition{kind}\s+RouteConditionType = "{kind}"', shared)
    objects = _upstream("apis/v1/object_reference_types.go")
    assert (
        'XValidation:message="Must have port for Service reference",'
        "rule=\"(size(self.group) == 0 && self.kind == 'Service') ? has(self.port) : true\""
    ) in objects
