"""`analytics.analysis.analyze` for R replicates of one experiment at once (leading axis R).

The benchmarks run thousands of simulated experiments; building R `Experiment` values and
analysing them one by one would cost seconds per iteration. Nothing of the analysis is
written here: the verdicts (`assessment.judge`, `assessment.combine`), the posterior
probabilities (`bayes`, `allocation.condition_probability`), the winner
(`winner.pattern_winner`, `winner.reward_winner`), the targets, caps and rounding
(`allocation`) and the recommendation rules (`analysis.may_roll_back`, `analysis.decide`)
are the array functions `analyze` itself calls with R = 1. This module only turns arrays of
measurements into their evidence and wires those functions together;
tests/unit/benchmarks/test_batch.py checks that every verdict, winner, weight and
recommendation equals `analyze`'s on random inputs. The one exception is `RatioSums` (and
`PairSums` over it), the running conditional tests per replicate: `conditional.RatioTest`
and `PairTest` fold in pure Python, since the stages that only parse the status must not
load numpy, so the array fold lives here (tests/unit/analytics/test_conditional.py checks
both fold alike).

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
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from analytics import allocation, analysis, assessment, conditional, sequential, split, winner
from analytics.analysis import CONTINUE, PROMOTE, ROLLBACK, RULES
from analytics.assessment import SATISFIED, UNDECIDED, VERDICTS, VIOLATED
from analytics.evidence import Arrays
from analytics.measurements import Histogram as _ScalarHistogram
from analytics.model import DeploymentPattern, Direction, ExperimentSpec, TestingPattern

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

__all__ = [
    "CONTINUE",
    "PROMOTE",
    "ROLLBACK",
    "RULES",
    "SATISFIED",
    "UNDECIDED",
    "VERDICTS",
    "VIOLATED",
    "BatchAnalysis",
    "Counts",
    "Histogram",
    "Measurement",
    "Moments",
    "PairSums",
    "RatioSums",
    "analyze",
]


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

    Arrays are (R, M) per test, and (R, M, G) for the log likelihood-ratio sums. For a
    candidate's tests (`start`, `fold`) column m is version m's test against the baseline
    (column 0 is unused); `PairSums` keeps one column per pair of versions. Like a
    `RatioTest` with `iteration > 0`: pass it to `analyze` once the first iteration is folded.
    """

    margin: float
    violation: FloatArray
    satisfaction: FloatArray
    reference: FloatArray  # (R, M, 4): candidate events, requests, baseline events, requests
    dispersion: FloatArray  # (R, M, 2): total, windows
    offsets: tuple[float, ...] = conditional.RATIO_OFFSETS
    flip: bool = False  # conditional.PairTest.FLIP: judge on the complements past a half

    @staticmethod
    def start(
        margin: float,
        shape: tuple[int, int],
        offsets: tuple[float, ...] = conditional.RATIO_OFFSETS,
        flip: bool = False,
    ) -> RatioSums:
        grid = len(offsets)
        return RatioSums(
            margin,
            np.zeros((*shape, grid)),
            np.zeros((*shape, grid)),
            np.zeros((*shape, 4)),
            np.zeros((*shape, 2)),
            offsets,
            flip,
        )

    def fold(self, events: FloatArray, requests: FloatArray) -> None:
        """`RatioTest.fold` for every replicate and candidate: (R, K) counts this window."""
        e, n = np.rint(np.maximum(events, 0.0)), np.rint(np.maximum(requests, 0.0))
        b, nb = e[:, :1] + 0 * e[:, 1:], n[:, :1] + 0 * n[:, 1:]
        self.fold_columns(slice(1, None), e[:, 1:], n[:, 1:], b, nb)

    def fold_columns(
        self, columns: slice, c: FloatArray, nc: FloatArray, b: FloatArray, nb: FloatArray
    ) -> None:
        """`RatioTest.fold` for the tests in `columns`: (R, M) rounded counts, candidate
        (c, nc) against baseline (b, nb)."""
        original = np.stack([c, nc, b, nb], axis=-1)
        ref = self.reference[:, columns]
        disp = self.dispersion[:, columns]
        flip = np.zeros(c.shape, dtype=np.bool_)
        if self.flip:
            flip = ref[..., 0] + ref[..., 2] > (ref[..., 1] + ref[..., 3]) / 2
            c, b = np.where(flip, nc - c, c), np.where(flip, nb - b, b)
            complement = np.stack(
                [ref[..., 1] - ref[..., 0], ref[..., 1], ref[..., 3] - ref[..., 2], ref[..., 3]],
                axis=-1,
            )
            ref = np.where(flip[..., None], complement, ref)
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
        v, s = sequential.ratio_log_lr(c, nc, b, nb, self.margin, self.offsets)
        v, s = v / phi[..., None], s / phi[..., None]
        w = conditional.INCIDENT_WEIGHT
        damped = np.logaddexp(np.log1p(-w), np.log(w) + v)
        above = np.where(hit[..., None], damped, v)
        below = np.where(hit[..., None], 0.0, s)
        # A higher share of the complements is evidence for the other side.
        self.violation[:, columns] += np.where(flip[..., None], below, above)
        self.satisfaction[:, columns] += np.where(flip[..., None], above, below)
        keep = np.where(hit, 0.0, 1.0)[..., None]
        self.reference[:, columns] += keep * original
        self.dispersion[:, columns] += np.stack([residual, counted.astype(np.float64)], axis=-1)

    def take(self, rows: IntArray) -> RatioSums:
        return RatioSums(
            self.margin,
            self.violation[rows],
            self.satisfaction[rows],
            self.reference[rows],
            self.dispersion[rows],
            self.offsets,
            self.flip,
        )


