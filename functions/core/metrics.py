"""Metric resources as values: parsing, strict PromQL rendering, variables, and the port.

A `Metric` (arbiter.dev/v1alpha1) names PromQL templates and the kind of measurement they
yield; this module turns the resource into a `MetricSpec`, builds the variables a version's
queries are rendered with, and renders them strictly: an unknown variable is an error naming
it (never an empty string in a query), and every value is escaped for a PromQL double-quoted
string. `MetricsSource` is the port the iterate stage reads measurements through; the
Prometheus adapter implements it. Nothing here does I/O.

Units: `spec.units` is what a measurement's values (and so an objective's limits) mean;
`spec.queryUnits`, when the queries' results are in other units (a queue-proxy of Knative
1.19+ reports seconds where the library's limits are milliseconds), makes `to_units` scale
every value that carries units — a Histogram's bucket bounds, a Mean's sum (and sum of
squares), a Gauge — so `upperLimit: 250` means 250 ms whichever library measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from string import Template
from typing import Any, Final, Protocol

from analytics.measurements import Histogram, Measurement, Moments, PointValue
from functions.core.errors import PermanentError, TransientError
from functions.core.resources import METRIC

API_VERSION: Final = METRIC.api_version
KIND: Final = METRIC.kind
PROVIDERS: Final = ("prometheus",)


class MetricType(StrEnum):
    COUNTER = "Counter"
    GAUGE = "Gauge"
    RATIO = "Ratio"
    MEAN = "Mean"
    HISTOGRAM = "Histogram"


# The template fields in the CRD's spelling, which is also the role name of each query.
TEMPLATE_FIELDS: Final = ("query", "numerator", "denominator", "sum", "count", "sumOfSquares")

# role -> required, per type, in the order the queries run.
ROLES: Final[Mapping[MetricType, tuple[tuple[str, bool], ...]]] = {
    MetricType.COUNTER: (("query", True),),
    MetricType.GAUGE: (("query", True),),
    MetricType.HISTOGRAM: (("query", True),),
    MetricType.RATIO: (("numerator", True), ("denominator", True)),
    MetricType.MEAN: (("sum", True), ("count", True), ("sumOfSquares", False)),
}

_SPEC_FIELDS: Final = (
    "description",
    "units",
    "queryUnits",
    "provider",
    "type",
    *TEMPLATE_FIELDS,
)

# Units queryUnits can convert between, as exact factors to one second (Decimal, so that
# 0.075 s becomes exactly 75 ms and a bucket bound still matches the limit written for it).
TIME_UNITS: Final[Mapping[str, Decimal]] = {
    "nanoseconds": Decimal("1e-9"),
    "microseconds": Decimal("1e-6"),
    "milliseconds": Decimal("0.001"),
    "seconds": Decimal(1),
}
# Types whose values carry no units (counts and rates), so queryUnits has nothing to scale.
_UNITLESS: Final = frozenset({"Counter", "Ratio"})

# The Metric label naming the library a Metric comes from (config/metrics/<library>/).
LIBRARY_LABEL: Final = "arbiter.dev/metrics-library"

# The variables every query may use, whatever the version declares.
BUILTINS: Final = ("name", "namespace", "revision", "elapsed", "interval")


class MetricError(PermanentError, ValueError):
    """A Metric that cannot be used as written: a bad field, or a template that does not
    render. `problems` holds one message per fault, each naming the metric and the field.

    It is a PermanentError (retrying does not fix a spec) and a ValueError (it is bad input).
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class MetricQueryError(PermanentError):
    """Prometheus refused a query (4xx: bad PromQL, bad parameters) or answered with a shape
    the metric's type cannot use (several series where one was expected, no `le` label)."""


class TransientMetricsError(TransientError):
    """Prometheus was unreachable, timed out or answered 5xx after every retry."""


