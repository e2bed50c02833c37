"""Kayenta-style canary judgement (spinnaker/kayenta NetflixACAJudge; B4,
docs/statistics.md#baselines).

The canary runs at a fixed share. Every aggregation period (1 minute, or the scenario's
interval if longer) gives one point per version and metric: the error rate, and the
interpolated p99 latency when latency is measured (an empty window counts as 0, Kayenta's
`nanStrategy: replace`). After 50 points (or at the horizon) each metric is judged once
with `MannWhitneyClassifier`: the 98% confidence interval of the Hodges-Lehmann shift
(canary minus baseline), from the normal approximation to U, classifies the metric High
when its lower end exceeds 0.25 x |shift estimate| (identical samples pass). The score is
the share of metrics that are not High; below the pass mark (95) the canary is rolled
back, otherwise promoted.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from scipy import special

from benchmarks.methods import base
from benchmarks.methods.base import CANARY_ONLY, FloatArray, MethodInfo, Step
from benchmarks.scenario import Scenario
from benchmarks.scrape import Observation

PERIOD_S: Final = 60.0
POINTS: Final = 50
CONFIDENCE: Final = 0.98
TOLERANCE: Final = 0.25
PASS_SCORE: Final = 95.0


def classify_high(canary: FloatArray, baseline: FloatArray) -> np.ndarray:
    """Kayenta's High classification for (R, m) canary and (R, n) baseline points."""
    m, n = canary.shape[1], baseline.shape[1]
    diffs = np.sort(
        (canary[:, :, None] - baseline[:, None, :]).reshape(canary.shape[0], -1), axis=1
    )
    mn = m * n
    estimate = np.median(diffs, axis=1)
    z = float(special.ndtri(1 - (1 - CONFIDENCE) / 2))
    k = math.floor(mn / 2 - z * math.sqrt(mn * (m + n + 1) / 12))
    k = min(max(k, 0), mn - 1)
    lower = diffs[:, k]
    identical = np.all(canary == baseline, axis=1) if m == n else False
    return np.asarray((lower > TOLERANCE * np.abs(estimate)) & ~identical)


class Kayenta:
    def __init__(self, scenario: Scenario, replicates: int) -> None:
        self.scenario = scenario
        self.weights = base.fixed_split(scenario, replicates)
        self.every = max(1, math.ceil(PERIOD_S / scenario.interval_s - 1e-9))
        self.latency = scenario.latency_telemetry
        self.points: list[list[FloatArray]] = [[] for _ in range(2 if self.latency else 1)]
        self.prev: tuple[FloatArray, FloatArray, FloatArray] | None = None

    def initial_weights(self) -> FloatArray:
        return self.weights

    def step(self, obs: Observation) -> Step:
        r = obs.requests.shape[0]
        never = np.zeros(r, dtype=np.bool_)
        if obs.iteration % self.every == 0:
            prev = self.prev or (
                np.zeros_like(obs.requests),
                np.zeros_like(obs.errors),
                np.zeros_like(obs.buckets),
            )
            n, k = obs.requests - prev[0], obs.errors - prev[1]
            self.points[0].append(base.share(k, n))
            if self.latency:
                p99 = base.histogram_quantile(0.99, obs.bounds, obs.buckets - prev[2])
                self.points[1].append(np.nan_to_num(p99, nan=0.0))
            self.prev = (obs.requests.copy(), obs.errors.copy(), obs.buckets.copy())
        judge = len(self.points[0]) >= POINTS or obs.last
        if not judge or not self.points[0]:
            return base.decide(self.weights, never, never, np.ones(r, dtype=np.int64))
        passing = np.zeros(r)
        for series in self.points:
            data = np.stack(series, axis=-1)  # (R, K, points)
            passing += ~classify_high(data[:, 1], data[:, 0])
        promote = 100.0 * passing / len(self.points) >= PASS_SCORE
        now = np.ones(r, dtype=np.bool_)
        return base.decide(self.weights, now & promote, now & ~promote, np.ones(r, dtype=np.int64))


def build(scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool) -> Kayenta:
    return Kayenta(scenario, replicates)


INFO = MethodInfo("kayenta", "Kayenta-style Mann-Whitney", CANARY_ONLY, build)
