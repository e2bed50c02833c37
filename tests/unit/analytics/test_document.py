"""The analysis as JSON-ready data: iter8's `status.analysis` keys plus the evidence."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from analytics import document
from analytics.analysis import analyze
from analytics.measurements import (
    Counts,
    Histogram,
    Measurement,
    Moments,
    NoData,
    PointValue,
    measurement_to_dict,
)
from analytics.model import Experiment
from analytics.parse import parse_experiment

Factory = Callable[..., Experiment]
GOOD = {"events": 10, "trials": 100_000}
UNKNOWN = {"events": 1, "trials": 100}


def as_json(experiment: Experiment) -> dict[str, Any]:
    out = document.to_dict(analyze(experiment, np.random.default_rng(1)))
    # Strict JSON: no NaN or Infinity may leak out of the evidence.
    parsed: dict[str, Any] = json.loads(json.dumps(out, allow_nan=False))
    return parsed


def test_iter8_keys_for_a_canary(make_experiment: Factory) -> None:
    objectives = [
        {"metric": "error-rate", "upperLimit": 0.01},
        {"metric": "latency", "upperLimit": 120},
    ]
    data = {
        "error-rate": {"baseline": GOOD, "candidate": UNKNOWN},
        "latency": {"baseline": {"value": 100}, "candidate": {"value": 100}},
    }
    current = {"baseline": 80, "candidate": 20}
    out = as_json(make_experiment("Canary", objectives=objectives, data=data, current=current))
    # Undecided counts as not satisfied, as in iter8's booleans.
    assert out["versionAssessments"] == {"baseline": [True, True], "candidate": [False, True]}
    assert out["winnerAssessment"] == {
        "winnerFound": True,
        "winner": "baseline",
        "bestVersions": ["baseline"],
    }
    assert out["weights"] == [
        {"name": "baseline", "value": out["weights"][0]["value"]},
        {"name": "candidate", "value": out["weights"][1]["value"]},
    ]
    assert all(isinstance(w["value"], int) for w in out["weights"])
    assert sum(w["value"] for w in out["weights"]) == 100
    assert out["recommendation"] == {
        "action": "continue",
        "rule": "collecting-evidence",
        "message": out["recommendation"]["message"],
    }
    assert "candidate" in out["recommendation"]["message"]
    assert out["versionRecommendedForPromotion"] == "baseline"
    assert out["iteration"] == 1


def test_no_winner_has_no_winner_key_and_conformance_has_no_weights(
    make_experiment: Factory,
) -> None:
    objectives = [{"metric": "error-rate", "upperLimit": 0.01}]
    e = make_experiment(
        "Conformance", objectives=objectives, data={"error-rate": {"baseline": UNKNOWN}}
    )
    out = as_json(e)
    assert out["winnerAssessment"] == {"winnerFound": False, "bestVersions": []}
    assert out["weights"] is None
    assert out["versionAssessments"] == {"baseline": [False]}


def test_a_promotion_names_its_version(make_experiment: Factory) -> None:
    objectives = [{"metric": "error-rate", "upperLimit": 0.01}]
    data = {"error-rate": {"baseline": GOOD, "candidate": GOOD}}
    out = as_json(make_experiment("Canary", objectives=objectives, data=data))
    assert out["recommendation"]["action"] == "promote"
    assert out["recommendation"]["version"] == "candidate"
    assert out["recommendation"]["rule"] == "winner-conclusive"
    assert out["weights"] == [{"name": "baseline", "value": 0}, {"name": "candidate", "value": 100}]


def test_the_evidence_behind_each_verdict(make_experiment: Factory) -> None:
    latency = {"buckets": [{"le": 250, "count": 990}, {"le": "+Inf", "count": 1000}]}
    objectives = [
        {"metric": "latency", "upperLimit": 250, "quantile": 0.95},
        {"metric": "mean", "upperLimit": 1},
    ]
    data = {
        "latency": {"baseline": latency, "candidate": latency},
        "mean": {"baseline": {"count": 5, "sum": 1, "sumOfSquares": 1}},
    }
    out = as_json(make_experiment("Canary", objectives=objectives, data=data))
    slow, mean = out["evidence"]["versions"]["baseline"]
    assert slow["metric"] == "latency"
    assert slow["bucketBound"] == 250
    assert slow["estimate"] == pytest.approx(0.01)
    assert slow["sampleSize"] == 1000
    assert slow["verdict"] in ("satisfied", "violated", "undecided")
    assert isinstance(slow["conclusive"], bool)
    assert len(slow["interval"]) == 2
    (condition,) = slow["conditions"]
    assert set(condition) == {"condition", "verdict", "conclusive", "reason"}
    # Too few observations: the sequence is the whole line, written so JSON can carry it.
    assert mean["interval"] == ["-Inf", "+Inf"]
    assert set(out["evidence"]["winner"]) == {
        "conclusive",
        "feasibleVersions",
        "message",
        "rewards",
    }


def test_reward_evidence(make_experiment: Factory) -> None:
    conversion = {"baseline": {"events": 2000, "trials": 20_000}, "candidate": {"value": 0.1}}
    e = make_experiment(
        "A/B",
        rewards=[{"metric": "conversion", "preferredDirection": "High"}],
        data={"conversion": conversion},
    )
    rewards = as_json(e)["evidence"]["winner"]["rewards"]
    assert rewards[0]["version"] == "baseline"
    assert rewards[0]["estimate"] == pytest.approx(0.1)
    assert rewards[0]["sampleSize"] == 20_000
    assert len(rewards[0]["interval"]) == 2
    assert rewards[1] == {"version": "candidate", "estimate": 0.1, "sampleSize": None}


@pytest.mark.parametrize(
    "measurement",
    [
        PointValue(0.25),
        Counts(3.0, 1000.0),
        Moments(10.0, 25.0),
        Moments(10.0, 25.0, 70.0),
        Histogram((0.1, 0.25, math.inf), (4.0, 9.0, 10.0)),
        NoData(),
    ],
)
def test_measurements_round_trip_through_the_parser(
    measurement: Measurement, make_document: Callable[..., dict[str, Any]]
) -> None:
    fields = json.loads(json.dumps(measurement_to_dict(measurement), allow_nan=False))
    doc = make_document(data={"m": {"baseline": fields}})
    assert parse_experiment(doc).status.measurements["m"]["baseline"] == measurement
