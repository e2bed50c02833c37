"""Version assessments: for each version and objective, satisfied, violated or undecided.

With counts, moments or histogram buckets the verdict comes from confidence sequences, so
re-checking every iteration for hours keeps both error rates at or below alpha:
- a violation needs the lower bound above an upper limit (or the upper bound below a lower
  limit); violation tests share alpha Bonferroni-style across a version's conditions, because
  any one of them rolls the version back;
- satisfaction needs the upper bound at or below the limit; "all satisfied" is an
  intersection of tests, which needs no correction, so each uses the full alpha.
Relative conditions compare a candidate's sequence with the baseline's, each at half the
level, so the pair covers both truths at once.

A bare point value (no sample size, as iter8 v2 recorded it) gets iter8's plain comparison,
where equality passes, and the verdict is marked as not anytime-valid.

The verdicts themselves are computed once, on arrays with a leading replicate axis
(`judge`, `combine`): `assess_versions` calls them for one experiment (R = 1) and adds the
messages, `analytics.batch` for R replicates.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from analytics import conditional, evidence, sequential
from analytics.evidence import Kind, Quantity
from analytics.measurements import Histogram, Measurement
from analytics.model import ExperimentSpec, Objective

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class Verdict(enum.Enum):
    SATISFIED = "satisfied"
    VIOLATED = "violated"
    UNDECIDED = "undecided"


# Verdicts as array codes: VERDICTS[code] is the Verdict.
UNDECIDED: Final = 0
SATISFIED: Final = 1
VIOLATED: Final = 2
VERDICTS: Final = (Verdict.UNDECIDED, Verdict.SATISFIED, Verdict.VIOLATED)

# The four confidence levels an assessment reads bounds at (rows of `levels`).
VIOLATE, SATISFY, VIOLATE_HALF, SATISFY_HALF = range(4)


@dataclass(frozen=True)
class ConditionResult:
    kind: str  # "upper" | "lower" | "ratio" | "increase"
    limit: float
    description: str
    verdict: Verdict
    conclusive: bool
    reason: str


@dataclass(frozen=True)
class ObjectiveAssessment:
    """One version against one objective, with the evidence behind the verdict.

    `conclusive` is true when the verdict rests on anytime-valid evidence, so acting on it
    now keeps the error rate at alpha.
    """

    version: str
    index: int
    metric: str
    verdict: Verdict
    conclusive: bool
    estimate: float | None
    interval: tuple[float, float] | None
    sample_size: float | None
    bucket_bound: float | None
    conditions: tuple[ConditionResult, ...]
    quantity: Quantity

    @property
    def satisfied(self) -> bool:
        return self.verdict is Verdict.SATISFIED

    @property
    def message(self) -> str:
        parts = "; ".join(
            f"{c.description}: {c.verdict.value} ({c.reason})" for c in self.conditions
        )
        return f"{self.metric} for {self.version}: {parts}"


def fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.4g}"


@dataclass(frozen=True)
class Condition:
    kind: str  # "upper" | "lower" | "ratio" | "increase"
    limit: float
    description: str

    @property
    def relative(self) -> bool:
        return self.kind in ("ratio", "increase")

    def allowed(self, baseline_value: npt.ArrayLike) -> FloatArray:
        """The most a candidate may be, given the baseline's value."""
        if self.kind == "ratio":
            return np.asarray(self.limit * np.asarray(baseline_value), dtype=np.float64)
        return np.asarray(np.asarray(baseline_value) + self.limit, dtype=np.float64)


def _is_histogram(measurements: Mapping[str, Measurement]) -> bool:
    return any(isinstance(m, Histogram) for m in measurements.values())


