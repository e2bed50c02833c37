"""The cluster manifests (config/, eventing/, samples/) checked against the code they deploy.

No cluster is needed: the CRD schemas are applied with `jsonschema` (after translating the
Kubernetes structural-schema extensions) and their CEL rules with cel-python; the Trigger
filters are compared with functions.core.events.TRIGGERS, the RBAC with the API calls the
stages make, the settings ConfigMap with Settings, and the Knative, Gateway API and Istio
objects are validated with the JSON schemas of @kubernetes-models (tools/knative-validate,
run by node).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import fnmatch
import functools
import inspect
import re
import shutil
import subprocess
import textwrap
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import celpy
import functions_framework
import jsonschema
import pytest
import yaml
from kubernetes.client import CustomObjectsApi, EventsV1Api

from analytics import model, parse
from analytics.parse import SpecError, parse_experiment
from functions import runtime
from functions.adapters.alerts import KubeAddressables
from functions.adapters.kubeevents import KubeEventRecorder
from functions.adapters.kubernetes import (
    KubeApi,
    KubeExperimentStore,
    KubeObjects,
    KubePingSources,
)
from functions.core import clock, control, events, notify, resources
from functions.core import status as st
from functions.core.backends import httproute, parse_field_path
from functions.core.context import Context
from functions.core.ports import Addressables, ExperimentStore, Objects, PingSources
from functions.core.settings import Settings
from tests.support.status import full_status

ROOT = Path(__file__).resolve().parents[2]
MANIFEST_DIRS = ("config", "eventing", "samples")
STAGES = tuple(events.TRIGGERS)
NAMESPACE = "arbiter-system"
ARBITER_API = "arbiter.dev/v1alpha1"
KNATIVE_VALIDATE = ROOT / "tools" / "knative-validate"

Doc = dict[str, Any]


# --- loading -------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(
        p
        for d in MANIFEST_DIRS
        for p in (ROOT / d).rglob("*.yaml")
        if "node_modules" not in p.parts
    )


@functools.cache
def _load(path: Path) -> tuple[Doc, ...]:
    # libyaml's loader when present: these files are parsed at collection time.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(d for d in yaml.load_all(path.read_text(), Loader=loader) if d is not None)


def docs_in(*paths: str) -> list[tuple[Path, Doc]]:
    """Every document under the given repo-relative files or folders."""
    found = []
    for rel in paths:
        base = ROOT / rel
        files = [base] if base.is_file() else sorted(base.rglob("*.yaml"))
        found += [(f, d) for f in files for d in _load(f)]
    return found


def all_docs() -> list[tuple[Path, Doc]]:
    return docs_in(*MANIFEST_DIRS)


def of_kind(kind: str, api_version: str | None = None, *paths: str) -> list[Doc]:
    return [
        d
        for _, d in docs_in(*(paths or MANIFEST_DIRS))
        if d.get("kind") == kind and (api_version is None or d.get("apiVersion") == api_version)
    ]


def one(kind: str, name: str, *paths: str) -> Doc:
    matches = [d for d in of_kind(kind, None, *paths) if d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- every file parses ----------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=rel)
def test_every_yaml_parses_into_named_kubernetes_objects(path: Path) -> None:
    docs = _load(path)
    assert docs, f"{rel(path)} holds no document"
    for doc in docs:
        assert isinstance(doc, dict), f"{rel(path)}: a document is not a mapping"
        assert doc.get("apiVersion") and doc.get("kind"), f"{rel(path)}: apiVersion/kind"
        if doc["kind"] != "Kustomization":
            assert doc.get("metadata", {}).get("name"), f"{rel(path)}: {doc['kind']} unnamed"


def test_the_manifests_the_brief_names_exist() -> None:
    for name in (
        "config/crd/experiments.yaml",
        "config/crd/metrics.yaml",
        "config/settings.yaml",
        "config/kustomization.yaml",
        "eventing/broker.yaml",
        "eventing/triggers.yaml",
        "eventing/pingsource.yaml",
        "eventing/apiserversource.yaml",
        "eventing/sinkbinding.yaml",
        "eventing/eventpolicy.yaml",
        "eventing/kustomization.yaml",
        *(f"config/functions/{s}.yaml" for s in STAGES),
        *(f"config/rbac/{s}.yaml" for s in STAGES),
        *(
            f"samples/experiments/{n}.yaml"
            for n in (
                "canary-progressive",
                "ab-reward",
                "abn-virtualservice",
                "bluegreen",
                "fixed-split",
                "conformance",
            )
        ),
    ):
        assert (ROOT / name).is_file(), name


# --- CRD schemas as JSON Schema -------------------------------------------------------------


def crd(plural: str) -> Doc:
    return one("CustomResourceDefinition", f"{plural}.arbiter.dev", "config/crd")


def openapi(plural: str) -> Doc:
    (version,) = crd(plural)["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"])


def to_json_schema(node: Any) -> Any:
    """A CRD's OpenAPI v3 structural schema as a JSON Schema (draft 2020-12).

    Drops the x-kubernetes-* extensions (their meaning is checked by `extension_failures`),
    turns `nullable` and boolean `exclusiveMinimum/Maximum` into their JSON Schema forms, and
    closes every object that lists its properties and does not preserve unknown fields:
    the API server prunes unknown fields and kubectl's strict field validation rejects them,
    so a typo in a sample must fail here too.
    """
    if isinstance(node, list):
        return [to_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(bound) is True:
            out[bound] = out.pop(limit)
        elif out.get(bound) is False:
            del out[bound]
    if out.get("format") in ("int64", "int32"):
        del out["format"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and not preserve and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


@functools.cache
def validator(plural: str) -> jsonschema.Draft202012Validator:
    schema = to_json_schema(openapi(plural))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(plural: str, doc: Doc) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator(plural).iter_errors(doc)
    ]


@functools.cache
def _cel_program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def extension_failures(schema: Mapping[str, Any], value: Any, path: str = "") -> list[str]:
    """What the API server adds to plain schema validation: the CEL rules
    (x-kubernetes-validations, with `self` bound to the value at that node) and the
    uniqueness of map-list keys (x-kubernetes-list-type: map)."""
    failures = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = bool(_cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)}))
            why = ""
        except celpy.CELEvalError as e:
            ok, why = False, f" ({e})"
        if not ok:
            failures.append(f"{path or '(root)'}: {rule['message']}{why}")
    if schema.get("x-kubernetes-list-type") == "map" and isinstance(value, list):
        keys = [tuple(item.get(k) for k in schema["x-kubernetes-list-map-keys"]) for item in value]
        if len(keys) != len(set(keys)):
            failures.append(f"{path}: duplicate {schema['x-kubernetes-list-map-keys']}")
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                failures += extension_failures(sub, value[key], f"{path}.{key}".lstrip("."))
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            failures += extension_failures(schema["items"], item, f"{path}[{i}]")
    return failures


def rejections(plural: str, doc: Doc) -> list[str]:
    return schema_errors(plural, doc) + extension_failures(openapi(plural), doc)


def schema_nodes(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Doc]]:
    yield path, dict(node)
    for key, sub in node.get("properties", {}).items():
        yield from schema_nodes(sub, f"{path}.{key}")
    if "items" in node:
        yield from schema_nodes(node["items"], f"{path}[]")
    for junctor in ("anyOf", "allOf", "oneOf"):
        for i, sub in enumerate(node.get(junctor, [])):
            yield from schema_nodes(sub, f"{path}<{junctor}{i}>")


def structural_problems(schema: Mapping[str, Any]) -> list[str]:
    """The rules the API server applies before it accepts a CRD's schema (the ones a
    hand-written schema tends to break)."""
    problems = []
    for path, node in schema_nodes(schema):
        in_junctor = "<" in path.rsplit(".", 1)[-1]
        typed = (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        )
        if not in_junctor and not typed:
            problems.append(f"{path}: no type")
        if in_junctor:
            intorstring = set(node) == {"type"} and node["type"] in ("integer", "string")
            if not intorstring and {"type", "description", "default", "nullable"} & set(node):
                problems.append(f"{path}: type/description/default/nullable inside a junctor")
        if node.get("x-kubernetes-int-or-string"):
            branches = [b.get("type") for b in node.get("anyOf", [])]
            if branches != ["integer", "string"]:
                problems.append(f"{path}: int-or-string needs anyOf [integer, string]")
        if node.get("x-kubernetes-list-type") == "map":
            required = set(node.get("items", {}).get("required", []))
            if not set(node.get("x-kubernetes-list-map-keys", [])) <= required:
                problems.append(f"{path}: list-map keys must be required")
        for rule in node.get("x-kubernetes-validations", []):
            if not rule.get("message"):
                problems.append(f"{path}: CEL rule {rule['rule']!r} without a message")
    return problems


@pytest.mark.parametrize("plural", ["experiments", "metrics"])
def test_crd_schema_is_structural_and_its_cel_rules_compile(plural: str) -> None:
    schema = openapi(plural)
    assert structural_problems(schema) == []
    assert schema.get("x-kubernetes-preserve-unknown-fields") is None
    for _, node in schema_nodes(schema):
        for rule in node.get("x-kubernetes-validations", []):
            _cel_program(rule["rule"])  # raises on a syntax error
        if "pattern" in node:
            re.compile(node["pattern"])


_BOUND_KEYWORDS = {
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusiveMinimum": "exclusive_minimum",
    "exclusiveMaximum": "exclusive_maximum",
    "maxLength": "max_length",
    "maxItems": "max_items",
    "pattern": "pattern",
}
# Bounds the CRD states on fields the parser does not read (core counts them itself).
_NOT_READ_BY_THE_PARSER = {
    "status.transientFailures": parse.Bound(minimum=0),
    # The write-ahead split: core writes and reads it, the analysis never does.
    "status.desiredWeightDistribution": parse.Bound(max_items=parse.MAX_VERSIONS),
    "status.desiredWeightDistribution[].name": parse.Bound(max_length=253),
    "status.desiredWeightDistribution[].value": parse.Bound(minimum=0, maximum=100),
    # The per-iteration history `arbiter report` plots: core writes it, nothing parses it.
    "status.history": parse.Bound(max_items=st.HISTORY_MAX_ENTRIES),
    "status.history[].iteration": parse.Bound(minimum=0),
    "status.history[].split": parse.Bound(max_items=parse.MAX_VERSIONS),
    "status.history[].split[]": parse.Bound(minimum=0, maximum=100),
    "status.history[].estimates": parse.Bound(max_items=parse.MAX_VERSIONS),
    "status.history[].estimates[]": parse.Bound(max_items=parse.MAX_OBJECTIVES),
    "status.history[].estimates[][]": parse.Bound(max_items=4),
    "status.history[].rule": parse.Bound(max_length=253),
    # The measurement record: iterate writes it, assess compares digests.
    "status.measurement.iteration": parse.Bound(minimum=0, maximum=parse.MAX_ITERATIONS),
    "status.measurement.digest": parse.Bound(max_length=64, pattern="^[0-9a-f]{64}$"),
    # Manual control (functions/core/control.py): the request and its record.
    **control.BOUNDS,
    # The alert sinks (functions/core/notify.py): notify reads them, the analysis never does.
    "spec.notify": parse.Bound(max_items=notify.MAX_SINKS),
    "spec.notify[].ref.apiVersion": parse.Bound(max_length=253),
    "spec.notify[].ref.kind": parse.Bound(max_length=63),
    "spec.notify[].ref.name": parse.Bound(max_length=253),
    "spec.notify[].ref.namespace": parse.Bound(max_length=63),
    "spec.notify[].uri": parse.Bound(max_length=2048, pattern="^https?://"),
    "status.notifications": parse.Bound(max_items=notify.MAX_SINKS * len(notify.KINDS)),
    "status.notifications[].sink": parse.Bound(max_length=32),
    "status.notifications[].target": parse.Bound(max_length=2048),
    "status.notifications[].attempts": parse.Bound(minimum=0, maximum=notify.MAX_ATTEMPTS),
    "status.notifications[].error": parse.Bound(max_length=notify.ERROR_LIMIT),
}


def crd_bounds() -> dict[str, parse.Bound]:
    """Field path ("[]" for list items) -> the bound the Experiment CRD states for it."""
    found = {}
    for path, node in schema_nodes(openapi("experiments")):
        stated = {attr: node[key] for key, attr in _BOUND_KEYWORDS.items() if key in node}
        if stated:
            found[path.lstrip(".")] = parse.Bound(**stated)
    return found


def test_the_crd_states_exactly_the_bounds_the_parser_applies() -> None:
    stated = crd_bounds()
    assert stated.keys() - parse.BOUNDS.keys() == set(_NOT_READ_BY_THE_PARSER)
    assert parse.BOUNDS.keys() - stated.keys() == set()
    for path, bound in parse.BOUNDS.items():
        assert stated[path] == bound, path
    for path, bound in _NOT_READ_BY_THE_PARSER.items():
        assert stated[path] == bound, path


def test_every_number_in_the_spec_has_both_ends() -> None:
    """A number with no maximum is how intervalSeconds 1e14 reached the iterate function."""
    for path, node in schema_nodes(openapi("experiments")):
        if "<" in path:  # an int-or-string's branch: its node states the bounds
            continue
        if path.startswith(".spec") and node.get("type") in ("integer", "number"):
            assert "minimum" in node and "maximum" in node, path
        if path.startswith(".spec") and node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path
        if node.get("type") == "array" and path != ".status.conditions":
            assert "maxItems" in node, path


def test_the_parser_patterns_are_the_crds() -> None:
    spec = openapi("experiments")["properties"]["spec"]["properties"]
    objective = spec["criteria"]["properties"]["objectives"]["items"]["properties"]
    assert objective["metric"]["pattern"] == parse.NAME_PATTERN
    assert spec["target"]["pattern"] == parse.NAME_PATTERN
    assert objective["upperLimit"]["pattern"] == parse.QUANTITY_PATTERN


def test_the_duration_rule_bounds_the_total_iterations() -> None:
    doc = canary()
    doc["spec"]["duration"] = {"iterationsPerLoop": 1000, "maxLoops": 100}
    assert rejections("experiments", doc) == []
    parse_experiment(doc, require_versions=False)
    for duration in ({"iterationsPerLoop": 1000, "maxLoops": 101}, {"maxLoops": 6667}):
        doc["spec"]["duration"] = duration
        assert any("at most 100000" in p for p in rejections("experiments", doc)), duration
        with pytest.raises(SpecError, match="at most 100000"):
            parse_experiment(doc, require_versions=False)


def test_the_crds_declare_the_resources_the_code_names() -> None:
    assert ARBITER_API == resources.EXPERIMENT.api_version == resources.METRIC.api_version
    for resource in (resources.EXPERIMENT, resources.METRIC):
        spec = crd(resource.plural)["spec"]
        assert (spec["group"], spec["names"]["kind"]) == (resource.group, resource.kind)
        assert spec["names"]["plural"] == resource.plural
        assert [v["name"] for v in spec["versions"]] == [resource.version]


def test_experiment_crd_names_columns_and_status_subresource() -> None:
    spec = crd("experiments")["spec"]
    assert spec["group"] == "arbiter.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "Experiment" and spec["names"]["plural"] == "experiments"
    assert spec["names"]["shortNames"] == ["exp"]
    assert "arbiter" in spec["names"]["categories"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = version["additionalPrinterColumns"]
    names = ["Type", "Target", "Stage", "Iteration", "Recommended", "Message", "Age"]
    assert [c["name"] for c in columns] == names
    schema = version["schema"]["openAPIV3Schema"]
    for column in columns:
        parts = column["jsonPath"].lstrip(".").split(".")
        if parts[0] == "metadata":
            continue  # ObjectMeta, not part of a CRD's schema
        node = schema
        for part in parts:
            assert part in node.get("properties", {}), f"{column['jsonPath']} is not in the schema"
            node = node["properties"][part]
        assert node["type"] == column["type"] or column["type"] == "date", column


def test_metric_crd_names() -> None:
    spec = crd("metrics")["spec"]
    assert (spec["group"], spec["names"]["kind"], spec["names"]["plural"]) == (
        "arbiter.dev",
        "Metric",
        "metrics",
    )
    assert spec["scope"] == "Namespaced"
    assert "arbiter" in spec["names"]["categories"]


def test_crd_enums_are_the_analytics_enums() -> None:
    strategy = openapi("experiments")["properties"]["spec"]["properties"]["strategy"]
    testing = strategy["properties"]["testingPattern"]["enum"]
    # A/B/N is iter8's spelling, which analytics.parse accepts too.
    assert set(testing) == {p.value for p in model.TestingPattern} | {"A/B/N"}
    assert set(strategy["properties"]["deploymentPattern"]["enum"]) == {
        p.value for p in model.DeploymentPattern
    }
    rewards = openapi("experiments")["properties"]["spec"]["properties"]["criteria"]
    direction = rewards["properties"]["rewards"]["items"]["properties"]["preferredDirection"]
    assert set(direction["enum"]) == {d.value for d in model.Direction}


def arbiter_objects(kind: str) -> list[tuple[Path, Doc]]:
    return [
        (p, d)
        for p, d in docs_in("config", "samples")
        if d.get("kind") == kind and d.get("apiVersion") == ARBITER_API
    ]


def test_there_is_a_sample_experiment_per_pattern() -> None:
    patterns = {
        (d["spec"]["strategy"]["testingPattern"], d["spec"]["strategy"].get("deploymentPattern"))
        for p, d in arbiter_objects("Experiment")
        if "samples/experiments" in str(p)
    }
    assert {"Canary", "A/B", "A/B/n", "Conformance"} <= {t for t, _ in patterns}
    assert {"Progressive", "BlueGreen", "FixedSplit"} <= {d for _, d in patterns}


@pytest.mark.parametrize(
    ("path", "doc"),
    arbiter_objects("Experiment"),
    ids=lambda x: rel(x) if isinstance(x, Path) else x["metadata"]["name"],
)
def test_sample_experiment_is_accepted_by_the_crd_and_the_analytics(path: Path, doc: Doc) -> None:
    assert rejections("experiments", doc) == []
    parse_experiment(doc, require_versions=False)


@pytest.mark.parametrize(
    ("path", "doc"),
    arbiter_objects("Metric"),
    ids=lambda x: rel(x) if isinstance(x, Path) else x["metadata"]["name"],
)
def test_metric_is_accepted_by_the_crd(path: Path, doc: Doc) -> None:
    assert rejections("metrics", doc) == []


def test_sample_metrics_are_the_ones_the_experiments_name() -> None:
    """Every metric a cluster sample names resolves to a Metric shipped in config/ or
    defined next to the experiment (the library is installed into arbiter-system)."""
    known = {
        f"{d['metadata'].get('namespace', NAMESPACE)}/{d['metadata']['name']}"
        for _, d in arbiter_objects("Metric")
    }
    for path, doc in docs_in("samples/experiments"):
        if doc["kind"] != "Experiment":
            continue
        c = doc["spec"].get("criteria", {})
        names = [
            c.get("requestCount"),
            *(o["metric"] for o in c.get("objectives", [])),
            *(r["metric"] for r in c.get("rewards", [])),
            *c.get("indicators", []),
        ]
        for name in filter(None, names):
            full = name if "/" in name else f"{doc['metadata']['namespace']}/{name}"
            assert full in known, f"{rel(path)}: metric {name} is defined nowhere"


def _field(obj: Any, parts: tuple[str | int, ...]) -> Any:
    for part in parts:
        obj = obj[part]
    return obj


def test_sample_experiments_point_at_the_sample_models() -> None:
    """Each experiment's target and every weightObjRef field exist in samples/kserve, and
    the weights they hold start with all traffic on the baseline."""
    objects = {
        (d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]): d
        for _, d in docs_in("samples/kserve")
        if d["kind"] != "Namespace"
    }
    for path, doc in docs_in("samples/experiments"):
        if doc["kind"] != "Experiment":
            continue
        ns, _, name = doc["spec"]["target"].rpartition("/")
        assert any(k[1:] == (ns, name) for k in objects), f"{rel(path)}: no target {ns}/{name}"
        info = doc["spec"].get("versionInfo") or {}
        versions = [info["baseline"], *info.get("candidates", [])] if info else []
        weights = []
        for v in versions:
            if "weightObjRef" not in v:
                continue
            ref = v["weightObjRef"]
            obj = objects[(ref["kind"], ref["namespace"], ref["name"])]
            assert obj["apiVersion"] == ref["apiVersion"], rel(path)
            if "fieldPath" in ref:
                weights.append(_field(obj, parse_field_path(ref["fieldPath"])))
                continue
            # An HTTPRoute: the version is the first rule's backendRef of its Service.
            assert ref["kind"] == resources.HTTPROUTE.kind, rel(path)
            variables = {x["name"]: x["value"] for x in v.get("variables") or []}
            service = variables.get("service", v["name"])
            refs = obj["spec"]["rules"][0]["backendRefs"]
            (backend,) = [b for b in refs if b["name"] == service]
            weights.append(httproute.weight(backend))
        # One weight per version (the generic backend with three or more, an HTTPRoute's
        # backendRefs): all on the baseline.
        routed = any("fieldPath" not in v.get("weightObjRef", {"fieldPath": ""}) for v in versions)
        if len(weights) == len(versions) > (1 if routed else 2):
            assert weights[0] == 100 and sum(weights) == 100, (rel(path), weights)


def test_kserve_canary_is_a_new_model_on_the_same_inferenceservice() -> None:
    baseline = one("InferenceService", "sklearn-iris", "samples/kserve/sklearn-iris.yaml")
    canary = one("InferenceService", "sklearn-iris", "samples/kserve/sklearn-iris-canary.yaml")
    old, new = baseline["spec"]["predictor"], canary["spec"]["predictor"]
    assert "canaryTrafficPercent" not in old and new["canaryTrafficPercent"] == 0
    assert old["model"]["storageUri"].endswith("/model")
    assert new["model"]["storageUri"] == old["model"]["storageUri"] + "-2"
    legacy = one("InferenceService", "sklearn-iris-legacy", "samples/kserve")
    assert legacy["apiVersion"] == resources.KFSERVING
    assert {"default", "canary", "canaryTrafficPercent"} <= set(legacy["spec"])


def canary() -> Doc:
    doc = copy.deepcopy(one("Experiment", "sklearn-iris-canary", "samples/experiments"))
    assert rejections("experiments", doc) == []
    return doc


def abn() -> Doc:
    doc = copy.deepcopy(one("Experiment", "sklearn-iris-abn", "samples/experiments"))
    assert rejections("experiments", doc) == []
    return doc


def _set(doc: Doc, path: str, value: Any) -> Doc:
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


_DELETE = object()

# (what is wrong, how to break the canary sample, words the CRD's complaint must contain)
BAD_SPECS = [
    ("missing testingPattern", "spec.strategy.testingPattern", _DELETE, "testingPattern"),
    ("unknown pattern", "spec.strategy.testingPattern", "Shadow", "Shadow"),
    ("unknown deployment", "spec.strategy.deploymentPattern", "Linear", "Linear"),
    ("weight 101", "spec.strategy.weights.maxCandidateWeight", 101, "101"),
    ("weight -1", "spec.strategy.weights.maxCandidateWeight", -1, "-1"),
    ("increment 0", "spec.strategy.weights.maxCandidateWeightIncrement", 0, "0"),
    ("interval 0", "spec.duration.intervalSeconds", 0, "0"),
    ("interval over a day", "spec.duration.intervalSeconds", 10**14, "86400"),
    ("loops 100001", "spec.duration.maxLoops", 100_001, "100000"),
    ("limit 2e18", "spec.criteria.objectives.0.upperLimit", 2 * 10**18, "1000000000000000000"),
    ("limit of 41 digits", "spec.criteria.objectives.0.upperLimit", "1" * 41, "long"),
    ("ratio 1001", "spec.criteria.objectives.1.maxRatio", 1001, "1000"),
    ("metric with capitals", "spec.criteria.objectives.0.metric", "Error_Rate", "match"),
    ("iterations 0", "spec.duration.iterationsPerLoop", 0, "0"),
    ("missing target", "spec.target", _DELETE, "target"),
    ("limit not a quantity", "spec.criteria.objectives.0.upperLimit", "one percent", "match"),
    ("quantile 1", "spec.criteria.objectives.1.quantile", 1, "1"),
    ("objective without metric", "spec.criteria.objectives.0.metric", _DELETE, "metric"),
    ("objective without limits", "spec.criteria.objectives.1", {"metric": "x"}, "at least one"),
    (
        "rewards on a Canary",
        "spec.criteria.rewards",
        [{"metric": "x", "preferredDirection": "High"}],
        "rewards",
    ),
    ("A/B without a reward", "spec.strategy.testingPattern", "A/B", "reward"),
    (
        "Canary with two candidates",
        "spec.versionInfo",
        {"baseline": {"name": "a"}, "candidates": [{"name": "b"}, {"name": "c"}]},
        "exactly 1 candidate",
    ),
    (
        "Conformance with a candidate",
        "spec.versionInfo",
        {"baseline": {"name": "a"}, "candidates": [{"name": "b"}]},
        "Conformance",
    ),
    (
        "duplicate version names",
        "spec.versionInfo",
        {"baseline": {"name": "a"}, "candidates": [{"name": "a"}]},
        "unique",
    ),
]


@pytest.mark.parametrize(
    ("what", "path", "value", "words"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS]
)
def test_bad_spec_is_rejected_by_the_crd_and_by_the_analytics(
    what: str, path: str, value: Any, words: str
) -> None:
    doc = _set(canary(), path, value if value is _DELETE else copy.deepcopy(value))
    if what == "Conformance with a candidate":
        doc["spec"]["strategy"]["testingPattern"] = "Conformance"
    problems = rejections("experiments", doc)
    assert problems, f"the CRD accepts an experiment with {what}"
    assert any(words in p for p in problems), problems
    # The API server and the start function must agree, or a spec could pass one and fail
    # the other only once it runs.
    with pytest.raises(SpecError):
        parse_experiment(doc, require_versions=False)


def test_typo_in_a_field_name_is_rejected() -> None:
    doc = canary()
    doc["spec"]["strategy"]["testingPatern"] = doc["spec"]["strategy"].pop("testingPattern")
    assert any("testingPatern" in p for p in rejections("experiments", doc))


def test_alert_sinks_are_a_ref_or_an_http_uri_and_at_most_five() -> None:
    doc = canary()
    broker = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "alerts"}
    doc["spec"]["notify"] = [{"ref": broker}, {"uri": "https://hooks.example.com/a"}]
    assert rejections("experiments", doc) == []
    doc["spec"]["notify"] = [{"ref": broker, "uri": "https://hooks.example.com/a"}]
    assert any("exactly one of ref and uri" in p for p in rejections("experiments", doc))
    doc["spec"]["notify"] = [{}]
    assert any("exactly one of ref and uri" in p for p in rejections("experiments", doc))
    doc["spec"]["notify"] = [{"uri": "file:///etc/passwd"}]
    assert any("https?" in p for p in rejections("experiments", doc))
    doc["spec"]["notify"] = [{"uri": f"https://h.example.com/{i}"} for i in range(6)]
    assert rejections("experiments", doc)
    doc["spec"]["notify"] = [{"ref": {"kind": "Broker", "name": "alerts"}}]
    assert any("apiVersion" in p for p in rejections("experiments", doc))


def test_abn_and_ab_shapes() -> None:
    doc = abn()
    doc["spec"]["criteria"]["rewards"] = []
    assert any("exactly 1 reward" in p for p in rejections("experiments", doc))
    doc = abn()
    doc["spec"]["versionInfo"]["candidates"][1]["name"] = "sklearn-iris-b"
    assert any("duplicate" in p for p in rejections("experiments", doc))
    doc = abn()
    doc["spec"]["versionInfo"]["candidates"][0]["weightObjRef"]["fieldPath"] = "spec..http"
    assert rejections("experiments", doc)


def test_a_control_request_and_manual_promotion_are_accepted_and_bad_ones_named() -> None:
    doc = canary()
    doc["spec"]["strategy"]["promotion"] = "Manual"
    doc["spec"]["control"] = {
        "action": "promote",
        "version": "v2",
        "reason": "load test passed",
        "requestedBy": "ann",
        "id": "20260101T000000Z-0a1b2c3d",
    }
    assert rejections("experiments", doc) == []
    doc["spec"]["strategy"]["promotion"] = "Sometimes"
    doc["spec"]["control"]["action"] = "explode"
    problems = rejections("experiments", doc)
    assert any("Sometimes" in p for p in problems) and any("explode" in p for p in problems)
    del doc["spec"]["control"]["id"]
    assert any("id" in p for p in rejections("experiments", doc))
    assert set(control.ControlAction) == set(
        openapi("experiments")["properties"]["spec"]["properties"]["control"]["properties"][
            "action"
        ]["enum"]
    )


def test_status_with_every_field_the_functions_write_is_accepted() -> None:
    doc = canary()
    doc["status"] = {
        "stage": "Finishing",
        "message": "iteration 3 of 10: promote",
        "initTime": "2026-01-01T00:00:00+00:00",
        "startTime": "2026-01-01T00:00:00Z",
        "lastUpdateTime": "2026-01-01T00:03:00Z",
        "lastIterationTime": "2026-01-01T00:03:00Z",
        "completedIterations": 3,
        "transientFailures": 0,
        "observedGeneration": 1,
        "versions": [{"name": "a", "revision": "a-00001"}, {"name": "b", "revision": "b-1"}],
        "currentWeightDistribution": [{"name": "a", "value": 70}, {"name": "b", "value": 30}],
        "analysis": {"aggregatedMetrics": {"data": {"x": {"data": {"a": {"value": 1}}}}}},
        "recommendation": {"action": "promote", "version": "b", "rule": "r", "message": "m"},
        "versionRecommendedForPromotion": "b",
        "outcome": "Promoted",
        "conditions": [
            {"type": "Completed", "status": "True", "reason": "r", "message": "m"},
            {"type": "TargetAcquired", "status": "True", "reason": "r", "message": ""},
        ],
    }
    assert rejections("experiments", doc) == []
    doc["status"]["currentWeightDistribution"][0]["value"] = 170
    doc["status"]["stage"] = "Paused"
    problems = rejections("experiments", doc)
    assert any("170" in p for p in problems) and any("Paused" in p for p in problems)


def test_status_schema_keeps_every_field_the_functions_write() -> None:
    """The API server prunes status fields the schema does not declare; a stage writing one
    would lose it silently. Every stage writes the status through Status.to_dict."""
    declared = set(openapi("experiments")["properties"]["status"]["properties"])
    full = full_status()
    written = set(full.to_dict())
    assert len(written) == len(dataclasses.fields(full))  # every field has its key
    assert written - declared == set()
    doc = canary()
    doc["status"] = full.to_dict()
    assert rejections("experiments", doc) == []
    status = openapi("experiments")["properties"]["status"]["properties"]
    assert set(st.Stage) > st.TERMINAL | st.ACTIVE
    assert set(st.Stage) == set(status["stage"]["enum"])
    assert set(st.Outcome) == set(status["outcome"]["enum"])
    conditions = set(st.ConditionType)
    assert conditions == set(status["conditions"]["items"]["properties"]["type"]["enum"])


METRIC_BAD = [
    ("unknown type", {"type": "Summary", "query": "q"}, "Summary"),
    ("missing type", {"query": "q"}, "type"),
    ("Counter without query", {"type": "Counter"}, "spec.query"),
    ("Ratio without denominator", {"type": "Ratio", "numerator": "n"}, "denominator"),
    ("Mean without count", {"type": "Mean", "sum": "s"}, "spec.count"),
    ("unknown provider", {"type": "Gauge", "query": "q", "provider": "datadog"}, "datadog"),
    ("empty query", {"type": "Gauge", "query": ""}, "query"),
]


@pytest.mark.parametrize(("what", "spec", "words"), METRIC_BAD, ids=[m[0] for m in METRIC_BAD])
def test_bad_metric_is_rejected(what: str, spec: Doc, words: str) -> None:
    doc = {"apiVersion": ARBITER_API, "kind": "Metric", "metadata": {"name": "m"}, "spec": spec}
    problems = rejections("metrics", doc)
    assert any(words in p for p in problems), problems


def test_good_metric_of_each_type_is_accepted() -> None:
    for spec in (
        {"type": "Counter", "query": "q"},
        {"type": "Histogram", "query": "q", "units": "ms"},
        {"type": "Ratio", "numerator": "n", "denominator": "d", "provider": "prometheus"},
        {"type": "Mean", "sum": "s", "count": "c", "sumOfSquares": "s2", "description": "x"},
    ):
        doc = {"apiVersion": ARBITER_API, "kind": "Metric", "metadata": {"name": "m"}}
        assert rejections("metrics", {**doc, "spec": spec}) == [], spec


# --- eventing ------------------------------------------------------------------------------


def trigger_types(trigger: Doc) -> list[str]:
    """The event types a Trigger takes whatever their other attributes (an `exact` type
    filter); an `all` also asks for an attribute (the control extension: see below)."""
    (only,) = trigger["spec"]["filters"]
    return [f["exact"]["type"] for f in only["any"] if "exact" in f]


def test_only_the_control_source_wakes_iterate_with_an_experiment_update() -> None:
    """iterate takes an Experiment update only with arbitercontrol=pending, which only the
    arbiter-control source adds; the source watches only Experiments labelled
    arbiter.dev/control-pending (ApiServerSource v1 spec.resources[].selector, a
    metav1.LabelSelector: knative/eventing v1.22 pkg/apis/sources/v1/apiserver_types.go
    APIVersionKindSelector.LabelSelector `json:"selector"`; ceOverrides from the inlined
    duckv1.SourceSpec)."""
    iterate = one("Trigger", "arbiter-iterate", "eventing")
    (only,) = iterate["spec"]["filters"]
    gated = [f["all"] for f in only["any"] if "all" in f]
    assert gated == [
        [
            {"exact": {"type": events.APISERVER_UPDATE}},
            {"exact": {control.EXTENSION: control.EXTENSION_VALUE}},
        ]
    ]
    for t in of_kind("Trigger", "eventing.knative.dev/v1", "eventing"):
        assert events.APISERVER_UPDATE not in trigger_types(t)
        if t is not iterate:
            (filters,) = t["spec"]["filters"]
            assert all("exact" in f for f in filters["any"])
    source = one("ApiServerSource", "arbiter-control", "eventing")
    assert source["spec"]["mode"] == "Resource"
    assert source["spec"]["resources"] == [
        {
            "apiVersion": ARBITER_API,
            "kind": "Experiment",
            "selector": {"matchLabels": {control.PENDING_LABEL: "true"}},
        }
    ]
    assert source["spec"]["ceOverrides"] == {
        "extensions": {control.EXTENSION: control.EXTENSION_VALUE}
    }
    assert _to_broker(source["spec"]["sink"])
    watcher = one("ApiServerSource", "arbiter-experiments", "eventing")
    assert "ceOverrides" not in watcher["spec"]


def test_one_trigger_per_function_with_exactly_its_event_types() -> None:
    triggers = of_kind("Trigger", "eventing.knative.dev/v1", "eventing")
    assert sorted(t["metadata"]["name"] for t in triggers) == sorted(f"arbiter-{s}" for s in STAGES)
    for t in triggers:
        stage = t["metadata"]["name"].removeprefix("arbiter-")
        types = trigger_types(t)
        assert len(types) == len(set(types)), f"{stage}: a type listed twice"
        assert sorted(types) == sorted(events.TRIGGERS[stage]), stage
        assert "filter" not in t["spec"], "legacy filter.attributes would AND with filters"
        assert t["spec"]["broker"] == "arbiter"
        ref = t["spec"]["subscriber"]["ref"]
        assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
            "serving.knative.dev/v1",
            "Service",
            f"arbiter-{stage}",
        )


def test_broker_retries_with_backoff_into_a_dead_letter_sink() -> None:
    broker = one("Broker", "arbiter", "eventing")
    delivery = broker["spec"]["delivery"]
    assert delivery["retry"] == 5
    assert delivery["backoffPolicy"] == "exponential"
    assert delivery["backoffDelay"] == "PT0.5S"
    sink = delivery["deadLetterSink"]["ref"]
    assert (sink["apiVersion"], sink["kind"]) == ("serving.knative.dev/v1", "Service")
    one("Service", sink["name"], "eventing")


def _to_broker(sink: Doc) -> bool:
    ref = sink["ref"]
    return (ref["apiVersion"], ref["kind"], ref["name"]) == (
        "eventing.knative.dev/v1",
        "Broker",
        "arbiter",
    )


def test_sources_send_to_the_broker() -> None:
    ping = one("PingSource", "arbiter-tick", "eventing")
    assert ping["spec"]["schedule"] == "* * * * *"
    assert _to_broker(ping["spec"]["sink"])
    source = one("ApiServerSource", "arbiter-experiments", "eventing")
    assert source["spec"]["mode"] == "Resource"
    assert source["spec"]["resources"] == [{"apiVersion": ARBITER_API, "kind": "Experiment"}]
    assert _to_broker(source["spec"]["sink"])
    grants = granted(source["spec"]["serviceAccountName"], "eventing")
    for verb in ("get", "list", "watch"):
        assert ("arbiter.dev", "experiments", verb) in grants


def test_the_pingsource_file_is_what_start_creates() -> None:
    """eventing/pingsource.yaml shows the PingSource functions/core/clock.py builds (so the
    Knative schema checks below validate what start creates), and nothing installs it."""
    (doc,) = _load(ROOT / "eventing" / "pingsource.yaml")
    built = clock.pingsource(Settings())
    assert built == doc
    assert (built["metadata"]["name"], built["metadata"]["namespace"]) == (clock.NAME, NAMESPACE)
    broker = one("Broker", clock.BROKER, "eventing")
    assert broker["metadata"]["namespace"] == NAMESPACE
    (k,) = _load(ROOT / "eventing" / "kustomization.yaml")
    assert "pingsource.yaml" not in k["resources"]
    # Another system namespace moves the object and its sink together.
    moved = clock.pingsource(Settings(system_namespace="ops"))
    assert moved["metadata"]["namespace"] == moved["spec"]["sink"]["ref"]["namespace"] == "ops"


def test_the_clock_is_granted_in_its_namespace_for_its_name() -> None:
    """Only Roles in arbiter-system grant the PingSource, and each verb that can be narrowed
    to a name is: every one but create (the authorizer knows no name before the object
    exists; kubernetes.io/docs/reference/access-authn-authz/rbac/#referring-to-resources)."""
    verbs = {}
    for stage in STAGES:
        for role, rule in bound_rules(f"arbiter-{stage}", "config"):
            if "pingsources" not in rule["resources"]:
                continue
            assert role["kind"] == "Role" and role["metadata"]["namespace"] == NAMESPACE
            assert rule["apiGroups"] == [resources.PINGSOURCE.group]
            names = rule.get("resourceNames")
            assert names == ([clock.NAME] if rule["verbs"] != ["create"] else None), rule
            verbs.setdefault(stage, set()).update(rule["verbs"])
    assert verbs == {"start": {"create", "get", "patch"}, "iterate": {"get", "delete"}}


def ksvcs(*paths: str) -> list[Doc]:
    return of_kind("Service", "serving.knative.dev/v1", *(paths or ("config", "eventing")))


def test_sinkbinding_selects_exactly_the_four_functions() -> None:
    (binding,) = of_kind("SinkBinding", "sources.knative.dev/v1", "eventing")
    assert _to_broker(binding["spec"]["sink"])
    subject = binding["spec"]["subject"]
    assert (subject["apiVersion"], subject["kind"]) == ("serving.knative.dev/v1", "Service")
    wanted = subject["selector"]["matchLabels"]
    assert wanted == {"app.kubernetes.io/part-of": "arbiter"}
    selected = {
        s["metadata"]["name"]
        for s in ksvcs()
        if wanted.items() <= s["metadata"].get("labels", {}).items()
    }
    assert selected == {f"arbiter-{s}" for s in STAGES}


# --- event authorization ----------------------------------------------------------------------

# EventPolicy (eventing.knative.dev/v1alpha1, first released in knative-v1.15.0, commit
# 7f37d6449) as its Go types spell it in JSON, from knative/eventing knative-v1.22.0+20
# (commit 8cf4c4b673): pkg/apis/eventing/v1alpha1/eventpolicy_types.go (EventPolicySpec;
# EventPolicySpecTo, EventPolicyToReference, EventPolicySelector = an inline
# metav1.LabelSelector and TypeMeta; EventPolicySpecFrom, EventPolicyFromReference) and, for
# spec.filters, SubscriptionsAPIFilter in pkg/apis/eventing/v1/trigger_types.go.
# A shape is a dict of field -> shape, [shape] for a list, or one of the names below.
STR, STR_MAP, FILTER = "string", "map[string]string", "SubscriptionsAPIFilter"
FILTER_FIELDS: Doc = {
    "all": [FILTER],
    "any": [FILTER],
    "not": FILTER,
    "exact": STR_MAP,
    "prefix": STR_MAP,
    "suffix": STR_MAP,
    "cesql": STR,
}
EVENTPOLICY_SPEC: Doc = {
    "to": [
        {
            "ref": {"apiVersion": STR, "kind": STR, "name": STR},
            "selector": {
                "apiVersion": STR,
                "kind": STR,
                "matchLabels": STR_MAP,
                "matchExpressions": [{"key": STR, "operator": STR, "values": [STR]}],
            },
        }
    ],
    "from": [{"ref": {"apiVersion": STR, "kind": STR, "name": STR, "namespace": STR}, "sub": STR}],
    "filters": [FILTER],
}


def shape_problems(value: Any, shape: Any, path: str) -> list[str]:
    if shape == FILTER:
        shape = FILTER_FIELDS
    if shape == STR:
        return [] if isinstance(value, str) else [f"{path}: not a string"]
    if shape == STR_MAP:
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
        return [] if ok else [f"{path}: not a map of strings"]
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        return [p for i, v in enumerate(value) for p in shape_problems(v, shape[0], f"{path}[{i}]")]
    if not isinstance(value, dict):
        return [f"{path}: not an object"]
    problems = [f"{path}.{k}: no such field" for k in value if k not in shape]
    return problems + [
        p
        for k, v in value.items()
        if k in shape
        for p in shape_problems(v, shape[k], f"{path}.{k}")
    ]


def eventpolicy_rejections(doc: Doc) -> list[str]:
    """The fields against the types, then what the webhook checks
    (pkg/apis/eventing/v1alpha1/eventpolicy_validation.go; for the filters,
    ValidateSubscriptionAPIFilter in pkg/apis/eventing/v1/trigger_validation.go)."""
    problems = shape_problems(doc.get("spec"), EVENTPOLICY_SPEC, "spec")
    if problems:
        return problems
    spec = doc["spec"]
    for i, sender in enumerate(spec.get("from", [])):
        if ("ref" in sender) == bool(sender.get("sub")):
            problems.append(f"spec.from[{i}]: exactly one of ref, sub")
        if "ref" in sender and not all(
            sender["ref"].get(k) for k in ("apiVersion", "kind", "name")
        ):
            problems.append(f"spec.from[{i}].ref: apiVersion, kind and name are required")
        if "*" in sender.get("sub", "")[:-1]:
            problems.append(f"spec.from[{i}].sub: '*' is only allowed as suffix")
    for i, target in enumerate(spec.get("to", [])):
        if ("ref" in target) == ("selector" in target):
            problems.append(f"spec.to[{i}]: exactly one of ref, selector")
        if "ref" in target and not all(
            target["ref"].get(k) for k in ("apiVersion", "kind", "name")
        ):
            problems.append(f"spec.to[{i}].ref: apiVersion, kind and name are required")

    def dialects(f: Doc, path: str) -> None:
        if len([k for k in f if f[k]]) != 1:
            problems.append(f"{path}: exactly one dialect per filter")
        for key in ("all", "any"):
            for j, sub in enumerate(f.get(key, [])):
                dialects(sub, f"{path}.{key}[{j}]")
        if "not" in f:
            dialects(f["not"], f"{path}.not")

    for i, f in enumerate(spec.get("filters", [])):
        dialects(f, f"spec.filters[{i}]")
    return problems


def passes(f: Doc, attributes: Mapping[str, str]) -> bool:
    """A SubscriptionsAPIFilter applied to an event's attributes (CESQL is not used here)."""
    assert "cesql" not in f, "CESQL is not evaluated by this test"
    got = {k: attributes.get(k) for d in ("exact", "prefix", "suffix") for k in f.get(d, {})}
    return (
        all(got[k] == v for k, v in f.get("exact", {}).items())
        and all((got[k] or "\0").startswith(v) for k, v in f.get("prefix", {}).items())
        and all((got[k] or "\0").endswith(v) for k, v in f.get("suffix", {}).items())
        and all(passes(sub, attributes) for sub in f.get("all", []))
        and (not f.get("any") or any(passes(sub, attributes) for sub in f["any"]))
        and ("not" not in f or not passes(f["not"], attributes))
    )


def eventpolicies() -> list[Doc]:
    return of_kind("EventPolicy", "eventing.knative.dev/v1alpha1", "eventing")


def admitted(policy: Doc, event_type: str) -> bool:
    return all(passes(f, {"type": event_type}) for f in policy["spec"].get("filters", []))


# What the functions post to the broker: every Arbiter type but `failed`, which only alert
# sinks receive (functions/core/notify.py), never the broker.
FUNCTION_TYPES = {
    v for v in vars(events).values() if isinstance(v, str) and v.startswith("dev.arbiter.")
} - {events.FAILED}
APISERVER_TYPES = {events.APISERVER_ADD, events.APISERVER_UPDATE, events.APISERVER_DELETE}


def test_eventpolicies_use_only_fields_of_the_upstream_types() -> None:
    policies = eventpolicies()
    assert len(policies) == 5
    for policy in policies:
        assert eventpolicy_rejections(policy) == [], policy["metadata"]["name"]
    # The check can fail: a misspelt field, a sender with both ref and sub, a bad glob.
    bad = copy.deepcopy(policies[0])
    bad["spec"]["from"][0]["sub"] = "system:*:arbiter"
    bad["spec"]["to"][0]["reff"] = bad["spec"]["to"][0]["ref"]
    assert eventpolicy_rejections(bad) == ["spec.to[0].reff: no such field"]
    del bad["spec"]["to"][0]["reff"]
    assert eventpolicy_rejections(bad) == [
        "spec.from[0]: exactly one of ref, sub",
        "spec.from[0].sub: '*' is only allowed as suffix",
    ]
    bad["spec"]["filters"] = [{"prefix": {"type": "a"}, "exact": {"type": "b"}}]
    assert "spec.filters[0]: exactly one dialect per filter" in eventpolicy_rejections(bad)


def test_each_sender_may_post_only_its_own_event_types_to_the_broker() -> None:
    """The functions (their token is the SinkBinding's: pkg/reconciler/sinkbinding/
    sinkbinding.go requests it for the binding's OIDC service account), the ApiServerSource
    and the PingSource, each in exactly one policy: the broker stops at the first applying
    policy naming the sender (pkg/auth/event_policy.go SubjectAndFiltersPass)."""
    (binding,) = of_kind("SinkBinding", "sources.knative.dev/v1", "eventing")
    apiservers = of_kind("ApiServerSource", "sources.knative.dev/v1", "eventing")
    pings = of_kind("PingSource", "sources.knative.dev/v1", "eventing")
    assert {p["metadata"]["name"] for p in pings} == {clock.NAME, clock.HEARTBEAT}
    emits = {
        ("SinkBinding", binding["metadata"]["name"]): FUNCTION_TYPES,
        **{("ApiServerSource", a["metadata"]["name"]): APISERVER_TYPES for a in apiservers},
        **{("PingSource", p["metadata"]["name"]): {events.PING} for p in pings},
    }
    assert len(FUNCTION_TYPES) == 7 and events.DELETING in FUNCTION_TYPES
    every_type = set().union(*emits.values())
    senders = []
    for policy in eventpolicies():
        spec = policy["spec"]
        assert spec["to"] == [
            {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "arbiter"}}
        ]
        (sender,) = spec["from"]
        ref = sender["ref"]
        assert (ref["apiVersion"], ref.get("namespace")) == ("sources.knative.dev/v1", NAMESPACE)
        key = (ref["kind"], ref["name"])
        senders.append(key)
        own = emits[key]
        assert {t for t in every_type if admitted(policy, t)} == own, key
        assert not admitted(policy, "dev.example.anything"), key
    assert sorted(senders) == sorted(emits)
    # Turning OIDC on cuts no flow: every type a Trigger routes has a sender admitted for it.
    routed = {t for types in events.TRIGGERS.values() for t in types}
    assert routed <= every_type


