"""pytest fixtures for a real Prometheus serving the fixed queue-proxy history.

Use with `from tests.support.prometheus_fixtures import prometheus_history` in a test
module (or list the module in `pytest_plugins`). One server serves the whole session. When
`prometheus` or `promtool` is missing the fixture fails, naming the command that installs
them: a test that needs the real server must never pass by being skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.prometheus import (
    INSTALL_HINT,
    PrometheusTSDB,
    missing_binaries,
    queue_proxy_history,
)


@pytest.fixture(scope="session")
def prometheus_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusTSDB]:
    """Prometheus loaded with `queue_proxy_history()`; query it at `AT` for exact values."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found on PATH: {INSTALL_HINT}", pytrace=False)
    tsdb = PrometheusTSDB(tmp_path_factory.mktemp("prometheus"))
    tsdb.backfill(queue_proxy_history().text())
    with tsdb:
        yield tsdb
