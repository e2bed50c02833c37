"""Simulation of the anytime-valid claim: checking every iteration keeps errors at alpha.

The claim: docs/statistics.md#confidence-sequences, and for relative objectives
docs/statistics.md#relative-objectives (A/A under a moving split and a global burst).

Identical versions (A/A) serve 50 requests per iteration with 1% errors, and the verdict is
re-checked after every one of 2,000 iterations, as the assess function would. Over R seeded
replicates, the share of experiments that are *ever* falsely judged must stay within alpha
plus three Monte Carlo standard errors. Every replicate runs at once on the analytics'
leading batch axis; `analytics.assessment` itself (which has no batch path) is run on the
looks nearest each decision threshold to show the batched replica decides as it does. The
naive fixed-sample z-test, peeked at on the same data, fails the same bound by far: the
bound has teeth.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from analytics import batch, model, sequential
from analytics.assessment import Verdict, assess_versions
from analytics.measurements import Counts, Histogram, Measurement
from analytics.model import Criteria, ExperimentSpec, Objective, Strategy, Version, VersionInfo

pytestmark = pytest.mark.slow

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

SEED: Final = 20261123
ALPHA: Final = 0.05
ERROR_RATE: Final = 0.01
"""The true error rate of every version, and the error-rate objective's upperLimit."""
MAX_RATIO: Final = 1.0
"""The candidate may err at most as often as the baseline: identical versions sit on it."""
QUANTILE: Final = 0.95
SLOW_SHARE: Final = 1 - QUANTILE
"""True share of requests above the latency bound, on its limit; computed as the assessment
computes it, so both compare with the very same float."""
LATENCY_LIMIT: Final = 250.0
REQUESTS: Final = 50
"""Requests per version per iteration."""
LOOKS: Final = 2000
REPLICATES: Final = 500
"""sqrt(0.05 * 0.95 / 500) = 0.0097: the Monte Carlo s.e. of a rate near alpha is <= 0.01."""
POWER_REPLICATES: Final = 100
WORSE_ERROR_RATE: Final = 0.015
Z_ONE_SIDED: Final = float(stats.norm.ppf(1 - ALPHA))

BASELINE: Final = "baseline"
CANDIDATE: Final = "candidate"
SPEC: Final = ExperimentSpec(
    target="sim/model",
    # pytest would try to collect a `Test*` name imported into this module.
    strategy=Strategy(model.TestingPattern.CANARY),
    criteria=Criteria(
        objectives=(
            Objective("error-rate", upper_limit=ERROR_RATE, max_ratio=MAX_RATIO),
            Objective("latency", upper_limit=LATENCY_LIMIT, quantile=QUANTILE),
        ),
        alpha=ALPHA,
    ),
    version_info=VersionInfo(Version(BASELINE), (Version(CANDIDATE),)),
)
CANDIDATE_CONDITIONS: Final = 3
"""upperLimit and maxRatio on error-rate, the bucket share on latency: Bonferroni splits 3."""


def mc_bound(replicates: int) -> float:
    """The most a rate whose truth is <= alpha may show: alpha + 3 Monte Carlo s.e."""
    return ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / replicates)


@dataclass(frozen=True)
class Counters:
    """Cumulative counts after each look, shape (replicates, looks); trials shape (looks,)."""

    seed: int
    trials: IntArray
    baseline_errors: IntArray
    candidate_errors: IntArray
    baseline_slow: IntArray
    candidate_slow: IntArray

    @property
    def replicates(self) -> int:
        return int(self.candidate_errors.shape[0])


def simulate(seed: int, replicates: int, candidate_error_rate: float) -> Counters:
    rng = np.random.default_rng(seed)

    def cumulative(p: float) -> IntArray:
        per_look = rng.binomial(REQUESTS, p, size=(replicates, LOOKS))
        return np.asarray(np.cumsum(per_look, axis=1), dtype=np.int64)

    return Counters(
        seed=seed,
        trials=REQUESTS * np.arange(1, LOOKS + 1, dtype=np.int64),
        baseline_errors=cumulative(ERROR_RATE),
        candidate_errors=cumulative(candidate_error_rate),
        baseline_slow=cumulative(SLOW_SHARE),
        candidate_slow=cumulative(SLOW_SHARE),
    )


