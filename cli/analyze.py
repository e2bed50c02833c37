"""`arbiter analyze FILE`: run the analytics on an Experiment file and print the analysis.

The same `analytics.analysis.analyze` the assess function runs, so a verdict seen on a
cluster can be reproduced from `kubectl get experiment X -o yaml | arbiter analyze -`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from analytics import analysis
from analytics.document import to_dict
from analytics.parse import SpecError, parse_experiment
from cli import args as args_types
from functions.core.status import resolved_document


class InputError(Exception):
    """A file that cannot be read or is not a valid Experiment."""


def register(commands: Any) -> None:
    p = commands.add_parser(
        "analyze",
        help="analyse an Experiment file (YAML or JSON, - for stdin) and print JSON",
        description=__doc__,
    )
    p.add_argument("file", help="Experiment YAML/JSON file, or - for standard input")
    p.add_argument(
        "--seed",
        type=args_types.seed,
        default=None,
        help="seed for the posterior sampling behind A/B/n weights (printed when omitted)",
    )
    p.set_defaults(handler=run)


def load_document(source: str) -> object:
    """The one Experiment document in a YAML/JSON file (other kinds beside it are ignored)."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read {source}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{source}: not a text file ({e.reason})") from e
    name = "standard input" if source == "-" else source
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"{name}: not valid YAML or JSON{where}") from e
    experiments = [d for d in documents if isinstance(d, dict) and d.get("kind") == "Experiment"]
    if len(experiments) == 1:
        return experiments[0]
    if len(documents) == 1:
        return documents[0]
    if not documents:
        raise InputError(f"{name}: the file is empty")
    raise InputError(f"{name}: expected one Experiment document, found {len(experiments)}")


def run(args: argparse.Namespace) -> int:
    document = load_document(args.file)
    name = "standard input" if args.file == "-" else args.file
    if isinstance(document, dict):
        # versions start resolved on a cluster live in status.versions (kubectl get -o yaml)
        document = resolved_document(document)
    try:
        experiment = parse_experiment(document)
    except SpecError as e:
        raise InputError(f"{name} is not a valid Experiment:\n  " + "\n  ".join(e.problems)) from e
    seed = (
        args.seed if args.seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
    )
    result = analysis.analyze(experiment, np.random.default_rng(seed))
    out = to_dict(result)
    out["seed"] = seed
    text = json.dumps(out, indent=2) + "\n"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # `arbiter analyze f | head` closed the pipe: not an error of ours.
        sys.stderr.close()
    return 0
