"""The Kubernetes API behind the store, objects and pings ports: REST calls on custom objects.

Experiments, Metrics, the traffic objects and the clock's PingSource are all custom objects,
and the stages need six requests on them: get, list, replace the status subresource, patch,
and (the PingSource only) create and delete. `KubeApi` makes
exactly those, with the paths and methods the official client's CustomObjectsApi builds
(tests/manifests pins them against it), over one `requests` session. The official client is
not used here because importing it costs more than the rest of a function's cold start (its
package imports every API group, the kubeconfig and exec-plugin loaders and pydantic); the
command line and the local run still use it, and hand their client over with
`KubeApi.of(api_client)`.

Status writes replace the status subresource carrying the resourceVersion that was read, so
the API server answers 409 when someone wrote in between; that becomes `ConflictError` and
the stage re-reads. HTTP and connection errors become the errors of functions.core.errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol

import requests
from requests.adapters import HTTPAdapter

from functions.adapters.sink import FileToken
from functions.core.backends import Patch
from functions.core.errors import ConflictError, NotFoundError, PermanentError, TransientError
from functions.core.events import ExperimentRef
from functions.core.resources import EXPERIMENT, METRIC, PINGSOURCE, ObjectRef

_TIMEOUT: Final = 15.0
# Where the kubelet mounts a pod's service account (token, CA and namespace), the same path
# every client library reads in-cluster.
SERVICE_ACCOUNT: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_OBJECTS: Final = "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}"


class HasConfiguration(Protocol):
    """An official `kubernetes.client.ApiClient`, as far as `KubeApi.of` reads it."""

    configuration: Any


def api_error(what: str, status: int, body: str, reason: str = "") -> Exception:
    """What an API answer of `status` means to a stage: 404 gone, 409 changed since read,
    overload and server errors worth a retry, any other refusal final."""
    try:
        message = str(json.loads(body or "{}").get("message") or reason)
    except (ValueError, AttributeError):
        message = reason
    if status == 404:
        return NotFoundError(f"{what}: not found")
    if status == 409:
        return ConflictError(f"{what}: changed since read ({message})")
    if status in (408, 429) or status >= 500:
        return TransientError(f"{what}: API server answered {status} {message}")
    return PermanentError(f"{what}: API server answered {status} {message}")


def unreachable(what: str, error: Exception) -> TransientError:
    """A request that got no answer (refused, reset, timed out): worth a retry."""
    return TransientError(f"{what}: API server unreachable ({error})")


class KubeApi:
    """The API server at `host`, with a bearer token read afresh per request (service account
    tokens are rotated in place) or a client certificate."""

    # (HTTP method, path) of each call, as the official client's method of the same name
    # builds it (CustomObjectsApi's; EventsV1Api's for Events); the manifest tests derive
    # the RBAC each function needs from this table.
    ROUTES: ClassVar[Mapping[str, tuple[str, str]]] = {
        "get_namespaced_custom_object": ("GET", _OBJECTS),
        "list_cluster_custom_object": ("GET", "/apis/{group}/{version}/{plural}"),
        "replace_namespaced_custom_object_status": ("PUT", _OBJECTS + "/status"),
        "patch_namespaced_custom_object": ("PATCH", _OBJECTS),
        "create_namespaced_custom_object": (
            "POST",
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}",
        ),
        "delete_namespaced_custom_object": ("DELETE", _OBJECTS),
        "create_namespaced_event": ("POST", "/apis/events.k8s.io/v1/namespaces/{namespace}/events"),
    }

    def __init__(
        self,
        host: str,
        *,
        token: Callable[[], str | None] | None = None,
        verify: bool | str = True,
        cert: tuple[str, str] | None = None,
    ) -> None:
        self.host = host.rstrip("/")
        self._token = token
        self._session = requests.Session()
        self._session.verify = verify
        self._session.cert = cert
        # The local run calls one process's stages from many threads at once.
        self._session.mount(self.host, HTTPAdapter(pool_maxsize=32))

    @classmethod
    def in_cluster(
        cls, environ: Mapping[str, str], account: Path = SERVICE_ACCOUNT
    ) -> KubeApi | None:
        """The pod's own service account, or None outside a pod."""
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            return None
        if ":" in host:  # an IPv6 service address
            host = f"[{host}]"
        ca = account / "ca.crt"
        return cls(
            f"https://{host}:{port}",
            token=FileToken(str(account / "token")),
            verify=str(ca) if ca.exists() else True,
        )

    @classmethod
    def of(cls, api: HasConfiguration) -> KubeApi:
        """The server, credentials and TLS settings an official client was configured with
        (by a kubeconfig, exec plugins included): the local run and the command line."""
        conf = api.configuration
        headers = {
            s["key"].lower(): s["value"]
            for s in conf.auth_settings().values()
            if s.get("in") == "header" and s.get("value")
        }
        bearer = headers.get("authorization")
        cert = (conf.cert_file, conf.key_file) if conf.cert_file and conf.key_file else None
        verify: bool | str = (conf.ssl_ca_cert or True) if conf.verify_ssl else False
        return cls(
            conf.host,
            token=(lambda: bearer.removeprefix("Bearer ")) if bearer else None,
            verify=verify,
            cert=cert,
        )

    def close(self) -> None:
        self._session.close()

    def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str, *, what: str
    ) -> dict[str, Any]:
        # locals(): the path's fields are this method's own parameters, named as in the path
        return self._call(what, "get_namespaced_custom_object", locals())

    def list_cluster_custom_object(
        self, group: str, version: str, plural: str, *, what: str
    ) -> dict[str, Any]:
        return self._call(what, "list_cluster_custom_object", locals())

    def replace_namespaced_custom_object_status(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Mapping[str, Any],
        *,
        what: str,
    ) -> dict[str, Any]:
        return self._call(what, "replace_namespaced_custom_object_status", locals(), body)

    def patch_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        *,
        content_type: str,
        what: str,
    ) -> dict[str, Any]:
        return self._call(what, "patch_namespaced_custom_object", locals(), body, content_type)

    def create_namespaced_event(
        self, namespace: str, body: Mapping[str, Any], *, what: str
    ) -> dict[str, Any]:
        return self._call(what, "create_namespaced_event", locals(), body)

    def create_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        body: Mapping[str, Any],
        *,
        what: str,
    ) -> dict[str, Any]:
        return self._call(what, "create_namespaced_custom_object", locals(), body)

    def delete_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        *,
        body: Mapping[str, Any],
        what: str,
    ) -> dict[str, Any]:
        # body: DeleteOptions (preconditions); keyword-only, as the client's comes after
        # parameters this adapter never sends.
        return self._call(what, "delete_namespaced_custom_object", locals(), body)

    def _call(
        self,
        what: str,
        route: str,
        args: Mapping[str, Any],
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        method, template = self.ROUTES[route]
        path = template.format(**{k: v for k, v in args.items() if isinstance(v, str)})
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        bearer = self._token() if self._token is not None else None
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        try:
            response = self._session.request(
                method,
                self.host + path,
                headers=headers,
                data=None if body is None else json.dumps(body),
                timeout=_TIMEOUT,
                allow_redirects=False,
            )
        except requests.RequestException as e:
            raise unreachable(what, e) from None
        if response.status_code >= 300:
            raise api_error(what, response.status_code, response.text, response.reason)
        try:
            result = response.json()
        except ValueError:
            raise TransientError(f"{what}: the API server answered no JSON") from None
        if not isinstance(result, dict):
            raise TransientError(f"{what}: the API server answered {type(result).__name__}")
        return result


def connect(
    kubeconfig: str | None, url: str | None = None, environ: Mapping[str, str] = os.environ
) -> KubeApi:
    """The pod's service account; or, in this order: `kubeconfig` (a local run), `url` (an API
    server reached through `kubectl proxy`, which adds the credentials), the default
    kubeconfig outside a pod. A kubeconfig is read by the official client, which the
    local-run extra installs; a function in its pod never imports it."""
    if not kubeconfig:
        if url:
            return KubeApi(url)
        own = KubeApi.in_cluster(environ)
        if own is not None:
            return own
    try:
        from kubernetes import config  # noqa: PLC0415  # only off-cluster: slow to import
    except ImportError:
        raise PermanentError(
            "not in a pod and the kubernetes package is absent: install arbiter[local] to "
            "run the functions with a kubeconfig, or set ARBITER_KUBERNETES_URL"
        ) from None
    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    return KubeApi.of(api)


def as_kube_api(api: KubeApi | HasConfiguration) -> KubeApi:
    """`api` itself, or an official client's configuration carried over (`KubeApi.of`)."""
    return api if isinstance(api, KubeApi) else KubeApi.of(api)


class KubeExperimentStore:
    """Experiments and Metrics, in every namespace the service account may read."""

    def __init__(self, api: KubeApi | HasConfiguration) -> None:
        self._api = as_kube_api(api)

    def get(self, ref: ExperimentRef) -> dict[str, Any]:
        return self._api.get_namespaced_custom_object(
            EXPERIMENT.group,
            EXPERIMENT.version,
            ref.namespace,
            EXPERIMENT.plural,
            ref.name,
            what=f"Experiment {ref}",
        )

    def list(self) -> list[dict[str, Any]]:
        result = self._api.list_cluster_custom_object(
            EXPERIMENT.group, EXPERIMENT.version, EXPERIMENT.plural, what="Experiments"
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
        return self._api.replace_namespaced_custom_object_status(
            EXPERIMENT.group,
            EXPERIMENT.version,
            meta["namespace"],
            EXPERIMENT.plural,
            meta["name"],
            body,
            what=f"Experiment {meta['namespace']}/{meta['name']} status",
        )

    def patch_metadata(self, obj: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
        # A merge patch carrying the resourceVersion read: the API server answers 409 if the
        # object changed since, so a finalizer list is never written over a newer one.
        meta = obj.get("metadata") or {}
        body = {"metadata": {**metadata, "resourceVersion": meta.get("resourceVersion")}}
        return self._api.patch_namespaced_custom_object(
            EXPERIMENT.group,
            EXPERIMENT.version,
            meta["namespace"],
            EXPERIMENT.plural,
            meta["name"],
            body,
            content_type="application/merge-patch+json",
            what=f"Experiment {meta['namespace']}/{meta['name']} metadata",
        )

    def get_metric(self, namespace: str, name: str) -> dict[str, Any]:
        return self._api.get_namespaced_custom_object(
            METRIC.group,
            METRIC.version,
            namespace,
            METRIC.plural,
            name,
            what=f"Metric {namespace}/{name}",
        )


class KubeObjects:
    """The objects that carry traffic: InferenceServices, Knative Services, anything."""

    def __init__(self, api: KubeApi | HasConfiguration) -> None:
        self._api = as_kube_api(api)

    def get(self, ref: ObjectRef) -> dict[str, Any]:
        return self._api.get_namespaced_custom_object(
            ref.group, ref.version, ref.namespace, ref.plural, ref.name, what=str(ref)
        )

    def patch(self, patch: Patch) -> dict[str, Any]:
        ref = patch.ref
        content_type = (
            "application/merge-patch+json"
            if patch.kind == "merge"
            else "application/json-patch+json"
        )
        return self._api.patch_namespaced_custom_object(
            ref.group,
            ref.version,
            ref.namespace,
            ref.plural,
            ref.name,
            patch.body,
            content_type=content_type,
            what=f"patch {ref}",
        )


class KubePingSources:
    """The clock's PingSource (functions/core/clock.py), in the system namespace."""

    def __init__(self, api: KubeApi | HasConfiguration) -> None:
        self._api = as_kube_api(api)

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self._api.get_namespaced_custom_object(
            PINGSOURCE.group,
            PINGSOURCE.version,
            namespace,
            PINGSOURCE.plural,
            name,
            what=f"PingSource {namespace}/{name}",
        )

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body.get("metadata") or {}
        return self._api.create_namespaced_custom_object(
            PINGSOURCE.group,
            PINGSOURCE.version,
            meta["namespace"],
            PINGSOURCE.plural,
            body,
            what=f"create PingSource {meta['namespace']}/{meta['name']}",
        )

    def annotate(self, namespace: str, name: str, annotations: Mapping[str, str]) -> dict[str, Any]:
        return self._api.patch_namespaced_custom_object(
            PINGSOURCE.group,
            PINGSOURCE.version,
            namespace,
            PINGSOURCE.plural,
            name,
            {"metadata": {"annotations": dict(annotations)}},
            content_type="application/merge-patch+json",
            what=f"annotate PingSource {namespace}/{name}",
        )

    def delete(self, namespace: str, name: str, resource_version: str) -> None:
        # The API server deletes only if the object is still at that version, else 409.
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"resourceVersion": resource_version},
        }
        self._api.delete_namespaced_custom_object(
            PINGSOURCE.group,
            PINGSOURCE.version,
            namespace,
            PINGSOURCE.plural,
            name,
            body=options,
            what=f"delete PingSource {namespace}/{name}",
        )
