"""Winner assessment per testing pattern, with a message naming metrics and versions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from analytics.assessment import assess_versions
from analytics.model import Experiment
from analytics.winner import WinnerAssessment, assess_winner

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
    assert w.message == "not yet conclusive on conversion: v1, v2 could still be best"


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
