"""The runner's bookkeeping: decisions, timing, regret over the horizon, seeding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmarks import scenario
from benchmarks.methods import base
from benchmarks.methods.base import MethodInfo, Step
from benchmarks.runner import run_cell, slow_shares
from benchmarks.scrape import Observation

SHIPPED = {s.name: s for s in scenario.shipped()}


class _Fixed:
    """Holds a split and decides `action` at iteration `at`."""

    def __init__(self, s: scenario.Scenario, r: int, action: int, at: int) -> None:
        self.weights = base.fixed_split(s, r)
        self.action, self.at = action, at

    def initial_weights(self) -> base.FloatArray:
        return self.weights

    def step(self, obs: Observation) -> Step:
        r = self.weights.shape[0]
        now = np.full(r, obs.iteration == self.at)
        return base.decide(
            self.weights,
            now & (self.action == 1),
            now & (self.action == 2),
            np.ones(r, dtype=np.int64),
        )


def _info(action: int, at: int) -> MethodInfo:
    return MethodInfo(
        f"fixed-{action}-{at}", "", base.EVERY_PATTERN, lambda s, r, g, q: _Fixed(s, r, action, at)
    )


def test_promoting_a_bad_canary_keeps_costing_until_the_horizon() -> None:
    s = SHIPPED["bad-canary-errors"]
    promoted = run_cell(s, _info(1, 6), 200, seed=4, quick=True)
    assert np.all(promoted.action == base.PROMOTE) and np.all(promoted.iteration == 6)
    # 1 minute at 5%, then 59 minutes at 100%, each request 1 point more likely to fail.
    expected = 50 * 0.01 * (60 * 0.05 + 3540 * 1.0)
    assert promoted.extra_errors.mean() == pytest.approx(expected, rel=0.03)
    assert np.all(promoted.requests > 0) and promoted.requests.mean() == pytest.approx(
        3000, rel=0.05
    )
    rolled = run_cell(s, _info(2, 6), 200, seed=4, quick=True)
    assert rolled.extra_errors.mean() == pytest.approx(50 * 0.01 * 60 * 0.05, rel=0.1)
    assert np.all(rolled.exposure < promoted.exposure)


def test_undecided_replicates_are_inconclusive_and_run_to_the_horizon() -> None:
    s = dataclasses.replace(SHIPPED["good-canary"], horizon_s=600.0)
    cell = run_cell(s, _info(1, 10_000), 10, seed=4, quick=True)
    assert np.all(cell.action == 0) and np.all(cell.iteration == -1)
    assert np.all(np.isnan(cell.requests)) and cell.step_ms.size == 60


def test_slow_requests_are_the_regret_on_a_latency_regression() -> None:
    s = SHIPPED["bad-canary-latency"]
    shares = slow_shares(s)
    # The shares in docs/statistics.md#latency-from-histogram-buckets.
    assert shares == pytest.approx([0.0334, 0.0711], abs=5e-4)
    promoted = run_cell(
        dataclasses.replace(s, horizon_s=600.0), _info(1, 1), 50, seed=1, quick=True
    )
    assert promoted.extra_slow.mean() == pytest.approx(50 * 600 * (shares[1] - shares[0]), rel=0.05)
    assert promoted.extra_errors.mean() == 0


def test_same_seed_same_cell_and_methods_share_the_traffic_stream() -> None:
    s = dataclasses.replace(SHIPPED["bad-canary-errors"], horizon_s=300.0)
    a = run_cell(s, _info(0, 0), 30, seed=9, quick=True)
    b = run_cell(s, _info(0, 0), 30, seed=9, quick=True)
    c = run_cell(s, _info(0, 1000), 30, seed=9, quick=True)  # another method, same split
    d = run_cell(s, _info(0, 0), 30, seed=10, quick=True)
    assert a.exposure.min() > 0
    np.testing.assert_array_equal(a.exposure, b.exposure)
    np.testing.assert_array_equal(a.exposure, c.exposure)
    np.testing.assert_array_equal(a.extra_errors, c.extra_errors)
    assert not np.array_equal(a.exposure, d.exposure)
