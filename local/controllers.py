"""Stand-ins for the KServe, KFServing, Knative Serving and Gateway API controllers, for the
local run.

On a cluster those controllers turn a traffic spec into routes and report the split in
status; Arbiter reads the split back from there. Locally nothing would, so
`TrafficControllers` polls the API server and writes the status each backend's rule says its
controller reports (functions.core.backends `EXPECTED_STATUS`, the same rule the local router
follows) — no more. What is local is only the timing: a KServe candidate marked
not-yet-ready becomes Ready after `ready_delay_s` (so the run shows start waiting for it).

For KServe it also plays Knative's revisions, as a user's script (kserve.KServeClient:
create, patch, wait_isvc_ready) sees them: a new InferenceService gets revision
`<name>-predictor-00001`, and a change to `spec.predictor` other than canaryTrafficPercent
(which only moves traffic) creates the next one, Ready `ready_delay_s` later. Samples seed
their revisions in status, which the stand-in takes as they are.
"""

from __future__ import annotations

import copy
import json
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


def predictor_template(obj: Mapping[str, Any]) -> str:
    """What makes a new revision: spec.predictor but canaryTrafficPercent, canonically."""
    predictor = get_path(obj, "spec", "predictor") or {}
    return json.dumps(
        {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}, sort_keys=True
    )


def with_new_revision(obj: Mapping[str, Any]) -> Obj:
    """`obj` with the next predictor revision created (not yet ready), as Knative names it."""
    status = copy.deepcopy(dict(obj.get("status") or {}))
    predictor = status.setdefault("components", {}).setdefault("predictor", {})
    latest = str(predictor.get("latestCreatedRevision") or "")
    number = int(latest.rsplit("-", 1)[1]) + 1 if latest[-5:].isdigit() else 1
    predictor["latestCreatedRevision"] = f"{obj['metadata']['name']}-predictor-{number:05d}"
    return {**obj, "status": status}


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
        self._templates: dict[str, str] = {}
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
        stored = obj.get("status") or {}
        template = predictor_template(obj)
        if resource == KSERVE_ISVC:
            known = self._templates.setdefault(key, template)
            created = get_path(obj, "status", "components", "predictor", "latestCreatedRevision")
            if not created or template != known:
                obj = with_new_revision(obj)
                first = now
            status = kserve_status(obj, now, first + self._ready_delay)
        else:
            status = EXPECTED_STATUS[resource](obj)
        if status == stored:
            if resource == KSERVE_ISVC:
                self._templates[key] = template
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
            return
        if resource == KSERVE_ISVC:  # the revision is created once its status is written
            self._templates[key] = template
            self._first_seen[key] = first

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except Exception:  # keep the stand-in alive; the run's output shows the stall
                log.exception("traffic controllers: reconcile failed")
            self._stop.wait(self._period)
