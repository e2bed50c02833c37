"""The event sink's bearer token for the broker, against a real HTTP server.

With Knative Eventing's `authentication-oidc` on, the SinkBinding mounts a JWT for the
broker's audience at /oidc/token in every bound container and renews it before it expires
(knative/eventing knative-v1.22: pkg/apis/sources/v1/sinkbinding_lifecycle.go mounts the
projected volume "oidc-token" at /oidc; pkg/reconciler/sinkbinding/sinkbinding.go writes the
token under the key `token`). With it off there is no file. So: header when the file is
there, read at each send; no header without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from pytest_httpserver import HTTPServer

from functions.adapters.sink import FileToken, HttpEventSink
from functions.core import events
from functions.core.errors import TransientError
from functions.core.settings import Settings


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    return ("127.0.0.1", 0)


def _event() -> CloudEvent:
    ref = events.ExperimentRef("arbiter-demo", "canary", "uid-1")
    return events.make_event(events.DUE, ref, 3, stage="iterate")


def _posted(server: HTTPServer) -> list[Any]:
    # The server is shared by the session: a slow request of an earlier module (a query
    # its client gave up on and retried) may still land while this test runs; only the
    # sink's CloudEvents are this test's.
    return [request for request, _ in server.log if request.headers.get("ce-id")]


def _authorization(server: HTTPServer) -> list[str | None]:
    return [request.headers.get("Authorization") for request in _posted(server)]


def test_the_token_in_the_file_is_sent_as_a_bearer_token(
    httpserver: HTTPServer, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.first.sig\n")  # as mounted: a trailing newline
    httpserver.expect_request("/", method="POST").respond_with_data("", status=202)
    sink = HttpEventSink(httpserver.url_for("/"), token=FileToken(str(token)))
    sink.emit(_event())
    assert _authorization(httpserver) == ["Bearer eyJhbGciOiJSUzI1NiJ9.first.sig"]
    (request, *_) = _posted(httpserver)
    assert request.headers["ce-type"] == events.DUE  # still binary mode


def test_no_file_no_header(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/", method="POST").respond_with_data("", status=202)
    HttpEventSink(httpserver.url_for("/"), token=FileToken(str(tmp_path / "absent"))).emit(_event())
    HttpEventSink(httpserver.url_for("/")).emit(_event())
    assert _authorization(httpserver) == [None, None]


def test_a_renewed_token_is_used_from_the_next_send(httpserver: HTTPServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first")
    httpserver.expect_request("/", method="POST").respond_with_data("", status=202)
    sink = HttpEventSink(httpserver.url_for("/"), token=FileToken(str(token)))
    sink.emit(_event())
    # The kubelet swaps a projected volume's files by renaming a new directory into place.
    renewed = tmp_path / "token.new"
    renewed.write_text("second")
    renewed.replace(token)
    sink.emit(_event())
    token.unlink()  # OIDC turned off: the binding's volume goes away
    sink.emit(_event())
    assert _authorization(httpserver) == ["Bearer first", "Bearer second", None]


def test_a_refused_token_is_transient(httpserver: HTTPServer, tmp_path: Path) -> None:
    # The broker answers 401 to a missing or expired token and 403 to a sender its
    # EventPolicies do not admit: the stage's own event is retried, by then with a
    # renewed token or a corrected policy.
    token = tmp_path / "token"
    token.write_text("expired")
    httpserver.expect_request("/", method="POST").respond_with_data("", status=401)
    with pytest.raises(TransientError, match="401"):
        HttpEventSink(httpserver.url_for("/"), token=FileToken(str(token))).emit(_event())


def test_an_unreadable_token_file_is_transient(tmp_path: Path) -> None:
    with pytest.raises(TransientError, match="unreadable"):
        FileToken(str(tmp_path))()  # a directory where the file should be


def test_the_token_file_setting() -> None:
    assert Settings.from_env({}).sink_token_file == "/oidc/token"
    custom = {"ARBITER_SINK_TOKEN_FILE": "/var/run/token"}
    assert Settings.from_env(custom).sink_token_file == "/var/run/token"
    assert Settings.from_env({"ARBITER_SINK_TOKEN_FILE": ""}).sink_token_file == "/oidc/token"
