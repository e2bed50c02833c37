"""Where the cluster commands (describe, watch, wait, report) find their Experiment.

The cluster is chosen as kubectl chooses it: `--kubeconfig`, else the KUBECONFIG variable
(a list of files, merged), else ~/.kube/config, else the in-cluster service account; the
context is `--context` or the current one; the namespace is `-n`, else the context's, else
the service account's (in-cluster), else `default`. `-f FILE` (or `-`) reads an Experiment
from a file instead. The traffic objects are read through the same backends the functions
use (functions.core.backends), so the split shown is the one the target reports.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from cli.analyze import InputError, load_document
from functions.adapters.kubernetes import KubeObjects
from functions.core import status as st
from functions.core.backends import backend_for
from functions.core.errors import NotFoundError, PermanentError, TransientError
from functions.core.resources import EXPERIMENT

SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_KUBECONFIG: Final = "~/.kube/config"


@dataclass(frozen=True)
class Cluster:
    """A client for the chosen cluster and the namespace names resolve in."""

    api: client.ApiClient
    namespace: str


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments every cluster command takes: a name, or `-f FILE`, and kubectl's flags."""
    p.add_argument("experiment", nargs="?", help="Experiment name (in the namespace)")
    p.add_argument(
        "-f",
        "--filename",
        metavar="FILE",
        help="read the Experiment from FILE (YAML or JSON, - for standard input) instead",
    )
    p.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")


def _kubeconfig_files(explicit: str | None) -> str | None:
    """The kubeconfig path list kubectl would read, or None to go in-cluster."""
    if explicit:
        return explicit
    env = os.environ.get("KUBECONFIG")
    if env:
        return env
    default = Path(DEFAULT_KUBECONFIG).expanduser()
    if default.exists() or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return str(default)
    return None


def connect(args: argparse.Namespace) -> Cluster:
    """The cluster and namespace for `args`; InputError names what is missing or wrong."""
    files = _kubeconfig_files(args.kubeconfig)
    try:
        if files is None:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            api = client.ApiClient()
            namespace = (
                SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
                if SERVICE_ACCOUNT_NAMESPACE.exists()
                else ""
            )
        else:
            api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=files, context=args.context
            )
            _, active = config.list_kube_config_contexts(config_file=files)  # type: ignore[no-untyped-call]
            if args.context:
                contexts, _ = config.list_kube_config_contexts(config_file=files)  # type: ignore[no-untyped-call]
                active = next((c for c in contexts if c.get("name") == args.context), active)
            namespace = str(((active or {}).get("context") or {}).get("namespace") or "")
    except (config.ConfigException, OSError, ValueError, TypeError) as e:
        where = files or "the in-cluster service account"
        raise InputError(f"cannot load the cluster configuration from {where}: {e}") from e
    return Cluster(api, args.namespace or namespace or "default")


def _name(args: argparse.Namespace) -> str:
    if not args.experiment:
        raise InputError("name an Experiment, or give -f FILE")
    return str(args.experiment)


def get_experiment(cluster: Cluster, name: str) -> dict[str, Any]:
    """The Experiment as stored now; InputError when it does not exist or cannot be read."""
    objects = client.CustomObjectsApi(cluster.api)
    try:
        got = objects.get_namespaced_custom_object(
            EXPERIMENT.group, EXPERIMENT.version, cluster.namespace, EXPERIMENT.plural, name
        )
    except ApiException as e:
        if e.status == 404:
            raise InputError(
                f"experiment {cluster.namespace}/{name} not found "
                "(check the name and -n/--namespace)"
            ) from None
        raise InputError(f"cannot read experiment {cluster.namespace}/{name}: {e.reason}") from e
    except OSError as e:
        raise InputError(f"cannot reach the cluster: {e}") from e
    if not isinstance(got, dict):
        raise InputError(f"experiment {cluster.namespace}/{name}: the API server sent no object")
    return got


def load(args: argparse.Namespace) -> tuple[dict[str, Any], Cluster | None]:
    """The Experiment `args` name, and the cluster it came from (None: from a file)."""
    if args.filename:
        if args.experiment:
            raise InputError("give an Experiment name or -f FILE, not both")
        document = load_document(args.filename)
        if not isinstance(document, dict) or document.get("kind") != EXPERIMENT.kind:
            raise InputError(f"{args.filename}: not an Experiment (kind: Experiment)")
        return document, None
    name = _name(args)
    cluster = connect(args)
    return get_experiment(cluster, name), cluster


@dataclass(frozen=True)
class ReadBack:
    """The split the target's objects report, through the experiment's traffic backend."""

    objects: tuple[str, ...]
    split: dict[str, int] | None
    error: str | None = None


def read_split(cluster: Cluster, obj: dict[str, Any]) -> ReadBack:
    """The split in force as the target reports it, or why it could not be read."""
    try:
        experiment = st.resolved_experiment(obj)
    except PermanentError as e:
        return ReadBack((), None, f"the spec does not parse: {e}")
    backend = backend_for(experiment.spec, experiment.namespace)
    names = tuple(str(r) for r in backend.refs)
    objects = KubeObjects(cluster.api)
    try:
        fetched = {ref: objects.get(ref) for ref in backend.refs}
    except (NotFoundError, TransientError, PermanentError) as e:
        return ReadBack(names, None, str(e))
    return ReadBack(names, backend.split(fetched))
