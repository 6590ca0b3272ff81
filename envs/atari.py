"""Atari through ale-py with the standard preprocessing (Mnih et al. 2015; Machado et al. 2018).

84×84 grayscale, frame skip 4 with max-pooling, up to 30 no-op starts, FIRE pressed when a game
starts and after each lost life in games that need it (as baselines' and SB3's FireResetEnv with
EpisodicLifeEnv do, without ending the episode at a lost life), rewards clipped to {-1, 0, 1} for
learning while the unclipped game score is recorded for logs, 4 stacked frames (channel-first,
uint8). Sticky actions (p=0.25) stay as ALE v5 sets them.
"""

from __future__ import annotations

import gymnasium as gym
from gymnasium.wrappers import AtariPreprocessing, ClipReward, FrameStackObservation, RecordEpisodeStatistics


def is_atari_id(env_id: str) -> bool:
    return env_id.startswith("ALE/") or "NoFrameskip" in env_id


def register_atari() -> None:
    try:
        import ale_py
    except ImportError as err:  # pragma: no cover - depends on the user's install
        raise ValueError("Atari ids need ale-py: pip install ale-py") from err
    gym.register_envs(ale_py)


class FireOnLifeStart(gym.Wrapper):
    """Press FIRE when a game starts and after each lost life, in games whose action set has FIRE.

    Without it, a policy that stops pressing FIRE in Breakout freezes the game until the time limit
    (27k steps): the ball is never launched and no episode ends. The extra step is the env's, not
    the agent's; its reward is added to the step that lost the life.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        self.fire = meanings.index("FIRE") if "FIRE" in meanings else None
        self.lives = 0

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if self.fire is not None:
            obs, _, terminated, truncated, info = self.env.step(self.fire)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self.env.unwrapped.ale.lives()
        if self.fire is not None and lives < self.lives and not (terminated or truncated):
            obs, fire_reward, terminated, truncated, info = self.env.step(self.fire)
            reward += fire_reward
        self.lives = lives
        return obs, reward, terminated, truncated, info


def atari_wrappers() -> list:
    """Wrappers applied to each ALE env made with frameskip=1 (AtariPreprocessing skips itself)."""
    return [
        lambda env: AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True),
        FireOnLifeStart,
        RecordEpisodeStatistics,
        lambda env: ClipReward(env, -1.0, 1.0),
        lambda env: FrameStackObservation(env, 4),
    ]


def atari_env_kwargs(env_id: str) -> dict:
    return {"frameskip": 1} if env_id.startswith("ALE/") else {}
