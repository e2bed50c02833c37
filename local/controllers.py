"""Stand-ins for the KServe, KFServing and Knative Serving controllers, for the local run.

On a cluster those controllers turn a traffic spec into routes and report the split in
status; Arbiter reads the split back from there. Locally nothing would, so
`TrafficControllers` polls the API server and writes the status those controllers would
write for the fields Arbiter drives — no more:
- KServe v1beta1: `status.components.predictor.traffic` from `canaryTrafficPercent`
  between latestRolledoutRevision and latestCreatedRevision; at 100% (or no canary
  percent) the latest revision becomes rolled out; a candidate marked not-yet-ready
  becomes Ready after `ready_delay_s` (so the run shows start waiting for it).
- KFServing v1alpha2: `status.traffic` / `status.canaryTraffic`; a promoted default gets
  the canary's revision name.
- Knative Service: `status.traffic` mirrors `spec.traffic`, tags resolved to revisions.
New revisions on a predictor spec change are not simulated: samples seed the revisions.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Obj = dict[str, Any]

_KINDS = (
    ("serving.kserve.io", "v1beta1", "inferenceservices"),
    ("serving.kubeflow.org", "v1alpha2", "inferenceservices"),
    ("serving.knative.dev", "v1", "services"),
)


def _ready(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    others = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
    return [*others, {"type": "Ready", "status": "True"}]


def kserve_status(obj: Mapping[str, Any], now: float, ready_at: float) -> Obj:
    """The status KServe would report for `obj`'s canaryTrafficPercent."""
    status = copy.deepcopy(dict(obj.get("status") or {}))
    predictor = status.setdefault("components", {}).setdefault("predictor", {})
    latest = predictor.get("latestCreatedRevision")
    if latest and predictor.get("latestReadyRevision") != latest and now >= ready_at:
        predictor["latestReadyRevision"] = latest
    rolled = predictor.get("latestRolledoutRevision") or latest
    ready = predictor.get("latestReadyRevision")
    percent = (obj.get("spec") or {}).get("predictor", {}).get("canaryTrafficPercent")
    if latest and ready == latest and latest != rolled and (percent is None or percent >= 100):
        predictor["previousRolledoutRevision"] = rolled
        predictor["latestRolledoutRevision"] = rolled = latest
    if not latest:
        return status
    if latest == rolled or ready != latest:
        traffic = [{"revisionName": rolled, "percent": 100, "latestRevision": latest == rolled}]
    else:
        p = int(percent or 0)
        traffic = [
            {"revisionName": rolled, "percent": 100 - p, "latestRevision": False},
            {"revisionName": latest, "percent": p, "latestRevision": True},
        ]
    predictor["traffic"] = traffic
    status["conditions"] = _ready(status)
    return status


def kfserving_status(obj: Mapping[str, Any]) -> Obj:
    """The status KFServing v1alpha2 would report for default/canary/canaryTrafficPercent."""
    spec = obj.get("spec") or {}
    status = copy.deepcopy(dict(obj.get("status") or {}))
    name = (obj.get("metadata") or {}).get("name", "isvc")
    default = status.setdefault("default", {}).setdefault("predictor", {})
    canary_status = (status.get("canary") or {}).get("predictor") or {}
    if spec.get("canary") is None:
        if canary_status.get("name") and spec.get("default") == status.get("_canarySpec"):
            default["name"] = canary_status["name"]  # promoted: the canary is the default now
        status.pop("canary", None)
        status.pop("_canarySpec", None)
        status["traffic"], status["canaryTraffic"] = 100, 0
    else:
        default.setdefault("name", f"{name}-predictor-default-00001")
        canary = status.setdefault("canary", {}).setdefault("predictor", {})
        canary.setdefault("name", f"{name}-predictor-canary-00001")
        status["_canarySpec"] = spec["canary"]
        percent = int(spec.get("canaryTrafficPercent") or 0)
        status["traffic"], status["canaryTraffic"] = 100 - percent, percent
    status["conditions"] = _ready(status)
    return status


def knative_status(obj: Mapping[str, Any]) -> Obj:
    """The status Knative Serving would report for spec.traffic (tags kept as given)."""
    status = copy.deepcopy(dict(obj.get("status") or {}))
    tags = {t.get("tag"): t.get("revisionName") for t in status.get("traffic") or []}
    traffic = []
    for entry in (obj.get("spec") or {}).get("traffic") or []:
        item = {k: v for k, v in entry.items() if k != "latestRevision"}
        if "revisionName" not in item and item.get("tag") in tags:
            item["revisionName"] = tags[item["tag"]]
        traffic.append(item)
    if traffic:
        status["traffic"] = traffic
    status["conditions"] = _ready(status)
    return status


class TrafficControllers:
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

    def start(self) -> TrafficControllers:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> TrafficControllers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reconcile_once(self) -> None:
        for group, version, plural in _KINDS:
            try:
                listed = self._api.list_cluster_custom_object(group, version, plural)
            except ApiException as e:
                if e.status == 404:
                    continue
                raise
            items = listed.get("items") if isinstance(listed, dict) else None
            for obj in items or []:
                self._reconcile(group, version, plural, obj)

    def _reconcile(self, group: str, version: str, plural: str, obj: Obj) -> None:
        meta = obj["metadata"]
        key = f"{group}/{plural}/{meta.get('namespace')}/{meta['name']}"
        now = self._clock()
        first = self._first_seen.setdefault(key, now)
        if group == "serving.kserve.io":
            status = kserve_status(obj, now, first + self._ready_delay)
        elif group == "serving.kubeflow.org":
            status = kfserving_status(obj)
        else:
            status = knative_status(obj)
        if status == (obj.get("status") or {}):
            return
        body = {**obj, "status": status}
        try:
            self._api.replace_namespaced_custom_object_status(
                group, version, meta["namespace"], plural, meta["name"], body
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
