"""The best allocation under Arbiter's stopping rule: track the lower bound's w*(mu), knowing mu.

Garivier and Kaufmann (COLT 2016) show that a rule stopping at the right time needs the
allocation w*(mu) of their lower bound (`lower_bound.lower_bound`): it balances every
pairwise statistic against the best version, so all of them cross the threshold together.
This method knows the true conversion rates, so it needs no exploration and no estimate:
from the first interval it steers the counts toward t w*(mu) (D-tracking: each version's
share of the next interval is what lifts its count to its w* share of the total after it),
within the scenario's caps, as Arbiter's split is. It stops by exactly Arbiter's rule:
`analytics.batch.analyze`, the pipeline `assess` runs (the objectives' confidence
sequences, the windowed pairwise tests of `analytics.winner` against its threshold, the
feasibility gate); only the split differs. So its samples to a decision are a floor for
any allocation, adaptive or not, under that stopping rule, and what is left between it and
the lower bound is the stopping rule's threshold, not the allocation (`threshold_floor`
does that arithmetic).

A version that breaks the error SLO is not in w* (the lower bound counts only the feasible
versions). It must still be ruled out before anyone can win, so it keeps the largest w*
share until its error objective is conclusively violated, then nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from analytics import allocation, batch, conditional, sequential, split, winner
from analytics.assessment import SATISFIED, VIOLATED
from benchmarks.methods import base
from benchmarks.methods.arbiter import Windowed, measurements
from benchmarks.methods.base import (
    CONTINUE,
    REWARD_ONLY,
    FloatArray,
    IntArray,
    MethodInfo,
    Step,
)
from benchmarks.methods.lower_bound import kl, lower_bound
from benchmarks.scenario import Scenario
from benchmarks.scrape import Observation


def optimal_shares(scenario: Scenario) -> tuple[FloatArray, FloatArray]:
    """w*(mu) over every version (0 for the infeasible ones) and the infeasible versions'
    holding share (the largest w*, 0 for the feasible ones), both (K,). Without a unique
    best the feasible versions share evenly."""
    feasible = np.array(scenario.feasible())
    versions = zip(scenario.versions, feasible, strict=True)
    mu = tuple(v.reward_rate or 0.0 for v, ok in versions if ok)
    w = np.zeros(len(scenario.versions))
    try:
        w[feasible] = lower_bound(mu, scenario.alpha).allocation
    except ValueError:
        # No unique best (an A/A test): the bound has no allocation; the tests stay even.
        w[feasible] = 1.0 / max(int(feasible.sum()), 1)
    hold = np.where(feasible, 0.0, float(w.max()))
    return w, hold


def glr(events: FloatArray, trials: FloatArray, leader: IntArray) -> FloatArray:
    """The Bernoulli GLR that each replicate's `leader` beats each version, (R, K):
    n_l kl(p_l, m) + n_a kl(p_a, m), m the pooled rate, where p_l > p_a; 0 elsewhere."""
    p = np.where(trials > 0, events / np.maximum(trials, 1.0), 0.0)
    rows = np.arange(p.shape[0])
    pl, nl = p[rows, leader][:, None], trials[rows, leader][:, None]
    m = (pl * nl + p * trials) / np.maximum(nl + trials, 1.0)
    value = nl * _kl(pl, m) + trials * _kl(p, m)
    return np.asarray(np.where(pl > p, value, 0.0), dtype=np.float64)


def _kl(p: FloatArray, q: FloatArray) -> FloatArray:
    eps = 1e-15
    p, q = np.clip(p, eps, 1 - eps), np.clip(q, eps, 1 - eps)
    return np.asarray(special.xlogy(p, p / q) + special.xlogy(1 - p, (1 - p) / (1 - q)))


def heuristic_threshold(t: FloatArray, delta: float) -> FloatArray:
    """log((1 + log t) / delta), the GLR threshold of Garivier and Kaufmann's experiments."""
    return np.asarray(np.log((1.0 + np.log(np.maximum(t, 1.0))) / delta), dtype=np.float64)


