"""Controlled comparisons of rlgeom TRPO on HalfCheetah-v5 against sb3-contrib (issue 18, RESULTS_trpo.md).

    python experiments/diag_trpo_halfcheetah.py --arms baseline sb3-vecnormalize --seeds 0 1 2 3 4 \
        --timesteps 300000 --workers 2

Each (arm, seed) trains with the HalfCheetah-v5 TRPO preset (rl-zoo settings, KL translated to the true
KL) for --timesteps, then evaluates deterministically over 10 episodes on an env seeded seed + 10000.
Every run writes experiments/results/trpo_halfcheetah/<arm>_s<seed>_<timesteps>.json (final evaluation,
training-return curve, wall time); runs whose file exists are skipped, so an interrupted grid resumes.
`--summary` prints a table of what is recorded. The arms differ from `baseline` in one thing each:

  baseline          the preset as the CLI runs it: gymnasium vector env, rlgeom's own normalisers;
  sb3-backend       the same normalisers, SB3's DummyVecEnv (Monitor) as the env backend;
  sb3-vecnormalize  rlgeom's normalisers off, SB3's VecNormalize around the env instead;
  kl-hessian        fisher_method=kl_hessian (autograd Hessian of the KL instead of the written-out JᵀFJ);
  critic-eps        the critic's Adam eps 1e-5 (SB3's policy optimiser default) instead of torch's 1e-8;
  sb3contrib        sb3-contrib's TRPO itself, same settings (target_kl and damping divided by the action dim);
  sb3contrib-eps8   sb3-contrib's TRPO with its Adam eps 1e-8 (rlgeom's critic value);
  npg               rlgeom's NPG with the same preset (TRPO's values: the same step without the line search).

The 1M-step record of RESULTS_trpo.md (TRPO and NPG beside sb3-contrib on HalfCheetah-v5 and Hopper-v5):

    python experiments/diag_trpo_halfcheetah.py --arms baseline npg sb3contrib --seeds 0 1 2 \
        --timesteps 1000000 --task HalfCheetah-v5 --workers 2 --out experiments/results/trpo_1m
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "experiments", "results", "trpo_halfcheetah")
TASK, EVAL_SEED_OFFSET, EVAL_EPISODES = "HalfCheetah-v5", 10_000, 10
ARMS = ("baseline", "npg", "sb3-backend", "sb3-vecnormalize", "kl-hessian", "critic-eps", "sb3contrib",
        "sb3contrib-eps8")


def _curve_recorder(model_holder: dict, every: int):
    from stable_baselines3.common.callbacks import BaseCallback

    class Curve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.points, self.next = [], every

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            model = self.model
            if model.num_timesteps >= self.next and model.ep_info_buffer:
                import numpy as np

                self.points.append([int(model.num_timesteps), float(np.mean([e["r"] for e in model.ep_info_buffer]))])
                self.next += every

    return Curve()


def run(arm: str, seed: int, timesteps: int, task: str = TASK) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, ROOT)
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    from rlgeom.agents import NPG, TRPO
    from rlgeom.agents.presets import preset

    cfg = preset("trpo", task)
    hp = dict(cfg["hyperparameters"])
    curve = _curve_recorder({}, 20_000)
    start = time.perf_counter()
    vec_normalize = None
    if arm.startswith("sb3contrib"):
        from sb3_contrib import TRPO as ContribTRPO

        from rlgeom.tools.benchmark import sb3contrib_kl_convention

        hp.pop("normalize_observations"), hp.pop("normalize_reward")
        hp["target_kl"] = hp.pop("max_kl")
        venv = vec_normalize = VecNormalize(sb3_make_vec_env(task, n_envs=cfg["n_envs"], seed=seed), gamma=hp["gamma"])
        hp = sb3contrib_kl_convention(hp, venv.action_space)
        policy_kwargs = {"optimizer_kwargs": {"eps": 1e-8}} if arm == "sb3contrib-eps8" else None
        model = ContribTRPO(cfg["policy"], venv, seed=seed, device="cpu", policy_kwargs=policy_kwargs, **hp)
    else:
        if arm == "kl-hessian":
            hp["fisher_method"] = "kl_hessian"
        if arm == "critic-eps":  # NPG/TRPO build their critic optimiser through this name
            from rlgeom.agents import natural
            from rlgeom.training.optim import adam

            natural.critic_optimizer = lambda policy, lr: adam(policy.critic_parameters(), lr=lr, eps=1e-5)
        if arm == "sb3-vecnormalize":
            hp.update(normalize_observations=False, normalize_reward=False)
            env = vec_normalize = VecNormalize(sb3_make_vec_env(task, n_envs=cfg["n_envs"], seed=seed), gamma=hp["gamma"])
        elif arm == "sb3-backend":
            env = sb3_make_vec_env(task, n_envs=cfg["n_envs"], seed=seed)
        else:
            env = task
        model = (NPG if arm == "npg" else TRPO)(cfg["policy"], env, n_envs=cfg["n_envs"], seed=seed, device="cpu",
                     policy_kwargs=cfg.get("policy_kwargs"), **hp)
    model.learn(timesteps, callback=curve)
    wall = time.perf_counter() - start
    eval_env = sb3_make_vec_env(task, n_envs=1, seed=seed + EVAL_SEED_OFFSET)
    if vec_normalize is not None:
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
        eval_env.obs_rms = vec_normalize.obs_rms.copy()
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
    train = float(np.mean([e["r"] for e in model.ep_info_buffer]))
    return {"arm": arm, "seed": seed, "task": task, "timesteps": int(model.num_timesteps), "wall_s": wall,
            "eval_mean": float(mean), "eval_std": float(std), "train_ep_rew_mean": train, "curve": curve.points}


def _job(args) -> str:
    arm, seed, timesteps, task, out = args
    path = os.path.join(out, f"{task}_{arm}_s{seed}_{timesteps}.json")
    if os.path.exists(path):
        return f"skip {path}"
    record = run(arm, seed, timesteps, task)
    record["command"] = "python " + " ".join(sys.argv)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)
    return f"{arm} seed {seed}: eval {record['eval_mean']:.0f} ± {record['eval_std']:.0f}, train {record['train_ep_rew_mean']:.0f}, {record['wall_s']:.0f} s"


def summary(task: str, timesteps: int, out: str = OUT) -> None:
    import numpy as np

    rows = {}
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        if name.startswith(task + "_") and name.endswith(f"_{timesteps}.json"):
            with open(os.path.join(out, name)) as f:
                r = json.load(f)
            rows.setdefault(r["arm"], []).append(r)
    print(f"| arm ({task}, {timesteps} steps) | seeds | final eval per seed | mean eval | mean train return | mean wall s |")
    print("|---|---|---|---|---|---|")
    for arm in ARMS:
        rs = sorted(rows.get(arm, []), key=lambda r: r["seed"])
        if rs:
            ev = [r["eval_mean"] for r in rs]
            print(f"| {arm} | {','.join(str(r['seed']) for r in rs)} | {', '.join(f'{e:.0f}' for e in ev)} | "
                  f"{np.mean(ev):.0f} | {np.mean([r['train_ep_rew_mean'] for r in rs]):.0f} | "
                  f"{np.mean([r['wall_s'] for r in rs]):.0f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=["baseline"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--timesteps", type=int, default=300_000)
    p.add_argument("--task", default=TASK)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=OUT, help="folder of the per-run JSON records")
    p.add_argument("--summary", action="store_true", help="print the recorded table and exit")
    args = p.parse_args(argv)
    if args.summary:
        summary(args.task, args.timesteps, args.out)
        return 0
    os.makedirs(args.out, exist_ok=True)
    jobs = [(arm, seed, args.timesteps, args.task, args.out) for seed in args.seeds for arm in args.arms]
    # one fresh process per run: an arm's patch (critic-eps) must not leak into the next run of a worker
    with ProcessPoolExecutor(args.workers, max_tasks_per_child=1) as pool:
        for line in pool.map(_job, jobs):
            print(line, flush=True)
    summary(args.task, args.timesteps, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
