"""A local-run sample: the cluster objects to create, plus how the simulated versions behave.

A sample is one multi-document YAML file. Every document but one is an ordinary cluster
object (InferenceService, VirtualService, Metric, the Experiment — exactly one); the one
`LocalRun` document is read only by `arbiter run`: the traffic rate, each version's
profile (error rate, latency, model quality), the time before the candidate turns Ready,
and the outcome the sample promises (the tests hold every sample to it).

    apiVersion: arbiter.dev/v1alpha1
    kind: LocalRun
    spec:
      rateRps: 50
      readyDelaySeconds: 3
      versions:                      # keyed by what the router calls them (revision names)
        sklearn-iris-predictor-00001: {errorRate: 0.01, latencyMedianMs: 40, latencySigma: 0.4}
        sklearn-iris-predictor-00002: {errorRate: 0.01, latencyMedianMs: 40, model: worse}
      expect: {outcome: Promoted, version: sklearn-iris-predictor-00002}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from analytics.model import Duration
from analytics.parse import SpecError, parse_experiment
from functions.core.resources import EXPERIMENT, ObjectRef
from local.servers import Profile

_TRAFFIC_KINDS = ("InferenceService", "Service", "VirtualService")


class SampleError(ValueError):
    """The file cannot be run; the message names the file and the field."""


@dataclass(frozen=True)
class VersionSim:
    key: str  # the router's name for it (a revision name, a host, a tag)
    profile: Profile
    model: str  # the model name in the v1 URLs (the InferenceService's name)
    namespace: str


@dataclass(frozen=True)
class Sample:
    path: Path
    objects: tuple[dict[str, Any], ...]  # created before the experiment
    experiment: dict[str, Any]
    versions: tuple[VersionSim, ...]
    router: ObjectRef  # the object whose split the traffic follows
    rate_rps: float
    ready_delay_s: float
    expect: Mapping[str, Any]
    duration: Duration  # the Experiment's, as the analytics parsed it (defaults applied)
    # Traffic sent straight to one version whatever the split (a tag URL), for BlueGreen.
    preview: str | None = None
    preview_rps: float = 0.0


def _number(raw: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SampleError(f"{where}.{key}: must be a number, got {value!r}")
    return float(value)


def load(path: str | Path) -> Sample:
    """Read and check a sample file; every problem is a SampleError naming file and field."""
    path = Path(path)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as e:
        raise SampleError(f"{path}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise SampleError(f"{path}: not valid YAML: {e}") from None
    if not all(isinstance(d, dict) for d in documents):
        raise SampleError(f"{path}: every document must be a mapping (a Kubernetes object)")
    runs = [d for d in documents if d.get("kind") == "LocalRun"]
    experiments = [d for d in documents if d.get("kind") == EXPERIMENT.kind]
    if len(experiments) != 1:
        raise SampleError(f"{path}: needs exactly one Experiment, found {len(experiments)}")
    if len(runs) != 1:
        raise SampleError(f"{path}: needs exactly one LocalRun document, found {len(runs)}")
    experiment = experiments[0]
    try:
        parsed = parse_experiment(experiment, require_versions=False)
    except SpecError as e:
        raise SampleError(
            f"{path}: the Experiment is not valid:\n  " + "\n  ".join(e.problems)
        ) from None
    namespace = parsed.namespace
    spec = runs[0].get("spec")
    if not isinstance(spec, dict):
        raise SampleError(f"{path}: LocalRun.spec: must be a mapping")
    where = f"{path}: LocalRun.spec"
    versions_raw = spec.get("versions")
    if not isinstance(versions_raw, dict) or not versions_raw:
        raise SampleError(f"{where}.versions: give each version's profile, keyed by its name")
    target_ns, _, target_name = parsed.spec.target.rpartition("/")
    versions = []
    for key, raw in versions_raw.items():
        w = f"{where}.versions.{key}"
        if not isinstance(raw, dict):
            raise SampleError(f"{w}: must be a mapping")
        try:
            profile = Profile(
                error_rate=_number(raw, "errorRate", w, 0.0),
                latency_median_ms=_number(raw, "latencyMedianMs", w, 20.0),
                latency_sigma=_number(raw, "latencySigma", w, 0.3),
                model=raw.get("model", "good"),
            )
        except ValueError as e:
            raise SampleError(f"{w}: {e}") from None
        if profile.model not in ("good", "worse"):
            raise SampleError(f"{w}.model: must be good or worse, got {profile.model!r}")
        versions.append(
            VersionSim(str(key), profile, str(raw.get("modelName", target_name)), namespace)
        )
    router = _router(documents, target_ns or namespace, target_name, path)
    expect = spec.get("expect") or {}
    if not isinstance(expect, dict):
        raise SampleError(f"{where}.expect: must be a mapping")
    preview = spec.get("preview")
    if preview is not None and preview not in versions_raw:
        raise SampleError(f"{where}.preview: {preview!r} is not one of the versions")
    objects = tuple(d for d in documents if d.get("kind") not in ("LocalRun", EXPERIMENT.kind))
    for obj in (*objects, experiment):
        obj.setdefault("metadata", {}).setdefault("namespace", namespace)
    return Sample(
        path=path,
        objects=objects,
        experiment=experiment,
        versions=tuple(versions),
        router=router,
        rate_rps=_number(spec, "rateRps", where, 20.0),
        ready_delay_s=_number(spec, "readyDelaySeconds", where, 0.0),
        expect=expect,
        duration=parsed.spec.duration,
        preview=None if preview is None else str(preview),
        preview_rps=_number(spec, "previewRps", where, 0.0),
    )


def _router(documents: list[dict[str, Any]], namespace: str, target: str, path: Path) -> ObjectRef:
    """The object the router follows: a VirtualService if the sample has one (A/B/n across
    InferenceServices), else the experiment's target."""
    candidates = [d for d in documents if d.get("kind") in _TRAFFIC_KINDS]
    by_kind = {d["kind"]: d for d in candidates}
    chosen = by_kind.get("VirtualService") or next(
        (d for d in candidates if (d.get("metadata") or {}).get("name") == target), None
    )
    if chosen is None:
        raise SampleError(
            f"{path}: no object carries the traffic for target {target!r}: add the "
            "InferenceService (or VirtualService) the experiment targets"
        )
    meta = chosen.get("metadata") or {}
    return ObjectRef(
        str(chosen.get("apiVersion")),
        str(chosen["kind"]),
        str(meta.get("namespace") or namespace),
        str(meta.get("name")),
    )
