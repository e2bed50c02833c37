"""Benchmark scenarios: the YAML format of `benchmarks/scenarios/*.yaml`, read and validated.

A scenario holds the truth (each version's error rate, reward and latency), the traffic,
the horizon, the faults to inject, Arbiter's criteria (an Experiment's `spec.criteria`,
parsed by `analytics.parse` exactly as on a cluster), the thresholds that threshold-based
methods use instead, and the correct outcome. `benchmarks/scenarios/README.md` documents
every field; `load` reports every problem at once, naming its field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from analytics.model import Experiment, ExperimentSpec, Objective, TestingPattern
from analytics.parse import API_VERSION, SpecError, parse_experiment
from benchmarks.faults import Faults
from benchmarks.simulator import DEFAULT_BUCKETS, SimConfig, VersionTruth

ERROR_METRIC: Final = "error-rate"
LATENCY_METRIC: Final = "latency"
REWARD_METRIC: Final = "conversion"
METRICS: Final = (ERROR_METRIC, LATENCY_METRIC, REWARD_METRIC)
CHECKS: Final = ("false-decisions", "bad-canary", "good-canary", "abn", "low-traffic", "noisy")
SCENARIO_DIR: Final = Path(__file__).parent / "scenarios"


class ScenarioError(ValueError):
    """A scenario file is not valid; `problems` names each field at fault."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class Expected:
    """The correct outcome: promote `version`, roll back (keep the baseline), or "none":
    the versions are identical, so every conclusive decision is a false one."""

    action: str  # "promote" | "rollback" | "none"
    version: int  # index of the version to end on (0 unless promote)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    pattern: TestingPattern
    versions: tuple[VersionTruth, ...]
    rate_rps: float
    interval_s: float
    horizon_s: float
    alpha: float
    spec: ExperimentSpec
    initial_candidate_weight: float
    slo_error_rate: float
    slo_p99_latency_s: float
    design_effect_ratio: float
    design_power: float
    faults: Faults
    latency_telemetry: bool
    expected: Expected
    checks: tuple[str, ...]
    clean: str | None
    methods: tuple[str, ...] | None
    quick_replicates: int | None
    source: str

    @property
    def iterations(self) -> int:
        return round(self.horizon_s / self.interval_s)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.versions)

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return self.spec.criteria.objectives

    @property
    def margin_ratio(self) -> float:
        """The non-inferiority ratio of the error objective (1 + margin), if it has one."""
        for o in self.objectives:
            if o.metric == ERROR_METRIC and o.max_ratio is not None:
                return o.max_ratio
        return 1.5

    @property
    def latency_objective(self) -> Objective | None:
        return next((o for o in self.objectives if o.metric == LATENCY_METRIC), None)

    def sim_config(self) -> SimConfig:
        buckets = DEFAULT_BUCKETS if self.latency_telemetry else ()
        return SimConfig(self.versions, self.rate_rps, self.interval_s, buckets, self.faults)

    def correct_version(self) -> int:
        return self.expected.version

    def feasible(self) -> tuple[bool, ...]:
        """Whether each version truly meets the absolute error SLO (A/B/n feasibility)."""
        return tuple(v.error_rate <= self.slo_error_rate for v in self.versions)


