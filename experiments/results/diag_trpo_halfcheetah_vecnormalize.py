import sys, torch
torch.set_num_threads(1)
seed = int(sys.argv[1])
from stable_baselines3.common.env_util import make_vec_env as sb3_make
from stable_baselines3.common.vec_env import VecNormalize
from agents import TRPO
from agents.presets import preset
cfg = preset("trpo", "HalfCheetah-v5")
hp = dict(cfg["hyperparameters"]); hp["normalize_observations"] = False; hp["normalize_reward"] = False
venv = VecNormalize(sb3_make("HalfCheetah-v5", n_envs=cfg["n_envs"], seed=seed), gamma=hp.get("gamma", 0.99))
a = TRPO(cfg["policy"], venv, seed=seed, device="cpu", policy_kwargs=cfg.get("policy_kwargs"), **hp)
a.learn(200_000)
from stable_baselines3.common.evaluation import evaluate_policy
ev = VecNormalize(sb3_make("HalfCheetah-v5", n_envs=1, seed=seed + 10_000), training=False, norm_reward=False)
ev.obs_rms = venv.obs_rms.copy()
m, s = evaluate_policy(a, ev, n_eval_episodes=10, deterministic=True)
print(f"seed {seed} rlgeom TRPO on SB3 VecNormalize: eval {m:.1f} ± {s:.1f}")
