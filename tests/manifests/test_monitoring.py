"""config/monitoring/: kube-state-metrics' Custom Resource State configuration for Experiments
and the Grafana dashboard built on its series.

The upstream facts are those of kubernetes/kube-state-metrics v2.20.0 (commit
4ffeda2ef866b0fef372849825a803296483b336): docs/metrics/extend/customresourcestate-metrics.md
(the format, the naming, the type conversions) and the Go types it documents,
pkg/customresourcestate/config.go and config_metrics_types.go, with the behaviour in
registry_factory.go. The configuration is checked for (1) using only that format's fields,
(2) paths that exist in the Experiment CRD, StateSet lists equal to the CRD's and the code's
enums, (3) a dashboard that queries only series the configuration produces, with labels they
carry, and (4) on a real run's statuses: the series they give (rendered here as
registry_factory.go does, there being no kube-state-metrics binary on PyPI or in Debian)
loaded into a real Prometheus, where every dashboard query has an answer and the answers are
the statuses' numbers.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import yaml

from functions.core.status import Outcome, Stage
from tests.fakes import BASELINE_REVISION, CANDIDATE_REVISION, experiment, kserve_world, serve
from tests.support.prometheus import (
    INSTALL_HINT,
    OpenMetrics,
    PrometheusTSDB,
    missing_binaries,
)

ROOT = Path(__file__).resolve().parents[2]
KSM_FILE = ROOT / "config" / "monitoring" / "kube-state-metrics.yaml"
DASHBOARD_FILE = ROOT / "config" / "monitoring" / "grafana-dashboard.json"
CRD_FILE = ROOT / "config" / "crd" / "experiments.yaml"
CONFIG_KEY = "custom-resource-state.yaml"

Doc = dict[str, Any]

# --- the upstream format --------------------------------------------------------------------

# Every field of the configuration, from the Go types the document describes
# (pkg/customresourcestate/config.go: Metrics, MetricsSpec, Resource, GroupVersionKind,
# Labels, Generator, Metric; config_metrics_types.go: MetricMeta, MetricGauge, MetricInfo,
# MetricStateSet). Labels and MetricMeta are inlined into their holders, as their
# `yaml:",inline"` tags say. `kind: CustomResourceStateMetrics` heads every example in the
# document, though the Go type ignores it. Closed: a field the format lacks (a typo, or
# `valueFrom` on an Info) fails here instead of being ignored by kube-state-metrics.
_PATH = {"type": "array", "items": {"type": "string"}}
_LABELS_FROM_PATH = {"type": "object", "additionalProperties": _PATH}
_COMMON_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {"path": _PATH, "labelsFromPath": _LABELS_FROM_PATH}


def _closed(properties: Mapping[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(required),
        "additionalProperties": False,
    }


# "The configuration supports three kind of metrics": Gauge, StateSet, Info (the document's
# "Metric types"); configOverrides lower-cases `type`, the document spells them so.
METRIC_TYPES = ("Gauge", "StateSet", "Info")
_EACH = {
    **_closed(
        {
            "type": {"enum": list(METRIC_TYPES)},
            "gauge": _closed(
                {
                    **_META,
                    "labelFromKey": {"type": "string"},
                    "valueFrom": _PATH,
                    "nilIsZero": {"type": "boolean"},
                }
            ),
            "stateSet": _closed(
                {
                    **_META,
                    "list": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "labelName": {"type": "string", "minLength": 1},
                    "valueFrom": _PATH,
                },
                required=("list", "labelName"),
            ),
            "info": _closed({**_META, "labelFromKey": {"type": "string"}}),
        },
        required=("type",),
    ),
    # newCompiledMetric: "expected each.<type> to not be nil"; and only that one is read.
    "allOf": [
        {
            "if": {"properties": {"type": {"const": kind}}},
            "then": {
                "required": [kind[0].lower() + kind[1:]],
                "not": {
                    "anyOf": [
                        {"required": [other[0].lower() + other[1:]]}
                        for other in METRIC_TYPES
                        if other != kind
                    ]
                },
            },
        }
        for kind in METRIC_TYPES
    ],
}
_GENERATOR = _closed(
    {
        "name": {"type": "string", "minLength": 1},
        "help": {"type": "string", "minLength": 1},
        "each": _EACH,
        "commonLabels": _COMMON_LABELS,
        "labelsFromPath": _LABELS_FROM_PATH,
        "errorLogV": {"type": "integer", "minimum": 0},
    },
    required=("name", "help", "each"),
)
_RESOURCE = _closed(
    {
        "groupVersionKind": _closed(
            {k: {"type": "string", "minLength": 1} for k in ("group", "version", "kind")},
            required=("group", "version", "kind"),
        ),
        "metricNamePrefix": {"type": "string"},
        "resourcePlural": {"type": "string"},
        "commonLabels": _COMMON_LABELS,
        "labelsFromPath": _LABELS_FROM_PATH,
        "metrics": {"type": "array", "items": _GENERATOR, "minItems": 1},
        "errorLogV": {"type": "integer", "minimum": 0},
    },
    required=("groupVersionKind", "metrics"),
)
CONFIG_SCHEMA = _closed(
    {
        "kind": {"const": "CustomResourceStateMetrics"},
        "spec": _closed(
            {"resources": {"type": "array", "items": _RESOURCE, "minItems": 1}},
            required=("resources",),
        ),
    },
    required=("kind", "spec"),
)

# config.go GetMetricNamePrefix: without metricNamePrefix, "kube_" + "customresource";
# registry_factory.go fullName joins a non-empty prefix and the name with "_".
DEFAULT_PREFIX = "kube_customresource"
# registry_factory.go NewCustomResourceMetrics/compile: the labels every series gets, from
# groupVersionKind ("reserved, and will be overwritten", says the document).
GVK_LABELS = ("customresource_group", "customresource_version", "customresource_kind")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def full_name(resource: Mapping[str, Any], generator: Mapping[str, Any]) -> str:
    prefix = resource.get("metricNamePrefix", DEFAULT_PREFIX)
    return "_".join(p for p in (prefix, generator["name"]) if p)


# --- loading --------------------------------------------------------------------------------


@functools.cache
def manifests() -> tuple[Doc, ...]:
    return tuple(d for d in yaml.safe_load_all(KSM_FILE.read_text()) if d)


def the(kind: str) -> Doc:
    (doc,) = [d for d in manifests() if d["kind"] == kind]
    return doc


@functools.cache
def config() -> Doc:
    loaded = yaml.safe_load(the("ConfigMap")["data"][CONFIG_KEY])
    assert isinstance(loaded, dict)
    return loaded


def resource() -> Doc:
    (only,) = config()["spec"]["resources"]
    return dict(only)


def generators() -> list[Doc]:
    return list(resource()["metrics"])


def each_config(generator: Mapping[str, Any]) -> Doc:
    """The block of the generator's type (each.gauge, each.stateSet or each.info)."""
    kind = generator["each"]["type"]
    block = generator["each"][kind[0].lower() + kind[1:]]
    assert isinstance(block, dict)
    return block


