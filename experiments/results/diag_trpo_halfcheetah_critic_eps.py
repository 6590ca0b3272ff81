import sys, torch
torch.set_num_threads(1)
import agents.trpo as T
from rlgeom.optim import adam
eps = float(sys.argv[2]); seed = int(sys.argv[1])
T.critic_optimizer = lambda policy, lr: adam(policy.critic_parameters(), lr=lr, eps=eps)
from agents import TRPO
from agents.presets import preset
cfg = preset("trpo", "HalfCheetah-v5")
a = TRPO(cfg["policy"], "HalfCheetah-v5", n_envs=cfg["n_envs"], seed=seed, device="cpu", policy_kwargs=cfg.get("policy_kwargs"), **cfg["hyperparameters"])
a.learn(200_000)
from rlgeom.evaluation import evaluate
from envs import make_vec_env
env = make_vec_env("HalfCheetah-v5", n_envs=1, seed=seed + 10_000)
m, s = evaluate(a, env, 10, seed=seed + 10_000)
print(f"seed {seed} eps {eps}: eval {m:.1f} ± {s:.1f}")
