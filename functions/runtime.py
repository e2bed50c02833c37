"""How a stage runs inside functions-framework: wiring once per process, errors as HTTP.

Each function process builds its Context (settings from the environment, the Kubernetes
client for KUBECONFIG or the in-cluster account, the broker sink, the store that records
each status change as Kubernetes Events, the alert sinks' ports) on its first event and
keeps it while warm; the local run's function processes do the same. The metrics source is
built, and its client library imported, only when a stage first measures (only `iterate`
does), so the other stages start as fast as the framework allows. A
PermanentError answers 422 (Knative does not retry it; it goes to the dead-letter sink),
a TransientError 503 (Knative retries with backoff). Anything else is a bug: the stages
record one that happens while handling a known experiment on that experiment and answer
422 (`functions.core.decisions.guarded`); one that escapes them is answered 500 on purpose
here, with the traceback in the log, never in the response.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import cache

from cloudevents.http import CloudEvent
from werkzeug.exceptions import (
    HTTPException,
    InternalServerError,
    ServiceUnavailable,
    UnprocessableEntity,
)

from analytics.measurements import Measurement
from functions.adapters.alerts import HttpAlertSink, KubeAddressables
from functions.adapters.kubeevents import KubeEventRecorder
from functions.adapters.kubernetes import (
    KubeExperimentStore,
    KubeObjects,
    KubePingSources,
    connect,
)
from functions.adapters.sink import FileToken, HttpEventSink
from functions.core.context import Context
from functions.core.errors import PermanentError, TransientError
from functions.core.metrics import MetricSpec, MetricsSource
from functions.core.settings import Settings
from functions.core.story import StoryTeller

log = logging.getLogger("arbiter")


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def metrics_source(settings: Settings) -> MetricsSource:
    """The configured metrics source: the versions' /metrics read directly when targets are
    set (a local run without Prometheus), Prometheus otherwise."""
    # Imported here: each pulls an HTTP metrics library that only `iterate` ever needs.
    if settings.metrics_targets:
        from functions.adapters.direct import DirectMetricsSource  # noqa: PLC0415

        return DirectMetricsSource(settings.metrics_targets)
    from functions.adapters.prometheus import PrometheusSource  # noqa: PLC0415

    return PrometheusSource(
        settings.prometheus_url,
        timeout_s=settings.query_timeout_seconds,
        retries=settings.query_retries,
    )


class LazyMetricsSource:
    """A MetricsSource that builds the real one on the first measurement."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._source: MetricsSource | None = None

    def measure(
        self, spec: MetricSpec, variables: Mapping[str, str], at: datetime | None
    ) -> Measurement:
        if self._source is None:
            self._source = metrics_source(self._settings)
        return self._source.measure(spec, variables, at)


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
    api = connect(os.environ.get("KUBECONFIG"), settings.kubernetes_url)
    clock = SystemClock()
    # Every status write also records the Kubernetes Events it tells (functions/core/story.py).
    recorder = KubeEventRecorder(
        api,
        f"arbiter.dev/{settings.function_target or 'functions'}",
        settings.instance or socket.gethostname(),
    )
    return Context(
        store=StoryTeller(KubeExperimentStore(api), recorder, clock),
        objects=KubeObjects(api),
        metrics=LazyMetricsSource(settings),
        sink=HttpEventSink(settings.sink, token=FileToken(settings.sink_token_file)),
        pings=KubePingSources(api),
        clock=clock,
        settings=settings,
        addresses=KubeAddressables(api),
        alerts=HttpAlertSink(),
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
    except Exception:
        log.exception("%s %s: unexpected error", event["type"], event["id"])
        raise InternalServerError(
            description="unexpected error; the traceback is in the function's log"
        ) from None
