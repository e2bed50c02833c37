"""Thompson sampling with a posterior stopping rule (B7, docs/statistics.md#baselines).

Beta(1, 1) priors. Traffic is probability matching: each version's share is its posterior
probability of being best, estimated from joint draws (256 in quick mode, 1,000 in full).
For a canary "best" is the lower error rate (plus share of requests above the latency
bucket bound, when latency is an objective); for A/B/n it is the higher conversion among
versions whose drawn error rate is within the SLO. The experiment stops as soon as one
version's P(best) exceeds 1 - alpha and promotes it (keeps the baseline if it is the
baseline): a Bayesian threshold checked every iteration, with no error guarantee under
peeking (docs/statistics.md#peeking).
"""

from __future__ import annotations

import numpy as np

from analytics.model import TestingPattern
from benchmarks.methods import base
from benchmarks.methods.base import EVERY_PATTERN, FloatArray, MethodInfo, Step
from benchmarks.scenario import Scenario
from benchmarks.scrape import Observation


class Thompson:
    def __init__(
        self, scenario: Scenario, replicates: int, rng: np.random.Generator, draws: int
    ) -> None:
        self.scenario = scenario
        self.rng = rng
        self.draws = draws
        self.weights = base.fixed_split(scenario, replicates)
        k = len(scenario.versions)
        self.weights = np.full((replicates, k), 1.0 / k)

    def initial_weights(self) -> FloatArray:
        return self.weights

    def _beta(self, k: FloatArray, n: FloatArray) -> FloatArray:
        r, kk = n.shape
        return np.asarray(
            self.rng.beta(1 + k[:, None, :], 1 + (n - k)[:, None, :], size=(r, self.draws, kk))
        )

    def step(self, obs: Observation) -> Step:
        # Draws are the cost; replicates that have decided need none.
        rows = np.flatnonzero(obs.active)
        best = np.zeros(obs.active.size, dtype=np.int64)
        stop = np.zeros(obs.active.size, dtype=np.bool_)
        if rows.size:
            weights, best[rows], stop[rows] = self._live(obs.take(rows))
            self.weights = self.weights.copy()
            self.weights[rows] = weights
        return base.settle(self.weights, best, stop)

    def _live(self, obs: Observation) -> tuple[FloatArray, np.ndarray, np.ndarray]:
        r, k = obs.requests.shape
        errors = self._beta(obs.errors, obs.requests)
        if self.scenario.pattern is TestingPattern.CANARY:
            score = -errors
            latency = self.scenario.latency_objective
            if latency is not None and latency.upper_limit is not None and obs.buckets.shape[-1]:
                score = score - self._beta(*base.exceedance(obs, latency.upper_limit))
        else:
            reward = self._beta(obs.rewards, obs.requests)
            score = np.where(errors <= self.scenario.slo_error_rate, reward, -np.inf)
        leader = np.argmax(score, axis=-1)
        anyone = np.asarray(np.isfinite(score).any(axis=-1))
        p_best = ((leader[..., None] == np.arange(k)) & anyone[..., None]).mean(axis=1)
        total = p_best.sum(axis=1, keepdims=True)
        weights = np.where(total > 0, p_best / np.maximum(total, 1e-12), 1.0 / k)
        best = np.argmax(p_best, axis=1)
        return weights, best, p_best[np.arange(r), best] > 1 - self.scenario.alpha


def build(scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool) -> Thompson:
    return Thompson(scenario, replicates, rng, 256 if quick else 1000)


INFO = MethodInfo(
    "thompson", "Thompson sampling, stop at P(best) > 1 - alpha", EVERY_PATTERN, build
)
