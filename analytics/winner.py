"""Winner assessment per testing pattern, with a message saying why.

- Conformance: the baseline, if it satisfies all objectives.
- Canary: the candidate if it satisfies all, else the baseline if it does, else none.
- A/B and A/B/n: the best value of the first reward among versions satisfying all
  objectives (a version violating one cannot win). With evidence, a winner is declared by a
  pairwise mixture-likelihood-ratio (GLR-type) stopping rule: version i wins once, against
  every other version j still in the running, the statistic

      S_ij = log m_i + log m_j - sup over {lambda_i <= lambda_j} of [l_i(lambda_i) + l_j(lambda_j)]

  exceeds log(K / alpha). m is each version's mixture (marginal) likelihood (Robbins'
  beta-binomial mixture of `analytics.sequential` for counts, his normal mixture for means)
  and l its log-likelihood. If j is truly better, S_ij is at most the log of the product of
  the two versions' mixture likelihood ratios at their true values, a test martingale, so by
  Ville's inequality it ever exceeds log(K / alpha) with probability at most alpha / K. A
  wrong version is named only if it beats a version at least as good: with a unique best
  there are K - 1 such events, and with several versions tied for best (an A/A test, where
  naming anyone is a false promotion) at most K, so a union gives alpha either way (the GLR
  stopping rule of Garivier & Kaufmann 2016 with the mixture martingales of Kaufmann &
  Koolen 2021). Equivalently, the GLR N_i kl(mu_i, mu_ij) + N_j kl(mu_j, mu_ij) against the
  threshold log(K / alpha) + r_i + r_j, where r = l(mle) - log m (about half log N) is the
  mixture's regret. Exact for counts; for means the variance is plugged in, so, like
  `sequential.mean_cs`, it is asymptotically valid. With bare point values, iter8's plain
  maximum. Ties and missing rewards are reported, never guessed.

  For counts with per-iteration windows (what `assess` keeps in `status.rewardTests`),
  S_ij is instead the log mixture e-value of the windowed conditional test that version i's
  rate exceeds version j's (`analytics.conditional.PairTest`): it tests the ratio alone,
  so its regret is one grid mixture's (at most log 9) rather than two versions' (about
  log N), and on the benchmark it needs less than half the samples. The cumulative
  statistic stays the fallback for an experiment file without that history.

The array functions (`pairwise_evidence`, `reward_winner`, `pattern_winner`) take a leading
replicate axis: `assess_winner` calls them with R = 1, `analytics.batch` with R replicates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from scipy import special

from analytics import conditional, evidence, sequential
from analytics.assessment import ObjectiveAssessment, Verdict, fmt
from analytics.evidence import Kind, Quantity
from analytics.measurements import Measurement
from analytics.model import Direction, ExperimentSpec, TestingPattern

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class RewardEvidence:
    version: str
    estimate: float | None
    interval: tuple[float, float] | None
    sample_size: float | None


@dataclass(frozen=True)
class WinnerAssessment:
    winner_found: bool
    winner: str | None
    best_versions: tuple[str, ...]
    conclusive: bool
    feasible: tuple[str, ...]
    message: str
    rewards: tuple[RewardEvidence, ...] = ()


def feasible_versions(
    names: tuple[str, ...], assessments: Mapping[str, tuple[ObjectiveAssessment, ...]]
) -> tuple[str, ...]:
    return tuple(n for n in names if all(a.satisfied for a in assessments[n]))


def _violated(assessments: tuple[ObjectiveAssessment, ...]) -> bool:
    return any(a.verdict is Verdict.VIOLATED for a in assessments)


def assess_winner(
    spec: ExperimentSpec,
    assessments: Mapping[str, tuple[ObjectiveAssessment, ...]],
    measurements: Mapping[str, Mapping[str, Measurement]],
    reward_tests: conditional.PairTests | None = None,
) -> WinnerAssessment:
    """The winner under the spec's testing pattern; for A/B and A/B/n, by the first reward,
    judged by its windowed pairwise tests (`reward_tests`) when kept for every pair."""
    if spec.version_info is None:
        raise ValueError("spec.versionInfo is not resolved yet")
    info = spec.version_info
    names = info.names
    baseline = info.baseline.name
    feasible = feasible_versions(names, assessments)
    pattern = spec.strategy.testing_pattern

    if pattern in (TestingPattern.CONFORMANCE, TestingPattern.CANARY):
        satisfied = np.array([[n in feasible for n in names]])
        conclusive = np.array([[all(a.conclusive for a in assessments[n]) for n in names]])
        ruled_out = np.array(
            [
                [any(a.verdict is Verdict.VIOLATED and a.conclusive for a in assessments[n])]
                for n in names
            ]
        ).T
        found, decided = pattern_winner(pattern, satisfied, conclusive, ruled_out)
        index, is_conclusive = int(found[0]), bool(decided[0])
        if pattern is TestingPattern.CONFORMANCE:
            if index == 0:
                return WinnerAssessment(
                    True,
                    baseline,
                    (baseline,),
                    is_conclusive,
                    feasible,
                    f"baseline {baseline} satisfies all objectives",
                )
            return WinnerAssessment(
                False,
                None,
                (),
                False,
                feasible,
                f"baseline {baseline} does not (yet) satisfy all objectives: "
                + _unsatisfied(assessments[baseline]),
            )
        candidate = info.candidates[0].name
        if index == 1:
            return WinnerAssessment(
                True,
                candidate,
                (candidate,),
                is_conclusive,
                feasible,
                f"candidate {candidate} satisfies all objectives",
            )
        why = _unsatisfied(assessments[candidate])
        if index == 0:
            return WinnerAssessment(
                True,
                baseline,
                (baseline,),
                is_conclusive,
                feasible,
                f"baseline {baseline} satisfies all objectives; candidate {candidate} does not"
                f" (yet): {why}",
            )
        return WinnerAssessment(
            False,
            None,
            (),
            False,
            feasible,
            f"no version satisfies all objectives; candidate {candidate}: {why}",
        )

    return _best_by_reward(spec, names, assessments, measurements, feasible, reward_tests)


def pattern_winner(
    pattern: TestingPattern,
    satisfied: BoolArray,
    conclusive: BoolArray,
    ruled_out: BoolArray,
) -> tuple[IntArray, BoolArray]:
    """Conformance and Canary winners over replicates: (index or -1, conclusive), (R,).

    Args:
        pattern: CONFORMANCE or CANARY.
        satisfied: (R, K) versions satisfying every objective.
        conclusive: (R, K) versions all of whose verdicts are anytime-valid.
        ruled_out: (R, K) versions with a conclusively violated objective.
    """
    if pattern is TestingPattern.CONFORMANCE:
        return np.where(satisfied[:, 0], 0, -1), satisfied[:, 0] & conclusive[:, 0]
    if pattern is not TestingPattern.CANARY:
        raise ValueError(f"{pattern} picks its winner by reward (reward_winner)")
    winner = np.where(satisfied[:, 1], 1, np.where(satisfied[:, 0], 0, -1))
    decided = np.where(satisfied[:, 1], conclusive[:, 1], satisfied[:, 0] & ruled_out[:, 1])
    return winner.astype(np.int64), np.asarray(decided, dtype=np.bool_)


def _unsatisfied(items: tuple[ObjectiveAssessment, ...]) -> str:
    bad = [f"{a.metric} {a.verdict.value}" for a in items if not a.satisfied]
    return ", ".join(bad) if bad else "none"


def _best_by_reward(
    spec: ExperimentSpec,
    names: tuple[str, ...],
    assessments: Mapping[str, tuple[ObjectiveAssessment, ...]],
    measurements: Mapping[str, Mapping[str, Measurement]],
    feasible: tuple[str, ...],
    reward_tests: conditional.PairTests | None,
) -> WinnerAssessment:
    if not spec.criteria.rewards:
        return WinnerAssessment(False, None, (), False, feasible, "no reward metric in experiment")
    reward = spec.criteria.rewards[0]
    higher = reward.preferred_direction is Direction.HIGH
    by_version = measurements.get(reward.metric, {})
    quantities = {n: evidence.quantity(by_version.get(n)) for n in names}
    alpha = spec.criteria.alpha / len(names)
    computed = evidence.bounds([evidence.Request(quantities[n], alpha) for n in names])
    interval = dict(zip(names, computed, strict=True))
    rewards = tuple(
        RewardEvidence(
            n,
            quantities[n].estimate,
            interval[n] if quantities[n].kind in (Kind.COUNTS, Kind.MEAN) else None,
            quantities[n].sample_size,
        )
        for n in names
    )
    if not feasible:
        return WinnerAssessment(
            False, None, (), False, feasible, "no version satisfies all objectives", rewards
        )
    running = [n for n in names if not _violated(assessments[n])]
    missing = [n for n in running if quantities[n].kind is Kind.NONE]
    with_value = [n for n in feasible if quantities[n].kind is not Kind.NONE]
    notes = [f"reward {reward.metric} for {n} is not available" for n in missing]
    statistical = all(quantities[n].kind in (Kind.COUNTS, Kind.MEAN) for n in with_value)
    if not with_value or (statistical and missing):
        # With evidence, a version still lacking a reward could yet be the best one: report
        # it, don't guess. (Point values follow iter8: the missing version is skipped.)
        return WinnerAssessment(
            False,
            None,
            (),
            False,
            feasible,
            "; ".join(notes or [f"reward {reward.metric} values are not available"]),
            rewards,
        )

    def value(n: str) -> float:
        q: Quantity = quantities[n]
        assert q.estimate is not None
        return q.estimate if higher else -q.estimate

    if not statistical:
        top = max(value(n) for n in with_value)
        best = tuple(n for n in with_value if value(n) == top)
        found = len(best) == 1
        what = "best" if found else "tied for best"
        message = f"{', '.join(best)} {what} on {reward.metric} by plain comparison" + (
            "; " + "; ".join(notes) if notes else ""
        )
        return WinnerAssessment(
            found, best[0] if found else None, best, False, feasible, message, rewards
        )

    kinds = {quantities[n].kind for n in names} & {Kind.COUNTS, Kind.MEAN}
    if len(kinds) > 1:
        return WinnerAssessment(
            False,
            None,
            (),
            False,
            feasible,
            f"reward {reward.metric} is counts for some versions and means for others;"
            " they cannot be compared",
            rewards,
        )
    arrays = reward_evidence(names, [quantities[n] for n in names], reward_tests)
    # Which statistic judged: the evidence says so (an experiment file may lack the windows).
    how = (
        "windowed pairwise tests"
        if arrays.pairs is not None
        else "cumulative counts, no per-iteration history"
        if arrays.is_counts
        else "cumulative means"
    )
    satisfied = np.array([[n in feasible for n in names]])
    running_mask = np.array([[n in running for n in names]])
    decided = reward_winner(arrays, higher, spec.criteria.alpha, satisfied, running_mask)
    cut = threshold(len(names), spec.criteria.alpha)
    index = int(decided.winner[0])
    if index >= 0:
        w = names[index]
        rivals = [o for o in running if o != w]
        return WinnerAssessment(
            True,
            w,
            (w,),
            all(a.conclusive for a in assessments[w]),
            feasible,
            f"{w} is best on {reward.metric} ({fmt(quantities[w].estimate)}): its evidence"
            f" against every other version still in the running (least"
            f" {fmt(float(decided.margin[0, index]))}"
            + (f", against {', '.join(rivals)}" if rivals else "")
            + f") exceeds the threshold log(K / alpha) = {fmt(cut)} ({how})",
            rewards,
        )
    plausible = tuple(n for i, n in enumerate(names) if decided.plausible[0, i])
    leader = max(plausible, key=value, default=None)
    progress = (
        f"; leader {leader}, evidence {fmt(float(decided.margin[0, names.index(leader)]))}"
        f" of {fmt(cut)} needed"
        if leader is not None
        else ""
    )
    return WinnerAssessment(
        False,
        None,
        plausible,
        False,
        feasible,
        f"not yet conclusive on {reward.metric}: {', '.join(plausible) or 'none'} could still"
        f" be best{progress} ({how})",
        rewards,
    )


RewardArrays = evidence.Arrays
"""The first reward per replicate and version, (R, K)."""
reward_arrays = evidence.stack


def threshold(k: int, alpha: float) -> float:
    """The stopping threshold log(K / alpha): at most K wrong answers share alpha."""
    return math.log(max(k, 1) / alpha)


def _loglik(k: FloatArray, n: FloatArray, p: FloatArray) -> FloatArray:
    """Binomial log-likelihood without the binomial coefficient (it cancels)."""
    q = np.clip(p, 0.0, 1.0)
    return np.asarray(special.xlogy(k, q) + special.xlog1py(n - k, -q))


def pair_matrix(k: int, violation: FloatArray, satisfaction: FloatArray) -> FloatArray:
    """(R, K, K) from the pairwise tests' log e-values per pair i < j (R, K(K-1)/2, in
    `itertools.combinations` order): [i, j] the evidence that i's rate exceeds j's, [j, i]
    the reverse; the diagonal is -inf."""
    violation, satisfaction = np.asarray(violation), np.asarray(satisfaction)
    out = np.full((*violation.shape[:-1], k, k), -np.inf)
    i, j = np.triu_indices(k, 1)
    out[..., i, j] = violation
    out[..., j, i] = satisfaction
    return out


def pair_matrix_of(names: tuple[str, ...], tests: conditional.PairTests) -> FloatArray | None:
    """(1, K, K) `pair_matrix` of the kept tests, when every pair of `names` has one
    (either way round); None otherwise (the cumulative statistic is used)."""
    k = len(names)
    out = np.full((1, k, k), -np.inf)
    for a in range(k):
        for b in range(a + 1, k):
            if (test := tests.get((names[a], names[b]))) is not None:
                out[0, a, b], out[0, b, a] = test.log_evidence
            elif (test := tests.get((names[b], names[a]))) is not None:
                out[0, b, a], out[0, a, b] = test.log_evidence
            else:
                return None
    return out


def reward_evidence(
    names: tuple[str, ...],
    quantities: Sequence[Quantity],
    tests: conditional.PairTests | None,
) -> RewardArrays:
    """The first reward's evidence for the pairwise rule, (1, K): the versions' quantities,
    with the windowed pairwise tests attached when they are counts and every pair has one."""
    arrays = reward_arrays(quantities)
    pairs = pair_matrix_of(names, tests) if tests and arrays.is_counts else None
    return replace(arrays, pairs=pairs)


def pairwise_evidence(reward: RewardArrays, higher: bool, alpha: float) -> FloatArray:
    """S[r, i, j]: log evidence that version i beats version j, shape (R, K, K).

    Large when i leads j by more than chance; at most log of the mixture's regret (<= 0)
    when it does not. -inf where either version lacks data (or, for means, has fewer than
    `sequential.MIN_MEAN_COUNT` observations). The diagonal is -inf. Counts carrying the
    windowed tests (`reward.pairs`) are judged by them.
    """
    k = reward.a.shape[-1]
    est = reward.estimate
    if reward.is_counts and reward.pairs is not None:
        s = reward.pairs if higher else np.swapaxes(reward.pairs, -1, -2)
        ok = reward.present
    elif reward.is_counts:
        events, trials = reward.a, reward.b
        log_m = sequential.log_marginal(events, trials)
        mle = _loglik(events, trials, np.where(reward.present, est, 0.0))
        pooled = (events[..., :, None] + events[..., None, :]) / np.maximum(
            trials[..., :, None] + trials[..., None, :], 1e-300
        )
        at_pooled = _loglik(events[..., :, None], trials[..., :, None], pooled) + _loglik(
            events[..., None, :], trials[..., None, :], pooled
        )
        signed = est if higher else -est
        lead = signed[..., :, None] > signed[..., None, :]
        best_null = np.where(lead, at_pooled, mle[..., :, None] + mle[..., None, :])
        s = log_m[..., :, None] + log_m[..., None, :] - best_null
        ok = reward.present
    else:
        count = reward.a
        ok = reward.present & (count >= sequential.MIN_MEAN_COUNT)
        n = np.where(ok, count, sequential.MIN_MEAN_COUNT)
        mean = np.where(ok, est, 0.0)
        variance = np.maximum(reward.sum_of_squares - n * mean**2, 0.0) / (n - 1)
        log_inv = -math.log(alpha)
        # The normal mixture N(mu, rho^2 sd^2) with sequential.mean_cs's tuning of rho.
        rho2 = (2 * log_inv + math.log(2 * log_inv + 1)) / sequential.MEAN_CS_OPTIMAL_COUNT
        shrink = n * rho2 / (1 + n * rho2)
        penalty = -0.5 * np.log1p(n * rho2)
        spread = variance / (shrink * n)
        denom = spread[..., :, None] + spread[..., None, :]
        gap = mean[..., :, None] - mean[..., None, :]
        gap = gap if higher else -gap
        quad = np.where(
            denom > 0,
            gap**2 / (2 * np.where(denom > 0, denom, 1.0)),
            np.where(gap != 0, np.inf, 0.0),
        )
        s = penalty[..., :, None] + penalty[..., None, :] + np.where(gap > 0, quad, 0.0)
    both = ok[..., :, None] & ok[..., None, :] & ~np.eye(k, dtype=np.bool_)
    return np.asarray(np.where(both, s, -np.inf), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class RewardDecision:
    """`reward_winner`'s answer per replicate: the winner's index or -1, (R,); the versions
    no rival has beaten, (R, K); and each version's smallest evidence against a rival
    still in the running, (R, K) (inf with no rival)."""

    winner: IntArray
    plausible: BoolArray
    margin: FloatArray


def reward_winner(
    reward: RewardArrays,
    higher: bool,
    alpha: float,
    satisfied: BoolArray,
    running: BoolArray,
) -> RewardDecision:
    """The pairwise stopping rule over replicates.

    Args:
        reward: the first reward, (R, K).
        higher: whether higher rewards are better.
        alpha: the error rate allowed for naming a wrong version.
        satisfied: (R, K) versions that satisfy every objective (only they may win).
        running: (R, K) versions not ruled out by a violated objective (rivals to beat).
    """
    k = reward.a.shape[-1]
    s = pairwise_evidence(reward, higher, alpha)
    rivals = running[..., None, :] & ~np.eye(k, dtype=np.bool_)
    margin = np.min(np.where(rivals, s, np.inf), axis=-1)
    cut = threshold(k, alpha)
    # A running version without a reward yet could still be the best one: nobody wins.
    missing = np.any(running & ~reward.present, axis=-1)
    wins = satisfied & reward.present & (margin > cut) & ~missing[..., None]
    winner = np.where(wins.any(axis=-1), np.argmax(wins, axis=-1), -1)
    beaten = np.any((s > cut) & running[..., :, None], axis=-2)
    plausible = satisfied & reward.present & ~beaten
    return RewardDecision(winner.astype(np.int64), plausible, margin)
