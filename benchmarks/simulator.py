"""Seeded, vectorised experiment simulator for the benchmark suite
(docs/statistics.md#the-harness).

Owns the ground truth of a simulated canary / A/B/n experiment and the Prometheus counters it
produces: per iteration (Δt) and per version, for R replicates at once on a leading batch
axis. A method under test chooses traffic weights from what it has seen, calls
`Simulator.step`, and gets a `Snapshot` holding the true cumulative counters, their
per-interval increments, and the readings a scraper would return (stale on a missed scrape,
dropped after a process restart). `increase` rebuilds increments from such readings the way
Prometheus does. Randomness comes only from the Generator passed in.

Per replicate r, version v and interval, given weight w:
  requests   n ~ Poisson(λ·Δt·w·diurnal)
  errors       ~ Binomial(n, p), p overdispersed and raised during a burst (`faults`)
  rewards      Bernoulli: successes ~ Binomial(n, μ), stored as reward_sum = reward_sumsq.
               Gaussian: exact for normal rewards — mean ~ N(μ, sd²/n) and, independently,
               the within-interval sum of squared deviations ~ sd²·χ²(n−1).
  latency      bucket counts ~ Multinomial(n, lognormal bucket probabilities), stored
               cumulative over `le` like `_bucket`; the `_sum` of n lognormal draws is
               approximated by one lognormal with the same mean and variance
               (Fenton–Wilkinson: exact for n = 1, positive, normal-like for large n) and is
               drawn independently of the bucket counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from scipy import stats

from benchmarks.faults import (
    Faults,
    diurnal_factor,
    error_probabilities,
    reset_phases,
    restarts_in,
)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
_Num = TypeVar("_Num", np.int64, np.float64)

# Prometheus client libraries' default histogram buckets, plus the implicit +Inf.
DEFAULT_BUCKETS: tuple[float, ...] = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    math.inf,
)


@dataclass(frozen=True)
class VersionTruth:
    """The true behaviour of one version. `reward_rate` is μ: a probability or a mean."""

    name: str
    error_rate: float
    reward_rate: float | None = None
    reward_kind: Literal["bernoulli", "gaussian"] = "bernoulli"
    reward_sd: float = 1.0
    latency_median_s: float = 0.1
    latency_sigma: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"{self.name}: error_rate must be in [0, 1]")
        bernoulli = self.reward_kind == "bernoulli"
        if bernoulli and self.reward_rate is not None and not 0.0 <= self.reward_rate <= 1.0:
            raise ValueError(f"{self.name}: a Bernoulli reward_rate must be in [0, 1]")
        if not (self.reward_sd >= 0.0 and self.latency_median_s > 0.0 and self.latency_sigma > 0):
            raise ValueError(f"{self.name}: reward_sd, latency median and sigma must be positive")


@dataclass(frozen=True)
class SimConfig:
    """Versions, traffic and telemetry.

    `buckets=()` turns latency telemetry off (no histogram, `latency_sum` stays 0): the
    multinomial bucket draw is most of a step's cost, and error-only scenarios do not need it.
    """

    versions: tuple[VersionTruth, ...]
    rate_rps: float
    interval_s: float
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if not self.versions or self.rate_rps < 0.0 or not self.interval_s > 0.0:
            raise ValueError("need ≥ 1 version, rate_rps ≥ 0 and interval_s > 0")
        edges = np.asarray(self.buckets, dtype=np.float64)
        if edges.size and (edges[-1] != math.inf or np.any(np.diff(edges) <= 0.0)):
            raise ValueError("buckets must increase strictly and end with +Inf")


@dataclass(frozen=True, eq=False)
class Counters:
    """One set of counters, shape (R, K); `buckets` is (R, K, B), cumulative over `le`."""

    requests: IntArray
    errors: IntArray
    reward_sum: FloatArray
    reward_sumsq: FloatArray
    latency_sum: FloatArray
    buckets: IntArray

    def __post_init__(self) -> None:
        # Snapshots are handed to methods under test; a method that wrote into one would
        # silently corrupt the simulator's state, since the next step builds on these arrays.
        for f in fields(self):
            getattr(self, f.name).flags.writeable = False

    def combine(self, other: Counters, fn: Callable[[Any, Any], Any]) -> Counters:
        """Counters whose every field is `fn(self.field, other.field)`."""
        return Counters(
            **{
                f.name: np.asarray(fn(getattr(self, f.name), getattr(other, f.name)))
                for f in fields(self)
            }
        )


@dataclass(frozen=True, eq=False)
class Snapshot:
    """State after `iteration` intervals (`elapsed_s` seconds).

    truth/delta: true cumulative counters and this interval's increments of them.
    observed: the scraper's raw readings; counters restart from 0 after a process restart
        (`restarted`) and hold the previous reading where the scrape failed (`fresh` False).
    weights/error_prob: the weights applied and the error probability actually drawn from.
    """

    iteration: int
    elapsed_s: float
    weights: FloatArray
    error_prob: FloatArray
    truth: Counters
    delta: Counters
    observed: Counters
    fresh: BoolArray
    restarted: BoolArray


def increase(
    readings_prev: npt.NDArray[_Num], readings_now: npt.NDArray[_Num], reset_aware: bool = True
) -> npt.NDArray[_Num]:
    """Increase between two cumulative readings, as Prometheus' `increase()` counts it.

    A drop is taken to be a counter reset, so the new reading is the increase since then.
    Unlike PromQL this does not extrapolate to window edges, and, like PromQL, it undercounts
    when a restarted counter has already climbed back above the old reading.
    """
    delta = readings_now - readings_prev
    if not reset_aware:
        return delta
    return np.where(readings_now < readings_prev, readings_now, delta)


def bucket_probabilities(median_s: float, sigma: float, buckets: tuple[float, ...]) -> FloatArray:
    """Probability of each (non-cumulative) bucket under a lognormal latency; sums to 1."""
    edges = np.asarray(buckets, dtype=np.float64)
    cdf = np.asarray(stats.lognorm(s=sigma, scale=median_s).cdf(edges), dtype=np.float64)
    # Differencing a CDF can leave tiny negatives from rounding; Multinomial rejects them.
    return np.clip(np.diff(cdf, prepend=0.0), 0.0, None)


def _mask(mask: BoolArray, like: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    # The (R, K) masks have to reach the bucket axis of (R, K, B) arrays.
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


class Simulator:
    """Steps R replicates of one experiment forward, one interval per `step` call."""

    def __init__(self, config: SimConfig, replicates: int, rng: np.random.Generator) -> None:
        if replicates < 1:
            raise ValueError("replicates must be ≥ 1")
        self.config = config
        self.shape = (replicates, len(config.versions))
        self._rng = rng
        vs = config.versions
        self._p = np.array([v.error_rate for v in vs])
        has_reward = np.array([v.reward_rate is not None for v in vs])
        self._gauss = has_reward & np.array([v.reward_kind == "gaussian" for v in vs])
        mu = np.array([v.reward_rate or 0.0 for v in vs])
        self._mu_bernoulli = np.where(has_reward & ~self._gauss, mu, 0.0)
        self._mu, self._sd = mu, np.array([v.reward_sd for v in vs])
        sigma = np.array([v.latency_sigma for v in vs])
        self._lat_mean = np.array([v.latency_median_s for v in vs]) * np.exp(sigma**2 / 2.0)
        self._lat_cv2 = np.expm1(sigma**2)
        self._bucket_p = np.array(
            [bucket_probabilities(v.latency_median_s, v.latency_sigma, config.buckets) for v in vs]
        ).reshape(len(vs), len(config.buckets))
        self._phases = reset_phases(config.faults, self.shape, rng)
        r, k = self.shape
        zero_i, zero_f = np.zeros(self.shape, np.int64), np.zeros(self.shape)
        zeros = Counters(
            zero_i, zero_i, zero_f, zero_f, zero_f, np.zeros((r, k, len(config.buckets)), np.int64)
        )
        self._truth = self._baseline = self._observed = zeros
        self.iteration = 0

    @property
    def elapsed_s(self) -> float:
        return self.iteration * self.config.interval_s

    def step(self, weights: npt.ArrayLike) -> Snapshot:
        """Advance one interval with traffic `weights`, shape (R, K) or (K,), rows summing to 1."""
        w = np.asarray(weights, dtype=np.float64)
        if w.shape not in (self.shape, self.shape[1:]):
            raise ValueError(f"weights must have shape {self.shape} or {self.shape[1:]}")
        w = np.array(np.broadcast_to(w, self.shape))
        if not np.all(np.isfinite(w) & (w >= 0.0)) or not np.allclose(w.sum(axis=1), 1.0):
            raise ValueError("weights must be finite, non-negative and sum to 1 per replicate")
        cfg, rng = self.config, self._rng
        t0, t1 = self.elapsed_s, self.elapsed_s + cfg.interval_s
        lam = cfg.rate_rps * cfg.interval_s * diurnal_factor(cfg.faults, t0, t1) * w
        n = rng.poisson(lam)
        p = error_probabilities(cfg.faults, self._p, self.shape, t0, t1, rng=rng)
        errors = rng.binomial(n, p)
        reward_sum, reward_sumsq = self._rewards(n)
        delta = Counters(n, errors, reward_sum, reward_sumsq, self._latency_sum(n), self._hist(n))
        truth = self._truth.combine(delta, np.add)

        restarted = np.zeros(self.shape, dtype=np.bool_)
        if self._phases is not None:
            restarted = restarts_in(cfg.faults, self._phases, t0, t1)
            # The process restarts just after the t0 scrape, so its fresh counters hold
            # exactly this interval's increase and nothing in flight is lost.
            self._baseline = self._baseline.combine(
                self._truth, lambda base, old: np.where(_mask(restarted, old), old, base)
            )
        raw = truth.combine(self._baseline, np.subtract)
        fresh = np.ones(self.shape, dtype=np.bool_)
        if cfg.faults.missing_scrape_prob > 0.0:
            fresh = rng.random(self.shape) >= cfg.faults.missing_scrape_prob
        observed = raw.combine(
            self._observed, lambda new, old: np.where(_mask(fresh, new), new, old)
        )

        self._truth, self._observed = truth, observed
        self.iteration += 1
        return Snapshot(self.iteration, t1, w, p, truth, delta, observed, fresh, restarted)

    def _rewards(self, n: IntArray) -> tuple[FloatArray, FloatArray]:
        # Skipped draws keep error-only scenarios (S4, S8: thousands of iterations) cheap.
        successes = np.zeros(n.shape)
        if self._mu_bernoulli.any():
            successes = self._rng.binomial(n, self._mu_bernoulli).astype(np.float64)
        if not self._gauss.any():
            return successes, successes
        m = np.maximum(n, 1)
        mean = self._rng.normal(self._mu, self._sd / np.sqrt(m))
        # Gamma(shape=(n−1)/2, scale=2) is χ²(n−1), and is 0 for n ≤ 1 where numpy allows it.
        ss_dev = self._sd**2 * self._rng.gamma(np.maximum(n - 1, 0) / 2.0, 2.0)
        total = np.where(n > 0, n * mean, 0.0)
        sumsq = ss_dev + total**2 / m
        return np.where(self._gauss, total, successes), np.where(self._gauss, sumsq, successes)

    def _latency_sum(self, n: IntArray) -> FloatArray:
        if not self.config.buckets:
            return np.zeros(n.shape)
        m = np.maximum(n, 1)
        s2 = np.log1p(self._lat_cv2 / m)
        z = self._rng.standard_normal(n.shape)
        draw = np.exp(np.log(m * self._lat_mean) - s2 / 2.0 + np.sqrt(s2) * z)
        return np.where(n > 0, draw, 0.0)

    def _hist(self, n: IntArray) -> IntArray:
        if not self.config.buckets:
            return np.zeros((*n.shape, 0), dtype=np.int64)
        return np.cumsum(self._rng.multinomial(n, self._bucket_p), axis=-1)
