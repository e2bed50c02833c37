"""The harness checks itself first: it must reproduce the reference figures
(docs/statistics.md#reference-figures).

If the simulator, the Prometheus view or a baseline drifted, these would drift with
them, and every comparison after would be worthless; so the suite refuses to run when one
misses its tolerance: if these drift, the simulator is wrong, not the method under test.

- Naive peeking: a two-sided 5% z test re-run at 360 equally spaced looks on an
  A/A rejects in 46.4% of runs (Brownian-motion Monte Carlo).
- Flagger thresholds: at 1 rps, 1-minute checks, weight 10 -> 50% by 10, five
  failed checks to roll back, a canary with 2% errors against a 1% SLO is promoted 87.6%.
- The oracle (B8): Wald's SPRT at a 5% canary, 50 rps, 1% vs 2% errors, decides in
  about 4.9 minutes (154 errors, Wald's approximation, which ignores overshoot).
- Fixed horizon: 12.8 minutes at 95% power for the same canary.
- Garivier-Kaufmann: the 4-version lower bound is 248,567 requests, 2 versions 3,064.
Monte Carlo figures pass within 3 standard errors plus a stated allowance for what the
reference idealises (Brownian motion, fixed per-check sample sizes, no overshoot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks import scenario as scenarios
from benchmarks.methods import base, fixed_horizon, flagger, sprt_oracle
from benchmarks.methods.lower_bound import lower_bound
from benchmarks.runner import run_cell
from benchmarks.scrape import Scraper
from benchmarks.simulator import SimConfig, Simulator, VersionTruth


class ReferenceMismatchError(RuntimeError):
    """The harness does not reproduce a reference figure: its simulator is wrong."""


@dataclass(frozen=True)
class Check:
    name: str
    source: str
    expected: float
    measured: float
    tolerance: float
    replicates: int

    @property
    def ok(self) -> bool:
        return abs(self.measured - self.expected) <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def _canary(
    name: str, rate: float, interval: float, horizon: float, canary_error: float
) -> scenarios.Scenario:
    return scenarios.parse(
        {
            "name": name,
            "pattern": "Canary",
            "traffic": {"rateRps": rate, "intervalSeconds": interval, "horizonSeconds": horizon},
            "versions": [
                {"name": "baseline", "errorRate": 0.01},
                {"name": "canary", "errorRate": canary_error},
            ],
            # A 1.0 margin makes the fair oracle test r = 1 against the truth, as Wald did.
            "criteria": {"objectives": [{"metric": "error-rate", "maxRatio": 1.0}]},
            "weights": {"initialCandidateWeight": 5},
            "expected": {"action": "rollback"},
        },
        f"(reference {name})",
    )


def peeking(replicates: int, seed: int, looks: int = 360) -> float:
    """Share of A/A runs in which a two-sided 5% z test rejects at some look."""
    truth = VersionTruth("a", 0.1), VersionTruth("b", 0.1)
    sim = Simulator(SimConfig(truth, 50.0, 10.0, ()), replicates, np.random.default_rng(seed))
    view = Scraper((replicates, 2), ())
    crit = base.z_critical(0.05)
    rejected = np.zeros(replicates, dtype=np.bool_)
    for i in range(looks):
        obs = view.observe(sim.step([0.5, 0.5]), i == looks - 1)
        z = base.z_pooled(
            obs.errors[:, 1], obs.requests[:, 1], obs.errors[:, 0], obs.requests[:, 0]
        )
        rejected |= np.abs(z) > crit
    return float(rejected.mean())


def reproduce(seed: int, replicates: int = 4000) -> list[Check]:
    """Every reference check, measured."""
    checks: list[Check] = []
    se = math.sqrt(0.464 * 0.536 / replicates)
    checks.append(
        Check(
            "naive peeking, A/A, 360 looks: P(false rejection)",
            "docs/statistics.md#peeking",
            0.464,
            peeking(replicates, seed),
            3 * se + 0.02,
            replicates,
        )
    )
    low = _canary("flagger-1rps", 1.0, 60.0, 4 * 3600.0, 0.02)
    cell = run_cell(low, flagger.INFO, replicates, seed, quick=True)
    promoted = float(np.mean((cell.action == base.PROMOTE) & (cell.version == 1)))
    se = math.sqrt(0.876 * 0.124 / replicates)
    checks.append(
        Check(
            "Flagger thresholds, 1 rps, 2% vs 1% SLO: P(promote)",
            "docs/statistics.md#reference-figures",
            0.876,
            promoted,
            3 * se + 0.01,
            replicates,
        )
    )
    s2 = _canary("oracle-s2", 50.0, 10.0, 3600.0, 0.02)
    cell = run_cell(s2, sprt_oracle.INFO, replicates, seed, quick=True)
    minutes = cell.iteration[cell.iteration > 0] * s2.interval_s / 60.0
    checks.append(
        Check(
            "SPRT oracle, 5% canary, 1% vs 2% errors: mean minutes to decide",
            "docs/statistics.md#reference-figures",
            4.9,
            float(minutes.mean()),
            # Wald's formula ignores the overshoot past the boundary (+10-15% here) and the
            # 10 s granularity of the looks; a broken simulator would miss by far more.
            0.2 * 4.9,
            replicates,
        )
    )
    checks.append(
        Check(
            "fixed-horizon z test, same canary, 95% power: minutes",
            "docs/statistics.md#reference-figures",
            12.8,
            fixed_horizon.planned_requests(s2) / s2.rate_rps / 60.0,
            0.05,
            0,
        )
    )
    four = lower_bound((0.109, 0.106, 0.103, 0.100), 0.05).samples
    checks.append(
        Check(
            "lower bound, 4 versions 10.9/10.6/10.3/10.0%",
            "docs/statistics.md#reference-figures",
            248567,
            four,
            1.0,
            0,
        )
    )
    two = lower_bound((0.99, 0.98), 0.05).samples
    checks.append(
        Check(
            "lower bound, 2 versions 1% vs 2% errors",
            "docs/statistics.md#reference-figures",
            3064,
            two,
            1.0,
            0,
        )
    )
    return checks


def verify(checks: list[Check]) -> None:
    """Raise if any reference figure is not reproduced."""
    bad = [c for c in checks if not c.ok]
    if bad:
        lines = [
            f"{c.name}: expected {c.expected:g} ({c.source}), measured {c.measured:.4g}"
            f" (tolerance {c.tolerance:.3g})"
            for c in bad
        ]
        raise ReferenceMismatchError(
            "the benchmark harness does not reproduce the reference figures of"
            " docs/statistics.md, so its simulator or a"
            " baseline is wrong; no comparison was run:\n  " + "\n  ".join(lines)
        )


def table(checks: list[Check]) -> str:
    rows = [
        "| reference figure | source | expected | measured | tolerance | |",
        "|---|---|---|---|---|---|",
    ]
    for c in checks:
        rows.append(
            f"| {c.name} | {c.source} | {c.expected:g} | {c.measured:.4g} | ±{c.tolerance:.3g}"
            f" | {'ok' if c.ok else 'MISMATCH'} |"
        )
    return "\n".join(rows)
