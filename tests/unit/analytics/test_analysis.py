"""One iteration's analysis: the recommendation rules, in order, and the weights they imply."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from analytics.analysis import Analysis, analyze
from analytics.model import Experiment
from analytics.recommendation import Action

Factory = Callable[..., Experiment]
ERRORS = [{"metric": "error-rate", "upperLimit": 0.01}]
CONVERSION = [{"metric": "conversion", "preferredDirection": "High"}]
GOOD = {"events": 10, "trials": 100_000}
BAD = {"events": 3000, "trials": 100_000}
UNKNOWN = {"events": 1, "trials": 100}
SEED = 20261123


def run(experiment: Experiment) -> Analysis:
    return analyze(experiment, np.random.default_rng(SEED))


def canary(
    make_experiment: Factory,
    candidate: dict[str, Any],
    baseline: dict[str, Any] = GOOD,
    objectives: list[dict[str, Any]] = ERRORS,
    **kw: Any,
) -> Analysis:
    data = {"error-rate": {"baseline": baseline, "candidate": candidate}}
    kw.setdefault("current", {"baseline": 60, "candidate": 40})
    return run(make_experiment("Canary", objectives=objectives, data=data, **kw))


def decision(a: Analysis) -> tuple[Action, str | None, str]:
    return a.recommendation.action, a.recommendation.version, a.recommendation.rule


# --- rule 1: objective-violated ------------------------------------------------------------


def test_a_conclusively_violated_objective_rolls_back_first(make_experiment: Factory) -> None:
    # The baseline is also a conclusive winner here; rule 1 comes before rule 2.
    a = canary(make_experiment, BAD)
    assert decision(a) == (Action.ROLLBACK, "baseline", "objective-violated")
    assert a.recommendation.message.startswith("roll back to baseline: error-rate for candidate")
    assert a.weights == {"baseline": 100, "candidate": 0}


def test_rollback_on_failure_false_lets_the_experiment_go_on(make_experiment: Factory) -> None:
    objectives = [{**ERRORS[0], "rollbackOnFailure": False}]
    a = canary(make_experiment, BAD, objectives=objectives)
    # Rule 2 then fires: a Canary whose conclusive winner is the baseline rolls back.
    assert decision(a) == (Action.ROLLBACK, "baseline", "winner-conclusive")
    assert a.weights == {"baseline": 100, "candidate": 0}


@pytest.mark.parametrize(
    ("deployment", "setting", "expected"),
    [
        ("Progressive", None, (Action.CONTINUE, None, "collecting-evidence")),
        # As in iter8, rollbackOnFailure defaults to true for BlueGreen (iter8 v2).
        ("BlueGreen", None, (Action.ROLLBACK, "baseline", "objective-violated")),
        ("Progressive", True, (Action.ROLLBACK, "baseline", "objective-violated")),
        ("BlueGreen", False, (Action.CONTINUE, None, "collecting-evidence")),
    ],
)
def test_a_point_value_violation_rolls_back_only_where_iter8_would(
    make_experiment: Factory, deployment: str, setting: bool | None, expected: tuple[Any, ...]
) -> None:
    objective: dict[str, Any] = {**ERRORS[0]}
    if setting is not None:
        objective["rollbackOnFailure"] = setting
    a = canary(
        make_experiment,
        {"value": 0.05},
        baseline={"value": 0.001},
        objectives=[objective],
        deployment=deployment,
    )
    assert decision(a) == expected


def test_conformance_rolls_back_when_the_baseline_fails(make_experiment: Factory) -> None:
    e = make_experiment("Conformance", objectives=ERRORS, data={"error-rate": {"baseline": BAD}})
    a = run(e)
    assert decision(a) == (Action.ROLLBACK, "baseline", "objective-violated")
    assert a.weights is None


def test_conformance_with_only_relative_objectives_is_not_promoted_without_data(
    make_experiment: Factory,
) -> None:
    from analytics.parse import SpecError

    try:
        e = make_experiment("Conformance", objectives=[{"metric": "error-rate", "maxRatio": 1.5}])
    except SpecError as err:  # rejecting the objective would be a fix too
        assert "maxRatio" in str(err)
        return
    assert run(e).recommendation.action is not Action.PROMOTE


def abn(make_experiment: Factory, errors: dict[str, Any], **kw: Any) -> Analysis:
    conversion = {v: {"events": 2000, "trials": 20_000} for v in ("v1", "v2", "v3")}
    e = make_experiment(
        "A/B/n",
        baseline="v1",
        candidates=["v2", "v3"],
        objectives=ERRORS,
        rewards=CONVERSION,
        data={"conversion": conversion, "error-rate": errors},
        current={"v1": 50, "v2": 25, "v3": 25},
        **kw,
    )
    return run(e)


def test_abn_rolls_back_only_when_every_candidate_fails(make_experiment: Factory) -> None:
    some = abn(make_experiment, {"v1": GOOD, "v2": BAD, "v3": GOOD})
    assert decision(some) == (Action.CONTINUE, None, "collecting-evidence")
    assert some.weights is not None and some.weights["v2"] == 0
    every = abn(make_experiment, {"v1": GOOD, "v2": BAD, "v3": BAD})
    assert decision(every) == (Action.ROLLBACK, "v1", "objective-violated")
    assert every.weights == {"v1": 100, "v2": 0, "v3": 0}


# --- rule 2: winner-conclusive -------------------------------------------------------------


def test_a_conclusive_candidate_is_promoted(make_experiment: Factory) -> None:
    a = canary(make_experiment, GOOD, baseline=BAD)
    assert decision(a) == (Action.PROMOTE, "candidate", "winner-conclusive")
    assert (
        a.recommendation.message
        == "promote candidate: candidate candidate satisfies all objectives"
    )
    assert a.weights == {"baseline": 0, "candidate": 100}
    assert a.version_recommended_for_promotion == "candidate"


def test_a_conclusive_ab_winner_is_promoted(make_experiment: Factory) -> None:
    conversion = {
        "baseline": {"events": 2000, "trials": 20_000},
        "candidate": {"events": 2600, "trials": 20_000},
    }
    e = make_experiment(
        "A/B",
        objectives=ERRORS,
        rewards=CONVERSION,
        data={"conversion": conversion, "error-rate": {"baseline": GOOD, "candidate": GOOD}},
    )
    a = run(e)
    assert decision(a) == (Action.PROMOTE, "candidate", "winner-conclusive")
    assert a.weights == {"baseline": 0, "candidate": 100}


def test_a_conclusive_conformance_winner_is_promoted_without_weights(
    make_experiment: Factory,
) -> None:
    e = make_experiment("Conformance", objectives=ERRORS, data={"error-rate": {"baseline": GOOD}})
    a = run(e)
    assert decision(a) == (Action.PROMOTE, "baseline", "winner-conclusive")
    assert a.weights is None


# --- rule 3: iterations-exhausted ----------------------------------------------------------


def test_the_last_iteration_promotes_a_winner_by_plain_comparison(
    make_experiment: Factory,
) -> None:
    point = {"value": 0.001}
    before = canary(make_experiment, point, baseline=point, completed=8, iterations=10)
    assert decision(before) == (Action.CONTINUE, None, "collecting-evidence")
    assert before.iteration == 9
    last = canary(make_experiment, point, baseline=point, completed=9, iterations=10)
    assert last.iteration == 10
    assert decision(last) == (Action.PROMOTE, "candidate", "iterations-exhausted")
    assert last.weights == {"baseline": 0, "candidate": 100}


def test_a_canary_whose_baseline_wins_in_the_end_rolls_back(make_experiment: Factory) -> None:
    a = canary(make_experiment, UNKNOWN, completed=9, iterations=10)
    assert decision(a) == (Action.ROLLBACK, "baseline", "iterations-exhausted")
    assert "roll back to baseline" in a.recommendation.message
    assert a.version_recommended_for_promotion == "baseline"


def test_no_winner_in_the_end_keeps_the_baseline(make_experiment: Factory) -> None:
    a = canary(make_experiment, UNKNOWN, baseline=UNKNOWN, completed=9, iterations=10)
    assert decision(a) == (Action.ROLLBACK, "baseline", "iterations-exhausted")
    assert a.recommendation.message.startswith("no winner; keep baseline:")
    assert a.weights == {"baseline": 100, "candidate": 0}


def test_iterations_count_every_loop(make_document: Callable[..., dict[str, Any]]) -> None:
    from analytics.parse import parse_experiment

    rules = []
    for completed in (8, 9):
        doc = make_document(
            objectives=ERRORS,
            data={"error-rate": {"baseline": UNKNOWN, "candidate": UNKNOWN}},
            completed=completed,
            iterations=5,
        )
        doc["spec"]["duration"]["maxLoops"] = 2
        rules.append(decision(run(parse_experiment(doc)))[2])
    assert rules == ["collecting-evidence", "iterations-exhausted"]


# --- rule 4: collecting-evidence -----------------------------------------------------------


def test_otherwise_continue_and_move_the_weights(make_experiment: Factory) -> None:
    a = canary(
        make_experiment, {"value": 0.001}, completed=2, current={"baseline": 80, "candidate": 20}
    )
    assert decision(a) == (Action.CONTINUE, None, "collecting-evidence")
    assert a.recommendation.message == "candidate candidate satisfies all objectives"
    assert a.weights == {"baseline": 70, "candidate": 30}
    # The winner so far is recommended for promotion, as iter8 does every iteration.
    assert a.version_recommended_for_promotion == "candidate"


def test_analysis_is_deterministic_for_a_seed(make_experiment: Factory) -> None:
    errors = {"v1": GOOD, "v2": UNKNOWN, "v3": GOOD}
    assert abn(make_experiment, errors).weights == abn(make_experiment, errors).weights


def test_unresolved_versions_are_an_error(make_document: Callable[..., dict[str, Any]]) -> None:
    from analytics.parse import parse_experiment

    doc = make_document()
    del doc["spec"]["versionInfo"]
    e = parse_experiment(doc, require_versions=False)
    with pytest.raises(ValueError, match="versionInfo"):
        run(e)
