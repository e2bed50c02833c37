"""`arbiter describe EXPERIMENT`: one screen saying where an experiment stands and why.

`describe` turns a stored Experiment (and the split its target reports) into a plain
description — target, pattern, stage and iteration, split, per version and objective the
estimate, interval and verdict, the winner, the recommendation and its rule, conditions and
the last transitions — which `render` prints for a person and `-o json|yaml` prints for a
script. Everything comes from the status the functions wrote (`functions.core.status`),
except the split, which is read back from the target through the functions' own backends.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import yaml

from analytics.model import Objective
from cli import kube
from functions.core import control
from functions.core import status as st
from functions.core.errors import PermanentError
from functions.core.timestamps import iso, parse_time

# Rows of "last transitions" shown: enough to see how it got here, short enough for a screen.
TRANSITIONS_SHOWN: Final = 6
SHORT_VERDICT: Final = {"satisfied": "ok", "violated": "FAIL", "undecided": "?"}


def register(commands: Any) -> None:
    p = commands.add_parser(
        "describe",
        help="where an Experiment stands and why, in one screen",
        description=__doc__,
    )
    kube.add_arguments(p)
    p.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")
    p.set_defaults(handler=run)


def fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "-" if x is None else str(x)


def limits(objective: Objective) -> str:
    """The objective's limits as a person writes them."""
    parts = []
    if objective.quantile is not None and objective.upper_limit is not None:
        parts.append(f"p{objective.quantile * 100:g} ≤ {objective.upper_limit:g}")
    elif objective.upper_limit is not None:
        parts.append(f"≤ {objective.upper_limit:g}")
    if objective.lower_limit is not None:
        parts.append(f"≥ {objective.lower_limit:g}")
    if objective.max_ratio is not None:
        parts.append(f"≤ {objective.max_ratio:g}× baseline")
    if objective.max_increase is not None:
        parts.append(f"≤ baseline + {objective.max_increase:g}")
    return ", ".join(parts)


def _objectives(obj: Mapping[str, Any], status: st.Status) -> list[dict[str, Any]]:
    """Per objective (spec order), each version's estimate, interval and verdict."""
    evidence = ((status.analysis or {}).get("evidence") or {}).get("versions") or {}
    try:
        spec_objectives = st.resolved_experiment(obj).spec.criteria.objectives
    except PermanentError:
        spec_objectives = ()
    names = [v.name for v in status.versions] or list(evidence)
    out: list[dict[str, Any]] = []
    for index, objective in enumerate(spec_objectives):
        per_version = {}
        for v in names:
            items = evidence.get(v) or []
            item = items[index] if index < len(items) and isinstance(items[index], dict) else {}
            if not item:
                continue
            reasons = [
                f"{c.get('condition')}: {c.get('reason')}"
                for c in item.get("conditions") or []
                if isinstance(c, dict) and c.get("verdict") != "satisfied" and c.get("reason")
            ]
            per_version[v] = {
                "estimate": item.get("estimate"),
                "interval": item.get("interval"),
                "verdict": item.get("verdict"),
                "conclusive": item.get("conclusive"),
                "sampleSize": item.get("sampleSize"),
                **({"bucketBound": item["bucketBound"]} if "bucketBound" in item else {}),
                **({"why": reasons} if reasons else {}),
            }
        out.append(
            {"metric": objective.metric, "limits": limits(objective), "versions": per_version}
        )
    return out


def _transitions(status: st.Status) -> list[dict[str, str]]:
    """The moments the experiment changed, newest last: times the status records, condition
    transitions and, from the history, each iteration that moved the split."""
    moments: list[tuple[datetime, str]] = []
    if status.init_time:
        moments.append((status.init_time, "initialized"))
    if status.start_time:
        moments.append((status.start_time, "Running: versions ready, target acquired"))
    previous: list[int] | None = None
    for h in status.history:
        split, at = h.get("split"), parse_time(h.get("time"))
        if at is not None and split and split != previous and previous is not None:
            moments.append((at, f"iteration {h.get('iteration')}: split {_split_text(split)}"))
        previous = split if split else previous
    if status.finishing_time and status.recommendation:
        rec = status.recommendation
        moments.append((status.finishing_time, f"Finishing: {rec.action.value} ({rec.rule})"))
    # Conditions last: sorted stably by time, the end (Completed or Failed) follows the
    # decision it carries out.
    for c in status.conditions:
        if c.last_transition_time:
            state = {True: "True", False: "False", None: "Unknown"}[c.ok]
            text = f"{c.type.value}={state}" + (f" ({c.reason})" if c.reason else "")
            if c.message:
                text += f": {c.message}"
            moments.append((c.last_transition_time, text))
    moments.sort(key=lambda m: m[0])
    return [{"time": iso(t), "what": what} for t, what in moments[-TRANSITIONS_SHOWN:]]


