"""`arbiter analyze`: the samples' documented outcomes, the output contract and bad input.

Most tests call `cli.main(argv)` in-process; the `slow` ones run the installed
console script as a real subprocess, as a person at a shell would.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from analytics.conditional import RatioTest
from cli import analyze as analyze_command
from cli import main
from cli.analyze import MAX_DEPTH, MAX_FILE_BYTES

ROOT: Final = Path(__file__).resolve().parents[3]
SAMPLES_DIR: Final = ROOT / "samples" / "analysis"
SAMPLES: Final = sorted(SAMPLES_DIR.glob("*.y*ml"))
CONSOLE_SCRIPT: Final = Path(sys.executable).with_name("arbiter")

# An A/B/n whose posterior sampling shows in the weights: few trials, close rewards and a
# step cap that does not bind, so different seeds give different splits.
SEED_SENSITIVE: Final = """\
apiVersion: arbiter.dev/v1alpha1
kind: Experiment
metadata: {name: seed-sensitive, namespace: test}
spec:
  target: test/model
  strategy:
    testingPattern: A/B/n
    weights: {maxCandidateWeight: 100, maxCandidateWeightIncrement: 100}
  criteria:
    rewards: [{metric: conversion, preferredDirection: High}]
  duration: {intervalSeconds: 10, iterationsPerLoop: 10}
  versionInfo:
    baseline: {name: v1}
    candidates: [{name: v2}, {name: v3}]
status:
  completedIterations: 1
  currentWeightDistribution: [{name: v1, value: 34}, {name: v2, value: 33}, {name: v3, value: 33}]
  analysis:
    aggregatedMetrics:
      data:
        conversion:
          data:
            v1: {events: 10, trials: 100}
            v2: {events: 11, trials: 100}
            v3: {events: 12, trials: 100}
