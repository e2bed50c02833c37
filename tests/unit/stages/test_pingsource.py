"""The clock's PingSource over in-memory ports (functions/core/clock.py): start makes it
exist, the sweep deletes it once no experiment is live, and a start racing that delete
always leaves it in place.

The races are played by running start between the sweep's read of the PingSource and its
listing or its delete (`FakePingSources.before`), the interleavings the API server's
resourceVersion precondition has to settle.
"""

from __future__ import annotations

from typing import Any

import pytest

from functions.core import clock, iterate, start
from functions.core.errors import TransientError
from functions.core.events import FINISHED, STARTED
from functions.core.settings import Settings
from tests.fakes import World, added, event, experiment, kserve_world, ping

NS = "demo"
SYSTEM = "arbiter-system"


def world() -> World:
    return kserve_world(NS)


def pingsource(w: World) -> dict[str, Any] | None:
    return w.pings.stored(SYSTEM, clock.NAME)


def version(w: World) -> str:
    found = pingsource(w)
    assert found is not None, "no PingSource"
    return str(found["metadata"]["resourceVersion"])


def test_start_creates_the_pingsource_it_builds_for_a_new_experiment() -> None:
    w = world()
    obj = w.store.add(experiment(NS))
    assert pingsource(w) is None
    start.handle(w.ctx, added(obj))
    found = pingsource(w)
    assert found is not None
    assert found["spec"] == clock.pingsource(w.settings)["spec"]
    (stamp,) = found["metadata"]["annotations"].values()
    assert stamp.startswith("2026-01-01T00:01:00Z ")
    assert w.pings.calls == ["annotate", "create"]  # absent: the patch finds none, then create


def test_each_start_changes_the_pingsource_it_finds() -> None:
    w = world()
    start.handle(w.ctx, added(w.store.add(experiment(NS))))
    before = version(w)
    w.clock.advance(5)
    start.handle(w.ctx, added(w.store.add(experiment(NS, name="second"))))
    assert version(w) != before
    annotations = (pingsource(w) or {})["metadata"]["annotations"]
    assert annotations[clock.WANTED_AT].startswith("2026-01-01T00:01:05Z ")


def test_two_starts_within_one_second_still_change_it() -> None:
    """A patch that changes nothing moves no resourceVersion: each stamp is its own."""
    w = world()
    clock.ensure(w.ctx)
    before = (pingsource(w) or {})["metadata"]["annotations"][clock.WANTED_AT]
    clock.ensure(w.ctx)
    assert (pingsource(w) or {})["metadata"]["annotations"][clock.WANTED_AT] != before


def test_a_create_that_loses_to_another_start_changes_the_one_created() -> None:
    w = world()
    other = World(pings=w.pings, settings=w.settings)

    def another_start_creates_it() -> None:
        clock.ensure(other.ctx)

    w.pings.before["create"] = another_start_creates_it
    clock.ensure(w.ctx)
    # Its own annotate (absent), the other's annotate+create, its create (409), annotate.
    assert w.pings.calls == ["annotate", "annotate", "create", "create", "annotate"]
    assert version(w) == "2"


def test_an_unreachable_api_server_fails_the_add_event_so_it_is_retried() -> None:
    w = world()
    obj = w.store.add(experiment(NS))
    w.pings.failures.add("annotate", TransientError("API server unreachable"))
    with pytest.raises(TransientError):
        start.handle(w.ctx, added(obj))
    assert w.store.status(NS, "iris-canary") == {}  # nothing started without a clock
    start.handle(w.ctx, added(obj))  # the broker's retry
    assert pingsource(w) is not None


def test_starts_own_sweep_keeps_the_clock_for_experiments_waiting_and_goes_on_without_it() -> None:
    w = world()
    start.handle(w.ctx, added(w.store.add(experiment(NS))))
    w.store.add(experiment(NS, name="queued"))  # same target: waits
    before = version(w)
    start.handle(w.ctx, ping())
    assert version(w) != before
    w.pings.failures.add("annotate", TransientError("API server unreachable"))
    start.handle(w.ctx, ping())  # no exception: the others are started all the same
    assert w.store.status(NS, "queued")["stage"] == "Waiting"


