"""Arbiter's targets (docs/statistics.md#targets), judged against the benchmark's figures.

Each target is met when its 95% Monte Carlo interval clears the bound, missed when the
point estimate is on the wrong side, and "within MC error" otherwise
(docs/statistics.md#the-harness). Time ratios to the oracle compare medians, other ratios
means (to the lower bound, or to Thompson sampling stopped by Arbiter's own anytime-valid
rule, `methods/thompson_glr.py`); a replicate that never reached the right decision counts
as taking the whole horizon, so those ratios can only flatter the slower method's rival,
never Arbiter. The oracle decides the objective's own hypotheses
(`sprt_oracle.hypotheses`), and each ratio names them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.methods import sprt_oracle
from benchmarks.scenario import Scenario

ARBITER = "arbiter"


@dataclass(frozen=True)
class Target:
    target: str
    scenario: str
    status: str  # "met" | "missed" | "within MC error" | "not run"
    figure: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def _at_most(rate: Mapping[str, float], bound: float) -> str:
    if rate["hi"] <= bound:
        return "met"
    return "missed" if rate["rate"] > bound else "within MC error"


def _at_least(rate: Mapping[str, float], bound: float) -> str:
    if rate["lo"] >= bound:
        return "met"
    return "missed" if rate["rate"] < bound else "within MC error"


def _ratio_status(ratio: float, bound: float) -> str:
    return "met" if ratio <= bound else "missed"


def _p(rate: Mapping[str, float]) -> str:
    return f"{100 * rate['rate']:.1f}% (95% CI {100 * rate['lo']:.1f}–{100 * rate['hi']:.1f}%)"


def evaluate(
    scenarios: Sequence[Scenario],
    cells: Sequence[Mapping[str, Any]],
    lower_bounds: Mapping[str, float],
    compute: Mapping[str, float] | None,
    floors: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Target]:
    """Every target for which the run has the cells it needs."""
    by = {(c["scenario"], c["method"]): c for c in cells}
    out: list[Target] = []
    for s in scenarios:
        mine = by.get((s.name, ARBITER))
        if mine is None:
            continue
        alpha = s.alpha
        if "false-decisions" in s.checks:
            for kind in ("false_promotion", "false_rollback"):
                rate = mine[kind]
                label = kind.replace("_", " ")
                out.append(
                    Target(f"{label} <= alpha ({alpha:g})", s.name, _at_most(rate, alpha), _p(rate))
                )
        if "bad-canary" in s.checks:
            out += _bad_canary(s, mine, by.get((s.name, "sprt-oracle")))
        if "good-canary" in s.checks:
            out += _good_canary(s, mine, by.get((s.name, "sprt-oracle")))
        if "abn" in s.checks:
            out += _abn(
                s,
                mine,
                by.get((s.name, "thompson-glr")),
                lower_bounds.get(s.name),
                by.get((s.name, "oracle-tracking")),
                (floors or {}).get(s.name),
                by.get((s.name, "oracle-tracking-glr")),
            )
        if "low-traffic" in s.checks:
            rate = mine["false_promotion"]
            out.append(
                Target(
                    f"low traffic: P(promote bad) <= alpha ({alpha:g})",
                    s.name,
                    _at_most(rate, alpha),
                    _p(rate),
                )
            )
        if "noisy" in s.checks:
            out += _noisy(
                s,
                mine,
                by.get((s.clean or "", ARBITER)),
                by.get((s.name, "sprt-oracle-noise")),
                by.get((s.clean or "", "sprt-oracle")),
            )
    if compute is not None:
        p95 = compute["p95_ms"]
        status = "met" if p95 <= compute["target_ms"] else "missed"
        out.append(
            Target(
                f"analysis compute p95 <= {compute['target_ms']:g} ms"
                " (4 versions, 3 metrics, 12 buckets)",
                "compute",
                status,
                f"p95 {p95:.2f} ms, p50 {compute['p50_ms']:.2f} ms"
                f" over {compute['iterations']} iterations",
            )
        )
    return out


def _bad_canary(
    s: Scenario, mine: Mapping[str, Any], oracle: Mapping[str, Any] | None
) -> list[Target]:
    out = []
    rollback = mine["correct"]
    out.append(
        Target(
            "bad canary rolled back with P >= 0.95", s.name, _at_least(rollback, 0.95), _p(rollback)
        )
    )
    if oracle is None:
        return out
    out.append(_time_ratio("time to roll back", s, mine, oracle))
    # On a latency regression the harm served is slow requests, not errors.
    harm = (
        "extra_slow"
        if s.latency_objective is not None and mine["extra_errors"]["mean"] == 0
        else "extra_errors"
    )
    what = harm.replace("_", " ").replace("slow", "slow requests")
    e_mine, e_oracle = mine[harm]["mean"], oracle[harm]["mean"]
    ratio = e_mine / e_oracle if e_oracle > 0 else float("inf")
    out.append(
        Target(
            f"{what} served <= 1.5x the oracle's",
            s.name,
            _ratio_status(ratio, 1.5),
            f"{ratio:.2f}x ({e_mine:.1f} vs {e_oracle:.1f} over the horizon; oracle: {_oracle(s)})",
        )
    )
    return out


def _oracle(s: Scenario) -> str:
    h = sprt_oracle.hypotheses(s)
    share = (
        f"{s.initial_candidate_weight:g}% canary, deciding like Arbiter only at the"
        f" {s.interval_s:g}-s interval ends"
    )
    return f"{h.describe()}, {share}" if h is not None else "nothing to tell apart"


def _time_ratio(
    what: str, s: Scenario, mine: Mapping[str, Any], oracle: Mapping[str, Any]
) -> Target:
    t_mine = mine["time_to_correct_min_censored"]["median"]
    t_oracle = oracle["time_to_correct_min_censored"]["median"]
    ratio = t_mine / t_oracle if t_oracle > 0 else float("inf")
    return Target(
        f"median {what} <= 1.5x the oracle's",
        s.name,
        _ratio_status(ratio, 1.5),
        f"{ratio:.2f}x ({t_mine:.1f} vs {t_oracle:.1f} min; no right decision counts as the"
        f" {s.horizon_s / 60:.0f}-min horizon; oracle: {_oracle(s)})",
    )


def _good_canary(
    s: Scenario, mine: Mapping[str, Any], oracle: Mapping[str, Any] | None
) -> list[Target]:
    promoted = mine["correct"]
    out = [
        Target(
            "good canary promoted with P >= 0.95",
            s.name,
            _at_least(promoted, 0.95),
            _p(promoted),
        )
    ]
    if oracle is not None:
        out.append(_time_ratio("time to promote", s, mine, oracle))
    return out


def _abn(
    s: Scenario,
    mine: Mapping[str, Any],
    ts: Mapping[str, Any] | None,
    bound: float | None,
    tracking: Mapping[str, Any] | None = None,
    floor: Mapping[str, Any] | None = None,
    heuristic: Mapping[str, Any] | None = None,
) -> list[Target]:
    """The A/B/n targets. Each figure sets Arbiter beside the oracle that tracks the lower
    bound's allocation under the same stopping rule (`oracle_tracking`) and, where the
    run computed it, what the stopping rule itself costs at expected counts: the argument
    when a target is out of reach of any allocation under that rule."""
    out = []
    correct = mine["correct"]
    wrong, undecided = mine["false_promotion"]["rate"], mine["decisions"]["inconclusive"]["rate"]
    why = f"; wrong picks {100 * wrong:.1f}%, no decision by the horizon {100 * undecided:.1f}%"
    if tracking is not None:
        why += f"; oracle tracking {100 * tracking['correct']['rate']:.1f}%"
    out.append(
        Target(
            "A/B/n: correct best version with P >= 0.95",
            s.name,
            _at_least(correct, 0.95),
            _p(correct) + why,
        )
    )
    if bound:
        mean = _censored_requests(s, mine)
        ratio = mean / bound
        figure = f"{ratio:.2f}x (Arbiter {mean:,.0f}"
        if tracking is not None:
            figure += f", oracle tracking {_censored_requests(s, tracking):,.0f}"
        figure += f", lower bound {bound:,.0f} requests)"
        if floor is not None:
            figure += f"; floor of the stopping rule: {floor['describe']}"
        if heuristic is not None:
            used = _censored_requests(s, heuristic)
            figure += (
                f"; the same oracle stopped by GLR >= log((1 + log t)/alpha) (no guarantee)"
                f" takes {used:,.0f} ({used / bound:.2f}x)"
            )
        out.append(
            Target(
                "A/B/n: samples to decision <= 2x the lower bound",
                s.name,
                _ratio_status(ratio, 2.0),
                figure,
            )
        )
    if ts is not None:
        r_mine, r_ts = mine["lost_reward"]["mean"], ts["lost_reward"]["mean"]
        ratio = r_mine / r_ts if r_ts > 0 else float("inf")
        figure = f"{ratio:.2f}x (Arbiter {r_mine:.0f}"
        if tracking is not None:
            figure += f", oracle tracking {tracking['lost_reward']['mean']:.0f}"
        decided = 100 * (1 - ts["decisions"]["inconclusive"]["rate"])
        figure += (
            f", Thompson {r_ts:.0f} lost conversions over the horizon; Thompson decided in"
            f" {decided:.0f}%)"
        )
        if floor is not None and r_ts > 0:
            figure += (
                f"; deciding at all under the stopping rule costs at least"
                f" {floor['regret']:.0f} ({floor['regret'] / r_ts:.2f}x) at expected counts"
            )
        out.append(
            Target(
                "A/B/n: cumulative regret <= 1.25x that of Thompson sampling stopped by the"
                " same rule",
                s.name,
                _ratio_status(ratio, 1.25),
                figure,
            )
        )
    return out


def _censored_requests(s: Scenario, cell: Mapping[str, Any]) -> float:
    """Mean requests to the right decision; replicates without it count as the horizon's."""
    horizon_requests = s.rate_rps * s.horizon_s
    used = cell["requests_to_correct_censored"]["mean"]
    share = cell["correct"]["rate"]
    return float(share * (used if math.isfinite(used) else 0.0) + (1 - share) * horizon_requests)


