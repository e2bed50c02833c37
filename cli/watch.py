"""`arbiter watch EXPERIMENT` and `arbiter wait EXPERIMENT --for ...`: follow an experiment.

Both follow the Experiment through a Kubernetes watch (`kubernetes.watch`), never by
polling: every change the API server streams redraws the `describe` view (watch) or is
checked against the condition (wait). A watch the server ends is resumed from the last
resourceVersion seen; one that expired (410 Gone) re-reads the object and resumes from it.

Exit codes. watch: 0 when the experiment ends Promoted or Validated, 1 when it ends
RolledBack, NotValidated, Aborted or Failed (or is deleted). wait: 0 once the condition
holds, 1 when the experiment ended (or was deleted) without it holding, 2 on bad
arguments, 3 on timeout.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, TextIO

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from cli import describe, kube
from cli.analyze import InputError
from functions.core import status as st
from functions.core.resources import EXPERIMENT

SUCCESS: Final = frozenset({st.Outcome.PROMOTED, st.Outcome.VALIDATED})
TIMED_OUT: Final = 3
# Longest single watch request; the server may end one sooner, and it is then resumed.
WATCH_SECONDS: Final = 300
_GONE: Final = 410
_DURATION: Final = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


class DeletedError(Exception):
    """The experiment was deleted while it was followed."""


def duration(text: str) -> float:
    """A timeout as kubectl writes it (30s, 5m, 1h30m) or a number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not text.strip() or match is None or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"must be a duration such as 90s, 30m or 1h, got {text!r}")
    hours, minutes, seconds = (float(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class Wanted:
    """What `wait --for` waits for: a stage, an outcome, or a condition being True."""

    field: str
    value: str

    def holds(self, status: st.Status) -> bool:
        if self.field == "stage":
            return status.stage.value == self.value
        if self.field == "outcome":
            return status.outcome is not None and status.outcome.value == self.value
        return any(c.type.value == self.value and c.ok is True for c in status.conditions)


_CHOICES: Final = {
    "stage": [s.value for s in st.Stage],
    "outcome": [o.value for o in st.Outcome],
    "condition": [c.value for c in st.ConditionType],
}


def wanted(text: str) -> Wanted:
    field, sep, value = text.partition("=")
    if not sep or field not in _CHOICES:
        raise argparse.ArgumentTypeError(
            f"must be stage=STAGE, outcome=OUTCOME or condition=TYPE, got {text!r}"
        )
    if value not in _CHOICES[field]:
        raise argparse.ArgumentTypeError(
            f"{field} must be one of {', '.join(_CHOICES[field])}, got {value!r}"
        )
    return Wanted(field, value)


def register(commands: Any) -> None:
    w = commands.add_parser(
        "watch",
        help="the describe view, redrawn live as the experiment changes, until it ends",
        description=__doc__,
    )
    kube.add_arguments(w)
    w.add_argument("--timeout", type=duration, default=None, help="give up after (e.g. 30m)")
    w.set_defaults(handler=run_watch)
    t = commands.add_parser(
        "wait",
        help="wait until an experiment reaches a stage, outcome or condition",
        description=__doc__,
    )
    kube.add_arguments(t)
    t.add_argument(
        "--for",
        dest="wanted",
        type=wanted,
        required=True,
        metavar="FIELD=VALUE",
        help="outcome=Promoted, stage=Running, condition=VersionsReady, ...",
    )
    t.add_argument(
        "--timeout", type=duration, default=None, help="give up after (e.g. 30m; default never)"
    )
    t.set_defaults(handler=run_wait)


def follow(cluster: kube.Cluster, name: str, deadline: float | None) -> Iterator[dict[str, Any]]:
    """The experiment now, then again each time the API server reports a change, until the
    deadline (time.monotonic()) passes. Raises DeletedError when it is deleted."""
    obj = kube.get_experiment(cluster, name)
    yield obj
    version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    objects = client.CustomObjectsApi(cluster.api)
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        seconds = WATCH_SECONDS if remaining is None else max(1, min(WATCH_SECONDS, int(remaining)))
        w = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for event in w.stream(  # type: ignore[no-untyped-call]
                objects.list_namespaced_custom_object,
                EXPERIMENT.group,
                EXPERIMENT.version,
                cluster.namespace,
                EXPERIMENT.plural,
                field_selector=f"metadata.name={name}",
                resource_version=version,
                timeout_seconds=seconds,
                _request_timeout=seconds + 10,
            ):
                changed = event.get("object")
                if not isinstance(changed, dict):
                    continue
                if event.get("type") == "DELETED":
                    raise DeletedError(f"experiment {cluster.namespace}/{name} was deleted")
                version = str((changed.get("metadata") or {}).get("resourceVersion") or version)
                yield changed
                if deadline is not None and time.monotonic() >= deadline:
                    return
        except ApiException as e:
            if e.status != _GONE:
                raise InputError(f"watching {cluster.namespace}/{name} failed: {e.reason}") from e
            # Expired: read it again (it may have changed meanwhile) and resume from there.
            obj = kube.get_experiment(cluster, name)
            version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            yield obj


def _connect(args: argparse.Namespace) -> tuple[kube.Cluster, str]:
    if args.filename:
        raise InputError("follows an experiment on a cluster: name it instead of -f FILE")
    if not args.experiment:
        raise InputError("name an Experiment")
    return kube.connect(args), str(args.experiment)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def ended_code(status: st.Status) -> int:
    """watch's exit code for an experiment that ended."""
    return 0 if status.stage is st.Stage.COMPLETED and status.outcome in SUCCESS else 1


class Screen:
    """Where watch draws: redrawn in place on a terminal, appended as blocks elsewhere."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._last = ""

    def show(self, text: str) -> None:
        if text == self._last:
            return
        if self._tty:
            self._out.write("\x1b[H\x1b[2J")  # home, clear: redraw the screen in place
        elif self._last:
            self._out.write("\n")
        self._out.write(text + "\n")
        self._out.flush()
        self._last = text


def run_watch(args: argparse.Namespace, out: TextIO | None = None) -> int:
    cluster, name = _connect(args)
    screen = Screen(out or sys.stdout)
    try:
        for obj in follow(cluster, name, _deadline(args.timeout)):
            screen.show(describe.render(describe.describe(obj, kube.read_split(cluster, obj))))
            status = st.Status.read(obj)
            if status.stage in st.TERMINAL:
                return ended_code(status)
    except DeletedError as e:
        print(f"arbiter watch: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(
        f"arbiter watch: {cluster.namespace}/{name} still running at the timeout", file=sys.stderr
    )
    return TIMED_OUT


def run_wait(args: argparse.Namespace) -> int:
    cluster, name = _connect(args)
    want: Wanted = args.wanted
    status = st.Status()
    try:
        for obj in follow(cluster, name, _deadline(args.timeout)):
            status = st.Status.read(obj)
            if want.holds(status):
                return 0
            if status.stage in st.TERMINAL:
                print(
                    f"arbiter wait: {cluster.namespace}/{name} ended {status.stage.value}"
                    f" ({status.outcome or 'no outcome'}) without {want.field}={want.value}",
                    file=sys.stderr,
                )
                return 1
    except DeletedError as e:
        print(f"arbiter wait: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(
        f"arbiter wait: timed out waiting for {want.field}={want.value} on "
        f"{cluster.namespace}/{name} (stage {status.stage.value})",
        file=sys.stderr,
    )
    return TIMED_OUT
