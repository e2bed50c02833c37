"""The published schemas as the local API server checks writes against them.

A cluster's API server validates every write of a custom resource against its CRD's OpenAPI
schema and answers 422 Invalid, with one cause per field, when it does not hold. The local
API server does the same for the kinds whose schemas are published on npm (Knative, Gateway
API, Istio): `SchemaValidator` keeps one `node tools/knative-validate/validate.js --serve`
process (the validator the manifest tests run) and asks it about each object; `causes` turns
its ajv errors into the causes the API server reports (field, reason and message, as
k8s.io/apiextensions-apiserver's schema validation words them through kube-openapi).

node and the pinned packages (`make node-deps`) are needed only when such an object is
written; without them the write fails with a message saying so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

VALIDATOR: Final = Path(__file__).resolve().parents[1] / "tools" / "knative-validate"
# The groups validate.js has packages for (its PACKAGES).
CHECKED_GROUPS: Final = re.compile(r".*\.knative\.dev|gateway\.networking\.k8s\.io|.*\.istio\.io")


class SchemasUnavailableError(RuntimeError):
    """node or the validator's packages are missing."""


@dataclass(frozen=True)
class Cause:
    """One field's problem, as a Status's `details.causes` entry."""

    field: str
    reason: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


def _parts(pointer: str) -> list[str]:
    raw = pointer.strip("/").split("/") if pointer.strip("/") else []
    return [p.replace("~1", "/").replace("~0", "~") for p in raw]


def _field(pointer: str) -> str:
    """`/spec/rules/0/weight` -> `spec.rules[0].weight`."""
    out = ""
    for part in _parts(pointer):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def _value_at(obj: Any, pointer: str) -> Any:
    for part in _parts(pointer):
        if isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        elif isinstance(obj, Mapping):
            obj = obj.get(part)
        else:
            return None
    return obj


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, default=str)


_TYPES: Final = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return _TYPES.get(type(value), "string")


def causes(errors: Sequence[Mapping[str, Any]], obj: Mapping[str, Any]) -> list[Cause]:
    """ajv's errors for `obj` as the API server's causes."""
    found = []
    for error in errors:
        pointer = str(error.get("instancePath") or "")
        field = _field(pointer)
        params = error.get("params") or {}
        value = _value_at(obj, pointer)
        keyword = error.get("keyword")
        limit = params.get("limit")
        if keyword == "minimum":
            found.append(
                Cause(
                    field,
                    "FieldValueInvalid",
                    f"Invalid value: {_shown(value)}: {field} in body should be greater than "
                    f"or equal to {limit}",
                )
            )
        elif keyword == "maximum":
            found.append(
                Cause(
                    field,
                    "FieldValueInvalid",
                    f"Invalid value: {_shown(value)}: {field} in body should be less than or "
                    f"equal to {limit}",
                )
            )
        elif keyword == "maxItems":
            count = len(value) if isinstance(value, list) else "?"
            found.append(
                Cause(
                    field,
                    "FieldValueTooMany",
                    f"Too many: {count}: must have at most {limit} items",
                )
            )
        elif keyword == "required":
            missing = str(params.get("missingProperty"))
            found.append(
                Cause(
                    f"{field}.{missing}" if field else missing,
                    "FieldValueRequired",
                    "Required value",
                )
            )
        elif keyword == "type":
            found.append(
                Cause(
                    field,
                    "FieldValueTypeInvalid",
                    f'Invalid value: "{_type_name(value)}": {field} in body must be of type '
                    f"{params.get('type')}: {_shown(value)}",
                )
            )
        elif keyword == "enum":
            allowed = ", ".join(_shown(v) for v in params.get("allowedValues") or [])
            found.append(
                Cause(
                    field,
                    "FieldValueNotSupported",
                    f"Unsupported value: {_shown(value)}: supported values: {allowed}",
                )
            )
        else:
            found.append(
                Cause(
                    field,
                    "FieldValueInvalid",
                    f"Invalid value: {_shown(value)}: {error.get('message')}",
                )
            )
    return found


class SchemaValidator:
    """One long-lived `validate.js --serve` process, asked one object at a time (thread-safe);
    started on the first object of a checked group."""

    def __init__(self, directory: Path = VALIDATOR, timeout_s: float = 10.0) -> None:
        self._dir = directory
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    @staticmethod
    def checks(api_version: str) -> bool:
        """Whether objects of this apiVersion are checked (a package models its group)."""
        return bool(CHECKED_GROUPS.fullmatch(api_version.rpartition("/")[0]))

    def _start(self) -> subprocess.Popen[str]:
        node = shutil.which("node")
        if node is None or not (self._dir / "node_modules").is_dir():
            missing = "node" if node is None else f"{self._dir}/node_modules"
            raise SchemasUnavailableError(
                f"the local API server checks Knative, Gateway API and Istio objects against "
                f"their published schemas with {self._dir}/validate.js, and {missing} is "
                "missing: run `make node-deps` (node 20.19 or later)"
            )
        return subprocess.Popen(
            [node, str(self._dir / "validate.js"), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def errors(self, obj: Mapping[str, Any]) -> list[Cause]:
        """The causes the API server would give for `obj`; [] when it is valid or unchecked.

        Raises:
            SchemasUnavailableError: node or the packages are missing, or the validator died.
        """
        if not self.checks(str(obj.get("apiVersion") or "")):
            return []
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            assert self._proc.stdin is not None and self._proc.stdout is not None
            try:
                self._proc.stdin.write(json.dumps(obj) + "\n")
                self._proc.stdin.flush()
                line = self._proc.stdout.readline()
            except OSError as e:
                raise SchemasUnavailableError(f"the schema validator stopped: {e}") from None
        if not line:
            raise SchemasUnavailableError("the schema validator stopped without answering")
        answer = json.loads(line)
        if "error" in answer:
            return [Cause("apiVersion", "FieldValueNotSupported", str(answer["error"]))]
        return causes(answer.get("errors") or [], obj)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                if self._proc.stdin is not None:
                    self._proc.stdin.close()
                try:
                    self._proc.wait(timeout=self._timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                if self._proc.stdout is not None:
                    self._proc.stdout.close()
                self._proc = None
