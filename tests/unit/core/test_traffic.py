"""The traffic backends' field layouts: resolution, patches, read-back, promote, rollback."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest

from analytics.parse import parse_experiment
from functions.core.backends import (
    FieldPathBackend,
    KFServingBackend,
    KnativeBackend,
    KServeBackend,
    ObjectRef,
    backend_for,
    kfserving,
    knative,
    parse_field_path,
)
from functions.core.errors import PermanentError
from local.controllers import kfserving_status, knative_status, kserve_status


def experiment(version_info: dict[str, Any] | None, target: str = "demo/iris") -> Any:
    spec: dict[str, Any] = {
        "target": target,
        "strategy": {"testingPattern": "Canary", "deploymentPattern": "Progressive"},
    }
    if version_info is not None:
        spec["versionInfo"] = version_info
    doc = {
        "apiVersion": "arbiter.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "e", "namespace": "demo"},
        "spec": spec,
    }
    return parse_experiment(doc, require_versions=False)


def isvc(canary: int | None = None, ready: str = "r2") -> dict[str, Any]:
    spec: dict[str, Any] = {"predictor": {"sklearn": {"storageUri": "gs://m"}}}
    if canary is not None:
        spec["predictor"]["canaryTrafficPercent"] = canary
    return {
        "metadata": {"name": "iris", "namespace": "demo"},
        "spec": spec,
        "status": {
            "components": {
                "predictor": {
                    "latestRolledoutRevision": "r1",
                    "latestCreatedRevision": "r2",
                    "latestReadyRevision": ready,
                }
            }
        },
    }


def reconciled(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "status": kserve_status(obj, now=0.0, ready_at=0.0)}


def test_kserve_is_the_default_backend_and_resolves_revisions_from_status() -> None:
    exp = experiment(None)
    backend = backend_for(exp.spec, exp.namespace)
    assert isinstance(backend, KServeBackend)
    (ref,) = backend.refs
    assert ref == ObjectRef("serving.kserve.io/v1beta1", "InferenceService", "demo", "iris")
    resolution = backend.resolve({ref: isvc()})
    assert resolution.ready
    assert resolution.names == ("r1", "r2")
    assert dict(resolution.revisions) == {"r1": "r1", "r2": "r2"}


def test_kserve_waits_for_a_candidate_and_for_it_to_be_ready() -> None:
    exp = experiment(None)
    backend = backend_for(exp.spec, exp.namespace)
    (ref,) = backend.refs
    not_ready = backend.resolve({ref: isvc(ready="r1")})
    assert not not_ready.ready
    assert "r2 to become Ready" in not_ready.waiting_for
    no_candidate = isvc()
    no_candidate["status"]["components"]["predictor"]["latestCreatedRevision"] = "r1"
    waiting = backend.resolve({ref: no_candidate})
    assert not waiting.ready
    assert "candidate revision" in waiting.waiting_for


def test_kserve_split_patch_and_read_back_through_the_controller_stand_in() -> None:
    exp = experiment({"baseline": {"name": "current"}, "candidates": [{"name": "next"}]})
    backend = backend_for(exp.spec, exp.namespace)
    (ref,) = backend.refs
    obj = isvc()
    (patch,) = backend.apply({"current": 70, "next": 30}, {ref: obj})
    assert patch.kind == "merge"
    assert patch.body == {"spec": {"predictor": {"canaryTrafficPercent": 30}}}
    assert backend.split({ref: obj}) is None  # nothing reported yet: not applied
    after = reconciled(isvc(canary=30))
    assert backend.split({ref: after}) == {"current": 70, "next": 30}
    promoted = reconciled(isvc(canary=100))
    assert backend.settled("promote", "next", {ref: promoted})
    assert not backend.settled("rollback", None, {ref: promoted})
    rolled_back = reconciled(isvc(canary=0))
    assert backend.settled("rollback", None, {ref: rolled_back})
    assert backend.rollback({ref: obj})[0].body["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert backend.promote("next", {ref: obj})[0].body["spec"]["predictor"] == {
        "canaryTrafficPercent": 100
    }


def test_kfserving_promotion_copies_the_canary_over_the_default_then_drops_it() -> None:
    ref_v = {
        "apiVersion": "serving.kubeflow.org/v1alpha2",
        "kind": "InferenceService",
        "name": "iris",
        "fieldPath": ".spec.canaryTrafficPercent",
    }
    exp = experiment(
        {"baseline": {"name": "default"}, "candidates": [{"name": "canary", "weightObjRef": ref_v}]}
    )
    backend = backend_for(exp.spec, exp.namespace)
    assert isinstance(backend, KFServingBackend)
    (ref,) = backend.refs
    obj: dict[str, Any] = {
        "metadata": {"name": "iris"},
        "spec": {"default": {"m": 1}, "canary": {"m": 2}, "canaryTrafficPercent": 10},
    }
    obj["status"] = kfserving_status(obj)
    assert backend.resolve({ref: obj}).ready
    assert backend.split({ref: obj}) == {"default": 90, "canary": 10}
    (patch,) = backend.promote("canary", {ref: obj})
    assert patch.kind == "json"
    assert patch.body == [
        {"op": "replace", "path": "/spec/default", "value": {"m": 2}},
        {"op": "remove", "path": "/spec/canary"},
        {"op": "remove", "path": "/spec/canaryTrafficPercent"},
    ]
    promoted = jsonpatch.apply_patch(obj, patch.body)
    assert promoted["spec"] == {"default": {"m": 2}}
    (patch,) = backend.rollback({ref: obj})
    assert patch.body == {"spec": {"canary": None, "canaryTrafficPercent": None}}
    # a failed experiment's rollback never carries the canary's spec into the default
    assert "default" not in patch.body["spec"]


def test_knative_service_traffic_by_revision_and_tag() -> None:
    ksvc = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "name": "iris",
    }
    exp = experiment(
        {
            "baseline": {
                "name": "v1",
                "weightObjRef": ksvc,
                "variables": [{"name": "revision", "value": "iris-1"}],
            },
            "candidates": [{"name": "v2", "variables": [{"name": "tag", "value": "next"}]}],
        }
    )
    backend = backend_for(exp.spec, exp.namespace)
    assert isinstance(backend, KnativeBackend)
    (ref,) = backend.refs
    obj: dict[str, Any] = {
        "spec": {"traffic": []},
        "status": {"traffic": [{"tag": "next", "revisionName": "iris-2", "percent": 0}]},
    }
    obj["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    assert dict(backend.resolve({ref: obj}).revisions) == {"v1": "iris-1", "v2": "iris-2"}
    (patch,) = backend.apply({"v1": 80, "v2": 20}, {ref: obj})
    assert patch.body["spec"]["traffic"] == [
        {"revisionName": "iris-1", "percent": 80, "latestRevision": False},
        {"revisionName": "iris-2", "tag": "next", "percent": 20, "latestRevision": False},
    ]
    applied = {**obj, "spec": patch.body["spec"]}
    applied["status"] = knative_status(applied)
    assert backend.split({ref: applied}) == {"v1": 80, "v2": 20}


def test_generic_field_path_patches_each_route_weight_with_a_json_patch() -> None:
    vs = {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "name": "routes",
    }
    exp = experiment(
        {
            "baseline": {
                "name": "a",
                "weightObjRef": {**vs, "fieldPath": ".spec.http[0].route[0].weight"},
            },
            "candidates": [
                {"name": "b", "weightObjRef": {**vs, "fieldPath": ".spec.http[0].route[1].weight"}},
            ],
        }
    )
    backend = backend_for(exp.spec, exp.namespace)
    assert isinstance(backend, FieldPathBackend)
    (ref,) = backend.refs
    obj = {"spec": {"http": [{"route": [{"weight": 100}, {"weight": 0}]}]}}
    assert backend.resolve({ref: obj}).ready
    (patch,) = backend.apply({"a": 60, "b": 40}, {ref: obj})
    assert patch.kind == "json"
    assert patch.body == [
        {"op": "add", "path": "/spec/http/0/route/0/weight", "value": 60},
        {"op": "add", "path": "/spec/http/0/route/1/weight", "value": 40},
    ]
    assert backend.split({ref: obj}) == {"a": 100, "b": 0}


def test_generic_backend_names_the_version_missing_a_field_path() -> None:
    vs = {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService", "name": "r"}
    exp = experiment(
        {
            "baseline": {"name": "a", "weightObjRef": {**vs, "fieldPath": ".spec.x"}},
            "candidates": [{"name": "b"}],
        }
    )
    with pytest.raises(PermanentError, match=r"candidates\[0\]\.weightObjRef\.fieldPath"):
        _ = backend_for(exp.spec, exp.namespace).refs


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        (".spec.http[0].route[1].weight", ("spec", "http", 0, "route", 1, "weight")),
        ("/spec/canaryTrafficPercent", ("spec", "canaryTrafficPercent")),
        ("spec.predictor.canaryTrafficPercent", ("spec", "predictor", "canaryTrafficPercent")),
    ],
)
def test_field_paths_in_both_notations(path: str, parts: tuple[object, ...]) -> None:
    assert parse_field_path(path) == parts


def test_a_bad_field_path_is_a_permanent_error_naming_it() -> None:
    with pytest.raises(PermanentError, match=r"spec\.http\[x\]"):
        parse_field_path(".spec.http[x]")


def test_knative_writes_pass_the_webhook_rule_an_unpinned_tag_fails() -> None:
    """knative/serving pkg/apis/serving/v1/route_validation.go (knative-v1.23.0),
    `validateLatestRevision`: `latestRevision: false` needs a `revisionName`."""
    ksvc = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "iris"}
    exp = experiment(
        {
            "baseline": {
                "name": "v1",
                "weightObjRef": ksvc,
                "variables": [{"name": "tag", "value": "cur"}],
            },
            "candidates": [{"name": "v2", "variables": [{"name": "tag", "value": "next"}]}],
        }
    )
    backend = backend_for(exp.spec, exp.namespace)
    (ref,) = backend.refs
    tagged = [{"tag": "cur", "revisionName": "iris-1"}, {"tag": "next", "revisionName": "iris-2"}]
    obj: dict[str, Any] = {"spec": {}, "status": {"traffic": tagged}}
    (patch,) = backend.apply({"v1": 30, "v2": 70}, {ref: obj})
    assert [e["revisionName"] for e in patch.body["spec"]["traffic"]] == ["iris-1", "iris-2"]
    assert knative.problems(patch.body) == []
    unpinned = {"spec": {"traffic": [{"tag": "next", "percent": 100, "latestRevision": False}]}}
    assert knative.problems(unpinned) == [
        "spec.traffic[0].latestRevision: may not set revisionName '' when latestRevision is false"
    ]
    # a tag no revision carries cannot be pinned: said, not written unpinned
    with pytest.raises(PermanentError, match="tag 'next'"):
        backend.apply({"v2": 100}, {ref: {"spec": {}, "status": {"traffic": tagged[:1]}}})


def test_kfserving_promotion_across_frameworks_leaves_one_framework() -> None:
    """kfserving v0.4.1 pkg/apis/serving/v1alpha2/predictor.go: ExactlyOnePredictorViolatedError
    unless exactly one framework is set in a predictor."""
    ref_v = {"apiVersion": "serving.kubeflow.org/v1alpha2", "kind": "InferenceService", "name": "i"}
    exp = experiment(
        {"baseline": {"name": "sk"}, "candidates": [{"name": "xgb", "weightObjRef": ref_v}]}
    )
    backend = backend_for(exp.spec, exp.namespace)
    (ref,) = backend.refs
    obj = {
        "spec": {
            "default": {"predictor": {"sklearn": {"storageUri": "gs://a"}}},
            "canary": {"predictor": {"xgboost": {"storageUri": "gs://b"}}},
            "canaryTrafficPercent": 50,
        }
    }
    assert kfserving.problems(obj) == []
    (patch,) = backend.promote("xgb", {ref: obj})
    promoted = jsonpatch.apply_patch(obj, patch.body)
    assert kfserving.problems(promoted) == []
    assert promoted["spec"] == {"default": {"predictor": {"xgboost": {"storageUri": "gs://b"}}}}
    # what a merge patch of the canary into the default would have left
    both = {"spec": {"default": {"predictor": {"sklearn": {}, "xgboost": {}}}}}
    (problem,) = kfserving.problems(both)
    assert problem.startswith("spec.default.predictor: exactly one of") and "'sklearn'" in problem
