"""The clock end to end: functions-framework apps, the emulated API server, real Prometheus.

The same pieces as test_functions_e2e.py, with a broker that can lose an event: every
stage, Finishing included, is re-driven by the next pings until it ends, and one
experiment's absurd spec never stops the ping for the others.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from kubernetes import client

from functions.core import events
from local.kubeapi import KubeApiServer
from tests.integration.test_functions_e2e import (
    EXPERIMENTS,
    INTERVAL,
    ISVC,
    cluster,
    experiment,
    pipeline,
    prometheus,
    seed,
)
from tests.support.stages import ManualClock, Pipeline, QueueSink, apiserver_event

pytestmark = pytest.mark.slow

__all__ = ["cluster", "prometheus"]  # the fixtures, shared with test_functions_e2e


class LosingSink(QueueSink):
    """The broker's ingress, losing the next event of a type it is told to lose."""

    def __init__(self) -> None:
        super().__init__()
        self.losing: set[str] = set()
        self.lost: list[CloudEvent] = []

    def emit(self, event: CloudEvent) -> None:
        if event["type"] in self.losing:
            self.losing.discard(event["type"])
            self.lost.append(event)
            return
        super().emit(event)


def losing_pipeline(api: client.ApiClient, url: str) -> tuple[Pipeline, LosingSink]:
    """test_functions_e2e's pipeline, with a broker that loses what it is told to."""
    base = pipeline(api, url)
    base.close()
    lossy = LosingSink()
    return Pipeline(dataclasses.replace(base.ctx, sink=lossy), lossy), lossy


def tick(p: Pipeline) -> None:
    clock = p.ctx.clock
    assert isinstance(clock, ManualClock)
    clock.advance(INTERVAL)
    p.ping()


def status_of(server: KubeApiServer, namespace: str, name: str = "iris-canary") -> dict[str, Any]:
    return dict((server.get(*EXPERIMENTS, namespace, name) or {}).get("status") or {})


def canary(server: KubeApiServer, namespace: str) -> Any:
    return (server.get(*ISVC, namespace, "iris") or {})["spec"]["predictor"].get(
        "canaryTrafficPercent"
    )


def test_a_lost_concluded_is_re_sent_by_the_next_ping_and_the_waiting_experiment_starts(
    cluster: tuple[KubeApiServer, client.ApiClient], prometheus: str
) -> None:
    server, api = cluster
    first = seed(server, "bad")
    second_doc = experiment("bad")
    second_doc["metadata"]["name"] = "iris-canary-2"
    second = server.seed(*EXPERIMENTS, "bad", second_doc)
    p, lossy = losing_pipeline(api, prometheus)
    try:
        p.publish(apiserver_event("add", first))
        p.publish(apiserver_event("add", second))
        lossy.losing.add(events.CONCLUDED)
        tick(p)
        assert [e["type"] for e in lossy.lost] == [events.CONCLUDED]
        assert status_of(server, "bad")["stage"] == "Finishing"
        assert canary(server, "bad") == 20, "traffic half-moved"
        assert status_of(server, "bad", "iris-canary-2")["stage"] == "Waiting"

        tick(p)
    finally:
        p.close()
    status = status_of(server, "bad")
    assert (status["stage"], status["outcome"]) == ("Completed", "RolledBack")
    assert status["currentWeightDistribution"][0] == {"name": "iris-predictor-00001", "value": 100}
    assert status_of(server, "bad", "iris-canary-2")["stage"] == "Running"
    assert set(p.answers()) == {200}, [d for d in p.deliveries if d.status != 200]


def test_a_deleted_target_ends_a_finishing_experiment_failed_with_a_condition(
    cluster: tuple[KubeApiServer, client.ApiClient], prometheus: str
) -> None:
    server, api = cluster
    obj = seed(server, "bad")
    p, lossy = losing_pipeline(api, prometheus)
    try:
        p.publish(apiserver_event("add", obj))
        lossy.losing.add(events.CONCLUDED)
        tick(p)
        assert status_of(server, "bad")["stage"] == "Finishing"
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", "bad", "inferenceservices", "iris"
        )
        tick(p)
    finally:
        p.close()
    status = status_of(server, "bad")
    assert status["stage"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "TargetNotFound"
    assert "bad/iris" in failed["message"]
    assert set(p.answers("finish")) == {200}


def test_an_absurd_interval_on_one_experiment_never_stops_the_ping_for_the_others(
    cluster: tuple[KubeApiServer, client.ApiClient], prometheus: str
) -> None:
    server, api = cluster
    good = seed(server, "good")
    bad = seed(server, "bad")
    p = pipeline(api, prometheus)
    try:
        p.publish(apiserver_event("add", good))
        p.publish(apiserver_event("add", bad))
        # Stored before any bound on the interval existed.
        stored = server.get(*EXPERIMENTS, "bad", "iris-canary") or {}
        stored["spec"]["duration"]["intervalSeconds"] = 100_000_000_000_000
        server.seed(*EXPERIMENTS, "bad", stored)

        tick(p)
    finally:
        p.close()
    assert set(p.answers("iterate")) == {200}, [d for d in p.deliveries if d.status != 200]
    status = status_of(server, "bad")
    assert (status["stage"], status["outcome"]) == ("Failed", "Aborted")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DurationOutOfBounds"
    assert canary(server, "bad") == 0, "baseline restored"
    assert status_of(server, "good")["completedIterations"] == 1
