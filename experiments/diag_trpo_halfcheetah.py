"""Diagnostics of rlgeom TRPO on HalfCheetah-v5 against sb3-contrib (RESULTS_trpo.md, the 200k section).

    python experiments/diag_trpo_halfcheetah.py --variant baseline --seed 0
    python experiments/diag_trpo_halfcheetah.py --variant critic-eps --eps 1e-5 --seed 0
    python experiments/diag_trpo_halfcheetah.py --variant sb3-vecnormalize --seed 0

Trains rlgeom TRPO with the HalfCheetah-v5 preset for --timesteps (200k) and prints the deterministic
evaluation over 10 episodes. The variants differ from the preset in one thing each:
  baseline          the preset as the grid runs it (reproduces the grid's evaluation exactly);
  critic-eps        the critic's Adam eps set to --eps (SB3's policy optimiser uses 1e-5, rlgeom 1e-8);
  sb3-vecnormalize  rlgeom's own observation/reward normalisers off, SB3's VecNormalize around the env
                    instead (its statistics move every step; rlgeom's are frozen within a rollout).
Evaluation: baseline and critic-eps use rlgeom.evaluation.evaluate on an env seeded seed + 10000;
sb3-vecnormalize uses SB3's evaluate_policy on a VecNormalize copy (training=False) with the
training statistics.
"""

from __future__ import annotations

import argparse
import sys

import torch

TASK, EVAL_SEED_OFFSET, EVAL_EPISODES = "HalfCheetah-v5", 10_000, 10


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=("baseline", "critic-eps", "sb3-vecnormalize"), default="baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eps", type=float, default=1e-5, help="critic Adam eps for --variant critic-eps")
    p.add_argument("--timesteps", type=int, default=200_000)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    import agents.trpo
    from agents import TRPO
    from agents.presets import preset
    from rlgeom.optim import adam

    if args.variant == "critic-eps":  # TRPO builds its critic optimiser through this name
        agents.trpo.critic_optimizer = lambda policy, lr: adam(policy.critic_parameters(), lr=lr, eps=args.eps)
    cfg = preset("trpo", TASK)
    hp = dict(cfg["hyperparameters"])
    common = dict(seed=args.seed, device="cpu", policy_kwargs=cfg.get("policy_kwargs"))
    if args.variant == "sb3-vecnormalize":
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.evaluation import evaluate_policy
        from stable_baselines3.common.vec_env import VecNormalize

        hp.update(normalize_observations=False, normalize_reward=False)
        venv = VecNormalize(make_vec_env(TASK, n_envs=cfg["n_envs"], seed=args.seed), gamma=hp.get("gamma", 0.99))
        agent = TRPO(cfg["policy"], venv, **common, **hp)
        agent.learn(args.timesteps)
        eval_env = VecNormalize(make_vec_env(TASK, n_envs=1, seed=args.seed + EVAL_SEED_OFFSET),
                                training=False, norm_reward=False)
        eval_env.obs_rms = venv.obs_rms.copy()
        mean, std = evaluate_policy(agent, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
    else:
        from envs import make_vec_env
        from rlgeom.evaluation import evaluate

        agent = TRPO(cfg["policy"], TASK, n_envs=cfg["n_envs"], **common, **hp)
        agent.learn(args.timesteps)
        eval_env = make_vec_env(TASK, n_envs=1, seed=args.seed + EVAL_SEED_OFFSET)
        mean, std = evaluate(agent, eval_env, EVAL_EPISODES, seed=args.seed + EVAL_SEED_OFFSET)
    print(f"{TASK} seed {args.seed} variant {args.variant}"
          f"{f' eps {args.eps:g}' if args.variant == 'critic-eps' else ''}: eval {mean:.1f} ± {std:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
