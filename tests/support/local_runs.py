"""Every `arbiter run` the integration tests check, as one session fixture.

The samples (test_local_run.py) and the samples under other Knative generations
(test_local_generations.py) run from one queue: at most two at once, since two cores shared
with a third run slow the real-latency samples past their limits, and the next starts as
soon as a slot frees, longest first, so both slots end together instead of each module
waiting on its slowest pair.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Final

import pytest
import yaml

from local.queueproxy import GENERATIONS
from local.sample import DEFAULT_KNATIVE, load
from tests.support.prometheus import missing_binaries

ROOT: Final = Path(__file__).resolve().parents[2]
ARBITER: Final = Path(sys.executable).with_name("arbiter")
SPEED: Final = "10"
TIMEOUT_S: Final = 240.0
SLOTS: Final = 2

# One experiment each; the files with several (load-50) are run by test_local_load.py.
SAMPLES: Final = sorted(
    p for p in (ROOT / "samples" / "local").glob("*.yaml") if len(load(p).planned) == 1
)
DIRECT: Final = "canary-good --direct-metrics"
# canary-good (the KServe InferenceService backend) and abn-4-versions (the Istio
# VirtualService backend) under every generation but the default, which every sample runs.
GENERATION_SAMPLES: Final = ("canary-good", "abn-4-versions")
CASES: Final = [
    (s, g) for g in sorted(GENERATIONS) if g != DEFAULT_KNATIVE for s in GENERATION_SAMPLES
]
# Measured: abn-4-versions' four model servers and 20 iterations take about twice a
# canary's time; ab-reward and canary-bad-latency are next.
LONGEST_FIRST: Final = ("abn-4-versions", "ab-reward", "canary-bad-latency")

Result = tuple[int, str, Path, float]
"""A run's exit code, output, output folder and wall time."""


def generation_key(name: str, knative: str) -> str:
    return f"{name}@{knative}"


def with_generation(sample: Path, knative: str, folder: Path) -> Path:
    """A copy of `sample` whose LocalRun plays Knative `knative`'s queue-proxy."""
    documents = list(yaml.safe_load_all(sample.read_text()))
    for doc in documents:
        if doc and doc.get("kind") == "LocalRun":
            doc["spec"]["knative"] = knative
    path = folder / sample.name
    path.write_text(yaml.safe_dump_all(documents))
    return path


def _planned(factory: pytest.TempPathFactory) -> list[tuple[str, Path, tuple[str, ...]]]:
    runs = [(p.stem, p, ()) for p in SAMPLES]
    runs.append((DIRECT, ROOT / "samples/local/canary-good.yaml", ("--direct-metrics",)))
    for name, knative in CASES:
        folder = factory.mktemp(f"{name}-{knative}")
        sample = with_generation(ROOT / "samples" / "local" / f"{name}.yaml", knative, folder)
        runs.append((generation_key(name, knative), sample, ()))
    return sorted(runs, key=lambda run: run[1].stem not in LONGEST_FIRST)


@pytest.fixture(scope="session")
def local_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    """Every planned run's result, by name (a sample's stem, DIRECT, `generation_key`)."""
    assert not missing_binaries(), "prometheus is not installed: run `make os-deps`"
    queue = _planned(tmp_path_factory)
    results: dict[str, Result] = {}
    running: dict[str, tuple[subprocess.Popen[str], Path, float, IO[Any]]] = {}
    while queue or running:
        while queue and len(running) < SLOTS:
            name, sample, extra = queue.pop(0)
            out = tmp_path_factory.mktemp(sample.stem) / "out"
            # A file, not a pipe: nobody reads while the run lasts, and a full pipe would
            # stall it.
            log = (out.parent / "run.log").open("w+", encoding="utf-8")
            proc = subprocess.Popen(
                [str(ARBITER), "run", str(sample), "--speed", SPEED, "--output", str(out), *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=ROOT,
            )
            running[name] = (proc, out, time.monotonic(), log)
        time.sleep(0.2)
        for name, (proc, out, started, log) in list(running.items()):
            elapsed = time.monotonic() - started
            if proc.poll() is None and elapsed < TIMEOUT_S:
                continue
            if proc.returncode is None:
                proc.kill()
                proc.wait()
            log.seek(0)
            results[name] = (proc.returncode, log.read(), out, elapsed)
            log.close()
            del running[name]
    return results
