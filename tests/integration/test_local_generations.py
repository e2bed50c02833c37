"""The samples under each Knative generation's queue-proxy metrics, read by its own library.

test_local_run.py runs every sample under the default generation ("1.19", OpenTelemetry)
and checks the library that measured it; here canary-good (the KServe InferenceService
backend) and abn-4-versions (the Istio VirtualService backend, across three
InferenceServices) run under every other generation, side by side, and must keep the same
promise, measured by config/metrics/knative-<generation>. The other backends' samples
(canary-httproute, canary-knative) run under the default generation only, to keep
`make test` under ten minutes: a generation changes only the series the library reads,
and every backend hands the library its version's revision the same way. canary-kfserving
names Knative 1.18 itself and runs in test_local_run.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from local.queueproxy import GENERATIONS
from local.sample import DEFAULT_KNATIVE, load

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARBITER = Path(sys.executable).with_name("arbiter")
SAMPLES = ("canary-good", "abn-4-versions")
CASES = [(s, g) for g in sorted(GENERATIONS) if g != DEFAULT_KNATIVE for s in SAMPLES]


def with_generation(sample: Path, knative: str, folder: Path) -> Path:
    documents = list(yaml.safe_load_all(sample.read_text()))
    for doc in documents:
        if doc and doc.get("kind") == "LocalRun":
            doc["spec"]["knative"] = knative
    path = folder / sample.name
    path.write_text(yaml.safe_dump_all(documents))
    return path


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str], tuple[int, str, Path, float]]:
    """Each case's exit code, output, output folder and wall time; the cases of one
    generation run side by side."""
    results: dict[tuple[str, str], tuple[int, str, Path, float]] = {}
    for knative in sorted({g for _, g in CASES}):
        started = time.monotonic()
        procs = {}
        for name in SAMPLES:
            folder = tmp_path_factory.mktemp(f"{name}-{knative}")
            sample = with_generation(ROOT / "samples" / "local" / f"{name}.yaml", knative, folder)
            out = folder / "out"
            proc = subprocess.Popen(
                [str(ARBITER), "run", str(sample), "--speed", "10", "--output", str(out)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=ROOT,
            )
            procs[name] = (proc, folder / "out")
        for name, (proc, out) in procs.items():
            text, _ = proc.communicate(timeout=300)
            results[(name, knative)] = (proc.returncode, text, out, time.monotonic() - started)
    return results


def test_the_default_generation_is_the_newest() -> None:
    assert max(GENERATIONS, key=lambda g: tuple(map(int, g.split(".")))) == DEFAULT_KNATIVE


@pytest.mark.parametrize(("name", "knative"), CASES, ids=str)
def test_the_sample_keeps_its_promise_under_the_generation(
    runs: dict[tuple[str, str], tuple[int, str, Path, float]], name: str, knative: str
) -> None:
    code, text, out, seconds = runs[(name, knative)]
    assert code == 0 and "promise:    kept" in text, text[-3000:]
    assert f"behind a Knative {knative} queue-proxy" in text
    final = json.loads((out / "experiment.json").read_text())
    assert (
        final["status"]["outcome"]
        == load(ROOT / "samples" / "local" / f"{name}.yaml").expect["outcome"]
    )
    # Measured by the library that reads this generation's names, nothing else.
    libraries = final["status"]["metricsLibrary"].split(", ")
    assert f"knative-{knative}" in libraries
    assert not [x for x in libraries if x.startswith("knative-") and x != f"knative-{knative}"]
    assert seconds < 240, f"{name} under Knative {knative} took {seconds:.0f} s"