def _noisy(
    s: Scenario,
    mine: Mapping[str, Any],
    clean: Mapping[str, Any] | None,
    oracle: Mapping[str, Any] | None = None,
    clean_oracle: Mapping[str, Any] | None = None,
) -> list[Target]:
    """The noisy-telemetry targets. Beside "no decision worse than the clean run" stands
    what the same noise costs the oracle that knows the effect and the noise
    (`sprt_oracle.NoiseAwareOracle` against the plain oracle on the clean run): the
    argument when the noise, not the method, takes the right decisions out of reach."""
    out = []
    crashed = mine["nonfinite_steps"]
    out.append(
        Target(
            "noisy telemetry: no crash, no NaN",
            s.name,
            "met" if crashed == 0 else "missed",
            f"{crashed} replicate-steps with a non-finite split",
        )
    )
    if s.expected.action != "rollback":
        # Where rolling back is right anyway, a rollback during the burst proves nothing.
        out.append(
            Target(
                "noisy telemetry: the global burst rolls nothing back",
                s.name,
                "met" if mine["burst_rollbacks"] == 0 else "missed",
                f"{mine['burst_rollbacks']} rollbacks during the burst or the 2 intervals after",
            )
        )
    if clean is not None:
        worse = []
        status = "met"
        for kind, higher_is_worse in (
            ("correct", False),
            ("false_promotion", True),
            ("false_rollback", True),
        ):
            a, b = mine[kind], clean[kind]
            sign = 1.0 if higher_is_worse else -1.0
            if sign * (a["rate"] - b["rate"]) > 0 and (a["lo"] > b["hi"] or a["hi"] < b["lo"]):
                status = "missed"
            elif sign * (a["rate"] - b["rate"]) > 0:
                status = "within MC error" if status == "met" else status
            worse.append(
                f"{kind.replace('_', ' ')} {100 * a['rate']:.1f}% vs {100 * b['rate']:.1f}% clean"
            )
        t, tc = mine["time_to_decision_min"]["median"], clean["time_to_decision_min"]["median"]
        figure = "; ".join(worse) + f"; median time {t:.1f} vs {tc:.1f} min"
        if oracle is not None and clean_oracle is not None:
            figure += (
                f"; the oracle that knows the effect and the noise: correct"
                f" {100 * oracle['correct']['rate']:.1f}% (false promotion"
                f" {100 * oracle['false_promotion']['rate']:.1f}%) vs the plain oracle's"
                f" {100 * clean_oracle['correct']['rate']:.1f}% clean"
            )
        out.append(
            Target("noisy telemetry: no decision worse than the clean run", s.name, status, figure)
        )
    return out


def table(targets: Sequence[Target]) -> str:
    rows = ["| target | scenario | status | figure |", "|---|---|---|---|"]
    rows += [f"| {t.target} | {t.scenario} | {t.status} | {t.figure} |" for t in targets]
    return "\n".join(rows)
