"""Fixtures shared by every test: environment isolation, a seeded rng, an Experiment builder.

The builder writes a small document in the CRD's own shape and sends it through
`analytics.parse.parse_experiment`, so every analytics test also exercises the parser the
functions and `arbiter analyze` use, instead of constructing model values by hand.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from analytics.model import Experiment
from analytics.parse import parse_experiment

SEED = 20261123
BASELINE = "baseline"
CANDIDATE = "candidate"

ExperimentFactory = Callable[..., Experiment]
DocumentFactory = Callable[..., dict[str, Any]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `faults` (the fault matrix, the load runs) run only when asked for:
    `make faults` passes `-m faults`; a plain run, of any folder, deselects them. Here and
    not in tests/faults/ so that `pytest tests/integration` leaves them out too.
    FAULTS_SHARD="i/n" keeps every n-th case (tests/faults/run.py's parallel shards)."""
    shard = os.environ.get("FAULTS_SHARD")
    index, count = (int(x) for x in shard.split("/")) if shard else (0, 1)
    # Only an expression that names the mark decides for it (`make test` passes others).
    everything = "faults" in (config.option.markexpr or "") or os.environ.get("FAULTS_ALL") == "1"
    keep, drop = [], []
    for n, item in enumerate(items):
        marked = item.get_closest_marker("faults") is not None
        if (marked and not everything) or (shard and n % count != index):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the ARBITER_* settings of the shell that runs it."""
    for name in list(os.environ):
        if name.startswith("ARBITER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def experiment_document(
    pattern: str = "Canary",
    *,
    candidates: Sequence[str] | None = None,
    baseline: str = BASELINE,
    objectives: Sequence[Mapping[str, Any]] = (),
    rewards: Sequence[Mapping[str, Any]] = (),
    data: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    deployment: str = "Progressive",
    weights: Mapping[str, int] | None = None,
    current: Mapping[str, int] | None = None,
    completed: int = 0,
    iterations: int = 10,
    alpha: float | None = None,
    api_version: str = "arbiter.dev/v1alpha1",
) -> dict[str, Any]:
    """A minimal Experiment document; `data` is metric -> version -> measurement fields.

    Candidates default to what the pattern needs: none for Conformance, one otherwise.
    """
    if candidates is None:
        candidates = () if pattern == "Conformance" else (CANDIDATE,)
    criteria: dict[str, Any] = {"objectives": list(objectives), "rewards": list(rewards)}
    if alpha is not None:
        criteria["alpha"] = alpha
    strategy: dict[str, Any] = {"testingPattern": pattern, "deploymentPattern": deployment}
    if weights is not None:
        strategy["weights"] = dict(weights)
    status: dict[str, Any] = {"completedIterations": completed}
    if current is not None:
        status["currentWeightDistribution"] = [{"name": n, "value": v} for n, v in current.items()]
    if data is not None:
        status["analysis"] = {
            "aggregatedMetrics": {
                "data": {metric: {"data": dict(by_version)} for metric, by_version in data.items()}
            }
        }
    return {
        "apiVersion": api_version,
        "kind": "Experiment",
        "metadata": {"name": "exp", "namespace": "test"},
        "spec": {
            "target": "test/model",
            "strategy": strategy,
            "criteria": criteria,
            "duration": {"intervalSeconds": 10, "iterationsPerLoop": iterations},
            "versionInfo": {
                "baseline": {"name": baseline},
                "candidates": [{"name": c} for c in candidates],
            },
        },
        "status": status,
    }


def build_experiment(pattern: str = "Canary", **fields: Any) -> Experiment:
    """Parse `experiment_document(pattern, **fields)`; raises SpecError if it is invalid."""
    return parse_experiment(experiment_document(pattern, **fields))


@pytest.fixture
def make_document() -> DocumentFactory:
    """The document builder, for tests that edit a document before parsing it."""
    return experiment_document


@pytest.fixture
def make_experiment() -> ExperimentFactory:
    """The Experiment builder, e.g. `make_experiment("A/B", rewards=[...], data={...})`."""
    return build_experiment
