"""The harness reproduces its reference figures before it compares anything, or refuses."""

from __future__ import annotations

import pytest

from benchmarks import reference


def test_a_single_look_z_test_keeps_its_level() -> None:
    # The 1-look column of docs/statistics.md#peeking: the same machinery, no peeking, 5%.
    assert reference.peeking(4000, seed=3, looks=1) == pytest.approx(0.05, abs=0.012)


def test_a_missed_figure_stops_the_run_and_names_it() -> None:
    good = reference.Check("fine", "src", 1.0, 1.01, 0.05, 10)
    bad = reference.Check("peeking at 360 looks", "docs/statistics.md", 0.464, 0.30, 0.04, 10)
    reference.verify([good])
    with pytest.raises(
        reference.ReferenceMismatchError, match=r"peeking at 360 looks: expected 0\.464"
    ):
        reference.verify([good, bad])
    assert "| MISMATCH |" in reference.table([good, bad])


@pytest.mark.slow
def test_statistics_md_reference_figures_are_reproduced() -> None:
    checks = reference.reproduce(seed=20261123, replicates=4000)
    reference.verify(checks)
    by_name = {c.name.split(",")[0]: c for c in checks}
    assert by_name["naive peeking"].measured == pytest.approx(0.464, abs=0.05)
    assert by_name["Flagger thresholds"].measured == pytest.approx(0.876, abs=0.03)
