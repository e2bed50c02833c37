"""Tenancy rules as pure functions: settings, backend choice, field-path patterns."""

from __future__ import annotations

from pathlib import Path

import pytest

from functions.core import tenancy
from functions.core.errors import PermanentError
from functions.core.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def test_the_system_namespace_and_traffic_paths_are_settings() -> None:
    settings = Settings.from_env(
        {
            "ARBITER_SYSTEM_NAMESPACE": "arbiter",
            "ARBITER_TRAFFIC_PATHS": "VirtualService=/spec/http/*/route/*/weight;"
            "Gateway=/spec/a,/spec/b",
        }
    )
    assert settings.system_namespace == "arbiter"
    assert settings.traffic_paths == {
        "VirtualService": ("/spec/http/*/route/*/weight",),
        "Gateway": ("/spec/a", "/spec/b"),
    }
    assert Settings.from_env({}).system_namespace == "arbiter-system"
    with pytest.raises(PermanentError, match="ARBITER_TRAFFIC_PATHS"):
        Settings.from_env({"ARBITER_TRAFFIC_PATHS": "VirtualService"})
    with pytest.raises(PermanentError, match="JSON pointers"):
        Settings.from_env({"ARBITER_TRAFFIC_PATHS": "VirtualService=spec.http"})


def test_a_star_stands_for_exactly_one_segment() -> None:
    settings = Settings()
    vs = {"metadata": {}}
    assert tenancy.path_allowed(vs, "VirtualService", "/spec/http/0/route/2/weight", settings)
    assert not tenancy.path_allowed(vs, "VirtualService", "/spec/http/0/route/weight", settings)
    assert not tenancy.path_allowed(vs, "VirtualService", "/spec/http/0/timeout", settings)
    assert not tenancy.path_allowed(vs, "Service", "/spec/http/0/route/2/weight", settings)
    annotated = {"metadata": {"annotations": {tenancy.TRAFFIC_PATHS_ANNOTATION: "/spec/x, /y"}}}
    assert tenancy.path_allowed(annotated, "Service", "/y", settings)
