"""The local Kubernetes API server: kmock 0.8's emulator, made to answer like a real API server.

This module owns the stand-in for a cluster's API server that `arbiter run` and the tests
use: `KubeApiEmulator` (the HTTP semantics), `register_resources` (the kinds Arbiter touches)
and `KubeApiServer` (a daemon thread serving it on 127.0.0.1, with a kubeconfig for the
official client and kubectl). Run it alone with `python -m local.kubeapi --port N`.

kmock 0.8 gaps (measured against kmock itself; tests/integration/test_kubeapi.py proves
each one closed) that this subclass closes:
- server-set metadata: `uid`, `creationTimestamp`, `generation` (1 on create, +1 when anything
  outside metadata changes — and outside status, for kinds with a status subresource) and
  `resourceVersion` (one global counter, like etcd's revision, bumped by every write including
  deletes; a write that changes nothing keeps it and wakes no watcher); `generateName`; the
  URL's namespace is filled in;
- create answers 201 with the stored object (kmock: 200, so `kubernetes` 37 returned None);
- PUT (replace) works (kmock: 404);
- optimistic concurrency: a PUT or a PATCH whose result carries a `metadata.resourceVersion`
  (or `uid`) other than the stored one answers 409 Conflict (kmock applied it), as do DELETE
  preconditions;
- the status subresource: writes to `/status` change only `status` and never bump
  generation; writes to the object keep the stored status; status sent on create is dropped;
- PATCH follows Content-Type: JSON merge patch per RFC 7386 (kmock's merge refuses to replace
  a dict by a scalar), JSON patch (a failed `test` is 422, kmock: 500), strategic merge patch
  on core kinds as a merge patch; server-side apply is refused with 415;
- `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (…)`, `k notin (…)`) and
  `fieldSelector` (`=`, `==`, `!=` on any dotted path) on list and watch (kmock ignored both);
  a watcher sees an object that stops matching as DELETED and one that starts as ADDED;
- watch: `timeoutSeconds` ends the stream cleanly (kmock ignored it); `resourceVersion`
  resumes after that revision from the last `WATCH_WINDOW` changes of the kind and answers
  410 Expired when it is older (kmock replayed everything as ADDED), so list-then-watch loses
  nothing; without it, ADDED for every object and then the changes, subscribed atomically
  (kmock could miss a change made between its snapshot and its subscription);
- lists carry `apiVersion`, `kind: <Kind>List` and `metadata.resourceVersion` (kmock: none,
  and the literal '...'), sorted by namespace and name;
- errors are Status objects with Kubernetes' reasons (NotFound, AlreadyExists, Conflict,
  Invalid, Expired, …) and details {name, group, kind}, without kmock's Python traceback;
- kinds that are not declared are 404, as on a cluster without the CRD (kmock accepted any);
- core `namespaces` work (kmock cannot parse `/api/v1/namespaces[/name]`);
- discovery: core `groupVersion` is "v1" (kmock: "/v1", which broke `kubectl get ns`), `/apis/`
  is served (the client's ApisApi asks for it), and subresources are listed with their own
  verbs and no short names (kubectl warned that `isvc` was ambiguous);
- watch streams are `application/json` (kmock: octet-stream, which `kubectl get -w` refuses);
- finalizers: DELETE marks `deletionTimestamp` and the write that removes the last finalizer
  deletes the object (kmock had this; kept, with resourceVersions);
- the request log is bounded (see below);
- the backends' validating webhooks: a create or update of a Knative Service or a KFServing
  v1alpha2 InferenceService that the webhook would deny answers 400 with its problems (the
  rules are the backends', functions.core.backends `PROBLEMS`);
- schema validation, for the kinds whose schemas are published (Knative, Gateway API
  HTTPRoute, Istio VirtualService; local.schemas runs the validator the manifest tests use):
  any write, status included, that breaks the schema answers 422 Invalid with a cause per
  field, as the API server does for a CRD; so do the CRD CEL rules the schemas leave out,
  written by hand (functions.core.backends `CEL_RULES`).
- `events.k8s.io/v1` Events are served and validated as the API server validates their
  creation (`event_problems`): one it would refuse answers 422 Invalid naming the fields.

Not closed: no schema validation of other kinds (KServe, Arbiter's own), no defaulting,
other admission, owner-reference garbage collection or namespace existence checks; no
server-side apply; strategic merge is a plain merge (lists are replaced, not merged by key);
no pagination (`limit`/`continue` are ignored, every item is returned); field selectors
accept any path (a cluster allows a few per kind); no BOOKMARK events; no deletecollection;
PUT without a resourceVersion is an unconditional update (a cluster refuses that for custom
resources); JSON bodies only, so kubectl's typed generators (`kubectl create
namespace|configmap`, which send protobuf) get 415, while `kubectl create -f` works; no
/openapi, so kubectl needs `--validate=false` for create and apply; no Table output; no
authentication.

Request log: kmock appends every request to a log and, on every request, scans that log once
per reaction, so latency grew by about 5 ms per 100 requests served. Here a request stays in
the log only while it is served (routing needs it there) and is dropped with its kmock
bookkeeping once answered, so the log holds the requests in flight and latency stays flat
however long a run lasts. Object histories (`emulator.objects[...].history`) are kept in full:
tests assert on them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import copy
import dataclasses
import datetime
import json
import re
import signal
import threading
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import aiohttp.web
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import parsing, rendering

from functions.core.backends import CEL_RULES, PROBLEMS
from functions.core.resources import (
    EXPERIMENT,
    HTTPROUTE,
    ISTIO_VIRTUAL_SERVICE,
    KFSERVING_ISVC,
    KNATIVE_BROKER,
    KNATIVE_REVISION,
    KNATIVE_SERVICE,
    KSERVE_ISVC,
    METRIC,
    PINGSOURCE,
    Resource,
)
from functions.core.timestamps import parse_time
from local.lifecycle import Component
from local.schemas import Cause, SchemasUnavailableError, SchemaValidator

if TYPE_CHECKING:
    import kubernetes.client

_T = TypeVar("_T")
Obj = dict[str, Any]
_Key = tuple[kmock.resource, str | None, str]

WATCH_WINDOW: Final = 1000
"""How many past changes per kind a watch can resume from."""

_VERBS: Final = frozenset({"create", "delete", "get", "list", "patch", "update", "watch"})
_SUBRESOURCE_VERBS: Final = ["get", "patch", "update"]
_NAMESPACE_SUBRESOURCES: Final = frozenset({"status", "finalize"})
# Clients cannot set these; the server keeps its own values across updates.
_SERVER_OWNED: Final = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "generation",
    "resourceVersion",
)
_REASONS: Final = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
}
_TERM = re.compile(
    r"\s*(?:!\s*(?P<absent>[\w./-]+)"
    r"|(?P<key>[\w./-]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)"
    r"|\s+(?P<set>in|notin)\s*\((?P<values>[^()]*)\))?)\s*"
)
_CONFLICT: Final = (
    "Operation cannot be fulfilled on {}: the object has been modified; "
    "please apply your changes to the latest version and try again"
)
_TERMS = re.compile(r",(?![^()]*\))")  # commas that are not inside `in (a, b)`

EVENTS_V1: Final = Resource("events.k8s.io", "v1", "Event")
_QUALIFIED_NAME: Final = re.compile(
    r"^(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_DNS_SUBDOMAIN: Final = re.compile(
    r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$"
)


def event_problems(obj: Mapping[str, Any]) -> list[str]:
    """What the API server refuses in an events.k8s.io/v1 Event it is asked to create:
    kubernetes/kubernetes pkg/apis/core/validation/events.go (`ValidateEventCreate` with
    `legacyValidateEvent`, at 04791b4906602ffda5ccf9bc4c84d3329f1d7080). Lengths are bytes."""
    problems = []
    meta = _meta(obj)
    name = str(meta.get("name") or "")
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        problems.append(f"metadata.name: Invalid value: {name!r}: must be a DNS subdomain")
    event_time = obj.get("eventTime")
    if not isinstance(event_time, str) or not event_time:
        problems.append("eventTime: Required value")
    elif parse_time(event_time) is None:
        problems.append(f"eventTime: Invalid value: {event_time!r}: not an RFC 3339 time")
    if obj.get("type") not in ("Normal", "Warning"):
        problems.append(f"type: Invalid value: has invalid value: {obj.get('type')}")
    for deprecated in ("deprecatedFirstTimestamp", "deprecatedLastTimestamp", "deprecatedSource"):
        if obj.get(deprecated):
            problems.append(f"{deprecated}: Invalid value: needs to be unset")
    if obj.get("deprecatedCount"):
        problems.append("deprecatedCount: Invalid value: needs to be unset")
    regarding = obj.get("regarding") or {}
    namespace = meta.get("namespace")
    if not regarding.get("namespace") and namespace not in ("default", "kube-system"):
        problems.append("regarding.namespace: Invalid value: does not match event.namespace")
    controller = str(obj.get("reportingController") or "")
    if not controller:
        problems.append("reportingController: Required value")
    elif not _QUALIFIED_NAME.match(controller):
        problems.append(f"reportingController: Invalid value: {controller!r}: not a qualified name")
    for field, limit in (("reportingInstance", 128), ("action", 128), ("reason", 128)):
        value = str(obj.get(field) or "")
        if not value:
            problems.append(f"{field}: Required value")
        elif len(value.encode()) > limit:
            problems.append(f"{field}: Invalid value: can have at most {limit} characters")
    if len(str(obj.get("note") or "").encode()) > 1024:
        problems.append("note: Invalid value: can have at most 1024 characters")
    return problems


def _fail(
    code: int, message: str, reason: str | None = None, **details: str
) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=code, reason=reason or _REASONS.get(code), message=message, details=details
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new value and never mutates `target`."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _field(obj: Mapping[str, Any], path: str) -> str | None:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return None if value is None or isinstance(value, dict | list) else str(value)


def _selector(params: Mapping[str, str]) -> Callable[[Mapping[str, Any]], bool]:
    """The predicate that `labelSelector` and `fieldSelector` in `params` describe.

    Raises a 400 `KubernetesError` for a term that is not understood, rather than ignore it.
    """
    tests: list[Callable[[Mapping[str, Any]], bool]] = []
    for param in ("labelSelector", "fieldSelector"):
        for term in filter(str.strip, _TERMS.split(params.get(param, ""))):
            match = _TERM.fullmatch(term)
            if match is None or (param == "fieldSelector" and not match["op"]):
                raise _fail(400, f"unable to parse requirement {term!r} in {param}")
            tests.append(_requirement(param == "labelSelector", match))
    return lambda obj: all(test(obj) for test in tests)


def _requirement(label: bool, term: re.Match[str]) -> Callable[[Mapping[str, Any]], bool]:
    key = term["absent"] or term["key"]

    def actual(obj: Mapping[str, Any]) -> str | None:
        if not label:
            return _field(obj, key)
        labels = _meta(obj).get("labels")
        return labels.get(key) if isinstance(labels, dict) else None

    if term["absent"]:
        return lambda obj: actual(obj) is None
    if term["op"] == "!=":
        return lambda obj: actual(obj) != term["value"]
    if term["op"]:
        return lambda obj: actual(obj) == term["value"]
    if term["set"]:
        values = {v.strip() for v in term["values"].split(",")}
        if term["set"] == "in":
            return lambda obj: actual(obj) in values
        return lambda obj: actual(obj) not in values
    return lambda obj: actual(obj) is not None


def _parse_path(path: str) -> parsing.ParsedPath:
    parts = path.strip("/").split("/")
    # kmock reads /api/v1/namespaces/x as "namespace x, no resource" and fails on the collection.
    if parts[:3] == ["api", "v1", "namespaces"] and (
        len(parts) <= 4 or (len(parts) == 5 and parts[4] in _NAMESPACE_SUBRESOURCES)
    ):
        name, subresource = [*parts[3:], None, None][:2]
        return parsing.ParsedPath("", "v1", "namespaces", None, name, subresource)
    return parsing.parse_path(path)


@dataclasses.dataclass(frozen=True)
class _Change:
    """One write to one object: the object before (None if created) and after (None if deleted)."""

    revision: int
    before: Obj | None
    after: Obj | None
    sent: Obj  # what a watcher receives: `after`, or the deleted object at its last revision


@dataclasses.dataclass(frozen=True, eq=False)
class _Watcher:
    namespace: str | None
    name: str | None
    selects: Callable[[Mapping[str, Any]], bool]
    queue: asyncio.Queue[bytes | None] = dataclasses.field(default_factory=asyncio.Queue)

    def sees(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = _meta(obj)
        return (
            self.namespace in (None, meta.get("namespace"))
            and self.name in (None, meta.get("name"))
            and self.selects(obj)
        )

    def event(self, change: _Change) -> bytes | None:
        """The watch event line `change` makes for this watcher, if any."""
        before, after = self.sees(change.before), self.sees(change.after)
        kind = "MODIFIED" if before and after else "ADDED" if after else "DELETED" if before else ""
        return _event_line(kind, change.sent) if kind else None


def _status(exc: kmock.KubernetesError) -> Obj:
    """The Status object the API server answers `exc` with."""
    reason = exc.reason if exc.reason and exc.reason.isalnum() else _REASONS.get(exc.status)
    status: Obj = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": exc.message or reason,
        "reason": reason or "Unknown",
        "code": exc.status,
    }
    if exc.details:
        status["details"] = exc.details
    return status


def _content(obj: Mapping[str, Any], info: kmock.ResourceInfo) -> Obj:
    """What `generation` counts: all but metadata, and but status if it is a subresource."""
    skipped = {"metadata", "status"} if "status" in info.subresources else {"metadata"}
    return {k: v for k, v in obj.items() if k not in skipped}


def _content_type(request: kmock.Request) -> str:
    return request.headers.get("Content-Type", "").split(";")[0].strip().lower()


def _event_line(kind: str, obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


class KubeApiEmulator(kmock.KubernetesEmulator):
    """kmock's in-memory Kubernetes API with the server-side semantics Arbiter relies on.

    Reads and discovery go through kmock's routing; writes are served here, under kmock's
    lock, so that a read-modify-write is atomic and every change reaches the watchers.
    """

    watch_window: int
    """How many past changes per kind a watch can resume from (changes apply after `reset`)."""
    schemas: SchemaValidator | None = None
    """Checks writes of the kinds with published schemas; None checks none."""
    _revision: int
    _served: int
    _changes: collections.defaultdict[kmock.resource, collections.deque[_Change]]
    _forgotten: dict[kmock.resource, int]  # the newest revision that fell out of `_changes`
    _watchers: collections.defaultdict[kmock.resource, set[_Watcher]]

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._revision = self._served = 0
        self.watch_window = WATCH_WINDOW
        self._changes = collections.defaultdict(lambda: collections.deque(maxlen=self.watch_window))
        self._forgotten = {}
        self._watchers = collections.defaultdict(set)

    # -- requests ---------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None  # e.g. YAML for server-side apply: the write handlers refuse it
        path = raw_request.path.rstrip("/") or "/"  # the client asks for /apis/, kmock knows /apis
        k8s = _parse_path(path)
        query = dict(raw_request.query)
        method = kmock.method(raw_request.method)
        request = kmock.Request(
            id=self._served,
            raw_request=raw_request,
            url=raw_request.url.with_path(path),
            method=method,
            params=query,
            headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies),
            body=body,
            text=body.decode("utf-8", "replace"),
            data=data,
            action=parsing.guess_k8s(k8s, method, query),
            resource=None
            if k8s.group is None
            else kmock.resource(group=k8s.group, version=k8s.version, plural=k8s.plural),
            namespace=k8s.namespace,
            name=k8s.name,
            subresource=k8s.subresource,
        )
        self._served += 1
        # kmock routes only requests found in its log (by identity), so log it while it is served.
        self._requests.append(request)
        response: aiohttp.web.StreamResponse | None = None
        try:
            try:
                return await self._handle(request)
            except rendering.StreamingError as e:
                response = e.args[0]
                raise e.__cause__ or e from None
        except Exception as e:
            if response is None or not response.prepared:
                return await self._render_error(e)
            await self._stream_error(e, response)
            await response.write_eof()
            return response
        finally:
            self._forget(request)

    def _forget(self, request: kmock.Request) -> None:
        # kmock scans its whole log on every request; answered requests must not stay in it.
        for log in (self._requests, *(reaction._requests for reaction in self._payloads)):
            for index in range(len(log) - 1, -1, -1):
                if log[index] is request:
                    del log[index]
                    break

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if not isinstance(exc, kmock.KubernetesError):
            return await super()._render_error(exc)
        # kmock's own errors carry prose reasons ("Resource Not Found") and Python tracebacks.
        return aiohttp.web.json_response(_status(exc), status=exc.status)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.action == kmock.action.WATCH:
            return await self._watch(request)
        if request.resource is None or request.method not in (
            kmock.method.POST,
            kmock.method.PUT,
            kmock.method.PATCH,
            kmock.method.DELETE,
        ):
            return await super()._handle(request)
        info = self._info(request.resource)
        content_type = _content_type(request)
        if request.body and content_type and not content_type.endswith("json"):
            # kubectl sends protobuf for some built-in kinds; JSON is all this server reads.
            raise _fail(415, f"unsupported media type {content_type!r}; send JSON")
        async with self._lock:
            if request.method == kmock.method.POST and request.name is None:
                return aiohttp.web.json_response(self._create(request, info), status=201)
            if request.name is not None and request.method == kmock.method.DELETE:
                return aiohttp.web.json_response(self._delete(request, info))
            if request.name is not None and request.method != kmock.method.POST:
                return aiohttp.web.json_response(self._update(request, info))
        raise _fail(405, f"{request.method.value} is not supported on {request.url.path}")

    # -- writes (called under the lock) -----------------------------------------------------

    def _info(self, resource: kmock.resource | None) -> kmock.ResourceInfo:
        # `in` first: kmock's ResourcesArray creates an entry for any key it is asked for.
        if resource is None or resource not in self.resources:
            raise _fail(404, "the server could not find the requested resource")
        return self.resources[resource]

    def _key(self, request: kmock.Request, info: kmock.ResourceInfo) -> _Key:
        assert request.resource is not None and request.name is not None
        if info.namespaced and request.namespace is None:
            raise _fail(404, "the server could not find the requested resource")
        return request.resource, request.namespace if info.namespaced else None, request.name

    def _current(self, key: _Key) -> Obj:
        if key not in self.objects or self.objects[key].deleted:
            raise self._error(404, key, "{} not found")
        return self.objects[key].raw

    @staticmethod
    def _error(code: int, key: _Key, message: str, reason: str | None = None) -> Exception:
        """A Status about one object; `{}` in `message` becomes `plural.group "name"`."""
        resource, _, name = key
        kind = f"{resource.plural}.{resource.group}" if resource.group else str(resource.plural)
        return _fail(
            code,
            message.format(f'{kind} "{name}"'),
            reason,
            name=name,
            group=resource.group or "",
            kind=kind,
        )

    def _create(self, request: kmock.Request, info: kmock.ResourceInfo) -> Obj:
        assert request.resource is not None
        if not isinstance(request.data, dict):
            raise _fail(400, "the body of a create must be a JSON object")
        obj: Obj = copy.deepcopy(request.data)
        meta = obj["metadata"] = _meta(obj)
        namespace = None
        if info.namespaced:
            namespace = request.namespace or meta.get("namespace")
            if namespace is None or meta.setdefault("namespace", namespace) != namespace:
                raise _fail(400, "the namespace of the object does not match the request")
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise _fail(422, "metadata.name: Required value: name or generateName is required")
        group, version = request.resource.group, request.resource.version
        obj.setdefault("apiVersion", f"{group}/{version}" if group else version)
        obj.setdefault("kind", info.kind)
        if "status" in info.subresources:
            obj.pop("status", None)  # only /status writes status
        self._admit(request.resource, obj)
        self._validate(request.resource, obj)
        return self._insert(request.resource, namespace, obj)

    def _insert(self, resource: kmock.resource, namespace: str | None, obj: Obj) -> Obj:
        key: _Key = (resource, namespace, _meta(obj)["name"])
        if key in self.objects and not self.objects[key].deleted:
            raise self._error(409, key, "{} already exists", "AlreadyExists")
        for field in ("deletionTimestamp", "resourceVersion"):
            _meta(obj).pop(field, None)
        _meta(obj).update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        return self._commit(key, None, obj)

    def _update(self, request: kmock.Request, info: kmock.ResourceInfo) -> Obj:
        key = self._key(request, info)
        old = self._current(key)
        status_only = request.subresource is not None
        if status_only and (request.subresource != "status" or "status" not in info.subresources):
            raise _fail(404, "the server could not find the requested resource")
        new = self._apply(request, old)
        if not isinstance(new, dict):
            raise _fail(422, "the patched object is not a JSON object")
        old_meta, sent = _meta(old), _meta(new)
        if sent.get("name", key[2]) != key[2]:
            raise _fail(400, "the name of the object does not match the name in the URL")
        for precondition in ("resourceVersion", "uid"):
            value = sent.get(precondition)
            if value is not None and str(value) != old_meta.get(precondition):
                raise self._error(409, key, _CONFLICT)
        has_status = "status" in info.subresources
        if status_only:
            new = {k: v for k, v in old.items() if k != "status"} | (
                {"status": new["status"]} if "status" in new else {}
            )
        elif has_status:
            new = {k: v for k, v in new.items() if k != "status"} | (
                {"status": old["status"]} if "status" in old else {}
            )
        new["apiVersion"], new["kind"] = old.get("apiVersion"), old.get("kind")
        if not status_only:
            self._admit(key[0], new)
        self._validate(key[0], new)
        meta = new["metadata"] = {k: v for k, v in _meta(new).items() if k not in _SERVER_OWNED}
        meta.update((k, old_meta[k]) for k in _SERVER_OWNED if k in old_meta)
        if new == old:
            return old  # a no-op write keeps resourceVersion and wakes no watcher, as in a cluster
        if _content(new, info) != _content(old, info):
            meta["generation"] = int(old_meta.get("generation", 0)) + 1
        # The last finalizer of an object being deleted is gone: the deletion completes.
        done = bool(meta.get("deletionTimestamp")) and not meta.get("finalizers")
        return self._commit(key, old, new, deleted=done)

    def _apply(self, request: kmock.Request, old: Obj) -> Any:
        body = request.data
        if request.method == kmock.method.PUT:
            if not isinstance(body, dict):
                raise _fail(400, "the body of a replace must be a JSON object")
            return copy.deepcopy(body)
        content_type = _content_type(request)
        assert request.resource is not None
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise _fail(400, "a JSON patch must be a JSON array of operations")
            try:
                return jsonpatch.apply_patch(old, body, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                raise _fail(422, f"the JSON patch cannot be applied: {e}") from e
        if content_type == "application/merge-patch+json" or (
            # Core kinds accept strategic merge patches (kubectl's default); list merging by key
            # is not emulated. Custom resources refuse them, as on a cluster.
            content_type == "application/strategic-merge-patch+json"
            and request.resource.group == ""
        ):
            if not isinstance(body, dict):
                raise _fail(400, "a merge patch must be a JSON object")
            return _merge(old, body)
        raise _fail(415, f"the patch type {content_type!r} is not supported")

    @staticmethod
    def _admit(resource: kmock.resource, obj: Obj) -> None:
        """Refuse what the backend's validating webhook refuses, as the API server relays its
        denial: 400 BadRequest naming every problem; and an Event the API server's own
        validation refuses: 422 Invalid."""
        if (resource.group, resource.version, resource.plural) == (
            EVENTS_V1.group,
            EVENTS_V1.version,
            EVENTS_V1.plural,
        ):
            found = event_problems(obj)
            if found:
                raise _fail(422, f"Event {_meta(obj).get('name')!r} is invalid: {'; '.join(found)}")
        for declared, problems in PROBLEMS.items():
            if (declared.group, declared.version, declared.plural) == (
                resource.group,
                resource.version,
                resource.plural,
            ):
                found = problems(obj)
                if found:
                    raise _fail(
                        400,
                        f"admission webhook denied the request: validation failed: "
                        f"{'; '.join(found)}",
                    )

    def _validate(self, resource: kmock.resource, obj: Obj) -> None:
        """Refuse what the CRD's schema and CEL rules refuse, as the API server does: 422
        Invalid, `Kind.group "name" is invalid: field: message`, a cause per field."""
        found: list[Cause] = []
        if self.schemas is not None:
            try:
                found = self.schemas.errors(obj)
            except SchemasUnavailableError as e:
                raise _fail(500, str(e), "InternalError") from None
        for declared, rules in CEL_RULES.items():
            if (declared.group, declared.plural) == (resource.group, resource.plural):
                for problem in rules(obj):
                    field, _, message = problem.partition(": ")
                    found.append(Cause(field, "FieldValueInvalid", message))
        if not found:
            return
        kind = str(obj.get("kind") or resource.plural)
        name = str(_meta(obj).get("name") or "")
        listed = [f"{c.field}: {c.message}" for c in found]
        shown = listed[0] if len(listed) == 1 else f"[{', '.join(listed)}]"
        raise kmock.KubernetesError(
            status=422,
            reason="Invalid",
            message=f'{kind}.{resource.group} "{name}" is invalid: {shown}',
            details={
                "name": name,
                "group": resource.group,
                "kind": kind,
                "causes": [c.as_dict() for c in found],
            },
        )

    def _delete(self, request: kmock.Request, info: kmock.ResourceInfo) -> Obj:
        key = self._key(request, info)
        old = self._current(key)
        options = request.data if isinstance(request.data, dict) else {}
        preconditions = options.get("preconditions") or {}
        for precondition in ("resourceVersion", "uid"):
            expected = preconditions.get(precondition)
            if expected is not None and expected != _meta(old).get(precondition):
                raise self._error(
                    409, key, f"Precondition failed on {{}}: {precondition} {expected}"
                )
        meta = _meta(old)
        if not meta.get("finalizers"):
            return self._commit(key, old, old, deleted=True)
        if meta.get("deletionTimestamp"):
            return old
        # Finalizers hold the object: mark it; the update that removes the last one deletes it.
        stamped = {**meta, "deletionTimestamp": _now(), "generation": meta.get("generation", 0) + 1}
        return self._commit(key, old, {**old, "metadata": stamped})

    def _commit(self, key: _Key, old: Obj | None, new: Obj, *, deleted: bool = False) -> Obj:
        """Store `new` at the next resourceVersion (then delete it if asked); tell watchers."""
        resource = key[0]
        stored: Obj = copy.deepcopy(new)
        self._revision += 1
        _meta(stored)["resourceVersion"] = str(self._revision)
        if key in self.objects:
            self.objects[key].history.append(stored)
        else:
            self.objects[key] = stored
        if deleted:
            self.objects[key].delete()
        change = _Change(self._revision, old, None if deleted else stored, stored)
        changes = self._changes[resource]
        if len(changes) == changes.maxlen:
            self._forgotten[resource] = changes[0].revision
        changes.append(change)
        for watcher in self._watchers[resource]:
            line = watcher.event(change)
            if line is not None:
                watcher.queue.put_nowait(line)
        return stored

    # -- reads (kmock routes these) ---------------------------------------------------------

    def _stored(self, resource: kmock.resource) -> list[Obj]:
        """The objects of one kind, by namespace and name, as a list shows them."""
        found = [
            ((namespace or "", name), obj.raw)
            for (kind, namespace, name), obj in self.objects.items()
            if kind == resource and not obj.deleted
        ]
        return [obj for _, obj in sorted(found, key=lambda item: item[0])]

    async def _serve_fetch(self, request: kmock.Request) -> rendering.Payload:
        info = self._info(request.resource)
        if request.subresource is not None and request.subresource not in info.subresources:
            raise _fail(404, "the server could not find the requested resource")
        async with self._lock:
            return self._current(self._key(request, info))

    async def _serve_list(self, request: kmock.Request) -> rendering.Payload:
        resource = request.resource
        info = self._info(resource)
        assert resource is not None
        selects = _selector(request.params)
        async with self._lock:
            items = [
                obj
                for obj in self._stored(resource)
                if request.namespace in (None, _meta(obj).get("namespace")) and selects(obj)
            ]
            revision = str(self._revision)
        group, version = resource.group, resource.version
        return {
            "apiVersion": f"{group}/{version}" if group else version,
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": revision},
            "items": items,
        }

    async def _watch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Stream watch events, a JSON object a line, until timeoutSeconds or the client leaves."""
        resource = request.resource
        self._info(resource)
        assert resource is not None and request._raw_request is not None
        watcher = _Watcher(request.namespace, request.name, _selector(request.params))
        since = request.params.get("resourceVersion", "")
        if since not in ("", "0") and not since.isdigit():
            raise _fail(400, f"invalid resourceVersion {since!r}")
        timeout = float(request.params.get("timeoutSeconds") or 0)
        async with self._lock:
            lines: list[bytes | None]
            if since in ("", "0"):
                lines = [_event_line("ADDED", o) for o in self._stored(resource) if watcher.sees(o)]
            elif int(since) < self._forgotten.get(resource, 0):
                # As the API server does: one ERROR event, then the end of the stream.
                gone = _fail(410, f"too old resource version: {since} ({self._revision})")
                lines = [_event_line("ERROR", _status(gone)), None]
            else:
                changes = (c for c in self._changes[resource] if c.revision > int(since))
                lines = [line for line in map(watcher.event, changes) if line is not None]
            for line in lines:
                watcher.queue.put_nowait(line)
            self._watchers[resource].add(watcher)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout > 0 else None
        # kmock would stream as application/octet-stream, which kubectl refuses to decode.
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await response.prepare(request._raw_request)
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                try:
                    line = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if line is None:  # expired, or the server is stopping
                    break
                await response.write(line)
            await response.write_eof()
        except ConnectionError:
            pass  # the client has gone
        finally:
            self._watchers[resource].discard(watcher)
        return response

    async def _serve_version(self, request: kmock.Request) -> rendering.Payload:
        listing = await super()._serve_version(request)
        assert isinstance(listing, dict)
        listing["groupVersion"] = listing["groupVersion"].lstrip("/")  # kmock says "/v1" for core
        # kmock copies a kind's short names and verbs onto its subresources; kubectl then warns
        # that `isvc` is ambiguous.
        for entry in listing["resources"]:
            if "/" in entry["name"]:
                entry.update(
                    singularName="", shortNames=[], categories=[], verbs=_SUBRESOURCE_VERBS
                )
        return listing

    # -- direct access for the local run and the tests ---------------------------------------

    async def seed(
        self, resource: kmock.resource, namespace: str | None, body: Mapping[str, Any]
    ) -> Obj:
        """Create or replace an object as its controller would, status included; return it."""
        info = self._info(resource)
        obj: Obj = copy.deepcopy(dict(body))
        meta = obj["metadata"] = _meta(obj)
        if info.namespaced:
            namespace = namespace or meta.get("namespace")
            if not namespace:
                raise ValueError(f"{resource.plural} are namespaced: give a namespace")
            meta["namespace"] = namespace
        else:
            namespace = None
            meta.pop("namespace", None)
        group, version = resource.group, resource.version
        obj.setdefault("apiVersion", f"{group}/{version}" if group else version)
        obj.setdefault("kind", info.kind)
        key: _Key = (resource, namespace, meta["name"])
        async with self._lock:
            if key in self.objects and not self.objects[key].deleted:
                old = self.objects[key].raw
                meta.update((k, _meta(old)[k]) for k in _SERVER_OWNED if k in _meta(old))
                if obj == old:
                    return copy.deepcopy(old)
                if _content(obj, info) != _content(old, info):
                    meta["generation"] = int(meta.get("generation", 0)) + 1
                return copy.deepcopy(self._commit(key, old, obj))
            return copy.deepcopy(self._insert(resource, key[1], obj))

    async def fetch(self, resource: kmock.resource, namespace: str | None, name: str) -> Obj | None:
        """The stored object, or None if there is none."""
        async with self._lock:
            key = (resource, namespace, name)
            exists = key in self.objects and not self.objects[key].deleted
            return copy.deepcopy(self.objects[key].raw) if exists else None

    async def history(
        self, resource: kmock.resource, namespace: str | None, name: str
    ) -> list[Obj | None]:
        """Every stored version of one object, oldest first; None marks a deletion."""
        async with self._lock:
            if (resource, namespace, name) not in self.objects:
                return []
            versions = self.objects[resource, namespace, name].history
            return [None if v is None else copy.deepcopy(v.raw) for v in versions]

    async def reset(self) -> None:
        """Forget every object without telling watchers; resourceVersions keep increasing."""
        async with self._lock:
            self.objects.clear()
            # A watch resuming from before the reset could not be told what it missed.
            self._forgotten = dict.fromkeys([*self._changes, *self._forgotten], self._revision)
            self._changes.clear()

    async def close_watches(self) -> None:
        """End every open watch, so that the server can stop at once."""
        async with self._lock:
            for watchers in self._watchers.values():
                for watcher in watchers:
                    watcher.queue.put_nowait(None)