def conditions(objective: Objective, histogram: bool, relative: bool) -> list[Condition]:
    """What `objective` checks: absolute limits, then (when `relative`) the baseline ones."""
    metric = objective.metric
    out: list[Condition] = []
    if histogram:
        limit = objective.upper_limit
        if objective.quantile is not None and limit is not None:
            share = 1.0 - objective.quantile
            out.append(
                Condition(
                    "upper",
                    share,
                    f"p{objective.quantile * 100:g} {metric} <= {fmt(limit)}"
                    f" (share above the bucket bound <= {fmt(share)})",
                )
            )
    else:
        if objective.upper_limit is not None:
            out.append(
                Condition(
                    "upper", objective.upper_limit, f"{metric} <= {fmt(objective.upper_limit)}"
                )
            )
        if objective.lower_limit is not None:
            out.append(
                Condition(
                    "lower", objective.lower_limit, f"{metric} >= {fmt(objective.lower_limit)}"
                )
            )
    if relative:
        what = f"share of {metric} above the bucket bound" if histogram else metric
        if objective.max_ratio is not None:
            out.append(
                Condition(
                    "ratio", objective.max_ratio, f"{what} <= {fmt(objective.max_ratio)} x baseline"
                )
            )
        if objective.max_increase is not None:
            out.append(
                Condition(
                    "increase",
                    objective.max_increase,
                    f"{what} <= baseline + {fmt(objective.max_increase)}",
                )
            )
    return out


def prior_scale(objective: Objective, histogram: bool, default: float) -> float:
    """Where the count prior centres for this objective: its limit, when that is a rate."""
    if histogram:
        return 1.0 - objective.quantile if objective.quantile is not None else default
    for limit in (objective.upper_limit, objective.lower_limit):
        if limit is not None and 0.0 < limit < 1.0:
            return limit
    return default


RatioTests = Mapping[str, Mapping[str, conditional.RatioTest]]
"""metric name -> candidate name -> the running conditional ratio test."""


def ratio_test_for(
    tests: RatioTests | None, metric: str, version: str, margin: float
) -> conditional.RatioTest | None:
    """The running test for this metric, candidate and margin, if one has seen data."""
    test = (tests or {}).get(metric, {}).get(version)
    if test is None or test.iteration <= 0 or not math.isclose(test.margin, margin):
        return None
    return test


def levels(alpha: float, n_baseline: int, n_candidate: int, k: int) -> FloatArray:
    """The alpha of each bound an assessment reads, (4, K): rows VIOLATE, SATISFY,
    VIOLATE_HALF and SATISFY_HALF, columns the versions (baseline first).

    A violation test shares alpha over the version's conditions (`n_baseline` for the
    baseline, `n_candidate` for each candidate); satisfaction uses the full alpha; a
    relative condition reads both versions' sequences at half the candidate's levels.
    """
    alpha_baseline = alpha / max(1, n_baseline)
    alpha_candidate = alpha / max(1, n_candidate)
    return np.array(
        [
            [alpha_baseline] + [alpha_candidate] * (k - 1),
            [alpha] * k,
            [alpha_candidate / 2] * k,
            [alpha / 2] * k,
        ]
    )


@dataclass(frozen=True, eq=False)
class RatioEvidence:
    """The conditional ratio test of one objective's maxRatio condition, (R, K): the log
    e-values against "within the margin" and against "beyond it", where `available`."""

    violation: FloatArray
    satisfaction: FloatArray
    available: BoolArray


@dataclass(frozen=True, eq=False)
class ConditionVerdict:
    """One condition judged for every replicate and version.

    `applies` (K,) is false for the baseline of a relative condition. `violated` and
    `satisfied` are (R, K); `conditional` marks where the conditional ratio test, not the
    confidence sequences, decided.
    """

    condition: Condition
    applies: BoolArray
    violated: BoolArray
    satisfied: BoolArray
    conditional: BoolArray

    def codes(self) -> IntArray:
        """(R, K) verdict codes, as if the condition applied everywhere."""
        code = np.where(self.violated, VIOLATED, np.where(self.satisfied, SATISFIED, UNDECIDED))
        return np.asarray(code, dtype=np.int64)


