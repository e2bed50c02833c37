"""`arbiter bench`: it runs and reports sane timing figures (their size is `make bench`'s job)."""

from __future__ import annotations

import io
import re
from typing import Final

import pytest
from rich.console import Console

from cli import bench, main

FIGURES: Final = re.compile(r"p50 (?P<p50>[0-9.]+) ms, p95 (?P<p95>[0-9.]+) ms")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); any exception but argparse's exit propagates."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_prints_p50_and_p95(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "bench", "--iterations", "20", "--seed", "1")
    assert err == ""
    assert "20 iterations" in out, out
    match = FIGURES.search(out)
    assert match is not None, out
    p50, p95 = float(match["p50"]), float(match["p95"])
    assert 0 < p50 <= p95, out
    # No timing assertion: the exit code only has to agree with the verdict printed.
    assert code == (0 if "meets" in out else 1), (code, out)


def test_a_bench_without_iterations_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "bench", "--iterations", "0")
    assert code == 2
    assert "--iterations" in err


def test_a_bench_with_a_negative_seed_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_cli(capsys, "bench", "--iterations", "2", "--seed", "-1")
    assert code == 2
    assert "--seed" in err


def test_on_a_terminal_the_cells_show_as_a_bar(capsys: pytest.CaptureFixture[str]) -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with bench._progress(console) as (say, cells_done):
        say("running 5 cells on 2 workers ...")
        cells_done(0, 5)
        cells_done(3, 5)
    # The bar is drawn live and taken away at the end; what it drew stays in the stream.
    drawn = screen.getvalue()
    assert "running 5 cells on 2 workers" in drawn
    assert "3/5" in drawn, drawn
    assert capsys.readouterr().err == ""


def test_piped_the_progress_stays_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    console = Console(file=io.StringIO(), force_terminal=False)
    with bench._progress(console) as (say, cells_done):
        say("running 5 cells on 2 workers ...")
        cells_done(3, 5)
    assert capsys.readouterr().err == "running 5 cells on 2 workers ...\n"
