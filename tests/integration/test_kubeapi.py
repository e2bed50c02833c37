"""The local Kubernetes API (local.kubeapi) against the official `kubernetes` client.

Each test drives the synchronous client from the test thread (or threads it starts) against the
server's own thread, and proves one kmock 0.8 gap closed, or an
API-server behaviour the functions rely on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.dynamic import DynamicClient

from local.harness import free_port
from local.kubeapi import KubeApiServer

pytest_plugins = ["tests.support.kube"]

GROUP, VERSION, PLURAL = "arbiter.dev", "v1alpha1", "experiments"
NS = "team-a"
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
CUSTOM_GROUPS = {
    "arbiter.dev/v1alpha1": {"experiments", "experiments/status", "metrics"},
    "serving.kserve.io/v1beta1": {"inferenceservices", "inferenceservices/status"},
    "serving.kubeflow.org/v1alpha2": {"inferenceservices", "inferenceservices/status"},
    "serving.knative.dev/v1": {"services", "services/status", "revisions"},
    "networking.istio.io/v1beta1": {"virtualservices"},
    "gateway.networking.k8s.io/v1": {"httproutes", "httproutes/status"},
}


def experiment(
    name: str = "exp", labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Experiment",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"target": f"{NS}/model", **spec},
    }


@pytest.fixture
def objects(kube: KubeApiServer, kube_api: client.ApiClient) -> client.CustomObjectsApi:
    """CustomObjectsApi on an empty server."""
    return client.CustomObjectsApi(kube_api)


def create(api: client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    return created


def get(api: client.CustomObjectsApi, name: str = "exp") -> dict[str, Any]:
    found: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    return found


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def status_of(error: client.ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    return body


# -- create and server-set metadata -------------------------------------------------------------


def test_create_answers_201_with_the_object_and_server_set_metadata(
    objects: client.CustomObjectsApi,
) -> None:
    body = {**experiment(), "status": {"stage": "Completed"}}
    created, code, _ = objects.create_namespaced_custom_object_with_http_info(
        GROUP, VERSION, NS, PLURAL, body
    )

    assert code == 201  # kmock answered 200, and the client then returned None
    meta = created["metadata"]
    assert meta["namespace"] == NS
    assert len(meta["uid"]) == 36 and meta["generation"] == 1
    assert rv(created) > 0
    assert datetime.strptime(meta["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert "status" not in created  # only the status subresource writes status
    assert get(objects) == created


def test_create_of_an_existing_name_is_409_already_exists(objects: client.CustomObjectsApi) -> None:
    create(objects, experiment())
    with pytest.raises(client.ApiException) as error:
        create(objects, experiment())
    assert error.value.status == 409
    assert status_of(error.value)["reason"] == "AlreadyExists"


def test_generate_name_and_uids_are_unique(objects: client.CustomObjectsApi) -> None:
    body = experiment()
    body["metadata"] = {"generateName": "exp-"}
    first, second = create(objects, body), create(objects, body)
    assert first["metadata"]["name"].startswith("exp-")
    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert first["metadata"]["uid"] != second["metadata"]["uid"]


def test_resource_version_is_one_increasing_counter_across_objects_and_writes(
    objects: client.CustomObjectsApi,
) -> None:
    versions = [
        rv(create(objects, experiment("a"))),
        rv(create(objects, experiment("b"))),
        rv(
            objects.patch_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, "a", {"spec": {"x": 1}}
            )
        ),
        rv(objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "b")),
    ]
    listing = objects.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)

    assert versions == sorted(set(versions))
    assert int(listing["metadata"]["resourceVersion"]) == versions[-1]


def test_generation_counts_spec_changes_only(objects: client.CustomObjectsApi) -> None:
    def patch(body: dict[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = objects.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, "exp", body
        )
        return patched

    created = create(objects, experiment())
    relabelled = patch({"metadata": {"labels": {"team": "a"}}})
    respecced = patch({"spec": {"duration": {"intervalSeconds": 5}}})
    unchanged = patch({"spec": {"duration": {"intervalSeconds": 5}}})
    with_status = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "exp", {"status": {"stage": "Running"}}
    )

    assert [o["metadata"]["generation"] for o in (created, relabelled, respecced, with_status)] == [
        1,
        1,
        2,
        2,
    ]
    assert rv(relabelled) > rv(created)
    assert rv(unchanged) == rv(respecced)  # a no-op write is not a new version


# -- updates and optimistic concurrency ---------------------------------------------------------


def test_replace_puts_the_whole_object_and_keeps_server_fields(
    objects: client.CustomObjectsApi,
) -> None:
    created = create(objects, experiment(strategy={"testingPattern": "Canary"}))
    body = experiment(duration={"intervalSeconds": 7})
    body["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]

    replaced = objects.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "exp", body)

    assert replaced["spec"] == body["spec"]  # replaced, not merged: `strategy` is gone
    for field in ("uid", "creationTimestamp", "namespace"):
        assert replaced["metadata"][field] == created["metadata"][field]
    assert replaced["metadata"]["generation"] == 2
    assert get(objects) == replaced


def stale_replace(api: client.CustomObjectsApi, stale: dict[str, Any]) -> None:
    api.replace_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "exp", {**stale, "spec": {"target": "x/y"}}
    )


def stale_merge_patch(api: client.CustomObjectsApi, stale: dict[str, Any]) -> None:
    patch = {
        "metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]},
        "spec": {"a": 1},
    }
    api.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "exp", patch)


def stale_status_patch(api: client.CustomObjectsApi, stale: dict[str, Any]) -> None:
    patch = {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]}, "status": {}}
    api.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "exp", patch)


def stale_status_replace(api: client.CustomObjectsApi, stale: dict[str, Any]) -> None:
    api.replace_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "exp", {**stale, "status": {"stage": "Failed"}}
    )


@pytest.mark.parametrize(
    "write", [stale_replace, stale_merge_patch, stale_status_patch, stale_status_replace]
)
def test_a_write_based_on_a_stale_read_is_409_conflict(
    objects: client.CustomObjectsApi,
    write: Callable[[client.CustomObjectsApi, dict[str, Any]], None],
) -> None:
    stale = create(objects, experiment())
    current = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "exp", {"status": {"stage": "Running"}}
    )

    with pytest.raises(client.ApiException) as error:
        write(objects, stale)

    assert error.value.status == 409
    status = status_of(error.value)
    assert (status["kind"], status["reason"]) == ("Status", "Conflict")
    assert get(objects) == current


def test_status_subresource_changes_status_only(objects: client.CustomObjectsApi) -> None:
    create(objects, experiment(strategy={"testingPattern": "Canary"}))

    via_status = objects.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "exp",
        {"spec": {"strategy": {"testingPattern": "A/B"}}, "status": {"stage": "Running"}},
    )
    via_object = objects.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "exp", {"status": {"stage": "Failed"}, "spec": {"x": 1}}
    )

    assert via_status["spec"]["strategy"] == {"testingPattern": "Canary"}
    assert via_status["status"] == {"stage": "Running"}
    assert via_status["metadata"]["generation"] == 1
    assert via_object["status"] == {"stage": "Running"}
    assert via_object["spec"]["x"] == 1


def test_patch_types_follow_content_type(objects: client.CustomObjectsApi) -> None:
    create(objects, experiment(weights={"max": 50, "step": 10}))

    merged = objects.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "exp", {"spec": {"weights": {"step": None}, "target": 3}}
    )
    patched = objects.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "exp",
        [
            {"op": "test", "path": "/spec/target", "value": 3},
            {"op": "add", "path": "/spec/z", "value": 1},
        ],
        _content_type="application/json-patch+json",
    )
    with pytest.raises(client.ApiException) as failed_test:
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            PLURAL,
            "exp",
            [{"op": "test", "path": "/spec/target", "value": 4}],
            _content_type="application/json-patch+json",
        )
    with pytest.raises(client.ApiException) as strategic:
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            PLURAL,
            "exp",
            {"spec": {}},
            _content_type="application/strategic-merge-patch+json",
        )

    assert merged["spec"]["weights"] == {"max": 50}  # RFC 7386: null deletes
    assert merged["spec"]["target"] == 3
    assert patched["spec"]["z"] == 1
    assert failed_test.value.status == 422
    assert strategic.value.status == 415  # custom resources take no strategic merge patch


def test_finalizers_hold_a_deleted_object_until_they_are_removed(
    objects: client.CustomObjectsApi,
) -> None:
    body = experiment()
    body["metadata"]["finalizers"] = ["arbiter.dev/cleanup"]
    create(objects, body)

    marked = objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "exp")
    still_there = get(objects)
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "exp", {"metadata": {"finalizers": None}}
    )

    assert marked["metadata"]["deletionTimestamp"]
    assert still_there["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]
    with pytest.raises(client.ApiException) as error:
        get(objects)
    assert error.value.status == 404


# -- reads ---------------------------------------------------------------------------------------


def test_missing_object_is_404_with_a_status_body(objects: client.CustomObjectsApi) -> None:
    with pytest.raises(client.ApiException) as error:
        get(objects, "absent")
    with pytest.raises(client.ApiException) as undeclared:
        objects.list_namespaced_custom_object("other.io", "v1", NS, "things")

    assert error.value.status == 404
    assert status_of(error.value) == {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": 'experiments.arbiter.dev "absent" not found',
        "reason": "NotFound",
        "code": 404,
        "details": {"name": "absent", "group": GROUP, "kind": "experiments.arbiter.dev"},
    }
    assert undeclared.value.status == 404  # as on a cluster without that CRD


def test_lists_carry_kind_and_resource_version_and_respect_namespaces(
    objects: client.CustomObjectsApi,
) -> None:
    create(objects, experiment("b"))
    create(objects, experiment("a"))
    objects.create_namespaced_custom_object(GROUP, VERSION, "team-b", PLURAL, experiment("c"))

    listing = objects.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    everywhere = objects.list_cluster_custom_object(GROUP, VERSION, PLURAL)

    assert (listing["apiVersion"], listing["kind"]) == (f"{GROUP}/{VERSION}", "ExperimentList")
    assert [o["metadata"]["name"] for o in listing["items"]] == ["a", "b"]
    assert [o["metadata"]["name"] for o in everywhere["items"]] == ["a", "b", "c"]
    assert int(everywhere["metadata"]["resourceVersion"]) == max(map(rv, everywhere["items"]))


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("stage=canary", ["one"]),
        ("stage==canary,team=a", ["one"]),
        ("stage!=canary", ["three", "two"]),  # `!=` also matches objects without the label
        ("stage", ["one", "two"]),
        ("!stage", ["three"]),
        ("stage in (canary, ab)", ["one", "two"]),
        ("stage notin (canary)", ["three", "two"]),
        ("team=a,!stage", []),
    ],
)
def test_label_selectors_filter_lists(
    objects: client.CustomObjectsApi, selector: str, expected: list[str]
) -> None:
    create(objects, experiment("one", {"stage": "canary", "team": "a"}))
    create(objects, experiment("two", {"stage": "ab", "team": "b"}))
    create(objects, experiment("three", {"team": "b"}))

    listing = objects.list_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, label_selector=selector
    )

    assert sorted(o["metadata"]["name"] for o in listing["items"]) == expected


def test_field_selectors_filter_lists(objects: client.CustomObjectsApi) -> None:
    create(objects, experiment("one"))
    create(objects, experiment("two"))
    named = objects.list_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, field_selector="metadata.name=two"
    )
    with pytest.raises(client.ApiException) as error:
        objects.list_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, label_selector="stage in canary"
        )
    assert [o["metadata"]["name"] for o in named["items"]] == ["two"]
    assert error.value.status == 400  # a selector it cannot read is refused, not ignored


# -- watch ---------------------------------------------------------------------------------------


def stream(api: client.CustomObjectsApi, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """`kubernetes.watch` on the test namespace's Experiments."""
    events: Iterator[dict[str, Any]] = watch.Watch().stream(
        api.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, **kwargs
    )
    return events


