"""The conditional ratio test of relative objectives: the running statistic, its batched
twin, and the verdicts `assess_versions` and `analytics.batch` draw from it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analytics import batch, conditional, model, sequential
from analytics.assessment import Verdict, assess_versions
from analytics.conditional import RatioTest
from analytics.measurements import Counts
from analytics.model import Criteria, ExperimentSpec, Objective, Strategy, Version, VersionInfo

SPEC = ExperimentSpec(
    target="ns/model",
    strategy=Strategy(model.TestingPattern.CANARY),
    criteria=Criteria(objectives=(Objective("error-rate", max_ratio=1.5),), alpha=0.05),
    version_info=VersionInfo(Version("baseline"), (Version("candidate"),)),
)


def _windows(seed: int, ratio: float, n: int, burst: int | None = None) -> np.ndarray:
    """(n, 4) per-window counts: candidate errors, requests, baseline errors, requests."""
    rng = np.random.default_rng(seed)
    nc = rng.poisson(50, n)
    nb = rng.poisson(450, n)
    pb = np.full(n, 0.01)
    if burst is not None:
        pb[burst : burst + 12] = 0.2
    pc = np.where(pb > 0.01, pb, 0.01 * ratio)
    return np.stack([rng.binomial(nc, pc), nc, rng.binomial(nb, pb), nb], axis=1)


def _fold_all(windows: np.ndarray, margin: float = 1.5) -> RatioTest:
    test = RatioTest(margin)
    for i, (c, nc, b, nb) in enumerate(windows, start=1):
        test = test.fold(i, float(c), float(nc), float(b), float(nb))
    return test


def test_folding_an_iteration_twice_changes_nothing() -> None:
    test = RatioTest(1.5).fold(1, 3, 50, 4, 450)
    assert test.fold(1, 30, 50, 4, 450) is test
    assert test.fold(0, 30, 50, 4, 450) is test
    assert test.fold(2, 30, 50, 4, 450) != test


def test_the_status_round_trip_keeps_every_number() -> None:
    test = _fold_all(_windows(1, 2.0, 40))
    assert RatioTest.from_dict(test.to_dict()) == test


def test_the_batched_statistic_folds_exactly_as_the_scalar_one() -> None:
    runs = [_windows(s, r, 150, burst=60 if s % 2 else None) for s, r in enumerate((1, 2, 1.5))]
    sums = batch.RatioSums.start(1.5, (len(runs), 2))
    for i in range(150):
        counts = np.array([w[i] for w in runs], dtype=np.float64)
        sums.fold(counts[:, [2, 0]], counts[:, [3, 1]])
    for r, windows in enumerate(runs):
        test = _fold_all(windows)
        assert np.allclose(sums.violation[r, 1], test.violation, rtol=1e-9, atol=1e-9)
        assert np.allclose(sums.satisfaction[r, 1], test.satisfaction, rtol=1e-9, atol=1e-9)
        assert sums.reference[r, 1].tolist() == [
            test.candidate_events,
            test.candidate_requests,
            test.baseline_events,
            test.baseline_requests,
        ]


def test_the_scalar_fold_matches_the_vectorised_likelihood_ratio() -> None:
    v, s = sequential.ratio_log_lr(7, 60, 9, 440, 1.5)
    folded = RatioTest(
        1.5, dispersion_total=1e9, dispersion_windows=1e9 - conditional.DISPERSION_PRIOR_WINDOWS
    )
    # phi = 1 exactly: (1e9 + 2 * 20) / 1e9 rounds to 1 within float precision.
    assert folded.phi == pytest.approx(1.0)
    folded = folded.fold(1, 7, 60, 9, 440)
    assert folded.phi == pytest.approx(1.0)
    assert np.allclose(folded.violation, v, rtol=1e-6)
    assert np.allclose(folded.satisfaction, s, rtol=1e-6)


def test_a_global_burst_is_left_out_of_promotion_and_barely_slows_rollback() -> None:
    windows = _windows(3, 2.0, 200, burst=100)
    test = _fold_all(windows)
    assert test.incidents >= 10
    clean = _fold_all(np.delete(windows, range(100, 112), axis=0))
    log_v, log_s = test.log_evidence
    clean_v, clean_s = clean.log_evidence
    assert log_s <= clean_s + 1.0
    # Each incident window may cost the violation side at most 5%.
    assert log_v >= clean_v + 12 * math.log1p(-conditional.INCIDENT_WEIGHT) - 3.0


def test_a_candidate_that_causes_the_surge_is_still_caught() -> None:
    rng = np.random.default_rng(4)
    test = RatioTest(1.5)
    for i in range(1, 31):
        nc, nb = 50, 450
        c = rng.binomial(nc, 0.01 if i < 20 else 0.9)
        test = test.fold(i, c, nc, rng.binomial(nb, 0.01), nb)
    assert test.incidents > 0
    assert test.log_evidence[0] > math.log(1000)


@pytest.mark.parametrize(("ratio", "verdict"), [(2.5, Verdict.VIOLATED), (1.0, Verdict.SATISFIED)])
def test_assess_versions_judges_a_ratio_by_the_running_test(ratio: float, verdict: Verdict) -> None:
    test = _fold_all(_windows(5, ratio, 300))
    measurements = {"error-rate": {"baseline": Counts(30, 3000), "candidate": Counts(3, 300)}}
    result = assess_versions(SPEC, measurements, {"error-rate": {"candidate": test}})
    item = result["candidate"][0]
    assert item.verdict is verdict and item.conclusive
    assert "conditional test over 300 iterations" in item.conditions[0].reason
    # The batched assessment reaches the same verdict from the same statistic.
    sums = batch.RatioSums.start(1.5, (1, 2))
    for c, nc, b, nb in _windows(5, ratio, 300):
        sums.fold(np.array([[b, c]], dtype=float), np.array([[nb, nc]], dtype=float))
    out = batch.analyze(
        SPEC,
        {"error-rate": batch.Counts(np.array([[30.0, 3.0]]), np.array([[3000.0, 300.0]]))},
        0,
        np.random.default_rng(0),
        ratio_sums={"error-rate": sums},
    )
    assert batch.VERDICTS[int(out.verdict[0, 1, 0])] is verdict


def test_without_per_iteration_counts_the_cumulative_comparison_says_so() -> None:
    measurements = {"error-rate": {"baseline": Counts(30, 3000), "candidate": Counts(3, 300)}}
    item = assess_versions(SPEC, measurements)["candidate"][0]
    assert "cumulative comparison (no per-iteration counts)" in item.conditions[0].reason


def test_a_test_for_another_margin_is_not_used() -> None:
    test = _fold_all(_windows(5, 2.5, 300), margin=2.0)
    measurements = {"error-rate": {"baseline": Counts(30, 3000), "candidate": Counts(3, 300)}}
    item = assess_versions(SPEC, measurements, {"error-rate": {"candidate": test}})["candidate"][0]
    assert "cumulative comparison" in item.conditions[0].reason


# --- The pairwise reward test (A/B/n) ------------------------------------------------------


def _conversions(seed: int, n: int, rates: tuple[float, ...]) -> np.ndarray:
    """(n, K, 2) per-window (conversions, requests) of K versions."""
    rng = np.random.default_rng(seed)
    requests = rng.poisson(400, (n, len(rates)))
    return np.stack([rng.binomial(requests, rates), requests], axis=-1)


def test_a_pair_test_is_a_ratio_test_at_margin_one_on_its_own_grid() -> None:
    test = conditional.PairTest()
    assert test.margin == 1.0 and test.OFFSETS == conditional.REWARD_OFFSETS
    assert len(test.violation) == len(conditional.REWARD_OFFSETS) == 9
    assert conditional.REWARD_OFFSETS[0] == 0.01 and conditional.REWARD_OFFSETS[-1] < 0.5
    folded = test.fold(1, 60, 400, 40, 400)
    assert isinstance(folded, conditional.PairTest)
    assert folded.fold(1, 0, 400, 90, 400) is folded
    assert conditional.PairTest.from_dict(folded.to_dict()) == folded
    # More conversions on the version's side: evidence it is the higher, against the reverse.
    higher, lower = folded.log_evidence
    assert higher > 0 > lower
    with pytest.raises(ValueError, match="9 numbers"):
        conditional.PairTest(violation=(0.0,) * 6, satisfaction=(0.0,) * 6)
    with pytest.raises(ValueError, match="margin is 1"):
        conditional.PairTest(margin=0.5)


@pytest.mark.parametrize("rates", [(0.10, 0.12, 0.09), (0.49, 0.52, 0.96)], ids=["low", "high"])
def test_the_batched_pairs_fold_exactly_as_the_scalar_ones(rates: tuple[float, ...]) -> None:
    # "high" crosses one half: some pairs are judged on the complements, and those near 0.5
    # switch frames from window to window.
    runs = [_conversions(seed, 120, rates) for seed in range(3)]
    sums = batch.PairSums.start((len(runs), len(rates)))
    for i in range(120):
        window = np.array([run[i] for run in runs], dtype=np.float64)
        sums.fold(window[..., 0], window[..., 1])
    matrix = sums.matrix()
    for r, run in enumerate(runs):
        for p, (a, b) in enumerate(((0, 1), (0, 2), (1, 2))):
            test = conditional.PairTest()
            for i, window in enumerate(run, start=1):
                test = test.fold(i, *window[a], *window[b])
            assert np.allclose(sums.sums.violation[r, p], test.violation, rtol=1e-9, atol=1e-9)
            assert np.allclose(sums.sums.satisfaction[r, p], test.satisfaction, rtol=1e-9)
            assert matrix[r, a, b] == pytest.approx(test.log_evidence[0], rel=1e-9, abs=1e-9)
            assert matrix[r, b, a] == pytest.approx(test.log_evidence[1], rel=1e-9, abs=1e-9)
    assert np.all(np.isneginf(matrix[:, [0, 1, 2], [0, 1, 2]]))


def test_past_one_half_a_pair_is_judged_on_the_failures() -> None:
    # 97% against 95% accuracy: the successes barely differ in share, the failures (3% vs
    # 5%) clearly do, and that is the evidence the higher version gets.
    windows = _conversions(3, 200, (0.97, 0.95))
    test = conditional.PairTest()
    for i, (a, b) in enumerate(windows, start=1):
        test = test.fold(i, *a, *b)
    higher, lower = test.log_evidence
    assert higher > 100 and lower < 0  # measured: 158

    # Read as rare events (no complement), the same windows prove a fraction of that.
    class Plain(conditional.PairTest):
        FLIP = False

    plain = Plain()
    for i, (a, b) in enumerate(windows, start=1):
        plain = plain.fold(i, *a, *b)
    assert plain.log_evidence[0] < higher / 10  # measured: 5.6
