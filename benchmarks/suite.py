"""The whole decision-quality benchmark: reference check, every cell, targets, outputs.

Order of work: reproduce the reference figures (docs/statistics.md#reference-figures; stop
if they are not reproduced), run every (scenario, method) cell in worker processes (one
fresh process per cell, so its peak RSS is its own), time Arbiter's production analysis,
judge Arbiter's targets (docs/statistics.md#targets), and write results JSON, a markdown
report and a PNG plot.

Quick mode runs each scenario's `quickReplicates` (default 400); full mode ten times as
many. `replicates` overrides both.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from analytics.model import TestingPattern
from benchmarks import compute, reference, report, targets
from benchmarks.methods import BY_NAME, METHODS
from benchmarks.methods.lower_bound import lower_bound
from benchmarks.methods.oracle_tracking import threshold_floor
from benchmarks.runner import run_cell
from benchmarks.scenario import Scenario

DEFAULT_QUICK_REPLICATES: Final = 400
FULL_FACTOR: Final = 10
REFERENCE_REPLICATES: Final = 4000


@dataclass(frozen=True)
class Plan:
    scenarios: tuple[Scenario, ...]
    methods: tuple[str, ...]
    seed: int
    quick: bool = True
    replicates: int | None = None
    workers: int = 2
    compute_iterations: int = 1000
    reference_replicates: int = REFERENCE_REPLICATES


def replicates_for(plan: Plan, s: Scenario) -> int:
    if plan.replicates is not None:
        return plan.replicates
    quick = s.quick_replicates or DEFAULT_QUICK_REPLICATES
    return quick if plan.quick else quick * FULL_FACTOR


def cells_of(plan: Plan) -> list[tuple[Scenario, str]]:
    """The (scenario, method) pairs to run: each method on the patterns it applies to."""
    out = []
    for s in plan.scenarios:
        allowed = set(s.methods) if s.methods is not None else None
        for name in plan.methods:
            info = BY_NAME[name]
            wanted = info.applies is None or info.applies(s)
            if s.pattern in info.patterns and wanted and (allowed is None or name in allowed):
                out.append((s, name))
    return out


def _cell(job: tuple[Scenario, str, int, int, bool]) -> dict[str, Any]:
    s, name, replicates, seed, quick = job
    # Each worker is one process per cell; numpy must not start threads of its own.
    return report.summarise(run_cell(s, BY_NAME[name], replicates, seed, quick), s)


def lower_bounds(scenarios: Sequence[Scenario]) -> dict[str, float]:
    """Garivier-Kaufmann samples at delta = alpha for each A/B/n scenario, among the
    versions that meet the error SLO (ruling the others out is not counted)."""
    out = {}
    for s in scenarios:
        if s.pattern is TestingPattern.CANARY:
            continue
        feasible = [
            v.reward_rate or 0.0 for v, ok in zip(s.versions, s.feasible(), strict=True) if ok
        ]
        if len(feasible) >= 2 and len(set(feasible)) == len(feasible):
            out[s.name] = lower_bound(tuple(feasible), s.alpha).samples
    return out


def floors(scenarios: Sequence[Scenario], bounds: Mapping[str, float]) -> dict[str, Any]:
    """Per A/B/n scenario with a lower bound, what Arbiter's stopping rule itself costs at the
    lower bound's own allocation (`oracle_tracking.threshold_floor`)."""
    out: dict[str, Any] = {}
    for s in scenarios:
        if s.name in bounds:
            f = threshold_floor(s)
            out[s.name] = {
                **asdict(f),
                "ratio": f.ratio,
                "heuristic_ratio": f.heuristic_ratio,
                "describe": f.describe(),
            }
    return out


