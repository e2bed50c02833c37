"""The PingSource and ApiServerSource, played locally from their manifests in `eventing/`.

`LivePingSources` plays the PingSources that exist in an API server, each from when it is
created until it is deleted (start creates the clock's, the sweep deletes it).

`PingSourcePlayer` sends `dev.knative.sources.ping` to a sink every period of its cron
schedule, divided by the run's time scale. `ApiServerSourcePlayer` lists and watches the
resources of an ApiServerSource in Resource mode through the official `kubernetes` client and
sends `dev.knative.apiserver.resource.add|update|delete` events shaped as Knative's adapter
shapes them: the whole object as JSON data, the API server URL as source, the object's path as
subject, and `kind`, `name`, `namespace` extension attributes. Both post in binary mode to a
sink URL (the local broker), so neither knows which broker or API server sits behind it.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Self

import requests
from cloudevents.http import CloudEvent
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from functions.adapters.sink import binary_http
from functions.core import events, resources
from local.broker import ManifestError
from local.lifecycle import Component

log = logging.getLogger(__name__)

# Watch event type -> CloudEvent type, in Resource mode.
APISERVER_TYPES: Final = {
    "ADDED": events.APISERVER_ADD,
    "MODIFIED": events.APISERVER_UPDATE,
    "DELETED": events.APISERVER_DELETE,
}
_EVERY_N_MINUTES = re.compile(r"(\*|\*/(\d+))\s+\*\s+\*\s+\*\s+\*")
_POST_TIMEOUT: Final = 10.0
_GONE: Final = 410


def post_event(sink: str, event: CloudEvent, timeout: float = _POST_TIMEOUT) -> bool:
    """POST `event` to `sink` in binary mode; False (logged) if it was not accepted."""
    headers, body = binary_http(event)
    try:
        response = requests.post(sink, headers=headers, data=body, timeout=timeout)
    except requests.RequestException as e:
        log.warning("could not send %s to %s: %s", event["type"], sink, e)
        return False
    if not 200 <= response.status_code < 300:
        log.warning("%s refused %s: %d", sink, event["type"], response.status_code)
        return False
    return True


def schedule_minutes(schedule: str) -> int:
    """Minutes between firings of a cron schedule `* * * * *` or `*/N * * * *`."""
    match = _EVERY_N_MINUTES.fullmatch(schedule.strip()) if isinstance(schedule, str) else None
    if match is None:
        raise ManifestError(
            f"schedule {schedule!r}: the local PingSource plays `* * * * *` and "
            "`*/N * * * *` (every N minutes) only"
        )
    minutes = int(match[2] or 1)
    if not 1 <= minutes <= 59:
        raise ManifestError(f"schedule {schedule!r}: N in */N must be between 1 and 59")
    return minutes


def _overrides(spec: Mapping[str, Any], where: str) -> dict[str, str]:
    extensions = (spec.get("ceOverrides") or {}).get("extensions") or {}
    if not isinstance(extensions, Mapping):
        raise ManifestError(f"{where}: spec.ceOverrides.extensions must be a mapping")
    return {str(k): str(v) for k, v in extensions.items()}


def _metadata(manifest: Mapping[str, Any], kind: str) -> tuple[str, str, Mapping[str, Any]]:
    if manifest.get("kind") != kind:
        raise ManifestError(f"expected a {kind} manifest, got kind {manifest.get('kind')!r}")
    meta = manifest.get("metadata") or {}
    if not meta.get("name"):
        raise ManifestError(f"{kind}: metadata.name is required")
    return str(meta["name"]), str(meta.get("namespace") or "default"), manifest.get("spec") or {}


class _Player(Component):
    """Daemon threads that run until `stop()`, and the events the sink accepted, in send order."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._count_lock = threading.Lock()
        self.sent = 0
        self.sent_types: list[str] = []

    def _send(self, sink: str, event: CloudEvent) -> bool:
        accepted = post_event(sink, event)
        with self._count_lock:
            self.sent += accepted
            if accepted:
                self.sent_types.append(str(event["type"]))
        return accepted

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=self._name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []


class PingSourcePlayer(_Player):
    """A PingSource: one ping to `sink` every `period` seconds (the schedule over `time_scale`).

    The first ping comes one period after `start()`, as a cron schedule's next firing does.
    """

    def __init__(self, manifest: Mapping[str, Any], sink: str, *, time_scale: float = 1.0) -> None:
        name, namespace, spec = _metadata(manifest, "PingSource")
        super().__init__(f"pingsource-{name}")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        where = f"PingSource {namespace}/{name}"
        try:
            self.period = schedule_minutes(spec.get("schedule", "")) * 60.0 / time_scale
        except ManifestError as e:
            raise ManifestError(f"{where}: {e}") from None
        self.source = f"/apis/v1/namespaces/{namespace}/pingsources/{name}"
        self.sink = sink
        self._extensions = _overrides(spec, where)
        self._content_type = str(spec.get("contentType") or "application/json")
        self._data: Any = {}
        if spec.get("dataBase64"):
            self._data = base64.b64decode(spec["dataBase64"])
        elif spec.get("data") is not None:
            self._data = spec["data"]
            if "json" in self._content_type.lower():
                try:
                    self._data = json.loads(spec["data"])
                except (TypeError, json.JSONDecodeError) as e:
                    raise ManifestError(f"{where}: spec.data is not JSON: {e}") from None

    def make_event(self) -> CloudEvent:
        attributes = {
            "type": events.PING,
            "source": self.source,
            "id": str(uuid.uuid4()),
            "datacontenttype": self._content_type,
            **self._extensions,
        }
        return CloudEvent(attributes, self._data)

    def emit(self) -> bool:
        """Send one ping now; True if the sink accepted it."""
        return self._send(self.sink, self.make_event())

    def start(self) -> Self:
        self._stopping.clear()
        self._spawn(self._run)
        return self

    def _run(self) -> None:
        next_at = time.monotonic() + self.period
        while not self._stopping.wait(max(0.0, next_at - time.monotonic())):
            self.emit()
            next_at += self.period
            behind = time.monotonic() - next_at
            if behind > 0:  # a cron daemon skips the firings it missed rather than bursting
                next_at += math.ceil(behind / self.period) * self.period


@dataclass(frozen=True)
class WatchedResource:
    """One entry of an ApiServerSource's `spec.resources`, resolved to its REST path."""

    group: str
    version: str
    kind: str
    plural: str
    label_selector: str | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def _selector(entry: Mapping[str, Any], where: str) -> str | None:
    selector = entry.get("selector") or {}
    if selector.get("matchExpressions"):
        raise ManifestError(f"{where}: selector.matchExpressions is not played locally")
    labels = selector.get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in labels.items()) or None


