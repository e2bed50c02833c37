"""KServe v1beta1 InferenceService: `spec.predictor.canaryTrafficPercent` between the last
rolled-out revision (baseline) and the latest one (candidate), reported in
`status.components.predictor`.

The traffic targets, and their tags, are those KServe's controller gives the predictor's
Knative Service (pkg/controller/v1beta1/inferenceservice/reconcilers/knative/
ksvc_reconciler.go, kserve v0.20): with a canaryTrafficPercent and a rolled-out revision,
the latest revision takes the percent and the previous rolled-out one the rest, tagged
`prev`; otherwise the latest takes everything. The latest target is tagged `latest` only
when the InferenceService has the annotation `serving.kserve.io/enable-tag-routing: "true"`
(constants.EnableRoutingTagAnnotationKey); Knative then publishes a URL per tag, which is
how a BlueGreen candidate at 0% is reached for preview.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from analytics.model import ExperimentSpec, Version
from functions.core.backends.base import Obj, Patch, Resolution, Route, get_path, with_ready
from functions.core.resources import ObjectRef

TAG_ROUTING_ANNOTATION: Final = "serving.kserve.io/enable-tag-routing"
LATEST_TAG: Final = "latest"
PREV_TAG: Final = "prev"
# Knative's default domain (config-domain), which the tag URLs in status are under.
DEFAULT_DOMAIN: Final = "example.com"


def _predictor_status(obj: Obj) -> Mapping[str, Any]:
    return get_path(obj, "status", "components", "predictor") or {}


def tag_routing(obj: Obj) -> bool:
    """Whether KServe tags the latest revision `latest` (the annotation is exactly "true")."""
    return bool(get_path(obj, "metadata", "annotations", TAG_ROUTING_ANNOTATION) == "true")


def tag_url(obj: Obj, tag: str, domain: str = DEFAULT_DOMAIN) -> str:
    """The URL Knative publishes for `tag` of the predictor's route: `{tag}-{route}.{ns}`."""
    meta = obj.get("metadata") or {}
    return f"http://{tag}-{meta.get('name')}-predictor.{meta.get('namespace')}.{domain}"


def routes(obj: Obj) -> tuple[Route, ...]:
    """The traffic targets KServe gives the predictor's Knative Service, as Knative resolves
    them: the latest target (`latestRevision`) serves from latestReadyRevision, so the
    candidate takes the percent only once it is ready; the previous rolled-out revision
    takes the rest under tag `prev`; the latest target is tagged `latest` under the
    annotation (see the module doc); () before any revision is ready."""
    predictor = _predictor_status(obj)
    rolled = predictor.get("latestRolledoutRevision")
    ready = predictor.get("latestReadyRevision")
    percent = get_path(obj, "spec", "predictor", "canaryTrafficPercent")
    if not ready:
        return ()
    latest_tag = LATEST_TAG if tag_routing(obj) else None
    if percent is None or not rolled:
        return (Route(100, str(ready), alias=latest_tag, latest=True),)
    p = min(100, max(0, int(percent)))
    latest = Route(p, str(ready), alias=latest_tag, latest=True)
    return (latest,) if p >= 100 else (latest, Route(100 - p, str(rolled), alias=PREV_TAG))


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
    predictor["traffic"] = [
        {**r.target(), "url": tag_url(obj, r.alias)} if r.alias else r.target() for r in programmed
    ]
    meta = obj.get("metadata") or {}
    status["url"] = f"http://{meta.get('name')}.{meta.get('namespace')}.{DEFAULT_DOMAIN}"
    if meta.get("generation") is not None:
        status["observedGeneration"] = meta["generation"]
    status["conditions"] = with_ready(status)
    created = predictor.get("latestCreatedRevision")
    if created and created != predictor.get("latestReadyRevision"):
        # Knative's configuration is not ready while its latest revision is not, and KServe
        # reports the InferenceService so (what wait_isvc_ready waits out).
        status["conditions"] = [
            {**c, "status": "False", "reason": "RevisionNotReady"} if c["type"] == "Ready" else c
            for c in status["conditions"]
        ]
    return status


def latest_url(obj: Obj) -> tuple[str, str] | None:
    """The `latest` tag's URL in `obj`'s status and the revision serving it; None without."""
    for entry in get_path(obj, "status", "components", "predictor", "traffic") or []:
        if isinstance(entry, Mapping) and entry.get("tag") == LATEST_TAG and entry.get("url"):
            return str(entry["url"]), str(entry.get("revisionName") or "")
    return None


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