def register_resources(emulator: kmock.KubernetesEmulator) -> None:
    """Declare the kinds Arbiter reads and writes: discovery, scope and status subresources."""
    declared: tuple[tuple[Resource, set[str], bool, bool], ...] = (
        # resource, short names, namespaced, status subresource
        (EXPERIMENT, set(), True, True),
        (METRIC, set(), True, False),
        (KSERVE_ISVC, {"isvc"}, True, True),
        (KFSERVING_ISVC, set(), True, True),
        (KNATIVE_SERVICE, {"ksvc", "kservice"}, True, True),
        (KNATIVE_REVISION, {"rev"}, True, False),
        (ISTIO_VIRTUAL_SERVICE, {"vs"}, True, False),
        (HTTPROUTE, set(), True, True),
        (PINGSOURCE, set(), True, True),
        (Resource("", "v1", "Namespace"), {"ns"}, False, True),
        (Resource("", "v1", "ConfigMap"), {"cm"}, True, False),
        (Resource("", "v1", "Event"), {"ev"}, True, False),
        (EVENTS_V1, set(), True, False),
        # An Addressable an experiment's alert sinks may name (functions/core/notify.py).
        (KNATIVE_BROKER, set(), True, True),
    )
    for resource, shortnames, namespaced, status in declared:
        kind = resource.kind
        emulator.resources[resource.path] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=namespaced,
            verbs=set(_VERBS),
            shortnames=shortnames,
            subresources={"status"} if status else set(),
        )


