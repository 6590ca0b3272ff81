"""The learning tests of tests/test_policy_spaces.py and tests/test_sde.py at their seed, with the test's own metric every
1024 steps (MatchTask, FollowTask: mean reward of deterministic episodes; ActionTask: largest |action - best|), to choose budgets that
learn with margin (experiments/RESULTS_core.md, "Test suite time"). Usage, from the repository root:
    PYTHONPATH=$PWD:$PWD/tests python experiments/test_budget_curves.py [discrete multidiscrete multibinary
        channel_last_image PPO TRPO act0 act1 act2 act3 sde-PPO sde-TRPO sde-NPG sde-VPG]   (no argument: all)
Evaluating between rollouts does not change training: predict is deterministic and the eval env is separate."""
import sys, time
import numpy as np, torch
torch.set_num_threads(1)
from stable_baselines3.common.callbacks import BaseCallback
import test_policy_spaces as t

class Every(BaseCallback):
    def __init__(self, fn, every=1024):
        super().__init__(); self.fn, self.every, self.rows = fn, every, []
    def _on_rollout_start(self):
        n = self.model.num_timesteps
        if n and n % self.every == 0:
            self.rows.append((n, self.fn()))
            print(f"   {n}: {self.rows[-1][1]}", flush=True)
    def _on_step(self):
        return True

which = sys.argv[1:]
for task, (make_space, target, policy_kwargs) in t.TASKS.items():
    if which and task not in which: continue
    env = t.MatchTask(make_space(), target)
    agent = t.PPO("MlpPolicy", t.MatchTask(make_space(), target), seed=0, device="cpu", n_steps=256, batch_size=64,
                  learning_rate=3e-3, ent_coef=0.0, policy_kwargs=policy_kwargs)
    before = t.mean_reward(agent, env); print("obs", task, "before", before, "need >", max(0.8, before + 0.3), flush=True)
    s = time.time(); agent.learn(6144, callback=Every(lambda: t.mean_reward(agent, env)))
    print("obs", task, "final", t.mean_reward(agent, env), f"{time.time()-s:.0f}s", flush=True)
for cls, kwargs in [(t.PPO, dict(learning_rate=3e-3, batch_size=64)), (t.TRPO, dict(batch_size=64, max_kl=0.05))]:
    if which and cls.__name__ not in which: continue
    env = t.MatchTask(t.dict_space(), t.dict_target)
    agent = cls("MultiInputPolicy", t.MatchTask(t.dict_space(), t.dict_target), seed=0, device="cpu", n_steps=256,
                normalize_observations=True, **kwargs)
    before = t.mean_reward(agent, env); print("dict", cls.__name__, "before", before, "need >", max(0.8, before + 0.3), flush=True)
    s = time.time(); agent.learn(6144, callback=Every(lambda: t.mean_reward(agent, env)))
    print("dict", cls.__name__, "final", t.mean_reward(agent, env), f"{time.time()-s:.0f}s", flush=True)
for i, (space, best, budget) in enumerate([
    (t.spaces.Discrete(3, start=-1), -1, 4096),
    (t.spaces.MultiDiscrete([3, 2], start=[2, -1]), [4, -1], 4096),
    (t.spaces.MultiBinary(3), [1, 0, 1], 4096),
    (t.spaces.Box(-1, 1, (2, 2), np.float32), [[0.5, -0.5], [0.0, 0.5]], 12288)]):
    if which and f"act{i}" not in which: continue
    agent = t.PPO("MlpPolicy", t.ActionTask(space, best), seed=0, device="cpu", n_steps=256, batch_size=64, learning_rate=3e-3)
    err = lambda: float(np.abs(np.asarray(agent.predict(np.zeros(2, np.float32), deterministic=True)[0], np.float64) - np.asarray(best)).max())
    s = time.time(); agent.learn(budget, callback=Every(err))
    print("act", i, "final err", err(), "(atol 0.25)", f"{time.time()-s:.0f}s", flush=True)

# tests/test_sde.py: each agent with gSDE on FollowTask (chance -0.24, target 0; the test needs > max(-0.08, before + 0.05))
import test_sde as sde
for cls, kwargs in [(sde.PPO, dict(learning_rate=3e-3, batch_size=64)),
                    (sde.TRPO, dict(max_kl=0.05, batch_size=64, policy_kwargs=dict(squash_output=True, use_expln=True))),
                    (sde.NPG, dict(max_kl=0.05, batch_size=64, policy_kwargs=dict(full_std=False))),
                    (sde.VPG, dict(learning_rate=1e-3, batch_size=64))]:
    if which and f"sde-{cls.__name__}" not in which: continue
    agent = cls("MlpPolicy", sde.FollowTask(), seed=0, device="cpu", n_steps=256, use_sde=True, sde_sample_freq=8,
                **{"policy_kwargs": {"log_std_init": -1.0, **kwargs.pop("policy_kwargs", {})}, **kwargs})
    before = sde.mean_reward(agent); print("sde", cls.__name__, "before", before, "need >", max(-0.08, before + 0.05), flush=True)
    s = time.time(); agent.learn(6144, callback=Every(lambda: sde.mean_reward(agent)))
    print("sde", cls.__name__, "final", sde.mean_reward(agent), f"{time.time()-s:.0f}s", flush=True)
