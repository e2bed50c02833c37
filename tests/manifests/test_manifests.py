"""The cluster manifests (config/, eventing/, samples/) checked against the code they deploy.

No cluster is needed: the CRD schemas are applied with `jsonschema` (after translating the
Kubernetes structural-schema extensions) and their CEL rules with cel-python; the Trigger
filters are compared with functions.core.events.TRIGGERS, the RBAC with the API calls the
stages make, the settings ConfigMap with Settings, and the Knative objects are validated with
the JSON schemas of @kubernetes-models/knative (tools/knative-validate, run by node).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import inspect
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import celpy
import functions_framework
import jsonschema
import pytest
import yaml

from analytics import model
from analytics.parse import SpecError, parse_experiment
from functions.adapters.kubernetes import KubeExperimentStore
from functions.core import events, traffic
from functions.core import status as st
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
            weights.append(_field(obj, traffic.parse_field_path(ref["fieldPath"])))
        if len(weights) == len(versions) > 2:  # one field per version: the generic backend
            assert weights[0] == 100 and sum(weights) == 100, (rel(path), weights)


def test_kserve_canary_is_a_new_model_on_the_same_inferenceservice() -> None:
    baseline = one("InferenceService", "sklearn-iris", "samples/kserve/sklearn-iris.yaml")
    canary = one("InferenceService", "sklearn-iris", "samples/kserve/sklearn-iris-canary.yaml")
    old, new = baseline["spec"]["predictor"], canary["spec"]["predictor"]
    assert "canaryTrafficPercent" not in old and new["canaryTrafficPercent"] == 0
    assert old["model"]["storageUri"].endswith("/model")
    assert new["model"]["storageUri"] == old["model"]["storageUri"] + "-2"
    legacy = one("InferenceService", "sklearn-iris-legacy", "samples/kserve")
    assert legacy["apiVersion"] == traffic.KFSERVING
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
    (only,) = trigger["spec"]["filters"]
    return [f["exact"]["type"] for f in only["any"]]


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
    (source,) = of_kind("ApiServerSource", "sources.knative.dev/v1", "eventing")
    assert source["spec"]["mode"] == "Resource"
    assert source["spec"]["resources"] == [{"apiVersion": ARBITER_API, "kind": "Experiment"}]
    assert _to_broker(source["spec"]["sink"])
    grants = granted(source["spec"]["serviceAccountName"], "eventing")
    for verb in ("get", "list", "watch"):
        assert ("arbiter.dev", "experiments", verb) in grants


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
    assert settings.max_experiment_seconds == Settings.max_experiment_seconds
    assert settings.finish_deadline_seconds == Settings.finish_deadline_seconds


# --- RBAC -----------------------------------------------------------------------------------


def granted(service_account: str, *paths: str) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the ClusterRoles bound to the service account allow."""
    paths = paths or ("config", "eventing")
    roles = {r["metadata"]["name"]: r for r in of_kind("ClusterRole", None, *paths)}
    grants = set()
    for binding in of_kind("ClusterRoleBinding", None, *paths):
        if not any(
            s["kind"] == "ServiceAccount"
            and s["name"] == service_account
            and s["namespace"] == NAMESPACE
            for s in binding["subjects"]
        ):
            continue
        for rule in roles[binding["roleRef"]["name"]]["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants |= {(group, resource, verb) for verb in rule["verbs"]}
    return grants


def _traffic_resources() -> set[tuple[str, str]]:
    """Every kind of object a traffic backend patches: the three built in, plus whatever
    a sample names as a weightObjRef (the generic field-path backend)."""
    refs = [
        traffic.ObjectRef(traffic.KSERVE, "InferenceService", "", ""),
        traffic.ObjectRef(traffic.KFSERVING, "InferenceService", "", ""),
        traffic.ObjectRef(traffic.KNATIVE, "Service", "", ""),
    ]
    for _, doc in docs_in("samples/experiments"):
        info = doc.get("spec", {}).get("versionInfo") or {}
        for v in [info.get("baseline") or {}, *info.get("candidates", [])]:
            if "weightObjRef" in v:
                w = v["weightObjRef"]
                refs.append(traffic.ObjectRef(w["apiVersion"], w["kind"], "", ""))
    return {(r.group, r.plural) for r in refs}


# Modules of functions.core whose calls a stage makes as its own (iterate's ping runs the
# clock, functions/core/sweep.py, which lists, reads and writes experiments).
RUNS: dict[str, tuple[str, ...]] = {"iterate": ("sweep",)}


def needed(stage: str) -> set[tuple[str, str, str]]:
    """The API calls a stage makes, read off its module (and the modules it runs as its
    own): the store's methods it calls and whether it moves traffic (functions.core.rollout)."""
    source = "\n".join(
        (ROOT / "functions" / "core" / f"{module}.py").read_text()
        for module in (stage, *RUNS.get(stage, ()))
    )
    status_verb = (
        "update"
        if "replace_namespaced_custom_object_status" in inspect.getsource(KubeExperimentStore)
        else "patch"
    )
    calls = {
        "ctx.store.get(": ("arbiter.dev", "experiments", "get"),
        "ctx.store.list(": ("arbiter.dev", "experiments", "list"),
        "ctx.store.write_status(": ("arbiter.dev", "experiments/status", status_verb),
        "ctx.store.get_metric(": ("arbiter.dev", "metrics", "get"),
    }
    result = {grant for call, grant in calls.items() if call in source}
    if "rollout." in source:
        result |= {(g, r, v) for g, r in _traffic_resources() for v in ("get", "patch")}
    return result


# What the brief grants on top of the calls read off the code (watch for a future
# informer, patch for merge-patching status, metrics list for resolving them in bulk).
BRIEF = {
    "start": {("arbiter.dev", "experiments", v) for v in ("get", "list", "watch", "patch")}
    | {("arbiter.dev", "experiments/status", v) for v in ("patch", "update")}
    | {("arbiter.dev", "metrics", "get")},
    "iterate": {("arbiter.dev", "experiments", v) for v in ("get", "list")}
    | {("arbiter.dev", "experiments/status", "patch")}
    | {("arbiter.dev", "metrics", v) for v in ("get", "list")},
    "assess": {
        ("arbiter.dev", "experiments", "get"),
        ("arbiter.dev", "experiments/status", "patch"),
    },
    "finish": {
        ("arbiter.dev", "experiments", "get"),
        ("arbiter.dev", "experiments/status", "patch"),
    },
}


@pytest.mark.parametrize("stage", STAGES)
def test_rbac_grants_each_function_what_its_code_calls(stage: str) -> None:
    one("ServiceAccount", f"arbiter-{stage}", "config/rbac")
    grants = granted(f"arbiter-{stage}", "config")
    assert needed(stage) - grants == set()
    assert BRIEF[stage] - grants == set()
    if stage != "iterate":  # iterate never touches traffic
        assert {(g, r, v) for g, r in _traffic_resources() for v in ("get", "patch")} <= grants


@pytest.mark.parametrize("stage", STAGES)
def test_rbac_grants_nothing_more(stage: str) -> None:
    grants = granted(f"arbiter-{stage}", "config")
    allowed = needed(stage) | BRIEF[stage]
    if stage != "iterate":
        allowed |= {(g, r, v) for g, r in _traffic_resources() for v in ("get", "patch")}
    assert grants - allowed == set()
    assert not any("*" in g for grant in grants for g in grant)


def test_stages_that_move_traffic_are_read_off_the_code() -> None:
    # A guard on `needed`: if this breaks, the scan above has gone blind.
    assert ("arbiter.dev", "experiments", "list") in needed("iterate")
    assert ("arbiter.dev", "metrics", "get") in needed("iterate")
    assert ("serving.kserve.io", "inferenceservices", "patch") in needed("finish")
    assert ("networking.istio.io", "virtualservices", "patch") in needed("assess")
    assert not any(g == "serving.kserve.io" for g, _, _ in needed("iterate"))


# --- kustomize ------------------------------------------------------------------------------


def kustomizations() -> list[Path]:
    return sorted(p for d in ("config", "eventing") for p in (ROOT / d).rglob("kustomization.yaml"))


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
    files = {p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml"}
    subdirs = {p.name for p in folder.iterdir() if (p / "kustomization.yaml").is_file()}
    assert files | subdirs == set(listed)


def test_top_level_kustomizations_set_the_namespace_and_the_image() -> None:
    config = _load(ROOT / "config" / "kustomization.yaml")[0]
    eventing = _load(ROOT / "eventing" / "kustomization.yaml")[0]
    assert config["namespace"] == eventing["namespace"] == NAMESPACE
    assert "metrics" in config["resources"]
    assert [i["name"] for i in config["images"]] == ["arbiter"]


# --- Knative schemas through node -----------------------------------------------------------


def knative_docs() -> list[tuple[Path, Doc]]:
    return [
        (p, d)
        for p, d in all_docs()
        if d.get("apiVersion", "").split("/")[0].endswith(".knative.dev")
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
def test_knative_manifests_validate_against_kubernetes_models_knative() -> None:
    files = sorted({p for p, _ in knative_docs()})
    assert len(files) >= 8
    result = run_validate(*files)
    assert result.returncode == 0, result.stderr
    # Every Knative object was checked, none skipped for want of a model.
    assert f"{len(knative_docs())} valid, 0 invalid" in result.stdout, result.stdout


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
    assert lines[0] == "FROM python:3.11-slim"
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
