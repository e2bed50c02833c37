"""The Experiment as typed, frozen values: spec, status and the measurements it carries.

Field names mirror iter8 v2alpha2's Experiment (docs/design.md#resources) so its users feel
at home;
Arbiter's additions (relative objectives, histogram quantiles, alpha) sit beside them.
Versions are always keyed by name, never by list position.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from analytics.conditional import PairTests, RatioTest
from analytics.measurements import Measurement


class TestingPattern(enum.Enum):
    CANARY = "Canary"
    CONFORMANCE = "Conformance"
    AB = "A/B"
    ABN = "A/B/n"


class DeploymentPattern(enum.Enum):
    PROGRESSIVE = "Progressive"
    FIXED_SPLIT = "FixedSplit"
    BLUE_GREEN = "BlueGreen"


class Direction(enum.Enum):
    HIGH = "High"
    LOW = "Low"


@dataclass(frozen=True)
class Weights:
    max_candidate_weight: int = 100
    max_candidate_weight_increment: int = 10


@dataclass(frozen=True)
class Strategy:
    testing_pattern: TestingPattern
    deployment_pattern: DeploymentPattern = DeploymentPattern.PROGRESSIVE
    weights: Weights = Weights()


@dataclass(frozen=True)
class Objective:
    """Limits on one metric; every limit given must hold for the objective to be satisfied.

    `upper_limit`/`lower_limit` are absolute. `max_ratio`/`max_increase` bound a candidate
    relative to the baseline (candidate <= ratio * baseline, candidate <= baseline + increase),
    so an incident that hits every version does not fail the candidate. For a histogram
    metric, `upper_limit` picks the bucket bound and `quantile` q says that at most 1 - q of
    requests may exceed it.
    """

    metric: str
    upper_limit: float | None = None
    lower_limit: float | None = None
    max_ratio: float | None = None
    max_increase: float | None = None
    quantile: float | None = None
    rollback_on_failure: bool | None = None

    @property
    def is_relative(self) -> bool:
        return self.max_ratio is not None or self.max_increase is not None


@dataclass(frozen=True)
class Reward:
    metric: str
    preferred_direction: Direction


@dataclass(frozen=True)
class Criteria:
    objectives: tuple[Objective, ...] = ()
    rewards: tuple[Reward, ...] = ()
    indicators: tuple[str, ...] = ()
    request_count: str | None = None
    alpha: float = 0.05


@dataclass(frozen=True)
class Duration:
    interval_seconds: int = 20
    iterations_per_loop: int = 15
    max_loops: int = 1

    @property
    def total_iterations(self) -> int:
        return self.iterations_per_loop * self.max_loops


@dataclass(frozen=True)
class WeightObjRef:
    """The object and field that carries one version's traffic weight."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None
    field_path: str | None = None


@dataclass(frozen=True)
class Version:
    name: str
    variables: Mapping[str, str] = field(default_factory=dict)
    weight_obj_ref: WeightObjRef | None = None


@dataclass(frozen=True)
class VersionInfo:
    baseline: Version
    candidates: tuple[Version, ...] = ()

    @property
    def versions(self) -> tuple[Version, ...]:
        return (self.baseline, *self.candidates)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.versions)


@dataclass(frozen=True)
class ExperimentSpec:
    target: str
    strategy: Strategy
    criteria: Criteria = Criteria()
    duration: Duration = Duration()
    version_info: VersionInfo | None = None


@dataclass(frozen=True)
class ExperimentStatus:
    """What an earlier iteration left behind and what this one measured.

    `measurements` maps metric name -> version name -> measurement; a version missing from
    the inner mapping has no data yet. `ratio_tests` maps metric name -> candidate name ->
    the running conditional test of its maxRatio condition, when per-iteration counts feed
    one; `reward_tests` maps the first reward's metric -> (version, rival) -> the windowed
    pairwise test the A/B/n stopping rule reads, likewise.
    """

    completed_iterations: int = 0
    current_weights: Mapping[str, int] = field(default_factory=dict)
    measurements: Mapping[str, Mapping[str, Measurement]] = field(default_factory=dict)
    stage: str | None = None
    ratio_tests: Mapping[str, Mapping[str, RatioTest]] = field(default_factory=dict)
    reward_tests: Mapping[str, PairTests] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    api_version: str
    name: str
    namespace: str
    spec: ExperimentSpec
    status: ExperimentStatus = ExperimentStatus()
