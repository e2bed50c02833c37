"""An Analysis as JSON-ready data, in iter8's `status.analysis` shape plus the evidence.

`versionAssessments`, `winnerAssessment` and `weights` keep iter8 v2's keys and layout, so
its tooling can read them; `recommendation` and `evidence` say why, one entry per version,
objective and condition, so `describe` can explain a verdict without recomputing it.
"""

from __future__ import annotations

import math
from typing import Any

from analytics.analysis import Analysis, Recommendation
from analytics.assessment import ObjectiveAssessment
from analytics.measurements import Counts, Histogram, Measurement, Moments, NoData, PointValue


def _number(x: float | None) -> float | str | None:
    if x is None:
        return None
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return round(x, 10)


def _objective(item: ObjectiveAssessment) -> dict[str, Any]:
    out: dict[str, Any] = {
        "metric": item.metric,
        "verdict": item.verdict.value,
        "conclusive": item.conclusive,
        "estimate": _number(item.estimate),
        "sampleSize": _number(item.sample_size),
        "conditions": [
            {
                "condition": c.description,
                "verdict": c.verdict.value,
                "conclusive": c.conclusive,
                "reason": c.reason,
            }
            for c in item.conditions
        ],
    }
    if item.interval is not None:
        out["interval"] = [_number(item.interval[0]), _number(item.interval[1])]
    if item.bucket_bound is not None:
        out["bucketBound"] = _number(item.bucket_bound)
    return out


def to_dict(analysis: Analysis) -> dict[str, Any]:
    winner = analysis.winner
    winner_data: dict[str, Any] = {
        "winnerFound": winner.winner_found,
        "bestVersions": list(winner.best_versions),
    }
    if winner.winner is not None:
        winner_data["winner"] = winner.winner
    return {
        "iteration": analysis.iteration,
        "versionAssessments": {
            v: [a.satisfied for a in items] for v, items in analysis.version_assessments.items()
        },
        "winnerAssessment": winner_data,
        "weights": (
            None
            if analysis.weights is None
            else [{"name": n, "value": w} for n, w in analysis.weights.items()]
        ),
        "recommendation": recommendation_to_dict(analysis.recommendation),
        "versionRecommendedForPromotion": analysis.version_recommended_for_promotion,
        "evidence": {
            "versions": {
                v: [_objective(a) for a in items]
                for v, items in analysis.version_assessments.items()
            },
            "winner": {
                "conclusive": winner.conclusive,
                "feasibleVersions": list(winner.feasible),
                "message": winner.message,
                "rewards": [
                    {
                        "version": r.version,
                        "estimate": _number(r.estimate),
                        "sampleSize": _number(r.sample_size),
                        **(
                            {"interval": [_number(r.interval[0]), _number(r.interval[1])]}
                            if r.interval is not None
                            else {}
                        ),
                    }
                    for r in winner.rewards
                ],
            },
        },
    }


def recommendation_to_dict(rec: Recommendation) -> dict[str, Any]:
    """A recommendation as status.recommendation and the `concluded` event carry it."""
    out: dict[str, Any] = {"action": rec.action.value, "rule": rec.rule, "message": rec.message}
    if rec.version is not None:
        out["version"] = rec.version
    return out


def measurement_to_dict(m: Measurement) -> dict[str, Any]:
    """A measurement in the `aggregatedMetrics` shape that analytics.parse reads back."""
    if isinstance(m, NoData):
        return {}
    if isinstance(m, PointValue):
        return {"value": m.value}
    if isinstance(m, Counts):
        return {"events": m.events, "trials": m.trials}
    if isinstance(m, Moments):
        out: dict[str, Any] = {"count": m.count, "sum": m.total}
        if m.sum_of_squares is not None:
            out["sumOfSquares"] = m.sum_of_squares
        return out
    if isinstance(m, Histogram):
        return {
            "buckets": [
                {"le": _number(b), "count": c} for b, c in zip(m.bounds, m.cumulative, strict=True)
            ]
        }
    raise TypeError(f"not a measurement: {m!r}")
