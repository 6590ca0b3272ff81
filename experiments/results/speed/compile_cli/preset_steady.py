"""Steady-state steps/s of the default CLI run's PPO (CartPole-v1, rl-zoo preset, 8 envs), plain and compiled,
alternated three times after each has learned one rollout (the compiled one compiles there). Run as
    TORCHINDUCTOR_CACHE_DIR=/tmp/cli_ab/default2/inductor PYTHONPATH=. nice python experiments/results/speed/compile_cli/preset_steady.py
(the cache of cli_ab.sh's last compiled run, so the compile is warm). Output, 23:08 UTC:
    None first 0.3 / default first 11.8
    {None: [847, 844, 913], 'default': [988, 992, 991]} {None: 847, 'default': 991}
"""
import torch, time, statistics; torch.set_num_threads(1)
from rlgeom.agents import PPO
from rlgeom.agents.presets import preset
cfg = preset('ppo', 'CartPole-v1')
agents = {m: PPO('MlpPolicy', 'CartPole-v1', n_envs=8, seed=0, device='cpu', compile=m, threads=1, **cfg['hyperparameters']) for m in (None, 'default')}
for m, a in agents.items():
    t = time.time(); a.learn(256); print(m, 'first', round(time.time() - t, 1), flush=True)
sps = {m: [] for m in agents}
for rep in range(3):
    for m, a in agents.items():
        t = time.time(); a.learn(5120, reset_num_timesteps=False); sps[m].append(5120 / (time.time() - t))
print({m: [round(v) for v in s] for m, s in sps.items()}, {m: round(statistics.median(s)) for m, s in sps.items()})