# --- functions ------------------------------------------------------------------------------


def function_service(stage: str) -> Doc:
    return one("Service", f"arbiter-{stage}", "config/functions")


def container_env(service: Doc) -> dict[str, str]:
    (container,) = service["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container.get("env", [])}


@pytest.mark.parametrize("stage", STAGES)
def test_function_service_runs_its_stage_from_the_one_image(stage: str) -> None:
    service = function_service(stage)
    assert service["metadata"]["namespace"] == NAMESPACE
    template = service["spec"]["template"]
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "0"
    assert template["spec"]["serviceAccountName"] == f"arbiter-{stage}"
    (container,) = template["spec"]["containers"]
    assert container["image"] == "arbiter"
    assert container["envFrom"] == [{"configMapRef": {"name": "arbiter-settings"}}]
    env = container_env(service)
    assert env == {
        "FUNCTION_TARGET": stage,
        "FUNCTION_SOURCE": f"functions/{stage}/main.py",
        "FUNCTION_SIGNATURE_TYPE": "cloudevent",
    }
    (port,) = container["ports"]
    assert port["containerPort"] == 8080
    assert container["readinessProbe"]["tcpSocket"]["port"] == 8080


@pytest.mark.parametrize("stage", STAGES)
def test_function_runs_read_only_with_only_tmp_writable(stage: str) -> None:
    """The root filesystem is read-only; the one writable path is /tmp, an emptyDir, where
    gunicorn (functions-framework's server) creates each worker's heartbeat file with
    tempfile.mkstemp (gunicorn/workers/workertmp.py). Knative Serving lets a Service set
    readOnlyRootFilesystem (pkg/apis/serving/fieldmask.go SecurityContextMask) and, with
    kubernetes.podspec-volumes-emptydir (enabled by default since knative-v1.8.0, commit
    6e597fa7fd), an emptyDir whose medium is "" or Memory (k8s_validation.go)."""
    spec = function_service(stage)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp" and not mount.get("readOnly", False)
    (volume,) = spec["volumes"]
    assert volume["name"] == mount["name"]
    assert set(volume) == {"name", "emptyDir"}, "only an emptyDir: nothing else is writable"
    assert volume["emptyDir"].get("medium", "") in ("", "Memory")
    assert volume["emptyDir"]["sizeLimit"]


@pytest.mark.parametrize("stage", STAGES)
def test_function_env_loads_the_stage_in_functions_framework(stage: str) -> None:
    """What the image's CMD does with the Service's env: load FUNCTION_TARGET from
    FUNCTION_SOURCE (relative to the image's /app, here the repo root) as a CloudEvent
    function. GET / is 405 for a CloudEvent function, which is why readiness is a TCP probe."""
    env = container_env(function_service(stage))
    app = functions_framework.create_app(
        env["FUNCTION_TARGET"], str(ROOT / env["FUNCTION_SOURCE"]), env["FUNCTION_SIGNATURE_TYPE"]
    )
    client = app.test_client()
    assert client.get("/").status_code == 405
    assert client.post("/", json={"not": "a cloudevent"}).status_code == 400


def test_settings_configmap_holds_exactly_the_settings_the_code_reads() -> None:
    data = one("ConfigMap", "arbiter-settings", "config")["data"]
    source = inspect.getsource(Settings)
    read = {
        "ARBITER_" + name for name in re.findall(r'(?:_PREFIX \+ |number\(\s*)"([A-Z_]+)"', source)
    }
    assert {"ARBITER_PROMETHEUS_URL", "ARBITER_LOG_LEVEL", "ARBITER_QUERY_RETRIES"} <= read
    assert set(data) == read
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"
    settings = Settings.from_env(data)
    assert settings.prometheus_url == data["ARBITER_PROMETHEUS_URL"]
    assert settings.query_retries == int(data["ARBITER_QUERY_RETRIES"])
    assert settings.max_transient_failures == int(data["ARBITER_MAX_TRANSIENT_FAILURES"])
    assert settings.ready_timeout_seconds == float(data["ARBITER_READY_TIMEOUT_SECONDS"])
    # Where the SinkBinding mounts the broker's OIDC token (knative/eventing
    # pkg/apis/sources/v1/sinkbinding_lifecycle.go: volume "oidc-token" at /oidc; key `token`).
    assert settings.sink_token_file == data["ARBITER_SINK_TOKEN_FILE"] == "/oidc/token"
    assert settings.max_experiment_seconds == Settings.max_experiment_seconds
    assert settings.finish_deadline_seconds == Settings.finish_deadline_seconds


# --- RBAC -----------------------------------------------------------------------------------


def bound_rules(service_account: str, *paths: str) -> list[tuple[Doc, Doc]]:
    """(role, rule) of every ClusterRole and Role bound to the service account."""
    paths = paths or ("config", "eventing")
    roles = {
        (kind, r["metadata"]["name"]): r
        for kind in ("ClusterRole", "Role")
        for r in of_kind(kind, None, *paths)
    }
    found = []
    for binding in [
        *of_kind("ClusterRoleBinding", None, *paths),
        *of_kind("RoleBinding", None, *paths),
    ]:
        if not any(
            s["kind"] == "ServiceAccount"
            and s["name"] == service_account
            and s["namespace"] == NAMESPACE
            for s in binding["subjects"]
        ):
            continue
        if binding["kind"] == "RoleBinding":
            # A RoleBinding grants a Role of its own namespace, nowhere else.
            assert binding["roleRef"]["kind"] == "Role", binding["metadata"]["name"]
            assert binding["metadata"]["namespace"] == NAMESPACE
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        found += [(role, rule) for rule in role["rules"]]
    return found


def granted(service_account: str, *paths: str) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the ClusterRoles and Roles bound to the service account
    allow (resourceNames aside: `test_the_clock_is_granted_in_its_namespace_for_its_name`)."""
    grants = set()
    for _, rule in bound_rules(service_account, *paths):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants |= {(group, resource, verb) for verb in rule["verbs"]}
    return grants


def _traffic_resources() -> set[tuple[str, str]]:
    """Every kind of object a traffic backend patches: the four built in, plus whatever
    a sample names as a weightObjRef (the generic field-path backend)."""
    refs = [
        resources.ObjectRef(resources.KSERVE, "InferenceService", "", ""),
        resources.ObjectRef(resources.KFSERVING, "InferenceService", "", ""),
        resources.ObjectRef(resources.KNATIVE, "Service", "", ""),
        resources.ObjectRef(resources.GATEWAY, "HTTPRoute", "", ""),
    ]
    for _, doc in docs_in("samples/experiments"):
        info = doc.get("spec", {}).get("versionInfo") or {}
        for v in [info.get("baseline") or {}, *info.get("candidates", [])]:
            if "weightObjRef" in v:
                w = v["weightObjRef"]
                refs.append(resources.ObjectRef(w["apiVersion"], w["kind"], "", ""))
    return {(r.group, r.plural) for r in refs}


Call = tuple[str, str]  # (Context field, port method): ("store", "get") is ctx.store.get(...)
Grant = tuple[str, str, str]  # (apiGroup, resource, verb), as a ClusterRole rule spells them

# The Context fields that reach the API server, each with its port and the adapter the
# functions run with on a cluster (functions/runtime.py wires them).
PORTS: dict[str, tuple[type, type]] = {
    "store": (ExperimentStore, KubeExperimentStore),
    "objects": (Objects, KubeObjects),
    "addresses": (Addressables, KubeAddressables),
    "pings": (PingSources, KubePingSources),
}
# Stands for the group and plural of whatever object a traffic backend names: the kinds
# `_traffic_resources` lists.
TRAFFIC = ("<ref.group>", "<ref.plural>")
# Stands for the Addressable an alert sink names: the kinds notify.ADDRESSABLE_KINDS lists.
ADDRESSABLE = ("<sink.group>", "<sink.plural>")
# runtime wraps the store so that every status write also records its Kubernetes Events
# (functions/core/story.py): write_status asks for what the recorder's `record` asks for.
RECORDED: dict[Call, type] = {("store", "write_status"): KubeEventRecorder}

# The port methods each stage calls, from functions/<stage>/main.py down through
# functions/core. `test_each_stage_calls_exactly_the_port_methods_listed` reads them off the
# code both ways, so a stage that starts calling something new fails until it is listed here,
# and its ClusterRole then has to follow.
CALLS: dict[str, set[Call]] = {
    # Lists to find the experiments not yet running and who holds a target; sets the split;
    # puts the restore finalizer on the Experiment (a metadata patch).
    # Keeps the clock's PingSource for the experiments it looks at (functions/core/clock.py).
    "start": {
        ("store", "list"),
        ("store", "get"),
        ("store", "write_status"),
        ("store", "patch_metadata"),
        ("objects", "get"),
        ("objects", "patch"),
        ("pings", "annotate"),
        ("pings", "create"),
        ("pings", "get"),  # on the heartbeat, only when something is live
    },
    # Lists to find the experiments due; resolves Metrics; counts failures in status;
    # removes the control-pending label once a manual request is handled (a metadata patch);
    # resolves the alert sinks of experiments that ended; reads the clock's PingSource and
    # deletes it when no experiment is live.
    "iterate": {
        ("store", "list"),
        ("store", "get"),
        ("store", "write_status"),
        ("store", "get_metric"),
        ("store", "patch_metadata"),
        ("addresses", "url"),
        ("pings", "get"),
        ("pings", "delete"),
    },
    "assess": {
        ("store", "get"),
        ("store", "write_status"),
        ("objects", "get"),
        ("objects", "patch"),
    },
    # Removes the restore finalizer once the baseline is read back; resolves alert sinks.
    "finish": {
        ("store", "get"),
        ("store", "write_status"),
        ("store", "patch_metadata"),
        ("objects", "get"),
        ("objects", "patch"),
        ("addresses", "url"),
    },
}

# What each port method asks the API server for. `test_adapter_requests_are_read_off_the_
# adapters` derives this from functions/adapters/kubernetes.py and the client's own request
# builders; write_status replaces the status subresource (PUT), hence update, not patch.
ADAPTER_VERBS: dict[Call, set[tuple[str, str, str]]] = {
    ("store", "get"): {("arbiter.dev", "experiments", "get")},
    ("store", "list"): {("arbiter.dev", "experiments", "list")},
    ("store", "write_status"): {
        ("arbiter.dev", "experiments/status", "update"),
        ("events.k8s.io", "events", "create"),
    },
    ("store", "get_metric"): {("arbiter.dev", "metrics", "get")},
    ("store", "patch_metadata"): {("arbiter.dev", "experiments", "patch")},
    ("objects", "get"): {(*TRAFFIC, "get")},
    ("objects", "patch"): {(*TRAFFIC, "patch")},
    ("addresses", "url"): {(*ADDRESSABLE, "get")},
    ("pings", "get"): {("sources.knative.dev", "pingsources", "get")},
    ("pings", "create"): {("sources.knative.dev", "pingsources", "create")},
    ("pings", "annotate"): {("sources.knative.dev", "pingsources", "patch")},
    ("pings", "delete"): {("sources.knative.dev", "pingsources", "delete")},
}


def expected_grants(stage: str) -> set[Grant]:
    """The (apiGroup, resource, verb) a stage's code needs: CALLS through ADAPTER_VERBS,
    TRAFFIC spelled out as every kind a traffic backend may name."""
    grants: set[Grant] = set()
    for call in CALLS[stage]:
        for group, resource, verb in ADAPTER_VERBS[call]:
            if (group, resource) == TRAFFIC:
                grants |= {(g, r, verb) for g, r in _traffic_resources()}
            elif (group, resource) == ADDRESSABLE:
                grants |= {(k.group, k.plural, verb) for k in notify.ADDRESSABLE_KINDS}
            else:
                grants.add((group, resource, verb))
    return grants


# --- which port methods the code calls, read from its syntax tree -----------------------------

Fn = tuple[str, str]  # (module in functions.core, top-level function)


class PortCallScan:
    """The port methods reachable from some functions of functions.core, read from the AST.

    A function's port values are its parameters annotated `Context` (then `ctx.store`,
    `ctx.objects`) or annotated with a port (`store: ExperimentStore`). Every reference to
    another function of the package (a call, a lambda's call, a `functools.partial`) is an
    edge. A port value used any other way (stored in a variable, passed to something outside
    the package, passed to a parameter not annotated as a port) is a *problem*: the scan would
    lose sight of it, so the test fails rather than miss a call.
    """

    def __init__(self, sources: Mapping[str, str], package: str = "functions.core") -> None:
        self.package = package
        self.trees = {name: ast.parse(text) for name, text in sources.items()}
        self.defs: dict[Fn, ast.FunctionDef] = {
            (m, node.name): node
            for m, tree in self.trees.items()
            for node in tree.body
            if isinstance(node, ast.FunctionDef)
        }
        self.types = {"Context": "Context"} | {p.__name__: f for f, (p, _) in PORTS.items()}

    def imports(self, tree: ast.Module) -> tuple[dict[str, str], dict[str, Fn]]:
        """Module aliases (`from functions.core import status as st`) and imported
        functions (`from functions.core.backends import backend_for`) of a module."""
        modules: dict[str, str] = {}
        names: dict[str, Fn] = {}
        for node in tree.body:
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            for alias in node.names:
                local = alias.asname or alias.name
                if node.module == self.package:
                    modules[local] = alias.name
                elif node.module.startswith(self.package + "."):
                    names[local] = (node.module.rsplit(".", 1)[1], alias.name)
        return modules, names

    def resolve(self, module: str, tree: ast.Module, expr: ast.expr) -> Fn | None:
        modules, names = self.imports(tree)
        found: Fn | None = None
        if isinstance(expr, ast.Name):
            found = (module, expr.id) if (module, expr.id) in self.defs else names.get(expr.id)
        elif (
            isinstance(expr, ast.Attribute)
            and isinstance(expr.value, ast.Name)
            and expr.value.id in modules
        ):
            found = (modules[expr.value.id], expr.attr)
        return found if found in self.defs else None

    def _param_type(self, fn: Fn, position: int | None, keyword: str | None) -> str | None:
        args = self.defs[fn].args
        params = [*args.posonlyargs, *args.args]
        if keyword is not None:
            params += args.kwonlyargs
            matches = [p for p in params if p.arg == keyword]
            param = matches[0] if matches else None
        else:
            param = params[position] if position is not None and position < len(params) else None
        if param is None or param.annotation is None:
            return None
        return self.types.get(ast.unparse(param.annotation).strip("'\""))

    def scan(self, fn: Fn) -> tuple[set[Call], set[Fn], list[str]]:
        """Port calls, referenced functions and problems of one function."""
        module = fn[0]
        tree, node = self.trees[module], self.defs[fn]
        held: dict[str, str] = {}  # parameter name -> "Context" or a port field
        for sub in ast.walk(node):
            if isinstance(sub, ast.arg) and sub.annotation is not None:
                kind = self.types.get(ast.unparse(sub.annotation).strip("'\""))
                if kind:
                    held[sub.arg] = kind
        parent = {id(c): p for p in ast.walk(node) for c in ast.iter_child_nodes(p)}
        calls: set[Call] = set()
        refs: set[Fn] = set()
        problems: list[str] = []
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name | ast.Attribute) and sub is not node:
                target = self.resolve(module, tree, sub)
                if target is not None:
                    refs.add(target)
            if not (isinstance(sub, ast.Name) and sub.id in held):
                continue
            expr: ast.expr = sub
            kind = held[sub.id]
            up = parent.get(id(expr))
            if kind == "Context" and isinstance(up, ast.Attribute):
                if up.attr not in PORTS:
                    continue  # ctx.clock, ctx.settings, ctx.sink, ctx.metrics: no API server
                expr, kind, up = up, up.attr, parent.get(id(up))
            where = f"{module}.{fn[1]} line {expr.lineno}"
            if kind in PORTS and isinstance(up, ast.Attribute):
                call = parent.get(id(up))
                if isinstance(call, ast.Call) and call.func is up:
                    calls.add((kind, up.attr))
                    continue
            if isinstance(up, ast.keyword):
                up, keyword, position = parent.get(id(up)), up.arg, None
            else:
                keyword, position = None, None
            if isinstance(up, ast.Call):
                func, args = up.func, list(up.args)
                if ast.unparse(func) in ("functools.partial", "partial") and args:
                    func, args = args[0], args[1:]
                callee = self.resolve(module, tree, func)
                if keyword is None and expr in args:
                    position = args.index(expr)
                if callee is None:
                    problems.append(f"{where}: {kind} goes to {ast.unparse(func)}, not followed")
                elif self._param_type(callee, position, keyword) != kind:
                    problems.append(f"{where}: {kind} goes to an unannotated parameter")
                continue
            problems.append(f"{where}: {kind} used as {ast.unparse(up or expr)!r}, not followed")
        return calls, refs, problems

    def reachable(self, roots: set[Fn]) -> tuple[set[Call], list[str]]:
        calls: set[Call] = set()
        problems: list[str] = []
        seen: set[Fn] = set()
        todo = list(roots)
        while todo:
            fn = todo.pop()
            if fn in seen:
                continue
            seen.add(fn)
            found, refs, trouble = self.scan(fn)
            calls |= found
            problems += trouble
            todo += refs - seen
        return calls, problems


@functools.cache
def core_scan() -> PortCallScan:
    core = ROOT / "functions" / "core"
    return PortCallScan({p.stem: p.read_text() for p in sorted(core.glob("*.py"))})


def stage_roots(stage: str) -> set[Fn]:
    """The functions of functions.core that functions/<stage>/main.py hands events to."""
    scan = core_scan()
    tree = ast.parse((ROOT / "functions" / stage / "main.py").read_text())
    return {
        fn
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute | ast.Name)
        and (fn := scan.resolve("<main>", tree, node)) is not None
    }


def stage_calls(stage: str) -> tuple[set[Call], list[str]]:
    roots = stage_roots(stage)
    assert roots, f"functions/{stage}/main.py hands events to no function of functions.core"
    return core_scan().reachable(roots)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_calls_exactly_the_port_methods_listed(stage: str) -> None:
    assert stage_roots(stage) == {(stage, "handle")}
    calls, problems = stage_calls(stage)
    assert problems == []
    assert calls == CALLS[stage]


def test_the_port_call_scan_sees_what_it_cannot_follow() -> None:
    """A guard on PortCallScan: calls through a helper and a partial are found; a port kept
    in a variable or handed outside the package is reported, not silently missed."""
    source = """
import functools
from functions.core.context import Context
from functions.core.ports import ExperimentStore

def handle(ctx: Context) -> None:
    ctx.clock.now()
    functools.partial(_helper, ctx.store)()
    _other(ctx)

def _helper(store: ExperimentStore) -> None:
    store.list()

def _other(ctx: Context) -> None:
    ctx.objects.patch(None)

def leaks(ctx: Context) -> None:
    store = ctx.store
    store.write_status({}, {})
    outside(ctx)
    _untyped(ctx)

def _untyped(c) -> None:
    c.store.get_metric("ns", "m")
"""
    scan = PortCallScan({"m": source})
    calls, problems = scan.reachable({("m", "handle")})
    assert calls == {("store", "list"), ("objects", "patch")} and problems == []
    calls, problems = scan.reachable({("m", "leaks")})
    assert calls == set()
    assert [p.split(": ", 1)[1] for p in problems] == [
        "store used as 'store = ctx.store', not followed",
        "Context goes to outside, not followed",
        "Context goes to an unannotated parameter",
    ]


# --- what the adapters ask the API server for -------------------------------------------------


def rbac_verb(method: str, path: str) -> str:
    """The authorization verb of a request, as Kubernetes derives it from the HTTP method
    and whether the path names one object or a collection (kubernetes.io/docs/reference/
    access-authn-authz/authorization/#determine-the-request-verb). Watches are not made."""
    one_object = "{name}" in path
    verbs = {
        "GET": "get" if one_object else "list",
        "PUT": "update",
        "PATCH": "patch",
        "POST": "create",
        "DELETE": "delete" if one_object else "deletecollection",
    }
    return verbs[method]


# The official client's class that owns each call the adapter makes (CustomObjectsApi for
# the rest): kubernetes-client/python, kubernetes/client/api/events_v1_api.py.
ROUTE_OWNERS: dict[str, type] = {"create_namespaced_event": EventsV1Api}


def client_request(name: str) -> tuple[str, str]:
    """(HTTP method, path template) of the official client's method `name`, read from the
    request it builds (kubernetes-client/python 30+: `_<name>_serialize`)."""
    owner = ROUTE_OWNERS.get(name, CustomObjectsApi)
    source = inspect.getsource(getattr(owner, f"_{name}_serialize"))
    (method,) = re.findall(r"method='([A-Z]+)'", source)
    (path,) = re.findall(r"resource_path='([^']+)'", source)
    return method, path


def test_the_adapter_makes_the_official_clients_requests() -> None:
    # The functions' adapter speaks REST itself (importing the official client would double
    # a cold start); each call it makes is the request CustomObjectsApi builds for its name.
    assert set(ROUTE_OWNERS) < set(KubeApi.ROUTES)
    for name, route in KubeApi.ROUTES.items():
        assert route == client_request(name), name
        owner = ROUTE_OWNERS.get(name, CustomObjectsApi)
        params = list(inspect.signature(getattr(KubeApi, name)).parameters.values())[1:]
        theirs = list(inspect.signature(getattr(owner, name)).parameters)[1:]
        positional = [p.name for p in params if p.kind is not p.KEYWORD_ONLY]
        assert positional == theirs[: len(positional)], name
        # A keyword-only parameter is one of the client's that comes after some it never
        # sends (delete's body, after grace_period_seconds and the like); ours are not.
        keywords = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
        assert set(keywords) - {"what", "content_type"} <= set(theirs[len(positional) :]), name


def adapter_requests(adapter: type) -> dict[str, set[tuple[str, str, str]]]:
    """For each public method of an adapter: the (apiGroup, resource, verb) of the
    KubeApi calls it makes, group and plural read from the arguments it passes."""
    module = inspect.getmodule(adapter)
    tree = ast.parse(textwrap.dedent(inspect.getsource(adapter)))
    (cls,) = tree.body
    assert isinstance(cls, ast.ClassDef)
    found: dict[str, set[tuple[str, str, str]]] = {}
    for method in cls.body:
        if not isinstance(method, ast.FunctionDef) or method.name.startswith("_"):
            continue
        requests = found.setdefault(method.name, set())
        for node in ast.walk(method):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and ast.unparse(node.func.value) == "self._api"
            ):
                continue
            name = node.func.attr
            params = list(inspect.signature(getattr(KubeApi, name)).parameters)[1:]
            args = dict(zip(params, node.args, strict=False))
            args |= {k.arg: k.value for k in node.keywords if k.arg}
            http, path = KubeApi.ROUTES[name]
            if "group" not in args:
                # A call of one fixed resource: its group and plural are in the route itself.
                fixed = re.fullmatch(r"/apis/([^/{]+)/[^/]+/namespaces/\{namespace\}/(\w+)", path)
                assert fixed, path
                requests.add((fixed[1], fixed[2], rbac_verb(http, path)))
                continue
            group, plural = args["group"], args["plural"]
            if isinstance(group, ast.Name) and isinstance(plural, ast.Name):
                group_plural = (getattr(module, group.id), getattr(module, plural.id))
            elif (
                isinstance(group, ast.Attribute)
                and isinstance(group.value, ast.Name)
                and group.value.id not in ("ref", "sink")
            ):
                # EXPERIMENT.group, EXPERIMENT.plural: a resources.Resource constant
                resource_of = getattr(module, group.value.id)
                assert ast.unparse(plural) == f"{group.value.id}.plural", ast.unparse(plural)
                group_plural = (resource_of.group, resource_of.plural)
            elif ast.unparse(group) == "sink.group":  # an alert sink's Addressable
                assert ast.unparse(plural) == "sink.plural", ast.unparse(plural)
                group_plural = ADDRESSABLE
            else:  # ref.group, ref.plural: whatever kind the traffic backend names
                assert (ast.unparse(group), ast.unparse(plural)) == ("ref.group", "ref.plural")
                group_plural = TRAFFIC
            sub = path.split("{name}", 1)[1] if "{name}" in path else ""
            resource = group_plural[1] + sub
            requests.add((group_plural[0], resource, rbac_verb(http, path)))
    return found


def test_adapter_requests_are_read_off_the_adapters() -> None:
    derived: dict[Call, set[tuple[str, str, str]]] = {}
    wiring = inspect.getsource(runtime)
    for field, (port, adapter) in PORTS.items():
        # The Context field holds this port, and on a cluster this adapter fills it (the
        # store inside the StoryTeller that records its Events).
        assert typing.get_type_hints(Context)[field] is port
        wrapped = "StoryTeller(" if field == "store" else ""
        assert f"{field}={wrapped}{adapter.__name__}(" in wiring, f"runtime does not wire {adapter}"
        requests = adapter_requests(adapter)
        methods = {m for m in vars(port) if not m.startswith("_") and callable(vars(port)[m])}
        assert methods <= set(requests), f"{adapter.__name__} lacks {methods - set(requests)}"
        for m in methods:
            assert requests[m], f"{adapter.__name__}.{m} makes no API call the scan sees"
            derived[(field, m)] = set(requests[m])
    for call, recorder in RECORDED.items():
        assert f"{recorder.__name__}(" in wiring, f"runtime does not wire {recorder}"
        recorded = adapter_requests(recorder)["record"]
        derived[call] |= recorded
    assert derived == ADAPTER_VERBS


def test_rbac_verbs_follow_the_http_methods() -> None:
    assert client_request("replace_namespaced_custom_object_status") == (
        "PUT",
        "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/status",
    )
    assert rbac_verb(*client_request("list_cluster_custom_object")) == "list"
    assert rbac_verb(*client_request("get_namespaced_custom_object")) == "get"
    assert rbac_verb(*client_request("patch_namespaced_custom_object")) == "patch"


# --- the ClusterRoles: exactly what the code calls --------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_rbac_grants_each_function_what_its_code_calls(stage: str) -> None:
    one("ServiceAccount", f"arbiter-{stage}", "config/rbac")
    grants = granted(f"arbiter-{stage}", "config")
    assert expected_grants(stage) - grants == set()


@pytest.mark.parametrize("stage", STAGES)
def test_rbac_grants_nothing_more(stage: str) -> None:
    grants = granted(f"arbiter-{stage}", "config")
    assert grants - expected_grants(stage) == set()
    assert not any("*" in g for grant in grants for g in grant)


def test_expected_grants_tell_the_stages_apart() -> None:
    # A guard on the tables: they must not collapse into one grant set for all four.
    assert ("arbiter.dev", "metrics", "get") in expected_grants("iterate")
    assert ("arbiter.dev", "experiments", "list") not in expected_grants("assess")
    assert ("serving.kserve.io", "inferenceservices", "patch") in expected_grants("finish")
    assert ("networking.istio.io", "virtualservices", "patch") in expected_grants("assess")
    assert not any(g == "serving.kserve.io" for g, _, _ in expected_grants("iterate"))
    for stage in STAGES:
        assert ("arbiter.dev", "experiments/status", "patch") not in expected_grants(stage)


# --- kustomize ------------------------------------------------------------------------------


def kustomizations() -> list[Path]:
    return sorted(p for d in ("config", "eventing") for p in (ROOT / d).rglob("kustomization.yaml"))


# Not installed at all: what the functions create at run time, kept as a file to show it
# (`test_the_pingsource_file_is_what_start_creates` keeps the two the same).
CREATED_AT_RUN_TIME = {"eventing/pingsource.yaml"}

# Files left out of their folder's kustomization on purpose, applied by hand (docs/cluster.md).
OPT_IN = {
    # The API server refuses EventPolicies while Eventing's authentication-oidc is off, its
    # default (knative/eventing pkg/apis/eventing/v1alpha1/eventpolicy_validation.go), so
    # listing them would fail `kubectl apply -k eventing` on a default install.
    "eventing/eventpolicy.yaml",
}

# Folders installed instead of a listed sibling, never beside it: the Metric library of the
# other queue-proxy generation installs the same Metric names (config/metrics/kustomization).
ALTERNATIVES = {"config/metrics/knative-1.19"}


def test_opt_in_files_name_their_namespace_and_stay_out_of_kustomize() -> None:
    for name in OPT_IN:
        (k,) = _load(ROOT / Path(name).parent / "kustomization.yaml")
        assert Path(name).name not in k["resources"], name
        for doc in _load(ROOT / name):  # no kustomize to set it: each says where it goes
            assert doc["metadata"]["namespace"] == NAMESPACE, name


@pytest.mark.parametrize("path", kustomizations(), ids=rel)
def test_kustomization_lists_every_file_in_its_folder(path: Path) -> None:
    (k,) = _load(path)
    folder = path.parent
    listed = k.get("resources", [])
    assert len(listed) == len(set(listed)), "a resource listed twice"
    for entry in listed:
        assert (folder / entry).exists(), f"{rel(path)} lists {entry}, which does not exist"
        if (folder / entry).is_dir():
            assert (folder / entry / "kustomization.yaml").is_file(), entry
    files = {
        p.name
        for p in folder.glob("*.yaml")
        if p.name != "kustomization.yaml" and rel(p) not in OPT_IN | CREATED_AT_RUN_TIME
    }
    subdirs = {
        p.name
        for p in folder.iterdir()
        if (p / "kustomization.yaml").is_file() and rel(p) not in ALTERNATIVES
    }
    assert files | subdirs == set(listed)


def test_top_level_kustomizations_set_the_namespace_and_the_image() -> None:
    config = _load(ROOT / "config" / "kustomization.yaml")[0]
    eventing = _load(ROOT / "eventing" / "kustomization.yaml")[0]
    assert config["namespace"] == eventing["namespace"] == NAMESPACE
    assert "metrics" in config["resources"]
    assert [i["name"] for i in config["images"]] == ["arbiter"]


# --- Knative, Gateway API and Istio schemas through node -------------------------------------


# The groups whose objects tools/knative-validate checks, each with the package whose schemas
# it uses (@kubernetes-models/knative 4.0.0, gateway-api 2.0.0, istio 3.0.1).
MODELLED_GROUPS = re.compile(r".*\.knative\.dev|gateway\.networking\.k8s\.io|.*\.istio\.io")


def modelled_docs() -> list[tuple[Path, Doc]]:
    return [
        (p, d)
        for p, d in all_docs()
        if MODELLED_GROUPS.fullmatch(d.get("apiVersion", "").rpartition("/")[0])
    ]


def knative_docs() -> list[tuple[Path, Doc]]:
    return [
        (p, d)
        for p, d in modelled_docs()
        if d["apiVersion"].rpartition("/")[0].endswith(".knative.dev")
    ]


@functools.cache
def _node_ready() -> str:
    node = shutil.which("node")
    assert node, "node is needed to validate the Knative manifests (Debian: nodejs)"
    if not (KNATIVE_VALIDATE / "node_modules").is_dir():
        npm = shutil.which("npm")
        assert npm, "npm is needed to install tools/knative-validate (make node-deps)"
        done = subprocess.run(
            [npm, "ci", "--prefix", str(KNATIVE_VALIDATE), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return node


def run_validate(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_node_ready(), str(KNATIVE_VALIDATE / "validate.js"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_manifests_validate_against_the_published_schemas() -> None:
    files = sorted({p for p, _ in modelled_docs()})
    assert len(files) >= 8
    assert {d["kind"] for _, d in modelled_docs()} >= {"Service", "HTTPRoute", "VirtualService"}
    result = run_validate(*files)
    assert result.returncode == 0, result.stderr
    # Every such object was checked (EventPolicy too, since knative 4.0.0), none skipped.
    assert f"{len(modelled_docs())} valid, 0 invalid" in result.stdout, result.stdout
    assert any("EventPolicy" in line for line in result.stdout.splitlines()), result.stdout


def _upstream(mirror: str, path: str) -> Doc:
    repo = Path("/work/.mirror") / mirror / "repo"
    assert repo.is_dir(), f"{repo}: fetch github:{mirror.replace('+', '/')} to check the CRD"
    text = subprocess.run(
        ["git", "-C", str(repo), "show", f"HEAD:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(
        d for d in yaml.safe_load_all(text) if d and d.get("kind") == "CustomResourceDefinition"
    )


@pytest.mark.slow
def test_where_a_package_is_stricter_than_the_cluster_the_validator_follows_the_crd(
    tmp_path: Path,
) -> None:
    """validate.js LOOSER_ON_THE_CLUSTER: the packages require a container name and a
    SinkBinding status; the CRDs Knative installs do not (knative/serving
    config/core/300-resources/service.yaml, knative/eventing
    config/core/resources/sinkbindings.yaml), so neither is refused here."""
    service = _upstream("knative+serving", "config/core/300-resources/service.yaml")
    schema = service["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    container = schema["properties"]["spec"]["properties"]["template"]["properties"]["spec"][
        "properties"
    ]["containers"]["items"]
    assert "name" in container["properties"] and "name" not in container.get("required", [])
    binding = _upstream("knative+eventing", "config/core/resources/sinkbindings.yaml")
    assert "status" not in binding["spec"]["versions"][0]["schema"]["openAPIV3Schema"].get(
        "required", []
    )
    ksvc = copy.deepcopy(one("Service", "arbiter-dead-letter", "eventing"))
    assert all("name" not in c for c in ksvc["spec"]["template"]["spec"]["containers"])
    # Still strict about what the CRD does require: a container's env entry needs a name.
    bad = copy.deepcopy(ksvc)
    bad["spec"]["template"]["spec"]["containers"][0]["env"] = [{"value": "x"}]
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(ksvc))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert run_validate(tmp_path / "ok.yaml").returncode == 0
    result = run_validate(tmp_path / "bad.yaml")
    assert result.returncode == 1 and "env/0 must have required property name" in result.stderr


@pytest.mark.slow
def test_knative_validator_names_the_file_kind_name_and_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    trigger = copy.deepcopy(one("Trigger", "arbiter-assess", "eventing"))
    trigger["spec"]["broker"] = 5
    ping = copy.deepcopy(one("PingSource", "arbiter-tick", "eventing"))
    bad.write_text(yaml.safe_dump_all([trigger, ping]))
    result = run_validate(bad)
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("INVALID")]
    assert str(bad) in line and "Trigger arbiter-system/arbiter-assess" in line
    assert "broker" in line and "string" in line
    assert "OK" in result.stdout and "PingSource" in result.stdout


# --- image ----------------------------------------------------------------------------------


def test_dockerfile_builds_one_non_root_functions_framework_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("#")]
    # An exact release on a named Debian, not a moving `3.11-slim`: python 3.11.15 is what
    # docker-library/python's 3.11/slim-bookworm/Dockerfile builds (commit 4f07059, 2026-06).
    # A digest may follow, pinned at build time (docs/cluster.md); none can be looked up here.
    assert re.fullmatch(r"FROM python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", lines[0]), (
        lines[0]
    )
    assert any(re.fullmatch(r"RUN pip install \.( .*)?", x) for x in lines)
    (user,) = [x for x in lines if x.startswith("USER ")]
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "runAsNonRoot needs a numeric, non-zero uid"
    assert lines[-1] == 'CMD ["functions-framework"]'
    ignored = [
        x.strip()
        for x in (ROOT / ".dockerignore").read_text().splitlines()
        if x.strip() and not x.startswith("#")
    ]
    copied = [src for x in lines if x.startswith("COPY ") for src in x.split()[1:-1]]
    # What ships (the analytics and the functions) reaches the image; the tools around it
    # (the local run, the command, the benchmarks) and the manifests do not.
    for needed_path in ("pyproject.toml", "README.md", "analytics", "functions"):
        assert needed_path in copied, needed_path
        assert not any(fnmatch.fnmatch(needed_path, pattern) for pattern in ignored)
    assert set(copied) == {"pyproject.toml", "README.md", "analytics", "functions"}, copied
    for stage in STAGES:
        source = container_env(function_service(stage))["FUNCTION_SOURCE"]
        assert (ROOT / source).is_file()
        assert not any(fnmatch.fnmatch(source, p) for p in ignored if "*" in p)
