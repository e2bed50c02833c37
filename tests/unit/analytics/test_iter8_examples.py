"""Worked examples from iter8's documented behaviour (its docs and iter8-analytics v2's source).

Each example is an iter8 v2alpha2 experiment brought over unchanged (A/B/N spelling,
Quantity strings, bare point values under status.analysis.aggregatedMetrics), and each
names the iter8 behaviour it reproduces, or says where Arbiter differs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analytics import model
from analytics.analysis import analyze
from analytics.document import to_dict
from analytics.parse import ITER8_API_VERSION, parse_experiment
from analytics.recommendation import Action


def iter8_experiment(
    testing_pattern: str,
    candidates: list[str],
    objectives: list[dict[str, Any]],
    values: dict[str, dict[str, Any]],
    *,
    rewards: list[dict[str, Any]] | None = None,
    deployment: str = "Progressive",
    current: list[dict[str, Any]] | None = None,
    completed: int = 1,
    iterations: int = 10,
) -> dict[str, Any]:
    """An iter8 v2alpha2 Experiment document (iter8) with point values."""
    status: dict[str, Any] = {
        "completedIterations": completed,
        "analysis": {
            "aggregatedMetrics": {
                "data": {
                    metric: {"data": {v: {"value": x} for v, x in by_version.items()}}
                    for metric, by_version in values.items()
                }
            }
        },
    }
    if current is not None:
        status["currentWeightDistribution"] = current
    return {
        "apiVersion": ITER8_API_VERSION,
        "kind": "Experiment",
        "metadata": {"name": "sklearn-iris-experiment-1", "namespace": "kfserving-test"},
        "spec": {
            "target": "kfserving-test/sklearn-iris",
            "strategy": {
                "testingPattern": testing_pattern,
                "deploymentPattern": deployment,
                "weights": {"maxCandidateWeight": 100, "maxCandidateWeightIncrement": 10},
            },
            "criteria": {"objectives": objectives, "rewards": rewards or []},
            "duration": {"intervalSeconds": 15, "iterationsPerLoop": iterations},
            "versionInfo": {
                "baseline": {"name": "default"},
                "candidates": [{"name": c} for c in candidates],
            },
        },
        "status": status,
    }


def analysis_json(document: dict[str, Any]) -> dict[str, Any]:
    return to_dict(analyze(parse_experiment(document), np.random.default_rng(17)))


# The sklearn-iris example's objectives (iter8): limits as Kubernetes quantities.
SKLEARN_OBJECTIVES: list[dict[str, Any]] = [
    {"metric": "mean-latency", "upperLimit": 1000},
    {"metric": "error-rate", "upperLimit": "0.01"},
]


def test_progressive_canary_ramps_by_the_increment() -> None:
    # iter8: "A progressive canary with increment 10 from [100, 0] yields candidate
    # weights 10, 20, …, 90, 95". iter8 then stalls at 95 because it keeps 10% uniform
    # exploration (5 points on the baseline); Arbiter's Canary target is
    # maxCandidateWeight x P(candidate satisfies all), so a satisfying candidate reaches 100.
    values: dict[str, dict[str, Any]] = {
        "mean-latency": {"default": "412500m", "canary": 500},
        "error-rate": {"default": "0", "canary": "5m"},
    }
    current = [{"name": "default", "value": 100}, {"name": "canary", "value": 0}]
    seen = []
    for completed in range(11):
        doc = iter8_experiment(
            "Canary",
            ["canary"],
            SKLEARN_OBJECTIVES,
            values,
            current=current,
            completed=completed,
            iterations=100,
        )
        out = analysis_json(doc)
        # Point values are not anytime-valid evidence: the experiment keeps going.
        assert out["recommendation"]["action"] == "continue"
        current = out["weights"]
        seen.append(current[1]["value"])
        assert current[0]["value"] + current[1]["value"] == 100
    assert seen == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 100]


def test_point_values_with_equality_passing() -> None:
    # iter8: ok = not (x > upper) and not (x < lower); "Equality passes". The
    # candidate's mean latency is exactly the 1000 limit and its error rate exactly
    # "10m" = 0.01; the baseline misses the error-rate limit by a hair.
    values: dict[str, dict[str, Any]] = {
        "mean-latency": {"default": 999, "canary": "1k"},
        "error-rate": {"default": "10000001n", "canary": "10m"},
    }
    out = analysis_json(iter8_experiment("Canary", ["canary"], SKLEARN_OBJECTIVES, values))
    assert out["versionAssessments"] == {"default": [True, False], "canary": [True, True]}
    # iter8 Canary: the candidate satisfies all objectives, so it is the winner.
    assert out["winnerAssessment"] == {
        "winnerFound": True,
        "winner": "canary",
        "bestVersions": ["canary"],
    }
    # iter8: versionRecommendedForPromotion is the winner when one is found.
    assert out["versionRecommendedForPromotion"] == "canary"


def test_a_missing_value_leaves_the_objective_unsatisfied() -> None:
    # iter8: "A missing metric or a None value leaves False".
    values: dict[str, dict[str, Any]] = {
        "mean-latency": {"default": 500, "canary": None},
        "error-rate": {"default": 0},
    }
    out = analysis_json(iter8_experiment("Canary", ["canary"], SKLEARN_OBJECTIVES, values))
    assert out["versionAssessments"] == {"default": [True, True], "canary": [False, False]}
    # iter8 Canary: the candidate does not satisfy all, the baseline does.
    assert out["winnerAssessment"]["winner"] == "default"


def test_canary_with_no_feasible_version_has_no_winner() -> None:
    # iter8 Canary: neither satisfies all objectives, so winnerFound = false, and
    # (§3.3) the baseline is the version recommended for promotion.
    values: dict[str, dict[str, Any]] = {
        "mean-latency": {"default": 1500, "canary": 2000},
        "error-rate": {"default": 0, "canary": 0},
    }
    out = analysis_json(iter8_experiment("Canary", ["canary"], SKLEARN_OBJECTIVES, values))
    assert out["winnerAssessment"] == {"winnerFound": False, "bestVersions": []}
    assert out["versionRecommendedForPromotion"] == "default"


def test_conformance_winner_is_the_baseline() -> None:
    # iter8 Conformance (the fix of iter8-analytics#242): a feasible baseline is the
    # winner and the only best version; §4.5: weights are not applicable.
    values: dict[str, dict[str, Any]] = {
        "mean-latency": {"default": 800},
        "error-rate": {"default": "5m"},
    }
    out = analysis_json(iter8_experiment("Conformance", [], SKLEARN_OBJECTIVES, values))
    assert out["versionAssessments"] == {"default": [True, True]}
    assert out["winnerAssessment"] == {
        "winnerFound": True,
        "winner": "default",
        "bestVersions": ["default"],
    }
    assert out["weights"] is None


ABN_OBJECTIVES: list[dict[str, Any]] = [{"metric": "error-rate", "upperLimit": "0.01"}]
BOOKS: list[dict[str, Any]] = [{"metric": "books-purchased", "preferredDirection": "High"}]


def test_iter8_ab_n_experiment_is_read_with_its_spelling() -> None:
    # iter8: v2alpha2 spells A/B/n as "A/B/N"; for A/B/N the winner is the best
    # value of rewards[0] among feasible versions. v4 sells the most books but breaks the
    # error-rate objective, so it cannot win.
    values: dict[str, dict[str, Any]] = {
        "error-rate": {"default": 0, "v2": "5m", "v3": "10m", "v4": "20m"},
        "books-purchased": {"default": 100, "v2": 140, "v3": 150, "v4": 400},
    }
    doc = iter8_experiment("A/B/N", ["v2", "v3", "v4"], ABN_OBJECTIVES, values, rewards=BOOKS)
    experiment = parse_experiment(doc)
    assert experiment.spec.strategy.testing_pattern is model.TestingPattern.ABN
    out = analysis_json(doc)
    assert out["versionAssessments"] == {
        "default": [True],
        "v2": [True],
        "v3": [True],  # 0.01 against a "0.01" limit: equality passes
        "v4": [False],
    }
    assert out["winnerAssessment"] == {"winnerFound": True, "winner": "v3", "bestVersions": ["v3"]}
    assert sum(w["value"] for w in out["weights"]) == 100


def test_ties_are_all_best_versions_and_no_winner() -> None:
    # iter8: "Exact ties are all added to bestVersions. winnerFound =
    # (len(bestVersions) == 1)".
    values: dict[str, dict[str, Any]] = {
        "error-rate": {"default": 0, "v2": 0, "v3": 0},
        "books-purchased": {"default": 100, "v2": 150, "v3": 150},
    }
    doc = iter8_experiment("A/B/N", ["v2", "v3"], ABN_OBJECTIVES, values, rewards=BOOKS)
    out = analysis_json(doc)
    assert out["winnerAssessment"] == {"winnerFound": False, "bestVersions": ["v2", "v3"]}
    assert "v2, v3 tied for best on books-purchased" in out["evidence"]["winner"]["message"]
    # No winner: the baseline stays the version recommended for promotion (§3.3).
    assert out["versionRecommendedForPromotion"] == "default"


def test_a_feasible_version_without_a_reward_value_is_skipped_with_a_warning() -> None:
    # iter8: "A feasible version without a value → warning 'reward value for
    # feasible version X is not available' (it is skipped)".
    values: dict[str, dict[str, Any]] = {
        "error-rate": {"default": 0, "v2": 0, "v3": 0},
        "books-purchased": {"default": 100, "v3": 120},
    }
    doc = iter8_experiment("A/B/N", ["v2", "v3"], ABN_OBJECTIVES, values, rewards=BOOKS)
    out = analysis_json(doc)
    assert out["winnerAssessment"] == {"winnerFound": True, "winner": "v3", "bestVersions": ["v3"]}
    assert "reward books-purchased for v2 is not available" in out["evidence"]["winner"]["message"]


def test_lower_is_better_reward() -> None:
    # iter8: "take the max (High) or min (Low)".
    values: dict[str, dict[str, Any]] = {
        "error-rate": {"default": 0, "canary": 0},
        "latency-cost": {"default": "250m", "canary": "300m"},
    }
    rewards: list[dict[str, Any]] = [{"metric": "latency-cost", "preferredDirection": "Low"}]
    doc = iter8_experiment("A/B", ["canary"], ABN_OBJECTIVES, values, rewards=rewards)
    assert analysis_json(doc)["winnerAssessment"]["winner"] == "default"


def test_fixed_split_weights_are_not_moved() -> None:
    # iter8: weights are not patched when deploymentPattern is FixedSplit.
    values: dict[str, dict[str, Any]] = {
        "mean-latency": {"default": 500, "canary": 500},
        "error-rate": {"default": 0},
    }
    current = [{"name": "default", "value": 75}, {"name": "canary", "value": 25}]
    doc = iter8_experiment(
        "Canary", ["canary"], SKLEARN_OBJECTIVES, values, deployment="FixedSplit", current=current
    )
    assert analysis_json(doc)["weights"] == current


def test_blue_green_rolls_back_on_a_failed_objective_by_default() -> None:
    # iter8: rollback_on_failure defaults to true for BlueGreen, so a
    # version failing an objective triggers the rollback (traffic back to the baseline).
    values: dict[str, dict[str, Any]] = {
        "mean-latency": {"default": 500, "canary": 1200},
        "error-rate": {"default": 0, "canary": 0},
    }
    current = [{"name": "default", "value": 100}, {"name": "canary", "value": 0}]
    doc = iter8_experiment(
        "Canary", ["canary"], SKLEARN_OBJECTIVES, values, deployment="BlueGreen", current=current
    )
    result = analyze(parse_experiment(doc), np.random.default_rng(17))
    assert result.recommendation.action is Action.ROLLBACK
    assert result.recommendation.rule == "objective-violated"
    assert result.weights == {"default": 100, "canary": 0}


def test_the_promoted_version_is_decided_by_the_last_analysis() -> None:
    # iter8: at the end the finish handler promotes versionRecommendedForPromotion,
    # the winner of the last analysis. Arbiter does the same when the evidence is only
    # point values: it promotes the winner on the last iteration (rule iterations-exhausted).
    values: dict[str, dict[str, Any]] = {
        "mean-latency": {"default": 500, "canary": 600},
        "error-rate": {"default": 0, "canary": 0},
    }
    doc = iter8_experiment("Canary", ["canary"], SKLEARN_OBJECTIVES, values, completed=9)
    out = analysis_json(doc)
    assert out["recommendation"]["action"] == "promote"
    assert out["recommendation"]["version"] == "canary"
    assert out["recommendation"]["rule"] == "iterations-exhausted"
