"""The end-to-end suite runs only when asked for (`make e2e`, `-m e2e`), against the cluster
KUBECONFIG names; a plain `pytest` run deselects it, as it deselects the fault matrix."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "e2e" in (config.option.markexpr or ""):
        return
    drop = [item for item in items if item.get_closest_marker("e2e") is not None]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if item.get_closest_marker("e2e") is None]
