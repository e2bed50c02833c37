"""A MetricsSource that reads the versions' /metrics directly, for a run without Prometheus.

`arbiter run` uses it when no `prometheus` binary is installed. It scrapes every target
with prometheus_client's parser and evaluates the shapes the Metric library uses —
`sum(increase(NAME{matchers}[...]))`, `sum by (le) (increase(NAME_bucket{...}[...]))` and
`A or 0 * B`, with label matchers =, !=, =~ and !~ — as the counters' current totals: the
simulated versions start at zero just before the experiment, so a total is the increase over
the experiment (plus the few requests served while `start` set the first split); values are
converted to the Metric's units as Prometheus' are (`to_units`). Anything else in a template is
refused with a MetricQueryError naming it, so a metric never silently reads wrong.

A range shorter than the experiment (the window of one iteration, which the conditional
ratio test reads) is the total now less the total at the latest reading this source took
at or before the range's start; with no reading that old the range covers the experiment,
and the total is the answer. Readings are kept per `at`, the last HISTORY of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final

import requests
from prometheus_client.parser import text_string_to_metric_families

from analytics.measurements import Counts, Histogram, Measurement, Moments, NoData, PointValue
from functions.core.metrics import (
    MetricQueryError,
    MetricSpec,
    MetricType,
    TransientMetricsError,
    queries_for,
    to_units,
)

_SUM: Final = re.compile(
    r"^\s*sum\s*(?:by\s*\(\s*(?P<by>\w+)\s*\)\s*)?\(\s*increase\s*\(\s*(?P<name>[a-zA-Z_:][\w:]*)"
    r"\s*\{(?P<matchers>[^}]*)\}\s*\[(?P<range>[^\]]+)\]\s*\)\s*\)\s*$",
    re.DOTALL,
)
_MATCHER: Final = re.compile(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_SECONDS: Final = re.compile(r"^\s*(\d+)s\s*$")
_TIMEOUT: Final = 5.0
HISTORY: Final = 64

Sample = tuple[str, dict[str, str], float]


def _unescape(value: str) -> str:
    return value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def _matchers(text: str, query: str) -> list[tuple[str, str, str]]:
    result = []
    pos = 0
    while pos < len(text.strip()):
        m = _MATCHER.match(text, pos)
        if m is None:
            raise MetricQueryError(f"direct metrics: cannot read the label matchers in {query!r}")
        result.append((m.group(1), m.group(2), _unescape(m.group(3))))
        pos = m.end()
    return result


def _matches(labels: Mapping[str, str], matchers: Sequence[tuple[str, str, str]]) -> bool:
    for key, op, value in matchers:
        actual = labels.get(key, "")
        if op == "=" and actual != value:
            return False
        if op == "!=" and actual == value:
            return False
        if op == "=~" and re.fullmatch(value, actual) is None:
            return False
        if op == "!~" and re.fullmatch(value, actual) is not None:
            return False
    return True


class DirectMetricsSource:
    def __init__(self, targets: Sequence[str], session: requests.Session | None = None) -> None:
        self._targets = [
            t if t.endswith("/metrics") else t.rstrip("/") + "/metrics" for t in targets
        ]
        self._session = session or requests.Session()
        self._history: list[tuple[datetime, list[Sample]]] = []

    def _scrape(self) -> list[Sample]:
        samples: list[Sample] = []
        for url in self._targets:
            try:
                response = self._session.get(url, timeout=_TIMEOUT)
                response.raise_for_status()
            except requests.RequestException as e:
                raise TransientMetricsError(
                    f"direct metrics: scrape of {url} failed: {e}"
                ) from None
            for family in text_string_to_metric_families(response.text):
                samples += [(s.name, dict(s.labels), float(s.value)) for s in family.samples]
        return samples

    def _before(self, at: datetime | None, query: str) -> list[Sample] | None:
        """The latest reading at or before the start of the query's range, if one was kept."""
        m = _SUM.match(query)
        seconds = _SECONDS.match(m.group("range")) if m else None
        if at is None or seconds is None:
            return None
        start = at - timedelta(seconds=int(seconds.group(1)))
        earlier = [samples for t, samples in self._history if t <= start]
        return earlier[-1] if earlier else None

    def _evaluate(
        self, query: str, samples: list[Sample], at: datetime | None = None
    ) -> dict[str, float] | None:
        """The query's value (keyed by the `by` label, or "" for a plain sum); None if no
        series matched, as Prometheus answers an empty vector."""
        left, sep, right = query.partition(" or ")
        if sep:
            first = self._evaluate(left, samples, at)
            if first is not None:
                return first
            fallback = self._evaluate(right.strip().removeprefix("0 *").strip(), samples, at)
            return None if fallback is None else {k: 0.0 for k in fallback}
        m = _SUM.match(query)
        if m is None:
            raise MetricQueryError(
                f"direct metrics: only sum(increase(...)) and sum by (le) (increase(...)) "
                f"are read without Prometheus, not {query!r}"
            )
        matchers = _matchers(m.group("matchers"), query)
        by = m.group("by")

        def totals(readings: list[Sample]) -> dict[str, float]:
            out: dict[str, float] = {}
            for name, labels, total in readings:
                if name != m.group("name") or not _matches(labels, matchers):
                    continue
                key = labels.get(by, "") if by else ""
                out[key] = out.get(key, 0.0) + total
            return out

        now = totals(samples)
        before = self._before(at, query)
        if now and before is not None:
            then = totals(before)
            # A counter lower than before restarted: its whole value is the increase.
            now = {k: v - then.get(k, 0.0) if v >= then.get(k, 0.0) else v for k, v in now.items()}
        return now or None

    def measure(
        self, spec: MetricSpec, variables: Mapping[str, str], at: datetime | None
    ) -> Measurement:
        """As PrometheusSource.measure, values converted to the spec's units."""
        return to_units(spec, self._measure(spec, variables, at))

    def _measure(
        self, spec: MetricSpec, variables: Mapping[str, str], at: datetime | None
    ) -> Measurement:
        queries = {role: " ".join(q.split()) for role, q in queries_for(spec, variables).items()}
        samples = self._scrape()
        values = {role: self._evaluate(q, samples, at) for role, q in queries.items()}
        if at is not None:
            self._history = [*self._history, (at, samples)][-HISTORY:]
        if any(v is None for v in values.values()):
            return NoData("no series yet")

        def one(role: str) -> float:
            v = values[role]
            assert v is not None
            return sum(v.values())

        if spec.type is MetricType.HISTOGRAM:
            buckets = values["query"] or {}
            bounds = sorted(buckets, key=lambda le: math.inf if "Inf" in le else float(le))
            return Histogram(
                tuple(math.inf if "Inf" in b else float(b) for b in bounds),
                tuple(buckets[b] for b in bounds),
            )
        if spec.type is MetricType.RATIO:
            return Counts(min(one("numerator"), one("denominator")), one("denominator"))
        if spec.type is MetricType.MEAN:
            squares = one("sumOfSquares") if "sumOfSquares" in values else None
            return Moments(one("count"), one("sum"), squares)
        return PointValue(one("query"))