def test_watch_delivers_added_modified_deleted_live(objects: client.CustomObjectsApi) -> None:
    create(objects, experiment())
    seen: list[tuple[str, str]] = []
    watching = threading.Event()

    def consume() -> None:
        for event in stream(objects, timeout_seconds=10):
            seen.append((event["type"], event["object"]["metadata"]["name"]))
            watching.set()
            if event["type"] == "DELETED":
                return

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    assert watching.wait(5), "the watch never delivered the existing object"
    objects.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "exp", {"spec": {"x": 1}})
    create(objects, experiment("other"))
    objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "exp")
    consumer.join(5)

    assert not consumer.is_alive()
    assert seen == [("ADDED", "exp"), ("MODIFIED", "exp"), ("ADDED", "other"), ("DELETED", "exp")]


@pytest.mark.slow
def test_watch_ends_at_timeout_seconds(objects: client.CustomObjectsApi) -> None:
    create(objects, experiment())
    started = time.monotonic()
    events = [event["type"] for event in stream(objects, timeout_seconds=1)]
    elapsed = time.monotonic() - started

    assert events == ["ADDED"]
    assert 0.9 < elapsed < 3  # kmock ignored it: the client hung until its read timeout


def events_until(api: client.CustomObjectsApi, last: str, **kwargs: Any) -> list[tuple[str, str]]:
    """Watch events (type, name) up to and including the first one about object `last`."""
    seen, watcher = [], watch.Watch()
    for event in watcher.stream(
        api.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, timeout_seconds=5, **kwargs
    ):
        seen.append((event["type"], event["object"]["metadata"]["name"]))
        if seen[-1][1] == last:
            watcher.stop()
    return seen