@dataclass(frozen=True)
class Margins:
    """Each of the candidate's conditions as a ratio that is > 1 (violation) or >= 1
    (satisfaction) exactly where `analytics.assessment` decides it, per replicate and look."""

    upper_violation: FloatArray
    ratio_violation: FloatArray
    latency_violation: FloatArray
    upper_satisfaction: FloatArray
    ratio_satisfaction: FloatArray
    latency_satisfaction: FloatArray

    def violated(self) -> tuple[BoolArray, BoolArray]:
        """(error-rate objective violated, latency objective violated)."""
        error = (self.upper_violation > 1) | (self.ratio_violation > 1)
        return error, self.latency_violation > 1

    def satisfied(self) -> tuple[BoolArray, BoolArray]:
        """(error-rate objective satisfied, latency objective satisfied)."""
        error_v, latency_v = self.violated()
        error = (self.upper_satisfaction >= 1) & (self.ratio_satisfaction >= 1) & ~error_v
        return error, (self.latency_satisfaction >= 1) & ~latency_v

    def named(self) -> Iterator[tuple[str, FloatArray, bool]]:
        """(name, margin, strict) for each condition."""
        yield "upperLimit violation", self.upper_violation, True
        yield "maxRatio violation", self.ratio_violation, True
        yield "latency violation", self.latency_violation, True
        yield "upperLimit satisfaction", self.upper_satisfaction, False
        yield "maxRatio satisfaction", self.ratio_satisfaction, False
        yield "latency satisfaction", self.latency_satisfaction, False


def engine_margins(c: Counters) -> Margins:
    """The candidate's verdicts as `assess_versions` reaches them, on the batch axis.

    Violations share alpha over the candidate's conditions; a relative condition uses each
    version's sequence at half that level; satisfaction uses the full alpha (halved for the
    relative pair). The count prior centres on the objective's limit, as `_scale` sets it.
    """
    violate = ALPHA / CANDIDATE_CONDITIONS
    n = c.trials
    c_lo_v, _ = sequential.binomial_cs(c.candidate_errors, n, violate, ERROR_RATE)
    c_lo_vr, _ = sequential.binomial_cs(c.candidate_errors, n, violate / 2, ERROR_RATE)
    _, b_hi_vr = sequential.binomial_cs(c.baseline_errors, n, violate / 2, ERROR_RATE)
    s_lo_v, _ = sequential.binomial_cs(c.candidate_slow, n, violate, SLOW_SHARE)
    _, c_hi_s = sequential.binomial_cs(c.candidate_errors, n, ALPHA, ERROR_RATE)
    _, c_hi_sr = sequential.binomial_cs(c.candidate_errors, n, ALPHA / 2, ERROR_RATE)
    b_lo_sr, _ = sequential.binomial_cs(c.baseline_errors, n, ALPHA / 2, ERROR_RATE)
    _, s_hi_s = sequential.binomial_cs(c.candidate_slow, n, ALPHA, SLOW_SHARE)
    return Margins(
        upper_violation=c_lo_v / ERROR_RATE,
        ratio_violation=c_lo_vr / (MAX_RATIO * b_hi_vr),
        latency_violation=s_lo_v / SLOW_SHARE,
        upper_satisfaction=ERROR_RATE / c_hi_s,
        ratio_satisfaction=MAX_RATIO * b_lo_sr / c_hi_sr,
        latency_satisfaction=SLOW_SHARE / s_hi_s,
    )


def ever(decided: BoolArray) -> float:
    """Share of replicates decided at some look."""
    return float(np.mean(np.any(decided, axis=-1)))


def naive_z(events: IntArray, trials: IntArray, p0: float) -> FloatArray:
    """The fixed-sample one-sided z statistic for H0: rate <= p0."""
    return np.asarray((events / trials - p0) / np.sqrt(p0 * (1 - p0) / trials), dtype=np.float64)


