"""What `arbiter run` shows: one table row per iteration, a progress bar, the verdict.

Everything here formats an Experiment's status (as the functions wrote it) into text, so
the same view reads a local run and a cluster. `LiveView` prints rows as iterations land
and, on a terminal, redraws a progress bar for the iteration under way. With several
experiments, `ManyView` shows one line per experiment as it ends, the counts per stage as
they change, and a final report of one line each and the promises kept.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

_BAR = 24


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "-" if x is None else str(x)


def _short(metric: str) -> str:
    return metric.rpartition("/")[2]


def _objective_cells(status: Mapping[str, Any], versions: Sequence[str]) -> list[str]:
    """Per objective: each version's estimate and verdict, in version order."""
    evidence = ((status.get("analysis") or {}).get("evidence") or {}).get("versions") or {}
    by_metric: dict[str, list[str]] = {}
    for v in versions:
        for item in evidence.get(v) or []:
            verdict = {"satisfied": "ok", "violated": "FAIL", "undecided": "?"}.get(
                str(item.get("verdict")), str(item.get("verdict"))
            )
            name = _short(str(item.get("metric")))
            if item.get("bucketBound") is not None:
                name += f">{_fmt(item['bucketBound'])}"  # the share above the bucket bound
            by_metric.setdefault(name, []).append(f"{_fmt(item.get('estimate'))} {verdict}")
    return [f"{name} {' | '.join(cells)}" for name, cells in by_metric.items()]


def versions_of(status: Mapping[str, Any]) -> list[str]:
    return [str(v.get("name")) for v in status.get("versions") or []]


def header(status: Mapping[str, Any]) -> str:
    names = versions_of(status)
    legend = ", ".join(f"v{i + 1}={n}" for i, n in enumerate(names))
    split = "/".join(f"v{i + 1}" for i in range(len(names)))
    width = 8 + 4 * len(names)
    return (
        f"versions: {legend}\niter  {'split ' + split:<{width}}  objectives: estimate and "
        "verdict per version (ok, FAIL, ? undecided)"
    )


def row(status: Mapping[str, Any]) -> str:
    """One line for the iteration the status records."""
    names = versions_of(status)
    weights = {w["name"]: w["value"] for w in status.get("currentWeightDistribution") or []}
    split = "/".join(_fmt(weights.get(n)) for n in names) if weights else "-"
    objectives = "   ".join(_objective_cells(status, names))
    return f"{status.get('completedIterations', 0):>4}  {split:<{8 + 4 * len(names)}}  {objectives}"


def progress(fraction: float, label: str) -> str:
    filled = max(0, min(_BAR, round(fraction * _BAR)))
    return f"[{'#' * filled}{'.' * (_BAR - filled)}] {label}"


def verdict(obj: Mapping[str, Any]) -> str:
    """The final status, as a person reads it."""
    status = obj.get("status") or {}
    winner = ((status.get("analysis") or {}).get("winnerAssessment") or {}).get("data") or {}
    rec = status.get("recommendation") or {}
    lines = [
        f"stage:      {status.get('stage')}",
        f"outcome:    {status.get('outcome', '-')}",
        f"winner:     {winner.get('winner', '-') if winner.get('winnerFound') else 'none'}",
        f"promote:    {status.get('versionRecommendedForPromotion', '-')}",
        f"rule:       {rec.get('rule', '-')}",
        f"why:        {status.get('message', '')}",
        "split:      "
        + ", ".join(
            f"{w['name']}={w['value']}%" for w in status.get("currentWeightDistribution") or []
        ),
    ]
    return "\n".join(lines)


