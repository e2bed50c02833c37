"""Telemetry and traffic faults the benchmark simulator can inject
(docs/statistics.md#scenarios-and-faults).

Owns the `Faults` description and the pure, vectorised helpers that turn it into
per-interval effects: the diurnal traffic multiplier, the share of an interval that a global
error burst covers, overdispersed per-iteration error probabilities, and the process-restart
(counter reset) schedule. `benchmarks.simulator` applies them; nothing here keeps state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Faults:
    """What goes wrong with the traffic and the telemetry; the defaults inject nothing.

    missing_scrape_prob: chance that a version's scrape fails in an interval (per replicate).
    counter_reset_every_s: period of each pod's process restarts (random phase), which zero
        its raw counters.
    diurnal_amplitude/diurnal_period_s: request rate multiplied by 1 + A·sin(2πt/P).
    burst_start_s/burst_duration_s/burst_error_rate: a global incident during which every
        version's error probability is at least `burst_error_rate`.
    overdispersion_icc: intra-class correlation of errors within one interval (beta-binomial).
    """

    missing_scrape_prob: float = 0.0
    counter_reset_every_s: float | None = None
    diurnal_amplitude: float = 0.0
    diurnal_period_s: float = 86400.0
    burst_start_s: float | None = None
    burst_duration_s: float = 0.0
    burst_error_rate: float = 0.0
    overdispersion_icc: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.missing_scrape_prob < 1.0:
            raise ValueError("missing_scrape_prob must be in [0, 1)")
        if self.counter_reset_every_s is not None and not self.counter_reset_every_s > 0.0:
            raise ValueError("counter_reset_every_s must be positive")
        # Above 1 the request rate would go negative at the trough.
        if not 0.0 <= self.diurnal_amplitude <= 1.0:
            raise ValueError("diurnal_amplitude must be in [0, 1]")
        if not self.diurnal_period_s > 0.0:
            raise ValueError("diurnal_period_s must be positive")
        if self.burst_duration_s < 0.0 or not 0.0 <= self.burst_error_rate <= 1.0:
            raise ValueError("burst_duration_s must be >= 0 and burst_error_rate in [0, 1]")
        # ICC = 1 would need a Beta with a + b = 0, i.e. all-or-nothing intervals.
        if not 0.0 <= self.overdispersion_icc < 1.0:
            raise ValueError("overdispersion_icc must be in [0, 1)")


def diurnal_factor(faults: Faults, t0: float, t1: float) -> float:
    """Mean traffic multiplier over (t0, t1], the exact average of 1 + A·sin(2πt/P)."""
    if faults.diurnal_amplitude == 0.0:
        return 1.0
    omega = 2.0 * math.pi / faults.diurnal_period_s
    # Averaging over the interval, not sampling its midpoint, keeps expected request counts
    # exact even when Δt is a sizeable fraction of the period (S8 uses Δt = 60 s).
    mean_sin = (math.cos(omega * t0) - math.cos(omega * t1)) / (omega * (t1 - t0))
    return 1.0 + faults.diurnal_amplitude * mean_sin


def burst_overlap(faults: Faults, t0: float, t1: float) -> float:
    """Fraction of (t0, t1] that falls inside the error burst."""
    if faults.burst_start_s is None or faults.burst_duration_s == 0.0:
        return 0.0
    lo = max(t0, faults.burst_start_s)
    hi = min(t1, faults.burst_start_s + faults.burst_duration_s)
    return max(0.0, hi - lo) / (t1 - t0)


def error_probabilities(
    faults: Faults,
    base: FloatArray,
    shape: tuple[int, int],
    t0: float,
    t1: float,
    *,
    rng: np.random.Generator,
) -> FloatArray:
    """Per-(replicate, version) error probability for the interval (t0, t1].

    `base` holds each version's configured error rate, shape (K,). The result has `shape`.
    """
    p = np.broadcast_to(base, shape).astype(np.float64)
    icc = faults.overdispersion_icc
    if icc > 0.0:
        # Beta(p·s, (1−p)·s) with s = (1−ρ)/ρ has mean p, and Binomial(n, that draw) is the
        # beta-binomial whose within-interval correlation is ρ: variance n·p·(1−p)·(1+(n−1)ρ).
        # A rate of exactly 0 or 1 has no spread to draw, so it passes through unchanged.
        s = (1.0 - icc) / icc
        inner = (p > 0.0) & (p < 1.0)
        drawn = rng.beta(np.where(inner, p * s, 1.0), np.where(inner, (1.0 - p) * s, 1.0))
        p = np.where(inner, drawn, p)
    share = burst_overlap(faults, t0, t1)
    if share > 0.0:
        # Mixing by the covered share keeps a partly covered interval's expected errors exact.
        p = (1.0 - share) * p + share * np.maximum(p, faults.burst_error_rate)
    return p


def reset_phases(
    faults: Faults, shape: tuple[int, int], rng: np.random.Generator
) -> FloatArray | None:
    """Random restart phase per (replicate, version), or None when resets are off."""
    if faults.counter_reset_every_s is None:
        return None
    # Pods restart independently; synchronised resets would hide bugs that only show when
    # one version's counters drop while another's keep rising.
    return rng.uniform(0.0, faults.counter_reset_every_s, size=shape)


def restarts_in(faults: Faults, phases: FloatArray, t0: float, t1: float) -> BoolArray:
    """Whether a restart (at phase + k·period) falls inside (t0, t1]."""
    every = faults.counter_reset_every_s
    assert every is not None
    return np.asarray(np.floor((t1 - phases) / every) > np.floor((t0 - phases) / every))
