"""The methods the benchmark compares, each re-implemented from its published description.

One module per method; `METHODS` lists them in report order. The Garivier-Kaufmann lower
bound (`lower_bound`) is a number, not a method, and is reported beside them.
"""

from __future__ import annotations

from typing import Final

from benchmarks.methods import (
    arbiter,
    epsilon_greedy,
    fixed_horizon,
    flagger,
    iter8_v1,
    iter8_v2,
    kayenta,
    naive_peeking,
    oracle_tracking,
    sprt_oracle,
    thompson,
    thompson_glr,
)
from benchmarks.methods.base import MethodInfo

METHODS: Final[tuple[MethodInfo, ...]] = (
    arbiter.INFO,
    fixed_horizon.INFO,
    naive_peeking.INFO,
    flagger.INFO,
    kayenta.INFO,
    iter8_v2.INFO,
    iter8_v1.INFO,
    epsilon_greedy.INFO,
    thompson.INFO,
    thompson_glr.INFO,
    oracle_tracking.INFO,
    oracle_tracking.HEURISTIC_INFO,
    sprt_oracle.INFO,
    sprt_oracle.NOISE_AWARE_INFO,
)
BY_NAME: Final = {m.name: m for m in METHODS}
