"""Traffic weights: integer percentages that always sum to exactly 100.

- Progressive moves toward the evidence. A canary's target is maxCandidateWeight times the
  posterior probability that it satisfies every objective. A/B and A/B/n follow a top-two
  rule with beta = 1/2 (Russo 2016; Jourdan et al. 2022, "Top two algorithms revisited"):
  the leader, the empirically best version still in the running, gets half the traffic;
  the other half goes to the challengers, the versions whose evidence against the leader
  (the transportation cost, `winner.pairwise_evidence`) is smallest, through a softmin so
  that the split moves continuously with the counts. Sending the challenger half where the
  evidence is weakest is what raises every pairwise statistic of the stopping rule
  together, which is how top-two rules approach the optimal stopping time. A version still
  lacking data has no evidence against it and is the first challenger, so none starves.
  The split is deterministic: a redelivered event recomputes it exactly.
  Each candidate may rise by at most maxCandidateWeightIncrement per step, all candidates
  together hold at most maxCandidateWeight, and the excess returns to the baseline.
  Decreases are never capped: moving traffic away from a worse version is always safe.
- FixedSplit never changes; BlueGreen holds the candidate at 0 until it is validated, then
  flips all traffic to it; Conformance has no weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from analytics import bayes
from analytics.assessment import (
    SATISFIED,
    VERDICTS,
    VIOLATED,
    Condition,
    ObjectiveAssessment,
    Verdict,
)
from analytics.conditional import PairTests
from analytics.evidence import Arrays, Kind, Quantity
from analytics.model import DeploymentPattern, Direction, ExperimentSpec, TestingPattern
from analytics.split import initial_weights
from analytics.winner import RewardArrays, WinnerAssessment, pairwise_evidence, reward_evidence

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

TOP_TWO_BETA = 0.5
DEFAULT_SAMPLES = 1000
"""Posterior draws callers may still pass; no weight depends on random draws any more."""


HOLD_EXTRA_HARM = 0.25
"""How much more harm per decision an undecided canary's held share may cost than the first
step's share would (see `hold_share`). At 0.10 (an 11% hold for a 1.5x margin) a severe
regression (1% vs 5% errors against a 2x margin) took 1.7x the SPRT oracle's median time
while serving a seventh of its extra errors; 0.25 brings it to 1.4x for about 20% more
errors per decision, and leaves the noisy good canary's promotion rate as it was (97.0%
against 97.2% over 2,000 replicates)."""


def hold_share(spec: ExperimentSpec) -> float:
    """The least share an undecided canary keeps, as a fraction: fast decisions, few bad
    requests.

    At share w and rate ratio r the conditional test learns about log r at a rate
    proportional to w r (1 - w) / (w r + 1 - w) per request, while a worse canary does harm
    in proportion to w; so the bad requests served until a decision go as
    H(w) = (w r + 1 - w) / (1 - w), and the time to it as H(w) / w. Time falls like 1/w
    while harm rises only slowly, so the rule takes the largest share whose H, at the
    margin r = maxRatio (the hardest case), is at most HOLD_EXTRA_HARM above the first
    step's: 19% for a 1.5x margin and a 5% first step (16% for a 2x margin), which cuts
    the time to decide by a fifth to a third for about 20% more bad requests. Without a
    ratio condition (absolute limits only) the share stays the first step's: the
    candidate's own requests are then all the information, so harm per decision does not
    depend on the share, and a bad candidate is better caught at a small one. Never above
    maxCandidateWeight.
    """
    w = spec.strategy.weights
    top = w.max_candidate_weight / 100.0
    first = min(w.max_candidate_weight_increment / 100.0, top)
    margins = [o.max_ratio for o in spec.criteria.objectives if o.max_ratio is not None]
    if not margins:
        return first
    m = max(margins)
    k = (1.0 + HOLD_EXTRA_HARM) * (first * m + 1.0 - first) / (1.0 - first) if first < 1 else 1.0
    share = (k - 1.0) / (m - 1.0 + k) if m - 1.0 + k > 0 else top
    return min(max(share, first), top)


def to_percentages(weights: npt.ArrayLike, total: int = 100) -> IntArray:
    """Round non-negative weights to integers summing to `total` (largest remainder).

    Deterministic, unlike iter8's randomised `gen_round`: ties in the remainder go to the
    earlier version. Works on the last axis, so a batch of splits rounds in one call.

    >>> to_percentages([1, 1, 1]).tolist()
    [34, 33, 33]
    """
    w = np.asarray(weights, dtype=np.float64)
    sums = w.sum(axis=-1, keepdims=True)
    k = w.shape[-1]
    uniform = np.full_like(w, 1.0 / k)
    shares = np.where(sums > 0, w / np.where(sums > 0, sums, 1.0), uniform)
    exact = shares * total
    floor = np.floor(exact + 1e-9)
    short = (total - floor.sum(axis=-1)).astype(np.int64)
    remainder = exact - floor
    # Stable sort on the negated remainder: largest first, earlier index on ties.
    order = np.argsort(-remainder, axis=-1, kind="stable")
    ranks = np.argsort(order, axis=-1, kind="stable")
    bump = ranks < short[..., None]
    return np.asarray(floor + bump, dtype=np.int64)


def apply_caps(
    target: npt.ArrayLike, current: npt.ArrayLike, max_weight: float, max_increment: float
) -> FloatArray:
    """Cap candidates (index 1..) per step and in total; the baseline (index 0) takes the rest.

    >>> apply_caps([0, 100], [90, 10], 100, 10).tolist()
    [80.0, 20.0]
    >>> apply_caps([0, 50, 50], [80, 10, 10], 30, 10).tolist()
    [70.0, 15.0, 15.0]
    """
    t = np.asarray(target, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    t = 100.0 * t / np.maximum(t.sum(axis=-1, keepdims=True), 1e-12)
    candidates = np.minimum(t[..., 1:], c[..., 1:] + max_increment)
    total = candidates.sum(axis=-1, keepdims=True)
    scale = np.where(total > max_weight, max_weight / np.maximum(total, 1e-12), 1.0)
    candidates = candidates * scale
    baseline = 100.0 - candidates.sum(axis=-1, keepdims=True)
    return np.asarray(np.concatenate([baseline, candidates], axis=-1), dtype=np.float64)


def top_two_shares(
    reward: RewardArrays,
    higher: bool,
    alpha: float,
    running: npt.NDArray[np.bool_],
    beta: float = TOP_TWO_BETA,
) -> FloatArray:
    """Top-two target shares per replicate, (R, K), rows summing to 1.

    The leader (best estimate among running versions with data) gets `beta`; the rest is
    split over the other running versions by softmin of their evidence against the leader,
    exp(-(S_Lj - min S_L)), so a challenger far behind gets almost nothing and two
    challengers equally close share. Versions out of the running get 0. With no data at
    all, the running versions share equally.
    """
    k = reward.a.shape[-1]
    signed = np.where(higher, reward.estimate, -reward.estimate)
    known = running & reward.present
    leader = np.argmax(np.where(known, signed, -np.inf), axis=-1)
    has_leader: npt.NDArray[np.bool_] = np.asarray(known.any(axis=-1))
    s = pairwise_evidence(reward, higher, alpha)
    cost = np.take_along_axis(s, leader[..., None, None], axis=-2)[..., 0, :]
    is_leader = np.arange(k) == leader[..., None]
    rival = running & ~is_leader
    # No evidence against a version (no data yet) makes it the cheapest challenger.
    cost = np.where(np.isfinite(cost), cost, -1e6)
    cost = np.where(rival, cost, np.inf)
    floor = np.min(cost, axis=-1, keepdims=True)
    soft = np.where(rival, np.exp(-(cost - np.where(np.isfinite(floor), floor, 0.0))), 0.0)
    total = soft.sum(axis=-1, keepdims=True)
    challengers = np.where(total > 0, soft / np.where(total > 0, total, 1.0), 0.0)
    lead_share = np.where(total[..., 0] > 0, beta, 1.0)
    shares = lead_share[..., None] * is_leader + (1.0 - lead_share[..., None]) * challengers
    uniform = running / np.maximum(running.sum(axis=-1, keepdims=True), 1)
    shares = np.where(has_leader[..., None], shares, uniform)
    nobody: npt.NDArray[np.bool_] = ~np.asarray(running.any(axis=-1))
    shares = np.where(nobody[..., None], np.eye(k)[0], shares)
    return np.asarray(shares, dtype=np.float64)


def prob_feasible(verdict: IntArray, conclusive: BoolArray, unmet: FloatArray) -> FloatArray:
    """Posterior probability that every objective holds (taken as independent), (R, K).

    Args:
        verdict: (R, K, O) verdict codes (`assessment.VERDICTS`).
        conclusive: (R, K, O) whether each verdict is anytime-valid; a conclusive violation
            rules the version out.
        unmet: (R, K, O) the probability that the objective's conditions not yet satisfied
            hold (read only where the objective is not satisfied).
    """
    p = np.ones(verdict.shape[:-1])
    for o in range(verdict.shape[-1]):
        p = p * np.where(verdict[..., o] == SATISFIED, 1.0, unmet[..., o])
    out = np.any((verdict == VIOLATED) & conclusive, axis=-1)
    return np.asarray(np.where(out, 0.0, p), dtype=np.float64)


def _prob_feasible(
    items: tuple[ObjectiveAssessment, ...], baseline_items: tuple[ObjectiveAssessment, ...]
) -> float:
    """`prob_feasible` for one version."""
    shape = (1, 1, len(items))
    verdict = np.array([VERDICTS.index(i.verdict) for i in items], dtype=np.int64)
    conclusive = np.array([i.conclusive for i in items], dtype=np.bool_)
    unmet = np.array(
        [
            1.0 if i.verdict is Verdict.SATISFIED else _prob_objective(i, b)
            for i, b in zip(items, baseline_items, strict=True)
        ],
        dtype=np.float64,
    )
    p = prob_feasible(verdict.reshape(shape), conclusive.reshape(shape), unmet.reshape(shape))
    return float(p[0, 0])


def _prob_objective(item: ObjectiveAssessment, base: ObjectiveAssessment) -> float:
    q = item.quantity
    p = 1.0
    for cond in item.conditions:
        if cond.verdict is Verdict.SATISFIED:
            continue
        if cond.kind == "upper":
            p *= bayes.prob_at_most(q, cond.limit)
        elif cond.kind == "lower":
            p *= 1.0 - bayes.prob_at_most(q, cond.limit)
        else:
            p *= _prob_relative(q, base.quantity, cond.kind, cond.limit)
    return p


def _prob_relative(qc: Quantity, qb: Quantity, kind: str, limit: float) -> float:
    c = bayes.mean_and_variance(qc)
    b = bayes.mean_and_variance(qb)
    if c is None or b is None:
        return 0.5
    return float(bayes.prob_within(c, b, kind, limit))


def condition_probability(x: Arrays, condition: Condition) -> FloatArray:
    """Posterior probability that `condition` holds, per replicate and version, (R, K);
    a relative condition compares each version with the baseline (column 0)."""
    if condition.kind == "upper":
        return bayes.prob_below(x, condition.limit)
    if condition.kind == "lower":
        return np.asarray(1.0 - bayes.prob_below(x, condition.limit), dtype=np.float64)
    mean, variance = bayes.moments(x)
    p = bayes.prob_within(
        (mean, variance), (mean[:, :1], variance[:, :1]), condition.kind, condition.limit
    )
    return np.asarray(np.where(x.present & x.present[:, :1], p, 0.5), dtype=np.float64)


def canary_target(
    spec: ExperimentSpec, feasible: npt.ArrayLike, doubtful: npt.ArrayLike
) -> FloatArray:
    """(R, 2) target split of a canary: maxCandidateWeight times the probability it is
    feasible (R,), at least `hold_share` while it is `doubtful` (not conclusively failing)."""
    share = np.asarray(feasible, dtype=np.float64) * spec.strategy.weights.max_candidate_weight
    share = share / 100.0
    # A doubtful canary keeps `hold_share` until it is decided: starving it would stop the
    # evidence that can roll it back (the tests stay valid under any allocation, so the
    # floor costs no error rate, only bounded harm).
    share = np.where(doubtful, np.maximum(share, hold_share(spec)), share)
    return np.stack([1.0 - share, share], axis=-1)


def blue_green_split(winner: npt.ArrayLike, conclusive: npt.ArrayLike, k: int) -> IntArray:
    """(R, K): everything on the baseline until a candidate is the conclusive winner, then
    everything on it."""
    w = np.asarray(winner)
    validated = (w > 0) & np.asarray(conclusive)
    flip = np.where(validated[:, None], np.arange(k) == w[:, None], np.arange(k) == 0)
    return to_percentages(100.0 * flip)


def reward_target(
    spec: ExperimentSpec, reward: RewardArrays | None, running: npt.NDArray[np.bool_]
) -> FloatArray:
    """(R, K) A/B and A/B/n target shares: top-two on the first reward among the `running`
    versions, or an even split when there is nothing comparable to steer by (`None`)."""
    if reward is None or not spec.criteria.rewards:
        k = running.shape[-1]
        even = running / np.maximum(running.sum(axis=-1, keepdims=True), 1)
        anyone = np.asarray(running.any(axis=-1))
        return np.asarray(np.where(anyone[:, None], even, np.eye(k)[0]), dtype=np.float64)
    higher = spec.criteria.rewards[0].preferred_direction is Direction.HIGH
    return top_two_shares(reward, higher, spec.criteria.alpha, running)


def next_weights(
    spec: ExperimentSpec,
    current: Mapping[str, int],
    assessments: Mapping[str, tuple[ObjectiveAssessment, ...]],
    winner: WinnerAssessment,
    reward_quantities: Mapping[str, Quantity],
    rng: np.random.Generator,
    n_samples: int = DEFAULT_SAMPLES,
    reward_tests: PairTests | None = None,
) -> dict[str, int] | None:
    """The split for the next iteration, keyed by version name.

    `rng` and `n_samples` are kept for callers; no split depends on random draws now.
    `reward_tests` are the first reward's windowed pairwise tests, when kept.
    """
    if spec.version_info is None:
        raise ValueError("spec.versionInfo is not resolved yet")
    names = spec.version_info.names
    if spec.strategy.testing_pattern is TestingPattern.CONFORMANCE:
        return None
    start = initial_weights(spec) or {}
    now = [float(current.get(n, start[n])) if current else float(start[n]) for n in names]
    pattern = spec.strategy.deployment_pattern
    if pattern is DeploymentPattern.FIXED_SPLIT:
        return dict(zip(names, to_percentages(now).tolist(), strict=True))
    if pattern is DeploymentPattern.BLUE_GREEN:
        index = names.index(winner.winner) if winner.winner_found and winner.winner else -1
        split = blue_green_split([index], [winner.conclusive], len(names))
        return dict(zip(names, split[0].tolist(), strict=True))

    baseline = names[0]
    w = spec.strategy.weights
    if spec.strategy.testing_pattern is TestingPattern.CANARY:
        feasible = _prob_feasible(assessments[names[1]], assessments[baseline])
        doubtful = not any(a.conclusive and not a.satisfied for a in assessments[names[1]])
        target = canary_target(spec, [feasible], [doubtful])[0]
    else:
        target = _reward_target(spec, names, assessments, reward_quantities, reward_tests)
    capped = apply_caps(target, now, w.max_candidate_weight, w.max_candidate_weight_increment)
    return dict(zip(names, to_percentages(capped).tolist(), strict=True))


def _reward_target(
    spec: ExperimentSpec,
    names: tuple[str, ...],
    assessments: Mapping[str, tuple[ObjectiveAssessment, ...]],
    reward_quantities: Mapping[str, Quantity],
    reward_tests: PairTests | None,
) -> FloatArray:
    running = np.array(
        [
            not any(a.verdict is Verdict.VIOLATED and a.conclusive for a in assessments[n])
            for n in names
        ]
    )
    quantities = [reward_quantities.get(n) for n in names]
    kinds = {q.kind for q in quantities if q is not None} & {Kind.COUNTS, Kind.MEAN}
    comparable = all(q is not None for q in quantities) and len(kinds) == 1
    # Without that (point values, or counts beside means) there is nothing to steer by.
    arrays = (
        reward_evidence(names, [q for q in quantities if q is not None], reward_tests)
        if comparable
        else None
    )
    return np.asarray(reward_target(spec, arrays, running[None, :])[0], dtype=np.float64)
