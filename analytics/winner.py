"""Winner assessment per testing pattern, with a message saying why.

- Conformance: the baseline, if it satisfies all objectives.
- Canary: the candidate if it satisfies all, else the baseline if it does, else none.
- A/B and A/B/n: the best value of the first reward among versions satisfying all
  objectives. With evidence, a winner is declared only when its reward confidence sequence
  clears every other version still in the running (all sequences at alpha/K, so they hold
  together); with bare point values, iter8's plain maximum. Ties and missing rewards are
  reported, never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from analytics import evidence
from analytics.assessment import ObjectiveAssessment, Verdict, fmt
from analytics.evidence import Kind, Quantity
from analytics.measurements import Measurement
from analytics.model import Direction, ExperimentSpec, TestingPattern


@dataclass(frozen=True)
class RewardEvidence:
    version: str
    estimate: float | None
    interval: tuple[float, float] | None
    sample_size: float | None


@dataclass(frozen=True)
class WinnerAssessment:
    winner_found: bool
    winner: str | None
    best_versions: tuple[str, ...]
    conclusive: bool
    feasible: tuple[str, ...]
    message: str
    rewards: tuple[RewardEvidence, ...] = ()


def feasible_versions(
    names: tuple[str, ...], assessments: Mapping[str, tuple[ObjectiveAssessment, ...]]
) -> tuple[str, ...]:
    return tuple(n for n in names if all(a.satisfied for a in assessments[n]))


def _violated(assessments: tuple[ObjectiveAssessment, ...]) -> bool:
    return any(a.verdict is Verdict.VIOLATED for a in assessments)


def assess_winner(
    spec: ExperimentSpec,
    assessments: Mapping[str, tuple[ObjectiveAssessment, ...]],
    measurements: Mapping[str, Mapping[str, Measurement]],
) -> WinnerAssessment:
    if spec.version_info is None:
        raise ValueError("spec.versionInfo is not resolved yet")
    info = spec.version_info
    names = info.names
    baseline = info.baseline.name
    feasible = feasible_versions(names, assessments)
    pattern = spec.strategy.testing_pattern

    def conclusive_all(version: str) -> bool:
        return all(a.conclusive for a in assessments[version])

    if pattern is TestingPattern.CONFORMANCE:
        if baseline in feasible:
            return WinnerAssessment(
                True,
                baseline,
                (baseline,),
                conclusive_all(baseline),
                feasible,
                f"baseline {baseline} satisfies all objectives",
            )
        return WinnerAssessment(
            False,
            None,
            (),
            False,
            feasible,
            f"baseline {baseline} does not (yet) satisfy all objectives: "
            + _unsatisfied(assessments[baseline]),
        )

    if pattern is TestingPattern.CANARY:
        candidate = info.candidates[0].name
        if candidate in feasible:
            return WinnerAssessment(
                True,
                candidate,
                (candidate,),
                conclusive_all(candidate),
                feasible,
                f"candidate {candidate} satisfies all objectives",
            )
        candidate_out = any(
            a.verdict is Verdict.VIOLATED and a.conclusive for a in assessments[candidate]
        )
        why = _unsatisfied(assessments[candidate])
        if baseline in feasible:
            return WinnerAssessment(
                True,
                baseline,
                (baseline,),
                candidate_out,
                feasible,
                f"baseline {baseline} satisfies all objectives; candidate {candidate} does not"
                f" (yet): {why}",
            )
        return WinnerAssessment(
            False,
            None,
            (),
            False,
            feasible,
            f"no version satisfies all objectives; candidate {candidate}: {why}",
        )

    return _best_by_reward(spec, names, assessments, measurements, feasible)


def _unsatisfied(items: tuple[ObjectiveAssessment, ...]) -> str:
    bad = [f"{a.metric} {a.verdict.value}" for a in items if not a.satisfied]
    return ", ".join(bad) if bad else "none"


def _best_by_reward(
    spec: ExperimentSpec,
    names: tuple[str, ...],
    assessments: Mapping[str, tuple[ObjectiveAssessment, ...]],
    measurements: Mapping[str, Mapping[str, Measurement]],
    feasible: tuple[str, ...],
) -> WinnerAssessment:
    if not spec.criteria.rewards:
        return WinnerAssessment(False, None, (), False, feasible, "no reward metric in experiment")
    reward = spec.criteria.rewards[0]
    higher = reward.preferred_direction is Direction.HIGH
    by_version = measurements.get(reward.metric, {})
    quantities = {n: evidence.quantity(by_version.get(n)) for n in names}
    alpha = spec.criteria.alpha / len(names)
    computed = evidence.bounds([evidence.Request(quantities[n], alpha) for n in names])
    interval = dict(zip(names, computed, strict=True))
    rewards = tuple(
        RewardEvidence(
            n,
            quantities[n].estimate,
            interval[n] if quantities[n].kind in (Kind.COUNTS, Kind.MEAN) else None,
            quantities[n].sample_size,
        )
        for n in names
    )
    if not feasible:
        return WinnerAssessment(
            False, None, (), False, feasible, "no version satisfies all objectives", rewards
        )
    running = [n for n in names if not _violated(assessments[n])]
    missing = [n for n in running if quantities[n].kind is Kind.NONE]
    with_value = [n for n in feasible if quantities[n].kind is not Kind.NONE]
    notes = [f"reward {reward.metric} for {n} is not available" for n in missing]
    statistical = all(quantities[n].kind in (Kind.COUNTS, Kind.MEAN) for n in with_value)
    if not with_value or (statistical and missing):
        # With evidence, a version still lacking a reward could yet be the best one: report
        # it, don't guess. (Point values follow iter8: the missing version is skipped.)
        return WinnerAssessment(
            False,
            None,
            (),
            False,
            feasible,
            "; ".join(notes or [f"reward {reward.metric} values are not available"]),
            rewards,
        )

    def value(n: str) -> float:
        q: Quantity = quantities[n]
        assert q.estimate is not None
        return q.estimate if higher else -q.estimate

    if not statistical:
        top = max(value(n) for n in with_value)
        best = tuple(n for n in with_value if value(n) == top)
        found = len(best) == 1
        what = "best" if found else "tied for best"
        message = f"{', '.join(best)} {what} on {reward.metric} by plain comparison" + (
            "; " + "; ".join(notes) if notes else ""
        )
        return WinnerAssessment(
            found, best[0] if found else None, best, False, feasible, message, rewards
        )

    def lower(n: str) -> float:
        lo, hi = interval[n]
        return lo if higher else -hi

    def upper(n: str) -> float:
        lo, hi = interval[n]
        return hi if higher else -lo

    dominant = [n for n in with_value if all(lower(n) > upper(o) for o in running if o != n)]
    if dominant:
        w = dominant[0]
        objectives_conclusive = all(a.conclusive for a in assessments[w])
        return WinnerAssessment(
            True,
            w,
            (w,),
            objectives_conclusive,
            feasible,
            f"{w} is best on {reward.metric} ({fmt(quantities[w].estimate)}): its confidence"
            f" sequence clears every other version still in the running",
            rewards,
        )
    plausible = tuple(
        n
        for n in with_value
        if upper(n) >= max((lower(o) for o in running if o != n), default=-1e300)
    )
    return WinnerAssessment(
        False,
        None,
        plausible,
        False,
        feasible,
        f"not yet conclusive on {reward.metric}: {', '.join(plausible)} could still be best",
        rewards,
    )
