"""Bounded reading of the numbers and times the clock compares: nothing overflows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from functions.core import sweep
from functions.core.errors import PermanentError
from functions.core.settings import Settings
from functions.core.timestamps import elapsed, iso, parse_time


def test_a_time_past_the_last_datetime_in_utc_reads_as_no_time() -> None:
    assert parse_time("9999-12-31T23:59:59-01:00") is None


def test_year_9999_in_utc_reads_and_writes_back() -> None:
    t = parse_time("9999-12-31T23:59:59Z")
    assert t is not None
    assert iso(t) == "9999-12-31T23:59:59Z"
    assert elapsed(datetime(2026, 1, 1, tzinfo=UTC), t) < 0


def test_times_with_an_offset_are_read_in_utc() -> None:
    t = parse_time("2026-01-01T02:00:00+02:00")
    assert t == datetime(2026, 1, 1, tzinfo=UTC)
    assert t is not None and t.tzinfo is UTC


def spec(**duration: Any) -> dict[str, Any]:
    return {"spec": {"duration": duration}}


@pytest.mark.parametrize(
    "duration",
    [
        {"intervalSeconds": 100_000_000_000_000},
        {"intervalSeconds": 1e308, "iterationsPerLoop": 1e308},
        {"intervalSeconds": 20, "iterationsPerLoop": 1_000_000_000},
        {"intervalSeconds": 3600, "iterationsPerLoop": 100, "maxLoops": 100},
    ],
)
def test_a_duration_that_cannot_fit_is_a_problem_never_an_overflow(
    duration: dict[str, Any],
) -> None:
    problem = sweep.duration_problem(spec(**duration), Settings())
    assert problem is not None
    assert "ARBITER_MAX_EXPERIMENT_SECONDS=604800" in problem


@pytest.mark.parametrize(
    "duration",
    [
        {},
        {"intervalSeconds": 60, "iterationsPerLoop": 8},
        {"intervalSeconds": "many"},  # left to the spec's parser
        {"intervalSeconds": True},
        {"intervalSeconds": "inf"},
    ],
)
def test_a_duration_that_fits_or_does_not_parse_is_no_duration_problem(
    duration: dict[str, Any],
) -> None:
    assert sweep.duration_problem(spec(**duration), Settings()) is None


def test_an_interval_that_is_no_finite_number_reads_as_the_default() -> None:
    assert sweep.interval_seconds(spec(intervalSeconds="inf")) == 20
    assert sweep.interval_seconds(spec(intervalSeconds=45)) == 45
    assert sweep.interval_seconds({"spec": None}) == 20


def test_the_clocks_deadlines_are_settings_with_stated_defaults() -> None:
    defaults = Settings.from_env({})
    assert defaults.max_experiment_seconds == 7 * 24 * 3600
    assert defaults.finish_deadline_seconds == 600
    custom = Settings.from_env(
        {"ARBITER_MAX_EXPERIMENT_SECONDS": "3600", "ARBITER_FINISH_DEADLINE_SECONDS": "60"}
    )
    assert (custom.max_experiment_seconds, custom.finish_deadline_seconds) == (3600, 60)
    with pytest.raises(PermanentError, match="ARBITER_FINISH_DEADLINE_SECONDS"):
        Settings.from_env({"ARBITER_FINISH_DEADLINE_SECONDS": "-1"})
