"""What an Experiment may touch: its own namespace, and only the traffic fields allowed.

An Experiment is created by whoever may create Experiments in its namespace, while the
functions act with a cluster-wide service account. Without these rules an Experiment would
be a confused deputy: one in namespace `attacker` could ramp `good/iris`, rewrite any field
of any object through a field path, or queue ahead of the victim's own experiment.

- Namespace confinement: the target and every weightObjRef are in the Experiment's
  namespace; a Metric is read from the Experiment's namespace or from Arbiter's own
  (`Settings.system_namespace`, the shared library).
- Field paths: the generic backend writes only fields the object's owner opted in to, by
  the `arbiter.dev/traffic-paths` annotation on the object, or by the per-kind allow-list
  `Settings.traffic_paths` (ARBITER_TRAFFIC_PATHS).
- Expressibility: a version list the target's backend cannot carry (three versions on a
  KServe canaryTrafficPercent) is refused before any traffic moves.

`start` checks all of this before it takes the target; `rollout` checks field paths again
on every write, so a spec edited after the start cannot widen what is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from analytics.model import ExperimentSpec
from functions.core.backends import (
    FieldPathBackend,
    KnativeBackend,
    TrafficBackend,
    backend_for,
    get_path,
    parse_field_path,
)
from functions.core.errors import PermanentError
from functions.core.resources import ObjectRef
from functions.core.settings import Settings

TRAFFIC_PATHS_ANNOTATION: Final = "arbiter.dev/traffic-paths"


class RefusedError(PermanentError):
    """The experiment asked to touch something it may not: nothing was written."""


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


def backend_of(spec: ExperimentSpec) -> type[TrafficBackend]:
    """Which backend carries the split: the very choice the stages make (`backend_for`)."""
    # The namespace only names the objects; the backend's kind does not depend on it.
    return type(backend_for(spec, "default"))


def _where(i: int) -> str:
    return "spec.versionInfo.baseline" if i == 0 else f"spec.versionInfo.candidates[{i - 1}]"


def metric_allowed(metric_namespace: str, namespace: str, settings: Settings) -> bool:
    return metric_namespace in (namespace, settings.system_namespace)


def namespace_problems(
    spec: ExperimentSpec, namespace: str, metrics: Sequence[str], settings: Settings
) -> list[Problem]:
    """Everything the spec names outside the experiment's namespace."""
    problems = []
    target_ns, _, _ = spec.target.rpartition("/")
    if target_ns and target_ns != namespace:
        problems.append(
            Problem(
                "OutsideNamespace",
                f"spec.target: namespace {target_ns} is not the experiment's namespace {namespace}",
            )
        )
    versions = spec.version_info.versions if spec.version_info else ()
    for i, v in enumerate(versions):
        ref = v.weight_obj_ref
        if ref is not None and ref.namespace and ref.namespace != namespace:
            problems.append(
                Problem(
                    "OutsideNamespace",
                    f"{_where(i)}.weightObjRef.namespace: namespace {ref.namespace} is not the "
                    f"experiment's namespace {namespace}",
                )
            )
    for name in metrics:
        metric_ns, _, _ = name.rpartition("/")
        if metric_ns and not metric_allowed(metric_ns, namespace, settings):
            problems.append(
                Problem(
                    "OutsideNamespace",
                    f"spec.criteria: metric {name!r} is in namespace {metric_ns}; an "
                    f"experiment reads Metrics from its own namespace {namespace} or from "
                    f"{settings.system_namespace}",
                )
            )
    return problems


def expressible_problems(spec: ExperimentSpec) -> list[Problem]:
    """A version list the target's backend cannot carry."""
    backend = backend_of(spec)
    info = spec.version_info
    count = len(info.versions) if info is not None else 2
    most = backend.MAX_VERSIONS
    problems = []
    if most is not None and count > most:
        between = "one baseline and one candidate" if most == 2 else f"at most {most} versions"
        problems.append(
            Problem(
                "NotExpressible",
                f"spec.versionInfo: {backend.DESCRIPTION} splits traffic between {between}; "
                f"this experiment has {count} versions",
            )
        )
    if backend in (KnativeBackend, FieldPathBackend) and info is None:
        problems.append(
            Problem("NotExpressible", f"spec.versionInfo: required for {backend.DESCRIPTION}")
        )
    if backend is FieldPathBackend and info is not None:
        seen: dict[tuple[ObjectRef, str], int] = {}
        for i, v in enumerate(info.versions):
            ref = v.weight_obj_ref
            if ref is None or not ref.field_path:
                problems.append(
                    Problem(
                        "NotExpressible",
                        f"{_where(i)}.weightObjRef.fieldPath: every version needs the field "
                        "that carries its weight",
                    )
                )
                continue
            try:
                pointer = to_pointer(parse_field_path(ref.field_path))
            except PermanentError as e:
                problems.append(Problem("NotExpressible", f"{_where(i)}.weightObjRef: {e}"))
                continue
            key = (ObjectRef(ref.api_version, ref.kind, "", ref.name), pointer)
            if key in seen:
                problems.append(
                    Problem(
                        "NotExpressible",
                        f"{_where(i)}.weightObjRef.fieldPath: {pointer} already carries the "
                        f"weight of {_where(seen[key])}",
                    )
                )
            seen.setdefault(key, i)
    return problems


def to_pointer(parts: Sequence[str | int]) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _matches(pattern: str, pointer: str) -> bool:
    want = pattern.strip().strip("/").split("/")
    have = pointer.strip("/").split("/")
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have, strict=True))


def allowed_paths(obj: Mapping[str, Any], kind: str, settings: Settings) -> tuple[str, ...]:
    """The field paths the object's owner lets Arbiter write: its annotation, then the
    allow-list for its kind."""
    annotation = get_path(obj, "metadata", "annotations", TRAFFIC_PATHS_ANNOTATION)
    listed = (
        tuple(p.strip() for p in annotation.split(",") if p.strip())
        if isinstance(annotation, str)
        else ()
    )
    return listed + tuple(settings.traffic_paths.get(kind, ()))


def path_allowed(obj: Mapping[str, Any], kind: str, pointer: str, settings: Settings) -> bool:
    return any(_matches(p, pointer) for p in allowed_paths(obj, kind, settings))


def refused_path(ref: ObjectRef, pointer: str, where: str = "") -> str:
    field = f"{where}.weightObjRef.fieldPath: " if where else ""
    return (
        f"{field}{pointer} of {ref} is not a traffic field its owner allows (annotate the "
        f"object {TRAFFIC_PATHS_ANNOTATION}, or list it for kind {ref.kind} in "
        "ARBITER_TRAFFIC_PATHS)"
    )


def field_path_problems(
    spec: ExperimentSpec,
    namespace: str,
    objects: Mapping[ObjectRef, Mapping[str, Any]],
    settings: Settings,
) -> list[Problem]:
    """Field paths the field-path backend would write that the objects' owners do not allow."""
    if backend_of(spec) is not FieldPathBackend or spec.version_info is None:
        return []
    problems = []
    for i, v in enumerate(spec.version_info.versions):
        ref = v.weight_obj_ref
        if ref is None or not ref.field_path:
            continue
        obj_ref = ObjectRef(ref.api_version, ref.kind, ref.namespace or namespace, ref.name)
        pointer = to_pointer(parse_field_path(ref.field_path))
        if not path_allowed(objects.get(obj_ref) or {}, ref.kind, pointer, settings):
            problems.append(Problem("FieldNotAllowed", refused_path(obj_ref, pointer, _where(i))))
    return problems
