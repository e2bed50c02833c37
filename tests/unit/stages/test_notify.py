"""Alert sinks: what an experiment names in spec.notify hears of its conclusion and end,
once, from the sinks the tenant and the operator allow, through the stages and the clock."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from functions.core import events, notify
from functions.core import status as st
from functions.core.resources import KNATIVE_BROKER, KNATIVE_SERVICE, ObjectRef
from functions.core.settings import Settings
from functions.core.status import Status
from tests.fakes import (
    BASELINE_REVISION,
    CANDIDATE_REVISION,
    INTERVAL,
    World,
    condition,
    experiment,
    kserve_world,
    ping,
    ref,
    serve,
)

NS = "demo"
NAME = "iris-canary"
HOOK = "https://hooks.example.com/arbiter/team-a"
ALLOWED = Settings(
    readback_timeout_seconds=1.0, notify_uris=("https://hooks.example.com/arbiter/",)
)
GOOD = (200, 1)
BAD = (180, 20)


def world(*sinks: dict[str, Any], bad: bool = False, settings: Settings = ALLOWED) -> World:
    w = kserve_world(NS)
    w.settings = settings
    serve(w.metrics, BASELINE_REVISION, *GOOD)
    serve(w.metrics, CANDIDATE_REVISION, *(BAD if bad else GOOD))
    w.store.add(experiment(notify=list(sinks)))
    return w


def run(w: World) -> dict[str, Any]:
    return w.run_to_end(w.store.stored(NS, NAME))


def records(w: World) -> list[dict[str, Any]]:
    return list(w.store.status(NS, NAME).get("notifications") or [])


def test_an_allowed_uri_hears_the_conclusion_then_the_end_once_each() -> None:
    w = world({"uri": HOOK})
    status = run(w)
    assert status["outcome"] == "Promoted"
    assert w.alerts.types(HOOK) == [events.CONCLUDED, events.FINISHED]
    concluded, finished = (e for _, e in w.alerts.sent)
    data = finished.get_data()
    uid = w.store.stored(NS, NAME)["metadata"]["uid"]
    assert data["experiment"] == {"namespace": NS, "name": NAME, "uid": uid}
    assert (data["outcome"], data["version"], data["winner"]) == (
        "Promoted",
        CANDIDATE_REVISION,
        CANDIDATE_REVISION,
    )
    assert concluded.get_data()["action"] == "promote"
    assert concluded.get_data()["reason"] == "winner-conclusive"
    assert condition(w.store.status(NS, NAME), "Notified")["status"] == "True"
    # Later ticks and a redelivered conclusion send nothing again.
    for _ in range(3):
        w.clock.advance(INTERVAL)
        w.publish(ping())
    w.publish(concluded_again(w))
    assert len(w.alerts.sent) == 2
    assert all(r["delivered"] and r["attempts"] == 1 for r in records(w))


def concluded_again(w: World) -> Any:
    """The experiment.concluded that ended it, delivered once more."""
    obj = w.store.stored(NS, NAME)
    status = Status.read(obj)
    decision = st.recorded_decision(status)
    assert decision is not None
    return events.make(decision, ref(obj), status.iterations_done, stage="iterate")


def test_a_rollback_is_announced_and_a_failure_is_sent_as_failed() -> None:
    w = world({"uri": HOOK}, bad=True)
    assert run(w)["outcome"] == "RolledBack"
    assert w.alerts.types() == [events.CONCLUDED, events.FINISHED]
    assert w.alerts.sent[1][1].get_data()["outcome"] == "RolledBack"
    # An experiment that start refuses (it could never fit in ARBITER_MAX_EXPERIMENT_SECONDS)
    # ends Failed without finish: the clock announces it, as failed, with the reason.
    too_long = {"intervalSeconds": INTERVAL, "iterationsPerLoop": 100000}
    w.store.add(experiment(name="long", duration=too_long, notify=[{"uri": HOOK}]))
    w.clock.advance(INTERVAL)
    w.publish(ping())
    assert w.store.status(NS, "long")["stage"] == "Failed"
    w.clock.advance(INTERVAL)
    w.publish(ping())
    (failed,) = [e for _, e in w.alerts.sent if e["experimentname"] == "long"]
    assert failed["type"] == events.FAILED
    assert failed.get_data()["reason"] == condition(w.store.status(NS, "long"), "Failed")["reason"]


def test_a_uri_off_the_allow_list_is_never_sent_to_and_the_condition_says_what_to_do() -> None:
    nothing_allowed = Settings(readback_timeout_seconds=1.0)
    w = world({"uri": "https://evil.example.net/x"}, settings=nothing_allowed)
    assert run(w)["outcome"] == "Promoted"
    assert w.alerts.sent == []
    notified = condition(w.store.status(NS, NAME), "Notified")
    assert (notified["status"], notified["reason"]) == ("False", "SinkRefused")
    assert "spec.notify[0].uri" in notified["message"]
    assert "ARBITER_NOTIFY_URIS" in notified["message"]
    # A prefix is a prefix of the whole URL, not of the host name.
    assert notify.resolve(
        world().ctx, NS, 0, {"uri": "https://hooks.example.com.evil/arbiter/"}
    ).refused
    # Refused once, tried no more.
    w.clock.advance(INTERVAL)
    w.publish(ping())
    assert [r["attempts"] for r in records(w)] == [1, 1]


def test_a_ref_must_be_an_addressable_in_the_experiments_own_namespace() -> None:
    w = world(
        {"ref": {"apiVersion": "v1", "kind": "Service", "name": "hook"}},
        {
            "ref": {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Service",
                "name": "hook",
                "namespace": "other",
            }
        },
    )
    assert run(w)["outcome"] == "Promoted"
    assert w.alerts.sent == [] and w.addresses.asked == []
    message = condition(w.store.status(NS, NAME), "Notified")["message"]
    assert "spec.notify[0].ref: Service (v1) is not an Addressable" in message
    assert "spec.notify[1].ref.namespace: other is not the experiment's namespace demo" in message


def test_a_ref_is_sent_to_its_status_address_url() -> None:
    broker_url = "http://broker-ingress.knative-eventing.svc/demo/alerts"
    ksvc_url = "http://slack-hook.demo.svc.cluster.local"
    w = world(
        {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "alerts"}},
        {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "slack-hook"}},
    )
    w.addresses.urls[KNATIVE_BROKER.ref(NS, "alerts")] = broker_url
    w.addresses.urls[KNATIVE_SERVICE.ref(NS, "slack-hook")] = ksvc_url
    run(w)
    assert (
        w.alerts.types(broker_url)
        == w.alerts.types(ksvc_url)
        == [
            events.CONCLUDED,
            events.FINISHED,
        ]
    )
    assert set(w.addresses.asked) == {
        ObjectRef("eventing.knative.dev/v1", "Broker", NS, "alerts"),
        ObjectRef("serving.knative.dev/v1", "Service", NS, "slack-hook"),
    }


def test_a_sink_that_is_down_is_retried_on_later_ticks_then_given_up() -> None:
    w = world({"uri": HOOK}, settings=replace(ALLOWED, notify_attempts=3))
    w.alerts.fail(3)  # concluded and finished at the end, concluded again on the first retry
    run(w)
    assert w.alerts.sent == []
    w.clock.advance(notify.RETRY_AFTER_SECONDS)
    w.publish(ping())
    # The retry: concluded refused a second time, finished delivered.
    assert w.alerts.types() == [events.FINISHED]
    w.clock.advance(1)
    w.publish(ping())  # too soon after the last attempt: nothing
    assert len(w.alerts.sent) == 1
    w.clock.advance(notify.RETRY_AFTER_SECONDS)
    w.publish(ping())
    assert w.alerts.types() == [events.FINISHED, events.CONCLUDED]
    assert condition(w.store.status(NS, NAME), "Notified")["status"] == "True"
    by_event = {r["event"]: r["attempts"] for r in records(w)}
    assert by_event == {"concluded": 3, "finished": 2}
    # A sink down for good: three attempts, then the condition says it was given up.
    w2 = world({"uri": HOOK}, settings=replace(ALLOWED, notify_attempts=2))
    w2.alerts.fail(100)
    run(w2)
    for _ in range(4):
        w2.clock.advance(notify.RETRY_AFTER_SECONDS)
        w2.publish(ping())
    assert w2.alerts.sent == []
    assert {r["attempts"] for r in records(w2)} == {2}
    notified = condition(w2.store.status(NS, NAME), "Notified")
    assert (notified["status"], notified["reason"]) == ("False", "DeliveryFailed")
    assert "ARBITER_NOTIFY_ATTEMPTS=2" in notified["message"]
    assert "Notified" not in w2.recorder.reasons() and "DeliveryFailed" in w2.recorder.reasons()


def test_an_attempt_is_claimed_before_it_is_made_so_two_lookers_send_once() -> None:
    w = world({"uri": HOOK})
    run(w)
    assert len(w.alerts.sent) == 2
    # The status as it stood before any delivery, seen by a slower looker: its claim is
    # refused (409), so it sends nothing.
    before = next(o for o in w.store.writes if o["status"].get("stage") == "Completed")
    notify.deliver(w.ctx, before)
    assert len(w.alerts.sent) == 2


def test_no_sinks_no_work() -> None:
    w = kserve_world(NS)
    serve(w.metrics, BASELINE_REVISION, *GOOD)
    serve(w.metrics, CANDIDATE_REVISION, *GOOD)
    w.store.add(experiment())
    run(w)
    assert w.alerts.sent == [] and "notifications" not in w.store.status(NS, NAME)
    assert all(c["type"] != "Notified" for c in w.store.status(NS, NAME)["conditions"])
