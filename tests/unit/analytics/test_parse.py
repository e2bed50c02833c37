"""Parsing and validating Experiment documents: one message per problem, naming its field."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from analytics import model
from analytics.measurements import Counts, Histogram, Moments, NoData, PointValue
from analytics.parse import ITER8_API_VERSION, SpecError, parse_experiment, parse_time

DocumentFactory = Callable[..., dict[str, Any]]
REWARD = {"metric": "conversion", "preferredDirection": "High"}
DATA = "status.analysis.aggregatedMetrics.data"


def problems(document: object, require_versions: bool = True) -> tuple[str, ...]:
    with pytest.raises(SpecError) as info:
        parse_experiment(document, require_versions=require_versions)
    # The exception text is the problems, one per line, for a person to read.
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# --- candidates and rewards per testing pattern (iter8 etc3's IsVersionInfoValid) ---------


@pytest.mark.parametrize(
    ("pattern", "candidates", "rewards"),
    [
        ("Conformance", 0, 0),
        ("Canary", 1, 0),
        ("A/B", 1, 1),
        ("A/B/n", 1, 1),
        ("A/B/n", 3, 1),
    ],
)
def test_each_pattern_accepts_its_shape(
    pattern: str, candidates: int, rewards: int, make_document: DocumentFactory
) -> None:
    doc = make_document(
        pattern, candidates=[f"c{i}" for i in range(candidates)], rewards=[REWARD] * rewards
    )
    experiment = parse_experiment(doc)
    assert experiment.spec.strategy.testing_pattern.value == pattern
    assert experiment.spec.version_info is not None
    assert len(experiment.spec.version_info.candidates) == candidates
    assert len(experiment.spec.criteria.rewards) == rewards


@pytest.mark.parametrize(
    ("pattern", "candidates", "message"),
    [
        ("Conformance", 1, "Conformance needs exactly 0 candidates, got 1"),
        ("Canary", 0, "Canary needs exactly 1 candidate, got 0"),
        ("Canary", 2, "Canary needs exactly 1 candidate, got 2"),
        ("A/B", 0, "A/B needs exactly 1 candidate, got 0"),
        ("A/B", 2, "A/B needs exactly 1 candidate, got 2"),
        ("A/B/n", 0, "A/B/n needs at least 1"),
    ],
)
def test_wrong_number_of_candidates_is_one_message_naming_the_field(
    pattern: str, candidates: int, message: str, make_document: DocumentFactory
) -> None:
    rewards = [REWARD] if pattern in ("A/B", "A/B/n") else []
    doc = make_document(pattern, candidates=[f"c{i}" for i in range(candidates)])
    doc["spec"]["criteria"]["rewards"] = rewards
    (problem,) = problems(doc)
    assert problem.startswith(f"spec.versionInfo.candidates: {message}")


@pytest.mark.parametrize(
    ("pattern", "rewards", "message"),
    [
        ("Conformance", 1, "Conformance needs exactly 0 rewards, got 1"),
        ("Canary", 1, "Canary needs exactly 0 rewards, got 1"),
        ("A/B", 0, "A/B needs exactly 1 reward, got 0"),
        ("A/B", 2, "A/B needs exactly 1 reward, got 2"),
        ("A/B/n", 0, "A/B/n needs exactly 1 reward, got 0"),
        ("A/B/n", 2, "A/B/n needs exactly 1 reward, got 2"),
    ],
)
def test_wrong_number_of_rewards_is_one_message_naming_the_field(
    pattern: str, rewards: int, message: str, make_document: DocumentFactory
) -> None:
    doc = make_document(pattern, rewards=[REWARD] * rewards)
    assert problems(doc) == (f"spec.criteria.rewards: {message}",)


def test_version_names_must_be_unique(make_document: DocumentFactory) -> None:
    doc = make_document("A/B/n", candidates=["v2", "baseline"], rewards=[REWARD])
    assert problems(doc) == (
        "spec.versionInfo: version names must be unique; 'baseline' appears twice",
    )


def test_iter8_v2alpha2_experiments_are_accepted_as_they_are(
    make_document: DocumentFactory,
) -> None:
    # iter8 spells A/B/n as `A/B/N` and writes limits and values as Kubernetes quantities.
    doc = make_document(
        "A/B/N",
        candidates=["v2", "v3"],
        rewards=[REWARD],
        objectives=[{"metric": "error-rate", "upperLimit": "10m"}],
        data={"error-rate": {"baseline": {"value": "5m"}, "v2": {"value": "0"}}},
        api_version=ITER8_API_VERSION,
    )
    experiment = parse_experiment(doc)
    assert experiment.api_version == ITER8_API_VERSION
    assert experiment.spec.strategy.testing_pattern is model.TestingPattern.ABN
    assert experiment.spec.criteria.objectives[0].upper_limit == pytest.approx(0.01)
    assert experiment.status.measurements["error-rate"] == {
        "baseline": PointValue(0.005),
        "v2": PointValue(0.0),
    }


def test_iter8_rollback_on_failure_spelling_is_read(make_document: DocumentFactory) -> None:
    doc = make_document(
        objectives=[{"metric": "e", "upperLimit": 1, "rollback_on_failure": False}],
        api_version=ITER8_API_VERSION,
    )
    assert parse_experiment(doc).spec.criteria.objectives[0].rollback_on_failure is False


def test_several_problems_are_all_reported_at_once(make_document: DocumentFactory) -> None:
    doc = make_document(
        "Canary",
        candidates=["a", "b"],
        rewards=[{"metric": "x", "preferredDirection": "Up"}],
        objectives=[
            {"metric": "e"},
            {"metric": "l", "upperLimit": 1, "lowerLimit": 2},
            {"metric": "r", "maxRatio": 0, "maxIncrease": -1, "quantile": 1},
        ],
        weights={"maxCandidateWeight": 101, "maxCandidateWeightIncrement": 0},
        alpha=0.7,
        current={"baseline": 50, "a": 40},
    )
    doc["apiVersion"] = "v1"
    doc["kind"] = "Foo"
    doc["spec"]["strategy"]["deploymentPattern"] = "Rolling"
    doc["spec"]["duration"]["intervalSeconds"] = 0
    assert set(problems(doc)) == {
        "apiVersion: must be one of arbiter.dev/v1alpha1, iter8.tools/v2alpha2, got 'v1'",
        "kind: must be Experiment, got 'Foo'",
        "spec.strategy.deploymentPattern: must be one of Progressive, FixedSplit, BlueGreen,"
        " got 'Rolling'",
        "spec.strategy.weights.maxCandidateWeight: must be between 0 and 100, got 101",
        "spec.strategy.weights.maxCandidateWeightIncrement: must be between 1 and 100, got 0",
        "spec.criteria.objectives[0]: needs at least one of upperLimit, lowerLimit, maxRatio,"
        " maxIncrease",
        "spec.criteria.objectives[1].lowerLimit: (2) is above upperLimit (1)",
        "spec.criteria.objectives[2].maxRatio: must be > 0, got 0",
        "spec.criteria.objectives[2].maxIncrease: must be >= 0, got -1",
        "spec.criteria.objectives[2].quantile: must be between 0 and 1 (exclusive), got 1",
        "spec.criteria.rewards[0].preferredDirection: must be one of High, Low, got 'Up'",
        "spec.criteria.alpha: must be in (0, 0.5], got 0.7",
        "spec.duration.intervalSeconds: must be between 1 and 86400, got 0",
        "spec.versionInfo.candidates: Canary needs exactly 1 candidate, got 2",
        "status.currentWeightDistribution: values must sum to 100, got 90",
    }


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["spec"].pop("target"), "spec.target: is required"),
        (
            lambda d: d["spec"]["strategy"].pop("testingPattern"),
            "spec.strategy.testingPattern: is required",
        ),
        (
            lambda d: d["spec"]["versionInfo"]["baseline"].pop("name"),
            "spec.versionInfo.baseline.name: is required",
        ),
        (
            lambda d: d["spec"]["versionInfo"]["candidates"].__setitem__(0, {"name": ""}),
            "spec.versionInfo.candidates[0].name: must be a non-empty string",
        ),
        (
            lambda d: d["spec"]["criteria"].__setitem__("objectives", {"metric": "x"}),
            "spec.criteria.objectives: must be a list, got dict",
        ),
        (
            lambda d: d["spec"]["strategy"].__setitem__("weights", {"maxCandidateWeight": "50"}),
            "spec.strategy.weights.maxCandidateWeight: must be an integer, got '50'",
        ),
        (
            lambda d: d["spec"]["criteria"].__setitem__(
                "objectives", [{"metric": "e", "upperLimit": 1, "rollbackOnFailure": "yes"}]
            ),
            "spec.criteria.objectives[0].rollbackOnFailure: must be true or false, got 'yes'",
        ),
        (
            lambda d: d["status"].__setitem__("currentWeightDistribution", [{"value": 100}]),
            "status.currentWeightDistribution[0].name: is required",
        ),
    ],
)
def test_each_field_problem_names_its_field(
    edit: Any, expected: str, make_document: DocumentFactory
) -> None:
    doc = make_document()
    edit(doc)
    (problem,) = problems(doc)
    assert problem.startswith(expected)


def test_a_missing_spec_is_reported_first(make_document: DocumentFactory) -> None:
    doc = make_document()
    del doc["spec"]
    assert problems(doc)[0] == "spec: is required"


def test_a_malformed_limit_is_one_message(make_document: DocumentFactory) -> None:
    doc = make_document(objectives=[{"metric": "e", "upperLimit": "lots"}])
    assert problems(doc) == (
        "spec.criteria.objectives[0].upperLimit: expected a number or a quantity string like"
        " '0.01' or '250m', got 'lots'",
    )


def test_a_document_must_be_an_object() -> None:
    assert problems([1, 2]) == ("(document): must be an object, got list",)
    assert problems(None) == ("(document): is required",)


def test_version_info_is_required_to_analyse_but_not_before(make_document: DocumentFactory) -> None:
    doc = make_document()
    del doc["spec"]["versionInfo"]
    assert problems(doc) == (
        "spec.versionInfo: is required to analyse (on a cluster, start resolves it)",
    )
    assert parse_experiment(doc, require_versions=False).spec.version_info is None


def test_defaults_follow_iter8(make_document: DocumentFactory) -> None:
    doc = make_document()
    del doc["spec"]["strategy"]["deploymentPattern"]
    del doc["spec"]["duration"]
    spec = parse_experiment(doc).spec
    assert spec.strategy.deployment_pattern is model.DeploymentPattern.PROGRESSIVE
    assert spec.strategy.weights.max_candidate_weight == 100
    assert spec.strategy.weights.max_candidate_weight_increment == 10
    assert (spec.duration.interval_seconds, spec.duration.iterations_per_loop) == (20, 15)
    assert spec.duration.max_loops == 1
    assert spec.criteria.alpha == 0.05


def test_fields_are_read_into_the_model(make_document: DocumentFactory) -> None:
    doc = make_document(
        "A/B",
        rewards=[{"metric": "latency", "preferredDirection": "Low"}],
        objectives=[{"metric": "e", "upperLimit": 0.01, "maxRatio": 1.5, "maxIncrease": "1m"}],
        weights={"maxCandidateWeight": 50, "maxCandidateWeightIncrement": 5},
        alpha=0.01,
        current={"baseline": 80, "candidate": 20},
        completed=3,
    )
    doc["spec"]["criteria"]["indicators"] = ["cpu"]
    doc["spec"]["criteria"]["requestCount"] = "request-count"
    doc["spec"]["duration"]["maxLoops"] = 2
    doc["spec"]["versionInfo"]["candidates"][0]["variables"] = [{"name": "revision", "value": 2}]
    doc["spec"]["versionInfo"]["candidates"][0]["weightObjRef"] = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "name": "iris",
        "fieldPath": ".spec.predictor.canaryTrafficPercent",
    }
    e = parse_experiment(doc)
    objective = e.spec.criteria.objectives[0]
    assert (objective.upper_limit, objective.max_ratio) == (0.01, 1.5)
    assert objective.max_increase == pytest.approx(0.001)
    assert objective.is_relative
    assert e.spec.criteria.rewards[0].preferred_direction is model.Direction.LOW
    assert e.spec.criteria.indicators == ("cpu",)
    assert e.spec.criteria.request_count == "request-count"
    assert e.spec.criteria.alpha == 0.01
    assert e.spec.strategy.weights.max_candidate_weight == 50
    assert e.spec.strategy.weights.max_candidate_weight_increment == 5
    assert e.spec.duration.total_iterations == 20
    assert e.status.current_weights == {"baseline": 80, "candidate": 20}
    assert e.status.completed_iterations == 3
    assert e.spec.version_info is not None
    candidate = e.spec.version_info.candidates[0]
    assert candidate.variables == {"revision": "2"}
    assert candidate.weight_obj_ref is not None
    assert candidate.weight_obj_ref.field_path == ".spec.predictor.canaryTrafficPercent"


# --- measurements ------------------------------------------------------------------------


def measurements_of(fields: dict[str, Any], make_document: DocumentFactory) -> dict[str, Any]:
    doc = make_document(data={"m": {"baseline": fields}})
    return dict(parse_experiment(doc).status.measurements["m"])


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"value": 0.5}, PointValue(0.5)),
        ({"value": "250m"}, PointValue(0.25)),
        ({"events": 3, "trials": 1000}, Counts(3.0, 1000.0)),
        ({"count": 10, "sum": 25}, Moments(10.0, 25.0)),
        ({"count": 10, "sum": 25, "sumOfSquares": 70}, Moments(10.0, 25.0, 70.0)),
        (
            {
                "buckets": [
                    {"le": 0.1, "count": 4},
                    {"le": "0.25", "count": 9},
                    {"le": "+Inf", "count": 10},
                ]
            },
            Histogram((0.1, 0.25, math.inf), (4.0, 9.0, 10.0)),
        ),
    ],
)
def test_each_measurement_shape(
    fields: dict[str, Any], expected: object, make_document: DocumentFactory
) -> None:
    assert measurements_of(fields, make_document) == {"baseline": expected}


@pytest.mark.parametrize("fields", [{}, {"value": None}])
def test_no_data_is_its_own_state_distinct_from_zero(
    fields: dict[str, Any], make_document: DocumentFactory
) -> None:
    assert measurements_of(fields, make_document) == {"baseline": NoData()}
    assert measurements_of({"value": 0}, make_document) == {"baseline": PointValue(0.0)}
    zero_counts = measurements_of({"events": 0, "trials": 0}, make_document)
    assert zero_counts == {"baseline": Counts(0.0, 0.0)}


def test_a_version_without_an_entry_has_no_measurement(make_document: DocumentFactory) -> None:
    doc = make_document(data={"m": {"baseline": {"value": 1}}})
    assert "candidate" not in parse_experiment(doc).status.measurements["m"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"events": 3}, f"{DATA}.m.data.baseline: counts need both events and trials"),
        ({"trials": 3}, f"{DATA}.m.data.baseline: counts need both events and trials"),
        ({"sum": 3}, f"{DATA}.m.data.baseline: a mean needs both sum and count"),
        ({"events": 5, "trials": 3}, f"{DATA}.m.data.baseline: events (5.0) exceed trials (3.0)"),
        ({"count": -1, "sum": 0}, f"{DATA}.m.data.baseline: count must be >= 0, got -1.0"),
        ({"value": "abc"}, f"{DATA}.m.data.baseline.value: expected a number or a quantity"),
        (
            {"buckets": [{"le": 2, "count": 1}, {"le": 1, "count": 2}, {"le": "+Inf", "count": 2}]},
            f"{DATA}.m.data.baseline: bucket bounds must be strictly increasing",
        ),
        (
            {"buckets": [{"le": 1, "count": 1}, {"le": 2, "count": 2}]},
            f"{DATA}.m.data.baseline: the last bucket bound must be +Inf",
        ),
        (
            {"buckets": [{"le": 1, "count": "many"}, {"le": "+Inf", "count": 2}]},
            f"{DATA}.m.data.baseline.buckets[0].count: expected a number",
        ),
    ],
)
def test_malformed_measurements_name_their_field(
    fields: dict[str, Any], expected: str, make_document: DocumentFactory
) -> None:
    (problem,) = problems(make_document(data={"m": {"baseline": fields}}))
    assert problem.startswith(expected)


@pytest.mark.parametrize("bucket", [{"count": 1}, {"le": 1}], ids=["missing-le", "missing-count"])
def test_a_bucket_missing_a_field_is_reported(
    bucket: dict[str, Any], make_document: DocumentFactory
) -> None:
    fields = {"buckets": [bucket, {"le": "+Inf", "count": 2}]}
    (problem,) = problems(make_document(data={"m": {"baseline": fields}}))
    assert problem.startswith(f"{DATA}.m.data.baseline.buckets[0]")


def test_the_inf_bound_may_be_yaml_native_infinity(make_document: DocumentFactory) -> None:
    fields = {"buckets": [{"le": 1, "count": 1}, {"le": math.inf, "count": 2}]}
    assert measurements_of(fields, make_document) == {
        "baseline": Histogram((1.0, math.inf), (1.0, 2.0))
    }


def test_histogram_objectives_need_an_upper_limit_and_a_quantile(
    make_document: DocumentFactory,
) -> None:
    doc = make_document(
        objectives=[{"metric": "latency", "lowerLimit": 3}],
        data={
            "latency": {
                "baseline": {"buckets": [{"le": 1, "count": 1}, {"le": "+Inf", "count": 2}]}
            }
        },
    )
    assert problems(doc) == (
        "spec.criteria.objectives[0].upperLimit: latency is a histogram: upperLimit picks the"
        " bucket bound",
        "spec.criteria.objectives[0].lowerLimit: latency is a histogram: only upperLimit applies",
        "spec.criteria.objectives[0].quantile: latency is a histogram: give the quantile"
        " (e.g. 0.95)",
    )


def test_a_relative_histogram_objective_needs_no_quantile(make_document: DocumentFactory) -> None:
    doc = make_document(
        objectives=[{"metric": "latency", "upperLimit": 1, "maxRatio": 1.2}],
        data={
            "latency": {
                "baseline": {"buckets": [{"le": 1, "count": 1}, {"le": "+Inf", "count": 2}]}
            }
        },
    )
    assert parse_experiment(doc).spec.criteria.objectives[0].quantile is None


# --- bounds: every number, string and list has one, as the CRD states --------------------


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[int(last) if isinstance(node, list) else last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "spec.duration.intervalSeconds",
            10**14,
            "spec.duration.intervalSeconds: must be between 1 and 86400, got 100000000000000",
        ),
        ("spec.duration.iterationsPerLoop", 100_001, "must be between 1 and 100000"),
        ("spec.duration.maxLoops", 10**400, "<an integer of about 401 digits>"),
        ("status.completedIterations", 100_001, "status.completedIterations: must be between 0"),
        (
            "spec.criteria.objectives",
            [{"metric": "e", "upperLimit": 1}] * 33,
            "spec.criteria.objectives: has 33 items; at most 32 are allowed",
        ),
        (
            "spec.criteria.objectives",
            [{"metric": "e", "upperLimit": 10**400}],
            "spec.criteria.objectives[0].upperLimit: must be at most 1e+18 in magnitude",
        ),
        (
            "spec.criteria.objectives",
            [{"metric": "e", "upperLimit": "2000E"}],
            "spec.criteria.objectives[0].upperLimit: must be at most 1e+18 in magnitude",
        ),
        (
            "spec.criteria.objectives",
            [{"metric": "e", "upperLimit": " 1 "}],
            "spec.criteria.objectives[0].upperLimit: must be a quantity without spaces",
        ),
        (
            "spec.criteria.objectives",
            [{"metric": "e", "maxRatio": 1001}],
            "spec.criteria.objectives[0].maxRatio: must be at most 1000, got 1001",
        ),
        (
            "spec.criteria.objectives",
            [{"metric": "Error_Rate", "upperLimit": 1}],
            "spec.criteria.objectives[0].metric: must match ^([a-z0-9]",
        ),
        ("spec.criteria.indicators", ["cpu", "a/b/c"], "spec.criteria.indicators[1]: must match"),
        ("spec.criteria.requestCount", "x" * 318, "is 318 characters; at most 317"),
        ("spec.target", "Test/Model", "spec.target: must match"),
        (
            "spec.versionInfo.baseline.variables",
            [{"name": "9lives", "value": "x"}],
            "spec.versionInfo.baseline.variables[0].name: must match",
        ),
        (
            "spec.versionInfo.baseline.variables",
            [{"name": "v", "value": {"nested": 1}}],
            "spec.versionInfo.baseline.variables[0].value: must be a string, got <a dict",
        ),
        (
            "spec.versionInfo.baseline.weightObjRef",
            {"apiVersion": "v1", "kind": "K", "name": "n", "fieldPath": "a" * 30 + "!"},
            "spec.versionInfo.baseline.weightObjRef.fieldPath: must match",
        ),
        ("status.lastIterationTime", "9999-12-31T23:59:59Z", "must be in the years 2000 to 2200"),
        ("status.startTime", "yesterday", "status.startTime: must be a date-time"),
    ],
)
def test_each_bound_is_one_message_naming_the_field(
    path: str, value: Any, expected: str, make_document: DocumentFactory
) -> None:
    doc = _set(make_document(), path, value)
    (problem,) = problems(doc)
    assert expected in problem
    assert problem.startswith(path)
    assert len(problem) < 300


def test_the_candidates_are_bounded_and_the_first_ones_read(
    make_document: DocumentFactory,
) -> None:
    doc = make_document("A/B/n", candidates=[f"c{i}" for i in range(17)], rewards=[REWARD])
    assert problems(doc) == ("spec.versionInfo.candidates: has 17 items; at most 16 are allowed",)


def test_the_total_number_of_iterations_is_bounded(make_document: DocumentFactory) -> None:
    doc = make_document()
    doc["spec"]["duration"] = {"iterationsPerLoop": 1000, "maxLoops": 101}
    assert problems(doc) == (
        "spec.duration: iterationsPerLoop x maxLoops must be at most 100000, got 101000",
    )


def test_a_hostile_value_is_quoted_by_a_short_prefix(make_document: DocumentFactory) -> None:
    doc = make_document()
    doc["kind"] = "K" * 1_000_000
    doc["spec"]["strategy"]["deploymentPattern"] = ["x"] * 1_000_000
    found = problems(doc)
    assert len(found) == 2
    assert all(len(p) < 200 for p in found), found
    assert "'KKKK" in found[0] and "…" in found[0]
    assert "<a list of 1000000 items>" in found[1]


def test_measurement_collections_are_bounded(make_document: DocumentFactory) -> None:
    many = {f"m{i}": {"baseline": {"value": 1}} for i in range(67)}
    (problem,) = problems(make_document(data=many))
    assert problem == f"{DATA}: has 67 entries; at most 66 are allowed"
    buckets = [{"le": i, "count": 1} for i in range(257)]
    (problem,) = problems(make_document(data={"m": {"baseline": {"buckets": buckets}}}))
    assert problem == f"{DATA}.m.data.baseline.buckets: has 257; at most 256 are allowed"
    (problem,) = problems(make_document(data={"Bad Name": {"baseline": {"value": 1}}}))
    assert problem.startswith(f"{DATA}.Bad Name: a name must match")


def test_status_naming_unknown_versions_is_refused(make_document: DocumentFactory) -> None:
    doc = make_document(
        current={"baseline": 50, "ghost": 50}, data={"m": {"phantom": {"value": 1}}}
    )
    doc["status"]["versions"] = [{"name": "baseline"}, {"name": "spectre"}]
    assert set(problems(doc)) == {
        "status.versions[1].name: 'spectre' is not a version of this experiment"
        " ('baseline', 'candidate')",
        "status.currentWeightDistribution[1].name: 'ghost' is not a version of this"
        " experiment ('baseline', 'candidate')",
        "status.currentWeightDistribution: values must sum to 100, got 50",
        f"{DATA}.m.data.phantom: 'phantom' is not a version of this experiment"
        " ('baseline', 'candidate')",
    }


def test_without_version_info_the_resolved_versions_are_the_known_ones(
    make_document: DocumentFactory,
) -> None:
    doc = make_document(data={"m": {"a": {"value": 1}, "b": {"value": 2}}})
    del doc["spec"]["versionInfo"]
    doc["status"]["versions"] = [{"name": "a", "revision": "a-1"}]
    assert problems(doc, require_versions=False) == (
        f"{DATA}.m.data.b: 'b' is not a version of this experiment ('a')",
    )


@pytest.mark.parametrize(
    ("limit", "value", "data", "words"),
    [
        ("upperLimit", -0.01, {"events": 1, "trials": 100}, "a rate (events out of trials)"),
        ("upperLimit", 5, {"events": 1, "trials": 100}, "between 0 and 1, got 5"),
        ("lowerLimit", -1, {"events": 1, "trials": 100}, "a rate"),
        (
            "upperLimit",
            -0.5,
            {"buckets": [{"le": 0.1, "count": 1}, {"le": "+Inf", "count": 2}]},
            "a histogram of values >= 0",
        ),
    ],
)
def test_a_limit_the_metric_can_never_reach_is_refused(
    limit: str, value: float, data: dict[str, Any], words: str, make_document: DocumentFactory
) -> None:
    objective = {"metric": "e", limit: value, "quantile": 0.9}
    if "buckets" not in data:
        del objective["quantile"]
    doc = make_document(objectives=[objective], data={"e": {"baseline": data}})
    (problem,) = problems(doc)
    assert problem.startswith(f"spec.criteria.objectives[0].{limit}: 'e' is ")
    assert words in problem


def test_limits_of_metrics_of_unknown_type_may_be_negative(make_document: DocumentFactory) -> None:
    # A gauge (a point value) may be a score below zero; nothing says otherwise.
    doc = make_document(
        objectives=[{"metric": "score", "lowerLimit": -3}],
        data={"score": {"baseline": {"value": -1}}},
    )
    assert parse_experiment(doc).spec.criteria.objectives[0].lower_limit == -3
    doc["spec"]["criteria"]["requestCount"] = "score"
    (problem,) = problems(doc)
    assert "'score' is the request count: the limit must be >= 0, got -3" in problem


def test_parse_time_bounds_the_year() -> None:
    assert parse_time("2026-01-31T12:00:00Z").year == 2026
    assert parse_time("2026-01-31T12:00:00+02:00").utcoffset() is not None
    for bad in ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2201-01-01T00:00:00Z"):
        with pytest.raises(ValueError, match="years 2000 to 2200"):
            parse_time(bad)
    with pytest.raises(ValueError, match="must be a date-time") as info:
        parse_time("2026" * 10_000)
    assert len(str(info.value)) < 120
