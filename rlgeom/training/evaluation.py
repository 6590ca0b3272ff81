"""Evaluating a policy on whole episodes through rlgeom's env interface (any backend)."""

from __future__ import annotations

import contextlib

import numpy as np


def evaluate(agent, env, n_episodes: int = 10, deterministic: bool = True, seed: int | None = None):
    """(mean, std) of the returns of the first n_episodes finished episodes on `env` (a VecEnv, on any
    device: its observations reach the policy on the agent's).

    Episodes are counted per env so that short episodes do not dominate (as SB3's evaluate_policy).
    """
    env = agent.env_on_device(env)  # its tensors on the agent's device, moved once per step (agents.base)
    scope = getattr(agent, "nonfinite_scope", None)  # the agent's nonfinite option holds for evaluation too
    with scope() if scope is not None else contextlib.nullcontext():
        return _episodes(agent, env, n_episodes, deterministic, seed)


def _episodes(agent, env, n_episodes: int, deterministic: bool, seed: int | None):
    n = env.num_envs
    targets = np.array([(n_episodes + i) // n for i in range(n)])
    counts = np.zeros(n, dtype=int)
    returns: list[float] = []
    obs = env.reset(seed=seed)
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
    return float(np.mean(returns)), float(np.std(returns))