def judge(
    conditions: Sequence[Condition],
    lower: FloatArray,
    upper: FloatArray,
    present: BoolArray,
    alpha: float,
    alpha_violate: float,
    ratio: RatioEvidence | None = None,
) -> list[ConditionVerdict]:
    """Judge an objective's conditions (the candidates' list) on confidence bounds.

    Args:
        conditions: what the objective checks for a candidate.
        lower, upper: (4, R, K) bounds at the `levels` rows; -inf/inf without data.
        present: (R, K) versions whose quantity has a sample size.
        alpha: the experiment's alpha (satisfaction of a conditional test).
        alpha_violate: a candidate's violation level (violation of a conditional test).
        ratio: the conditional test of the maxRatio condition, where one has seen data.
    """
    k = present.shape[-1]
    candidates = np.arange(k) > 0
    lo_v, hi_v, lo_s, hi_s = lower[VIOLATE], upper[VIOLATE], lower[SATISFY], upper[SATISFY]
    lo_vh, hi_vh = lower[VIOLATE_HALF], upper[VIOLATE_HALF]
    lo_sh, hi_sh = lower[SATISFY_HALF], upper[SATISFY_HALF]
    no = np.zeros(present.shape, dtype=np.bool_)
    out: list[ConditionVerdict] = []
    for cond in conditions:
        conditional_ = no
        if cond.kind == "upper":
            violated = present & (lo_v > cond.limit)
            satisfied = present & ~violated & (hi_s <= cond.limit)
            applies = np.ones(k, dtype=np.bool_)
        elif cond.kind == "lower":
            violated = present & (hi_v < cond.limit)
            satisfied = present & ~violated & (lo_s >= cond.limit)
            applies = np.ones(k, dtype=np.bool_)
        else:
            # The candidate's sequence against the most (or least) the baseline's allows.
            both = present & present[..., :1]
            violated = both & (lo_vh > cond.allowed(hi_vh[..., :1]))
            satisfied = both & ~violated & (hi_sh <= cond.allowed(lo_sh[..., :1]))
            applies = candidates
            if cond.kind == "ratio" and ratio is not None:
                conditional_ = ratio.available & applies
                by_test_v = ratio.violation >= -math.log(alpha_violate)
                by_test_s = ~by_test_v & (ratio.satisfaction >= -math.log(alpha))
                violated = np.where(conditional_, by_test_v, violated)
                satisfied = np.where(conditional_, by_test_s, satisfied)
        out.append(ConditionVerdict(cond, applies, violated, satisfied, conditional_))
    return out


def combine(violated: BoolArray, satisfied: BoolArray) -> IntArray:
    """Verdict codes from per-condition outcomes on the last axis: violated if any is,
    satisfied if all are (so with no condition at all), undecided otherwise."""
    code = np.where(
        np.any(violated, axis=-1), VIOLATED, np.where(np.all(satisfied, axis=-1), SATISFIED, 0)
    )
    return np.asarray(code, dtype=np.int64)


def combine_verdicts(verdicts: Sequence[ConditionVerdict], shape: tuple[int, int]) -> IntArray:
    """An objective's verdict codes (R, K); a condition that does not apply holds."""
    if not verdicts:
        return np.full(shape, SATISFIED, dtype=np.int64)
    violated = np.stack([c.violated & c.applies for c in verdicts], axis=-1)
    satisfied = np.stack([c.satisfied | ~c.applies for c in verdicts], axis=-1)
    return combine(violated, satisfied)


