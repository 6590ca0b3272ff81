"""`model.rollout_buffer`: the last rollout as SB3's RolloutBuffer fields, numpy arrays of SB3's shapes.

SB3 code reads GAE's results after learn() or in a callback's `_on_rollout_end` (`returns`, `advantages`,
`values`, ...) as arrays of shape (n_steps, n_envs, ...). rlgeom's buffer (rlgeom.data.buffer) holds the
same quantities as tensors; this view hands them out as SB3 lays them out, each read a fresh array (on
the CPU sharing the tensor's memory where no reshape or cast is needed).
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces


def _sb3_action_dim(space) -> int:
    """SB3's get_action_dim: 1 for Discrete, the count of sub-actions for MultiDiscrete / MultiBinary."""
    if isinstance(space, spaces.Discrete):
        return 1
    if isinstance(space, spaces.MultiDiscrete):
        return len(space.nvec)
    if isinstance(space, spaces.MultiBinary):
        return int(np.prod(space.shape))
    return int(np.prod(space.shape))


class RolloutBufferView:
    """SB3's RolloutBuffer attributes over rlgeom's buffer (agents: `model.rollout_buffer`)."""

    #: what SB3's RolloutBuffer.get() flattens once training starts (rewards and episode_starts it leaves)
    FLATTENED = ("observations", "actions", "values", "log_probs", "advantages", "returns")

    def __init__(self, buffer, observation_space, action_space, dict_layout, gamma: float, gae_lambda: float,
                 generator_ready: bool = False):
        self._buffer, self._layout = buffer, dict_layout
        #: SB3's flag: after the update (learn() returned) the FLATTENED fields are (n_envs * n_steps, ...),
        #: env-major, as SB3's swap_and_flatten leaves them; at `_on_rollout_end` they are (n_steps, n_envs, ...)
        self.generator_ready = generator_ready
        self.observation_space, self.action_space = observation_space, action_space
        self.buffer_size, self.n_envs = buffer.n_steps, buffer.n_envs
        self.gamma, self.gae_lambda = gamma, gae_lambda

    @property
    def pos(self) -> int:
        return self._buffer.pos

    @property
    def full(self) -> bool:
        return self._buffer.full

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if name in RolloutBufferView.FLATTENED and object.__getattribute__(self, "generator_ready"):
            return _swap_and_flatten(value)
        return value

    def size(self) -> int:
        return self.buffer_size if self.full else self.pos

    @staticmethod
    def _float(tensor) -> np.ndarray:
        return tensor.detach().cpu().numpy().astype(np.float32, copy=False)

    @property
    def observations(self):
        """(n_steps, n_envs, *obs_shape) in the space's dtype; a Dict's as {key: array}; Discrete as (.., 1)."""
        obs = self._buffer.obs.detach().cpu().numpy()
        n, e = obs.shape[:2]
        if self._layout is not None:
            return {k: v.reshape(n, e, *v.shape[1:]) for k, v in self._layout.unpack_numpy(obs.reshape(n * e, -1)).items()}
        space = self.observation_space
        shape = (1,) if isinstance(space, spaces.Discrete) else tuple(space.shape)
        return obs.reshape(n, e, *shape).astype(space.dtype, copy=False)

    @property
    def actions(self) -> np.ndarray:
        """(n_steps, n_envs, action_dim) in the action space's dtype, as SB3 stores them (Discrete: [..., 1])."""
        actions = self._buffer.actions.detach().cpu().numpy().astype(self.action_space.dtype, copy=False)
        return actions.reshape(self.buffer_size, self.n_envs, _sb3_action_dim(self.action_space))

    @property
    def rewards(self) -> np.ndarray:
        return self._float(self._buffer.rewards)

    @property
    def returns(self) -> np.ndarray:
        return self._float(self._buffer.returns)

    @property
    def advantages(self) -> np.ndarray:
        return self._float(self._buffer.advantages)

    @property
    def values(self) -> np.ndarray:
        return self._float(self._buffer.values)

    @property
    def log_probs(self) -> np.ndarray:
        return self._float(self._buffer.log_probs)

    @property
    def episode_starts(self) -> np.ndarray:
        return self._float(self._buffer.episode_starts)


def _swap_and_flatten(array):
    """SB3's swap_and_flatten: (n_steps, n_envs, ...) -> (n_envs * n_steps, ...), a trailing 1 for scalars."""
    if isinstance(array, dict):
        return {k: _swap_and_flatten(v) for k, v in array.items()}
    shape = array.shape if array.ndim >= 3 else (*array.shape, 1)
    return array.swapaxes(0, 1).reshape(shape[0] * shape[1], *shape[2:])
