"""The Experiment's status as the stages read and write it: stages, conditions, versions.

The status is the only state Arbiter keeps. Every write replaces it whole, conditional on
the resourceVersion it was read at; `retry_on_conflict` re-runs a read-modify-write that
lost a race. `resolved_experiment` turns a stored object into the analytics' Experiment
with the versions `start` resolved, so later stages never re-resolve them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from analytics.model import Experiment
from analytics.parse import SpecError, parse_experiment
from functions.core.errors import ConflictError, NotFoundError, PermanentError
from functions.core.events import ExperimentRef
from functions.core.ports import ExperimentStore

T = TypeVar("T")
Obj = dict[str, Any]

PENDING: Final = "Pending"
WAITING: Final = "Waiting"
INITIALIZING: Final = "Initializing"
RUNNING: Final = "Running"
FINISHING: Final = "Finishing"
COMPLETED: Final = "Completed"
FAILED: Final = "Failed"
TERMINAL: Final = frozenset({COMPLETED, FAILED})
# Holding the target: traffic may be away from the baseline.
ACTIVE: Final = frozenset({RUNNING, FINISHING})

TARGET_ACQUIRED: Final = "TargetAcquired"
VERSIONS_READY: Final = "VersionsReady"
COMPLETED_CONDITION: Final = "Completed"
FAILED_CONDITION: Final = "Failed"

CONFLICT_ATTEMPTS: Final = 8


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def status_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    status = obj.get("status")
    return dict(status) if isinstance(status, Mapping) else {}


def stage_of(obj: Mapping[str, Any]) -> str:
    return str(status_of(obj).get("stage") or PENDING)


def ref_of(obj: Mapping[str, Any]) -> ExperimentRef:
    meta = obj.get("metadata") or {}
    return ExperimentRef(
        str(meta.get("namespace") or "default"), str(meta.get("name")), meta.get("uid")
    )


def same_experiment(obj: Mapping[str, Any], ref: ExperimentRef) -> bool:
    """False when the event is about an earlier experiment of the same name."""
    return ref.uid is None or ref_of(obj).uid in (None, ref.uid)


def current(store: ExperimentStore, ref: ExperimentRef) -> Obj | None:
    """The experiment an event is about as stored now; None when it is gone or the event
    is about an earlier experiment of the same name (both: acknowledge, change nothing)."""
    try:
        obj = store.get(ref)
    except NotFoundError:
        return None
    return obj if same_experiment(obj, ref) else None


def with_condition(
    status: Mapping[str, Any], kind: str, ok: bool, reason: str, message: str, now: datetime
) -> list[dict[str, Any]]:
    """The status's conditions with `kind` set; the transition time moves only on change."""
    value = "True" if ok else "False"
    result = []
    found = False
    for c in status.get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == kind:
            found = True
            changed = c.get("status") != value
            c = {  # noqa: PLW2901 - the updated condition replaces the old one
                **c,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": iso(now) if changed else c.get("lastTransitionTime"),
            }
        result.append(dict(c))
    if not found:
        result.append(
            {
                "type": kind,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": iso(now),
            }
        )
    return result


def spec_problems(obj: Mapping[str, Any]) -> list[str]:
    """Problems with the experiment's spec (empty when it parses)."""
    try:
        parse_experiment(_without_status(obj), require_versions=False)
    except SpecError as e:
        return list(e.problems)
    return []


def _without_status(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "status"}


def resolved_document(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object with spec.versionInfo filled from status.versions when the spec has none,
    and each version's resolved revision as its `revision` variable."""
    doc = copy.deepcopy(dict(obj))
    spec = doc.setdefault("spec", {})
    resolved = status_of(obj).get("versions") or []
    revisions = {
        str(v.get("name")): str(v.get("revision"))
        for v in resolved
        if isinstance(v, Mapping) and v.get("revision")
    }
    if spec.get("versionInfo") is None and resolved:
        names = [str(v.get("name")) for v in resolved if isinstance(v, Mapping)]
        spec["versionInfo"] = {
            "baseline": {"name": names[0]},
            "candidates": [{"name": n} for n in names[1:]],
        }
    info = spec.get("versionInfo")
    if isinstance(info, dict):
        versions = [info.get("baseline"), *(info.get("candidates") or [])]
        for v in versions:
            if not isinstance(v, dict) or v.get("name") not in revisions:
                continue
            variables = [x for x in v.get("variables") or [] if x.get("name") != "revision"]
            declared = [x for x in v.get("variables") or [] if x.get("name") == "revision"]
            v["variables"] = [
                *variables,
                *(declared or [{"name": "revision", "value": revisions[v["name"]]}]),
            ]
    return doc


def resolved_experiment(obj: Mapping[str, Any]) -> Experiment:
    try:
        return parse_experiment(resolved_document(obj), require_versions=False)
    except SpecError as e:
        raise PermanentError("; ".join(e.problems)) from None


def retry_on_conflict(action: Callable[[], T], attempts: int = CONFLICT_ATTEMPTS) -> T:
    """Run a read-modify-write until it stops losing races (then the ConflictError escapes and
    the broker retries the event)."""
    for attempt in range(attempts):
        try:
            return action()
        except ConflictError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
