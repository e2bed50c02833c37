"""The clock's PingSource through the real stages, the real adapter and the API emulator:
created by start, deleted by the first idle sweep with the resourceVersion precondition the
API server enforces, kept when a start lands between the sweep's listing and its delete, and
played by the local run's `LivePingSources` only while it exists."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from kubernetes import client

from functions.adapters.kubernetes import KubePingSources
from functions.core import clock, iterate, start
from functions.core.errors import ConflictError, NotFoundError
from functions.core.settings import Settings
from local.kubeapi import KubeApiServer
from local.sources import LivePingSources
from tests.integration.test_ownership_kube import EXPERIMENTS, NS, cluster, context, seed
from tests.support.stages import apiserver_event

__all__ = ["cluster"]  # the fixture, shared

SYSTEM = Settings().system_namespace
PING_GROUP = ("sources.knative.dev", "v1", "pingsources")


def stored(server: KubeApiServer) -> dict[str, Any] | None:
    return server.get(*PING_GROUP, SYSTEM, clock.NAME)


def test_the_adapter_creates_stamps_and_deletes_only_at_the_version_read(
    cluster: tuple[KubeApiServer, client.ApiClient],
) -> None:
    server, api = cluster
    pings = KubePingSources(api)
    with pytest.raises(NotFoundError):
        pings.get(SYSTEM, clock.NAME)
    created = pings.create(clock.pingsource(Settings()))
    with pytest.raises(ConflictError):
        pings.create(clock.pingsource(Settings()))
    stamped = pings.annotate(SYSTEM, clock.NAME, {clock.WANTED_AT: "now"})
    old = created["metadata"]["resourceVersion"]
    assert stamped["metadata"]["resourceVersion"] != old
    with pytest.raises(ConflictError):
        pings.delete(SYSTEM, clock.NAME, old)
    assert stored(server) is not None
    pings.delete(SYSTEM, clock.NAME, stamped["metadata"]["resourceVersion"])
    assert stored(server) is None
    with pytest.raises(NotFoundError):
        pings.annotate(SYSTEM, clock.NAME, {clock.WANTED_AT: "now"})


def test_start_creates_it_and_the_first_idle_sweep_deletes_it(
    cluster: tuple[KubeApiServer, client.ApiClient],
) -> None:
    server, api = cluster
    obj = seed(server)
    ctx, _ = context(api)
    start.handle(ctx, apiserver_event("add", obj))
    assert stored(server) is not None
    iterate.handle(ctx, _ping())
    assert stored(server) is not None, "a running experiment keeps the clock"
    custom = client.CustomObjectsApi(api)
    name = obj["metadata"]["name"]
    current = custom.get_namespaced_custom_object(*EXPERIMENTS[:2], NS, "experiments", name)
    current["status"]["stage"] = "Completed"
    custom.replace_namespaced_custom_object_status(
        *EXPERIMENTS[:2], NS, "experiments", name, current
    )
    iterate.handle(ctx, _ping())
    assert stored(server) is None


def test_a_start_between_the_sweeps_listing_and_its_delete_keeps_it(
    cluster: tuple[KubeApiServer, client.ApiClient],
) -> None:
    server, api = cluster
    ctx, _ = context(api)
    clock.ensure(ctx)
    listing = ctx.store.list
    late: list[dict[str, Any]] = []

    def listed_then_a_start_runs() -> list[dict[str, Any]]:
        seen = listing()
        if not late:  # created and started right after the sweep's listing
            late.append(seed(server))
            start.handle(ctx, apiserver_event("add", late[0]))
        return seen

    ctx.store.list = listed_then_a_start_runs  # type: ignore[method-assign]
    iterate.handle(ctx, _ping())
    assert stored(server) is not None, "the API server refused the stale delete (409)"
    after = server.get(*EXPERIMENTS, NS, late[0]["metadata"]["name"])
    assert after is not None and after["status"]["stage"] == "Running"


def _ping() -> Any:
    from tests.fakes import ping

    return ping()


class _Sink(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[float]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Sink.received.append(time.monotonic())
        self.send_response(202)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[str]:
    _Sink.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _wait(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_local_run_pings_only_while_the_pingsource_exists(
    cluster: tuple[KubeApiServer, client.ApiClient], sink: str
) -> None:
    _, api = cluster
    ctx, _ = context(api)
    # One minute plays as 0.2 s.
    with LivePingSources(api, SYSTEM, sink, time_scale=300.0, watch_timeout=1) as live:
        time.sleep(0.6)
        assert _Sink.received == [] and live.playing == []
        clock.ensure(ctx)
        _wait(lambda: len(_Sink.received) >= 3)
        assert live.playing == [clock.NAME] and live.played == 1
        clock.ensure(ctx)  # a stamp: the same player goes on
        held = clock.read(ctx)
        assert clock.end_if_idle(ctx, held, []) is True
        _wait(lambda: live.playing == [])
        count = len(_Sink.received)
        time.sleep(0.6)
        assert len(_Sink.received) == count, "pings after the PingSource was deleted"
        assert live.played == 1