@functools.cache
def crd() -> Doc:
    loaded = yaml.safe_load(CRD_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def crd_version() -> Doc:
    (version,) = [v for v in crd()["spec"]["versions"] if v["storage"]]
    return dict(version)


@functools.cache
def dashboard() -> Doc:
    loaded = json.loads(DASHBOARD_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


# --- (1) the format -------------------------------------------------------------------------


def test_the_configmap_holds_a_configuration_in_the_upstream_format() -> None:
    jsonschema.validate(config(), CONFIG_SCHEMA)


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("a misspelt field", lambda g: g["each"]["gauge"].update(nilIsZer0=True)),
        ("an unknown type", lambda g: g["each"].update(type="Histogram")),
        ("a type without its block", lambda g: g["each"].update(type="Info")),
        ("valueFrom on an Info", lambda g: g["each"].update(info={"valueFrom": ["x"]})),
        ("no help", lambda g: g.pop("help")),
    ],
)
def test_the_format_check_refuses_what_kube_state_metrics_would_not_read(
    where: str, change: Any
) -> None:
    bad = copy.deepcopy(config())
    gauge = next(g for g in bad["spec"]["resources"][0]["metrics"] if g["each"]["type"] == "Gauge")
    change(gauge)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, CONFIG_SCHEMA)


def test_it_watches_the_experiment_kind_the_crd_serves() -> None:
    gvk = resource()["groupVersionKind"]
    spec = crd()["spec"]
    assert gvk == {
        "group": spec["group"],
        "version": crd_version()["name"],
        "kind": spec["names"]["kind"],
    }
    # Without resourcePlural kube-state-metrics takes the CRD's plural (FromConfig sets it
    # from discovery); a stated one would have to be the CRD's.
    assert resource().get("resourcePlural", spec["names"]["plural"]) == spec["names"]["plural"]