def naive_two_proportion_z(candidate: IntArray, baseline: IntArray, trials: IntArray) -> FloatArray:
    """The fixed-sample pooled z statistic for H0: candidate rate <= baseline rate."""
    pooled = (candidate + baseline) / (2 * trials)
    se = np.sqrt(pooled * (1 - pooled) * 2 / trials)
    diff = (candidate - baseline) / trials
    return np.divide(diff, se, out=np.zeros_like(diff, dtype=np.float64), where=se > 0)


@pytest.fixture(scope="module")
def aa() -> Counters:
    return simulate(SEED, REPLICATES, ERROR_RATE)


@pytest.fixture(scope="module")
def aa_margins(aa: Counters) -> Margins:
    return engine_margins(aa)


@pytest.fixture(scope="module")
def worse() -> Counters:
    return simulate(SEED + 1, POWER_REPLICATES, WORSE_ERROR_RATE)


@pytest.fixture(scope="module")
def worse_margins(worse: Counters) -> Margins:
    return engine_margins(worse)


def test_the_confidence_sequence_excludes_the_true_rate_at_most_alpha_of_the_time(
    aa: Counters,
) -> None:
    bound = mc_bound(aa.replicates)
    setting = f"seed {aa.seed}, R={aa.replicates}, {LOOKS} looks, bound {bound:.4f}"
    lower, upper = sequential.binomial_cs(aa.candidate_errors, aa.trials, ALPHA, ERROR_RATE)
    above = ever(lower > ERROR_RATE)
    below = ever(upper < ERROR_RATE)
    # Each bound alone holds at alpha; both at alpha/2 give a two-sided sequence at alpha.
    lower2, upper2 = sequential.binomial_cs(aa.candidate_errors, aa.trials, ALPHA / 2, ERROR_RATE)
    either = ever((lower2 > ERROR_RATE) | (upper2 < ERROR_RATE))
    assert above <= bound, f"lower bound ever above the truth in {above:.4f} ({setting})"
    assert below <= bound, f"upper bound ever below the truth in {below:.4f} ({setting})"
    assert either <= bound, f"two-sided sequence ever missed the truth in {either:.4f} ({setting})"

    naive = ever(naive_z(aa.candidate_errors, aa.trials, ERROR_RATE) > Z_ONE_SIDED)
    assert naive > 4 * ALPHA, (
        f"a fixed-sample z-test peeked at {LOOKS} times should reject far more often than"
        f" alpha; it rejected in {naive:.4f} ({setting}), so this harness could not tell"
    )


def test_identical_versions_are_falsely_found_in_violation_at_most_alpha_of_the_time(
    aa: Counters, aa_margins: Margins
) -> None:
    bound = mc_bound(aa.replicates)
    setting = f"seed {aa.seed}, R={aa.replicates}, {LOOKS} looks, bound {bound:.4f}"
    error, latency = aa_margins.violated()
    rate = ever(error | latency)
    assert rate <= bound, (
        f"the candidate was ever found in violation (a rollback) in {rate:.4f} of A/A runs"
        f" ({setting}); error-rate {ever(error):.4f}, latency {ever(latency):.4f}"
    )

    # The same three conditions judged by fixed-sample z-tests, Bonferroni-split as above.
    z = float(stats.norm.ppf(1 - ALPHA / CANDIDATE_CONDITIONS))
    naive = ever(
        (naive_z(aa.candidate_errors, aa.trials, ERROR_RATE) > z)
        | (naive_two_proportion_z(aa.candidate_errors, aa.baseline_errors, aa.trials) > z)
        | (naive_z(aa.candidate_slow, aa.trials, SLOW_SHARE) > z)
    )
    assert naive > 4 * ALPHA, (
        f"peeked fixed-sample tests should roll back far more than alpha of A/A runs;"
        f" they did in {naive:.4f} ({setting}), so this harness could not tell"
    )