class ApiServerSourcePlayer(_Player):
    """An ApiServerSource in Resource mode: list, then watch each resource, and post events.

    Like Knative's adapter, objects that exist when the watch starts produce no event (its
    reflector's initial sync is not forwarded) unless `replay_existing` is set. The watch is
    re-opened from the last resourceVersion every `watch_timeout` seconds, and from a fresh list
    after a 410 Gone or a lost connection. `stop()` returns within about `watch_timeout`.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        manifest: Mapping[str, Any],
        sink: str,
        *,
        watch_timeout: int = 5,
        replay_existing: bool = False,
        retry_delay: float = 0.5,
    ) -> None:
        name, namespace, spec = _metadata(manifest, "ApiServerSource")
        super().__init__(f"apiserversource-{name}")
        self._where = where = f"ApiServerSource {namespace}/{name}"
        if spec.get("mode", "Reference") != "Resource":
            raise ManifestError(f"{where}: only mode Resource is played locally")
        if spec.get("owner"):
            raise ManifestError(f"{where}: spec.owner is not played locally")
        selector = spec.get("namespaceSelector")
        if selector is not None and (
            selector.get("matchLabels") or selector.get("matchExpressions")
        ):
            raise ManifestError(f"{where}: only an empty namespaceSelector (all) is played locally")
        # No namespaceSelector: the source's own namespace, as in Knative.
        self._namespace = None if selector is not None else namespace
        self._api = client.CustomObjectsApi(api_client)
        self._entries = list(spec.get("resources") or [])
        if not self._entries:
            raise ManifestError(f"{where}: spec.resources is empty")
        self.source = str(api_client.configuration.host).rstrip("/")
        self.sink = sink
        self.resources: list[WatchedResource] = []
        self._extensions = _overrides(spec, where)
        self._watch_timeout = max(1, int(watch_timeout))
        self._replay = replay_existing
        self._retry_delay = retry_delay

    def start(self, timeout: float = 10.0) -> Self:
        """Resolve every resource (discovery, else the kind's guessed plural), list and watch it.

        Returns once every initial list is done: any change made after `start()` is sent.
        """
        self._stopping.clear()
        self.resources = [self._resolve(entry) for entry in self._entries]
        listed = [threading.Event() for _ in self.resources]
        for resource, ready in zip(self.resources, listed, strict=True):
            self._spawn(self._run, resource, ready)
        deadline = time.monotonic() + timeout
        if not all(ready.wait(max(0.0, deadline - time.monotonic())) for ready in listed):
            self.stop()
            raise TimeoutError(f"{self._where}: could not list its resources in {timeout} s")
        return self

    def _resolve(self, entry: Mapping[str, Any]) -> WatchedResource:
        api_version, kind = str(entry.get("apiVersion", "")), str(entry.get("kind", ""))
        where = f"{self._where}: resource {api_version} {kind}"
        if "/" not in api_version or not kind:
            raise ManifestError(f"{where}: needs apiVersion group/version and kind (no core kinds)")
        group, version = api_version.split("/", 1)
        plural = resources.plural(kind)
        try:
            listing = self._api.get_api_resources(group, version)
        except ApiException as e:
            log.info("%s: no discovery (%s); watching %s", where, e.status, plural)
        else:
            found = [r.name for r in listing.resources if r.kind == kind and "/" not in r.name]
            plural = found[0] if found else plural
        return WatchedResource(group, version, kind, plural, _selector(entry, where))

    def _list_call(self, resource: WatchedResource) -> tuple[Callable[..., Any], tuple[str, ...]]:
        if self._namespace is None:
            call = self._api.list_cluster_custom_object
            return call, (resource.group, resource.version, resource.plural)
        namespaced = self._api.list_namespaced_custom_object
        return namespaced, (resource.group, resource.version, self._namespace, resource.plural)

    def _run(self, resource: WatchedResource, listed: threading.Event) -> None:
        call, args = self._list_call(resource)
        options = {"label_selector": resource.label_selector} if resource.label_selector else {}
        replay = self._replay
        while not self._stopping.is_set():
            try:
                listing = call(*args, **options)
                version = str(listing["metadata"].get("resourceVersion") or "")
                listed.set()
                if replay:  # once: a relist after 410 Gone must not re-announce every object
                    replay = False
                    for item in listing.get("items") or []:
                        self._emit(resource, "ADDED", item)
                while not self._stopping.is_set():
                    version = self._watch(resource, call, args, options, version)
            except ApiException as e:
                if e.status != _GONE:
                    log.warning("%s: watching %s failed: %s", self._where, resource.plural, e)
                    self._stopping.wait(self._retry_delay)
            except Exception as e:  # a dropped connection: list again, as a reflector does
                log.warning("%s: watching %s failed: %s", self._where, resource.plural, e)
                self._stopping.wait(self._retry_delay)

    def _watch(
        self,
        resource: WatchedResource,
        call: Callable[..., Any],
        args: tuple[str, ...],
        options: Mapping[str, Any],
        version: str,
    ) -> str:
        """Follow one watch request to its server-side timeout; the last resourceVersion seen."""
        w = watch.Watch()  # type: ignore[no-untyped-call]
        stream = w.stream(  # type: ignore[no-untyped-call]
            call,
            *args,
            resource_version=version,
            timeout_seconds=self._watch_timeout,
            _request_timeout=self._watch_timeout + 5,
            **options,
        )
        for event in stream:
            if self._stopping.is_set():
                break
            obj = event.get("object")
            if event.get("type") in APISERVER_TYPES and isinstance(obj, dict):
                self._emit(resource, event["type"], obj)
        return str(w.resource_version or version)

    def make_event(
        self, resource: WatchedResource, change: str, obj: Mapping[str, Any]
    ) -> CloudEvent:
        """The event Knative's adapter sends for `change` (ADDED, MODIFIED, DELETED) of `obj`."""
        data = {"apiVersion": resource.api_version, "kind": resource.kind, **obj}
        meta = data.get("metadata") or {}
        name, namespace = str(meta.get("name", "")), str(meta.get("namespace", ""))
        attributes = {
            "type": APISERVER_TYPES[change],
            "source": self.source,
            "subject": f"/apis/{data['apiVersion']}/namespaces/{namespace}/"
            f"{resource.plural}/{name}",
            "id": str(uuid.uuid4()),
            "datacontenttype": "application/json",
            "kind": str(data["kind"]),
            "name": name,
            "namespace": namespace,
            **self._extensions,
        }
        return CloudEvent(attributes, data)

    def _emit(self, resource: WatchedResource, change: str, obj: Mapping[str, Any]) -> None:
        self._send(self.sink, self.make_event(resource, change, obj))


class LivePingSources(_Player):
    """The PingSources that exist in an API server (the clock start creates, functions/core/
    clock.py), each played by a `PingSourcePlayer` from when it appears until it is deleted.

    Watched through the official client, as `ApiServerSourcePlayer` watches Experiments: a
    list, then a watch from its resourceVersion, listed afresh after a 410 or a lost
    connection. `played` counts the players started, so a run can show the clock came and went.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        sink: str,
        *,
        time_scale: float = 1.0,
        watch_timeout: int = 2,
        retry_delay: float = 0.5,
    ) -> None:
        super().__init__(f"pingsources-{namespace}")
        self._api = client.CustomObjectsApi(api_client)
        self._namespace = namespace
        self.sink = sink
        self._time_scale = time_scale
        self._watch_timeout = max(1, int(watch_timeout))
        self._retry_delay = retry_delay
        self._playing: dict[str, PingSourcePlayer] = {}
        self.played = 0

    @property
    def playing(self) -> list[str]:
        return sorted(self._playing)

    def start(self) -> Self:
        self._stopping.clear()
        self._spawn(self._run)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        for name in list(self._playing):
            self._playing.pop(name).stop()

    def _args(self) -> tuple[str, str, str, str]:
        return ("sources.knative.dev", "v1", self._namespace, "pingsources")

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                listing: Any = self._api.list_namespaced_custom_object(*self._args())
                items = listing.get("items") or []
                present = {str(o["metadata"]["name"]) for o in items}
                for name in set(self._playing) - present:
                    self._playing.pop(name).stop()
                for item in items:
                    self._follow("ADDED", item)
                version = str(listing["metadata"].get("resourceVersion") or "")
                while not self._stopping.is_set():
                    version = self._watch(version)
            except ApiException as e:
                if e.status != _GONE:
                    log.warning("watching PingSources failed: %s", e)
                    self._stopping.wait(self._retry_delay)
            except Exception as e:  # a dropped connection: list again
                log.warning("watching PingSources failed: %s", e)
                self._stopping.wait(self._retry_delay)

    def _watch(self, version: str) -> str:
        w = watch.Watch()  # type: ignore[no-untyped-call]
        stream = w.stream(  # type: ignore[no-untyped-call]
            self._api.list_namespaced_custom_object,
            *self._args(),
            resource_version=version,
            timeout_seconds=self._watch_timeout,
            _request_timeout=self._watch_timeout + 5,
        )
        for event in stream:
            if self._stopping.is_set():
                break
            obj = event.get("object")
            if isinstance(obj, dict):
                self._follow(str(event.get("type")), obj)
        return str(w.resource_version or version)

    def _follow(self, change: str, obj: Mapping[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name"))
        if change == "DELETED":
            player = self._playing.pop(name, None)
            if player is not None:
                player.stop()
                log.info("PingSource %s deleted: no more pings", name)
            return
        if name in self._playing:  # a change (start's stamp): a cron keeps its firings
            return
        manifest = {"kind": "PingSource", **obj}
        self._playing[name] = PingSourcePlayer(
            manifest, self.sink, time_scale=self._time_scale
        ).start()
        self.played += 1
        log.info("PingSource %s created: pinging", name)