@dataclass(frozen=True)
class MetricSpec:
    """A parsed Metric: its identity, its type and the templates that type reads."""

    name: str
    namespace: str
    type: MetricType
    query: str | None = None
    numerator: str | None = None
    denominator: str | None = None
    sum: str | None = None
    count: str | None = None
    sum_of_squares: str | None = None
    description: str = ""
    units: str | None = None
    # The units of the queries' results when they differ from `units` (see to_units).
    query_units: str | None = None
    provider: str = "prometheus"
    # The `arbiter.dev/metrics-library` label: which library the Metric belongs to.
    library: str | None = None

    @property
    def ref(self) -> str:
        """How messages name this metric, e.g. `metrics/error-rate`."""
        return f"metrics/{self.name}"

    @property
    def templates(self) -> dict[str, str]:
        """role -> template for the roles this type reads that are set, in query order."""
        out: dict[str, str] = {}
        for role, _ in ROLES[self.type]:
            template = _template_of(self, role)
            if template is not None:
                out[role] = template
        return out

    @classmethod
    def parse(cls, resource: Mapping[str, Any]) -> MetricSpec:
        """Parse a Metric resource; MetricError lists every problem, each naming its field."""
        if not isinstance(resource, Mapping):
            raise MetricError([f"a Metric must be an object, got {type(resource).__name__}"])
        metadata = resource.get("metadata")
        metadata = metadata if isinstance(metadata, Mapping) else {}
        name = metadata.get("name")
        namespace = metadata.get("namespace") or ""
        ref = f"metrics/{name}" if isinstance(name, str) and name else "metrics/<unnamed>"
        problems: list[str] = []

        def problem(field: str, message: str) -> None:
            problems.append(f"{ref}: {field}: {message}")

        if not isinstance(name, str) or not name:
            problem("metadata.name", "required")
        if not isinstance(namespace, str):
            problem("metadata.namespace", f"must be a string, got {namespace!r}")
            namespace = ""
        for field, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
            value = resource.get(field)
            if value is not None and value != expected:
                problem(field, f"must be {expected}, got {value!r}")

        spec = resource.get("spec")
        if not isinstance(spec, Mapping):
            problem("spec", "required (an object with type and PromQL templates)")
            raise MetricError(problems)

        for key in spec:
            if key not in _SPEC_FIELDS:
                problem(f"spec.{key}", f"unknown field (known: {', '.join(_SPEC_FIELDS)})")

        texts: dict[str, str] = {}
        for field in ("description", "units", "queryUnits"):
            value = spec.get(field)
            if value is not None and not isinstance(value, str):
                problem(f"spec.{field}", f"must be a string, got {value!r}")
            elif value is not None:
                texts[field] = value
        if "queryUnits" in texts:
            known_units = ", ".join(TIME_UNITS)
            if texts["queryUnits"] not in TIME_UNITS:
                problem(
                    "spec.queryUnits",
                    f"must be one of {known_units}, got {texts['queryUnits']!r}",
                )
            elif texts.get("units") not in TIME_UNITS:
                problem(
                    "spec.units",
                    f"must be one of {known_units} when spec.queryUnits is set (the units "
                    f"the values are converted to), got {texts.get('units')!r}",
                )
            if spec.get("type") in _UNITLESS:
                problem(
                    "spec.queryUnits",
                    f"a {spec.get('type')} is a count, which has no units to convert; remove it",
                )
        labels = metadata.get("labels")
        library = labels.get(LIBRARY_LABEL) if isinstance(labels, Mapping) else None
        provider = spec.get("provider", "prometheus")
        if provider not in PROVIDERS:
            problem("spec.provider", f"must be one of {', '.join(PROVIDERS)}, got {provider!r}")

        raw_type = spec.get("type")
        metric_type: MetricType | None = None
        if raw_type is None:
            problem("spec.type", f"required, one of {', '.join(t.value for t in MetricType)}")
        elif raw_type not in {t.value for t in MetricType}:
            problem(
                "spec.type",
                f"must be one of {', '.join(t.value for t in MetricType)}, got {raw_type!r}",
            )
        else:
            metric_type = MetricType(raw_type)

        templates: dict[str, str] = {}
        for field in TEMPLATE_FIELDS:
            value = spec.get(field)
            if value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                problem(f"spec.{field}", "must be a non-empty PromQL template")
                continue
            syntax = _syntax_problem(value)
            if syntax is not None:
                problem(f"spec.{field}", syntax)
                continue
            templates[field] = value

        if metric_type is not None:
            roles = ROLES[metric_type]
            used = {role for role, _ in roles}
            for role, required in roles:
                if required and spec.get(role) is None:
                    problem(f"spec.{role}", f"required for type {metric_type.value}")
            for field in TEMPLATE_FIELDS:
                if field not in used and spec.get(field) is not None:
                    reads = ", ".join(role for role, _ in roles)
                    problem(
                        f"spec.{field}",
                        f"not used by type {metric_type.value} (it reads {reads})",
                    )

        if problems or metric_type is None or not isinstance(name, str):
            raise MetricError(problems)
        return cls(
            name=name,
            namespace=namespace,
            type=metric_type,
            query=templates.get("query"),
            numerator=templates.get("numerator"),
            denominator=templates.get("denominator"),
            sum=templates.get("sum"),
            count=templates.get("count"),
            sum_of_squares=templates.get("sumOfSquares"),
            description=texts.get("description", ""),
            units=texts.get("units"),
            query_units=texts.get("queryUnits"),
            provider=str(provider),
            library=library if isinstance(library, str) and library else None,
        )

    @property
    def scale(self) -> Decimal:
        """What a query result is multiplied by to be in `units` (1 without queryUnits)."""
        if self.query_units is None or self.units is None:
            return Decimal(1)
        return TIME_UNITS[self.query_units] / TIME_UNITS[self.units]


