"""Issue 31's figures for warp/Hopper-v5 (MuJoCo Warp), one section per flag; results as one JSON.

    python experiments/bench_warp.py equivalence --states 256 --out /tmp/equivalence.json
    python experiments/bench_warp.py env --worlds 1 64 1024 --seconds 20 --out /tmp/env.json      # CPU figures
    python experiments/bench_warp.py transfer --model PATH --episodes 10 --out /tmp/transfer.json
    python experiments/bench_warp.py agents --device cuda --worlds 4096 65536 --out $OUT/agents.json  # GPU
    python experiments/bench_warp.py solve --device cuda --algos ppo trpo --budget-s 600 --out $OUT/solve.json

env: environment steps per second (worlds × vector steps / s) of warp/Hopper-v5 and of Gymnasium's Hopper-v5
  (SyncVectorEnv), both through rlgeom's make_vec_env (torch tensors in and out, as an agent sees them),
  same world counts, uniform random actions, one vector step of warm-up each, then --seconds of stepping;
  the two backends alternate per count, so they share the machine's load.
equivalence: the largest differences of one step from Gymnasium's, per task, over --states random states.
transfer: one saved model evaluated deterministically on Gymnasium's Hopper-v5 with SB3's evaluate_policy
  and on warp/Hopper-v5 (rlgeom's evaluate, one world per episode); their ratio is the transfer figure.
agents: end-to-end steps per second (env + agent) of learn() for PPO, TRPO, ACKTR with the warp/ presets
  (agents/presets.py) at each world count, over --updates updates after one warm-up update.
solve: each algo with its warp/ preset at --solve-worlds worlds, trained in chunks of --eval-every updates;
  after each chunk a deterministic evaluation on warp/Hopper-v5 (--eval-episodes worlds, one episode each);
  stops at the first mean return >= --target (3000) or after --budget-s seconds of training. Reported:
  training wall time to the target (evaluations excluded) and with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata

import numpy as np
import torch

TASK = "Hopper-v5"
WARP_TASK = "warp/" + TASK


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def env_speed(env_id: str, n: int, seconds: float, device: torch.device) -> dict:
    from rlgeom.envs import make_vec_env

    env = make_vec_env(env_id, n, seed=0, device=device)
    env.reset(seed=0)
    space = env.single_action_space
    low = torch.as_tensor(space.low, device=device)
    span = torch.as_tensor(space.high, device=device) - low
    actions = lambda: low + span * torch.rand(n, *space.shape, device=device)  # noqa: E731
    env.step(actions())
    sync(device)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        env.step(actions())
        steps += 1
    sync(device)
    wall = time.perf_counter() - start
    env.close()
    return {"env": env_id, "worlds": n, "vector_steps": steps, "wall_s": wall, "steps_per_s": steps * n / wall}


def section_env(args) -> dict:
    rows = []
    for n in args.worlds:
        for env_id in (WARP_TASK, TASK):
            rows.append(env_speed(env_id, n, args.seconds, torch.device(args.device)))
            print(json.dumps(rows[-1]), flush=True)
    return {"env": rows}


def section_transfer(args) -> dict:
    import gymnasium
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    from rlgeom.agents import AGENTS
    from rlgeom.envs import make_vec_env
    from rlgeom.training.evaluation import evaluate

    model = AGENTS[args.algo].load(args.model, device=args.device)
    gym_mean, gym_std = evaluate_policy(model, Monitor(gymnasium.make(TASK)), n_eval_episodes=args.episodes,
                                        deterministic=True)
    out = {"model": args.model, "episodes": args.episodes, "gymnasium_mean": gym_mean, "gymnasium_std": gym_std}
    if args.warp_side:  # off: the CLI's own end-of-run evaluation on warp/ (one world per episode) is the other side
        warp_env = make_vec_env(WARP_TASK, args.episodes, seed=args.seed, device=model.device)
        warp_mean, warp_std = evaluate(model, warp_env, args.episodes, deterministic=True, seed=args.seed)
        out.update(warp_mean=warp_mean, warp_std=warp_std, gymnasium_over_warp=gym_mean / warp_mean)
    print(json.dumps(out), flush=True)
    return {"transfer": out}


def make_agent(algo: str, n: int, device: str, seed: int = 0):
    from rlgeom.agents import AGENTS
    from rlgeom.agents.presets import preset

    cfg = preset(algo, WARP_TASK, n_envs=n)
    agent = AGENTS[algo](cfg["policy"], WARP_TASK, n_envs=n, seed=seed, device=device,
                         policy_kwargs=cfg["policy_kwargs"], **cfg["hyperparameters"])
    return agent, cfg


def section_agents(args) -> dict:
    rows = []
    for n in args.worlds:
        for algo in args.algos:
            agent, cfg = make_agent(algo, n, args.device)
            per_update = cfg["hyperparameters"]["n_steps"] * n
            agent.learn(per_update)  # warm-up: kernel loading, CUDA graph capture, allocations
            sync(agent.device)
            start = time.perf_counter()
            agent.learn(per_update * args.updates, reset_num_timesteps=False)
            sync(agent.device)
            wall = time.perf_counter() - start
            rows.append({"algo": algo, "worlds": n, "steps": per_update * args.updates, "wall_s": wall,
                         "steps_per_s": per_update * args.updates / wall, "hyperparameters": cfg["hyperparameters"]})
            print(json.dumps(rows[-1]), flush=True)
            agent.env.close()
            del agent
    return {"agents": rows}


def section_solve(args) -> dict:
    from rlgeom.envs import make_vec_env
    from rlgeom.training.evaluation import evaluate

    rows = []
    for algo in args.algos:
        agent, cfg = make_agent(algo, args.solve_worlds, args.device, seed=args.seed)
        eval_env = make_vec_env(WARP_TASK, args.eval_episodes, device=agent.device)
        chunk = cfg["hyperparameters"]["n_steps"] * args.solve_worlds * args.eval_every
        train_s, start, curve = 0.0, time.perf_counter(), []
        while True:
            t = time.perf_counter()
            agent.learn(chunk, reset_num_timesteps=not curve)
            sync(agent.device)
            train_s += time.perf_counter() - t
            mean, _ = evaluate(agent, eval_env, args.eval_episodes, deterministic=True, seed=args.seed + 10_000)
            curve.append({"steps": agent.num_timesteps, "train_s": train_s, "eval_return": mean})
            print(json.dumps({"algo": algo, **curve[-1]}), flush=True)
            if mean >= args.target or train_s >= args.budget_s:
                break
        rows.append({"algo": algo, "worlds": args.solve_worlds, "target": args.target, "reached": mean >= args.target,
                     "train_s": train_s, "wall_s_with_evals": time.perf_counter() - start,
                     "steps": agent.num_timesteps, "curve": curve, "hyperparameters": cfg["hyperparameters"]})
        eval_env.close()
        agent.env.close()
    return {"solve": rows}


def section_equivalence(args) -> dict:
    """Largest differences of one warp/ step from Gymnasium's, over --states random states and actions per task
    (tests/test_warp_mujoco.py's sampler and Gymnasium harness), near the reset distribution and far from it."""
    import gymnasium

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from test_warp_mujoco import gymnasium_one_step, random_states

    from rlgeom.envs.warp_mujoco import make_warp_mujoco

    rows = []
    for gym_id in args.tasks:
        env, gym = make_warp_mujoco("warp/" + gym_id, args.states, seed=0), gymnasium.make(gym_id)
        rng = np.random.default_rng(args.seed)
        states = random_states(gym.unwrapped, rng, args.states)
        actions = rng.uniform(-1.3, 1.3, (args.states, env.nu)).astype(np.float32)
        env.reset(seed=0)
        env.set_state(torch.as_tensor(states, dtype=torch.float32))
        got = env.step(torch.as_tensor(actions))
        obs, reward, terminated, truncated = gymnasium_one_step(gym, states, actions)
        for part, rows_of in (("near", slice(0, args.states // 2)), ("far", slice(args.states // 2, None))):
            d_obs = np.abs(got.final_obs.numpy()[rows_of] - obs[rows_of])
            rows.append({"task": gym_id, "states": part, "n": len(obs[rows_of]),
                         "obs_max_abs": float(d_obs.max()),
                         "obs_max_rel": float((d_obs / np.maximum(np.abs(obs[rows_of]), 1.0)).max()),
                         "reward_max_abs": float(np.abs(got.reward.numpy()[rows_of] - reward[rows_of]).max()),
                         "terminated": int(terminated[rows_of].sum()),
                         "terminated_mismatch": int((got.terminated.numpy()[rows_of] != terminated[rows_of]).sum()),
                         "truncated_mismatch": int((got.truncated.numpy()[rows_of] != truncated[rows_of]).sum())})
            print(json.dumps(rows[-1]), flush=True)
        gym.close()
    return {"equivalence": rows}


SECTIONS = {"equivalence": section_equivalence, "env": section_env, "transfer": section_transfer, "agents": section_agents, "solve": section_solve}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("section", choices=SECTIONS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 64, 1024])
    p.add_argument("--seconds", type=float, default=20.0, help="env: stepping time per (backend, count)")
    p.add_argument("--algos", nargs="+", default=["ppo", "trpo", "acktr"])
    p.add_argument("--algo", default="ppo", help="transfer: the saved model's agent")
    p.add_argument("--model", help="transfer: the saved model")
    p.add_argument("--episodes", type=int, default=10, help="transfer: evaluation episodes on each side")
    p.add_argument("--no-warp-side", dest="warp_side", action="store_false", help="transfer: Gymnasium's side only")
    p.add_argument("--updates", type=int, default=10, help="agents: timed updates")
    p.add_argument("--solve-worlds", type=int, default=4096)
    p.add_argument("--eval-every", type=int, default=10, help="solve: updates between evaluations")
    p.add_argument("--eval-episodes", type=int, default=16)
    p.add_argument("--target", type=float, default=3000.0)
    p.add_argument("--budget-s", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--states", type=int, default=256, help="equivalence: random states (worlds) per task")
    p.add_argument("--tasks", nargs="+", default=["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Swimmer-v5"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import mujoco
    import warp

    result = {"section": args.section, "argv": sys.argv if argv is None else argv, "device": args.device, "platform": platform.platform(),
              "cuda": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
              "versions": {"torch": torch.__version__, "mujoco": mujoco.__version__, "warp": warp.__version__,
                           "mujoco_warp": metadata.version("mujoco-warp"), "numpy": np.__version__},
              **SECTIONS[args.section](args)}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
