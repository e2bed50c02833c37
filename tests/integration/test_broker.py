"""The local broker and source players over real HTTP: routing, retries, dead letters, sources.

Subscribers are small threading HTTP servers that record what they receive and answer from a
script; the ApiServerSource watches the project's Kubernetes API emulator.
"""

from __future__ import annotations

import collections
import http.server
import itertools
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from functions.core import control, events
from local.broker import (
    RETRIED_CLIENT_ERRORS,
    DeliverySpec,
    LocalBroker,
    ManifestError,
    Trigger,
    load_manifests,
    parse_duration,
)
from local.sources import ApiServerSourcePlayer, PingSourcePlayer, schedule_minutes

EVENTING = Path(__file__).resolve().parents[2] / "eventing"
WAIT = 5.0  # generous upper bound for anything that should happen in milliseconds


@dataclass(frozen=True)
class Received:
    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def type(self) -> str:
        return self.headers["ce-type"]


class Subscriber:
    """A Knative Service stand-in: records every POST and answers from a script of statuses.

    After the script runs out it answers `default`. While `gate` is clear, requests are held
    (in their own threads) until it is set, so tests can keep a subscriber busy.
    """

    def __init__(self, statuses: Sequence[int] = (), default: int = 200) -> None:
        self.script = collections.deque(statuses)
        self.default = default
        self.gate = threading.Event()
        self.gate.set()
        self.received: list[Received] = []
        self._changed = threading.Condition()
        subscriber = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with subscriber._changed:
                    subscriber.received.append(Received(time.monotonic(), headers, body))
                    status = (
                        subscriber.script.popleft() if subscriber.script else subscriber.default
                    )
                    subscriber._changed.notify_all()
                subscriber.gate.wait(WAIT)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def wait_for(self, count: int, timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.received) >= count, timeout)

    def types(self) -> list[str]:
        with self._changed:
            return [r.type for r in self.received]

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(WAIT)


SubscriberFactory = Callable[..., Subscriber]
BrokerFactory = Callable[..., LocalBroker]


@pytest.fixture
def subscriber() -> Iterator[SubscriberFactory]:
    made: list[Subscriber] = []

    def make(statuses: Sequence[int] = (), default: int = 200) -> Subscriber:
        made.append(Subscriber(statuses, default))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def broker() -> Iterator[BrokerFactory]:
    """Build and start a broker from Trigger documents (or `manifests=`); stopped at teardown."""
    made: list[LocalBroker] = []

    def make(
        triggers: Sequence[Mapping[str, Any]] = (),
        subscribers: Mapping[str, str] | None = None,
        manifests: Sequence[Mapping[str, Any]] | None = None,
        **options: Any,
    ) -> LocalBroker:
        if manifests is None:
            compiled = [Trigger.from_manifest(t) for t in triggers]
            made.append(LocalBroker(compiled, subscribers or {}, **options))
        else:
            made.append(LocalBroker.from_manifests(manifests, subscribers or {}, **options))
        return made[-1].start()

    yield make
    for b in made:
        b.stop()