def test_a_candidate_on_its_limits_is_falsely_found_satisfying_at_most_alpha_of_the_time(
    aa: Counters, aa_margins: Margins
) -> None:
    # Every truth sits on its limit, so satisfying all objectives (a Canary promotion)
    # would be a false satisfaction.
    bound = mc_bound(aa.replicates)
    setting = f"seed {aa.seed}, R={aa.replicates}, {LOOKS} looks, bound {bound:.4f}"
    error, latency = aa_margins.satisfied()
    for name, satisfied in (("error-rate", error), ("latency", latency)):
        rate = ever(satisfied)
        assert rate <= bound, f"{name} ever satisfied in {rate:.4f} of runs ({setting})"
    promoted = ever(error & latency)
    assert promoted <= bound, f"candidate ever promoted in {promoted:.4f} of runs ({setting})"


def test_a_worse_candidate_is_found_in_violation(worse: Counters, worse_margins: Margins) -> None:
    # Shows the sequences are not vacuously wide: 1.5% errors against a 1% limit.
    error, _ = worse_margins.violated()
    rate = ever(error)
    assert rate >= 0.9, (
        f"a candidate with {WORSE_ERROR_RATE:.1%} errors was found in violation in only"
        f" {rate:.4f} of runs (seed {worse.seed}, R={worse.replicates}, {LOOKS} looks)"
    )


def _looks_to_check(margins: Margins, per_condition: int) -> set[tuple[int, int]]:
    """(replicate, look) pairs nearest each decision: where a condition first crosses its
    threshold and the look before, and for the replicates that came closest without
    crossing, their closest look."""
    picked: set[tuple[int, int]] = set()
    for _, margin, strict in margins.named():
        crossed = margin > 1 if strict else margin >= 1
        ever_crossed = np.any(crossed, axis=1)
        for r in np.flatnonzero(ever_crossed)[:per_condition]:
            first = int(np.argmax(crossed[r]))
            picked |= {(int(r), first), (int(r), max(first - 1, 0))}
        closest = np.where(ever_crossed, -np.inf, margin.max(axis=1))
        for r in np.argsort(-closest)[:per_condition]:
            if not ever_crossed[r]:
                picked.add((int(r), int(np.argmax(margin[r]))))
    return picked


def _replica_verdicts(margins: Margins, r: int, look: int) -> tuple[Verdict, Verdict]:
    violated = margins.violated()
    satisfied = margins.satisfied()

    def verdict(i: int) -> Verdict:
        if violated[i][r, look]:
            return Verdict.VIOLATED
        return Verdict.SATISFIED if satisfied[i][r, look] else Verdict.UNDECIDED

    return verdict(0), verdict(1)


def _engine_verdicts(c: Counters, r: int, look: int) -> tuple[Verdict, Verdict]:
    n = float(c.trials[look])

    def histogram(slow: IntArray) -> Histogram:
        return Histogram((LATENCY_LIMIT, math.inf), (n - float(slow[r, look]), n))

    measurements: dict[str, dict[str, Measurement]] = {
        "error-rate": {
            BASELINE: Counts(float(c.baseline_errors[r, look]), n),
            CANDIDATE: Counts(float(c.candidate_errors[r, look]), n),
        },
        "latency": {
            BASELINE: histogram(c.baseline_slow),
            CANDIDATE: histogram(c.candidate_slow),
        },
    }
    error, latency = assess_versions(SPEC, measurements)[CANDIDATE]
    return error.verdict, latency.verdict


