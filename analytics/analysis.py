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

The rules run on arrays with a leading replicate axis (`may_roll_back`, `decide`):
`recommend` calls them for one experiment and words the message, `analytics.batch` for R
replicates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from analytics import allocation, assessment, evidence
from analytics.assessment import ObjectiveAssessment, assess_versions
from analytics.evidence import Quantity
from analytics.model import DeploymentPattern, Experiment, ExperimentSpec, TestingPattern
from analytics.recommendation import Action, Recommendation
from analytics.winner import WinnerAssessment, assess_winner

IntArray = npt.NDArray[np.int64]


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
    reward_tests = (
        status.reward_tests.get(spec.criteria.rewards[0].metric) if spec.criteria.rewards else None
    )
    winner = assess_winner(spec, assessments, measurements, reward_tests)
    reward_quantities: dict[str, Quantity] = {}
    if spec.criteria.rewards:
        by_version = measurements.get(spec.criteria.rewards[0].metric, {})
        reward_quantities = {
            n: evidence.quantity(by_version.get(n)) for n in spec.version_info.names
        }
    weights = allocation.next_weights(
        spec,
        status.current_weights,
        assessments,
        winner,
        reward_quantities,
        rng,
        n_samples,
        reward_tests,
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


CONTINUE: Final = 0
PROMOTE: Final = 1
ROLLBACK: Final = 2
ACTIONS: Final = (Action.CONTINUE, Action.PROMOTE, Action.ROLLBACK)
RULES: Final = (
    "collecting-evidence",
    "objective-violated",
    "winner-conclusive",
    "iterations-exhausted",
)
_COLLECTING, _VIOLATED_RULE, _CONCLUSIVE_RULE, _EXHAUSTED_RULE = range(len(RULES))


def may_roll_back(
    spec: ExperimentSpec, verdict: IntArray, conclusive: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """(R, K, O): where a violated objective allows a rollback (rule 1's rollbackOnFailure)."""
    violated = verdict == assessment.VIOLATED
    blue_green = spec.strategy.deployment_pattern is DeploymentPattern.BLUE_GREEN
    allowed = np.zeros(verdict.shape, dtype=np.bool_)
    for i, objective in enumerate(spec.criteria.objectives):
        setting = objective.rollback_on_failure
        # Unset: any anytime-valid violation may roll back; a point value only under BlueGreen.
        allowed[..., i] = conclusive[..., i] | blue_green if setting is None else setting
    return np.asarray(violated & allowed)


def decide(
    pattern: TestingPattern,
    may: npt.NDArray[np.bool_],
    winner: IntArray,
    winner_conclusive: npt.NDArray[np.bool_],
    last_iteration: bool,
) -> tuple[IntArray, IntArray, IntArray]:
    """The recommendation rules over replicates: (action, version or -1, index into RULES).

    Args:
        pattern: the testing pattern.
        may: (R, K, O) `may_roll_back`.
        winner: (R,) the winner's index, or -1.
        winner_conclusive: (R,) whether the winner rests on anytime-valid evidence.
        last_iteration: whether this is the experiment's last iteration.
    """
    r, k, _ = may.shape
    at_stake = [0] if pattern is TestingPattern.CONFORMANCE else list(range(1, k))
    failing = np.asarray(may.any(axis=-1))[:, at_stake]
    rollback_now = failing.all(axis=-1) if at_stake else np.zeros(r, dtype=np.bool_)

    found = winner >= 0
    promote = found & ~((winner == 0) & (pattern is TestingPattern.CANARY))
    settle_now = found & winner_conclusive
    if last_iteration:
        settle_rule = np.where(settle_now, _CONCLUSIVE_RULE, _EXHAUSTED_RULE)
        settle_now = np.ones(r, dtype=np.bool_)
    else:
        settle_rule = np.full(r, _CONCLUSIVE_RULE)
    action = np.where(settle_now, np.where(promote, PROMOTE, ROLLBACK), CONTINUE)
    version = np.where(settle_now, np.where(promote, winner, 0), -1)
    rule = np.where(settle_now, settle_rule, _COLLECTING)
    action = np.where(rollback_now, ROLLBACK, action)
    version = np.where(rollback_now, 0, version)
    rule = np.where(rollback_now, _VIOLATED_RULE, rule)
    return action.astype(np.int64), version.astype(np.int64), rule.astype(np.int64)


def recommend(
    spec: ExperimentSpec,
    assessments: Mapping[str, tuple[ObjectiveAssessment, ...]],
    winner: WinnerAssessment,
    last_iteration: bool,
) -> Recommendation:
    assert spec.version_info is not None
    names = spec.version_info.names
    baseline = names[0]
    verdict = np.array(
        [[[assessment.VERDICTS.index(a.verdict) for a in assessments[n]] for n in names]]
    )
    conclusive = np.array([[[a.conclusive for a in assessments[n]] for n in names]])
    if verdict.size == 0:
        verdict = np.zeros((1, len(names), 0), dtype=np.int64)
        conclusive = np.zeros((1, len(names), 0), dtype=np.bool_)
    may = may_roll_back(spec, verdict, conclusive)
    index = names.index(winner.winner) if winner.winner_found and winner.winner else -1
    action_, version_, rule_ = decide(
        spec.strategy.testing_pattern,
        may,
        np.array([index]),
        np.array([winner.conclusive]),
        last_iteration,
    )
    action, rule = ACTIONS[int(action_[0])], RULES[int(rule_[0])]
    version = names[int(version_[0])] if version_[0] >= 0 else None
    if rule == "objective-violated":
        details = "; ".join(
            next(a.message for j, a in enumerate(assessments[n]) if may[0, v, j])
            for v, n in enumerate(names)
            if may[0, v].any()
            and (v == 0) == (spec.strategy.testing_pattern is TestingPattern.CONFORMANCE)
        )
        message = f"roll back to {baseline}: {details}"
    elif action is Action.CONTINUE:
        message = winner.message
    elif action is Action.PROMOTE:
        message = f"promote {version}: {winner.message}"
    elif winner.winner_found and winner.winner is not None:
        message = f"roll back to {baseline}: {winner.message}"
    else:
        message = f"no winner; keep {baseline}: {winner.message}"
    return Recommendation(action, version, rule, message)
