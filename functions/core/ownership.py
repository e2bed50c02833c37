"""Who holds a target, visibly, and the finalizer that keeps a restore from being lost.

Holding: the objects that carry an experiment's traffic record which experiment holds them
in the annotation `arbiter.dev/held-by: <namespace>/<name>/<uid>` (`kubectl get -o yaml`
shows it). `start` takes it with a patch conditional on the object's resourceVersion, so
two starts racing for one target cannot both win; only the holder moves or restores the
traffic (`rollout` checks before every write); the end of the experiment releases it. A
running experiment whose target carries no annotation (started by a version without
holders) adopts it on its next step. A late or repeated event of an experiment that no
longer holds the target (a redelivered delete after another experiment took over) changes
nothing.

Finalizer: `start` puts `arbiter.dev/restore-baseline` on the Experiment before it first
moves traffic; a deletion then waits (metadata.deletionTimestamp set, object kept) until
the baseline is restored and read back, and only then is the finalizer removed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from functions.core.backends import Patch, TrafficBackend, get_path
from functions.core.context import Context
from functions.core.errors import ConflictError, NotFoundError
from functions.core.events import ExperimentRef
from functions.core.resources import ObjectRef
from functions.core.tenancy import RefusedError

log = logging.getLogger(__name__)

FINALIZER: Final = "arbiter.dev/restore-baseline"
HELD_BY: Final = "arbiter.dev/held-by"


class NotHolderError(RefusedError):
    """The target is held by another experiment: this one may not move it."""


# A conditional patch of the hold loses to any write in between, the target's own
# controller's status updates included; that many fresh reads before the stage gives up
# (a ConflictError, retried by the broker).
_HOLD_ATTEMPTS: Final = 5


def holder_value(ref: ExperimentRef) -> str:
    return f"{ref.namespace}/{ref.name}/{ref.uid or ''}"


def holder_of(obj: Mapping[str, Any]) -> str | None:
    value = get_path(obj, "metadata", "annotations", HELD_BY)
    return value if isinstance(value, str) and value else None


def _rv(obj: Mapping[str, Any]) -> Any:
    return get_path(obj, "metadata", "resourceVersion")


def _hold_patch(ref: ObjectRef, obj: Mapping[str, Any], value: str | None) -> Patch:
    # Carrying the resourceVersion read makes the merge patch conditional: a 409 if anyone
    # wrote the object since (another start taking it), never a silent overwrite.
    body = {"metadata": {"resourceVersion": _rv(obj), "annotations": {HELD_BY: value}}}
    return Patch(ref, "merge", body)


def ensure_held(
    ctx: Context,
    model: TrafficBackend,
    holder: ExperimentRef,
    objects: Mapping[ObjectRef, Mapping[str, Any]],
) -> bool:
    """Check that `holder` holds every object of `model`, taking the ones nobody holds
    (a first start, or adoption after an upgrade). NotHolderError if another experiment holds
    one; True when an annotation was written (the objects changed: read them again)."""
    mine = holder_value(holder)
    wrote = False
    for ref in model.refs:
        obj: Mapping[str, Any] = objects[ref]
        for attempt in range(_HOLD_ATTEMPTS):
            current = holder_of(obj)
            if current == mine:
                break
            if current is not None:
                raise NotHolderError(f"{ref} is held by experiment {current}, not {mine}")
            try:
                ctx.objects.patch(_hold_patch(ref, obj, mine))
            except ConflictError:
                # The object changed since it was read: its controller writing status, or
                # another start taking it. Read it again and decide again.
                if attempt == _HOLD_ATTEMPTS - 1:
                    raise
                obj = ctx.objects.get(ref)
                continue
            log.info("%s now held by %s", ref, mine)
            wrote = True
            break
    return wrote


def release(ctx: Context, model: TrafficBackend, holder: ExperimentRef) -> None:
    """Drop `holder`'s annotation from the objects it holds (others' are left alone)."""
    mine = holder_value(holder)
    for ref in model.refs:
        for attempt in range(_HOLD_ATTEMPTS):
            try:
                obj = ctx.objects.get(ref)
            except NotFoundError:
                break
            if holder_of(obj) != mine:
                break
            try:
                ctx.objects.patch(_hold_patch(ref, obj, None))
            except ConflictError:
                if attempt == _HOLD_ATTEMPTS - 1:
                    raise
                continue
            log.info("%s released by %s", ref, mine)
            break


def has_finalizer(obj: Mapping[str, Any]) -> bool:
    return FINALIZER in (get_path(obj, "metadata", "finalizers") or [])


def _finalizers(obj: Mapping[str, Any]) -> list[str]:
    return [str(f) for f in get_path(obj, "metadata", "finalizers") or []]


def add_finalizer(ctx: Context, obj: dict[str, Any]) -> dict[str, Any]:
    """The experiment with the restore finalizer on it (written if missing)."""
    if has_finalizer(obj):
        return obj
    return ctx.store.patch_metadata(obj, {"finalizers": [*_finalizers(obj), FINALIZER]})


def remove_finalizer(ctx: Context, obj: dict[str, Any]) -> dict[str, Any] | None:
    """Remove the restore finalizer; the stored object after (None once the deletion it
    held completed)."""
    if not has_finalizer(obj):
        return obj
    rest = [f for f in _finalizers(obj) if f != FINALIZER]
    try:
        return ctx.store.patch_metadata(obj, {"finalizers": rest or None})
    except NotFoundError:
        return None


def deleting(obj: Mapping[str, Any]) -> bool:
    return bool(get_path(obj, "metadata", "deletionTimestamp"))
