"""The CloudEvent contract's builders and readers, and settings read from the environment."""

from __future__ import annotations

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

from functions.core import events
from functions.core.errors import PermanentError
from functions.core.events import ExperimentRef, experiment_ref, iteration_of, make_event
from functions.core.settings import Settings


def test_an_event_carries_the_experiment_and_iteration_through_both_http_modes() -> None:
    ref = ExperimentRef("demo", "canary", "uid-1")
    event = make_event(events.MEASURED, ref, 3, {"k": 1}, stage="iterate")
    for headers, body in (to_binary(event), to_structured(event)):
        back = from_http(headers, body)
        assert back["type"] == events.MEASURED
        assert experiment_ref(back) == ref
        assert iteration_of(back) == 3
        assert back.get_data() == {"k": 1}


def test_the_same_step_gives_the_same_id_so_repeats_are_recognisable() -> None:
    ref = ExperimentRef("demo", "canary", "uid-1")
    first = make_event(events.ASSESSED, ref, 2)
    again = make_event(events.ASSESSED, ref, 2)
    other = make_event(events.ASSESSED, ref, 3)
    assert first["id"] == again["id"] != other["id"]


def test_apiserver_events_name_the_experiment_in_their_data() -> None:
    event = CloudEvent(
        {"type": events.APISERVER_ADD, "source": "https://10.0.0.1"},
        {"metadata": {"name": "x", "namespace": "ns", "uid": "u"}},
    )
    assert experiment_ref(event) == ExperimentRef("ns", "x", "u")
    broken = CloudEvent({"type": events.APISERVER_ADD, "source": "s"}, {"kind": "Experiment"})
    with pytest.raises(PermanentError, match="Resource mode"):
        experiment_ref(broken)


def test_a_ping_is_about_no_experiment_and_a_bad_iteration_is_permanent() -> None:
    ping = CloudEvent({"type": events.PING, "source": "/ping"}, {})
    assert experiment_ref(ping) is None
    bad = CloudEvent({"type": events.DUE, "source": "s", events.EXT_ITERATION: "two"}, {})
    with pytest.raises(PermanentError, match="iteration"):
        iteration_of(bad)


def test_settings_defaults_and_overrides() -> None:
    assert Settings.from_env({}) == Settings()
    s = Settings.from_env(
        {
            "ARBITER_PROMETHEUS_URL": "http://p:9090",
            "ARBITER_QUERY_RETRIES": "4",
            "ARBITER_LOG_LEVEL": "debug",
            "K_SINK": "http://broker",
        }
    )
    assert (s.prometheus_url, s.query_retries, s.log_level, s.sink) == (
        "http://p:9090",
        4,
        "DEBUG",
        "http://broker",
    )


def test_bad_settings_name_every_variable_at_once() -> None:
    with pytest.raises(PermanentError) as e:
        Settings.from_env({"ARBITER_QUERY_RETRIES": "many", "ARBITER_READY_TIMEOUT_SECONDS": "-1"})
    assert "ARBITER_QUERY_RETRIES" in str(e.value)
    assert "ARBITER_READY_TIMEOUT_SECONDS" in str(e.value)


def test_the_notify_allow_list_takes_only_http_prefixes_ending_in_a_slash() -> None:
    settings = Settings.from_env(
        {
            "ARBITER_NOTIFY_URIS": " https://hooks.example.com/arbiter/ ,http://alerts.svc/ ",
            "ARBITER_NOTIFY_ATTEMPTS": "3",
            "FUNCTION_TARGET": "finish",
            "HOSTNAME": "arbiter-finish-00001-deployment-abc",
        }
    )
    assert settings.notify_uris == ("https://hooks.example.com/arbiter/", "http://alerts.svc/")
    assert settings.notify_attempts == 3
    assert (settings.function_target, settings.instance) == (
        "finish",
        "arbiter-finish-00001-deployment-abc",
    )
    assert Settings.from_env({}).notify_uris == ()
    # `https://hooks.example.com` would also admit https://hooks.example.com.evil.net/.
    for bad in ("https://hooks.example.com", "ftp://x/", "hooks.example.com/"):
        with pytest.raises(PermanentError, match=r"ARBITER_NOTIFY_URIS: .* ending in '/'"):
            Settings.from_env({"ARBITER_NOTIFY_URIS": bad})
