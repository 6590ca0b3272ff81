"""The 1M grid's summary table (issue 16), from the runs' done.json files: per task and agent, the final
deterministic evaluation of every finished seed, its mean and IQM, wall time and FPS; then, per task, the
probability that each rlgeom agent's run beats its peer's, with its Mann–Whitney p, and the difference of
the two means with its bootstrap 95 % interval and the smallest gap the data exclude. Markdown on stdout,
for the README and experiments/RESULTS_grid_1m.md. The full report (rliable intervals, curves) is
rlgeom.compare's:

    python experiments/grid_1m_table.py experiments/results/grid_1m
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rliable.metrics import probability_of_improvement
from scipy.stats import mannwhitneyu

from rlgeom.persistence.runlogs import find_run_dirs
from rlgeom.tools.benchmark import read_done
from rlgeom.tools.compare import SEED_STATISTICS

TASKS = ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5")
AGENTS = ("trpo", "ppo", "acktr", "npg", "vpg", "sb3contrib-trpo", "sb3-ppo", "sb3-a2c")
LABELS = {"trpo": "rlgeom TRPO", "ppo": "rlgeom PPO", "acktr": "rlgeom ACKTR", "npg": "rlgeom NPG",
          "vpg": "rlgeom VPG", "sb3contrib-trpo": "sb3-contrib TRPO", "sb3-ppo": "SB3 PPO", "sb3-a2c": "SB3 A2C"}
#: the issue's pairs: each rlgeom agent against the peer it is judged by
PEERS = {"trpo": "sb3contrib-trpo", "ppo": "sb3-ppo", "acktr": "sb3-a2c", "vpg": "sb3-a2c"}


def iqm(x: np.ndarray) -> float:
    """The interquartile mean, as rlgeom.compare's tables compute it."""
    return float(SEED_STATISTICS["iqm"](x))


def prob_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(a run of X scores higher than a run of Y), over all pairs, ties counting one half: rliable's, on one task."""
    return float(probability_of_improvement(x[:, None], y[:, None]))


def mann_whitney_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided Mann–Whitney p of the two sets of returns: how often seeds drawn from one distribution would
    split this unevenly. Its U is P × len(x) × len(y), so it is P's significance. scipy's default method:
    exact up to 8 seeds a side without ties, the normal approximation beyond."""
    return float(mannwhitneyu(x, y, alternative="two-sided").pvalue)


BOOTSTRAP_RESAMPLES = 10_000


def mean_difference(x: np.ndarray, y: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0):
    """mean(x) − mean(y) and its 95 % percentile-bootstrap interval, each side's seeds resampled on their own."""
    rng = np.random.default_rng(seed)
    bx = x[rng.integers(0, len(x), (resamples, len(x)))].mean(1)
    by = y[rng.integers(0, len(y), (resamples, len(y)))].mean(1)
    low, high = np.percentile(bx - by, [2.5, 97.5])
    return float(x.mean() - y.mean()), (float(low), float(high))


def excluded_gap(interval: tuple[float, float], reference: float) -> float:
    """The smallest gap, as a fraction of `reference` (the peer's mean), that the interval excludes on both
    sides: the data cannot tell apart differences up to it, and exclude larger ones in either direction."""
    return max(abs(interval[0]), abs(interval[1])) / abs(reference)