class OracleTracking:
    """`heuristic` swaps Arbiter's stopping rule for the plain GLR against
    `heuristic_threshold` (the feasibility gate stays Arbiter's): the most optimistic
    stopping rule in the literature at the best allocation, to test whether any rule of
    that kind could come within 2x of the lower bound."""

    def __init__(
        self,
        scenario: Scenario,
        replicates: int,
        rng: np.random.Generator,
        heuristic: bool = False,
    ) -> None:
        self.heuristic = heuristic
        self.scenario = scenario
        self.spec = scenario.spec
        self.rng = rng
        self.w_star, self.hold = optimal_shares(scenario)
        start = split.initial_weights(self.spec) or {}
        row = np.array([float(start[n]) for n in scenario.names])
        self.current = np.tile(row, (replicates, 1))
        self.ruled_out = np.zeros(self.current.shape, dtype=np.bool_)
        self.metrics = {o.metric for o in self.spec.criteria.objectives} | {
            r.metric for r in self.spec.criteria.rewards
        }
        self.per_interval = scenario.rate_rps * scenario.interval_s
        self.windowed = Windowed(scenario, replicates)

    def initial_weights(self) -> FloatArray:
        return np.asarray(self.current / 100.0)

    def step(self, obs: Observation) -> Step:
        self.windowed.fold(obs)
        rows = np.flatnonzero(obs.active)
        action = np.zeros(obs.active.size, dtype=np.int64)
        version = np.zeros(obs.active.size, dtype=np.int64)
        if rows.size:
            live = obs.take(rows)
            ratio, pairs = self.windowed.take(rows)
            result = batch.analyze(
                self.spec,
                measurements(self.metrics, live),
                live.iteration - 1,
                self.rng,
                self.current[rows],
                ratio_sums=ratio,
                pair_sums=pairs,
            )
            if self.heuristic:
                action[rows], version[rows] = self._glr_stop(live, result.verdict)
            else:
                exhausted = result.rule == batch.RULES.index("iterations-exhausted")
                action[rows] = np.where(exhausted, CONTINUE, result.action)
                version[rows] = np.maximum(result.version, 0)
            self.ruled_out[rows] |= np.any(result.verdict == VIOLATED, axis=-1)
            out = self.ruled_out[rows]
            self.current[rows] = self._track(live.requests, out, self.current[rows])
        return Step(np.asarray(self.current / 100.0), action, version)

    def _glr_stop(self, obs: Observation, verdict: IntArray) -> tuple[IntArray, IntArray]:
        """Promote the best satisfied version once its GLR against every version still in
        the running exceeds the heuristic threshold at t, the requests served so far."""
        satisfied = np.all(verdict == SATISFIED, axis=-1) & (obs.requests > 0)
        running = ~np.any(verdict == VIOLATED, axis=-1)
        rate = np.where(obs.requests > 0, obs.rewards / np.maximum(obs.requests, 1.0), -1.0)
        leader = np.argmax(np.where(satisfied, rate, -np.inf), axis=-1)
        g = glr(obs.rewards, obs.requests, leader)
        rival = running & (np.arange(rate.shape[-1]) != leader[:, None])
        least = np.min(np.where(rival, g, np.inf), axis=-1)
        cut = heuristic_threshold(obs.requests.sum(axis=-1), self.scenario.alpha)
        stop = satisfied.any(axis=-1) & (least > cut)
        step = base.settle(np.zeros(obs.requests.shape), leader, stop)
        return step.action, step.version

    def _track(self, served: FloatArray, out: np.ndarray, current: FloatArray) -> FloatArray:
        """The next split in percent: D-tracking of w* (and the holding share of every
        infeasible version not yet ruled out), within the caps."""
        target = self.w_star + np.where(out, 0.0, self.hold)
        target = target / target.sum(axis=-1, keepdims=True)
        after = served.sum(axis=-1, keepdims=True) + self.per_interval
        want = np.maximum(after * target - served, 0.0)
        total = want.sum(axis=-1, keepdims=True)
        shares = np.where(total > 0, want / np.where(total > 0, total, 1.0), target)
        w = self.spec.strategy.weights
        capped = allocation.apply_caps(
            100.0 * shares, current, w.max_candidate_weight, w.max_candidate_weight_increment
        )
        return np.asarray(allocation.to_percentages(capped), dtype=np.float64)


def build(
    scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool
) -> OracleTracking:
    return OracleTracking(scenario, replicates, rng)


INFO = MethodInfo(
    "oracle-tracking",
    "Oracle tracking w*(mu), stopped by Arbiter's anytime-valid rule",
    REWARD_ONLY,
    build,
)


def build_heuristic(
    scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool
) -> OracleTracking:
    return OracleTracking(scenario, replicates, rng, heuristic=True)


HEURISTIC_INFO = MethodInfo(
    "oracle-tracking-glr",
    "Oracle tracking w*(mu), GLR >= log((1 + log t)/alpha) (no guarantee)",
    REWARD_ONLY,
    build_heuristic,
)