"""


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `arbiter ARGV`; argparse's exits count as codes.

    Any other exception propagates: a traceback is a failure of the CLI.
    """
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def analyze(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run_cli(capsys, "analyze", *argv)
    assert (code, err) == (0, ""), f"exit {code}: {err}"
    data: dict[str, Any] = json.loads(out)
    return data


def sample_document(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return document


def version_names(document: dict[str, Any]) -> list[str]:
    info = document["spec"]["versionInfo"]
    return [info["baseline"]["name"]] + [c["name"] for c in info.get("candidates", [])]


def weights_of(result: dict[str, Any]) -> dict[str, int]:
    return {w["name"]: w["value"] for w in result["weights"]}


def test_the_samples_are_there() -> None:
    # One per testing pattern, plus an iter8 experiment brought over unchanged.
    patterns = {sample_document(p)["spec"]["strategy"]["testingPattern"] for p in SAMPLES}
    assert {"Canary", "Conformance", "A/B", "A/B/n"} <= patterns, patterns
    assert set(EXPECTED) == {p.name for p in SAMPLES}, "every sample needs its documented outcome"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_sample_prints_the_analysis_contract(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = sample_document(path)
    names = version_names(document)
    n_objectives = len(document["spec"]["criteria"].get("objectives", []))
    result = analyze(capsys, str(path), "--seed", "1")

    assessments = result["versionAssessments"]
    assert list(assessments) == names
    for flags in assessments.values():
        assert len(flags) == n_objectives
        assert all(isinstance(f, bool) for f in flags)

    winner = result["winnerAssessment"]
    assert isinstance(winner["winnerFound"], bool)
    assert set(winner["bestVersions"]) <= set(names)
    # As in iter8's WinnerAssessmentData: `winner` is there exactly when one was found.
    assert ("winner" in winner) == winner["winnerFound"]
    if winner["winnerFound"]:
        assert winner["winner"] in names

    if document["spec"]["strategy"]["testingPattern"] == "Conformance":
        assert result["weights"] is None
    else:
        assert [w["name"] for w in result["weights"]] == names
        values = [w["value"] for w in result["weights"]]
        assert all(isinstance(v, int) and 0 <= v <= 100 for v in values)
        assert sum(values) == 100

    recommendation = result["recommendation"]
    assert recommendation["action"] in {"continue", "promote", "rollback"}
    assert recommendation["rule"] and recommendation["message"]
    if recommendation["action"] != "continue":
        assert recommendation["version"] in names
    assert result["seed"] == 1


def _canary(r: dict[str, Any]) -> None:
    # "the candidate serves fewer errors ... Arbiter promotes it now, without waiting"
    candidate = "sklearn-iris-predictor-00002"
    assert r["recommendation"]["action"] == "promote"
    assert r["recommendation"]["version"] == candidate
    assert r["recommendation"]["rule"] == "winner-conclusive"
    assert r["winnerAssessment"]["winner"] == candidate
    assert r["versionAssessments"][candidate] == [True, True]
    assert weights_of(r) == {"sklearn-iris-predictor-00001": 0, candidate: 100}


def _ab(r: dict[str, Any]) -> None:
    # "the one with more user engagement wins, provided it satisfies the error-rate objective"
    assert r["recommendation"]["action"] == "promote"
    assert r["recommendation"]["version"] == "flowers-v2"
    assert r["recommendation"]["rule"] == "winner-conclusive"
    assert r["winnerAssessment"] == {
        "winnerFound": True,
        "winner": "flowers-v2",
        "bestVersions": ["flowers-v2"],
    }


def _abn(r: dict[str, Any]) -> None:
    # "flowers-v4 ... breaks the 1% error SLO, so it is out of the running; among the rest
    # the evidence is not yet conclusive ... within the caps (+10 per step, 90 together)"
    assert r["recommendation"]["action"] == "continue"
    assert r["versionAssessments"]["flowers-v4"] == [False]
    assert all(r["versionAssessments"][v] == [True] for v in ("flowers-v1", "flowers-v2"))
    assert r["winnerAssessment"]["winnerFound"] is False
    assert "flowers-v4" not in r["winnerAssessment"]["bestVersions"]
    weights = weights_of(r)
    assert weights["flowers-v4"] == 0
    current = {"flowers-v1": 40, "flowers-v2": 20, "flowers-v3": 20, "flowers-v4": 20}
    candidates = [v for v in weights if v != "flowers-v1"]
    assert all(weights[v] <= current[v] + 10 for v in candidates), weights
    assert sum(weights[v] for v in candidates) <= 90, weights


def _conformance(r: dict[str, Any]) -> None:
    # "The error rate is clearly within its limit but the mean latency ... continue."
    assert r["recommendation"]["action"] == "continue"
    assert r["versionAssessments"] == {"sklearn-iris": [True, False]}
    assert r["winnerAssessment"]["winnerFound"] is False
    assert r["weights"] is None


def _iter8_canary(r: dict[str, Any]) -> None:
    # "Point values get iter8's plain comparison ... runs all its iterations before promoting"
    assert r["recommendation"]["action"] == "continue"
    assert r["recommendation"]["rule"] == "collecting-evidence"
    assert r["versionAssessments"] == {"default": [True, True], "canary": [True, True]}
    assert r["winnerAssessment"]["winner"] == "canary"
    assert weights_of(r) == {"default": 60, "canary": 40}


EXPECTED: Final = {
    "canary.yaml": _canary,
    "ab.yaml": _ab,
    "abn.yaml": _abn,
    "conformance.yaml": _conformance,
    "iter8-canary.yaml": _iter8_canary,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_sample_has_the_outcome_its_header_documents(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    EXPECTED[name](analyze(capsys, str(SAMPLES_DIR / name), "--seed", "1"))


def test_the_output_does_not_depend_on_the_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "abn.yaml"
    path.write_text(SEED_SENSITIVE, encoding="utf-8")

    def output(seed: int) -> str:
        code, out, err = run_cli(capsys, "analyze", str(path), "--seed", str(seed))
        assert (code, err) == (0, "")
        return out

    assert output(7) == output(7)
    # A/B/n weights come from the deterministic top-two rule, not from posterior draws: a
    # redelivered event, or another seed, gives the same split.
    splits = {json.dumps(json.loads(output(seed))["weights"]) for seed in range(1, 6)}
    assert len(splits) == 1, splits


def test_without_a_seed_the_one_used_is_printed_and_reproduces_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "abn.yaml"
    path.write_text(SEED_SENSITIVE, encoding="utf-8")
    first = analyze(capsys, str(path))
    assert isinstance(first["seed"], int)
    assert analyze(capsys, str(path), "--seed", str(first["seed"])) == first


def test_standard_input_is_read_for_a_dash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = SAMPLES_DIR / "canary.yaml"
    from_file = analyze(capsys, str(path), "--seed", "1")
    monkeypatch.setattr(sys, "stdin", io.StringIO(path.read_text(encoding="utf-8")))
    assert analyze(capsys, "-", "--seed", "1") == from_file


def test_json_is_read_as_well_as_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = SAMPLES_DIR / "ab.yaml"
    as_json = tmp_path / "ab.json"
    as_json.write_text(json.dumps(sample_document(path)), encoding="utf-8")
    assert analyze(capsys, str(as_json), "--seed", "1") == analyze(capsys, str(path), "--seed", "1")


def _two_candidates(document: dict[str, Any]) -> None:
    document["spec"]["versionInfo"]["candidates"].append({"name": "another"})


def _bad_limit(document: dict[str, Any]) -> None:
    document["spec"]["criteria"]["objectives"][0]["upperLimit"] = "one percent"


def _counts_inverted(document: dict[str, Any]) -> None:
    data = document["status"]["analysis"]["aggregatedMetrics"]["data"]["error-rate"]["data"]
    data["sklearn-iris-predictor-00002"] = {"events": 10, "trials": 5}


SPEC_ERRORS: Final = {
    "candidates": (
        _two_candidates,
        "spec.versionInfo.candidates: Canary needs exactly 1 candidate, got 2",
    ),
    "limit": (_bad_limit, "spec.criteria.objectives[0].upperLimit: expected a number"),
    "counts": (
        _counts_inverted,
        "status.analysis.aggregatedMetrics.data.error-rate.data.sklearn-iris-predictor-00002:"
        " events (10.0) exceed trials (5.0)",
    ),
}


@pytest.mark.parametrize("case", sorted(SPEC_ERRORS))
def test_a_spec_error_names_the_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    change, problem = SPEC_ERRORS[case]
    document = sample_document(SAMPLES_DIR / "canary.yaml")
    change(document)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    code, out, err = run_cli(capsys, "analyze", str(path))
    assert (code, out) == (2, "")
    # A header naming the file, then one line per problem, each starting with its field.
    header, *problems = err.rstrip("\n").split("\n")
    assert header == f"arbiter analyze: {path} is not a valid Experiment:"
    assert len(problems) == 1, err
    assert problems[0].startswith("  " + problem), err
    assert "Traceback" not in err


def _missing(tmp_path: Path) -> str:
    return str(tmp_path / "missing.yaml")


def _directory(tmp_path: Path) -> str:
    return str(tmp_path)


def _file(text: str | bytes) -> Callable[[Path], str]:
    def make(tmp_path: Path) -> str:
        path = tmp_path / "experiment.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return str(path)

    return make


BAD_FILES: Final = {
    "missing": (_missing, "cannot read {path}: No such file or directory"),
    "directory": (_directory, "cannot read {path}: Is a directory"),
    "invalid-yaml": (_file("spec: [1, 2\n"), "{path}: not valid YAML or JSON at line 2"),
    "empty": (_file(""), "{path}: the file is empty"),
    "only-comments": (_file("# nothing here\n"), "{path}: the file is empty"),
    "binary": (_file(b"\xff\xfe\x00kind"), "{path}: not a text file"),
    "two-experiments": (
        _file("kind: Experiment\n---\nkind: Experiment\n"),
        "{path}: expected one Experiment document, found 2",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_file_that_is_no_experiment_gets_one_line_and_exit_code_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, message = BAD_FILES[case]
    path = make(tmp_path)
    code, out, err = run_cli(capsys, "analyze", path)
    assert (code, out) == (2, "")
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("arbiter analyze: " + message.format(path=path)), err


@pytest.mark.parametrize(
    ("text", "problem"),
    [("- a\n- b\n", "must be an object, got list"), ("just words\n", "must be an object, got str")],
    ids=["list", "scalar"],
)
def test_a_document_that_is_no_mapping_is_named(
    text: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(text, encoding="utf-8")
    code, out, err = run_cli(capsys, "analyze", str(path))
    assert (code, out) == (2, "")
    assert err == f"arbiter analyze: {path} is not a valid Experiment:\n  (document): {problem}\n"


def test_bad_standard_input_is_called_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, out, err = run_cli(capsys, "analyze", "-")
    assert (code, out, err) == (2, "", "arbiter analyze: standard input: the file is empty\n")


def test_a_seed_that_is_no_integer_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "analyze", str(SAMPLES_DIR / "canary.yaml"), "--seed", "x")
    assert (code, out) == (2, "")
    assert err.rstrip("\n").split("\n")[-1] == (
        "arbiter analyze: error: argument --seed: must be a non-negative integer, got 'x'"
    )


def test_a_negative_seed_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "analyze", str(SAMPLES_DIR / "canary.yaml"), "--seed", "-1")
    assert (code, out) == (2, "")
    assert "--seed" in err


def run_console_script(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert CONSOLE_SCRIPT.is_file(), f"{CONSOLE_SCRIPT} missing: run `make install`"
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_the_console_script_analyses_standard_input(capsys: pytest.CaptureFixture[str]) -> None:
    path = SAMPLES_DIR / "abn.yaml"
    done = run_console_script("analyze", "-", "--seed", "3", stdin=path.read_text(encoding="utf-8"))
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout) == analyze(capsys, str(path), "--seed", "3")


@pytest.mark.slow
def test_the_console_script_reports_bad_input_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text("- not\n- an experiment\n", encoding="utf-8")
    done = run_console_script("analyze", str(path))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"arbiter analyze: {path} is not a valid Experiment:\n")
    assert "Traceback" not in done.stderr


# --- hostile files: refused by a limit checked before the work, exit 2, short stderr -------


def _alias_bomb() -> str:
    """ "Billion laughs": nine levels of nine aliases each, 9**9 strings once expanded."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "kind: Experiment\n" + "\n".join(lines) + "\n"


def _refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str | bytes, words: str
) -> str:
    path = tmp_path / "hostile.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    code, out, err = run_cli(capsys, "analyze", str(path))
    assert (code, out) == (2, ""), err
    assert words in err, err
    assert err.startswith(f"arbiter analyze: {path}")
    assert len(err.encode()) < 2048 and "Traceback" not in err
    return err


def test_an_alias_bomb_is_refused_at_the_first_alias(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refused(capsys, tmp_path, _alias_bomb(), "YAML aliases (*name) are not accepted")
    # Line 3 holds the first alias: nothing after it was composed, let alone expanded.
    assert "at line 3, column 10" in err


def test_a_single_alias_is_refused_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, tmp_path, "kind: Experiment\na: &x 1\nb: *x\n", "aliases")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 500 + "]" * 500,
        '{"a": ' * 500 + "1" + "}" * 500,
        "".join(f"{' ' * i}a:\n" for i in range(500)),
    ],
    ids=["yaml-flow", "json", "yaml-block"],
)
def test_nesting_500_deep_is_refused_at_the_limit(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refused(capsys, tmp_path, text, f"nested more than {MAX_DEPTH} levels deep")
    assert "RecursionError" not in err


def test_nesting_within_the_limit_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 63 lists inside the document's mapping: 64 levels, the limit itself.
    _refused(capsys, tmp_path, "x: " + "[" * 63 + "]" * 63 + "\n", "is not a valid Experiment")


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("a file over the limit reached the YAML loader")

    monkeypatch.setattr(analyze_command.yaml, "load_all", no_parsing)
    text = b"kind: Experiment\nx: '" + b"y" * MAX_FILE_BYTES + b"'\n"
    err = _refused(capsys, tmp_path, text, "is larger than the limit of 2 MiB (2.0 MiB)")
    assert err.count("\n") == 1


def test_standard_input_over_the_size_limit_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"#" * (MAX_FILE_BYTES * 3)), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = run_cli(capsys, "analyze", "-")
    assert (code, out) == (2, "")
    assert err == "arbiter analyze: standard input is larger than the limit of 2 MiB\n"
    # Read no further than the limit and one byte.
    assert stdin.buffer.tell() == MAX_FILE_BYTES + 1


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("kind: Experiment\nx: " + "1" * 5000 + "\n", "an integer of 5000 digits; at most 1000"),
        ("kind: Experiment\nx: 0000-01-01\n", "year 0 is out of range"),
        ("kind: Experiment\nx: '" + "é" * 100_000 + "\n", "not valid YAML or JSON at line 3"),
    ],
    ids=["digits", "year-0", "unterminated"],
)
def test_a_scalar_python_cannot_build_is_a_short_message(
    text: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _refused(capsys, tmp_path, text, words)


def test_numbers_without_bounds_are_refused_with_the_field_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load(SEED_SENSITIVE)
    doc["spec"]["duration"]["intervalSeconds"] = 100_000_000_000_000
    doc["spec"]["criteria"]["objectives"] = [
        {"metric": "error-rate", "upperLimit": int("9" * 400)},
        {"metric": "conversion", "upperLimit": -0.5},
        {"metric": "Not_A_Name", "upperLimit": 1},
    ]
    doc["status"]["currentWeightDistribution"][2]["name"] = "v9"
    err = _refused(capsys, tmp_path, json.dumps(doc), "is not a valid Experiment")
    for field in (
        "spec.duration.intervalSeconds: must be between 1 and 86400",
        "spec.criteria.objectives[0].upperLimit: must be at most 1e+18 in magnitude",
        "spec.criteria.objectives[1].upperLimit: 'conversion' is a rate",
        "spec.criteria.objectives[2].metric: must match",
        "status.currentWeightDistribution[2].name: 'v9' is not a version",
    ):
        assert f"\n  {field}" in err, err


def test_a_malformed_spec_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "apiVersion: arbiter.dev/v1alpha1\nkind: Experiment\nspec: 5\nstatus: {versions: 5}\n"
    err = _refused(capsys, tmp_path, text, "\n  spec: must be an object, got int")
    assert "\n  status.versions: must be a list, got int" in err


def test_a_huge_value_is_quoted_by_a_prefix_and_problems_are_capped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load(SEED_SENSITIVE)
    doc["kind"] = "Experiment"
    doc["apiVersion"] = "v" * 1_000_000
    doc["spec"]["criteria"]["objectives"] = [{"metric": f"m{i}", "quantile": 2} for i in range(32)]
    err = _refused(capsys, tmp_path, json.dumps(doc), "apiVersion: must be one of")
    assert "'vvvv" in err and "…" in err
    assert err.count("\n  ") == 21 and "\n  … and " in err


# A canary whose candidate fails twice as often as the baseline in every window, but whose
# cumulative rate is lower: a global burst hit the baseline's larger share of traffic.
RATIO_CANARY: Final = """\
apiVersion: arbiter.dev/v1alpha1
kind: Experiment
metadata: {name: ratio, namespace: test}
spec:
  target: test/model
  strategy: {testingPattern: Canary}
  criteria:
    objectives: [{metric: error-rate, maxRatio: 1.5}]
  duration: {intervalSeconds: 60, iterationsPerLoop: 12}
  versionInfo:
    baseline: {name: v1}
    candidates: [{name: v2}]
status:
  completedIterations: 6
  analysis:
    aggregatedMetrics:
      data:
        error-rate:
          data:
            v1: {events: 10500, trials: 100000}
            v2: {events: 840, trials: 33000}
"""
RATIO_WINDOWS: Final = [((20, 1000), (100, 10000))] * 2 + [((200, 1000), (10000, 50000))]
RATIO_WINDOWS += [((200, 10000), (100, 10000))] * 3


def _ratio_document(with_tests: bool) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RATIO_CANARY)
    if with_tests:
        test = RatioTest(1.5)
        for k, (candidate, baseline) in enumerate(RATIO_WINDOWS, start=1):
            test = test.fold(k, *candidate, *baseline)
        entry = {"metric": "error-rate", "version": "v2", **test.to_dict()}
        document["status"]["ratioTests"] = [entry]
    return document


@pytest.mark.parametrize("with_tests", [True, False], ids=["ratioTests", "cumulative"])
def test_a_ratio_objective_uses_the_status_ratio_tests_and_says_which_test_judged_it(
    with_tests: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(_ratio_document(with_tests)), encoding="utf-8")
    result = analyze(capsys, str(path), "--seed", "1")
    [candidate] = result["evidence"]["versions"]["v2"]
    [condition] = candidate["conditions"]
    if with_tests:
        assert condition["verdict"] == "violated", condition
        assert condition["reason"].startswith("conditional test over 6 iterations"), condition
        assert result["recommendation"]["action"] == "rollback"
    else:
        assert condition["verdict"] == "satisfied", condition
        assert "cumulative comparison (no per-iteration counts)" in condition["reason"]


def test_a_ratio_test_out_of_bounds_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _ratio_document(with_tests=True)
    document["status"]["ratioTests"][0]["margin"] = 0
    document["status"]["ratioTests"][0]["violation"] = [0.0]
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    code, out, err = run_cli(capsys, "analyze", str(path))
    assert (code, out) == (2, "")
    assert "  status.ratioTests[0].margin: must be in (0, 1000], got 0" in err, err
    assert "  status.ratioTests[0].violation: must hold 6 numbers" in err, err
    assert "Traceback" not in err


AB_FILE: Final = """
apiVersion: arbiter.dev/v1alpha1
kind: Experiment
metadata: {name: ab, namespace: demo}
spec:
  target: demo/model
  strategy: {testingPattern: A/B, deploymentPattern: Progressive}
  criteria:
    rewards: [{metric: conversion, preferredDirection: High}]
  duration: {intervalSeconds: 60, iterationsPerLoop: 12}
  versionInfo:
    baseline: {name: v1}
    candidates: [{name: v2}]
status:
  completedIterations: 6
  analysis:
    aggregatedMetrics:
      data:
        conversion:
          data:
            v1: {events: 3000, trials: 30000}
            v2: {events: 3060, trials: 30000}
"""


def _ab_document(with_tests: bool) -> dict[str, Any]:
    from analytics.conditional import PairTest

    document: dict[str, Any] = yaml.safe_load(AB_FILE)
    if with_tests:
        # The windows tell a clearer story than the cumulative counts: v2 converts 13%
        # against v1's 10% in each of six windows of 5,000 requests.
        test = PairTest()
        for k in range(1, 7):
            test = test.fold(k, 500, 5000, 650, 5000)
        document["status"]["rewardTests"] = [
            {"metric": "conversion", "version": "v1", "rival": "v2", **test.to_dict()}
        ]
    return document


@pytest.mark.parametrize("with_tests", [True, False], ids=["rewardTests", "cumulative"])
def test_the_reward_is_judged_by_the_status_reward_tests_and_says_which(
    with_tests: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(_ab_document(with_tests)), encoding="utf-8")
    result = analyze(capsys, str(path), "--seed", "1")
    message = result["evidence"]["winner"]["message"]
    if with_tests:
        assert message.startswith("v2 is best on conversion"), message
        assert message.endswith("(windowed pairwise tests)"), message
    else:
        assert message.startswith("not yet conclusive on conversion"), message
        assert message.endswith("(cumulative counts, no per-iteration history)"), message


def test_a_reward_test_out_of_bounds_or_of_an_unknown_version_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _ab_document(with_tests=True)
    entry = document["status"]["rewardTests"][0]
    entry["rival"] = "v9"
    entry["satisfaction"] = [0.0] * 6
    # A margin below 1 would let a version "win" against a better one: refused.
    entry["margin"] = 0.5
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    code, out, err = run_cli(capsys, "analyze", str(path))
    assert (code, out) == (2, "")
    assert "  status.rewardTests[0].rival:" in err and "v9" in err, err
    assert "  status.rewardTests[0].satisfaction: must hold 9 numbers" in err, err
    assert "  status.rewardTests[0].margin: must be 1 for a pairwise test, got 0.5" in err, err
    assert "Traceback" not in err