def test_watch_from_a_list_resource_version_misses_nothing(
    objects: client.CustomObjectsApi,
) -> None:
    create(objects, experiment("before"))
    listed = objects.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    # Written after the list, before the watch connects: a list-then-watch must still see these.
    create(objects, experiment("after", {"stage": "canary"}))
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "after", {"metadata": {"labels": {"stage": "done"}}}
    )
    objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "before")
    create(objects, experiment("end", {"stage": "canary"}))

    since = listed["metadata"]["resourceVersion"]
    everything = events_until(objects, "end", resource_version=since)
    selected = events_until(objects, "end", resource_version=since, label_selector="stage=canary")

    assert everything == [
        ("ADDED", "after"),
        ("MODIFIED", "after"),
        ("DELETED", "before"),
        ("ADDED", "end"),
    ]
    # An object that stops matching the selector leaves the watcher's view as DELETED.
    assert selected == [("ADDED", "after"), ("DELETED", "after"), ("ADDED", "end")]


def test_watch_from_a_forgotten_resource_version_is_410_expired(
    kube: KubeApiServer, objects: client.CustomObjectsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube.emulator, "watch_window", 3)
    kube.reset()  # new windows take the smaller size
    versions = [rv(create(objects, experiment(f"e{i}"))) for i in range(5)]

    with pytest.raises(client.ApiException) as error:
        events_until(objects, "e4", resource_version=str(versions[0]))
    recent = events_until(objects, "e4", resource_version=str(versions[1]))

    assert error.value.status == 410
    assert recent == [("ADDED", "e2"), ("ADDED", "e3"), ("ADDED", "e4")]


