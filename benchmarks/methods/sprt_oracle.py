"""The oracle: Wald's SPRT that knows the truth and decides the objective's own hypotheses
(B8, docs/statistics.md#baselines).

It is fair to the method under test: it answers the question the objective asks, at the
scenario's initial candidate share held fixed. Of the candidate's conditions, it takes the
one the truth violates most sharply when the right outcome is a rollback (violating any one
suffices), or the one it satisfies least sharply when it is a promotion (every one must
hold), "sharply" meaning the SPRT's expected drift per second. Then:
- a relative condition (maxRatio m) watches the conditional stream: given the total events
  (errors, or requests above the latency bucket bound), each came from the candidate with
  probability theta = w r / (w r + 1 - w), w the fixed share and r the rate ratio; the SPRT
  tests r = m against the true r;
- an absolute limit L watches the candidate's own stream, one Bernoulli per request; the
  SPRT tests p = L against the true p.
Wald's bounds are log((1 - alpha) / alpha) and log(alpha / (1 - alpha)) with the scenario's
alpha for both errors. Accepting the truth decides the right way; accepting the boundary the
other way. By Wald and Wolfowitz no test with those error rates needs fewer observations on
average, so its time is the denominator of the time ratios. A scenario whose truth sits on
every boundary (at-margin) leaves the oracle nothing to tell apart: it never decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from benchmarks import faults as faults_module
from benchmarks.methods import base
from benchmarks.methods.base import CANARY_ONLY, FloatArray, MethodInfo, Step
from benchmarks.scenario import ERROR_METRIC, LATENCY_METRIC, Scenario
from benchmarks.scrape import Observation
from benchmarks.simulator import bucket_probabilities


@dataclass(frozen=True)
class Hypotheses:
    """What the oracle tests: on `stream` ("errors" or "latency"), `kind` "ratio" (the
    conditional stream, r = null against r = truth) or "upper"/"lower" (the candidate's
    own stream, p = null against p = truth)."""

    metric: str
    stream: str
    kind: str
    null: float
    truth: float
    drift: float  # expected log-likelihood-ratio gain per second under the truth

    def describe(self) -> str:
        what = "r" if self.kind == "ratio" else "p"
        return f"{self.metric} {self.kind}: {what} = {self.null:.4g} vs {self.truth:.4g}"


def theta(w: float, ratio: float) -> float:
    return w * ratio / (w * ratio + 1 - w)


def _kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def _rates(scenario: Scenario, metric: str, limit: float | None) -> tuple[float, float]:
    """True (baseline, candidate) event probabilities per request of a metric's stream."""
    b, c = scenario.versions
    if metric == ERROR_METRIC:
        return b.error_rate, c.error_rate
    assert limit is not None
    bounds = (limit, math.inf)
    above_b = bucket_probabilities(b.latency_median_s, b.latency_sigma, bounds)[1]
    above_c = bucket_probabilities(c.latency_median_s, c.latency_sigma, bounds)[1]
    return float(above_b), float(above_c)


def hypotheses(scenario: Scenario) -> Hypotheses | None:
    """The condition the oracle decides, or None when the truth sits on every boundary."""
    w = scenario.initial_candidate_weight / 100.0
    rate = scenario.rate_rps
    bad = scenario.expected.action == "rollback"
    options: list[Hypotheses] = []
    for o in scenario.objectives:
        limit = o.upper_limit if o.metric == LATENCY_METRIC else None
        if o.metric == LATENCY_METRIC and limit is None:
            continue
        pb, pc = _rates(scenario, o.metric, limit)
        stream = "errors" if o.metric == ERROR_METRIC else "latency"
        if o.max_ratio is not None and pb > 0 and pc > 0:
            truth, m = pc / pb, o.max_ratio
            if (truth > m) == bad and not math.isclose(truth, m):
                events = rate * (w * pc + (1 - w) * pb)
                drift = events * _kl(theta(w, truth), theta(w, m))
                options.append(Hypotheses(o.metric, stream, "ratio", m, truth, drift))
        absolute: list[tuple[str, float]] = []
        if o.metric == LATENCY_METRIC and o.quantile is not None:
            absolute.append(("upper", 1.0 - o.quantile))
        elif o.metric == ERROR_METRIC:
            if o.upper_limit is not None:
                absolute.append(("upper", o.upper_limit))
            if o.lower_limit is not None:
                absolute.append(("lower", o.lower_limit))
        for kind, bound in absolute:
            violated = pc > bound if kind == "upper" else pc < bound
            if violated == bad and 0 < pc < 1 and 0 < bound < 1 and not math.isclose(pc, bound):
                drift = rate * w * _kl(pc, bound)
                options.append(Hypotheses(o.metric, stream, kind, bound, pc, drift))
    if not options:
        return None
    pick = max if bad else min
    return pick(options, key=lambda h: h.drift)


def stream(scenario: Scenario) -> tuple[str, float]:
    """Which stream the oracle watches ("errors" or "latency") and the true rate ratio."""
    h = hypotheses(scenario)
    if h is None:
        return "errors", 1.0
    pb, pc = _rates(
        scenario,
        h.metric,
        scenario.latency_objective.upper_limit if scenario.latency_objective else None,
    )
    return h.stream, pc / pb if pb > 0 else 1.0


