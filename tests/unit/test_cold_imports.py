"""Each function imports only what its stage uses: the cold start's regression guard.

A function that scales to zero pays for every import on its next event (scipy.special
alone costs more than functions-framework). So, in a fresh interpreter per stage, load the
entry point as functions-framework does, build the runtime's context as the first event
would, and check which heavy libraries came in. Not timed: a module list does not flake.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import importlib.util, json, sys
stage = sys.argv[1]
spec = importlib.util.spec_from_file_location("main", f"functions/{stage}/main.py")
module = importlib.util.module_from_spec(spec)
sys.modules["main"] = module
spec.loader.exec_module(module)
from functions import runtime
runtime.context()
heavy = ("kubernetes", "numpy", "scipy", "scipy.special", "scipy.stats", "prometheus_api_client",
         "prometheus_client", "pandas", "sklearn", "matplotlib", "kmock", "local")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""

# What each stage may load before its first event is handled: assess runs the analysis
# (numpy, scipy.special); nobody needs scipy.stats, a metrics client before measuring, or
# the tools around the functions; and nobody the official kubernetes client.
ALLOWED = {
    "start": set(),
    "iterate": set(),
    "finish": set(),
    "assess": {"numpy", "scipy", "scipy.special"},
}


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_a_stage_loads_only_what_it_uses(stage: str) -> None:
    # A pod's service account: what the function reads on a cluster.
    env = {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "PATH": "/usr/bin:/bin",
        "ARBITER_LOG_LEVEL": "ERROR",
    }
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, stage],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert loaded <= ALLOWED[stage], f"{stage} loads {sorted(loaded - ALLOWED[stage])}"
