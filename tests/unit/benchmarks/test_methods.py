"""Each method does what its published description says, and all keep the runner's contract."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from analytics.measurements import Histogram
from benchmarks import scenario
from benchmarks.methods import METHODS, base, fixed_horizon, flagger, kayenta, sprt_oracle
from benchmarks.methods.lower_bound import kl, lower_bound
from benchmarks.runner import run_cell
from benchmarks.simulator import DEFAULT_BUCKETS

SHIPPED = {s.name: s for s in scenario.shipped()}


def _short(s: scenario.Scenario, intervals: int = 40) -> scenario.Scenario:
    # Arbiter's spec keeps its own duration, so "iterations exhausted" never fires early.
    return dataclasses.replace(s, horizon_s=min(s.horizon_s, intervals * s.interval_s))


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_method_keeps_the_contract_on_every_scenario(name: str) -> None:
    s = _short(SHIPPED[name])
    for info in METHODS:
        if s.pattern not in info.patterns:
            continue
        cell = run_cell(s, info, 4, seed=1, quick=True)
        assert cell.nonfinite == 0, info.name
        assert set(cell.action.tolist()) <= {0, 1, 2}
        decided = cell.action > 0
        assert np.all(cell.iteration[decided] >= 1) and np.all(cell.iteration[~decided] == -1)
        assert np.all((cell.version >= 0) & (cell.version < len(s.versions)))
        assert np.all((cell.peak_weight >= 0) & (cell.peak_weight <= 1))
        assert cell.step_ms.size >= 1


def test_histogram_quantile_matches_prometheus_interpolation() -> None:
    rng = np.random.default_rng(0)
    cdf = stats.lognorm.cdf(np.array(DEFAULT_BUCKETS), s=0.5, scale=0.1)
    p = np.diff(np.concatenate([[0.0], cdf]))
    counts = np.cumsum(rng.multinomial(400, p / p.sum(), size=30), axis=1).astype(float)
    counts[0] = 0.0  # no data
    for q in (0.5, 0.95, 0.99, 0.999):
        got = base.histogram_quantile(q, DEFAULT_BUCKETS, counts)
        for row, value in zip(counts, got, strict=True):
            want = Histogram(DEFAULT_BUCKETS, tuple(row)).quantile(q)
            assert (math.isnan(value) and want is None) or value == pytest.approx(want)


def test_z_statistics_and_the_normal_approximation_guard() -> None:
    z = base.z_pooled(np.array([30.0]), np.array([1000.0]), np.array([10.0]), np.array([1000.0]))
    p = 20 / 1000
    assert z[0] == pytest.approx((0.03 - 0.01) / math.sqrt(p * (1 - p) * 2 / 1000))
    ni = base.z_unpooled(
        np.array([10.0]), np.array([1000.0]), np.array([10.0]), np.array([1000.0]), 1.5
    )
    assert ni[0] == pytest.approx(0.005 / math.sqrt(0.0099 / 1000 * (1 + 2.25)))
    assert base.normal_ok(
        np.array([4.0, 5.0, 996.0]), np.array([1000.0, 1000.0, 1000.0])
    ).tolist() == [
        False,
        True,
        False,
    ]


def test_fixed_horizon_sample_size_is_the_reference_power_calculation() -> None:
    s = SHIPPED["bad-canary-errors"]
    minutes = fixed_horizon.planned_requests(s) / s.rate_rps / 60
    assert minutes == pytest.approx(12.8, abs=0.05)  # docs/statistics.md#reference-figures


def test_flagger_promotes_a_clean_canary_in_five_checks_and_rolls_back_a_broken_one() -> None:
    clean = dataclasses.replace(
        SHIPPED["good-canary"],
        versions=tuple(
            dataclasses.replace(v, error_rate=0.0) for v in SHIPPED["good-canary"].versions
        ),
    )
    cell = run_cell(_short(clean, 60), flagger.INFO, 20, seed=2, quick=True)
    assert np.all(cell.action == base.PROMOTE)
    assert np.all(cell.iteration == 5 * 6)  # five 1-minute checks of six 10 s intervals
    assert np.all(cell.peak_weight == pytest.approx(0.5))
    broken = dataclasses.replace(
        clean, versions=(clean.versions[0], dataclasses.replace(clean.versions[1], error_rate=1.0))
    )
    cell = run_cell(_short(broken, 60), flagger.INFO, 20, seed=2, quick=True)
    assert np.all(cell.action == base.ROLLBACK) and np.all(cell.iteration == 30)
    assert np.all(cell.peak_weight == pytest.approx(0.1))  # failed checks never step up


def test_kayenta_classifies_a_clear_increase_high_and_identical_data_pass() -> None:
    rng = np.random.default_rng(5)
    baseline = rng.normal(1.0, 0.1, (200, 50))
    assert not kayenta.classify_high(baseline, baseline).any()
    assert kayenta.classify_high(baseline + 0.5, baseline).all()
    same = kayenta.classify_high(rng.normal(1.0, 0.1, (200, 50)), baseline)
    assert same.mean() < 0.05  # 98% interval plus tolerance: rare on iid noise


def test_kayenta_interval_is_the_hodges_lehmann_order_statistic_interval() -> None:
    rng = np.random.default_rng(9)
    x, y = rng.normal(0.3, 1, 12), rng.normal(0, 1, 12)
    d = np.sort((x[:, None] - y[None, :]).ravel())
    z = stats.norm.ppf(0.99)
    k = math.floor(144 / 2 - z * math.sqrt(144 * 25 / 12))
    high = d[k] > 0.25 * abs(np.median(d))
    assert kayenta.classify_high(x[None, :], y[None, :])[0] == high


def test_oracle_attribution_probability_and_stream() -> None:
    assert sprt_oracle.theta(0.05, 1.0) == pytest.approx(0.05)
    assert sprt_oracle.theta(0.05, 2.0) == pytest.approx(0.1 / 1.05)
    assert sprt_oracle.stream(SHIPPED["bad-canary-errors"]) == ("errors", pytest.approx(2.0))
    kind, ratio = sprt_oracle.stream(SHIPPED["bad-canary-latency"])
    assert kind == "latency" and ratio == pytest.approx(0.0711 / 0.0334, rel=0.01)


def test_the_oracle_decides_the_objectives_own_hypotheses() -> None:
    # A bad canary's ratio against the margin, not against 1.
    h = sprt_oracle.hypotheses(SHIPPED["bad-canary-errors"])
    assert h is not None and (h.kind, h.null, h.truth) == ("ratio", 1.5, pytest.approx(2.0))
    # A good canary: the truth (r = 1) against the margin it must be shown within.
    h = sprt_oracle.hypotheses(SHIPPED["good-canary"])
    assert h is not None and (h.kind, h.null, h.truth) == ("ratio", 1.5, pytest.approx(1.0))
    # An absolute limit: a one-sample test on the candidate's own stream.
    h = sprt_oracle.hypotheses(SHIPPED["bad-canary-absolute"])
    assert h is not None and (h.kind, h.null, h.truth) == ("upper", 0.015, pytest.approx(0.03))
    # The latency regression is the sharpest violation when errors are equal.
    h = sprt_oracle.hypotheses(SHIPPED["bad-canary-latency"])
    assert h is not None and h.stream == "latency"
    # A truth on the boundary leaves nothing to tell apart.
    assert sprt_oracle.hypotheses(SHIPPED["at-margin"]) is None


def test_lower_bound_reproduces_statistics_md() -> None:
    two = lower_bound((0.99, 0.98), 0.05)
    assert round(two.complexity) == 1156 and round(two.samples) == 3064
    four = lower_bound((0.109, 0.106, 0.103, 0.100), 0.05)
    assert round(four.complexity) == 93799 and round(four.samples) == 248567
    w = lower_bound((0.5, 0.45, 0.43, 0.4), 0.05).allocation
    assert [round(x, 3) for x in w] == [0.417, 0.390, 0.136, 0.057]
    assert kl(0.05, 0.95) == pytest.approx(2.6500, abs=1e-4)
    with pytest.raises(ValueError, match="unique"):
        lower_bound((0.5, 0.5), 0.05)


def test_fixed_horizon_looks_once_when_the_planned_sample_is_in() -> None:
    s = dataclasses.replace(SHIPPED["aa-2160-looks"], horizon_s=3000.0)
    planned = fixed_horizon.planned_requests(s)
    cell = run_cell(s, fixed_horizon.INFO, 300, seed=3, quick=True)
    decided = cell.action > 0
    # Not significant at the look means no claim at all, and no second chance later.
    assert 0.01 < decided.mean() < 0.1
    looks = cell.iteration[decided]
    assert looks.max() - looks.min() <= 1
    assert np.all(cell.requests[decided] >= planned)
    assert np.all(cell.requests[decided] < planned + 2 * s.rate_rps * s.interval_s)


def test_fixed_horizon_leaves_a_version_over_its_slo_out_of_the_running() -> None:
    s = SHIPPED["abn-infeasible-leader"]  # v4 converts best but has 3% errors vs a 1% SLO
    s = dataclasses.replace(s, horizon_s=fixed_horizon.planned_requests(s) / s.rate_rps + 60)
    cell = run_cell(s, fixed_horizon.INFO, 40, seed=2, quick=True)
    promoted = cell.version[cell.action == base.PROMOTE]
    assert promoted.size >= 30 and np.all(promoted == 2)  # v3, never v4


def test_the_lower_bound_holds_up_for_three_and_six_versions() -> None:
    """Near the top of its bracket the closest arm's kl loses every digit; the root must be
    found all the same, and a harder instance (smaller gaps) must need more samples."""
    from benchmarks.methods.lower_bound import lower_bound

    three = lower_bound((0.050, 0.055, 0.060), 0.05)
    closer = lower_bound((0.050, 0.057, 0.060), 0.05)
    six = lower_bound((0.200, 0.210, 0.220, 0.235, 0.230, 0.225), 0.05)
    assert 0 < three.samples < closer.samples
    assert six.samples > 0 and abs(sum(six.allocation) - 1) < 1e-9
    assert max(range(6), key=lambda i: six.allocation[i]) in (3, 4)  # best or runner-up
