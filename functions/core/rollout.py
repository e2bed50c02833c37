"""Moving traffic and making sure it moved: patch, then read the split back until it shows.

A split counts as applied only when the objects report it (their status, where the backend
has one); until then the stage has not finished its step. Running out of patience is a
TransientError, so the broker redelivers the event and the idempotent step runs again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from functions.core.backends import Patch, TrafficBackend
from functions.core.context import Context
from functions.core.errors import TransientError
from functions.core.resources import ObjectRef

_POLL_SECONDS = 0.2


def fetch(ctx: Context, backend: TrafficBackend) -> dict[ObjectRef, dict[str, Any]]:
    return {ref: ctx.objects.get(ref) for ref in backend.refs}


def _apply(ctx: Context, patches: list[Patch]) -> None:
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


def set_split(ctx: Context, backend: TrafficBackend, weights: Mapping[str, int]) -> dict[str, int]:
    """Apply `weights` and return the split read back (equal to `weights`)."""
    target = dict(weights)
    objects = fetch(ctx, backend)
    if backend.split(objects) == target:
        return target  # already in effect: nothing to patch or wait for
    _apply(ctx, backend.apply(weights, objects))
    objects = _wait(ctx, backend, lambda o: backend.split(o) == target, f"split {target}")
    return backend.split(objects) or target


def promote(ctx: Context, backend: TrafficBackend, version: str) -> dict[str, int] | None:
    objects = fetch(ctx, backend)
    if backend.settled("promote", version, objects):
        return backend.split(objects)
    _apply(ctx, backend.promote(version, objects))
    objects = _wait(
        ctx, backend, lambda o: backend.settled("promote", version, o), f"promotion of {version}"
    )
    return backend.split(objects)


def rollback(ctx: Context, backend: TrafficBackend) -> dict[str, int] | None:
    objects = fetch(ctx, backend)
    if backend.settled("rollback", None, objects):
        return backend.split(objects)
    _apply(ctx, backend.rollback(objects))
    objects = _wait(ctx, backend, lambda o: backend.settled("rollback", None, o), "rollback")
    return backend.split(objects)
