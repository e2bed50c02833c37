"""`arbiter report EXPERIMENT -o report.html`: one self-contained HTML page about an experiment.

The page plots the split over time and, per objective, each version's estimate with its
anytime-valid band against the limit; then the decision timeline with its reasons and the
evidence table. It is inline SVG and CSS, with no script and nothing fetched, so it opens
anywhere, mails as one file and renders the same offline.

The history comes from the status: `status.history` (functions.core.status.history_entry,
written by assess) for an Experiment on a cluster or in a file; for an `arbiter run --output`
folder, from the run's `status-history.json` snapshots, turned into the same entries.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from analytics.model import Objective
from analytics.recommendation import Action, Recommendation
from cli import describe, kube
from cli.analyze import InputError
from functions.core import status as st
from functions.core.errors import PermanentError

COLORS: Final = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
WIDTH: Final = 720
HEIGHT: Final = 220
MARGIN: Final = (48, 16, 28, 56)  # top, right, bottom, left


def register(commands: Any) -> None:
    p = commands.add_parser(
        "report",
        help="a self-contained HTML report: split and estimates over time, decisions, evidence",
        description=__doc__,
    )
    kube.add_arguments(p)
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="where to write the HTML page"
    )
    p.set_defaults(handler=run)


@dataclass(frozen=True)
class Source:
    """An experiment and its per-iteration history, wherever they were read from."""

    obj: dict[str, Any]
    history: tuple[Mapping[str, Any], ...]


def from_run_folder(folder: Path) -> Source:
    """An `arbiter run --output` folder: the final Experiment and its status snapshots."""
    try:
        obj = json.loads((folder / "experiment.json").read_text(encoding="utf-8"))
        snapshots = json.loads((folder / "status-history.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(
            f"{folder}: not an `arbiter run --output` folder "
            f"(experiment.json and status-history.json): {e}"
        ) from e
    if not isinstance(obj, dict) or not isinstance(snapshots, list):
        raise InputError(f"{folder}: experiment.json or status-history.json is malformed")
    history: tuple[Mapping[str, Any], ...] = ()
    for snap in snapshots:
        status = st.Status.from_dict(snap.get("status") if isinstance(snap, dict) else None)
        evidence = (status.analysis or {}).get("evidence")
        done, at = status.completed_iterations, status.last_iteration_time
        if not done or not isinstance(evidence, Mapping) or at is None:
            continue
        if history and history[-1].get("iteration") == done:
            continue  # a later write of the same iteration (finish): its first record stands
        rec = status.recommendation or Recommendation(Action.CONTINUE, None, "", "")
        names = [v.name for v in status.versions]
        entry = st.history_entry(done, at, names, status.split, evidence, rec)
        history = (*history, entry)
    return Source(obj, history)


def load(args: argparse.Namespace) -> Source:
    if args.filename and Path(args.filename).is_dir():
        return from_run_folder(Path(args.filename))
    obj, _ = kube.load(args)
    return Source(obj, st.Status.read(obj).history)


# --- plotting --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """A plot's axes: iterations across, values up."""

    x0: float
    x1: float
    y0: float
    y1: float

    def x(self, v: float) -> float:
        span = (self.x1 - self.x0) or 1
        return MARGIN[3] + (v - self.x0) / span * (WIDTH - MARGIN[1] - MARGIN[3])

    def y(self, v: float) -> float:
        span = (self.y1 - self.y0) or 1
        clipped = min(max(v, self.y0), self.y1)
        return HEIGHT - MARGIN[2] - (clipped - self.y0) / span * (HEIGHT - MARGIN[0] - MARGIN[2])


def _num(x: object) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _ticks(lo: float, hi: float) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / 4 for i in range(5)]