@dataclass(frozen=True)
class ThresholdFloor:
    """Where the samples go under Arbiter's stopping rule, at expected counts (no noise).

    At counts n_a = T w*_a and conversions mu_a n_a, every pairwise GLR against the best
    equals T / T*(mu). Arbiter's statistic, the windowed pairwise test, is a mixture over a
    grid of rate ratios of a conditional likelihood ratio: less than that GLR by the
    mixture's cost (at most log 9), the grid's mismatch and what conditioning on each
    window's total gives up (together `penalty`), and it must exceed `cut` =
    log(K / alpha): so it stops at T with T / T* = cut + penalty(T), where the lower bound
    has T / T* = kl(delta, 1 - delta). `heuristic` is T for the plain GLR against
    log((1 + log T) / delta), the threshold Garivier and Kaufmann ran their experiments
    with (not proven anytime-valid). `regret` is the least regret (lost conversions) of
    any allocation that brings each rival's statistic against the best to `cut`, whatever
    the best version is given (up to the horizon's requests): the cost of deciding at all
    under this rule, to set beside a rule that never stops.
    """

    samples: float  # T, the stopping time at w*
    lower_bound: float  # T* kl(delta, 1 - delta)
    kl_delta: float  # kl(delta, 1 - delta)
    cut: float  # log(K / alpha)
    penalty: float  # the mixture's regret at T: T / T* - cut
    heuristic: float  # T at w* for GLR >= log((1 + log T) / delta)
    regret: float

    @property
    def ratio(self) -> float:
        return self.samples / self.lower_bound

    @property
    def heuristic_ratio(self) -> float:
        return self.heuristic / self.lower_bound

    def describe(self) -> str:
        return (
            f"at w* and expected counts the rule stops when T/T* = log(K/alpha) + the"
            f" test's overhead = {self.cut:.2f} + {self.penalty:.2f}, where the bound has"
            f" kl(delta, 1 - delta) = {self.kl_delta:.2f}: {self.ratio:.2f}x; even"
            f" GLR >= log((1 + log T)/delta) needs {self.heuristic_ratio:.2f}x"
        )


def _evidence(mu: FloatArray, n: FloatArray, best: int, rival: int) -> float:
    """The windowed pairwise test's log e-value that `best` beats `rival` at expected
    counts, the dispersion factor at 1. With the split held fixed every window's log
    likelihood ratio is the same linear function of its counts, so the whole run is one
    window of the totals."""
    if n[best] <= 0 or n[rival] <= 0:
        return -math.inf
    v, _ = sequential.ratio_log_lr(
        mu[best] * n[best],
        n[best],
        mu[rival] * n[rival],
        n[rival],
        1.0,
        conditional.REWARD_OFFSETS,
    )
    return float(sequential.ratio_log_evidence(v))


def _root(f: Callable[[float], float], start: float) -> float:
    """The x > 0 where the increasing f crosses 0, bracketed by doubling from `start`."""
    hi = max(start, 1.0)
    while f(hi) <= 0:
        hi *= 2.0
    return float(optimize.brentq(f, hi / 2.0 if f(hi / 2.0) < 0 else 1e-9, hi))


def threshold_floor(scenario: Scenario) -> ThresholdFloor:
    """`ThresholdFloor` for the scenario's feasible versions (the ones the bound counts)."""
    feasible = scenario.feasible()
    mu = np.array(
        [v.reward_rate or 0.0 for v, ok in zip(scenario.versions, feasible, strict=True) if ok]
    )
    bound = lower_bound(tuple(mu.tolist()), scenario.alpha)
    w = np.array(bound.allocation)
    cut = winner.threshold(len(scenario.versions), scenario.alpha)
    best = int(np.argmax(mu))
    d = scenario.alpha

    def statistic(t: float) -> float:
        return min(_evidence(mu, t * w, best, a) for a in range(len(mu)) if a != best)

    t = _root(lambda x: statistic(x) - cut, bound.complexity * cut)
    heuristic = _root(
        lambda x: x / bound.complexity - math.log((1 + math.log(x)) / d), bound.complexity
    )
    horizon = scenario.rate_rps * scenario.horizon_s

    def least(n_best: float, a: int) -> float:
        """The fewest requests to `a` that bring S_best,a to the cut, with n_best to the best."""

        def against(n: float) -> float:
            counts = np.zeros(len(mu))
            counts[best], counts[a] = n_best, n
            return _evidence(mu, counts, best, a) - cut

        return _root(against, 1000.0) if against(horizon) > 0 else math.inf

    # The best version's count sets how much each of the rival's requests tells: search it
    # on a log grid up to the horizon.
    regret = min(
        sum((mu[best] - mu[a]) * least(float(n_best), a) for a in range(len(mu)) if a != best)
        for n_best in np.geomspace(1000.0, horizon, 48)
    )
    return ThresholdFloor(
        t, bound.samples, kl(d, 1 - d), cut, t / bound.complexity - cut, heuristic, regret
    )
