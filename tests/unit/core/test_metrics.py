"""Metric resources: parsing every type, field-named errors, strict rendering, variables."""

from __future__ import annotations

from typing import Any

import pytest

from functions.core.errors import PermanentError
from functions.core.metrics import (
    MetricError,
    MetricSpec,
    MetricType,
    escape,
    queries_for,
    render,
    variables_for,
)


def metric(name: str = "m", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "arbiter.dev/v1alpha1",
        "kind": "Metric",
        "metadata": {"name": name, "namespace": "arbiter-system"},
        "spec": spec,
    }


def problems(resource: Any) -> list[str]:
    with pytest.raises(MetricError) as caught:
        MetricSpec.parse(resource)
    return caught.value.problems


VARIABLES = variables_for(
    name="sklearn-iris",
    namespace="models",
    revision="sklearn-iris-predictor-00002",
    elapsed_seconds=600,
    interval_seconds=20,
)


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Counter", "Gauge", "Histogram"])
def test_single_query_types_parse_with_their_query(kind: str) -> None:
    spec = MetricSpec.parse(metric("requests", type=kind, query="sum(x)", units="ms"))
    assert spec.type is MetricType(kind)
    assert (spec.name, spec.namespace, spec.units) == ("requests", "arbiter-system", "ms")
    assert spec.templates == {"query": "sum(x)"}
    assert spec.provider == "prometheus"


def test_ratio_parses_numerator_and_denominator_in_order() -> None:
    spec = MetricSpec.parse(metric("error-rate", type="Ratio", denominator="b", numerator="a"))
    assert spec.type is MetricType.RATIO
    assert list(spec.templates.items()) == [("numerator", "a"), ("denominator", "b")]


def test_mean_parses_with_and_without_sum_of_squares() -> None:
    bare = MetricSpec.parse(metric(type="Mean", sum="s", count="c"))
    assert bare.templates == {"sum": "s", "count": "c"}
    assert bare.sum_of_squares is None
    full = MetricSpec.parse(metric(type="Mean", sum="s", count="c", sumOfSquares="q"))
    assert full.templates == {"sum": "s", "count": "c", "sumOfSquares": "q"}


def test_missing_template_names_the_metric_and_field() -> None:
    assert problems(metric("error-rate", type="Ratio", numerator="a")) == [
        "metrics/error-rate: spec.denominator: required for type Ratio"
    ]
    assert problems(metric("lat", type="Mean", sumOfSquares="q")) == [
        "metrics/lat: spec.sum: required for type Mean",
        "metrics/lat: spec.count: required for type Mean",
    ]


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {
            "apiVersion": "iter8.tools/v2alpha2",
            "metadata": {"name": "m"},
            "spec": {
                "type": "Counter",
                "query": "",
                "numerator": "n",
                "provider": "datadog",
                "jqExpression": ".data",
                "units": 5,
            },
        }
    )
    assert sorted(found) == sorted(
        [
            "metrics/m: apiVersion: must be arbiter.dev/v1alpha1, got 'iter8.tools/v2alpha2'",
            "metrics/m: spec.jqExpression: unknown field (known: description, units, queryUnits,"
            " provider, type, query, numerator, denominator, sum, count, sumOfSquares)",
            "metrics/m: spec.units: must be a string, got 5",
            "metrics/m: spec.provider: must be one of prometheus, got 'datadog'",
            "metrics/m: spec.query: must be a non-empty PromQL template",
            "metrics/m: spec.numerator: not used by type Counter (it reads query)",
        ]
    )


def test_type_must_be_one_of_the_five() -> None:
    assert problems(metric(type="counter", query="x")) == [
        "metrics/m: spec.type: must be one of Counter, Gauge, Ratio, Mean, Histogram, got 'counter'"
    ]
    assert problems(metric(query="x")) == [
        "metrics/m: spec.type: required, one of Counter, Gauge, Ratio, Mean, Histogram"
    ]


def test_missing_name_and_spec_are_named() -> None:
    assert problems({"metadata": {}, "spec": {"type": "Gauge", "query": "x"}}) == [
        "metrics/<unnamed>: metadata.name: required"
    ]
    assert problems({"metadata": {"name": "m"}}) == [
        "metrics/m: spec: required (an object with type and PromQL templates)"
    ]
    assert problems([]) == ["a Metric must be an object, got list"]


def test_a_stray_dollar_is_a_parse_error_with_its_position() -> None:
    assert problems(metric(type="Gauge", query='sum(x{path=~"/api$"})')) == [
        "metrics/m: spec.query: invalid placeholder at line 1, column 18 (a $ must start a "
        "variable; write $$ for a literal $, e.g. in a regex matcher)"
    ]
    spec = MetricSpec.parse(metric(type="Gauge", query='sum(x{path=~"/api$$"})'))
    assert render(spec.templates["query"], {}) == 'sum(x{path=~"/api$"})'


def test_metric_error_is_a_permanent_value_error() -> None:
    """The stages answer PermanentError with 4xx; a bad Metric must never be retried."""
    error = MetricError(["a", "b"])
    assert isinstance(error, PermanentError)
    assert isinstance(error, ValueError)
    assert str(error) == "a; b"