def _axes(frame: Frame, title: str, ylabel: str) -> list[str]:
    e = html.escape
    parts = [
        f'<text x="{MARGIN[3]}" y="16" class="title">{e(title)}</text>',
        f'<text x="{MARGIN[3]}" y="32" class="sub">{e(ylabel)}</text>',
    ]
    for t in _ticks(frame.y0, frame.y1):
        y = frame.y(t)
        parts.append(
            f'<line x1="{MARGIN[3]}" x2="{WIDTH - MARGIN[1]}" y1="{y:.1f}" y2="{y:.1f}" '
            'class="grid"/>'
            f'<text x="{MARGIN[3] - 4}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
            f"{t:.3g}</text>"
        )
    step = max(1, math.ceil((frame.x1 - frame.x0) / 8))
    for t in range(math.ceil(frame.x0), math.floor(frame.x1) + 1, step):
        parts.append(
            f'<text x="{frame.x(t):.1f}" y="{HEIGHT - 8}" class="tick" text-anchor="middle">'
            f"{round(t)}</text>"
        )
    return parts


def _svg(parts: Sequence[str], label: str) -> str:
    body = "".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{html.escape(label)}">'
        f"{body}</svg>"
    )


def _legend(names: Sequence[str]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{COLORS[i % len(COLORS)]}"></i>'
        f"{html.escape(n)}</span>"
        for i, n in enumerate(names)
    )
    return f'<div class="legend">{items}</div>'


def split_plot(
    history: Sequence[Mapping[str, Any]], names: Sequence[str], final: Sequence[int] = ()
) -> str:
    """The split over iterations: one step line per version, in percent; `final`, the split
    finish left (promoted or rolled back), as one more step after the last iteration."""
    rows = [(h.get("iteration"), h.get("split")) for h in history]
    points = [(int(i), s) for i, s in rows if isinstance(i, int) and isinstance(s, list) and s]
    if points and final and list(final) != points[-1][1]:
        points.append((points[-1][0] + 1, list(final)))
    if not points:
        return "<p>No split was recorded.</p>"
    frame = Frame(min(p[0] for p in points) - 1, max(p[0] for p in points), 0, 100)
    parts = _axes(frame, "Traffic split", "percent of requests per version, after each iteration")
    for v in range(len(names)):
        coords: list[str] = []
        for i, s in points:
            value = _num(s[v]) if v < len(s) else None
            if value is not None:
                # A step: the split held from the iteration before to this one.
                coords.append(f"{frame.x(i - 1):.1f},{frame.y(value):.1f}")
                coords.append(f"{frame.x(i):.1f},{frame.y(value):.1f}")
        color = COLORS[v % len(COLORS)]
        parts.append(
            f'<polyline class="split" points="{" ".join(coords)}" fill="none" '
            f'stroke="{color}" stroke-width="2"/>'
        )
    return _svg(parts, "traffic split over iterations") + _legend(names)


def limit_line(objective: Objective, bucket: bool) -> float | None:
    """The fixed limit an objective's estimate is held to (None: only relative ones).

    A latency objective on a histogram is judged on the share of requests above the bucket
    bound, which a p-q objective allows up to 1 - q."""
    if bucket and objective.quantile is not None:
        return 1 - objective.quantile
    if objective.upper_limit is not None:
        return objective.upper_limit
    return objective.lower_limit


