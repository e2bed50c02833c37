"""Any object and field per version (e.g. an Istio VirtualService route weight), patched with
JSON patches. The field is the split's only record, so what is read back is the field itself."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from analytics.model import ExperimentSpec
from functions.core.backends.base import Obj, Patch, Resolution, get_path
from functions.core.errors import PermanentError
from functions.core.resources import ObjectRef

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
class FieldPathBackend:
    """One experiment whose versions each name the object and field carrying their weight."""

    MAX_VERSIONS: ClassVar[int | None] = None  # one field per version
    DESCRIPTION: ClassVar[str] = (
        "the field-path backend (spec.versionInfo.*.weightObjRef.fieldPath)"
    )

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
