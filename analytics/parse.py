"""Experiment documents (parsed YAML/JSON) into `analytics.model` values, with validation.

Every problem is reported at once, one message per problem, each naming its field, e.g.
`spec.versionInfo.candidates: Canary needs exactly 1 candidate, got 2`. Experiments of
apiVersion `iter8.tools/v2alpha2` are accepted as they are: there A/B/n is spelled `A/B/N`,
limits and values are Kubernetes quantities, and measurements are bare point values under
`status.analysis.aggregatedMetrics`.

Every number, string and list the code reads has a bound, listed once in `BOUNDS` under the
field's path in the CRD schema; config/crd/experiments.yaml states the same bounds (a
manifest test holds the two equal), so a document the API server would refuse is refused
here with the field named, and nothing downstream meets a value it cannot compute with.
Messages quote at most a short prefix of any value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from analytics.conditional import RATIO_OFFSETS, REWARD_OFFSETS, PairTest, RatioTest
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
from analytics.quantity import MAX_LENGTH as QUANTITY_MAX_LENGTH
from analytics.quantity import MAX_MAGNITUDE, parse_quantity, quote

API_VERSION: Final = "arbiter.dev/v1alpha1"
ITER8_API_VERSION: Final = "iter8.tools/v2alpha2"
ACCEPTED_API_VERSIONS: Final = (API_VERSION, ITER8_API_VERSION)

# A metric reference or a target: [namespace/]name, Kubernetes' DNS label and subdomain.
NAME_PATTERN: Final = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"
NAME_MAX_LENGTH: Final = 317  # a 63-character namespace, "/", a 253-character name
VARIABLE_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"
QUANTITY_PATTERN: Final = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# `.spec.http[0].route[1].weight` or a JSON pointer. Written so that no two ways of
# matching exist (`(\.?name)+` had them): Python's backtracking re would take seconds on 25
# characters of the ambiguous form; the API server's RE2 is linear either way.
FIELD_PATH_PATTERN: Final = (
    r"^\.?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+|\[[0-9]+\][A-Za-z0-9_-]*)*$|^(/[^/]+)+$"
)

MAX_INTERVAL_SECONDS: Final = 86_400  # a day between iterations
MAX_ITERATIONS: Final = 100_000  # iterationsPerLoop x maxLoops, and completedIterations
MAX_CANDIDATES: Final = 16
MAX_VERSIONS: Final = 1 + MAX_CANDIDATES
MAX_OBJECTIVES: Final = 32
MAX_INDICATORS: Final = 32
MAX_REWARDS: Final = 1
# Limits are compared with measured values; a larger one is a typo, and any value this
# size keeps the arithmetic on it finite.
MAX_LIMIT: Final = 10**18
MAX_RATIO: Final = 1000
# status.analysis is free-form in the CRD (x-kubernetes-preserve-unknown-fields), so these
# bound only the parser: every metric the criteria can name, and the buckets of a histogram.
MAX_METRICS: Final = 1 + MAX_OBJECTIVES + MAX_REWARDS + MAX_INDICATORS
MAX_BUCKETS: Final = 256
# Times in the status and in events: anything outside is a corrupt clock or a hostile
# value, and stays far from datetime's year 9999, where adding an interval overflows.
MIN_YEAR: Final = 2000
MAX_YEAR: Final = 2200


@dataclass(frozen=True)
class Bound:
    """What the CRD's schema says about one field, in its own terms."""

    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    max_length: int | None = None
    max_items: int | None = None
    pattern: str | None = None

    def matches(self, text: str) -> bool:
        # fullmatch: a pattern's `$` would let a trailing newline through with match().
        return self.pattern is None or re.fullmatch(self.pattern, text) is not None

    def contains(self, value: float) -> bool:
        return not (
            (self.minimum is not None and value < self.minimum)
            or (self.maximum is not None and value > self.maximum)
            or (self.exclusive_minimum and value == self.minimum)
            or (self.exclusive_maximum and value == self.maximum)
        )

    def describe(self) -> str:
        """`between 1 and 86400`, `in (0, 0.5]`, `>= 0`."""
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            if not (self.exclusive_minimum or self.exclusive_maximum):
                return f"between {low:g} and {high:g}"
            opening = "(" if self.exclusive_minimum else "["
            closing = ")" if self.exclusive_maximum else "]"
            return f"in {opening}{low:g}, {high:g}{closing}"
        if low is not None:
            return f"{'>' if self.exclusive_minimum else '>='} {low:g}"
        return f"{'<' if self.exclusive_maximum else '<='} {high:g}"


