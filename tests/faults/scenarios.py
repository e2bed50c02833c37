"""Whole experiments for the fault runs: what to seed, how long to drive the clock.

`setup` seeds a scenario's Metric library, target and Experiment and returns the `Exp` the
invariants check; `drive` pings past every deadline (the experiment's iterations times its
interval, plus a settle time), calling `each` after every ping so a test can act at a stage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from tests.faults import contract as c
from tests.faults import world
from tests.faults.harness import Harness
from tests.faults.invariants import Exp

ITERATIONS: Final = 8
SETTLE_PINGS: Final = 8
DEADLINE_PINGS: Final = ITERATIONS + SETTLE_PINGS

# scenario -> (namespace, experiment builder, target kind)
SCENARIOS: Final[dict[str, tuple[str, Callable[[str], dict[str, Any]], str]]] = {
    "canary": ("good", world.canary, "kserve"),
    "canary-bad": ("bad", world.canary, "kserve"),
    "canary-reset": ("reset", world.canary, "kserve"),
    "bluegreen": ("good", world.bluegreen, "kserve"),
    "abn": ("abn", world.abn, "vsvc"),
}


def seed_target(h: Harness, namespace: str, kind: str) -> None:
    h.seed_metrics(namespace)
    if kind == "vsvc":
        h.seed(c.VSVC, namespace, world.virtual_service(namespace))
    else:
        h.seed(c.ISVC, namespace, world.inference_service(namespace))


def setup(h: Harness, scenario: str, namespace: str | None = None) -> tuple[dict[str, Any], Exp]:
    default_ns, build, kind = SCENARIOS[scenario]
    ns = namespace or default_ns
    seed_target(h, ns, kind)
    doc = build(ns)
    h.apply(doc)
    return doc, Exp(ns, doc["metadata"]["name"], (ns, "iris"), kind)


def stage(h: Harness, e: Exp) -> str:
    return str(h.status(e.namespace, e.name).get("stage") or "Pending")


def drive(h: Harness, pings: int = DEADLINE_PINGS, each: Callable[[], None] | None = None) -> None:
    h.drain()
    for _ in range(pings):
        h.tick()
        if each is not None:
            each()


def run_until(h: Harness, done: Callable[[], bool], pings: int = DEADLINE_PINGS) -> None:
    h.drain()
    for _ in range(pings):
        if done():
            return
        h.tick()
    raise AssertionError("the condition was never reached")


def run_clean(h: Harness, scenario: str) -> int:
    setup(h, scenario)
    drive(h)
    return h.deliveries()
