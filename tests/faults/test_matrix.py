"""Whole experiments under every fault kind, each run checked against every invariant.

Scenarios: a Progressive canary on a KServe InferenceService, A/B/n over an Istio
VirtualService, a BlueGreen canary (and a canary through a counter reset, clean only). Each
run is driven past every deadline, then checked and classified; its figures go to the table
`make faults` prints. Cases today's code fails are strict xfails naming their finding. The
full matrix is marked `faults` (run by `make faults`); SMOKE runs in every `make test`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from tests.faults import contract as c
from tests.faults.conftest import record
from tests.faults.harness import EventFault, Harness, Match, PortFault
from tests.faults.invariants import Exp, check
from tests.faults.scenarios import drive, setup, stage

WINDOW = 6  # one whole retry window: the first delivery and the Broker's 5 retries


@dataclass(frozen=True)
class Fault:
    """How to inject one fault kind into a run; `act` runs after every ping."""

    events: tuple[EventFault, ...] = ()
    ports: tuple[PortFault, ...] = ()
    act: Callable[[Harness, Exp, int], Exp] | None = None
    copies: int = 1


def _ev(t: str, action: str, iteration: int | None = None, **kw: Any) -> EventFault:
    return EventFault(Match(type=t, iteration=iteration), action, **kw)


def _port(op: str, kind: str, t: str | None, attempts: int | None = 1) -> PortFault:
    return PortFault(op, kind, Match(type=t), attempts=attempts)


def _heal_at(n: int) -> Callable[[Harness, Exp, int], Exp]:
    def act(h: Harness, e: Exp, ping: int) -> Exp:
        if ping == n:
            h.heal()
        return e

    return act


def _iterations(h: Harness, e: Exp) -> int:
    return int(h.status(e.namespace, e.name).get("completedIterations") or 0)


def _delete_experiment(when: str) -> Callable[[Harness, Exp, int], Exp]:
    def act(h: Harness, e: Exp, ping: int) -> Exp:
        now = stage(h, e)
        ready = now == "Finishing" if when == "Finishing" else _iterations(h, e) >= 1
        if not e.deleted and ready and now in c.ACTIVE:
            h.faults_injected += 1
            h.delete_experiment(e.namespace, e.name)
            h.drain()
            return replace(e, deleted=True)
        return e

    return act


def _delete_target(when: str) -> Callable[[Harness, Exp, int], Exp]:
    def act(h: Harness, e: Exp, ping: int) -> Exp:
        now = stage(h, e)
        ready = now == "Finishing" if when == "Finishing" else _iterations(h, e) >= 1
        group = c.VSVC if e.kind == "vsvc" else c.ISVC
        if ready and now in c.ACTIVE and h.server.get(*group, *e.target) is not None:
            h.faults_injected += 1
            h.delete_target(group, *e.target)
        return e

    return act


def faults() -> dict[str, Fault]:
    """Built afresh per run: the fault objects count what they injected."""
    concluded = _ev(c.CONCLUDED, "delay", pings=1)
    return {
        "clean": Fault(),
        "lose-started": Fault(events=(_ev(c.STARTED, "lose"),)),
        "lose-due": Fault(events=(_ev(c.DUE, "lose", 1),)),
        "lose-measured": Fault(events=(_ev(c.MEASURED, "lose", 1),)),
        "lose-concluded": Fault(events=(_ev(c.CONCLUDED, "lose"),)),
        "lose-finished": Fault(events=(_ev(c.FINISHED, "lose"),)),
        "dup2": Fault(events=(EventFault(Match(), "dup", 2, times=10**9),), copies=2),
        "dup4-threads": Fault(
            events=(EventFault(Match(), "dup", 4, concurrent=True, times=10**9),), copies=4
        ),
        "reorder-measured": Fault(events=(_ev(c.MEASURED, "reorder", times=3),)),
        "reorder-concluded": Fault(events=(_ev(c.CONCLUDED, "reorder"),)),
        "delay-measured": Fault(events=(_ev(c.MEASURED, "delay", 1, pings=2),)),
        "delay-concluded": Fault(events=(concluded,)),
        "api409-status": Fault(ports=(_port("write_status", "409", c.MEASURED),)),
        "api500-patch-window": Fault(ports=(_port("patch", "500", c.MEASURED, WINDOW),)),
        "timeout-status-3-pings": Fault(
            ports=(_port("write_status", "timeout", None, None),), act=_heal_at(3)
        ),
        "kill-after-patch": Fault(ports=(_port("patch", "kill-after", c.MEASURED),)),
        "kill-after-status": Fault(ports=(_port("write_status", "kill-after", c.MEASURED),)),
        "prom-down-window": Fault(ports=(_port("measure", "down", c.DUE, WINDOW),)),
        "prom-slow": Fault(ports=(_port("measure", "slow", c.DUE),)),
        "prom-garbage": Fault(ports=(_port("measure", "garbage", c.DUE),)),
        "prom-nan": Fault(ports=(_port("measure", "nan", c.DUE),)),
        "prom-empty": Fault(ports=(_port("measure", "empty", c.DUE),)),
        "delete-exp-running": Fault(act=_delete_experiment("Running")),
        "delete-exp-finishing": Fault(events=(concluded,), act=_delete_experiment("Finishing")),
        "delete-target-running": Fault(act=_delete_target("Running")),
        "delete-target-finishing": Fault(events=(concluded,), act=_delete_target("Finishing")),
    }


SCENARIOS = ("canary", "abn", "bluegreen")
# (scenario, fault) -> the finding today's code fails it with
XFAIL: dict[tuple[str, str], str] = {}
SMOKE = {("canary", "clean"), ("canary-reset", "clean"), ("abn", "kill-after-patch")}


def _cases() -> list[Any]:
    cases = []
    pairs = [("canary-reset", "clean")] + [(s, f) for s in SCENARIOS for f in faults()]
    for scenario, fault in pairs:
        marks: list[Any] = [] if (scenario, fault) in SMOKE else [pytest.mark.faults]
        if (scenario, fault) in XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[scenario, fault]))
        cases.append(pytest.param(scenario, fault, marks=marks, id=f"{scenario}-{fault}"))
    return cases


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "fault"), _cases())
def test_whole_experiment_keeps_every_invariant(
    harness: Harness, clean_deliveries: Callable[[str], int], scenario: str, fault: str
) -> None:
    h = harness
    f = faults()[fault]
    h.event_faults.extend(f.events)
    h.port_faults.extend(f.ports)
    _, e = setup(h, scenario)
    state = {"e": e}

    def each() -> None:
        if f.act is not None:
            state["e"] = f.act(h, state["e"], h.pings)

    drive(h, each=each)
    e = state["e"]
    dup = f.copies > 1
    verdict = check(
        h, [e], clean_deliveries=clean_deliveries(scenario) if dup else None, copies=f.copies
    )
    # Every split applied was recorded before it was applied (the strict order of I1).
    problems = verdict.problems(strict_order=True)
    record(
        {
            "scenario": scenario,
            "fault": fault,
            "faults": h.faults_injected,
            "deliveries": h.deliveries(),
            "promotions": verdict.promotions,
            "rollbacks": verdict.rollbacks,
            "failed": verdict.failed,
            "stuck": bool(verdict.stuck),
            "half_moved": bool(verdict.half_moved),
            "lost": bool(verdict.lost),
            "unauthorised": bool(verdict.unauthorised),
            "problems": problems,
            "xfail": XFAIL.get((scenario, fault)),
        }
    )
    assert not problems, problems
