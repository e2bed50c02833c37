"""The local run installs the whole Metric library, as `kubectl apply -k config` does.

A KFServing v1alpha2 experiment names the `kfserving-*` Metrics, which live in the
sub-library config/metrics/kfserving-v1alpha2 that config/metrics/kustomization.yaml lists as
a resource. The local run used to load only the top folder's files, so such an experiment
failed with "metric 'arbiter-system/kfserving-request-count' not found".
"""

from __future__ import annotations

import yaml
from kubernetes import client

from local.harness import METRICS, kustomization_files, seed_metric_library
from local.kubeapi import KubeApiServer

pytest_plugins = ["tests.support.kube"]


def _metric_names_on_disk() -> set[str]:
    return {
        str(doc["metadata"]["name"])
        for path in METRICS.rglob("*.yaml")
        for doc in [yaml.safe_load(path.read_text())]
        if doc.get("kind") == "Metric" and path.parent.name != "knative-1.19"
    }


def test_the_kustomization_walk_reaches_every_metric_file_once() -> None:
    """The default install is one queue-proxy generation (knative-1.18) and the libraries
    with names of their own; the other generation (knative-1.19, the same names) is the
    alternative a cluster installs instead."""
    files = kustomization_files(METRICS)
    assert len(files) == len(set(files))
    assert METRICS / "kfserving-v1alpha2" / "request-count.yaml" in files
    on_disk = {
        p
        for p in METRICS.rglob("*.yaml")
        if p.name != "kustomization.yaml" and p.parent.name != "knative-1.19"
    }
    assert set(files) == on_disk
    alternative = kustomization_files(METRICS / "knative-1.19")
    assert set(alternative) == set((METRICS / "knative-1.19").glob("*.yaml")) - {
        METRICS / "knative-1.19" / "kustomization.yaml"
    }


def test_the_local_run_seeds_the_kfserving_library_too(
    kube: KubeApiServer, kube_api: client.ApiClient
) -> None:
    seed_metric_library(kube, {"arbiter-system"})
    listed = client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
        "arbiter.dev", "v1alpha1", "arbiter-system", "metrics"
    )
    names = {item["metadata"]["name"] for item in listed["items"]}
    assert "kfserving-request-count" in names
    assert names == _metric_names_on_disk()
