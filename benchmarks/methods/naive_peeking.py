"""The fixed-horizon z test re-run every iteration, stopping at the first "significant"
result (B2, docs/statistics.md#baselines): what a dashboard that is watched all day amounts to.

- Canary: roll back as soon as a metric is significantly worse (pooled z, as in
  `fixed_horizon`); promote as soon as a Wald z test says the canary's error rate is below
  the margin times the baseline's (non-inferiority, the same margin Arbiter uses).
- A/B/n: promote the best point-feasible reward as soon as it significantly beats every
  other version.
Nothing decided by the horizon is inconclusive. As in `fixed_horizon`, a z test counts only
once each sample has >= 5 events and non-events.
"""

from __future__ import annotations

import numpy as np

from analytics.model import TestingPattern
from benchmarks.methods import base
from benchmarks.methods.base import FloatArray, MethodInfo, Step
from benchmarks.methods.fixed_horizon import canary_regressed, significant_best
from benchmarks.scenario import Scenario
from benchmarks.scrape import Observation


def non_inferior(scenario: Scenario, obs: Observation, alpha: float) -> np.ndarray:
    """Canary error rate significantly below margin x baseline (and latency share too)."""
    margin = scenario.margin_ratio
    metrics = [(obs.errors, obs.requests, margin)]
    latency = scenario.latency_objective
    if latency is not None and latency.upper_limit is not None and obs.buckets.shape[-1]:
        k, n = base.exceedance(obs, latency.upper_limit)
        metrics.append((k, n, latency.max_ratio or margin))
    crit = base.z_critical(alpha / len(metrics))
    ok = np.ones(obs.requests.shape[0], dtype=np.bool_)
    for k, n, ratio in metrics:
        valid = base.normal_ok(k[:, 1], n[:, 1]) & base.normal_ok(k[:, 0], n[:, 0])
        ok &= valid & (base.z_unpooled(k[:, 1], n[:, 1], k[:, 0], n[:, 0], ratio) > crit)
    return ok


class NaivePeeking:
    def __init__(self, scenario: Scenario, replicates: int) -> None:
        self.scenario = scenario
        self.weights = base.fixed_split(scenario, replicates)

    def initial_weights(self) -> FloatArray:
        return self.weights

    def step(self, obs: Observation) -> Step:
        s = self.scenario
        if s.pattern is TestingPattern.CANARY:
            worse = canary_regressed(s, obs, s.alpha)
            good = non_inferior(s, obs, s.alpha) & ~worse
            return base.decide(self.weights, good, worse, np.ones(good.shape, dtype=np.int64))
        best, significant = significant_best(s, obs, s.alpha)
        return base.settle(self.weights, best, significant)


def build(
    scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool
) -> NaivePeeking:
    return NaivePeeking(scenario, replicates)


INFO = MethodInfo("naive-peeking", "z test re-run every iteration", base.EVERY_PATTERN, build)
