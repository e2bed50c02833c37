"""Stand-ins for the KServe, KFServing, Knative Serving and Gateway API controllers, for the
local run.

On a cluster those controllers turn a traffic spec into routes and report the split in
status; Arbiter reads the split back from there. Locally nothing would, so
`TrafficControllers` polls the API server and writes the status each backend's rule says its
controller reports (functions.core.backends `EXPECTED_STATUS`, the same rule the local router
follows) — no more. What is local is only the timing: a KServe candidate marked
not-yet-ready becomes Ready after `ready_delay_s` (so the run shows start waiting for it).
New revisions on a predictor spec change are not simulated: samples seed the revisions.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Self

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from functions.core.backends import EXPECTED_STATUS, get_path, kfserving, knative, kserve
from functions.core.resources import KSERVE_ISVC, Resource
from local.lifecycle import Component

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def kserve_status(obj: Mapping[str, Any], now: float, ready_at: float) -> Obj:
    """The status KServe would report for `obj`'s canaryTrafficPercent, the latest created
    revision becoming ready at `ready_at`."""
    latest = get_path(obj, "status", "components", "predictor", "latestCreatedRevision")
    ready = get_path(obj, "status", "components", "predictor", "latestReadyRevision")
    if latest and ready != latest and now >= ready_at:
        status = copy.deepcopy(dict(obj.get("status") or {}))
        status["components"]["predictor"]["latestReadyRevision"] = latest
        obj = {**obj, "status": status}
    return kserve.expected_status(obj)


def kfserving_status(obj: Mapping[str, Any]) -> Obj:
    """The status KFServing v1alpha2 would report for default/canary/canaryTrafficPercent."""
    return kfserving.expected_status(obj)


def knative_status(obj: Mapping[str, Any]) -> Obj:
    """The status Knative Serving would report for spec.traffic."""
    return knative.expected_status(obj)


class TrafficControllers(Component):
    """Polls the API server and keeps the traffic objects' status as their controllers do."""

    def __init__(
        self,
        api: client.ApiClient,
        ready_delay_s: float = 0.0,
        period_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = client.CustomObjectsApi(api)
        self._period = period_s
        self._ready_delay = ready_delay_s
        self._clock = clock
        self._first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="traffic-controllers", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def reconcile_once(self) -> None:
        for resource in EXPECTED_STATUS:
            try:
                listed = self._api.list_cluster_custom_object(
                    resource.group, resource.version, resource.plural
                )
            except ApiException as e:
                if e.status == 404:
                    continue
                raise
            items = listed.get("items") if isinstance(listed, dict) else None
            for obj in items or []:
                self._reconcile(resource, obj)

    def _reconcile(self, resource: Resource, obj: Obj) -> None:
        meta = obj["metadata"]
        key = f"{resource.path}/{meta.get('namespace')}/{meta['name']}"
        now = self._clock()
        first = self._first_seen.setdefault(key, now)
        if resource == KSERVE_ISVC:
            status = kserve_status(obj, now, first + self._ready_delay)
        else:
            status = EXPECTED_STATUS[resource](obj)
        if status == (obj.get("status") or {}):
            return
        body = {**obj, "status": status}
        try:
            self._api.replace_namespaced_custom_object_status(
                resource.group,
                resource.version,
                meta["namespace"],
                resource.plural,
                meta["name"],
                body,
            )
        except ApiException as e:
            if e.status not in (404, 409):  # gone, or changed meanwhile: next round
                raise

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except Exception:  # keep the stand-in alive; the run's output shows the stall
                log.exception("traffic controllers: reconcile failed")
            self._stop.wait(self._period)
