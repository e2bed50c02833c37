"""The oracle that tracks w*(mu) under Arbiter's stopping rule, and the rule's own floor."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from analytics import conditional, sequential
from benchmarks import scenario
from benchmarks.methods import oracle_tracking
from benchmarks.methods.lower_bound import kl, lower_bound
from benchmarks.runner import run_cell

SHIPPED = {s.name: s for s in scenario.shipped()}


def test_the_split_tracks_the_lower_bounds_allocation_within_the_caps() -> None:
    s = SHIPPED["abn-4-versions"]
    w_star = np.array(lower_bound((0.100, 0.103, 0.106, 0.109), s.alpha).allocation)
    short = dataclasses.replace(s, horizon_s=60 * s.interval_s)
    cell = run_cell(short, oracle_tracking.INFO, 4, seed=3, quick=True)
    assert not np.any(cell.action)  # 12,000 requests are far too few to decide
    method = oracle_tracking.OracleTracking(short, 1, np.random.default_rng(0))
    served = np.zeros((1, 4))
    share = method.initial_weights()[0]
    for _ in range(300):
        served += share * method.per_interval
        before = method.current[0].copy()
        method.current = method._track(served, np.zeros((1, 4), dtype=np.bool_), method.current)
        # No candidate rises by more than maxCandidateWeightIncrement (10) in one step.
        assert np.all(method.current[0, 1:] - before[1:] <= 10 + 1e-9)
        share = method.current[0] / 100.0
    assert served[0] / served.sum() == pytest.approx(w_star, abs=0.01)


def test_an_infeasible_version_is_held_until_ruled_out_then_starved() -> None:
    s = SHIPPED["abn-infeasible-leader"]
    w, hold = oracle_tracking.optimal_shares(s)
    assert w[3] == 0 and hold[3] == pytest.approx(w.max()) and not hold[:3].any()
    method = oracle_tracking.OracleTracking(s, 1, np.random.default_rng(0))
    served = np.full((1, 4), 5000.0)
    out = np.array([[False, False, False, True]])
    assert method._track(served, ~out, method.current)[0, 3] > 0
    for _ in range(5):
        method.current = method._track(served, out, method.current)
    assert method.current[0, 3] == 0


def test_the_floor_is_the_stopping_rules_threshold_at_expected_counts() -> None:
    s = SHIPPED["abn-3-versions"]
    f = oracle_tracking.threshold_floor(s)
    bound = lower_bound((0.050, 0.055, 0.060), s.alpha)
    assert f.lower_bound == pytest.approx(bound.samples)
    assert f.kl_delta == pytest.approx(kl(0.05, 0.95))
    assert f.cut == pytest.approx(math.log(3 / 0.05))
    # T / T* is exactly the threshold plus the test's overhead ...
    assert f.samples / bound.complexity == pytest.approx(f.cut + f.penalty)
    assert f.ratio == pytest.approx((f.cut + f.penalty) / f.kl_delta)
    # ... and there the windowed test against the closest rival sits on the threshold.
    n = f.samples * np.array(bound.allocation)
    mu = np.array([0.050, 0.055, 0.060])
    evidence = []
    for rival in (0, 1):
        whole = sequential.ratio_log_lr(
            mu[2] * n[2], n[2], mu[rival] * n[rival], n[rival], 1.0, conditional.REWARD_OFFSETS
        )[0]
        evidence.append(float(sequential.ratio_log_evidence(whole)))
    assert min(evidence) == pytest.approx(f.cut, abs=0.02)  # counts are rounded
    # The overhead is the grid's: about its log-size, not two versions' log N.
    assert 0 < f.penalty < math.log(len(conditional.REWARD_OFFSETS)) + 1
    # The heuristic threshold solves T / T* = log((1 + log T) / delta).
    t = f.heuristic
    assert t / bound.complexity == pytest.approx(math.log((1 + math.log(t)) / s.alpha))
    assert 1 < f.heuristic_ratio < f.ratio
    assert f.regret > 0


def test_the_glr_is_the_two_sample_kl_sum_where_the_leader_leads() -> None:
    events = np.array([[50.0, 60.0, 70.0]])
    trials = np.array([[1000.0, 1000.0, 1000.0]])
    g = oracle_tracking.glr(events, trials, np.array([1]))
    m = 110 / 2000
    assert g[0, 0] == pytest.approx(1000 * kl(0.06, m) + 1000 * kl(0.05, m))
    assert g[0, 1] == 0 and g[0, 2] == 0  # no evidence the leader beats itself or a better one
    t = np.array([1e5])
    cut = oracle_tracking.heuristic_threshold(t, 0.05)
    assert cut[0] == pytest.approx(math.log((1 + math.log(1e5)) / 0.05))


def test_the_noise_aware_oracle_is_the_plain_one_without_noise_and_only_runs_with_it() -> None:
    from benchmarks import suite
    from benchmarks.methods import sprt_oracle

    clean = SHIPPED["bad-canary-severe"]
    h = sprt_oracle.hypotheses(clean)
    assert h is not None and sprt_oracle.dispersion(clean, h) == 1.0
    plain = run_cell(clean, sprt_oracle.INFO, 50, seed=5, quick=True)
    aware = run_cell(clean, sprt_oracle.NOISE_AWARE_INFO, 50, seed=5, quick=True)
    assert np.array_equal(plain.action, aware.action)
    assert np.array_equal(plain.iteration, aware.iteration)

    noisy = SHIPPED["noisy-bad-canary"]
    h = sprt_oracle.hypotheses(noisy)
    assert h is not None
    # 500 requests a window, 5% canary, 1% vs 2% errors, ICC 0.01.
    e = 500 * (0.05 * 0.02 + 0.95 * 0.01)
    t = sprt_oracle.theta(0.05, 2.0)
    cv2 = 0.01 * 0.98 / 0.02 + 0.01 * 0.99 / 0.01
    assert sprt_oracle.dispersion(noisy, h) == pytest.approx(1 + (e - 1) * t * (1 - t) * cv2)

    plan = suite.Plan(tuple(SHIPPED.values()), ("sprt-oracle-noise",), seed=1)
    ran = {s.name for s, _ in suite.cells_of(plan)}
    assert ran == {"noisy-bad-canary", "noisy-good-canary"}
