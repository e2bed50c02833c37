"""One iteration's analysis: assessments, winner, next weights and a recommendation.

This is the single entry point that `assess`, `arbiter analyze` and the benchmarks call, so
a decision can always be reproduced from the Experiment and a seed.

The recommendation follows fixed rules, checked in order, and names the one that fired:
1. `objective-violated` — roll back: the candidate (Canary, A/B; every candidate for A/B/n;
   the baseline for Conformance) violates an objective whose rollbackOnFailure allows it.
   Unset, rollbackOnFailure is true for anytime-valid verdicts and, as in iter8, for point
   values only under BlueGreen.
2. `winner-conclusive` — the winner rests on anytime-valid evidence: promote it (a
   baseline winner in a Canary means roll back).
3. `iterations-exhausted` — the last iteration: promote the winner if there is one,
   otherwise roll back to the baseline.
4. `collecting-evidence` — continue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from analytics import allocation, evidence
from analytics.assessment import ObjectiveAssessment, Verdict, assess_versions
from analytics.evidence import Quantity
from analytics.model import DeploymentPattern, Experiment, ExperimentSpec, TestingPattern
from analytics.recommendation import Action, Recommendation
from analytics.winner import WinnerAssessment, assess_winner


@dataclass(frozen=True)
class Analysis:
    iteration: int
    version_assessments: Mapping[str, tuple[ObjectiveAssessment, ...]]
    winner: WinnerAssessment
    weights: Mapping[str, int] | None
    recommendation: Recommendation
    version_recommended_for_promotion: str
    reward_quantities: Mapping[str, Quantity]


def analyze(
    experiment: Experiment,
    rng: np.random.Generator,
    n_samples: int = allocation.DEFAULT_SAMPLES,
) -> Analysis:
    """Analyse the experiment's current measurements.

    Args:
        experiment: spec with resolved versionInfo; status with measurements, completed
            iterations and current weights.
        rng: the only source of randomness (posterior sampling for A/B/n weights).
        n_samples: posterior draws for P(best).

    Raises:
        ValueError: versionInfo is not resolved.
    """
    spec = experiment.spec
    status = experiment.status
    if spec.version_info is None:
        raise ValueError("spec.versionInfo is not resolved yet")
    measurements = status.measurements
    assessments = assess_versions(spec, measurements, status.ratio_tests)
    winner = assess_winner(spec, assessments, measurements)
    reward_quantities: dict[str, Quantity] = {}
    if spec.criteria.rewards:
        by_version = measurements.get(spec.criteria.rewards[0].metric, {})
        reward_quantities = {
            n: evidence.quantity(by_version.get(n)) for n in spec.version_info.names
        }
    weights = allocation.next_weights(
        spec, status.current_weights, assessments, winner, reward_quantities, rng, n_samples
    )
    iteration = status.completed_iterations + 1
    last = iteration >= spec.duration.total_iterations
    recommendation = recommend(spec, assessments, winner, last)
    baseline = spec.version_info.baseline.name
    if recommendation.action is Action.ROLLBACK:
        # Traffic goes back to the baseline on rollback, whatever the weights would be.
        if weights is not None:
            weights = {n: (100 if n == baseline else 0) for n in weights}
    elif recommendation.action is Action.PROMOTE and weights is not None:
        weights = {n: (100 if n == recommendation.version else 0) for n in weights}
    return Analysis(
        iteration=iteration,
        version_assessments=assessments,
        winner=winner,
        weights=weights,
        recommendation=recommendation,
        version_recommended_for_promotion=winner.winner
        if winner.winner_found and winner.winner
        else baseline,
        reward_quantities=reward_quantities,
    )


def _may_roll_back(spec: ExperimentSpec, item: ObjectiveAssessment) -> bool:
    if item.verdict is not Verdict.VIOLATED:
        return False
    setting = spec.criteria.objectives[item.index].rollback_on_failure
    if setting is not None:
        return setting
    if item.conclusive:
        return True
    return spec.strategy.deployment_pattern is DeploymentPattern.BLUE_GREEN


def recommend(
    spec: ExperimentSpec,
    assessments: Mapping[str, tuple[ObjectiveAssessment, ...]],
    winner: WinnerAssessment,
    last_iteration: bool,
) -> Recommendation:
    assert spec.version_info is not None
    info = spec.version_info
    baseline = info.baseline.name
    pattern = spec.strategy.testing_pattern

    at_stake = (
        [baseline] if pattern is TestingPattern.CONFORMANCE else [c.name for c in info.candidates]
    )
    failing = {v: [a for a in assessments[v] if _may_roll_back(spec, a)] for v in at_stake}
    if at_stake and all(failing[v] for v in at_stake):
        details = "; ".join(a.message for v in at_stake for a in failing[v][:1])
        return Recommendation(
            Action.ROLLBACK, baseline, "objective-violated", f"roll back to {baseline}: {details}"
        )

    def settle(rule: str) -> Recommendation:
        if winner.winner_found and winner.winner is not None:
            if winner.winner == baseline and pattern is TestingPattern.CANARY:
                return Recommendation(
                    Action.ROLLBACK, baseline, rule, f"roll back to {baseline}: {winner.message}"
                )
            return Recommendation(
                Action.PROMOTE, winner.winner, rule, f"promote {winner.winner}: {winner.message}"
            )
        return Recommendation(
            Action.ROLLBACK, baseline, rule, f"no winner; keep {baseline}: {winner.message}"
        )

    if winner.winner_found and winner.conclusive:
        return settle("winner-conclusive")
    if last_iteration:
        return settle("iterations-exhausted")
    return Recommendation(Action.CONTINUE, None, "collecting-evidence", winner.message)