def test_the_sweep_keeps_the_clock_while_any_experiment_is_live() -> None:
    w = world()
    w.publish(added(w.store.add(experiment(NS))))
    assert w.store.status(NS, "iris-canary")["stage"] == "Running"
    w.publish(ping())
    assert pingsource(w) is not None
    assert "delete" not in w.pings.calls


def test_the_first_ping_after_the_last_experiment_ends_deletes_the_clock() -> None:
    w = world()
    obj = w.store.add(experiment(NS))
    status = w.run_to_end(obj)
    assert status["stage"] in ("Completed", "Failed")
    assert pingsource(w) is not None  # the ping that ended it listed it live
    w.publish(ping())
    assert pingsource(w) is None
    assert w.pings.calls.count("delete") == 1
    # Nothing is live: a ping that still arrives (one already on its way) changes nothing.
    w.publish(ping())
    assert pingsource(w) is None and w.pings.calls.count("delete") == 1


@pytest.mark.parametrize("stage", ["Pending", "Waiting", "Initializing", "Running", "Finishing"])
def test_every_stage_a_ping_re_drives_counts_as_live(stage: str) -> None:
    w = world()
    clock.ensure(w.ctx)
    w.store.add({**experiment(NS), "status": {"stage": stage}})
    clock.end_if_idle(w.ctx, clock.read(w.ctx), w.store.list())
    assert pingsource(w) is not None


def test_an_ended_experiment_still_being_deleted_counts_as_live() -> None:
    w = world()
    clock.ensure(w.ctx)
    obj = experiment(NS)
    obj["metadata"]["finalizers"] = ["arbiter.dev/restore"]
    w.store.add({**obj, "status": {"stage": "Completed"}})
    w.store.request_delete(NS, "iris-canary")
    held = clock.read(w.ctx)
    assert clock.end_if_idle(w.ctx, held, w.store.list()) is False
    assert pingsource(w) is not None
    w.store.delete(NS, "iris-canary")  # the finalizer came off: gone
    assert clock.end_if_idle(w.ctx, clock.read(w.ctx), w.store.list()) is True


def test_the_sweep_reads_the_clock_before_it_lists() -> None:
    """A start between the read and the listing: the listing sees its experiment."""
    w = world()
    clock.ensure(w.ctx)
    order: list[str] = []
    listing = w.store.list

    def listed() -> list[dict[str, Any]]:
        order.append("list")
        return listing()

    w.store.list = listed  # type: ignore[method-assign]

    def read() -> None:
        order.append("read")

    w.pings.before["get"] = read
    iterate.handle(w.ctx, ping())
    assert order == ["read", "list"]
    assert pingsource(w) is None  # nothing live: deleted


def test_a_start_between_the_sweeps_listing_and_its_delete_keeps_the_clock() -> None:
    """The experiment is created, and started, just after the sweep listed none live: the
    delete carries the resourceVersion read before the listing, so the API server refuses it."""
    w = world()
    clock.ensure(w.ctx)
    listing = w.store.list

    def listed_then_a_start_runs() -> list[dict[str, Any]]:
        seen = listing()
        if not seen:  # the sweep's listing: an experiment arrives right after it
            start.handle(w.ctx, added(w.store.add(experiment(NS, name="late"))))
        return seen

    w.store.list = listed_then_a_start_runs  # type: ignore[method-assign]
    iterate.handle(w.ctx, ping())
    assert "delete" in w.pings.calls  # the sweep did try, and was refused (409)
    assert pingsource(w) is not None
    assert w.store.status(NS, "late")["stage"] == "Running"
    # The next pings keep it while the experiment is live.
    w.publish(ping())
    assert pingsource(w) is not None


def test_a_start_after_the_delete_creates_the_clock_anew() -> None:
    w = world()
    clock.ensure(w.ctx)
    iterate.handle(w.ctx, ping())
    assert pingsource(w) is None
    start.handle(w.ctx, added(w.store.add(experiment(NS))))
    assert pingsource(w) is not None


