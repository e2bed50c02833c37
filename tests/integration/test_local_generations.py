"""The samples under each Knative generation's queue-proxy metrics.

canary-good and bluegreen pin knative "1.18" (test_local_run.py runs them so); here each
runs under one OpenTelemetry generation. A generation's run needs a Metric library that
reads its names (config/metrics/knative-<generation>/): while there is none, the run must
refuse plainly, naming the missing folder; once there is one, the sample must keep its
promise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from local.harness import METRICS
from local.queueproxy import GENERATIONS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARBITER = Path(sys.executable).with_name("arbiter")
OTEL = [g for g, gen in GENERATIONS.items() if gen.otel]


def with_generation(sample: Path, knative: str, folder: Path) -> Path:
    documents = list(yaml.safe_load_all(sample.read_text()))
    for doc in documents:
        if doc and doc.get("kind") == "LocalRun":
            doc["spec"]["knative"] = knative
    path = folder / sample.name
    path.write_text(yaml.safe_dump_all(documents))
    return path


# Each OpenTelemetry generation once, each sample once: a whole run is ~1 min of the budget.
PAIRS = list(zip(["canary-good", "bluegreen"], OTEL, strict=True))


@pytest.mark.parametrize(("name", "knative"), PAIRS)
def test_the_sample_keeps_its_promise_or_names_the_missing_library(
    name: str, knative: str, tmp_path: Path
) -> None:
    sample = with_generation(ROOT / "samples" / "local" / f"{name}.yaml", knative, tmp_path)
    run = subprocess.run(
        [str(ARBITER), "run", str(sample), "--speed", "10", "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    output = run.stdout + run.stderr
    if (METRICS / f"knative-{knative}" / "kustomization.yaml").is_file():
        assert run.returncode == 0 and "promise:    kept" in output, output[-3000:]
        assert f"Knative {knative} queue-proxy" in output
    else:
        assert run.returncode == 1, output[-3000:]
        assert f"config/metrics/knative-{knative}/ is missing" in output
        assert GENERATIONS[knative].metric in output
