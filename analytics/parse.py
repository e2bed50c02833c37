"""Experiment documents (parsed YAML/JSON) into `analytics.model` values, with validation.

Every problem is reported at once, one message per problem, each naming its field, e.g.
`spec.versionInfo.candidates: Canary needs exactly 1 candidate, got 2`. Experiments of
apiVersion `iter8.tools/v2alpha2` are accepted as they are: there A/B/n is spelled `A/B/N`,
limits and values are Kubernetes quantities, and measurements are bare point values under
`status.analysis.aggregatedMetrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from analytics.measurements import Counts, Histogram, Measurement, Moments, NoData, PointValue
from analytics.model import (
    Criteria,
    DeploymentPattern,
    Direction,
    Duration,
    Experiment,
    ExperimentSpec,
    ExperimentStatus,
    Objective,
    Reward,
    Strategy,
    TestingPattern,
    Version,
    VersionInfo,
    WeightObjRef,
    Weights,
)
from analytics.quantity import parse_quantity

API_VERSION: Final = "arbiter.dev/v1alpha1"
ITER8_API_VERSION: Final = "iter8.tools/v2alpha2"
ACCEPTED_API_VERSIONS: Final = (API_VERSION, ITER8_API_VERSION)

# (candidates rule, rewards) per testing pattern (iter8 etc3's IsVersionInfoValid).
_SHAPE: Final = {
    TestingPattern.CONFORMANCE: ((0, 0), 0),
    TestingPattern.CANARY: ((1, 1), 0),
    TestingPattern.AB: ((1, 1), 1),
    TestingPattern.ABN: ((1, None), 1),
}


class SpecError(ValueError):
    """The document is not a valid Experiment; `problems` names each field at fault."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class _Reader:
    """Reads typed fields and collects every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: object, path: str, required: bool = False) -> Mapping[str, Any]:
        if value is None:
            if required:
                self.fail(path, "is required")
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, f"must be an object, got {type(value).__name__}")
            return {}
        return value

    def sequence(self, value: object, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"must be a list, got {type(value).__name__}")
            return []
        return value

    def string(self, value: object, path: str, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.fail(path, "is required")
            return None
        if not isinstance(value, str) or not value:
            self.fail(path, f"must be a non-empty string, got {value!r}")
            return None
        return value

    def integer(self, value: object, path: str, default: int, low: int, high: int | None) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {value!r}")
            return default
        if value < low or (high is not None and value > high):
            upper = f" and {high}" if high is not None else ""
            self.fail(
                path,
                f"must be between {low}{upper}, got {value}"
                if high
                else f"must be >= {low}, got {value}",
            )
            return default
        return value

    def number(self, value: object, path: str) -> float | None:
        if value is None:
            return None
        try:
            result = parse_quantity(value)
        except ValueError as e:
            self.fail(path, str(e))
            return None
        if not math.isfinite(result):
            self.fail(path, f"must be finite, got {value!r}")
            return None
        return result

    def enum(
        self, value: object, path: str, choices: Mapping[str, Any], required: bool = False
    ) -> Any:
        if value is None:
            if required:
                self.fail(path, f"is required (one of {', '.join(choices)})")
            return None
        if not isinstance(value, str) or value not in choices:
            self.fail(path, f"must be one of {', '.join(choices)}, got {value!r}")
            return None
        return choices[value]


def parse_experiment(document: object, require_versions: bool = True) -> Experiment:
    """Build an Experiment from a parsed document.

    Args:
        document: the parsed YAML/JSON object.
        require_versions: whether spec.versionInfo must be present (analysis needs it; on a
            cluster the start function resolves it from the InferenceService).

    Raises:
        SpecError: listing every problem found.
    """
    r = _Reader()
    doc = r.mapping(document, "(document)", required=True)
    if r.problems:
        raise SpecError(r.problems)
    api_version = doc.get("apiVersion")
    if api_version not in ACCEPTED_API_VERSIONS:
        r.fail(
            "apiVersion", f"must be one of {', '.join(ACCEPTED_API_VERSIONS)}, got {api_version!r}"
        )
    if doc.get("kind") != "Experiment":
        r.fail("kind", f"must be Experiment, got {doc.get('kind')!r}")
    meta = r.mapping(doc.get("metadata"), "metadata")
    name = r.string(meta.get("name"), "metadata.name") or ""
    namespace = r.string(meta.get("namespace"), "metadata.namespace") or "default"
    spec = _spec(r, r.mapping(doc.get("spec"), "spec", required=True), require_versions)
    status = _status(r, r.mapping(doc.get("status"), "status"), spec)
    if r.problems or spec is None:
        raise SpecError(r.problems)
    return Experiment(str(api_version), name, namespace, spec, status)


def _spec(r: _Reader, raw: Mapping[str, Any], require_versions: bool) -> ExperimentSpec | None:
    target = r.string(raw.get("target"), "spec.target", required=True)
    strategy_raw = r.mapping(raw.get("strategy"), "spec.strategy", required=True)
    patterns = {p.value: p for p in TestingPattern} | {"A/B/N": TestingPattern.ABN}
    testing = r.enum(
        strategy_raw.get("testingPattern"), "spec.strategy.testingPattern", patterns, True
    )
    deployment = r.enum(
        strategy_raw.get("deploymentPattern"),
        "spec.strategy.deploymentPattern",
        {p.value: p for p in DeploymentPattern},
    )
    weights_raw = r.mapping(strategy_raw.get("weights"), "spec.strategy.weights")
    weights = Weights(
        r.integer(
            weights_raw.get("maxCandidateWeight"),
            "spec.strategy.weights.maxCandidateWeight",
            100,
            0,
            100,
        ),
        r.integer(
            weights_raw.get("maxCandidateWeightIncrement"),
            "spec.strategy.weights.maxCandidateWeightIncrement",
            10,
            1,
            100,
        ),
    )
    criteria = _criteria(r, r.mapping(raw.get("criteria"), "spec.criteria"))
    duration_raw = r.mapping(raw.get("duration"), "spec.duration")
    duration = Duration(
        r.integer(
            duration_raw.get("intervalSeconds"), "spec.duration.intervalSeconds", 20, 1, None
        ),
        r.integer(
            duration_raw.get("iterationsPerLoop"), "spec.duration.iterationsPerLoop", 15, 1, None
        ),
        r.integer(duration_raw.get("maxLoops"), "spec.duration.maxLoops", 1, 1, None),
    )
    version_info = _version_info(r, raw.get("versionInfo"), require_versions)
    if testing is not None:
        (low, high), rewards = _SHAPE[testing]
        if version_info is not None:
            got = len(version_info.candidates)
            if got < low or (high is not None and got > high):
                need = f"exactly {low}" if low == high else f"at least {low}"
                noun = "candidate" if low == 1 else "candidates"
                r.fail(
                    "spec.versionInfo.candidates", f"{testing.value} needs {need} {noun}, got {got}"
                )
        if testing is TestingPattern.CONFORMANCE:
            for i, o in enumerate(criteria.objectives):
                if o.is_relative:
                    field = "maxRatio" if o.max_ratio is not None else "maxIncrease"
                    r.fail(
                        f"spec.criteria.objectives[{i}].{field}",
                        "compares candidates with the baseline; Conformance has no candidates",
                    )
        if len(criteria.rewards) != rewards:
            noun = "reward" if rewards == 1 else "rewards"
            r.fail(
                "spec.criteria.rewards",
                f"{testing.value} needs exactly {rewards} {noun}, got {len(criteria.rewards)}",
            )
    if target is None or testing is None:
        return None
    strategy = Strategy(testing, deployment or DeploymentPattern.PROGRESSIVE, weights)
    return ExperimentSpec(target, strategy, criteria, duration, version_info)


def _criteria(r: _Reader, raw: Mapping[str, Any]) -> Criteria:
    objectives: list[Objective] = []
    for i, item in enumerate(r.sequence(raw.get("objectives"), "spec.criteria.objectives")):
        path = f"spec.criteria.objectives[{i}]"
        o = r.mapping(item, path)
        metric = r.string(o.get("metric"), f"{path}.metric", required=True)
        upper = r.number(o.get("upperLimit"), f"{path}.upperLimit")
        lower = r.number(o.get("lowerLimit"), f"{path}.lowerLimit")
        ratio = r.number(o.get("maxRatio"), f"{path}.maxRatio")
        increase = r.number(o.get("maxIncrease"), f"{path}.maxIncrease")
        quantile = r.number(o.get("quantile"), f"{path}.quantile")
        rollback = o.get("rollbackOnFailure", o.get("rollback_on_failure"))
        if rollback is not None and not isinstance(rollback, bool):
            r.fail(f"{path}.rollbackOnFailure", f"must be true or false, got {rollback!r}")
            rollback = None
        limits = ("upperLimit", "lowerLimit", "maxRatio", "maxIncrease")
        if metric is not None and all(o.get(k) is None for k in limits):
            r.fail(path, "needs at least one of upperLimit, lowerLimit, maxRatio, maxIncrease")
        if upper is not None and lower is not None and lower > upper:
            r.fail(f"{path}.lowerLimit", f"({lower:g}) is above upperLimit ({upper:g})")
        if ratio is not None and ratio <= 0:
            r.fail(f"{path}.maxRatio", f"must be > 0, got {ratio:g}")
        if increase is not None and increase < 0:
            r.fail(f"{path}.maxIncrease", f"must be >= 0, got {increase:g}")
        if quantile is not None and not 0 < quantile < 1:
            r.fail(f"{path}.quantile", f"must be between 0 and 1 (exclusive), got {quantile:g}")
        if metric is not None:
            objectives.append(Objective(metric, upper, lower, ratio, increase, quantile, rollback))
    rewards: list[Reward] = []
    directions = {d.value: d for d in Direction}
    for i, item in enumerate(r.sequence(raw.get("rewards"), "spec.criteria.rewards")):
        path = f"spec.criteria.rewards[{i}]"
        w = r.mapping(item, path)
        metric = r.string(w.get("metric"), f"{path}.metric", required=True)
        direction = r.enum(
            w.get("preferredDirection"), f"{path}.preferredDirection", directions, True
        )
        if metric is not None and direction is not None:
            rewards.append(Reward(metric, direction))
    indicators = []
    for i, item in enumerate(r.sequence(raw.get("indicators"), "spec.criteria.indicators")):
        name = r.string(item, f"spec.criteria.indicators[{i}]")
        if name is not None:
            indicators.append(name)
    alpha = r.number(raw.get("alpha"), "spec.criteria.alpha")
    if alpha is not None and not 0 < alpha <= 0.5:
        r.fail("spec.criteria.alpha", f"must be in (0, 0.5], got {alpha:g}")
        alpha = None
    return Criteria(
        tuple(objectives),
        tuple(rewards),
        tuple(indicators),
        r.string(raw.get("requestCount"), "spec.criteria.requestCount"),
        0.05 if alpha is None else alpha,
    )


def _version(r: _Reader, raw: object, path: str) -> Version | None:
    v = r.mapping(raw, path, required=True)
    name = r.string(v.get("name"), f"{path}.name", required=True)
    variables: dict[str, str] = {}
    for i, item in enumerate(r.sequence(v.get("variables"), f"{path}.variables")):
        var = r.mapping(item, f"{path}.variables[{i}]")
        key = r.string(var.get("name"), f"{path}.variables[{i}].name", required=True)
        if key is not None:
            variables[key] = str(var.get("value", ""))
    ref = None
    if v.get("weightObjRef") is not None:
        w = r.mapping(v.get("weightObjRef"), f"{path}.weightObjRef")
        api = r.string(w.get("apiVersion"), f"{path}.weightObjRef.apiVersion", required=True)
        kind = r.string(w.get("kind"), f"{path}.weightObjRef.kind", required=True)
        obj = r.string(w.get("name"), f"{path}.weightObjRef.name", required=True)
        if api and kind and obj:
            ref = WeightObjRef(
                api,
                kind,
                obj,
                r.string(w.get("namespace"), f"{path}.weightObjRef.namespace"),
                r.string(w.get("fieldPath"), f"{path}.weightObjRef.fieldPath"),
            )
    return Version(name, variables, ref) if name is not None else None


def _version_info(r: _Reader, raw: object, required: bool) -> VersionInfo | None:
    if raw is None:
        if required:
            r.fail("spec.versionInfo", "is required to analyse (on a cluster, start resolves it)")
        return None
    info = r.mapping(raw, "spec.versionInfo")
    baseline = _version(r, info.get("baseline"), "spec.versionInfo.baseline")
    candidates = [
        _version(r, c, f"spec.versionInfo.candidates[{i}]")
        for i, c in enumerate(r.sequence(info.get("candidates"), "spec.versionInfo.candidates"))
    ]
    if baseline is None or any(c is None for c in candidates):
        return None
    result = VersionInfo(baseline, tuple(c for c in candidates if c is not None))
    seen: set[str] = set()
    for name in result.names:
        if name in seen:
            r.fail("spec.versionInfo", f"version names must be unique; {name!r} appears twice")
        seen.add(name)
    return result


def _status(r: _Reader, raw: Mapping[str, Any], spec: ExperimentSpec | None) -> ExperimentStatus:
    completed = r.integer(raw.get("completedIterations"), "status.completedIterations", 0, 0, None)
    weights: dict[str, int] = {}
    for i, item in enumerate(
        r.sequence(raw.get("currentWeightDistribution"), "status.currentWeightDistribution")
    ):
        path = f"status.currentWeightDistribution[{i}]"
        w = r.mapping(item, path)
        name = r.string(w.get("name"), f"{path}.name", required=True)
        value = r.integer(w.get("value"), f"{path}.value", 0, 0, 100)
        if name is not None:
            weights[name] = value
    if weights and sum(weights.values()) != 100:
        r.fail(
            "status.currentWeightDistribution",
            f"values must sum to 100, got {sum(weights.values())}",
        )
    analysis = r.mapping(raw.get("analysis"), "status.analysis")
    aggregated = r.mapping(analysis.get("aggregatedMetrics"), "status.analysis.aggregatedMetrics")
    data = r.mapping(aggregated.get("data"), "status.analysis.aggregatedMetrics.data")
    measurements: dict[str, dict[str, Measurement]] = {}
    for metric, entry in data.items():
        base = f"status.analysis.aggregatedMetrics.data.{metric}"
        versions = r.mapping(r.mapping(entry, base).get("data"), f"{base}.data")
        measurements[metric] = {}
        for version, value in versions.items():
            m = _measurement(r, value, f"{base}.data.{version}")
            if m is not None:
                measurements[metric][version] = m
    if spec is not None:
        _check_histogram_objectives(r, spec, measurements)
    stage = raw.get("stage")
    return ExperimentStatus(
        completed, weights, measurements, stage if isinstance(stage, str) else None
    )


def _measurement(r: _Reader, raw: object, path: str) -> Measurement | None:
    m = r.mapping(raw, path)
    try:
        if m.get("buckets") is not None:
            buckets = r.sequence(m.get("buckets"), f"{path}.buckets")
            pairs = []
            for i, b in enumerate(buckets):
                bm = r.mapping(b, f"{path}.buckets[{i}]")
                le = bm.get("le")
                for key in ("le", "count"):
                    if bm.get(key) is None:
                        r.fail(f"{path}.buckets[{i}].{key}", "is required")
                # YAML spells the last bound `+Inf` (a string) or `.inf` (a float).
                bound = (
                    math.inf
                    if le in ("+Inf", "Inf", "inf") or (isinstance(le, float) and le == math.inf)
                    else r.number(le, f"{path}.buckets[{i}].le")
                )
                count = r.number(bm.get("count"), f"{path}.buckets[{i}].count")
                if bound is None or count is None:
                    return None
                pairs.append((bound, count))
            return Histogram(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
        if "events" in m or "trials" in m:
            events = r.number(m.get("events"), f"{path}.events")
            trials = r.number(m.get("trials"), f"{path}.trials")
            if events is None or trials is None:
                r.fail(path, "counts need both events and trials")
                return None
            return Counts(events, trials)
        if "sum" in m or "count" in m:
            total = r.number(m.get("sum"), f"{path}.sum")
            count = r.number(m.get("count"), f"{path}.count")
            if total is None or count is None:
                r.fail(path, "a mean needs both sum and count")
                return None
            return Moments(count, total, r.number(m.get("sumOfSquares"), f"{path}.sumOfSquares"))
        if m.get("value") is None:
            return NoData()
        value = r.number(m.get("value"), f"{path}.value")
        return None if value is None else PointValue(value)
    except ValueError as e:
        r.fail(path, str(e))
        return None


def _check_histogram_objectives(
    r: _Reader, spec: ExperimentSpec, measurements: Mapping[str, Mapping[str, Measurement]]
) -> None:
    for i, objective in enumerate(spec.criteria.objectives):
        by_version = measurements.get(objective.metric, {})
        if not any(isinstance(m, Histogram) for m in by_version.values()):
            continue
        others = sorted(v for v, m in by_version.items() if not isinstance(m, Histogram | NoData))
        if others:
            r.fail(
                f"status.analysis.aggregatedMetrics.data.{objective.metric}",
                f"mixes histogram buckets with other shapes (for {', '.join(others)}); "
                "every version of a metric needs the same shape",
            )
        path = f"spec.criteria.objectives[{i}]"
        if objective.upper_limit is None:
            r.fail(
                f"{path}.upperLimit",
                f"{objective.metric} is a histogram: upperLimit picks the bucket bound",
            )
        if objective.lower_limit is not None:
            r.fail(
                f"{path}.lowerLimit", f"{objective.metric} is a histogram: only upperLimit applies"
            )
        if objective.quantile is None and not objective.is_relative:
            r.fail(
                f"{path}.quantile",
                f"{objective.metric} is a histogram: give the quantile (e.g. 0.95)",
            )
