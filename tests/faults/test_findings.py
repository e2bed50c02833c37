"""One test per finding of the fault review, each reproducing it exactly.

A finding today's code still shows is a strict xfail naming it: the suite passes now, and
the change that fixes it makes the test pass, which fails the run until the mark goes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults import contract as c
from tests.faults import world
from tests.faults.harness import EventFault, Harness, Match, PortFault
from tests.faults.invariants import Exp, check
from tests.faults.scenarios import drive, run_until, seed_target, setup, stage

pytestmark = pytest.mark.slow


def uid(h: Harness, e: Exp) -> str:
    return str((h.experiment(e.namespace, e.name) or {})["metadata"]["uid"])


def canary_percents(h: Harness, namespace: str, name: str = "iris") -> list[int]:
    return [
        int(o["spec"]["predictor"].get("canaryTrafficPercent") or 0)
        for o in h.history(c.ISVC, namespace, name)
        if o is not None
    ]


def last_answer(h: Harness, event_type: str) -> int | None:
    return next(r.status for r in reversed(h.records) if r.type == event_type)


def conditions(h: Harness, e: Exp) -> list[dict[str, Any]]:
    return list(h.status(e.namespace, e.name).get("conditions") or [])


# -- F1: event data is a hint, status is the truth -------------------------------------------


def test_f1_a_concluded_without_uid_is_refused_and_promotes_nothing(harness: Harness) -> None:
    h = harness
    _, e = setup(h, "canary-bad")
    h.drain()
    assert stage(h, e) == "Running"
    forged = c.arbiter_event(
        c.CONCLUDED, e.namespace, e.name, None, 7, {"action": "promote", "version": world.CANDIDATE}
    )
    h.publish(forged)
    assert last_answer(h, c.CONCLUDED) == 422
    assert 100 not in canary_percents(h, "bad")
    assert h.status(e.namespace, e.name).get("outcome") != "Promoted"


def test_f1_a_forged_measured_does_not_promote(harness: Harness) -> None:
    h = harness
    # good-looking measurements: what a healthy candidate's last look measured
    _, good = setup(h, "canary")
    run_until(h, lambda: stage(h, good) in c.TERMINAL)
    assert h.status(good.namespace, good.name)["outcome"] == "Promoted"
    looks = [x for x in h.sink.emitted if x["type"] == c.MEASURED]
    data = copy.deepcopy(looks[-1].get_data())
    _, e = setup(h, "canary-bad")
    h.drain()
    h.publish(c.arbiter_event(c.MEASURED, e.namespace, e.name, uid(h, e), 1, data))
    drive(h)
    assert 100 not in canary_percents(h, "bad")
    assert h.status(e.namespace, e.name).get("outcome") != "Promoted"


def test_f1_a_stale_concluded_rollback_is_ignored(harness: Harness) -> None:
    h = harness
    _, e = setup(h, "canary")
    run_until(h, lambda: int(h.status(e.namespace, e.name).get("completedIterations") or 0) >= 2)
    assert stage(h, e) == "Running", "the good canary must still be ramping at iteration 2"
    stale = c.arbiter_event(c.CONCLUDED, e.namespace, e.name, uid(h, e), 1, {"action": "rollback"})
    h.publish(stale)
    assert stage(h, e) == "Running"
    drive(h)
    assert h.status(e.namespace, e.name)["outcome"] == "Promoted"


# -- F2: an experiment acts only inside its own namespace -------------------------------------


def test_f2_a_target_in_another_namespace_is_refused(harness: Harness) -> None:
    h = harness
    seed_target(h, "good", "kserve")
    h.seed_metrics("attacker")
    doc = world.canary("attacker", target="good/iris")
    h.apply(doc)
    drive(h, 2)
    e = Exp("attacker", doc["metadata"]["name"], ("good", "iris"))
    assert last_answer(h, c.APISERVER_ADD) == 422
    assert any("spec.target" in str(x.get("message")) for x in conditions(h, e))
    assert set(canary_percents(h, "good")) == {0}, "the victim's traffic never moves"


def conformance(namespace: str, target: str, iterations: int) -> dict[str, Any]:
    doc = world.canary(namespace, "iris-conformance", target=target, iterations=iterations)
    doc["spec"]["strategy"] = {"testingPattern": "Conformance"}
    doc["spec"]["versionInfo"] = {"baseline": {"name": world.BASELINE}}
    # a limit at the baseline's own error rate (1 in 201): undecided for as long as it runs
    doc["spec"]["criteria"] = {
        "requestCount": "request-count",
        "objectives": [{"metric": "error-rate", "upperLimit": "0.005"}],
    }
    return doc


def test_f2_a_foreign_endless_conformance_does_not_hold_the_victim(harness: Harness) -> None:
    h = harness
    seed_target(h, "good", "kserve")
    h.seed_metrics("attacker")
    h.apply(conformance("attacker", "good/iris", 10**9))
    h.drain()
    doc = world.canary("good")
    h.apply(doc)
    drive(h, 3)
    assert stage(h, Exp("good", doc["metadata"]["name"], ("good", "iris"))) != "Waiting"


def test_f2_an_endless_conformance_is_refused_at_start(harness: Harness) -> None:
    h = harness
    seed_target(h, "good", "kserve")
    doc = conformance("good", "good/iris", 10**9)
    h.apply(doc)
    h.drain()
    e = Exp("good", doc["metadata"]["name"], ("good", "iris"))
    assert stage(h, e) == "Failed"
    assert any("iterationsPerLoop" in str(x.get("message")) for x in conditions(h, e))


# -- F3: every stage, Finishing included, is re-driven until it ends --------------------------


def _ends(h: Harness, e: Exp) -> None:
    verdict = check(h, [e])
    assert not verdict.stuck, verdict.stuck
    assert not verdict.problems(), verdict.problems()


def test_f3_a_lost_concluded_does_not_leave_it_finishing(harness: Harness) -> None:
    h = harness
    h.event_faults.append(EventFault(Match(type=c.CONCLUDED), "lose"))
    _, e = setup(h, "canary")
    drive(h)
    _ends(h, e)


def test_f3_api_errors_through_finishs_retry_window_do_not_leave_it_finishing(
    harness: Harness,
) -> None:
    h = harness
    window = h.retries + 1
    h.port_faults.append(PortFault("patch", "500", Match(type=c.CONCLUDED), attempts=window))
    _, e = setup(h, "canary")
    drive(h)
    _ends(h, e)


def test_f3_a_target_deleted_while_finishing_ends_failed_with_a_condition(
    harness: Harness,
) -> None:
    h = harness
    h.event_faults.append(EventFault(Match(type=c.CONCLUDED), "delay", pings=1))
    _, e = setup(h, "canary")

    def delete_when_finishing() -> None:
        if stage(h, e) == "Finishing" and h.server.get(*c.ISVC, "good", "iris") is not None:
            h.delete_target(c.ISVC, "good", "iris")

    drive(h, each=delete_when_finishing)
    assert h.server.get(*c.ISVC, "good", "iris") is None, "the target was deleted in Finishing"
    assert stage(h, e) == "Failed"
    assert any(x.get("type") == "Failed" for x in conditions(h, e))


# -- F4: deletion restores the baseline; targets the backend cannot split are refused ---------


def test_f4_a_deletion_while_patches_fail_restores_once_the_api_recovers(
    harness: Harness,
) -> None:
    h = harness
    _, e = setup(h, "canary")
    run_until(h, lambda: int(h.status(e.namespace, e.name).get("completedIterations") or 0) >= 1)
    assert canary_percents(h, "good")[-1] > 0, "the canary has traffic"
    h.port_faults.append(PortFault("patch", "500", attempts=None))
    h.delete_experiment(e.namespace, e.name)
    h.drain()
    h.tick()
    h.heal()
    drive(h)
    assert canary_percents(h, "good")[-1] == 0, canary_percents(h, "good")
    assert h.experiment(e.namespace, e.name) is None, "the finalizer is released after restore"


def test_f4_three_versions_on_a_plain_kserve_target_are_refused(harness: Harness) -> None:
    h = harness
    seed_target(h, "good", "kserve")
    doc = world.abn("good")
    for v in [doc["spec"]["versionInfo"]["baseline"], *doc["spec"]["versionInfo"]["candidates"]]:
        del v["weightObjRef"]
    h.apply(doc)
    h.drain()
    e = Exp("good", doc["metadata"]["name"], ("good", "iris"))
    assert stage(h, e) == "Failed"
    assert any(x.get("type") == "Failed" for x in conditions(h, e))
    assert set(canary_percents(h, "good")) == {0}


# -- F5: no input makes a function answer 500; one experiment never stops another -------------


def test_f5_a_huge_interval_does_not_stop_the_others(harness: Harness) -> None:
    h = harness
    seed_target(h, "spare", "kserve")
    h.apply(world.canary("spare", interval=100_000_000_000_000))
    _, bystander = setup(h, "canary", "other")
    drive(h)
    pings = {r.status for r in h.records if r.type == c.PING}
    assert pings <= set(range(200, 300)), pings
    assert stage(h, bystander) == "Completed"


def test_f5_a_measurement_from_year_9999_is_refused_without_500(harness: Harness) -> None:
    h = harness
    h.event_faults.append(EventFault(Match(type=c.MEASURED, iteration=1), "lose"))
    _, e = setup(h, "canary")
    h.drain()
    h.tick()
    measured = next(x for x in h.sink.emitted if x["type"] == c.MEASURED)
    data = copy.deepcopy(measured.get_data())
    data["measuredAt"] = "9999-12-31T23:59:59Z"
    h.publish(c.arbiter_event(c.MEASURED, e.namespace, e.name, uid(h, e), 1, data))
    drive(h)
    assert not h.server_errors, h.server_errors
    assert stage(h, e) in c.TERMINAL


# -- F6: only the holder moves a target -------------------------------------------------------


def test_f6_a_redelivered_delete_does_not_move_the_next_holders_traffic(
    harness: Harness,
) -> None:
    h = harness
    seed_target(h, "good", "kserve")
    a_doc = world.canary("good", "iris-a")
    b_doc = world.canary("good", "iris-b")
    h.apply(a_doc)
    h.drain()
    h.apply(b_doc)
    a, b = (Exp("good", d["metadata"]["name"], ("good", "iris")) for d in (a_doc, b_doc))
    run_until(h, lambda: int(h.status("good", "iris-a").get("completedIterations") or 0) >= 1)
    assert stage(h, b) == "Waiting"
    h.delete_experiment("good", "iris-a")
    h.drain()
    run_until(h, lambda: int(h.status("good", "iris-b").get("completedIterations") or 0) >= 1)
    assert stage(h, b) == "Running"
    held = canary_percents(h, "good")[-1]
    assert held > 0
    delete = next(x for x in h.routed if x["type"] == c.APISERVER_DELETE)
    h.publish(delete)
    assert canary_percents(h, "good")[-1] == held, "B's traffic moved"
    assert not check(h, [a, b]).unauthorised


# -- F7: a refused spec says which field, with a 4xx --------------------------------------------


def test_f7_a_partial_weight_obj_ref_names_the_field(harness: Harness) -> None:
    h = harness
    seed_target(h, "abn", "vsvc")
    doc = world.abn("abn")
    info = doc["spec"]["versionInfo"]
    info["candidates"] = info["candidates"][:1]
    del info["candidates"][0]["weightObjRef"]
    doc["spec"]["strategy"] = {"testingPattern": "Canary", "deploymentPattern": "Progressive"}
    doc["spec"]["criteria"] = world.canary("abn")["spec"]["criteria"]
    h.apply(doc)
    h.drain()
    e = Exp("abn", doc["metadata"]["name"], ("abn", "iris"), "vsvc")
    assert 400 <= (last_answer(h, c.APISERVER_ADD) or 0) < 500
    assert any("weightObjRef" in str(x.get("message")) for x in conditions(h, e))


def test_f7_a_400_digit_limit_is_a_4xx_with_a_condition(harness: Harness) -> None:
    h = harness
    seed_target(h, "good", "kserve")
    doc = world.canary("good")
    doc["spec"]["criteria"]["objectives"][0]["upperLimit"] = int("9" * 400)
    h.apply(doc)
    h.drain()
    drive(h, 2)
    e = Exp("good", doc["metadata"]["name"], ("good", "iris"))
    assert not h.server_errors, h.server_errors
    assert any("upperLimit" in str(x.get("message")) for x in conditions(h, e))


# -- F8: one failing event is one failure, however often it is delivered ----------------------


def test_f8_one_failing_events_retries_do_not_abort(harness: Harness) -> None:
    h = harness
    window = h.retries + 1
    h.port_faults.append(PortFault("measure", "down", Match(type=c.DUE), attempts=window))
    _, e = setup(h, "canary")
    drive(h)
    status = h.status(e.namespace, e.name)
    assert status.get("outcome") == "Promoted", status.get("message")


# -- F9: duplicates cost at most k times the clean run ----------------------------------------


@pytest.mark.parametrize(
    ("copies", "concurrent"), [(2, False), (4, True)], ids=["x2", "x4-threads"]
)
def test_f9_duplicates_stay_within_k_times_the_clean_run(
    harness: Harness, clean_deliveries: Callable[[str], int], copies: int, concurrent: bool
) -> None:
    h = harness
    h.event_faults.append(EventFault(Match(), "dup", copies, concurrent, times=10**9))
    _, e = setup(h, "canary")
    drive(h)
    verdict = check(h, [e], clean_deliveries=clean_deliveries("canary"), copies=copies)
    assert not verdict.problems(), verdict.problems()


# -- I1: the intended split is recorded before it is applied -------------------------------------


def test_i1_every_split_is_recorded_before_it_is_applied(harness: Harness) -> None:
    h = harness
    _, e = setup(h, "canary")
    drive(h)
    assert not check(h, [e]).early
