"""The control loop's invariants, checked after a run from what the API server recorded.

The emulator keeps every stored version of every object, each stamped with a resourceVersion
from one global counter, so the Experiment's status writes and the target's traffic writes
can be put in one order. A split is read from the target's spec (what was asked of the
serving layer), as a tuple in version order; a status split is `currentWeightDistribution`
in the order the status lists it (baseline first).

Each run is classified: stuck (non-terminal after every deadline), half-moved (traffic at a
split no recorded decision asked for, or a terminal status whose split is not the traffic's),
lost (a terminal outcome its traffic or its recorded recommendation contradicts, or a
recorded iteration that disappeared), unauthorised (a write to a target by an experiment of
another namespace, or by one that did not hold it while another did).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.faults import contract as c
from tests.faults.harness import Harness

Split = tuple[int, ...]


@dataclass(frozen=True)
class Exp:
    """An experiment the run created, and the object that carries its traffic."""

    namespace: str
    name: str
    target: tuple[str, str]  # namespace, name
    kind: str = "kserve"  # kserve | vsvc
    deleted: bool = False


@dataclass
class Verdict:
    stuck: list[str] = field(default_factory=list)
    half_moved: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    unauthorised: list[str] = field(default_factory=list)
    early: list[str] = field(default_factory=list)  # applied before recorded (strict I1)
    unpromised: list[str] = field(default_factory=list)  # I4
    not_restored: list[str] = field(default_factory=list)  # I3
    server_errors: list[str] = field(default_factory=list)  # I7
    too_many: list[str] = field(default_factory=list)  # I8
    promotions: int = 0
    rollbacks: int = 0
    failed: int = 0

    def problems(self, *, strict_order: bool = False) -> list[str]:
        found = [
            *(f"I2 stuck: {p}" for p in self.stuck),
            *(f"I1 half-moved: {p}" for p in self.half_moved),
            *(f"lost: {p}" for p in self.lost),
            *(f"I5 unauthorised: {p}" for p in self.unauthorised),
            *(f"I4: {p}" for p in self.unpromised),
            *(f"I3: {p}" for p in self.not_restored),
            *(f"I7: {p}" for p in self.server_errors),
            *(f"I8: {p}" for p in self.too_many),
        ]
        if strict_order:
            found += [f"I1 order: {p}" for p in self.early]
        return found


def _versions(h: Harness, group: tuple[str, str, str], ns: str, name: str) -> list[Any]:
    return h.history(group, ns, name)


def _rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def target_split(obj: dict[str, Any], kind: str) -> Split:
    spec = obj.get("spec") or {}
    if kind == "vsvc":
        routes = spec["http"][0]["route"]
        return tuple(int(r.get("weight") or 0) for r in routes)
    percent = int((spec.get("predictor") or {}).get("canaryTrafficPercent") or 0)
    return (100 - percent, percent)


def status_split(status: dict[str, Any], key: str = "currentWeightDistribution") -> Split | None:
    dist = status.get(key)
    if not isinstance(dist, list) or not dist:
        return None
    return tuple(int(w.get("value") or 0) for w in dist)


def recorded_splits(status: dict[str, Any]) -> list[Split]:
    """The splits a status records as asked for: the one read back, and the one a stage
    wrote ahead (desiredWeightDistribution) before applying it."""
    found = (
        status_split(status, key)
        for key in ("desiredWeightDistribution", "currentWeightDistribution")
    )
    return [split for split in found if split is not None]


def _group(kind: str) -> tuple[str, str, str]:
    return c.VSVC if kind == "vsvc" else c.ISVC


def _baseline(split: Split) -> bool:
    return split[0] == 100


def check(
    h: Harness,
    experiments: Sequence[Exp],
    *,
    clean_deliveries: int | None = None,
    copies: int = 1,
    slack: int = 12,
) -> Verdict:
    v = Verdict()
    statuses: dict[tuple[str, str], list[tuple[int, dict[str, Any] | None]]] = {}
    for e in experiments:
        versions: list[tuple[int, dict[str, Any] | None]] = []
        last_rv = 0
        for obj in _versions(h, c.EXPERIMENTS, e.namespace, e.name):
            if obj is None:
                versions.append((last_rv + 1, None))
                continue
            last_rv = _rv(obj)
            versions.append((last_rv, dict(obj.get("status") or {})))
        statuses[e.namespace, e.name] = versions

    def status_at(e: Exp, rv: int) -> dict[str, Any] | None:
        found: dict[str, Any] | None = None
        for at, status in statuses[e.namespace, e.name]:
            if at >= rv:
                break
            found = status
        return found

    targets = {(e.target, e.kind) for e in experiments}
    for (target, kind), _ in itertools.groupby(sorted(targets)):
        on_target = [e for e in experiments if e.target == target]
        history = [o for o in _versions(h, _group(kind), *target) if o is not None]
        if not history:
            continue
        recorded = [
            (rv, split, e)
            for e in on_target
            for rv, status in statuses[e.namespace, e.name]
            if status is not None
            for split in recorded_splits(status)
        ]
        splits = [(_rv(o), target_split(o, kind)) for o in history]
        changes = [b for a, b in itertools.pairwise(splits) if a[1] != b[1]]
        for rv, split in changes:
            where = f"{target[0]}/{target[1]} at {split} (rv {rv})"
            if not _baseline(split) and not any(s == split for _, s, _ in recorded):
                v.half_moved.append(f"{where}: no decision recorded asked for it")
            if not _baseline(split) and not any(s == split and r < rv for r, s, _ in recorded):
                v.early.append(f"{where}: applied before any status recorded it")
            if any(w == 100 for w in split[1:]):
                v.promotions += 1
                promised = any(
                    r < rv and ((s or {}).get("recommendation") or {}).get("action") == "promote"
                    for e in on_target
                    for r, s in statuses[e.namespace, e.name]
                )
                if not promised:
                    v.unpromised.append(f"{where}: promoted with no promote decision recorded")
        final = splits[-1][1]
        target_gone = _versions(h, _group(kind), *target)[-1] is None
        for e in on_target:
            versions = statuses[e.namespace, e.name]
            exists = bool(versions) and versions[-1][1] is not None
            name = f"{e.namespace}/{e.name}"
            if e.deleted and not exists and not target_gone and not _baseline(final):
                v.not_restored.append(f"{name} deleted, {target} still at {final}")
            if not exists:
                continue
            status = versions[-1][1] or {}
            stage = str(status.get("stage") or "Pending")
            if stage not in c.TERMINAL:
                v.stuck.append(f"{name} still {stage}: {status.get('message')}")
                continue
            if stage == "Failed":
                v.failed += 1
                if not any(x.get("type") == "Failed" for x in status.get("conditions") or []):
                    v.lost.append(f"{name} Failed without a Failed condition")
            outcome = status.get("outcome")
            if outcome == "RolledBack":
                v.rollbacks += 1
            action = (status.get("recommendation") or {}).get("action")
            if outcome == "Promoted" and action != "promote":
                v.lost.append(f"{name} Promoted, but the recorded recommendation is {action}")
            if outcome == "RolledBack" and action != "rollback":
                v.lost.append(f"{name} RolledBack, but the recorded recommendation is {action}")
            holder = e == _last_active(on_target, statuses)
            if holder and not target_gone and outcome in ("Promoted", "RolledBack", "Aborted"):
                promoted = any(w == 100 for w in final[1:])
                if promoted != (outcome == "Promoted"):
                    v.lost.append(f"{name} {outcome}, but {target} is at {final}")
                said = status_split(status)
                if said is not None and said != final:
                    v.half_moved.append(f"{name} {outcome}: status says {said}, traffic {final}")
        for e in on_target:
            iterations = [
                int(s.get("completedIterations") or 0)
                for _, s in statuses[e.namespace, e.name]
                if s is not None
            ]
            if any(b < a for a, b in itertools.pairwise(iterations)):
                v.lost.append(f"{e.namespace}/{e.name}: completedIterations went {iterations}")

    for w in h.writes:
        if w.by is None:
            continue
        name = f"{w.by[0]}/{w.by[1]}"
        if w.by[0] != w.target[0]:
            v.unauthorised.append(f"{name} moved {w.target} in another namespace")
            continue
        for e in experiments:
            if (e.namespace, e.name) == w.by or e.target != w.target:
                continue
            status = status_at(e, w.resource_version)
            if status is not None and status.get("stage") in c.ACTIVE:
                v.unauthorised.append(
                    f"{name} moved {w.target} while {e.namespace}/{e.name} held it"
                )

    v.server_errors = [
        f"{r.stage} answered 500 to {r.type} (iteration {r.iteration})" for r in h.server_errors
    ]
    if clean_deliveries is not None:
        bound = copies * clean_deliveries + slack
        if h.deliveries() > bound:
            v.too_many.append(
                f"{h.deliveries()} deliveries > {copies} x {clean_deliveries} clean + {slack}"
            )
    return v


def _last_active(
    on_target: Sequence[Exp], statuses: dict[tuple[str, str], list[tuple[int, Any]]]
) -> Exp | None:
    """The experiment that last held the target (the latest to have had traffic recorded)."""
    best: tuple[int, Exp] | None = None
    for e in on_target:
        for rv, status in statuses[e.namespace, e.name]:
            active = status is not None and status.get("stage") in c.ACTIVE
            if active and (best is None or rv > best[0]):
                best = (rv, e)
    return best[1] if best else None
