"""`arbiter analyze FILE`: run the analytics on an Experiment file and print the analysis.

The same `analytics.analysis.analyze` the assess function runs, so a verdict seen on a
cluster can be reproduced from `kubectl get experiment X -o yaml | arbiter analyze -`.

A file is untrusted input: its size is checked before it is read whole, and YAML is loaded
by a SafeLoader that refuses aliases (so an alias bomb is refused at the first alias; no
Kubernetes object needs one, and kubectl never writes one) and nesting deeper than
MAX_DEPTH while it composes, before any recursion can run away. JSON is read by the same
loader, so the same limits hold. Whatever goes wrong is exit code 2 with short messages.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Final

import numpy as np
import yaml

from analytics import analysis
from analytics.document import to_dict
from analytics.parse import SpecError, parse_experiment
from analytics.quantity import quote
from analytics.recommendation import Action
from cli import args as args_types
from functions.core.status import resolved_document

# etcd stores no object larger than 1.5 MiB by default, so no Experiment a cluster holds
# comes near this; kubectl's YAML of one is a few kilobytes.
MAX_FILE_BYTES: Final = 2 * 1024 * 1024
# An Experiment nests about ten levels deep (spec.versionInfo.candidates[0].variables[0]...).
MAX_DEPTH: Final = 64
# The longest integer literal read: enough for the parser to see a 400-digit limit and name
# its field; below Python's 4300, beyond which int() raises ValueError mid-load.
MAX_INTEGER_DIGITS: Final = 1000
# Problems shown for a file that is not a valid Experiment; the rest are counted.
MAX_PROBLEMS_SHOWN: Final = 20
MAX_LINE: Final = 300


class InputError(Exception):
    """A file that cannot be read or is not a valid Experiment."""


class _Refused(yaml.MarkedYAMLError):
    """A document the loader will not build: an alias, or nesting beyond MAX_DEPTH."""


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases and nesting deeper than MAX_DEPTH.

    Both are checked in `compose_node`, which the composer calls once per node before it
    builds the node: an alias is refused before it is expanded, and depth is counted before
    the composer recurses into a deeper collection.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        # The pure-Python loader's marks (libyaml's are another type, never seen here).
        mark = event.start_mark if isinstance(event.start_mark, yaml.error.Mark) else None
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                problem="YAML aliases (*name) are not accepted; an Experiment needs none, "
                "write the value out",
                problem_mark=mark,
            )
        if self.depth >= MAX_DEPTH:
            raise _Refused(
                problem=f"nested more than {MAX_DEPTH} levels deep",
                problem_mark=mark,
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if len(node.value) > MAX_INTEGER_DIGITS:
            raise _Refused(
                problem=f"an integer of {len(node.value)} digits; "
                f"at most {MAX_INTEGER_DIGITS} are read",
                problem_mark=node.start_mark,
            )
        value: int = super().construct_yaml_int(node)
        return value


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)


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
    p.add_argument(
        "--exit-code",
        action="store_true",
        help="exit 1 when the recommendation is rollback (0 continue or promote, 2 bad file)",
    )
    p.set_defaults(handler=run)


def _read(source: str, name: str) -> str:
    """The file's text, refused by size before it is read whole."""
    too_big = f"{name} is larger than the limit of {MAX_FILE_BYTES // 1024 // 1024} MiB"
    try:
        if source == "-":
            stream = getattr(sys.stdin, "buffer", sys.stdin)
            data: bytes | str = stream.read(MAX_FILE_BYTES + 1)
        else:
            path = Path(source)
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise InputError(f"{too_big} ({size / 1024 / 1024:.1f} MiB)")
            with path.open("rb") as f:  # a file that grew since stat() is still cut
                data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise InputError(f"cannot read {source}: {e.strerror}") from e
    if len(data) > MAX_FILE_BYTES:
        raise InputError(too_big)
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{name}: not a text file ({e.reason})") from e


def load_document(source: str) -> object:
    """The one Experiment document in a YAML/JSON file (other kinds beside it are ignored)."""
    name = "standard input" if source == "-" else source
    text = _read(source, name)
    try:
        documents = [d for d in yaml.load_all(text, Loader=BoundedLoader) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        why = f": {e.problem}" if isinstance(e, _Refused) else ""
        raise InputError(f"{name}: not valid YAML or JSON{where}{why}") from e
    except (ValueError, OverflowError) as e:
        # A scalar YAML resolves to a value Python cannot build (a date in year 0).
        raise InputError(f"{name}: not valid YAML or JSON ({quote(str(e), 80)})") from e
    experiments = [d for d in documents if isinstance(d, dict) and d.get("kind") == "Experiment"]
    if len(experiments) == 1:
        return experiments[0]
    if len(documents) == 1:
        return documents[0]
    if not documents:
        raise InputError(f"{name}: the file is empty")
    raise InputError(f"{name}: expected one Experiment document, found {len(experiments)}")


def _listing(problems: tuple[str, ...]) -> str:
    shown = [p if len(p) <= MAX_LINE else p[:MAX_LINE] + "…" for p in problems]
    more = len(shown) - MAX_PROBLEMS_SHOWN
    shown = shown[:MAX_PROBLEMS_SHOWN] + ([f"… and {more} more"] if more > 0 else [])
    return "\n  ".join(shown)


def run(args: argparse.Namespace) -> int:
    document = load_document(args.file)
    name = "standard input" if args.file == "-" else args.file
    if isinstance(document, dict):
        # versions start resolved on a cluster live in status.versions (kubectl get -o yaml)
        # A malformed spec or status trips the resolution; the parser then names the field.
        with contextlib.suppress(AttributeError, TypeError, KeyError):
            document = resolved_document(document)
    try:
        experiment = parse_experiment(document)
    except SpecError as e:
        raise InputError(f"{name} is not a valid Experiment:\n  {_listing(e.problems)}") from e
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
    rollback = result.recommendation.action is Action.ROLLBACK
    return 1 if getattr(args, "exit_code", False) and rollback else 0
