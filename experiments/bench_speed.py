"""Training speed of rlgeom's agents against Stable-Baselines3 / sb3-contrib, measured back to back.

    python experiments/bench_speed.py --out experiments/bench_speed.json

For each task (CartPole-v1, Hopper-v5) and each n_envs (1, 8), in ONE process and ONE run:

1. the environment's own random-action stepping rate: a gymnasium sync vector env with same-step
   autoreset, actions drawn beforehand (so only env.step is timed);
2. for each agent in agents.AGENTS: rlgeom's training FPS (environment steps / wall time of
   learn()), then its counterpart's in SB3 / sb3-contrib with the same hyperparameters where one
   exists: PPO -> SB3 PPO, TRPO -> sb3-contrib TRPO (the like-for-like comparisons, with targets);
   ACKTR and VPG -> SB3 A2C with the same n_steps (a reference only: A2C takes one RMSprop step per
   rollout, ACKTR adds K-FAC, VPG fits the critic for several epochs); NPG has no counterpart.

Every measurement uses torch.set_num_threads(1) and the CPU. The machine is shared and noisy, so
the report gives ratios of numbers taken side by side (rlgeom, then SB3, on the same task and
n_envs, seconds apart); absolute numbers are indicative only. With --repeats R the two alternate R
times and the report gives medians (FPS, and the ratio of each pair), with every pair's ratio listed:

    python experiments/bench_speed.py --tasks Hopper-v5 --agents trpo --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

ROLLOUT = 2048  # transitions per rollout for every agent and library (n_steps = ROLLOUT // n_envs)


def env_rate(env_id: str, n_envs: int, steps: int, seed: int = 0) -> float:
    """Random-action steps per second of gymnasium's sync vector env (same-step autoreset)."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    vec = gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})
    vec.reset(seed=seed)
    vec.action_space.seed(seed)
    actions = [vec.action_space.sample() for _ in range(256)]
    n_calls = max(steps // n_envs, 1)
    start = time.perf_counter()
    for i in range(n_calls):
        vec.step(actions[i % 256])
    elapsed = time.perf_counter() - start
    vec.close()
    return n_calls * n_envs / elapsed


def hyperparameters(algo: str, n_envs: int) -> dict:
    """The shared hyperparameters (rlgeom names); defaults are SB3's / sb3-contrib's where they exist."""
    n_steps = ROLLOUT // n_envs
    if algo == "ppo":
        return {"n_steps": n_steps, "batch_size": 64, "n_epochs": 10}
    if algo in ("trpo", "npg"):
        return {"n_steps": n_steps, "batch_size": 128, "n_critic_updates": 10, "cg_max_steps": 15}
    if algo == "vpg":
        return {"n_steps": n_steps, "batch_size": 256, "n_critic_updates": 10}
    if algo == "acktr":
        return {"n_steps": 20}
    return {"n_steps": n_steps}


def sb3_counterpart(algo: str, hp: dict, env_id: str, n_envs: int, seed: int, device: str = "cpu"):
    """(name, model) of the SB3 / sb3-contrib agent with the same hyperparameters, or None."""
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    kw = dict(seed=seed, device=device, verbose=0)
    if algo == "ppo":
        from stable_baselines3 import PPO

        return "SB3 PPO", PPO("MlpPolicy", env, n_steps=hp["n_steps"], batch_size=hp["batch_size"],
                              n_epochs=hp["n_epochs"], **kw)
    if algo == "trpo":
        from sb3_contrib import TRPO

        return "sb3-contrib TRPO", TRPO("MlpPolicy", env, n_steps=hp["n_steps"], batch_size=hp["batch_size"],
                                        n_critic_updates=hp["n_critic_updates"], cg_max_steps=hp["cg_max_steps"],
                                        **kw)
    if algo in ("acktr", "vpg"):
        from stable_baselines3 import A2C

        return "SB3 A2C (reference)", A2C("MlpPolicy", env, n_steps=hp["n_steps"], **kw)
    env.close()
    return None


def timed_learn_wall_and_cpu(model, steps: int) -> tuple[float, float]:
    """Training steps per second of wall time, and per second of this process's CPU time (which a
    co-tenant's load on a shared machine disturbs less; every measurement here is single-threaded)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    model.learn(steps)
    return model.num_timesteps / (time.perf_counter() - start), model.num_timesteps / (time.process_time() - start_cpu)


def measure_pair(algo: str, env_id: str, n_envs: int, steps: int, repeats: int, agent_cls) -> dict:
    """rlgeom's FPS and its counterpart's, `repeats` times alternately (rlgeom, counterpart, rlgeom, ...)
    so that both see the same load; the figures are medians, the ratio the median of the pairs' ratios."""
    hp = hyperparameters(algo, n_envs)
    ours, theirs, name = [], [], None
    for _ in range(repeats):
        agent = agent_cls("MlpPolicy", env_id, n_envs=n_envs, seed=0, device="cpu", **hp)
        ours.append(timed_learn_wall_and_cpu(agent, steps))
        agent.env.close()
        other = sb3_counterpart(algo, hp, env_id, n_envs, 0)
        if other is not None:
            name, model = other
            theirs.append(timed_learn_wall_and_cpu(model, steps))
            model.get_env().close()
    ratios = [a[0] / b[0] for a, b in zip(ours, theirs)]
    cpu_ratios = [a[1] / b[1] for a, b in zip(ours, theirs)]
    median = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    return {"task": env_id, "n_envs": n_envs, "algo": algo, "hyperparameters": hp,
            "rlgeom_fps": median([w for w, _ in ours]), "rlgeom_fps_each": [w for w, _ in ours],
            "rlgeom_cpu_fps_each": [c for _, c in ours], "counterpart": name,
            "counterpart_fps": median([w for w, _ in theirs]), "counterpart_fps_each": [w for w, _ in theirs],
            "counterpart_cpu_fps_each": [c for _, c in theirs],
            "ratio": median(ratios), "ratios": ratios, "cpu_time_ratio": median(cpu_ratios), "cpu_time_ratios": cpu_ratios}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="*", default=["CartPole-v1", "Hopper-v5"])
    p.add_argument("--n-envs", nargs="*", type=int, default=[1, 8])
    p.add_argument("--agents", nargs="*", default=None, help="default: every agent in agents.AGENTS")
    p.add_argument("--steps", type=int, default=20480, help="training steps per measurement")
    p.add_argument("--env-steps", type=int, default=40000, help="steps for the env's own rate")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1,
                   help="alternate rlgeom and its counterpart this many times; report medians")
    p.add_argument("--out", default=None, help="write the records as JSON here")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    torch.set_num_threads(args.threads)
    from rlgeom.agents import AGENTS

    algos = args.agents or list(AGENTS)
    records = []
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, threads={args.threads}, steps={args.steps}", flush=True)
    for env_id in args.tasks:
        for n_envs in args.n_envs:
            rate = env_rate(env_id, n_envs, args.env_steps)
            print(f"{env_id} n_envs={n_envs}: env random-action rate {rate:,.0f} steps/s", flush=True)
            for algo in algos:
                rec = measure_pair(algo, env_id, n_envs, args.steps, args.repeats, AGENTS[algo])
                rec["env_rate"], rec["env_fraction"] = rate, rec["rlgeom_fps"] / rate
                records.append(rec)
                extra = ""
                if rec["ratio"] is not None:
                    extra = f" | {rec['counterpart']} {rec['counterpart_fps']:,.0f} -> ratio {rec['ratio']:.2f}x"
                    if args.repeats > 1:
                        extra += f" (median of {', '.join(f'{r:.2f}' for r in rec['ratios'])})"
                    extra += f"; by CPU time {rec['cpu_time_ratio']:.2f}x"
                print(f"  {algo:5s} rlgeom {rec['rlgeom_fps']:,.0f} steps/s ({100 * rec['env_fraction']:.1f}% of env)"
                      f"{extra}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"argv": sys.argv, "torch": torch.__version__, "threads": args.threads, "repeats": args.repeats,
                       "records": records},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