@pytest.mark.parametrize("scenario", ["identical", "worse"])
def test_the_batched_verdicts_are_the_assessments_own(
    scenario: str,
    aa: Counters,
    aa_margins: Margins,
    worse: Counters,
    worse_margins: Margins,
) -> None:
    counters, margins = (aa, aa_margins) if scenario == "identical" else (worse, worse_margins)
    looks = sorted(_looks_to_check(margins, per_condition=4))
    mismatches = [
        (r, look, replica, engine)
        for r, look in looks
        if (replica := _replica_verdicts(margins, r, look))
        != (engine := _engine_verdicts(counters, r, look))
    ]
    assert not mismatches, (
        f"batched replica and assess_versions disagree (seed {counters.seed}) at"
        f" (replicate, look, replica, engine): {mismatches[:5]}"
    )
    seen = {v for r, look in looks for v in _replica_verdicts(margins, r, look)}
    # The comparison must cover decided looks, or it would prove little.
    expected = {Verdict.VIOLATED, Verdict.UNDECIDED}
    if scenario == "identical":
        expected.add(Verdict.SATISFIED)
    assert expected <= seen, f"checked only {seen} on {len(looks)} looks (seed {counters.seed})"


# --- The conditional ratio test of relative objectives -------------------------------------


def test_the_conditional_ratio_test_keeps_false_decisions_within_alpha() -> None:
    # Identical versions on the margin (maxRatio 1): both a rollback (r > 1 proven) and a
    # promotion (r < 1 proven) are false. The split moves every look between 5% and 50%,
    # requests swing +-50% over the run, and a 2-minute burst of 20% errors hits both
    # versions alike: the cumulative comparison would see the burst land on whichever
    # version had more traffic; the conditional test must not.
    rng = np.random.default_rng(SEED + 2)
    bound = mc_bound(REPLICATES)
    sums = batch.RatioSums.start(1.0, (REPLICATES, 2))
    violated = np.zeros(REPLICATES, dtype=np.bool_)
    satisfied = np.zeros(REPLICATES, dtype=np.bool_)
    for look in range(LOOKS):
        share = 0.05 + 0.45 * (0.5 + 0.5 * math.sin(2 * math.pi * look / 180))
        volume = 500 * (1 + 0.5 * math.sin(2 * math.pi * look / 720))
        requests = rng.poisson(volume * np.array([1 - share, share]), size=(REPLICATES, 2))
        rate = 0.2 if 1000 <= look < 1012 else ERROR_RATE
        errors = rng.binomial(requests, rate)
        sums.fold(errors.astype(np.float64), requests.astype(np.float64))
        violated |= sequential.ratio_log_evidence(sums.violation[:, 1]) >= -math.log(ALPHA)
        satisfied |= sequential.ratio_log_evidence(sums.satisfaction[:, 1]) >= -math.log(ALPHA)
    setting = f"seed {SEED + 2}, R={REPLICATES}, {LOOKS} looks, bound {bound:.4f}"
    assert violated.mean() <= bound, f"false rollback in {violated.mean():.4f} ({setting})"
    assert satisfied.mean() <= bound, f"false promotion in {satisfied.mean():.4f} ({setting})"
    assert np.all(sums.reference[:, 1, 1] > 0), "no window was folded"