class SprtOracle:
    def __init__(self, scenario: Scenario, replicates: int) -> None:
        self.scenario = scenario
        self.weights = base.fixed_split(scenario, replicates)
        self.h = hypotheses(scenario)
        self.bad = scenario.expected.action == "rollback"
        a = scenario.alpha
        self.upper, self.lower = math.log((1 - a) / a), math.log(a / (1 - a))
        self.steps = (0.0, 0.0)
        if self.h is not None:
            if self.h.kind == "ratio":
                w = scenario.initial_candidate_weight / 100.0
                t1, t0 = theta(w, self.h.truth), theta(w, self.h.null)
            else:
                t1, t0 = self.h.truth, self.h.null
            self.steps = (math.log(t1 / t0), math.log((1 - t1) / (1 - t0)))

    def initial_weights(self) -> FloatArray:
        return self.weights

    def step(self, obs: Observation) -> Step:
        if self.h is None:
            return base.continuing(self.weights)
        if self.h.stream == "latency":
            latency = self.scenario.latency_objective
            assert latency is not None and latency.upper_limit is not None
            events, trials = base.exceedance(obs, latency.upper_limit)
        else:
            events, trials = obs.errors, obs.requests
        hit, miss = self.steps
        if self.h.kind == "ratio":
            # Conditioned on the total, each event is the candidate's (hit) or not (miss).
            llr = events[:, 1] * hit + events[:, 0] * miss
        else:
            llr = events[:, 1] * hit + (trials[:, 1] - events[:, 1]) * miss
        truth = llr >= self.upper
        wrong = llr <= self.lower
        ones = np.ones(llr.shape, dtype=np.int64)
        if self.bad:
            return base.decide(self.weights, wrong & ~truth, truth, ones)
        return base.decide(self.weights, truth, wrong & ~truth, ones)


def build(scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool) -> SprtOracle:
    return SprtOracle(scenario, replicates)


INFO = MethodInfo("sprt-oracle", "SPRT oracle (knows the effect)", CANARY_ONLY, build)


def dispersion(scenario: Scenario, h: Hypotheses) -> float:
    """The variance inflation phi of one window's conditional count under the scenario's
    overdispersion, at the fixed share, for a "ratio" hypothesis on errors (1 otherwise).

    Each version's window rate is Beta-distributed around its own with intra-class
    correlation rho, so its squared coefficient of variation is rho (1 - p) / p; given the
    window's E events, the candidate's share theta then varies with variance about
    theta^2 (1 - theta)^2 (cv_c^2 + cv_b^2) (delta method), and
    Var(c | E) = E theta (1 - theta) phi with phi = 1 + (E - 1) theta (1 - theta) sum cv^2.
    """
    rho = scenario.faults.overdispersion_icc
    if rho <= 0 or h.kind != "ratio" or h.stream != "errors":
        return 1.0
    pb, pc = _rates(scenario, h.metric, None)
    w = scenario.initial_candidate_weight / 100.0
    events = scenario.rate_rps * scenario.interval_s * (w * pc + (1 - w) * pb)
    t = theta(w, pc / pb)
    cv2 = rho * (1 - pc) / pc + rho * (1 - pb) / pb
    return 1.0 + max(events - 1.0, 0.0) * t * (1 - t) * cv2


class NoiseAwareOracle(SprtOracle):
    """The SPRT oracle that also knows the noise: it leaves out the windows the global
    burst touches and tempers every window's log likelihood ratio by the overdispersion's
    `dispersion` phi (the quasi-likelihood), so its error rates hold under the noise as
    the plain oracle's do not. What it reaches within the horizon is what the noise leaves
    reachable for a rule that knows even the effect; Arbiter knows neither."""

    def __init__(self, scenario: Scenario, replicates: int) -> None:
        super().__init__(scenario, replicates)
        self.phi = dispersion(scenario, self.h) if self.h is not None else 1.0
        self.llr = np.zeros(replicates)

    def step(self, obs: Observation) -> Step:
        h = self.h
        if h is None or h.kind != "ratio" or h.stream != "errors":
            return super().step(obs)
        faults = self.scenario.faults
        t1 = obs.elapsed_s
        t0 = t1 - self.scenario.interval_s
        if faults_module.burst_overlap(faults, t0, t1) == 0.0:
            hit, miss = self.steps
            events = obs.window_errors
            self.llr += (events[:, 1] * hit + events[:, 0] * miss) / self.phi
        truth = self.llr >= self.upper
        wrong = self.llr <= self.lower
        ones = np.ones(self.llr.shape, dtype=np.int64)
        if self.bad:
            return base.decide(self.weights, wrong & ~truth, truth, ones)
        return base.decide(self.weights, truth, wrong & ~truth, ones)


def build_noise_aware(
    scenario: Scenario, replicates: int, rng: np.random.Generator, quick: bool
) -> NoiseAwareOracle:
    return NoiseAwareOracle(scenario, replicates)


NOISE_AWARE_INFO = MethodInfo(
    "sprt-oracle-noise",
    "SPRT oracle that also knows the noise (skips the burst, tempers by overdispersion)",
    CANARY_ONLY,
    build_noise_aware,
    applies=lambda s: s.faults.overdispersion_icc > 0 or s.faults.burst_start_s is not None,
)
