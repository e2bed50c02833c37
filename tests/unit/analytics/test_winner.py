"""Winner assessment per testing pattern, with a message naming metrics and versions."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from analytics import sequential
from analytics.assessment import assess_versions
from analytics.model import Experiment
from analytics.winner import (
    RewardArrays,
    WinnerAssessment,
    assess_winner,
    pairwise_evidence,
    reward_winner,
    threshold,
)

Factory = Callable[..., Experiment]
ERRORS = [{"metric": "error-rate", "upperLimit": 0.01}]
CONVERSION = [{"metric": "conversion", "preferredDirection": "High"}]
GOOD = {"events": 10, "trials": 100_000}  # 0.01% errors: conclusively within 1%
BAD = {"events": 3000, "trials": 100_000}  # 3%: conclusively above
UNKNOWN = {"events": 1, "trials": 100}  # 1% of 100: undecided


def winner_of(experiment: Experiment) -> WinnerAssessment:
    spec, measurements = experiment.spec, experiment.status.measurements
    return assess_winner(spec, assess_versions(spec, measurements), measurements)


# --- Conformance ---------------------------------------------------------------------------


def test_conformance_winner_is_the_baseline_when_it_satisfies_all(
    make_experiment: Factory,
) -> None:
    w = winner_of(
        make_experiment("Conformance", objectives=ERRORS, data={"error-rate": {"baseline": GOOD}})
    )
    assert (w.winner_found, w.winner, w.best_versions, w.conclusive) == (
        True,
        "baseline",
        ("baseline",),
        True,
    )
    assert w.message == "baseline baseline satisfies all objectives"


@pytest.mark.parametrize(("measurement", "verdict"), [(BAD, "violated"), (UNKNOWN, "undecided")])
def test_conformance_has_no_winner_until_the_baseline_satisfies_all(
    make_experiment: Factory, measurement: dict[str, int], verdict: str
) -> None:
    data = {"error-rate": {"baseline": measurement}}
    w = winner_of(make_experiment("Conformance", objectives=ERRORS, data=data))
    assert (w.winner_found, w.winner, w.best_versions) == (False, None, ())
    assert "baseline" in w.message and f"error-rate {verdict}" in w.message


# --- Canary --------------------------------------------------------------------------------


def canary(
    make_experiment: Factory, baseline: dict[str, int], candidate: dict[str, int]
) -> WinnerAssessment:
    data = {"error-rate": {"baseline": baseline, "candidate": candidate}}
    return winner_of(make_experiment("Canary", objectives=ERRORS, data=data))


def test_canary_winner_is_the_candidate_when_it_satisfies_all(make_experiment: Factory) -> None:
    w = canary(make_experiment, BAD, GOOD)
    assert (w.winner_found, w.winner, w.best_versions, w.conclusive) == (
        True,
        "candidate",
        ("candidate",),
        True,
    )
    assert w.message == "candidate candidate satisfies all objectives"


def test_canary_winner_is_the_baseline_when_only_the_baseline_satisfies_all(
    make_experiment: Factory,
) -> None:
    w = canary(make_experiment, GOOD, BAD)
    assert (w.winner_found, w.winner, w.best_versions) == (True, "baseline", ("baseline",))
    # Conclusive because the candidate is conclusively out.
    assert w.conclusive
    assert w.message == (
        "baseline baseline satisfies all objectives; candidate candidate does not (yet):"
        " error-rate violated"
    )


def test_a_baseline_winner_over_an_undecided_candidate_is_not_conclusive(
    make_experiment: Factory,
) -> None:
    w = canary(make_experiment, GOOD, UNKNOWN)
    assert (w.winner, w.conclusive) == ("baseline", False)
    assert "error-rate undecided" in w.message


def test_canary_has_no_winner_when_neither_satisfies_all(make_experiment: Factory) -> None:
    w = canary(make_experiment, BAD, UNKNOWN)
    assert (w.winner_found, w.winner, w.best_versions, w.conclusive) == (False, None, (), False)
    assert w.message == (
        "no version satisfies all objectives; candidate candidate: error-rate undecided"
    )


# --- A/B and A/B/n -------------------------------------------------------------------------


def ab(
    make_experiment: Factory,
    conversion: dict[str, Any],
    errors: dict[str, Any] | None = None,
    pattern: str = "A/B",
    rewards: list[dict[str, str]] = CONVERSION,
) -> WinnerAssessment:
    names = list(conversion)
    data: dict[str, Any] = {"conversion": conversion}
    data["error-rate"] = errors if errors is not None else {n: GOOD for n in names}
    e = make_experiment(
        pattern,
        baseline=names[0],
        candidates=names[1:],
        objectives=ERRORS,
        rewards=rewards,
        data=data,
    )
    return winner_of(e)


def conv(events: int, trials: int = 20_000) -> dict[str, int]:
    return {"events": events, "trials": trials}


def test_ab_declares_a_winner_when_the_reward_sequences_separate(
    make_experiment: Factory,
) -> None:
    w = ab(make_experiment, {"v1": conv(2000), "v2": conv(2600)})
    assert (w.winner_found, w.winner, w.best_versions, w.conclusive) == (True, "v2", ("v2",), True)
    assert "v2 is best on conversion" in w.message
    assert [r.version for r in w.rewards] == ["v1", "v2"]
    assert all(r.interval is not None and r.sample_size == 20_000 for r in w.rewards)


def test_ab_waits_while_the_reward_sequences_overlap(make_experiment: Factory) -> None:
    w = ab(make_experiment, {"v1": conv(2000), "v2": conv(2060)})
    assert (w.winner_found, w.winner, w.conclusive) == (False, None, False)
    assert set(w.best_versions) == {"v1", "v2"}
    assert w.message.startswith(
        "not yet conclusive on conversion: v1, v2 could still be best; leader v2, evidence"
    )
    assert w.message.endswith(
        " of 3.689 needed (cumulative counts, no per-iteration history)"
    )  # log(2 / 0.05)


def test_an_exact_tie_on_counts_is_reported_not_broken(make_experiment: Factory) -> None:
    w = ab(make_experiment, {"v1": conv(2000), "v2": conv(2000)})
    assert (w.winner_found, w.winner) == (False, None)
    assert set(w.best_versions) == {"v1", "v2"}


def test_lower_is_better_rewards(make_experiment: Factory) -> None:
    low = [{"metric": "conversion", "preferredDirection": "Low"}]
    w = ab(make_experiment, {"v1": conv(2000), "v2": conv(2600)}, rewards=low)
    assert (w.winner_found, w.winner) == (True, "v1")


def test_abn_winner_must_clear_every_version_still_in_the_running(
    make_experiment: Factory,
) -> None:
    conversion = {"v1": conv(2000), "v2": conv(2100), "v3": conv(2600), "v4": conv(2500)}
    w = ab(make_experiment, conversion, pattern="A/B/n")
    # v3 leads, but v4 is within reach: no winner yet, and both are named.
    assert (w.winner_found, set(w.best_versions)) == (False, {"v3", "v4"})
    conversion["v3"] = conv(3200)
    w = ab(make_experiment, conversion, pattern="A/B/n")
    assert (w.winner_found, w.winner, w.conclusive) == (True, "v3", True)


def test_abn_ignores_a_version_that_violates_an_objective(make_experiment: Factory) -> None:
    conversion = {"v1": conv(2000), "v2": conv(2600), "v3": conv(4000)}
    errors = {"v1": GOOD, "v2": GOOD, "v3": BAD}
    w = ab(make_experiment, conversion, errors, pattern="A/B/n")
    assert (w.winner_found, w.winner) == (True, "v2")
    assert w.feasible == ("v1", "v2")


def test_no_feasible_version_means_no_winner(make_experiment: Factory) -> None:
    w = ab(make_experiment, {"v1": conv(2000), "v2": conv(2600)}, {"v1": BAD, "v2": BAD})
    assert (w.winner_found, w.best_versions, w.feasible) == (False, (), ())
    assert w.message == "no version satisfies all objectives"


def test_point_rewards_compare_plainly(make_experiment: Factory) -> None:
    w = ab(make_experiment, {"v1": {"value": 10}, "v2": {"value": 12}})
    assert (w.winner_found, w.winner, w.best_versions, w.conclusive) == (
        True,
        "v2",
        ("v2",),
        False,
    )
    assert w.message == "v2 best on conversion by plain comparison"


def test_point_reward_ties_are_reported_not_guessed(make_experiment: Factory) -> None:
    reward = {"v1": {"value": 10}, "v2": {"value": 12}, "v3": {"value": 12}}
    w = ab(make_experiment, reward, pattern="A/B/n")
    assert (w.winner_found, w.winner, w.best_versions) == (False, None, ("v2", "v3"))
    assert w.message == "v2, v3 tied for best on conversion by plain comparison"


def test_a_missing_point_reward_is_reported(make_experiment: Factory) -> None:
    w = ab(make_experiment, {"v1": {"value": 10}, "v2": {}, "v3": {"value": 9}}, pattern="A/B/n")
    assert "reward conversion for v2 is not available" in w.message
    assert "v2" not in w.best_versions


def test_no_reward_values_at_all_means_no_winner(make_experiment: Factory) -> None:
    w = ab(make_experiment, {"v1": {}, "v2": {}})
    assert (w.winner_found, w.best_versions) == (False, ())
    assert w.message == (
        "reward conversion for v1 is not available; reward conversion for v2 is not available"
    )


def test_a_missing_reward_beside_count_evidence_is_not_a_winner(
    make_experiment: Factory,
) -> None:
    w = ab(make_experiment, {"v1": conv(2000), "v2": {}})
    assert "reward conversion for v2 is not available" in w.message
    assert (w.winner_found, w.winner) == (False, None)


def test_no_reward_metric_means_no_winner(make_experiment: Factory) -> None:
    e = make_experiment(
        "A/B", objectives=ERRORS, rewards=CONVERSION, data={"error-rate": {"baseline": GOOD}}
    )
    criteria = dataclasses.replace(e.spec.criteria, rewards=())
    spec = dataclasses.replace(e.spec, criteria=criteria)
    w = assess_winner(spec, assess_versions(spec, {}), {})
    assert (w.winner_found, w.message) == (False, "no reward metric in experiment")


# --- the pairwise stopping rule ------------------------------------------------------------


def _counts(events: list[float], trials: list[float]) -> RewardArrays:
    e, n = np.array([events], dtype=float), np.array([trials], dtype=float)
    return RewardArrays(True, e, n, np.zeros_like(n), n > 0)


def test_the_threshold_is_log_k_over_alpha() -> None:
    assert threshold(2, 0.05) == pytest.approx(math.log(40))
    assert threshold(4, 0.05) == pytest.approx(math.log(80))


def test_pairwise_evidence_is_the_glr_less_each_mixtures_regret() -> None:
    """S_ij = GLR_ij - r_i - r_j, with r = l(mle) - log m (the mixture's regret)."""
    k, n = np.array([2600.0, 2000.0]), np.array([20000.0, 20000.0])
    s = pairwise_evidence(_counts(k.tolist(), n.tolist()), True, 0.05)[0]
    p = k / n
    pooled = k.sum() / n.sum()

    def kl(a: float, b: float) -> float:
        return float(a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b)))

    glr = n[0] * kl(p[0], pooled) + n[1] * kl(p[1], pooled)
    mle = k * np.log(p) + (n - k) * np.log1p(-p)
    regret = mle - sequential.log_marginal(k, n)
    assert s[0, 1] == pytest.approx(glr - regret.sum(), rel=1e-9)
    assert s[1, 0] == pytest.approx(-regret.sum(), rel=1e-9)  # v2 trails: no evidence
    assert np.isinf(s[0, 0]) and s[0, 0] < 0


