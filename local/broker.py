"""The local broker: Knative's Broker and Triggers, played on one machine by the very manifests.

`LocalBroker` is an HTTP ingress on 127.0.0.1 (its URL is what the functions get as `K_SINK`)
that accepts CloudEvents in binary and structured mode, answers 202, and delivers each event in
binary mode to the subscriber of every Trigger whose filters match it, retrying and dead-lettering
as the Broker's `spec.delivery` says. `Trigger.from_manifest` and `DeliverySpec.from_manifest`
read the manifests in `eventing/`; the filter semantics and the retry schedule follow Knative
Eventing's own broker (legacy `filter.attributes`, the `filters` dialects of new-trigger-filters,
go-retryablehttp's backoff count). An event log records every accepted event and every delivery
attempt, so a local run can show, and keep, what travelled where.
"""

from __future__ import annotations

import datetime
import http.server
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Protocol, Self

import requests
import yaml
from cloudevents.conversion import to_json
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http

from functions.adapters.sink import binary_http
from local.lifecycle import Component

log = logging.getLogger(__name__)

Attributes = Mapping[str, str]
Predicate = Callable[[Attributes], bool]

# Knative Eventing's SelectiveRetry (pkg/kncloudevents/retries.go, knative-v1.22.0) retries
# connection errors, 5xx and these 4xx: 404 (a pod becoming ready), 408, 409 and 429. The
# functions answer a permanent error with 422, which goes straight to the dead-letter sink.
RETRIED_CLIENT_ERRORS: Final = frozenset({404, 408, 409, 429})
# Knative Serving's default revision timeout: how long a function may take to answer.
_DEFAULT_REQUEST_TIMEOUT: Final = 300.0
_DIALECTS: Final = ("exact", "prefix", "suffix", "all", "any", "not", "cesql")
_DURATION = re.compile(
    r"P(?:(?P<W>\d+(?:[.,]\d+)?)W)?(?:(?P<D>\d+(?:[.,]\d+)?)D)?"
    r"(?:T(?:(?P<H>\d+(?:[.,]\d+)?)H)?(?:(?P<M>\d+(?:[.,]\d+)?)M)?(?:(?P<S>\d+(?:[.,]\d+)?)S)?)?"
)
_SECONDS_PER: Final = {"W": 604800.0, "D": 86400.0, "H": 3600.0, "M": 60.0, "S": 1.0}


class ManifestError(ValueError):
    """A Broker, Trigger or source manifest the local run cannot play; the message names it."""


class ActivationError(RuntimeError):
    """A subscriber scaled to zero could not be started; the attempt counts as failed."""


class Activator(Protocol):
    """What stands between the broker and subscribers that scale to zero (Knative's
    activator): `hold(url)` returns once the subscriber at `url` can take a request, starting
    it if need be, and keeps it from being stopped until the block exits."""

    def hold(self, url: str) -> AbstractContextManager[None]: ...


def parse_duration(text: str) -> float:
    """Seconds in an ISO-8601 duration such as `PT0.5S`, `PT1M30S` or `P1D`.

    Years and months are refused: they have no fixed length, and no delivery delay needs them.
    """
    upper = text.strip().upper() if isinstance(text, str) else ""
    match = _DURATION.fullmatch(upper)
    if match is None or upper in ("P", "PT") or upper.endswith("T"):
        raise ManifestError(
            f"{text!r} is not an ISO-8601 duration of weeks, days, hours, minutes and seconds "
            "(e.g. PT0.5S, PT2M, P1D)"
        )
    return sum(
        float(value.replace(",", ".")) * _SECONDS_PER[unit]
        for unit, value in match.groupdict().items()
        if value is not None
    )