def test_series_names_and_labels_are_valid_and_unique() -> None:
    names = [full_name(resource(), g) for g in generators()]
    assert len(names) == len(set(names)), names
    for name, generator in zip(names, generators(), strict=True):
        assert METRIC_NAME.match(name), name
        assert name.startswith("arbiter_experiment_"), name
        # compileFamily logs "Info metric does not have _info suffix" otherwise.
        assert (generator["each"]["type"] == "Info") == generator["name"].endswith("_info"), name
    for generator in generators():
        for label in series_labels(generator):
            assert LABEL_NAME.match(label), label
        own = set(generator.get("labelsFromPath", {})) | set(
            each_config(generator).get("labelsFromPath", {})
        )
        assert not own & set(GVK_LABELS), "customresource_* labels are kube-state-metrics'"


def series_labels(generator: Mapping[str, Any]) -> set[str]:
    """The labels a generator's series carry (config.go Labels.Merge, registry_factory.go
    compiledStateSet: labelName on each state)."""
    each = each_config(generator)
    labels = set(GVK_LABELS)
    for holder in (resource(), generator, each):
        labels |= set(holder.get("labelsFromPath", {})) | set(holder.get("commonLabels", {}))
    if "labelName" in each:
        labels.add(each["labelName"])
    if each.get("labelFromKey"):
        labels.add(each["labelFromKey"])
    return labels


def produced() -> dict[str, set[str]]:
    """Every series name the configuration produces, with its labels."""
    return {full_name(resource(), g): series_labels(g) for g in generators()}


def test_every_series_carries_the_experiment_and_its_namespace() -> None:
    assert resource()["labelsFromPath"] == {
        "namespace": ["metadata", "namespace"],
        "experiment": ["metadata", "name"],
    }
    assert set(produced()) >= {
        "arbiter_experiment_info",
        "arbiter_experiment_stage",
        "arbiter_experiment_completed_iterations",
        "arbiter_experiment_outcome",
        "arbiter_experiment_version_weight",
        "arbiter_experiment_condition",
        "arbiter_experiment_created",
    }


def test_kube_state_metrics_may_list_and_watch_experiments_and_crds() -> None:
    # The document's "RBAC-enabled Clusters": list and watch on the CRDs and on the resource.
    role, binding = the("ClusterRole"), the("ClusterRoleBinding")
    grants = {
        (group, res, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }
    spec = crd()["spec"]
    assert grants == {
        (g, r, v)
        for g, r in (
            (spec["group"], spec["names"]["plural"]),
            ("apiextensions.k8s.io", "customresourcedefinitions"),
        )
        for v in ("list", "watch")
    }
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    # kube-state-metrics' examples/standard (v2.20.0): ServiceAccount kube-state-metrics in
    # kube-system; the ConfigMap goes beside it, to be mounted.
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kube-state-metrics", "namespace": "kube-system"}
    ]
    assert the("ConfigMap")["metadata"]["namespace"] == "kube-system"


# --- (2) the paths exist in the CRD ---------------------------------------------------------

# `metadata` is `type: object` in a CRD schema: the API server fills it as ObjectMeta
# (k8s.io/apimachinery pkg/apis/meta/v1 types.go); the fields a path here may read.
OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "uid": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": "string", "format": "date-time"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

# The StateSets' lists are the code's enums: a stage or outcome added to the code and the
# CRD shows up here until it is added to the configuration.
STATE_ENUMS: dict[tuple[str, ...], type[StrEnum]] = {
    ("status", "stage"): Stage,
    ("status", "outcome"): Outcome,
}


class PathError(AssertionError):
    pass


def schema_at(schema: Mapping[str, Any], path: Sequence[str], where: str) -> Mapping[str, Any]:
    """The schema of the field `path` leads to, by declared properties only (no list
    indexing or [key=value] lookups are used here, so none are followed)."""
    for i, part in enumerate(path):
        if schema is crd_root() and part == "metadata":
            schema = OBJECT_META
            continue
        properties = schema.get("properties", {})
        if schema.get("type") != "object" or part not in properties:
            raise PathError(f"{where}: {list(path[: i + 1])} is not in the Experiment CRD")
        schema = properties[part]
    return schema


@functools.cache
def crd_root() -> Mapping[str, Any]:
    schema = crd_version()["schema"]["openAPIV3Schema"]
    assert isinstance(schema, Mapping)
    return schema


