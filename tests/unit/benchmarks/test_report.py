"""From outcomes to rates, intervals, targets and the written report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import report, scenario, suite, targets
from benchmarks.methods import base
from benchmarks.runner import CellResult

SHIPPED = {s.name: s for s in scenario.shipped()}


def _cell(method: str, action: list[int], version: list[int], **extra: Any) -> CellResult:
    r = len(action)
    iteration = [6 if a else -1 for a in action]
    fields: dict[str, Any] = {
        "scenario": "x",
        "method": method,
        "replicates": r,
        "seed": 1,
        "action": np.array(action),
        "version": np.array(version),
        "iteration": np.array(iteration),
        "requests": np.where(np.array(action) > 0, 3000.0, np.nan),
        "extra_errors": np.full(r, 10.0),
        "extra_slow": np.zeros(r),
        "lost_reward": np.zeros(r),
        "exposure": np.full(r, 100.0),
        "peak_weight": np.full(r, 0.05),
        "step_ms": np.array([1.0, 2.0, 3.0]),
        "live": np.array([r, r, r]),
        "nonfinite": 0,
        "burst_rollbacks": 0,
        "peak_rss_mb": 100.0,
        "wall_s": 1.0,
    }
    fields.update(extra)
    return CellResult(**fields)


def test_wilson_interval() -> None:
    assert report.wilson(0, 100) == (pytest.approx(0.0, abs=1e-12), pytest.approx(0.0370, abs=1e-4))
    lo, hi = report.wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)


def test_outcomes_and_correctness_against_each_kind_of_truth() -> None:
    # promote v1, promote the baseline (= keep it), roll back, nothing
    cell = _cell("m", [base.PROMOTE, base.PROMOTE, base.ROLLBACK, 0], [1, 0, 0, 0])
    o = report.outcomes(cell)
    assert o["promote"].tolist() == [True, False, False, False]
    assert o["rollback"].tolist() == [False, True, True, False]
    good, bad, aa = SHIPPED["good-canary"], SHIPPED["bad-canary-errors"], SHIPPED["aa-2160-looks"]
    c = report.correctness(cell, good)
    assert c["correct"].tolist() == [True, False, False, False]
    assert c["false_rollback"].tolist() == [False, True, True, False]
    c = report.correctness(cell, bad)
    assert c["false_promotion"].tolist() == [True, False, False, False]
    assert not c["false_rollback"].any()
    c = report.correctness(cell, aa)
    assert c["correct"].tolist() == [False, False, False, True]
    assert (c["false_promotion"] | c["false_rollback"]).tolist() == [True, True, True, False]


def test_summary_times_are_in_minutes_and_compute_is_per_replicate() -> None:
    s = report.summarise(_cell("m", [2, 2, 0, 0], [0, 0, 0, 0]), SHIPPED["bad-canary-errors"])
    assert s["time_to_decision_min"]["median"] == pytest.approx(1.0)  # 6 x 10 s
    assert s["decisions"]["inconclusive"]["rate"] == 0.5
    # undecided replicates count as the whole horizon in the censored mean
    assert s["time_to_correct_min_censored"]["mean"] == pytest.approx((1 + 1 + 60 + 60) / 4)
    assert s["step_ms"]["per_replicate_p50"] == pytest.approx(2.0 / 4)


def test_targets_are_met_missed_or_within_monte_carlo_error() -> None:
    bad = SHIPPED["bad-canary-errors"]
    mine = report.summarise(_cell("arbiter", [2] * 400, [0] * 400), bad)
    oracle = report.summarise(
        _cell("sprt-oracle", [2] * 400, [0] * 400, extra_errors=np.full(400, 5.0)), bad
    )
    got = {t.target: t for t in targets.evaluate([bad], [mine, oracle], {}, None)}
    assert got["false promotion <= alpha (0.05)"].status == "met"
    assert got["bad canary rolled back with P >= 0.95"].status == "met"
    assert got["median time to roll back <= 1.5x the oracle's"].status == "met"
    assert got["extra errors served <= 1.5x the oracle's"].status == "missed"  # 10 vs 5
    few = report.summarise(_cell("arbiter", [2] * 19 + [1], [0] * 19 + [1]), bad)
    got = {t.target: t for t in targets.evaluate([bad], [few], {}, None)}
    assert got["false promotion <= alpha (0.05)"].status == "within MC error"  # 1/20


def test_the_suite_writes_json_markdown_and_says_whether_it_plotted(tmp_path: Path) -> None:
    s = dataclasses.replace(SHIPPED["bad-canary-errors"], horizon_s=120.0)
    cells = [report.summarise(_cell("arbiter", [2, 0], [0, 0]), s)]
    results = {
        "seed": 1,
        "mode": "quick",
        "replicates": {s.name: 2},
        "reference": [],
        "cells": cells,
        "lower_bounds": {},
        "compute": {
            "iterations": 3,
            "p50_ms": 1.0,
            "p95_ms": 2.0,
            "max_ms": 3.0,
            "peak_rss_mb": 9.0,
            "target_ms": 5.0,
        },
        "targets": [],
        "wall_s": 1.0,
    }
    written = suite.write(results, tmp_path / "out" / "r.json", "abc123")
    doc = json.loads((tmp_path / "out" / "r.json").read_text())
    assert doc["git_sha"] == "abc123"
    assert doc["cells"][0]["time_to_decision_min"]["p90"] is not None
    md = (tmp_path / "out" / "r.md").read_text()
    assert "| bad-canary-errors | Arbiter (anytime-valid CS) | 0.0 / 50.0 / 50.0 |" in md
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert written == [tmp_path / "out" / "r.json", tmp_path / "out" / "r.md"]
    else:
        assert (tmp_path / "out" / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_the_abn_targets_set_arbiter_beside_the_oracles_and_the_rules_floor() -> None:
    s = SHIPPED["abn-3-versions"]
    r = 100

    def cell(method: str, requests: float, lost: float) -> dict[str, Any]:
        return report.summarise(
            _cell(
                method,
                [base.PROMOTE] * r,
                [2] * r,
                requests=np.full(r, requests),
                lost_reward=np.full(r, lost),
            ),
            s,
        )

    cells = [
        cell("arbiter", 260_000.0, 750.0),
        cell("oracle-tracking", 300_000.0, 900.0),
        cell("oracle-tracking-glr", 120_000.0, 370.0),
        {**cell("thompson-glr", 0.0, 150.0), "decisions": {"inconclusive": {"rate": 1.0}}},
    ]
    floor = suite.floors([s], {s.name: 49_144.0})
    got = {t.target: t for t in targets.evaluate([s], cells, {s.name: 49_144.0}, None, floor)}
    samples = got["A/B/n: samples to decision <= 2x the lower bound"]
    assert samples.status == "missed"
    assert "Arbiter 260,000, oracle tracking 300,000, lower bound 49,144 requests" in samples.figure
    assert "T/T* = log(K/alpha) + the test's overhead = 4.09 + 1.98" in samples.figure
    assert "takes 120,000 (2.44x)" in samples.figure
    regret = next(t for k, t in got.items() if k.startswith("A/B/n: cumulative regret"))
    assert "Arbiter 750, oracle tracking 900, Thompson 150" in regret.figure
    assert "Thompson decided in 0%" in regret.figure
    assert f"costs at least {floor[s.name]['regret']:.0f}" in regret.figure
    assert "|" not in samples.figure + regret.figure  # the figure sits in a markdown cell
