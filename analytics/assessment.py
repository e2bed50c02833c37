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
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

from analytics import conditional, evidence, sequential
from analytics.evidence import Kind, Quantity
from analytics.measurements import Histogram, Measurement
from analytics.model import ExperimentSpec, Objective


class Verdict(enum.Enum):
    SATISFIED = "satisfied"
    VIOLATED = "violated"
    UNDECIDED = "undecided"


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
class _Condition:
    kind: str  # "upper" | "lower" | "ratio" | "increase"
    limit: float
    description: str


def _is_histogram(measurements: Mapping[str, Measurement]) -> bool:
    return any(isinstance(m, Histogram) for m in measurements.values())


def _conditions(objective: Objective, histogram: bool, relative: bool) -> list[_Condition]:
    metric = objective.metric
    out: list[_Condition] = []
    if histogram:
        limit = objective.upper_limit
        if objective.quantile is not None and limit is not None:
            share = 1.0 - objective.quantile
            out.append(
                _Condition(
                    "upper",
                    share,
                    f"p{objective.quantile * 100:g} {metric} <= {fmt(limit)}"
                    f" (share above the bucket bound <= {fmt(share)})",
                )
            )
    else:
        if objective.upper_limit is not None:
            out.append(
                _Condition(
                    "upper", objective.upper_limit, f"{metric} <= {fmt(objective.upper_limit)}"
                )
            )
        if objective.lower_limit is not None:
            out.append(
                _Condition(
                    "lower", objective.lower_limit, f"{metric} >= {fmt(objective.lower_limit)}"
                )
            )
    if relative:
        what = f"share of {metric} above the bucket bound" if histogram else metric
        if objective.max_ratio is not None:
            out.append(
                _Condition(
                    "ratio", objective.max_ratio, f"{what} <= {fmt(objective.max_ratio)} x baseline"
                )
            )
        if objective.max_increase is not None:
            out.append(
                _Condition(
                    "increase",
                    objective.max_increase,
                    f"{what} <= baseline + {fmt(objective.max_increase)}",
                )
            )
    return out


def _scale(objective: Objective, histogram: bool, default: float) -> float:
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
    baseline = spec.version_info.baseline.name
    names = spec.version_info.names
    objectives = spec.criteria.objectives

    plans: list[tuple[Objective, bool, dict[str, Quantity], dict[str, list[_Condition]]]] = []
    for objective in objectives:
        by_version = measurements.get(objective.metric, {})
        histogram = _is_histogram(by_version)
        scale = _scale(objective, histogram, sequential.DEFAULT_SCALE)
        quantities = {
            name: evidence.quantity(
                by_version.get(name),
                bucket_limit=objective.upper_limit if histogram else None,
                scale=scale,
            )
            for name in names
        }
        conditions = {
            name: _conditions(objective, histogram, objective.is_relative and name != baseline)
            for name in names
        }
        plans.append((objective, histogram, quantities, conditions))

    # Bonferroni for violations: any violated condition fails the version.
    n_conditions = {name: max(1, sum(len(p[3][name]) for p in plans)) for name in names}
    alpha_violate = {name: alpha / n_conditions[name] for name in names}

    keys: list[tuple[int, str, float]] = []
    for i, (_, _, _, conditions) in enumerate(plans):
        for name in names:
            av, as_ = alpha_violate[name], alpha
            keys += [(i, name, av), (i, name, as_)]
            if name != baseline and any(c.kind in ("ratio", "increase") for c in conditions[name]):
                keys += [
                    (i, name, av / 2),
                    (i, name, as_ / 2),
                    (i, baseline, av / 2),
                    (i, baseline, as_ / 2),
                ]
    unique = list(dict.fromkeys(keys))
    computed = evidence.bounds([evidence.Request(plans[i][2][name], a) for i, name, a in unique])
    bound = dict(zip(unique, computed, strict=True))

    result: dict[str, list[ObjectiveAssessment]] = {name: [] for name in names}
    for i, (objective, _, quantities, conditions) in enumerate(plans):
        for name in names:
            q = quantities[name]
            av, as_ = alpha_violate[name], alpha
            lo_v, _ = bound[(i, name, av)]
            _, hi_s = bound[(i, name, as_)]
            results: list[ConditionResult] = []
            for cond in conditions[name]:
                if cond.kind in ("upper", "lower"):
                    results.append(
                        _absolute(cond, q, bound[(i, name, av)], bound[(i, name, as_)], av)
                    )
                elif (
                    cond.kind == "ratio"
                    and (test := ratio_test_for(ratio_tests, objective.metric, name, cond.limit))
                    is not None
                ):
                    results.append(_conditional(cond, test, av, as_))
                else:
                    qb = quantities[baseline]
                    results.append(
                        _relative(
                            cond,
                            q,
                            qb,
                            (bound[(i, name, av / 2)], bound[(i, name, as_ / 2)]),
                            (bound[(i, baseline, av / 2)], bound[(i, baseline, as_ / 2)]),
                            av,
                        )
                    )
            verdict, conclusive = _combine(results, q)
            has_interval = q.kind in (Kind.COUNTS, Kind.MEAN)
            result[name].append(
                ObjectiveAssessment(
                    version=name,
                    index=i,
                    metric=objective.metric,
                    verdict=verdict,
                    conclusive=conclusive,
                    estimate=q.estimate,
                    interval=(lo_v, hi_s) if has_interval else None,
                    sample_size=q.sample_size,
                    bucket_bound=q.bucket_bound,
                    conditions=tuple(results),
                    quantity=q,
                )
            )
    return {name: tuple(items) for name, items in result.items()}


