"""Thompson sampling stopped by Arbiter's own anytime-valid rule (the A/B/n regret yardstick).

Traffic is B7's probability matching (`thompson.Thompson`, the same posterior draws), but
the experiment stops only when `analytics.batch.analyze`, the very decision pipeline Arbiter
runs, promotes or rolls back: the objectives' confidence sequences and the pairwise
stopping rule of `analytics.winner`. Plain B7 stops at P(best) > 1 - alpha, a threshold with
no guarantee under peeking, so its regret is not a fair yardstick for a method that must
keep its error rate; this one pays for the same guarantee, and differs from Arbiter only in
how it splits traffic.
"""

from __future__ import annotations

import numpy as np

from analytics import batch
from benchmarks.methods import base
from benchmarks.methods.arbiter import Windowed, measurements
from benchmarks.methods.base import CONTINUE, REWARD_ONLY, FloatArray, MethodInfo, Step
from benchmarks.methods.thompson import Thompson
from benchmarks.scenario import Scenario
from benchmarks.scrape import Observation


class ThompsonGLR:
    def __init__(
        self, scenario: Scenario, replicates: int, rng: np.random.Generator, draws: int
    ) -> None:
        self.spec = scenario.spec
        self.traffic = Thompson(scenario, replicates, rng, draws)
        self.metrics = {o.metric for o in self.spec.criteria.objectives} | {
            r.metric for r in self.spec.criteria.rewards
        }
        self.windowed = Windowed(scenario, replicates)

    def initial_weights(self) -> FloatArray:
        return self.traffic.initial_weights()

    def step(self, obs: Observation) -> Step:
        weights = self.traffic.step(obs).weights
        self.windowed.fold(obs)
        rows = np.flatnonzero(obs.active)
        action = np.zeros(obs.active.size, dtype=np.int64)
        version = np.zeros(obs.active.size, dtype=np.int64)
        if rows.size:
            live = obs.take(rows)
            # The weights Arbiter would set are computed and discarded: only the decision
            # is used (the split is Thompson's).
            ratio, pairs = self.windowed.take(rows)
            result = batch.analyze(
                self.spec,
                measurements(self.metrics, live),
                live.iteration - 1,
                np.random.default_rng(0),
                ratio_sums=ratio,
                pair_sums=pairs,
            )
            # As for Arbiter, running out of iterations is not a verdict the evidence reached.
            exhausted = result.rule == batch.RULES.index("iterations-exhausted")
            action[rows] = np.where(exhausted, CONTINUE, result.action)
            version[rows] = np.maximum(result.version, 0)
        return base.decide(weights, action == base.PROMOTE, action == base.ROLLBACK, version)


def build(
    scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool
) -> ThompsonGLR:
    return ThompsonGLR(scenario, replicates, rng, 256 if quick else 1000)


INFO = MethodInfo(
    "thompson-glr",
    "Thompson sampling, stopped by Arbiter's anytime-valid rule",
    REWARD_ONLY,
    build,
)
