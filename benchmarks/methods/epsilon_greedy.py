"""Epsilon-greedy allocation (B6, docs/statistics.md#baselines), run to the horizon.

Each iteration the greedy choice is the version whose point estimates look best: for a
canary, the candidate if its point values meet Arbiter's objectives (iter8 v0's
check-and-exploit), else the baseline; for A/B/n, the highest conversion among versions
whose point values meet the objectives. It gets 1 - epsilon of the traffic (epsilon =
0.1, fixed) and every version gets epsilon / K. There is no stopping rule: at the horizon
the greedy choice is promoted (the baseline kept if it is the choice).
"""

from __future__ import annotations

from typing import Final

import numpy as np

from analytics.model import TestingPattern
from benchmarks.methods import base
from benchmarks.methods.base import EVERY_PATTERN, FloatArray, IntArray, MethodInfo, Step
from benchmarks.scenario import Scenario
from benchmarks.scrape import Observation

EPSILON: Final = 0.1


def greedy_choice(scenario: Scenario, obs: Observation) -> IntArray:
    feasible = base.point_feasible(scenario, obs)
    if scenario.pattern is TestingPattern.CANARY:
        return np.asarray(np.where(feasible[:, 1] & (obs.requests[:, 1] > 0), 1, 0), np.int64)
    reward = np.where(feasible, base.share(obs.rewards, obs.requests), -1.0)
    return np.asarray(np.argmax(reward, axis=1), dtype=np.int64)


class EpsilonGreedy:
    def __init__(self, scenario: Scenario, replicates: int) -> None:
        self.scenario = scenario
        self.weights = base.fixed_split(scenario, replicates)
        k = len(scenario.versions)
        self.weights = np.full((replicates, k), 1.0 / k)

    def initial_weights(self) -> FloatArray:
        return self.weights

    def step(self, obs: Observation) -> Step:
        k = obs.requests.shape[1]
        best = greedy_choice(self.scenario, obs)
        self.weights = (1 - EPSILON) * base.onehot(best, k) + EPSILON / k
        return base.settle(self.weights, best, np.full(best.shape, obs.last))


def build(
    scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool
) -> EpsilonGreedy:
    return EpsilonGreedy(scenario, replicates)


INFO = MethodInfo("epsilon-greedy", "epsilon-greedy (0.1), to the horizon", EVERY_PATTERN, build)
