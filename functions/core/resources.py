"""The Kubernetes resources Arbiter names: API groups, versions, kinds and plurals, in one place.

Code spells a kind through these constants, never as a literal: Arbiter's own Experiment and
Metric, the traffic backends' objects (KServe and KFServing InferenceServices, Knative
Services and Revisions, Gateway API HTTPRoutes) and the Istio VirtualService a field-path
backend usually points at.
Arbiter's own apiVersion comes from the experiment parser, the lowest layer that checks it.
`plural` is the one pluraliser and `ObjectRef` the one reference to a stored object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from analytics.parse import API_VERSION as ARBITER_API_VERSION


def plural(kind: str) -> str:
    """The resource name Kubernetes guesses for a kind (apimachinery's
    `UnsafeGuessKindToResource`), which is what every kind named here uses."""
    lower = kind.lower()
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return lower + "es"
    if lower.endswith("y") and lower[-2:-1] not in ("a", "e", "i", "o", "u"):
        return lower[:-1] + "ies"
    return lower + "s"


@dataclass(frozen=True)
class Resource:
    """One kind of one API group version, with its REST name."""

    group: str
    version: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def plural(self) -> str:
        return plural(self.kind)

    @property
    def path(self) -> str:
        """`group/version/plural`, as the API emulator declares resources."""
        return f"{self.api_version}/{self.plural}"

    def ref(self, namespace: str, name: str) -> ObjectRef:
        return ObjectRef(self.api_version, self.kind, namespace, name)


GROUP, _, VERSION = ARBITER_API_VERSION.partition("/")
EXPERIMENT: Final = Resource(GROUP, VERSION, "Experiment")
METRIC: Final = Resource(GROUP, VERSION, "Metric")

KSERVE_ISVC: Final = Resource("serving.kserve.io", "v1beta1", "InferenceService")
KFSERVING_ISVC: Final = Resource("serving.kubeflow.org", "v1alpha2", "InferenceService")
KNATIVE_SERVICE: Final = Resource("serving.knative.dev", "v1", "Service")
KNATIVE_REVISION: Final = Resource("serving.knative.dev", "v1", "Revision")
ISTIO_VIRTUAL_SERVICE: Final = Resource("networking.istio.io", "v1beta1", "VirtualService")
GATEWAY_GROUP: Final = "gateway.networking.k8s.io"
HTTPROUTE: Final = Resource(GATEWAY_GROUP, "v1", "HTTPRoute")
# An alert sink an Experiment may name (functions/core/notify.py), besides a Knative Service.
KNATIVE_BROKER: Final = Resource("eventing.knative.dev", "v1", "Broker")
# The clock (functions/core/clock.py): start creates it, the sweep deletes it.
PINGSOURCE: Final = Resource("sources.knative.dev", "v1", "PingSource")

# The backends' apiVersions, as an experiment's weightObjRef spells them.
KSERVE: Final = KSERVE_ISVC.api_version
KFSERVING: Final = KFSERVING_ISVC.api_version
KNATIVE: Final = KNATIVE_SERVICE.api_version
GATEWAY: Final = HTTPROUTE.api_version


@dataclass(frozen=True)
class ObjectRef:
    """One stored object: apiVersion, kind, namespace and name."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def plural(self) -> str:
        return plural(self.kind)

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"
