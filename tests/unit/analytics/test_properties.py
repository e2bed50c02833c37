"""Invariants that must hold for any experiment, seed and data (hypothesis).

- Weights are integers summing to exactly 100 and honour maxCandidateWeightIncrement per
  candidate and maxCandidateWeight for all candidates together.
- More failures never improve a version's verdict.
- A version's assessment does not depend on the order of the candidates nor of the
  measurements.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from analytics import allocation, evidence
from analytics.analysis import analyze
from analytics.assessment import ObjectiveAssessment, Verdict, assess_versions
from analytics.model import Experiment
from analytics.parse import parse_experiment
from analytics.recommendation import Action
from analytics.split import initial_weights, percentages
from analytics.winner import assess_winner

PROPERTY = settings(max_examples=100, deadline=None)
RANK = {Verdict.VIOLATED: 0, Verdict.UNDECIDED: 1, Verdict.SATISFIED: 2}


def document(
    pattern: str,
    names: list[str],
    objectives: list[dict[str, Any]],
    data: Mapping[str, Mapping[str, Any]],
    *,
    rewards: list[dict[str, Any]] | None = None,
    weights: dict[str, int] | None = None,
    current: dict[str, int] | None = None,
    deployment: str = "Progressive",
    alpha: float = 0.05,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "analysis": {
            "aggregatedMetrics": {
                "data": {m: {"data": dict(by_version)} for m, by_version in data.items()}
            }
        }
    }
    if current is not None:
        status["currentWeightDistribution"] = [{"name": n, "value": v} for n, v in current.items()]
    return {
        "apiVersion": "arbiter.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "prop"},
        "spec": {
            "target": "ns/model",
            "strategy": {
                "testingPattern": pattern,
                "deploymentPattern": deployment,
                "weights": weights or {},
            },
            "criteria": {"objectives": objectives, "rewards": rewards or [], "alpha": alpha},
            "duration": {"iterationsPerLoop": 100},
            "versionInfo": {
                "baseline": {"name": names[0]},
                "candidates": [{"name": n} for n in names[1:]],
            },
        },
        "status": status,
    }


@st.composite
def counts(draw: st.DrawFn, max_trials: int = 50_000) -> dict[str, int]:
    """Events out of trials, often at the few-per-cent rates where the limits sit."""
    trials = draw(st.integers(0, max_trials))
    low_rate = st.floats(0, 0.06).map(lambda p: int(p * trials))
    events = draw(st.one_of(low_rate, st.integers(0, trials)))
    return {"events": events, "trials": trials}


def measurement() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        counts(),
        st.builds(lambda v: {"value": v}, st.floats(0, 0.05)),
        st.just({}),
    )


@st.composite
def split(draw: st.DrawFn, names: list[str]) -> dict[str, int]:
    """Any integer split of 100 over the versions."""
    cuts = sorted(
        draw(st.lists(st.integers(0, 100), min_size=len(names) - 1, max_size=len(names) - 1))
    )
    edges = [0, *cuts, 100]
    return {n: edges[i + 1] - edges[i] for i, n in enumerate(names)}


@st.composite
def experiments(draw: st.DrawFn, deployment: str = "Progressive") -> Experiment:
    pattern = draw(st.sampled_from(["Canary", "A/B", "A/B/n"]))
    k = draw(st.integers(2, 4)) if pattern == "A/B/n" else 1
    names = [f"v{i}" for i in range(k + 1)]
    objectives: list[dict[str, Any]] = [{"metric": "errors", "upperLimit": 0.01}]
    if draw(st.booleans()):
        objectives.append({"metric": "errors", "maxRatio": draw(st.sampled_from([1.2, 2.0]))})
    data: dict[str, dict[str, Any]] = {"errors": {}, "reward": {}}
    for n in names:
        data["errors"][n] = draw(measurement())
        data["reward"][n] = draw(st.one_of(counts(), st.just({})))
    rewards = None
    if pattern != "Canary":
        direction = draw(st.sampled_from(["High", "Low"]))
        rewards = [{"metric": "reward", "preferredDirection": direction}]
    weights = {
        "maxCandidateWeight": draw(st.integers(0, 100)),
        "maxCandidateWeightIncrement": draw(st.integers(1, 100)),
    }
    current = draw(st.one_of(st.none(), split(names)))
    doc = document(
        pattern,
        names,
        objectives,
        data,
        rewards=rewards,
        weights=weights,
        current=current,
        deployment=deployment,
    )
    return parse_experiment(doc)


def next_weights(experiment: Experiment, seed: int) -> dict[str, int] | None:
    spec, measurements = experiment.spec, experiment.status.measurements
    assessments = assess_versions(spec, measurements)
    winner = assess_winner(spec, assessments, measurements)
    assert spec.version_info is not None
    rewards: dict[str, evidence.Quantity] = {}
    if spec.criteria.rewards:
        by_version = measurements.get("reward", {})
        rewards = {n: evidence.quantity(by_version.get(n)) for n in spec.version_info.names}
    return allocation.next_weights(
        spec,
        experiment.status.current_weights,
        assessments,
        winner,
        rewards,
        np.random.default_rng(seed),
        n_samples=200,
    )


# --- weights -------------------------------------------------------------------------------


@pytest.mark.slow
@PROPERTY
@given(experiments(), st.integers(0, 2**32 - 1))
def test_progressive_weights_sum_to_100_within_both_caps(experiment: Experiment, seed: int) -> None:
    weights = next_weights(experiment, seed)
    assert weights is not None
    spec = experiment.spec
    assert spec.version_info is not None
    names = spec.version_info.names
    assert list(weights) == list(names)
    assert all(isinstance(w, int) and 0 <= w <= 100 for w in weights.values())
    assert sum(weights.values()) == 100
    caps = spec.strategy.weights
    before = experiment.status.current_weights or initial_weights(spec)
    assert before is not None
    candidates = names[1:]
    for c in candidates:
        assert weights[c] <= before[c] + caps.max_candidate_weight_increment, (c, before, weights)
    assert sum(weights[c] for c in candidates) <= caps.max_candidate_weight, (before, weights)
    assert next_weights(experiment, seed) == weights  # deterministic for a seed


@pytest.mark.slow
@PROPERTY
@given(
    st.sampled_from(["Progressive", "FixedSplit", "BlueGreen"]).flatmap(experiments),
    st.integers(0, 2**32 - 1),
)
def test_every_analysis_gives_integer_weights_summing_to_100(
    experiment: Experiment, seed: int
) -> None:
    result = analyze(experiment, np.random.default_rng(seed), n_samples=200)
    weights = result.weights
    assert weights is not None
    assert all(isinstance(w, int) and 0 <= w <= 100 for w in weights.values())
    assert sum(weights.values()) == 100
    pattern = experiment.spec.strategy.deployment_pattern.value
    action = result.recommendation.action
    if action is Action.CONTINUE and pattern == "FixedSplit":
        before = experiment.status.current_weights or initial_weights(experiment.spec)
        assert weights == before
    if action is Action.CONTINUE and pattern == "BlueGreen":
        # All or nothing: the baseline keeps everything until the candidate is validated.
        assert sorted(weights.values())[-1] == 100


# --- more failures never improve a verdict -------------------------------------------------


def candidate_verdicts(
    objectives: list[dict[str, Any]], data: dict[str, Any], alpha: float = 0.05
) -> list[Verdict]:
    doc = document("Canary", ["base", "cand"], objectives, data, alpha=alpha)
    e = parse_experiment(doc)
    return [a.verdict for a in assess_versions(e.spec, e.status.measurements)["cand"]]


ERROR_OBJECTIVES = st.sampled_from(
    [
        [{"metric": "errors", "upperLimit": 0.01}],
        [{"metric": "errors", "upperLimit": 0.05}],
        [{"metric": "errors", "maxRatio": 1.5}],
        [{"metric": "errors", "maxIncrease": 0.005}],
        [{"metric": "errors", "upperLimit": 0.02, "maxRatio": 2.0}],
    ]
)


@PROPERTY
@given(
    ERROR_OBJECTIVES,
    counts(),
    counts(),
    st.one_of(st.integers(1, 20), st.integers(1, 5000)),
    st.booleans(),
    st.sampled_from([0.5, 0.05, 0.001]),
)
def test_more_errors_never_improve_a_verdict(
    objectives: list[dict[str, Any]],
    baseline: dict[str, int],
    candidate: dict[str, int],
    extra: int,
    new_requests: bool,
    alpha: float,
) -> None:
    # From no data to some is not "more errors": a first request, even a failed one, can
    # settle a ratio objective when the baseline fails so often that no candidate rate
    # (at most 1) could exceed the margin (132/168 failing, maxRatio 1.5: 1/0.79 < 1.5).
    assume(candidate["trials"] > 0)
    worse = dict(candidate)
    if new_requests:
        # Extra requests that all failed.
        worse["events"] += extra
        worse["trials"] += extra
    else:
        # Some of the same requests turn out to have failed.
        worse["events"] = min(candidate["trials"], candidate["events"] + extra)
    before = candidate_verdicts(
        objectives, {"errors": {"base": baseline, "cand": candidate}}, alpha
    )
    after = candidate_verdicts(objectives, {"errors": {"base": baseline, "cand": worse}}, alpha)
    for b, a in zip(before, after, strict=True):
        event(f"{b.value} -> {a.value}")
        assert RANK[a] <= RANK[b], (candidate, worse, b, a)
        if a is Verdict.SATISFIED:
            assert b is Verdict.SATISFIED


@st.composite
def histogram(draw: st.DrawFn) -> list[int]:
    """Counts in the buckets (<=100], (100, 250], (250, +Inf), often with few slow ones."""
    fast, mid = draw(st.integers(0, 20_000)), draw(st.integers(0, 20_000))
    few = st.floats(0, 0.06).map(lambda p: int(p * (fast + mid)))
    return [fast, mid, draw(st.one_of(few, st.integers(0, 20_000)))]


def cumulative(counts_per_bucket: list[int]) -> dict[str, Any]:
    total = np.cumsum(counts_per_bucket).tolist()
    return {
        "buckets": [
            {"le": 100, "count": total[0]},
            {"le": 250, "count": total[1]},
            {"le": "+Inf", "count": total[2]},
        ]
    }


@PROPERTY
@given(
    histogram(),
    histogram(),
    st.one_of(st.integers(1, 20), st.integers(1, 5000)),
    st.sampled_from(
        [
            {"metric": "latency", "upperLimit": 250, "quantile": 0.95},
            {"metric": "latency", "upperLimit": 240, "quantile": 0.99},
            {"metric": "latency", "upperLimit": 250, "maxRatio": 1.5},
        ]
    ),
)
def test_more_slow_requests_never_improve_a_latency_verdict(
    baseline: list[int], candidate: list[int], extra: int, objective: dict[str, Any]
) -> None:
    slower = [candidate[0], candidate[1], candidate[2] + extra]
    data = {"latency": {"base": cumulative(baseline), "cand": cumulative(candidate)}}
    (before,) = candidate_verdicts([objective], data)
    data = {"latency": {"base": cumulative(baseline), "cand": cumulative(slower)}}
    (after,) = candidate_verdicts([objective], data)
    event(f"{before.value} -> {after.value}")
    assert RANK[after] <= RANK[before]


# --- order independence --------------------------------------------------------------------


def summary(items: tuple[ObjectiveAssessment, ...]) -> list[tuple[Any, ...]]:
    return [
        (a.metric, a.verdict, a.conclusive, a.estimate, a.interval, a.bucket_bound, a.message)
        for a in items
    ]


@pytest.mark.slow
@PROPERTY
@given(st.data())
def test_assessments_do_not_depend_on_list_order(data: st.DataObject) -> None:
    k = data.draw(st.integers(2, 4), label="candidates")
    names = [f"v{i}" for i in range(k + 1)]
    objectives = [
        {"metric": "errors", "upperLimit": 0.01},
        {"metric": "latency", "upperLimit": 250, "quantile": 0.95},
        {"metric": "errors", "maxRatio": 1.5},
    ]
    measurements = {
        "errors": {n: data.draw(measurement(), label=f"errors {n}") for n in names},
        "latency": {n: cumulative(data.draw(histogram(), label=f"latency {n}")) for n in names},
        "reward": {n: data.draw(counts(), label=f"reward {n}") for n in names},
    }
    rewards = [{"metric": "reward", "preferredDirection": "High"}]
    shuffled = [names[0], *data.draw(st.permutations(names[1:]), label="candidate order")]
    metric_order = data.draw(st.permutations(list(measurements)), label="metric order")
    reordered = {
        m: {
            n: measurements[m][n]
            for n in data.draw(st.permutations(names), label=f"version order of {m}")
        }
        for m in metric_order
    }
    first = parse_experiment(document("A/B/n", names, objectives, measurements, rewards=rewards))
    second = parse_experiment(document("A/B/n", shuffled, objectives, reordered, rewards=rewards))
    a = assess_versions(first.spec, first.status.measurements)
    b = assess_versions(second.spec, second.status.measurements)
    assert {n: summary(items) for n, items in a.items()} == {
        n: summary(items) for n, items in b.items()
    }
    wa = assess_winner(first.spec, a, first.status.measurements)
    wb = assess_winner(second.spec, b, second.status.measurements)
    assert (wa.winner_found, wa.winner, set(wa.best_versions), set(wa.feasible)) == (
        wb.winner_found,
        wb.winner,
        set(wb.best_versions),
        set(wb.feasible),
    )


@given(
    st.lists(
        st.one_of(
            st.floats(0, 100, allow_nan=False),
            st.integers(0, 100).map(float),
            st.sampled_from([0.0, 1.0, 0.5, 99.5, 100.0 / 3]),
        ),
        min_size=1,
        max_size=7,
    ),
    st.sampled_from([100, 10, 1000]),
)
def test_start_rounds_a_split_exactly_as_the_analysis_does(
    weights: list[float], total: int
) -> None:
    # start rounds its first split without numpy; it must agree with the vectorised rounding
    # the analysis uses, or the first assessment would "move" traffic nobody asked to move.
    assert percentages(weights, total) == allocation.to_percentages(weights, total).tolist()