_NAME: Final = Bound(max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)
_LIMIT: Final = Bound(
    minimum=-MAX_LIMIT,
    maximum=MAX_LIMIT,
    max_length=QUANTITY_MAX_LENGTH,
    pattern=QUANTITY_PATTERN,
)
_PERCENT: Final = Bound(minimum=0, maximum=100)


def _version_bounds(path: str) -> dict[str, Bound]:
    ref = f"{path}.weightObjRef"
    return {
        f"{path}.name": Bound(max_length=253),
        f"{path}.variables": Bound(max_items=32),
        f"{path}.variables[].name": Bound(max_length=63, pattern=VARIABLE_PATTERN),
        f"{path}.variables[].value": Bound(max_length=1024),
        f"{ref}.apiVersion": Bound(max_length=NAME_MAX_LENGTH),
        f"{ref}.kind": Bound(max_length=63),
        f"{ref}.name": Bound(max_length=253),
        f"{ref}.namespace": Bound(max_length=63),
        f"{ref}.fieldPath": Bound(max_length=1024, pattern=FIELD_PATH_PATTERN),
    }


MAX_PAIR_VERSIONS: Final = 8
"""Up to this many versions (28 pairs, about 20 KB of status) the first reward is judged by
windowed pairwise tests kept in the status; beyond, by the cumulative counts (no state)."""


def _ratio_test_bounds(path: str, pairs: bool = False) -> dict[str, Bound]:
    """`status.ratioTests`: one running conditional test per maxRatio metric and candidate
    (analytics.conditional.RatioTest.to_dict, plus whose it is); with `pairs`,
    `status.rewardTests`: one PairTest per pair of versions, plus its rival."""
    count = Bound(minimum=0, maximum=MAX_MAGNITUDE)
    log_lr = Bound(minimum=-MAX_MAGNITUDE, maximum=MAX_MAGNITUDE)
    iterations = Bound(minimum=0, maximum=MAX_ITERATIONS)
    grid = len(REWARD_OFFSETS if pairs else RATIO_OFFSETS)
    items = MAX_PAIR_VERSIONS * (MAX_PAIR_VERSIONS - 1) // 2 if pairs else None
    return {
        path: Bound(max_items=items or MAX_OBJECTIVES * MAX_CANDIDATES),
        f"{path}[].metric": _NAME,
        f"{path}[].version": Bound(max_length=253),
        **({f"{path}[].rival": Bound(max_length=253)} if pairs else {}),
        f"{path}[].margin": Bound(minimum=0, maximum=MAX_RATIO, exclusive_minimum=True),
        f"{path}[].iteration": iterations,
        **{
            f"{path}[].{key}": count
            for key in (
                "candidateEvents",
                "candidateRequests",
                "baselineEvents",
                "baselineRequests",
                "dispersionTotal",
            )
        },
        f"{path}[].incidents": iterations,
        f"{path}[].dispersionWindows": iterations,
        f"{path}[].violation": Bound(max_items=grid),
        f"{path}[].violation[]": log_lr,
        f"{path}[].satisfaction": Bound(max_items=grid),
        f"{path}[].satisfaction[]": log_lr,
    }


