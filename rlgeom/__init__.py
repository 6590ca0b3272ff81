"""rlgeom: on-policy reinforcement learning on the policy's statistical manifold."""

__version__ = "0.1.0"
