"""The table of ACKTR's controlled arms (experiments/acktr/arms_300k.sh): per arm, task and seed, the final
deterministic evaluation (done.json), the commit it ran at, and from the run's events the mean training return
of the last 100 episodes, σ and the KL-target multiplier at the end. Markdown on stdout.

    python experiments/acktr/arms_table.py [experiments/results/acktr_arms_100k]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlgeom.persistence.runlogs import find_run_dirs, read_run
from rlgeom.tools.benchmark import read_done

TAGS = {"train return": "rollout/ep_rew_mean", "σ": "train/std", "lr multiplier": "geometry/lr_multiplier"}


def rows(logdir: Path) -> list[str]:
    lines = ["| arm | task | seed | eval (10 ep) | " + " | ".join(f"{k} at the end" for k in TAGS) + " | steps | commit |",
             "|---" * (6 + len(TAGS)) + "|"]
    for run_dir in find_run_dirs(logdir):
        done = read_done(str(run_dir))
        if done is None or done.get("status") != "done":
            continue
        arm = run_dir.relative_to(logdir).parts[0]
        scalars, _ = read_run(run_dir)
        ends = [f"{scalars[t].values[-1]:.4g}" if t in scalars else "—" for t in TAGS.values()]
        commit = ((done.get("code") or {}).get("git_commit") or "—")[:7]
        lines.append(f"| {arm} | {done['env']} | {done['seed']} | {done['eval_return']:.1f} | " + " | ".join(ends)
                     + f" | {done['timesteps']} | {commit} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path, nargs="?", default=Path("experiments/results/acktr_arms_100k"))
    args = parser.parse_args(argv)
    if not args.logdir.is_dir():
        parser.error(f"{args.logdir} is not a directory")
    print("\n".join(rows(args.logdir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