class _Fields:
    """Typed reads from a mapping that collect problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def mapping(self, raw: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problems.append(f"{path}{key}: must be a mapping")
            return {}
        return value

    def number(
        self,
        raw: Mapping[str, Any],
        key: str,
        path: str,
        default: float | None = None,
        low: float = -math.inf,
        high: float = math.inf,
    ) -> float:
        value = raw.get(key, default)
        if value is None:
            self.problems.append(f"{path}{key}: is required")
            return math.nan
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problems.append(f"{path}{key}: must be a number, got {value!r}")
            return math.nan
        if not low <= float(value) <= high:
            self.problems.append(f"{path}{key}: must be in [{low:g}, {high:g}], got {value}")
        return float(value)

    def string(
        self, raw: Mapping[str, Any], key: str, path: str, default: str | None = None
    ) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value:
            self.problems.append(f"{path}{key}: must be a non-empty string")
            return ""
        return value

    def strings(self, raw: Mapping[str, Any], key: str, path: str) -> tuple[str, ...] | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problems.append(f"{path}{key}: must be a list of strings")
            return None
        return tuple(value)


_PATTERNS: Final = {"Canary": TestingPattern.CANARY, "A/B": TestingPattern.AB}
_PATTERNS_N: Final = {"A/B/n": TestingPattern.ABN}


def parse(document: object, source: str = "(scenario)") -> Scenario:
    """Build a Scenario from a parsed YAML document.

    Raises:
        ScenarioError: listing every problem found.
    """
    f = _Fields()
    if not isinstance(document, Mapping):
        raise ScenarioError(source, ["(document): must be a mapping"])
    raw: Mapping[str, Any] = document
    name = f.string(raw, "name", "")
    description = str(raw.get("description", "")).strip()
    pattern_name = raw.get("pattern", "Canary")
    pattern = {**_PATTERNS, **_PATTERNS_N}.get(str(pattern_name))
    if pattern is None:
        f.problems.append(f"pattern: must be Canary, A/B or A/B/n, got {pattern_name!r}")
        pattern = TestingPattern.CANARY
    traffic = f.mapping(raw, "traffic", "")
    rate = f.number(traffic, "rateRps", "traffic.", 50.0, 0.0)
    interval = f.number(traffic, "intervalSeconds", "traffic.", 10.0, 1e-3)
    horizon = f.number(traffic, "horizonSeconds", "traffic.", 3600.0, 1e-3)
    alpha = f.number(raw, "alpha", "", 0.05, 1e-6, 0.5)

    versions = _versions(f, raw.get("versions"))
    if pattern is TestingPattern.CANARY and len(versions) != 2:
        f.problems.append(f"versions: Canary needs exactly 2 versions, got {len(versions)}")
    if pattern is TestingPattern.ABN and len(versions) < 2:
        f.problems.append("versions: A/B/n needs at least 2 versions")

    weights = f.mapping(raw, "weights", "")
    initial = f.number(weights, "initialCandidateWeight", "weights.", 5.0, 0.0, 100.0)
    max_weight = f.number(weights, "maxCandidateWeight", "weights.", 100.0, 0.0, 100.0)
    increment = f.number(weights, "maxCandidateWeightIncrement", "weights.", 5.0, 0.0, 100.0)
    slo = f.mapping(raw, "slo", "")
    slo_error = f.number(slo, "errorRate", "slo.", 0.01, 0.0, 1.0)
    slo_p99 = f.number(slo, "p99LatencySeconds", "slo.", 0.5, 0.0)
    design = f.mapping(raw, "design", "")
    effect = f.number(design, "effectRatio", "design.", 2.0, 1.0 + 1e-9)
    power = f.number(design, "power", "design.", 0.95, 0.5, 0.9999)
    faults = _faults(f, f.mapping(raw, "faults", ""))

    criteria = raw.get("criteria")
    spec: ExperimentSpec | None = None
    if not f.problems and not math.isnan(horizon / interval):
        caps = (round(max_weight), round(increment))
        spec = _spec(f, name, pattern, versions, criteria, alpha, interval, horizon, caps)

    expected = _expected(f, raw.get("expected"), tuple(v.name for v in versions))
    checks = f.strings(raw, "checks", "") or ()
    for c in checks:
        if c not in CHECKS:
            f.problems.append(f"checks: unknown check {c!r}; known: {', '.join(CHECKS)}")
    clean = raw.get("clean")
    if clean is not None and not isinstance(clean, str):
        f.problems.append("clean: must be a scenario name")
    quick = raw.get("quickReplicates")
    if quick is not None and (not isinstance(quick, int) or quick < 1):
        f.problems.append("quickReplicates: must be a positive integer")
    objectives = spec.criteria.objectives if spec else ()
    latency = raw.get("latencyTelemetry", any(o.metric == LATENCY_METRIC for o in objectives))
    if not isinstance(latency, bool):
        f.problems.append("latencyTelemetry: must be true or false")
    if f.problems or spec is None:
        raise ScenarioError(source, f.problems)
    return Scenario(
        name=name,
        description=description,
        pattern=pattern,
        versions=versions,
        rate_rps=rate,
        interval_s=interval,
        horizon_s=horizon,
        alpha=alpha,
        spec=spec,
        initial_candidate_weight=initial,
        slo_error_rate=slo_error,
        slo_p99_latency_s=slo_p99,
        design_effect_ratio=effect,
        design_power=power,
        faults=faults,
        latency_telemetry=bool(latency),
        expected=expected,
        checks=checks,
        clean=clean,
        methods=f.strings(raw, "methods", ""),
        quick_replicates=quick,
        source=source,
    )


def _versions(f: _Fields, raw: object) -> tuple[VersionTruth, ...]:
    if not isinstance(raw, list) or not raw:
        f.problems.append("versions: must be a non-empty list (the first is the baseline)")
        return ()
    out: list[VersionTruth] = []
    for i, item in enumerate(raw):
        path = f"versions[{i}]."
        if not isinstance(item, Mapping):
            f.problems.append(f"versions[{i}]: must be a mapping")
            continue
        name = f.string(item, "name", path)
        error = f.number(item, "errorRate", path, 0.0, 0.0, 1.0)
        reward = item.get("rewardRate")
        if reward is not None:
            reward = f.number(item, "rewardRate", path, None, 0.0, 1.0)
        median = f.number(item, "latencyMedianSeconds", path, 0.1, 1e-6)
        sigma = f.number(item, "latencySigma", path, 0.5, 1e-6)
        if not f.problems:
            out.append(VersionTruth(name, error, reward, "bernoulli", 1.0, median, sigma))
    if len({v.name for v in out}) != len(out):
        f.problems.append("versions: names must be unique")
    return tuple(out)


def _faults(f: _Fields, raw: Mapping[str, Any]) -> Faults:
    burst = f.mapping(raw, "burst", "faults.")
    try:
        return Faults(
            missing_scrape_prob=f.number(raw, "missingScrapeProbability", "faults.", 0.0),
            counter_reset_every_s=(
                None
                if raw.get("counterResetEverySeconds") is None
                else f.number(raw, "counterResetEverySeconds", "faults.")
            ),
            diurnal_amplitude=f.number(raw, "diurnalAmplitude", "faults.", 0.0),
            diurnal_period_s=f.number(raw, "diurnalPeriodSeconds", "faults.", 86400.0),
            burst_start_s=(
                None if not burst else f.number(burst, "startSeconds", "faults.burst.", 0.0)
            ),
            burst_duration_s=f.number(burst, "durationSeconds", "faults.burst.", 0.0),
            burst_error_rate=f.number(burst, "errorRate", "faults.burst.", 0.0),
            overdispersion_icc=f.number(raw, "overdispersionIcc", "faults.", 0.0),
        )
    except ValueError as e:
        f.problems.append(f"faults: {e}")
        return Faults()


def _spec(
    f: _Fields,
    name: str,
    pattern: TestingPattern,
    versions: tuple[VersionTruth, ...],
    criteria: object,
    alpha: float,
    interval: float,
    horizon: float,
    caps: tuple[int, int],
) -> ExperimentSpec | None:
    """Arbiter's spec for the scenario, through the same parser a cluster's Experiment uses."""
    if not isinstance(criteria, Mapping):
        f.problems.append("criteria: must be an Experiment's spec.criteria mapping")
        return None
    document = {
        "apiVersion": API_VERSION,
        "kind": "Experiment",
        "metadata": {"name": name or "scenario", "namespace": "bench"},
        "spec": {
            "target": f"bench/{name}",
            "strategy": {
                "testingPattern": pattern.value,
                "deploymentPattern": "Progressive",
                "weights": {"maxCandidateWeight": caps[0], "maxCandidateWeightIncrement": caps[1]},
            },
            "criteria": {**criteria, "alpha": alpha},
            "duration": {
                "intervalSeconds": max(1, round(interval)),
                "iterationsPerLoop": round(horizon / interval),
                "maxLoops": 1,
            },
            "versionInfo": {
                "baseline": {"name": versions[0].name} if versions else {},
                "candidates": [{"name": v.name} for v in versions[1:]],
            },
        },
    }
    try:
        experiment: Experiment = parse_experiment(document)
    except SpecError as e:
        f.problems.extend(f"criteria (as spec.criteria): {p}" for p in e.problems)
        return None
    for o in experiment.spec.criteria.objectives:
        if o.metric not in (ERROR_METRIC, LATENCY_METRIC):
            f.problems.append(f"criteria.objectives: metric {o.metric!r} is not simulated")
    for rw in experiment.spec.criteria.rewards:
        if rw.metric != REWARD_METRIC:
            f.problems.append(f"criteria.rewards: metric {rw.metric!r} is not simulated")
    if experiment.spec.criteria.rewards and any(v.reward_rate is None for v in versions):
        f.problems.append("versions: a reward needs every version's rewardRate")
    return experiment.spec


def _expected(f: _Fields, raw: object, names: tuple[str, ...]) -> Expected:
    if not isinstance(raw, Mapping):
        f.problems.append(
            "expected: must be {action: promote, version: NAME}, {action: rollback}"
            " or {action: none}"
        )
        return Expected("rollback", 0)
    action = raw.get("action")
    if action in ("rollback", "none"):
        return Expected(str(action), 0)
    if action == "promote":
        version = raw.get("version")
        if version not in names[1:]:
            f.problems.append(f"expected.version: must name a candidate, got {version!r}")
            return Expected("rollback", 0)
        return Expected("promote", names.index(str(version)))
    f.problems.append(f"expected.action: must be promote, rollback or none, got {action!r}")
    return Expected("rollback", 0)


def load(path: str | Path) -> Scenario:
    """Read one scenario file.

    Raises:
        ScenarioError: the file is missing, is not YAML, or is not a valid scenario.
    """
    p = Path(path)
    try:
        document = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ScenarioError(str(p), [f"cannot read: {e.strerror}"]) from e
    except yaml.YAMLError as e:
        raise ScenarioError(str(p), [f"not YAML: {e}"]) from e
    return parse(document, str(p))


def shipped() -> list[Scenario]:
    """Every scenario in `benchmarks/scenarios/`, in file-name order."""
    return [load(p) for p in sorted(SCENARIO_DIR.glob("*.yaml"))]
