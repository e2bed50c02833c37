"""The running statistic of the conditional ratio test for relative objectives.

A `maxRatio` condition is judged per iteration: given that iteration's total events and the
requests each version served, the candidate's events are binomial with a share that depends
only on the rate ratio r, so changes common to both versions cancel
(docs/statistics.md#relative-objectives). The whole history reduces to one sum of log
likelihood ratios per grid point and side, kept here, so the stateless functions can carry
it in the Experiment's status. Pure Python (no numpy): the cold stages parse the status.
`analytics.sequential.ratio_log_lr` is the vectorised twin the benchmarks use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self

RATIO_OFFSETS: Final = (0.1, 0.2, 0.3, 0.45, 0.7, 1.1)
"""The mixture's grid over |log(r / margin)|, equal weights: the regressions that matter in
a canary lie 10% to 3x beyond the margin (a 1% vs 2% error rate against a 1.5x margin is
0.29). A point at offset d earns drift about d * d_true - d^2 / 2 per unit of information,
so with neighbours at most ~1.5x apart some point earns over 90% of the best drift, and six
points cost at most log 6 against an oracle that knew the effect (less in practice, as
neighbours share the credit). Measured at a fixed 10% canary, 50 rps, 1% vs 2% errors: the
median time to reject "within 1.5x" is 1.3x that of Wald's SPRT that knows r = 2; finer
or wider grids (4 to 8 points, down to 0.05) did no better."""


REWARD_OFFSETS: Final = tuple(round(0.01 * 1.6**i, 4) for i in range(9))
"""The pairwise reward test's grid over |log(r)|, r one version's reward rate over another's:
from 1% to 43%. Versions compared by a reward differ far less than a regression differs from
its margin (the A/B/n scenarios step conversion by 3%), so the grid starts low; nine points
1.6x apart cost at most log 9 = 2.2 against an oracle that knew the gap, where a mixture over
both versions' rates (the cumulative statistic) costs about log N."""

INCIDENT_FACTOR: Final = 5.0
"""An iteration whose pooled event rate (both versions together) exceeds this multiple of the
pooled rate so far is taken as an incident and left out of the satisfaction side."""
INCIDENT_WEIGHT: Final = 0.05
"""The violation side bets only this share of its wealth on an incident window: its factor
is 1 - w + w * LR, whose mean is still at most 1 under the null, so a window where every
version fails alike (LR near 0 for r beyond the margin) costs at most 5%, while a candidate
that itself causes the surge still drives the factor far above 1."""
INCIDENT_MIN_EVENTS: Final = 10.0
DISPERSION_PRIOR: Final = 2.0
DISPERSION_PRIOR_WINDOWS: Final = 10.0
"""The dispersion estimate starts as this many windows' worth of DISPERSION_PRIOR: early on
a few windows cannot tell binomial noise from clustered errors, so the test assumes some
clustering until the data show otherwise."""
"""Neither the iteration nor the reference is judged on fewer events than this."""


def is_incident(events: float, requests: float, ref_events: float, ref_requests: float) -> bool:
    """Whether this iteration looks like an incident against the reference so far.

    A global incident can make both versions fail alike (20% errors on each), and then the
    rate ratio *in that window* truly is 1: a valid test would count it as evidence that
    the candidate is within the margin. The decision looks only at the iteration's total
    events and the past, never at how they split between the versions, so given the total
    the candidate's events stay binomial and leaving the window out keeps the test valid.
    Promotion skips it; rollback only bets INCIDENT_WEIGHT on it, since a candidate that
    causes the surge itself must still be caught.
    """
    if events < INCIDENT_MIN_EVENTS or ref_events < INCIDENT_MIN_EVENTS or ref_requests <= 0:
        return False
    return events > INCIDENT_FACTOR * requests * ref_events / ref_requests


def dispersion(total: float, windows: float) -> float:
    """The overdispersion factor phi >= 1 that tempers the next window's likelihood ratio.

    When errors cluster within a window (per-pod beta-binomial noise), the candidate's
    share of the events varies more than the binomial allows, and a plain likelihood ratio
    overstates the evidence. The mean squared Pearson residual of past windows estimates
    that excess; the ratio raised to 1/phi still has mean at most 1 under the null
    (Jensen), whatever phi >= 1 is, as long as phi is fixed before the window is seen.
    """
    prior = DISPERSION_PRIOR_WINDOWS
    return max(1.0, (total + DISPERSION_PRIOR * prior) / (windows + prior))