def gauge_value_ok(schema: Mapping[str, Any]) -> bool:
    """The document's "Type conversion": numbers, booleans, RFC3339 times, and the strings
    true/yes (1) and false/no/unknown (0), case-insensitive."""
    if schema.get("type") in ("integer", "number", "boolean"):
        return True
    if schema.get("type") == "string" and schema.get("format") == "date-time":
        return True
    words = {"true", "yes", "false", "no", "unknown"}
    enum = schema.get("enum")
    return schema.get("type") == "string" and bool(enum) and {e.lower() for e in enum} <= words


def check_paths(generator: Mapping[str, Any]) -> None:
    """Every path of one generator leads to a field of the CRD of a type its use needs."""
    name = generator["name"]
    kind, each = generator["each"]["type"], each_config(generator)
    root = crd_root()
    for label, path in resource()["labelsFromPath"].items():
        assert schema_at(root, path, f"label {label}").get("type") == "string", label
    base = schema_at(root, each.get("path", []), f"{name}.path")
    # A path to a list makes one series per element; the rest is relative to the element.
    element = base["items"] if base.get("type") == "array" else base
    for label, path in {
        **generator.get("labelsFromPath", {}),
        **each.get("labelsFromPath", {}),
    }.items():
        got = schema_at(element, path, f"{name} label {label}")
        assert got.get("type") == "string", f"{name} label {label}: a {got.get('type')}"
    if kind == "Gauge":
        value = schema_at(element, each.get("valueFrom", []), f"{name}.valueFrom")
        assert gauge_value_ok(value), f"{name}: kube-state-metrics cannot make a number of {value}"
    if kind == "StateSet":
        value = schema_at(element, each.get("valueFrom", []), f"{name}.valueFrom")
        full = tuple(each["path"]) + tuple(each.get("valueFrom", []))
        assert value.get("type") == "string", name
        assert each["list"] == value.get("enum"), f"{name}: the list is not the CRD's enum"
        assert full in STATE_ENUMS, f"{name}: name the code's enum for {full} in STATE_ENUMS"
        assert each["list"] == [s.value for s in STATE_ENUMS[full]], name


@pytest.mark.parametrize("generator", generators(), ids=lambda g: g["name"])
def test_every_path_is_a_field_of_the_experiment_crd(generator: Doc) -> None:
    check_paths(generator)


def test_the_stage_and_outcome_lists_are_the_codes_enums() -> None:
    states = {
        tuple(each_config(g)["path"]): each_config(g)["list"]
        for g in generators()
        if g["each"]["type"] == "StateSet"
    }
    assert states == {path: [s.value for s in enum] for path, enum in STATE_ENUMS.items()}


@pytest.mark.parametrize(
    ("where", "change", "words"),
    [
        ("a misspelt field", lambda e: e.update(path=["status", "completedIteration"]), "not in"),
        ("a list short of a state", lambda e: e.update(list=e["list"][:-1]), "CRD's enum"),
        ("a text as a number", lambda e: e.update(path=["status", "message"]), "cannot make"),
        ("a list of numbers as a label", lambda e: e.update(path=["status", "history"]), "split"),
    ],
)
def test_the_path_check_refuses_a_path_the_crd_lacks(where: str, change: Any, words: str) -> None:
    kind = "StateSet" if where == "a list short of a state" else "Gauge"
    generator = copy.deepcopy(
        next(
            g
            for g in generators()
            if g["each"]["type"] == kind and "labelsFromPath" not in each_config(g)
        )
    )
    change(each_config(generator))
    if where == "a list of numbers as a label":
        each_config(generator)["labelsFromPath"] = {"split": ["split"]}
    with pytest.raises(AssertionError, match=words):
        check_paths(generator)


# --- (3) the dashboard queries only what the configuration produces -------------------------


@dataclass(frozen=True)
class Query:
    where: str
    expr: str
    legend: str = ""


def panel_queries() -> list[Query]:
    return [
        Query(f"panel {p['title']!r} {t['refId']}", t["expr"], t.get("legendFormat", ""))
        for p in dashboard()["panels"]
        for t in p["targets"]
    ]


# Grafana's Prometheus template query `label_values(<series selector>, <label>)`.
LABEL_VALUES = re.compile(r"^label_values\((?P<expr>.+),\s*(?P<label>[a-zA-Z_]\w*)\)$")


def variable_queries() -> list[tuple[Query, str]]:
    """(the series selector, the label) of each query variable."""
    found = []
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = LABEL_VALUES.match(var["query"]["query"])
        assert match, f"variable {var['name']}: not a label_values(...) query"
        found.append((Query(f"variable {var['name']}", match["expr"]), match["label"]))
    return found


