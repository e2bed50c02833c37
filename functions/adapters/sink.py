"""The event sink: posts the next event to the broker (`K_SINK`) in binary mode, and the one
binary-mode encoder (`binary_http`) that the local broker and sources post with too.

functions-framework drops a `@cloud_event` function's return value, so a stage hands off by
POSTing. A refused or unreachable broker is transient: the stage answers 5xx and its own
event is redelivered, and since every step is idempotent the hand-off happens again.

With Knative Eventing's OIDC authentication on, the broker admits only requests bearing a
token for its audience. The SinkBinding that sets K_SINK then also mounts such a token at
/oidc/token and renews it before it expires (knative/eventing
pkg/apis/sources/v1/sinkbinding_lifecycle.go, pkg/reconciler/sinkbinding/sinkbinding.go);
`FileToken` reads it at every send, so a renewed token is used at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from functions.core.errors import PermanentError, TransientError

log = logging.getLogger(__name__)
_TIMEOUT: Final = 10.0


class FileToken:
    """The bearer token in a file, read afresh at each call; None while there is no file,
    which is how the broker's OIDC authentication being off looks from inside the pod."""

    def __init__(self, path: str) -> None:
        self._path = Path(path)

    def __call__(self) -> str | None:
        try:
            token = self._path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as e:
            # Mounted but unreadable: sending without it would only be refused.
            raise TransientError(f"token file {self._path} unreadable: {e}") from None
        return token or None


def binary_http(event: CloudEvent) -> tuple[dict[str, str], bytes | None]:
    """Headers and body of `event` in binary mode, its data encoded as its content type says.

    cloudevents' default would JSON-quote a text payload; non-JSON data is kept as it is.
    """
    content_type = event.get("datacontenttype")
    is_json = content_type is None or "json" in str(content_type).lower()

    def marshal(data: Any) -> Any:
        if data is None or isinstance(data, bytes | bytearray):
            return data
        if isinstance(data, str) and not is_json:
            return data
        return json.dumps(data)

    headers, body = to_binary(event, marshal)
    if body is not None and content_type is None and not isinstance(event.get_data(), bytes):
        # The JSON event format implies application/json when datacontenttype is unset;
        # in binary mode that has to be said, or the subscriber sees untyped bytes.
        headers["content-type"] = "application/json"
    return headers, body


class HttpEventSink:
    def __init__(
        self,
        url: str | None,
        session: requests.Session | None = None,
        token: Callable[[], str | None] | None = None,
    ) -> None:
        self._url = url
        self._session = session or requests.Session()
        self._token = token

    def emit(self, event: CloudEvent) -> None:
        if not self._url:
            raise PermanentError(
                "K_SINK is not set: bind the functions to the broker (eventing/sinkbinding.yaml)"
            )
        headers, body = binary_http(event)
        bearer = self._token() if self._token is not None else None
        if bearer:
            headers = {**headers, "Authorization": f"Bearer {bearer}"}
        try:
            # Never follow a redirect: requests would turn a 301/302/303 into a bodiless GET,
            # and a 2xx to that would count an event as delivered that no broker received.
            response = self._session.post(
                self._url, headers=headers, data=body, timeout=_TIMEOUT, allow_redirects=False
            )
        except requests.RequestException as e:
            raise TransientError(f"broker {self._url} unreachable: {e}") from None
        if response.status_code >= 300:
            raise TransientError(
                f"broker {self._url} refused {event['type']}: {response.status_code}"
            )
        log.info("emitted %s %s", event["type"], event["id"])
