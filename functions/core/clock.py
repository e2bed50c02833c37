"""The clock's PingSource: it exists only while some experiment is live.

A PingSource that fires every minute for ever keeps `start` and `iterate` warm for ever
(Knative's 60 s stable window and 30 s scale-to-zero grace never pass between two pings), so
the PingSource `arbiter-tick` is not installed: `start` makes it exist for every experiment
it starts or re-drives (`ensure`), and the sweep deletes it on a ping that finds no
experiment live (`end_if_idle`). Live means not Completed or Failed (Pending, Waiting,
Initializing, Running and Finishing are all re-driven by a ping), or being deleted with the
restore finalizer still on (the sweep re-drives the restore).

The race between the two is settled by the API server, not by timing. `ensure` changes the
object whenever it runs after the experiment exists (an annotation's merge patch moves the
resourceVersion; a create makes a new object); the sweep reads the PingSource (resourceVersion
R) before it lists the experiments, and deletes with the precondition resourceVersion R. A
start that ran before that read made its experiment visible to the listing that follows, so
the sweep keeps the clock; one that ran after it moved the resourceVersion (the delete is
refused, 409) or, once the delete went through, found it gone and created it anew.

What it costs: the first tick comes up to a minute after the PingSource is created, as it
did with an installed one (a `* * * * *` schedule fires on the minute); after the last
experiment ends, one more ping removes it, and then nothing wakes any function. Knative's
ping adapter re-adds a source's cron entry on every change, which keeps the same
minute-boundary firings.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final

from functions.core import ownership
from functions.core.context import Context
from functions.core.errors import ConflictError, NotFoundError, TransientError
from functions.core.resources import PINGSOURCE
from functions.core.settings import Settings
from functions.core.status import TERMINAL, Status
from functions.core.timestamps import iso

log = logging.getLogger(__name__)

NAME: Final = "arbiter-tick"
# Installed for good (eventing/heartbeat.yaml), hourly: recovers what a lost add event left
# without a clock; never created or deleted here.
HEARTBEAT: Final = "arbiter-heartbeat"
# The Broker of eventing/broker.yaml, in the system namespace.
BROKER: Final = "arbiter"
# Stamped by every `ensure`, so the object changes even when nothing else does: the time,
# and a token of its own, since a patch that leaves the object as it was (two starts within
# one second of timestamp) moves no resourceVersion, on the API server as in the emulator.
WANTED_AT: Final = "arbiter.dev/wanted-at"
SCHEDULE: Final = "* * * * *"


def pingsource(settings: Settings) -> dict[str, Any]:
    """The PingSource `start` creates (eventing/pingsource.yaml shows it, a test compares)."""
    namespace = settings.system_namespace
    return {
        "apiVersion": PINGSOURCE.api_version,
        "kind": PINGSOURCE.kind,
        "metadata": {
            "name": NAME,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "arbiter",
                "app.kubernetes.io/component": "eventing",
            },
        },
        "spec": {
            "schedule": SCHEDULE,
            "contentType": "application/json",
            "data": '{"source": "arbiter-tick"}',
            "sink": {
                "ref": {
                    "apiVersion": "eventing.knative.dev/v1",
                    "kind": "Broker",
                    "name": BROKER,
                    "namespace": namespace,
                }
            },
        },
    }


def live(obj: Mapping[str, Any]) -> bool:
    """Whether a ping still has something to do for this experiment."""
    return ownership.deleting(obj) or Status.read(obj).stage not in TERMINAL


def from_heartbeat(event_source: str) -> bool:
    """Whether a ping came from the heartbeat (its CloudEvent source names the PingSource:
    /apis/v1/namespaces/<namespace>/pingsources/<name>)."""
    return event_source.rstrip("/").endswith(f"/pingsources/{HEARTBEAT}")


def ensure_present(ctx: Context) -> None:
    """On a heartbeat with an experiment live: bring the clock back only if it is missing
    (someone deleted it by hand; or it was never created). A read, not a stamp, so the
    heartbeat changes nothing when all is well."""
    try:
        ctx.pings.get(ctx.settings.system_namespace, NAME)
    except NotFoundError:
        log.warning("clock: PingSource missing while an experiment is live: created again")
        ensure(ctx)


def ensure(ctx: Context) -> None:
    """Make the PingSource exist, and change it if it does (see the module docstring).

    A merge patch first, as the PingSource usually exists; TransientError if the API server
    cannot be reached (the caller's event is then retried)."""
    namespace = ctx.settings.system_namespace
    stamp = {WANTED_AT: f"{iso(ctx.clock.now())} {uuid.uuid4().hex[:12]}"}
    try:
        ctx.pings.annotate(namespace, NAME, stamp)
        return
    except NotFoundError:
        pass
    body = pingsource(ctx.settings)
    body["metadata"]["annotations"] = stamp
    try:
        ctx.pings.create(body)
        log.info("clock: created PingSource %s/%s", namespace, NAME)
    except ConflictError:
        # Created in between by another start: change it, so a sweep that read it before
        # this experiment was listed cannot delete it.
        ctx.pings.annotate(namespace, NAME, stamp)


def read(ctx: Context) -> dict[str, Any] | None:
    """The PingSource as the sweep reads it before listing; None when there is none, or it
    cannot be read now (the sweep then leaves it alone this ping)."""
    try:
        return ctx.pings.get(ctx.settings.system_namespace, NAME)
    except NotFoundError:
        return None
    except TransientError as e:
        log.warning("clock: could not read the PingSource, kept this ping: %s", e)
        return None


def end_if_idle(ctx: Context, held: Mapping[str, Any] | None, listed: Iterable[Any]) -> bool:
    """Delete the PingSource read as `held` if no experiment of `listed` (listed after that
    read) is live, and only if it has not changed since; True if it was deleted."""
    if held is None or any(live(obj) for obj in listed):
        return False
    version = str((held.get("metadata") or {}).get("resourceVersion") or "")
    if not version:
        return False  # nothing to condition the delete on: never delete blind
    namespace = ctx.settings.system_namespace
    try:
        ctx.pings.delete(namespace, NAME, version)
    except ConflictError:
        log.info("clock: PingSource changed since read (an experiment started): kept")
        return False
    except NotFoundError:
        return False
    except TransientError as e:
        log.warning("clock: could not delete the idle PingSource, next ping retries: %s", e)
        return False
    log.info("clock: no experiment live: PingSource %s/%s deleted", namespace, NAME)
    return True