def assess_versions(
    spec: ExperimentSpec,
    measurements: Mapping[str, Mapping[str, Measurement]],
    ratio_tests: RatioTests | None = None,
) -> dict[str, tuple[ObjectiveAssessment, ...]]:
    """Assess every version against every objective, in objective order.

    Args:
        spec: the experiment; `spec.version_info` must be resolved.
        measurements: metric name -> version name -> measurement.
        ratio_tests: the running conditional tests of `maxRatio` conditions, built from
            per-iteration counts. A ratio condition without one falls back to comparing the
            cumulative sequences, and its reason says so.

    Returns:
        version name -> one assessment per objective, in `spec.criteria.objectives` order.
    """
    if spec.version_info is None:
        raise ValueError("spec.versionInfo is not resolved yet")
    alpha = spec.criteria.alpha
    names = spec.version_info.names
    k = len(names)
    objectives = spec.criteria.objectives

    plans: list[tuple[Objective, bool, list[Quantity], list[Condition]]] = []
    for objective in objectives:
        by_version = measurements.get(objective.metric, {})
        histogram = _is_histogram(by_version)
        scale = prior_scale(objective, histogram, sequential.DEFAULT_SCALE)
        quantities = [
            evidence.quantity(
                by_version.get(name),
                bucket_limit=objective.upper_limit if histogram else None,
                scale=scale,
            )
            for name in names
        ]
        plans.append(
            (
                objective,
                histogram,
                quantities,
                conditions(objective, histogram, objective.is_relative),
            )
        )

    n_baseline = sum(len(conditions(p[0], p[1], False)) for p in plans)
    n_candidate = sum(len(p[3]) for p in plans)
    alphas = levels(alpha, n_baseline, n_candidate, k)
    # Every bound of every objective in one vectorised call.
    requests = [
        evidence.Request(q, float(alphas[level, v]))
        for _, _, quantities, _ in plans
        for level in range(4)
        for v, q in enumerate(quantities)
    ]
    computed = np.array(evidence.bounds(requests)).reshape(len(plans), 4, 1, k, 2)

    # Judge every condition on arrays, then explain each verdict (a point value gets the
    # plain comparison instead).
    explained: list[list[list[ConditionResult]]] = []
    for i, (objective, _, quantities, candidate_conditions) in enumerate(plans):
        lower, upper = computed[i, ..., 0], computed[i, ..., 1]
        present = np.array([[q.kind in (Kind.COUNTS, Kind.MEAN) for q in quantities]])
        tests: list[conditional.RatioTest | None] = [None] * k
        ratio = None
        if objective.max_ratio is not None and objective.is_relative:
            margin = objective.max_ratio
            tests = [None]
            tests += [ratio_test_for(ratio_tests, objective.metric, n, margin) for n in names[1:]]
            evidences = [(0.0, 0.0) if t is None else t.log_evidence for t in tests]
            ratio = RatioEvidence(
                np.array([[e[0] for e in evidences]]),
                np.array([[e[1] for e in evidences]]),
                np.array([[t is not None for t in tests]]),
            )
        judged = judge(
            candidate_conditions, lower, upper, present, alpha, float(alphas[VIOLATE, -1]), ratio
        )
        lo, hi = lower[:, 0].tolist(), upper[:, 0].tolist()
        per_version: list[list[ConditionResult]] = [[] for _ in names]
        for item in judged:
            cond = item.condition
            codes, applies = item.codes()[0].tolist(), item.applies.tolist()
            by_test = item.conditional[0].tolist()
            for v, q in enumerate(quantities):
                if not applies[v]:
                    continue
                code, av, test = VERDICTS[codes[v]], float(alphas[VIOLATE, v]), tests[v]
                if by_test[v] and test is not None:
                    explanation = _conditional(cond, test, av, alpha, code)
                elif not cond.relative:
                    explanation = _absolute(cond, q, lo, hi, v, av, code)
                else:
                    explanation = _relative(cond, q, quantities[0], lo, hi, v, av, code)
                per_version[v].append(explanation)
        explained.append(per_version)

    # The verdicts of every objective and version, combined in one call.
    width = max((len(c) for rows in explained for c in rows), default=0)
    violated = np.zeros((len(plans), k, width), dtype=np.bool_)
    satisfied = np.ones((len(plans), k, width), dtype=np.bool_)
    for i, rows in enumerate(explained):
        for v, results in enumerate(rows):
            for j, c in enumerate(results):
                violated[i, v, j] = c.verdict is Verdict.VIOLATED
                satisfied[i, v, j] = c.verdict is Verdict.SATISFIED
    verdicts = combine(violated, satisfied).tolist()

    bounds = computed.tolist()
    result: dict[str, list[ObjectiveAssessment]] = {name: [] for name in names}
    for i, (objective, _, quantities, _) in enumerate(plans):
        for v, name in enumerate(names):
            q, results = quantities[v], explained[i][v]
            verdict = VERDICTS[verdicts[i][v]]
            has_interval = q.kind in (Kind.COUNTS, Kind.MEAN)
            result[name].append(
                ObjectiveAssessment(
                    version=name,
                    index=i,
                    metric=objective.metric,
                    verdict=verdict,
                    conclusive=_conclusive(verdict, results, q),
                    estimate=q.estimate,
                    interval=(bounds[i][VIOLATE][0][v][0], bounds[i][SATISFY][0][v][1])
                    if has_interval
                    else None,
                    sample_size=q.sample_size,
                    bucket_bound=q.bucket_bound,
                    conditions=tuple(results),
                    quantity=q,
                )
            )
    return {name: tuple(items) for name, items in result.items()}