def objective_plot(
    history: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    index: int,
    objective: Objective,
    bucket: bool,
) -> str:
    """One objective: each version's estimate as a line inside its band, and the limit."""
    series: dict[int, list[tuple[int, float, float | None, float | None]]] = {}
    for h in history:
        i = h.get("iteration")
        if not isinstance(i, int):
            continue
        for v, per_version in enumerate(h.get("estimates") or []):
            cell = per_version[index] if index < len(per_version) else None
            if not isinstance(cell, list) or len(cell) < 3:
                continue
            est = _num(cell[0])
            if est is not None:
                series.setdefault(v, []).append((i, est, _num(cell[1]), _num(cell[2])))
    if not series:
        return f"<p>No estimates of {html.escape(objective.metric)} were recorded.</p>"
    limit = limit_line(objective, bucket)
    values = [x for s in series.values() for p in s for x in p[1:] if x is not None]
    if limit is not None:
        values.append(limit)
    top = max(values) * 1.15 or 1.0
    # A band far wider than the estimates (early on) would flatten the plot: cap the axis.
    estimates = [p[1] for s in series.values() for p in s]
    top = min(top, max([*estimates, limit or 0]) * 3 or 1.0)
    iterations = [p[0] for s in series.values() for p in s]
    frame = Frame(min(iterations), max(*iterations, min(iterations) + 1), 0, top)
    what = "share of requests above the bucket bound" if bucket else "estimate"
    title = f"{objective.metric} ({describe.limits(objective)})"
    parts = _axes(frame, title, f"{what} and anytime-valid band, per version")
    for v, points in sorted(series.items()):
        color = COLORS[v % len(COLORS)]
        upper = [
            f"{frame.x(i):.1f},{frame.y(hi if hi is not None else top):.1f}"
            for i, _, _, hi in points
        ]
        lower = [
            f"{frame.x(i):.1f},{frame.y(lo if lo is not None else 0):.1f}" for i, _, lo, _ in points
        ]
        parts.append(
            f'<polygon class="band" points="{" ".join(upper + lower[::-1])}" '
            f'fill="{color}" fill-opacity="0.15" stroke="none"/>'
        )
        line = " ".join(f"{frame.x(i):.1f},{frame.y(e):.1f}" for i, e, _, _ in points)
        parts.append(
            f'<polyline class="estimate" points="{line}" fill="none" stroke="{color}" '
            'stroke-width="2"/>'
        )
    if limit is not None:
        y = frame.y(limit)
        parts.append(
            f'<line class="limit" x1="{MARGIN[3]}" x2="{WIDTH - MARGIN[1]}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="#c00" stroke-dasharray="6 4" stroke-width="1.5"/>'
            f'<text x="{WIDTH - MARGIN[1] - 4}" y="{y - 4:.1f}" class="tick" fill="#c00" '
            f'text-anchor="end">limit {limit:.3g}</text>'
        )
    return _svg(parts, f"{objective.metric} per version") + _legend(
        [names[v] for v in sorted(series) if v < len(names)]
    )


# --- the page --------------------------------------------------------------------------------


def timeline(
    history: Sequence[Mapping[str, Any]], names: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, str]]:
    """Iterations where something was decided: the split moved, a verdict changed, or an
    action other than continue fired."""
    rows = []
    previous: Mapping[str, Any] | None = None
    for h in history:
        what = []
        split = h.get("split") or []
        if previous is None or split != previous.get("split"):
            what.append(
                "split " + ", ".join(f"{n} {w}%" for n, w in zip(names, split, strict=False))
            )
        verdicts = _verdicts(h, names, metrics)
        before = _verdicts(previous, names, metrics) if previous is not None else {}
        changed = {k: v for k, v in verdicts.items() if before.get(k, "undecided") != v}
        what.extend(f"{k} {v}" for k, v in changed.items())
        if h.get("action") not in (None, "continue"):
            what.append(f"{h['action']} (rule {h.get('rule')})")
        if what:
            rows.append(
                {
                    "iteration": str(h.get("iteration")),
                    "time": str(h.get("time")),
                    "what": "; ".join(what),
                }
            )
        previous = h
    return rows


def _verdicts(h: Mapping[str, Any], names: Sequence[str], metrics: Sequence[str]) -> dict[str, str]:
    out = {}
    for v, per_version in enumerate(h.get("estimates") or []):
        for o, cell in enumerate(per_version):
            if isinstance(cell, list) and len(cell) == 4 and v < len(names):
                metric = metrics[o] if o < len(metrics) else f"objective {o + 1}"
                out[f"{names[v]} {metric}"] = st.VERDICT_OF_CODE.get(cell[3], "undecided")
    return out


