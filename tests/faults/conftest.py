"""Fixtures of the fault suite: one real Prometheus per process behind a fault proxy, one
fresh API server and harness per test. Which runs are left out unless asked for (the
`faults` mark) is decided in tests/conftest.py, for every folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults import world
from tests.faults.contract import KubeApiServer, TrafficControllers
from tests.faults.harness import Harness, PrometheusProxy
from tests.support.prometheus import PrometheusTSDB, missing_binaries


@pytest.fixture(scope="session")
def prometheus_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProxy]:
    missing = missing_binaries()
    assert not missing, f"{missing} not installed: run `make os-deps`"
    db = PrometheusTSDB(tmp_path_factory.mktemp("faults-prometheus"))
    db.backfill(world.history())
    with db, PrometheusProxy(db.url) as proxy:
        yield proxy


@contextlib.contextmanager
def open_harness(proxy: PrometheusProxy) -> Iterator[Harness]:
    """A fresh API server with its controller stand-ins, and the functions wired to it."""
    with KubeApiServer() as server:
        api = server.api_client()
        with TrafficControllers(api, period_s=0.02):
            h = Harness(server, api, proxy)
            try:
                yield h
            finally:
                h.close()
        api.close()


@pytest.fixture
def harness(prometheus_proxy: PrometheusProxy) -> Iterator[Harness]:
    with open_harness(prometheus_proxy) as h:
        yield h


@pytest.fixture(scope="session")
def clean_deliveries(prometheus_proxy: PrometheusProxy) -> Callable[[str], int]:
    """Deliveries of a fault-free run of a scenario (measured once per process)."""
    from tests.faults.scenarios import run_clean

    cache: dict[str, int] = {}

    def count(kind: str) -> int:
        if kind not in cache:
            with open_harness(prometheus_proxy) as h:
                cache[kind] = run_clean(h, kind)
        return cache[kind]

    return count


def record(row: dict[str, object]) -> None:
    """Append one run's figures for the table `tests/faults/run.py` prints."""
    path = os.environ.get("FAULTS_RESULTS")
    if path:
        with Path(path).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
