"""Experiments in any stage, with the status the functions would have written.

`staged` starts from samples/analysis/canary.yaml and replays its measurements growing
iteration by iteration through the same analysis and the same status shapes assess writes
(analytics.document, functions.core.status.history_entry), so describe, watch and report
are tested on statuses shaped exactly as on a cluster. `isvc` is the InferenceService the
canary targets, with the status KServe reports for a split.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from analytics.analysis import analyze
from analytics.document import status_analysis
from analytics.parse import parse_experiment
from analytics.recommendation import Action, Recommendation
from functions.core import status as st
from functions.core.backends import EXPECTED_STATUS
from functions.core.resources import KSERVE_ISVC
from functions.core.status import Condition, ConditionType, Outcome, Stage, Status, Version

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
BASELINE, CANDIDATE = "sklearn-iris-predictor-00001", "sklearn-iris-predictor-00002"
INTERVAL = timedelta(seconds=60)


def _sample() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "samples/analysis/canary.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def _scaled(data: dict[str, Any], share: float, errors: float) -> dict[str, Any]:
    """The sample's measurements as they stood `share` of the way through; the candidate's
    errors multiplied by `errors`."""
    out = copy.deepcopy(data)
    for metric, per_metric in out["data"].items():
        for version, m in per_metric["data"].items():
            if "trials" in m:
                m["trials"] = round(m["trials"] * share)
                boost = errors if (metric == "error-rate" and version == CANDIDATE) else 1
                m["events"] = min(m["trials"], round(m["events"] * share * boost))
            for b in m.get("buckets") or []:
                b["count"] = round(b["count"] * share)
    return out


def staged(
    stage: Stage,
    iterations: int = 4,
    *,
    outcome: Outcome | None = None,
    errors: float = 1.0,
    name: str = "sklearn-iris-canary",
) -> dict[str, Any]:
    """The canary after `iterations` iterations, in `stage` (with `outcome` when ended).

    `errors` multiplies the candidate's errors (5: it fails its error-rate objective)."""
    doc = _sample()
    doc["metadata"]["name"] = name
    measured = doc["status"]["analysis"]["aggregatedMetrics"]
    status = Status(
        stage=Stage.RUNNING,
        init_time=T0,
        start_time=T0 + timedelta(seconds=5),
        versions=(Version(BASELINE, BASELINE), Version(CANDIDATE, CANDIDATE)),
        conditions=(
            Condition(ConditionType.TARGET_ACQUIRED, True, "TargetAcquired", "", T0),
            Condition(ConditionType.VERSIONS_READY, True, "VersionsReady", "", T0),
        ),
    ).with_split({BASELINE: 100, CANDIDATE: 0})
    for i in range(1, iterations + 1):
        aggregated = _scaled(measured, i / 8, errors)
        doc["status"] = {
            **status.to_dict(),
            "completedIterations": i - 1,
            "analysis": {"aggregatedMetrics": aggregated},
        }
        analysis = analyze(parse_experiment(doc), np.random.default_rng(i))
        stored = status_analysis(analysis, aggregated)
        at = T0 + i * INTERVAL
        split = status.split
        if analysis.weights is not None and analysis.recommendation.action is Action.CONTINUE:
            split = dict(analysis.weights)
        status = replace(
            status,
            completed_iterations=i,
            last_iteration_time=at,
            last_update_time=at,
            analysis=stored,
            recommendation=analysis.recommendation,
            version_recommended_for_promotion=analysis.version_recommended_for_promotion,
            message=f"iteration {i} of 10: {analysis.recommendation.message}",
        ).with_split(split)
        entry = st.history_entry(
            i, at, [BASELINE, CANDIDATE], split, stored["evidence"], analysis.recommendation
        )
        status = replace(status, history=st.with_history(status.history, entry))
        if analysis.recommendation.action is not Action.CONTINUE:
            break  # assess concluded: no further iteration runs
    end = T0 + (status.iterations_done + 1) * INTERVAL
    if stage is Stage.RUNNING:
        status = replace(status, recommendation=status.recommendation or _continue())
    elif stage in (Stage.FINISHING, Stage.COMPLETED):
        status = replace(status, stage=Stage.FINISHING, finishing_time=end)
    if stage is Stage.COMPLETED:
        promoted = outcome is Outcome.PROMOTED
        final = {BASELINE: 0 if promoted else 100, CANDIDATE: 100 if promoted else 0}
        status = replace(
            status.with_split(final).with_condition(
                ConditionType.COMPLETED, True, str(outcome), "", end
            ),
            stage=Stage.COMPLETED,
            outcome=outcome,
            last_update_time=end,
        )
    if stage is Stage.FAILED:
        status = replace(
            status.with_condition(
                ConditionType.FAILED, True, "TargetLost", "the InferenceService was deleted", end
            ),
            stage=Stage.FAILED,
            message="the InferenceService was deleted",
            last_update_time=end,
        )
    if stage in (Stage.PENDING, Stage.INITIALIZING):
        status = Status(stage=stage, init_time=T0)
    doc["status"] = status.to_dict()
    return doc


def _continue() -> Recommendation:
    return Recommendation(Action.CONTINUE, None, "continue", "continue")


def isvc(canary_percent: int, namespace: str = "arbiter-demo") -> dict[str, Any]:
    """The canary's InferenceService with `canary_percent` to the candidate, and the status
    KServe reports once it has programmed that split."""
    obj: dict[str, Any] = {
        "apiVersion": KSERVE_ISVC.api_version,
        "kind": KSERVE_ISVC.kind,
        "metadata": {"name": "sklearn-iris", "namespace": namespace},
        "spec": {
            "predictor": {
                "canaryTrafficPercent": canary_percent,
                "sklearn": {"storageUri": "gs://m"},
            }
        },
        "status": {
            "components": {
                "predictor": {
                    "latestRolledoutRevision": BASELINE,
                    "latestCreatedRevision": CANDIDATE,
                    "latestReadyRevision": CANDIDATE,
                }
            }
        },
    }
    obj["status"] = EXPECTED_STATUS[KSERVE_ISVC](obj)
    return obj
