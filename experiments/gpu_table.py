"""Issue 27's table: rlgeom and SB3 / sb3-contrib on Gymnasium tasks with 8 envs, on the GPU and on the CPU.

    python experiments/gpu_table.py --device cuda --out gpu-out/table.json

For CartPole-v1 and Hopper-v5, PPO (against SB3 PPO) and TRPO (against sb3-contrib TRPO), with
experiments/bench_speed.py's shared hyperparameters at 8 envs: rlgeom on --device, rlgeom on the CPU,
the counterpart on --device, the counterpart on the CPU, back to back in one process. Each is one
learn() of --steps after a one-rollout warm-up (CUDA start-up, allocations); the figure is environment
steps per second of that learn() (the clock read after torch.cuda.synchronize()). One thread, as every
CPU benchmark here. With `--compile MODE` rlgeom is also measured compiled on --device (compile=MODE;
`auto` is mode="reduce-overhead", CUDA graphs, on CUDA), its warm-up (which compiles) timed apart in
`warmup_s`. The JSON is rewritten after each measurement, so a run cut short keeps what it
measured. `--quick`: CartPole-v1 only, 1024 steps (a dry run of this script, e.g. on a machine without
a GPU with --device cpu).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_gpu import compile_arg, sync, write_record  # noqa: E402  (beside this script)

N_ENVS = 8
TASKS = ("CartPole-v1", "Hopper-v5")
ALGOS = ("ppo", "trpo")


def timed(model, steps: int, device: str, rollout: int, warmups: dict | None = None, key: str = "") -> float:
    """Steps per second of one learn(steps) after a one-rollout warm-up (its seconds into warmups[key])."""
    sync(torch.device(device))
    start = time.perf_counter()
    model.learn(rollout)
    sync(torch.device(device))
    if warmups is not None:
        warmups[key] = time.perf_counter() - start
    start, done = time.perf_counter(), model.num_timesteps
    model.learn(steps, reset_num_timesteps=False)  # whole rollouts: at least `steps`
    sync(torch.device(device))
    return (model.num_timesteps - done) / (time.perf_counter() - start)


def measure(task: str, algo: str, device: str, steps: int, seed: int, compile: str | None = None) -> dict:
    from rlgeom.agents import AGENTS
    from bench_speed import hyperparameters, sb3_counterpart

    hp = hyperparameters(algo, N_ENVS)
    row = {"task": task, "algo": algo, "n_envs": N_ENVS, "hyperparameters": hp, "steps": steps, "warmup_s": {}}
    rollout = hp["n_steps"] * N_ENVS
    for where in dict.fromkeys((device, "cpu")):  # --device cpu: one column each
        agent = AGENTS[algo]("MlpPolicy", task, n_envs=N_ENVS, seed=seed, device=where, **hp)
        row[f"rlgeom_{where}"] = timed(agent, steps, where, rollout, row["warmup_s"], f"rlgeom_{where}")
        agent.env.close()
        if compile and where == device:  # the compiled path beside the plain one (its warm-up compiles)
            agent = AGENTS[algo]("MlpPolicy", task, n_envs=N_ENVS, seed=seed, device=where,
                                 compile=compile_arg(compile), **hp)
            key = f"rlgeom_{where}_compiled"
            row[key], row["compile"] = timed(agent, steps, where, rollout, row["warmup_s"], key), compile
            agent.env.close()
        name, model = sb3_counterpart(algo, hp, task, N_ENVS, seed, device=where)
        row["counterpart"] = name
        row[f"counterpart_{where}"] = timed(model, steps, where, rollout)
        model.get_env().close()
    row["rlgeom_device_over_cpu"] = row[f"rlgeom_{device}"] / row["rlgeom_cpu"]
    row["rlgeom_over_counterpart_on_device"] = row[f"rlgeom_{device}"] / row[f"counterpart_{device}"]
    if compile:
        row["compiled_over_cpu"] = row[f"rlgeom_{device}_compiled"] / row["rlgeom_cpu"]
        row["compiled_over_counterpart_on_device"] = row[f"rlgeom_{device}_compiled"] / row[f"counterpart_{device}"]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the table of issue 27) or cpu")
    p.add_argument("--steps", type=int, default=16384, help="timed training steps per measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="CartPole-v1, 1024 steps: a dry run")
    p.add_argument("--compile", default=None, help="also rlgeom compiled (compile=, e.g. auto: reduce-overhead on "
                   "CUDA) on --device, beside the plain agent")
    p.add_argument("--out", default=None, help="write the record as JSON here")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_table: --device cuda needs a CUDA GPU and none is visible; use --device cpu", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    tasks, steps = (TASKS[:1], 1024) if args.quick else (TASKS, args.steps)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    record = {"argv": sys.argv, "torch": torch.__version__, "device": args.device, "device_name": name,
              "cpus": os.cpu_count(), "threads": 1, "rows": []}
    for task in tasks:
        for algo in ALGOS:
            row = measure(task, algo, args.device, steps, args.seed, args.compile)
            record["rows"].append(row)
            compiled = row.get(f"rlgeom_{args.device}_compiled")
            print(f"  {task} {algo}: rlgeom {args.device} {row[f'rlgeom_{args.device}']:,.0f}"
                  f"{f' (compiled {compiled:,.0f})' if compiled else ''}, cpu "
                  f"{row['rlgeom_cpu']:,.0f}; {row['counterpart']} {args.device} "
                  f"{row[f'counterpart_{args.device}']:,.0f}, cpu {row['counterpart_cpu']:,.0f} steps/s", flush=True)
            if args.out:
                write_record(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
