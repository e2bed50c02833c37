"""The Prometheus adapter: runs a Metric's rendered queries and builds its measurement.

It implements `functions.core.metrics.MetricsSource` with prometheus-api-client's
`custom_query` (an instant query, at a given time when one is passed). Failures are sorted
the way Knative's retries need them: a connection error, a timeout or a 5xx (also 408 and
429) is retried a bounded number of times with exponential backoff and then raised as
`TransientMetricsError`; any other 4xx is a query Prometheus will never accept, raised at
once as `MetricQueryError` naming the metric, the template field and the query. An empty
vector or NaN is `NoData`, never zero. Values are converted to the Metric's declared units
(`functions.core.metrics.to_units`), histogram bucket bounds included.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from analytics.measurements import Counts, Histogram, Measurement, Moments, NoData, PointValue
from functions.core.metrics import (
    MetricQueryError,
    MetricSpec,
    MetricType,
    TransientMetricsError,
    queries_for,
    to_units,
)

log = logging.getLogger(__name__)

# Statuses worth another try: Prometheus overloaded, restarting or behind a proxy that is.
_RETRY_STATUSES: Final = frozenset({408, 429})
# prometheus-api-client reports a non-200 answer only as this text (no status attribute).
_STATUS: Final = re.compile(r"HTTP Status Code (\d+) \((.*)\)\s*$", re.DOTALL)
_MAX_BACKOFF_S: Final = 30.0

Labels = dict[str, str]


class PrometheusSource:
    """Measurements from one Prometheus server.

    `timeout_s` bounds each HTTP request and is also sent as the query's evaluation timeout;
    `retries` is how many times a transient failure is retried (so at most `retries + 1`
    requests per query), waiting `backoff`, `2 * backoff`, ... seconds in between.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff: float = 0.5,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if retries < 0 or backoff < 0:
            raise ValueError(f"retries and backoff must not be negative: {retries}, {backoff}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        # The client's own urllib3 retries (3, with 1 s backoff, also on 5xx) would multiply
        # ours and hide the statuses; ours are the only ones. `read=False` is requests' own
        # default: a read timeout surfaces as ReadTimeout, not as a generic ConnectionError.
        self._client = PrometheusConnect(url=self.url, retry=Retry(0, read=False))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PrometheusSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def measure(
        self, spec: MetricSpec, variables: Mapping[str, str], at: datetime | None
    ) -> Measurement:
        """Run the metric's queries for one version and build its measurement.

        Counter and Gauge give a PointValue, Ratio Counts(numerator, denominator), Mean
        Moments(count, sum, sumOfSquares), Histogram the cumulative buckets by `le`. Any
        query with no series or a NaN makes the whole measurement NoData, with the reason.
        `at` is the evaluation time (a naive datetime is taken as UTC); None is the server's
        now. Values are converted from the spec's queryUnits to its units (`to_units`).
        """
        return to_units(spec, self._measure(spec, variables, at))

    def _measure(
        self, spec: MetricSpec, variables: Mapping[str, str], at: datetime | None
    ) -> Measurement:
        if at is not None and at.utcoffset() is None:
            at = at.replace(tzinfo=UTC)  # naive means UTC here, never the host's local time
        queries = queries_for(spec, variables)
        if spec.type is MetricType.HISTOGRAM:
            return self._histogram(spec, queries["query"], at)
        values: dict[str, float] = {}
        missing: list[str] = []
        for role, promql in queries.items():
            value = self._number(spec, role, promql, at)
            if isinstance(value, NoData):
                missing.append(value.reason)
            else:
                values[role] = value
        if missing:
            return NoData("; ".join(missing))
        try:
            if spec.type is MetricType.RATIO:
                return Counts(events=_within(values, spec), trials=values["denominator"])
            if spec.type is MetricType.MEAN:
                return Moments(
                    count=values["count"],
                    total=values["sum"],
                    sum_of_squares=values.get("sumOfSquares"),
                )
            return PointValue(values["query"])
        except ValueError as e:
            raise MetricQueryError(f"{spec.ref}: the query results do not fit: {e}") from None

    def _number(
        self, spec: MetricSpec, role: str, promql: str, at: datetime | None
    ) -> float | NoData:
        series = self._series(spec, role, promql, at)
        if not series:
            return NoData(f"{spec.ref}: spec.{role} returned no series")
        if len(series) > 1:
            shown = ", ".join(_show(labels) for labels, _ in series[:3])
            raise MetricQueryError(
                f"{spec.ref}: spec.{role}: query must return one series; wrap it in sum(); "
                f"got {len(series)} ({shown}{', ...' if len(series) > 3 else ''}): {promql}"
            )
        value = series[0][1]
        if not math.isfinite(value):
            return NoData(f"{spec.ref}: spec.{role} returned {_number_text(value)}")
        return value

    def _histogram(self, spec: MetricSpec, promql: str, at: datetime | None) -> Measurement:
        series = self._series(spec, "query", promql, at)
        if not series:
            return NoData(f"{spec.ref}: spec.query returned no series")
        buckets: dict[float, float] = {}
        for labels, value in series:
            le = labels.get("le")
            if le is None:
                raise MetricQueryError(
                    f"{spec.ref}: spec.query: a Histogram query must return one series per "
                    f"`le` label; wrap it in sum by (le) (...); got {_show(labels)}: {promql}"
                )
            try:
                bound = float(le)
            except ValueError:
                raise MetricQueryError(
                    f"{spec.ref}: spec.query: le={le!r} is not a number: {promql}"
                ) from None
            if bound in buckets:
                raise MetricQueryError(
                    f"{spec.ref}: spec.query: several series with le={le!r}; a Histogram "
                    f"query must return one per bucket, wrap it in sum by (le) (...): {promql}"
                )
            if not math.isfinite(value):
                return NoData(
                    f"{spec.ref}: spec.query returned {_number_text(value)} for le={le!r}"
                )
            buckets[bound] = value
        if math.inf not in buckets:
            raise MetricQueryError(
                f'{spec.ref}: spec.query: no le="+Inf" bucket (it holds the total count): {promql}'
            )
        bounds = sorted(buckets)
        cumulative: list[float] = []
        for bound in bounds:
            # As histogram_quantile does: increase() over series scraped a hair apart can
            # leave a bucket a rounding error below the one before it.
            cumulative.append(max(buckets[bound], cumulative[-1] if cumulative else 0.0))
        try:
            return Histogram(bounds=tuple(bounds), cumulative=tuple(cumulative))
        except ValueError as e:
            raise MetricQueryError(f"{spec.ref}: spec.query: not histogram buckets: {e}") from None

    def _series(
        self, spec: MetricSpec, role: str, promql: str, at: datetime | None
    ) -> list[tuple[Labels, float]]:
        """The instant-query result as (labels, value) pairs; a scalar is one unlabelled pair."""
        result = self._query(spec, role, promql, at)
        try:
            if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], Mapping):
                return [({}, float(result[1]))]
            out: list[tuple[Labels, float]] = []
            for item in result:
                if "value" not in item:
                    raise MetricQueryError(
                        f"{spec.ref}: spec.{role}: query returned a range vector; it must "
                        f"give an instant vector or a scalar: {promql}"
                    )
                labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
                out.append((labels, float(item["value"][1])))
            return out
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise MetricQueryError(
                f"{spec.ref}: spec.{role}: unexpected result {result!r:.200}: {e}"
            ) from None

    def _query(self, spec: MetricSpec, role: str, promql: str, at: datetime | None) -> Any:
        params = {"timeout": f"{self.timeout_s:g}"}
        if at is not None:
            params["time"] = f"{at.timestamp():.3f}"
        attempts = self.retries + 1
        problem = ""
        for attempt in range(attempts):
            if attempt:
                self._sleep(min(self.backoff * 2 ** (attempt - 1), _MAX_BACKOFF_S))
            try:
                return self._client.custom_query(promql, params=params, timeout=self.timeout_s)
            except PrometheusApiClientException as e:
                status, message = _refusal(e)
                if status is not None and 400 <= status < 500 and status not in _RETRY_STATUSES:
                    raise MetricQueryError(
                        f"{spec.ref}: spec.{role}: Prometheus refused the query "
                        f"(HTTP {status}: {message}): {promql}"
                    ) from None
                problem = f"HTTP {status}: {message}" if status is not None else message
            except (requests.RequestException, ValueError, KeyError) as e:
                # Unreachable, timed out, or a 200 that is not Prometheus' JSON (a proxy page).
                problem = _why(e)
            log.warning(
                "prometheus %s: %s, attempt %d of %d: %s",
                self.url,
                spec.ref,
                attempt + 1,
                attempts,
                problem,
            )
        raise TransientMetricsError(
            f"{spec.ref}: spec.{role}: Prometheus at {self.url} failed {attempts} "
            f"time{'s' if attempts > 1 else ''}; last: {problem}"
        )


