"""What every method sees: counts since the experiment started, as Prometheus reports them.

The simulator hands out raw scraped readings, which go stale on a missed scrape and drop
to zero when a pod restarts. Arbiter's iterate stage asks Prometheus for the increase over
the experiment so far; `Scraper` rebuilds exactly that from the readings, one interval at
a time, with the simulator's reset-aware `increase`. Like PromQL it can undercount a reset
it cannot see, so the rebuilt counts are made consistent before anyone reads them (errors
never above requests, bucket counts non-decreasing in `le`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from benchmarks.simulator import Snapshot, increase

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Observation:
    """Cumulative counts after `iteration` intervals; (R, K), buckets (R, K, B).

    `active` marks the replicates that have not decided yet: a method may skip the others.
    """

    iteration: int
    elapsed_s: float
    last: bool
    requests: FloatArray
    errors: FloatArray
    rewards: FloatArray
    buckets: FloatArray
    bounds: tuple[float, ...]
    active: npt.NDArray[np.bool_]

    def take(self, rows: npt.NDArray[np.int64]) -> Observation:
        """The same observation for the replicates `rows` only."""
        return Observation(
            self.iteration,
            self.elapsed_s,
            self.last,
            self.requests[rows],
            self.errors[rows],
            self.rewards[rows],
            self.buckets[rows],
            self.bounds,
            self.active[rows],
        )


class Scraper:
    """Turns the simulator's raw readings into counts since the start, per replicate."""

    def __init__(self, shape: tuple[int, int], bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._names = ("requests", "errors", "reward_sum", "buckets")
        zeros = {n: np.zeros(shape) for n in self._names}
        zeros["buckets"] = np.zeros((*shape, len(bounds)))
        self._prev = dict(zeros)
        self._total = {n: z.copy() for n, z in zeros.items()}

    def observe(
        self, snapshot: Snapshot, last: bool, active: npt.NDArray[np.bool_] | None = None
    ) -> Observation:
        for name in self._names:
            now = np.asarray(getattr(snapshot.observed, name), dtype=np.float64)
            self._total[name] = self._total[name] + increase(self._prev[name], now)
            self._prev[name] = now
        requests = self._total["requests"]
        errors = np.minimum(self._total["errors"], requests)
        rewards = np.minimum(self._total["reward_sum"], requests)
        buckets = np.minimum(
            np.maximum.accumulate(self._total["buckets"], axis=-1), requests[..., None]
        )
        return Observation(
            iteration=snapshot.iteration,
            elapsed_s=snapshot.elapsed_s,
            last=last,
            requests=requests,
            errors=errors,
            rewards=rewards,
            buckets=buckets,
            bounds=self.bounds,
            active=np.ones(requests.shape[0], dtype=np.bool_) if active is None else active,
        )