def test_the_stopping_rule_keeps_its_error_rate_on_a_tie_checked_every_step() -> None:
    """Two equal versions, 1,000 looks: naming either one is an error (a tie is the
    hardest case for the rule). Stopping must happen in at most alpha of the runs."""
    rng = np.random.default_rng(7)
    r, looks, per_look = 1000, 1000, 50
    events = np.zeros((r, 2))
    trials = np.zeros((r, 2))
    stopped = np.zeros(r, dtype=bool)
    ok = np.ones((r, 2), dtype=bool)
    for _ in range(looks):
        trials += per_look
        events += rng.binomial(per_look, 0.1, size=(r, 2))
        arrays = RewardArrays(True, events, trials, np.zeros_like(trials), trials > 0)
        stopped |= reward_winner(arrays, True, 0.05, ok, ok).winner >= 0
    assert stopped.mean() <= 0.05


def test_a_gaussian_reward_follows_the_same_rule() -> None:
    n = np.array([[5000.0, 5000.0]])
    mean = np.array([[1.0, 1.05]])
    total = n * mean
    squares = n * (mean**2 + 0.25)
    arrays = RewardArrays(False, n, total, squares, n > 0)
    ok = np.ones((1, 2), dtype=bool)
    assert reward_winner(arrays, True, 0.05, ok, ok).winner.tolist() == [1]
    assert reward_winner(arrays, False, 0.05, ok, ok).winner.tolist() == [0]
    few = RewardArrays(False, n / 500, total / 500, squares / 500, n > 0)  # 10 observations
    assert reward_winner(few, True, 0.05, ok, ok).winner.tolist() == [-1]


