"""rlgeom's agents with Stable-Baselines3's surface: `from agents import PPO`."""

from agents.ppo import PPO
from agents.vpg import VPG

AGENTS = {"vpg": VPG, "ppo": PPO}

__all__ = ["VPG", "PPO", "AGENTS"]
