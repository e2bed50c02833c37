"""`analytics.analysis.analyze` for R replicates of one experiment at once (leading axis R).

The benchmarks run thousands of simulated experiments; building R `Experiment` values and
analysing them one by one would cost seconds per iteration. This module runs the same
analysis with arrays. The A/B and A/B/n winner (`winner.reward_winner`) and weights
(`allocation.top_two_shares`), the caps and the rounding are not copied: both paths call
the very same array functions. The objectives' verdicts use the confidence sequences of
`analytics.sequential` and the conditions and prior scales of `analytics.assessment`; where
those modules only take one `Quantity` at a time (`bayes.prob_at_most`,
`bayes.mean_and_variance`), their formulas are repeated here term for term, and
tests/unit/benchmarks/test_batch.py checks that every verdict, winner, weight and
recommendation equals `analyze`'s on random inputs.

Measurements are arrays per metric: `Counts` (events, trials), `Moments` (count, sum, sum
of squares) or `Histogram` (cumulative bucket counts), each (R, K) or (R, K, B) with K the
versions in `spec.version_info.names` order. A version with no trials or observations is
"no data yet". Bare point values have no batched form: they carry no evidence to simulate.

Randomness: none of the analysis is random any more; `rng` (one Generator, or one per
replicate) is accepted for the callers' sake, as `analyze` accepts it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import special

from analytics import allocation, assessment, bayes, conditional, sequential, split
from analytics.measurements import Histogram as _ScalarHistogram
from analytics.model import (
    DeploymentPattern,
    Direction,
    ExperimentSpec,
    Objective,
    TestingPattern,
)
from analytics.winner import RewardArrays, reward_winner

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

UNDECIDED: Final = 0
SATISFIED: Final = 1
VIOLATED: Final = 2
VERDICTS: Final = (
    assessment.Verdict.UNDECIDED,
    assessment.Verdict.SATISFIED,
    assessment.Verdict.VIOLATED,
)

CONTINUE: Final = 0
PROMOTE: Final = 1
ROLLBACK: Final = 2

RULES: Final = (
    "collecting-evidence",
    "objective-violated",
    "winner-conclusive",
    "iterations-exhausted",
)
_COLLECTING, _VIOLATED_RULE, _CONCLUSIVE_RULE, _EXHAUSTED_RULE = range(4)


@dataclass(frozen=True, eq=False)
class Counts:
    """`events` out of `trials` per replicate and version, shape (R, K)."""

    events: FloatArray
    trials: FloatArray


@dataclass(frozen=True, eq=False)
class Moments:
    """Count, sum and sum of squares per replicate and version, shape (R, K)."""

    count: FloatArray
    total: FloatArray
    sum_of_squares: FloatArray


@dataclass(frozen=True, eq=False)
class Histogram:
    """Cumulative bucket counts (R, K, B) on `bounds` (ascending, ending with +inf)."""

    bounds: tuple[float, ...]
    cumulative: FloatArray


Measurement = Counts | Moments | Histogram


@dataclass(frozen=True, eq=False)
class RatioSums:
    """Batched `conditional.RatioTest`s of one metric against one margin, updated in place.

    Arrays are (R, K) per candidate (column 0, the baseline's, is unused), and (R, K, G)
    for the log likelihood-ratio sums. Like a `RatioTest` with `iteration > 0`: pass it to
    `analyze` once the first iteration is folded.
    """

    margin: float
    violation: FloatArray
    satisfaction: FloatArray
    reference: FloatArray  # (R, K, 4): candidate events, requests, baseline events, requests
    dispersion: FloatArray  # (R, K, 2): total, windows

    @staticmethod
    def start(margin: float, shape: tuple[int, int]) -> RatioSums:
        grid = len(conditional.RATIO_OFFSETS)
        return RatioSums(
            margin,
            np.zeros((*shape, grid)),
            np.zeros((*shape, grid)),
            np.zeros((*shape, 4)),
            np.zeros((*shape, 2)),
        )

    def fold(self, events: FloatArray, requests: FloatArray) -> None:
        """`RatioTest.fold` for every replicate and candidate: (R, K) counts this window."""
        e, n = np.rint(np.maximum(events, 0.0)), np.rint(np.maximum(requests, 0.0))
        c, nc, b, nb = e[:, 1:], n[:, 1:], e[:, :1] + 0 * e[:, 1:], n[:, :1] + 0 * n[:, 1:]
        ref = self.reference[:, 1:]
        disp = self.dispersion[:, 1:]
        hit = sequential.incident(
            c + b, nc + nb, ref[..., 0] + ref[..., 2], ref[..., 1] + ref[..., 3]
        )
        phi = np.maximum(
            1.0,
            (disp[..., 0] + conditional.DISPERSION_PRIOR * conditional.DISPERSION_PRIOR_WINDOWS)
            / (disp[..., 1] + conditional.DISPERSION_PRIOR_WINDOWS),
        )
        counted = ~hit & (nc > 0) & (nb > 0) & (c + b > 0)
        ratio = ((ref[..., 0] + 0.5) / (ref[..., 1] + 1.0)) / (
            (ref[..., 2] + 0.5) / (ref[..., 3] + 1.0)
        )
        safe_nc, safe_nb = np.where(counted, nc, 1.0), np.where(counted, nb, 1.0)
        theta = ratio * safe_nc / (ratio * safe_nc + safe_nb)
        total = np.where(counted, c + b, 1.0)
        residual = np.where(counted, (c - total * theta) ** 2 / (total * theta * (1 - theta)), 0.0)
        v, s = sequential.ratio_log_lr(c, nc, b, nb, self.margin)
        v, s = v / phi[..., None], s / phi[..., None]
        w = conditional.INCIDENT_WEIGHT
        damped = np.logaddexp(np.log1p(-w), np.log(w) + v)
        self.violation[:, 1:] += np.where(hit[..., None], damped, v)
        self.satisfaction[:, 1:] += np.where(hit[..., None], 0.0, s)
        keep = np.where(hit, 0.0, 1.0)[..., None]
        self.reference[:, 1:] += keep * np.stack([c, nc, b, nb], axis=-1)
        self.dispersion[:, 1:] += np.stack([residual, counted.astype(np.float64)], axis=-1)

    def take(self, rows: IntArray) -> RatioSums:
        return RatioSums(
            self.margin,
            self.violation[rows],
            self.satisfaction[rows],
            self.reference[rows],
            self.dispersion[rows],
        )


@dataclass(frozen=True, eq=False)
class BatchAnalysis:
    """What `analyze` returns, as arrays over replicates.

    verdict/conclusive: (R, K, O), codes UNDECIDED/SATISFIED/VIOLATED, objectives in spec
        order. winner: (R,) version index or -1. weights: (R, K) integer percentages, or
        None for Conformance. action: (R,) CONTINUE/PROMOTE/ROLLBACK; version: (R,) the
        version acted on (-1 to continue); rule: (R,) index into RULES. recommended: (R,)
        the version recommended for promotion.
    """

    verdict: IntArray
    conclusive: BoolArray
    winner: IntArray
    winner_conclusive: BoolArray
    weights: IntArray | None
    action: IntArray
    version: IntArray
    rule: IntArray
    recommended: IntArray


@dataclass(frozen=True, eq=False)
class _Quantity:
    """Batched `evidence.Quantity`: counts (a=events, b=trials) or a mean (a=count, b=sum)."""

    is_counts: bool
    a: FloatArray
    b: FloatArray
    sum_of_squares: FloatArray
    scale: float
    present: BoolArray
    estimate: FloatArray

    def bounds(self, alpha: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Confidence-sequence bounds, broadcasting `alpha` against (R, K)."""
        if self.is_counts:
            lo, hi = sequential.binomial_cs(self.a, self.b, alpha, self.scale)
        else:
            lo, hi = sequential.mean_cs(self.a, self.b, self.sum_of_squares, alpha)
        return np.where(self.present, lo, -np.inf), np.where(self.present, hi, np.inf)

    def arrays(self) -> RewardArrays:
        return RewardArrays(self.is_counts, self.a, self.b, self.sum_of_squares, self.present)

    def mean_and_variance(self) -> tuple[FloatArray, FloatArray]:
        """`bayes.mean_and_variance`, elementwise (meaningless where not `present`)."""
        if self.is_counts:
            a = self.a + bayes.JEFFREYS
            b = self.b - self.a + bayes.JEFFREYS
            return a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
        n = np.maximum(self.a, 2.0)
        variance = np.maximum(self.sum_of_squares - self.a * self.estimate**2, 0.0) / (n - 1)
        return self.estimate, variance / n

    def prob_at_most(self, limit: float) -> FloatArray:
        """`bayes.prob_at_most`, elementwise: 1/2 without data."""
        if self.is_counts:
            a = self.a + bayes.JEFFREYS
            b = self.b - self.a + bayes.JEFFREYS
            p = special.betainc(a, b, min(max(limit, 0.0), 1.0))
        else:
            p = _prob_normal_at_most(*self.mean_and_variance(), limit)
        return np.asarray(np.where(self.present, p, 0.5), dtype=np.float64)


def _prob_normal_at_most(mean: FloatArray, variance: FloatArray, limit: float) -> FloatArray:
    """`bayes.prob_normal_at_most`, elementwise."""
    safe = np.where(variance > 0, variance, 1.0)
    p = special.ndtr((limit - mean) / np.sqrt(safe))
    return np.asarray(np.where(variance > 0, p, np.where(mean <= limit, 1.0, 0.0)))


def _quantity(m: Measurement, bucket_limit: float | None, scale: float) -> _Quantity:
    """Batched `evidence.quantity`."""
    if isinstance(m, Histogram):
        if bucket_limit is None:
            raise ValueError("a histogram objective needs upperLimit to choose its bucket bound")
        # The scalar Histogram picks the bucket bound; reuse it so the choice is identical.
        probe = _ScalarHistogram(m.bounds, (0.0,) * len(m.bounds))
        index = m.bounds.index(probe.exceedance(bucket_limit)[0])
        cumulative = np.asarray(m.cumulative, dtype=np.float64)
        trials = cumulative[..., -1]
        m = Counts(trials - cumulative[..., index], trials)
    if isinstance(m, Counts):
        events = np.asarray(m.events, dtype=np.float64)
        trials = np.asarray(m.trials, dtype=np.float64)
        present = trials > 0
        estimate = np.where(present, events / np.where(present, trials, 1.0), np.nan)
        return _Quantity(True, events, trials, np.zeros_like(trials), scale, present, estimate)
    count = np.asarray(m.count, dtype=np.float64)
    total = np.asarray(m.total, dtype=np.float64)
    present = count > 0
    estimate = np.where(present, total / np.where(present, count, 1.0), np.nan)
    squares = np.asarray(m.sum_of_squares, dtype=np.float64)
    return _Quantity(False, count, total, squares, scale, present, estimate)


@dataclass(frozen=True, eq=False)
class _Assessed:
    verdict: IntArray  # (R, K, O)
    # Per objective, per condition: kind, limit and (R, K) satisfied / probability inputs.
    conditions: list[list[tuple[str, float, BoolArray]]]
    quantities: list[_Quantity]


def _limit_of(kind: str, limit: float, baseline_value: FloatArray) -> FloatArray:
    if kind == "ratio":
        return limit * baseline_value
    return baseline_value + limit


_Plan = tuple[Objective, "_Quantity", list[assessment._Condition], list[assessment._Condition]]


def _assess(
    spec: ExperimentSpec,
    measurements: dict[str, Measurement],
    shape: tuple[int, int],
    ratio_sums: Mapping[str, RatioSums] | None = None,
) -> _Assessed:
    """Batched `assessment.assess_versions`: verdicts (R, K, O)."""
    alpha = spec.criteria.alpha
    r, k = shape
    plans: list[_Plan] = []
    for objective in spec.criteria.objectives:
        m = measurements.get(objective.metric)
        if m is None:
            m = Counts(np.zeros(shape), np.zeros(shape))
        histogram = isinstance(m, Histogram)
        scale = assessment._scale(objective, histogram, sequential.DEFAULT_SCALE)
        q = _quantity(m, objective.upper_limit if histogram else None, scale)
        base_conditions = assessment._conditions(objective, histogram, False)
        cand_conditions = assessment._conditions(objective, histogram, objective.is_relative)
        plans.append((objective, q, base_conditions, cand_conditions))

    n_base = max(1, sum(len(p[2]) for p in plans))
    n_cand = max(1, sum(len(p[3]) for p in plans))
    av_base, av_cand = alpha / n_base, alpha / n_cand
    av = np.array([av_base] + [av_cand] * (k - 1))

    verdict = np.zeros((r, k, len(plans)), dtype=np.int64)
    conditions: list[list[tuple[str, float, BoolArray]]] = []
    for i, (objective, q, base_conditions, cand_conditions) in enumerate(plans):
        # One call per objective: the four levels analyze asks for, every version at once.
        levels = np.stack([av, np.full(k, alpha), np.full(k, av_cand / 2), np.full(k, alpha / 2)])
        lo, hi = q.bounds(levels[:, None, :])
        lo_v, hi_v, lo_s, hi_s = lo[0], hi[0], lo[1], hi[1]
        lo_vh, hi_vh, lo_sh, hi_sh = lo[2], hi[2], lo[3], hi[3]
        objective_conditions: list[tuple[str, float, BoolArray]] = []
        sat_all = np.ones((r, k), dtype=np.bool_)
        viol_any = np.zeros((r, k), dtype=np.bool_)
        has_conditions = np.array([bool(base_conditions)] + [bool(cand_conditions)] * (k - 1))
        for cond in cand_conditions:
            applies = np.ones(k, dtype=np.bool_)
            if cond.kind in ("upper", "lower"):
                if cond.kind == "upper":
                    violated = lo_v > cond.limit
                    satisfied = ~violated & (hi_s <= cond.limit)
                else:
                    violated = hi_v < cond.limit
                    satisfied = ~violated & (lo_s >= cond.limit)
                violated &= q.present
                satisfied &= q.present
            elif (
                cond.kind == "ratio"
                and (sums := (ratio_sums or {}).get(objective.metric)) is not None
                and math.isclose(sums.margin, cond.limit)
            ):
                # `assessment._conditional`: the conditional test on per-iteration counts.
                applies[0] = False
                violated = sequential.ratio_log_evidence(sums.violation) >= -np.log(av_cand)
                satisfied = ~violated & (
                    sequential.ratio_log_evidence(sums.satisfaction) >= -np.log(alpha)
                )
            else:
                applies[0] = False
                both = q.present & q.present[:, :1]
                violated = both & (lo_vh > _limit_of(cond.kind, cond.limit, hi_vh[:, :1]))
                satisfied = (
                    both & ~violated & (hi_sh <= _limit_of(cond.kind, cond.limit, lo_sh[:, :1]))
                )
            violated &= applies
            satisfied |= ~applies
            sat_all &= satisfied
            viol_any |= violated
            objective_conditions.append((cond.kind, cond.limit, satisfied))
        code = np.where(viol_any, VIOLATED, np.where(sat_all, SATISFIED, UNDECIDED))
        verdict[:, :, i] = np.where(has_conditions, code, SATISFIED)
        conditions.append(objective_conditions)
    return _Assessed(verdict, conditions, [p[1] for p in plans])


def _winner(
    spec: ExperimentSpec,
    verdict: IntArray,
    reward: _Quantity | None,
) -> tuple[IntArray, BoolArray]:
    """Batched `winner.assess_winner`: (winner index or -1, conclusive)."""
    r = verdict.shape[0]
    satisfied = np.all(verdict == SATISFIED, axis=-1)
    decided = np.all(verdict != UNDECIDED, axis=-1)
    violated = np.any(verdict == VIOLATED, axis=-1)
    none = np.full(r, -1, dtype=np.int64)
    pattern = spec.strategy.testing_pattern
    if pattern is TestingPattern.CONFORMANCE:
        return np.where(satisfied[:, 0], 0, -1), satisfied[:, 0] & decided[:, 0]
    if pattern is TestingPattern.CANARY:
        winner = np.where(satisfied[:, 1], 1, np.where(satisfied[:, 0], 0, -1))
        conclusive = np.where(satisfied[:, 1], decided[:, 1], satisfied[:, 0] & violated[:, 1])
        return winner, conclusive
    if reward is None or not spec.criteria.rewards:
        return none, np.zeros(r, dtype=np.bool_)
    higher = spec.criteria.rewards[0].preferred_direction is Direction.HIGH
    decision = reward_winner(reward.arrays(), higher, spec.criteria.alpha, satisfied, ~violated)
    found = decision.winner
    conclusive = (found >= 0) & decided[np.arange(r), np.maximum(found, 0)]
    return found, conclusive


def _prob_feasible(assessed: _Assessed) -> FloatArray:
    """Batched `allocation._prob_feasible` for every version: (R, K)."""
    r, k, _ = assessed.verdict.shape
    p = np.ones((r, k))
    out = np.zeros((r, k), dtype=np.bool_)
    q_all = assessed.quantities
    for i, conditions in enumerate(assessed.conditions):
        v = assessed.verdict[:, :, i]
        out |= v == VIOLATED
        q = q_all[i]
        factor = np.ones((r, k))
        for kind, limit, satisfied in conditions:
            if kind == "upper":
                prob = q.prob_at_most(limit)
            elif kind == "lower":
                prob = 1.0 - q.prob_at_most(limit)
            else:
                prob = _prob_relative(q, kind, limit)
            factor = factor * np.where(satisfied, 1.0, prob)
        p = p * np.where(v == SATISFIED, 1.0, factor)
    return np.asarray(np.where(out, 0.0, p), dtype=np.float64)


def _prob_relative(q: _Quantity, kind: str, limit: float) -> FloatArray:
    mean, variance = q.mean_and_variance()
    ratio = limit if kind == "ratio" else 1.0
    shift = limit if kind == "increase" else 0.0
    p = _prob_normal_at_most(
        mean - ratio * mean[:, :1] - shift, variance + ratio**2 * variance[:, :1], 0.0
    )
    return np.asarray(np.where(q.present & q.present[:, :1], p, 0.5), dtype=np.float64)


def _reward_target(
    spec: ExperimentSpec, assessed: _Assessed, reward: _Quantity | None
) -> FloatArray:
    """`allocation._reward_target` for every replicate: (R, K) target shares."""
    running = ~np.any(assessed.verdict == VIOLATED, axis=-1)  # sequence verdicts: conclusive
    if reward is None or not spec.criteria.rewards:
        shares = running / np.maximum(running.sum(axis=-1, keepdims=True), 1)
        k = running.shape[-1]
        return np.asarray(np.where(running.any(axis=-1)[:, None], shares, np.eye(k)[0]))
    higher = spec.criteria.rewards[0].preferred_direction is Direction.HIGH
    return allocation.top_two_shares(reward.arrays(), higher, spec.criteria.alpha, running)


def _next_weights(
    spec: ExperimentSpec,
    current: FloatArray,
    assessed: _Assessed,
    winner: IntArray,
    winner_conclusive: BoolArray,
    reward: _Quantity | None,
    rng: np.random.Generator | Sequence[np.random.Generator],
    n_samples: int,
) -> IntArray | None:
    """Batched `allocation.next_weights`."""
    pattern = spec.strategy.deployment_pattern
    k = assessed.verdict.shape[1]
    if spec.strategy.testing_pattern is TestingPattern.CONFORMANCE:
        return None
    if pattern is DeploymentPattern.FIXED_SPLIT:
        return allocation.to_percentages(current)
    if pattern is DeploymentPattern.BLUE_GREEN:
        validated = (winner > 0) & winner_conclusive
        flip = np.where(validated[:, None], np.arange(k) == winner[:, None], np.arange(k) == 0)
        return allocation.to_percentages(100.0 * flip)
    w = spec.strategy.weights
    if spec.strategy.testing_pattern is TestingPattern.CANARY:
        feasible = _prob_feasible(assessed)[:, 1]
        share = feasible * w.max_candidate_weight / 100.0
        # A candidate not yet conclusively failing keeps `allocation.hold_share`.
        doubtful = ~np.any(assessed.verdict[:, 1, :] == VIOLATED, axis=-1)
        share = np.where(doubtful, np.maximum(share, allocation.hold_share(spec)), share)
        target = np.stack([1.0 - share, share], axis=-1)
    else:
        target = _reward_target(spec, assessed, reward)
    capped = allocation.apply_caps(
        target, current, w.max_candidate_weight, w.max_candidate_weight_increment
    )
    return allocation.to_percentages(capped)


def analyze(
    spec: ExperimentSpec,
    measurements: dict[str, Measurement],
    completed_iterations: int,
    rng: np.random.Generator | Sequence[np.random.Generator],
    current_weights: npt.ArrayLike | None = None,
    n_samples: int = allocation.DEFAULT_SAMPLES,
    ratio_sums: Mapping[str, RatioSums] | None = None,
) -> BatchAnalysis:
    """Analyse R replicates of `spec` at once, as `analytics.analysis.analyze` does each.

    Args:
        spec: the experiment, with resolved versionInfo.
        measurements: metric name -> batched measurement; a metric absent here has no data.
        completed_iterations: iterations already done (the same for every replicate).
        rng: one Generator for all replicates, or one per replicate (see the module doc).
        current_weights: (R, K) percentages now in force; None means none recorded yet.
        n_samples: posterior draws for P(best).
        ratio_sums: metric name -> the running conditional tests of its maxRatio condition
            (`ExperimentStatus.ratio_tests`); without one, the cumulative comparison.

    Raises:
        ValueError: versionInfo is not resolved, or shapes disagree.
    """
    if spec.version_info is None:
        raise ValueError("spec.versionInfo is not resolved yet")
    names = spec.version_info.names
    k = len(names)
    shapes = {_shape(m) for m in measurements.values()}
    if current_weights is not None:
        shapes.add(np.shape(current_weights))
    if len(shapes) != 1 or next(iter(shapes))[1:] != (k,):
        raise ValueError(f"every measurement must have shape (R, {k}); got {sorted(shapes)}")
    r = int(next(iter(shapes))[0])
    if not isinstance(rng, np.random.Generator) and len(rng) != r:
        raise ValueError(f"need one Generator per replicate ({r}), got {len(rng)}")

    assessed = _assess(spec, measurements, (r, k), ratio_sums)
    reward: _Quantity | None = None
    if spec.criteria.rewards:
        m = measurements.get(spec.criteria.rewards[0].metric)
        if m is None:
            m = Counts(np.zeros((r, k)), np.zeros((r, k)))
        reward = _quantity(m, None, sequential.DEFAULT_SCALE)
    winner, winner_conclusive = _winner(spec, assessed.verdict, reward)

    if current_weights is None:
        start = split.initial_weights(spec) or {n: 0 for n in names}
        current = np.broadcast_to(np.array([float(start[n]) for n in names]), (r, k))
    else:
        current = np.asarray(current_weights, dtype=np.float64)
    weights = _next_weights(
        spec, current, assessed, winner, winner_conclusive, reward, rng, n_samples
    )

    last = completed_iterations + 1 >= spec.duration.total_iterations
    action, version, rule = _recommend(spec, assessed.verdict, winner, winner_conclusive, last)
    if weights is not None:
        onehot = (np.arange(k) == np.maximum(version, 0)[:, None]) * 100
        weights = np.where((action != CONTINUE)[:, None], onehot, weights).astype(np.int64)
    return BatchAnalysis(
        verdict=assessed.verdict,
        conclusive=assessed.verdict != UNDECIDED,
        winner=winner,
        winner_conclusive=winner_conclusive,
        weights=weights,
        action=action,
        version=version,
        rule=rule,
        recommended=np.maximum(winner, 0),
    )


def _shape(m: Measurement) -> tuple[int, ...]:
    if isinstance(m, Histogram):
        return tuple(np.shape(m.cumulative)[:2])
    return tuple(np.shape(m.events if isinstance(m, Counts) else m.count))


def _recommend(
    spec: ExperimentSpec,
    verdict: IntArray,
    winner: IntArray,
    winner_conclusive: BoolArray,
    last: bool,
) -> tuple[IntArray, IntArray, IntArray]:
    """Batched `analysis.recommend`: (action, version, rule)."""
    r, k, _ = verdict.shape
    pattern = spec.strategy.testing_pattern
    violated = verdict == VIOLATED
    may = np.zeros_like(violated)
    for i, objective in enumerate(spec.criteria.objectives):
        setting = objective.rollback_on_failure
        # Sequence verdicts are all conclusive, so unset means "may roll back" whatever the
        # deployment pattern (only point values, never batched, depend on BlueGreen).
        allowed = True if setting is None else setting
        may[:, :, i] = violated[:, :, i] & allowed
    at_stake = [0] if pattern is TestingPattern.CONFORMANCE else list(range(1, k))
    failing = may.any(axis=-1)[:, at_stake]
    rollback_now = failing.all(axis=-1) if at_stake else np.zeros(r, dtype=np.bool_)

    found = winner >= 0
    canary_baseline = (winner == 0) & (pattern is TestingPattern.CANARY)
    settle_action = np.where(found & ~canary_baseline, PROMOTE, ROLLBACK)
    settle_version = np.where(found & ~canary_baseline, winner, 0)

    action = np.full(r, CONTINUE, dtype=np.int64)
    version = np.full(r, -1, dtype=np.int64)
    rule = np.full(r, _COLLECTING, dtype=np.int64)
    settle_now = found & winner_conclusive
    if last:
        settle_rule = np.where(settle_now, _CONCLUSIVE_RULE, _EXHAUSTED_RULE)
        settle_now = np.ones(r, dtype=np.bool_)
    else:
        settle_rule = np.full(r, _CONCLUSIVE_RULE)
    action = np.where(settle_now, settle_action, action)
    version = np.where(settle_now, settle_version, version)
    rule = np.where(settle_now, settle_rule, rule)
    action = np.where(rollback_now, ROLLBACK, action)
    version = np.where(rollback_now, 0, version)
    rule = np.where(rollback_now, _VIOLATED_RULE, rule)
    return action.astype(np.int64), version.astype(np.int64), rule.astype(np.int64)
