"""`arbiter describe`, `watch`, `wait` and `report` against the Kubernetes API emulator.

Experiments are seeded with the status the functions write (tests.support.experiments);
the target InferenceService with the status KServe reports, so the split describe shows is
read back through the functions' own KServe backend. The cluster is found as kubectl finds
it: KUBECONFIG, the current context's namespace. The report is rendered by a real headless
Chromium (Debian's `chromium`, installed by `make os-deps`).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cli
from functions.core.resources import EXPERIMENT, KSERVE_ISVC
from functions.core.status import Outcome, Stage
from local.kubeapi import KubeApiServer
from tests.support.experiments import BASELINE, CANDIDATE, isvc, staged

pytest_plugins = ["tests.support.kube"]

NS = "arbiter-demo"
NAME = "sklearn-iris-canary"


@pytest.fixture
def cluster(kube: KubeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KubeApiServer:
    """The emulator as the current context of $KUBECONFIG, namespace arbiter-demo."""
    monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "config", NS)))
    put_isvc(kube, 30)
    return kube


def put_isvc(kube: KubeApiServer, percent: int) -> None:
    kube.seed(KSERVE_ISVC.group, KSERVE_ISVC.version, KSERVE_ISVC.plural, NS, isvc(percent))


def put(kube: KubeApiServer, obj: dict[str, Any]) -> dict[str, Any]:
    return kube.seed(EXPERIMENT.group, EXPERIMENT.version, EXPERIMENT.plural, NS, obj)


def arbiter(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("stage", "outcome", "shown"),
    [
        (Stage.PENDING, None, "Stage:       Pending, iteration 0 of 10"),
        (Stage.RUNNING, None, "Stage:       Running, iteration 4 of 10"),
        (Stage.COMPLETED, Outcome.PROMOTED, "Stage:       Completed (Promoted), iteration 6"),
        (Stage.FAILED, None, "Stage:       Failed, iteration 4 of 10"),
    ],
)
def test_describe_shows_each_stage(
    cluster: KubeApiServer,
    capsys: pytest.CaptureFixture[str],
    stage: Stage,
    outcome: Outcome | None,
    shown: str,
) -> None:
    put(cluster, staged(stage, 4 if outcome is None else 10, outcome=outcome))
    code, out, err = arbiter(capsys, "describe", NAME)
    assert (code, err) == (0, "")
    assert shown in out
    assert "Target:      arbiter-demo/sklearn-iris" in out
    if stage is Stage.FAILED:
        assert "Failed          True    TargetLost: the InferenceService was deleted" in out


def test_describe_reads_the_split_back_from_the_target(
    cluster: KubeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    put(cluster, staged(Stage.RUNNING, 4))  # status: 60/40; the InferenceService says 70/30
    code, out, _ = arbiter(capsys, "describe", NAME)
    assert code == 0
    assert (
        f"Split:       {BASELINE} 70%, {CANDIDATE} 30% "
        f"(read back from InferenceService {NS}/sklearn-iris)"
    ) in out
    assert f"status says {BASELINE} 60%, {CANDIDATE} 40%" in out
    # per version and objective: estimate, interval, verdict; the reason a verdict is open
    assert re.search(rf"{CANDIDATE}\s+0\.002225\s+\[0\.0009511, 0\.004116\]\s+\?", out)
    assert "the sequences still overlap the limit" in out
    assert "Decision:    continue (rule collecting-evidence)" in out
    assert "iteration 4: split 60/40" in out


def test_describe_json_and_yaml_for_scripts(
    cluster: KubeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    put(cluster, staged(Stage.COMPLETED, 10, outcome=Outcome.ROLLED_BACK, errors=5))
    code, out, _ = arbiter(capsys, "describe", NAME, "-o", "json")
    assert code == 0
    d = json.loads(out)
    assert (d["stage"], d["outcome"]) == ("Completed", "RolledBack")
    assert d["recommendation"]["action"] == "rollback"
    assert d["split"]["readBack"] == {BASELINE: 70, CANDIDATE: 30}
    error_rate = d["objectives"][0]
    assert error_rate["metric"] == "error-rate"
    assert error_rate["versions"][CANDIDATE]["verdict"] == "violated"
    code, out, _ = arbiter(capsys, "describe", NAME, "-o", "yaml")
    assert code == 0 and "outcome: RolledBack" in out


def test_describe_names_what_is_wrong(
    cluster: KubeApiServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    put(cluster, staged(Stage.RUNNING, 2))
    code, _, err = arbiter(capsys, "describe", NAME, "-n", "elsewhere")
    assert code == 2
    assert "experiment elsewhere/sklearn-iris-canary not found" in err
    code, _, err = arbiter(capsys, "describe", NAME, "--context", "nope")
    assert code == 2 and "nope" in err
    code, _, err = arbiter(capsys, "describe", "--kubeconfig", str(tmp_path / "missing"), NAME)
    assert code == 2 and "missing" in err and "Traceback" not in err
    code, _, err = arbiter(capsys, "describe")
    assert code == 2 and "name an Experiment" in err


def _later(seconds: float, action: Any) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _end(kube: KubeApiServer, outcome: Outcome | None) -> Any:
    stage = Stage.FAILED if outcome is None else Stage.COMPLETED
    return lambda: put(kube, staged(stage, 10, outcome=outcome, errors=5))


@pytest.mark.parametrize(
    ("outcome", "code"),
    [(Outcome.PROMOTED, 0), (Outcome.ROLLED_BACK, 1), (Outcome.ABORTED, 1), (None, 1)],
)
def test_watch_follows_until_the_end(
    cluster: KubeApiServer, capsys: pytest.CaptureFixture[str], outcome: Outcome | None, code: int
) -> None:
    put(cluster, staged(Stage.RUNNING, 3))
    thread = _later(0.5, _end(cluster, outcome))
    got, out, _ = arbiter(capsys, "watch", NAME, "--timeout", "60s")
    thread.join()
    assert got == code
    screens = out.split("\n\n")
    assert "Stage:       Running, iteration 3 of 10" in screens[0]
    final = "Failed" if outcome is None else f"Completed ({outcome.value})"
    assert f"Stage:       {final}" in screens[-1]


def test_watch_uses_a_watch_not_polling(
    cluster: KubeApiServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import kube as kube_cli

    reads: list[str] = []
    original = kube_cli.get_experiment
    monkeypatch.setattr(kube_cli, "get_experiment", lambda c, n: reads.append(n) or original(c, n))
    put(cluster, staged(Stage.RUNNING, 3))
    thread = _later(1.5, _end(cluster, Outcome.PROMOTED))
    assert arbiter(capsys, "watch", NAME, "--timeout", "60s")[0] == 0
    thread.join()
    assert reads == [NAME]  # read once; every change after came from the watch stream


@pytest.mark.parametrize(
    ("wanted", "outcome", "code"),
    [
        ("outcome=Promoted", Outcome.PROMOTED, 0),
        ("outcome=Promoted", Outcome.ROLLED_BACK, 1),
        ("stage=Completed", Outcome.ROLLED_BACK, 0),
        ("condition=Completed", Outcome.PROMOTED, 0),
    ],
)
def test_wait_exit_codes(
    cluster: KubeApiServer,
    capsys: pytest.CaptureFixture[str],
    wanted: str,
    outcome: Outcome,
    code: int,
) -> None:
    put(cluster, staged(Stage.RUNNING, 3))
    thread = _later(0.5, _end(cluster, outcome))
    got, _, err = arbiter(capsys, "wait", NAME, "--for", wanted, "--timeout", "60s")
    thread.join()
    assert got == code, err
    if code == 1:
        assert f"ended Completed ({outcome.value}) without {wanted}" in err


def test_wait_holds_already_times_out_and_rejects_bad_arguments(
    cluster: KubeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    put(cluster, staged(Stage.RUNNING, 3))
    assert arbiter(capsys, "wait", NAME, "--for", "stage=Running")[0] == 0
    started = time.monotonic()
    code, _, err = arbiter(capsys, "wait", NAME, "--for", "outcome=Promoted", "--timeout", "1s")
    assert code == 3 and "timed out waiting for outcome=Promoted" in err
    assert time.monotonic() - started < 15
    for bad in (
        ["--for", "outcome=Won"],
        ["--for", "colour=red"],
        ["--for", "stage=Running", "--timeout", "soon"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["wait", NAME, *bad])
        assert exit_info.value.code == 2
    capsys.readouterr()


def test_wait_on_a_deleted_experiment_exits_1(
    cluster: KubeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubernetes import client

    put(cluster, staged(Stage.RUNNING, 3))
    api = cluster.api_client()

    def delete() -> None:
        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            EXPERIMENT.group, EXPERIMENT.version, NS, EXPERIMENT.plural, NAME
        )

    thread = _later(0.5, delete)
    code, _, err = arbiter(capsys, "wait", NAME, "--for", "outcome=Promoted", "--timeout", "60s")
    thread.join()
    api.close()
    assert code == 1 and "was deleted" in err


# --- the report, in a real browser -----------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[str]:
    path = subprocess.run(
        ["sh", "-c", "command -v chromium"], capture_output=True, text=True, check=False
    )
    assert path.returncode == 0, "chromium is missing: run `make os-deps`"
    yield path.stdout.strip()


def _browser(chromium: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, "--headless", "--disable-gpu", "--no-sandbox", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.slow
def test_report_from_the_cluster_renders_in_chromium(
    cluster: KubeApiServer, capsys: pytest.CaptureFixture[str], tmp_path: Path, chromium: str
) -> None:
    put(cluster, staged(Stage.COMPLETED, 10, outcome=Outcome.PROMOTED))
    page = tmp_path / "report.html"
    code, out, _ = arbiter(capsys, "report", NAME, "-o", str(page))
    assert code == 0 and "6 iterations" in out
    text = page.read_text()
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", text)  # nothing fetched
    dom = _browser(chromium, "--dump-dom", page.as_uri()).stdout
    assert dom.count("<svg") == 3  # the split and one plot per objective
    assert dom.count('class="estimate"') == 4  # two versions x two objectives
    assert dom.count('class="band"') == 4 and dom.count('class="limit"') == 2
    assert dom.count('class="split"') == 2
    assert "winner-conclusive" in dom and "Evidence (last iteration)" in dom
    shot = tmp_path / "report.png"
    logged = _browser(
        chromium,
        "--enable-logging=stderr",
        "--v=0",
        f"--screenshot={shot}",
        "--window-size=820,1400",
        page.as_uri(),
    )
    assert shot.stat().st_size > 20_000  # a page with plots, not a blank one
    console = [
        line for line in logged.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
    ]
    assert console == []
