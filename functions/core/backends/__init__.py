"""The traffic backends: which backend an experiment uses, and each backend's rules by kind.

`backend_for` picks the backend from the experiment's weightObjRef; `ROUTES`,
`EXPECTED_STATUS`, `PROBLEMS` (a webhook's) and `CEL_RULES` (a CRD's) give, per resource,
the pure rules of the backends that have them, for the local controllers, router and API
server. The adapter fetches and patches the
objects; everything that depends on their field layout lives in these modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from analytics.model import ExperimentSpec
from functions.core.backends import httproute, kfserving, knative, kserve
from functions.core.backends.base import (
    Obj,
    Patch,
    Resolution,
    Route,
    TrafficBackend,
    get_path,
)
from functions.core.backends.fieldpath import FieldPathBackend, parse_field_path
from functions.core.backends.httproute import HTTPRouteBackend
from functions.core.backends.kfserving import KFServingBackend
from functions.core.backends.knative import KnativeBackend
from functions.core.backends.kserve import KServeBackend
from functions.core.resources import (
    GATEWAY,
    HTTPROUTE,
    KFSERVING,
    KFSERVING_ISVC,
    KNATIVE,
    KNATIVE_SERVICE,
    KSERVE,
    KSERVE_ISVC,
    ObjectRef,
    Resource,
)

__all__ = [
    "CEL_RULES",
    "EXPECTED_STATUS",
    "PROBLEMS",
    "ROUTES",
    "FieldPathBackend",
    "HTTPRouteBackend",
    "KFServingBackend",
    "KServeBackend",
    "KnativeBackend",
    "Obj",
    "ObjectRef",
    "Patch",
    "Resolution",
    "Route",
    "TrafficBackend",
    "backend_for",
    "get_path",
    "parse_field_path",
]

ROUTES: Final[Mapping[Resource, Callable[[Obj], tuple[Route, ...]]]] = {
    KSERVE_ISVC: kserve.routes,
    KFSERVING_ISVC: kfserving.routes,
    KNATIVE_SERVICE: knative.routes,
    HTTPROUTE: httproute.routes,
}
EXPECTED_STATUS: Final[Mapping[Resource, Callable[[Obj], dict[str, Any]]]] = {
    KSERVE_ISVC: kserve.expected_status,
    KFSERVING_ISVC: kfserving.expected_status,
    KNATIVE_SERVICE: knative.expected_status,
    HTTPROUTE: httproute.expected_status,
}
PROBLEMS: Final[Mapping[Resource, Callable[[Obj], list[str]]]] = {
    KFSERVING_ISVC: kfserving.problems,
    KNATIVE_SERVICE: knative.problems,
}
# What a CRD's CEL rules (x-kubernetes-validations) refuse, which the published JSON schemas
# leave out: the API server answers 422 Invalid, as for a schema violation.
CEL_RULES: Final[Mapping[Resource, Callable[[Obj], list[str]]]] = {
    HTTPROUTE: httproute.problems,
}


def _split_target(target: str, namespace: str) -> tuple[str, str]:
    ns, _, name = target.rpartition("/")
    return (ns or namespace), name


def backend_for(spec: ExperimentSpec, namespace: str) -> TrafficBackend:
    """The backend an experiment uses, chosen by its versions' weightObjRef: KServe when none
    names one, KFServing, Knative or a Gateway API HTTPRoute for their kinds (without a
    fieldPath), else the field path."""
    ns, name = _split_target(spec.target, namespace)
    versions = spec.version_info.versions if spec.version_info else ()
    # iter8 put the weightObjRef on the candidate only; the first one found decides.
    ref = next((v.weight_obj_ref for v in versions if v.weight_obj_ref is not None), None)
    if ref is None or (ref.kind == KSERVE_ISVC.kind and ref.api_version == KSERVE):
        return KServeBackend(KSERVE_ISVC.ref(ns, ref.name if ref else name), spec)
    if ref.kind == KFSERVING_ISVC.kind and ref.api_version == KFSERVING:
        return KFServingBackend(KFSERVING_ISVC.ref(ref.namespace or ns, ref.name), spec)
    if ref.kind == KNATIVE_SERVICE.kind and ref.api_version == KNATIVE and not ref.field_path:
        return KnativeBackend(KNATIVE_SERVICE.ref(ref.namespace or ns, ref.name), spec)
    if ref.kind == HTTPROUTE.kind and ref.api_version == GATEWAY and not ref.field_path:
        return HTTPRouteBackend(HTTPROUTE.ref(ref.namespace or ns, ref.name), spec)
    return FieldPathBackend(spec, ns)