# --- rendering -------------------------------------------------------------------------


def test_render_substitutes_both_placeholder_forms() -> None:
    out = render('sum(increase(x{ns="$namespace",rev="${revision}"}[${elapsed}s]))', VARIABLES)
    assert out == 'sum(increase(x{ns="models",rev="sklearn-iris-predictor-00002"}[600s]))'


def test_unknown_variable_names_the_variable_and_the_metric() -> None:
    with pytest.raises(MetricError) as caught:
        render('x{model="$model",v="${version}"}', VARIABLES, metric="metrics/accuracy")
    assert caught.value.problems == [
        "metrics/accuracy: unknown variables $model, $version "
        "(known: elapsed, interval, name, namespace, revision)"
    ]


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ('say "hi"', 'say \\"hi\\"'),
        ("C:\\models", "C:\\\\models"),
        ("two\nlines", "two\\nlines"),
        ('\\"', '\\\\\\"'),  # a backslash before a quote cannot un-escape the quote
        ("plain-name_1.2", "plain-name_1.2"),
    ],
)
def test_values_are_escaped_for_a_double_quoted_promql_string(value: str, escaped: str) -> None:
    assert escape(value) == escaped
    assert render('x{l="$v"}', {"v": value}) == f'x{{l="{escaped}"}}'


def test_an_injected_quote_cannot_end_the_label_string() -> None:
    hostile = '"} or vector(1) or x{a="'
    out = render('up{job="$job"}', {"job": hostile})
    body = out[len('up{job="') : -len('"}')]
    # Every quote inside the value is escaped, so the string ends only where the template's does.
    assert all(body[i - 1] == "\\" for i, ch in enumerate(body) if ch == '"')


# --- variables -------------------------------------------------------------------------


def test_builtin_variables() -> None:
    assert VARIABLES == {
        "name": "sklearn-iris",
        "namespace": "models",
        "revision": "sklearn-iris-predictor-00002",
        "elapsed": "600",
        "interval": "20",
    }


def test_elapsed_is_at_least_one_second_so_the_range_stays_valid() -> None:
    variables = variables_for(
        name="n", namespace="ns", revision="r", elapsed_seconds=0, interval_seconds=10
    )
    assert variables["elapsed"] == "1"


def test_version_variables_are_added() -> None:
    variables = variables_for(
        name="flowers",
        namespace="models",
        revision="flowers-v2",
        elapsed_seconds=60,
        interval_seconds=10,
        version_variables={"isvc": "flowers-v2", "tag": 'canary "b"'},
    )
    assert variables["isvc"] == "flowers-v2"
    assert render('x{i="$isvc",t="$tag"}', variables) == 'x{i="flowers-v2",t="canary \\"b\\""}'


def test_a_version_variable_repeating_a_builtin_with_the_same_value_is_allowed() -> None:
    """status.py records the resolved revision as the version's `revision` variable."""
    variables = variables_for(
        name="n",
        namespace="ns",
        revision="r-00002",
        elapsed_seconds=60,
        interval_seconds=10,
        version_variables={"revision": "r-00002"},
    )
    assert variables["revision"] == "r-00002"


def test_a_version_variable_may_not_override_a_builtin() -> None:
    with pytest.raises(MetricError) as caught:
        variables_for(
            name="router",
            namespace="ns",
            revision="r",
            elapsed_seconds=60,
            interval_seconds=10,
            version_variables={"name": "flowers-v2", "elapsed": "5"},
        )
    assert caught.value.problems == [
        "version variable 'name' ('flowers-v2') would override the built-in $name ('router'); "
        "give it another name and use that in the template",
        "version variable 'elapsed' ('5') would override the built-in $elapsed ('60'); "
        "give it another name and use that in the template",
    ]


# --- queries per role ------------------------------------------------------------------


def test_queries_for_renders_every_role_of_the_type() -> None:
    spec = MetricSpec.parse(
        metric(
            "mean-latency",
            type="Mean",
            sum='sum(increase(s{rev="$revision"}[${elapsed}s]))',
            count='sum(increase(c{rev="$revision"}[${elapsed}s]))',
        )
    )
    assert queries_for(spec, VARIABLES) == {
        "sum": 'sum(increase(s{rev="sklearn-iris-predictor-00002"}[600s]))',
        "count": 'sum(increase(c{rev="sklearn-iris-predictor-00002"}[600s]))',
    }


def test_queries_for_reports_each_role_that_does_not_render() -> None:
    spec = MetricSpec.parse(
        metric("conversion", type="Ratio", numerator='sum(a{u="$user"})', denominator="$t")
    )
    with pytest.raises(MetricError) as caught:
        queries_for(spec, VARIABLES)
    known = "(known: elapsed, interval, name, namespace, revision)"
    assert caught.value.problems == [
        f"metrics/conversion: spec.numerator: unknown variable $user {known}",
        f"metrics/conversion: spec.denominator: unknown variable $t {known}",
    ]
