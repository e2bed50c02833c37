"""`arbiter plan`: time to a decision, simulated with the benchmark's simulator and the very
pipeline `assess` runs; seeded; bad input is exit 2 naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import pytest

from cli import main

CANARY: Final = """
apiVersion: arbiter.dev/v1alpha1
kind: Experiment
metadata: {name: plan-me, namespace: demo}
spec:
  target: demo/model
  strategy:
    testingPattern: Canary
    weights: {maxCandidateWeight: 100, maxCandidateWeightIncrement: 20}
  criteria:
    objectives:
    - {metric: error-rate, upperLimit: "0.02", maxRatio: 1.5}
  duration: {intervalSeconds: 30, iterationsPerLoop: 40}
  versionInfo:
    baseline: {name: current}
    candidates: [{name: next}]
"""

ABN: Final = """
apiVersion: arbiter.dev/v1alpha1
kind: Experiment
metadata: {name: plan-abn, namespace: demo}
spec:
  target: demo/model
  strategy: {testingPattern: A/B/n}
  criteria:
    objectives: [{metric: error-rate, upperLimit: "0.01"}]
    rewards: [{metric: conversion, preferredDirection: High}]
  duration: {intervalSeconds: 60, iterationsPerLoop: 30}
  versionInfo:
    baseline: {name: a}
    candidates: [{name: b}, {name: c}]
"""


# A valid Conformance experiment: one version, nothing to decide between.
CONFORMANCE: Final = (
    ("testingPattern: Canary", "testingPattern: Conformance"),
    (", maxRatio: 1.5", ""),
    ("    candidates: [{name: next}]\n", ""),
)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _rows(out: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in out.splitlines() if line.startswith("| ")]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows[1:]}


def test_a_canary_plan_reports_each_case_and_a_bad_canary_is_rolled_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "canary.yaml"
    path.write_text(CANARY, encoding="utf-8")
    code, out, err = run_cli(
        capsys, "plan", str(path), "--rate", "200", "--replicates", "20", "--seed", "3"
    )
    assert (code, err) == (0, "")
    assert "demo/plan-me: Canary, 200 requests/s, 30 s iterations, horizon 20 min" in out
    assert "baseline error rate 0.01" in out  # half the 2% limit
    rows = _rows(out)
    assert set(rows) == {"equal", "worse (errors x2)"}
    worse = rows["worse (errors x2)"]
    assert worse[0] == "roll back"
    # 200 rps, 1% vs 2% errors and a 1.5x margin: rolled back well within 20 minutes.
    assert int(worse[1].rstrip("%")) >= 80
    assert "roll back" in worse[3] and "promote" not in worse[3]
    assert float(worse[4]) > 0  # the bad candidate served extra errors meanwhile
    assert rows["equal"][0] == "promote" and "roll back" not in rows["equal"][3]


def test_the_same_seed_gives_the_same_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "abn.yaml"
    path.write_text(ABN, encoding="utf-8")
    argv = ("plan", str(path), "--rate", "20", "--replicates", "8", "--seed", "5")
    first = run_cli(capsys, *argv)
    assert first[0] == 0 and first == run_cli(capsys, *argv)
    rows = _rows(first[1])
    assert set(rows) == {"equal", "worse (errors x2)", "better (reward +5%)"}
    assert rows["better (reward +5%)"][0] == "promote c"
    assert "simulated as a rate" in first[1]


@pytest.mark.parametrize(
    ("edit", "argv", "names"),
    [
        (None, ("--rate", "0"), "--rate"),
        (None, ("--rate", "fast"), "--rate"),
        (None, ("--rate", "10", "--replicates", "0"), "--replicates"),
        (None, ("--rate", "10", "--error-rate", "2"), "--error-rate"),
        (('upperLimit: "0.02"', "upperLimit: lots"), ("--rate", "10"), "upperLimit"),
        (("  versionInfo:", "  noVersions:"), ("--rate", "10"), "spec.versionInfo"),
        (CONFORMANCE, ("--rate", "10"), "spec.strategy.testingPattern"),
    ],
)
def test_bad_input_is_exit_2_naming_the_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Any,
    argv: tuple[str, ...],
    names: str,
) -> None:
    text = CANARY
    for old, new in () if edit is None else [edit] if isinstance(edit[0], str) else edit:
        text = text.replace(old, new)
    path = tmp_path / "e.yaml"
    path.write_text(text, encoding="utf-8")
    code, out, err = run_cli(capsys, "plan", str(path), *argv)
    assert code == 2 and out == ""
    assert names in err
    assert "Traceback" not in err


def test_a_missing_file_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "plan", "/nonexistent/e.yaml", "--rate", "10")
    assert code == 2 and "/nonexistent/e.yaml" in err