def test_a_clock_that_cannot_be_read_is_kept_and_the_sweep_goes_on() -> None:
    w = world()
    clock.ensure(w.ctx)
    w.publish(added(w.store.add(experiment(NS))))
    w.store.add({**experiment(NS, name="ended"), "status": {"stage": "Completed"}})
    w.pings.failures.add("get", TransientError("API server unreachable"))
    w.clock.advance(60)
    before = len(w.sink.events)
    iterate.handle(w.ctx, ping())
    assert len(w.sink.events) > before  # the running experiment was still driven
    assert "delete" not in w.pings.calls


def test_a_failed_delete_leaves_the_clock_for_the_next_ping() -> None:
    w = world()
    clock.ensure(w.ctx)
    w.pings.failures.add("delete", TransientError("API server unreachable"))
    iterate.handle(w.ctx, ping())  # no exception: the ping is not retried for this
    assert pingsource(w) is not None
    iterate.handle(w.ctx, ping())
    assert pingsource(w) is None


def test_started_and_finished_events_never_delete_the_clock_of_a_live_experiment() -> None:
    w = world()
    w.publish(added(w.store.add(experiment(NS))))
    obj = w.store.stored(NS, "iris-canary")
    iterate.handle(w.ctx, event(STARTED, obj, 0))
    start.handle(w.ctx, event(FINISHED, obj, 0))
    assert pingsource(w) is not None


def test_another_system_namespace_holds_the_clock() -> None:
    w = world()
    w.settings = Settings(readback_timeout_seconds=1.0, system_namespace="ops")
    start.handle(w.ctx, added(w.store.add(experiment(NS))))
    assert w.pings.stored("ops", clock.NAME) is not None
    assert pingsource(w) is None


# --- the heartbeat: what a lost add event leaves without a clock -------------------------


def test_a_lost_add_event_is_recovered_by_the_heartbeat() -> None:
    """The add event never reached start (retries exhausted) and nothing else is live: no
    clock, so no tick; the hourly heartbeat has start find the experiment, start it and
    bring the clock back."""
    w = world()
    w.store.add(experiment(NS))
    assert pingsource(w) is None
    w.publish(ping(clock.HEARTBEAT))
    assert pingsource(w) is not None
    stage = w.store.status(NS, "iris-canary").get("stage")
    assert stage not in (None, "Pending"), stage


def test_the_heartbeat_brings_back_a_clock_missing_while_an_experiment_runs() -> None:
    w = world()
    start.handle(w.ctx, added(w.store.add(experiment(NS))))
    assert w.store.status(NS, "iris-canary")["stage"] == "Running"
    w.pings.objects.clear()  # deleted by hand
    w.pings.calls.clear()
    start.handle(w.ctx, ping())  # a tick (there is none now, but any ping): not checked
    assert w.pings.calls == [] and pingsource(w) is None
    start.handle(w.ctx, ping(clock.HEARTBEAT))
    assert pingsource(w) is not None
    # All well: the heartbeat reads it and changes nothing.
    before = version(w)
    w.pings.calls.clear()
    start.handle(w.ctx, ping(clock.HEARTBEAT))
    assert w.pings.calls == ["get"] and version(w) == before


def test_the_heartbeat_starts_no_clock_when_nothing_is_live() -> None:
    w = world()
    start.handle(w.ctx, ping(clock.HEARTBEAT))
    iterate.handle(w.ctx, ping(clock.HEARTBEAT))
    assert pingsource(w) is None


def test_only_the_heartbeats_source_counts_as_the_heartbeat() -> None:
    assert clock.from_heartbeat("/apis/v1/namespaces/arbiter-system/pingsources/arbiter-heartbeat")
    assert not clock.from_heartbeat("/apis/v1/namespaces/arbiter-system/pingsources/arbiter-tick")
    assert not clock.from_heartbeat("/apis/v1/namespaces/x/pingsources/arbiter-heartbeat-2")