# -- concurrency, discovery, core kinds, client configuration -------------------------------------


def increment_by_replace(api: client.CustomObjectsApi) -> None:
    current = get(api)
    current["spec"]["count"] += 1
    api.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "exp", current)


def increment_status_by_patch(api: client.CustomObjectsApi) -> None:
    current = get(api)
    patch = {
        "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
        "status": {
            "completedIterations": current.get("status", {}).get("completedIterations", 0) + 1
        },
    }
    api.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "exp", patch)


@pytest.mark.slow
@pytest.mark.parametrize("increment", [increment_by_replace, increment_status_by_patch])
def test_concurrent_read_modify_writes_retrying_on_409_lose_no_update(
    objects: client.CustomObjectsApi, increment: Callable[[client.CustomObjectsApi], None]
) -> None:
    create(objects, experiment(count=0))
    threads, per_thread = 20, 2
    start = threading.Barrier(threads)
    conflicts: list[int] = []
    failures: list[BaseException] = []

    def worker() -> None:
        start.wait()  # all threads read the same version first, so most writes collide
        for _ in range(per_thread):
            while True:
                try:
                    increment(objects)
                    break
                except client.ApiException as e:
                    if e.status != 409:
                        failures.append(e)
                        return
                    conflicts.append(1)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(30)

    final = get(objects)
    assert not any(thread.is_alive() for thread in pool)
    assert not failures
    total = final["spec"]["count"] + final.get("status", {}).get("completedIterations", 0)
    assert total == threads * per_thread
    assert conflicts, "no write ever collided, so the test proved nothing"


