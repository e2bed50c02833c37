"""Arbiter's own method: `analytics.batch`, the batched form of what `assess` runs.

Each iteration the replicates' counts since the start go through the same statistics as
`analytics.analysis.analyze` (anytime-valid confidence sequences, the pairwise stopping
rule, top-two weights within the caps; the last two are the very functions `analyze`
calls) with the Experiment spec the scenario parses. Arbiter's own
"iterations-exhausted" fallback (keep the baseline) is reported as inconclusive, since it
is not a verdict the evidence reached.

A `maxRatio` condition is judged by the conditional test on each window's own counts, as
`assess` judges it from the running statistic in the status: this method keeps that
statistic, per replicate, and folds every window into it.

Nothing in it is random: the Generator and the number of draws are passed for the
interface's sake.
"""

from __future__ import annotations

import numpy as np

from analytics import allocation, batch, split
from benchmarks.methods import base
from benchmarks.methods.base import CONTINUE, EVERY_PATTERN, FloatArray, MethodInfo, Step
from benchmarks.scenario import ERROR_METRIC, LATENCY_METRIC, REWARD_METRIC, Scenario
from benchmarks.scrape import Observation


def measurements(metrics: set[str], obs: Observation) -> dict[str, batch.Measurement]:
    """What Arbiter's iterate stage would hand `assess` for these counts."""
    out: dict[str, batch.Measurement] = {}
    if ERROR_METRIC in metrics:
        out[ERROR_METRIC] = batch.Counts(obs.errors, obs.requests)
    if LATENCY_METRIC in metrics:
        out[LATENCY_METRIC] = batch.Histogram(obs.bounds, obs.buckets)
    if REWARD_METRIC in metrics:
        out[REWARD_METRIC] = batch.Counts(obs.rewards, obs.requests)
    return out


class Arbiter:
    def __init__(
        self, scenario: Scenario, replicates: int, rng: np.random.Generator, n_samples: int
    ) -> None:
        self.spec = scenario.spec
        self.rng = rng
        self.n_samples = n_samples
        start = split.initial_weights(self.spec) or {}
        row = np.array([float(start[n]) for n in scenario.names])
        self.current = np.tile(row, (replicates, 1))
        self.metrics = {o.metric for o in self.spec.criteria.objectives} | {
            r.metric for r in self.spec.criteria.rewards
        }
        self.ratio: dict[str, batch.RatioSums] = {}
        for o in self.spec.criteria.objectives:
            if o.max_ratio is not None and o.metric not in self.ratio:
                shape = (replicates, len(scenario.names))
                self.ratio[o.metric] = batch.RatioSums.start(o.max_ratio, shape)
        self.latency_limit = next(
            (o.upper_limit for o in self.spec.criteria.objectives if o.metric == LATENCY_METRIC),
            None,
        )

    def initial_weights(self) -> FloatArray:
        return np.asarray(self.current / 100.0)

    def _fold(self, obs: Observation) -> None:
        """Add this window's counts to every replicate's conditional ratio tests."""
        for metric, sums in self.ratio.items():
            if metric == LATENCY_METRIC:
                assert self.latency_limit is not None
                events, trials = base.exceedance_of(
                    obs.bounds, obs.window_buckets, self.latency_limit
                )
            else:
                events, trials = obs.window_errors, obs.window_requests
            sums.fold(events, trials)

    def step(self, obs: Observation) -> Step:
        self._fold(obs)
        # Only replicates still running are analysed; the rest keep their last split.
        rows = np.flatnonzero(obs.active)
        action = np.zeros(obs.active.size, dtype=np.int64)
        version = np.zeros(obs.active.size, dtype=np.int64)
        if rows.size:
            action[rows], version[rows], self.current[rows] = self._live(
                obs.take(rows), self.current[rows], rows
            )
        return Step(np.asarray(self.current / 100.0), action, version)

    def _live(
        self, obs: Observation, current: FloatArray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, FloatArray]:
        ratio = {metric: sums.take(rows) for metric, sums in self.ratio.items()}
        result = batch.analyze(
            self.spec,
            measurements(self.metrics, obs),
            obs.iteration - 1,
            self.rng,
            current,
            self.n_samples,
            ratio,
        )
        assert result.weights is not None  # no Conformance scenarios
        exhausted = result.rule == batch.RULES.index("iterations-exhausted")
        action = np.where(exhausted, CONTINUE, result.action)
        moving = result.action == CONTINUE
        current = np.where(moving[:, None], result.weights, current)
        return action, np.maximum(result.version, 0), current


def build(scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool) -> Arbiter:
    return Arbiter(scenario, replicates, rng, 256 if quick else allocation.DEFAULT_SAMPLES)


INFO = MethodInfo("arbiter", "Arbiter (anytime-valid CS)", EVERY_PATTERN, build)
