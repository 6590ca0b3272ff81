"""Issue 15's figure: one run in 1 process against the same run in K processes under torchrun (gloo),
at equal environment steps: FPS and the final deterministic evaluation, per agent and seed.

    python experiments/bench_distributed.py --algos trpo ppo --env Hopper-v5 --timesteps 100000 \
        --procs 1 2 --seeds 0 --out experiments/results/distributed_hopper.json

On a GPU machine (NCCL, several processes on one GPU, a torch-native task):

    python experiments/bench_distributed.py --algos ppo --env torch/CartPole-v1 --n-envs 2048 --device cuda \
        --timesteps 2000000 --procs 1 2 4 --out experiments/results/distributed_gpu.json

Every run is the CLI (`python -m rlgeom.train` for 1 process, `torchrun --nproc-per-node K -m
rlgeom.train` for K), with the task's preset and --n-envs 1 per process, so K processes step K envs
and each update sees K times the batch (the same steps, K times fewer updates): the comparison a user
makes when moving a run to torchrun unchanged. Each process gets one torch thread. Pairs run one after
the other, never side by side (K processes need K cores). The record keeps the command, the machine's
core count and the CLI's summary line of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = re.compile(r"eval return (?P<ret>[-\d.]+) ± (?P<std>[-\d.]+).*?\| (?P<steps>\d+) steps in "
                     r"(?P<wall>[\d.]+) s \((?P<fps>\d+) steps/s\)")


def run(algo: str, env_id: str, seed: int, timesteps: int, procs: int, logdir: str, port: int,
        device: str = "cpu", n_envs: int = 1) -> dict:
    common = ["--algo", algo, "--env", env_id, "--seed", str(seed), "--timesteps", str(timesteps), "--n-envs",
              str(n_envs), "--device", device, "--logdir", logdir, "--no-progress", "--eval-episodes", "10"]
    if procs == 1:
        command = [sys.executable, "-m", "rlgeom.train", *common]
    else:
        command = ["torchrun", "--nproc-per-node", str(procs), "--master-port", str(port), "-m", "rlgeom.train",
                   *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if "eval return" in line)
    match = SUMMARY.search(line)
    return {"algo": algo, "env": env_id, "seed": seed, "procs": procs, "timesteps": int(match["steps"]),
            "eval_mean": float(match["ret"]), "eval_std": float(match["std"]), "train_wall_s": float(match["wall"]),
            "fps": int(match["fps"]), "process_wall_s": wall, "summary": line, "command": " ".join(command)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algos", nargs="+", default=["trpo", "ppo"])
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--timesteps", type=int, default=100_000)
    p.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--device", default="cpu", help="cpu (gloo), or cuda: every rank on the GPU (NCCL)")
    p.add_argument("--n-envs", type=int, default=1, help="envs per process (torch/ tasks on a GPU: thousands)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as logdir:
        for seed in args.seeds:
            for algo in args.algos:
                for procs in args.procs:
                    record = run(algo, args.env, seed, args.timesteps, procs, os.path.join(logdir, str(procs)),
                                 29600 + len(records), args.device, args.n_envs)
                    records.append(record)
                    print(f"{algo} {args.env} seed {seed}, {procs} process(es): {record['fps']} steps/s, eval "
                          f"{record['eval_mean']:.1f} ± {record['eval_std']:.1f}", flush=True)
    print("\n| agent | seed | processes | FPS | ratio to 1 process | eval return |\n|---|---|---|---|---|---|")
    for r in records:
        one = next(o for o in records if o["algo"] == r["algo"] and o["seed"] == r["seed"] and o["procs"] == 1)
        print(f"| {r['algo']} | {r['seed']} | {r['procs']} | {r['fps']} | {r['fps'] / one['fps']:.2f}× | "
              f"{r['eval_mean']:.1f} ± {r['eval_std']:.1f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "cpu_count": os.cpu_count(), "records": records}, f, indent=2)


if __name__ == "__main__":
    main()
