"""rlgeom's agents with Stable-Baselines3's surface (`from rlgeom.agents import PPO`, or the public face
`from agents import PPO`).

The modules live in the distribution's top-level `agents/` folder (the layout as drawn); this package is their
import name, so rlgeom never depends on what the top-level name `agents` resolves to in a user's directory.
"""

import pathlib

# rlgeom/agents/ holds only this file: the package's modules are the sibling folder's, both in a source
# checkout and in an installed wheel (setuptools installs rlgeom/, agents/ and envs/ side by side)
__path__ = [str(pathlib.Path(__file__).resolve().parents[2] / "agents")]

from rlgeom.agents.acktr import ACKTR
from rlgeom.agents.npg import NPG
from rlgeom.agents.ppo import PPO
from rlgeom.agents.trpo import TRPO
from rlgeom.agents.vpg import VPG

AGENTS = {"vpg": VPG, "npg": NPG, "trpo": TRPO, "ppo": PPO, "acktr": ACKTR}

__all__ = ["VPG", "NPG", "TRPO", "PPO", "ACKTR", "AGENTS"]
