"""Evaluating a policy on whole episodes through rlgeom's env interface (any backend)."""

from __future__ import annotations

import contextlib

import numpy as np


def evaluate(agent, env, n_episodes: int = 10, deterministic: bool = True, seed: int | None = None,
             progress_bar: bool = False):
    """(mean, std) of the returns of the first n_episodes finished episodes on `env` (a VecEnv, on any
    device: its observations reach the policy on the agent's).

    Episodes are counted per env so that short episodes do not dominate (as SB3's evaluate_policy).
    `progress_bar`: a tqdm bar over the episodes (on stderr), with the last return and the running mean.
    """
    env = agent.env_on_device(env)  # its tensors on the agent's device, moved once per step (agents.base)
    scope = getattr(agent, "nonfinite_scope", None)  # the agent's nonfinite option holds for evaluation too
    with scope() if scope is not None else contextlib.nullcontext():
        return _episodes(agent, env, n_episodes, deterministic, seed, progress_bar)


def _episodes(agent, env, n_episodes: int, deterministic: bool, seed: int | None, progress_bar: bool):
    n = env.num_envs
    targets = np.array([(n_episodes + i) // n for i in range(n)])
    counts = np.zeros(n, dtype=int)
    returns: list[float] = []
    bar = None
    if progress_bar:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=int(targets.sum()), desc="evaluation", unit="episode", dynamic_ncols=True, file=sys.stderr)
    obs = env.reset(seed=seed)
    agent.policy.set_training_mode(False)  # as SB3's predict
    while (counts < targets).any():
        actions = agent.policy.draw(obs, deterministic)
        step = env.step(agent._env_actions(actions))
        obs = step.obs
        done = step.done.cpu().numpy()
        if done.any():
            ep_returns = step.episode_return.cpu().numpy()
            for i in np.flatnonzero(done):
                if counts[i] < targets[i]:
                    returns.append(float(ep_returns[i]))
                    counts[i] += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(last=f"{returns[-1]:.1f}", mean=f"{np.mean(returns):.1f}")
    if bar is not None:
        bar.close()
    return float(np.mean(returns)), float(np.std(returns))
