"""analytics.batch gives exactly what analytics.analysis.analyze gives, replicate by replicate.

Both run the same array functions, `analyze` with one replicate and `batch` with several, so
this guards that R = 1 and R > 1 agree (and that `batch` wires the functions as `analyze`
does).

Random experiments (every testing and deployment pattern, absolute and relative objectives
on counts, histograms and moments, count and mean rewards in both directions) and random
measurements (with versions that have no data yet) go through both; every verdict,
winner, weight and recommendation must agree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats

from analytics import analysis, batch, model
from analytics.measurements import Counts, Histogram, Measurement, Moments
from analytics.model import (
    Criteria,
    DeploymentPattern,
    Direction,
    Duration,
    Experiment,
    ExperimentSpec,
    ExperimentStatus,
    Objective,
    Reward,
    Strategy,
    Version,
    VersionInfo,
    Weights,
)

BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
TOTAL_ITERATIONS = 6


@dataclass(frozen=True)
class Case:
    spec: ExperimentSpec
    measurements: dict[str, batch.Measurement]
    current: np.ndarray | None
    completed: int


def _objectives(rng: np.random.Generator) -> tuple[Objective, ...]:
    pool = [
        Objective(
            "errors",
            upper_limit=float(rng.choice([0.01, 0.02, 0.05])) if rng.random() < 0.7 else None,
            max_ratio=1.5 if rng.random() < 0.5 else None,
            max_increase=0.005 if rng.random() < 0.3 else None,
            rollback_on_failure=[None, True, False][int(rng.integers(3))],
        ),
        Objective(
            "latency",
            upper_limit=0.25,
            quantile=0.95,
            max_ratio=1.5 if rng.random() < 0.5 else None,
        ),
        Objective(
            "mean-latency",
            upper_limit=0.13 if rng.random() < 0.6 else None,
            lower_limit=0.09 if rng.random() < 0.4 else None,
            max_increase=0.01 if rng.random() < 0.4 else None,
        ),
        Objective("success", lower_limit=0.97),
    ]
    chosen = rng.choice(len(pool), size=int(rng.integers(1, 4)), replace=False)
    return tuple(pool[i] for i in sorted(chosen))


def _spec(rng: np.random.Generator) -> ExperimentSpec:
    pattern = [
        model.TestingPattern.CANARY,
        model.TestingPattern.AB,
        model.TestingPattern.ABN,
        model.TestingPattern.CONFORMANCE,
    ][int(rng.integers(4))]
    k = {
        model.TestingPattern.CONFORMANCE: 1,
        model.TestingPattern.ABN: int(rng.integers(2, 5)),
    }.get(pattern, 2)
    deployment = [
        DeploymentPattern.PROGRESSIVE,
        DeploymentPattern.PROGRESSIVE,
        DeploymentPattern.FIXED_SPLIT,
        DeploymentPattern.BLUE_GREEN,
    ][int(rng.integers(4))]
    rewards: tuple[Reward, ...] = ()
    if pattern in (model.TestingPattern.AB, model.TestingPattern.ABN):
        metric = "conversion" if rng.random() < 0.7 else "revenue"
        rewards = (Reward(metric, Direction.HIGH if rng.random() < 0.7 else Direction.LOW),)
    weights = Weights(int(rng.choice([50, 100])), int(rng.choice([5, 10, 30])))
    return ExperimentSpec(
        target="ns/model",
        strategy=Strategy(pattern, deployment, weights),
        criteria=Criteria(_objectives(rng), rewards, alpha=float(rng.choice([0.05, 0.1]))),
        duration=Duration(10, TOTAL_ITERATIONS, 1),
        version_info=VersionInfo(Version("v0"), tuple(Version(f"v{i}") for i in range(1, k))),
    )


def _trials(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.choice([0.0, 25.0, 400.0, 6000.0, 120000.0], size=shape, p=[0.1, 0.2, 0.2, 0.3, 0.2])


def _case(rng: np.random.Generator, replicates: int) -> Case:
    spec = _spec(rng)
    assert spec.version_info is not None
    k = len(spec.version_info.names)
    shape = (replicates, k)
    measurements: dict[str, batch.Measurement] = {}
    n = _trials(rng, shape)
    measurements["errors"] = batch.Counts(
        rng.binomial(n.astype(np.int64), 0.01 * rng.choice([0.5, 1, 1.5, 3], size=shape)).astype(
            float
        ),
        n,
    )
    n = _trials(rng, shape)
    measurements["success"] = batch.Counts(
        rng.binomial(n.astype(np.int64), rng.choice([0.95, 0.97, 0.99], size=shape)).astype(float),
        n,
    )
    n = _trials(rng, shape)
    medians = rng.choice([0.08, 0.1, 0.13], size=shape)
    cdf = stats.lognorm.cdf(np.array(BOUNDS)[None, None, :], s=0.5, scale=medians[..., None])
    probs = np.diff(np.concatenate([np.zeros((*shape, 1)), cdf], axis=-1), axis=-1)
    probs = probs / probs.sum(axis=-1, keepdims=True)
    counts = np.stack(
        [
            np.stack([rng.multinomial(int(n[r, v]), probs[r, v]) for v in range(k)])
            for r in range(replicates)
        ]
    )
    measurements["latency"] = batch.Histogram(BOUNDS, np.cumsum(counts, axis=-1).astype(float))
    count = rng.choice([0.0, 12.0, 45.0, 800.0, 30000.0], size=shape)
    mean = rng.choice([0.095, 0.11, 0.125, 0.14], size=shape) + rng.normal(0, 0.003, shape)
    sd = 0.05
    measurements["mean-latency"] = batch.Moments(
        count, count * mean, count * (mean**2 + sd**2) * rng.uniform(0.9, 1.1, shape)
    )
    n = _trials(rng, shape)
    measurements["conversion"] = batch.Counts(
        rng.binomial(n.astype(np.int64), rng.choice([0.1, 0.103, 0.11, 0.13], size=shape)).astype(
            float
        ),
        n,
    )
    count = rng.choice([0.0, 20.0, 500.0, 40000.0], size=shape)
    mean = rng.choice([1.0, 1.02, 1.1], size=shape)
    measurements["revenue"] = batch.Moments(count, count * mean, count * (mean**2 + 0.25))
    current = None
    if rng.random() < 0.7:
        raw = rng.dirichlet(np.ones(k), size=replicates) * 100
        current = np.asarray(
            np.stack([np.bincount(np.arange(k), weights=row, minlength=k) for row in raw])
        )
        current = np.floor(current)
        current[:, 0] += 100 - current.sum(axis=1)
    return Case(spec, measurements, current, int(rng.integers(0, TOTAL_ITERATIONS)))


def _scalar(m: batch.Measurement, r: int, v: int) -> Measurement:
    if isinstance(m, batch.Counts):
        return Counts(float(m.events[r, v]), float(m.trials[r, v]))
    if isinstance(m, batch.Moments):
        return Moments(float(m.count[r, v]), float(m.total[r, v]), float(m.sum_of_squares[r, v]))
    return Histogram(m.bounds, tuple(float(c) for c in m.cumulative[r, v]))


def _experiment(case: Case, r: int) -> Experiment:
    assert case.spec.version_info is not None
    names = case.spec.version_info.names
    measurements = {
        metric: {name: _scalar(m, r, v) for v, name in enumerate(names)}
        for metric, m in case.measurements.items()
    }
    current = (
        {}
        if case.current is None
        else {name: int(case.current[r, v]) for v, name in enumerate(names)}
    )
    status = ExperimentStatus(case.completed, current, measurements)
    return Experiment("arbiter.dev/v1alpha1", "e", "ns", case.spec, status)


ACTIONS = {analysis.Action.CONTINUE: 0, analysis.Action.PROMOTE: 1, analysis.Action.ROLLBACK: 2}


def _check(case: Case, got: batch.BatchAnalysis, r: int, seed: int) -> None:
    want = analysis.analyze(_experiment(case, r), np.random.default_rng(seed), n_samples=200)
    _check_against(case, got, r, want)


def _check_against(case: Case, got: batch.BatchAnalysis, r: int, want: analysis.Analysis) -> None:
    assert case.spec.version_info is not None
    names = case.spec.version_info.names
    for v, name in enumerate(names):
        for i, item in enumerate(want.version_assessments[name]):
            assert batch.VERDICTS[got.verdict[r, v, i]] is item.verdict, (r, name, item.message)
            assert bool(got.conclusive[r, v, i]) is item.conclusive
    winner = want.winner
    expected_winner = names.index(winner.winner) if winner.winner_found and winner.winner else -1
    assert got.winner[r] == expected_winner, winner.message
    assert bool(got.winner_conclusive[r]) is winner.conclusive
    if want.weights is None:
        assert got.weights is None
    else:
        assert got.weights is not None
        assert got.weights[r].tolist() == [want.weights[n] for n in names]
    rec = want.recommendation
    assert got.action[r] == ACTIONS[rec.action]
    assert got.version[r] == (names.index(rec.version) if rec.version else -1)
    assert batch.RULES[got.rule[r]] == rec.rule
    assert names[got.recommended[r]] == want.version_recommended_for_promotion


@pytest.mark.parametrize("case_seed", range(60))
def test_batch_equals_analyze_replicate_by_replicate(case_seed: int) -> None:
    rng = np.random.default_rng(case_seed)
    replicates = 6
    case = _case(rng, replicates)
    seeds = [1000 * case_seed + r for r in range(replicates)]
    got = batch.analyze(
        case.spec,
        case.measurements,
        case.completed,
        [np.random.default_rng(s) for s in seeds],
        case.current,
        n_samples=200,
    )
    for r in range(replicates):
        _check(case, got, r, seeds[r])


def test_the_cases_cover_every_outcome() -> None:
    """The random cases above are only worth something if they reach every branch."""
    verdicts, actions, rules, winners = set(), set(), set(), set()
    for case_seed in range(60):
        case = _case(np.random.default_rng(case_seed), 6)
        got = batch.analyze(
            case.spec,
            case.measurements,
            case.completed,
            np.random.default_rng(0),
            case.current,
            200,
        )
        verdicts |= set(got.verdict.ravel().tolist())
        actions |= set(got.action.tolist())
        rules |= set(got.rule.tolist())
        winners |= {(case.spec.strategy.testing_pattern, w >= 0) for w in got.winner.tolist()}
    assert verdicts == {batch.UNDECIDED, batch.SATISFIED, batch.VIOLATED}
    assert actions == {batch.CONTINUE, batch.PROMOTE, batch.ROLLBACK}
    assert rules == set(range(len(batch.RULES)))
    assert len(winners) == 8  # every pattern, with and without a winner


def test_one_generator_for_all_replicates_changes_nothing() -> None:
    """No decision is random any more (A/B/n weights come from the deterministic top-two
    rule), so one Generator for all replicates gives what one per replicate gives."""
    for case_seed in range(60):
        case = _case(np.random.default_rng(case_seed), 6)
        seeds = [np.random.default_rng(s) for s in range(6)]
        each = batch.analyze(case.spec, case.measurements, case.completed, seeds, case.current)
        one = batch.analyze(
            case.spec, case.measurements, case.completed, np.random.default_rng(1), case.current
        )
        for name in ("verdict", "winner", "winner_conclusive", "action", "version", "rule"):
            np.testing.assert_array_equal(getattr(each, name), getattr(one, name))
        if each.weights is None or one.weights is None:
            assert each.weights is one.weights
        else:
            np.testing.assert_array_equal(each.weights, one.weights)


def test_shapes_are_checked() -> None:
    rng = np.random.default_rng(0)
    case = _case(rng, 3)
    with pytest.raises(ValueError, match="shape"):
        batch.analyze(case.spec, case.measurements, 0, rng, np.full((4, 9), 10.0))
    with pytest.raises(ValueError, match="Generator per replicate"):
        batch.analyze(case.spec, case.measurements, 0, [rng], case.current)


@pytest.mark.parametrize("case_seed", range(20))
def test_the_windowed_pairwise_tests_decide_alike_in_batch_and_in_analyze(case_seed: int) -> None:
    """With the first reward's windows folded in (status.rewardTests in `assess`,
    `batch.PairSums` in the benchmark), both paths still agree replicate by replicate."""
    from analytics.conditional import PairTest

    rng = np.random.default_rng(7000 + case_seed)
    case = _case(rng, 4)
    while not case.spec.criteria.rewards or case.spec.criteria.rewards[0].metric != "conversion":
        case = _case(rng, 4)
    assert case.spec.version_info is not None
    names = case.spec.version_info.names
    k = len(names)
    sums = batch.PairSums.start((4, k))
    tests = [
        {(a, b): PairTest() for i, a in enumerate(names) for b in names[i + 1 :]} for _ in range(4)
    ]
    rates = rng.choice([0.1, 0.103, 0.11, 0.13], size=(4, k))
    for window in range(1, int(rng.integers(1, 80)) + 1):
        served = rng.poisson(rng.choice([0.0, 30.0, 500.0, 3000.0]), size=(4, k)).astype(float)
        got = rng.binomial(served.astype(np.int64), rates).astype(float)
        sums.fold(got, served)
        for r in range(4):
            tests[r] = {
                (a, b): t.fold(
                    window,
                    got[r, names.index(a)],
                    served[r, names.index(a)],
                    got[r, names.index(b)],
                    served[r, names.index(b)],
                )
                for (a, b), t in tests[r].items()
            }
    seeds = [50 + r for r in range(4)]
    result = batch.analyze(
        case.spec,
        case.measurements,
        case.completed,
        [np.random.default_rng(s) for s in seeds],
        case.current,
        n_samples=200,
        pair_sums=sums,
    )
    for r in range(4):
        experiment = _experiment(case, r)
        status = dataclasses.replace(experiment.status, reward_tests={"conversion": tests[r]})
        want = analysis.analyze(
            dataclasses.replace(experiment, status=status),
            np.random.default_rng(seeds[r]),
            n_samples=200,
        )
        assert want.winner.winner_found is bool(result.winner[r] >= 0), want.winner.message
        if want.winner.winner_found:
            assert "(windowed pairwise tests)" in want.winner.message
        _check_against(case, result, r, want)
