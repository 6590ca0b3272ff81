"""rlgeom's agents with Stable-Baselines3's surface: `from agents import PPO`."""

from agents.acktr import ACKTR
from agents.npg import NPG
from agents.ppo import PPO
from agents.trpo import TRPO
from agents.vpg import VPG

AGENTS = {"vpg": VPG, "npg": NPG, "trpo": TRPO, "ppo": PPO, "acktr": ACKTR}

__all__ = ["VPG", "NPG", "TRPO", "PPO", "ACKTR", "AGENTS"]