class LiveView:
    """Prints rows as iterations complete; a progress bar in between on a terminal."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self._out = out
        self._tty = out.isatty()
        self._printed = -1
        self._header = False
        self._stage = ""

    def update(self, obj: Mapping[str, Any], fraction: float | None = None) -> None:
        status = obj.get("status") or {}
        stage = str(status.get("stage") or "Pending")
        if stage != self._stage:
            self._line(f"stage {stage}: {status.get('message', '')}")
            self._stage = stage
        done = int(status.get("completedIterations") or 0)
        if versions_of(status) and not self._header and stage in ("Running", "Finishing"):
            self._line(header(status))
            self._header = True
        if self._header and done > self._printed and (done > 0 or self._printed < 0):
            self._line(row(status))
            self._printed = done
        if self._tty and fraction is not None and stage == "Running":
            self._out.write("\r" + progress(fraction, f"iteration {done + 1}") + "\x1b[K")
            self._out.flush()

    def _line(self, text: str) -> None:
        if self._tty:
            self._out.write("\r\x1b[K")
        self._out.write(text + "\n")
        self._out.flush()


def broken_promises(obj: Mapping[str, Any], expect: Mapping[str, Any]) -> list[str]:
    """Where the final status differs from what the sample promised."""
    status = obj.get("status") or {}
    actual = {
        "outcome": status.get("outcome"),
        "version": status.get("versionRecommendedForPromotion"),
        "rule": (status.get("recommendation") or {}).get("rule"),
    }
    return [
        f"{k}: promised {v!r}, got {actual.get(k)!r}"
        for k, v in expect.items()
        if actual.get(k) != v
    ]


def promise(obj: Mapping[str, Any], expect: Mapping[str, Any]) -> str:
    if not expect:
        return "promise:    (the sample promises no outcome)"
    broken = broken_promises(obj, expect)
    return "promise:    kept" if not broken else "promise:    BROKEN: " + "; ".join(broken)


def _stage(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("status") or {}).get("stage") or "Pending")


_TERMINAL = ("Completed", "Failed")


def kept(obj: Mapping[str, Any] | None, expect: Mapping[str, Any]) -> bool:
    """Whether an experiment ended as promised (Completed, and no promise broken)."""
    return obj is not None and _stage(obj) == "Completed" and not broken_promises(obj, expect)


def one_line(key: str, obj: Mapping[str, Any] | None, expect: Mapping[str, Any]) -> str:
    """An experiment in one line: stage, outcome, version, iterations, the promise."""
    status = (obj or {}).get("status") or {}
    stage = _stage(obj)
    if stage not in _TERMINAL:
        verdict_ = "STUCK"
    elif not expect:
        verdict_ = "no promise"
    else:
        broken = broken_promises(obj or {}, expect)
        verdict_ = "kept" if not broken else "BROKEN " + "; ".join(broken)
    return (
        f"{key:<34} {stage:<10} {status.get('outcome') or '-':<11} "
        f"{status.get('versionRecommendedForPromotion') or '-':<24} "
        f"{status.get('completedIterations', 0):>3} iter  {verdict_}"
    )


class ManyView:
    """Several experiments at once: a line as each ends, the stage counts as they change."""

    def __init__(self, out: TextIO, expects: Mapping[str, Mapping[str, Any]], began: float) -> None:
        self._out = out
        self._expects = dict(expects)
        self._began = began
        self._ended: set[str] = set()
        self._counts: tuple[tuple[str, int], ...] = ()

    def counts(self, objs: Mapping[str, Mapping[str, Any]]) -> str:
        by_stage = Counter(_stage(objs.get(k)) for k in self._expects)
        done = sum(by_stage[s] for s in _TERMINAL)
        active = ", ".join(
            f"{n} {s.lower()}" for s, n in sorted(by_stage.items()) if s not in _TERMINAL
        )
        return f"[{active + '; ' if active else ''}done {done}/{len(self._expects)}]"

    def update(self, objs: Mapping[str, Mapping[str, Any]]) -> None:
        at = f"{time.monotonic() - self._began:6.0f}s"
        ended = [
            k for k in self._expects if k not in self._ended and _stage(objs.get(k)) in _TERMINAL
        ]
        for key in ended:
            self._ended.add(key)
            self._out.write(f"{at}  {one_line(key, objs.get(key), self._expects[key])}\n")
        counts = tuple(sorted(Counter(_stage(objs.get(k)) for k in self._expects).items()))
        if counts != self._counts:
            self._counts = counts
            self._out.write(f"{at}  {self.counts(objs)}\n")
        self._out.flush()

    def report(self, objs: Mapping[str, Mapping[str, Any]]) -> str:
        lines = [one_line(k, objs.get(k), e) for k, e in sorted(self._expects.items())]
        stages = {k: _stage(objs.get(k)) for k in self._expects}
        promised = [k for k, e in self._expects.items() if e]
        kept_ = [k for k in promised if kept(objs.get(k), self._expects[k])]
        stuck = [k for k, s in stages.items() if s not in _TERMINAL]
        broken = [k for k in promised if k not in kept_ and k not in stuck]
        failed = [k for k, s in stages.items() if s == "Failed"]
        lines.append(
            f"experiments {len(self._expects)}: promised {len(promised)}, kept {len(kept_)}, "
            f"broken {len(broken)}, stuck {len(stuck)} (failed {len(failed)})"
        )
        return "\n".join(lines)

    def all_kept(self, objs: Mapping[str, Mapping[str, Any]]) -> bool:
        return all(kept(objs.get(k), e) for k, e in self._expects.items())