_CSS: Final = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:780px;color:#222}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
.title{font-weight:600;font-size:13px}.sub,.tick{font-size:11px;fill:#555}
.grid{stroke:#eee}.legend{font-size:12px;margin:2px 0 12px}
.key{margin-right:14px}.key i{display:inline-block;width:10px;height:10px;margin-right:4px}
td:nth-child(2){white-space:nowrap}.ok{color:#080}
.FAIL{color:#c00;font-weight:600}.dl{display:grid;grid-template-columns:9em 1fr}
"""


def render(source: Source) -> str:
    obj, history = source.obj, source.history
    d = describe.describe(obj, None)
    status = st.Status.read(obj)
    names = [v.name for v in status.versions]
    try:
        objectives = st.resolved_experiment(obj).spec.criteria.objectives
    except PermanentError:
        objectives = ()
    e = html.escape
    evidence = ((status.analysis or {}).get("evidence") or {}).get("versions") or {}
    first = evidence.get(names[0]) if names else None
    rec = d["recommendation"]
    ended = status.stage in st.TERMINAL
    final = [status.split.get(n, 0) for n in names] if ended and status.split else []
    summary = [
        ("Target", d["target"]),
        ("Pattern", f"{d['pattern']['testing']}, {d['pattern']['deployment']}"),
        ("Stage", f"{d['stage']}" + (f" ({d['outcome']})" if d["outcome"] else "")),
        ("Iterations", f"{d['iteration']} of {d['iterations']}"),
        ("Winner", d["winner"]["winner"] or "none"),
        (
            "Decision",
            f"{rec['action']} {rec.get('version') or ''} (rule {rec['rule']}): {rec['message']}"
            if rec
            else "none yet",
        ),
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Arbiter report: {e(d['experiment'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Experiment {e(d['experiment'])}</h1>",
        "<div class='dl'>",
        *(f"<b>{e(k)}</b><span>{e(str(v))}</span>" for k, v in summary),
        "</div>",
        "<h2>Split over time</h2>",
        split_plot(history, names, final),
        "<h2>Objectives</h2>",
    ]
    if not history:
        parts.append("<p>No iteration history in this status (written from iteration 1 on).</p>")
    for index, objective in enumerate(objectives):
        item = first[index] if isinstance(first, list) and index < len(first) else {}
        bucket = isinstance(item, dict) and item.get("bucketBound") is not None
        parts.append(objective_plot(history, names, index, objective, bucket))
    parts.append(
        "<h2>Decision timeline</h2><table>"
        "<tr><th>iteration</th><th>time</th><th>what happened</th></tr>"
    )
    for row in timeline(history, names, [o.metric for o in objectives]):
        parts.append(
            f"<tr><td>{e(row['iteration'])}</td><td>{e(row['time'])}</td><td>{e(row['what'])}</td></tr>"
        )
    for t in d["transitions"]:
        if t["what"].startswith("iteration "):
            continue  # the split's moves are in the rows above
        parts.append(f"<tr><td></td><td>{e(t['time'])}</td><td>{e(t['what'])}</td></tr>")
    parts.append("</table>")
    parts.append(
        "<h2>Evidence (last iteration)</h2><table><tr><th>objective</th><th>version</th>"
        "<th>estimate</th><th>anytime-valid interval</th><th>verdict</th></tr>"
    )
    for o in d["objectives"]:
        for name, ev in o["versions"].items():
            interval = ev.get("interval")
            band = (
                f"[{describe.fmt(interval[0])}, {describe.fmt(interval[1])}]" if interval else "-"
            )
            verdict = describe.SHORT_VERDICT.get(str(ev.get("verdict")), str(ev.get("verdict")))
            why = "".join(f"<br><small>{e(w)}</small>" for w in ev.get("why") or [])
            parts.append(
                f"<tr><td>{e(o['metric'])} ({e(o['limits'])})</td><td>{e(name)}</td>"
                f"<td>{e(describe.fmt(ev.get('estimate')))}</td><td>{e(band)}</td>"
                f"<td class='{e(verdict)}'>{e(verdict)}{why}</td></tr>"
            )
    parts.append("</table>")
    if d["winner"]["why"]:
        parts.append(f"<p><b>Winner:</b> {e(str(d['winner']['why']))}</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write(source: Source, output: Path) -> None:
    try:
        output.write_text(render(source), encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot write {output}: {e.strerror}") from e


def run(args: argparse.Namespace) -> int:
    source = load(args)
    write(source, Path(args.output))
    print(f"wrote {args.output}: {len(source.history)} iterations")
    return 0
