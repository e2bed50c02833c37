"""Pytest fixtures for the local Kubernetes API (local.kubeapi), one server per session.

Load them with `pytest_plugins = ["tests.support.kube"]` in a test module.

- `kube_server`: a `KubeApiServer` on a free 127.0.0.1 port, serving from its own thread with
  Arbiter's kinds registered; stopped at the end of the session.
- `kube_api`: a `kubernetes.client.ApiClient` configured for it.
- `kube`: the same server, emptied before the test (objects only; resourceVersions keep
  increasing, as on a cluster). Use it, not `kube_server`, in a test that writes objects.

Call the synchronous client from the test itself (or threads it starts), never from an
asyncio test that runs kmock's own fixture: the client would block the loop serving it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from local.kubeapi import KubeApiServer


@pytest.fixture(scope="session")
def kube_server() -> Iterator[KubeApiServer]:
    with KubeApiServer() as server:
        yield server


@pytest.fixture(scope="session")
def kube_api(kube_server: KubeApiServer) -> Iterator[client.ApiClient]:
    api = kube_server.api_client()
    yield api
    api.close()


@pytest.fixture
def kube(kube_server: KubeApiServer) -> KubeApiServer:
    kube_server.reset()
    return kube_server
