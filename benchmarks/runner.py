"""Runs one cell, a (scenario, method) pair, for R replicates at once.

The simulator, the Prometheus view and the method advance together one interval at a
time. The runner keeps the score: each replicate's decision and when it came (in
iterations and in requests served), the regret it ran up over the whole horizon (after a
decision the chosen version takes all traffic until the horizon, so promoting a bad
version keeps costing), the peak candidate weight before the decision, the method's
compute time per iteration, and any step that produced a non-finite split.

Seeds: the simulator's stream depends on (seed, scenario) only, so every method meets the
same traffic where their splits agree; the method's own stream on (seed, scenario,
method). Both come from `numpy.random.SeedSequence` spawn keys.
"""

from __future__ import annotations

import math
import resource
import time
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from benchmarks.faults import diurnal_factor
from benchmarks.methods import base
from benchmarks.methods.base import MethodInfo
from benchmarks.scenario import Scenario
from benchmarks.scrape import Scraper
from benchmarks.simulator import Simulator, bucket_probabilities

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

INCONCLUSIVE = 0


@dataclass(frozen=True, eq=False)
class CellResult:
    """Per-replicate outcomes of one cell. `action` is INCONCLUSIVE, PROMOTE or ROLLBACK;
    `version` the version ended on (0 unless a candidate was promoted); `iteration` the
    decision's iteration (-1 if none) and `requests` the requests served by then (NaN)."""

    scenario: str
    method: str
    replicates: int
    seed: int
    action: IntArray
    version: IntArray
    iteration: IntArray
    requests: FloatArray
    extra_errors: FloatArray
    extra_slow: FloatArray
    lost_reward: FloatArray
    exposure: FloatArray
    peak_weight: FloatArray
    step_ms: FloatArray
    live: IntArray
    nonfinite: int
    burst_rollbacks: int
    peak_rss_mb: float
    wall_s: float


def _key(text: str) -> int:
    return zlib.crc32(text.encode())


def generators(
    seed: int, scenario: str, method: str
) -> tuple[np.random.Generator, np.random.Generator]:
    sim = np.random.SeedSequence(seed, spawn_key=(_key(scenario),))
    own = np.random.SeedSequence(seed, spawn_key=(_key(scenario), _key(method)))
    return np.random.default_rng(sim), np.random.default_rng(own)


def slow_shares(scenario: Scenario) -> FloatArray:
    """Each version's true share of requests above the latency objective's bucket bound."""
    latency = scenario.latency_objective
    if latency is None or latency.upper_limit is None:
        return np.zeros(len(scenario.versions))
    bounds = (latency.upper_limit, math.inf)
    return np.array(
        [
            bucket_probabilities(v.latency_median_s, v.latency_sigma, bounds)[1]
            for v in scenario.versions
        ]
    )


def gaps(
    scenario: Scenario,
) -> tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """Per version, against the correct version: extra error rate, extra share of slow
    requests, lost reward; and whether serving it is exposure to a worse version."""
    correct = scenario.versions[scenario.correct_version()]
    error = np.array([max(v.error_rate - correct.error_rate, 0.0) for v in scenario.versions])
    shares = slow_shares(scenario)
    slow = np.maximum(shares - shares[scenario.correct_version()], 0.0)
    mu = correct.reward_rate
    reward = np.array(
        [
            max((mu or 0.0) - (v.reward_rate or 0.0), 0.0) if mu is not None else 0.0
            for v in scenario.versions
        ]
    )
    feasible = np.array(scenario.feasible())
    index = np.arange(len(scenario.versions))
    worse = (index != scenario.correct_version()) & (
        (error > 0) | (slow > 0) | (reward > 0) | ~feasible
    )
    return error, slow, reward, worse


