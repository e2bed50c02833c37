"""A local-run sample: the cluster objects to create, plus how the simulated versions behave.

A sample is one multi-document YAML file. Every document but one is an ordinary cluster
object (InferenceService, Knative Service, VirtualService, HTTPRoute, Metric, one or more
Experiments); the one `LocalRun` document is read only by `arbiter run`: the traffic rate,
each version's profile (error rate, latency, model quality), the time before the candidate
turns Ready, and the outcome each experiment promises (the tests hold every sample to it).

    apiVersion: arbiter.dev/v1alpha1
    kind: LocalRun
    spec:
      knative: "1.18"                # the queue-proxy metrics generation (default "1.19")
      rateRps: 50
      readyDelaySeconds: 3
      versions:                      # keyed by what the router calls them (revision names)
        sklearn-iris-predictor-00001: {errorRate: 0.01, latencyMedianMs: 40, latencySigma: 0.4}
        sklearn-iris-predictor-00002: {errorRate: 0.01, latencyMedianMs: 40, model: worse}
      expect: {outcome: Promoted, version: sklearn-iris-predictor-00002}

A file with several Experiments (on one target or several) says the same per target, under
`targets` keyed by namespace/name, and each experiment's promise under `expect`, keyed by
its name. Experiments on one target queue: each starts when the one before it finishes.

    spec:
      rateRps: 8                     # every target's, unless its entry says otherwise
      targets:
        load/iris-00:
          versions: {iris-00-00001: {errorRate: 0.0}, iris-00-00002: {errorRate: 0.2}}
      expect:
        iris-00-a: {outcome: RolledBack}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from analytics.model import Duration, ExperimentSpec
from analytics.parse import SpecError, parse_experiment
from functions.core.resources import EXPERIMENT, ObjectRef
from local.queueproxy import generation
from local.servers import Profile

_TRAFFIC_KINDS = ("InferenceService", "Service", "VirtualService", "HTTPRoute")
# The Knative generation whose queue-proxy metrics the versions export, unless a sample says.
DEFAULT_KNATIVE = "1.19"


class SampleError(ValueError):
    """The file cannot be run; the message names the file and the field."""


@dataclass(frozen=True)
class VersionSim:
    key: str  # the router's name for it (a revision name, a host, a tag)
    profile: Profile
    model: str  # the model name in the v1 URLs (the InferenceService's name)
    namespace: str


@dataclass(frozen=True)
class TargetSim:
    """One target's simulated versions and the traffic sent to it."""

    target: str  # namespace/name, as the experiments name it
    router: ObjectRef  # the object whose split the traffic follows
    versions: tuple[VersionSim, ...]
    rate_rps: float
    # Traffic sent straight to one version whatever the split (a tag URL), for BlueGreen.
    preview: str | None = None
    preview_rps: float = 0.0


@dataclass(frozen=True)
class Planned:
    """One Experiment of the file and the outcome it promises."""

    experiment: dict[str, Any]
    target: str  # namespace/name
    expect: Mapping[str, Any]
    duration: Duration  # the Experiment's, as the analytics parsed it (defaults applied)

    @property
    def key(self) -> str:
        meta = self.experiment["metadata"]
        return f"{meta['namespace']}/{meta['name']}"


@dataclass(frozen=True)
class Sample:
    path: Path
    objects: tuple[dict[str, Any], ...]  # created before the experiments
    planned: tuple[Planned, ...]  # in file order
    targets: tuple[TargetSim, ...]
    versions: tuple[VersionSim, ...]  # every target's, keys unique across the file
    ready_delay_s: float
    # The Knative generation the versions' queue-proxies play (local.queueproxy.GENERATIONS);
    # None when the sample names none (DEFAULT_KNATIVE, unless the run cannot read it).
    knative: str | None = None

    # The first (in a one-experiment file, the only) experiment and its target --------------

    @property
    def experiment(self) -> dict[str, Any]:
        return self.planned[0].experiment

    @property
    def expect(self) -> Mapping[str, Any]:
        return self.planned[0].expect

    @property
    def duration(self) -> Duration:
        return self.planned[0].duration

    @property
    def router(self) -> ObjectRef:
        return self.targets[0].router

    @property
    def rate_rps(self) -> float:
        return self.targets[0].rate_rps

    @property
    def preview(self) -> str | None:
        return self.targets[0].preview

    @property
    def preview_rps(self) -> float:
        return self.targets[0].preview_rps


