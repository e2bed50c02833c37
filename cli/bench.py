"""`arbiter bench`: the compute benchmark, and with a mode or scenarios the decision benchmark.

Without options it times one analysis iteration (p50/p95 ms, as before). `--quick`,
`--full` or `--scenario FILE...` also run the decision-quality suite of `benchmarks/`:
the reference figures (docs/statistics.md#reference-figures) first (a mismatch stops the
run, exit 1), then every method on every scenario, writing results JSON plus a markdown
report and a PNG plot beside it, and printing the report. On a terminal the cells show as a
progress bar and the report as rendered tables (rich); piped, both stay plain text.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks import compute, reference, suite
from benchmarks.methods import METHODS
from benchmarks.scenario import ScenarioError, load, shipped
from cli import args as args_types
from cli.analyze import InputError

DEFAULT_OUT = "bench-results/results.json"


def register(commands: Any) -> None:
    p = commands.add_parser("bench", help="run the benchmarks", description=__doc__)
    p.add_argument(
        "--iterations",
        type=args_types.positive_int,
        default=1000,
        help="analyses to time (default 1000)",
    )
    p.add_argument(
        "--seed", type=args_types.seed, default=20261123, help="seed for every simulation"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="run the decision benchmark, quick mode")
    mode.add_argument(
        "--full", action="store_true", help="the decision benchmark, 10x the replicates"
    )
    p.add_argument(
        "--scenario", nargs="+", metavar="FILE", help="scenario YAML files (default: all shipped)"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        metavar="NAME",
        help=f"methods to compare (default all): {', '.join(m.name for m in METHODS)}",
    )
    p.add_argument(
        "--replicates",
        type=args_types.positive_int,
        help="replicates per scenario (overrides the mode)",
    )
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"results JSON; .md and .png go beside it (default {DEFAULT_OUT})",
    )
    p.add_argument(
        "--workers",
        type=args_types.positive_int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (default 2, or the cores there are)",
    )
    p.set_defaults(handler=run)


def _git_sha() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


@contextmanager
def _progress(
    console: Console | None = None,
) -> Iterator[tuple[Callable[[str], None], Callable[[int, int], None]]]:
    """Where the suite's progress goes: a live bar on a terminal's stderr, else plain lines
    (a CI log keeps every one)."""
    console = console or Console(stderr=True)
    if not console.is_terminal:

        def say(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        yield say, lambda done, total: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("cells", total=None)

        def cells_done(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        def say_above(line: str) -> None:
            bar.console.print(line, markup=False, highlight=False)

        yield say_above, cells_done


def run(args: argparse.Namespace) -> int:
    decision = args.quick or args.full or args.scenario or args.methods or args.replicates
    if not decision:
        result = compute.run(iterations=args.iterations, seed=args.seed)
        print(compute.format_result(result))
        return 0 if result.p95_ms <= compute.TARGET_P95_MS else 1
    names = [m.name for m in METHODS]
    methods = [n for item in args.methods or names for n in item.split(",") if n]
    unknown = [m for m in methods if m not in names]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(names)}")
    try:
        scenarios = tuple(load(f) for f in args.scenario) if args.scenario else tuple(shipped())
    except ScenarioError as e:
        raise InputError(str(e)) from e
    plan = suite.Plan(
        scenarios=scenarios,
        methods=tuple(methods),
        seed=args.seed,
        quick=not args.full,
        replicates=args.replicates,
        workers=args.workers,
        compute_iterations=args.iterations,
    )
    try:
        with _progress() as (say, cells_done):
            results = suite.run(plan, progress=say, cells_done=cells_done)
    except reference.ReferenceMismatchError as e:
        print(f"arbiter bench: REFERENCE MISMATCH: {e}", file=sys.stderr)
        return 1
    sha = _git_sha()
    written = suite.write(results, Path(args.out), sha)
    report = suite.markdown({**results, "git_sha": sha}, sha)
    if sys.stdout.isatty():
        Console().print(Markdown(report))
    else:
        print(report)
    if len(written) < 3:
        print("arbiter bench: matplotlib is not installed; no plot written", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0
