"""Version assessments: satisfied / violated / undecided, and the evidence behind each."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from analytics.assessment import ObjectiveAssessment, Verdict, assess_versions
from analytics.model import Experiment

Factory = Callable[..., Experiment]
ERRORS = [{"metric": "error-rate", "upperLimit": 0.01}]
SATISFIED, VIOLATED, UNDECIDED = Verdict.SATISFIED, Verdict.VIOLATED, Verdict.UNDECIDED


def assess(experiment: Experiment) -> dict[str, tuple[ObjectiveAssessment, ...]]:
    return assess_versions(experiment.spec, experiment.status.measurements)


def only(experiment: Experiment, version: str = "candidate") -> ObjectiveAssessment:
    (item,) = assess(experiment)[version]
    return item


def counts(events: float, trials: float) -> dict[str, float]:
    return {"events": events, "trials": trials}


def errors(make_experiment: Factory, events: float, trials: float, **kw: Any) -> Experiment:
    data = {"error-rate": {"baseline": counts(1, 10_000), "candidate": counts(events, trials)}}
    return make_experiment("Canary", objectives=kw.pop("objectives", ERRORS), data=data, **kw)


# --- counts ------------------------------------------------------------------------------


def test_counts_well_within_the_limit_are_conclusively_satisfied(make_experiment: Factory) -> None:
    item = only(errors(make_experiment, 10, 10_000))
    assert (item.verdict, item.conclusive) == (SATISFIED, True)
    assert item.estimate == pytest.approx(0.001)
    assert item.sample_size == 10_000
    assert item.interval is not None
    lower, upper = item.interval
    assert lower < 0.001 < upper <= 0.01
    assert "upper confidence bound" in item.message and "within the limit" in item.message


def test_counts_clearly_above_the_limit_are_conclusively_violated(make_experiment: Factory) -> None:
    item = only(errors(make_experiment, 30, 1000))
    assert (item.verdict, item.conclusive) == (VIOLATED, True)
    assert item.interval is not None and item.interval[0] > 0.01
    assert "lower confidence bound" in item.message and "above the limit" in item.message


def test_too_little_evidence_is_undecided_not_a_failure(make_experiment: Factory) -> None:
    # 2% errors in 100 requests: a point comparison would fail it; the sequence cannot yet.
    item = only(errors(make_experiment, 2, 100))
    assert (item.verdict, item.conclusive) == (UNDECIDED, False)
    assert not item.satisfied
    assert item.interval is not None and item.interval[0] < 0.01 < item.interval[1]
    assert "still contains the limit" in item.message


@pytest.mark.parametrize(
    ("events", "trials", "verdict"),
    [(9900, 10_000, SATISFIED), (8000, 10_000, VIOLATED), (88, 100, UNDECIDED)],
)
def test_lower_limits(make_experiment: Factory, events: int, trials: int, verdict: Verdict) -> None:
    data = {"success": {"baseline": counts(9900, 10_000), "candidate": counts(events, trials)}}
    objectives = [{"metric": "success", "lowerLimit": 0.9}]
    item = only(make_experiment("Canary", objectives=objectives, data=data))
    assert item.verdict is verdict
    assert item.conclusive is (verdict is not UNDECIDED)


@pytest.mark.parametrize(
    ("alpha", "events", "verdict"),
    [
        (0.5, 8, SATISFIED),
        (0.05, 8, UNDECIDED),
        (0.05, 40, VIOLATED),
        (0.001, 40, UNDECIDED),
    ],
)
def test_alpha_is_settable_and_a_smaller_alpha_asks_for_more_evidence(
    make_experiment: Factory, alpha: float, events: int, verdict: Verdict
) -> None:
    assert only(errors(make_experiment, events, 2000, alpha=alpha)).verdict is verdict


def test_violation_tests_share_alpha_across_a_versions_objectives(
    make_experiment: Factory,
) -> None:
    objectives = [
        {"metric": "error-rate", "upperLimit": 0.01},
        {"metric": "latency", "upperLimit": 120},
    ]
    data = {
        "error-rate": {"baseline": counts(1, 10_000), "candidate": counts(300, 10_000)},
        "latency": {"baseline": {"value": 100}},
    }
    items = assess(make_experiment("Canary", objectives=objectives, data=data))["candidate"]
    assert items[0].verdict is VIOLATED
    assert "(alpha 0.025)" in items[0].message


# --- no data -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (None, "no data yet"),
        ({}, "no data yet"),
        ({"value": None}, "no data yet"),
        (counts(0, 0), "no trials yet"),
        ({"count": 0, "sum": 0, "sumOfSquares": 0}, "no observations yet"),
    ],
)
def test_no_data_is_undecided_and_says_so(
    make_experiment: Factory, candidate: dict[str, Any] | None, reason: str
) -> None:
    by_version: dict[str, Any] = {"baseline": counts(1, 10_000)}
    if candidate is not None:
        by_version["candidate"] = candidate
    item = only(make_experiment("Canary", objectives=ERRORS, data={"error-rate": by_version}))
    assert (item.verdict, item.conclusive, item.estimate) == (UNDECIDED, False, None)
    assert reason in item.message


def test_a_metric_nobody_measured_leaves_every_version_undecided(make_experiment: Factory) -> None:
    result = assess(make_experiment("Canary", objectives=ERRORS))
    assert {v: [a.verdict for a in items] for v, items in result.items()} == {
        "baseline": [UNDECIDED],
        "candidate": [UNDECIDED],
    }


# --- histograms --------------------------------------------------------------------------


def buckets(*pairs: tuple[float | str, float]) -> dict[str, Any]:
    return {"buckets": [{"le": le, "count": c} for le, c in pairs]}


BASE_LATENCY = buckets((100, 60_000), (250, 99_000), (500, 99_900), ("+Inf", 100_000))


@pytest.mark.parametrize(
    ("limit", "bound", "share"),
    [(250, 250.0, 0.04), (240, 250.0, 0.04), (300, 250.0, 0.04), (450, 500.0, 0.01)],
)
def test_histogram_objectives_count_requests_above_the_bucket_nearest_the_limit(
    make_experiment: Factory, limit: float, bound: float, share: float
) -> None:
    candidate = buckets((100, 600), (250, 960), (500, 990), ("+Inf", 1000))
    objectives = [{"metric": "latency", "upperLimit": limit, "quantile": 0.95}]
    data = {"latency": {"baseline": BASE_LATENCY, "candidate": candidate}}
    item = only(make_experiment("Canary", objectives=objectives, data=data))
    assert item.bucket_bound == bound
    assert item.estimate == pytest.approx(share)
    assert item.sample_size == 1000
    assert "share above the bucket bound <= 0.05" in item.message


@pytest.mark.parametrize(
    ("slow", "trials", "verdict"),
    [(500, 100_000, SATISFIED), (1500, 10_000, VIOLATED), (40, 1000, UNDECIDED)],
)
def test_histogram_verdicts_come_from_the_exceedance_counts(
    make_experiment: Factory, slow: int, trials: int, verdict: Verdict
) -> None:
    candidate = buckets((100, trials // 2), (250, trials - slow), ("+Inf", trials))
    objectives = [{"metric": "latency", "upperLimit": 250, "quantile": 0.95}]
    data = {"latency": {"baseline": BASE_LATENCY, "candidate": candidate}}
    item = only(make_experiment("Canary", objectives=objectives, data=data))
    assert item.verdict is verdict
    assert item.conclusive is (verdict is not UNDECIDED)


def test_an_empty_histogram_is_no_data(make_experiment: Factory) -> None:
    objectives = [{"metric": "latency", "upperLimit": 250, "quantile": 0.95}]
    empty = buckets((250, 0), ("+Inf", 0))
    data = {"latency": {"baseline": BASE_LATENCY, "candidate": empty}}
    item = only(make_experiment("Canary", objectives=objectives, data=data))
    assert (item.verdict, item.estimate) == (UNDECIDED, None)
    assert "no requests yet" in item.message


# --- means -------------------------------------------------------------------------------


def mean(count: int, value: float, variance: float, squares: bool = True) -> dict[str, float]:
    out = {"count": count, "sum": count * value}
    if squares:
        out["sumOfSquares"] = count * (value**2 + variance)
    return out


@pytest.mark.parametrize(
    ("moments", "verdict", "conclusive"),
    [
        (mean(6000, 100, 400), SATISFIED, True),
        (mean(6000, 130, 400), VIOLATED, True),
        (mean(6000, 119.5, 400), UNDECIDED, False),
        (mean(10, 100, 400), UNDECIDED, False),  # too few for the plug-in variance
        (mean(10, 100, 400, squares=False), SATISFIED, False),  # no variance: plain comparison
    ],
)
def test_means(
    make_experiment: Factory, moments: dict[str, float], verdict: Verdict, conclusive: bool
) -> None:
    objectives = [{"metric": "latency", "upperLimit": 120}]
    data = {"latency": {"baseline": mean(6000, 100, 400), "candidate": moments}}
    item = only(make_experiment("Canary", objectives=objectives, data=data))
    assert (item.verdict, item.conclusive) == (verdict, conclusive)
    assert item.estimate == pytest.approx(moments["sum"] / moments["count"])


# --- point values (iter8 v2) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "value", "verdict"),
    [
        ({"upperLimit": 0.01}, 0.009, SATISFIED),
        ({"upperLimit": 0.01}, 0.01, SATISFIED),  # equality passes (as in iter8 v2)
        ({"upperLimit": 0.01}, 0.0100001, VIOLATED),
        ({"lowerLimit": 0.9}, 0.9, SATISFIED),
        ({"lowerLimit": 0.9}, 0.8999, VIOLATED),
        ({"lowerLimit": 0.9, "upperLimit": 0.95}, 0.95, SATISFIED),
        ({"lowerLimit": 0.9, "upperLimit": 0.95}, 0.96, VIOLATED),
    ],
)
def test_point_values_compare_plainly_and_equality_passes(
    make_experiment: Factory, objective: dict[str, float], value: float, verdict: Verdict
) -> None:
    objectives = [{"metric": "m", **objective}]
    data = {"m": {"baseline": {"value": 0.5}, "candidate": {"value": value}}}
    item = only(make_experiment("Canary", objectives=objectives, data=data))
    assert item.verdict is verdict
    # A bare value has no sample size: the verdict is never anytime-valid evidence.
    assert (item.conclusive, item.interval, item.sample_size) == (False, None, None)
    assert "plain comparison" in item.message


# --- relative objectives -------------------------------------------------------------------


def incident(make_experiment: Factory, objective: dict[str, Any]) -> dict[str, Any]:
    # A global incident: both versions serve 5% errors, far above an absolute 1% limit.
    data = {"error-rate": {"baseline": counts(500, 10_000), "candidate": counts(480, 10_000)}}
    objectives = [{"metric": "error-rate", **objective}]
    return assess(make_experiment("Canary", objectives=objectives, data=data))


@pytest.mark.parametrize("objective", [{"maxRatio": 1.5}, {"maxIncrease": 0.02}])
def test_a_global_incident_does_not_fail_the_candidate_on_a_relative_objective(
    make_experiment: Factory, objective: dict[str, Any]
) -> None:
    result = incident(make_experiment, objective)
    (candidate,) = result["candidate"]
    assert (candidate.verdict, candidate.conclusive) == (SATISFIED, True)
    assert "baseline" in candidate.message
    # Relative conditions bound the candidate only; the baseline has nothing to meet.
    (baseline,) = result["baseline"]
    assert (baseline.verdict, baseline.conditions) == (SATISFIED, ())


def test_the_same_incident_fails_an_absolute_objective(make_experiment: Factory) -> None:
    result = incident(make_experiment, {"upperLimit": 0.01})
    assert [result[v][0].verdict for v in ("baseline", "candidate")] == [VIOLATED, VIOLATED]


@pytest.mark.parametrize(
    ("objective", "candidate_events", "verdict"),
    [
        ({"maxRatio": 1.5}, 1500, VIOLATED),  # 3x the baseline
        ({"maxRatio": 1.5}, 560, UNDECIDED),  # 1.12x: the sequences still overlap 1.5x
        ({"maxIncrease": 0.01}, 1200, VIOLATED),
        ({"maxIncrease": 0.01}, 300, SATISFIED),
    ],
)
def test_relative_objectives_compare_with_the_baseline(
    make_experiment: Factory, objective: dict[str, Any], candidate_events: int, verdict: Verdict
) -> None:
    data = {
        "error-rate": {
            "baseline": counts(500, 10_000),
            "candidate": counts(candidate_events, 10_000),
        }
    }
    objectives = [{"metric": "error-rate", **objective}]
    item = only(make_experiment("Canary", objectives=objectives, data=data))
    assert item.verdict is verdict


def test_relative_objectives_wait_for_the_baseline(make_experiment: Factory) -> None:
    data = {"error-rate": {"candidate": counts(5, 10_000)}}
    objectives = [{"metric": "error-rate", "maxRatio": 1.5}]
    item = only(make_experiment("Canary", objectives=objectives, data=data))
    assert item.verdict is UNDECIDED
    assert "baseline: no data yet" in item.message


def test_relative_objectives_on_point_values_compare_plainly(make_experiment: Factory) -> None:
    objectives = [{"metric": "latency", "maxRatio": 1.2}]
    at_limit = {"latency": {"baseline": {"value": 100}, "candidate": {"value": 120}}}
    above = {"latency": {"baseline": {"value": 100}, "candidate": {"value": 121}}}
    assert (
        only(make_experiment("Canary", objectives=objectives, data=at_limit)).verdict is SATISFIED
    )
    item = only(make_experiment("Canary", objectives=objectives, data=above))
    assert (item.verdict, item.conclusive) == (VIOLATED, False)


def test_relative_histogram_objectives_compare_exceedance_shares(
    make_experiment: Factory,
) -> None:
    candidate = buckets((100, 600), (250, 960), (500, 990), ("+Inf", 1000))  # 4% above 250
    objectives = [{"metric": "latency", "upperLimit": 250, "maxRatio": 1.2}]  # baseline 1%
    data = {"latency": {"baseline": BASE_LATENCY, "candidate": candidate}}
    item = only(make_experiment("Canary", objectives=objectives, data=data))
    assert (item.verdict, item.conclusive, item.bucket_bound) == (VIOLATED, True, 250.0)


# --- shape of the result -------------------------------------------------------------------


def test_assessments_are_keyed_by_name_in_objective_order(make_experiment: Factory) -> None:
    objectives = [
        {"metric": "latency", "upperLimit": 120},
        {"metric": "error-rate", "upperLimit": 0.01},
    ]
    data = {
        "error-rate": {"v1": counts(1, 10_000), "v2": counts(300, 10_000)},
        "latency": {"v1": {"value": 100}, "v2": {"value": 100}, "v3": {"value": 200}},
    }
    e = make_experiment(
        "A/B/n",
        baseline="v1",
        candidates=["v2", "v3"],
        rewards=[{"metric": "latency", "preferredDirection": "Low"}],
        objectives=objectives,
        data=data,
    )
    result = assess(e)
    assert list(result) == ["v1", "v2", "v3"]
    assert [[a.metric for a in items] for items in result.values()] == [
        ["latency", "error-rate"]
    ] * 3
    assert [[a.index for a in items] for items in result.values()] == [[0, 1]] * 3
    assert [[a.verdict for a in result[v]] for v in ("v1", "v2", "v3")] == [
        [SATISFIED, SATISFIED],
        [SATISFIED, VIOLATED],
        [VIOLATED, UNDECIDED],
    ]


def test_unresolved_versions_are_an_error(make_document: Callable[..., dict[str, Any]]) -> None:
    from analytics.parse import parse_experiment

    doc = make_document(objectives=ERRORS)
    del doc["spec"]["versionInfo"]
    spec = parse_experiment(doc, require_versions=False).spec
    with pytest.raises(ValueError, match="versionInfo"):
        assess_versions(spec, {})


def test_an_experiment_without_objectives_assesses_nothing(make_experiment: Factory) -> None:
    assert assess(make_experiment("Canary")) == {"baseline": (), "candidate": ()}


def test_interval_bounds_are_finite_for_counts(make_experiment: Factory) -> None:
    item = only(errors(make_experiment, 0, 10))
    assert item.interval is not None
    assert item.interval[0] == 0.0 and math.isfinite(item.interval[1])


def test_a_point_latency_beside_histograms_is_not_compared_with_a_share(
    make_experiment: Factory,
) -> None:
    from analytics.parse import SpecError

    objectives = [{"metric": "latency", "upperLimit": 250, "quantile": 0.95}]
    data = {"latency": {"baseline": BASE_LATENCY, "candidate": {"value": 100}}}
    try:
        e = make_experiment("Canary", objectives=objectives, data=data)
    except SpecError as err:  # rejecting the mix would be a fix too
        assert "latency" in str(err)
        return
    assert only(e).verdict is not VIOLATED
