"""KFServing v1alpha2 InferenceService: `spec.default` / `spec.canary` predictors and
`spec.canaryTrafficPercent`, reported in `status.traffic` / `status.canaryTraffic`;
promotion replaces the default by the canary, then drops the canary."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from analytics.model import ExperimentSpec
from functions.core.backends.base import (
    Obj,
    Patch,
    Resolution,
    Route,
    condition_true,
    get_path,
    with_ready,
)
from functions.core.resources import ObjectRef

# PredictorSpec's "1-of" fields (kfserving v0.4 / v0.5 pkg/apis/serving/v1alpha2).
FRAMEWORKS: Final = (
    "custom",
    "tensorflow",
    "triton",
    "xgboost",
    "sklearn",
    "onnx",
    "pytorch",
    "lightgbm",
)
_ENDPOINTS: Final = ("default", "canary")


def routes(obj: Obj) -> tuple[Route, ...]:
    """The routes KFServing programs: the canary's percent to the canary predictor while
    `spec.canary` is set, the rest (or everything) to the default; a route's revision is its
    predictor's name in status (None until reported), its alias "default" or "canary"."""
    default = get_path(obj, "status", "default", "predictor", "name")
    if get_path(obj, "spec", "canary") is None:
        return (Route(100, default, "default"),)
    canary = get_path(obj, "status", "canary", "predictor", "name")
    p = min(100, max(0, int(get_path(obj, "spec", "canaryTrafficPercent") or 0)))
    return (Route(100 - p, default, "default"), Route(p, canary, "canary"))


def expected_status(obj: Obj) -> dict[str, Any]:
    """The status KFServing reports for `obj`: `status.traffic` / `status.canaryTraffic`, each
    endpoint's predictor revision (a promoted default takes over the canary's)."""
    spec = obj.get("spec") or {}
    status = copy.deepcopy(dict(obj.get("status") or {}))
    name = (obj.get("metadata") or {}).get("name", "isvc")
    default = status.setdefault("default", {}).setdefault("predictor", {})
    canary_status = (status.get("canary") or {}).get("predictor") or {}
    if spec.get("canary") is None:
        if canary_status.get("name") and spec.get("default") == status.get("_canarySpec"):
            default["name"] = canary_status["name"]  # promoted: the canary is the default now
        status.pop("canary", None)
        status.pop("_canarySpec", None)
    else:
        default.setdefault("name", f"{name}-predictor-default-00001")
        canary = status.setdefault("canary", {}).setdefault("predictor", {})
        canary.setdefault("name", f"{name}-predictor-canary-00001")
        status["_canarySpec"] = spec["canary"]
    by_alias = {r.alias: r.percent for r in routes(obj)}
    status["traffic"], status["canaryTraffic"] = by_alias["default"], by_alias.get("canary", 0)
    status["conditions"] = with_ready(status)
    return status


def problems(obj: Obj) -> list[str]:
    """What KFServing's webhook refuses (v0.4.1 pkg/apis/serving/v1alpha2
    inferenceservice_validation.go): an endpoint whose predictor names other than exactly one
    framework, a canaryTrafficPercent without a canary or outside 0..100."""
    found = []
    spec = obj.get("spec") or {}
    for endpoint in _ENDPOINTS:
        predictor = get_path(spec, endpoint, "predictor")
        if predictor is None:
            continue
        named = sorted(f for f in FRAMEWORKS if isinstance(predictor, Mapping) and f in predictor)
        if len(named) != 1:
            found.append(
                f"spec.{endpoint}.predictor: exactly one of [{', '.join(FRAMEWORKS)}] must be "
                f"specified, got {named or 'none'}"
            )
    percent = spec.get("canaryTrafficPercent")
    if percent is not None:
        if spec.get("canary") is None and int(percent) != 0:
            found.append("spec.canaryTrafficPercent: Canary must be specified when > 0")
        if not 0 <= int(percent) <= 100:
            found.append(f"spec.canaryTrafficPercent: {percent} must be within 0..100")
    return found


@dataclass(frozen=True)
class KFServingBackend:
    """One experiment on a KFServing v1alpha2 InferenceService."""

    MAX_VERSIONS: ClassVar[int | None] = 2  # spec.default and spec.canary
    DESCRIPTION: ClassVar[str] = (
        "a KFServing v1alpha2 InferenceService (spec.default and spec.canary)"
    )

    isvc: ObjectRef
    spec: ExperimentSpec

    @property
    def refs(self) -> tuple[ObjectRef, ...]:
        return (self.isvc,)

    def _names(self) -> tuple[str, str]:
        info = self.spec.version_info
        if info is not None and info.candidates:
            return info.baseline.name, info.candidates[0].name
        return "default", "canary"

    def resolve(self, objects: Mapping[ObjectRef, Obj]) -> Resolution:
        obj = objects[self.isvc]
        if get_path(obj, "spec", "canary") is None:
            return Resolution(False, f"{self.isvc}: spec.canary (the candidate) to be set")
        if not condition_true(obj):
            return Resolution(False, f"{self.isvc}: condition Ready to be True")
        default = get_path(obj, "status", "default", "predictor", "name")
        canary = get_path(obj, "status", "canary", "predictor", "name")
        if not default or not canary:
            return Resolution(False, f"{self.isvc}: status.default and status.canary revisions")
        names = self._names()
        return Resolution(True, revisions=dict(zip(names, (default, canary), strict=True)))

    def apply(self, weights: Mapping[str, int], objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        percent = int(weights.get(self._names()[1], 0))
        return [Patch(self.isvc, "merge", {"spec": {"canaryTrafficPercent": percent}})]

    def promote(self, version: str, objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        if version != self._names()[1]:
            return self.rollback(objects)
        spec = objects[self.isvc].get("spec") or {}
        canary = spec.get("canary")
        if canary is None:  # already promoted: the canary was copied and dropped
            return []
        # A JSON patch, not a merge patch: merging the canary into the default would keep the
        # default's framework key when the two differ (sklearn -> xgboost), and KFServing
        # refuses a predictor with two frameworks.
        ops: list[dict[str, Any]] = [
            {"op": "replace", "path": "/spec/default", "value": canary},
            {"op": "remove", "path": "/spec/canary"},
        ]
        if "canaryTrafficPercent" in spec:
            ops.append({"op": "remove", "path": "/spec/canaryTrafficPercent"})
        return [Patch(self.isvc, "json", ops)]

    def rollback(self, objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        return [Patch(self.isvc, "merge", {"spec": {"canary": None, "canaryTrafficPercent": None}})]

    def split(self, objects: Mapping[ObjectRef, Obj]) -> dict[str, int] | None:
        obj = objects[self.isvc]
        baseline, candidate = self._names()
        status = obj.get("status") or {}
        if "traffic" not in status and "canaryTraffic" not in status:
            return None
        canary = int(status.get("canaryTraffic") or 0)
        return {baseline: 100 - canary, candidate: canary}

    def settled(self, action: str, version: str | None, objects: Mapping[ObjectRef, Obj]) -> bool:
        obj = objects[self.isvc]
        status = obj.get("status") or {}
        return get_path(obj, "spec", "canary") is None and not status.get("canaryTraffic")