def _conclusive(verdict: Verdict, results: list[ConditionResult], q: Quantity) -> bool:
    """Whether `verdict`, combined from `results`, rests on anytime-valid evidence."""
    if not results:
        # An objective with nothing to check for this version (e.g. a relative-only
        # objective on the baseline) holds trivially.
        return q.kind is not Kind.POINT
    if verdict is Verdict.VIOLATED:
        return any(r.conclusive for r in results if r.verdict is Verdict.VIOLATED)
    if verdict is Verdict.SATISFIED:
        return all(r.conclusive for r in results)
    return False


def _absolute(
    cond: Condition,
    q: Quantity,
    lower: Sequence[Sequence[float]],
    upper: Sequence[Sequence[float]],
    v: int,
    alpha_violate: float,
    verdict: Verdict,
) -> ConditionResult:
    """Explain `verdict` (from `judge`) for version `v`; `lower` and `upper` are (4, K)."""
    if q.kind is Kind.NONE:
        return ConditionResult(
            cond.kind, cond.limit, cond.description, Verdict.UNDECIDED, False, q.note
        )
    assert q.estimate is not None
    upper_limit = cond.kind == "upper"
    if q.kind is Kind.POINT:
        ok = q.estimate <= cond.limit if upper_limit else q.estimate >= cond.limit
        plain = Verdict.SATISFIED if ok else Verdict.VIOLATED
        return ConditionResult(
            cond.kind,
            cond.limit,
            cond.description,
            plain,
            False,
            f"value {fmt(q.estimate)}, plain comparison",
        )
    lo_v, hi_v = lower[VIOLATE][v], upper[VIOLATE][v]
    lo_s, hi_s = lower[SATISFY][v], upper[SATISFY][v]
    n = f"n={q.sample_size:.0f}" if q.sample_size is not None else "n=?"
    decided = verdict is not Verdict.UNDECIDED
    if verdict is Verdict.VIOLATED:
        bound, side, where = (lo_v, "lower", "above") if upper_limit else (hi_v, "upper", "below")
        reason = (
            f"estimate {fmt(q.estimate)} ({n}); {side} confidence bound {fmt(bound)}"
            f" (alpha {fmt(alpha_violate)}) is {where} the limit"
        )
    elif verdict is Verdict.SATISFIED:
        bound, side = (hi_s, "upper") if upper_limit else (lo_s, "lower")
        reason = (
            f"estimate {fmt(q.estimate)} ({n}); {side} confidence bound {fmt(bound)}"
            " is within the limit"
        )
    else:
        bounds_text = (
            f"[{fmt(lo_v)}, {fmt(hi_s)}]" if upper_limit else f"[{fmt(lo_s)}, {fmt(hi_v)}]"
        )
        reason = (
            f"estimate {fmt(q.estimate)} ({n}); confidence sequence {bounds_text}"
            " still contains the limit"
        )
    return ConditionResult(cond.kind, cond.limit, cond.description, verdict, decided, reason)


