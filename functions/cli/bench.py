"""`arbiter bench`: run the benchmark suite in `benchmarks/`."""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks import compute
from functions.cli import args as args_types


def register(commands: Any) -> None:
    p = commands.add_parser("bench", help="run the benchmarks", description=__doc__)
    p.add_argument(
        "--iterations",
        type=args_types.positive_int,
        default=1000,
        help="analyses to time (default 1000)",
    )
    p.add_argument(
        "--seed", type=args_types.seed, default=20261123, help="seed for the simulated counts"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    result = compute.run(iterations=args.iterations, seed=args.seed)
    print(compute.format_result(result))
    return 0 if result.p95_ms <= compute.TARGET_P95_MS else 1