@pytest.mark.slow  # the client's first CoreV1Api takes a second to import
def test_discovery_serves_the_custom_groups(
    kube: KubeApiServer, kube_api: client.ApiClient, tmp_path: Path
) -> None:
    groups = {
        version.group_version
        for group in client.ApisApi(kube_api).get_api_versions().groups
        for version in group.versions
    }
    served = {
        group_version: {
            r.name
            for r in client.CustomObjectsApi(kube_api)
            .get_api_resources(*group_version.split("/"))
            .resources
        }
        for group_version in CUSTOM_GROUPS
    }
    core = {r.name: r for r in client.CoreV1Api(kube_api).get_api_resources().resources}
    dynamic = DynamicClient(kube_api, cache_file=str(tmp_path / "discovery.json"))
    experiments = dynamic.resources.get(api_version=f"{GROUP}/{VERSION}", kind="Experiment")
    experiments.create(body=experiment(), namespace=NS)

    assert set(CUSTOM_GROUPS) <= groups
    assert served == CUSTOM_GROUPS
    assert {"namespaces", "configmaps", "events"} <= set(core)
    assert core["namespaces"].namespaced is False
    assert experiments.namespaced is True
    # kmock's lists had no `kind`, which broke the dynamic client's list.
    assert [o.metadata.name for o in experiments.get(namespace=NS).items] == ["exp"]


def test_core_v1_namespaces_configmaps_and_events(
    kube: KubeApiServer, kube_api: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": NS}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "settings"}, "data": {"a": "1"}})
    patched = core.patch_namespaced_config_map("settings", NS, {"data": {"b": "2"}})
    exp = client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, experiment()
    )
    involved = {"kind": "Experiment", "name": "exp", "namespace": NS, "uid": exp["metadata"]["uid"]}
    for name, uid in (("exp.1", involved["uid"]), ("old.1", "another-uid")):
        core.create_namespaced_event(
            NS,
            {
                "metadata": {"name": name},
                "involvedObject": {**involved, "uid": uid},
                "reason": "Started",
                "message": "started",
                "type": "Normal",
            },
        )
    # kubectl describe asks for an object's events like this.
    selector = ",".join(f"involvedObject.{key}={value}" for key, value in involved.items())

    assert [n.metadata.name for n in core.list_namespace().items] == [NS]
    assert core.read_namespace(NS).metadata.uid
    assert patched.data == {"a": "1", "b": "2"}  # the client's strategic merge patch
    events = core.list_namespaced_event(NS, field_selector=selector).items
    assert [e.metadata.name for e in events] == ["exp.1"]