def _conditional(
    cond: Condition,
    test: conditional.RatioTest,
    alpha_violate: float,
    alpha_satisfy: float,
    verdict: Verdict,
) -> ConditionResult:
    """Explain the conditional test's `verdict` on a maxRatio condition."""
    log_v, log_s = test.log_evidence
    seen = (
        f"conditional test over {test.iteration} iterations ({test.candidate_events:.0f}"
        f" candidate and {test.baseline_events:.0f} baseline events)"
    )
    if verdict is Verdict.VIOLATED:
        reason = (
            f"{seen}; e-value {fmt(math.exp(log_v))} against within {fmt(cond.limit)}x"
            f" reached 1/alpha ({fmt(1 / alpha_violate)})"
        )
    elif verdict is Verdict.SATISFIED:
        reason = (
            f"{seen}; e-value {fmt(math.exp(log_s))} against beyond {fmt(cond.limit)}x"
            f" reached 1/alpha ({fmt(1 / alpha_satisfy)})"
        )
    else:
        reason = (
            f"{seen}; e-values {fmt(math.exp(log_v))} (violation) and {fmt(math.exp(log_s))}"
            f" (satisfaction) are below 1/alpha"
        )
    decided = verdict is not Verdict.UNDECIDED
    return ConditionResult(cond.kind, cond.limit, cond.description, verdict, decided, reason)


def _relative(
    cond: Condition,
    qc: Quantity,
    qb: Quantity,
    lower: Sequence[Sequence[float]],
    upper: Sequence[Sequence[float]],
    v: int,
    alpha_violate: float,
    verdict: Verdict,
) -> ConditionResult:
    """Explain `verdict` on a relative condition for version `v`; `lower` and `upper` are
    (4, K). A point value on either side gets the plain comparison instead."""

    def limit_of(baseline_value: float) -> float:
        return float(cond.allowed(baseline_value))

    if qc.kind is Kind.NONE or qb.kind is Kind.NONE:
        who = "candidate" if qc.kind is Kind.NONE else "baseline"
        note = qc.note if qc.kind is Kind.NONE else qb.note
        return ConditionResult(
            cond.kind, cond.limit, cond.description, Verdict.UNDECIDED, False, f"{who}: {note}"
        )
    assert qc.estimate is not None and qb.estimate is not None
    if Kind.POINT in (qc.kind, qb.kind):
        allowed = limit_of(qb.estimate)
        plain = Verdict.SATISFIED if qc.estimate <= allowed else Verdict.VIOLATED
        return ConditionResult(
            cond.kind,
            cond.limit,
            cond.description,
            plain,
            False,
            f"{fmt(qc.estimate)} vs allowed {fmt(allowed)} (baseline {fmt(qb.estimate)}),"
            " plain comparison",
        )
    c_lo_v, c_hi_s = lower[VIOLATE_HALF][v], upper[SATISFY_HALF][v]
    b_hi_v, b_lo_s = upper[VIOLATE_HALF][0], lower[SATISFY_HALF][0]
    # Without per-iteration counts only the cumulative figures can be compared; under a
    # moving split a global incident can bias them (Simpson's paradox), so say so.
    cumulative = "; cumulative comparison (no per-iteration counts)" if cond.kind == "ratio" else ""
    versus = f"candidate {fmt(qc.estimate)} vs baseline {fmt(qb.estimate)}"
    if verdict is Verdict.VIOLATED:
        reason = (
            f"{versus}; candidate's lower bound"
            f" {fmt(c_lo_v)} exceeds the most the baseline allows, {fmt(limit_of(b_hi_v))}"
            f" (alpha {fmt(alpha_violate)}){cumulative}"
        )
    elif verdict is Verdict.SATISFIED:
        reason = (
            f"{versus}; candidate's upper bound"
            f" {fmt(c_hi_s)} is within the least the baseline allows, {fmt(limit_of(b_lo_s))}"
            f"{cumulative}"
        )
    else:
        reason = f"{versus}; the sequences still overlap the limit{cumulative}"
    decided = verdict is not Verdict.UNDECIDED
    return ConditionResult(cond.kind, cond.limit, cond.description, verdict, decided, reason)
