"""`arbiter pause|resume|abort|promote EXPERIMENT`: ask the functions to act on a running
experiment.

Each command writes one request into the Experiment, `spec.control` {action, version,
reason, requestedBy, id} with a fresh id (a UTC time and a random suffix), and labels it
`arbiter.dev/control-pending=true`, in one merge patch; the functions honour it at the
latest on the next clock tick (functions/core/control.py) and record it in
`status.control`, which `arbiter describe` shows. abort and promote need `--reason`;
promote needs `--version` and is refused for a Conformance experiment.

Exit codes: 0 the request is written; 2 bad arguments or an Experiment that cannot take the
request (a message says which); 1 the API server refused the write.
"""

from __future__ import annotations

import argparse
import getpass
import json
import secrets
import sys
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cli import kube
from cli.analyze import InputError
from functions.core import control
from functions.core import status as st
from functions.core.resources import EXPERIMENT

HELP = {
    control.ControlAction.PAUSE: "pause an experiment: no measurement, no traffic move",
    control.ControlAction.RESUME: "resume a paused experiment",
    control.ControlAction.ABORT: "abort an experiment: restore the baseline (needs --reason)",
    control.ControlAction.PROMOTE: "promote a version now (needs --version and --reason)",
}


def register(commands: Any) -> None:
    for action, text in HELP.items():
        p = commands.add_parser(action.value, help=text, description=__doc__)
        p.add_argument("experiment", help="Experiment name (in the namespace)")
        p.add_argument("-n", "--namespace", help="namespace (default: the context's)")
        p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)")
        p.add_argument("--context", help="kubeconfig context (default: the current one)")
        if action is control.ControlAction.PROMOTE:
            p.add_argument(
                "--version", dest="promote_version", metavar="VERSION", help="what to promote"
            )
        p.add_argument("--reason", help="why (recorded in status)")
        p.add_argument(
            "--requested-by", help="who asks (recorded in status; default: the login name)"
        )
        p.set_defaults(handler=run, action=action)


def request_id(now: datetime) -> str:
    """A token unique to one request: when, and a random suffix for two in one second."""
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def _login() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None


def requested(args: argparse.Namespace, now: datetime) -> dict[str, Any]:
    """spec.control for `args`; InputError for a request the functions would refuse."""
    action: control.ControlAction = args.action
    reason = (args.reason or "").strip()
    version = getattr(args, "promote_version", None)
    if action in {control.ControlAction.ABORT, control.ControlAction.PROMOTE} and not reason:
        raise InputError(f"--reason is required: say why you {action.value}")
    if action is control.ControlAction.PROMOTE and not version:
        raise InputError("--version is required: name the version to promote")
    if len(reason) > control.REASON_MAX_LENGTH:
        raise InputError(f"--reason: at most {control.REASON_MAX_LENGTH} characters")
    fields = {
        "action": action.value,
        "version": version,
        "reason": reason or None,
        "requestedBy": args.requested_by or _login(),
        "id": request_id(now),
    }
    return {k: v for k, v in fields.items() if v is not None}


def check(obj: dict[str, Any], request: dict[str, Any]) -> None:
    """What the CLI can see the functions would refuse: InputError naming it."""
    name = f"{obj['metadata'].get('namespace')}/{obj['metadata'].get('name')}"
    if request["action"] == control.ControlAction.PROMOTE and control.conformance(obj):
        raise InputError(
            f"experiment {name} is Conformance: it validates the version that serves and "
            "promotes nothing (abort it, or let it end)"
        )
    status = st.Status.read(obj)
    names = [v.name for v in status.versions]
    version = request.get("version")
    if version and names and version not in names:
        raise InputError(f"--version {version}: not a version of {name} ({', '.join(names)})")
    if status.stage in st.TERMINAL:
        raise InputError(f"experiment {name} has ended ({status.stage.value}); nothing to do")


def run(args: argparse.Namespace) -> int:
    request = requested(args, datetime.now(UTC))
    cluster = kube.connect(args)
    obj = kube.get_experiment(cluster, args.experiment)
    check(obj, request)
    patch = {
        "metadata": {
            "labels": {control.PENDING_LABEL: "true"},
            # Written only if nobody changed the Experiment since it was checked.
            "resourceVersion": obj["metadata"].get("resourceVersion"),
        },
        "spec": {"control": request},
    }
    name = f"{cluster.namespace}/{args.experiment}"
    try:
        client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object(
            EXPERIMENT.group,
            EXPERIMENT.version,
            cluster.namespace,
            EXPERIMENT.plural,
            args.experiment,
            patch,
            _content_type="application/merge-patch+json",
        )
    except ApiException as e:
        print(f"arbiter {args.action.value}: {name}: refused: {_why(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        raise InputError(f"cannot reach the cluster: {e}") from e
    what = args.action.value + (f" {request['version']}" if "version" in request else "")
    print(
        f"requested {what} of experiment {name} (id {request['id']}); the functions apply "
        f"it at the latest on the next clock tick. `arbiter describe {args.experiment}` "
        "shows it in status.control."
    )
    return 0


def _why(e: ApiException) -> str:
    """The API server's own message (a Status body), else its reason."""
    try:
        body = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return f"{e.status} {message or e.reason}"
