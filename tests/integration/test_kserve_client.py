"""KServe's own Python client against the API emulator and the controller stand-in, as a
user's canary script drives a cluster: create, wait until ready, patch in a canary, wait
again, read the tagged traffic; and the BlueGreen preview URL that tag routing gives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import numpy as np
import pytest
from kserve import (
    KServeClient,
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1ModelFormat,
    V1beta1ModelSpec,
    V1beta1PredictorSpec,
)
from kubernetes.client import V1ObjectMeta
from pydantic import ValidationError

from functions.core.backends import kserve as backend
from functions.core.resources import KSERVE_ISVC, ObjectRef
from local.controllers import TrafficControllers
from local.harness import Preview
from local.kubeapi import KubeApiServer

NS = "models"


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer() as server:
        yield server


@pytest.fixture(scope="module")
def api(kube: KubeApiServer) -> Iterator[kubernetes.client.ApiClient]:
    client = kube.api_client()
    with TrafficControllers(client, ready_delay_s=0.5, period_s=0.05):
        yield client
    client.close()


@pytest.fixture(scope="module")
def kserve_client(
    kube: KubeApiServer, api: kubernetes.client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> KServeClient:
    config = kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config", NS)
    return KServeClient(config_file=str(Path(config)))


class Body(dict[str, Any]):
    """An InferenceService as KServeClient can send it with kubernetes 37: that client
    validates request bodies as dicts (pydantic) and refuses KServe's model objects, while
    KServeClient.create/patch read `.api_version` off what they are given."""

    api_version = "serving.kserve.io/v1beta1"


def isvc(name: str, storage: str, *, tags: bool, percent: int | None = None) -> Body:
    return Body(serialise(model(name, storage, tags=tags, percent=percent)))


def serialise(obj: Any) -> Any:
    """A KServe model as JSON, by its attribute_map (camelCase, unset fields left out);
    the Kubernetes models inside it (metadata) as their own client serialises them."""
    if hasattr(obj, "attribute_map") and hasattr(obj, "openapi_types"):
        return {
            obj.attribute_map[attr]: serialise(getattr(obj, attr))
            for attr in obj.openapi_types
            if getattr(obj, attr) is not None
        }
    return kubernetes.client.ApiClient().sanitize_for_serialization(obj)


def model(name: str, storage: str, *, tags: bool, percent: int | None = None) -> Any:
    annotations = {backend.TAG_ROUTING_ANNOTATION: "true"} if tags else None
    return V1beta1InferenceService(
        api_version="serving.kserve.io/v1beta1",
        kind="InferenceService",
        metadata=V1ObjectMeta(name=name, namespace=NS, annotations=annotations),
        spec=V1beta1InferenceServiceSpec(
            predictor=V1beta1PredictorSpec(
                canary_traffic_percent=percent,
                model=V1beta1ModelSpec(
                    model_format=V1beta1ModelFormat(name="sklearn"), storage_uri=storage
                ),
            )
        ),
    )


def traffic(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(obj["status"]["components"]["predictor"]["traffic"])


def test_kserve_models_are_refused_by_the_kubernetes_37_client(
    kserve_client: KServeClient,
) -> None:
    """Why `Body` exists: kserve 0.21's own model object, as its docs pass it, never reaches
    the API server under the kubernetes client this project pins."""
    with pytest.raises(ValidationError, match="valid dictionary"):
        kserve_client.create(model("refused", "gs://x", tags=False), NS)


def test_a_canary_rollout_as_a_user_script_drives_it(kserve_client: KServeClient) -> None:
    """kserve/kserve v0.20 ksvc_reconciler.go: with canaryTrafficPercent the latest revision
    takes the percent (tag `latest` under serving.kserve.io/enable-tag-routing: "true") and
    the previous rolled-out one the rest, always tagged `prev`."""
    name = "sklearn-iris"
    v1 = "gs://kfserving-examples/models/sklearn/1.0/model"
    # watch=True streams the emulator's watch until the status says Ready at generation 1.
    kserve_client.create(isvc(name, v1, tags=True), NS, watch=True, timeout_seconds=30)
    kserve_client.wait_isvc_ready(name, NS, timeout_seconds=30, polling_interval=1)
    first = kserve_client.get(name, NS)
    predictor = first["status"]["components"]["predictor"]
    assert predictor["latestReadyRevision"] == f"{name}-predictor-00001"
    assert predictor["latestRolledoutRevision"] == f"{name}-predictor-00001"
    assert first["status"]["url"] == f"http://{name}.{NS}.example.com"
    assert traffic(first) == [
        {
            "tag": "latest",
            "revisionName": f"{name}-predictor-00001",
            "percent": 100,
            "latestRevision": True,
            "url": f"http://latest-{name}-predictor.{NS}.example.com",
        }
    ]

    # The canary: a new model and 10% to it, patched as KServe's docs do it.
    patched = isvc(name, v1 + "-2", tags=True, percent=10)
    kserve_client.patch(name, patched, NS)
    kserve_client.wait_isvc_ready(
        name, NS, timeout_seconds=30, polling_interval=1, expected_generation=2
    )
    second = kserve_client.get(name, NS)
    assert second["status"]["observedGeneration"] == 2
    by_tag = {t["tag"]: t for t in traffic(second)}
    assert by_tag["latest"]["revisionName"] == f"{name}-predictor-00002"
    assert by_tag["latest"]["percent"] == 10
    assert by_tag["prev"] == {
        "tag": "prev",
        "revisionName": f"{name}-predictor-00001",
        "percent": 90,
        "latestRevision": False,
        "url": f"http://prev-{name}-predictor.{NS}.example.com",
    }
    # Traffic alone (canaryTrafficPercent) makes no new revision.
    kserve_client.patch(name, isvc(name, v1 + "-2", tags=True, percent=40), NS)
    kserve_client.wait_isvc_ready(
        name, NS, timeout_seconds=30, polling_interval=1, expected_generation=3
    )
    third = kserve_client.get(name, NS)
    assert third["status"]["components"]["predictor"]["latestCreatedRevision"] == (
        f"{name}-predictor-00002"
    )
    assert {t["tag"]: t["percent"] for t in traffic(third)} == {"latest": 40, "prev": 60}


@pytest.mark.parametrize("tags", [True, False], ids=["annotated", "not-annotated"])
def test_the_bluegreen_preview_url_exists_only_under_tag_routing(
    kserve_client: KServeClient, api: kubernetes.client.ApiClient, tags: bool
) -> None:
    """Without the annotation KServe tags nothing `latest`: a BlueGreen candidate at 0% has
    no URL, the preview sends nothing, and the candidate can never be validated."""
    name = f"bluegreen-{str(tags).lower()}"
    model = "gs://kfserving-examples/models/sklearn/1.0/model"
    kserve_client.create(isvc(name, model, tags=tags), NS)
    kserve_client.wait_isvc_ready(name, NS, timeout_seconds=30, polling_interval=1)
    kserve_client.patch(name, isvc(name, model + "-2", tags=tags, percent=0), NS)
    kserve_client.wait_isvc_ready(
        name, NS, timeout_seconds=30, polling_interval=1, expected_generation=2
    )
    obj = kserve_client.get(name, NS)
    candidate = f"{name}-predictor-00002"
    assert obj["status"]["components"]["predictor"]["latestReadyRevision"] == candidate
    ref = ObjectRef(KSERVE_ISVC.api_version, "InferenceService", NS, name)
    preview = Preview(api, ref, {candidate: "http://127.0.0.1:1"}, 1.0, np.random.default_rng(0))
    found = preview.resolve()
    if tags:
        assert found == (f"http://latest-{name}-predictor.{NS}.example.com", candidate)
        assert {t.get("tag"): t["percent"] for t in traffic(obj)} == {"latest": 0, "prev": 100}
    else:
        assert found is None
        assert all(t.get("tag") != "latest" for t in traffic(obj))
        assert backend.latest_url(obj) is None