@dataclass(frozen=True)
class DeliverySpec:
    """`spec.delivery` of a Broker or Trigger: how often and how patiently to retry.

    The wait before retry n (n = 0 for the first) is `backoff_delay * 2**n` (exponential) or
    `backoff_delay * n` (linear), as Knative's dispatcher computes it with go-retryablehttp.
    """

    retry: int = 0
    backoff_policy: str = "exponential"
    backoff_delay: float = 0.0
    timeout: float | None = None

    @classmethod
    def from_manifest(cls, delivery: Mapping[str, Any] | None, where: str) -> DeliverySpec:
        delivery = delivery or {}
        retry = delivery.get("retry", 0)
        if not isinstance(retry, int) or retry < 0:
            raise ManifestError(f"{where}: delivery.retry must be a non-negative integer")
        policy = delivery.get("backoffPolicy", "exponential")
        if policy not in ("exponential", "linear"):
            raise ManifestError(f"{where}: delivery.backoffPolicy must be linear or exponential")
        try:
            delay = parse_duration(delivery["backoffDelay"]) if "backoffDelay" in delivery else 0
            timeout = parse_duration(delivery["timeout"]) if "timeout" in delivery else None
        except ManifestError as e:
            raise ManifestError(f"{where}: delivery: {e}") from None
        return cls(retry, policy, delay, timeout)

    def backoff(self, retries_done: int) -> float:
        """Seconds to wait before the retry that follows `retries_done` earlier retries."""
        if self.backoff_policy == "linear":
            return self.backoff_delay * retries_done
        return self.backoff_delay * 2.0**retries_done