def pearson(c: float, nc: float, b: float, nb: float, reference: tuple[float, ...]) -> float:
    """This window's squared Pearson residual, at the rate ratio estimated before it."""
    ce, cr, be, br = reference
    ratio = ((ce + 0.5) / (cr + 1.0)) / ((be + 0.5) / (br + 1.0))
    theta = ratio * nc / (ratio * nc + nb)
    total = c + b
    return (c - total * theta) ** 2 / (total * theta * (1.0 - theta))


def _log_lr(c: float, nc: float, b: float, nb: float, margin: float, ratio: float) -> float:
    if nc <= 0 or nb <= 0:
        return 0.0
    t0 = margin * nc / (margin * nc + nb)
    t1 = ratio * nc / (ratio * nc + nb)
    return c * (math.log(t1) - math.log(t0)) + b * (math.log1p(-t1) - math.log1p(-t0))


def _complement(counts: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """(events, requests, events, requests) with each events count replaced by the rest."""
    ce, cr, be, br = counts
    return (cr - ce, cr, br - be, br)


def _damped(log_lr: float, incident: bool) -> float:
    """log(1 - w + w LR) in an incident window, log LR otherwise."""
    if not incident:
        return log_lr
    w = INCIDENT_WEIGHT
    top = max(math.log1p(-w), math.log(w) + log_lr)
    return top + math.log(math.exp(math.log1p(-w) - top) + math.exp(math.log(w) + log_lr - top))


def _log_mean_exp(values: tuple[float, ...]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


@dataclass(frozen=True)
class RatioTest:
    """One candidate's conditional ratio test against one margin, as a running statistic.

    Bounded whatever the experiment's length: a sum of log likelihood ratios per grid point
    for each side, the counts outside incidents (the reference), and the dispersion
    estimate's running sum. `iteration` is the last iteration folded in; folding the same
    iteration again (a redelivered event) changes nothing.
    """

    margin: float
    iteration: int = 0
    candidate_events: float = 0.0
    candidate_requests: float = 0.0
    baseline_events: float = 0.0
    baseline_requests: float = 0.0
    incidents: int = 0
    dispersion_total: float = 0.0
    dispersion_windows: float = 0.0
    violation: tuple[float, ...] = ()
    satisfaction: tuple[float, ...] = ()

    OFFSETS: ClassVar[tuple[float, ...]] = RATIO_OFFSETS
    """The mixture's grid; empty sums start at zero on every point."""
    FLIP: ClassVar[bool] = False
    """Whether a window may be judged on the complements (see PairTest)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin > 0):
            raise ValueError(f"margin must be a positive number, got {self.margin}")
        n = len(self.OFFSETS)
        for side in ("violation", "satisfaction"):
            if not getattr(self, side):
                object.__setattr__(self, side, (0.0,) * n)
        if len(self.violation) != n or len(self.satisfaction) != n:
            raise ValueError(f"violation and satisfaction need {n} numbers each")

    @property
    def phi(self) -> float:
        return dispersion(self.dispersion_total, self.dispersion_windows)

    def fold(
        self,
        iteration: int,
        candidate_events: float,
        candidate_trials: float,
        baseline_events: float,
        baseline_trials: float,
    ) -> Self:
        """This test with iteration `iteration`'s own counts added, once; counts rounded."""
        if iteration <= self.iteration:
            return self
        c, nc, b, nb = (
            float(round(max(x, 0.0)))
            for x in (candidate_events, candidate_trials, baseline_events, baseline_trials)
        )
        m, phi = self.margin, self.phi
        reference = (
            self.candidate_events,
            self.candidate_requests,
            self.baseline_events,
            self.baseline_requests,
        )
        flip = self.FLIP and reference[0] + reference[2] > (reference[1] + reference[3]) / 2
        # The frame the window is judged in: the counts, or (FLIP) their complements.
        fc, fb, ref = (nc - c, nb - b, _complement(reference)) if flip else (c, b, reference)
        incident = is_incident(fc + fb, nc + nb, ref[0] + ref[2], ref[1] + ref[3])
        counted = not incident and nc > 0 and nb > 0 and fc + fb > 0
        residual = pearson(fc, nc, fb, nb, ref) if counted else 0.0
        keep = 0.0 if incident else 1.0
        above = tuple(
            _damped(_log_lr(fc, nc, fb, nb, m, m * math.exp(d)) / phi, incident)
            for d in self.OFFSETS
        )
        below = tuple(
            keep * _log_lr(fc, nc, fb, nb, m, m * math.exp(-d)) / phi for d in self.OFFSETS
        )
        # A higher share of the complements is evidence for the other side.
        above, below = (below, above) if flip else (above, below)
        return type(self)(
            margin=m,
            iteration=iteration,
            candidate_events=self.candidate_events + keep * c,
            candidate_requests=self.candidate_requests + keep * nc,
            baseline_events=self.baseline_events + keep * b,
            baseline_requests=self.baseline_requests + keep * nb,
            incidents=self.incidents + int(incident),
            dispersion_total=self.dispersion_total + residual,
            dispersion_windows=self.dispersion_windows + float(counted),
            violation=tuple(s + x for s, x in zip(self.violation, above, strict=True)),
            satisfaction=tuple(s + x for s, x in zip(self.satisfaction, below, strict=True)),
        )

    @property
    def log_evidence(self) -> tuple[float, float]:
        """Log e-values (against "within the margin", against "beyond the margin")."""
        return _log_mean_exp(self.violation), _log_mean_exp(self.satisfaction)

    def to_dict(self) -> dict[str, Any]:
        return {
            "margin": self.margin,
            "iteration": self.iteration,
            "candidateEvents": self.candidate_events,
            "candidateRequests": self.candidate_requests,
            "baselineEvents": self.baseline_events,
            "baselineRequests": self.baseline_requests,
            "incidents": self.incidents,
            "dispersionTotal": self.dispersion_total,
            "dispersionWindows": self.dispersion_windows,
            "violation": list(self.violation),
            "satisfaction": list(self.satisfaction),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Self:
        """Read back `to_dict`'s shape. Raises KeyError, ValueError or TypeError."""
        return cls(
            margin=float(raw["margin"]),
            iteration=int(raw["iteration"]),
            candidate_events=float(raw.get("candidateEvents", 0.0)),
            candidate_requests=float(raw.get("candidateRequests", 0.0)),
            baseline_events=float(raw.get("baselineEvents", 0.0)),
            baseline_requests=float(raw.get("baselineRequests", 0.0)),
            incidents=int(raw.get("incidents", 0)),
            dispersion_total=float(raw.get("dispersionTotal", 0.0)),
            dispersion_windows=float(raw.get("dispersionWindows", 0.0)),
            violation=tuple(float(x) for x in raw["violation"]),
            satisfaction=tuple(float(x) for x in raw["satisfaction"]),
        )


@dataclass(frozen=True)
class PairTest(RatioTest):
    """Two versions' reward rates compared window by window: the pairwise stopping rule's
    statistic for an A/B/n reward on counts (docs/statistics.md#the-pairwise-stopping-rule).

    The same conditional test at margin 1: "candidate" is the version, "baseline" its rival,
    `violation` the evidence that the version's rate is the higher, `satisfaction` that the
    rival's is. Given a window's total conversions, the version's share is binomial when
    conversions are rare (Poisson), and for any rate less spread than that (the exact
    conditional law of two binomials is hypergeometric-like, which is dominated in convex
    order by the binomial, Hoeffding 1963): so exp(sum of log LR) stays a supermartingale
    under "not higher" whatever the rates are. Only the ratio is tested, so the common rate
    costs nothing: one grid mixture instead of one mixture per version.

    Counting the events is sharp only while they are rare: at 95% accuracy the successes
    barely vary, and the binomial (the Poisson picture) would credit them with twenty times
    the noise they have. So once the pooled rate so far is above one half, a window is
    judged on the complements (the failures), whose ratio points the other way. The choice
    rests on past windows only, so every window's factor keeps its mean at most 1 and the
    product stays a supermartingale. Only at margin 1 is that the same question.
    """

    margin: float = 1.0
    OFFSETS: ClassVar[tuple[float, ...]] = REWARD_OFFSETS
    FLIP: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        # Any other margin would test "beats the rival by that factor", not "beats it".
        if self.margin != 1.0:
            raise ValueError(f"a pairwise test's margin is 1, got {self.margin}")


PairTests = Mapping[tuple[str, str], PairTest]
"""(version, rival) -> their windowed test, as `status.rewardTests` keeps them per metric."""
