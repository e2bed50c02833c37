"""Posterior beliefs used to steer traffic (never to stop an experiment).

Where the evidence points is a Bayesian question: Beta(k + 1/2, n - k + 1/2) for counts
(Jeffreys), a normal for means. These only move weights; promote and rollback decisions come
from the confidence sequences in `analytics.sequential`, because a posterior threshold
checked every iteration has no error guarantee
(docs/statistics.md#posteriors-steer-they-never-stop).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import special

from analytics.evidence import Kind, Quantity

FloatArray = npt.NDArray[np.float64]

JEFFREYS = 0.5


def mean_and_variance(q: Quantity) -> tuple[float, float] | None:
    """Posterior mean and variance of the quantity, or None without data."""
    if q.kind is Kind.COUNTS and q.counts is not None:
        a = q.counts.events + JEFFREYS
        b = q.counts.trials - q.counts.events + JEFFREYS
        return a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    if q.kind is Kind.MEAN and q.moments is not None and q.estimate is not None:
        m = q.moments
        n = max(m.count, 2.0)
        variance = max((m.sum_of_squares or 0.0) - m.count * q.estimate**2, 0.0) / (n - 1)
        return q.estimate, variance / n
    if q.kind is Kind.POINT and q.estimate is not None:
        return q.estimate, 0.0
    return None


def prob_at_most(q: Quantity, limit: float) -> float:
    """Posterior probability that the quantity is <= limit (1/2 without data)."""
    if q.kind is Kind.COUNTS and q.counts is not None:
        a = q.counts.events + JEFFREYS
        b = q.counts.trials - q.counts.events + JEFFREYS
        return float(special.betainc(a, b, min(max(limit, 0.0), 1.0)))
    return prob_normal_at_most(mean_and_variance(q), limit)


def prob_normal_at_most(moments: tuple[float, float] | None, limit: float) -> float:
    if moments is None:
        return 0.5
    mean, variance = moments
    if variance <= 0:
        return 1.0 if mean <= limit else 0.0
    return float(special.ndtr((limit - mean) / np.sqrt(variance)))


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