# PromQL words that are not series names (prometheus/promql/parser/lex.go: keywords,
# aggregation modifiers, binary operators spelt as words, and the number literals).
PROMQL_WORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def series_in(expr: str) -> set[str]:
    """The series names an expression selects: identifiers that are not function calls,
    keywords, label names (in matchers and groupings) or durations."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables outside strings
    names = set()
    for match in _IDENT.finditer(text):
        if text[match.end() :].lstrip().startswith("(") or match.group() in PROMQL_WORDS:
            continue
        if match.start() and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # the exponent or unit of a number
        names.add(match.group())
    return names


def labels_in(query: Query) -> set[str]:
    """Labels an expression matches on or groups by, and those its legend shows."""
    text = _STRING.sub('""', query.expr)
    labels = set()
    for matchers in _MATCHERS.findall(text):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    for _, grouping in _GROUPING.findall(text):
        labels |= {w.strip() for w in grouping.split(",") if w.strip()}
    labels |= set(re.findall(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}", query.legend))
    return labels


def test_the_expression_reader_sees_names_and_only_names() -> None:
    expr = (
        'sum by (version) (rate(a_total{job="x", le=~"0.5"}[5m] offset 1m)) / on (version) '
        'group_left (stage) max without (pod) (b:rec{stage="$s"} == bool 1e3) or c and time()'
    )
    assert series_in(expr) == {"a_total", "b:rec", "c"}
    assert labels_in(Query("", expr, "{{ pod }} {{x}}")) == {
        "job", "le", "stage", "version", "pod", "x",
    }  # fmt: skip


def test_the_dashboard_queries_only_series_the_configuration_produces() -> None:
    series = produced()
    queries = panel_queries() + [q for q, _ in variable_queries()]
    for query in queries:
        names = series_in(query.expr)
        assert names, f"{query.where}: selects no series"
        assert names <= set(series), f"{query.where}: {sorted(names - set(series))} not produced"
        carried = set.union(*(series[n] for n in names))
        assert labels_in(query) <= carried, (
            f"{query.where}: {sorted(labels_in(query) - carried)} on none of {sorted(names)}"
        )
    for query, label in variable_queries():
        assert all(label in series[n] for n in series_in(query.expr)), query.where
    # The panels the issue asks for: stage, iterations, weight per version, outcomes.
    used = set.union(*(series_in(q.expr) for q in queries))
    assert used >= {
        "arbiter_experiment_stage",
        "arbiter_experiment_completed_iterations",
        "arbiter_experiment_version_weight",
        "arbiter_experiment_outcome",
    }


def test_the_dashboard_is_templated_on_namespace_and_experiment() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert [label for _, label in variable_queries()] == ["namespace", "experiment"]
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard()["panels"]:
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for holder in (panel, *panel["targets"]):
            assert holder["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for query in panel_queries():
        # Each panel follows both selections, and uses no variable the dashboard lacks.
        assert 'namespace=~"$namespace"' in query.expr, query.where
        assert 'experiment=~"$experiment"' in query.expr, query.where
        for used in re.findall(r"\$(\w+)", query.expr):
            assert used in variables, f"{query.where}: ${used} is not a variable"


# --- (4) a real run's statuses as series, in a real Prometheus ------------------------------

# There is no kube-state-metrics on PyPI or in Debian to run, so the series the configuration
# gives for an object are rendered here the way registry_factory.go (v2.20.0) makes them, for
# the features this configuration uses; any other feature raises UnsupportedError, so the
# configuration cannot outgrow the renderer unnoticed.

LabelSet = tuple[tuple[str, str], ...]


class UnsupportedError(AssertionError):
    pass


@dataclass(frozen=True)
class Sample:
    name: str
    labels: LabelSet
    value: float


def get(obj: Any, path: Sequence[str]) -> Any:
    """valuePath.Get: a map key or a list index per part; nil once anything is missing."""
    for part in path:
        if part.startswith("[") or "=" in part:
            raise UnsupportedError(f"the path lookup {part!r}")
        if isinstance(obj, Mapping):
            obj = obj.get(part)
        elif isinstance(obj, list) and re.fullmatch(r"-?\d+", part):
            i = int(part) + (len(obj) if int(part) < 0 else 0)
            obj = obj[i] if 0 <= i < len(obj) else None
        else:
            return None
    return obj


def to_number(value: Any, nil_is_zero: bool) -> float:
    """toFloat64, without quantities and percentages (no field here holds one)."""
    if value is None:
        if nil_is_zero:
            return 0.0
        raise ValueError("expected number but found nil value")
    if isinstance(value, bool | int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"cannot make a number of {type(value).__name__}")
    words = {"true": 1.0, "yes": 1.0, "false": 0.0, "no": 0.0, "unknown": 0.0}
    if value.lower() in words:
        return words[value.lower()]
    try:  # RFC3339, to whole Unix seconds (t.Unix())
        return float(int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9]+[numkMGTPE]i?|[0-9.]+%", value):
        raise UnsupportedError(f"the quantity or percentage {value!r}")
    return float(value)


def add_path_labels(obj: Any, paths: Mapping[str, Sequence[str]], into: dict[str, str]) -> None:
    for label, path in paths.items():
        if label.startswith("*") or label.endswith("*"):
            raise UnsupportedError(f"the label wildcard {label!r}")
        value = get(obj, path)
        if value is None:
            continue
        if isinstance(value, bool):
            into[label] = "true" if value else "false"
        elif isinstance(value, str | int):
            into[label] = str(value)
        else:  # Go's %v of a float, map or list
            raise UnsupportedError(f"a {type(value).__name__} as the value of label {label}")


def each_values(kind: str, each: Mapping[str, Any], obj: Any) -> tuple[list[Doc], list[str]]:
    """([{labels, value}], errors) of one `each` on one object (compiledGauge, compiledInfo,
    compiledStateSet .Values)."""
    if each.get("labelFromKey"):
        raise UnsupportedError("labelFromKey")
    found: list[Doc] = []
    errors: list[str] = []
    at = get(obj, each.get("path", []))
    paths = each.get("labelsFromPath", {})

    def gauge(item: Any) -> None:
        got = get(item, each.get("valueFrom", []))
        if got is None and not each.get("nilIsZero", False):
            if item is None:
                errors.append("got nil while resolving path")
            return
        labels: dict[str, str] = {}
        try:
            value = to_number(got, each.get("nilIsZero", False))
        except ValueError as e:
            errors.append(str(e))
            return
        add_path_labels(item, paths, labels)
        found.append({"labels": labels, "value": value})

    def state(item: Any) -> None:
        got = get(item, each.get("valueFrom", []))
        if got is None:
            return
        if not isinstance(got, str):
            errors.append(f"expected value for path to be string, got {type(got).__name__}")
            return
        for entry in each["list"]:
            labels = {each["labelName"]: entry}
            add_path_labels(item, paths, labels)
            found.append({"labels": labels, "value": 1.0 if got == entry else 0.0})

    def info(item: Any) -> None:
        if item is None:
            return
        labels: dict[str, str] = {}
        add_path_labels(item, paths, labels)
        if labels:
            found.append({"labels": labels, "value": 1.0})

    one = {"Gauge": gauge, "StateSet": state, "Info": info}[kind]
    if isinstance(at, list):
        for item in at:
            one(item)
    elif isinstance(at, Mapping) and kind == "Gauge":
        raise UnsupportedError("a Gauge over a map")
    else:
        one(at)
        if isinstance(at, Mapping) and kind == "Info":
            for item in at.values():  # each entry too, labelsFromPath relative to it
                info(item)
    return found, errors


def render(cfg: Mapping[str, Any], obj: Mapping[str, Any]) -> tuple[list[Sample], list[str]]:
    """The samples kube-state-metrics exposes for `obj`, and the errors it logs (each named
    by its metric, with the errorLogV it is logged at)."""
    samples: list[Sample] = []
    errors: list[str] = []
    for res in cfg["spec"]["resources"]:
        gvk = res["groupVersionKind"]
        if (obj["apiVersion"], obj["kind"]) != (f"{gvk['group']}/{gvk['version']}", gvk["kind"]):
            continue
        common = {**res.get("commonLabels", {})}
        common |= {f"customresource_{k}": gvk[k] for k in ("group", "version", "kind")}
        for generator in res["metrics"]:
            base = {**common, **generator.get("commonLabels", {})}
            add_path_labels(
                obj, {**res.get("labelsFromPath", {}), **generator.get("labelsFromPath", {})}, base
            )
            kind = generator["each"]["type"]
            found, failed = each_values(kind, each_config(generator), obj)
            name = full_name(res, generator)
            level = generator.get("errorLogV") or res.get("errorLogV", 0)
            errors += [f"{name} (v={level}): {e}" for e in failed]
            for value in found:
                labels = {**base, **value["labels"]}
                samples.append(Sample(name, tuple(sorted(labels.items())), value["value"]))
    return samples, errors


def test_the_renderer_follows_the_documents_examples() -> None:
    # The document's example Foo, and its "Single Values", "Non-map Arrays", StateSet and
    # status-conditions examples, with the series the document says they produce.
    foo = {
        "apiVersion": "myteam.io/v1",
        "kind": "Foo",
        "metadata": {"name": "foo"},
        "spec": {"refs": ["my_other_foo", "foo_2"]},
        "status": {
            "phase": "Pending",
            "uptime": 43.21,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    gvk = {"group": "myteam.io", "kind": "Foo", "version": "v1"}
    cfg = {
        "kind": "CustomResourceStateMetrics",
        "spec": {
            "resources": [
                {
                    "groupVersionKind": gvk,
                    "metrics": [
                        {
                            "name": "uptime",
                            "help": "Foo uptime",
                            "each": {"type": "Gauge", "gauge": {"path": ["status", "uptime"]}},
                        },
                        {
                            "name": "ref_info",
                            "help": "Reference to other Foo",
                            "labelsFromPath": {"name": ["metadata", "name"]},
                            "each": {
                                "type": "Info",
                                "info": {"path": ["spec", "refs"], "labelsFromPath": {"ref": []}},
                            },
                        },
                        {
                            "name": "status_phase",
                            "help": "Foo status_phase",
                            "each": {
                                "type": "StateSet",
                                "stateSet": {
                                    "labelName": "phase",
                                    "path": ["status", "phase"],
                                    "list": ["Pending", "Bar"],
                                },
                            },
                        },
                        {
                            "name": "foo_status",
                            "help": "status condition",
                            "each": {
                                "type": "Gauge",
                                "gauge": {
                                    "path": ["status", "conditions"],
                                    "labelsFromPath": {"type": ["type"]},
                                    "valueFrom": ["status"],
                                },
                            },
                        },
                    ],
                }
            ]
        },
    }
    jsonschema.validate(cfg, CONFIG_SCHEMA)
    samples, errors = render(cfg, foo)
    gvk_labels = (
        ("customresource_group", "myteam.io"),
        ("customresource_kind", "Foo"),
        ("customresource_version", "v1"),
    )

    def labelled(**labels: str) -> LabelSet:
        return tuple(sorted((*gvk_labels, *labels.items())))

    assert errors == []
    assert samples == [
        Sample("kube_customresource_uptime", labelled(), 43.21),
        Sample("kube_customresource_ref_info", labelled(name="foo", ref="my_other_foo"), 1),
        Sample("kube_customresource_ref_info", labelled(name="foo", ref="foo_2"), 1),
        Sample("kube_customresource_status_phase", labelled(phase="Pending"), 1),
        Sample("kube_customresource_status_phase", labelled(phase="Bar"), 0),
        Sample("kube_customresource_foo_status", labelled(type="Ready"), 1),
    ]
    # "If `path` ... does not resolve ... no metrics are produced for that resource" (a
    # StateSet); a Gauge's unresolved path is an error (compiledGauge.value).
    samples, errors = render(cfg, {**foo, "status": {"uptime": 1}})
    assert {s.name for s in samples} == {
        "kube_customresource_uptime",
        "kube_customresource_ref_info",
    }
    assert errors == ["kube_customresource_foo_status (v=0): got nil while resolving path"]


# Seconds between two status writes in the backfilled history: more than the 5 minutes an
# instant query looks back, so a query at a write's time sees that write's series alone, as
# a live Prometheus does once a series missing from a scrape is marked stale (a backfill has
# no staleness markers).
STEP = 360
T0 = 1_700_000_000


@functools.cache
def canary_run() -> tuple[Doc, ...]:
    """The Experiment as stored after each write of a good KServe canary run to promotion
    by the real stages over the fakes (tests/fakes.py), the first before any status."""
    world = kserve_world("demo")
    serve(world.metrics, BASELINE_REVISION, 200, 1)
    serve(world.metrics, CANDIDATE_REVISION, 200, 1)
    created = world.store.add(experiment())
    final = world.run_to_end(created)
    assert (final["stage"], final["outcome"]) == ("Completed", "Promoted")
    return (created, *world.store.writes)


def history() -> tuple[list[tuple[int, list[Sample]]], list[str]]:
    """Each write's samples at its time, and every error kube-state-metrics would log."""
    points, errors = [], []
    for i, obj in enumerate(canary_run()):
        samples, failed = render(config(), obj)
        points.append((T0 + i * STEP, samples))
        errors += failed
    return points, errors


