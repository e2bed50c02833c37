"""What every traffic backend shares: the backend protocol, patches, resolutions and routes.

A backend is one field layout (KServe v1beta1, KFServing v1alpha2, Knative Service, a field
path) applied to one experiment. Each backend module owns everything that depends on its
fields: the patches Arbiter writes, the split it reads back, the routes the backend's router
programs for a spec (`routes`), the status its controller then reports (`expected_status`)
and what its admission webhook refuses (`problems`). The last three are pure functions of the
object so that the local controllers, router and API server follow the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from functions.core.resources import ObjectRef

Obj = Mapping[str, Any]


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


@dataclass(frozen=True)
class Route:
    """A share of the requests as a backend's router sends it.

    `revision` serves it (None while the backend has not said which); `alias` is the other
    name the destination goes by (a Knative tag, KFServing's "default" / "canary"); `latest`
    marks a route that follows the latest ready revision (`latestRevision`).
    """

    percent: int
    revision: str | None
    alias: str | None = None
    latest: bool = False

    def target(self) -> dict[str, Any]:
        """The route as a Knative `TrafficTarget` (which KServe's status reuses)."""
        entry: dict[str, Any] = {}
        if self.alias:
            entry["tag"] = self.alias
        if self.revision:
            entry["revisionName"] = self.revision
        entry.update(percent=self.percent, latestRevision=self.latest)
        return entry


class TrafficBackend(Protocol):
    """The field layout of one backend, for one experiment."""

    # How many versions it can split traffic between (None: any number), and what it is,
    # for the condition that refuses an experiment it cannot carry.
    MAX_VERSIONS: ClassVar[int | None]
    DESCRIPTION: ClassVar[str]

    @property
    def refs(self) -> tuple[ObjectRef, ...]:
        """Every object this backend reads or patches."""
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


def condition_true(obj: Obj, kind: str = "Ready") -> bool:
    for c in get_path(obj, "status", "conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == kind:
            return str(c.get("status")) == "True"
    return False


def with_ready(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`status.conditions` with Ready True, the other conditions kept."""
    others = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
    return [*others, {"type": "Ready", "status": "True"}]
