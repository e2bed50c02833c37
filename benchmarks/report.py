"""From per-replicate outcomes to the numbers people read: JSON, a markdown table, a plot.

Per cell: decision counts against the truth with 95% Wilson intervals, time and requests
to a decision (mean, median, p90), regret over the horizon (extra errors, lost
conversions, requests served to a worse version) with normal 95% intervals, the peak
candidate weight, compute per iteration and peak memory.

Outcomes: "promote" is a candidate promoted; "rollback" ends on the baseline (a rollback,
or the baseline named winner); "inconclusive" is no decision by the horizon. A promotion
of anything but the correct version is a false promotion; a rollback when a candidate
should have been promoted, or when nothing should have been decided, a false rollback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.methods import base
from benchmarks.runner import CellResult
from benchmarks.scenario import Scenario

Z95 = 1.959963984540054


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _rate(mask: npt.NDArray[np.bool_]) -> dict[str, float]:
    k, n = int(mask.sum()), int(mask.size)
    lo, hi = wilson(k, n)
    return {"rate": k / n if n else 0.0, "lo": lo, "hi": hi, "count": k}


def _mean(values: npt.NDArray[np.float64]) -> dict[str, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan}
    half = Z95 * float(v.std(ddof=1)) / math.sqrt(v.size) if v.size > 1 else 0.0
    m = float(v.mean())
    return {"mean": m, "lo": m - half, "hi": m + half}


def _spread(values: npt.NDArray[np.float64]) -> dict[str, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"n": 0, "mean": math.nan, "median": math.nan, "p90": math.nan}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p90": float(np.percentile(v, 90)),
    }


def outcomes(cell: CellResult) -> dict[str, npt.NDArray[np.bool_]]:
    promote = (cell.action == base.PROMOTE) & (cell.version > 0)
    rollback = (cell.action == base.ROLLBACK) | (
        (cell.action == base.PROMOTE) & (cell.version == 0)
    )
    return {"promote": promote, "rollback": rollback, "inconclusive": ~promote & ~rollback}


def correctness(cell: CellResult, scenario: Scenario) -> dict[str, npt.NDArray[np.bool_]]:
    o = outcomes(cell)
    expected = scenario.expected
    if expected.action == "promote":
        correct = o["promote"] & (cell.version == expected.version)
    elif expected.action == "rollback":
        correct = o["rollback"]
    else:
        correct = o["inconclusive"]
    return {
        "correct": correct,
        "false_promotion": o["promote"] & ~correct,
        "false_rollback": o["rollback"] & (expected.action != "rollback"),
    }


def summarise(cell: CellResult, scenario: Scenario) -> dict[str, Any]:
    """Everything the JSON holds for one cell."""
    o = outcomes(cell)
    c = correctness(cell, scenario)
    minutes = np.where(cell.iteration > 0, cell.iteration * scenario.interval_s / 60.0, np.nan)
    horizon_min = scenario.horizon_s / 60.0
    correct_min = np.where(c["correct"] & (cell.iteration > 0), minutes, horizon_min)
    ms = cell.step_ms
    # Per experiment: a step's time over the replicates still running (a method may skip
    # the decided ones, so dividing by all of them would flatter it), taken while at least
    # half are running (a method that does not skip would look slow on the last few).
    bulk = cell.live >= cell.replicates / 2
    per = (ms / np.maximum(cell.live, 1))[bulk] if bulk.any() else ms / cell.replicates
    return {
        "scenario": scenario.name,
        "method": cell.method,
        "replicates": cell.replicates,
        "seed": cell.seed,
        "decisions": {name: _rate(mask) for name, mask in o.items()},
        "correct": _rate(c["correct"]),
        "false_promotion": _rate(c["false_promotion"]),
        "false_rollback": _rate(c["false_rollback"]),
        "time_to_decision_min": _spread(minutes),
        "requests_to_decision": _spread(cell.requests),
        "time_to_correct_min_censored": {
            **_mean(correct_min),
            "median": float(np.median(correct_min)),
        },
        "requests_to_correct_censored": _mean(
            np.where(c["correct"] & (cell.iteration > 0), cell.requests, np.nan)
        ),
        "extra_errors": _mean(cell.extra_errors),
        "extra_slow": _mean(cell.extra_slow),
        "lost_reward": _mean(cell.lost_reward),
        "exposure": _mean(cell.exposure),
        "peak_candidate_weight": _mean(cell.peak_weight),
        "step_ms": {
            "p50": float(np.percentile(ms, 50)),
            "p95": float(np.percentile(ms, 95)),
            "per_replicate_p50": float(np.percentile(per, 50)),
            "per_replicate_p95": float(np.percentile(per, 95)),
        },
        "nonfinite_steps": cell.nonfinite,
        "burst_rollbacks": cell.burst_rollbacks,
        "peak_rss_mb": cell.peak_rss_mb,
        "wall_s": cell.wall_s,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _num(x: float, digits: int = 1) -> str:
    if not math.isfinite(x):
        return "–"
    if abs(x) >= 10000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _slow(c: Mapping[str, Any]) -> str:
    slow = c.get("extra_slow", {}).get("mean", 0.0)
    return f" ({_num(slow)})" if slow else ""


def table(cells: Sequence[Mapping[str, Any]], labels: Mapping[str, str]) -> str:
    """The markdown results table, one row per cell."""
    head = (
        "| scenario | method | promote / rollback / inconclusive % | false promotion % (95% CI)"
        " | false rollback % (95% CI) | time to decision, min (median / p90) | requests to"
        " decision (mean) | extra errors (extra slow) | lost conversions"
        " | requests to a worse version | peak candidate weight %"
        " | compute ms/iteration per replicate (p50 / p95) | peak RSS MB |"
    )
    rule = "|" + "---|" * 13
    rows = [head, rule]
    for c in cells:
        d = c["decisions"]
        fp, fr = c["false_promotion"], c["false_rollback"]
        t, rq = c["time_to_decision_min"], c["requests_to_decision"]
        ms = c["step_ms"]
        rows.append(
            f"| {c['scenario']} | {labels.get(c['method'], c['method'])}"
            f" | {_pct(d['promote']['rate'])} / {_pct(d['rollback']['rate'])}"
            f" / {_pct(d['inconclusive']['rate'])}"
            f" | {_pct(fp['rate'])} ({_pct(fp['lo'])}–{_pct(fp['hi'])})"
            f" | {_pct(fr['rate'])} ({_pct(fr['lo'])}–{_pct(fr['hi'])})"
            f" | {_num(t['median'])} / {_num(t['p90'])}"
            f" | {_num(rq['mean'], 0)}"
            f" | {_num(c['extra_errors']['mean'])}{_slow(c)}"
            f" | {_num(c['lost_reward']['mean'])}"
            f" | {_num(c['exposure']['mean'], 0)}"
            f" | {_num(100 * c['peak_candidate_weight']['mean'], 0)}"
            f" | {ms['per_replicate_p50']:.3f} / {ms['per_replicate_p95']:.3f}"
            f" | {c['peak_rss_mb']:.0f} |"
        )
    return "\n".join(rows)


def plot(cells: Sequence[Mapping[str, Any]], labels: Mapping[str, str], path: Path) -> bool:
    """Two heat maps, scenario x method: median time to decision and false-decision rate.

    Returns False (and writes nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: PLC0415  (optional dependency, loaded only to plot)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        from matplotlib.colors import LogNorm  # noqa: PLC0415
    except ImportError:
        return False
    scenarios = list(dict.fromkeys(c["scenario"] for c in cells))
    methods = list(dict.fromkeys(c["method"] for c in cells))
    time = np.full((len(scenarios), len(methods)), np.nan)
    false = np.full_like(time, np.nan)
    for c in cells:
        i, j = scenarios.index(c["scenario"]), methods.index(c["method"])
        time[i, j] = c["time_to_decision_min"]["median"]
        false[i, j] = 100 * (c["false_promotion"]["rate"] + c["false_rollback"]["rate"])
    # Room for the rotated method names below however few scenarios there are.
    size = (2.5 + 1.1 * len(methods) * 2, 2.5 + 0.45 * len(scenarios))
    fig, axes = plt.subplots(1, 2, figsize=size)
    panels = (
        (axes[0], time, "median time to decision (min)", "viridis", "{:.0f}"),
        (axes[1], false, "false decisions (%)", "Reds", "{:.0f}"),
    )
    for ax, data, title, cmap, fmt in panels:
        shown = np.ma.masked_invalid(data)
        # Minutes span 0.2 to 1,440: only a log scale shows the differences that matter.
        top = float(np.nanmax(data)) if np.isfinite(data).any() else 1.0
        norm = LogNorm(vmin=0.1, vmax=max(1.0, top)) if ax is axes[0] else None
        ax.imshow(
            np.ma.masked_less_equal(shown, 0) if norm else shown,
            cmap=cmap,
            aspect="auto",
            norm=norm,
        )
        ax.set_title(title)
        ax.set_xticks(
            range(len(methods)),
            [labels.get(m, m) for m in methods],
            rotation=60,
            ha="right",
            fontsize=7,
        )
        ax.set_yticks(range(len(scenarios)), scenarios, fontsize=7)
        for i in range(len(scenarios)):
            for j in range(len(methods)):
                if np.isfinite(data[i, j]):
                    ax.text(
                        j,
                        i,
                        fmt.format(data[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="black",
                        bbox={"facecolor": "white", "alpha": 0.6, "lw": 0, "pad": 0.5},
                    )
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return True
