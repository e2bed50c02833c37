"""The Prometheus view: counts since the start, rebuilt from stale and reset readings."""

from __future__ import annotations

import numpy as np

from benchmarks.faults import Faults
from benchmarks.scrape import Scraper
from benchmarks.simulator import DEFAULT_BUCKETS, SimConfig, Simulator, VersionTruth

VERSIONS = (VersionTruth("b", 0.05, 0.1), VersionTruth("c", 0.05, 0.1))


def _run(faults: Faults, steps: int = 40, replicates: int = 50) -> list[tuple[object, object]]:
    cfg = SimConfig(VERSIONS, 20.0, 10.0, DEFAULT_BUCKETS, faults)
    sim = Simulator(cfg, replicates, np.random.default_rng(3))
    view = Scraper((replicates, 2), cfg.buckets)
    out = []
    for i in range(steps):
        snap = sim.step([0.5, 0.5])
        out.append((snap, view.observe(snap, i == steps - 1)))
    return out


def test_without_faults_the_view_is_the_truth() -> None:
    for snap, obs in _run(Faults()):
        np.testing.assert_array_equal(obs.requests, snap.truth.requests)
        np.testing.assert_array_equal(obs.errors, snap.truth.errors)
        np.testing.assert_array_equal(obs.buckets, snap.truth.buckets)


def test_counter_resets_alone_are_recovered_exactly() -> None:
    snap, obs = _run(Faults(counter_reset_every_s=60.0))[-1]
    lost = (snap.truth.requests - obs.requests) / snap.truth.requests
    # Only a restart in the first interval or two can go unseen (the new reading is not
    # below the old one yet), exactly as PromQL's increase() would miss it.
    assert np.median(lost) == 0.0 and lost.max() < 0.05


def test_stale_scrapes_catch_up_and_a_reset_after_a_missed_scrape_loses_that_interval() -> None:
    faults = Faults(missing_scrape_prob=0.3, counter_reset_every_s=60.0)
    pairs = _run(faults)
    for snap, obs in pairs:
        assert np.all(obs.requests <= snap.truth.requests)
        assert np.all(obs.errors <= obs.requests) and np.all(obs.rewards <= obs.requests)
        assert np.all(np.diff(obs.buckets, axis=-1) >= 0)
    snap, obs = pairs[-1]
    fresh = snap.fresh
    lost = (snap.truth.requests - obs.requests)[fresh] / snap.truth.requests[fresh]
    # Prometheus never sees what a pod counted between a missed scrape and its restart:
    # here one 10 s interval in each 60 s period, 30% of the time, about 5%.
    assert 0.02 < lost.mean() < 0.09
    stale = ~fresh
    assert np.all(obs.requests[stale] < snap.truth.requests[stale])
    assert pairs[-1][1].last and not pairs[0][1].last
