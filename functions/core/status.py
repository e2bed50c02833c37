"""The Experiment's status: its schema as the CRD stores it, and how the stages read and write it.

The status is the only state Arbiter keeps. `Status` is its one typed form: `Status.read`
takes a stored object and never fails (a malformed value reads as its default, so a bad
write cannot wedge an experiment), `to_dict` is the exact JSON the status subresource
stores. Every write replaces it whole, conditional on the resourceVersion it was read at;
`retry_on_conflict` re-runs a read-modify-write that lost a race, and `update` does the
same for a change that needs only the status. `resolved_experiment` turns a stored object
into the analytics' Experiment with the versions `start` resolved, so later stages never
re-resolve them.

What a stage hands on is recorded here before the event that says so: the measurement
(`measurement`: what iterate was asked to measure, and the digest of what it measured) and
the decision that ends the experiment (`recommendation` and `abortReason` while Finishing,
read as one by functions/core/sweep.py).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any, Final, TypeVar

from analytics.conditional import PairTest, RatioTest
from analytics.model import Experiment
from analytics.parse import SpecError, parse_experiment
from analytics.recommendation import Action, Recommendation, recommendation_to_dict
from functions.core import events
from functions.core.backends import backend_for
from functions.core.errors import ConflictError, NotFoundError, PermanentError
from functions.core.events import ExperimentRef
from functions.core.ports import ExperimentStore
from functions.core.timestamps import iso, parse_time

T = TypeVar("T")
E = TypeVar("E", bound=Enum)
Obj = dict[str, Any]

CONFLICT_ATTEMPTS: Final = 8


class Stage(StrEnum):
    PENDING = "Pending"
    WAITING = "Waiting"
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    FINISHING = "Finishing"
    COMPLETED = "Completed"
    FAILED = "Failed"


TERMINAL: Final = frozenset({Stage.COMPLETED, Stage.FAILED})
# Holding the target: traffic may be away from the baseline.
ACTIVE: Final = frozenset({Stage.RUNNING, Stage.FINISHING})


class Outcome(StrEnum):
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"
    VALIDATED = "Validated"
    NOT_VALIDATED = "NotValidated"


class ConditionType(StrEnum):
    TARGET_ACQUIRED = "TargetAcquired"
    VERSIONS_READY = "VersionsReady"
    COMPLETED = "Completed"
    FAILED = "Failed"
    # Manual control (functions/core/control.py): paused by request; a Manual promotion
    # waiting for `arbiter promote`; the last control request applied (True) or refused.
    PAUSED = "Paused"
    AWAITING_PROMOTION = "AwaitingPromotion"
    CONTROL_APPLIED = "ControlApplied"
    # The alert sinks of spec.notify (functions/core/notify.py): True once every due
    # notification was delivered, False when one was refused or given up.
    NOTIFIED = "Notified"


_CONDITION_STATUS: Final = {True: "True", False: "False", None: "Unknown"}


@dataclass(frozen=True)
class Condition:
    type: ConditionType
    ok: bool | None  # None: Unknown
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None

    @classmethod
    def read(cls, raw: object) -> Condition | None:
        if not isinstance(raw, Mapping):
            return None
        kind = _enum(ConditionType, raw.get("type"))
        if kind is None:
            return None
        ok = {"True": True, "False": False}.get(str(raw.get("status")))
        return cls(
            kind,
            ok,
            _text(raw.get("reason")) or "",
            _text(raw.get("message")) or "",
            parse_time(raw.get("lastTransitionTime")),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type.value,
            "status": _CONDITION_STATUS[self.ok],
            "reason": self.reason,
            "message": self.message,
        }
        if self.last_transition_time is not None:
            out["lastTransitionTime"] = iso(self.last_transition_time)
        return out


@dataclass(frozen=True)
class Version:
    """A version as start resolved it, with the revision that serves it."""

    name: str
    revision: str | None = None


@dataclass(frozen=True)
class VersionWeight:
    name: str
    value: int


@dataclass(frozen=True)
class MeasurementRecord:
    """One iteration's measurement as iterate records it: asked for (`requested_at`), taken
    (`measured_at` and the `digest` of the `experiment.measured` data), or `failed`
    transiently (counted once in transientFailures, however often the event is delivered)."""

    iteration: int
    requested_at: datetime | None = None
    measured_at: datetime | None = None
    digest: str | None = None
    failed: bool = False

    @classmethod
    def read(cls, raw: object) -> MeasurementRecord | None:
        if not isinstance(raw, Mapping):
            return None
        iteration = _count(raw.get("iteration"))
        if iteration is None:
            return None
        return cls(
            iteration,
            parse_time(raw.get("requestedAt")),
            parse_time(raw.get("measuredAt")),
            _text(raw.get("digest")) or None,
            raw.get("failed") is True,
        )

    def to_dict(self) -> dict[str, Any]:
        fields = {
            "iteration": self.iteration,
            "requestedAt": None if self.requested_at is None else iso(self.requested_at),
            "measuredAt": None if self.measured_at is None else iso(self.measured_at),
            "digest": self.digest,
            "failed": self.failed or None,
        }
        return {k: v for k, v in fields.items() if v is not None}

    def is_fresh(self, now: datetime, seconds: float) -> bool:
        """Asked for or taken less than `seconds` ago: another request would be a repeat."""
        since = self.measured_at or self.requested_at
        return since is not None and (now - since).total_seconds() < seconds


@dataclass(frozen=True)
class ControlRecord:
    """The last manual control request the functions handled (functions/core/control.py):
    its id (a request with this id is never handled again), what it asked, and, when it was
    not applied, why (`refused`)."""

    applied_id: str
    action: str
    applied_at: datetime | None = None
    version: str | None = None
    reason: str | None = None
    requested_by: str | None = None
    refused: str | None = None

    @classmethod
    def read(cls, raw: object) -> ControlRecord | None:
        if not isinstance(raw, Mapping):
            return None
        applied_id, action = _text(raw.get("appliedId")), _text(raw.get("action"))
        if not applied_id or action is None:
            return None
        return cls(
            applied_id,
            action,
            parse_time(raw.get("appliedAt")),
            _text(raw.get("version")),
            _text(raw.get("reason")),
            _text(raw.get("requestedBy")),
            _text(raw.get("refused")),
        )

    def to_dict(self) -> dict[str, Any]:
        fields = {
            "appliedId": self.applied_id,
            "action": self.action,
            "appliedAt": None if self.applied_at is None else iso(self.applied_at),
            "version": self.version,
            "reason": self.reason,
            "requestedBy": self.requested_by,
            "refused": self.refused,
        }
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class Status:
    """An Experiment's status. Optional fields are None until a stage first writes them, and
    are then left out of `to_dict`, as they were never written."""

    stage: Stage = Stage.PENDING
    message: str = ""
    outcome: Outcome | None = None
    init_time: datetime | None = None
    start_time: datetime | None = None
    last_iteration_time: datetime | None = None
    last_update_time: datetime | None = None
    observed_generation: int | None = None
    completed_iterations: int | None = None
    transient_failures: int | None = None
    versions: tuple[Version, ...] = ()
    # currentWeightDistribution: the split in effect as read back, empty until one is set.
    weights: tuple[VersionWeight, ...] = ()
    # The last iteration's analysis as analytics.document shapes it; read back by the parser.
    analysis: Mapping[str, Any] | None = None
    recommendation: Recommendation | None = None
    version_recommended_for_promotion: str | None = None
    conditions: tuple[Condition, ...] = ()
    # Ownership (write-ahead): desiredWeightDistribution, the split a stage is about to
    # apply, recorded before it patches anything, so traffic always equals a split some
    # recorded decision asked for; currentWeightDistribution is what was read back.
    desired_weights: tuple[VersionWeight, ...] = ()
    # The clock (functions/core/sweep.py): when the experiment became Finishing (the finish
    # deadline counts from it), and, when the decision that ended it is an abort (it could
    # not go on: finish only restores the baseline), the abort's reason. The decision's
    # action and message are `recommendation`; functions/core/sweep.py reads both as one.
    finishing_time: datetime | None = None
    abort_reason: str | None = None
    # The last iterations, oldest first, as `history_entry` shapes them (bounded: see below).
    history: tuple[Mapping[str, Any], ...] = ()
    # iterate (functions/core/iterate.py): the measurement asked for and taken, recorded
    # before the event that carries it, so assess can tell it from a forgery.
    measurement: MeasurementRecord | None = None
    # assess (functions/core/assess.py): the running conditional test of each maxRatio
    # objective, metric -> candidate -> test, each iteration's own counts folded in once.
    ratio_tests: Mapping[str, Mapping[str, RatioTest]] = field(default_factory=dict)
    # assess: the pairwise stopping rule's windowed test of the first reward (on counts),
    # metric -> (version, rival) -> test, for at most analytics.parse.MAX_PAIR_VERSIONS versions.
    reward_tests: Mapping[str, Mapping[tuple[str, str], PairTest]] = field(default_factory=dict)
    # Manual control (functions/core/control.py): the last request handled; since when the
    # experiment is paused (None: not paused) and the seconds it was paused before; and,
    # under `promotion: Manual`, the promotion the analysis recommends, waiting for a person.
    control: ControlRecord | None = None
    paused_at: datetime | None = None
    paused_seconds: float | None = None
    awaiting_promotion: Recommendation | None = None
    # notify (functions/core/notify.py): one record per notification and sink, as notify
    # shapes it; at most 3 events x 5 sinks, so bounded by the CRD's spec.notify maxItems.
    notifications: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def read(cls, obj: Mapping[str, Any]) -> Status:
        """The status of a stored Experiment; missing or malformed fields read as defaults."""
        return cls.from_dict(obj.get("status"))

    @classmethod
    def from_dict(cls, raw: object) -> Status:
        if not isinstance(raw, Mapping):
            return cls()
        analysis = raw.get("analysis")
        conditions = (Condition.read(c) for c in _items(raw.get("conditions")))
        return cls(
            stage=_enum(Stage, raw.get("stage")) or Stage.PENDING,
            message=_text(raw.get("message")) or "",
            outcome=_enum(Outcome, raw.get("outcome")),
            init_time=parse_time(raw.get("initTime")),
            start_time=parse_time(raw.get("startTime")),
            last_iteration_time=parse_time(raw.get("lastIterationTime")),
            last_update_time=parse_time(raw.get("lastUpdateTime")),
            observed_generation=_count(raw.get("observedGeneration")),
            completed_iterations=_count(raw.get("completedIterations")),
            transient_failures=_count(raw.get("transientFailures")),
            versions=_versions(raw.get("versions")),
            weights=_weights(raw.get("currentWeightDistribution")),
            analysis=dict(analysis) if isinstance(analysis, Mapping) else None,
            recommendation=_recommendation(raw.get("recommendation")),
            version_recommended_for_promotion=_text(raw.get("versionRecommendedForPromotion")),
            conditions=tuple(c for c in conditions if c is not None),
            desired_weights=_weights(raw.get("desiredWeightDistribution")),
            finishing_time=parse_time(raw.get("finishingTime")),
            abort_reason=_text(raw.get("abortReason")),
            history=tuple(dict(h) for h in _items(raw.get("history")) if isinstance(h, Mapping)),
            measurement=MeasurementRecord.read(raw.get("measurement")),
            ratio_tests=_ratio_tests(raw.get("ratioTests")),
            reward_tests=_reward_tests(raw.get("rewardTests")),
            control=ControlRecord.read(raw.get("control")),
            paused_at=parse_time(raw.get("pausedAt")),
            paused_seconds=_seconds(raw.get("pausedSeconds")),
            awaiting_promotion=_recommendation(raw.get("awaitingPromotion")),
            notifications=tuple(
                dict(n) for n in _items(raw.get("notifications")) if isinstance(n, Mapping)
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """The status as the CRD stores it; the one shape every stage writes."""
        times = {
            "initTime": self.init_time,
            "startTime": self.start_time,
            "lastIterationTime": self.last_iteration_time,
            "lastUpdateTime": self.last_update_time,
            "finishingTime": self.finishing_time,
            "pausedAt": self.paused_at,
        }
        fields: dict[str, Any] = {
            "stage": self.stage.value,
            "message": self.message or None,
            "outcome": None if self.outcome is None else self.outcome.value,
            **{k: None if t is None else iso(t) for k, t in times.items()},
            "observedGeneration": self.observed_generation,
            "completedIterations": self.completed_iterations,
            "transientFailures": self.transient_failures,
            "metricsLibrary": self.metrics_library,
            "versions": [
                {"name": v.name, **({} if v.revision is None else {"revision": v.revision})}
                for v in self.versions
            ]
            or None,
            "currentWeightDistribution": [{"name": w.name, "value": w.value} for w in self.weights]
            or None,
            "analysis": None if self.analysis is None else dict(self.analysis),
            "recommendation": (
                None if self.recommendation is None else recommendation_to_dict(self.recommendation)
            ),
            "versionRecommendedForPromotion": self.version_recommended_for_promotion,
            "conditions": [c.to_dict() for c in self.conditions] or None,
            "desiredWeightDistribution": [
                {"name": w.name, "value": w.value} for w in self.desired_weights
            ]
            or None,
            "abortReason": self.abort_reason,
            "history": [dict(h) for h in self.history] or None,
            "measurement": None if self.measurement is None else self.measurement.to_dict(),
            "ratioTests": ratio_tests_to_list(self.ratio_tests) or None,
            "rewardTests": reward_tests_to_list(self.reward_tests) or None,
            "control": None if self.control is None else self.control.to_dict(),
            "pausedSeconds": self.paused_seconds,
            "awaitingPromotion": (
                None
                if self.awaiting_promotion is None
                else recommendation_to_dict(self.awaiting_promotion)
            ),
            "notifications": [dict(n) for n in self.notifications] or None,
        }
        return {k: v for k, v in fields.items() if v is not None}

    @property
    def metrics_library(self) -> str | None:
        """Which Metric library measured the last iteration: the `library` iterate records
        with each metric in analysis.aggregatedMetrics (its arbiter.dev/metrics-library
        label, "custom" when it has none), each once, in metric order; None before any.
        Derived, so it can never disagree with the measurements it describes."""
        aggregated = (self.analysis or {}).get("aggregatedMetrics")
        data = aggregated.get("data") if isinstance(aggregated, Mapping) else None
        if not isinstance(data, Mapping):
            return None
        names = [e.get("library") for e in data.values() if isinstance(e, Mapping)]
        listed = dict.fromkeys(n for n in names if isinstance(n, str) and n)
        return ", ".join(listed) or None

    @property
    def paused(self) -> bool:
        """Paused by a manual request (functions/core/control.py): nothing is measured and
        no traffic moves until it is resumed."""
        return self.paused_at is not None

    @property
    def iterations_done(self) -> int:
        return self.completed_iterations or 0

    @property
    def split(self) -> dict[str, int]:
        """The split in effect (empty when none was set)."""
        return {w.name: w.value for w in self.weights}

    @property
    def concluding(self) -> Recommendation | None:
        """The recommendation when it ends the experiment (promote or roll back)."""
        rec = self.recommendation
        return rec if rec is not None and rec.action is not Action.CONTINUE else None

    def with_split(self, split: Mapping[str, int]) -> Status:
        return replace(self, weights=tuple(VersionWeight(n, w) for n, w in split.items()))

    @property
    def desired(self) -> dict[str, int]:
        """The split last asked for, recorded before it was applied (empty: none)."""
        return {w.name: w.value for w in self.desired_weights}

    def with_desired(self, split: Mapping[str, int]) -> Status:
        return replace(self, desired_weights=tuple(VersionWeight(n, w) for n, w in split.items()))

    def with_condition(
        self, kind: ConditionType, ok: bool, reason: str, message: str, now: datetime
    ) -> Status:
        """The status with condition `kind` set; its transition time moves only on change."""
        updated = []
        found = False
        for c in self.conditions:
            if c.type is kind:
                found = True
                moved = now if c.ok != ok else c.last_transition_time
                c = Condition(kind, ok, reason, message, moved)  # noqa: PLW2901 - replaces it
            updated.append(c)
        if not found:
            updated.append(Condition(kind, ok, reason, message, now))
        return replace(self, conditions=tuple(updated))


def _enum(kind: type[E], value: object) -> E | None:
    for member in kind:
        if member.value == value:
            return member
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: object) -> int | None:
    # bool is an int to Python, never a count to the CRD.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _items(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []


def _versions(value: object) -> tuple[Version, ...]:
    return tuple(
        Version(v["name"], _text(v.get("revision")) or None)
        for v in _items(value)
        if isinstance(v, Mapping) and isinstance(v.get("name"), str) and v["name"]
    )


def _weights(value: object) -> tuple[VersionWeight, ...]:
    """The split, or none at all if any entry is malformed: a partial split would mislead."""
    weights = []
    for w in _items(value):
        if not isinstance(w, Mapping) or not isinstance(w.get("name"), str):
            return ()
        weight = _count(w.get("value"))
        if weight is None:
            return ()
        weights.append(VersionWeight(w["name"], weight))
    return tuple(weights)


def ratio_tests_to_list(tests: Mapping[str, Mapping[str, RatioTest]]) -> list[dict[str, Any]]:
    """`status.ratioTests` as the CRD stores it: one entry per metric and candidate."""
    return [
        {"metric": metric, "version": version, **test.to_dict()}
        for metric, by_version in tests.items()
        for version, test in by_version.items()
    ]


def _ratio_tests(value: object) -> dict[str, dict[str, RatioTest]]:
    """The running tests; a malformed entry is left out (the CRD admits none), so that
    test starts afresh rather than the stage failing."""
    out: dict[str, dict[str, RatioTest]] = {}
    for metric, (version,), test in _running_tests(value, RatioTest, ("version",)):
        out.setdefault(metric, {})[version] = test
    return out


_Test = TypeVar("_Test", bound=RatioTest)


def _running_tests(
    value: object, kind: type[_Test], roles: tuple[str, ...]
) -> list[tuple[str, tuple[str, ...], _Test]]:
    """Each well-formed entry of a list of running tests as (metric, its `roles`' names,
    test); an entry missing a name or not read back by `kind` is left out."""
    out: list[tuple[str, tuple[str, ...], _Test]] = []
    for item in _items(value):
        if not isinstance(item, Mapping):
            continue
        metric = _text(item.get("metric"))
        names = tuple(_text(item.get(role)) or "" for role in roles)
        if not metric or not all(names):
            continue
        try:
            test = kind.from_dict(item)
        except (KeyError, ValueError, TypeError):
            continue
        out.append((metric, names, test))
    return out


def reward_tests_to_list(
    tests: Mapping[str, Mapping[tuple[str, str], PairTest]],
) -> list[dict[str, Any]]:
    """`status.rewardTests` as the CRD stores it: one entry per metric and pair."""
    return [
        {"metric": metric, "version": version, "rival": rival, **test.to_dict()}
        for metric, by_pair in tests.items()
        for (version, rival), test in by_pair.items()
    ]


def _reward_tests(value: object) -> dict[str, dict[tuple[str, str], PairTest]]:
    """The pairwise tests; a malformed entry is left out, as `_ratio_tests` does."""
    out: dict[str, dict[tuple[str, str], PairTest]] = {}
    for metric, (version, rival), test in _running_tests(value, PairTest, ("version", "rival")):
        out.setdefault(metric, {})[(version, rival)] = test
    return out


def tests_size(status: Status) -> int:
    """Bytes the running tests take in the status (the history gives way to them)."""
    kept = ratio_tests_to_list(status.ratio_tests) + reward_tests_to_list(status.reward_tests)
    return len(json.dumps(kept, separators=(",", ":"))) if kept else 0


def _recommendation(value: object) -> Recommendation | None:
    if not isinstance(value, Mapping):
        return None
    action = _enum(Action, value.get("action"))
    if action is None:
        return None
    return Recommendation(
        action,
        _text(value.get("version")),
        _text(value.get("rule")) or "",
        _text(value.get("message")) or "",
    )


# Per-iteration history: what `arbiter report` plots for an experiment on a cluster, where
# the status is the only record. Bounded twice, so the status stays far below etcd's object
# limit however long an experiment runs: at most HISTORY_MAX_ENTRIES entries, and the oldest
# dropped while the entries' JSON exceeds HISTORY_MAX_BYTES (many versions or objectives
# make each entry larger). Numbers keep 4 significant digits; a verdict is 1, -1 or 0.
HISTORY_MAX_ENTRIES: Final = 200
HISTORY_MAX_BYTES: Final = 48 * 1024
_VERDICT_CODE: Final = {"satisfied": 1, "violated": -1, "undecided": 0}
VERDICT_OF_CODE: Final = {code: verdict for verdict, code in _VERDICT_CODE.items()}


def _short_number(x: object) -> float | int | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return x if isinstance(x, int) else float(f"{x:.4g}")


def history_entry(
    iteration: int,
    at: datetime,
    versions: Sequence[str],
    split: Mapping[str, int],
    evidence: Mapping[str, Any],
    recommendation: Recommendation,
) -> dict[str, Any]:
    """One iteration: the split in force after it (percent per version, in `versions`
    order), each version's [estimate, low, high, verdict code] per objective (in the
    spec's order; low/high null without an interval), the action, and the rule that fired
    when the action is not continue."""
    per_version = evidence.get("versions") or {}
    estimates = []
    for v in versions:
        items = [i for i in _items(per_version.get(v)) if isinstance(i, Mapping)]
        estimates.append(
            [
                [
                    _short_number(i.get("estimate")),
                    *[_short_number(x) for x in (_items(i.get("interval")) or [None, None])[:2]],
                    _VERDICT_CODE.get(str(i.get("verdict")), 0),
                ]
                for i in items
            ]
        )
    return {
        "iteration": iteration,
        "time": iso(at),
        "split": [split.get(v, 0) for v in versions] if split else [],
        "estimates": estimates,
        "action": recommendation.action.value,
        # The rule only where it decided something: the page's timeline names it.
        **({} if recommendation.action is Action.CONTINUE else {"rule": recommendation.rule}),
    }


def with_history(
    history: Sequence[Mapping[str, Any]], entry: Mapping[str, Any], reserved: int = 0
) -> tuple[Mapping[str, Any], ...]:
    """`history` with `entry` appended (replacing a redelivered iteration), then bounded:
    to HISTORY_MAX_BYTES less the `reserved` bytes other bounded state takes (`tests_size`)."""
    kept = [h for h in history if h.get("iteration") != entry.get("iteration")]
    kept = [*kept, entry][-HISTORY_MAX_ENTRIES:]
    size = len(json.dumps(kept, separators=(",", ":")))
    while len(kept) > 1 and size > HISTORY_MAX_BYTES - reserved:
        size -= len(json.dumps(kept[0], separators=(",", ":"))) + 1
        kept = kept[1:]
    return tuple(kept)


def ref_of(obj: Mapping[str, Any]) -> ExperimentRef:
    meta = obj.get("metadata") or {}
    return ExperimentRef(
        str(meta.get("namespace") or "default"), str(meta.get("name")), meta.get("uid")
    )


def same_experiment(obj: Mapping[str, Any], ref: ExperimentRef) -> bool:
    """False when the event is about an earlier experiment of the same name."""
    return ref.uid is None or ref_of(obj).uid in (None, ref.uid)


def current(store: ExperimentStore, ref: ExperimentRef) -> Obj | None:
    """The experiment an event is about as stored now; None when it is gone or the event
    is about an earlier experiment of the same name (both: acknowledge, change nothing)."""
    try:
        obj = store.get(ref)
    except NotFoundError:
        return None
    return obj if same_experiment(obj, ref) else None


def spec_problems(obj: Mapping[str, Any]) -> list[str]:
    """Problems with the experiment's spec (empty when it parses and names the objects that
    carry its traffic: a CRD-valid spec may still name half a weightObjRef)."""
    try:
        experiment = parse_experiment(_without_status(obj), require_versions=False)
        backend_for(experiment.spec, experiment.namespace).refs  # noqa: B018 - validates
    except SpecError as e:
        return list(e.problems)
    except PermanentError as e:
        return [str(e)]
    return []


def _without_status(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "status"}


def resolved_document(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object with spec.versionInfo filled from status.versions when the spec has none,
    and each version's resolved revision as its `revision` variable."""
    doc = copy.deepcopy(dict(obj))
    spec = doc.setdefault("spec", {})
    resolved = Status.read(obj).versions
    revisions = {v.name: v.revision for v in resolved if v.revision}
    if spec.get("versionInfo") is None and resolved:
        names = [v.name for v in resolved]
        spec["versionInfo"] = {
            "baseline": {"name": names[0]},
            "candidates": [{"name": n} for n in names[1:]],
        }
    info = spec.get("versionInfo")
    if isinstance(info, dict):
        versions = [info.get("baseline"), *(info.get("candidates") or [])]
        for v in versions:
            if not isinstance(v, dict) or v.get("name") not in revisions:
                continue
            variables = [x for x in v.get("variables") or [] if x.get("name") != "revision"]
            declared = [x for x in v.get("variables") or [] if x.get("name") == "revision"]
            v["variables"] = [
                *variables,
                *(declared or [{"name": "revision", "value": revisions[v["name"]]}]),
            ]
    return doc


