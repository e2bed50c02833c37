"""The `arbiter` console script: argument parsing and error-to-exit-code mapping only.

Exit codes: 0 success, 1 the command ran but the result is a failure, 2 bad input (a
message names the file and field; never a traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cli import analyze, bench, plan, run


class UsageError(Exception):
    """Bad input from the person at the keyboard: exit code 2 with this message."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arbiter",
        description="Metrics-driven canary, A/B and A/B/n experiments for KServe models.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    analyze.register(commands)
    bench.register(commands)
    plan.register(commands)
    run.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except analyze.InputError as e:
        print(f"arbiter {args.command}: {e}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
