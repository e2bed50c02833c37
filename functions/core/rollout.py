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
from functions.core.context import Context
from functions.core.errors import TransientError
from functions.core.events import ExperimentRef
from functions.core.traffic import ObjectRef, Patch, TrafficModel

_POLL_SECONDS = 0.2


def fetch(ctx: Context, model: TrafficModel) -> dict[ObjectRef, dict[str, Any]]:
    return {ref: ctx.objects.get(ref) for ref in model.refs}


def _held(
    ctx: Context, model: TrafficModel, holder: ExperimentRef
) -> dict[ObjectRef, dict[str, Any]]:
    """The objects, once `holder` is known to hold them (NotHolderError otherwise)."""
    objects = fetch(ctx, model)
    if ownership.ensure_held(ctx, model, holder, objects):
        objects = fetch(ctx, model)
    return objects


def _apply(
    ctx: Context, patches: list[Patch], objects: Mapping[ObjectRef, Mapping[str, Any]]
) -> None:
    # A JSON patch is the field-path backend's: check every field against what the
    # object's owner allows before writing any (the spec may have changed since start).
    for patch in patches:
        if patch.kind != "json":
            continue
        for op in patch.body:
            pointer = str(op.get("path"))
            obj = objects.get(patch.ref) or {}
            if not tenancy.path_allowed(obj, patch.ref.kind, pointer, ctx.settings):
                raise tenancy.RefusedError(tenancy.refused_path(patch.ref, pointer))
    for patch in patches:
        ctx.objects.patch(patch)


def _wait(
    ctx: Context, model: TrafficModel, done: Any, what: str
) -> dict[ObjectRef, dict[str, Any]]:
    deadline = ctx.settings.readback_timeout_seconds
    waited = 0.0
    while True:
        objects = fetch(ctx, model)
        if done(objects):
            return objects
        if waited >= deadline:
            raise TransientError(
                f"{what} did not show in {', '.join(map(str, model.refs))} within "
                f"{deadline:g} s (reported: {model.split(objects)})"
            )
        ctx.clock.sleep(_POLL_SECONDS)
        waited += _POLL_SECONDS


def set_split(
    ctx: Context, model: TrafficModel, weights: Mapping[str, int], *, holder: ExperimentRef
) -> dict[str, int]:
    """Apply `weights` and return the split read back (equal to `weights`)."""
    target = dict(weights)
    objects = _held(ctx, model, holder)
    if model.split(objects) == target:
        return target  # already in effect: nothing to patch or wait for
    _apply(ctx, model.apply(weights, objects), objects)
    objects = _wait(ctx, model, lambda o: model.split(o) == target, f"split {target}")
    return model.split(objects) or target


def promote(
    ctx: Context, model: TrafficModel, version: str, *, holder: ExperimentRef
) -> dict[str, int] | None:
    objects = _held(ctx, model, holder)
    if model.settled("promote", version, objects):
        return model.split(objects)
    _apply(ctx, model.promote(version, objects), objects)
    objects = _wait(
        ctx, model, lambda o: model.settled("promote", version, o), f"promotion of {version}"
    )
    return model.split(objects)


def rollback(ctx: Context, model: TrafficModel, *, holder: ExperimentRef) -> dict[str, int] | None:
    objects = _held(ctx, model, holder)
    if model.settled("rollback", None, objects):
        return model.split(objects)
    _apply(ctx, model.rollback(objects), objects)
    objects = _wait(ctx, model, lambda o: model.settled("rollback", None, o), "rollback")
    return model.split(objects)
