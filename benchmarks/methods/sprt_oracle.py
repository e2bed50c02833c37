"""The oracle: Wald's SPRT that knows the true effect (B8, docs/statistics.md#baselines).

It watches the one count stream where the truth differs (errors, or requests above the
latency bucket bound when only latency differs), conditions on the total, and treats each
event as coming from the canary with probability theta = w r / (w r + 1 - w), where w is
the fixed canary share and r the canary/baseline rate ratio. It tests the true ratio
against the nearest wrong one: r = 1 against the truth for a bad canary (accepting the
truth rolls back), r = the margin against the truth for a good one (accepting the truth
promotes), with Wald's bounds log((1 - beta) / alpha) and log(beta / (1 - alpha)),
alpha = beta = the scenario's alpha. By Wald and Wolfowitz no test with those error rates
needs fewer events on average: its time is the denominator of the time ratios.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.methods import base
from benchmarks.methods.base import CANARY_ONLY, FloatArray, MethodInfo, Step
from benchmarks.scenario import Scenario
from benchmarks.scrape import Observation
from benchmarks.simulator import bucket_probabilities


def stream(scenario: Scenario) -> tuple[str, float]:
    """Which stream the oracle watches ("errors" or "latency") and the true rate ratio."""
    b, c = scenario.versions
    latency = scenario.latency_objective
    if math.isclose(b.error_rate, c.error_rate) and latency is not None and latency.upper_limit:
        bounds = (latency.upper_limit, math.inf)
        above_b = bucket_probabilities(b.latency_median_s, b.latency_sigma, bounds)[1]
        above_c = bucket_probabilities(c.latency_median_s, c.latency_sigma, bounds)[1]
        if not math.isclose(above_b, above_c):
            return "latency", above_c / above_b
    return "errors", c.error_rate / b.error_rate if b.error_rate > 0 else 1.0


def theta(w: float, ratio: float) -> float:
    return w * ratio / (w * ratio + 1 - w)


class SprtOracle:
    def __init__(self, scenario: Scenario, replicates: int) -> None:
        self.scenario = scenario
        self.weights = base.fixed_split(scenario, replicates)
        self.kind, truth = stream(scenario)
        self.bad = scenario.expected.action == "rollback"
        wrong = 1.0 if self.bad else scenario.margin_ratio
        w = scenario.initial_candidate_weight / 100.0
        t1, t0 = theta(w, truth), theta(w, wrong)
        self.step_canary = math.log(t1 / t0)
        self.step_baseline = math.log((1 - t1) / (1 - t0))
        a = scenario.alpha
        self.upper, self.lower = math.log((1 - a) / a), math.log(a / (1 - a))

    def initial_weights(self) -> FloatArray:
        return self.weights

    def step(self, obs: Observation) -> Step:
        if self.kind == "latency":
            latency = self.scenario.latency_objective
            assert latency is not None and latency.upper_limit is not None
            events, _ = base.exceedance(obs, latency.upper_limit)
        else:
            events = obs.errors
        llr = events[:, 1] * self.step_canary + events[:, 0] * self.step_baseline
        truth = llr >= self.upper
        wrong = llr <= self.lower
        ones = np.ones(llr.shape, dtype=np.int64)
        if self.bad:
            return base.decide(self.weights, wrong & ~truth, truth, ones)
        return base.decide(self.weights, truth, wrong & ~truth, ones)


def build(scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool) -> SprtOracle:
    return SprtOracle(scenario, replicates)


INFO = MethodInfo("sprt-oracle", "SPRT oracle (knows the effect)", CANARY_ONLY, build)
