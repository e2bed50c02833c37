"""Posterior beliefs used to steer traffic (never to stop an experiment).

Where the evidence points is a Bayesian question: Beta(k + 1/2, n - k + 1/2) for counts
(Jeffreys), a normal for means. These only move weights; promote and rollback decisions come
from the confidence sequences in `analytics.sequential`, because a posterior threshold
checked every iteration has no error guarantee
(docs/statistics.md#posteriors-steer-they-never-stop).

The formulas are written once, on `evidence.Arrays` (R replicates by K versions); the
functions on one `Quantity` call them with R = K = 1.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import special

from analytics.evidence import Arrays, Kind, Quantity, stack

FloatArray = npt.NDArray[np.float64]

JEFFREYS = 0.5


def moments(x: Arrays) -> tuple[FloatArray, FloatArray]:
    """Posterior mean and variance per replicate and version, (R, K); meaningless where
    `x.present` is false."""
    if x.is_counts:
        a = x.a + JEFFREYS
        b = x.b - x.a + JEFFREYS
        return a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    n = np.maximum(x.a, 2.0)
    estimate = x.estimate
    variance = np.maximum(x.sum_of_squares - x.a * estimate**2, 0.0) / (n - 1)
    return estimate, variance / n


def prob_below(x: Arrays, limit: float) -> FloatArray:
    """Posterior probability that the quantity is <= limit, (R, K): 1/2 without data."""
    if x.is_counts:
        a = x.a + JEFFREYS
        b = x.b - x.a + JEFFREYS
        p = special.betainc(a, b, min(max(limit, 0.0), 1.0))
    else:
        p = prob_normal_below(*moments(x), limit)
    return np.asarray(np.where(x.present, p, 0.5), dtype=np.float64)


def prob_normal_below(mean: npt.ArrayLike, variance: npt.ArrayLike, limit: float) -> FloatArray:
    """P(N(mean, variance) <= limit), elementwise; a point mass where variance is 0."""
    m = np.asarray(mean, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    safe = np.where(v > 0, v, 1.0)
    p = special.ndtr((limit - m) / np.sqrt(safe))
    return np.asarray(np.where(v > 0, p, np.where(m <= limit, 1.0, 0.0)), dtype=np.float64)


def prob_within(
    candidate: tuple[npt.ArrayLike, npt.ArrayLike],
    baseline: tuple[npt.ArrayLike, npt.ArrayLike],
    kind: str,
    limit: float,
) -> FloatArray:
    """P(candidate <= limit x baseline) ("ratio") or P(candidate <= baseline + limit)
    ("increase"), from the posteriors' (mean, variance), each taken as normal."""
    (mc, vc), (mb, vb) = candidate, baseline
    ratio = limit if kind == "ratio" else 1.0
    shift = limit if kind == "increase" else 0.0
    mean = np.asarray(mc) - ratio * np.asarray(mb) - shift
    return prob_normal_below(mean, np.asarray(vc) + ratio**2 * np.asarray(vb), 0.0)


def mean_and_variance(q: Quantity) -> tuple[float, float] | None:
    """Posterior mean and variance of the quantity, or None without data."""
    if q.kind in (Kind.COUNTS, Kind.MEAN):
        mean, variance = moments(stack([q]))
        return float(mean[0, 0]), float(variance[0, 0])
    if q.kind is Kind.POINT and q.estimate is not None:
        return q.estimate, 0.0
    return None


def prob_at_most(q: Quantity, limit: float) -> float:
    """Posterior probability that the quantity is <= limit (1/2 without data)."""
    if q.kind in (Kind.COUNTS, Kind.MEAN):
        return float(prob_below(stack([q]), limit)[0, 0])
    return prob_normal_at_most(mean_and_variance(q), limit)


def prob_normal_at_most(moments: tuple[float, float] | None, limit: float) -> float:
    if moments is None:
        return 0.5
    return float(prob_normal_below(moments[0], moments[1], limit))


def draws(q: Quantity, rng: np.random.Generator, n_samples: int) -> FloatArray | None:
    """Posterior samples of the quantity, or None without data."""
    if q.kind is Kind.COUNTS and q.counts is not None:
        c = q.counts
        sample = rng.beta(c.events + JEFFREYS, c.trials - c.events + JEFFREYS, n_samples)
        return np.asarray(sample, dtype=np.float64)
    moments = mean_and_variance(q)
    if moments is None:
        return None
    mean, variance = moments
    return np.asarray(mean + np.sqrt(variance) * rng.standard_normal(n_samples), dtype=np.float64)


def prob_best(samples: FloatArray, eligible: npt.NDArray[np.bool_], higher: bool) -> FloatArray:
    """Share of joint posterior draws in which each version leads among the eligible ones.

    Args:
        samples: (..., n_samples, K) posterior draws.
        eligible: (..., n_samples, K) whether the version may win in that draw.
        higher: whether higher values are better.

    Returns:
        (..., K) probabilities; draws with no eligible version count for nobody.
    """
    signed = samples if higher else -samples
    masked = np.where(eligible, signed, -np.inf)
    leader = np.argmax(masked, axis=-1)
    anyone = np.any(eligible, axis=-1)
    k = samples.shape[-1]
    onehot = (leader[..., None] == np.arange(k)) & anyone[..., None]
    return np.asarray(onehot.mean(axis=-2), dtype=np.float64)