def resolved_experiment(obj: Mapping[str, Any]) -> Experiment:
    try:
        return parse_experiment(resolved_document(obj), require_versions=False)
    except SpecError as e:
        raise PermanentError("; ".join(e.problems)) from None


def update(
    store: ExperimentStore, obj: Obj, change: Callable[[Status], Status | None]
) -> Status | None:
    """Write `change(status)` conditionally; after a lost race, re-read and apply `change`
    again. Returns what was written, or None when `change` (or the experiment being gone)
    says there is nothing to write. For changes that need only the status, not I/O."""
    ref = ref_of(obj)
    for attempt in range(CONFLICT_ATTEMPTS):
        status = change(Status.read(obj))
        if status is None:
            return None
        try:
            store.write_status(obj, status.to_dict())
        except ConflictError:
            if attempt == CONFLICT_ATTEMPTS - 1:
                raise
            fresh = current(store, ref)
            if fresh is None:
                return None
            obj = fresh
            continue
        return status
    raise AssertionError("unreachable")


def retry_on_conflict(action: Callable[[], T], attempts: int = CONFLICT_ATTEMPTS) -> T:
    """Run a read-modify-write until it stops losing races (then the ConflictError escapes and
    the broker retries the event)."""
    for attempt in range(attempts):
        try:
            return action()
        except ConflictError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def recorded_decision(status: Status) -> events.Concluded | None:
    """The decision recorded in status that ends the experiment, or None if none is: what
    finish carries out, what the clock re-announces and what the alert sinks are told."""
    rec = status.concluding
    if rec is None:
        return None
    if status.abort_reason:
        return events.Concluded.abort(status.abort_reason, rec.message)
    return events.Concluded.recommended(rec)
