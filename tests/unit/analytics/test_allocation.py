"""Traffic weights: integer percentages summing to 100, within both caps, per deployment."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest

from analytics import allocation, evidence, split
from analytics.assessment import assess_versions
from analytics.model import Experiment
from analytics.winner import RewardArrays, assess_winner

Factory = Callable[..., Experiment]
ERRORS = [{"metric": "error-rate", "upperLimit": 0.01}]
CONVERSION = [{"metric": "conversion", "preferredDirection": "High"}]
GOOD = {"events": 10, "trials": 100_000}
BAD = {"events": 3000, "trials": 100_000}
POINT_OK = {"value": 0.001}


def next_weights(
    experiment: Experiment, rng: np.random.Generator, current: Mapping[str, int] | None = None
) -> dict[str, int] | None:
    """What `analysis.analyze` computes before a promote/rollback overrides it."""
    spec, measurements = experiment.spec, experiment.status.measurements
    assessments = assess_versions(spec, measurements)
    winner = assess_winner(spec, assessments, measurements)
    rewards: dict[str, evidence.Quantity] = {}
    if spec.criteria.rewards and spec.version_info is not None:
        by_version = measurements.get(spec.criteria.rewards[0].metric, {})
        rewards = {n: evidence.quantity(by_version.get(n)) for n in spec.version_info.names}
    now = experiment.status.current_weights if current is None else current
    return allocation.next_weights(spec, now, assessments, winner, rewards, rng)


# --- to_percentages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([1, 1, 1], [34, 33, 33]),
        ([0, 0, 0], [34, 33, 33]),  # nothing to go on: uniform
        ([80, 20], [80, 20]),
        ([0.2, 0.8], [20, 80]),
        ([1, 2, 3, 4, 5, 6, 7], [4, 7, 11, 14, 18, 21, 25]),  # largest remainders first
        ([99.5, 0.5], [100, 0]),  # ties in the remainder go to the earlier version
        ([0.5, 99.5], [1, 99]),
        ([1], [100]),
    ],
)
def test_to_percentages(weights: list[float], expected: list[int]) -> None:
    result = allocation.to_percentages(weights)
    assert result.tolist() == expected
    assert result.dtype.kind == "i"
    # start's numpy-free copy of the rounding gives the same split.
    assert split.percentages(weights) == expected


def test_to_percentages_rounds_a_batch_in_one_call(rng: np.random.Generator) -> None:
    batch = rng.dirichlet(np.ones(5), size=(40, 3))
    result = allocation.to_percentages(batch)
    assert result.shape == (40, 3, 5)
    assert np.all(result.sum(axis=-1) == 100)
    assert np.all(np.abs(result - 100 * batch) < 1.0)
    for index in np.ndindex(40, 3):
        assert result[index].tolist() == allocation.to_percentages(batch[index]).tolist()


def test_to_percentages_takes_another_total() -> None:
    assert allocation.to_percentages([1, 1, 1], total=10).tolist() == [4, 3, 3]


# --- apply_caps ----------------------------------------------------------------------------


def test_each_candidate_rises_by_at_most_the_increment() -> None:
    assert allocation.apply_caps([0, 100], [90, 10], 100, 10).tolist() == [80.0, 20.0]
    assert allocation.apply_caps([0, 50, 50], [100, 0, 0], 100, 10).tolist() == [80.0, 10, 10]


def test_candidates_together_hold_at_most_max_candidate_weight() -> None:
    assert allocation.apply_caps([0, 50, 50], [80, 10, 10], 30, 10).tolist() == [70, 15, 15]
    assert allocation.apply_caps([0, 100], [50, 50], 40, 10).tolist() == [60.0, 40.0]


def test_decreases_are_never_capped() -> None:
    assert allocation.apply_caps([100, 0], [20, 80], 100, 10).tolist() == [100.0, 0.0]


def test_apply_caps_normalises_the_target_and_batches() -> None:
    target = np.array([[1.0, 1.0], [0.0, 3.0]])
    current = np.array([[100.0, 0.0], [50.0, 50.0]])
    assert allocation.apply_caps(target, current, 100, 5).tolist() == [[95, 5], [45, 55]]


# --- top-two shares ------------------------------------------------------------------------


def _conversions(events: list[float], trials: list[float]) -> RewardArrays:
    e, n = np.array([events], dtype=float), np.array([trials], dtype=float)
    return RewardArrays(True, e, n, np.zeros_like(n), n > 0)


def test_the_leader_gets_half_and_the_closest_challenger_most_of_the_rest() -> None:
    reward = _conversions([2000, 2300, 2600, 2550], [20000] * 4)
    running = np.ones((1, 4), dtype=bool)
    shares = allocation.top_two_shares(reward, True, 0.05, running)[0]
    assert shares.sum() == pytest.approx(1.0)
    assert shares[2] == pytest.approx(0.5)  # v3 leads
    assert shares[3] > 0.45  # v4 is within reach of v3; v1 and v2 are far behind
    assert shares[0] < 1e-6 and shares[1] < 1e-3


def test_a_version_out_of_the_running_gets_nothing_and_one_without_data_is_challenged() -> None:
    reward = _conversions([2000, 0, 2600, 4000], [20000, 0, 20000, 20000])
    running = np.array([[True, True, True, False]])
    shares = allocation.top_two_shares(reward, True, 0.05, running)[0]
    assert shares[3] == 0.0
    assert shares[2] == pytest.approx(0.5)
    assert shares[1] == pytest.approx(0.5)  # no data: no evidence against it yet


def test_the_shares_move_continuously_as_the_leader_becomes_certain() -> None:
    """The old P(best)-based rule jumped from 1/2 to all traffic at P(best) = 1."""
    running = np.ones((1, 2), dtype=bool)
    previous = None
    for events in np.linspace(2000, 3000, 201):
        shares = allocation.top_two_shares(
            _conversions([2000, float(events)], [20000, 20000]), True, 0.05, running
        )[0]
        if previous is not None and events > 2001:
            assert np.abs(shares - previous).max() < 0.05
        previous = shares


def test_the_same_code_serves_one_replicate_or_many() -> None:
    rng = np.random.default_rng(3)
    n = rng.integers(1000, 50000, size=(50, 3)).astype(float)
    e = rng.binomial(n.astype(int), 0.1).astype(float)
    running = rng.random((50, 3)) < 0.9
    batch = allocation.top_two_shares(
        RewardArrays(True, e, n, np.zeros_like(n), n > 0), True, 0.05, running
    )
    for r in range(50):
        one = allocation.top_two_shares(
            RewardArrays(True, e[r : r + 1], n[r : r + 1], np.zeros((1, 3)), n[r : r + 1] > 0),
            True,
            0.05,
            running[r : r + 1],
        )
        np.testing.assert_array_equal(batch[r], one[0])


# --- initial weights -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "deployment", "candidates", "weights", "expected"),
    [
        ("Canary", "Progressive", ["c"], None, [90, 10]),
        ("Canary", "Progressive", ["c"], {"maxCandidateWeightIncrement": 5}, [95, 5]),
        ("Canary", "Progressive", ["c"], {"maxCandidateWeight": 3}, [97, 3]),
        ("A/B/n", "Progressive", ["c1", "c2"], None, [90, 5, 5]),
        ("Canary", "BlueGreen", ["c"], None, [100, 0]),
        ("A/B/n", "FixedSplit", ["c1", "c2"], None, [34, 33, 33]),
    ],
)
def test_initial_weights(
    make_experiment: Factory,
    pattern: str,
    deployment: str,
    candidates: list[str],
    weights: dict[str, int] | None,
    expected: list[int],
) -> None:
    rewards = CONVERSION if pattern.startswith("A/B") else []
    e = make_experiment(
        pattern, deployment=deployment, candidates=candidates, rewards=rewards, weights=weights
    )
    initial = split.initial_weights(e.spec)
    assert initial is not None
    assert list(initial.values()) == expected
    assert list(initial) == ["baseline", *candidates]


def test_conformance_has_no_weights(make_experiment: Factory, rng: np.random.Generator) -> None:
    e = make_experiment("Conformance", objectives=ERRORS, data={"error-rate": {"baseline": GOOD}})
    assert split.initial_weights(e.spec) is None
    assert next_weights(e, rng) is None


# --- next weights per deployment pattern ---------------------------------------------------


def canary(make_experiment: Factory, candidate: dict[str, Any], **kw: Any) -> Experiment:
    data = {"error-rate": {"baseline": GOOD, "candidate": candidate}}
    return make_experiment("Canary", objectives=ERRORS, data=data, **kw)


def test_progressive_first_step_is_the_increment(
    make_experiment: Factory, rng: np.random.Generator
) -> None:
    e = canary(make_experiment, POINT_OK, current={"baseline": 100, "candidate": 0})
    assert next_weights(e, rng) == {"baseline": 90, "candidate": 10}


def test_progressive_ramps_by_the_increment_up_to_max_candidate_weight(
    make_experiment: Factory, rng: np.random.Generator
) -> None:
    weights = {"maxCandidateWeight": 45, "maxCandidateWeightIncrement": 20}
    e = canary(make_experiment, POINT_OK, weights=weights)
    current = {"baseline": 100, "candidate": 0}
    seen = []
    for _ in range(4):
        result = next_weights(e, rng, current)
        assert result is not None
        seen.append(result["candidate"])
        current = result
    assert seen == [20, 40, 45, 45]


def test_progressive_pulls_a_failing_candidate_back_at_once(
    make_experiment: Factory, rng: np.random.Generator
) -> None:
    e = canary(make_experiment, BAD, current={"baseline": 30, "candidate": 70})
    assert next_weights(e, rng) == {"baseline": 100, "candidate": 0}


def test_an_undecided_candidate_moves_part_way(
    make_experiment: Factory, rng: np.random.Generator
) -> None:
    # The target is maxCandidateWeight x P(candidate satisfies every objective).
    e = canary(
        make_experiment, {"events": 1, "trials": 100}, current={"baseline": 50, "candidate": 50}
    )
    result = next_weights(e, rng)
    assert result is not None
    assert 0 < result["candidate"] < 60


def test_fixed_split_never_changes(make_experiment: Factory, rng: np.random.Generator) -> None:
    for candidate in (GOOD, BAD, {}):
        e = canary(
            make_experiment,
            candidate,
            deployment="FixedSplit",
            current={"baseline": 73, "candidate": 27},
        )
        assert next_weights(e, rng) == {"baseline": 73, "candidate": 27}


def test_fixed_split_without_current_weights_keeps_the_initial_split(
    make_experiment: Factory, rng: np.random.Generator
) -> None:
    e = canary(make_experiment, GOOD, deployment="FixedSplit")
    assert next_weights(e, rng) == split.initial_weights(e.spec)


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ({"events": 1, "trials": 100}, 0),  # not yet validated
        (POINT_OK, 0),  # satisfied by a plain comparison only: not validated
        (BAD, 0),
        (GOOD, 100),  # conclusively validated: all traffic flips at once
    ],
)
def test_blue_green_is_zero_until_validated_then_one_hundred(
    make_experiment: Factory, rng: np.random.Generator, candidate: dict[str, Any], expected: int
) -> None:
    e = canary(
        make_experiment,
        candidate,
        deployment="BlueGreen",
        current={"baseline": 100, "candidate": 0},
    )
    assert next_weights(e, rng) == {"baseline": 100 - expected, "candidate": expected}


def abn(make_experiment: Factory, **kw: Any) -> Experiment:
    conversion = {
        "v1": {"events": 2000, "trials": 20_000},
        "v2": {"events": 2050, "trials": 20_000},
        "v3": {"events": 2100, "trials": 20_000},
        "v4": {"events": 2600, "trials": 20_000},
    }
    errors = {"v1": GOOD, "v2": GOOD, "v3": GOOD, "v4": BAD}
    return make_experiment(
        "A/B/n",
        baseline="v1",
        candidates=["v2", "v3", "v4"],
        objectives=ERRORS,
        rewards=CONVERSION,
        data={"conversion": conversion, "error-rate": errors},
        **kw,
    )


def test_abn_follows_the_evidence(make_experiment: Factory, rng: np.random.Generator) -> None:
    current = {"v1": 40, "v2": 20, "v3": 20, "v4": 20}
    e = abn(make_experiment, weights={"maxCandidateWeightIncrement": 100}, current=current)
    result = next_weights(e, rng)
    assert result is not None
    assert sum(result.values()) == 100
    assert result["v4"] == 0  # out of the running: it violates the error objective
    assert result["v3"] > result["v2"] > result["v1"]  # in reward order


def test_abn_stays_within_both_caps(make_experiment: Factory, rng: np.random.Generator) -> None:
    current = {"v1": 40, "v2": 20, "v3": 20, "v4": 20}
    e = abn(make_experiment, weights={"maxCandidateWeight": 50}, current=current)
    # Both leaders want more than +10; that gives 30 + 30, then 50 between them.
    assert next_weights(e, rng) == {"v1": 50, "v2": 25, "v3": 25, "v4": 0}


def test_weights_are_deterministic_for_a_seed(make_experiment: Factory) -> None:
    e = abn(make_experiment, current={"v1": 40, "v2": 20, "v3": 20, "v4": 20})
    runs = [next_weights(e, np.random.default_rng(7)) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
