"""Compute cost of one analysis iteration: its 5 ms budget, measured.

The workload (docs/statistics.md#the-harness): 4 versions (A/B/n), 3 metrics — an
error-rate count, a 12-bucket latency histogram and a conversion reward — with counts that
grow every iteration as they would on a live experiment. Reports p50/p95 wall time and peak
RSS.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
from scipy import stats

from analytics import analysis
from analytics.measurements import Counts, Histogram, Measurement
from analytics.model import (
    Criteria,
    Direction,
    Duration,
    Experiment,
    ExperimentSpec,
    ExperimentStatus,
    Objective,
    Reward,
    Strategy,
    TestingPattern,
    Version,
    VersionInfo,
)
from analytics.parse import API_VERSION

TARGET_P95_MS: Final = 5.0
BOUNDS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
VERSIONS: Final = ("v1", "v2", "v3", "v4")


@dataclass(frozen=True)
class Result:
    iterations: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    peak_rss_mb: float


def _experiment() -> Experiment:
    spec = ExperimentSpec(
        target="bench/model",
        strategy=Strategy(TestingPattern.ABN),
        criteria=Criteria(
            objectives=(
                Objective("error-rate", upper_limit=0.01, max_ratio=1.5),
                Objective("latency", upper_limit=0.25, quantile=0.95),
            ),
            rewards=(Reward("conversion", Direction.HIGH),),
        ),
        duration=Duration(10, 100_000, 1),
        version_info=VersionInfo(Version("v1"), tuple(Version(v) for v in VERSIONS[1:])),
    )
    return Experiment(API_VERSION, "bench", "bench", spec)


def run(iterations: int = 1000, seed: int = 20261123) -> Result:
    rng = np.random.default_rng(seed)
    base = _experiment()
    # Lognormal latency, median 100 ms, sigma 0.5: the shape of a typical model server.
    cdf = stats.lognorm.cdf(np.array(BOUNDS[:-1]), s=0.5, scale=0.1)
    bucket_p = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    requests = np.zeros(4)
    errors = np.zeros(4)
    conversions = np.zeros(4)
    buckets = np.zeros((4, len(BOUNDS)))
    timings = []
    for i in range(iterations):
        n = rng.poisson(125, 4).astype(float)
        requests += n
        errors += rng.binomial(n.astype(int), 0.005)
        conversions += rng.binomial(n.astype(int), [0.100, 0.103, 0.106, 0.109])
        buckets += np.cumsum(rng.multinomial(n.astype(int), bucket_p), axis=1)
        measurements: dict[str, dict[str, Measurement]] = {
            "error-rate": {v: Counts(errors[j], requests[j]) for j, v in enumerate(VERSIONS)},
            "latency": {
                v: Histogram(BOUNDS, tuple(buckets[j].tolist())) for j, v in enumerate(VERSIONS)
            },
            "conversion": {v: Counts(conversions[j], requests[j]) for j, v in enumerate(VERSIONS)},
        }
        experiment = replace(base, status=ExperimentStatus(i, {}, measurements))
        start = time.perf_counter()
        analysis.analyze(experiment, rng)
        timings.append((time.perf_counter() - start) * 1000.0)
    ms = np.array(timings)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return Result(
        iterations,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 95)),
        float(ms.max()),
        peak_kb / 1024.0,
    )


def format_result(r: Result) -> str:
    verdict = "meets" if r.p95_ms <= TARGET_P95_MS else "MISSES"
    return (
        f"analysis per iteration (4 versions x 3 metrics, 12-bucket histograms, {r.iterations}"
        f" iterations): p50 {r.p50_ms:.2f} ms, p95 {r.p95_ms:.2f} ms, max {r.max_ms:.2f} ms;"
        f" peak RSS {r.peak_rss_mb:.0f} MB — {verdict} the {TARGET_P95_MS:g} ms p95 target"
    )
