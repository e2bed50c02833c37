"""Moving traffic and making sure it moved: patch, then read the split back until it shows.

A split counts as applied only when the objects report it (their status, where the backend
has one); until then the stage has not finished its step. Running out of patience is a
TransientError, so the broker redelivers the event and the idempotent step runs again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from functions.core.context import Context
from functions.core.errors import TransientError
from functions.core.traffic import ObjectRef, Patch, TrafficModel

_POLL_SECONDS = 0.2


def fetch(ctx: Context, model: TrafficModel) -> dict[ObjectRef, dict[str, Any]]:
    return {ref: ctx.objects.get(ref) for ref in model.refs}


def _apply(ctx: Context, patches: list[Patch]) -> None:
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


def set_split(ctx: Context, model: TrafficModel, weights: Mapping[str, int]) -> dict[str, int]:
    """Apply `weights` and return the split read back (equal to `weights`)."""
    target = dict(weights)
    objects = fetch(ctx, model)
    if model.split(objects) == target:
        return target  # already in effect: nothing to patch or wait for
    _apply(ctx, model.apply(weights, objects))
    objects = _wait(ctx, model, lambda o: model.split(o) == target, f"split {target}")
    return model.split(objects) or target


def promote(ctx: Context, model: TrafficModel, version: str) -> dict[str, int] | None:
    objects = fetch(ctx, model)
    if model.settled("promote", version, objects):
        return model.split(objects)
    _apply(ctx, model.promote(version, objects))
    objects = _wait(
        ctx, model, lambda o: model.settled("promote", version, o), f"promotion of {version}"
    )
    return model.split(objects)


def rollback(ctx: Context, model: TrafficModel) -> dict[str, int] | None:
    objects = fetch(ctx, model)
    if model.settled("rollback", None, objects):
        return model.split(objects)
    _apply(ctx, model.rollback(objects))
    objects = _wait(ctx, model, lambda o: model.settled("rollback", None, o), "rollback")
    return model.split(objects)
