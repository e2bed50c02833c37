"""Flagger-style canary analysis (fluxcd/flagger docs; B3, docs/statistics.md#baselines).

Every check interval (Flagger's `interval`, 1 minute, or the scenario's interval if that is
longer) the canary's point values over that window are compared with fixed thresholds:
request success rate >= 1 - the SLO error rate (99% by default) and, when latency is
measured, `histogram_quantile(0.99)` <= the p99 limit. A passing check moves the canary
up by `stepWeight` (10) until `maxWeight` (50); a pass at `maxWeight` promotes. Each
failing check counts; at `threshold` (5) failed checks the canary is rolled back. A window
without canary requests ("no values found") halts the analysis for that check: no step,
no failure. The baseline is never looked at.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from benchmarks.methods import base
from benchmarks.methods.base import CANARY_ONLY, FloatArray, MethodInfo, Step
from benchmarks.scenario import Scenario
from benchmarks.scrape import Observation

CHECK_INTERVAL_S: Final = 60.0
STEP_WEIGHT: Final = 10.0
MAX_WEIGHT: Final = 50.0
THRESHOLD: Final = 5


class Flagger:
    def __init__(self, scenario: Scenario, replicates: int) -> None:
        self.scenario = scenario
        self.every = max(1, math.ceil(CHECK_INTERVAL_S / scenario.interval_s - 1e-9))
        self.weight = np.full(replicates, STEP_WEIGHT)
        self.failed = np.zeros(replicates, dtype=np.int64)
        self.prev_requests = np.zeros(replicates)
        self.prev_errors = np.zeros(replicates)
        self.prev_buckets: FloatArray | None = None

    def _weights(self) -> FloatArray:
        w = self.weight / 100.0
        return np.stack([1.0 - w, w], axis=1)

    def initial_weights(self) -> FloatArray:
        return self._weights()

    def step(self, obs: Observation) -> Step:
        r = self.weight.size
        if obs.iteration % self.every:
            return base.continuing(self._weights())
        n = obs.requests[:, 1] - self.prev_requests
        errors = obs.errors[:, 1] - self.prev_errors
        self.prev_requests, self.prev_errors = obs.requests[:, 1].copy(), obs.errors[:, 1].copy()
        has_data = n > 0
        success = 1.0 - base.share(errors, n)
        passed = success >= 1.0 - self.scenario.slo_error_rate - 1e-12
        if obs.buckets.shape[-1]:
            window = obs.buckets[:, 1] - (
                self.prev_buckets if self.prev_buckets is not None else 0.0
            )
            self.prev_buckets = obs.buckets[:, 1].copy()
            p99 = base.histogram_quantile(0.99, obs.bounds, window)
            passed &= np.nan_to_num(p99, nan=0.0) <= self.scenario.slo_p99_latency_s
        failed_now = has_data & ~passed
        self.failed += failed_now
        rollback = self.failed >= THRESHOLD
        advance = has_data & passed
        promote = advance & (self.weight >= MAX_WEIGHT) & ~rollback
        self.weight = np.where(
            advance & ~promote, np.minimum(self.weight + STEP_WEIGHT, MAX_WEIGHT), self.weight
        )
        return base.decide(self._weights(), promote, rollback, np.ones(r, dtype=np.int64))


def build(scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool) -> Flagger:
    return Flagger(scenario, replicates)


INFO = MethodInfo("flagger", "Flagger-style thresholds", CANARY_ONLY, build)
