"""Moving traffic and making sure it moved: patch, then read the split back until it shows.

A split counts as applied only when the objects report it (their status, where the backend
has one); until then the stage has not finished its step. Running out of patience is a
TransientError, so the broker redelivers the event and the idempotent step runs again.

Only the experiment holding the target moves it (functions.core.ownership): each write
first checks the objects' holder annotation names `holder`, and a field-path write only
touches fields the object's owner allows (functions.core.tenancy). A refusal is
`tenancy.RefusedError` (NotHolderError for another holder), raised before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from functions.core import ownership, tenancy
from functions.core.backends import FieldPathBackend, Patch, TrafficBackend
from functions.core.context import Context
from functions.core.errors import TransientError
from functions.core.events import ExperimentRef
from functions.core.resources import ObjectRef

_POLL_SECONDS = 0.2


def fetch(ctx: Context, backend: TrafficBackend) -> dict[ObjectRef, dict[str, Any]]:
    return {ref: ctx.objects.get(ref) for ref in backend.refs}


def _held(
    ctx: Context, backend: TrafficBackend, holder: ExperimentRef
) -> dict[ObjectRef, dict[str, Any]]:
    """The objects, once `holder` is known to hold them (NotHolderError otherwise)."""
    objects = fetch(ctx, backend)
    if ownership.ensure_held(ctx, backend, holder, objects):
        objects = fetch(ctx, backend)
    return objects


def _apply(
    ctx: Context,
    backend: TrafficBackend,
    patches: list[Patch],
    objects: Mapping[ObjectRef, Mapping[str, Any]],
) -> None:
    # The field-path backend writes whatever field a spec names: check every field against
    # what the object's owner allows before writing any (the spec may have changed since
    # start). The other backends write only their own kind's traffic fields.
    checked = patches if isinstance(backend, FieldPathBackend) else []
    for patch in checked:
        for op in patch.body:
            pointer = str(op.get("path"))
            obj = objects.get(patch.ref) or {}
            if not tenancy.path_allowed(obj, patch.ref.kind, pointer, ctx.settings):
                raise tenancy.RefusedError(tenancy.refused_path(patch.ref, pointer))
    for patch in patches:
        ctx.objects.patch(patch)


def _wait(
    ctx: Context, backend: TrafficBackend, done: Any, what: str
) -> dict[ObjectRef, dict[str, Any]]:
    deadline = ctx.settings.readback_timeout_seconds
    waited = 0.0
    while True:
        objects = fetch(ctx, backend)
        if done(objects):
            return objects
        if waited >= deadline:
            raise TransientError(
                f"{what} did not show in {', '.join(map(str, backend.refs))} within "
                f"{deadline:g} s (reported: {backend.split(objects)})"
            )
        ctx.clock.sleep(_POLL_SECONDS)
        waited += _POLL_SECONDS


def set_split(
    ctx: Context, backend: TrafficBackend, weights: Mapping[str, int], *, holder: ExperimentRef
) -> dict[str, int]:
    """Apply `weights` and return the split read back (equal to `weights`)."""
    target = dict(weights)
    objects = _held(ctx, backend, holder)
    if backend.split(objects) == target:
        return target  # already in effect: nothing to patch or wait for
    _apply(ctx, backend, backend.apply(weights, objects), objects)
    objects = _wait(ctx, backend, lambda o: backend.split(o) == target, f"split {target}")
    return backend.split(objects) or target


def promote(
    ctx: Context, backend: TrafficBackend, version: str, *, holder: ExperimentRef
) -> dict[str, int] | None:
    objects = _held(ctx, backend, holder)
    if backend.settled("promote", version, objects):
        return backend.split(objects)
    _apply(ctx, backend, backend.promote(version, objects), objects)
    objects = _wait(
        ctx, backend, lambda o: backend.settled("promote", version, o), f"promotion of {version}"
    )
    return backend.split(objects)


def rollback(
    ctx: Context, backend: TrafficBackend, *, holder: ExperimentRef
) -> dict[str, int] | None:
    objects = _held(ctx, backend, holder)
    if backend.settled("rollback", None, objects):
        return backend.split(objects)
    _apply(ctx, backend, backend.rollback(objects), objects)
    objects = _wait(ctx, backend, lambda o: backend.settled("rollback", None, o), "rollback")
    return backend.split(objects)