def run(
    plan: Plan,
    progress: Callable[[str], None] = lambda _: None,
    cells_done: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Any]:
    """Run the plan and return the results document; `progress` hears each step in words,
    `cells_done` the count of (scenario, method) cells done out of all of them.

    Raises:
        reference.ReferenceMismatchError: the harness does not reproduce the reference figures.
    """
    started = time.perf_counter()
    progress("reproducing the reference figures (docs/statistics.md#reference-figures) ...")
    checks = reference.reproduce(plan.seed, plan.reference_replicates)
    reference.verify(checks)

    jobs = [(s, m, replicates_for(plan, s), plan.seed, plan.quick) for s, m in cells_of(plan)]
    # Longest first, so the last cells do not leave a core idle.
    jobs.sort(key=lambda j: -j[0].iterations * j[2] * len(j[0].versions))
    progress(f"running {len(jobs)} cells on {plan.workers} workers ...")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["benchmarks.runner", "benchmarks.report", "benchmarks.methods"])
    cells: list[dict[str, Any]] = []
    cells_done(0, len(jobs))
    with ProcessPoolExecutor(plan.workers, mp_context=context, max_tasks_per_child=1) as pool:
        for summary in pool.map(_cell, jobs):
            cells.append(summary)
            cells_done(len(cells), len(jobs))
            progress(f"  {summary['scenario']} / {summary['method']}: {summary['wall_s']:.1f} s")
    order = {(s.name, m): i for i, (s, m) in enumerate(cells_of(plan))}
    cells.sort(key=lambda c: order[(c["scenario"], c["method"])])

    progress("timing the production analysis ...")
    timing = compute.run(iterations=plan.compute_iterations, seed=plan.seed)
    compute_doc = {**asdict(timing), "target_ms": compute.TARGET_P95_MS}
    bounds = lower_bounds(plan.scenarios)
    floor = floors(plan.scenarios, bounds)
    judged = targets.evaluate(plan.scenarios, cells, bounds, compute_doc, floor)
    return {
        "seed": plan.seed,
        "mode": "quick" if plan.quick else "full",
        "replicates": {s.name: replicates_for(plan, s) for s in plan.scenarios},
        "reference": [c.as_dict() for c in checks],
        "cells": cells,
        "lower_bounds": bounds,
        "floors": floor,
        "compute": compute_doc,
        "targets": [t.as_dict() for t in judged],
        "wall_s": time.perf_counter() - started,
    }


def labels() -> dict[str, str]:
    return {m.name: m.label for m in METHODS}


def markdown(results: dict[str, Any], git_sha: str) -> str:
    """The report: provenance, reference checks, targets, and the results table."""
    checks = [
        reference.Check(**{k: v for k, v in c.items() if k != "ok"}) for c in results["reference"]
    ]
    judged = [targets.Target(**t) for t in results["targets"]]
    bounds = "\n".join(
        f"- {name}: {value:,.0f} requests (T*(mu) kl(delta, 1 - delta), delta = alpha)"
        + (
            "; Arbiter's stopping rule at that allocation: " + results["floors"][name]["describe"]
            if name in results.get("floors", {})
            else ""
        )
        for name, value in results["lower_bounds"].items()
    )
    return (
        "\n\n".join(
            [
                "# Arbiter benchmark results",
                f"Mode {results['mode']}, seed {results['seed']}, git {git_sha}, wall time"
                f" {results['wall_s']:.0f} s. Replicates per scenario: "
                + ", ".join(f"{k} {v}" for k, v in results["replicates"].items())
                + ".",
                "## Reference figures reproduced first\n\n" + reference.table(checks),
                "## Arbiter against its targets\n\n" + targets.table(judged),
                "## Every method, every scenario\n\n" + report.table(results["cells"], labels()),
                "## Lower bounds (Garivier-Kaufmann)\n\n"
                + (bounds or "- none (no A/B/n scenario)"),
                compute.format_result(
                    compute.Result(
                        **{k: v for k, v in results["compute"].items() if k != "target_ms"}
                    )
                ),
            ]
        )
        + "\n"
    )


def write(results: dict[str, Any], out: Path, git_sha: str) -> list[Path]:
    """Write results JSON at `out`, and the .md and .png beside it. Returns the paths."""
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {**results, "git_sha": git_sha}
    out.write_text(json.dumps(_clean(results), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    md = out.with_suffix(".md")
    md.write_text(markdown(results, git_sha), encoding="utf-8")
    written = [out, md]
    png = out.with_suffix(".png")
    if report.plot(results["cells"], labels(), png):
        written.append(png)
    return written


def _clean(x: object) -> object:
    """NaN and infinities become null, so the file is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x
