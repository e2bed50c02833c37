"""What every method sees: counts since the experiment started, as Prometheus reports them.

The simulator hands out raw scraped readings, which go stale on a missed scrape and drop
to zero when a pod restarts. Arbiter's iterate stage asks Prometheus for the increase over
the experiment so far; `Scraper` rebuilds exactly that from the readings, one interval at
a time, with the simulator's reset-aware `increase`. Like PromQL it can undercount a reset
it cannot see, so the rebuilt counts are made consistent before anyone reads them (errors
never above requests, bucket counts non-decreasing in `le`).

The conditional tests (relative objectives, and the pairwise reward test) need each
window's own counts, taken over the same window for every version. `Observation.window_*`
holds them: the increase since the last look at which every version of the replicate was
scraped, given at a look where all were (and zero elsewhere, the counts carried to the next
such look), so a missed scrape never pairs one version's interval with another's.
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
    window_requests: FloatArray
    window_errors: FloatArray
    window_buckets: FloatArray
    window_rewards: FloatArray

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
            self.window_requests[rows],
            self.window_errors[rows],
            self.window_buckets[rows],
            self.window_rewards[rows],
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
        self._pending = {n: z.copy() for n, z in zeros.items()}

    def observe(
        self, snapshot: Snapshot, last: bool, active: npt.NDArray[np.bool_] | None = None
    ) -> Observation:
        aligned = np.all(snapshot.fresh, axis=1)
        window: dict[str, FloatArray] = {}
        for name in self._names:
            now = np.asarray(getattr(snapshot.observed, name), dtype=np.float64)
            step = increase(self._prev[name], now)
            self._total[name] = self._total[name] + step
            self._prev[name] = now
            pending = self._pending[name] + step
            mask = aligned.reshape(aligned.shape + (1,) * (pending.ndim - 1))
            window[name] = np.where(mask, pending, 0.0)
            self._pending[name] = np.where(mask, 0.0, pending)
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
            window_requests=window["requests"],
            window_errors=np.minimum(window["errors"], window["requests"]),
            window_buckets=np.minimum(
                np.maximum.accumulate(window["buckets"], axis=-1), window["requests"][..., None]
            ),
            window_rewards=np.minimum(window["reward_sum"], window["requests"]),
        )
