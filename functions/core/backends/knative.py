"""Knative Service `spec.traffic`: one entry per version, pinned to its revision (and keeping
its tag), reported in `status.traffic`."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from analytics.model import ExperimentSpec, Version
from functions.core.backends.base import (
    Obj,
    Patch,
    Resolution,
    Route,
    condition_true,
    get_path,
    with_ready,
)
from functions.core.errors import PermanentError
from functions.core.resources import ObjectRef


def routes(obj: Obj) -> tuple[Route, ...]:
    """The routes Knative programs for `spec.traffic`: each entry to its revisionName, or to
    `status.latestReadyRevisionName` when it follows the latest (`latestRevision` defaults to
    true without a revisionName); no spec.traffic sends everything to the latest."""
    latest = get_path(obj, "status", "latestReadyRevisionName")
    traffic = get_path(obj, "spec", "traffic")
    if not isinstance(traffic, list) or not traffic:
        return (Route(100, str(latest), latest=True),) if latest else ()
    found = []
    for entry in traffic:
        if not isinstance(entry, Mapping):
            continue
        revision = entry.get("revisionName")
        follows = bool(entry.get("latestRevision", revision is None))
        found.append(
            Route(
                int(entry.get("percent") or 0),
                latest if follows else revision,
                entry.get("tag"),
                follows,
            )
        )
    return tuple(found)


def expected_status(obj: Obj) -> dict[str, Any]:
    """The status Knative reports once it has programmed `obj`'s routes: `status.traffic`,
    each entry with the revision it resolved to (a tag whose revision is not known yet keeps
    the one status already names)."""
    status = copy.deepcopy(dict(obj.get("status") or {}))
    tags = {t.get("tag"): t.get("revisionName") for t in status.get("traffic") or []}
    traffic = []
    for route in routes(obj):
        entry = route.target()
        if "revisionName" not in entry and tags.get(route.alias):
            entry["revisionName"] = tags[route.alias]
        traffic.append(entry)
    if traffic:
        status["traffic"] = traffic
    status["conditions"] = with_ready(status)
    return status


def problems(obj: Obj) -> list[str]:
    """What Knative's webhook refuses in a Service's `spec.traffic` (knative/serving
    pkg/apis/serving/v1/route_validation.go, `validateTrafficList` and
    `TrafficTarget.Validate`): a `latestRevision` whose sense disagrees with `revisionName`,
    a percent outside 0..100, a tag used twice, percents not summing to 100."""
    traffic = get_path(obj, "spec", "traffic")
    if not isinstance(traffic, list):
        return []
    found = []
    tags: dict[str, int] = {}
    total = 0
    for i, entry in enumerate(traffic):
        where = f"spec.traffic[{i}]"
        if not isinstance(entry, Mapping):
            found.append(f"{where}: must be an object")
            continue
        revision = entry.get("revisionName") or ""
        latest = entry.get("latestRevision")
        if latest is not None and bool(revision) == bool(latest):
            found.append(
                f"{where}.latestRevision: may not set revisionName {revision!r} when "
                f"latestRevision is {str(bool(latest)).lower()}"
            )
        percent = int(entry.get("percent") or 0)
        if not 0 <= percent <= 100:
            found.append(f"{where}.percent: expected 0 <= {percent} <= 100")
        total += percent
        tag = entry.get("tag")
        if tag:
            if tag in tags:
                found.append(f"{where}.tag: Multiple definitions for {tag!r} ([{tags[tag]}])")
            tags.setdefault(tag, i)
    if traffic and total != 100:
        found.append(f"spec.traffic: Traffic targets sum to {total}, want 100")
    return found


@dataclass(frozen=True)
class KnativeBackend:
    """One experiment on a Knative Service: a version is a revision, named by its `revision`
    variable or by the revision its `tag` is on."""

    MAX_VERSIONS: ClassVar[int | None] = None  # one spec.traffic entry per version
    DESCRIPTION: ClassVar[str] = "a Knative Service (spec.traffic)"

    service: ObjectRef
    spec: ExperimentSpec

    @property
    def refs(self) -> tuple[ObjectRef, ...]:
        return (self.service,)

    def _versions(self) -> tuple[Version, ...]:
        if self.spec.version_info is None:
            raise PermanentError("spec.versionInfo: required for a Knative Service target")
        return self.spec.version_info.versions

    @staticmethod
    def _key(version: Version) -> tuple[str, str]:
        """The field and value a version's traffic entries are found by."""
        if "tag" in version.variables and "revision" not in version.variables:
            return "tag", version.variables["tag"]
        return "revisionName", version.variables.get("revision", version.name)

    def _revision(self, version: Version, obj: Obj) -> str | None:
        field, value = self._key(version)
        if field == "revisionName":
            return value
        # A tag's revision: as the spec pins it, else as status reports it.
        for where in ("spec", "status"):
            for entry in get_path(obj, where, "traffic") or []:
                found = isinstance(entry, Mapping) and entry.get("tag") == value
                if found and entry.get("revisionName"):
                    return str(entry["revisionName"])
        return None

    def resolve(self, objects: Mapping[ObjectRef, Obj]) -> Resolution:
        obj = objects[self.service]
        if not condition_true(obj):
            return Resolution(False, f"{self.service}: condition Ready to be True")
        by_tag = {
            t.get("tag"): t.get("revisionName")
            for t in get_path(obj, "status", "traffic") or []
            if t.get("tag")
        }
        revisions = {}
        for v in self._versions():
            field, value = self._key(v)
            revision = value if field == "revisionName" else by_tag.get(value)
            if not revision:
                return Resolution(False, f"{self.service}: a revision tagged {value}")
            revisions[v.name] = str(revision)
        return Resolution(True, revisions=revisions)

    def apply(self, weights: Mapping[str, int], objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        obj = objects[self.service]
        traffic = []
        for v in self._versions():
            revision = self._revision(v, obj)
            if revision is None:
                raise PermanentError(
                    f"{self.service}: no revision carries tag {v.variables['tag']!r}, "
                    "so its traffic cannot be pinned"
                )
            # Knative refuses `latestRevision: false` without a revisionName: pin the revision.
            entry: dict[str, Any] = {"revisionName": revision}
            if "tag" in v.variables:
                entry["tag"] = v.variables["tag"]
            entry.update(percent=int(weights.get(v.name, 0)), latestRevision=False)
            traffic.append(entry)
        return [Patch(self.service, "merge", {"spec": {"traffic": traffic}})]

    def promote(self, version: str, objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        return self.apply({version: 100}, objects)

    def rollback(self, objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        return self.apply({self._versions()[0].name: 100}, objects)

    def split(self, objects: Mapping[ObjectRef, Obj]) -> dict[str, int] | None:
        traffic = get_path(objects[self.service], "status", "traffic")
        if not isinstance(traffic, list) or not traffic:
            return None
        split = {}
        for v in self._versions():
            field, value = self._key(v)
            split[v.name] = sum(
                int(t.get("percent") or 0) for t in traffic if t.get(field) == value
            )
        return split

    def settled(self, action: str, version: str | None, objects: Mapping[ObjectRef, Obj]) -> bool:
        winner = version if action == "promote" and version else self._versions()[0].name
        split = self.split(objects)
        return split is not None and split.get(winner) == 100