def test_a_real_runs_statuses_log_errors_only_where_the_configuration_expects_them() -> None:
    _, errors = history()
    # Before start sets the first split and conditions the lists are absent: the metrics
    # that read them log at errorLogV 4 (quiet by default); everything else, never.
    assert errors, "the first statuses have no split: the absent lists are logged"
    assert all("(v=4): got nil while resolving path" in e for e in errors), errors


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = missing_binaries()
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found on PATH: {INSTALL_HINT}", pytrace=False)
    series: dict[tuple[str, LabelSet], list[tuple[float, float]]] = {}
    points, _ = history()
    for at, samples in points:
        for s in samples:
            series.setdefault((s.name, s.labels), []).append((at, s.value))
    text = OpenMetrics()
    for (name, labels), values in series.items():
        text.gauge(name, dict(labels), values)
    tsdb = PrometheusTSDB(tmp_path_factory.mktemp("ksm-prometheus"))
    tsdb.backfill(text.text())
    with tsdb:
        yield tsdb.url


def last_time() -> int:
    return T0 + (len(canary_run()) - 1) * STEP


def instant(url: str, expr: str, at: float | None = None) -> list[Doc]:
    answer = requests.get(
        f"{url}/api/v1/query",
        params={"query": expr, "time": str(last_time() if at is None else at)},
        timeout=10,
    )
    assert answer.status_code == 200, f"{expr}: {answer.text}"
    result = answer.json()["data"]["result"]
    assert isinstance(result, list)
    return result