class KubeApiServer(Component):
    """Serves a `KubeApiEmulator` on 127.0.0.1 from its own event loop in a daemon thread.

    A thread of its own, not the caller's event loop: the synchronous `kubernetes` client
    would block that loop and deadlock. The methods below are
    thread-safe; they run on the server's loop.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, schemas: bool = True) -> None:
        self.emulator = KubeApiEmulator()
        register_resources(self.emulator)
        self._schemas = SchemaValidator() if schemas else None
        self.emulator.schemas = self._schemas
        self._host = host
        self._port = port
        self._url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the API server is not running")
        return self._url

    def start(self, timeout: float = 10.0) -> Self:
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(ready)), name="kube-api", daemon=True
        )
        self._thread.start()
        self._url = ready.result(timeout=timeout)
        return self

    async def _serve(self, ready: concurrent.futures.Future[str]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            async with (
                self.emulator,
                kmock.Server(self.emulator, host=self._host, port=self._port) as server,
            ):
                ready.set_result(str(server.url).rstrip("/"))
                await self._stopping.wait()
                await self.emulator.close_watches()
        except BaseException as e:
            if not ready.done():
                ready.set_exception(e)
            raise

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the API server did not stop within {timeout} s")
        self._url = self._loop = self._stopping = self._thread = None
        if self._schemas is not None:
            self._schemas.close()

    def _call(self, coroutine: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        # The store belongs to the server's loop; touch it only from there.
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the API server is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def seed(
        self, group: str, version: str, plural: str, namespace: str | None, body: Mapping[str, Any]
    ) -> Obj:
        """Create or replace an object as its controller would, status included; return it.

        Watchers see it as any other write. Use this for what a controller would have made
        (an InferenceService with its status), and the client for what a user would apply.
        """
        return self._call(
            self.emulator.seed(
                kmock.resource(group=group, version=version, plural=plural), namespace, body
            )
        )

    def get(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> Obj | None:
        """The stored object, or None if it does not exist (or was deleted)."""
        resource = kmock.resource(group=group, version=version, plural=plural)
        return self._call(self.emulator.fetch(resource, namespace, name))

    def history(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> list[Obj | None]:
        """Every stored version of one object, oldest first; None marks a deletion.

        A deletion is recorded as the object's last state (at the deletion's resourceVersion)
        followed by None.
        """
        resource = kmock.resource(group=group, version=version, plural=plural)
        return self._call(self.emulator.history(resource, namespace, name))

    def reset(self) -> None:
        """Forget every object; open watches stay open and resourceVersions keep increasing."""
        self._call(self.emulator.reset())

    def kubeconfig(self, namespace: str = "default") -> Obj:
        """A kubeconfig for this server (plain HTTP, no credentials)."""
        context = {"cluster": "arbiter-local", "user": "arbiter-local", "namespace": namespace}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "arbiter-local", "cluster": {"server": self.url}}],
            "users": [{"name": "arbiter-local", "user": {}}],
            "contexts": [{"name": "arbiter-local", "context": context}],
            "current-context": "arbiter-local",
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """Write `kubeconfig()` as JSON (which is YAML) for the client, kubectl and KUBECONFIG."""
        path = Path(path)
        path.write_text(json.dumps(self.kubeconfig(namespace), indent=2) + "\n", encoding="utf-8")
        return path

    def api_client(self) -> kubernetes.client.ApiClient:
        """A `kubernetes` ApiClient for this server; the caller closes it."""
        import kubernetes.client  # noqa: PLC0415  # slow to import; the server never needs it

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.connection_pool_maxsize = 32  # the functions call it from many threads
        return kubernetes.client.ApiClient(configuration)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the emulator until SIGTERM or SIGINT; print its URL once it is ready."""
    parser = argparse.ArgumentParser(prog="python -m local.kubeapi", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kubeconfig", type=Path, help="also write a kubeconfig to this path")
    args = parser.parse_args(argv)

    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with KubeApiServer(args.host, args.port) as server:
        if args.kubeconfig:
            server.write_kubeconfig(args.kubeconfig)
        print(server.url, flush=True)
        stopping.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
