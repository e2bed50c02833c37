"""The experiment's story as Kubernetes Events: one Event per change of its status.

The stages write status in many places; the Events are derived in one: `StoryTeller` wraps
the experiment store and, after each successful status write, compares the status the
write replaced with the one it stored (`story`) and records an Event per change, so
`kubectl describe experiment` and `kubectl get events` tell the story:

- the stage: Waiting, Initializing, Started (Running); Concluded when a decision is
  recorded (Aborting, a Warning, for the safe ending); the outcome (Promoted, RolledBack,
  Validated, NotValidated) when it completes; Failed (a Warning);
- TrafficMoved for `currentWeightDistribution`: "v1 80 → 60, v2 20 → 40";
- ObjectiveSatisfied, ObjectiveViolated (a Warning), ObjectiveUndecided for a version's
  verdict on an objective; WinnerFound and RecommendedForPromotion while it runs;
- a condition's change, by its reason, a Warning when it reports trouble (Completed, and
  Failed when the stage says it, are left to the stage's Event, ControlApplied to the
  request's; a pause or a wait for promotion ending is Resumed or Answered, never trouble);
- ControlRequested for each manual request handled (`status.control`, one per request id);
  ControlRefused, a Warning, when it was refused.

Recording is best effort: the status write has happened, so an Event that cannot be written
is logged and the stage goes on. Each Event's name derives from the experiment's uid, the
reason and the transition (`Occurrence.key`), so a repeated write of one transition records
one Event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Final

from analytics.recommendation import Action
from functions.core.events import ExperimentRef
from functions.core.ports import Clock, EventRecorder, ExperimentStore, Occurrence
from functions.core.status import TERMINAL, ConditionType, Stage, Status, VersionWeight

log = logging.getLogger(__name__)

Obj = dict[str, Any]

_STARTING: Final = {
    Stage.WAITING: ("Waiting", "Wait"),
    Stage.INITIALIZING: ("Initializing", "Initialize"),
    Stage.RUNNING: ("Started", "Start"),
}
_VERDICT_REASON: Final = {
    "satisfied": "ObjectiveSatisfied",
    "violated": "ObjectiveViolated",
    "undecided": "ObjectiveUndecided",
}
_CLOSING: Final = frozenset({Stage.FINISHING, *TERMINAL})
# Conditions whose True is the trouble; those that tell a state a person asked for, neither
# (a pause ending is not a failure); for the others False is.
_TROUBLE_WHEN_TRUE: Final = frozenset({ConditionType.FAILED})
_STATES: Final = frozenset({ConditionType.PAUSED, ConditionType.AWAITING_PROMOTION})
# The Event reason of a state's end, whatever ended it (the condition's reason says what).
_ENDED: Final = {ConditionType.PAUSED: "Resumed", ConditionType.AWAITING_PROMOTION: "Answered"}


class StoryTeller:
    """An ExperimentStore that records the story of every status write it passes on."""

    def __init__(self, store: ExperimentStore, recorder: EventRecorder, clock: Clock) -> None:
        self._store = store
        self._recorder = recorder
        self._clock = clock

    def get(self, ref: ExperimentRef) -> Obj:
        return self._store.get(ref)

    def list(self) -> list[Obj]:
        return self._store.list()

    def patch_metadata(self, obj: Obj, metadata: Mapping[str, Any]) -> Obj:
        return self._store.patch_metadata(obj, metadata)

    def get_metric(self, namespace: str, name: str) -> Obj:
        return self._store.get_metric(namespace, name)

    def write_status(self, obj: Obj, status: Mapping[str, Any]) -> Obj:
        stored = self._store.write_status(obj, status)
        meta = stored.get("metadata") or {}
        where = f"{meta.get('namespace')}/{meta.get('name')}"
        old = obj.get("status")
        try:
            told = story(old if isinstance(old, Mapping) else {}, status)
        except Exception:  # best effort: the status, the truth, is written
            log.exception("events of %s not derived", where)
            return stored
        for occurrence in told:
            try:
                self._recorder.record(stored, occurrence, self._clock.now())
            except Exception as e:  # best effort, as above
                log.warning("event %s on %s not recorded: %s", occurrence.reason, where, e)
        return stored


def story(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Occurrence]:
    """What changed from status `old` to status `new`, one Occurrence per change, in the
    order a reader wants them: the stage (last when it is the decision or the end, which the
    verdicts and the final traffic move lead up to), traffic, verdicts, conditions, manual
    requests."""
    before, after = Status.from_dict(old), Status.from_dict(new)
    stage = _stage(before, after)
    rest = [
        *_traffic(before, after),
        *_verdicts(before, after),
        *_recommendation(before, after),
        *_conditions(before, after),
        *_control(before, after),
    ]
    return [*rest, *stage] if after.stage in _CLOSING else [*stage, *rest]


def _stage(before: Status, after: Status) -> list[Occurrence]:
    if before.stage is after.stage:
        return []
    key = f"{before.stage.value}>{after.stage.value}@{after.iterations_done}"
    message = after.message
    if after.stage in _STARTING:
        reason, action = _STARTING[after.stage]
        return [Occurrence(reason, action, message or after.stage.value, key)]
    if after.stage is Stage.FINISHING:
        rec = after.recommendation
        decided = ""
        if rec is not None:
            decided = (
                f"promote {rec.version}"
                if rec.action is Action.PROMOTE and not after.abort_reason
                else "restore the baseline"
            )
        if after.abort_reason:
            note = f"{after.abort_reason}: {decided}: {message}"
            return [Occurrence("Aborting", "Conclude", note, key, warning=True)]
        rule = f" (rule {rec.rule})" if rec is not None and rec.rule else ""
        return [Occurrence("Concluded", "Conclude", f"{decided}{rule}: {message}", key)]
    outcome = after.outcome.value if after.outcome is not None else ""
    if after.stage is Stage.COMPLETED:
        note = f"{outcome or 'Completed'}: {message}"
        if after.version_recommended_for_promotion:
            note += f" (version {after.version_recommended_for_promotion})"
        return [Occurrence(outcome or "Completed", "Finish", note, key)]
    if after.stage is Stage.FAILED:
        failed = next((c for c in after.conditions if c.type is ConditionType.FAILED), None)
        why = f"{failed.reason}: " if failed is not None and failed.reason else ""
        note = f"{outcome or 'Failed'}: {why}{message}"
        return [Occurrence("Failed", "Finish", note, key, warning=True)]
    return []


def _split_text(weights: tuple[VersionWeight, ...]) -> dict[str, int]:
    return {w.name: w.value for w in weights}


def _traffic(before: Status, after: Status) -> list[Occurrence]:
    old, new = _split_text(before.weights), _split_text(after.weights)
    if not new or old == new:
        return []
    moves = ", ".join(
        f"{name} {old[name]} → {value}" if name in old else f"{name} → {value}"
        for name, value in new.items()
    )
    key = f"{after.iterations_done}:{json.dumps(new, sort_keys=True)}"
    return [Occurrence("TrafficMoved", "SetSplit", moves, key)]


def _verdicts_of(status: Status) -> dict[tuple[str, int, str], Mapping[str, Any]]:
    evidence = (status.analysis or {}).get("evidence")
    versions = evidence.get("versions") if isinstance(evidence, Mapping) else None
    found: dict[tuple[str, int, str], Mapping[str, Any]] = {}
    if not isinstance(versions, Mapping):
        return found
    for version, items in versions.items():
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            if isinstance(item, Mapping) and isinstance(item.get("verdict"), str):
                found[(str(version), i, str(item.get("metric")))] = item
    return found


def _verdicts(before: Status, after: Status) -> list[Occurrence]:
    old, new = _verdicts_of(before), _verdicts_of(after)
    out = []
    for (version, i, metric), item in new.items():
        verdict = str(item["verdict"])
        was = old.get((version, i, metric))
        previous = str(was["verdict"]) if was is not None else "undecided"
        if verdict == previous or verdict not in _VERDICT_REASON:
            continue
        estimate = item.get("estimate")
        shown = f", estimate {estimate:.4g}" if isinstance(estimate, int | float) else ""
        note = f"{version}: {metric} {previous} → {verdict}{shown}"
        key = f"{version}/{i}/{metric}/{verdict}@{after.iterations_done}"
        out.append(
            Occurrence(_VERDICT_REASON[verdict], "Assess", note, key, warning=verdict == "violated")
        )
    return out


def _winner(status: Status) -> str | None:
    assessment = (status.analysis or {}).get("winnerAssessment")
    data = assessment.get("data") if isinstance(assessment, Mapping) else None
    winner = data.get("winner") if isinstance(data, Mapping) else None
    return winner if isinstance(winner, str) and winner else None


def _recommendation(before: Status, after: Status) -> list[Occurrence]:
    if after.stage not in (Stage.RUNNING, Stage.FINISHING):
        return []  # at the end the outcome says it
    out = []
    winner = _winner(after)
    if winner is not None and winner != _winner(before):
        message = ((after.analysis or {}).get("winnerAssessment") or {}).get("message") or ""
        key = f"{winner}@{after.iterations_done}"
        out.append(Occurrence("WinnerFound", "Assess", f"{winner}: {message}", key))
    version = after.version_recommended_for_promotion
    if version and version != before.version_recommended_for_promotion:
        key = f"{version}@{after.iterations_done}"
        out.append(Occurrence("RecommendedForPromotion", "Assess", version, key))
    return out


def _conditions(before: Status, after: Status) -> list[Occurrence]:
    old = {c.type: c for c in before.conditions}
    ended = before.stage is not after.stage and after.stage in (Stage.COMPLETED, Stage.FAILED)
    out = []
    for c in after.conditions:
        was = old.get(c.type)
        if was is not None and (was.ok, was.reason) == (c.ok, c.reason):
            continue
        if c.type is ConditionType.COMPLETED or (ended and c.type is ConditionType.FAILED):
            continue  # the stage's own Event says it
        if c.type is ConditionType.CONTROL_APPLIED:
            continue  # the request's own Event (ControlRequested / ControlRefused) says it
        status = {True: "True", False: "False", None: "Unknown"}[c.ok]
        if c.type in _STATES:
            trouble = False
        elif c.type in _TROUBLE_WHEN_TRUE:
            trouble = c.ok is True
        else:
            trouble = c.ok is False
        reason = c.reason if c.reason.isalnum() and c.reason[:1].isupper() else c.type.value
        if c.ok is False and c.type in _ENDED:
            reason = _ENDED[c.type]
        note = f"{c.type.value}={status}: {c.message}" if c.message else f"{c.type.value}={status}"
        key = f"{c.type.value}/{status}/{c.reason}@{after.iterations_done}"
        out.append(Occurrence(reason, "Check", note, key, warning=trouble))
    return out


def _control(before: Status, after: Status) -> list[Occurrence]:
    """A manual request handled: one Event per request id (a Warning when it was refused)."""
    new = after.control
    if new is None or (before.control is not None and before.control.applied_id == new.applied_id):
        return []
    what = " ".join(w for w in (new.action, new.version) if w)
    note = f"{what} requested by {new.requested_by or 'someone'}"
    if new.reason:
        note += f": {new.reason}"
    if new.refused:
        note += f"; refused: {new.refused}"
    reason = "ControlRefused" if new.refused else "ControlRequested"
    return [Occurrence(reason, "Control", note, f"control/{new.applied_id}", bool(new.refused))]


def _plain(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
