"""A/B on a cluster: the functions fold each iteration's own window of the first reward into
status.rewardTests, and the pairwise stopping rule reads them."""

from __future__ import annotations

from typing import Any, Final

from analytics.conditional import PairTest
from functions.core.events import MEASURED
from functions.core.metrics import MetricQueryError
from functions.core.status import Status
from tests.fakes import (
    BASELINE_REVISION,
    CANDIDATE_REVISION,
    INTERVAL,
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
# (5xx, requests) per interval: the candidate fails half as often. Judged as a reward
# (lower is better), so the better version wins by the pairwise rule.
BASELINE: Final = ((200, 10_000),) * 30
CANDIDATE: Final = ((100, 10_000),) * 30


def ab_experiment(w: World) -> dict[str, Any]:
    w.metrics.set("error-rate", BASELINE_REVISION, Windows(BASELINE))
    w.metrics.set("error-rate", CANDIDATE_REVISION, Windows(CANDIDATE))
    return w.store.add(
        experiment(
            strategy={"testingPattern": "A/B", "deploymentPattern": "Progressive"},
            criteria={"rewards": [{"metric": "error-rate", "preferredDirection": "Low"}]},
            duration={"intervalSeconds": INTERVAL, "iterationsPerLoop": 20},
        )
    )


def test_the_better_version_wins_by_its_windowed_pairwise_test() -> None:
    w = kserve_world(NS)
    status = w.run_to_end(ab_experiment(w), looks=25)

    assert (status["stage"], status["outcome"]) == ("Completed", "Promoted"), status["message"]
    assert status["versionRecommendedForPromotion"] == CANDIDATE_REVISION
    assert status["recommendation"]["message"].endswith("(windowed pairwise tests)")
    [entry] = status["rewardTests"]
    assert (entry["metric"], entry["version"], entry["rival"]) == (
        "error-rate",
        BASELINE_REVISION,
        CANDIDATE_REVISION,
    )
    assert entry["iteration"] == status["completedIterations"]
    # The baseline's share of the errors is the higher: "violation" (its rate is above).
    test = PairTest.from_dict(entry)
    above, below = test.log_evidence
    assert above > 3.0 > below


def test_a_redelivered_measurement_folds_the_reward_window_once() -> None:
    w = kserve_world(NS)
    obj = ab_experiment(w)
    w.publish(added(obj))
    w.clock.advance(INTERVAL)
    mark = len(w.sink.events)
    w.publish(ping())
    [measured] = [e for e in w.sink.since(mark) if e["type"] == MEASURED]
    assert payload(measured)["windows"]["data"]["error-rate"] == {
        BASELINE_REVISION: {"events": 200, "trials": 10_000},
        CANDIDATE_REVISION: {"events": 100, "trials": 10_000},
    }
    once = Status.read(w.store.stored(NS, NAME))
    assert once.iterations_done == 1
    folded = once.reward_tests["error-rate"][(BASELINE_REVISION, CANDIDATE_REVISION)]
    assert folded == PairTest().fold(1, 200, 10_000, 100, 10_000)
    # Delivered again after it is recorded: acknowledged, nothing folded twice.
    assert w.deliver("assess", measured) == 200
    assert Status.read(w.store.stored(NS, NAME)).reward_tests == once.reward_tests


class _SkewedWindows(Windows):
    """The cumulative reading is sound; a window of one interval or less is not: its
    numerator extrapolates past its denominator, as increase() can at a window's edges."""

    def over(self, at: Any, elapsed: int) -> Any:
        since_start = int((at - self.origin).total_seconds())
        if elapsed <= INTERVAL < since_start:
            raise MetricQueryError("metrics/error-rate: the query results do not fit: 67 > 59")
        return super().over(at, elapsed)


def test_a_window_whose_ratio_does_not_fit_counts_nothing_and_the_experiment_goes_on() -> None:
    w = kserve_world(NS)
    equal = ((100, 10_000),) * 30  # nothing to decide within two iterations
    w.metrics.set("error-rate", BASELINE_REVISION, _SkewedWindows(equal))
    w.metrics.set("error-rate", CANDIDATE_REVISION, _SkewedWindows(equal))
    obj = w.store.add(
        experiment(
            strategy={"testingPattern": "A/B", "deploymentPattern": "Progressive"},
            criteria={"rewards": [{"metric": "error-rate", "preferredDirection": "Low"}]},
            duration={"intervalSeconds": INTERVAL, "iterationsPerLoop": 20},
        )
    )
    w.publish(added(obj))
    w.clock.advance(INTERVAL)
    w.publish(ping())  # iteration 1: its window is the whole run so far, and fits
    first = Status.read(w.store.stored(NS, NAME)).reward_tests
    w.clock.advance(INTERVAL)
    mark = len(w.sink.events)
    w.publish(ping())
    [measured] = [e for e in w.sink.since(mark) if e["type"] == MEASURED]
    assert "error-rate" not in (payload(measured).get("windows") or {}).get("data", {})
    status = Status.read(w.store.stored(NS, NAME))
    assert status.iterations_done == 2 and status.stage.value == "Running", status.message
    # The tests kept what they had: the unfit window added nothing.
    assert [t.violation for t in status.reward_tests["error-rate"].values()] == [
        t.violation for t in first["error-rate"].values()
    ]