def every_selection(expr: str) -> str:
    # The variables at "All" (allValue .*), as Grafana interpolates them.
    return expr.replace("$namespace", ".*").replace("$experiment", ".*")


@pytest.mark.slow
def test_every_dashboard_query_answers_on_a_real_runs_series(prometheus: str) -> None:
    for query in panel_queries():
        result = instant(prometheus, every_selection(query.expr))
        assert result, f"{query.where}: no answer for {query.expr}"
        for item in result:  # a legend's labels are on the answer
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", query.legend):
                assert label in item["metric"], f"{query.where}: no {label} on {item}"
    for query, label in variable_queries():
        values = requests.get(
            f"{prometheus}/api/v1/label/{label}/values",
            params={"match[]": every_selection(query.expr), "start": T0, "end": last_time()},
            timeout=10,
        ).json()["data"]
        assert values == [{"namespace": "demo", "experiment": "iris-canary"}[label]], query.where


@pytest.mark.slow
def test_the_series_follow_the_status(prometheus: str) -> None:
    final = canary_run()[-1]["status"]

    def value(expr: str, at: float | None = None) -> dict[str, float]:
        return {
            next(iter(r["metric"].values()), ""): float(r["value"][1])
            for r in instant(prometheus, expr, at)
        }

    sel = 'namespace="demo", experiment="iris-canary"'
    assert value(f"max by (stage) (arbiter_experiment_stage{{{sel}}} == 1)") == {"Completed": 1}
    assert value(f"max by (outcome) (arbiter_experiment_outcome{{{sel}}} == 1)") == {"Promoted": 1}
    assert value(f"max by (version) (arbiter_experiment_recommendation_info{{{sel}}})") == {
        final["versionRecommendedForPromotion"]: 1
    }
    assert value(f"sum(arbiter_experiment_completed_iterations{{{sel}}})") == {
        "": final["completedIterations"]
    }
    assert value(f"max by (type) (arbiter_experiment_condition{{{sel}}})") == {
        c["type"]: 1.0 if c["status"] == "True" else 0.0 for c in final["conditions"]
    }
    # At every write, the weights are the split that write read back (none before the first).
    ramp = []
    for i, obj in enumerate(canary_run()):
        split = (obj.get("status") or {}).get("currentWeightDistribution") or []
        got = value(f"max by (version) (arbiter_experiment_version_weight{{{sel}}})", T0 + i * STEP)
        assert got == {w["name"]: w["value"] for w in split}, f"write {i}"
        ramp += [got[CANDIDATE_REVISION]] if got else []
    assert ramp == sorted(ramp) and len(set(ramp)) > 2 and ramp[-1] == 100, ramp
