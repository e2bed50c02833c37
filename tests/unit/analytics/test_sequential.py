"""Confidence sequences: the Newton solver against brute force, monotonicity, batch axes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analytics import sequential

ALPHAS = (0.5, 0.05, 0.01, 0.001)
SCALES = (0.01, 0.05, 0.5, 0.9)
TRIALS = (1.0, 2.0, 5.0, 37.0, 1000.0, 12345.5, 1e5, 1e7)


def brute_force_cs(k: float, n: float, alpha: float, scale: float) -> tuple[float, float]:
    """Bisect {p : k log p + (n - k) log(1 - p) >= log marginal + log alpha} on each side.

    The same mixture condition `binomial_cs` solves with Newton steps on the logit scale,
    here by 200 plain halvings in p, which cannot fail to converge.
    """
    threshold = float(sequential.log_marginal(k, n, scale)) + math.log(alpha)

    def inside(p: float) -> bool:
        return k * math.log(p) + (n - k) * math.log1p(-p) >= threshold

    def bisect(inner: float, outer: float) -> float:
        for _ in range(200):
            mid = 0.5 * (inner + outer)
            if 0.0 < mid < 1.0 and inside(mid):
                inner = mid
            else:
                outer = mid
        return inner

    estimate = min(max(k / n, 1e-300), 1.0 - 1e-16)
    lower = 0.0 if k == 0 else bisect(estimate, 0.0)
    upper = 1.0 if k == n else bisect(estimate, 1.0)
    return lower, upper


def grid() -> list[tuple[float, float, float, float]]:
    cases = []
    for n in TRIALS:
        for k in sorted({0.0, 1.0, 3.0, n * 0.001, n * 0.01, n * 0.5, n * 0.99, n - 1.0, n}):
            if 0.0 <= k <= n:
                cases += [(k, n, a, s) for a in ALPHAS for s in SCALES]
    return cases


def test_binomial_cs_matches_brute_force_bisection_of_the_mixture_condition() -> None:
    cases = np.array(grid())
    lower, upper = sequential.binomial_cs(cases[:, 0], cases[:, 1], cases[:, 2], cases[:, 3])
    for (k, n, a, s), lo, hi in zip(cases, lower, upper, strict=True):
        want_lo, want_hi = brute_force_cs(k, n, a, s)
        where = f"k={k}, n={n}, alpha={a}, scale={s}"
        # Relative to the bound near 0 or to its distance from 1, so tiny bounds count too.
        assert lo == pytest.approx(want_lo, rel=1e-9, abs=1e-15), where
        assert 1.0 - hi == pytest.approx(1.0 - want_hi, rel=1e-9, abs=1e-15), where


def test_binomial_cs_edges() -> None:
    lo, hi = sequential.binomial_cs([0, 0, 10, 5], [0, 10, 10, 10], 0.05)
    assert (lo[0], hi[0]) == (0.0, 1.0)  # no trials: nothing is excluded
    assert lo[1] == 0.0 and 0.0 < hi[1] < 1.0
    assert 0.0 < lo[2] < 1.0 and hi[2] == 1.0
    assert 0.0 < lo[3] < 0.5 < hi[3] < 1.0


def test_binomial_cs_contains_the_estimate_and_narrows_with_data() -> None:
    n = np.array([100.0, 1e3, 1e4, 1e5, 1e6])
    lo, hi = sequential.binomial_cs(0.02 * n, n, 0.05, 0.02)
    assert np.all(lo < 0.02) and np.all(hi > 0.02)
    assert np.all(np.diff(hi - lo) < 0)


@pytest.mark.parametrize("scale", SCALES)
def test_a_smaller_alpha_never_gives_a_narrower_sequence(scale: float) -> None:
    cases = np.array([(k, n) for k, n, a, s in grid() if a == 0.05 and s == 0.05])
    alphas = np.array([0.5, 0.2, 0.1, 0.05, 0.01, 1e-3, 1e-6])
    # Broadcasting (alpha, case): the alpha axis is a leading batch axis.
    lo, hi = sequential.binomial_cs(cases[:, 0], cases[:, 1], alphas[:, None], scale)
    assert lo.shape == (len(alphas), len(cases))
    assert np.all(np.diff(lo, axis=0) <= 1e-12)
    assert np.all(np.diff(hi, axis=0) >= -1e-12)
    assert np.any(np.diff(hi, axis=0) > 0)


@pytest.mark.parametrize("scale", [0.01, 0.05, 0.5])
@pytest.mark.parametrize("alpha", [0.5, 0.05, 0.001])
def test_more_events_never_lower_a_bound(scale: float, alpha: float) -> None:
    # What makes "more failures never improve a verdict" hold for count objectives.
    for n in (1, 2, 5, 30, 100, 1000, 10_000):
        k = np.arange(0, n + 1, max(1, n // 300), dtype=float)
        lo, hi = sequential.binomial_cs(k, n, alpha, scale)
        assert np.all(np.diff(lo) >= -1e-12) and np.all(np.diff(hi) >= -1e-12), n
        # One more request, and it failed.
        lo_more, hi_more = sequential.binomial_cs(k + 1, n + 1, alpha, scale)
        assert np.all(lo_more >= lo - 1e-12) and np.all(hi_more >= hi - 1e-12), n


def test_binomial_cs_batch_axes_give_the_same_as_a_loop(rng: np.random.Generator) -> None:
    n = rng.integers(0, 5000, size=(3, 4, 5)).astype(float)
    k = np.floor(n * rng.uniform(0, 0.3, size=n.shape))
    alpha = rng.uniform(0.001, 0.2, size=(4, 1))
    lo, hi = sequential.binomial_cs(k, n, alpha, 0.02)
    assert lo.shape == hi.shape == (3, 4, 5)
    for index in np.ndindex(n.shape):
        one_lo, one_hi = sequential.binomial_cs(k[index], n[index], alpha[index[1], 0], 0.02)
        assert lo[index] == pytest.approx(float(one_lo), rel=1e-12, abs=1e-300)
        assert hi[index] == pytest.approx(float(one_hi), rel=1e-12)


def test_log_marginal_is_a_probability_and_below_the_best_fit() -> None:
    k = np.array([0.0, 3.0, 50.0, 100.0])
    n = np.array([100.0, 100.0, 100.0, 100.0])
    marginal = sequential.log_marginal(k, n, 0.05)
    p = k / n
    best = np.where(k > 0, k * np.log(np.where(p > 0, p, 1)), 0.0) + np.where(
        k < n, (n - k) * np.log1p(-np.where(p < 1, p, 0)), 0.0
    )
    assert np.all(marginal < 0)
    assert np.all(marginal <= best)


# --- means ---------------------------------------------------------------------------------


def moments(values: np.ndarray) -> tuple[float, float, float]:
    return float(len(values)), float(values.sum()), float((values**2).sum())


def test_mean_cs_below_the_minimum_count_is_the_whole_line(rng: np.random.Generator) -> None:
    below = moments(rng.normal(100, 10, sequential.MIN_MEAN_COUNT - 1))
    lo, hi = sequential.mean_cs(*below, 0.05)
    assert (float(lo), float(hi)) == (-math.inf, math.inf)
    at = moments(rng.normal(100, 10, sequential.MIN_MEAN_COUNT))
    lo, hi = sequential.mean_cs(*at, 0.05)
    assert math.isfinite(lo) and math.isfinite(hi)


def test_mean_cs_contains_the_mean_narrows_and_widens_with_confidence(
    rng: np.random.Generator,
) -> None:
    values = rng.normal(120.0, 30.0, 100_000)
    sizes = [100, 1000, 10_000, 100_000]
    stats = np.array([moments(values[:s]) for s in sizes])
    lo, hi = sequential.mean_cs(stats[:, 0], stats[:, 1], stats[:, 2], 0.05)
    means = stats[:, 1] / stats[:, 0]
    assert np.all(lo < means) and np.all(means < hi)
    assert np.all(np.diff(hi - lo) < 0)
    lo_strict, hi_strict = sequential.mean_cs(stats[:, 0], stats[:, 1], stats[:, 2], 0.001)
    assert np.all(lo_strict < lo) and np.all(hi_strict > hi)


def test_mean_cs_of_a_constant_is_a_point() -> None:
    lo, hi = sequential.mean_cs(50, 50 * 7.0, 50 * 49.0, 0.05)
    assert float(lo) == pytest.approx(7.0) and float(hi) == pytest.approx(7.0)


def test_mean_cs_batch_axes_give_the_same_as_a_loop(rng: np.random.Generator) -> None:
    count = rng.integers(0, 200, size=(2, 6)).astype(float)
    mean = rng.normal(0, 5, size=count.shape)
    total = count * mean
    squares = count * (mean**2 + rng.uniform(1, 4, size=count.shape))
    alpha = np.array([[0.05], [0.01]])
    lo, hi = sequential.mean_cs(count, total, squares, alpha)
    for index in np.ndindex(count.shape):
        one_lo, one_hi = sequential.mean_cs(
            count[index], total[index], squares[index], alpha[index[0], 0]
        )
        assert lo[index] == pytest.approx(float(one_lo), rel=1e-12)
        assert hi[index] == pytest.approx(float(one_hi), rel=1e-12)
