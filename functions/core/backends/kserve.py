"""KServe v1beta1 InferenceService: `spec.predictor.canaryTrafficPercent` between the last
rolled-out revision (baseline) and the latest one (candidate), reported in
`status.components.predictor`."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from analytics.model import ExperimentSpec, Version
from functions.core.backends.base import Obj, Patch, Resolution, Route, get_path, with_ready
from functions.core.resources import ObjectRef


def _predictor_status(obj: Obj) -> Mapping[str, Any]:
    return get_path(obj, "status", "components", "predictor") or {}


def routes(obj: Obj) -> tuple[Route, ...]:
    """The routes KServe programs for `obj`'s canaryTrafficPercent and revisions: the
    percent goes to latestCreatedRevision once it is the latest *ready* revision, the rest to
    latestRolledoutRevision; with no percent (or 100) a ready latest revision takes everything
    (KServe then rolls it out); a latest revision that is not ready gets nothing; () before
    any revision is ready."""
    predictor = _predictor_status(obj)
    rolled = predictor.get("latestRolledoutRevision")
    created = predictor.get("latestCreatedRevision")
    ready = predictor.get("latestReadyRevision")
    percent = get_path(obj, "spec", "predictor", "canaryTrafficPercent")
    if not rolled:
        return (Route(100, str(ready), latest=True),) if ready else ()
    if not created or created == rolled or ready != created:
        return (Route(100, str(rolled), latest=created == rolled),)
    if percent is None or int(percent) >= 100:
        return (Route(100, str(created), latest=True),)
    p = max(0, int(percent))
    return (Route(100 - p, str(rolled)), Route(p, str(created), latest=True))


def expected_status(obj: Obj) -> dict[str, Any]:
    """The status KServe reports once it has programmed `obj`'s routes: the traffic in
    `status.components.predictor.traffic`, and a latest revision taking everything rolled out."""
    status = copy.deepcopy(dict(obj.get("status") or {}))
    programmed = routes(obj)
    if not programmed:
        return status
    predictor = status.setdefault("components", {}).setdefault("predictor", {})
    rolled = predictor.get("latestRolledoutRevision")
    if len(programmed) == 1 and programmed[0].latest and programmed[0].revision != rolled:
        if rolled:
            predictor["previousRolledoutRevision"] = rolled
        predictor["latestRolledoutRevision"] = programmed[0].revision
    predictor["traffic"] = [r.target() for r in programmed]
    status["conditions"] = with_ready(status)
    return status


@dataclass(frozen=True)
class KServeBackend:
    """One experiment on a KServe v1beta1 InferenceService."""

    # canaryTrafficPercent splits between the last rolled-out and the latest revision.
    MAX_VERSIONS: ClassVar[int | None] = 2
    DESCRIPTION: ClassVar[str] = (
        "a KServe v1beta1 InferenceService (spec.predictor.canaryTrafficPercent)"
    )

    isvc: ObjectRef
    spec: ExperimentSpec

    @property
    def refs(self) -> tuple[ObjectRef, ...]:
        return (self.isvc,)

    def _names(self, obj: Obj) -> tuple[str, str]:
        info = self.spec.version_info
        if info is not None:
            return info.baseline.name, info.candidates[0].name if info.candidates else ""
        predictor = _predictor_status(obj)
        return (
            str(predictor.get("latestRolledoutRevision") or "baseline"),
            str(predictor.get("latestCreatedRevision") or "candidate"),
        )

    def resolve(self, objects: Mapping[ObjectRef, Obj]) -> Resolution:
        obj = objects[self.isvc]
        predictor = _predictor_status(obj)
        rolled = predictor.get("latestRolledoutRevision")
        created = predictor.get("latestCreatedRevision")
        ready = predictor.get("latestReadyRevision")
        single = self.spec.version_info is not None and not self.spec.version_info.candidates
        if not rolled:
            return Resolution(False, f"{self.isvc}: no revision rolled out yet")
        if single:
            return Resolution(True, revisions=self._revisions((rolled, rolled), obj))
        if not created or created == rolled:
            return Resolution(
                False,
                f"{self.isvc}: a candidate revision (change spec.predictor to create one; "
                f"latestCreatedRevision is still {rolled})",
            )
        if created != ready:
            return Resolution(
                False, f"{self.isvc}: candidate revision {created} to become Ready (ready: {ready})"
            )
        names = self._names(obj)
        return Resolution(True, revisions=self._revisions((rolled, created), obj), names=names)

    def _revisions(self, resolved: tuple[str, str], obj: Obj) -> dict[str, str]:
        info = self.spec.version_info
        versions: Sequence[Version] = info.versions if info is not None else ()
        names = self._names(obj)
        result = {}
        for i, name in enumerate(names[: len(versions) or 2]):
            declared = versions[i].variables.get("revision") if versions else None
            result[name] = declared or resolved[i]
        return result

    def apply(self, weights: Mapping[str, int], objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        _, candidate = self._names(objects[self.isvc])
        percent = int(weights.get(candidate, 0))
        body = {"spec": {"predictor": {"canaryTrafficPercent": percent}}}
        return [Patch(self.isvc, "merge", body)]

    def promote(self, version: str, objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        _, candidate = self._names(objects[self.isvc])
        return self.apply({candidate: 100 if version == candidate else 0}, objects)

    def rollback(self, objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        return self.apply({}, objects)

    def split(self, objects: Mapping[ObjectRef, Obj]) -> dict[str, int] | None:
        obj = objects[self.isvc]
        baseline, candidate = self._names(obj)
        predictor = _predictor_status(obj)
        traffic = predictor.get("traffic")
        if not isinstance(traffic, list) or not traffic:
            return None
        rolled = predictor.get("latestRolledoutRevision")
        split = {baseline: 0, candidate: 0}
        for entry in traffic:
            if not isinstance(entry, Mapping):
                continue
            is_latest = bool(entry.get("latestRevision")) or (
                entry.get("revisionName") == predictor.get("latestCreatedRevision")
            )
            if entry.get("revisionName") == rolled and not entry.get("latestRevision"):
                split[baseline] += int(entry.get("percent") or 0)
            elif is_latest:
                split[candidate] += int(entry.get("percent") or 0)
        return split

    def settled(self, action: str, version: str | None, objects: Mapping[ObjectRef, Obj]) -> bool:
        baseline, candidate = self._names(objects[self.isvc])
        winner = candidate if action == "promote" and version == candidate else baseline
        split = self.split(objects)
        return split is not None and split.get(winner) == 100