def _number(raw: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SampleError(f"{where}.{key}: must be a number, got {value!r}")
    return float(value)


def _mapping(value: object, where: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SampleError(f"{where}: must be a mapping ({what})")
    return value


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
    if not experiments:
        raise SampleError(f"{path}: needs at least one Experiment, found none")
    if len(runs) != 1:
        raise SampleError(f"{path}: needs exactly one LocalRun document, found {len(runs)}")
    spec = runs[0].get("spec")
    if not isinstance(spec, dict):
        raise SampleError(f"{path}: LocalRun.spec: must be a mapping")
    where = f"{path}: LocalRun.spec"
    if "targets" not in spec and len(experiments) > 1:
        raise SampleError(
            f"{where}.targets: a file with {len(experiments)} Experiments gives each target's "
            "versions under targets (keyed by namespace/name) and each experiment's promise "
            "under expect (keyed by its name)"
        )
    parsed = [_parse(path, i, e, len(experiments)) for i, e in enumerate(experiments)]
    objects = tuple(d for d in documents if d.get("kind") not in ("LocalRun", EXPERIMENT.kind))
    for obj in objects:
        obj.setdefault("metadata", {}).setdefault("namespace", parsed[0][1])
    rate = _number(spec, "rateRps", where, 20.0)
    if "targets" in spec:
        targets_raw = _mapping(spec["targets"], f"{where}.targets", "namespace/name: versions")
        targets = tuple(
            _target(
                objects,
                where,
                str(key),
                _mapping(raw, f"{where}.targets.{key}", "a target"),
                rate,
                path,
            )
            for key, raw in targets_raw.items()
        )
        expect_raw = _mapping(spec.get("expect") or {}, f"{where}.expect", "name: promise")
        names = {e["metadata"]["name"] for e, _, _ in parsed}
        unknown = sorted(set(expect_raw) - names)
        if unknown:
            raise SampleError(f"{where}.expect: no Experiment is named {', '.join(unknown)}")
        expects = [
            _mapping(
                expect_raw.get(e["metadata"]["name"]) or {},
                f"{where}.expect.{e['metadata']['name']}",
                "outcome, version, rule",
            )
            for e, _, _ in parsed
        ]
    else:
        targets = (_target(objects, where, parsed[0][2].target, spec, rate, path, single=True),)
        expects = [_mapping(spec.get("expect") or {}, f"{where}.expect", "outcome, version, rule")]
    by_key = {t.target: t for t in targets}
    planned = []
    for (experiment, namespace, exp_spec), expect in zip(parsed, expects, strict=True):
        target = _qualified(exp_spec.target, namespace)
        if target not in by_key:
            raise SampleError(
                f"{path}: Experiment {experiment['metadata']['name']}: its target {target} has "
                f"no entry in LocalRun.spec.targets (known: {', '.join(sorted(by_key))})"
            )
        planned.append(Planned(experiment, target, expect, exp_spec.duration))
    keys = [p.key for p in planned]
    if len(set(keys)) != len(keys):
        raise SampleError(f"{path}: two Experiments share a namespace/name")
    versions = tuple(v for t in targets for v in t.versions)
    seen: set[str] = set()
    for v in versions:
        if v.key in seen:
            raise SampleError(
                f"{where}.targets: version {v.key} appears under two targets; name each "
                "target's revisions apart"
            )
        seen.add(v.key)
    return Sample(
        path=path,
        objects=objects,
        planned=tuple(planned),
        targets=targets,
        versions=versions,
        ready_delay_s=_number(spec, "readyDelaySeconds", where, 0.0),
        knative=_knative(spec, where),
    )


def _knative(spec: Mapping[str, Any], where: str) -> str | None:
    """The generation named by `knative`, which must be a quoted string one of them names."""
    knative = spec.get("knative")
    if knative is None:
        return None
    try:
        if not isinstance(knative, str):
            raise ValueError(f"must be a string, got {knative!r}")
        generation(knative)
    except ValueError as e:
        raise SampleError(f'{where}.knative: {e} (quote it: "1.19", not 1.19)') from None
    return knative


def _parse(
    path: Path, index: int, experiment: dict[str, Any], count: int
) -> tuple[dict[str, Any], str, ExperimentSpec]:
    """An Experiment checked as the analytics read it: (document, namespace, spec)."""
    name = (experiment.get("metadata") or {}).get("name")
    which = "the Experiment" if count == 1 else f"Experiment {name or f'#{index + 1}'}"
    try:
        parsed = parse_experiment(experiment, require_versions=False)
    except SpecError as e:
        raise SampleError(f"{path}: {which} is not valid:\n  " + "\n  ".join(e.problems)) from None
    experiment.setdefault("metadata", {}).setdefault("namespace", parsed.namespace)
    return experiment, parsed.namespace, parsed.spec


def _qualified(target: str, namespace: str) -> str:
    ns, _, name = target.rpartition("/")
    return f"{ns or namespace}/{name}"


def _target(
    objects: tuple[dict[str, Any], ...],
    where: str,
    key: str,
    raw: dict[str, Any],
    default_rate: float,
    path: Path,
    single: bool = False,
) -> TargetSim:
    """One target's versions, rate and preview, from the LocalRun spec (its top level in a
    one-experiment file) or its entry under `targets`."""
    ns, _, name = key.rpartition("/")
    if not single:
        where = f"{where}.targets.{key}"
        if not ns:
            raise SampleError(f"{where}: name the target as namespace/name")
    versions_raw = raw.get("versions")
    if not isinstance(versions_raw, dict) or not versions_raw:
        raise SampleError(f"{where}.versions: give each version's profile, keyed by its name")
    versions = []
    for vkey, vraw in versions_raw.items():
        w = f"{where}.versions.{vkey}"
        if not isinstance(vraw, dict):
            raise SampleError(f"{w}: must be a mapping")
        try:
            profile = Profile(
                error_rate=_number(vraw, "errorRate", w, 0.0),
                latency_median_ms=_number(vraw, "latencyMedianMs", w, 20.0),
                latency_sigma=_number(vraw, "latencySigma", w, 0.3),
                model=vraw.get("model", "good"),
            )
        except ValueError as e:
            raise SampleError(f"{w}: {e}") from None
        if profile.model not in ("good", "worse"):
            raise SampleError(f"{w}.model: must be good or worse, got {profile.model!r}")
        versions.append(VersionSim(str(vkey), profile, str(vraw.get("modelName", name)), ns))
    preview = raw.get("preview")
    if preview is not None and preview not in versions_raw:
        raise SampleError(f"{where}.preview: {preview!r} is not one of the versions")
    return TargetSim(
        target=key,
        router=_router(list(objects), ns, name, path, single),
        versions=tuple(versions),
        rate_rps=_number(raw, "rateRps", where, default_rate),
        preview=None if preview is None else str(preview),
        preview_rps=_number(raw, "previewRps", where, 0.0),
    )


def _router(
    documents: list[dict[str, Any]], namespace: str, target: str, path: Path, single: bool
) -> ObjectRef:
    """The object the router follows: in a one-experiment file a VirtualService if it has one
    (A/B/n across InferenceServices), else the experiment's target; with several, the
    target's object in its namespace (a VirtualService first, if one has its name)."""
    candidates = [d for d in documents if d.get("kind") in _TRAFFIC_KINDS]
    named = [
        d
        for d in candidates
        if (d.get("metadata") or {}).get("name") == target
        and (d.get("metadata") or {}).get("namespace") == namespace
    ]
    by_kind = {d["kind"]: d for d in (candidates if single else named)}
    chosen = by_kind.get("VirtualService") or next(
        (d for d in candidates if (d.get("metadata") or {}).get("name") == target), None
    )
    if not single:
        chosen = by_kind.get("VirtualService") or next(iter(named), None)
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
