"""`make faults`: the whole fault matrix in parallel shards, then one table.

Each shard is its own `python -m pytest` process (own Prometheus, own API servers) running
every n-th matrix case; each run appends its figures to a JSON-lines file, and this script
prints them per fault kind, then the one-line summary. The exit status is the shards'.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("runs", "faults", "deliveries", "promotions", "rollbacks", "failed")
FLAGS = ("stuck", "half_moved", "lost", "unauthorised")


def main(argv: list[str]) -> int:
    shards = int(os.environ.get("FAULTS_SHARDS") or 2)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        procs = []
        for i in range(shards):
            env = {
                **os.environ,
                "FAULTS_ALL": "1",
                "FAULTS_SHARD": f"{i}/{shards}",
                "FAULTS_RESULTS": str(Path(tmp) / f"shard-{i}.jsonl"),
            }
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            cmd += [*argv, "tests/faults/test_matrix.py"]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env))
        codes = [p.wait() for p in procs]
        rows = [
            json.loads(line)
            for f in sorted(Path(tmp).glob("shard-*.jsonl"))
            for line in f.read_text().splitlines()
        ]
    print(table(rows))
    print(f"wall time {time.monotonic() - started:.0f} s, {shards} shards")
    total = {k: sum(1 for r in rows if r[k]) for k in FLAGS}
    print(
        f"faults: {len(rows)} runs, {total['stuck']} stuck, {total['half_moved']} half-moved, "
        f"{total['lost']} lost, {total['unauthorised']} unauthorised moves"
    )
    return max(codes, default=0)


def table(rows: list[dict[str, object]]) -> str:
    by_fault: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in rows:
        counts = by_fault[str(r["fault"])]
        counts["runs"] += 1
        for k in COLUMNS[1:]:
            counts[k] += int(r[k])  # type: ignore[call-overload]
        for k in FLAGS:
            counts[k] += bool(r[k])
        counts["xfail"] += bool(r.get("xfail"))
    header = ("fault", *COLUMNS, "stuck", "half-moved", "lost", "unauth", "xfail")
    lines = [header]
    totals: collections.Counter[str] = collections.Counter()
    for fault in sorted(by_fault):
        counts = by_fault[fault]
        totals.update(counts)
        lines.append((fault, *(str(counts[k]) for k in (*COLUMNS, *FLAGS, "xfail"))))
    lines.append(("total", *(str(totals[k]) for k in (*COLUMNS, *FLAGS, "xfail"))))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