def run_cell(
    scenario: Scenario, info: MethodInfo, replicates: int, seed: int, quick: bool
) -> CellResult:
    started = time.perf_counter()
    r, k, n_iter = replicates, len(scenario.versions), scenario.iterations
    cfg = scenario.sim_config()
    sim_rng, own_rng = generators(seed, scenario.name, info.name)
    sim = Simulator(cfg, r, sim_rng)
    scraper = Scraper((r, k), cfg.buckets)
    method = info.build(scenario, r, own_rng, quick)
    error_gap, slow_gap, reward_gap, worse = gaps(scenario)

    weights = _normalised(method.initial_weights(), np.tile(np.eye(k)[0], (r, 1)))
    final = np.zeros((r, k))
    decided = np.zeros(r, dtype=np.bool_)
    action = np.zeros(r, dtype=np.int64)
    version = np.zeros(r, dtype=np.int64)
    iteration = np.full(r, -1, dtype=np.int64)
    requests_at = np.full(r, np.nan)
    served = np.zeros(r)
    extra, slow, lost = np.zeros(r), np.zeros(r), np.zeros(r)
    exposure, peak = np.zeros(r), np.zeros(r)
    step_ms: list[float] = []
    live: list[int] = []
    nonfinite = 0
    faults = scenario.faults
    burst_end = (
        None
        if faults.burst_start_s is None
        else faults.burst_start_s + faults.burst_duration_s + 2 * scenario.interval_s
    )
    burst_rollbacks = 0

    for it in range(1, n_iter + 1):
        applied = np.where(decided[:, None], final, weights)
        snap = sim.step(applied)
        n = snap.delta.requests
        extra += n @ error_gap
        slow += n @ slow_gap
        lost += n @ reward_gap
        exposure += n @ worse.astype(np.float64)
        peak = np.where(decided, peak, np.maximum(peak, 1.0 - applied[:, 0]))
        served += n.sum(axis=1)
        obs = scraper.observe(snap, last=it == n_iter, active=~decided)
        live.append(int(r - decided.sum()))
        t0 = time.perf_counter()
        step = method.step(obs)
        step_ms.append((time.perf_counter() - t0) * 1000.0)

        valid = np.all(np.isfinite(step.weights), axis=1) & np.isin(step.action, (0, 1, 2))
        nonfinite += int(np.sum(~valid & ~decided))
        new = ~decided & valid & (step.action != base.CONTINUE)
        promoted = step.action == base.PROMOTE
        action[new] = step.action[new]
        version[new] = np.where(promoted, step.version, 0)[new]
        iteration[new] = it
        requests_at[new] = served[new]
        final[new] = np.eye(k)[version[new]]
        if burst_end is not None and faults.burst_start_s is not None:
            in_burst = faults.burst_start_s < snap.elapsed_s <= burst_end
            burst_rollbacks += int(np.sum(new & (step.action == base.ROLLBACK))) if in_burst else 0
        decided |= new
        weights = _normalised(step.weights, applied)
        if decided.all() and it < n_iter:
            rest = _remaining_requests(scenario, it)
            extra += rest * (final @ error_gap)
            slow += rest * (final @ slow_gap)
            lost += rest * (final @ reward_gap)
            exposure += rest * (final @ worse.astype(np.float64))
            break

    return CellResult(
        scenario=scenario.name,
        method=info.name,
        replicates=r,
        seed=seed,
        action=action,
        version=version,
        iteration=iteration,
        requests=requests_at,
        extra_errors=extra,
        extra_slow=slow,
        lost_reward=lost,
        exposure=exposure,
        peak_weight=peak,
        step_ms=np.array(step_ms),
        live=np.array(live, dtype=np.int64),
        nonfinite=nonfinite,
        burst_rollbacks=burst_rollbacks,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        wall_s=time.perf_counter() - started,
    )


def _normalised(weights: FloatArray, fallback: FloatArray) -> FloatArray:
    """Rows summing to 1; a row that is not finite and non-negative keeps `fallback`."""
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=1, keepdims=True)
    ok = np.all(np.isfinite(w) & (w >= 0), axis=1, keepdims=True) & (total > 0)
    return np.where(ok, w / np.where(ok, total, 1.0), fallback)


def _remaining_requests(scenario: Scenario, done: int) -> float:
    """Expected requests from the end of iteration `done` to the horizon."""
    dt = scenario.interval_s
    factors = [
        diurnal_factor(scenario.faults, i * dt, (i + 1) * dt)
        for i in range(done, scenario.iterations)
    ]
    return scenario.rate_rps * dt * float(sum(factors))