def test_the_conditional_ratio_test_finds_a_worse_candidate() -> None:
    # Not vacuous: a candidate at twice the baseline's errors, at a 10% share, is proven
    # beyond a 1.5x margin in nearly every run within the same looks.
    rng = np.random.default_rng(SEED + 3)
    sums = batch.RatioSums.start(1.5, (POWER_REPLICATES, 2))
    violated = np.zeros(POWER_REPLICATES, dtype=np.bool_)
    for _ in range(LOOKS // 4):
        requests = rng.poisson(500 * np.array([0.9, 0.1]), size=(POWER_REPLICATES, 2))
        errors = rng.binomial(requests, [ERROR_RATE, 2 * ERROR_RATE])
        sums.fold(errors.astype(np.float64), requests.astype(np.float64))
        violated |= sequential.ratio_log_evidence(sums.violation[:, 1]) >= -math.log(ALPHA)
    assert violated.mean() >= 0.9, f"found in only {violated.mean():.2f} (seed {SEED + 3})"


# --- The pairwise reward test of A/B/n ------------------------------------------------------


def _winner(sums: batch.PairSums, k: int) -> npt.NDArray[np.int64]:
    """The version every rival's pairwise evidence names (-1: none), as reward_winner does."""
    s = sums.matrix()
    margin = np.min(np.where(np.eye(k, dtype=np.bool_), np.inf, s), axis=-1)
    wins = margin > math.log(k / ALPHA)
    return np.where(wins.any(axis=-1), np.argmax(wins, axis=-1), -1)


@pytest.mark.parametrize("conversion", [0.10, 0.5, 0.95])
def test_the_pairwise_reward_test_names_no_version_among_equals_beyond_alpha(
    conversion: float,
) -> None:
    # Three identical versions: naming any is a false promotion. At 10% the conditional law
    # is already far from the Poisson one the test is written for (validity rests on the
    # binomial dominating it in convex order); at 95% the test judges the failures; at 50%
    # it switches between the two from window to window. The leader's share sweeps
    # 10%..80% and back, volume swings +-50%, and a 2-minute slump to a fifth of the rate
    # hits every version alike (common-mode: it cancels in each pair's share).
    k = 3
    looks = LOOKS // 2  # three rates: 1,000 looks each keep the module's time
    rng = np.random.default_rng(SEED + 4 + int(100 * conversion))
    bound = mc_bound(REPLICATES)
    sums = batch.PairSums.start((REPLICATES, k))
    named = np.zeros(REPLICATES, dtype=np.bool_)
    first_side = np.zeros(REPLICATES, dtype=np.bool_)
    for look in range(looks):
        lead = 0.1 + 0.7 * (0.5 + 0.5 * math.sin(2 * math.pi * look / 240))
        shares = np.array([lead, (1 - lead) * 0.7, (1 - lead) * 0.3])
        volume = 600 * (1 + 0.5 * math.sin(2 * math.pi * look / 720))
        requests = rng.poisson(volume * shares, size=(REPLICATES, k))
        rate = conversion / 5 if 500 <= look < 512 else conversion
        conversions = rng.binomial(requests, rate)
        sums.fold(conversions.astype(np.float64), requests.astype(np.float64))
        named |= _winner(sums, k) >= 0
        # One pair's one side, alone at 1/alpha: the e-process itself, not only the union.
        first = sequential.ratio_log_evidence(sums.sums.violation[:, 0])
        first_side |= first >= -math.log(ALPHA)
    setting = f"rate {conversion}, R={REPLICATES}, {looks} looks, bound {bound:.4f}"
    assert named.mean() <= bound, f"a version named in {named.mean():.4f} ({setting})"
    assert first_side.mean() <= bound, f"one side crossed in {first_side.mean():.4f} ({setting})"
    assert np.all(sums.sums.reference[:, :, 1] > 0), "no window was folded"


@pytest.mark.parametrize(
    "rates", [(0.100, 0.103, 0.106, 0.109), (0.950, 0.953, 0.956, 0.959)], ids=["10%", "95%"]
)
def test_the_pairwise_reward_test_finds_the_best_of_four(rates: tuple[float, ...]) -> None:
    # Not vacuous: conversion 10/10.3/10.6/10.9% at 200 req/s in 10-s windows, split
    # evenly, as the A/B/n benchmark scenario: the best is named, and only it, within 3 h
    # in nearly every run (the cumulative statistic: about a quarter). At 95% accuracy the
    # failures carry the evidence: steps of 0.3 points (6% of the 5% failures) are found
    # as well.
    k = 4
    rng = np.random.default_rng(SEED + 5)
    sums = batch.PairSums.start((POWER_REPLICATES, k))
    named = np.full(POWER_REPLICATES, -1)
    for _ in range(1080):
        requests = rng.poisson(500, size=(POWER_REPLICATES, k))
        conversions = rng.binomial(requests, rates)
        sums.fold(conversions.astype(np.float64), requests.astype(np.float64))
        named = np.where(named >= 0, named, _winner(sums, k))
    assert set(named[named >= 0].tolist()) <= {3}, f"named {np.bincount(named[named >= 0])}"
    assert (named == 3).mean() >= 0.9, f"found in only {(named == 3).mean():.2f} (seed {SEED + 5})"