def trigger(
    name: str,
    *,
    filters: list[Any] | None = None,
    attributes: Mapping[str, str] | None = None,
    delivery: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Trigger document in the shape of eventing/triggers.yaml, subscribing Service `name`."""
    spec: dict[str, Any] = {
        "broker": "arbiter",
        "subscriber": {
            "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": name}
        },
    }
    if filters is not None:
        spec["filters"] = filters
    if attributes is not None:
        spec["filter"] = {"attributes": dict(attributes)}
    if delivery is not None:
        spec["delivery"] = dict(delivery)
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name, "namespace": "arbiter-system"},
        "spec": spec,
    }


def of_type(*types: str) -> list[Any]:
    return [{"any": [{"exact": {"type": t}} for t in types]}]


def event(event_type: str, data: Any = None, **extensions: str) -> CloudEvent:
    attributes = {"type": event_type, "source": "tests/broker", **extensions}
    return CloudEvent(attributes, {"n": 1} if data is None else data)


def post(broker: LocalBroker, ce: CloudEvent, structured: bool = False) -> requests.Response:
    headers, body = to_structured(ce) if structured else to_binary(ce)
    return requests.post(broker.url, headers=headers, data=body, timeout=WAIT)


def deliveries(broker: LocalBroker) -> list[dict[str, Any]]:
    return [r for r in broker.records() if r["record"] == "delivery"]


def test_routes_each_event_type_by_the_real_trigger_manifests(
    broker: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    stages = {stage: subscriber() for stage in events.TRIGGERS}
    b = broker(
        manifests=load_manifests(EVENTING),
        subscribers={f"arbiter-{stage}": s.url for stage, s in stages.items()},
    )
    assert sorted(t.name for t in b.triggers) == sorted(f"arbiter-{s}" for s in events.TRIGGERS)
    ref = events.ExperimentRef("team-a", "exp-1", "uid-1")
    every_type = sorted({t for types in events.TRIGGERS.values() for t in types})
    for event_type in [*every_type, "dev.example.unrelated"]:
        ce = events.make_event(event_type, ref, 3, {"about": event_type})
        assert post(b, ce).status_code == 202
    assert b.drain(WAIT)

    for stage, s in stages.items():
        assert sorted(s.types()) == sorted(events.TRIGGERS[stage]), stage
    # Delivered in binary mode, attributes, extensions and data intact.
    start = stages["start"].received[0]
    assert start.headers["ce-experimentname"] == "exp-1"
    assert start.headers["ce-iteration"] == "3"
    assert json.loads(start.body) == {"about": start.type}
    accepted = [r for r in b.records() if r["record"] == "accepted"]
    unrouted = [r for r in accepted if r["event"]["type"] == "dev.example.unrelated"]
    assert unrouted[0]["triggers"] == []
    assert {r["outcome"] for r in deliveries(b)} == {"delivered"}


def test_only_the_control_sources_experiment_updates_reach_iterate(
    broker: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    """An Experiment update reaches iterate only with the extension the arbiter-control
    source adds (eventing/apiserversource.yaml); the other source's updates, one per status
    write of any Experiment, reach nobody."""
    stages = {stage: subscriber() for stage in events.TRIGGERS}
    b = broker(
        manifests=load_manifests(EVENTING),
        subscribers={f"arbiter-{stage}": s.url for stage, s in stages.items()},
    )
    obj = {"metadata": {"name": "exp-1", "namespace": "team-a"}}
    plain = CloudEvent({"type": events.APISERVER_UPDATE, "source": "https://10.96.0.1"}, obj)
    marked = CloudEvent(
        {
            "type": events.APISERVER_UPDATE,
            "source": "https://10.96.0.1",
            control.EXTENSION: control.EXTENSION_VALUE,
        },
        obj,
    )
    for ce in (plain, marked):
        assert post(b, ce).status_code == 202
    assert b.drain(WAIT)
    assert stages["iterate"].types() == [events.APISERVER_UPDATE]
    (got,) = stages["iterate"].received
    assert got.headers[f"ce-{control.EXTENSION}"] == control.EXTENSION_VALUE
    assert all(not stages[s].types() for s in ("start", "assess", "finish"))


def test_legacy_attribute_filters_match_attributes_and_extensions(
    broker: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    exact, anyvalue, everything = subscriber(), subscriber(), subscriber()
    b = broker(
        [
            trigger("exact", attributes={"type": events.MEASURED, "experimentname": "exp-a"}),
            trigger("anyvalue", attributes={"experimentname": ""}),  # Knative's "any"
            trigger("everything"),
        ],
        {"exact": exact.url, "anyvalue": anyvalue.url, "everything": everything.url},
    )
    post(b, event(events.MEASURED, experimentname="exp-a"))
    post(b, event(events.MEASURED, experimentname="exp-b"))
    post(b, event(events.ASSESSED, experimentname="exp-a"))
    post(b, event(events.MEASURED))
    assert b.drain(WAIT)

    assert [r.headers["ce-experimentname"] for r in exact.received] == ["exp-a"]
    assert len(anyvalue.received) == 3
    assert len(everything.received) == 4


ATTRS = {"type": "dev.arbiter.experiment.measured", "source": "arbiter.dev/functions/iterate"}


@pytest.mark.parametrize(
    ("filters", "attrs", "expected"),
    [
        ([{"exact": {"type": ATTRS["type"]}}], ATTRS, True),
        ([{"exact": {"type": "dev.arbiter.experiment"}}], ATTRS, False),
        ([{"exact": {"iteration": "1"}}], ATTRS, False),  # absent attribute
        ([{"exact": {"iteration": "1"}}], {**ATTRS, "iteration": "1"}, True),
        ([{"prefix": {"type": "dev.arbiter."}}], ATTRS, True),
        ([{"prefix": {"type": "dev.knative."}}], ATTRS, False),
        ([{"suffix": {"source": "/iterate"}}], ATTRS, True),
        ([{"suffix": {"source": "/assess"}}], ATTRS, False),
        ([{"all": [{"prefix": {"type": "dev."}}, {"suffix": {"type": ".measured"}}]}], ATTRS, True),
        ([{"all": [{"prefix": {"type": "dev."}}, {"suffix": {"type": ".due"}}]}], ATTRS, False),
        (of_type(events.PING, events.MEASURED), ATTRS, True),
        (of_type(events.PING, events.DUE), ATTRS, False),
        ([{"not": {"exact": {"type": ATTRS["type"]}}}], ATTRS, False),
        ([{"not": {"exact": {"iteration": "1"}}}], ATTRS, True),
        ([{"not": {"any": [{"prefix": {"type": "dev.knative."}}]}}], ATTRS, True),
        # Several entries of `filters` must all match.
        ([{"prefix": {"type": "dev."}}, {"exact": {"source": "elsewhere"}}], ATTRS, False),
        ([], ATTRS, True),
    ],
)
def test_filters_dialects(filters: list[Any], attrs: dict[str, str], expected: bool) -> None:
    compiled = Trigger.from_manifest(trigger("t", filters=filters))
    assert compiled.matches(attrs) is expected


def test_filters_take_precedence_over_a_legacy_filter() -> None:
    doc = trigger("t", filters=of_type(events.PING), attributes={"type": events.MEASURED})
    compiled = Trigger.from_manifest(doc)
    assert compiled.matches({"type": events.PING})
    assert not compiled.matches({"type": events.MEASURED})


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ([{"cesql": "type = 'x'"}], "CESQL"),
        ([{"exact": {"type": "a"}, "prefix": {"type": "b"}}], "exactly one of"),
        ([{"exact": {"type": "a", "source": "b"}}], "one attribute per exact"),
        ([{"regex": {"type": "a"}}], "unknown filter dialect"),
        ([{"any": {"exact": {"type": "a"}}}], "must be a list"),
    ],
)
def test_unplayable_filters_are_refused_naming_the_trigger(
    filters: list[Any], message: str
) -> None:
    with pytest.raises(ManifestError, match=message) as info:
        Trigger.from_manifest(trigger("arbiter-odd", filters=filters))
    assert "Trigger arbiter-odd" in str(info.value)


def test_a_subscriber_without_a_local_url_is_refused() -> None:
    with pytest.raises(ManifestError, match="arbiter-finish"):
        LocalBroker([Trigger.from_manifest(trigger("arbiter-finish"))], {"arbiter-start": "x"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT0.5S", 0.5),
        ("PT1M30S", 90.0),
        ("PT2H", 7200.0),
        ("P1D", 86400.0),
        ("P1W", 604800.0),
        ("P1DT1S", 86401.0),
        ("pt0,25s", 0.25),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "P", "PT", "5S", "P1Y", "P2M", "PT-1S", "P1DT", "PT1.S"])
def test_parse_duration_refuses_what_is_not_a_fixed_duration(text: str) -> None:
    with pytest.raises(ManifestError):
        parse_duration(text)


def test_backoff_schedule_follows_knative() -> None:
    broker_doc = next(d for d in load_manifests(EVENTING / "broker.yaml") if d["kind"] == "Broker")
    spec = DeliverySpec.from_manifest(broker_doc["spec"]["delivery"], "Broker arbiter")
    assert spec.retry == 5
    # eventing/broker.yaml promises 0.5, 1, 2, 4, 8 s.
    assert [spec.backoff(n) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    linear = DeliverySpec.from_manifest({"backoffPolicy": "linear", "backoffDelay": "PT2S"}, "x")
    assert [linear.backoff(n) for n in range(3)] == [0.0, 2.0, 4.0]
    with pytest.raises(ManifestError, match="Broker b: delivery"):
        DeliverySpec.from_manifest({"backoffDelay": "soon"}, "Broker b")


def test_retries_5xx_and_429_with_backoff_then_delivers(
    broker: BrokerFactory, subscriber: SubscriberFactory, tmp_path: Path
) -> None:
    flaky = subscriber([503, 429, 200])
    delivery = {"retry": 3, "backoffPolicy": "exponential", "backoffDelay": "PT2S"}
    b = broker(
        [trigger("flaky", delivery=delivery)],
        {"flaky": flaky.url},
        time_scale=20.0,  # waits 2/20 = 0.1 s, then 0.2 s
        dead_letter_path=tmp_path / "dead.jsonl",
    )
    post(b, event(events.MEASURED))
    assert b.drain(WAIT)

    times = [r.at for r in flaky.received]
    assert len(times) == 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert 0.09 <= gaps[0] < 0.6
    assert 0.19 <= gaps[1] < 0.8
    assert [(r["status"], r["outcome"]) for r in deliveries(b)] == [
        (503, "retry"),
        (429, "retry"),
        (200, "delivered"),
    ]
    assert b.dead_letters() == []
    assert (tmp_path / "dead.jsonl").read_text() == ""


def test_the_retried_client_errors_are_knative_eventings() -> None:
    """knative/eventing pkg/kncloudevents/retries.go, SelectiveRetry (knative-v1.22.0 and
    main after it, 8cf4c4b67): `statusCode >= 500 || statusCode == 404 || statusCode == 429
    || statusCode == 408 || statusCode == 409` retries; every other 4xx does not."""
    assert {404, 408, 409, 429} == RETRIED_CLIENT_ERRORS


@pytest.mark.parametrize("status", [404, 408, 409, 429, 500, 502, 503, 504])
def test_each_retried_status_is_retried_and_then_delivered(
    broker: BrokerFactory, subscriber: SubscriberFactory, status: int
) -> None:
    flaky = subscriber([status, 200])
    b = broker(
        [trigger("flaky", delivery={"retry": 2, "backoffDelay": "PT0.01S"})], {"flaky": flaky.url}
    )
    post(b, event(events.MEASURED))
    assert b.drain(WAIT)
    assert [(r["status"], r["outcome"]) for r in deliveries(b)] == [
        (status, "retry"),
        (200, "delivered"),
    ]


@pytest.mark.parametrize("status", [400, 401, 403, 410, 422])
def test_any_other_client_error_is_not_retried(
    broker: BrokerFactory, subscriber: SubscriberFactory, status: int
) -> None:
    refusing = subscriber([status, 200])
    b = broker(
        [trigger("refusing", delivery={"retry": 2, "backoffDelay": "PT0.01S"})],
        {"refusing": refusing.url},
    )
    post(b, event(events.MEASURED))
    assert b.drain(WAIT)
    assert [(r["status"], r["outcome"]) for r in deliveries(b)] == [(status, "failed")]
    assert len(refusing.received) == 1


def test_a_client_error_is_not_retried_and_goes_to_the_dead_letter_file(
    broker: BrokerFactory, subscriber: SubscriberFactory, tmp_path: Path
) -> None:
    refusing = subscriber(default=422)
    b = broker(
        [trigger("refusing", delivery={"retry": 3, "backoffDelay": "PT0.01S"})],
        {"refusing": refusing.url},
        dead_letter_path=tmp_path / "dead.jsonl",
        event_log_path=tmp_path / "events.jsonl",
    )
    ce = event(events.MEASURED, {"bad": True}, experimentname="exp-a")
    post(b, ce)
    assert b.drain(WAIT)

    assert len(refusing.received) == 1
    (line,) = (tmp_path / "dead.jsonl").read_text().splitlines()
    dead = json.loads(line)
    assert (dead["trigger"], dead["status"], dead["attempts"]) == ("refusing", 422, 1)
    assert dead["event"]["id"] == ce["id"]
    assert dead["event"]["experimentname"] == "exp-a"
    assert dead["event"]["data"] == {"bad": True}
    logged = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [r["record"] for r in logged] == ["accepted", "delivery"]
    assert logged[1]["outcome"] == "failed"


def test_dead_letter_after_exhausting_retries(
    broker: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    failing = subscriber(default=500)
    with socket.socket() as sock:  # a port nobody listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    delivery = {"retry": 2, "backoffPolicy": "linear", "backoffDelay": "PT0.01S"}
    b = broker(
        [trigger("failing", delivery=delivery), trigger("gone", delivery=delivery)],
        {"failing": failing.url, "gone": gone},
    )
    post(b, event(events.CONCLUDED))
    assert b.drain(WAIT)

    assert len(failing.received) == 3
    dead = {d["trigger"]: d for d in b.dead_letters()}
    assert (dead["failing"]["status"], dead["failing"]["attempts"]) == (500, 3)
    assert dead["gone"]["status"] is None
    assert dead["gone"]["attempts"] == 3
    assert "ConnectionError" in dead["gone"]["error"]


def test_structured_mode_input_is_delivered_in_binary_mode(
    broker: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    sink = subscriber()
    b = broker([trigger("sink")], {"sink": sink.url})
    ce = event(events.STARTED, {"weights": [90, 10]}, experimentname="exp-s")
    assert post(b, ce, structured=True).status_code == 202
    assert b.drain(WAIT)

    (got,) = sink.received
    assert got.headers["ce-id"] == ce["id"]
    assert got.headers["ce-type"] == events.STARTED
    assert got.headers["ce-experimentname"] == "exp-s"
    assert got.headers["content-type"] == "application/json"
    assert json.loads(got.body) == {"weights": [90, 10]}
    assert b.records()[0]["mode"] == "structured"


def test_non_json_data_passes_through_unchanged(
    broker: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    sink = subscriber()
    b = broker([trigger("sink")], {"sink": sink.url})
    ce = CloudEvent({"type": "t", "source": "s", "datacontenttype": "text/plain"}, "plain tëxt")
    post(b, ce)
    post(b, ce, structured=True)
    assert b.drain(WAIT)

    assert [(r.headers["content-type"], r.body) for r in sink.received] == [
        ("text/plain", "plain tëxt".encode()),
    ] * 2


def test_the_functions_sink_encodes_as_the_broker_delivers(
    broker: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    # One encoder for both: a text payload is not JSON-quoted by either, and JSON data
    # without a datacontenttype is said to be JSON.
    from functions.adapters.sink import HttpEventSink

    sink = subscriber()
    b = broker([trigger("sink")], {"sink": sink.url})
    text = CloudEvent({"type": "t", "source": "s", "datacontenttype": "text/plain"}, "plain tëxt")
    untyped = CloudEvent({"type": "t", "source": "s"}, {"weights": [90, 10]})
    for ce in (text, untyped):
        HttpEventSink(b.url).emit(ce)
    assert b.drain(WAIT)

    assert sorted((r.headers["content-type"], r.body) for r in sink.received) == [
        ("application/json", b'{"weights": [90, 10]}'),
        ("text/plain", "plain tëxt".encode()),
    ]


def test_only_the_triggers_of_the_played_broker_are_routed() -> None:
    broker_doc = {"kind": "Broker", "metadata": {"name": "arbiter"}, "spec": {}}
    other = trigger("other")
    other["spec"]["broker"] = "another-broker"
    played = LocalBroker.from_manifests(
        [broker_doc, trigger("mine"), other], {"mine": "http://x/", "other": "http://y/"}
    )
    assert [t.name for t in played.triggers] == ["mine"]


def test_what_is_not_a_cloudevent_is_refused(broker: BrokerFactory) -> None:
    b = broker()
    response = requests.post(b.url, data=b"{}", timeout=WAIT)
    assert response.status_code == 400
    assert "not a CloudEvent" in response.text
    assert b.records() == []


def test_a_slow_subscriber_does_not_delay_another(
    broker: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    slow, fast = subscriber(), subscriber()
    slow.gate.clear()
    b = broker([trigger("slow"), trigger("fast")], {"slow": slow.url, "fast": fast.url})
    post(b, event(events.MEASURED))
    post(b, event(events.MEASURED))

    assert fast.wait_for(2)
    # Both events are at the slow subscriber at once: deliveries to one trigger overlap too.
    assert slow.wait_for(2)
    assert not b.drain(0.05)  # the slow deliveries are still pending
    slow.gate.set()
    assert b.drain(WAIT)
    assert {r["outcome"] for r in deliveries(b)} == {"delivered"}


def test_stop_abandons_a_waiting_retry(
    broker: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    failing = subscriber(default=503)
    b = broker(
        [trigger("failing", delivery={"retry": 3, "backoffDelay": "PT60S"})],
        {"failing": failing.url},
    )
    post(b, event(events.MEASURED))
    assert failing.wait_for(1)
    started = time.monotonic()
    b.stop()
    assert time.monotonic() - started < 2.0
    assert any(r["record"] == "abandoned" for r in b.records())
    assert b.dead_letters() == []


@pytest.mark.parametrize(
    ("schedule", "minutes"), [("* * * * *", 1), ("*/1 * * * *", 1), ("*/15  * * * *", 15)]
)
def test_ping_schedules(schedule: str, minutes: int) -> None:
    assert schedule_minutes(schedule) == minutes


@pytest.mark.parametrize(
    "schedule", ["0 * * * *", "*/0 * * * *", "*/60 * * * *", "@every 1m", "* * * * 1", "*"]
)
def test_other_ping_schedules_are_refused(schedule: str) -> None:
    manifest = {"kind": "PingSource", "metadata": {"name": "p"}, "spec": {"schedule": schedule}}
    with pytest.raises(ManifestError, match="PingSource default/p"):
        PingSourcePlayer(manifest, "http://127.0.0.1:1/")


@pytest.mark.slow
def test_ping_cadence_under_time_scale(
    broker: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    iterate = subscriber()
    b = broker([trigger("iterate", filters=of_type(events.PING))], {"iterate": iterate.url})
    (manifest,) = load_manifests(EVENTING / "pingsource.yaml")
    player = PingSourcePlayer(manifest, b.url, time_scale=300.0)  # one minute -> 0.2 s
    assert player.period == pytest.approx(0.2)
    started = time.monotonic()
    with player:
        assert iterate.wait_for(5)
    assert iterate.received[0].at - started >= 0.18  # the first firing is one period away
    times = [r.at for r in iterate.received[:5]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert statistics.mean(gaps) == pytest.approx(0.2, abs=0.04)
    assert all(0.1 < gap < 0.35 for gap in gaps)
    first = iterate.received[0]
    assert (
        first.headers["ce-source"] == "/apis/v1/namespaces/arbiter-system/pingsources/arbiter-tick"
    )
    assert json.loads(first.body) == {"source": "arbiter-tick"}
    assert player.sent >= 5


def _experiment(name: str, namespace: str = "team-a") -> dict[str, Any]:
    return {
        "apiVersion": "arbiter.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"target": f"{namespace}/model"},
    }


@pytest.mark.slow
def test_apiserver_source_sends_add_update_delete_as_knative_does(
    broker: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    from kubernetes import client

    from local.kubeapi import KubeApiServer

    sink = subscriber()
    b = broker(
        [trigger("sink", filters=[{"prefix": {"type": "dev.knative.apiserver."}}])],
        {"sink": sink.url},
    )
    manifest = next(
        d
        for d in load_manifests(EVENTING / "apiserversource.yaml")
        if d["kind"] == "ApiServerSource"
    )
    group, version, plural = "arbiter.dev", "v1alpha1", "experiments"
    with KubeApiServer() as server, server.api_client() as api_client:
        api_server = server.url
        api = client.CustomObjectsApi(api_client)
        api.create_namespaced_custom_object(group, version, "team-a", plural, _experiment("old"))
        with ApiServerSourcePlayer(api_client, manifest, b.url, watch_timeout=1) as player:
            api.create_namespaced_custom_object(group, version, "team-a", plural, _experiment("e1"))
            assert sink.wait_for(1)
            # Outlive one server-side watch timeout: the player must resume from where it was.
            time.sleep(1.3)
            api.patch_namespaced_custom_object(
                group, version, "team-a", plural, "e1", {"spec": {"target": "team-a/other"}}
            )
            api.delete_namespaced_custom_object(group, version, "team-a", plural, "e1")
            assert sink.wait_for(3)
        assert player.sent == 3

    # The experiment that existed before the source started is not announced (Knative neither).
    # The source sends in the order it watched; the broker, like Knative's, delivers each event
    # on its own and does not keep that order (an update and the delete right after it can
    # arrive swapped), so the order is read at the source and the set at the subscriber.
    sent = [events.APISERVER_ADD, events.APISERVER_UPDATE, events.APISERVER_DELETE]
    assert player.sent_types == sent
    assert sorted(sink.types()) == sorted(sent)
    for got in sink.received:
        assert got.headers["ce-source"] == api_server
        assert (
            got.headers["ce-subject"]
            == "/apis/arbiter.dev/v1alpha1/namespaces/team-a/experiments/e1"
        )
        assert (got.headers["ce-kind"], got.headers["ce-name"], got.headers["ce-namespace"]) == (
            "Experiment",
            "e1",
            "team-a",
        )
        data = json.loads(got.body)
        assert data["metadata"]["name"] == "e1"
        assert data["apiVersion"] == "arbiter.dev/v1alpha1"
    body = {r.type: json.loads(r.body) for r in sink.received}
    assert body[events.APISERVER_ADD]["spec"] == {"target": "team-a/model"}
    assert body[events.APISERVER_UPDATE]["spec"] == {"target": "team-a/other"}
    # What functions.core.events reads from such an event: the experiment's identity.
    add = CloudEvent({"type": events.APISERVER_ADD, "source": "s"}, body[events.APISERVER_ADD])
    ref = events.experiment_ref(add)
    assert ref is not None
    assert (ref.namespace, ref.name) == ("team-a", "e1")


@pytest.mark.slow
def test_apiserver_source_can_replay_what_exists_at_start(
    broker: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    from kubernetes import client

    from local.kubeapi import KubeApiServer

    sink = subscriber()
    b = broker([trigger("sink")], {"sink": sink.url})
    manifest = next(
        d
        for d in load_manifests(EVENTING / "apiserversource.yaml")
        if d["kind"] == "ApiServerSource"
    )
    with KubeApiServer() as server, server.api_client() as api_client:
        api = client.CustomObjectsApi(api_client)
        for name, namespace in (("a", "team-a"), ("b", "team-b")):
            api.create_namespaced_custom_object(
                "arbiter.dev", "v1alpha1", namespace, "experiments", _experiment(name, namespace)
            )
        with ApiServerSourcePlayer(
            api_client, manifest, b.url, watch_timeout=1, replay_existing=True
        ) as player:
            assert sink.wait_for(2)
            assert [r.plural for r in player.resources] == ["experiments"]
    # namespaceSelector {} in the manifest: every namespace is watched.
    assert sorted(r.headers["ce-subject"] for r in sink.received) == [
        "/apis/arbiter.dev/v1alpha1/namespaces/team-a/experiments/a",
        "/apis/arbiter.dev/v1alpha1/namespaces/team-b/experiments/b",
    ]
    assert set(sink.types()) == {events.APISERVER_ADD}


@pytest.mark.slow
def test_the_control_source_wakes_iterate_for_labelled_experiments_only(
    broker: BrokerFactory, subscriber: SubscriberFactory
) -> None:
    """eventing/apiserversource.yaml's arbiter-control source, played against the API
    emulator and routed by the real Triggers: status writes of an unlabelled Experiment wake
    nobody; a labelled one's updates reach iterate, marked."""
    from kubernetes import client

    from local.kubeapi import KubeApiServer

    stages = {stage: subscriber() for stage in events.TRIGGERS}
    b = broker(
        manifests=load_manifests(EVENTING),
        subscribers={f"arbiter-{stage}": s.url for stage, s in stages.items()},
    )
    manifest = one_source("arbiter-control")
    group, version, plural = "arbiter.dev", "v1alpha1", "experiments"
    with KubeApiServer() as server, server.api_client() as api_client:
        api = client.CustomObjectsApi(api_client)
        for name in ("quiet", "asked"):
            api.create_namespaced_custom_object(group, version, "team-a", plural, _experiment(name))
        with ApiServerSourcePlayer(api_client, manifest, b.url, watch_timeout=1):
            api.patch_namespaced_custom_object(
                group, version, "team-a", plural, "quiet", {"spec": {"target": "team-a/x"}}
            )
            labelled = {
                "metadata": {"labels": {control.PENDING_LABEL: "true"}},
                "spec": {"control": {"action": "pause", "id": "p1"}},
            }
            api.patch_namespaced_custom_object(group, version, "team-a", plural, "asked", labelled)
            api.patch_namespaced_custom_object(
                group, version, "team-a", plural, "asked", {"spec": {"target": "team-a/y"}}
            )
            assert stages["iterate"].wait_for(1)
            time.sleep(0.5)
            assert b.drain(WAIT)
    received = stages["iterate"].received
    assert received and {r.type for r in received} == {events.APISERVER_UPDATE}
    for r in received:
        assert r.headers[f"ce-{control.EXTENSION}"] == control.EXTENSION_VALUE
        assert json.loads(r.body)["metadata"]["name"] == "asked"


def one_source(name: str) -> dict[str, Any]:
    return next(
        d
        for d in load_manifests(EVENTING / "apiserversource.yaml")
        if d["kind"] == "ApiServerSource" and d["metadata"]["name"] == name
    )
