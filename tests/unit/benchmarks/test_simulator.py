"""The benchmark simulator: counter invariants, seeding, and every injected fault."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.faults import Faults, burst_overlap, diurnal_factor
from benchmarks.simulator import (
    DEFAULT_BUCKETS,
    SimConfig,
    Simulator,
    Snapshot,
    VersionTruth,
    bucket_probabilities,
    increase,
)

BASE = VersionTruth("baseline", error_rate=0.01, reward_rate=0.10)
CANARY = VersionTruth("canary", error_rate=0.02, reward_rate=0.12, latency_median_s=0.12)
HALF = np.array([0.5, 0.5])


def run(
    config: SimConfig, replicates: int, steps: int, seed: int = 0, weights: npt.ArrayLike = HALF
) -> list[Snapshot]:
    sim = Simulator(config, replicates, np.random.default_rng(seed))
    return [sim.step(weights) for _ in range(steps)]


def config(faults: Faults | None = None, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> SimConfig:
    return SimConfig((BASE, CANARY), 50.0, 10.0, buckets=buckets, faults=faults or Faults())


NOISY = Faults(
    missing_scrape_prob=0.1,
    counter_reset_every_s=60.0,
    diurnal_amplitude=0.5,
    diurnal_period_s=600.0,
    burst_start_s=100.0,
    burst_duration_s=40.0,
    burst_error_rate=0.3,
    overdispersion_icc=0.01,
)


def test_truth_is_cumulative_and_non_decreasing_and_observed_never_exceeds_it() -> None:
    snaps = run(config(NOISY), replicates=50, steps=30)
    prev = None
    for s in snaps:
        for name in ("requests", "errors", "reward_sum", "latency_sum", "buckets"):
            now = getattr(s.truth, name)
            before = 0 if prev is None else getattr(prev.truth, name)
            np.testing.assert_allclose(now, before + getattr(s.delta, name))
            assert np.all(getattr(s.delta, name) >= 0)
            assert np.all(getattr(s.observed, name) <= now + 1e-9)
        assert np.all(s.truth.errors <= s.truth.requests)
        assert np.all(s.truth.reward_sum <= s.truth.requests)
        prev = s


def test_buckets_are_cumulative_over_le_and_inf_equals_requests() -> None:
    for s in run(config(NOISY), replicates=50, steps=20):
        for c in (s.truth, s.delta, s.observed):
            assert c.buckets.shape == (50, 2, len(DEFAULT_BUCKETS))
            assert np.all(np.diff(c.buckets, axis=-1) >= 0)
            np.testing.assert_array_equal(c.buckets[..., -1], c.requests)


def test_same_seed_same_output_and_different_seed_differs() -> None:
    a, b, c = (run(config(NOISY), 20, 15, seed=seed) for seed in (7, 7, 8))
    for sa, sb in zip(a, b, strict=True):
        for part in ("truth", "observed", "delta"):
            for name in ("requests", "errors", "reward_sum", "latency_sum", "buckets"):
                np.testing.assert_array_equal(
                    getattr(getattr(sa, part), name), getattr(getattr(sb, part), name)
                )
        np.testing.assert_array_equal(sa.fresh, sb.fresh)
        np.testing.assert_array_equal(sa.restarted, sb.restarted)
    assert not np.array_equal(a[-1].truth.requests, c[-1].truth.requests)
    assert not np.array_equal(a[-1].fresh, c[-1].fresh)


def test_mean_requests_per_step_matches_rate_interval_weight() -> None:
    weights = np.array([0.05, 0.95])
    snaps = run(config(buckets=()), replicates=1000, steps=10, weights=weights)
    per_step = np.stack([s.delta.requests for s in snaps]).reshape(-1, 2).mean(axis=0)
    expected = 50.0 * 10.0 * weights
    se = np.sqrt(expected / (1000 * 10))  # Poisson: variance = mean
    assert np.all(np.abs(per_step - expected) < 5 * se)


def test_error_and_reward_ratios_match_the_truth_over_many_steps() -> None:
    last = run(config(), replicates=500, steps=40)[-1].observed
    n = last.requests.sum(axis=0)
    for values, truth in ((last.errors, [0.01, 0.02]), (last.reward_sum, [0.10, 0.12])):
        p = np.array(truth)
        assert np.all(np.abs(values.sum(axis=0) / n - p) < 5 * np.sqrt(p * (1 - p) / n))


def test_latency_sum_and_gaussian_rewards_have_the_right_moments() -> None:
    gauss = VersionTruth("g", 0.0, reward_rate=3.0, reward_kind="gaussian", reward_sd=2.0)
    cfg = SimConfig((gauss, CANARY), 20.0, 1.0)
    snaps = run(cfg, replicates=400, steps=10)
    d = np.stack([s.delta.requests for s in snaps])
    mean_latency = np.stack([s.delta.latency_sum for s in snaps]).sum(axis=(0, 1)) / d.sum((0, 1))
    np.testing.assert_allclose(mean_latency, np.array([0.1, 0.12]) * np.exp(0.5**2 / 2), rtol=0.03)
    # Per-interval (n, Σx, Σx²) must give back μ and sd, including n = 1 and n = 0 intervals.
    n = d[..., 0]
    s = np.stack([x.delta.reward_sum for x in snaps])[..., 0]
    q = np.stack([x.delta.reward_sumsq for x in snaps])[..., 0]
    assert np.all(s[n == 0] == 0) and np.all(q >= s**2 / np.maximum(n, 1) - 1e-9)
    assert abs(s.sum() / n.sum() - 3.0) < 0.05
    pooled = (q - s**2 / np.maximum(n, 1)).sum() / (n - 1)[n > 1].sum()
    assert abs(pooled - 4.0) < 0.15


def test_missing_scrapes_hold_the_previous_reading() -> None:
    snaps = run(config(Faults(missing_scrape_prob=0.3)), replicates=200, steps=15)
    prev = snaps[0]
    assert np.all(prev.observed.requests[~prev.fresh] == 0)  # nothing scraped yet
    for s in snaps[1:]:
        stale = ~s.fresh
        for name in ("requests", "errors", "latency_sum", "buckets"):
            was, now = getattr(prev.observed, name), getattr(s.observed, name)
            np.testing.assert_array_equal(now[stale], was[stale])
            np.testing.assert_array_equal(now[s.fresh], getattr(s.truth, name)[s.fresh])
        prev = s
    fresh_share = np.mean([s.fresh.mean() for s in snaps])
    assert abs(fresh_share - 0.7) < 0.02


def test_increase_handles_resets_like_prometheus() -> None:
    prev, now = np.array([10, 10, 0]), np.array([3, 15, 0])
    np.testing.assert_array_equal(increase(prev, now), [3, 5, 0])
    np.testing.assert_array_equal(increase(prev, now, reset_aware=False), [-7, 5, 0])
    np.testing.assert_allclose(increase(np.array([2.5]), np.array([0.5])), [0.5])


def test_counter_reset_drops_the_raw_counter_and_increase_recovers_the_truth() -> None:
    snaps = run(config(Faults(counter_reset_every_s=60.0)), replicates=100, steps=30)
    rebuilt = np.zeros((100, 2), dtype=np.int64)
    prev_obs = np.zeros((100, 2), dtype=np.int64)
    undetected = np.zeros((100, 2), dtype=np.bool_)
    for i, s in enumerate(snaps):
        dropped = s.observed.requests < prev_obs
        if i >= 6:  # a full period of traffic always outweighs one interval's worth
            np.testing.assert_array_equal(dropped, s.restarted)
        # Like PromQL, a reset whose new reading has climbed back to the old one goes
        # unnoticed; that can only happen to a restart in the first couple of intervals.
        undetected |= s.restarted & ~dropped & (prev_obs > 0)
        step = increase(prev_obs, s.observed.requests)
        np.testing.assert_array_equal(step[~undetected], s.delta.requests[~undetected])
        rebuilt += step
        prev_obs = s.observed.requests
    total = snaps[-1].truth.requests
    np.testing.assert_array_equal(rebuilt[~undetected], total[~undetected])
    assert undetected.mean() < 0.15
    assert sum(int(s.restarted.sum()) for s in snaps) > 100 * 2 * 4
    assert np.all(snaps[-1].observed.requests < total)


def test_burst_raises_every_versions_errors_only_inside_its_window() -> None:
    faults = Faults(burst_start_s=100.0, burst_duration_s=50.0, burst_error_rate=0.5)
    snaps = run(config(faults, buckets=()), replicates=200, steps=25)
    for s in snaps:
        inside = 100.0 < s.elapsed_s <= 150.0
        ratio = s.delta.errors.sum(axis=0) / s.delta.requests.sum(axis=0)
        expected = np.array([0.5, 0.5]) if inside else np.array([0.01, 0.02])
        np.testing.assert_allclose(s.error_prob, np.broadcast_to(expected, (200, 2)))
        assert np.all(np.abs(ratio - expected) < 0.03)
    assert burst_overlap(Faults(burst_start_s=105.0, burst_duration_s=20.0), 100.0, 110.0) == 0.5


def test_overdispersion_inflates_per_iteration_error_ratio_variance() -> None:
    def ratio_variance(icc: float) -> tuple[float, float]:
        snaps = run(config(Faults(overdispersion_icc=icc), buckets=()), 1000, 5, weights=[0, 1])
        errors = np.stack([s.delta.errors[:, 1] for s in snaps])
        ratio = errors / np.stack([s.delta.requests[:, 1] for s in snaps])
        return float(ratio.var()), float(ratio.mean())

    (v0, m0), (v1, m1) = ratio_variance(0.0), ratio_variance(0.02)
    # Beta-binomial design effect 1 + (n − 1)ρ ≈ 11 at n ≈ 500, ρ = 0.02.
    assert v1 > 5 * v0
    assert abs(m0 - 0.02) < 0.002 and abs(m1 - 0.02) < 0.002


def test_diurnal_factor_averages_exactly() -> None:
    f = Faults(diurnal_amplitude=0.5, diurnal_period_s=600.0)
    assert diurnal_factor(f, 0.0, 600.0) == pytest.approx(1.0)
    assert diurnal_factor(f, 0.0, 300.0) == pytest.approx(1.0 + 2 * 0.5 / math.pi)
    assert diurnal_factor(Faults(), 0.0, 10.0) == 1.0


def test_lognormal_bucket_probabilities() -> None:
    p = bucket_probabilities(0.1, 0.5, DEFAULT_BUCKETS)
    assert p.shape == (12,) and np.all(p >= 0)
    assert p.sum() == pytest.approx(1.0)
    # The median lands exactly on the le="0.1" boundary.
    assert np.cumsum(p)[DEFAULT_BUCKETS.index(0.1)] == pytest.approx(0.5)
    cum = np.cumsum(bucket_probabilities(0.3, 0.5, DEFAULT_BUCKETS))
    assert cum[DEFAULT_BUCKETS.index(0.25)] < 0.5 < cum[DEFAULT_BUCKETS.index(0.5)]


def test_inputs_are_validated_and_outputs_are_read_only() -> None:
    sim = Simulator(config(), 3, np.random.default_rng(0))
    for bad in ([0.7, 0.7], [1.5, -0.5], [math.nan, 1.0], np.ones((2, 2)) / 2):
        with pytest.raises(ValueError, match="weights"):
            sim.step(bad)
    s = sim.step(HALF)
    assert s.iteration == 1 and s.elapsed_s == 10.0
    with pytest.raises(ValueError, match="read-only"):
        s.truth.requests[0, 0] = 1
    with pytest.raises(ValueError, match="buckets"):
        config(buckets=(0.1, 0.05, math.inf))
    with pytest.raises(ValueError, match="diurnal"):
        Faults(diurnal_amplitude=1.5)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), k=st.integers(1, 4), replicates=st.integers(1, 4), seed=st.integers(0))
def test_invariants_hold_for_arbitrary_weights(
    data: st.DataObject, k: int, replicates: int, seed: int
) -> None:
    versions = tuple(VersionTruth(f"v{i}", error_rate=0.3, reward_rate=0.5) for i in range(k))
    cfg = SimConfig(versions, 5.0, 10.0, faults=NOISY)
    sim = Simulator(cfg, replicates, np.random.default_rng(seed))
    raw = st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k).filter(lambda w: sum(w) > 0.01)
    prev = sim.step(np.full(k, 1.0 / k))
    for _ in range(data.draw(st.integers(1, 6))):
        w = np.array(data.draw(st.lists(raw, min_size=replicates, max_size=replicates)))
        s = sim.step(w / w.sum(axis=1, keepdims=True))
        for c in (s.truth, s.observed):
            assert np.all(c.errors <= c.requests) and np.all(c.reward_sum <= c.requests)
            assert np.all(c.buckets[..., -1] == c.requests)
        for name in ("requests", "errors", "buckets", "latency_sum"):
            assert np.all(getattr(s.truth, name) >= getattr(prev.truth, name))
        prev = s
