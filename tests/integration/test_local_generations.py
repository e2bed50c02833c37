"""The samples under each Knative generation's queue-proxy metrics, read by its own library.

test_local_run.py runs every sample under the default generation ("1.19", OpenTelemetry)
and checks the library that measured it; here canary-good (the KServe InferenceService
backend) and abn-4-versions (the Istio VirtualService backend, across three
InferenceServices) run under every other generation (in the session's queue of local runs,
tests/support/local_runs.py), and must keep the same
promise, measured by config/metrics/knative-<generation>. The other backends' samples
(canary-httproute, canary-knative) run under the default generation only, to keep
`make test` under ten minutes: a generation changes only the series the library reads,
and every backend hands the library its version's revision the same way. canary-kfserving
names Knative 1.18 itself and runs in test_local_run.py.
"""

from __future__ import annotations

import json

import pytest

from local.queueproxy import GENERATIONS
from local.sample import DEFAULT_KNATIVE, load
from tests.support.local_runs import CASES, ROOT, Result, generation_key

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]


@pytest.fixture(scope="module")
def runs(local_runs: dict[str, Result]) -> dict[tuple[str, str], Result]:
    """Each case's run, from the session's queue of local runs."""
    return {(name, knative): local_runs[generation_key(name, knative)] for name, knative in CASES}


def test_the_default_generation_is_the_newest() -> None:
    assert max(GENERATIONS, key=lambda g: tuple(map(int, g.split(".")))) == DEFAULT_KNATIVE


@pytest.mark.parametrize(("name", "knative"), CASES, ids=str)
def test_the_sample_keeps_its_promise_under_the_generation(
    runs: dict[tuple[str, str], Result], name: str, knative: str
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
