"""`arbiter plan FILE --rate RPS`: how long a decision will take, before the experiment runs.

For an Experiment file and a request rate, simulate the experiment with the benchmark's
simulator (`benchmarks.simulator`, through `benchmarks.runner`) and the very decision
pipeline `assess` runs (`analytics.batch`, which shares the winner and the A/B/n weights
with `analytics.analysis.analyze`), and print, per case, the distribution of the time to a
decision (median, p90), the probability of deciding within the horizon (the experiment's
iterations times its interval), what was decided, and the bad requests the worse versions
served on top of the baseline's own.

The cases (the effects to detect):
- equal: every version behaves like the baseline (a good candidate: it should be promoted,
  or for A/B and A/B/n with nothing to choose, no winner);
- worse: every candidate fails at --worse-ratio (default 2) times the baseline's error
  rate (it should be rolled back);
- better (with a reward): the last candidate converts --lift (default 5%, relative) more.

What is simulated: objectives with a quantile are latency histograms (lognormal, Prometheus'
default buckets), every other objective reads the error rate (errors out of requests), and
the first reward is a conversion rate (successes out of requests). The baseline's error
rate defaults to half the smallest upperLimit below 1 (else 0.5%); its reward rate to 10%.
Seeded (`--seed`), so the answer is reproducible.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from analytics.model import (
    Criteria,
    Experiment,
    ExperimentSpec,
    Objective,
    Reward,
    TestingPattern,
)
from analytics.parse import SpecError, parse_experiment
from benchmarks.faults import Faults
from benchmarks.methods import arbiter
from benchmarks.runner import INCONCLUSIVE, run_cell
from benchmarks.scenario import (
    ERROR_METRIC,
    LATENCY_METRIC,
    REWARD_METRIC,
    Expected,
    Scenario,
)
from benchmarks.simulator import VersionTruth
from cli import args as args_types
from cli.analyze import InputError, _listing, load_document
from functions.core.status import resolved_document

DEFAULT_REPLICATES: Final = 200
DEFAULT_REWARD_RATE: Final = 0.10
DEFAULT_ERROR_RATE: Final = 0.005


def register(commands: Any) -> None:
    p = commands.add_parser(
        "plan",
        help="simulate an Experiment at a request rate: time to decision, P(decide)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="Experiment YAML/JSON file, or - for standard input")
    p.add_argument(
        "--rate",
        type=args_types.positive_float,
        required=True,
        help="requests per second reaching the model, all versions together",
    )
    p.add_argument("--seed", type=args_types.seed, default=1, help="seed (default 1)")
    p.add_argument(
        "--replicates",
        type=args_types.positive_int,
        default=DEFAULT_REPLICATES,
        help=f"simulated experiments per case (default {DEFAULT_REPLICATES})",
    )
    p.add_argument(
        "--error-rate",
        type=args_types.positive_float,
        help="the baseline's error rate (default: half the smallest upperLimit below 1)",
    )
    p.add_argument(
        "--worse-ratio",
        type=args_types.positive_float,
        default=2.0,
        help="a worse candidate's error rate, as a multiple of the baseline's (default 2)",
    )
    p.add_argument(
        "--reward-rate",
        type=args_types.positive_float,
        default=DEFAULT_REWARD_RATE,
        help=f"the baseline's conversion rate (default {DEFAULT_REWARD_RATE:g})",
    )
    p.add_argument(
        "--lift",
        type=args_types.positive_float,
        default=0.05,
        help="the better candidate's relative reward lift (default 0.05)",
    )
    p.set_defaults(handler=run)


@dataclass(frozen=True)
class CaseResult:
    case: str
    expected: str
    decided: float
    median_min: float
    p90_min: float
    outcomes: dict[str, float]
    extra_bad: float


def _experiment(source: str) -> Experiment:
    document = load_document(source)
    name = "standard input" if source == "-" else source
    if isinstance(document, dict):
        with contextlib.suppress(AttributeError, TypeError, KeyError):
            document = resolved_document(document)
    try:
        experiment = parse_experiment(document)
    except SpecError as e:
        raise InputError(f"{name} is not a valid Experiment:\n  {_listing(e.problems)}") from e
    spec = experiment.spec
    if spec.version_info is None:
        raise InputError(
            f"{name}: spec.versionInfo: plan needs the versions named (on a cluster start"
            " resolves them; write them out in the file)"
        )
    if spec.strategy.testing_pattern is TestingPattern.CONFORMANCE:
        raise InputError(
            f"{name}: spec.strategy.testingPattern: Conformance tests one version; there is"
            " no decision between versions to plan"
        )
    if not spec.criteria.objectives and not spec.criteria.rewards:
        raise InputError(
            f"{name}: spec.criteria: no objectives and no reward, so nothing can decide"
        )
    return experiment


def _simulated_spec(spec: ExperimentSpec) -> ExperimentSpec:
    """The spec with its metrics renamed to the ones the simulator produces."""
    objectives = tuple(
        dataclasses.replace(o, metric=LATENCY_METRIC if o.quantile is not None else ERROR_METRIC)
        for o in spec.criteria.objectives
    )
    rewards = tuple(Reward(REWARD_METRIC, r.preferred_direction) for r in spec.criteria.rewards[:1])
    criteria = Criteria(objectives, rewards, alpha=spec.criteria.alpha)
    return dataclasses.replace(spec, criteria=criteria)


def _baseline_error_rate(objectives: Sequence[Objective]) -> float:
    limits = [
        o.upper_limit
        for o in objectives
        if o.quantile is None and o.upper_limit is not None and 0 < o.upper_limit < 1
    ]
    return min(limits) / 2 if limits else DEFAULT_ERROR_RATE


def _scenario(
    name: str,
    spec: ExperimentSpec,
    versions: tuple[VersionTruth, ...],
    rate: float,
    expected: Expected,
) -> Scenario:
    interval = float(spec.duration.interval_seconds)
    latency = any(o.metric == LATENCY_METRIC for o in spec.criteria.objectives)
    return Scenario(
        name=name,
        description=name,
        pattern=spec.strategy.testing_pattern,
        versions=versions,
        rate_rps=rate,
        interval_s=interval,
        horizon_s=interval * spec.duration.total_iterations,
        alpha=spec.criteria.alpha,
        spec=spec,
        initial_candidate_weight=0.0,
        slo_error_rate=1.0,
        slo_p99_latency_s=math.inf,
        design_effect_ratio=2.0,
        design_power=0.95,
        faults=Faults(),
        latency_telemetry=latency,
        expected=expected,
        checks=(),
        clean=None,
        methods=None,
        quick_replicates=None,
        source="arbiter plan",
    )


def cases(
    experiment: Experiment, rate: float, error_rate: float, worse: float, reward: float, lift: float
) -> list[tuple[str, str, Scenario]]:
    """(case, what should happen, scenario) for every case that applies."""
    spec = _simulated_spec(experiment.spec)
    assert spec.version_info is not None
    names = spec.version_info.names
    has_reward = bool(spec.criteria.rewards)
    mu = reward if has_reward else None
    equal = tuple(VersionTruth(n, error_rate, mu) for n in names)
    out: list[tuple[str, str, Scenario]] = []
    canary = spec.strategy.testing_pattern is TestingPattern.CANARY
    equal_expected = Expected("promote", 1) if canary else Expected("none", 0)
    out.append(
        (
            "equal",
            "promote" if canary else "no winner",
            _scenario("equal", spec, equal, rate, equal_expected),
        )
    )
    bad = (equal[0], *tuple(VersionTruth(n, min(error_rate * worse, 1.0), mu) for n in names[1:]))
    if spec.criteria.objectives:
        out.append(
            (
                f"worse (errors x{worse:g})",
                "roll back",
                _scenario("worse", spec, bad, rate, Expected("rollback", 0)),
            )
        )
    if has_reward and mu is not None:
        higher = spec.criteria.rewards[0].preferred_direction.value == "High"
        top = min(mu * (1 + lift), 1.0) if higher else mu / (1 + lift)
        better = (*equal[:-1], VersionTruth(names[-1], error_rate, top))
        out.append(
            (
                f"better (reward {'+' if higher else '-'}{100 * lift:g}%)",
                f"promote {names[-1]}",
                _scenario("better", spec, better, rate, Expected("promote", len(names) - 1)),
            )
        )
    return out


def simulate(
    scenario: Scenario, case: str, expected: str, replicates: int, seed: int
) -> CaseResult:
    cell = run_cell(scenario, arbiter.INFO, replicates, seed, quick=True)
    decided = cell.action != INCONCLUSIVE
    minutes = np.where(decided, cell.iteration * scenario.interval_s / 60.0, np.inf)
    names = scenario.names
    outcomes: dict[str, float] = {}
    for r in range(replicates):
        if not decided[r]:
            key = "undecided"
        elif cell.action[r] == 1:
            key = f"promote {names[cell.version[r]]}"
        else:
            key = "roll back"
        outcomes[key] = outcomes.get(key, 0.0) + 1.0 / replicates
    return CaseResult(
        case=case,
        expected=expected,
        decided=float(decided.mean()),
        median_min=float(np.quantile(minutes, 0.5, method="higher")),
        p90_min=float(np.quantile(minutes, 0.9, method="higher")),
        outcomes=dict(sorted(outcomes.items(), key=lambda kv: -kv[1])),
        extra_bad=float(np.mean(cell.extra_errors + cell.extra_slow)),
    )


def _minutes(x: float, horizon_min: float) -> str:
    return f"> {horizon_min:g} (horizon)" if not math.isfinite(x) else f"{x:.1f}"


def run(args: argparse.Namespace) -> int:
    experiment = _experiment(args.file)
    spec = experiment.spec
    error_rate = (
        args.error_rate
        if args.error_rate is not None
        else _baseline_error_rate(spec.criteria.objectives)
    )
    if not 0 < error_rate < 1:
        raise InputError(f"--error-rate: must be below 1, got {error_rate:g}")
    if not args.reward_rate < 1:
        raise InputError(f"--reward-rate: must be below 1, got {args.reward_rate:g}")
    horizon_min = spec.duration.interval_seconds * spec.duration.total_iterations / 60.0
    lines = [
        f"{experiment.namespace}/{experiment.name}: {spec.strategy.testing_pattern.value},"
        f" {args.rate:g} requests/s, {spec.duration.interval_seconds} s iterations,"
        f" horizon {horizon_min:g} min, alpha {spec.criteria.alpha:g};"
        f" baseline error rate {error_rate:g}"
        + (f", reward rate {args.reward_rate:g}" if spec.criteria.rewards else "")
        + f"; {args.replicates} simulated experiments per case, seed {args.seed}",
        "",
        "| case | should | P(decide within horizon) | minutes to decide (median / p90)"
        " | outcomes | extra bad requests |",
        "|---|---|---|---|---|---|",
    ]
    for case, expected, scenario in cases(
        experiment, args.rate, error_rate, args.worse_ratio, args.reward_rate, args.lift
    ):
        result = simulate(scenario, case, expected, args.replicates, args.seed)
        outcomes = ", ".join(f"{k} {100 * v:.0f}%" for k, v in result.outcomes.items())
        lines.append(
            f"| {case} | {expected} | {100 * result.decided:.0f}%"
            f" | {_minutes(result.median_min, horizon_min)}"
            f" / {_minutes(result.p90_min, horizon_min)} | {outcomes}"
            f" | {result.extra_bad:.1f} |"
        )
    if spec.criteria.rewards:
        lines.append("")
        lines.append(
            f"The reward {spec.criteria.rewards[0].metric} is simulated as a rate (successes"
            " out of requests)."
        )
    try:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stderr.close()
    return 0
