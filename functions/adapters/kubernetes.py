"""The Kubernetes API behind the store and objects ports, through the official client.

Experiments, Metrics and the traffic objects are all custom objects. Status writes replace
the status subresource carrying the resourceVersion that was read, so the API server
answers 409 when someone wrote in between; that becomes `ConflictError` and the stage re-reads.
Client and connection errors are translated into the errors of functions.core.errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from functions.core.backends import Patch
from functions.core.errors import ConflictError, NotFoundError, PermanentError, TransientError
from functions.core.events import ExperimentRef
from functions.core.resources import EXPERIMENT, METRIC, ObjectRef

_TIMEOUT: Final = 15.0


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """A client for the in-cluster service account, or for `kubeconfig` when given."""
    if kubeconfig:
        api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig
        )
        return api
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


def _message(e: ApiException) -> str:
    try:
        body = json.loads(e.body or "{}")
        return str(body.get("message") or e.reason)
    except (ValueError, AttributeError):
        return str(e.reason)


def call(what: str, fn: Callable[[], object]) -> dict[str, Any]:
    """Run one API call returning an object, translating failures into the stages' vocabulary."""
    try:
        result = fn()
        if not isinstance(result, dict):
            raise TransientError(f"{what}: the API server answered {type(result).__name__}")
        return result
    except ApiException as e:
        if e.status == 404:
            raise NotFoundError(f"{what}: not found") from None
        if e.status == 409:
            raise ConflictError(f"{what}: changed since read ({_message(e)})") from None
        if e.status in (408, 429) or (e.status or 0) >= 500 or e.status == 0:
            raise TransientError(f"{what}: API server answered {e.status} {_message(e)}") from None
        raise PermanentError(f"{what}: API server answered {e.status} {_message(e)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise TransientError(f"{what}: API server unreachable ({e})") from None


class KubeExperimentStore:
    """Experiments and Metrics, in every namespace the service account may read."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = client.CustomObjectsApi(api)

    def get(self, ref: ExperimentRef) -> dict[str, Any]:
        return call(
            f"Experiment {ref}",
            lambda: self._api.get_namespaced_custom_object(
                EXPERIMENT.group,
                EXPERIMENT.version,
                ref.namespace,
                EXPERIMENT.plural,
                ref.name,
                _request_timeout=_TIMEOUT,
            ),
        )

    def list(self) -> list[dict[str, Any]]:
        result = call(
            "Experiments",
            lambda: self._api.list_cluster_custom_object(
                EXPERIMENT.group, EXPERIMENT.version, EXPERIMENT.plural, _request_timeout=_TIMEOUT
            ),
        )
        return [dict(item) for item in result.get("items") or []]

    def write_status(self, obj: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata") or {}
        body = {
            "apiVersion": obj.get("apiVersion", EXPERIMENT.api_version),
            "kind": obj.get("kind", EXPERIMENT.kind),
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "spec": obj.get("spec"),
            "status": dict(status),
        }
        return call(
            f"Experiment {meta['namespace']}/{meta['name']} status",
            lambda: self._api.replace_namespaced_custom_object_status(
                EXPERIMENT.group,
                EXPERIMENT.version,
                meta["namespace"],
                EXPERIMENT.plural,
                meta["name"],
                body,
                _request_timeout=_TIMEOUT,
            ),
        )

    def patch_metadata(self, obj: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
        # A merge patch carrying the resourceVersion read: the API server answers 409 if the
        # object changed since, so a finalizer list is never written over a newer one.
        meta = obj.get("metadata") or {}
        body = {"metadata": {**metadata, "resourceVersion": meta.get("resourceVersion")}}
        return call(
            f"Experiment {meta['namespace']}/{meta['name']} metadata",
            lambda: self._api.patch_namespaced_custom_object(
                EXPERIMENT.group,
                EXPERIMENT.version,
                meta["namespace"],
                EXPERIMENT.plural,
                meta["name"],
                body,
                _content_type="application/merge-patch+json",
                _request_timeout=_TIMEOUT,
            ),
        )

    def get_metric(self, namespace: str, name: str) -> dict[str, Any]:
        return call(
            f"Metric {namespace}/{name}",
            lambda: self._api.get_namespaced_custom_object(
                METRIC.group,
                METRIC.version,
                namespace,
                METRIC.plural,
                name,
                _request_timeout=_TIMEOUT,
            ),
        )


class KubeObjects:
    """The objects that carry traffic: InferenceServices, Knative Services, anything."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = client.CustomObjectsApi(api)

    def get(self, ref: ObjectRef) -> dict[str, Any]:
        return call(
            str(ref),
            lambda: self._api.get_namespaced_custom_object(
                ref.group,
                ref.version,
                ref.namespace,
                ref.plural,
                ref.name,
                _request_timeout=_TIMEOUT,
            ),
        )

    def patch(self, patch: Patch) -> dict[str, Any]:
        ref = patch.ref
        content_type = (
            "application/merge-patch+json"
            if patch.kind == "merge"
            else "application/json-patch+json"
        )
        return call(
            f"patch {ref}",
            lambda: self._api.patch_namespaced_custom_object(
                ref.group,
                ref.version,
                ref.namespace,
                ref.plural,
                ref.name,
                patch.body,
                _content_type=content_type,
                _request_timeout=_TIMEOUT,
            ),
        )