# --- The windowed pairwise tests (status.rewardTests) --------------------------------------


def _pair_tests(
    rng: np.random.Generator, rates: dict[str, float], windows: int
) -> dict[tuple[str, str], Any]:
    from analytics.conditional import PairTest

    names = list(rates)
    tests = {(a, b): PairTest() for i, a in enumerate(names) for b in names[i + 1 :]}
    for t in range(1, windows + 1):
        served = {n: int(rng.poisson(500)) for n in names}
        got = {n: int(rng.binomial(served[n], rates[n])) for n in names}
        tests = {
            (a, b): test.fold(t, got[a], served[a], got[b], served[b])
            for (a, b), test in tests.items()
        }
    return tests


def test_the_windowed_tests_judge_the_reward_when_every_pair_has_one(
    make_experiment: Factory,
) -> None:
    # The same cumulative counts, too close for the cumulative statistic; the windows say
    # v3 leads clearly (10% vs 13%), and the rule names it from them.
    rates = {"v1": 0.10, "v2": 0.10, "v3": 0.13}
    tests = _pair_tests(np.random.default_rng(7), rates, 60)
    e = make_experiment(
        "A/B/n",
        baseline="v1",
        candidates=["v2", "v3"],
        objectives=ERRORS,
        rewards=CONVERSION,
        data={
            "conversion": {n: conv(2000) for n in rates},
            "error-rate": {n: GOOD for n in rates},
        },
    )
    spec, measurements = e.spec, e.status.measurements
    assessments = assess_versions(spec, measurements)
    cumulative = assess_winner(spec, assessments, measurements)
    assert not cumulative.winner_found
    assert cumulative.message.endswith("(cumulative counts, no per-iteration history)")
    windowed = assess_winner(spec, assessments, measurements, tests)
    assert (windowed.winner_found, windowed.winner) == (True, "v3"), windowed.message
    assert windowed.message.endswith("(windowed pairwise tests)")
    # A pair without a test (a version added since): the cumulative statistic, said so.
    partial = {pair: t for pair, t in tests.items() if pair != ("v2", "v3")}
    fallback = assess_winner(spec, assessments, measurements, partial)
    assert not fallback.winner_found and "cumulative counts" in fallback.message