def _split_text(split: Sequence[int]) -> str:
    return "/".join(str(x) for x in split)


def describe(obj: Mapping[str, Any], read_back: kube.ReadBack | None) -> dict[str, Any]:
    """The description of a stored Experiment; `read_back` is the target's own report of
    the split (None when the Experiment came from a file)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    strategy = spec.get("strategy") or {}
    duration = spec.get("duration") or {}
    status = st.Status.read(obj)
    total = int(duration.get("iterationsPerLoop") or 15) * int(duration.get("maxLoops") or 1)
    winner = ((status.analysis or {}).get("winnerAssessment") or {}) if status.analysis else {}
    split: dict[str, Any] = {"status": status.split or None}
    if status.desired and status.desired != status.split:
        split["desired"] = status.desired
    if read_back is not None:
        split["target"] = list(read_back.objects)
        split["readBack"] = read_back.split
        if read_back.error:
            split["error"] = read_back.error
    rec = status.recommendation
    return {
        "experiment": f"{meta.get('namespace', 'default')}/{meta.get('name')}",
        "target": spec.get("target"),
        "pattern": {
            "testing": strategy.get("testingPattern"),
            "deployment": strategy.get("deploymentPattern") or "Progressive",
        },
        "stage": status.stage.value,
        "outcome": None if status.outcome is None else status.outcome.value,
        "iteration": status.iterations_done,
        "iterations": total,
        "message": status.message,
        "versions": [
            {"name": v.name, **({"revision": v.revision} if v.revision else {})}
            for v in status.versions
        ],
        "split": split,
        "objectives": _objectives(obj, status),
        "winner": {
            "found": bool((winner.get("data") or {}).get("winnerFound")),
            "winner": (winner.get("data") or {}).get("winner"),
            "why": winner.get("message"),
        },
        "recommendation": None
        if rec is None
        else {
            "action": rec.action.value,
            "version": rec.version,
            "rule": rec.rule,
            "message": rec.message,
        },
        "abortReason": status.abort_reason,
        "control": _control(obj, status),
        "conditions": [c.to_dict() for c in status.conditions],
        "transitions": _transitions(status),
    }


def _control(obj: Mapping[str, Any], status: st.Status) -> dict[str, Any]:
    """Manual control: paused since when (and for how long before), a request not handled
    yet, the last one handled (applied or refused), a Manual promotion waiting."""
    pending = control.unhandled(obj, status)
    waiting = status.awaiting_promotion
    out = {
        "pausedSince": None if status.paused_at is None else iso(status.paused_at),
        "pausedSeconds": status.paused_seconds,
        "pending": None
        if pending is None
        else {
            k: v
            for k, v in {
                "id": pending.id,
                "action": pending.action,
                "version": pending.version,
                "reason": pending.reason,
                "requestedBy": pending.requested_by,
            }.items()
            if v is not None
        },
        "last": None if status.control is None else status.control.to_dict(),
        "awaitingPromotion": None
        if waiting is None
        else {"version": waiting.version, "rule": waiting.rule, "message": waiting.message},
    }
    return {k: v for k, v in out.items() if v is not None}


def _request_text(r: Mapping[str, Any]) -> str:
    version = f" {r['version']}" if r.get("version") else ""
    who = f" by {r['requestedBy']}" if r.get("requestedBy") else ""
    why = f": {r['reason']}" if r.get("reason") else ""
    return f"{r['action']}{version}{who}{why} (id {r.get('id') or r.get('appliedId')})"


def _percent(split: Mapping[str, int] | None) -> str:
    if not split:
        return "none set"
    return ", ".join(f"{n} {w}%" for n, w in split.items())


def render(d: Mapping[str, Any]) -> str:
    """The description as one screen of text."""
    lines = [
        f"Experiment:  {d['experiment']}",
        f"Target:      {d['target']}",
        f"Pattern:     {d['pattern']['testing']}, {d['pattern']['deployment']}",
        f"Stage:       {d['stage']}"
        + (f" ({d['outcome']})" if d["outcome"] else "")
        + f", iteration {d['iteration']} of {d['iterations']}",
    ]
    rec = d["recommendation"]
    if d["message"] and not (rec and d["message"].endswith(rec["message"])):
        lines.append(f"Message:     {d['message']}")  # unless the decision says it below
    split = d["split"]
    if "readBack" in split:
        where = ", ".join(split["target"])
        if split.get("error"):
            lines.append(f"Split:       cannot read {where}: {split['error']}")
            lines.append(f"             status says {_percent(split['status'])}")
        else:
            lines.append(f"Split:       {_percent(split['readBack'])} (read back from {where})")
            if split["readBack"] != split["status"]:
                lines.append(f"             status says {_percent(split['status'])}")
    else:
        lines.append(f"Split:       {_percent(split['status'])} (as the status records it)")
    if "desired" in split:
        lines.append(f"             being applied: {_percent(split['desired'])}")
    versions = d["versions"]
    if versions:
        width = max(len(v["name"]) for v in versions)
        lines.append("Versions:")
        for i, v in enumerate(versions):
            role = "baseline" if i == 0 else "candidate"
            rev = f", revision {v['revision']}" if v.get("revision") else ""
            lines.append(f"  {v['name']:<{width}}  {role}{rev}")
    else:
        width = 10
    if d["objectives"]:
        lines.append("Objectives:  estimate [anytime-valid interval] verdict")
    for o in d["objectives"]:
        lines.append(f"  {o['metric']}  ({o['limits']})")
        for name, e in o["versions"].items():
            interval = e.get("interval")
            band = f"[{fmt(interval[0])}, {fmt(interval[1])}]" if interval else "[-]"
            share = f" (share > {fmt(e['bucketBound'])})" if "bucketBound" in e else ""
            verdict = SHORT_VERDICT.get(str(e.get("verdict")), str(e.get("verdict")))
            lines.append(
                f"    {name:<{width}}  {fmt(e.get('estimate')):>9}{share}  {band:<22} {verdict}"
            )
            lines.extend(f"      {why}" for why in e.get("why") or [])
    w = d["winner"]
    if w["found"]:
        lines.append(f"Winner:      {w['winner']}" + (f": {w['why']}" if w["why"] else ""))
    elif w["why"]:
        lines.append(f"Winner:      none yet: {w['why']}")
    if rec:
        target = f" {rec['version']}" if rec.get("version") else ""
        lines.append(f"Decision:    {rec['action']}{target} (rule {rec['rule']}): {rec['message']}")
    if d["abortReason"]:
        lines.append(f"Aborted:     {d['abortReason']}")
    ctl = d.get("control") or {}
    if "pausedSince" in ctl:
        paused = ctl.get("pausedSeconds")
        before = f" (paused {paused:.0f} s before)" if paused else ""
        lines.append(f"Paused:      since {ctl['pausedSince']}{before}; resume: arbiter resume")
    elif ctl.get("pausedSeconds"):
        lines.append(f"Paused:      no ({ctl['pausedSeconds']:.0f} s paused in all)")
    if "awaitingPromotion" in ctl:
        waiting = ctl["awaitingPromotion"]
        lines.append(
            f"Awaiting:    manual promotion, {waiting['version']} recommended "
            f"(rule {waiting['rule']}): arbiter promote --version V --reason TEXT, or abort"
        )
    if "pending" in ctl:
        lines.append(
            f"Requested:   {_request_text(ctl['pending'])}; applied by the next clock tick"
        )
    if "last" in ctl:
        last = ctl["last"]
        verdict = f"REFUSED: {last['refused']}" if last.get("refused") else "applied"
        at = f" at {last['appliedAt']}" if last.get("appliedAt") else ""
        lines.append(f"Control:     {_request_text(last)} {verdict}{at}")
    if d["conditions"]:
        lines.append("Conditions:")
        for c in d["conditions"]:
            text = f"  {c['type']:<15} {c['status']:<7} {c.get('reason') or ''}"
            if c.get("message"):
                text += f": {c['message']}"
            lines.append(text.rstrip())
    if d["transitions"]:
        lines.append("Last transitions:")
        lines.extend(f"  {t['time']}  {t['what']}" for t in d["transitions"])
    return "\n".join(lines)


def dump(d: Mapping[str, Any], output: str) -> str:
    if output == "json":
        return json.dumps(d, indent=2) + "\n"
    if output == "yaml":
        return yaml.safe_dump(dict(d), sort_keys=False, allow_unicode=True)
    return render(d) + "\n"


def current(args: argparse.Namespace) -> dict[str, Any]:
    obj, cluster = kube.load(args)
    read_back = None if cluster is None else kube.read_split(cluster, obj)
    return describe(obj, read_back)


def run(args: argparse.Namespace) -> int:
    text = dump(current(args), args.output)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stderr.close()
    return 0
