"""Aggregates across tasks and seeds with rliable (Agarwal et al., "Deep RL at the Edge of the Statistical
Precipice", NeurIPS 2021): IQM, mean, median and optimality gap of normalised scores with stratified-bootstrap
confidence intervals, performance profiles, and the probability of improvement between agents.

Scores are normalised per task so that tasks can be pooled: 0 is the task's lowest possible return (RETURN_RANGES,
or --return-range; else the lowest final return of any run of the task) and 1 is its reward threshold (gymnasium's
reward_threshold, or --threshold; else the highest possible return, else the highest final return seen). The
optimality gap is the mean shortfall below 1 (the threshold), so 0 means every run reached it.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

#: lowest and highest possible episode return of tasks whose bounds are known (gymnasium 1.x defaults):
#: CartPole +1 per step for at most 500 steps; Acrobot and MountainCar -1 per step for at most 500 / 200
#: steps; Pendulum's reward is at least -(π² + 0.1·8² + 0.001·2²) = -16.2736 per step, 200 steps
RETURN_RANGES = {
    "CartPole-v1": (0.0, 500.0), "CartPole-v0": (0.0, 200.0), "Acrobot-v1": (-500.0, 0.0),
    "MountainCar-v0": (-200.0, 0.0), "Pendulum-v1": (-16.2736044 * 200, 0.0),
}
METRICS = ("IQM", "Mean", "Median", "Optimality gap")
CONFIDENCE = 0.95


@dataclass
class Normalisation:
    """How one task's returns map to normalised scores: (return - low) / (high - low)."""

    low: float
    high: float
    low_source: str
    high_source: str

    def __call__(self, returns):
        return (np.asarray(returns, dtype=float) - self.low) / (self.high - self.low)


def normalisation(task: str, finals: np.ndarray, threshold: float | None, ranges: dict) -> Normalisation:
    """The task's 0 and 1 (see the module docstring); the sources are named in the report."""
    bounds = ranges.get(task)
    low, low_source = (bounds[0], "lowest possible return") if bounds else (float(finals.min()), "lowest final return")
    if threshold is not None:
        high, high_source = threshold, "reward threshold"
    elif bounds:
        high, high_source = bounds[1], "highest possible return"
    else:
        high, high_source = float(finals.max()), "highest final return"
    if high <= low:  # every run ended at the same return: a unit scale keeps the scores finite
        high = low + 1.0
    return Normalisation(float(low), float(high), low_source, high_source)


def score_matrices(finals: dict[str, dict[str, np.ndarray]], norms: dict[str, Normalisation]):
    """({agent: normalised scores [seeds, tasks]}, tasks, notes): the tasks every agent ran, each agent's
    seeds cut to its smallest count over those tasks (rliable's matrices are rectangular)."""
    agents = sorted({a for per_task in finals.values() for a in per_task})
    tasks = sorted(t for t, per_task in finals.items() if set(per_task) == set(agents))
    notes = [f"{t} is left out of the aggregates: not every agent ran it" for t in sorted(set(finals) - set(tasks))]
    scores = {}
    for agent in agents:
        n = min(len(finals[t][agent]) for t in tasks) if tasks else 0
        if tasks and any(len(finals[t][agent]) != n for t in tasks):
            notes.append(f"{agent}: the first {n} seeds of each task are pooled (tasks have different seed counts)")
        scores[agent] = np.stack([norms[t](finals[t][agent][:n]) for t in tasks], axis=1) if tasks else np.empty((0, 0))
    return scores, tasks, notes


@contextmanager
def _quiet_arch():
    """arch 7 (the last that rliable 1.2 runs on: arch 8 renamed the argument rliable passes) warns on every
    bootstrap that random_state is deprecated; the seeded RandomState is what makes reports reproducible."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "random_state is deprecated", FutureWarning)
        yield


def interval_estimates(scores: dict[str, np.ndarray], reps: int, seed: int = 0):
    """{agent: [IQM, mean, median, optimality gap]} and {agent: [[lows], [highs]]}: stratified bootstrap
    over runs within each task (rliable's default), percentile intervals."""
    from rliable import library as rly, metrics

    def aggregates(x):
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x), metrics.aggregate_median(x),
                         metrics.aggregate_optimality_gap(x, 1.0)])

    with _quiet_arch():
        return rly.get_interval_estimates(scores, aggregates, reps=reps, confidence_interval_size=CONFIDENCE,
                                          random_state=np.random.RandomState(seed))


def improvement_probabilities(scores: dict[str, np.ndarray], reps: int, seed: int = 0):
    """P(X > Y) for every pair of agents X before Y in name order (P(Y > X) = 1 - P(X > Y)): the probability
    that a run of X on a task scores higher than a run of Y (ties count half), averaged over tasks;
    stratified-bootstrap intervals."""
    from rliable import library as rly, metrics

    agents = sorted(scores)
    pairs = {f"{x},{y}": (scores[x], scores[y]) for i, x in enumerate(agents) for y in agents[i + 1:]}
    if not pairs:
        return {}, {}
    with _quiet_arch():
        return rly.get_interval_estimates(pairs, metrics.probability_of_improvement, reps=reps,
                                          confidence_interval_size=CONFIDENCE, random_state=np.random.RandomState(seed))


def performance_profiles(scores: dict[str, np.ndarray], taus: np.ndarray, reps: int):
    """The fraction of runs (over tasks and seeds) with normalised score > τ, with bootstrap bands."""
    from rliable import library as rly

    with _quiet_arch():
        return rly.create_performance_profile(scores, taus, reps=reps, confidence_interval_size=CONFIDENCE)


def aggregate_markdown(scores, points, intervals, probabilities, prob_intervals, tasks, norms, notes, reps: int) -> str:
    """The aggregate tables of report.md, with the definitions the numbers need."""
    head = "| agent | runs per task | " + " | ".join(f"{m} [95% CI]" for m in METRICS) + " |"
    lines = ["## Across tasks (rliable)", "",
             f"Tasks pooled: {', '.join(tasks)}. Normalised score per task: (final return − 0-point) / "
             "(1-point − 0-point), with", ""]
    lines += [f"- {t}: 0 = {n.low:g} ({n.low_source}), 1 = {n.high:g} ({n.high_source})" for t, n in norms.items()
              if t in tasks]
    lines += ["", head, "|" + "---|" * (len(METRICS) + 2)]
    for agent in sorted(points):
        cells = [f"{p:.3f} [{lo:.3f}, {hi:.3f}]" for p, lo, hi in zip(points[agent], *intervals[agent])]
        lines.append(f"| {agent} | {scores[agent].shape[0]} | " + " | ".join(cells) + " |")
    lines += ["", f"IQM: mean of the middle 50% of all runs' scores; optimality gap: mean of max(1 − score, 0). "
              f"95% percentile intervals from {reps} stratified-bootstrap resamples (runs resampled within each task).",
              ""]
    if probabilities:
        lines += ["| X | Y | P(X > Y) [95% CI] |", "|---|---|---|"]
        for pair in sorted(probabilities):
            x, y = pair.split(",")
            lo, hi = np.ravel(prob_intervals[pair])
            lines.append(f"| {x} | {y} | {float(np.ravel(probabilities[pair])[0]):.3f} [{float(lo):.3f}, {float(hi):.3f}] |")
        lines += ["", "P(X > Y): the probability that a run of X scores higher than a run of Y on the same task "
                  "(ties count ½), averaged over tasks.", ""]
    lines += [f"Note: {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"

