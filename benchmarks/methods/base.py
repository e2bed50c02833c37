"""The contract between the benchmark runner and a method, and the statistics they share.

A method is built for one scenario and R replicates. The runner asks it for the first
traffic split, then, after every interval, hands it an `Observation` (counts since the
start, as Prometheus reports them) and gets back a `Step`: the next split, and per
replicate whether to continue, promote a version or roll back. Once a replicate has
decided, the runner stops applying that method's weights to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
from scipy import special

from analytics.model import TestingPattern
from benchmarks.scenario import Scenario
from benchmarks.scrape import Observation

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

CONTINUE: Final = 0
PROMOTE: Final = 1
ROLLBACK: Final = 2

CANARY_ONLY: Final = frozenset({TestingPattern.CANARY})
REWARD_ONLY: Final = frozenset({TestingPattern.AB, TestingPattern.ABN})
EVERY_PATTERN: Final = CANARY_ONLY | REWARD_ONLY


@dataclass(frozen=True, eq=False)
class Step:
    """The split for the next interval (R, K; rows sum to 1) and each replicate's decision."""

    weights: FloatArray
    action: IntArray
    version: IntArray


class Method(Protocol):
    def initial_weights(self) -> FloatArray: ...

    def step(self, obs: Observation) -> Step: ...


Builder = Callable[[Scenario, int, np.random.Generator, bool], Method]


@dataclass(frozen=True)
class MethodInfo:
    """A method the benchmark can run: `build(scenario, replicates, rng, quick)`."""

    name: str
    label: str
    patterns: frozenset[TestingPattern]
    build: Builder
    applies: Callable[[Scenario], bool] | None = None
    """Which scenarios of its patterns it is run on (None: all of them)."""


def continuing(weights: FloatArray) -> Step:
    r = weights.shape[0]
    return Step(weights, np.zeros(r, dtype=np.int64), np.zeros(r, dtype=np.int64))


def decide(weights: FloatArray, promote: BoolArray, rollback: BoolArray, version: IntArray) -> Step:
    """A Step where `promote` replicates promote `version` and `rollback` ones roll back."""
    action = np.where(rollback, ROLLBACK, np.where(promote, PROMOTE, CONTINUE))
    return Step(weights, action.astype(np.int64), np.where(promote, version, 0).astype(np.int64))


def settle(weights: FloatArray, best: IntArray, now: BoolArray) -> Step:
    """Promote `best` where `now`, rolling back where the best is the baseline."""
    return decide(weights, now & (best > 0), now & (best <= 0), best)


def fixed_split(scenario: Scenario, replicates: int) -> FloatArray:
    """A canary at its initial weight, or an even A/B/n split, for every replicate."""
    k = len(scenario.versions)
    if scenario.pattern is TestingPattern.CANARY:
        w = scenario.initial_candidate_weight / 100.0
        row = np.array([1.0 - w, w])
    else:
        row = np.full(k, 1.0 / k)
    return np.tile(row, (replicates, 1))


def share(events: FloatArray, trials: FloatArray) -> FloatArray:
    """events / trials, 0 where there are no trials."""
    return np.asarray(np.where(trials > 0, events / np.maximum(trials, 1e-300), 0.0))


def z_pooled(k1: FloatArray, n1: FloatArray, k2: FloatArray, n2: FloatArray) -> FloatArray:
    """Two-proportion z statistic, pooled variance: positive when sample 1 is higher."""
    pooled = share(k1 + k2, n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / np.maximum(n1, 1) + 1 / np.maximum(n2, 1)))
    ok = (n1 > 0) & (n2 > 0) & (se > 0)
    return np.asarray(np.where(ok, (share(k1, n1) - share(k2, n2)) / np.where(ok, se, 1), 0.0))


def z_unpooled(
    k1: FloatArray, n1: FloatArray, k2: FloatArray, n2: FloatArray, ratio: float = 1.0
) -> FloatArray:
    """Wald z for p2 * ratio - p1 (unpooled): positive when p1 is below ratio times p2."""
    p1, p2 = share(k1, n1), share(k2, n2)
    var = p1 * (1 - p1) / np.maximum(n1, 1) + ratio**2 * p2 * (1 - p2) / np.maximum(n2, 1)
    ok = (n1 > 0) & (n2 > 0) & (var > 0)
    return np.asarray(np.where(ok, (ratio * p2 - p1) / np.sqrt(np.where(ok, var, 1)), 0.0))


MIN_EVENTS: Final = 5


def normal_ok(k: FloatArray, n: FloatArray) -> BoolArray:
    """The textbook condition for the normal approximation: >= 5 events and non-events."""
    return np.asarray((k >= MIN_EVENTS) & (n - k >= MIN_EVENTS))