@dataclass(frozen=True, eq=False)
class PairSums:
    """Batched `conditional.PairTest`s of the first reward: one per pair of versions i < j,
    in `itertools.combinations` order, updated in place."""

    k: int
    sums: RatioSums

    @staticmethod
    def start(shape: tuple[int, int]) -> PairSums:
        r, k = shape
        pairs = k * (k - 1) // 2
        start = RatioSums.start(
            1.0, (r, pairs), conditional.PairTest.OFFSETS, conditional.PairTest.FLIP
        )
        return PairSums(k, start)

    def fold(self, events: FloatArray, requests: FloatArray) -> None:
        """Every pair's test with this window's (R, K) counts added."""
        i, j = np.triu_indices(self.k, 1)
        e, n = np.rint(np.maximum(events, 0.0)), np.rint(np.maximum(requests, 0.0))
        self.sums.fold_columns(slice(None), e[:, i], n[:, i], e[:, j], n[:, j])

    def matrix(self) -> FloatArray:
        """(R, K, K): log evidence that version i's rate exceeds version j's."""
        return winner.pair_matrix(
            self.k,
            sequential.ratio_log_evidence(self.sums.violation),
            sequential.ratio_log_evidence(self.sums.satisfaction),
        )

    def take(self, rows: IntArray) -> PairSums:
        return PairSums(self.k, self.sums.take(rows))


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


def _arrays(m: Measurement, bucket_limit: float | None, scale: float) -> Arrays:
    """The batched `evidence.quantity`: a measurement's evidence as (R, K) arrays."""
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
        return Arrays(True, events, trials, np.zeros_like(trials), trials > 0, scale)
    count = np.asarray(m.count, dtype=np.float64)
    squares = np.asarray(m.sum_of_squares, dtype=np.float64)
    return Arrays(False, count, np.asarray(m.total, dtype=np.float64), squares, count > 0, scale)


@dataclass(frozen=True, eq=False)
class _Objective:
    quantity: Arrays
    judged: list[assessment.ConditionVerdict]
    verdict: IntArray  # (R, K)


def _assess(
    spec: ExperimentSpec,
    measurements: Mapping[str, Measurement],
    shape: tuple[int, int],
    ratio_sums: Mapping[str, RatioSums] | None,
) -> list[_Objective]:
    """The batched `assessment.assess_versions`, one entry per objective."""
    alpha = spec.criteria.alpha
    k = shape[1]
    plans = []
    for objective in spec.criteria.objectives:
        m = measurements.get(objective.metric) or Counts(np.zeros(shape), np.zeros(shape))
        histogram = isinstance(m, Histogram)
        scale = assessment.prior_scale(objective, histogram, sequential.DEFAULT_SCALE)
        q = _arrays(m, objective.upper_limit if histogram else None, scale)
        plans.append((objective, histogram, q))
    n_baseline = sum(len(assessment.conditions(o, h, False)) for o, h, _ in plans)
    candidate_conditions = [assessment.conditions(o, h, o.is_relative) for o, h, _ in plans]
    n_candidate = sum(len(c) for c in candidate_conditions)
    alphas = assessment.levels(alpha, n_baseline, n_candidate, k)
    out: list[_Objective] = []
    for (objective, _, q), conditions in zip(plans, candidate_conditions, strict=True):
        # One call per objective: the four levels, every version at once.
        lower, upper = q.bounds(alphas[:, None, :])
        ratio = None
        sums = (ratio_sums or {}).get(objective.metric)
        if (
            sums is not None
            and objective.max_ratio is not None
            and math.isclose(sums.margin, objective.max_ratio)
        ):
            ratio = assessment.RatioEvidence(
                sequential.ratio_log_evidence(sums.violation),
                sequential.ratio_log_evidence(sums.satisfaction),
                np.ones(shape, dtype=np.bool_),
            )
        judged = assessment.judge(
            conditions, lower, upper, q.present, alpha, float(alphas[assessment.VIOLATE, -1]), ratio
        )
        out.append(_Objective(q, judged, assessment.combine_verdicts(judged, shape)))
    return out


def _unmet(objectives: list[_Objective], verdict: IntArray) -> FloatArray:
    """(R, K, O): the probability that each objective's conditions not yet satisfied hold."""
    out = []
    for objective in objectives:
        factor = np.ones(objective.verdict.shape)
        for item in objective.judged:
            holds = item.satisfied | ~item.applies
            prob = allocation.condition_probability(objective.quantity, item.condition)
            factor = factor * np.where(holds, 1.0, prob)
        out.append(factor)
    return np.stack(out, axis=-1) if out else np.ones(verdict.shape)


