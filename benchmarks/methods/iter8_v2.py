"""iter8 v2-style experiment (iter8-tools/iter8-analytics v2; docs/statistics.md#baselines).

No statistics: every iteration compares aggregated point values with limits
(`check_limits`: the error rate with the SLO, and the interpolated latency quantile with
the latency objective's limit), takes the winner as the candidate that meets them (Canary)
or the best reward among versions that do (A/B/n), and moves traffic 90% to the winner
(the baseline if none) plus 10% spread evenly for exploration, capped by
`maxCandidateWeightIncrement` and `maxCandidateWeight`. The experiment runs iter8's
default duration (15 iterations of 20 s) and then promotes the winner, or keeps the
baseline.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from analytics.model import TestingPattern
from benchmarks.methods import base
from benchmarks.methods.base import EVERY_PATTERN, BoolArray, FloatArray, MethodInfo, Step
from benchmarks.scenario import LATENCY_METRIC, Scenario
from benchmarks.scrape import Observation

DURATION_S: Final = 15 * 20.0
EXPLORATION: Final = 0.10


def limits_met(scenario: Scenario, obs: Observation) -> BoolArray:
    """iter8 v2's `check_limits` on point values, per version: (R, K)."""
    ok = base.share(obs.errors, obs.requests) <= scenario.slo_error_rate
    for o in scenario.objectives:
        if o.metric == LATENCY_METRIC and o.upper_limit is not None and obs.buckets.shape[-1]:
            q = base.histogram_quantile(o.quantile or 0.95, obs.bounds, obs.buckets)
            ok &= np.nan_to_num(q, nan=0.0) <= o.upper_limit
    return np.asarray(ok & (obs.requests > 0))


def point_winner(scenario: Scenario, feasible: BoolArray, obs: Observation) -> np.ndarray:
    """Winner index per replicate (-1: none) from feasibility and point rewards."""
    if scenario.pattern is TestingPattern.CANARY:
        return np.where(feasible[:, 1], 1, np.where(feasible[:, 0], 0, -1))
    reward = np.where(feasible, base.share(obs.rewards, obs.requests), -np.inf)
    best = np.argmax(reward, axis=1)
    return np.where(feasible.any(axis=1), best, -1)


class Iter8V2:
    def __init__(self, scenario: Scenario, replicates: int) -> None:
        self.scenario = scenario
        self.weights = base.fixed_split(scenario, replicates)
        self.iterations = max(1, math.ceil(DURATION_S / scenario.interval_s - 1e-9))
        w = scenario.spec.strategy.weights
        self.max_weight, self.increment = w.max_candidate_weight, w.max_candidate_weight_increment

    def initial_weights(self) -> FloatArray:
        return self.weights

    def step(self, obs: Observation) -> Step:
        k = obs.requests.shape[1]
        winner = point_winner(self.scenario, limits_met(self.scenario, obs), obs)
        target = (1 - EXPLORATION) * base.onehot(np.maximum(winner, 0), k) + EXPLORATION / k
        self.weights = base.capped(target, self.weights, self.max_weight, self.increment)
        done = np.full(winner.shape, obs.iteration >= self.iterations or obs.last)
        return base.settle(self.weights, np.maximum(winner, 0), done)


def build(scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool) -> Iter8V2:
    return Iter8V2(scenario, replicates)


INFO = MethodInfo("iter8-v2", "iter8 v2 (point values vs limits)", EVERY_PATTERN, build)
