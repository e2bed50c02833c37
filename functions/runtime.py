"""How a stage runs inside functions-framework: wiring once per process, errors as HTTP.

Each function process builds its Context (settings from the environment, the Kubernetes
client for KUBECONFIG or the in-cluster account, Prometheus, the broker sink) on its first
event and keeps it while warm; the local run's function processes do the same. A
PermanentError answers 422 (Knative does not retry it; it goes to the dead-letter sink),
a TransientError 503 (Knative retries with backoff); anything else is a bug and answers
500 with the traceback in the log, never in the response.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache

from cloudevents.http import CloudEvent
from werkzeug.exceptions import HTTPException, ServiceUnavailable, UnprocessableEntity

from functions.adapters.direct import DirectMetricsSource
from functions.adapters.kubernetes import KubeExperimentStore, KubeObjects, api_client
from functions.adapters.prometheus import PrometheusSource
from functions.adapters.sink import FileToken, HttpEventSink
from functions.core.context import Context
from functions.core.errors import PermanentError, TransientError
from functions.core.settings import Settings

log = logging.getLogger("arbiter")


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


_override: Context | None = None


def use_context(ctx: Context | None) -> None:
    """Run every stage in this process with `ctx` (tests wire their own this way)."""
    global _override  # noqa: PLW0603 - one context per process, like the cached default
    _override = ctx


def context() -> Context:
    return _override if _override is not None else _default_context()


@cache
def _default_context() -> Context:
    settings = Settings.from_env(os.environ)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    api = api_client(os.environ.get("KUBECONFIG"))
    return Context(
        store=KubeExperimentStore(api),
        objects=KubeObjects(api),
        metrics=DirectMetricsSource(settings.metrics_targets)
        if settings.metrics_targets
        else PrometheusSource(
            settings.prometheus_url,
            timeout_s=settings.query_timeout_seconds,
            retries=settings.query_retries,
        ),
        sink=HttpEventSink(settings.sink, token=FileToken(settings.sink_token_file)),
        clock=SystemClock(),
        settings=settings,
    )


def run(handler: Callable[[Context, CloudEvent], None], event: CloudEvent) -> None:
    """Run a stage on one event, answering as Knative's retry rules expect."""
    try:
        handler(context(), event)
    except HTTPException:
        raise
    except PermanentError as e:
        log.error("%s %s: permanent: %s", event["type"], event["id"], e)
        raise UnprocessableEntity(description=str(e)) from None
    except TransientError as e:
        log.warning("%s %s: transient, to be retried: %s", event["type"], event["id"], e)
        raise ServiceUnavailable(description=str(e)) from None