def _combine(results: list[ConditionResult], q: Quantity) -> tuple[Verdict, bool]:
    if not results:
        # An objective with nothing to check for this version (e.g. a relative-only
        # objective on the baseline) holds trivially.
        return Verdict.SATISFIED, q.kind is not Kind.POINT
    violated = [r for r in results if r.verdict is Verdict.VIOLATED]
    if violated:
        return Verdict.VIOLATED, any(r.conclusive for r in violated)
    if all(r.verdict is Verdict.SATISFIED for r in results):
        return Verdict.SATISFIED, all(r.conclusive for r in results)
    return Verdict.UNDECIDED, False


def _absolute(
    cond: _Condition,
    q: Quantity,
    violate_bounds: tuple[float, float],
    satisfy_bounds: tuple[float, float],
    alpha_violate: float,
) -> ConditionResult:
    if q.kind is Kind.NONE:
        return ConditionResult(
            cond.kind, cond.limit, cond.description, Verdict.UNDECIDED, False, q.note
        )
    assert q.estimate is not None
    upper = cond.kind == "upper"
    if q.kind is Kind.POINT:
        ok = q.estimate <= cond.limit if upper else q.estimate >= cond.limit
        verdict = Verdict.SATISFIED if ok else Verdict.VIOLATED
        return ConditionResult(
            cond.kind,
            cond.limit,
            cond.description,
            verdict,
            False,
            f"value {fmt(q.estimate)}, plain comparison",
        )
    lo_v, hi_v = violate_bounds
    lo_s, hi_s = satisfy_bounds
    n = f"n={q.sample_size:.0f}" if q.sample_size is not None else "n=?"
    if upper:
        if lo_v > cond.limit:
            return ConditionResult(
                cond.kind,
                cond.limit,
                cond.description,
                Verdict.VIOLATED,
                True,
                f"estimate {fmt(q.estimate)} ({n}); lower confidence bound {fmt(lo_v)}"
                f" (alpha {fmt(alpha_violate)}) is above the limit",
            )
        if hi_s <= cond.limit:
            return ConditionResult(
                cond.kind,
                cond.limit,
                cond.description,
                Verdict.SATISFIED,
                True,
                f"estimate {fmt(q.estimate)} ({n}); upper confidence bound {fmt(hi_s)}"
                " is within the limit",
            )
        bounds_text = f"[{fmt(lo_v)}, {fmt(hi_s)}]"
    else:
        if hi_v < cond.limit:
            return ConditionResult(
                cond.kind,
                cond.limit,
                cond.description,
                Verdict.VIOLATED,
                True,
                f"estimate {fmt(q.estimate)} ({n}); upper confidence bound {fmt(hi_v)}"
                f" (alpha {fmt(alpha_violate)}) is below the limit",
            )
        if lo_s >= cond.limit:
            return ConditionResult(
                cond.kind,
                cond.limit,
                cond.description,
                Verdict.SATISFIED,
                True,
                f"estimate {fmt(q.estimate)} ({n}); lower confidence bound {fmt(lo_s)}"
                " is within the limit",
            )
        bounds_text = f"[{fmt(lo_s)}, {fmt(hi_v)}]"
    return ConditionResult(
        cond.kind,
        cond.limit,
        cond.description,
        Verdict.UNDECIDED,
        False,
        f"estimate {fmt(q.estimate)} ({n}); confidence sequence {bounds_text}"
        " still contains the limit",
    )


