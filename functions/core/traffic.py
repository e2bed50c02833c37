"""Where each traffic backend keeps its split, as pure functions of the objects involved.

One `TrafficModel` per backend (docs/design.md#traffic-backends) says which objects carry an
experiment's split, whether its versions are deployed and Ready (and which revision each
version is), what patch sets a split, promotes or rolls back, and what split the objects
report back. `functions.core.rollout` fetches and patches the objects through the Objects
port (functions/adapters/kubernetes.py); everything that depends on the objects' field
layout lives here so it is testable without a server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from analytics.model import ExperimentSpec, Version
from functions.core.errors import PermanentError

Obj = Mapping[str, Any]

KSERVE = "serving.kserve.io/v1beta1"
KFSERVING = "serving.kubeflow.org/v1alpha2"
KNATIVE = "serving.knative.dev/v1"

# Plurals of the kinds Arbiter patches; anything else falls back to lower-case + "s".
_PLURALS = {
    "InferenceService": "inferenceservices",
    "Service": "services",
    "Revision": "revisions",
    "VirtualService": "virtualservices",
    "Experiment": "experiments",
    "Metric": "metrics",
}


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    namespace: str
    name: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def plural(self) -> str:
        return _PLURALS.get(self.kind, self.kind.lower() + "s")

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Patch:
    """A patch for one object: an RFC 7386 merge patch or an RFC 6902 JSON patch."""

    ref: ObjectRef
    kind: Literal["merge", "json"]
    body: Any


@dataclass(frozen=True)
class Resolution:
    """Whether the versions can take traffic, and which revision serves each."""

    ready: bool
    waiting_for: str = ""
    revisions: Mapping[str, str] = field(default_factory=dict)
    # Version names when the spec has no versionInfo: resolved from the object.
    names: tuple[str, ...] = ()


class TrafficModel(Protocol):
    """The field layout of one backend, for one experiment."""

    @property
    def refs(self) -> tuple[ObjectRef, ...]:
        """Every object this model reads or patches."""
        ...

    def resolve(self, objects: Mapping[ObjectRef, Obj]) -> Resolution: ...

    def apply(self, weights: Mapping[str, int], objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        """Patches that set `weights` (version name -> percent)."""
        ...

    def promote(self, version: str, objects: Mapping[ObjectRef, Obj]) -> list[Patch]: ...

    def rollback(self, objects: Mapping[ObjectRef, Obj]) -> list[Patch]: ...

    def split(self, objects: Mapping[ObjectRef, Obj]) -> dict[str, int] | None:
        """The split the objects report as in effect (status where the backend reports it),
        by version name; None when they report none yet."""
        ...

    def settled(self, action: str, version: str | None, objects: Mapping[ObjectRef, Obj]) -> bool:
        """Whether a promote or rollback has taken effect."""
        ...


def get_path(obj: Any, *path: str | int) -> Any:
    """The value at `path` (keys and list indices) in a Kubernetes object; None if absent."""
    for key in path:
        if isinstance(key, int):
            obj = obj[key] if isinstance(obj, list) and -len(obj) <= key < len(obj) else None
        else:
            obj = obj.get(key) if isinstance(obj, Mapping) else None
        if obj is None:
            return None
    return obj


def _condition_true(obj: Obj, kind: str = "Ready") -> bool:
    for c in get_path(obj, "status", "conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == kind:
            return str(c.get("status")) == "True"
    return False


def _split_target(target: str, namespace: str) -> tuple[str, str]:
    ns, _, name = target.rpartition("/")
    return (ns or namespace), name


@dataclass(frozen=True)
class KServeModel:
    """KServe v1beta1: `spec.predictor.canaryTrafficPercent` between the last rolled-out
    revision (baseline) and the latest one (candidate)."""

    isvc: ObjectRef
    spec: ExperimentSpec

    @property
    def refs(self) -> tuple[ObjectRef, ...]:
        return (self.isvc,)

    def _names(self, obj: Obj) -> tuple[str, str]:
        info = self.spec.version_info
        if info is not None:
            return info.baseline.name, info.candidates[0].name if info.candidates else ""
        predictor = get_path(obj, "status", "components", "predictor") or {}
        return (
            str(predictor.get("latestRolledoutRevision") or "baseline"),
            str(predictor.get("latestCreatedRevision") or "candidate"),
        )

    def resolve(self, objects: Mapping[ObjectRef, Obj]) -> Resolution:
        obj = objects[self.isvc]
        predictor = get_path(obj, "status", "components", "predictor") or {}
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
        predictor = get_path(obj, "status", "components", "predictor") or {}
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


@dataclass(frozen=True)
class KFServingModel:
    """KFServing v1alpha2: `spec.default` / `spec.canary` and `spec.canaryTrafficPercent`;
    promotion copies the canary over the default, then drops the canary."""

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
        if not _condition_true(obj):
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
        canary = get_path(objects[self.isvc], "spec", "canary")
        if canary is None:  # already promoted: the canary was copied and dropped
            return []
        body = {"spec": {"default": canary, "canary": None, "canaryTrafficPercent": None}}
        return [Patch(self.isvc, "merge", body)]

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


_FIELD = re.compile(r"\.?([A-Za-z0-9_-]+)|\[(\d+)\]")


def parse_field_path(path: str) -> tuple[str | int, ...]:
    """`.spec.http[0].route[1].weight` or `/spec/http/0/route/1/weight` -> path parts."""
    if path.startswith("/"):
        return tuple(int(p) if p.isdigit() else p for p in path.strip("/").split("/"))
    parts: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _FIELD.match(path, pos)
        if m is None or m.end() == pos:
            raise PermanentError(f"fieldPath {path!r}: cannot parse near {path[pos:]!r}")
        parts.append(int(m.group(2)) if m.group(2) is not None else m.group(1))
        pos = m.end()
    if not parts:
        raise PermanentError(f"fieldPath {path!r}: empty")
    return tuple(parts)


def _pointer(parts: Sequence[str | int]) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass(frozen=True)
class KnativeModel:
    """Knative Service `spec.traffic`: one entry per version, by revision name or tag."""

    service: ObjectRef
    spec: ExperimentSpec

    @property
    def refs(self) -> tuple[ObjectRef, ...]:
        return (self.service,)

    def _versions(self) -> tuple[Version, ...]:
        if self.spec.version_info is None:
            raise PermanentError("spec.versionInfo: required for a Knative Service target")
        return self.spec.version_info.versions

    def _entry(self, version: Version) -> dict[str, Any]:
        if "tag" in version.variables and "revision" not in version.variables:
            return {"tag": version.variables["tag"]}
        return {"revisionName": version.variables.get("revision", version.name)}

    def resolve(self, objects: Mapping[ObjectRef, Obj]) -> Resolution:
        obj = objects[self.service]
        if not _condition_true(obj):
            return Resolution(False, f"{self.service}: condition Ready to be True")
        status_traffic = get_path(obj, "status", "traffic") or []
        by_tag = {t.get("tag"): t.get("revisionName") for t in status_traffic if t.get("tag")}
        revisions = {}
        for v in self._versions():
            entry = self._entry(v)
            revision = entry.get("revisionName") or by_tag.get(entry.get("tag"))
            if not revision:
                return Resolution(False, f"{self.service}: a revision tagged {entry.get('tag')}")
            revisions[v.name] = str(revision)
        return Resolution(True, revisions=revisions)

    def apply(self, weights: Mapping[str, int], objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        traffic = []
        for v in self._versions():
            entry = self._entry(v)
            entry.update(percent=int(weights.get(v.name, 0)), latestRevision=False)
            if "revisionName" in entry and "tag" in v.variables:
                entry["tag"] = v.variables["tag"]
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
            entry = self._entry(v)
            key, value = next(iter(entry.items()))
            split[v.name] = sum(int(t.get("percent") or 0) for t in traffic if t.get(key) == value)
        return split

    def settled(self, action: str, version: str | None, objects: Mapping[ObjectRef, Obj]) -> bool:
        winner = version if action == "promote" and version else self._versions()[0].name
        split = self.split(objects)
        return split is not None and split.get(winner) == 100


@dataclass(frozen=True)
class FieldPathModel:
    """Any object and field per version (e.g. an Istio VirtualService route weight). The
    field is the split's only record, so what is read back is the field itself."""

    spec: ExperimentSpec
    default_namespace: str

    def _placements(self) -> list[tuple[str, ObjectRef, tuple[str | int, ...]]]:
        if self.spec.version_info is None:
            raise PermanentError("spec.versionInfo: required for a weightObjRef target")
        result = []
        for i, v in enumerate(self.spec.version_info.versions):
            ref = v.weight_obj_ref
            where = (
                "spec.versionInfo.baseline" if i == 0 else f"spec.versionInfo.candidates[{i - 1}]"
            )
            if ref is None or not ref.field_path:
                raise PermanentError(
                    f"{where}.weightObjRef.fieldPath: every version needs the field that "
                    "carries its weight when the baseline's weightObjRef names one"
                )
            obj = ObjectRef(
                ref.api_version, ref.kind, ref.namespace or self.default_namespace, ref.name
            )
            result.append((v.name, obj, parse_field_path(ref.field_path)))
        return result

    @property
    def refs(self) -> tuple[ObjectRef, ...]:
        return tuple(dict.fromkeys(ref for _, ref, _ in self._placements()))

    def resolve(self, objects: Mapping[ObjectRef, Obj]) -> Resolution:
        revisions = {}
        for name, ref, path in self._placements():
            if get_path(objects[ref], *path[:-1]) is None:
                return Resolution(False, f"{ref}: field {_pointer(path)} to exist")
            revisions[name] = name
        return Resolution(True, revisions=revisions)

    def apply(self, weights: Mapping[str, int], objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        ops: dict[ObjectRef, list[dict[str, Any]]] = {}
        for name, ref, path in self._placements():
            ops.setdefault(ref, []).append(
                {"op": "add", "path": _pointer(path), "value": int(weights.get(name, 0))}
            )
        return [Patch(ref, "json", body) for ref, body in ops.items()]

    def promote(self, version: str, objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        return self.apply({version: 100}, objects)

    def rollback(self, objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        return self.apply({self._placements()[0][0]: 100}, objects)

    def split(self, objects: Mapping[ObjectRef, Obj]) -> dict[str, int] | None:
        return {
            name: int(get_path(objects[ref], *path) or 0) for name, ref, path in self._placements()
        }

    def settled(self, action: str, version: str | None, objects: Mapping[ObjectRef, Obj]) -> bool:
        winner = version if action == "promote" and version else self._placements()[0][0]
        return (self.split(objects) or {}).get(winner) == 100


def model_for(spec: ExperimentSpec, namespace: str) -> TrafficModel:
    """The backend an experiment uses, chosen by its versions' weightObjRef."""
    ns, name = _split_target(spec.target, namespace)
    versions = spec.version_info.versions if spec.version_info else ()
    # iter8 put the weightObjRef on the candidate only; the first one found decides.
    ref = next((v.weight_obj_ref for v in versions if v.weight_obj_ref is not None), None)
    if ref is None or (ref.kind == "InferenceService" and ref.api_version == KSERVE):
        target = ObjectRef(KSERVE, "InferenceService", ns, ref.name if ref else name)
        return KServeModel(target, spec)
    if ref.kind == "InferenceService" and ref.api_version == KFSERVING:
        return KFServingModel(
            ObjectRef(KFSERVING, "InferenceService", ref.namespace or ns, ref.name), spec
        )
    if ref.kind == "Service" and ref.api_version == KNATIVE and not ref.field_path:
        return KnativeModel(ObjectRef(KNATIVE, "Service", ref.namespace or ns, ref.name), spec)
    return FieldPathModel(spec, ns)
