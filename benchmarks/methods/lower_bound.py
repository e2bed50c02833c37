"""The Garivier-Kaufmann lower bound for identifying the best version (COLT 2016).

Any procedure that names the best of K Bernoulli arms with error at most delta needs, on
average, at least T*(mu) kl(delta, 1 - delta) samples, where 1 / T*(mu) = sup over
allocations w of min over a != best of [w_1 kl(mu_1, m) + w_a kl(mu_a, m)] with m the
w-weighted mean of mu_1 and mu_a. It is computed as in their Theorem 5: for y > 0 let
x_a(y) solve (1 + x) I(1 / (1 + x)) = y, find y* with sum_a kl(mu_1, m_a) / kl(mu_a, m_a)
= 1, then w*_1 = 1 / (1 + sum_a x_a(y*)) and T* = 1 / (w*_1 y*). Not a method that runs:
the benchmark reports it as the floor for A/B/n samples to a decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize


def kl(p: float, q: float) -> float:
    """Bernoulli Kullback-Leibler divergence kl(p, q)."""
    eps = 1e-15
    p = min(max(p, eps), 1 - eps)
    q = min(max(q, eps), 1 - eps)
    # log1p keeps the two terms accurate when q is close to p (the bracket's top end).
    return -p * math.log1p((q - p) / p) - (1 - p) * math.log1p((p - q) / (1 - p))


@dataclass(frozen=True)
class LowerBound:
    complexity: float  # T*(mu)
    samples: float  # T*(mu) kl(delta, 1 - delta)
    allocation: tuple[float, ...]  # w*, in the order of `mu`


def _g(mu1: float, mua: float, x: float) -> float:
    m = (mu1 + x * mua) / (1 + x)
    return kl(mu1, m) + x * kl(mua, m)


def _x(mu1: float, mua: float, y: float) -> float:
    hi = 1.0
    while _g(mu1, mua, hi) < y:
        hi *= 2.0
    return float(optimize.brentq(lambda x: _g(mu1, mua, x) - y, 0.0, hi, xtol=1e-14, rtol=1e-14))


def lower_bound(mu: tuple[float, ...], delta: float) -> LowerBound:
    """T*(mu), the sample lower bound at `delta`, and the optimal allocation w*.

    Raises:
        ValueError: fewer than 2 arms, or the best arm is not unique.
    """
    if len(mu) < 2:
        raise ValueError("need at least 2 arms")
    order = sorted(range(len(mu)), key=lambda i: -mu[i])
    best, others = order[0], order[1:]
    mu1 = mu[best]
    if any(mu[a] >= mu1 for a in others):
        raise ValueError("the best arm must be unique")

    def excess(y: float) -> float:
        total = 0.0
        for a in others:
            x = _x(mu1, mu[a], y)
            m = (mu1 + x * mu[a]) / (1 + x)
            total += kl(mu1, m) / kl(mu[a], m)
        return total - 1.0

    y_max = min(kl(mu1, mu[a]) for a in others)
    # Near y_max the closest arm's x runs off to infinity and kl(mu_a, m) loses every digit;
    # the root lies well inside, so the bracket stops a little short of the top.
    y = float(optimize.brentq(excess, y_max * 1e-12, y_max * (1 - 1e-6), xtol=1e-16, rtol=1e-14))
    xs = {a: _x(mu1, mu[a], y) for a in others}
    w1 = 1.0 / (1.0 + sum(xs.values()))
    weights = np.zeros(len(mu))
    weights[best] = w1
    for a, x in xs.items():
        weights[a] = x * w1
    complexity = 1.0 / (w1 * y)
    return LowerBound(complexity, complexity * kl(delta, 1 - delta), tuple(weights.tolist()))