def _conditional(
    cond: _Condition, test: conditional.RatioTest, alpha_violate: float, alpha_satisfy: float
) -> ConditionResult:
    """A maxRatio condition judged by the conditional test on per-iteration counts."""
    log_v, log_s = test.log_evidence
    seen = (
        f"conditional test over {test.iteration} iterations ({test.candidate_events:.0f}"
        f" candidate and {test.baseline_events:.0f} baseline events)"
    )
    if log_v >= -math.log(alpha_violate):
        return ConditionResult(
            cond.kind,
            cond.limit,
            cond.description,
            Verdict.VIOLATED,
            True,
            f"{seen}; e-value {fmt(math.exp(log_v))} against within {fmt(cond.limit)}x"
            f" reached 1/alpha ({fmt(1 / alpha_violate)})",
        )
    if log_s >= -math.log(alpha_satisfy):
        return ConditionResult(
            cond.kind,
            cond.limit,
            cond.description,
            Verdict.SATISFIED,
            True,
            f"{seen}; e-value {fmt(math.exp(log_s))} against beyond {fmt(cond.limit)}x"
            f" reached 1/alpha ({fmt(1 / alpha_satisfy)})",
        )
    return ConditionResult(
        cond.kind,
        cond.limit,
        cond.description,
        Verdict.UNDECIDED,
        False,
        f"{seen}; e-values {fmt(math.exp(log_v))} (violation) and {fmt(math.exp(log_s))}"
        f" (satisfaction) are below 1/alpha",
    )


def _relative(
    cond: _Condition,
    qc: Quantity,
    qb: Quantity,
    candidate_bounds: tuple[tuple[float, float], tuple[float, float]],
    baseline_bounds: tuple[tuple[float, float], tuple[float, float]],
    alpha_violate: float,
) -> ConditionResult:
    def limit_of(baseline_value: float) -> float:
        if cond.kind == "ratio":
            return cond.limit * baseline_value
        return baseline_value + cond.limit

    if qc.kind is Kind.NONE or qb.kind is Kind.NONE:
        who = "candidate" if qc.kind is Kind.NONE else "baseline"
        note = qc.note if qc.kind is Kind.NONE else qb.note
        return ConditionResult(
            cond.kind, cond.limit, cond.description, Verdict.UNDECIDED, False, f"{who}: {note}"
        )
    assert qc.estimate is not None and qb.estimate is not None
    if Kind.POINT in (qc.kind, qb.kind):
        allowed = limit_of(qb.estimate)
        verdict = Verdict.SATISFIED if qc.estimate <= allowed else Verdict.VIOLATED
        return ConditionResult(
            cond.kind,
            cond.limit,
            cond.description,
            verdict,
            False,
            f"{fmt(qc.estimate)} vs allowed {fmt(allowed)} (baseline {fmt(qb.estimate)}),"
            " plain comparison",
        )
    (c_lo_v, _), (_, c_hi_s) = candidate_bounds
    (_, b_hi_v), (b_lo_s, _) = baseline_bounds
    # Without per-iteration counts only the cumulative figures can be compared; under a
    # moving split a global incident can bias them (Simpson's paradox), so say so.
    cumulative = "; cumulative comparison (no per-iteration counts)" if cond.kind == "ratio" else ""
    if c_lo_v > limit_of(b_hi_v):
        return ConditionResult(
            cond.kind,
            cond.limit,
            cond.description,
            Verdict.VIOLATED,
            True,
            f"candidate {fmt(qc.estimate)} vs baseline {fmt(qb.estimate)}; candidate's lower bound"
            f" {fmt(c_lo_v)} exceeds the most the baseline allows, {fmt(limit_of(b_hi_v))}"
            f" (alpha {fmt(alpha_violate)}){cumulative}",
        )
    if c_hi_s <= limit_of(b_lo_s):
        return ConditionResult(
            cond.kind,
            cond.limit,
            cond.description,
            Verdict.SATISFIED,
            True,
            f"candidate {fmt(qc.estimate)} vs baseline {fmt(qb.estimate)}; candidate's upper bound"
            f" {fmt(c_hi_s)} is within the least the baseline allows, {fmt(limit_of(b_lo_s))}"
            f"{cumulative}",
        )
    return ConditionResult(
        cond.kind,
        cond.limit,
        cond.description,
        Verdict.UNDECIDED,
        False,
        f"candidate {fmt(qc.estimate)} vs baseline {fmt(qb.estimate)};"
        f" the sequences still overlap the limit{cumulative}",
    )
