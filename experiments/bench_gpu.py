"""Issue 7's GPU figures in one command: torch-native CartPole with thousands of environments, and the
agents on CUDA against the same agents on the CPU for Gymnasium tasks.

    python experiments/bench_gpu.py --device cuda --out experiments/results/gpu.json

1. solve: PPO on torch/CartPole-v1 with --n-envs environments (4096) on --device. It trains in chunks of
   --eval-every updates; after each chunk a deterministic evaluation (100 episodes on a separate
   torch-native CartPole with 100 environments, on the same device) says whether it has solved the task
   (mean return ≥ 475). Training stops at the first such evaluation, or at the first evaluation after
   --budget-s seconds of training (the budget is checked between chunks). Reported:
   - the training throughput (environment steps per second of learn(), evaluations excluded);
   - the wall time to solve, training only and with the evaluations;
   - the first chunk's time apart, since it includes the one-off start-up (CUDA context, cuBLAS handles).
2. throughput: PPO, TRPO and ACKTR on torch/CartPole-v1 with --n-envs environments: environment steps per
   second of learn() over --throughput-updates updates, after one warm-up update. Keep it a multiple of
   ACKTR's update_inverse_every (10), so that its eigendecompositions are in the timed window.
3. cuda_vs_cpu (CUDA only): PPO and TRPO on Gymnasium's CartPole-v1 and Hopper-v5 with 8 environments,
   the agent on --device and then on the CPU, back to back, each after a one-rollout warm-up, with
   experiments/bench_speed.py's hyperparameters: the issue's "FPS not below the CPU agent's".

With --device cpu the same code runs on the CPU (section 3 is skipped), which is how it was checked on a
machine without a GPU. The clock is read after torch.cuda.synchronize(). Hyperparameters for thousands of
environments are below (MASSIVE_PPO and friends): short rollouts, large minibatches. They are this
script's choice, not a published preset, and they are recorded in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SOLVED = 475.0
EVAL_ENVS = 100

# Short rollouts over many environments, few large minibatches: the shape of PPO in Isaac Gym / Brax.
MASSIVE_PPO = {"n_steps": 16, "n_epochs": 4, "learning_rate": 3e-3, "gamma": 0.99, "gae_lambda": 0.95,
               "ent_coef": 0.0, "clip_range": 0.2, "max_grad_norm": 1.0}
MASSIVE_TRPO = {"n_steps": 16, "n_critic_updates": 5, "learning_rate": 3e-3, "gamma": 0.99, "gae_lambda": 0.95}
MASSIVE_ACKTR = {"n_steps": 16, "gamma": 0.99, "ent_coef": 0.0}


def minibatch(n_envs: int, n_steps: int, n_minibatches: int = 4) -> int:
    return n_envs * n_steps // n_minibatches


def hyperparameters(algo: str, n_envs: int) -> dict:
    if algo == "ppo":
        return {**MASSIVE_PPO, "batch_size": minibatch(n_envs, MASSIVE_PPO["n_steps"])}
    if algo == "trpo":
        return {**MASSIVE_TRPO, "batch_size": minibatch(n_envs, MASSIVE_TRPO["n_steps"])}
    return dict(MASSIVE_ACKTR)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_agent(algo: str, env_id: str, n_envs: int, device: str, seed: int, hp: dict, compile=None):
    from rlgeom.agents import AGENTS

    return AGENTS[algo]("MlpPolicy", env_id, n_envs=n_envs, seed=seed, device=device, compile=compile_arg(compile),
                        **hp)


def compile_arg(text: str | None):
    """--compile as the agents' compile=: a mode name, or a JSON dict of torch.compile options
    ('{"mode": "default", "backend": "eager"}', what the CPU dry run of gpu_check.sh passes)."""
    return json.loads(text) if text and text.lstrip().startswith("{") else text


def solve(args) -> dict:
    """PPO on torch/CartPole-v1 until a deterministic evaluation reaches 475, or out of budget."""
    from rlgeom.envs import make_vec_env
    from rlgeom.training.evaluation import evaluate

    hp = hyperparameters("ppo", args.n_envs)
    agent = make_agent("ppo", "torch/CartPole-v1", args.n_envs, args.device, args.seed, hp, args.compile)
    eval_env = make_vec_env("torch/CartPole-v1", n_envs=EVAL_ENVS, seed=args.seed + 10_000, device=agent.device)
    chunk = args.eval_every * args.n_envs * hp["n_steps"]
    train_s = eval_s = 0.0
    evaluations, solved_at, first_chunk_s = [], None, None
    while train_s < args.budget_s:
        sync(agent.device)
        start = time.perf_counter()
        agent.learn(chunk, reset_num_timesteps=agent.num_timesteps == 0)
        sync(agent.device)
        train_s += time.perf_counter() - start
        first_chunk_s = train_s if first_chunk_s is None else first_chunk_s
        start = time.perf_counter()
        mean, std = evaluate(agent, eval_env, n_episodes=EVAL_ENVS, deterministic=True, seed=args.seed + len(evaluations))
        eval_s += time.perf_counter() - start
        evaluations.append({"steps": agent.num_timesteps, "train_s": train_s, "eval_mean": mean, "eval_std": std})
        print(f"  solve: {agent.num_timesteps:,} steps, {train_s:.1f} s of training: eval {mean:.1f} ± {std:.1f}",
              flush=True)
        if mean >= SOLVED:
            solved_at = evaluations[-1]
            break
    return {
        "hyperparameters": hp, "n_envs": args.n_envs, "steps": agent.num_timesteps,
        "train_steps_per_s": agent.num_timesteps / train_s, "train_s": train_s, "eval_s": eval_s,
        "first_chunk_s": first_chunk_s, "first_chunk_steps": chunk,
        "solved": solved_at is not None,
        "seconds_to_solve_training_only": solved_at["train_s"] if solved_at else None,
        "seconds_to_solve_with_evaluations": (solved_at["train_s"] + eval_s) if solved_at else None,
        "steps_to_solve": solved_at["steps"] if solved_at else None,
        "evaluations": evaluations,
    }


def throughput(args, record: dict) -> list[dict]:
    """Steps per second of learn() on torch/CartPole-v1 for PPO, TRPO and ACKTR."""
    rows = []
    for algo in args.algos:
        hp = hyperparameters(algo, args.n_envs)
        agent = make_agent(algo, "torch/CartPole-v1", args.n_envs, args.device, args.seed, hp, args.compile)
        per_update = args.n_envs * hp["n_steps"]
        sync(agent.device)
        start = time.perf_counter()
        agent.learn(per_update)  # warm-up: allocations, kernels, the first K-FAC decompositions; compiling
        sync(agent.device)
        warmup = time.perf_counter() - start
        start = time.perf_counter()
        agent.learn(args.throughput_updates * per_update, reset_num_timesteps=False)
        sync(agent.device)
        seconds = time.perf_counter() - start
        steps = args.throughput_updates * per_update
        rows.append({"algo": algo, "hyperparameters": hp, "n_envs": args.n_envs, "steps": steps, "compile": args.compile,
                     "warmup_s": warmup, "seconds": seconds, "steps_per_s": steps / seconds})
        print(f"  throughput: {algo}{' compiled ' + args.compile if args.compile else ''} {steps / seconds:,.0f} "
              f"steps/s ({steps:,} steps in {seconds:.2f} s; first update {warmup:.1f} s)", flush=True)
        if args.out:  # a run cut short by its timeout keeps what it measured
            write_record(args.out, {**record, "throughput": rows})
    return rows


def cuda_vs_cpu(args) -> list[dict]:
    """PPO and TRPO on Gymnasium tasks with 8 envs: the agent on the GPU, then on the CPU."""
    from bench_speed import hyperparameters as cpu_hyperparameters

    rows = []
    for env_id in ("CartPole-v1", "Hopper-v5"):
        for algo in ("ppo", "trpo"):
            hp = cpu_hyperparameters(algo, 8)
            fps = {}
            for device in (args.device, "cpu"):
                agent = make_agent(algo, env_id, 8, device, args.seed, hp)
                agent.learn(8 * hp["n_steps"])  # warm-up: one rollout and update (CUDA start-up, allocations)
                sync(agent.device)
                start = time.perf_counter()
                agent.learn(args.gym_steps, reset_num_timesteps=False)
                sync(agent.device)
                fps[device] = args.gym_steps / (time.perf_counter() - start)
                agent.env.close()
            rows.append({"task": env_id, "algo": algo, "n_envs": 8, "hyperparameters": hp,
                         "fps_device": fps[args.device], "fps_cpu": fps["cpu"],
                         "ratio": fps[args.device] / fps["cpu"]})
            print(f"  {env_id} {algo}: {args.device} {fps[args.device]:,.0f} vs cpu {fps['cpu']:,.0f} steps/s "
                  f"-> {fps[args.device] / fps['cpu']:.2f}x", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the figures of issue 7) or cpu")
    p.add_argument("--n-envs", type=int, default=4096)
    p.add_argument("--sections", nargs="*", default=["solve", "throughput", "cuda_vs_cpu"],
                   choices=["solve", "throughput", "cuda_vs_cpu"])
    p.add_argument("--algos", nargs="*", default=["ppo", "trpo", "acktr"], choices=["ppo", "trpo", "acktr"])
    p.add_argument("--budget-s", type=float, default=60.0, help="training seconds before `solve` gives up")
    p.add_argument("--eval-every", type=int, default=5, help="updates between evaluations in `solve`")
    p.add_argument("--throughput-updates", type=int, default=20, help="a multiple of 10: ACKTR's inverse refresh")
    p.add_argument("--gym-steps", type=int, default=20480, help="training steps per cuda_vs_cpu measurement")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1, as the CPU benchmarks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", default=None, help="the agents' compile= (rlgeom.training.compiled): auto, "
                   "reduce-overhead (CUDA graphs), default; throughput and solve (default: off)")
    p.add_argument("--out", default=None, help="write the record as JSON here")
    args = p.parse_args(argv)
    if args.budget_s <= 0 or args.eval_every < 1 or args.throughput_updates < 1 or args.n_envs < 1:
        p.error("--budget-s must be > 0 and --eval-every, --throughput-updates, --n-envs >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: --device cuda needs a CUDA GPU and none is visible; use --device cpu to run the "
              "same code on the CPU", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device_name = (torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda")
                   else platform.processor() or platform.machine())
    print(f"# torch {torch.__version__}, device {args.device} ({device_name}), {os.cpu_count()} CPUs, "
          f"threads={args.threads}, n_envs={args.n_envs}", flush=True)
    record = {"argv": sys.argv, "torch": torch.__version__, "device": args.device, "device_name": device_name,
              "cpus": os.cpu_count(), "threads": args.threads, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "compile": args.compile}
    if "solve" in args.sections:
        record["solve"] = solve(args)
    if "throughput" in args.sections:
        record["throughput"] = throughput(args, record)
    if "cuda_vs_cpu" in args.sections and args.device.startswith("cuda"):
        record["cuda_vs_cpu"] = cuda_vs_cpu(args)
    if args.out:
        write_record(args.out, record)
    return 0


def write_record(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