def _string_map(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ManifestError(f"{where} must map attribute names to strings")
    return {k: "" if v is None else str(v) for k, v in value.items()}


def _compile(spec: object, where: str) -> Predicate:
    """One `filters` entry (a SubscriptionsAPI filter) as a predicate over event attributes."""
    if not isinstance(spec, Mapping) or len(spec) != 1:
        found = sorted(spec) if isinstance(spec, Mapping) else type(spec).__name__
        raise ManifestError(f"{where}: a filter has exactly one of {', '.join(_DIALECTS)}: {found}")
    ((dialect, argument),) = spec.items()
    here = f"{where}.{dialect}"
    if dialect in ("exact", "prefix", "suffix"):
        pairs = _string_map(argument, here)
        if len(pairs) > 1:
            # Knative's webhook refuses this too; `all` says it without ambiguity.
            raise ManifestError(f"{here}: one attribute per {dialect} filter; combine with all")
        tests: dict[str, Callable[[str, str], bool]] = {
            "exact": lambda actual, wanted: actual == wanted,
            "prefix": lambda actual, wanted: actual.startswith(wanted),
            "suffix": lambda actual, wanted: actual.endswith(wanted),
        }
        test = tests[dialect]
        return lambda attrs: all(k in attrs and test(attrs[k], v) for k, v in pairs.items())
    if dialect in ("all", "any"):
        if not isinstance(argument, list):
            raise ManifestError(f"{here} must be a list of filters")
        parts = [_compile(item, f"{here}[{i}]") for i, item in enumerate(argument)]
        if dialect == "all":
            return _all(parts)
        return lambda attrs: any(part(attrs) for part in parts)
    if dialect == "not":
        inner = _compile(argument, here)
        return lambda attrs: not inner(attrs)
    if dialect == "cesql":
        raise ManifestError(
            f"{here}: CESQL is not played by the local broker; "
            "say it with exact, prefix, suffix, all, any and not"
        )
    raise ManifestError(f"{where}: unknown filter dialect {dialect!r}; expected {_DIALECTS}")


def _all(parts: Sequence[Predicate]) -> Predicate:
    return lambda attrs: all(part(attrs) for part in parts)


def _legacy(attributes: Mapping[str, str]) -> Predicate:
    # An empty value is Knative's "any": the attribute must be present, with whatever value.
    return lambda attrs: all(
        k in attrs and (v == "" or attrs[k] == v) for k, v in attributes.items()
    )


@dataclass(frozen=True)
class Trigger:
    """A Trigger manifest, compiled: which events it selects and which Service receives them."""

    name: str
    broker: str
    subscriber: str | None
    uri: str | None
    matches: Predicate = field(compare=False, repr=False)
    delivery: DeliverySpec | None = None

    @classmethod
    def from_manifest(cls, doc: Mapping[str, Any]) -> Trigger:
        name = str((doc.get("metadata") or {}).get("name") or "<unnamed>")
        where = f"Trigger {name}"
        if doc.get("kind") != "Trigger":
            raise ManifestError(f"{where}: kind is {doc.get('kind')!r}, not Trigger")
        spec = doc.get("spec") or {}
        matches: Predicate
        if "filters" in spec:
            # With new-trigger-filters on, `filters` wins and a legacy `filter` is ignored.
            filters = spec["filters"]
            if not isinstance(filters, list):
                raise ManifestError(f"{where}: spec.filters must be a list")
            parts = [_compile(f, f"{where}: spec.filters[{i}]") for i, f in enumerate(filters)]
            matches = _all(parts)
        else:
            legacy = (spec.get("filter") or {}).get("attributes") or {}
            matches = _legacy(_string_map(legacy, f"{where}: spec.filter.attributes"))
        subscriber = spec.get("subscriber") or {}
        ref = (subscriber.get("ref") or {}).get("name")
        uri = subscriber.get("uri")
        if not ref and not uri:
            raise ManifestError(f"{where}: spec.subscriber needs a ref or a uri")
        delivery = (
            DeliverySpec.from_manifest(spec["delivery"], where) if spec.get("delivery") else None
        )
        return cls(name, str(spec.get("broker", "default")), ref, uri, matches, delivery)


def load_manifests(*paths: Path | str) -> list[dict[str, Any]]:
    """Every YAML document in the given files and directories (`*.yaml`, `*.yml`), in order."""
    documents: list[dict[str, Any]] = []
    for path in map(Path, paths):
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
        for file in files:
            for doc in yaml.safe_load_all(file.read_text(encoding="utf-8")):
                if doc is None:
                    continue
                if not isinstance(doc, dict):
                    raise ManifestError(f"{file}: a document is not a mapping")
                documents.append(doc)
    return documents


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def event_json(event: CloudEvent) -> dict[str, Any]:
    """The event in its structured-mode JSON form (binary data as `data_base64`)."""
    result: dict[str, Any] = json.loads(to_json(event))
    return result


@dataclass(frozen=True)
class _Route:
    trigger: Trigger
    url: str
    delivery: DeliverySpec
    # None tells a worker to exit; daemon workers, so a hung subscriber never blocks exit.
    queue: queue.SimpleQueue[CloudEvent | None] = field(compare=False)


class _Ingress(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _IngressServer

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length")
        if length is None:
            self._answer(411, "a CloudEvent POST needs a Content-Length")
            return
        body = self.rfile.read(int(length))
        headers = dict(self.headers.items())
        try:
            event = from_http(headers, body)
        except (GenericException, ValueError) as e:
            self._answer(400, f"not a CloudEvent: {e}")
            return
        binary = any(k.lower() == "ce-specversion" for k in headers)
        if not self.server.broker.accept(event, "binary" if binary else "structured"):
            self._answer(503, "the broker is stopping")
            return
        self._answer(202, "")

    def _answer(self, status: int, message: str) -> None:
        payload = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("ingress: " + format, *args)


class _IngressServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    broker: LocalBroker


class LocalBroker(Component):
    """A Knative Broker on 127.0.0.1: ingress, Trigger routing, retries, dead letters, a log.

    `subscribers` maps a Trigger's `subscriber.ref.name` (a Knative Service) to the URL that
    serves it locally, e.g. `{"arbiter-start": "http://127.0.0.1:8081/"}`. Each Trigger has its
    own pool of delivery threads, so a slow or failing subscriber never holds up another; a
    subscriber also receives several events at once, as from Knative's dispatcher.
    `time_scale` divides every backoff delay (a run compressed N-fold retries N times sooner).
    With an `activator`, each delivery attempt first waits for the subscriber to be up (it
    may be scaled to zero), as Knative's activator buffers requests while a revision starts.
    """

    def __init__(
        self,
        triggers: Sequence[Trigger],
        subscribers: Mapping[str, str],
        *,
        delivery: DeliverySpec | None = None,
        name: str | None = None,
        time_scale: float = 1.0,
        dead_letter_path: Path | str | None = None,
        event_log_path: Path | str | None = None,
        workers_per_trigger: int = 8,
        retried_client_errors: frozenset[int] = RETRIED_CLIENT_ERRORS,
        host: str = "127.0.0.1",
        port: int = 0,
        activator: Activator | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self._triggers = [t for t in triggers if name is None or t.broker == name]
        for trigger in triggers:
            if trigger not in self._triggers:
                log.info("trigger %s is for broker %s, not %s", trigger.name, trigger.broker, name)
        self._subscribers = dict(subscribers)
        self._delivery = delivery or DeliverySpec()
        self._time_scale = time_scale
        self._dead_letter_path = Path(dead_letter_path) if dead_letter_path else None
        self._event_log_path = Path(event_log_path) if event_log_path else None
        self._workers = workers_per_trigger
        self._retried = retried_client_errors
        self._activator = activator
        self._address = (host, port)
        self._routes: list[_Route] = []
        self._delivery_threads: list[threading.Thread] = []
        for trigger in self._triggers:
            self._resolve(trigger)  # fail at construction, before anything listens
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._records: list[dict[str, Any]] = []
        self._dead_letters: list[dict[str, Any]] = []
        self._files: dict[str, IO[str]] = {}
        self._stopping = threading.Event()
        self._server: _IngressServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_manifests(
        cls,
        documents: Iterable[Mapping[str, Any]],
        subscribers: Mapping[str, str],
        *,
        broker: str | None = None,
        **options: Any,
    ) -> LocalBroker:
        """A broker for the Broker document named `broker` (or the only one) and its Triggers.

        With no Broker document every Trigger is played, with Knative's default delivery
        (no retries).
        """
        documents = list(documents)
        brokers = [d for d in documents if d.get("kind") == "Broker"]
        if broker is not None:
            brokers = [d for d in brokers if (d.get("metadata") or {}).get("name") == broker]
        if len(brokers) > 1:
            names = [(d.get("metadata") or {}).get("name") for d in brokers]
            raise ManifestError(f"several Broker manifests ({names}); say which one to play")
        delivery = None
        if brokers:
            broker = str((brokers[0].get("metadata") or {}).get("name"))
            spec = brokers[0].get("spec") or {}
            delivery = DeliverySpec.from_manifest(spec.get("delivery"), f"Broker {broker}")
        triggers = [Trigger.from_manifest(d) for d in documents if d.get("kind") == "Trigger"]
        return cls(triggers, subscribers, delivery=delivery, name=broker, **options)

    def _resolve(self, trigger: Trigger) -> str:
        if trigger.subscriber is None:
            assert trigger.uri is not None
            return trigger.uri
        url = self._subscribers.get(trigger.subscriber)
        if url is None:
            raise ManifestError(
                f"Trigger {trigger.name}: no local URL for subscriber Service "
                f"{trigger.subscriber!r} (known: {sorted(self._subscribers)})"
            )
        if trigger.uri:  # a ref plus a relative uri: Knative appends the path
            url = url.rstrip("/") + "/" + trigger.uri.lstrip("/")
        return url

    @property
    def url(self) -> str:
        """The ingress address (`K_SINK` for the functions and the sources)."""
        if self._server is None:
            raise RuntimeError("the broker is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    @property
    def triggers(self) -> tuple[Trigger, ...]:
        return tuple(self._triggers)

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("the broker is already running")
        self._stopping.clear()
        self._routes = [
            _Route(
                trigger,
                self._resolve(trigger),
                trigger.delivery or self._delivery,
                queue.SimpleQueue(),
            )
            for trigger in self._triggers
        ]
        self._delivery_threads = [
            threading.Thread(
                target=self._work, args=(route,), name=f"deliver-{route.trigger.name}", daemon=True
            )
            for route in self._routes
            for _ in range(self._workers)
        ]
        for thread in self._delivery_threads:
            thread.start()
        for key, path in (("log", self._event_log_path), ("dead", self._dead_letter_path)):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._files[key] = path.open("a", encoding="utf-8")
        self._server = _IngressServer(self._address, _Ingress)
        self._server.broker = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.name = "broker-ingress"
        self._thread.start()
        log.info("broker listening on %s with %d triggers", self.url, len(self._routes))
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, abandon waiting retries, and wait up to `timeout` for deliveries."""
        with self._lock:
            self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        for route in self._routes:
            for _ in range(self._workers):
                route.queue.put(None)
        # Queued deliveries are abandoned at once; only a request in flight can take longer.
        deadline = time.monotonic() + timeout
        for thread in self._delivery_threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._delivery_threads = []
        with self._lock:
            for file in self._files.values():
                file.close()
            self._files.clear()
        self._server = self._thread = None
        self._routes = []

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no delivery is pending (or retrying); False if `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def records(self) -> list[dict[str, Any]]:
        """The event log so far: `accepted` events and `delivery` attempts, oldest first."""
        with self._lock:
            return list(self._records)

    def dead_letters(self) -> list[dict[str, Any]]:
        """Events no delivery could place, with their trigger, last status and attempts."""
        with self._lock:
            return list(self._dead_letters)

    def accept(self, event: CloudEvent, mode: str = "binary") -> bool:
        """Route one event, as the ingress does; False once the broker is stopping."""
        attrs = {k: str(v) for k, v in event.get_attributes().items()}
        routes = [r for r in self._routes if r.trigger.matches(attrs)]
        record = {
            "record": "accepted",
            "mode": mode,
            "triggers": [r.trigger.name for r in routes],
            "event": event_json(event),
        }
        # One critical section with stop(): an event is either refused or queued ahead of the
        # workers' exit sentinels, so it is never stranded.
        with self._lock:
            if self._stopping.is_set():
                return False
            self._append(record)
            self._pending += len(routes)
            for route in routes:
                route.queue.put(event)
        return True

    def _work(self, route: _Route) -> None:
        while (event := route.queue.get()) is not None:
            try:
                self._deliver(route, event)
            except Exception:
                log.exception("delivery of %s to %s crashed", event["id"], route.trigger.name)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _record(self, record: dict[str, Any], dead: bool = False) -> None:
        with self._lock:
            self._append(record, dead)

    def _append(self, record: dict[str, Any], dead: bool = False) -> None:
        """Log `record` (the caller holds the lock), in memory and in its JSONL file if any."""
        record = {"at": _now(), **record}
        (self._dead_letters if dead else self._records).append(record)
        file = self._files.get("dead" if dead else "log")
        if file is not None:
            file.write(json.dumps(record, default=str) + "\n")
            file.flush()

    def _deliver(self, route: _Route, event: CloudEvent) -> None:
        headers, body = binary_http(event)
        spec = route.delivery
        timeout = spec.timeout or _DEFAULT_REQUEST_TIMEOUT
        base = {"id": event["id"], "type": event["type"], "trigger": route.trigger.name}
        attempt, status, error = 0, None, None
        if self._stopping.is_set():
            self._record({"record": "abandoned", **base, "attempts": attempt})
            return
        while True:
            attempt += 1
            started = time.monotonic()
            hold = self._activator.hold(route.url) if self._activator else nullcontext()
            try:
                with hold:
                    response = requests.post(route.url, headers=headers, data=body, timeout=timeout)
                status, error = response.status_code, None
            except (requests.RequestException, ActivationError) as e:
                status, error = None, f"{type(e).__name__}: {e}"
            delivered = status is not None and 200 <= status < 300
            retryable = status is None or status >= 500 or status in self._retried
            again = not delivered and retryable and attempt <= spec.retry
            outcome = "delivered" if delivered else "retry" if again else "failed"
            self._record(
                {
                    "record": "delivery",
                    **base,
                    "subscriber": route.url,
                    "attempt": attempt,
                    "status": status,
                    "error": error,
                    "seconds": round(time.monotonic() - started, 4),
                    "outcome": outcome,
                }
            )
            if not again:
                break
            if self._stopping.wait(spec.backoff(attempt - 1) / self._time_scale):
                self._record({"record": "abandoned", **base, "attempts": attempt})
                return
        if not delivered:
            self._record(
                {
                    **base,
                    "subscriber": route.url,
                    "status": status,
                    "error": error,
                    "attempts": attempt,
                    "event": event_json(event),
                },
                dead=True,
            )
            log.warning(
                "dead letter: %s %s to trigger %s after %d attempt(s), last %s",
                event["type"],
                event["id"],
                route.trigger.name,
                attempt,
                status if status is not None else error,
            )
