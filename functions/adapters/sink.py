"""The event sink: posts the next event to the broker (`K_SINK`) in binary mode.

functions-framework drops a `@cloud_event` function's return value, so a stage hands off by
POSTing. A refused or unreachable broker is transient: the stage answers 5xx and its own
event is redelivered, and since every step is idempotent the hand-off happens again.
"""

from __future__ import annotations

import logging
from typing import Final

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from functions.core.errors import PermanentError, TransientError

log = logging.getLogger(__name__)
_TIMEOUT: Final = 10.0


class HttpEventSink:
    def __init__(self, url: str | None, session: requests.Session | None = None) -> None:
        self._url = url
        self._session = session or requests.Session()

    def emit(self, event: CloudEvent) -> None:
        if not self._url:
            raise PermanentError(
                "K_SINK is not set: bind the functions to the broker (eventing/sinkbinding.yaml)"
            )
        headers, body = to_binary(event)
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