def test_kubeconfig_configures_the_official_client(kube: KubeApiServer, tmp_path: Path) -> None:
    path = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    api = config.new_client_from_config(config_file=str(path))
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, experiment()
        )
        _, context = config.list_kube_config_contexts(config_file=str(path))
    finally:
        api.close()

    assert context["context"]["namespace"] == NS
    assert kube.get(GROUP, VERSION, PLURAL, NS, "exp") is not None


def test_seed_keeps_status_and_history_records_every_version(
    kube: KubeApiServer, kube_api: client.ApiClient
) -> None:
    isvc = {
        "metadata": {"name": "model"},
        "spec": {"predictor": {"canaryTrafficPercent": 0}},
        "status": {"components": {"predictor": {"latestCreatedRevision": "model-2"}}},
    }
    seeded = kube.seed(*ISVC, NS, isvc)
    api = client.CustomObjectsApi(kube_api)
    for percent in (10, 30):
        patch = {"spec": {"predictor": {"canaryTrafficPercent": percent}}}
        api.patch_namespaced_custom_object(*ISVC[:2], NS, ISVC[2], "model", patch)
    api.delete_namespaced_custom_object(*ISVC[:2], NS, ISVC[2], "model")

    history = kube.history(*ISVC, NS, "model")

    assert seeded["status"] == isvc["status"] and seeded["kind"] == "InferenceService"
    assert [v["spec"]["predictor"]["canaryTrafficPercent"] for v in history if v] == [0, 10, 30, 30]
    assert history[-1] is None
    assert kube.get(*ISVC, NS, "model") is None


def test_the_request_log_holds_only_requests_in_flight(
    kube: KubeApiServer, objects: client.CustomObjectsApi
) -> None:
    create(objects, experiment())
    for _ in range(50):
        get(objects)
    # kmock scanned its whole request log on every request: latency grew with every request.
    assert list(kube.emulator) == []


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is optional; not installed")
def test_kubectl_uses_the_generated_kubeconfig(kube: KubeApiServer, tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "config", NS))}
    env["HOME"] = str(tmp_path)  # kubectl caches discovery under $HOME

    def kubectl(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["kubectl", *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,  # the assertion below shows kubectl's stderr
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    kubectl("create", "--validate=false", "-f", "-", stdin=json.dumps(experiment()))
    kubectl("patch", "experiment", "exp", "--type=merge", "-p", '{"spec":{"x":1}}')
    uid = kubectl("get", "experiment", "exp", "-o", "jsonpath={.metadata.uid}")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "exp.1", "namespace": NS},
        "involvedObject": {"kind": "Experiment", "name": "exp", "namespace": NS, "uid": uid},
        "reason": "IterationCompleted",
        "message": "iteration 1 of 10",
        "type": "Normal",
    }
    kubectl("create", "--validate=false", "-f", "-", stdin=json.dumps(event))
    listed = kubectl("get", "experiments", "-o", "name")
    described = kubectl("describe", "experiment", "exp")
    kubectl("get", "isvc")  # a short name, resolved through discovery
    kubectl("delete", "experiment", "exp")

    assert listed.split() == ["experiment.arbiter.dev/exp"]
    assert "Target:" in described and "X:" in described
    assert "IterationCompleted" in described and "iteration 1 of 10" in described
    assert kube.get(GROUP, VERSION, PLURAL, NS, "exp") is None


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_standalone_server_serves_until_a_signal(tmp_path: Path, stop: signal.Signals) -> None:
    port, kubeconfig = free_port(), tmp_path / "kubeconfig"
    command = [sys.executable, "-m", "local.kubeapi", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--kubeconfig", str(kubeconfig)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()  # printed once it accepts connections
        api = config.new_client_from_config(config_file=str(kubeconfig))
        try:
            created = client.CustomObjectsApi(api).create_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, experiment()
            )
        finally:
            api.close()
        server.send_signal(stop)
        code = server.wait(10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()

    assert url == f"http://127.0.0.1:{port}"
    assert created["metadata"]["uid"]
    assert code == 0
