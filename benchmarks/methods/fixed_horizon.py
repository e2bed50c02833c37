"""Fixed-horizon test, one look (B1, docs/statistics.md#baselines): the classical A/B test.

The sample size comes from a power calculation at the scenario's design effect (Fleiss'
two-proportion formula, two-sided alpha, the design power), the split stays fixed, and
the test is run once, when that many requests have been served (or at the horizon).
- Canary: a pooled two-proportion z test per objective metric (errors; requests above
  the latency bucket bound), Bonferroni across metrics. Significantly worse: roll back;
  otherwise promote ("no significant regression").
- A/B/n: versions whose error rate is within the SLO (point value) compete; the best
  reward is promoted if a z test shows it beats each other one (Bonferroni over K - 1);
  if none does, the test ends inconclusive (the baseline stays, no winner is claimed).
A z test only counts where the normal approximation is valid (>= 5 events and non-events
in each sample); before that nothing is significant.
"""

from __future__ import annotations

import numpy as np

from analytics.model import TestingPattern
from benchmarks.methods import base
from benchmarks.methods.base import FloatArray, IntArray, MethodInfo, Step
from benchmarks.scenario import Scenario
from benchmarks.scrape import Observation


def planned_requests(scenario: Scenario) -> float:
    """Total requests (all versions) the power calculation asks for."""
    alpha, power = scenario.alpha, scenario.design_power
    if scenario.pattern is TestingPattern.CANARY:
        w = scenario.initial_candidate_weight / 100.0
        p = scenario.versions[0].error_rate
        n_canary = base.fleiss_n(p, p * scenario.design_effect_ratio, (1 - w) / w, alpha, power)
        return n_canary / w
    k = len(scenario.versions)
    p = scenario.versions[0].reward_rate or 0.0
    n_arm = base.fleiss_n(p, p * scenario.design_effect_ratio, 1.0, alpha / (k - 1), power)
    return n_arm * k


def canary_regressed(scenario: Scenario, obs: Observation, alpha: float) -> np.ndarray:
    """Whether any objective metric is significantly worse on the canary (z > z_crit)."""
    metrics = [(obs.errors, obs.requests)]
    latency = scenario.latency_objective
    if latency is not None and latency.upper_limit is not None and obs.buckets.shape[-1]:
        metrics.append(base.exceedance(obs, latency.upper_limit))
    crit = base.z_critical(alpha / len(metrics))
    worse = np.zeros(obs.requests.shape[0], dtype=np.bool_)
    for k, n in metrics:
        valid = base.normal_ok(k[:, 1], n[:, 1]) & base.normal_ok(k[:, 0], n[:, 0])
        worse |= valid & (base.z_pooled(k[:, 1], n[:, 1], k[:, 0], n[:, 0]) > crit)
    return worse


def significant_best(
    scenario: Scenario, obs: Observation, alpha: float
) -> tuple[IntArray, np.ndarray]:
    """The best point-feasible reward, and whether it significantly beats every other."""
    k = obs.requests.shape[1]
    feasible = base.share(obs.errors, obs.requests) <= scenario.slo_error_rate
    rate = np.where(feasible & (obs.requests > 0), base.share(obs.rewards, obs.requests), -1.0)
    best = np.argmax(rate, axis=1)
    rows = np.arange(obs.requests.shape[0])
    crit = base.z_critical(alpha / max(k - 1, 1))
    beats = np.ones(rows.size, dtype=np.bool_)
    for v in range(k):
        z = base.z_pooled(
            obs.rewards[rows, best], obs.requests[rows, best], obs.rewards[:, v], obs.requests[:, v]
        )
        valid = base.normal_ok(obs.rewards[:, v], obs.requests[:, v])
        # A version over its SLO is out of the running; the best need not beat it.
        beats &= (best == v) | ~feasible[:, v] | (valid & (z > crit))
    return best.astype(np.int64), beats & (rate[rows, best] >= 0)


class FixedHorizon:
    def __init__(self, scenario: Scenario, replicates: int) -> None:
        self.scenario = scenario
        self.weights = base.fixed_split(scenario, replicates)
        self.planned = planned_requests(scenario)
        self.looked = np.zeros(replicates, dtype=np.bool_)

    def initial_weights(self) -> FloatArray:
        return self.weights

    def step(self, obs: Observation) -> Step:
        # One look per replicate: the first time the planned sample is in, or at the horizon.
        look = ~self.looked & ((obs.requests.sum(axis=1) >= self.planned) | obs.last)
        self.looked |= look
        s = self.scenario
        if s.pattern is TestingPattern.CANARY:
            worse = canary_regressed(s, obs, s.alpha)
            return base.decide(
                self.weights, look & ~worse, look & worse, np.ones_like(look, dtype=np.int64)
            )
        best, significant = significant_best(s, obs, s.alpha)
        return base.settle(self.weights, best, look & significant)


def build(
    scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool
) -> FixedHorizon:
    return FixedHorizon(scenario, replicates)


INFO = MethodInfo("fixed-horizon", "Fixed-horizon z test (1 look)", base.EVERY_PATTERN, build)