def _template_of(spec: MetricSpec, role: str) -> str | None:
    field = "sum_of_squares" if role == "sumOfSquares" else role
    value: str | None = getattr(spec, field)
    return value


def _syntax_problem(template: str) -> str | None:
    """Where `template` breaks string.Template syntax (a `$` not starting a variable)."""
    for match in Template.pattern.finditer(template):
        if match.group("invalid") is not None:
            start = match.start()  # the stray $ itself
            line = template.count("\n", 0, start) + 1
            column = start - (template.rfind("\n", 0, start) + 1) + 1
            return (
                f"invalid placeholder at line {line}, column {column} (a $ must start a "
                "variable; write $$ for a literal $, e.g. in a regex matcher)"
            )
    return None


def escape(value: str) -> str:
    """`value` made safe inside a PromQL double-quoted string: backslash, quote and newline
    are escaped, so a label value can neither end the string nor break the query."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _render(template: str, variables: Mapping[str, str]) -> str:
    """Render, or raise MetricError with the problem unprefixed (callers add the context)."""
    syntax = _syntax_problem(template)
    if syntax is not None:
        raise MetricError([syntax])
    parsed = Template(template)
    unknown = [i for i in dict.fromkeys(parsed.get_identifiers()) if i not in variables]
    if unknown:
        names = ", ".join(f"${i}" for i in unknown)
        known = ", ".join(sorted(variables)) or "none"
        noun = "variable" if len(unknown) == 1 else "variables"
        raise MetricError([f"unknown {noun} {names} (known: {known})"])
    return parsed.substitute({k: escape(v) for k, v in variables.items()})


def render(template: str, variables: Mapping[str, str], *, metric: str = "metric") -> str:
    """Substitute `$var` / `${var}` strictly.

    An unknown variable raises MetricError naming the variable and `metric` (the caller's
    name for the metric, e.g. `metrics/error-rate`); `$$` is a literal `$`. Every value is
    escaped for a PromQL double-quoted string, so templates should quote label values with
    `"..."` (a value placed outside quotes is not made safe by this escaping).
    """
    try:
        return _render(template, variables)
    except MetricError as e:
        raise MetricError([f"{metric}: {p}" for p in e.problems]) from None


def variables_for(
    *,
    name: str,
    namespace: str,
    revision: str,
    elapsed_seconds: int,
    interval_seconds: int,
    version_variables: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables one version's queries are rendered with.

    Built-ins: `name` and `namespace` (the experiment's target), `revision` (the version's
    resolved revision), `elapsed` (whole seconds since the experiment started, at least 1 so
    that `[${elapsed}s]` stays a valid range) and `interval` (the experiment's
    intervalSeconds); then each of the version's own variables.

    A version variable may repeat a built-in only with the same value (the resolved
    `revision` is recorded as a version variable, so it always does). A different value
    raises MetricError naming the variable: a version cannot silently redirect `$name` or
    `$revision`; give the variable a name of its own (e.g. `isvc`) and use that in the
    template.
    """
    builtins = {
        "name": name,
        "namespace": namespace,
        "revision": revision,
        "elapsed": str(max(1, int(elapsed_seconds))),
        "interval": str(int(interval_seconds)),
    }
    out = dict(builtins)
    problems: list[str] = []
    for key, raw in (version_variables or {}).items():
        value = str(raw)
        if key in builtins and builtins[key] != value:
            problems.append(
                f"version variable {key!r} ({value!r}) would override the built-in ${key} "
                f"({builtins[key]!r}); give it another name and use that in the template"
            )
            continue
        out[key] = value
    if problems:
        raise MetricError(problems)
    return out


