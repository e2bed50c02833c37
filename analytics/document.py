"""An Analysis as JSON-ready data, in iter8's `status.analysis` shape plus the evidence.

`versionAssessments`, `winnerAssessment` and `weights` keep iter8 v2's keys and layout, so
its tooling can read them; `recommendation` and `evidence` say why, one entry per version,
objective and condition, so `describe` can explain a verdict without recomputing it.
"""

from __future__ import annotations

from typing import Any

from analytics.analysis import Analysis
from analytics.assessment import ObjectiveAssessment
from analytics.measurements import json_number
from analytics.recommendation import recommendation_to_dict


def _objective(item: ObjectiveAssessment) -> dict[str, Any]:
    out: dict[str, Any] = {
        "metric": item.metric,
        "verdict": item.verdict.value,
        "conclusive": item.conclusive,
        "estimate": json_number(item.estimate),
        "sampleSize": json_number(item.sample_size),
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
        out["interval"] = [json_number(item.interval[0]), json_number(item.interval[1])]
    if item.bucket_bound is not None:
        out["bucketBound"] = json_number(item.bucket_bound)
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
                        "estimate": json_number(r.estimate),
                        "sampleSize": json_number(r.sample_size),
                        **(
                            {"interval": [json_number(r.interval[0]), json_number(r.interval[1])]}
                            if r.interval is not None
                            else {}
                        ),
                    }
                    for r in winner.rewards
                ],
            },
        },
    }


def status_analysis(analysis: Analysis, aggregated: dict[str, Any]) -> dict[str, Any]:
    """`status.analysis` as the Experiment stores it: the measurements analysed and the
    analysis in iter8's shape (each part under `data`), with the evidence beside."""
    report = to_dict(analysis)
    return {
        "aggregatedMetrics": aggregated,
        "versionAssessments": {"data": report["versionAssessments"]},
        "winnerAssessment": {
            "data": report["winnerAssessment"],
            "message": analysis.winner.message,
        },
        "weights": {"data": report["weights"]},
        "evidence": report["evidence"],
    }
