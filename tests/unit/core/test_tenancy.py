"""Tenancy rules as pure functions: settings, backend choice, field-path patterns."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from analytics.parse import parse_experiment
from functions.core import tenancy
from functions.core.errors import PermanentError
from functions.core.settings import Settings
from functions.core.traffic import KFServingModel, KnativeModel, KServeModel, model_for

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


@pytest.mark.parametrize(
    "path", sorted((ROOT / "samples" / "experiments").glob("*.yaml")), ids=lambda p: p.stem
)
def test_backend_of_makes_the_choice_model_for_makes(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "Experiment":
            continue
        spec = parse_experiment(doc, require_versions=False).spec
        expected = {
            KServeModel: "kserve",
            KFServingModel: "kfserving",
            KnativeModel: "knative",
        }.get(type(model_for(spec, "ns")), "fieldpath")
        assert tenancy.backend_of(spec) == expected
