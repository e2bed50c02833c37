"""Arbiter's own method: `analytics.batch`, the batched form of what `assess` runs.

Each iteration the replicates' counts since the start go through the same statistics as
`analytics.analysis.analyze` (anytime-valid confidence sequences, the pairwise stopping
rule, top-two weights within the caps; the last two are the very functions `analyze`
calls) with the Experiment spec the scenario parses. Arbiter's own
"iterations-exhausted" fallback (keep the baseline) is reported as inconclusive, since it
is not a verdict the evidence reached.

A `maxRatio` condition is judged by the conditional test on each window's own counts, as
`assess` judges it from the running statistic in the status, and so is the A/B/n reward
(its pairwise tests): this method keeps those statistics, per replicate, and folds every
window into them.

Nothing in it is random: the Generator and the number of draws are passed for the
interface's sake.
"""

from __future__ import annotations

import numpy as np

from analytics import allocation, batch, split
from analytics.parse import MAX_PAIR_VERSIONS
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


class Windowed:
    """The running conditional tests `assess` keeps in the status, per replicate: each
    maxRatio metric's (`status.ratioTests`) and the first reward's pairwise tests
    (`status.rewardTests`, up to MAX_PAIR_VERSIONS versions), every window folded in."""

    def __init__(self, scenario: Scenario, replicates: int) -> None:
        spec = scenario.spec
        shape = (replicates, len(scenario.names))
        self.ratio: dict[str, batch.RatioSums] = {}
        for o in spec.criteria.objectives:
            if o.max_ratio is not None and o.metric not in self.ratio:
                self.ratio[o.metric] = batch.RatioSums.start(o.max_ratio, shape)
        self.latency_limit = next(
            (o.upper_limit for o in spec.criteria.objectives if o.metric == LATENCY_METRIC),
            None,
        )
        rewards = spec.criteria.rewards
        paired = rewards and rewards[0].metric == REWARD_METRIC
        self.pairs = (
            batch.PairSums.start(shape)
            if paired and len(scenario.names) <= MAX_PAIR_VERSIONS
            else None
        )

    def fold(self, obs: Observation) -> None:
        """Add this window's counts to every replicate's tests."""
        for metric, sums in self.ratio.items():
            if metric == LATENCY_METRIC:
                assert self.latency_limit is not None
                events, trials = base.exceedance_of(
                    obs.bounds, obs.window_buckets, self.latency_limit
                )
            else:
                events, trials = obs.window_errors, obs.window_requests
            sums.fold(events, trials)
        if self.pairs is not None:
            self.pairs.fold(obs.window_rewards, obs.window_requests)

    def take(self, rows: np.ndarray) -> tuple[dict[str, batch.RatioSums], batch.PairSums | None]:
        ratio = {metric: sums.take(rows) for metric, sums in self.ratio.items()}
        return ratio, None if self.pairs is None else self.pairs.take(rows)


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
        self.windowed = Windowed(scenario, replicates)

    def initial_weights(self) -> FloatArray:
        return np.asarray(self.current / 100.0)

    def step(self, obs: Observation) -> Step:
        self.windowed.fold(obs)
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
        ratio, pairs = self.windowed.take(rows)
        result = batch.analyze(
            self.spec,
            measurements(self.metrics, obs),
            obs.iteration - 1,
            self.rng,
            current,
            self.n_samples,
            ratio,
            pairs,
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
