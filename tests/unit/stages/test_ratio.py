"""maxRatio on a cluster: the functions fold each iteration's own window into status.ratioTests.

A global error burst while the baseline carries most of the traffic inflates the baseline's
cumulative error rate, so the cumulative comparison finds a candidate with twice the
baseline's errors in every window "better" (Simpson's paradox). The conditional test on
each window's own counts does not: the functions roll that candidate back.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

from analytics.assessment import Verdict, assess_versions
from analytics.conditional import RatioTest
from functions.core.errors import TransientError
from functions.core.events import MEASURED
from functions.core.status import Status, resolved_experiment
from functions.core.timestamps import parse_time
from tests.fakes import (
    BASELINE_REVISION,
    CANDIDATE_REVISION,
    INTERVAL,
    T0,
    Windows,
    World,
    added,
    experiment,
    kserve_world,
    payload,
    ping,
)

NS: Final = "demo"
NAME: Final = "iris-canary"
# (5xx, requests) per interval. Interval 3 is a global burst: both versions answer 20% of
# requests with a 5xx, while the baseline serves 50x the candidate's traffic. Otherwise the
# candidate fails 2% of requests against the baseline's 1%.
BASELINE: Final = ((100, 10_000),) * 2 + ((10_000, 50_000),) + ((100, 10_000),) * 20
CANDIDATE: Final = ((20, 1_000),) * 2 + ((200, 1_000),) + ((200, 10_000),) * 20


def ratio_experiment(w: World) -> dict[str, Any]:
    w.metrics.set("error-rate", BASELINE_REVISION, Windows(BASELINE))
    w.metrics.set("error-rate", CANDIDATE_REVISION, Windows(CANDIDATE))
    return w.store.add(
        experiment(
            criteria={"objectives": [{"metric": "error-rate", "maxRatio": 1.5}]},
            duration={"intervalSeconds": INTERVAL, "iterationsPerLoop": 12},
        )
    )


def test_a_2x_canary_under_a_global_error_burst_is_rolled_back_not_promoted() -> None:
    w = kserve_world(NS)
    obj = ratio_experiment(w)
    status = w.run_to_end(obj, looks=20)

    assert (status["stage"], status["outcome"]) == ("Completed", "RolledBack")
    reason = status["recommendation"]["message"]
    assert "conditional test" in reason and "violated" in reason, reason
    [entry] = status["ratioTests"]
    assert (entry["metric"], entry["version"], entry["margin"]) == (
        "error-rate",
        CANDIDATE_REVISION,
        1.5,
    )
    assert entry["iteration"] == status["completedIterations"]
    assert entry["incidents"] == 1  # the burst window, left out of the satisfaction side

    # The cumulative figures alone would call the same candidate within the margin: its
    # overall error rate is a quarter of the baseline's.
    experiment_doc = w.store.stored(NS, NAME)
    experiment_doc["status"] = {**experiment_doc["status"], "ratioTests": None}
    resolved = Status.read(experiment_doc)
    assert resolved.ratio_tests == {}
    parsed = resolved_experiment(experiment_doc)
    cumulative = assess_versions(parsed.spec, parsed.status.measurements)
    [verdict] = cumulative[CANDIDATE_REVISION]
    assert verdict.verdict is Verdict.SATISFIED, verdict.conditions
    assert "cumulative comparison" in verdict.conditions[0].reason


def test_a_redelivered_measurement_folds_its_window_once() -> None:
    w = kserve_world(NS)
    obj = ratio_experiment(w)
    w.publish(added(obj))
    # Iteration 1: the split cannot be applied, after assess has recorded it (with the
    # window folded in) ahead of the patch; the broker will deliver the event again.
    w.objects.failures.add("patch", TransientError("the API server is down"), 10)
    w.clock.advance(INTERVAL)
    mark = len(w.sink.events)
    w.publish(ping())
    [measured] = [e for e in w.sink.since(mark) if e["type"] == MEASURED]
    assert w.stage_answers("assess")[-1] == 503
    once = Status.read(w.store.stored(NS, NAME))
    assert once.iterations_done == 0
    folded = once.ratio_tests["error-rate"][CANDIDATE_REVISION]
    events, trials = BASELINE[0]
    assert folded == RatioTest(1.5).fold(1, *CANDIDATE[0], events, trials)
    assert payload(measured)["windows"] == {
        "seconds": INTERVAL,
        "data": {
            "error-rate": {
                BASELINE_REVISION: {"events": events, "trials": trials},
                CANDIDATE_REVISION: {"events": CANDIDATE[0][0], "trials": CANDIDATE[0][1]},
            }
        },
    }

    w.objects.failures = type(w.objects.failures)()
    assert w.deliver("assess", measured) == 200
    again = Status.read(w.store.stored(NS, NAME))
    assert again.iterations_done == 1
    assert again.ratio_tests["error-rate"][CANDIDATE_REVISION] == folded
    # And once more after it is recorded: acknowledged, nothing folded.
    assert w.deliver("assess", measured) == 200
    assert Status.read(w.store.stored(NS, NAME)).ratio_tests == again.ratio_tests
    # The next window starts where this one ended.
    assert again.last_iteration_time == parse_time(payload(measured)["measuredAt"])
    assert again.last_iteration_time == T0 + timedelta(seconds=INTERVAL)