def finished_runs(logdir: Path) -> dict[tuple[str, str], list[dict]]:
    """{(task, agent): done.json records, by seed} of the runs rlgeom.compare counts as seeds (runs set aside
    as unfinished or failed are not) that have finished."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for run_dir in find_run_dirs(logdir):
        record = read_done(str(run_dir))
        if record is not None and record.get("status") == "done":
            task, agent = run_dir.relative_to(logdir).parts[:2]
            runs.setdefault((task, agent), []).append(record)
    for records in runs.values():
        records.sort(key=lambda r: r["seed"])
    return runs


def cell(records: list[dict]) -> str:
    returns = np.array([r["eval_return"] for r in records])
    return f"{returns.mean():.0f} / {iqm(returns):.0f} ({len(returns)})"


def returns_table(runs) -> list[str]:
    lines = ["| agent | " + " | ".join(TASKS) + " |", "|---" * (len(TASKS) + 1) + "|"]
    for agent in AGENTS:
        cells = [cell(runs[(task, agent)]) if (task, agent) in runs else "—" for task in TASKS]
        lines.append(f"| {LABELS[agent]} | " + " | ".join(cells) + " |")
    return lines


def seeds_table(runs) -> list[str]:
    lines = ["| task | agent | eval return per seed | wall s per run | mean FPS |", "|---|---|---|---|---|"]
    for task in TASKS:
        for agent in AGENTS:
            records = runs.get((task, agent))
            if records:
                seeds = ", ".join(f"s{r['seed']} {r['eval_return']:.0f}" for r in records)
                walls = ", ".join(f"{r['wall_s']:.0f}" for r in records)
                fps = np.mean([r["fps"] for r in records])
                lines.append(f"| {task} | {LABELS[agent]} | {seeds} | {walls} | {fps:.0f} |")
    return lines


def peer_table(runs, cell) -> list[str]:
    """One row per (rlgeom agent, peer), one column per task: cell(rlgeom returns, peer returns), or — where a side
    has no finished run."""
    lines = ["| rlgeom agent | peer | " + " | ".join(TASKS) + " |", "|---|---" + "|---" * len(TASKS) + "|"]
    for agent, peer in PEERS.items():
        cells = []
        for task in TASKS:
            if (task, agent) in runs and (task, peer) in runs:
                x = np.array([r["eval_return"] for r in runs[(task, agent)]])
                y = np.array([r["eval_return"] for r in runs[(task, peer)]])
                cells.append(cell(x, y))
            else:
                cells.append("—")
        lines.append(f"| {LABELS[agent]} | {LABELS[peer]} | " + " | ".join(cells) + " |")
    return lines


def improvement_cell(x: np.ndarray, y: np.ndarray) -> str:
    return f"{prob_improvement(x, y):.2f} ({len(x)}×{len(y)}, p {mann_whitney_p(x, y):.2f})"


def _share(value: float) -> str:
    return f"{value:+.0%}".replace("-0%", "0%").replace("+0%", "0%")


def difference_cell(x: np.ndarray, y: np.ndarray) -> str:
    """'Δ (share) [low, high]; ' then what the interval allows: a difference of low–high (it excludes 0), or
    none detected, with the gap beyond which the data exclude one."""
    diff, (low, high) = mean_difference(x, y)
    ref = y.mean()
    head = f"{diff:+.0f} ({_share(diff / ref)}) [{low:+.0f}, {high:+.0f}]; "
    if low > 0 or high < 0:
        return head + f"{'higher' if low > 0 else 'lower'} by {_share(low / ref)} to {_share(high / ref)}"
    return head + f"no difference detected, gaps > {excluded_gap((low, high), ref):.0%} excluded"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path, help="the grid's log directory (experiments/results/grid_1m)")
    args = parser.parse_args(argv)
    if not args.logdir.is_dir():
        parser.error(f"{args.logdir} is not a directory")
    runs = finished_runs(args.logdir)
    print("Final deterministic evaluation (10 episodes) at 1M steps: mean / IQM (finished seeds)\n")
    print("\n".join(returns_table(runs)))
    print("\nP(the rlgeom agent's run beats its peer's), over all seed pairs (rlgeom seeds × peer seeds); p: two-sided\n"
          "Mann–Whitney test of the two sets of returns\n")
    print("\n".join(peer_table(runs, improvement_cell)))
    print("\nmean(rlgeom) − mean(peer) (as a share of the peer's mean) [95 % percentile-bootstrap interval, "
          f"{BOOTSTRAP_RESAMPLES} resamples of each side's seeds]; the data exclude\nonly gaps larger than the "
          "interval's farther end, as a share of the peer's mean: smaller gaps, either way, they cannot rule out\n")
    print("\n".join(peer_table(runs, difference_cell)))
    print("\nPer seed: the final evaluation, the wall time of each run (under the grid's load: other runs on the same\n"
          "cores), mean FPS\n")
    print("\n".join(seeds_table(runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
