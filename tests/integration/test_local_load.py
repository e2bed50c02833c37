"""Many experiments at once: 200 through the four stages in one process, and `arbiter run`
with 50 experiments queued two per target and with its functions scaled to zero.

The 200 run in a `World` of port fakes (tests/fakes.py), routed by the Trigger contract as
the broker routes them: what is exercised is the workflow under load — a target held by one
experiment while the next queues behind it (start's holder check), every stage fanning out
over hundreds of experiments per ping — not the I/O, which the local runs cover.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from functions.core.errors import NotFoundError
from functions.core.events import ExperimentRef
from functions.core.resources import ObjectRef
from local.sample import load
from tests.fakes import (
    INTERVAL,
    KNATIVE,
    T0,
    FakeStore,
    Obj,
    World,
    added,
    experiment,
    ping,
    serve,
)

ROOT = Path(__file__).resolve().parents[2]
ARBITER = Path(sys.executable).with_name("arbiter")
NS = "load"
GOOD = (200, 0)  # requests and 5xx per 10 s
BAD = (180, 20)  # 10 % errors against a 1 % limit


class SerializingStore(FakeStore):
    """FakeStore whose reads copy through JSON, as an API server's answers are serialized:
    `copy.deepcopy` of 200 experiments per listing made the fakes, not the stages, the cost."""

    def list(self) -> list[Obj]:
        self.failures.check("list")
        return list(json.loads(json.dumps(list(self.experiments.values()))))

    def get(self, ref: ExperimentRef) -> Obj:
        self.failures.check("get")
        obj = self.experiments.get((ref.namespace, ref.name))
        if obj is None:
            raise NotFoundError(f"Experiment {ref}: not found")
        return dict(json.loads(json.dumps(obj)))


def knative_service(name: str, revisions: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": KNATIVE,
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "template": {"spec": {}},
            "traffic": [{"revisionName": revisions[0], "percent": 100, "latestRevision": False}],
        },
        "status": {"latestReadyRevisionName": revisions[-1]},
    }


def service_ref(name: str) -> dict[str, str]:
    return {"apiVersion": KNATIVE, "kind": "Service", "name": name, "namespace": NS}


def plan(world: World, targets: int) -> dict[str, tuple[str, str | None]]:
    """Two experiments per Knative Service, the second measured against what the first left
    serving; their expected (outcome, version promoted) by name."""
    expected: dict[str, tuple[str, str | None]] = {}
    for i in range(targets):
        svc = f"svc-{i:03d}"
        revisions = [f"{svc}-0000{k}" for k in (1, 2, 3)]
        world.objects.seed(knative_service(svc, revisions))
        first_good, second_good = i % 2 == 0, i % 3 != 0
        serve(world.metrics, revisions[0], *GOOD)
        serve(world.metrics, revisions[1], *(GOOD if first_good else BAD))
        serve(world.metrics, revisions[2], *(GOOD if second_good else BAD))
        second_base = revisions[1] if first_good else revisions[0]
        for tag, base, candidate, good in (
            ("a", revisions[0], revisions[1], first_good),
            ("b", second_base, revisions[2], second_good),
        ):
            name = f"{svc}-{tag}"
            body = experiment(
                NS,
                name,
                target=f"{NS}/{svc}",
                versionInfo={
                    "baseline": {"name": base},
                    "candidates": [{"name": candidate, "weightObjRef": service_ref(svc)}],
                },
            )
            # creation order is queueing order: a before b, one second apart
            created = T0 + timedelta(seconds=len(expected))
            body["metadata"]["creationTimestamp"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
            world.store.add(body)
            expected[name] = ("Promoted", candidate) if good else ("RolledBack", base)
    return expected


# The load runs belong to `make faults` (with the fault matrix), not to `make test`'s budget.
@pytest.mark.faults
def test_200_experiments_on_100_targets_all_end_as_expected_in_one_process() -> None:
    world = World(store=SerializingStore())
    world.store.with_metric_library(NS)
    expected = plan(world, 100)
    assert len(expected) == 200
    began = time.monotonic()
    for name in expected:  # the ApiServerSource's adds, in creation order
        world.publish(_added(world, name), max_events=10_000)
    queued = [n for n in expected if world.store.status(NS, n).get("stage") == "Waiting"]
    assert sorted(queued) == sorted(n for n in expected if n.endswith("-b")), (
        "the second experiment on each target waits for the first"
    )
    pings = 0
    while pings < 60 and not all(_ended(world, n) for n in expected):
        world.clock.advance(INTERVAL)
        world.publish(ping(), max_events=100_000)
        pings += 1
    wall = time.monotonic() - began
    finals = {n: world.store.status(NS, n) for n in expected}
    stuck = [n for n, s in finals.items() if s.get("stage") not in ("Completed", "Failed")]
    wrong = {
        n: (s.get("stage"), s.get("outcome"), s.get("versionRecommendedForPromotion"))
        for n, s in finals.items()
        if (s.get("stage"), s.get("outcome"), s.get("versionRecommendedForPromotion"))
        != ("Completed", *expected[n])
    }
    answers = Counter(a for *_, a in world.answers)
    print(
        f"\n200 experiments: {wall:.1f} s wall, {pings} pings, "
        f"{len(world.answers)} deliveries {dict(answers)}, "
        f"{Counter(o for o, _ in expected.values())}"
    )
    assert not stuck, f"{len(stuck)} stuck: {stuck[:5]}"
    assert not wrong, f"{len(wrong)} ended otherwise than expected: {list(wrong.items())[:5]}"
    assert set(answers) == {200}, answers
    # every target ends on what its last experiment chose
    for i in range(100):
        svc = f"svc-{i:03d}"
        _, kept = expected[f"{svc}-b"]
        obj = world.objects.stored(ObjectRef(KNATIVE, "Service", NS, svc))
        assert [t["revisionName"] for t in obj["spec"]["traffic"] if t["percent"] == 100] == [kept]


def _added(world: World, name: str) -> Any:
    return added(world.store.stored(NS, name))


def _ended(world: World, name: str) -> bool:
    return world.store.status(NS, name).get("stage") in ("Completed", "Failed")


# `arbiter run` with several experiments and with its functions scaled to zero --------------

LOAD_50 = ROOT / "samples" / "local" / "load-50.yaml"


def test_the_load_sample_queues_two_experiments_per_target_each_with_a_promise() -> None:
    sample = load(LOAD_50)
    assert len(sample.planned) == 50 and len(sample.targets) == 25
    per_target = Counter(p.target for p in sample.planned)
    assert set(per_target.values()) == {2}, per_target
    outcomes = Counter(p.expect.get("outcome") for p in sample.planned)
    assert outcomes["Promoted"] > 10 and outcomes["RolledBack"] > 10, outcomes
    assert sum(outcomes.values()) == 50, "every experiment promises its outcome"


def subset(tmp_path: Path, targets: int) -> Path:
    """load-50 cut to its first `targets` targets (both experiments of each)."""
    docs = list(yaml.safe_load_all(LOAD_50.read_text()))
    keep = {f"iris-{i:02d}" for i in range(targets)}
    out = []
    for doc in docs:
        if doc["kind"] == "Service" and doc["metadata"]["name"] not in keep:
            continue
        if doc["kind"] == "Experiment" and doc["metadata"]["name"][:7] not in keep:
            continue
        if doc["kind"] == "LocalRun":
            spec = doc["spec"]
            spec["targets"] = {k: v for k, v in spec["targets"].items() if k[-7:] in keep}
            spec["expect"] = {k: v for k, v in spec["expect"].items() if k[:7] in keep}
        out.append(doc)
    path = tmp_path / "load-4.yaml"
    path.write_text(yaml.safe_dump_all(out))
    return path


@pytest.mark.slow
@pytest.mark.faults
def test_several_experiments_run_queue_per_target_and_report_one_line_each(
    tmp_path: Path,
) -> None:
    sample = subset(tmp_path, 2)
    done = subprocess.run(
        [str(ARBITER), "run", str(sample), "--speed", "10", "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=420,
        check=False,
    )
    text = done.stdout
    assert done.returncode == 0, text[-4000:]
    report = text[text.index("\narbiter-load/iris-00-a") :]
    lines = report.strip().splitlines()
    assert [line.split()[0] for line in lines[:4]] == [
        "arbiter-load/iris-00-a",
        "arbiter-load/iris-00-b",
        "arbiter-load/iris-01-a",
        "arbiter-load/iris-01-b",
    ]
    assert all(line.split()[1] == "Completed" and line.endswith("kept") for line in lines[:4])
    assert "experiments 4: promised 4, kept 4, broken 0, stuck 0" in lines[4]
    assert "deliveries" in lines[5]
    finals = json.loads((tmp_path / "out" / "experiments.json").read_text())
    by_name = {f["metadata"]["name"]: f["status"] for f in finals}
    # the second on each target started only once the first had finished
    for svc in ("iris-00", "iris-01"):
        first, second = by_name[f"{svc}-a"], by_name[f"{svc}-b"]
        [completed] = [c for c in first["conditions"] if c["type"] == "Completed"]
        assert second["startTime"] >= completed["lastTransitionTime"], (first, second)


@pytest.mark.slow
@pytest.mark.faults
def test_scaled_to_zero_canary_good_keeps_its_promise_and_starts_functions_again(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [
            str(ARBITER),
            "run",
            "samples/local/canary-good.yaml",
            "--speed",
            "10",
            "--scale-to-zero",
            "--idle-seconds",
            "5",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=420,
        check=False,
    )
    text = done.stdout
    assert done.returncode == 0, text[-4000:]
    assert "promise:    kept" in text
    line = next(line for line in text.splitlines() if line.startswith("cold starts "))
    starts = {
        stage: int(count)
        for stage, count in re.findall(r"(start|iterate|assess|finish) (\d+)×", line)
    }
    assert set(starts) == {"start", "iterate", "assess", "finish"}, line
    # start and iterate idle out between pings, assess between iterations; finish gets
    # one event (experiment.concluded) in a completed canary, so it starts once.
    assert starts["start"] > 1 and starts["iterate"] > 1 and starts["assess"] > 1, line
    assert starts["finish"] == 1, line
