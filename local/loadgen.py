"""The local run's traffic: requests at a steady rate, split as the cluster's router would.

`TrafficGenerator` sends KServe v1 predict requests to the simulated model versions with
Poisson arrivals, and routes each one by the split the target object carries *now*, read
from the Kubernetes API (re-read every `refresh_s`, 0.25 s by default), so traffic moves as
soon as a function patches the object. `read_split` is the router's rule per backend, as a
pure function of the object:

- KServe v1beta1, KFServing v1alpha2, Knative Service and Gateway API HTTPRoute (its first
  rule's backendRefs, by Service name): the routes the backend programs
  for the object's spec (functions.core.backends `ROUTES`, the rule the local controllers
  report in status too), derived from spec and status revisions rather than read from the
  status the controller writes after programming the route: the same rule without the
  controller's lag.
- Istio VirtualService: `spec.http[0].route[*].weight` by destination subset or host (a
  lone route without weight takes everything).

`routes` maps destination names (revision names, tags, "default"/"canary", hosts or
subsets, as the backend names them) to the versions' URLs; a share whose destination has
no route is counted as unrouted, not sent.

Rate under time compression: `rate_rps` is requests per second of *simulated* time. The
run compresses time `time_scale`-fold, so the generator sends `rate_rps * time_scale`
requests per wall-clock second: an interval then holds as many requests as it would
uncompressed, and the statistics see realistic sample sizes. The wall-clock rate is capped
at `max_wall_rps` (what 2 cores sustain); `rate` reports the simulated rate actually kept.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Self

import kubernetes.client
import numpy as np
import urllib3
from kubernetes.client.exceptions import ApiException

from functions.core.backends import ROUTES, Route, get_path
from functions.core.resources import ISTIO_VIRTUAL_SERVICE, ObjectRef
from local.lifecycle import Component

log = logging.getLogger(__name__)

Obj = Mapping[str, Any]
ISTIO_KIND: Final = ISTIO_VIRTUAL_SERVICE.kind
# A connection failure has no HTTP status; it is counted under this code.
NO_RESPONSE: Final = 0


@dataclass(frozen=True)
class Share:
    """One destination's share of the traffic, in percent.

    `keys` are the names the destination goes by, most specific first (a revision name
    before a tag); the first one found in the routes picks the version.
    """

    keys: tuple[str, ...]
    percent: float


@dataclass(frozen=True)
class Rate:
    """The request rate kept: per simulated second, and per wall-clock second."""

    simulated_rps: float
    wall_rps: float
    time_scale: float

    def __str__(self) -> str:
        if self.time_scale == 1:
            return f"{self.simulated_rps:g} req/s"
        return (
            f"{self.simulated_rps:g} req/s of simulated time "
            f"({self.wall_rps:g} req/s wall clock at {self.time_scale:g}x)"
        )


@dataclass(frozen=True)
class TrafficStats:
    """What the generator has done so far.

    `sent` counts requests per version; `responses` their answers per version and HTTP
    status (`NO_RESPONSE` for a connection failure or timeout). `unrouted` requests fell on
    a share with no route (or came before any split was read); `shed` ones were dropped
    because every worker was busy with slow versions.
    """

    sent: Mapping[str, int]
    responses: Mapping[str, Mapping[int, int]]
    unrouted: int = 0
    shed: int = 0
    split_reads: int = 0
    split_errors: int = 0
    split: Mapping[str, float] | None = field(default=None)


def _keys(*names: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(n) for n in names if n))


def _backend(target: ObjectRef) -> Callable[[Obj], tuple[Route, ...]] | None:
    for resource, routes in ROUTES.items():
        if (resource.api_version, resource.kind) == (target.api_version, target.kind):
            return routes
    return None


def _istio(obj: Obj) -> tuple[Share, ...]:
    routes = get_path(obj, "spec", "http", 0, "route")
    if not isinstance(routes, list):
        return ()
    shares = []
    for route in routes:
        if not isinstance(route, Mapping):
            continue
        host = str(get_path(route, "destination", "host") or "")
        weight = route.get("weight")
        if weight is None:
            weight = 100 if len(routes) == 1 else 0
        short = host.split(".", 1)[0]
        shares.append(
            Share(_keys(get_path(route, "destination", "subset"), host, short), float(weight))
        )
    return tuple(shares)


def supported(target: ObjectRef) -> bool:
    """Whether `read_split` knows how `target`'s kind splits traffic."""
    return _backend(target) is not None or target.kind == ISTIO_KIND


