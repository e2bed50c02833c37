"""Kubernetes Events (`events.k8s.io/v1`) on the Experiment: the EventRecorder port.

One POST per Event, through `KubeApi.create_namespaced_event` (the request EventsV1Api
builds). The API server refuses an events.k8s.io/v1 Event without `eventTime`,
`reportingController` (a qualified name), `reportingInstance`, `action` or `reason`, with a
`type` other than Normal or Warning, or a note over 1024 bytes (kubernetes/kubernetes
pkg/apis/core/validation/events.go, `ValidateEventCreate`); every Event built here has them.

The name derives from the experiment's uid, the reason and the occurrence's key, so a
repeated write of one transition is answered 409 AlreadyExists, and that counts as done.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from functions.adapters.kubernetes import HasConfiguration, KubeApi, as_kube_api
from functions.core.errors import ConflictError
from functions.core.ports import Occurrence

API_VERSION: Final = "events.k8s.io/v1"
# The API server's limits (pkg/apis/core/validation/events.go): bytes, as Go counts them.
NOTE_LIMIT: Final = 1024
FIELD_LIMIT: Final = 128
# A DNS subdomain is at most 253 characters; the suffix takes 17.
_NAME_ROOM: Final = 253 - 17


def micro_time(t: datetime) -> str:
    """A MicroTime as the API server reads it: RFC 3339 in UTC with microseconds."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def clip(text: str, limit: int) -> str:
    """`text` in at most `limit` UTF-8 bytes, an ellipsis marking a cut."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode(errors="ignore") + "…"


def event_name(regarding: Mapping[str, Any], occurrence: Occurrence) -> str:
    """`<experiment>.<16 hex>`, the same for the same experiment, reason and key."""
    meta = regarding.get("metadata") or {}
    seed = f"{meta.get('uid') or meta.get('name')}\n{occurrence.reason}\n{occurrence.key}"
    return f"{str(meta.get('name'))[:_NAME_ROOM]}.{hashlib.sha256(seed.encode()).hexdigest()[:16]}"


def event_body(
    regarding: Mapping[str, Any],
    occurrence: Occurrence,
    at: datetime,
    controller: str,
    instance: str,
) -> dict[str, Any]:
    """The events.k8s.io/v1 Event telling `occurrence` about the stored object `regarding`."""
    meta = regarding.get("metadata") or {}
    reference = {
        "apiVersion": regarding.get("apiVersion"),
        "kind": regarding.get("kind"),
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "resourceVersion": meta.get("resourceVersion"),
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "Event",
        "metadata": {"name": event_name(regarding, occurrence), "namespace": meta.get("namespace")},
        "eventTime": micro_time(at),
        "regarding": {k: v for k, v in reference.items() if v},
        "reason": clip(occurrence.reason, FIELD_LIMIT),
        "action": clip(occurrence.action, FIELD_LIMIT),
        "note": clip(occurrence.note, NOTE_LIMIT),
        "type": "Warning" if occurrence.warning else "Normal",
        "reportingController": controller,
        "reportingInstance": clip(instance, FIELD_LIMIT),
    }


class KubeEventRecorder:
    """Records Events as `controller` (`arbiter.dev/<stage>`) from `instance` (the pod)."""

    def __init__(self, api: KubeApi | HasConfiguration, controller: str, instance: str) -> None:
        self._api = as_kube_api(api)
        self._controller = controller
        self._instance = instance or "unknown"

    def record(self, regarding: Mapping[str, Any], occurrence: Occurrence, at: datetime) -> None:
        body = event_body(regarding, occurrence, at, self._controller, self._instance)
        namespace = str(body["metadata"]["namespace"])
        # AlreadyExists: this very occurrence was recorded before.
        with contextlib.suppress(ConflictError):
            self._api.create_namespaced_event(
                namespace, body, what=f"Event {occurrence.reason} in {namespace}"
            )
