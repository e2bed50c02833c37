"""`arbiter bench`: the compute benchmark as before, the decision suite with options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import reference
from cli import main

TINY = """
name: tiny-canary
pattern: Canary
traffic: {rateRps: 50, intervalSeconds: 10, horizonSeconds: 300}
versions:
  - {name: baseline, errorRate: 0.01}
  - {name: canary, errorRate: 0.04}
criteria:
  objectives:
    - {metric: error-rate, maxRatio: 1.5}
weights: {initialCandidateWeight: 5, maxCandidateWeight: 50, maxCandidateWeightIncrement: 5}
expected: {action: rollback}
checks: [false-decisions, bad-canary]
"""


def test_plain_bench_is_still_the_compute_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--iterations", "30"])
    out = capsys.readouterr().out
    assert out.startswith("analysis per iteration (4 versions x 3 metrics")
    assert "p95" in out and code in (0, 1)


def test_bad_input_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--quick", "--methods", "arbiter,nope"]) == 2
    assert "unknown method(s) nope" in capsys.readouterr().err
    assert main(["bench", "--scenario", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_a_reference_mismatch_fails_loudly_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = reference.Check("naive peeking", "docs/statistics.md#peeking", 0.464, 0.2, 0.04, 1)
    monkeypatch.setattr(reference, "reproduce", lambda seed, replicates: [wrong])
    out = tmp_path / "r.json"
    assert main(["bench", "--quick", "--out", str(out)]) == 1
    assert "REFERENCE MISMATCH" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_a_users_scenario_runs_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = reference.reproduce
    monkeypatch.setattr(reference, "reproduce", lambda seed, replicates: real(seed, 400))
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    out = tmp_path / "res" / "results.json"
    argv = ["bench", "--scenario", str(path), "--methods", "arbiter", "sprt-oracle"]
    argv += ["--replicates", "20", "--seed", "7", "--workers", "1", "--iterations", "20"]
    assert main([*argv, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [c["method"] for c in doc["cells"]] == ["arbiter", "sprt-oracle"]
    assert doc["seed"] == 7 and doc["replicates"] == {"tiny-canary": 20}
    assert all(c["ok"] for c in doc["reference"])
    assert {t["target"] for t in doc["targets"]} >= {"bad canary rolled back with P >= 0.95"}
    printed = capsys.readouterr().out
    assert "| tiny-canary | SPRT oracle (knows the effect) |" in printed
    assert out.with_suffix(".md").read_text().startswith("# Arbiter benchmark results")
