"""Scenario files: every shipped one is valid, and a broken one says what is wrong where."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from analytics import model
from benchmarks import scenario
from benchmarks.scenario import ScenarioError


def _doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "t",
        "pattern": "Canary",
        "versions": [{"name": "b", "errorRate": 0.01}, {"name": "c", "errorRate": 0.02}],
        "criteria": {"objectives": [{"metric": "error-rate", "maxRatio": 1.5}]},
        "expected": {"action": "rollback"},
    }
    doc.update(overrides)
    return doc


def test_every_shipped_scenario_loads_with_the_issues_defaults() -> None:
    shipped = {s.name: s for s in scenario.shipped()}
    assert len(shipped) == len(list(scenario.SCENARIO_DIR.glob("*.yaml"))) == 16
    for s in shipped.values():
        assert s.alpha == 0.05
        assert s.spec.criteria.alpha == s.alpha
        assert s.spec.duration.total_iterations == s.iterations
        assert s.checks and "false-decisions" in s.checks
        if s.clean is not None:
            assert s.clean in shipped
    assert shipped["aa-2160-looks"].iterations == 2160
    assert shipped["low-traffic"].rate_rps == 1 and shipped["low-traffic"].interval_s == 60
    for name, k in (("abn-3-versions", 3), ("abn-4-versions", 4), ("abn-6-versions", 6)):
        assert shipped[name].pattern is model.TestingPattern.ABN
        assert len(shipped[name].versions) == k and "abn" in shipped[name].checks
    for name in ("good-canary", "bad-canary-errors", "at-margin"):
        assert shipped[name].margin_ratio == 1.5 and shipped[name].rate_rps == 50
    assert shipped["bad-canary-latency"].latency_telemetry
    assert not shipped["bad-canary-errors"].latency_telemetry


def test_arbiters_criteria_go_through_the_experiment_parser() -> None:
    s = scenario.parse(
        _doc(criteria={"objectives": [{"metric": "error-rate", "upperLimit": "10m"}]})
    )
    assert s.objectives[0].upper_limit == pytest.approx(0.01)  # a Kubernetes quantity
    assert s.spec.version_info is not None
    assert s.spec.version_info.names == ("b", "c")


def test_problems_are_all_reported_with_their_field() -> None:
    bad = _doc(
        pattern="Blue",
        traffic={"rateRps": "fast"},
        versions=[{"name": "b", "errorRate": 2}],
        expected={"action": "promote", "version": "nope"},
        checks=["speed"],
    )
    with pytest.raises(ScenarioError) as e:
        scenario.parse(bad, "bad.yaml")
    text = str(e.value)
    assert text.startswith("bad.yaml: ")
    for field in (
        "pattern",
        "traffic.rateRps",
        "versions[0].errorRate",
        "expected.version",
        "checks",
    ):
        assert field in text, field


def test_criteria_errors_come_from_the_experiment_parser_and_unknown_metrics_are_refused() -> None:
    with pytest.raises(ScenarioError, match="criteria"):
        scenario.parse(_doc(criteria={"objectives": [{"metric": "error-rate", "upperLimit": "x"}]}))
    with pytest.raises(ScenarioError, match="not simulated"):
        scenario.parse(_doc(criteria={"objectives": [{"metric": "cpu", "upperLimit": 1}]}))


def test_expected_none_means_no_decision_is_correct() -> None:
    s = scenario.parse(_doc(expected={"action": "none"}))
    assert s.expected.action == "none" and s.correct_version() == 0


def test_load_reports_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        scenario.load(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not YAML"):
        scenario.load(broken)