def _next_weights(
    spec: ExperimentSpec,
    current: FloatArray,
    objectives: list[_Objective],
    verdict: IntArray,
    found: IntArray,
    found_conclusive: BoolArray,
    reward: Arrays | None,
) -> IntArray | None:
    """The batched `allocation.next_weights`."""
    pattern = spec.strategy.deployment_pattern
    k = verdict.shape[1]
    if spec.strategy.testing_pattern is TestingPattern.CONFORMANCE:
        return None
    if pattern is DeploymentPattern.FIXED_SPLIT:
        return allocation.to_percentages(current)
    if pattern is DeploymentPattern.BLUE_GREEN:
        return allocation.blue_green_split(found, found_conclusive, k)
    running = ~np.any(verdict == VIOLATED, axis=-1)
    if spec.strategy.testing_pattern is TestingPattern.CANARY:
        # Every verdict here is anytime-valid, so conclusive wherever decided.
        conclusive = verdict != UNDECIDED
        feasible = allocation.prob_feasible(verdict, conclusive, _unmet(objectives, verdict))[:, 1]
        target = allocation.canary_target(spec, feasible, running[:, 1])
    else:
        target = allocation.reward_target(spec, reward, running)
    w = spec.strategy.weights
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
    pair_sums: PairSums | None = None,
) -> BatchAnalysis:
    """Analyse R replicates of `spec` at once, as `analytics.analysis.analyze` does each.

    Args:
        spec: the experiment, with resolved versionInfo.
        measurements: metric name -> batched measurement; a metric absent here has no data.
        completed_iterations: iterations already done (the same for every replicate).
        rng: one Generator for all replicates, or one per replicate (see the module doc).
        current_weights: (R, K) percentages now in force; None means none recorded yet.
        n_samples: posterior draws for P(best) (kept for callers, like `analyze`'s).
        ratio_sums: metric name -> the running conditional tests of its maxRatio condition
            (`ExperimentStatus.ratio_tests`); without one, the cumulative comparison.
        pair_sums: the first reward's windowed pairwise tests (`ExperimentStatus.reward_tests`);
            without them (or for a reward on means), the cumulative pairwise statistic.

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

    objectives = _assess(spec, measurements, (r, k), ratio_sums)
    verdict = (
        np.stack([o.verdict for o in objectives], axis=-1)
        if objectives
        else np.zeros((r, k, 0), dtype=np.int64)
    )
    # Every verdict here rests on a confidence sequence or the conditional test.
    conclusive = verdict != UNDECIDED
    satisfied = np.all(verdict == SATISFIED, axis=-1)
    all_conclusive = np.all(conclusive, axis=-1)
    ruled_out = np.any(verdict == VIOLATED, axis=-1)

    reward: Arrays | None = None
    pattern = spec.strategy.testing_pattern
    if spec.criteria.rewards:
        m = measurements.get(spec.criteria.rewards[0].metric)
        reward = _arrays(
            m or Counts(np.zeros((r, k)), np.zeros((r, k))), None, sequential.DEFAULT_SCALE
        )
        if pair_sums is not None and reward.is_counts:
            reward = replace(reward, pairs=pair_sums.matrix())
    if pattern in (TestingPattern.CONFORMANCE, TestingPattern.CANARY):
        found, found_conclusive = winner.pattern_winner(
            pattern, satisfied, all_conclusive, ruled_out
        )
    elif reward is None:
        found, found_conclusive = np.full(r, -1, dtype=np.int64), np.zeros(r, dtype=np.bool_)
    else:
        higher = spec.criteria.rewards[0].preferred_direction is Direction.HIGH
        decision = winner.reward_winner(reward, higher, spec.criteria.alpha, satisfied, ~ruled_out)
        found = decision.winner
        found_conclusive = (found >= 0) & all_conclusive[np.arange(r), np.maximum(found, 0)]

    if current_weights is None:
        start = split.initial_weights(spec) or {n: 0 for n in names}
        current = np.broadcast_to(np.array([float(start[n]) for n in names]), (r, k))
    else:
        current = np.asarray(current_weights, dtype=np.float64)
    weights = _next_weights(spec, current, objectives, verdict, found, found_conclusive, reward)

    last = completed_iterations + 1 >= spec.duration.total_iterations
    may = analysis.may_roll_back(spec, verdict, conclusive)
    action, version, rule = analysis.decide(pattern, may, found, found_conclusive, last)
    if weights is not None:
        onehot = (np.arange(k) == np.maximum(version, 0)[:, None]) * 100
        weights = np.where((action != CONTINUE)[:, None], onehot, weights).astype(np.int64)
    return BatchAnalysis(
        verdict=verdict,
        conclusive=conclusive,
        winner=found,
        winner_conclusive=found_conclusive,
        weights=weights,
        action=action,
        version=version,
        rule=rule,
        recommended=np.maximum(found, 0),
    )


def _shape(m: Measurement) -> tuple[int, ...]:
    if isinstance(m, Histogram):
        return tuple(np.shape(m.cumulative)[:2])
    return tuple(np.shape(m.events if isinstance(m, Counts) else m.count))