def queries_for(spec: MetricSpec, variables: Mapping[str, str]) -> dict[str, str]:
    """role -> rendered PromQL for every template the metric's type reads.

    Roles are the CRD field names: query (Counter, Gauge, Histogram), numerator and
    denominator (Ratio), sum, count and optionally sumOfSquares (Mean). Every role that does
    not render is reported in one MetricError.
    """
    out: dict[str, str] = {}
    problems: list[str] = []
    for role, template in spec.templates.items():
        try:
            out[role] = _render(template, variables)
        except MetricError as e:
            problems.extend(f"{spec.ref}: spec.{role}: {p}" for p in e.problems)
    if problems:
        raise MetricError(problems)
    return out


def scaled(value: float, factor: Decimal) -> float:
    """`value * factor` computed in decimal from the value's shortest repr, so a bound read
    as 0.075 (seconds) becomes exactly 75.0 (milliseconds), not 75.00000000000001."""
    if factor == 1 or not math.isfinite(value):
        return value
    return float(Decimal(repr(value)) * factor)


def to_units(spec: MetricSpec, measurement: Measurement) -> Measurement:
    """The measurement with every value that carries units converted from the spec's
    queryUnits to its units: Histogram bounds, a Mean's sum (sum of squares by the factor
    squared) and a Gauge's value. Counts and NoData are unit-free and returned as they are."""
    factor = spec.scale
    if factor == 1:
        return measurement
    if isinstance(measurement, Histogram):
        return replace(measurement, bounds=tuple(scaled(b, factor) for b in measurement.bounds))
    if isinstance(measurement, Moments):
        squares = measurement.sum_of_squares
        return replace(
            measurement,
            total=scaled(measurement.total, factor),
            sum_of_squares=None if squares is None else scaled(squares, factor * factor),
        )
    if isinstance(measurement, PointValue) and spec.type is MetricType.GAUGE:
        return replace(measurement, value=scaled(measurement.value, factor))
    return measurement


class MetricsSource(Protocol):
    """Where measurements come from (Prometheus in production, anything in tests)."""

    def measure(
        self, spec: MetricSpec, variables: Mapping[str, str], at: datetime | None
    ) -> Measurement:
        """One metric for one version, evaluated at `at` (None: the source's now).

        NoData when the source has nothing yet (never zero); MetricError when the templates
        do not render; MetricQueryError when the source refuses a query or returns a shape
        the type cannot use; TransientMetricsError when it cannot be reached.
        """
        ...
