"""The `arbiter` console script: argument parsing and error-to-exit-code mapping only.

Exit codes: 0 success, 1 the command ran but the result is a failure, 2 bad input (a
message names the file and field; never a traceback).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence

from cli import analyze, bench, completion, control, describe, plan, report, run, watch


def version() -> str:
    try:
        return importlib.metadata.version("arbiter")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(prog: str = "arbiter") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Metrics-driven canary, A/B and A/B/n experiments for KServe models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    analyze.register(commands)
    bench.register(commands)
    plan.register(commands)
    run.register(commands)
    describe.register(commands)
    watch.register(commands)
    report.register(commands)
    control.register(commands)
    completion.register(commands, parser)
    return parser


def kubectl_main() -> int:
    """`kubectl arbiter ...`: kubectl runs the `kubectl-arbiter` script on PATH as a plugin."""
    return main(prog="kubectl-arbiter")


def main(argv: Sequence[str] | None = None, prog: str = "arbiter") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except analyze.InputError as e:
        print(f"arbiter {args.command}: {e}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
