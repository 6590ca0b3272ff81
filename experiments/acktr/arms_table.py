"""The table of ACKTR's controlled arms (experiments/acktr/arms_300k.sh): per arm, task and seed, the final
deterministic evaluation (done.json), the commit it ran at, and from the run's events the mean training return
of the last 100 episodes, σ and the KL-target multiplier at the end. Markdown on stdout.

    python experiments/acktr/arms_table.py [experiments/results/acktr_arms_100k]
    python experiments/acktr/arms_table.py experiments/results/acktr_arms_300k --kl [--stopped DIR]
    python experiments/acktr/arms_table.py experiments/results/grid_1m --at 301056

--at STEPS reads the training return, σ and multiplier at the last value logged at or before that step instead of
at the end (the evaluation column stays the run's final one): a 1M grid's runs beside the 300k arms.

--kl prints instead how each run's step size behaved: the measured KL(π_old ‖ π_new) per update (median and
10th-90th percentiles, the first 10 updates left out) and, for ACKTR, the median of the measured KL over the KL
that K-FAC's quadratic model predicted for the step (geometry/kl ÷ geometry/kl_predicted: how far its trust
region under-predicts; under policy_step="measured", of the normalised step before its rescale, 1 / kl_rescale²,
which the second rescale's power correction makes approximate). --stopped adds the runs of another folder that were stopped before the end (no done.json),
with the steps they reached.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from rlgeom.persistence.runlogs import find_run_dirs, read_run
from rlgeom.tools.benchmark import read_done

TAGS = {"train return": "rollout/ep_rew_mean", "σ": "train/std", "lr multiplier": "geometry/lr_multiplier"}


def value_at(series, at: int | None):
    """The last value logged at or before step `at` (the last of all when `at` is None); None if none was."""
    picked = [v for step, v in zip(series.steps, series.values) if at is None or step <= at]
    return picked[-1] if picked else None


def rows(logdir: Path, at: int | None = None) -> list[str]:
    when = "at the end" if at is None else f"at {at} steps"
    lines = ["| arm | task | seed | eval (10 ep, final) | " + " | ".join(f"{k} {when}" for k in TAGS)
             + " | steps | commit |",
             "|---" * (6 + len(TAGS)) + "|"]
    for run_dir in find_run_dirs(logdir):
        done = read_done(str(run_dir))
        if done is None or done.get("status") != "done":
            continue
        parts = run_dir.relative_to(logdir).parts  # [arm, ]task, agent, seed: a grid's own folder has no arm level
        arm = "/".join(parts[:-3]) or parts[-2]
        scalars, _ = read_run(run_dir)
        picked = [value_at(scalars[t], at) if t in scalars else None for t in TAGS.values()]
        ends = ["—" if v is None else f"{v:.4g}" for v in picked]
        commit = ((done.get("code") or {}).get("git_commit") or "—")[:7]
        lines.append(f"| {arm} | {done['env']} | {done['seed']} | {done['eval_return']:.1f} | " + " | ".join(ends)
                     + f" | {done['timesteps']} | {commit} |")
    return lines


def kl_summary(scalars) -> tuple[str, str]:
    """('median [q10, q90]' of the measured KL per update, 'median' of measured ÷ K-FAC-predicted), first 10 left out."""
    kl = scalars["geometry/kl"].values[10:] if "geometry/kl" in scalars else []
    if len(kl) < 2:
        return "—", "—"
    deciles = statistics.quantiles(kl, n=10)
    measured = f"{statistics.median(kl):.4f} [{deciles[0]:.4f}, {deciles[-1]:.4f}]"
    if "geometry/kl_rescale" in scalars:  # policy_step="measured": the KL is rescaled to target; c = √(target / KL)
        ratios = [1.0 / (c * c) for c in scalars["geometry/kl_rescale"].values[10:] if c > 0]  # of the normalised step
    elif "geometry/kl_predicted" in scalars:
        ratios = [m / p for m, p in zip(scalars["geometry/kl"].values, scalars["geometry/kl_predicted"].values)][10:]
    else:
        return measured, "—"
    ratios = [r for r in ratios if r == r and r != float("inf")]
    return measured, f"{statistics.median(ratios):.1f}" if ratios else "—"


def kl_rows(logdir: Path, stopped: Path | None) -> list[str]:
    lines = ["| arm | task | seed | run | measured KL per update, median [10th, 90th percentile] | "
             "measured ÷ K-FAC-predicted KL, median |", "|---" * 6 + "|"]
    for folder, finished in ((logdir, True), (stopped, False)):
        if folder is None:
            continue
        for run_dir in find_run_dirs(folder):
            done = read_done(str(run_dir))
            if finished != (done is not None and done.get("status") == "done"):
                continue
            arm, env, _, seed = run_dir.relative_to(folder).parts[:4]
            scalars, _ = read_run(run_dir)
            steps = int(scalars["rollout/ep_rew_mean"].steps[-1]) if "rollout/ep_rew_mean" in scalars else 0
            measured, ratio = kl_summary(scalars)
            status = f"done ({done['timesteps']} steps)" if finished else f"stopped at {steps} steps"
            lines.append(f"| {arm} | {env} | {seed.removeprefix('seed')} | {status} | {measured} | {ratio} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path, nargs="?", default=Path("experiments/results/acktr_arms_100k"))
    parser.add_argument("--kl", action="store_true", help="the step size's behaviour instead (see above)")
    parser.add_argument("--stopped", type=Path, help="with --kl: a folder of runs stopped before the end")
    parser.add_argument("--at", type=int, metavar="STEPS", help="the training-time columns at this step (see above)")
    args = parser.parse_args(argv)
    for folder in (args.logdir, args.stopped):
        if folder is not None and not folder.is_dir():
            parser.error(f"{folder} is not a directory")
    if args.stopped is not None and not args.kl:
        parser.error("--stopped goes with --kl")
    if args.at is not None and (args.kl or args.at < 1):
        parser.error("--at takes a positive step, without --kl")
    print("\n".join(kl_rows(args.logdir, args.stopped) if args.kl else rows(args.logdir, args.at)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
