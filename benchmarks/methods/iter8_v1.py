"""iter8 v1-style Bayesian routing and winner (iter8-analytics v1.0; B5, docs/statistics.md).

Beliefs are Beta(0.1 + k, 0.1 + n - k) for every ratio metric (error rate, share of
requests above the latency bucket bound, conversion). Each iteration draws posterior
samples (iter8 used 10,000; here 256 in quick mode and 1,000 in full, as the harness
allows), estimates each criterion's probability of holding, re-samples the criterion
as Bernoulli(that probability) per draw, and scores each draw: the reward times the
feasibility mask (1e-10 in the baseline's favour) for A/B/n; for a canary, which has no
reward, the candidate wins a draw when its criteria hold and the baseline otherwise. A
version whose share of winning draws exceeds 0.99 is the winner. Traffic is P(rank 1)
("progressive") mixed 90/10 with uniform, the candidates' rise capped per iteration.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from analytics.model import TestingPattern
from benchmarks.methods import base
from benchmarks.methods.base import EVERY_PATTERN, BoolArray, FloatArray, MethodInfo, Step
from benchmarks.scenario import LATENCY_METRIC, Scenario
from benchmarks.scrape import Observation

PRIOR: Final = 0.1
WINNER_PROBABILITY: Final = 0.99
EXPLORATION: Final = 0.10
BASELINE_BIAS: Final = 1e-10


class Iter8V1:
    def __init__(
        self, scenario: Scenario, replicates: int, rng: np.random.Generator, draws: int
    ) -> None:
        self.scenario = scenario
        self.rng = rng
        self.draws = draws
        self.weights = base.fixed_split(scenario, replicates)
        w = scenario.spec.strategy.weights
        self.max_weight, self.increment = w.max_candidate_weight, w.max_candidate_weight_increment

    def initial_weights(self) -> FloatArray:
        return self.weights

    def _beta(self, k: FloatArray, n: FloatArray) -> FloatArray:
        r, kk = n.shape
        a, b = PRIOR + k, PRIOR + n - k
        return np.asarray(self.rng.beta(a[:, None, :], b[:, None, :], size=(r, self.draws, kk)))

    def _feasible(self, obs: Observation) -> BoolArray:
        """Per draw and version, whether every criterion holds after iter8's re-sampling."""
        r, k = obs.requests.shape
        mask = np.ones((r, self.draws, k), dtype=np.bool_)
        for o in self.scenario.objectives:
            if o.metric == LATENCY_METRIC:
                if o.upper_limit is None or not obs.buckets.shape[-1]:
                    continue
                events, trials = base.exceedance(obs, o.upper_limit)
                limit = None if o.quantile is None else 1.0 - o.quantile
            else:
                events, trials = obs.errors, obs.requests
                limit = o.upper_limit
            x = self._beta(events, trials)
            holds = np.ones_like(mask)
            if limit is not None:
                holds &= x <= limit
            if o.max_ratio is not None:
                holds[..., 1:] &= x[..., 1:] <= o.max_ratio * x[..., :1]
            if o.max_increase is not None:
                holds[..., 1:] &= x[..., 1:] <= x[..., :1] + o.max_increase
            p = holds.mean(axis=1, keepdims=True)
            mask &= self.rng.random(mask.shape) < p
        return mask

    def step(self, obs: Observation) -> Step:
        # Draws are the cost; replicates that have decided need none.
        rows = np.flatnonzero(obs.active)
        best = np.zeros(obs.active.size, dtype=np.int64)
        found = np.zeros(obs.active.size, dtype=np.bool_)
        if rows.size:
            p_win = self._p_win(obs.take(rows))
            k = p_win.shape[1]
            target = (1 - EXPLORATION) * p_win + EXPLORATION / k
            target = target / target.sum(axis=1, keepdims=True)
            self.weights = self.weights.copy()
            self.weights[rows] = base.capped(
                target, self.weights[rows], self.max_weight, self.increment
            )
            best[rows] = np.argmax(p_win, axis=1)
            found[rows] = p_win[np.arange(rows.size), best[rows]] > WINNER_PROBABILITY
        return base.settle(self.weights, best, found)

    def _p_win(self, obs: Observation) -> FloatArray:
        """Each version's share of winning draws, (R, K)."""
        k = obs.requests.shape[1]
        mask = self._feasible(obs)
        if self.scenario.pattern is TestingPattern.CANARY:
            utility = np.stack([~mask[..., 1], mask[..., 1]], axis=-1).astype(np.float64)
        else:
            utility = self._beta(obs.rewards, obs.requests) * mask
            utility[..., 0] += BASELINE_BIAS
        leader = np.argmax(utility, axis=-1)
        wins = (leader[..., None] == np.arange(k)) & (utility > 0)
        return np.asarray(wins.mean(axis=1), dtype=np.float64)


def build(scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool) -> Iter8V1:
    return Iter8V1(scenario, replicates, rng, 256 if quick else 1000)


INFO = MethodInfo("iter8-v1", "iter8 v1 Bayesian (P(best) > 0.99)", EVERY_PATTERN, build)