def _refusal(e: PrometheusApiClientException) -> tuple[int | None, str]:
    """(HTTP status, Prometheus' own error message) from the client's exception text."""
    match = _STATUS.match(str(e))
    if match is None:
        return None, str(e)
    status, body = int(match.group(1)), match.group(2)
    try:
        raw = ast.literal_eval(body)
        document = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        return status, str(document.get("error") or document)
    except (ValueError, SyntaxError, TypeError, AttributeError):
        return status, body[:300]


def _why(e: Exception) -> str:
    """The exception's type and its innermost reason (urllib3 wraps causes in MaxRetryError)."""
    reason: object = e.args[0] if e.args else e
    reason = getattr(reason, "reason", reason)
    return f"{type(e).__name__} ({reason})"


def _show(labels: Mapping[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _number_text(value: float) -> str:
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


# How far a Ratio's numerator may exceed its denominator and still be read as "all of them":
# increase() extrapolates each series to the window's edges from its own first and last
# samples, so two counters scraped at different instants disagree by up to about one scrape's
# increments, most visibly over one short iteration's window. Beyond this the two queries do
# not count the same thing, and that is an error in the Metric.
_SKEW_EVENTS: Final = 2.0
_SKEW_SHARE: Final = 0.1


def _within(values: Mapping[str, float], spec: MetricSpec) -> float:
    events, trials = values["numerator"], values["denominator"]
    if trials < events <= trials + max(_SKEW_EVENTS, _SKEW_SHARE * trials):
        log.info(
            "%s: numerator %g over denominator %g read as all of them", spec.ref, events, trials
        )
        return trials
    return events