def z_critical(alpha: float) -> float:
    """The two-sided critical value z_{1 - alpha/2}."""
    return float(special.ndtri(1 - alpha / 2))


def fleiss_n(
    p_control: float, p_treatment: float, allocation: float, alpha: float, power: float
) -> float:
    """Treatment-arm size for a two-sided pooled two-proportion z test (Fleiss et al.).

    `allocation` is control/treatment sample-size ratio. Returns n for the treatment arm.
    """
    k = allocation
    p_bar = (k * p_control + p_treatment) / (k + 1)
    za, zb = z_critical(alpha), float(special.ndtri(power))
    num = za * math.sqrt(p_bar * (1 - p_bar) * (1 + 1 / k)) + zb * math.sqrt(
        p_treatment * (1 - p_treatment) + p_control * (1 - p_control) / k
    )
    return (num / (p_treatment - p_control)) ** 2


def histogram_quantile(q: float, bounds: tuple[float, ...], cumulative: FloatArray) -> FloatArray:
    """Prometheus' `histogram_quantile` over the last axis (NaN where there is no data).

    Linear interpolation inside the bucket holding the rank; a rank in the +Inf bucket
    reports the highest finite bound, as Prometheus does.
    """
    c = np.asarray(cumulative, dtype=np.float64)
    total = c[..., -1]
    rank = q * total
    edges = np.asarray(bounds, dtype=np.float64)
    index = np.argmax(c >= rank[..., None], axis=-1)
    upper = edges[index]
    lower = np.where(index > 0, edges[np.maximum(index - 1, 0)], 0.0)
    below = np.where(
        index > 0, np.take_along_axis(c, np.maximum(index - 1, 0)[..., None], -1)[..., 0], 0.0
    )
    at = np.take_along_axis(c, index[..., None], -1)[..., 0]
    width = at - below
    frac = np.where(width > 0, (rank - below) / np.where(width > 0, width, 1), 1.0)
    value = np.where(np.isinf(upper), lower, lower + (upper - lower) * frac)
    return np.asarray(np.where(total > 0, value, np.nan))


def exceedance(obs: Observation, limit: float) -> tuple[FloatArray, FloatArray]:
    """Requests above the finite bucket bound nearest `limit`, and all requests."""
    return exceedance_of(obs.bounds, obs.buckets, limit)


def exceedance_of(
    bounds: tuple[float, ...], buckets: FloatArray, limit: float
) -> tuple[FloatArray, FloatArray]:
    """`exceedance` on any cumulative bucket counts (..., B), e.g. one window's."""
    finite = [i for i, b in enumerate(bounds) if math.isfinite(b)]
    index = min(finite, key=lambda i: (abs(bounds[i] - limit), i))
    total = buckets[..., -1]
    return total - buckets[..., index], total


def onehot(index: IntArray, k: int) -> FloatArray:
    return np.asarray(np.arange(k) == np.asarray(index)[..., None], dtype=np.float64)


def point_feasible(scenario: Scenario, obs: Observation, relative: bool = True) -> BoolArray:
    """Whether each version's point estimates meet the scenario's objectives: (R, K).

    Absolute limits on the error rate and on the share of requests above the latency
    bucket bound; with `relative`, also the ratio / increase against the baseline's point
    estimate. No requests yet counts as meeting them (there is nothing to compare).
    """
    ok = np.ones(obs.requests.shape, dtype=np.bool_)
    for o in scenario.objectives:
        if o.metric == "latency":
            if o.upper_limit is None or not obs.buckets.shape[-1]:
                continue
            k, n = exceedance(obs, o.upper_limit)
            value = share(k, n)
            if o.quantile is not None:
                ok &= value <= 1.0 - o.quantile
        else:
            value = share(obs.errors, obs.requests)
            if o.upper_limit is not None:
                ok &= value <= o.upper_limit
            if o.lower_limit is not None:
                ok &= value >= o.lower_limit
        if relative and o.max_ratio is not None:
            ok[:, 1:] &= value[:, 1:] <= o.max_ratio * value[:, :1]
        if relative and o.max_increase is not None:
            ok[:, 1:] &= value[:, 1:] <= value[:, :1] + o.max_increase
    return ok


def capped(
    target: FloatArray, current: FloatArray, max_weight: float, increment: float
) -> FloatArray:
    """Candidates (index 1..) rise by at most `increment` and hold at most `max_weight` in
    total (both in percent); the baseline takes the rest. Shares in, shares out."""
    candidates = np.minimum(target[:, 1:], current[:, 1:] + increment / 100.0)
    total = candidates.sum(axis=1, keepdims=True)
    limit = max_weight / 100.0
    candidates = candidates * np.where(total > limit, limit / np.maximum(total, 1e-12), 1.0)
    return np.concatenate([1.0 - candidates.sum(axis=1, keepdims=True), candidates], axis=1)