# Field path in the CRD schema ("[]" for a list's items) -> its bound. The parser reads
# every bound from here; tests/manifests holds the CRD to exactly these.
BOUNDS: Final[Mapping[str, Bound]] = {
    "spec.target": _NAME,
    "spec.strategy.weights.maxCandidateWeight": _PERCENT,
    "spec.strategy.weights.maxCandidateWeightIncrement": Bound(minimum=1, maximum=100),
    "spec.criteria.requestCount": _NAME,
    "spec.criteria.alpha": Bound(minimum=0, maximum=0.5, exclusive_minimum=True),
    "spec.criteria.objectives": Bound(max_items=MAX_OBJECTIVES),
    "spec.criteria.objectives[].metric": _NAME,
    "spec.criteria.objectives[].upperLimit": _LIMIT,
    "spec.criteria.objectives[].lowerLimit": _LIMIT,
    "spec.criteria.objectives[].maxIncrease": _LIMIT,
    "spec.criteria.objectives[].maxRatio": Bound(
        minimum=0, maximum=MAX_RATIO, exclusive_minimum=True
    ),
    "spec.criteria.objectives[].quantile": Bound(
        minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True
    ),
    "spec.criteria.rewards": Bound(max_items=MAX_REWARDS),
    "spec.criteria.rewards[].metric": _NAME,
    "spec.criteria.indicators": Bound(max_items=MAX_INDICATORS),
    "spec.criteria.indicators[]": _NAME,
    "spec.duration.intervalSeconds": Bound(minimum=1, maximum=MAX_INTERVAL_SECONDS),
    "spec.duration.iterationsPerLoop": Bound(minimum=1, maximum=MAX_ITERATIONS),
    "spec.duration.maxLoops": Bound(minimum=1, maximum=MAX_ITERATIONS),
    **_version_bounds("spec.versionInfo.baseline"),
    "spec.versionInfo.candidates": Bound(max_items=MAX_CANDIDATES),
    **_version_bounds("spec.versionInfo.candidates[]"),
    "status.completedIterations": Bound(minimum=0, maximum=MAX_ITERATIONS),
    "status.versions": Bound(max_items=MAX_VERSIONS),
    "status.versions[].name": Bound(max_length=253),
    "status.versions[].revision": Bound(max_length=253),
    "status.currentWeightDistribution": Bound(max_items=MAX_VERSIONS),
    "status.currentWeightDistribution[].name": Bound(max_length=253),
    "status.currentWeightDistribution[].value": _PERCENT,
    **_ratio_test_bounds("status.ratioTests"),
    **_ratio_test_bounds("status.rewardTests", pairs=True),
}

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


def schema_path(path: str) -> str:
    """The CRD schema path of a document path: `spec.criteria.objectives[2].metric` ->
    `spec.criteria.objectives[].metric`, the key of its bound in BOUNDS."""
    return re.sub(r"\[\d+\]", "[]", path)


def parse_time(value: object) -> datetime:
    """A status or event timestamp (RFC 3339, as the API server writes `date-time`) as an
    aware datetime, refused outside the years MIN_YEAR..MAX_YEAR so that adding an interval
    to it can never overflow.

    Raises:
        ValueError: with a message that quotes at most a prefix of the value.
    """
    if isinstance(value, datetime):  # YAML reads an unquoted timestamp as one
        result = value
    elif isinstance(value, str) and len(value) <= 64:
        try:
            result = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"must be a date-time like 2026-01-31T12:00:00Z, got {quote(value)}"
            ) from None
    else:
        raise ValueError(f"must be a date-time like 2026-01-31T12:00:00Z, got {quote(value)}")
    if result.tzinfo is None:
        result = result.replace(tzinfo=UTC)
    if not MIN_YEAR <= result.year <= MAX_YEAR:
        raise ValueError(f"must be in the years {MIN_YEAR} to {MAX_YEAR}, got {quote(value)}")
    return result


