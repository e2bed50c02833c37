"""The operating commands without a cluster: describe and report on files and run folders,
`--version`, shell completion, `analyze --exit-code`, the kubectl plugin name, and the
bound on the status history that report plots."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Final

import pytest
import yaml

from analytics.recommendation import Action, Recommendation
from cli import completion, main
from cli.report import from_run_folder, timeline
from functions.core import status as st
from functions.core.status import Outcome, Stage
from tests.support.experiments import BASELINE, CANDIDATE, T0, staged

ROOT: Final = Path(__file__).resolve().parents[3]
BIN: Final = Path(sys.executable).parent


def _file(tmp_path: Path, doc: object) -> str:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_describe_a_file_says_the_split_is_from_the_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = staged(Stage.COMPLETED, 10, outcome=Outcome.PROMOTED)
    assert main(["describe", "-f", _file(tmp_path, doc)]) == 0
    out = capsys.readouterr().out
    assert f"Split:       {BASELINE} 0%, {CANDIDATE} 100% (as the status records it)" in out
    assert f"Winner:      {CANDIDATE}: candidate {CANDIDATE} satisfies all objectives" in out
    assert "Decision:    promote sklearn-iris-predictor-00002 (rule winner-conclusive)" in out
    assert "Completed=True (Promoted)" in out
    assert len(out.splitlines()) <= 40  # one screen


def test_describe_refuses_a_file_that_is_not_an_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["describe", "-f", _file(tmp_path, {"kind": "Service"})]) == 2
    assert "not an Experiment" in capsys.readouterr().err
    assert main(["describe", "x", "-f", _file(tmp_path, staged(Stage.RUNNING, 1))]) == 2
    assert "not both" in capsys.readouterr().err


def test_report_from_a_run_folder_uses_the_status_snapshots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    final = staged(Stage.COMPLETED, 10, outcome=Outcome.PROMOTED)
    snapshots = []
    for i in range(1, 7):
        snap = staged(Stage.RUNNING, i)["status"]
        snap.pop("history")  # a run folder's snapshots need none: each is one iteration
        snapshots += [{"at": i, "status": snap}, {"at": i + 0.5, "status": snap}]
    (tmp_path / "status-history.json").write_text(json.dumps(snapshots))
    (tmp_path / "experiment.json").write_text(json.dumps(final))
    source = from_run_folder(tmp_path)
    assert [h["iteration"] for h in source.history] == [1, 2, 3, 4, 5, 6]
    assert source.history == st.Status.read(final).history  # the same entries assess writes
    page = tmp_path / "report.html"
    assert main(["report", "-f", str(tmp_path), "-o", str(page)]) == 0
    assert "6 iterations" in capsys.readouterr().out
    assert page.read_text().count("<svg") == 3
    assert main(["report", "-f", str(tmp_path / "nothing"), "-o", str(page)]) == 2


def test_the_timeline_names_what_changed() -> None:
    history = st.Status.read(staged(Stage.COMPLETED, 10, outcome=Outcome.PROMOTED)).history
    rows = timeline(history, [BASELINE, CANDIDATE], ["error-rate", "latency"])
    assert rows[0]["what"].startswith(f"split {BASELINE} 90%, {CANDIDATE} 10%")
    assert rows[-1]["what"] == (
        f"{CANDIDATE} error-rate satisfied; promote (rule winner-conclusive)"
    )


def test_version_and_the_kubectl_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == "arbiter 0.1.0\n"
    plugin = BIN / "kubectl-arbiter"
    assert plugin.is_file(), "reinstall (make install) to get the kubectl-arbiter script"
    run = subprocess.run([str(plugin), "--help"], capture_output=True, text=True, check=True)
    assert "describe" in run.stdout and "kubectl-arbiter" in run.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_parse_and_complete(shell: str) -> None:
    from cli import build_parser

    text = completion.script(build_parser(), shell)
    assert "describe" in text and "--kubeconfig" in text and "--for" in text
    if shutil.which(shell) is None:
        assert shell == "zsh"  # bash is always there; zsh may not be installed
        return
    subprocess.run([shell, "-n"], input=text, text=True, check=True)
    if shell == "bash":
        # What bash offers after `arbiter wa` and after `arbiter wait --f`.
        probe = text + (
            'COMP_WORDS=(arbiter wa); COMP_CWORD=1; _arbiter; echo "${COMPREPLY[*]}"\n'
            'COMP_WORDS=(arbiter wait --f); COMP_CWORD=2; _arbiter; echo "${COMPREPLY[*]}"\n'
        )
        out = subprocess.run(["bash"], input=probe, capture_output=True, text=True, check=True)
        assert out.stdout.splitlines() == ["watch wait", "--filename --for"]


@pytest.mark.parametrize(
    ("sample", "errors", "code"),
    [(None, 1, 0), (None, 6, 1)],
)
def test_analyze_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sample: None, errors: float, code: int
) -> None:
    doc = staged(Stage.RUNNING, 4, errors=errors)
    doc["status"].pop("recommendation", None)
    path = _file(tmp_path, doc)
    assert main(["analyze", path, "--seed", "1", "--exit-code"]) == code
    assert main(["analyze", path, "--seed", "1"]) == 0  # without the flag: always 0
    (tmp_path / "bad.yaml").write_text("kind: [")
    assert main(["analyze", str(tmp_path / "bad.yaml"), "--exit-code"]) == 2
    capsys.readouterr()


@pytest.mark.slow
def test_the_history_stays_bounded_after_ten_thousand_iterations() -> None:
    """etcd refuses objects over 1.5 MiB; the status must stay at most 64 KiB however long
    an experiment runs: 10,000 iterations of 2 versions; 17 versions of 6 objectives
    (whose entries reach the byte bound within a few iterations, so 500 show it); and 8
    versions of an A/B/n, whose 28 pairwise reward tests (the most kept) take their room
    from the history."""
    from analytics.conditional import PairTest

    doc = staged(Stage.RUNNING, 4)
    status = st.Status.read(doc)
    evidence = dict(status.analysis or {})["evidence"]
    rec = Recommendation(Action.CONTINUE, None, "collecting-evidence", "continue")
    many = [f"version-{i:02d}-with-a-long-revision-name-00001" for i in range(17)]
    wide = {"versions": {v: evidence["versions"][BASELINE] * 3 for v in many}}
    eight = many[:8]
    mid = {"versions": {v: evidence["versions"][BASELINE] * 3 for v in eight}}
    # Pairwise tests with every number at full precision, as a long run leaves them.
    test = PairTest()
    for i in range(1, 301):
        test = test.fold(i, 1000 + i % 7, 10_000 + i % 13, 1100 + i % 5, 10_000 + i % 11)
    pairs = {"conversion": {(a, b): test for k, a in enumerate(eight) for b in eight[k + 1 :]}}
    runs = (
        ([BASELINE, CANDIDATE], evidence, 10_000, status),
        (many, wide, 500, status),
        (eight, mid, 500, replace(status, reward_tests=pairs)),
    )
    for names, ev, iterations, before in runs:
        history: tuple[dict[str, object], ...] = ()
        reserved = st.tests_size(before)
        for i in range(1, iterations + 1):
            split = {n: (i + k) % 100 for k, n in enumerate(names)}
            entry = st.history_entry(i, T0 + timedelta(seconds=i), names, split, ev, rec)
            history = st.with_history(history, entry, reserved)  # type: ignore[assignment]
        full = replace(before, history=history, completed_iterations=iterations)
        size = len(json.dumps(full.to_dict()))
        assert size <= 64 * 1024, size
        kept = [h["iteration"] for h in history]
        assert kept == list(range(iterations - len(kept) + 1, iterations + 1))
        # Two versions: the last 200 iterations; more: as many as fit the byte bound.
        assert len(kept) == (st.HISTORY_MAX_ENTRIES if len(names) == 2 else len(kept))
        assert len(kept) >= 5
    assert len(full.reward_tests["conversion"]) == 28 and reserved > 15_000
    # A redelivered iteration replaces its entry instead of adding one.
    again = st.with_history(history, {**history[-1], "action": "promote"})
    assert len(again) == len(history) and again[-1]["action"] == "promote"
