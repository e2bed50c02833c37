"""The array cores with a leading replicate axis give, replicate by replicate, what their
one-experiment callers get with R = 1: so `analytics.batch` needs no copy of them."""

from __future__ import annotations

import numpy as np
import pytest

from analytics import allocation, analysis, assessment, bayes, evidence, model
from analytics.measurements import Counts, Moments


def _counts(rng: np.random.Generator, shape: tuple[int, int]) -> evidence.Arrays:
    trials = rng.choice([0.0, 30.0, 2000.0, 90000.0], size=shape)
    events = rng.binomial(trials.astype(np.int64), 0.02).astype(np.float64)
    return evidence.Arrays(True, events, trials, np.zeros(shape), trials > 0, 0.01)


def _means(rng: np.random.Generator, shape: tuple[int, int]) -> evidence.Arrays:
    count = rng.choice([0.0, 10.0, 500.0, 40000.0], size=shape)
    mean = rng.uniform(0.08, 0.14, size=shape)
    squares = count * (mean**2 + 0.05**2)
    return evidence.Arrays(False, count, count * mean, squares, count > 0)


def _quantity(x: evidence.Arrays, r: int, v: int) -> evidence.Quantity:
    a, b = float(x.a[r, v]), float(x.b[r, v])
    if x.is_counts:
        return evidence.quantity(Counts(a, b), scale=x.scale)
    return evidence.quantity(Moments(a, b, float(x.sum_of_squares[r, v])))


@pytest.mark.parametrize("make", [_counts, _means])
def test_posteriors_on_arrays_are_the_scalar_posteriors(
    make: object, rng: np.random.Generator
) -> None:
    assert callable(make)
    x: evidence.Arrays = make(rng, (7, 3))
    mean, variance = bayes.moments(x)
    limit = 0.11 if not x.is_counts else 0.02
    below = bayes.prob_below(x, limit)
    within = allocation.condition_probability(x, assessment.Condition("ratio", 1.5, ""))
    for r in range(7):
        for v in range(3):
            q = _quantity(x, r, v)
            one = bayes.mean_and_variance(q)
            assert (one is None) is not bool(x.present[r, v])
            if one is not None:
                assert one == (mean[r, v], variance[r, v])
            assert bayes.prob_at_most(q, limit) == below[r, v]
            base = bayes.mean_and_variance(_quantity(x, r, 0))
            want = (
                0.5 if one is None or base is None else bayes.prob_within(one, base, "ratio", 1.5)
            )
            assert float(want) == within[r, v]


def test_stacking_one_replicate_gives_its_row(rng: np.random.Generator) -> None:
    x = _counts(rng, (5, 4))
    for r in range(5):
        one = evidence.stack([_quantity(x, r, v) for v in range(4)])
        np.testing.assert_array_equal(one.present, x.present[r : r + 1])
        np.testing.assert_array_equal(one.estimate, x.estimate[r : r + 1])
        lo, hi = one.bounds(0.05)
        all_lo, all_hi = x.bounds(0.05)
        np.testing.assert_array_equal(lo, all_lo[r : r + 1])
        np.testing.assert_array_equal(hi, all_hi[r : r + 1])


def test_judging_replicates_together_is_judging_each(rng: np.random.Generator) -> None:
    x = _counts(rng, (9, 3))
    conditions = [
        assessment.Condition("upper", 0.025, ""),
        assessment.Condition("ratio", 1.5, ""),
        assessment.Condition("increase", 0.005, ""),
    ]
    alphas = assessment.levels(0.05, 1, 3, 3)
    lower, upper = x.bounds(alphas[:, None, :])
    together = assessment.judge(conditions, lower, upper, x.present, 0.05, alphas[0, -1])
    codes = assessment.combine_verdicts(together, (9, 3))
    assert set(codes.ravel().tolist()) >= {assessment.SATISFIED, assessment.UNDECIDED}
    for r in range(9):
        row = slice(r, r + 1)
        alone = assessment.judge(
            conditions, lower[:, row], upper[:, row], x.present[row], 0.05, alphas[0, -1]
        )
        for a, b in zip(together, alone, strict=True):
            np.testing.assert_array_equal(a.violated[row], b.violated)
            np.testing.assert_array_equal(a.satisfied[row], b.satisfied)
        np.testing.assert_array_equal(codes[row], assessment.combine_verdicts(alone, (1, 3)))


def test_the_rules_on_replicates_are_the_rules_on_each() -> None:
    # Replicates: a failing candidate, a conclusive winner, nothing yet, a baseline winner.
    may = np.zeros((4, 2, 1), dtype=np.bool_)
    may[0, 1, 0] = True
    winner = np.array([-1, 1, -1, 0])
    conclusive = np.array([False, True, False, True])
    for last in (False, True):
        together = analysis.decide(model.TestingPattern.CANARY, may, winner, conclusive, last)
        for r in range(4):
            alone = analysis.decide(
                model.TestingPattern.CANARY,
                may[r : r + 1],
                winner[r : r + 1],
                conclusive[r : r + 1],
                last,
            )
            assert [int(a[r]) for a in together] == [int(a[0]) for a in alone]
    action, version, rule = analysis.decide(
        model.TestingPattern.CANARY, may, winner, conclusive, False
    )
    assert [analysis.RULES[i] for i in rule] == [
        "objective-violated",
        "winner-conclusive",
        "collecting-evidence",
        "winner-conclusive",
    ]
    assert action.tolist() == [
        analysis.ROLLBACK,
        analysis.PROMOTE,
        analysis.CONTINUE,
        analysis.ROLLBACK,
    ]
    assert version.tolist() == [0, 1, -1, 0]
