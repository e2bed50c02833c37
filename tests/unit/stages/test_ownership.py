"""What an experiment may touch, who holds a target, and the restore a deletion waits for.

Issue findings 2 (confused deputy across namespaces), 4 (traffic left moved after the
experiment is gone) and 6 (a duplicate delete resets another experiment's traffic), over
in-memory ports.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cloudevents.http import CloudEvent

from functions.core import finish, ownership, rollout
from functions.core.backends import Patch, backend_for
from functions.core.errors import TransientError
from functions.core.events import (
    CONCLUDED,
    DUE,
    FINISHED,
    MEASURED,
    STARTED,
    Concluded,
    Data,
    ExperimentRef,
)
from functions.core.resources import KNATIVE, KSERVE, ObjectRef
from functions.core.settings import Settings
from functions.core.status import resolved_experiment
from tests.fakes import (
    BASELINE_REVISION,
    CANDIDATE_REVISION,
    INTERVAL,
    T0,
    World,
    added,
    aggregated,
    canary_percent,
    condition,
    decided,
    deleted,
    event,
    experiment,
    kserve_world,
    payload,
    ping,
    recorded,
    ref,
    served,
)

NS = "demo"
NAME = "iris-canary"
ISVC = ObjectRef(KSERVE, "InferenceService", NS, "iris")
HELD_BY = "arbiter.dev/held-by"
FINALIZER = "arbiter.dev/restore-baseline"


def holder(w: World, ref: ObjectRef = ISVC) -> str | None:
    annotations = w.objects.stored(ref)["metadata"].get("annotations") or {}
    value = annotations.get(HELD_BY)
    return str(value) if value is not None else None


def holder_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}/{meta['uid']}"


def running(w: World, name: str = NAME, **spec: Any) -> dict[str, Any]:
    obj = w.store.add(experiment(name=name, **spec))
    assert w.deliver("start", added(obj)) == 200
    assert w.store.status(NS, name)["stage"] == "Running"
    return w.store.stored(NS, name)


def set_status(w: World, name: str = NAME, **fields: Any) -> None:
    stored = w.store.stored(NS, name)
    w.store.write_status(stored, {**(stored.get("status") or {}), **fields})


def recorded_decision(w: World, obj: dict[str, Any], conclusion: dict[str, Any]) -> CloudEvent:
    """The conclusion recorded as the experiment's decision after 3 iterations, and the
    event announcing it."""
    return decided(w.store, obj, Concluded.from_data(Data("test", conclusion)))


def weights(status: dict[str, Any], key: str = "currentWeightDistribution") -> dict[str, int]:
    return {w["name"]: w["value"] for w in status.get(key) or []}


# --- F2: namespace confinement -------------------------------------------------------------


def test_a_target_in_another_namespace_is_refused_and_left_untouched() -> None:
    w = kserve_world("good", "attacker")
    obj = w.store.add(experiment("attacker", target="good/iris"))
    assert w.deliver("start", added(obj)) == 422
    status = w.store.status("attacker", NAME)
    assert status["stage"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["reason"] == "OutsideNamespace"
    assert (
        "spec.target: namespace good is not the experiment's namespace attacker"
        in (failed["message"])
    )
    assert w.objects.patches == [] and w.objects.metadata_patches == []
    assert canary_percent(w.objects, "good") == 0
    assert w.sink.events == []


def test_an_attackers_experiment_does_not_queue_ahead_of_the_victims() -> None:
    w = kserve_world("good", "attacker")
    attacker = w.store.add(
        experiment(
            "attacker", "hold", target="good/iris", strategy={"testingPattern": "Conformance"}
        )
    )
    assert w.deliver("start", added(attacker)) == 422
    victim = w.store.add(experiment("good"))
    assert w.deliver("start", added(victim)) == 200
    assert w.store.status("good", NAME)["stage"] == "Running"


def test_a_weight_object_in_another_namespace_is_refused_naming_the_field() -> None:
    w = World()
    w.store.with_metric_library("attacker")
    ksvc = {
        "apiVersion": KNATIVE,
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "good"},
        "spec": {"template": {"spec": {"timeoutSeconds": 300, "containerConcurrency": 0}}},
    }
    w.objects.seed(ksvc, reconcile=False)
    ref = {"apiVersion": KNATIVE, "kind": "Service", "name": "web", "namespace": "good"}
    info = {
        "baseline": {
            "name": "a",
            "weightObjRef": {**ref, "fieldPath": ".spec.template.spec.timeoutSeconds"},
        },
        "candidates": [
            {
                "name": "b",
                "weightObjRef": {**ref, "fieldPath": ".spec.template.spec.containerConcurrency"},
            }
        ],
    }
    obj = w.store.add(experiment("attacker", target="attacker/web", versionInfo=info))
    assert w.deliver("start", added(obj)) == 422
    message = condition(w.store.status("attacker", NAME), "Failed")["message"]
    assert (
        "spec.versionInfo.baseline.weightObjRef.namespace: namespace good is not the "
        "experiment's namespace attacker"
    ) in message
    assert "spec.versionInfo.candidates[0].weightObjRef.namespace" in message
    assert w.objects.patches == []
    spec = w.objects.stored(ObjectRef(KNATIVE, "Service", "good", "web"))["spec"]
    assert spec["template"]["spec"] == {"timeoutSeconds": 300, "containerConcurrency": 0}


def test_a_metric_of_another_namespace_is_refused_at_start() -> None:
    w = kserve_world(NS)
    criteria = {
        "requestCount": "request-count",
        "objectives": [{"metric": "other/error-rate", "upperLimit": "0.01"}],
    }
    obj = w.store.add(experiment(criteria=criteria))
    assert w.deliver("start", added(obj)) == 422
    message = condition(w.store.status(NS, NAME), "Failed")["message"]
    assert "metric 'other/error-rate' is in namespace other" in message
    assert w.objects.patches == []


def test_the_shared_library_in_the_system_namespace_may_be_named() -> None:
    w = kserve_world(NS)
    w.store.with_metric_library("arbiter-system")
    criteria = {
        "requestCount": "arbiter-system/request-count",
        "objectives": [{"metric": "arbiter-system/error-rate", "upperLimit": "0.01"}],
    }
    obj = w.store.add(experiment(criteria=criteria))
    assert w.deliver("start", added(obj)) == 200


def test_iterate_refuses_to_read_a_metric_of_another_namespace() -> None:
    # The spec edited after the start: iterate checks again and ends the experiment safely.
    w = kserve_world(NS, "other")
    obj = running(w)
    stored = w.store.experiments[(NS, NAME)]
    stored["spec"]["criteria"]["requestCount"] = "other/request-count"
    w.clock.advance(60)
    assert w.deliver("iterate", event(DUE, obj, 1)) == 422
    [abort] = w.sink.of_type(CONCLUDED)
    assert "namespace other is neither the experiment's namespace demo" in str(payload(abort))
    assert not any(c[1].get("namespace") == "other" for c in w.metrics.calls)


# --- F2: field paths only where the owner allows -----------------------------------------


def virtual_service(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "iris", "namespace": NS}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": meta,
        "spec": {
            "http": [{"route": [{"weight": 100}, {"weight": 0}], "retries": {"attempts": 3}}],
            "timeout": "10s",
        },
    }


def field_path_spec(kind: str, paths: tuple[str, str]) -> dict[str, Any]:
    api = "networking.istio.io/v1beta1" if kind == "VirtualService" else KNATIVE
    ref = {"apiVersion": api, "kind": kind, "name": "iris"}
    return {
        "baseline": {"name": "a", "weightObjRef": {**ref, "fieldPath": paths[0]}},
        "candidates": [{"name": "b", "weightObjRef": {**ref, "fieldPath": paths[1]}}],
    }


ROUTES = (".spec.http[0].route[0].weight", ".spec.http[0].route[1].weight")
VS = ObjectRef("networking.istio.io/v1beta1", "VirtualService", NS, "iris")


def test_route_weights_of_a_virtual_service_are_allowed_by_default() -> None:
    w = World()
    w.store.with_metric_library(NS)
    w.objects.seed(virtual_service(), reconcile=False)
    obj = w.store.add(experiment(versionInfo=field_path_spec("VirtualService", ROUTES)))
    assert w.deliver("start", added(obj)) == 200
    route = w.objects.stored(VS)["spec"]["http"][0]["route"]
    assert [r["weight"] for r in route] == [80, 20]


def test_a_field_the_owner_did_not_allow_is_refused_at_start() -> None:
    w = World()
    w.store.with_metric_library(NS)
    ksvc = {
        "apiVersion": KNATIVE,
        "kind": "Service",
        "metadata": {"name": "iris", "namespace": NS},
        "spec": {"template": {"spec": {"timeoutSeconds": 300, "containerConcurrency": 0}}},
    }
    w.objects.seed(ksvc, reconcile=False)
    paths = (".spec.template.spec.timeoutSeconds", ".spec.template.spec.containerConcurrency")
    obj = w.store.add(experiment(versionInfo=field_path_spec("Service", paths)))
    assert w.deliver("start", added(obj)) == 422
    failed = condition(w.store.status(NS, NAME), "Failed")
    assert failed["reason"] == "FieldNotAllowed"
    assert (
        "spec.versionInfo.baseline.weightObjRef.fieldPath: /spec/template/spec/timeoutSeconds"
        in (failed["message"])
    )
    assert "arbiter.dev/traffic-paths" in failed["message"]
    assert w.objects.patches == [] and w.objects.metadata_patches == []


def test_the_owner_opts_fields_in_with_an_annotation() -> None:
    w = World(settings=Settings(readback_timeout_seconds=1.0, traffic_paths={}))
    w.store.with_metric_library(NS)
    allowed = "/spec/http/0/route/0/weight,/spec/http/0/route/1/weight"
    w.objects.seed(virtual_service({"arbiter.dev/traffic-paths": allowed}), reconcile=False)
    obj = w.store.add(experiment(versionInfo=field_path_spec("VirtualService", ROUTES)))
    assert w.deliver("start", added(obj)) == 200
    # without the annotation, and with no allow-list, the same experiment is refused
    w2 = World(settings=Settings(readback_timeout_seconds=1.0, traffic_paths={}))
    w2.store.with_metric_library(NS)
    w2.objects.seed(virtual_service(), reconcile=False)
    obj2 = w2.store.add(experiment(versionInfo=field_path_spec("VirtualService", ROUTES)))
    assert w2.deliver("start", added(obj2)) == 422


def test_a_field_path_edited_in_after_the_start_is_not_written() -> None:
    w = World()
    w.store.with_metric_library(NS)
    w.objects.seed(virtual_service(), reconcile=False)
    obj = running(w, versionInfo=field_path_spec("VirtualService", ROUTES))
    stored = w.store.experiments[(NS, NAME)]
    candidate = stored["spec"]["versionInfo"]["candidates"][0]
    candidate["weightObjRef"]["fieldPath"] = ".spec.http[0].retries.attempts"
    patches = len(w.objects.patches)
    conclusion = {"action": "rollback", "rule": "x", "message": "roll back"}
    ev = recorded_decision(w, obj, conclusion)
    assert w.deliver("finish", ev) == 200
    assert len(w.objects.patches) == patches
    assert w.objects.stored(VS)["spec"]["http"][0]["retries"] == {"attempts": 3}
    status = w.store.status(NS, NAME)
    assert status["stage"] == "Failed"
    assert condition(status, "Failed")["reason"] == "TrafficRefused"


# --- F4: what a backend can express -----------------------------------------------------


@pytest.mark.parametrize(
    ("count", "reason", "says"),
    [
        (3, "NotExpressible", "one baseline and one candidate; this experiment has 3 versions"),
        # Past the CRD's bound on candidates the spec itself is refused, naming the field.
        (20, "InvalidSpec", "spec.versionInfo.candidates"),
    ],
)
def test_more_versions_than_kserve_can_split_are_refused_before_traffic_moves(
    count: int, reason: str, says: str
) -> None:
    w = kserve_world(NS)
    info = {
        "baseline": {"name": "v0"},
        "candidates": [{"name": f"v{i}"} for i in range(1, count)],
    }
    strategy = {"testingPattern": "A/B/n", "deploymentPattern": "Progressive"}
    criteria = {"rewards": [{"metric": "request-count", "preferredDirection": "High"}]}
    obj = w.store.add(experiment(versionInfo=info, strategy=strategy, criteria=criteria))
    assert w.deliver("start", added(obj)) == 422
    failed = condition(w.store.status(NS, NAME), "Failed")
    assert failed["reason"] == reason
    assert says in failed["message"]
    assert w.objects.patches == [] and canary_percent(w.objects) == 0


# --- F4: write-ahead: the split is recorded before it is applied -------------------------


def test_a_failed_status_write_at_start_leaves_the_traffic_untouched() -> None:
    w = kserve_world(NS)
    obj = w.store.add(experiment())
    w.store.failures.add("write_status", TransientError("API server down"))
    assert w.deliver("start", added(obj)) == 503
    assert w.objects.patches == [] and canary_percent(w.objects) == 0
    # deleting it now leaves nothing to restore: traffic never moved
    assert w.deliver("start", added(obj)) == 200
    assert canary_percent(w.objects) == 20


def test_the_first_split_is_recorded_before_it_is_applied_and_applied_by_the_next_look() -> None:
    w = kserve_world(NS)
    obj = w.store.add(experiment())
    # the holder annotation is a patch too: take the target first, then fail the traffic patch
    model = backend_for(resolved_experiment(obj).spec, NS)
    ownership.ensure_held(w.ctx, model, ref(obj), rollout.fetch(w.ctx, model))
    w.objects.failures.add("patch", TransientError("InferenceService API down"))
    assert w.deliver("start", added(obj)) == 503
    status = w.store.status(NS, NAME)
    assert status["stage"] == "Running"
    assert weights(status, "desiredWeightDistribution") == {
        BASELINE_REVISION: 80,
        CANDIDATE_REVISION: 20,
    }
    assert "currentWeightDistribution" not in status
    assert canary_percent(w.objects) == 0
    assert w.sink.events == []
    # the ping sweep finds the recorded split not yet applied and applies it
    w.publish(ping())
    status = w.store.status(NS, NAME)
    assert weights(status) == weights(status, "desiredWeightDistribution")
    assert canary_percent(w.objects) == 20
    assert STARTED in w.sink.types()


def test_assess_records_the_next_split_before_applying_it() -> None:
    w = kserve_world(NS)
    obj = running(w)
    good = served(200, 1, 1)
    data = aggregated(
        {m: {BASELINE_REVISION: good[m], CANDIDATE_REVISION: good[m]} for m in good},
        T0 + timedelta(seconds=INTERVAL),
    )
    measured = recorded(w.store, event(MEASURED, obj, 1, data))
    writes = len(w.store.writes)
    w.objects.failures.add("patch", TransientError("down"))
    assert w.deliver("assess", measured) == 503
    status = w.store.status(NS, NAME)
    assert len(w.store.writes) == writes + 1
    assert status.get("completedIterations") == 0, "the iteration is not recorded"
    desired = weights(status, "desiredWeightDistribution")
    assert desired != {BASELINE_REVISION: 80, CANDIDATE_REVISION: 20}
    assert canary_percent(w.objects) == 20, "nothing moved yet"
    assert w.deliver("assess", measured) == 200
    status = w.store.status(NS, NAME)
    assert weights(status) == desired == weights(status, "desiredWeightDistribution")
    assert canary_percent(w.objects) == desired[CANDIDATE_REVISION]


# --- holding the target ------------------------------------------------------------------


def test_start_takes_the_target_visibly_and_puts_the_finalizer_on_first() -> None:
    w = kserve_world(NS)
    obj = running(w)
    assert holder(w) == holder_of(obj)
    assert FINALIZER in obj["metadata"]["finalizers"]


def test_a_target_someone_else_holds_is_waited_for() -> None:
    w = kserve_world(NS)
    obj = w.store.add(experiment())
    body = {"metadata": {"annotations": {HELD_BY: "demo/other/uid-x"}}}
    w.objects.patch(Patch(ISVC, "merge", body))
    assert w.deliver("start", added(obj)) == 200
    status = w.store.status(NS, NAME)
    assert status["stage"] == "Waiting"
    assert condition(status, "TargetAcquired")["reason"] == "TargetHeld"
    assert "demo/other/uid-x" in status["message"]
    assert w.objects.patches == [] and canary_percent(w.objects) == 0


def test_two_starts_racing_cannot_both_take_the_target() -> None:
    w = kserve_world(NS)
    a = w.store.add(experiment(name="a"))
    model = backend_for(resolved_experiment(a).spec, NS)
    seen = rollout.fetch(w.ctx, model)  # both read the target free
    ownership.ensure_held(w.ctx, model, ExperimentRef(NS, "a", "uid-a"), seen)
    # b's conditional take loses (409); it reads the target again and finds a holding it.
    with pytest.raises(ownership.NotHolderError, match="held by experiment demo/a/uid-a"):
        ownership.ensure_held(w.ctx, model, ExperimentRef(NS, "b", "uid-b"), seen)
    assert holder(w) == "demo/a/uid-a"


def test_the_same_target_spelled_two_ways_is_one_target() -> None:
    w = kserve_world(NS)
    running(w, "a", target="iris")
    b = w.store.add(experiment(name="b", target="demo/iris"))
    assert w.deliver("start", added(b)) == 200
    assert w.store.status(NS, "b")["stage"] == "Waiting"


def test_only_the_holder_moves_the_traffic_and_a_refused_one_ends_without_moving_it() -> None:
    w = kserve_world(NS)
    obj = running(w)
    w.objects.patch(Patch(ISVC, "merge", {"metadata": {"annotations": {HELD_BY: "x/y/z"}}}))
    patches = len(w.objects.patches)
    conclusion = {"action": "promote", "version": CANDIDATE_REVISION, "rule": "r", "message": "m"}
    ev = recorded_decision(w, obj, conclusion)
    assert w.deliver("finish", ev) == 200
    assert len(w.objects.patches) == patches and canary_percent(w.objects) == 20
    status = w.store.status(NS, NAME)
    assert (status["stage"], status["outcome"]) == ("Failed", "Aborted")
    assert "held by experiment x/y/z" in condition(status, "Failed")["message"]
    assert holder(w) == "x/y/z", "another holder's annotation is left alone"


def test_a_running_experiment_of_an_older_version_adopts_its_target_on_its_next_step() -> None:
    w = kserve_world(NS)
    obj = running(w)
    # as an older version left it: no holder annotation
    w.objects.patch(Patch(ISVC, "merge", {"metadata": {"annotations": {HELD_BY: None}}}))
    assert holder(w) is None
    conclusion = {"action": "promote", "version": CANDIDATE_REVISION, "rule": "r", "message": "m"}
    ev = recorded_decision(w, obj, conclusion)
    assert w.deliver("finish", ev) == 200
    assert canary_percent(w.objects) == 100
    assert [p.body["metadata"]["annotations"][HELD_BY] for p in w.objects.metadata_patches][
        -2:
    ] == [holder_of(obj), None], "adopted for the promotion, then released"


def test_completion_releases_the_target_and_removes_the_finalizer() -> None:
    w = kserve_world(NS)
    obj = running(w)
    conclusion = {"action": "rollback", "rule": "r", "message": "m"}
    ev = recorded_decision(w, obj, conclusion)
    assert w.deliver("finish", ev) == 200
    assert holder(w) is None
    assert FINALIZER not in (w.store.stored(NS, NAME)["metadata"].get("finalizers") or [])
    assert canary_percent(w.objects) == 0


def test_a_lost_release_is_done_by_the_repeated_conclusion() -> None:
    w = kserve_world(NS)
    obj = running(w)
    w.store.failures.add("patch_metadata", TransientError("down"))
    conclusion = {"action": "rollback", "rule": "r", "message": "m"}
    ev = recorded_decision(w, obj, conclusion)
    assert w.deliver("finish", ev) == 503
    assert w.store.status(NS, NAME)["stage"] == "Completed"
    assert FINALIZER in w.store.stored(NS, NAME)["metadata"]["finalizers"]
    assert w.deliver("finish", ev) == 200
    assert FINALIZER not in (w.store.stored(NS, NAME)["metadata"].get("finalizers") or [])


# --- F4 / F6: deletion -------------------------------------------------------------------


def test_a_deletion_waits_for_the_restore_which_is_retried_until_it_is_read_back() -> None:
    w = kserve_world(NS)
    obj = running(w)
    assert canary_percent(w.objects) == 20
    assert w.store.request_delete(NS, NAME) is not None, "the finalizer holds the deletion"
    w.objects.failures.add("patch", TransientError("InferenceService API down"))
    with pytest.raises(TransientError):
        finish.restore_deleted(w.ctx, ref(obj))
    stored = w.store.stored(NS, NAME)
    assert FINALIZER in stored["metadata"]["finalizers"], "the deletion still waits"
    assert canary_percent(w.objects) == 20
    finish.restore_deleted(w.ctx, ref(obj))
    assert canary_percent(w.objects) == 0
    assert holder(w) is None
    assert (NS, NAME) not in w.store.experiments, "the deletion completed"
    [gone] = w.sink.of_type(FINISHED)
    assert payload(gone)["reason"] == "ExperimentDeleted"
    # a repeat (the sweep saw it twice) finds nothing left to do
    finish.restore_deleted(w.ctx, ref(obj))
    assert len(w.sink.of_type(FINISHED)) == 1


def test_the_delete_event_after_a_finalized_restore_changes_nothing() -> None:
    w = kserve_world(NS)
    obj = running(w)
    w.store.request_delete(NS, NAME)
    last = w.store.stored(NS, NAME)
    finish.restore_deleted(w.ctx, ref(obj))
    final = {**last, "status": w.store.writes[-1]["status"]}
    patches = len(w.objects.patches) + len(w.objects.metadata_patches)
    assert w.deliver("finish", deleted(final)) == 200
    assert len(w.objects.patches) + len(w.objects.metadata_patches) == patches


def test_a_duplicate_delete_does_not_reset_the_experiment_that_took_the_target_over() -> None:
    # F6: A is deleted (an experiment of a version without the finalizer: the
    # ApiServerSource delete restores it), B takes the target, A's delete is redelivered.
    w = kserve_world(NS)
    a = running(w, "a")
    w.store.experiments[(NS, "a")]["metadata"].pop("finalizers", None)
    gone_a = w.store.delete(NS, "a")
    assert w.deliver("finish", deleted(gone_a)) == 200
    assert canary_percent(w.objects) == 0 and holder(w) is None
    b = running(w, "b")
    # B moves on to 60/40 (as its assess would)
    w.objects.patch(Patch(ISVC, "merge", {"spec": {"predictor": {"canaryTrafficPercent": 40}}}))
    assert w.deliver("finish", deleted(gone_a)) == 200
    assert canary_percent(w.objects) == 40
    assert holder(w) == holder_of(b)
    assert holder_of(a) != holder_of(b)


def test_deleting_an_experiment_that_waits_for_its_target_only_removes_the_finalizer() -> None:
    w = kserve_world(NS)
    running(w, "a")
    b = w.store.add(experiment(name="b"))
    w.store.experiments[(NS, "b")]["metadata"]["finalizers"] = [FINALIZER]
    w.deliver("start", added(b))
    assert w.store.status(NS, "b")["stage"] == "Waiting"
    w.store.request_delete(NS, "b")
    finish.restore_deleted(w.ctx, ref(b))
    assert (NS, "b") not in w.store.experiments
    assert canary_percent(w.objects) == 20 and holder(w) is not None
