"""Atari through ale-py with the standard preprocessing (Mnih et al. 2015; Machado et al. 2018).

84×84 grayscale, frame skip 4 with max-pooling, up to 30 no-op starts, rewards clipped to
{-1, 0, 1} for learning while the unclipped game score is recorded for logs, 4 stacked frames
(channel-first, uint8). Sticky actions (p=0.25) stay as ALE v5 sets them.
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


def atari_wrappers() -> list:
    """Wrappers applied to each ALE env made with frameskip=1 (AtariPreprocessing skips itself)."""
    return [
        lambda env: AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True),
        RecordEpisodeStatistics,
        lambda env: ClipReward(env, -1.0, 1.0),
        lambda env: FrameStackObservation(env, 4),
    ]


def atari_env_kwargs(env_id: str) -> dict:
    return {"frameskip": 1} if env_id.startswith("ALE/") else {}