class _Reader:
    """Reads typed fields and collects every problem instead of stopping at the first.

    Each read applies the bound BOUNDS lists for the field's schema path, if any.
    """

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(
        self, value: object, path: str, required: bool = False, max_items: int | None = None
    ) -> Mapping[str, Any]:
        if value is None:
            if required:
                self.fail(path, "is required")
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, f"must be an object, got {type(value).__name__}")
            return {}
        if max_items is not None and len(value) > max_items:
            self.fail(path, f"has {len(value)} entries; at most {max_items} are allowed")
            return {}
        return value

    def sequence(self, value: object, path: str) -> list[Any]:
        """The list, cut to its bound's max_items (the cut reported, the rest unread)."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"must be a list, got {type(value).__name__}")
            return []
        bound = BOUNDS.get(schema_path(path))
        if bound is not None and bound.max_items is not None and len(value) > bound.max_items:
            self.fail(path, f"has {len(value)} items; at most {bound.max_items} are allowed")
            return value[: bound.max_items]
        return value

    def string(self, value: object, path: str, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.fail(path, "is required")
            return None
        if not isinstance(value, str) or not value:
            self.fail(path, f"must be a non-empty string, got {quote(value)}")
            return None
        return value if self.bounded(value, path) else None

    def bounded(self, value: str, path: str, pattern: bool = True) -> bool:
        """Whether the string keeps its field's maxLength and pattern (reported if not)."""
        bound = BOUNDS.get(schema_path(path))
        if bound is None:
            return True
        if bound.max_length is not None and len(value) > bound.max_length:
            self.fail(
                path,
                f"is {len(value)} characters; at most {bound.max_length} are allowed: "
                f"{quote(value)}",
            )
            return False
        if pattern and not bound.matches(value):
            self.fail(path, f"must match {bound.pattern}, got {quote(value)}")
            return False
        return True

    def integer(self, value: object, path: str, default: int) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {quote(value)}")
            return default
        bound = BOUNDS[schema_path(path)]
        if not bound.contains(value):
            self.fail(path, f"must be {bound.describe()}, got {quote(value)}")
            return default
        return value

    def number(
        self, value: object, path: str, max_magnitude: float = MAX_MAGNITUDE
    ) -> float | None:
        """A finite number or quantity of at most `max_magnitude`; a string keeps its
        field's maxLength and pattern. Narrower ranges are the caller's to word."""
        if value is None:
            return None
        if isinstance(value, str) and not self.bounded(value, path, pattern=False):
            return None
        try:
            result = parse_quantity(value, max_magnitude=max_magnitude)
        except ValueError as e:
            self.fail(path, str(e))
            return None
        # What parse_quantity forgives and the API server does not (spaces around it).
        bound = BOUNDS.get(schema_path(path))
        if isinstance(value, str) and bound is not None and not bound.matches(value):
            self.fail(path, f"must be a quantity without spaces like '0.01', got {quote(value)}")
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
            self.fail(path, f"must be one of {', '.join(choices)}, got {quote(value)}")
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
            "apiVersion",
            f"must be one of {', '.join(ACCEPTED_API_VERSIONS)}, got {quote(api_version)}",
        )
    if doc.get("kind") != "Experiment":
        r.fail("kind", f"must be Experiment, got {quote(doc.get('kind'))}")
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
            weights_raw.get("maxCandidateWeight"), "spec.strategy.weights.maxCandidateWeight", 100
        ),
        r.integer(
            weights_raw.get("maxCandidateWeightIncrement"),
            "spec.strategy.weights.maxCandidateWeightIncrement",
            10,
        ),
    )
    criteria, reward_count = _criteria(
        r, r.mapping(raw.get("criteria"), "spec.criteria"), testing is not None
    )
    duration_raw = r.mapping(raw.get("duration"), "spec.duration")
    duration = Duration(
        r.integer(duration_raw.get("intervalSeconds"), "spec.duration.intervalSeconds", 20),
        r.integer(duration_raw.get("iterationsPerLoop"), "spec.duration.iterationsPerLoop", 15),
        r.integer(duration_raw.get("maxLoops"), "spec.duration.maxLoops", 1),
    )
    if duration.total_iterations > MAX_ITERATIONS:
        r.fail(
            "spec.duration",
            f"iterationsPerLoop x maxLoops must be at most {MAX_ITERATIONS}, "
            f"got {duration.total_iterations}",
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
        if reward_count != rewards:
            noun = "reward" if rewards == 1 else "rewards"
            r.fail(
                "spec.criteria.rewards",
                f"{testing.value} needs exactly {rewards} {noun}, got {reward_count}",
            )
    if target is None or testing is None:
        return None
    strategy = Strategy(testing, deployment or DeploymentPattern.PROGRESSIVE, weights)
    return ExperimentSpec(target, strategy, criteria, duration, version_info)


def _criteria(r: _Reader, raw: Mapping[str, Any], shape_checked: bool) -> tuple[Criteria, int]:
    """The criteria and how many rewards the document lists (the testing pattern's shape
    rule words a wrong count better than a bare maxItems, when the pattern is known)."""
    objectives: list[Objective] = []
    for i, item in enumerate(r.sequence(raw.get("objectives"), "spec.criteria.objectives")):
        path = f"spec.criteria.objectives[{i}]"
        o = r.mapping(item, path)
        metric = r.string(o.get("metric"), f"{path}.metric", required=True)
        upper = r.number(o.get("upperLimit"), f"{path}.upperLimit", MAX_LIMIT)
        lower = r.number(o.get("lowerLimit"), f"{path}.lowerLimit", MAX_LIMIT)
        ratio = r.number(o.get("maxRatio"), f"{path}.maxRatio")
        increase = r.number(o.get("maxIncrease"), f"{path}.maxIncrease", MAX_LIMIT)
        quantile = r.number(o.get("quantile"), f"{path}.quantile")
        rollback = o.get("rollbackOnFailure", o.get("rollback_on_failure"))
        if rollback is not None and not isinstance(rollback, bool):
            r.fail(f"{path}.rollbackOnFailure", f"must be true or false, got {quote(rollback)}")
            rollback = None
        limits = ("upperLimit", "lowerLimit", "maxRatio", "maxIncrease")
        if metric is not None and all(o.get(k) is None for k in limits):
            r.fail(path, "needs at least one of upperLimit, lowerLimit, maxRatio, maxIncrease")
        if upper is not None and lower is not None and lower > upper:
            r.fail(f"{path}.lowerLimit", f"({lower:g}) is above upperLimit ({upper:g})")
        if ratio is not None and ratio <= 0:
            r.fail(f"{path}.maxRatio", f"must be > 0, got {ratio:g}")
        elif ratio is not None and ratio > MAX_RATIO:
            r.fail(f"{path}.maxRatio", f"must be at most {MAX_RATIO}, got {ratio:g}")
        if increase is not None and increase < 0:
            r.fail(f"{path}.maxIncrease", f"must be >= 0, got {increase:g}")
        if quantile is not None and not 0 < quantile < 1:
            r.fail(f"{path}.quantile", f"must be between 0 and 1 (exclusive), got {quantile:g}")
        if metric is not None:
            objectives.append(Objective(metric, upper, lower, ratio, increase, quantile, rollback))
    rewards: list[Reward] = []
    directions = {d.value: d for d in Direction}
    listed = raw.get("rewards")
    too_many = isinstance(listed, list) and len(listed) > MAX_REWARDS
    if shape_checked and too_many:
        listed = []  # the pattern's shape rule reports the count; the items stay unread
    for i, item in enumerate(r.sequence(listed, "spec.criteria.rewards")):
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
    alpha_bound = BOUNDS["spec.criteria.alpha"]
    if alpha is not None and not alpha_bound.contains(alpha):
        r.fail("spec.criteria.alpha", f"must be {alpha_bound.describe()}, got {alpha:g}")
        alpha = None
    criteria = Criteria(
        tuple(objectives),
        tuple(rewards),
        tuple(indicators),
        r.string(raw.get("requestCount"), "spec.criteria.requestCount"),
        0.05 if alpha is None else alpha,
    )
    # Counted as parsed (a malformed reward is reported on its own), unless left unread.
    reward_count = len(raw["rewards"]) if shape_checked and too_many else len(rewards)
    return criteria, reward_count


def _version(r: _Reader, raw: object, path: str) -> Version | None:
    v = r.mapping(raw, path, required=True)
    name = r.string(v.get("name"), f"{path}.name", required=True)
    variables: dict[str, str] = {}
    for i, item in enumerate(r.sequence(v.get("variables"), f"{path}.variables")):
        var = r.mapping(item, f"{path}.variables[{i}]")
        key = r.string(var.get("name"), f"{path}.variables[{i}].name", required=True)
        value = _variable_value(r, var.get("value", ""), f"{path}.variables[{i}].value")
        if key is not None and value is not None:
            variables[key] = value
    ref = None
    if v.get("weightObjRef") is not None:
        w = r.mapping(v.get("weightObjRef"), f"{path}.weightObjRef")
        api = r.string(w.get("apiVersion"), f"{path}.weightObjRef.apiVersion", required=True)
        kind = r.string(w.get("kind"), f"{path}.weightObjRef.kind", required=True)
        obj = r.string(w.get("name"), f"{path}.weightObjRef.name", required=True)
        namespace = r.string(w.get("namespace"), f"{path}.weightObjRef.namespace")
        field_path = r.string(w.get("fieldPath"), f"{path}.weightObjRef.fieldPath")
        if api and kind and obj:
            ref = WeightObjRef(api, kind, obj, namespace, field_path)
    return Version(name, variables, ref) if name is not None else None


def _variable_value(r: _Reader, value: object, path: str) -> str | None:
    # The CRD says string; a YAML scalar that reads as a number or boolean (revision: 2) is
    # taken as its text, as before. Anything else would have no sensible text.
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        r.fail(path, f"must be a string, got {quote(value)}")
        return None
    if isinstance(value, bool | int | float):
        value = str(value)
    if not isinstance(value, str):
        r.fail(path, f"must be a string, got {quote(value)}")
        return None
    return value if r.bounded(value, path) else None


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
            r.fail("spec.versionInfo", f"version names must be unique; {quote(name)} appears twice")
        seen.add(name)
    return result


def _status(r: _Reader, raw: Mapping[str, Any], spec: ExperimentSpec | None) -> ExperimentStatus:
    completed = r.integer(raw.get("completedIterations"), "status.completedIterations", 0)
    for key in ("initTime", "startTime", "lastUpdateTime", "lastIterationTime"):
        if raw.get(key) is not None:
            try:
                parse_time(raw[key])
            except ValueError as e:
                r.fail(f"status.{key}", str(e))
    resolved: list[str] = []
    for i, item in enumerate(r.sequence(raw.get("versions"), "status.versions")):
        v = r.mapping(item, f"status.versions[{i}]")
        name = r.string(v.get("name"), f"status.versions[{i}].name", required=True)
        r.string(v.get("revision"), f"status.versions[{i}].revision")
        if name is not None:
            resolved.append(name)
    # The versions the status may speak of: the spec's, else the ones start resolved.
    info = spec.version_info if spec is not None else None
    known = info.names if info is not None else tuple(resolved)
    if info is not None:
        for i, name in enumerate(resolved):
            _check_known(r, name, known, f"status.versions[{i}].name")
    weights: dict[str, int] = {}
    for i, item in enumerate(
        r.sequence(raw.get("currentWeightDistribution"), "status.currentWeightDistribution")
    ):
        path = f"status.currentWeightDistribution[{i}]"
        w = r.mapping(item, path)
        name = r.string(w.get("name"), f"{path}.name", required=True)
        value = r.integer(w.get("value"), f"{path}.value", 0)
        if name is not None and _check_known(r, name, known, f"{path}.name"):
            weights[name] = value
    if weights and sum(weights.values()) != 100:
        r.fail(
            "status.currentWeightDistribution",
            f"values must sum to 100, got {sum(weights.values())}",
        )
    analysis = r.mapping(raw.get("analysis"), "status.analysis")
    aggregated = r.mapping(analysis.get("aggregatedMetrics"), "status.analysis.aggregatedMetrics")
    data = r.mapping(
        aggregated.get("data"), "status.analysis.aggregatedMetrics.data", max_items=MAX_METRICS
    )
    measurements: dict[str, dict[str, Measurement]] = {}
    for metric, entry in data.items():
        base = f"status.analysis.aggregatedMetrics.data.{_key(metric)}"
        if not _valid_key(r, metric, base, BOUNDS["spec.criteria.objectives[].metric"]):
            continue
        versions = r.mapping(
            r.mapping(entry, base).get("data"), f"{base}.data", max_items=MAX_VERSIONS
        )
        measurements[metric] = {}
        for version, value in versions.items():
            path = f"{base}.data.{_key(version)}"
            if not _valid_key(r, version, path, BOUNDS["status.versions[].name"]):
                continue
            if known and not _check_known(r, version, known, path):
                continue
            m = _measurement(r, value, path)
            if m is not None:
                measurements[metric][version] = m
    if spec is not None:
        _check_histogram_objectives(r, spec, measurements)
        _check_limits_fit_the_metric(r, spec, measurements)
    stage = raw.get("stage")
    return ExperimentStatus(
        completed,
        weights,
        measurements,
        stage if isinstance(stage, str) else None,
        _ratio_tests(r, raw.get("ratioTests"), known),
        _reward_tests(r, raw.get("rewardTests"), known),
    )


_RATIO_TEST_INTEGERS: Final = ("iteration", "incidents")
_RATIO_TEST_NUMBERS: Final = (
    "margin",
    "candidateEvents",
    "candidateRequests",
    "baselineEvents",
    "baselineRequests",
    "dispersionTotal",
    "dispersionWindows",
)


def _ratio_tests(
    r: _Reader, raw: object, known: tuple[str, ...]
) -> dict[str, dict[str, RatioTest]]:
    """`status.ratioTests`, each entry within its fields' bounds, of a known version."""
    out: dict[str, dict[str, RatioTest]] = {}
    for metric, (version, _), test in _running_tests(r, raw, known, "ratioTests", RatioTest):
        out.setdefault(metric, {})[version] = test
    return out


def _reward_tests(
    r: _Reader, raw: object, known: tuple[str, ...]
) -> dict[str, dict[tuple[str, str], PairTest]]:
    """`status.rewardTests`, each entry within its fields' bounds, of two known versions."""
    out: dict[str, dict[tuple[str, str], PairTest]] = {}
    for metric, pair, test in _running_tests(r, raw, known, "rewardTests", PairTest):
        out.setdefault(metric, {})[pair] = test
    return out


_Test = TypeVar("_Test", bound=RatioTest)


def _running_tests(
    r: _Reader, raw: object, known: tuple[str, ...], key: str, kind: type[_Test]
) -> list[tuple[str, tuple[str, str], _Test]]:
    """The entries of `status.<key>` as (metric, (version, rival or ""), test)."""
    out: list[tuple[str, tuple[str, str], _Test]] = []
    pairs = kind is PairTest
    grid = len(kind.OFFSETS)
    for i, item in enumerate(r.sequence(raw, f"status.{key}")):
        path = f"status.{key}[{i}]"
        entry = r.mapping(item, path)
        before = len(r.problems)
        metric = r.string(entry.get("metric"), f"{path}.metric", required=True)
        names = [
            r.string(entry.get(role), f"{path}.{role}", required=True)
            for role in (("version", "rival") if pairs else ("version",))
        ]
        for role, name in zip(("version", "rival"), names, strict=False):
            if name is not None:
                _check_known(r, name, known, f"{path}.{role}")
        fields: dict[str, Any] = {}
        for field_name in _RATIO_TEST_INTEGERS:
            fields[field_name] = r.integer(entry.get(field_name), f"{path}.{field_name}", 0)
        for field_name in _RATIO_TEST_NUMBERS:
            fields[field_name] = _bounded(
                r, entry.get(field_name), f"{path}.{field_name}", required=field_name == "margin"
            )
        for side in ("violation", "satisfaction"):
            values = r.sequence(entry.get(side), f"{path}.{side}")
            if len(values) != grid:
                r.fail(f"{path}.{side}", f"must hold {grid} numbers")
            fields[side] = [_bounded(r, v, f"{path}.{side}[{j}]") for j, v in enumerate(values)]
        if pairs and fields.get("margin") not in (None, 1.0):
            r.fail(f"{path}.margin", f"must be 1 for a pairwise test, got {fields['margin']}")
        if len(r.problems) > before or metric is None or None in names:
            continue
        version, rival = str(names[0]), str(names[1]) if pairs else ""
        test = kind.from_dict({k: v for k, v in fields.items() if v is not None})
        out.append((metric, (version, rival), test))
    return out


def _bounded(r: _Reader, value: object, path: str, required: bool = False) -> float | None:
    """A plain number within its BOUNDS range (reported if missing when `required`)."""
    if value is None:
        if required:
            r.fail(path, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        r.fail(path, f"must be a number, got {quote(value)}")
        return None
    bound = BOUNDS[schema_path(path)]
    if not bound.contains(float(value)):
        r.fail(path, f"must be {bound.describe()}, got {quote(value)}")
        return None
    return float(value)


def _key(key: object) -> str:
    """A mapping key as a path segment, cut short: a path names a field, it does not quote it."""
    text = str(key) if isinstance(key, str) else quote(key)
    return text if len(text) <= 64 else text[:64] + "…"


def _valid_key(r: _Reader, key: object, path: str, bound: Bound) -> bool:
    if not isinstance(key, str) or not key:
        r.fail(path, f"a name must be a non-empty string, got {quote(key)}")
        return False
    if bound.max_length is not None and len(key) > bound.max_length:
        r.fail(path, f"a name is at most {bound.max_length} characters, got {len(key)}")
        return False
    if not bound.matches(key):
        r.fail(path, f"a name must match {bound.pattern}")
        return False
    return True


def _check_known(r: _Reader, name: str, known: tuple[str, ...], path: str) -> bool:
    if not known or name in known:
        return True
    listed = ", ".join(quote(n) for n in known)
    r.fail(path, f"{quote(name)} is not a version of this experiment ({listed})")
    return False


def _measurement(r: _Reader, raw: object, path: str) -> Measurement | None:
    m = r.mapping(raw, path)
    try:
        if m.get("buckets") is not None:
            buckets = r.sequence(m.get("buckets"), f"{path}.buckets")
            if len(buckets) > MAX_BUCKETS:
                r.fail(f"{path}.buckets", f"has {len(buckets)}; at most {MAX_BUCKETS} are allowed")
                return None
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


def _check_limits_fit_the_metric(
    r: _Reader, spec: ExperimentSpec, measurements: Mapping[str, Mapping[str, Measurement]]
) -> None:
    """An objective names a metric, not its type; the measurements and the request count
    say what some metrics are. Limits such a metric can never reach are refused: a rate
    (events out of trials) lies in [0, 1], so `upperLimit: 5` meant 5% and would always
    pass; a count or a histogram's bucket bound (latency, size) is never negative."""
    criteria = spec.criteria
    for i, objective in enumerate(criteria.objectives):
        by_version = [
            m for m in measurements.get(objective.metric, {}).values() if not isinstance(m, NoData)
        ]
        shapes = {type(m) for m in by_version}
        if shapes == {Counts}:
            what, low, high = "a rate (events out of trials)", 0.0, 1.0
        elif shapes == {Histogram} and all(
            b >= 0 for m in by_version if isinstance(m, Histogram) for b in m.bounds
        ):
            what, low, high = "a histogram of values >= 0 (its bucket bounds)", 0.0, math.inf
        elif objective.metric == criteria.request_count:
            what, low, high = "the request count", 0.0, math.inf
        else:
            continue
        for field, limit in (
            ("upperLimit", objective.upper_limit),
            ("lowerLimit", objective.lower_limit),
        ):
            if limit is not None and not low <= limit <= high:
                span = f"between {low:g} and {high:g}" if math.isfinite(high) else f">= {low:g}"
                r.fail(
                    f"spec.criteria.objectives[{i}].{field}",
                    f"{quote(objective.metric)} is {what}: the limit must be {span}, got {limit:g}",
                )
