"""The presets' seed table (experiments/presets/seeds.sh): per agent and task, the final deterministic evaluation
of every seed (done.json), how many seeds reach the task's solved threshold (gymnasium's `reward_threshold`:
CartPole-v1 475, InvertedPendulum-v5 950) and the commit(s) the runs ran at. For a seed below it, the telemetry
at the end of training (mean training return of the last episodes, policy entropy) says whether the run collapsed
or never learned. Markdown on stdout.

    python experiments/presets/seeds_table.py [experiments/results/presets_seeds]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import gymnasium as gym

from rlgeom.persistence.runlogs import find_run_dirs, read_run
from rlgeom.tools.benchmark import read_done

TELEMETRY = {"train return": "rollout/ep_rew_mean", "entropy": "train/entropy"}


def threshold(env_id: str) -> float | None:
    return gym.spec(env_id).reward_threshold


def telemetry(run_dir: Path) -> str:
    """The peak and the final value of the training return and the entropy at the end: a peak far above the end
    is a collapse; a low peak is a run that never learned."""
    scalars, _ = read_run(run_dir)
    parts = []
    if TELEMETRY["train return"] in scalars:
        values = scalars[TELEMETRY["train return"]].values
        parts.append(f"train return peak {max(values):.0f}, end {values[-1]:.0f}")
    for name in ("train/entropy", "train/entropy_loss"):
        if name in scalars:
            parts.append(f"{name.split('/')[1]} {scalars[name].values[-1]:.3g}")
            break
    return "; ".join(parts) or "—"


def table(logdir: Path) -> list[str]:
    cells = defaultdict(list)
    for run_dir in find_run_dirs(logdir):
        done = read_done(str(run_dir))
        if done is not None and done.get("status") == "done":
            cells[(done["algo"], done["env"])].append((done, run_dir))
    lines = ["| agent | task | seeds | solved (≥ threshold) | final eval per seed | commit |", "|---" * 6 + "|"]
    failures = []
    for (algo, env), runs in sorted(cells.items()):
        runs.sort(key=lambda r: r[0]["seed"])
        bar = threshold(env)
        solved = sum(d["eval_return"] >= bar for d, _ in runs) if bar is not None else None
        evals = ", ".join(f"{d['seed']}: {d['eval_return']:.0f}" for d, _ in runs)
        commits = sorted({((d.get("code") or {}).get("git_commit") or "—")[:7] for d, _ in runs})
        lines.append(f"| {algo} | {env} | {runs[0][0]['seed']}–{runs[-1][0]['seed']} ({len(runs)}) | "
                     f"{'—' if bar is None else f'{solved}/{len(runs)} (≥ {bar:g})'} | {evals} | {', '.join(commits)} |")
        failures += [(algo, env, d, r) for d, r in runs if bar is not None and d["eval_return"] < bar]
    if failures:
        lines += ["", "Seeds below the threshold, with their telemetry at the end of training:", "",
                  "| agent | task | seed | final eval | telemetry |", "|---" * 5 + "|"]
        lines += [f"| {a} | {e} | {d['seed']} | {d['eval_return']:.1f} | {telemetry(r)} |" for a, e, d, r in failures]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path, nargs="?", default=Path("experiments/results/presets_seeds"))
    args = parser.parse_args(argv)
    if not args.logdir.is_dir():
        parser.error(f"{args.logdir} is not a directory")
    print("\n".join(table(args.logdir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
