"""Gateway API HTTPRoute: one integer `weight` per version on the `backendRefs` of the route's
first rule, read back by normalising, once every parent Gateway reports it has accepted the
route's current generation.

A version is a backend Service of `spec.rules[0]`: the Service named by the version's
`service` variable, else by the version's name. Its revision (what the metrics' `$revision`
becomes) is its `revision` variable, else the Service's name. Only the first rule is split:
a route that splits traffic has one rule for it, and the first is the one a plain canary
route has; a route whose model traffic is in a later rule is not supported.

Gateway API weights are relative, not percentages (a backend's share is its weight over the
sum of the rule's weights): Arbiter writes the percents it decides, which sum to 100, and
reads shares back by normalising, so weights someone else wrote read as the shares they give.
Every version must already have its backendRef in the rule (add the candidate with
`weight: 0`); a backendRef that is no version must carry weight 0, or it would take a share
no version accounts for.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from analytics.model import ExperimentSpec, Version
from functions.core.backends.base import Obj, Patch, Resolution, Route, get_path
from functions.core.errors import PermanentError
from functions.core.resources import GATEWAY_GROUP, ObjectRef

# kubernetes-sigs/gateway-api v1.6.1 apis/v1/shared_types.go `BackendRef.Weight` and
# apis/v1/httproute_types.go `HTTPRouteSpec.Rules`, `HTTPRouteRule.BackendRefs`.
DEFAULT_WEIGHT: Final = 1
MAX_WEIGHT: Final = 1_000_000
MAX_BACKEND_REFS: Final = 16
MAX_RULES: Final = 16
# The route conditions (apis/v1/shared_types.go `RouteConditionAccepted`,
# `RouteConditionResolvedRefs`) a parent must report True for the route to carry traffic.
READY_CONDITIONS: Final = ("Accepted", "ResolvedRefs")
# The controllerName the local Gateway stand-in reports (a domain-prefixed path, as required).
LOCAL_CONTROLLER: Final = "arbiter.dev/local-gateway"

_RULE: Final = 0


def _rule(obj: Obj) -> Mapping[str, Any] | None:
    rule = get_path(obj, "spec", "rules", _RULE)
    return rule if isinstance(rule, Mapping) else None


def _backend_refs(obj: Obj) -> list[Mapping[str, Any]]:
    refs = get_path(_rule(obj) or {}, "backendRefs")
    return [r for r in refs if isinstance(r, Mapping)] if isinstance(refs, list) else []


def weight(ref: Mapping[str, Any]) -> int:
    """A backendRef's weight, the API's default when it has none."""
    value = ref.get("weight")
    return DEFAULT_WEIGHT if value is None else int(value)


def shares(weights: Sequence[int]) -> list[int]:
    """Relative weights as integer percents summing to 100 (largest remainder), or all 0 when
    the weights are (a rule whose weights are all 0 sends nothing anywhere)."""
    total = sum(max(0, w) for w in weights)
    if total <= 0:
        return [0] * len(weights)
    exact = [100 * max(0, w) / total for w in weights]
    floors = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: floors[i] - exact[i])
    for i in by_remainder[: 100 - sum(floors)]:
        floors[i] += 1
    return floors


def routes(obj: Obj) -> tuple[Route, ...]:
    """The routes a Gateway programs for the first rule: each backend Service its share of
    the weights (the revision is the Service's name)."""
    refs = _backend_refs(obj)
    percents = shares([weight(r) for r in refs])
    return tuple(Route(p, str(r.get("name"))) for r, p in zip(refs, percents, strict=True))


def _parent_key(parent: Mapping[str, Any], namespace: str) -> tuple[Any, ...]:
    """A ParentReference with its defaults filled in (group gateway.networking.k8s.io, kind
    Gateway, the route's namespace), so a spec entry finds its status entry."""
    return (
        parent.get("group", GATEWAY_GROUP),
        parent.get("kind", "Gateway"),
        parent.get("namespace") or namespace,
        parent.get("name"),
        parent.get("sectionName"),
        parent.get("port"),
    )


def _condition(entry: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in entry.get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == kind:
            return c
    return None


def _parents(obj: Obj) -> list[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
    """Each spec.parentRefs entry with its status.parents entry (None while unreported)."""
    namespace = str(get_path(obj, "metadata", "namespace") or "")
    reported = {
        _parent_key(p.get("parentRef") or {}, namespace): p
        for p in get_path(obj, "status", "parents") or []
        if isinstance(p, Mapping)
    }
    wanted = get_path(obj, "spec", "parentRefs") or []
    return [(p, reported.get(_parent_key(p, namespace))) for p in wanted if isinstance(p, Mapping)]


def _not_ready(obj: Obj) -> str | None:
    """What keeps the route from carrying traffic as its spec says: a parent that has not
    accepted it, or not the current generation of it; None when every parent has."""
    parents = _parents(obj)
    if not parents:
        return "spec.parentRefs to name the Gateway (or mesh Service) it attaches to"
    generation = get_path(obj, "metadata", "generation")
    for ref, entry in parents:
        name = ref.get("name")
        for kind in READY_CONDITIONS:
            c = _condition(entry or {}, kind)
            if c is None or str(c.get("status")) != "True":
                why = f" ({c.get('reason')}: {c.get('message')})" if c else ""
                return f"parent {name} to report condition {kind} True{why}"
            observed = c.get("observedGeneration")
            # observedGeneration is optional in metav1.Condition: without it, trust it.
            if observed is not None and generation is not None and observed < generation:
                return f"parent {name} to accept generation {generation} (it reports {observed})"
    return None


def expected_status(obj: Obj, controller: str = LOCAL_CONTROLLER) -> dict[str, Any]:
    """The status a Gateway controller named `controller` reports once it has programmed
    `obj`: per spec.parentRefs entry, Accepted True and ResolvedRefs True (False, reason
    InvalidKind, for a backendRef to anything but a core Service) at the current generation;
    other controllers' entries are kept."""
    status = copy.deepcopy(dict(obj.get("status") or {}))
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    # The time the condition last changed: kept while it holds, else the route's creation
    # (a pure function has no clock; the stand-in writes at once, so they nearly agree).
    since = meta.get("creationTimestamp") or "1970-01-01T00:00:00Z"
    bad = [
        str(r.get("name"))
        for rule in get_path(obj, "spec", "rules") or []
        for r in (rule.get("backendRefs") or [] if isinstance(rule, Mapping) else [])
        if isinstance(r, Mapping)
        and (r.get("group", "") != "" or r.get("kind", "Service") != "Service")
    ]
    resolved = ("False", "InvalidKind", f"not a Service: {', '.join(bad)}") if bad else None
    wanted = {
        kind: resolved if kind == "ResolvedRefs" and resolved else ("True", kind, "")
        for kind in READY_CONDITIONS
    }
    others = [p for p in status.get("parents") or [] if p.get("controllerName") != controller]
    old = {
        _parent_key(p.get("parentRef") or {}, str(meta.get("namespace") or "")): p
        for p in status.get("parents") or []
        if p.get("controllerName") == controller
    }
    parents = []
    for ref, _ in _parents(obj):
        previous = old.get(_parent_key(ref, str(meta.get("namespace") or ""))) or {}
        conditions = []
        for kind, (state, reason, message) in wanted.items():
            before = _condition(previous, kind) or {}
            conditions.append(
                {
                    "type": kind,
                    "status": state,
                    "reason": reason,
                    "message": message,
                    "observedGeneration": generation,
                    "lastTransitionTime": before.get("lastTransitionTime", since)
                    if before.get("status") == state
                    else since,
                }
            )
        parents.append(
            {"parentRef": dict(ref), "controllerName": controller, "conditions": conditions}
        )
    status["parents"] = [*others, *parents]
    return status


def problems(obj: Obj) -> list[str]:
    """What the HTTPRoute CRD's CEL rules refuse that its OpenAPI schema (and so the published
    JSON schemas) cannot say: a backendRef to a core Service without a port
    (kubernetes-sigs/gateway-api v1.6.1 apis/v1/object_reference_types.go, the XValidation on
    `BackendObjectReference`: "Must have port for Service reference")."""
    found = []
    for i, rule in enumerate(get_path(obj, "spec", "rules") or []):
        for j, ref in enumerate((rule or {}).get("backendRefs") or []):
            if not isinstance(ref, Mapping):
                continue
            core_service = ref.get("group", "") == "" and ref.get("kind", "Service") == "Service"
            if core_service and ref.get("port") is None:
                found.append(
                    f'spec.rules[{i}].backendRefs[{j}]: Invalid value: "object": '
                    "Must have port for Service reference"
                )
    return found


@dataclass(frozen=True)
class HTTPRouteBackend:
    """One experiment on a Gateway API HTTPRoute: each version a backendRef of its first rule."""

    MAX_VERSIONS: ClassVar[int | None] = MAX_BACKEND_REFS
    DESCRIPTION: ClassVar[str] = "a Gateway API HTTPRoute (spec.rules[0].backendRefs[*].weight)"

    route: ObjectRef
    spec: ExperimentSpec

    @property
    def refs(self) -> tuple[ObjectRef, ...]:
        return (self.route,)

    def _versions(self) -> tuple[Version, ...]:
        if self.spec.version_info is None:
            raise PermanentError("spec.versionInfo: required for an HTTPRoute target")
        return self.spec.version_info.versions

    @staticmethod
    def service(version: Version) -> str:
        """The backend Service that is `version`."""
        return version.variables.get("service", version.name)

    def _indices(self, obj: Obj) -> dict[str, int] | str:
        """Each version's index in the rule's backendRefs, or what is missing."""
        names = [str(r.get("name")) for r in _backend_refs(obj)]
        found = {}
        for v in self._versions():
            service = self.service(v)
            if service not in names:
                return (
                    f"{self.route}: a backendRef for Service {service} (version {v.name}) in "
                    "spec.rules[0].backendRefs; add it with weight 0"
                )
            found[v.name] = names.index(service)
        return found

    def resolve(self, objects: Mapping[ObjectRef, Obj]) -> Resolution:
        obj = objects[self.route]
        indices = self._indices(obj)
        if isinstance(indices, str):
            return Resolution(False, indices)
        refs = _backend_refs(obj)
        ours = set(indices.values())
        for j, ref in enumerate(refs):
            if j not in ours and weight(ref) > 0:
                return Resolution(
                    False,
                    f"{self.route}: spec.rules[0].backendRefs[{j}] ({ref.get('name')}) is no "
                    f"version but has weight {weight(ref)}; set it to 0 or make it a version",
                )
        waiting = _not_ready(obj)
        if waiting:
            return Resolution(False, f"{self.route}: {waiting}")
        return Resolution(
            True,
            revisions={
                v.name: v.variables.get("revision", self.service(v)) for v in self._versions()
            },
        )

    def apply(self, weights: Mapping[str, int], objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        indices = self._indices(objects[self.route])
        if isinstance(indices, str):
            raise PermanentError(indices)
        ops: list[dict[str, Any]] = []
        for v in self._versions():
            at = f"/spec/rules/{_RULE}/backendRefs/{indices[v.name]}"
            # The index was read a moment ago: refuse the write if the list moved since.
            ops.append({"op": "test", "path": f"{at}/name", "value": self.service(v)})
            ops.append({"op": "add", "path": f"{at}/weight", "value": int(weights.get(v.name, 0))})
        return [Patch(self.route, "json", ops)]

    def promote(self, version: str, objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        return self.apply({version: 100}, objects)

    def rollback(self, objects: Mapping[ObjectRef, Obj]) -> list[Patch]:
        return self.apply({self._versions()[0].name: 100}, objects)

    def split(self, objects: Mapping[ObjectRef, Obj]) -> dict[str, int] | None:
        obj = objects[self.route]
        indices = self._indices(obj)
        if isinstance(indices, str) or _not_ready(obj):
            return None
        percents = shares([weight(r) for r in _backend_refs(obj)])
        return {name: percents[j] for name, j in indices.items()}

    def settled(self, action: str, version: str | None, objects: Mapping[ObjectRef, Obj]) -> bool:
        winner = version if action == "promote" and version else self._versions()[0].name
        split = self.split(objects)
        return split is not None and split.get(winner) == 100
