"""Everything the fault suite knows about Arbiter's insides, in one place.

The suite drives the system only through its contracts: CloudEvent types and extension
attributes, the ports a Context is made of, the API server's objects and the Experiment's
status JSON. This module is the one place that imports from `functions/` and `local/`, so
when the core's names move, only this file changes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import yaml
from cloudevents.http import CloudEvent

from functions.adapters.kubernetes import (
    KubeExperimentStore,
    KubeObjects,
    KubePingSources,
    api_error,
    unreachable,
)
from functions.adapters.prometheus import PrometheusSource
from functions.core import events, ownership
from functions.core.context import Context
from functions.core.events import TRIGGERS, ExperimentRef, make_event
from functions.core.settings import Settings
from local.controllers import TrafficControllers
from local.harness import seed_metric_library
from local.kubeapi import KubeApiServer

ROOT: Final = Path(__file__).resolve().parents[2]

# Event types (the Trigger contract).
STARTED: Final = events.STARTED
DUE: Final = events.DUE
MEASURED: Final = events.MEASURED
ASSESSED: Final = events.ASSESSED
CONCLUDED: Final = events.CONCLUDED
FINISHED: Final = events.FINISHED
APISERVER_ADD: Final = events.APISERVER_ADD
APISERVER_UPDATE: Final = events.APISERVER_UPDATE
APISERVER_DELETE: Final = events.APISERVER_DELETE
PING: Final = events.PING

# Extension attributes every Arbiter event carries.
EXT_NAMESPACE: Final = events.EXT_NAMESPACE
EXT_NAME: Final = events.EXT_NAME
EXT_UID: Final = events.EXT_UID
EXT_ITERATION: Final = events.EXT_ITERATION

# The annotation on a target naming the experiment that holds it.
HELD_BY: Final = ownership.HELD_BY

# Status stages.
TERMINAL: Final = frozenset({"Completed", "Failed"})
ACTIVE: Final = frozenset({"Running", "Finishing"})

ISVC: Final = ("serving.kserve.io", "v1beta1", "inferenceservices")
VSVC: Final = ("networking.istio.io", "v1beta1", "virtualservices")
EXPERIMENTS: Final = ("arbiter.dev", "v1alpha1", "experiments")


def broker_retries() -> int:
    """`spec.delivery.retry` of the Broker manifest: how often Knative retries a delivery."""
    for doc in yaml.safe_load_all((ROOT / "eventing" / "broker.yaml").read_text()):
        if doc and doc.get("kind") == "Broker":
            return int(doc["spec"]["delivery"]["retry"])
    raise AssertionError("eventing/broker.yaml has no Broker")


def routes(event_type: str) -> list[str]:
    """The stages a Trigger delivers `event_type` to."""
    return [stage for stage, types in TRIGGERS.items() if event_type in types]


def arbiter_event(
    event_type: str,
    namespace: str,
    name: str,
    uid: str | None,
    iteration: int,
    data: dict[str, Any] | None = None,
) -> Any:
    """An event shaped as Arbiter's own stages shape it (uid left out when None)."""
    return make_event(event_type, ExperimentRef(namespace, name, uid), iteration, data)


def ping_event() -> CloudEvent:
    return CloudEvent({"type": PING, "source": "/apis/v1/pingsources/arbiter"}, {})


def prometheus(url: str) -> PrometheusSource:
    """The real Prometheus adapter, with a timeout short enough for a slow proxy to pass it."""
    return PrometheusSource(url, timeout_s=0.5, retries=1, backoff=0)


def context(
    *, store: Any, objects: Any, metrics: Any, sink: Any, clock: Any, pings: Any
) -> Context:
    """The functions' Context over the given ports."""
    return Context(
        store=store,
        objects=objects,
        metrics=metrics,
        sink=sink,
        pings=pings,
        clock=clock,
        settings=Settings(readback_timeout_seconds=2, ready_timeout_seconds=300),
    )


def api_failure(what: str, kind: str) -> Exception:
    """The error the Kubernetes adapter raises for an API 409, 500 or a read timeout: the
    failure goes through the adapter's own translation, as a real one would."""
    if kind == "409":
        return api_error(what, 409, "", "Conflict")
    if kind == "500":
        return api_error(what, 500, "", "Internal Server Error")
    return unreachable(what, TimeoutError("read timed out"))


__all__ = [
    "Callable",
    "KubeApiServer",
    "KubeExperimentStore",
    "KubeObjects",
    "KubePingSources",
    "TrafficControllers",
    "seed_metric_library",
]