def read_split(target: ObjectRef, obj: Obj) -> tuple[Share, ...]:
    """The shares `obj` (an object of `target`'s kind) routes traffic by; () for none yet.

    Raises:
        ValueError: the kind is not one a router splits by (see `supported`).
    """
    routes = _backend(target)
    if routes is not None:
        return tuple(Share(_keys(r.revision, r.alias), float(r.percent)) for r in routes(obj))
    if target.kind == ISTIO_KIND:
        return _istio(obj)
    raise ValueError(f"{target.api_version} {target.kind}: no known traffic router")


def route_split(shares: Sequence[Share], routes: Mapping[str, str]) -> dict[str | None, float]:
    """Percent per routed version (the first key found in `routes`); None: unroutable."""
    split: dict[str | None, float] = {}
    for share in shares:
        version = next((k for k in share.keys if k in routes), None)
        split[version] = split.get(version, 0.0) + share.percent
    return split


def _predict_url(url: str, model: str) -> str:
    # A bare server URL gets the model path; a URL with a path is the model's v1 URL.
    if urllib.parse.urlsplit(url).path.strip("/"):
        return url.rstrip("/") + ":predict"
    return f"{url.rstrip('/')}/v1/models/{model}:predict"


class TrafficGenerator(Component):
    """Sends predict requests at a rate, split by the target's traffic, from threads.

    `target` is the object the router follows (an InferenceService, a Knative Service or
    a VirtualService); `routes` maps its destinations to URLs: either a model server's
    base URL (the model name is then `target.name`) or a model's v1 URL
    (`ModelVersion.model_url`). `rng` draws arrivals, versions and instances; it is used
    by the scheduling thread only. `instances` are the inputs sent, one per request
    (default: the iris rows, so the versions can score their predictions).

    One scheduling thread keeps the Poisson schedule and hands requests to `workers`
    threads; when all of them are busy a request is shed rather than delayed, so a slow
    version cannot hold back the others' arrivals. A separate thread re-reads the split.
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        target: ObjectRef,
        routes: Mapping[str, str],
        rate_rps: float,
        rng: np.random.Generator,
        time_scale: float = 1.0,
        *,
        instances: Sequence[Sequence[float]] | None = None,
        workers: int = 8,
        refresh_s: float = 0.25,
        max_wall_rps: float = 300.0,
        timeout_s: float = 10.0,
    ) -> None:
        if not supported(target):
            raise ValueError(f"{target}: no known traffic router for {target.api_version}")
        if not (rate_rps > 0 and time_scale > 0 and max_wall_rps > 0 and workers > 0):
            raise ValueError("rate_rps, time_scale, max_wall_rps and workers must be positive")
        self._objects = kubernetes.client.CustomObjectsApi(api_client)
        self.target = target
        self._urls = {
            version: _predict_url(url, target.name) for version, url in dict(routes).items()
        }
        wall = min(rate_rps * time_scale, max_wall_rps)
        self.rate = Rate(wall / time_scale, wall, time_scale)
        self._rng = rng
        if instances is None:
            from local import servers  # noqa: PLC0415  # sklearn: only when needed

            instances = servers.iris().features.tolist()
        self._bodies = [
            json.dumps({"instances": [list(map(float, x))]}).encode() for x in instances
        ]
        if not self._bodies:
            raise ValueError("instances must not be empty")
        self._refresh_s = refresh_s
        self._timeout_s = timeout_s
        self._workers = workers
        self._http = urllib3.PoolManager(
            num_pools=max(len(self._urls), 1) + 1,
            maxsize=workers,
            retries=False,
            timeout=urllib3.Timeout(total=timeout_s),
            headers={"Content-Type": "application/json"},
        )
        self._lock = threading.Lock()
        self._split_changed = threading.Condition(self._lock)
        self._split: dict[str | None, float] | None = None
        self._sent: dict[str, int] = {}
        self._responses: dict[str, dict[int, int]] = {}
        self._unrouted = self._shed = self._reads = self._read_errors = 0
        self._slots = threading.BoundedSemaphore(workers)
        self._stop = threading.Event()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []

    # The split --------------------------------------------------------------------------

    def refresh(self) -> dict[str, float] | None:
        """Read the target now and route by what it says; return the split, as `split()`.

        A failed read keeps the last split (the router keeps routing while the API server
        is away); a missing object routes nothing.
        """
        t = self.target
        try:
            obj = self._objects.get_namespaced_custom_object(
                t.group, t.version, t.namespace, t.plural, t.name, _request_timeout=2.0
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as e:
            with self._lock:
                self._read_errors += 1
                if isinstance(e, ApiException) and e.status == 404:
                    self._split = None
                    self._split_changed.notify_all()
        else:
            split = route_split(read_split(t, obj if isinstance(obj, Mapping) else {}), self._urls)
            with self._lock:
                self._reads += 1
                self._split = split
                self._split_changed.notify_all()
        return self.split()

    def split(self) -> dict[str, float] | None:
        """The routed split in force, percent per version; None before the first read."""
        with self._lock:
            if self._split is None:
                return None
            return {v: p for v, p in self._split.items() if v is not None}

    def wait_for_split(self, expected: Mapping[str, float], timeout: float = 5.0) -> bool:
        """Wait until the split in force equals `expected` (zero shares ignored)."""
        want = {v: float(p) for v, p in expected.items() if p}

        def reached() -> bool:
            current = self._split or {}
            return {v: p for v, p in current.items() if v is not None and p} == want

        with self._split_changed:
            return self._split_changed.wait_for(reached, timeout)

    def _watch_split(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self.refresh()

    # Sending ----------------------------------------------------------------------------

    def _choose(self, split: Mapping[str | None, float] | None) -> str | None:
        if not split:
            return None
        total = sum(split.values())
        if total <= 0:
            return None
        u = float(self._rng.random()) * max(total, 100.0)
        for version, percent in split.items():
            u -= percent
            if u < 0:
                return version
        return None  # shares summing to under 100: the rest goes nowhere

    def _send(self, version: str, body: bytes) -> None:
        try:
            response = self._http.request(
                "POST", self._urls[version], body=body, preload_content=True
            )
            code = response.status
        except urllib3.exceptions.HTTPError as e:
            log.debug("traffic: %s unreachable: %s", version, e)
            code = NO_RESPONSE
        finally:
            self._slots.release()
        with self._lock:
            codes = self._responses.setdefault(version, {})
            codes[code] = codes.get(code, 0) + 1

    def _schedule(self) -> None:
        assert self._pool is not None
        mean_gap = 1.0 / self.rate.wall_rps
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += float(self._rng.exponential(mean_gap))
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            if delay < -1.0:
                next_at = time.monotonic()  # fell a second behind: resume, don't burst
            with self._lock:
                split = self._split
            version = self._choose(split)
            body = self._bodies[int(self._rng.integers(len(self._bodies)))]
            if version is None:
                with self._lock:
                    self._unrouted += 1
                continue
            if not self._slots.acquire(blocking=False):
                with self._lock:
                    self._shed += 1
                continue
            with self._lock:
                self._sent[version] = self._sent.get(version, 0) + 1
            self._pool.submit(self._send, version, body)

    # Lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Read the split once (so the first requests are routed), then start sending."""
        self._stop.clear()
        self.refresh()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self._workers, thread_name_prefix="traffic-send"
        )
        self._threads = [
            threading.Thread(target=self._watch_split, name="traffic-split", daemon=True),
            threading.Thread(target=self._schedule, name="traffic-schedule", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop sending; wait for the requests in flight (at most the request timeout)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._timeout_s)
        self._threads = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._http.clear()

    def stats(self) -> TrafficStats:
        """A snapshot of the counts so far."""
        with self._lock:
            return TrafficStats(
                sent=dict(self._sent),
                responses={v: dict(c) for v, c in self._responses.items()},
                unrouted=self._unrouted,
                shed=self._shed,
                split_reads=self._reads,
                split_errors=self._read_errors,
                split=None
                if self._split is None
                else {v: p for v, p in self._split.items() if v is not None},
            )
