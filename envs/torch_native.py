"""Torch-native batched classic-control tasks that run thousands of environments on any device.

Four tasks, each a faithful batched port of Gymnasium 1.4's implementation (same dynamics, rewards,
termination conditions, reset distributions, spaces and `gymnasium.make` time limits):

| id                                | state                         | actions            | limit |
|-----------------------------------|-------------------------------|--------------------|-------|
| torch/CartPole-v1                 | x, x_dot, theta, theta_dot    | long {0, 1}        | 500   |
| torch/Pendulum-v1                 | theta, theta_dot              | float [N, 1]       | 200   |
| torch/Acrobot-v1                  | theta1, theta2, dtheta1, dtheta2 | long {0, 1, 2}  | 500   |
| torch/MountainCarContinuous-v0    | position, velocity            | float [N, 1]       | 999   |

Every env implements `envs.base.VecEnv`. `step` runs entirely on the env's device: no `.item()`,
`.cpu()`, numpy or Python loop over envs, and no data-dependent shapes (finished envs are replaced
by `torch.where` against a full batch of freshly sampled initial states), so it can be captured in a
CUDA graph. Episodes reset on the same step they end; `final_obs` carries the last observation of
the finished episode. Time-limit truncation comes from a per-env step counter and is reported only
where the episode did not terminate on that step. Fresh initial states come from the env's own
`torch.Generator` on its device, so `reset(seed)` makes every trajectory reproducible.

Observations, rewards and episode returns have the env's `dtype` (float32 by default; float64 is
offered for exact comparison against Gymnasium, which integrates in float64). Discrete actions are
not range-checked on the device (that would need a host sync): CartPole treats any action other than
1 as 0 (push left), Acrobot expects indices in {0, 1, 2} (torque = index - 1).
"""

from __future__ import annotations

import abc
import math

import numpy as np
import torch
from gymnasium import spaces

from rlgeom.envs.base import StepResult, VecEnv
from rlgeom import validation

__all__ = [
    "TORCH_NATIVE_IDS",
    "make_torch_native",
    "TorchNativeVecEnv",
    "CartPoleTorch",
    "PendulumTorch",
    "AcrobotTorch",
    "MountainCarContinuousTorch",
]

_DTYPES = (torch.float32, torch.float64)


class TorchNativeVecEnv(VecEnv):
    """Shared machinery of the torch-native tasks: seeding, auto-reset, time limit, episode stats.

    A subclass describes one task through its reset box (`reset_low`, `reset_high`: Gymnasium's
    uniform reset ranges per state variable) and three hooks: `_observe(states)`,
    `_prepare_actions(actions)` and `_transition(states, actions)` returning
    (next_states, reward, terminated).
    """

    env_id: str | None = None
    #: number of state variables of one env
    state_dim: int
    #: Gymnasium's `max_episode_steps` for this task (`gymnasium.make`'s TimeLimit)
    default_max_episode_steps: int
    #: Gymnasium's uniform reset distribution, per state variable (low == high: a constant)
    reset_low: tuple[float, ...]
    reset_high: tuple[float, ...]
    #: Gymnasium stores the reset state as float32 (Acrobot): round the draw the same way
    reset_as_float32: bool = False

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        max_episode_steps: int | None = None,
    ) -> None:
        validation.positive_int("num_envs", num_envs)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        if max_episode_steps is None:
            max_episode_steps = self.default_max_episode_steps
        validation.positive_int("max_episode_steps", max_episode_steps)
        validation.non_negative_int("seed", seed, allow_none=True)
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_episode_steps = max_episode_steps
        self._generator = torch.Generator(device=self.device)
        self._pending_seed = seed
        if seed is None:
            self._generator.seed()
        n = num_envs
        # persistent buffers, updated in place (static addresses for CUDA graphs)
        self._state = torch.zeros(n, self.state_dim, device=self.device, dtype=dtype)
        self._elapsed = torch.zeros(n, device=self.device, dtype=torch.int64)
        self._episode_return = torch.zeros(n, device=self.device, dtype=dtype)
        self._has_state = False
        # constants of the reset distribution, built once on the device (no host traffic in step)
        self._reset_lo = torch.tensor(self.reset_low, device=self.device, dtype=dtype)
        self._reset_span = torch.tensor(self.reset_high, device=self.device, dtype=dtype) - self._reset_lo

    # ----------------------------------------------------------------------- task hooks
    @abc.abstractmethod
    def _observe(self, states: torch.Tensor) -> torch.Tensor:
        """Observations [n, *obs_shape] of states [n, state_dim]."""

    @abc.abstractmethod
    def _prepare_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Validate the shape of a batch of actions and bring it to the device and working dtype."""

    @abc.abstractmethod
    def _transition(self, states: torch.Tensor, actions: torch.Tensor):
        """One step of the dynamics: (next_states, reward [n], terminated [n] bool)."""

    # ----------------------------------------------------------------------- helpers
    def _sample_initial(self, n: int) -> torch.Tensor:
        """n initial states [n, state_dim] from Gymnasium's reset distribution (the env's generator)."""
        u = torch.rand(n, self.state_dim, generator=self._generator, device=self.device, dtype=self.dtype)
        states = self._reset_lo + self._reset_span * u
        if self.reset_as_float32:
            states = states.to(torch.float32).to(self.dtype)
        return states

    def _discrete_actions(self, actions: torch.Tensor) -> torch.Tensor:
        actions = torch.as_tensor(actions, device=self.device)
        if actions.shape == (self.num_envs, 1):
            actions = actions.reshape(self.num_envs)
        if actions.shape != (self.num_envs,):
            raise ValueError(
                f"{self.env_id}: expected discrete actions of shape [{self.num_envs}] or "
                f"[{self.num_envs}, 1], got {tuple(actions.shape)}"
            )
        if actions.is_floating_point() or actions.is_complex():
            raise ValueError(f"{self.env_id}: discrete actions must be an integer tensor, got {actions.dtype}")
        return actions.long()

    def _continuous_actions(self, actions: torch.Tensor) -> torch.Tensor:
        actions = torch.as_tensor(actions, device=self.device)
        if actions.shape == (self.num_envs,):
            actions = actions.reshape(self.num_envs, 1)
        if actions.shape != (self.num_envs, 1):
            raise ValueError(
                f"{self.env_id}: expected continuous actions of shape [{self.num_envs}, 1], "
                f"got {tuple(actions.shape)}"
            )
        if not actions.is_floating_point():
            raise ValueError(f"{self.env_id}: continuous actions must be a float tensor, got {actions.dtype}")
        return actions.to(self.dtype)

    # ----------------------------------------------------------------------- VecEnv API
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Reset every env; a seed (or the constructor's, on the first reset) reseeds the generator."""
        if seed is None:
            seed = self._pending_seed
        self._pending_seed = None
        if seed is not None:
            self._generator.manual_seed(int(seed))
        self._state.copy_(self._sample_initial(self.num_envs))
        self._elapsed.zero_()
        self._episode_return.zero_()
        self._has_state = True
        return self._observe(self._state)

    def step(self, actions: torch.Tensor) -> StepResult:
        if not self._has_state:
            raise RuntimeError(f"{self.env_id}: call reset() (or set_state()) before step()")
        a = self._prepare_actions(actions)
        next_state, reward, terminated = self._transition(self._state, a)
        elapsed = self._elapsed + 1
        truncated = (elapsed >= self.max_episode_steps) & ~terminated
        done = terminated | truncated
        final_obs = self._observe(next_state)
        episode_return = self._episode_return + reward
        # same-step auto-reset without data-dependent shapes: draw a full batch of fresh states
        fresh = self._sample_initial(self.num_envs)
        new_state = torch.where(done.unsqueeze(-1), fresh, next_state)
        obs = self._observe(new_state)
        self._state.copy_(new_state)
        self._elapsed.copy_(torch.where(done, torch.zeros_like(elapsed), elapsed))
        self._episode_return.copy_(torch.where(done, torch.zeros_like(episode_return), episode_return))
        return StepResult(
            obs=obs,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            final_obs=final_obs,
            episode_return=episode_return,
            episode_length=elapsed,
            done=done,
        )

    # ----------------------------------------------------------------------- tests / analysis
    @property
    def state(self) -> torch.Tensor:
        """A copy of the physical state [num_envs, state_dim] (for tests and analysis)."""
        return self._state.clone()

    def set_state(self, states: torch.Tensor) -> torch.Tensor:
        """Overwrite the physical state of every env (for tests and analysis); returns its observation.

        `states` is [num_envs, state_dim] (or [state_dim], broadcast to every env), in the same
        variables as Gymnasium's `env.unwrapped.state`. Step counters and running returns are kept.
        """
        states = torch.as_tensor(states, device=self.device, dtype=self.dtype)
        if states.shape == (self.state_dim,):
            states = states.expand(self.num_envs, self.state_dim)
        if states.shape != (self.num_envs, self.state_dim):
            raise ValueError(
                f"{self.env_id}: set_state expects [{self.num_envs}, {self.state_dim}] or "
                f"[{self.state_dim}], got {tuple(states.shape)}"
            )
        self._state.copy_(states)
        self._has_state = True
        return self._observe(self._state)

    @property
    def elapsed_steps(self) -> torch.Tensor:
        """A copy of the per-env step counters of the running episodes."""
        return self._elapsed.clone()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(env_id={self.env_id!r}, num_envs={self.num_envs}, "
            f"device={str(self.device)!r}, dtype={self.dtype}, max_episode_steps={self.max_episode_steps})"
        )


# =============================================================================== CartPole-v1
class CartPoleTorch(TorchNativeVecEnv):
    """Gymnasium CartPole-v1 (explicit Euler integrator, reward +1 every step, incl. the last)."""

    env_id = "torch/CartPole-v1"
    state_dim = 4
    default_max_episode_steps = 500
    reset_low = (-0.05,) * 4
    reset_high = (0.05,) * 4

    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        high = np.array(
            [self.x_threshold * 2, np.inf, self.theta_threshold_radians * 2, np.inf], dtype=np.float32
        )
        self.single_observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.single_action_space = spaces.Discrete(2)


    def _observe(self, states):
        return states.clone()

    def _prepare_actions(self, actions):
        return self._discrete_actions(actions)

    def _transition(self, states, actions):
        x, x_dot, theta, theta_dot = states.unbind(-1)
        force = torch.where(actions == 1, self.force_mag, -self.force_mag).to(states.dtype)
        costheta = torch.cos(theta)
        sintheta = torch.sin(theta)
        temp = (force + self.polemass_length * torch.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * torch.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        # gymnasium's default kinematics_integrator="euler"
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        next_states = torch.stack((x, x_dot, theta, theta_dot), dim=-1)
        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold_radians)
            | (theta > self.theta_threshold_radians)
        )
        reward = torch.ones_like(x)
        return next_states, reward, terminated


# =============================================================================== Pendulum-v1
class PendulumTorch(TorchNativeVecEnv):
    """Gymnasium Pendulum-v1 (g = 10, never terminates, truncated at 200 steps)."""

    env_id = "torch/Pendulum-v1"
    state_dim = 2
    default_max_episode_steps = 200
    reset_low = (-math.pi, -1.0)
    reset_high = (math.pi, 1.0)

    max_speed = 8.0
    max_torque = 2.0
    dt = 0.05
    g = 10.0
    m = 1.0
    l = 1.0  # noqa: E741 (gymnasium's name)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        high = np.array([1.0, 1.0, self.max_speed], dtype=np.float32)
        self.single_observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
        self.single_action_space = spaces.Box(
            low=-self.max_torque, high=self.max_torque, shape=(1,), dtype=np.float32
        )


    def _observe(self, states):
        th, thdot = states.unbind(-1)
        return torch.stack((torch.cos(th), torch.sin(th), thdot), dim=-1)

    def _prepare_actions(self, actions):
        return self._continuous_actions(actions)

    @staticmethod
    def angle_normalize(x: torch.Tensor) -> torch.Tensor:
        """Gymnasium's ((x + pi) % (2 pi)) - pi (torch.remainder has Python's sign convention)."""
        return torch.remainder(x + math.pi, 2 * math.pi) - math.pi

    def _transition(self, states, actions):
        th, thdot = states.unbind(-1)
        g, m, l, dt = self.g, self.m, self.l, self.dt
        u = torch.clamp(actions[:, 0], -self.max_torque, self.max_torque)
        costs = self.angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)
        newthdot = thdot + (3 * g / (2 * l) * torch.sin(th) + 3.0 / (m * l**2) * u) * dt
        newthdot = torch.clamp(newthdot, -self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        next_states = torch.stack((newth, newthdot), dim=-1)
        terminated = torch.zeros_like(th, dtype=torch.bool)
        return next_states, -costs, terminated


# =============================================================================== Acrobot-v1
class AcrobotTorch(TorchNativeVecEnv):
    """Gymnasium Acrobot-v1: 'book' dynamics, one RK4 step of dt = 0.2, no torque noise."""

    env_id = "torch/Acrobot-v1"
    state_dim = 4
    default_max_episode_steps = 500
    reset_low = (-0.1,) * 4
    reset_high = (0.1,) * 4
    reset_as_float32 = True

    dt = 0.2
    LINK_LENGTH_1 = 1.0
    LINK_LENGTH_2 = 1.0
    LINK_MASS_1 = 1.0
    LINK_MASS_2 = 1.0
    LINK_COM_POS_1 = 0.5
    LINK_COM_POS_2 = 0.5
    LINK_MOI = 1.0
    MAX_VEL_1 = 4 * math.pi
    MAX_VEL_2 = 9 * math.pi

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        high = np.array([1.0, 1.0, 1.0, 1.0, self.MAX_VEL_1, self.MAX_VEL_2], dtype=np.float32)
        self.single_observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
        self.single_action_space = spaces.Discrete(3)


    def _observe(self, states):
        s0, s1, s2, s3 = states.unbind(-1)
        return torch.stack((torch.cos(s0), torch.sin(s0), torch.cos(s1), torch.sin(s1), s2, s3), dim=-1)

    def _prepare_actions(self, actions):
        return self._discrete_actions(actions)

    def _dsdt(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Time derivative of [theta1, theta2, dtheta1, dtheta2] under torque a ('book' equations)."""
        m1 = self.LINK_MASS_1
        m2 = self.LINK_MASS_2
        l1 = self.LINK_LENGTH_1
        lc1 = self.LINK_COM_POS_1
        lc2 = self.LINK_COM_POS_2
        I1 = self.LINK_MOI
        I2 = self.LINK_MOI
        g = 9.8
        theta1, theta2, dtheta1, dtheta2 = s.unbind(-1)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * torch.cos(theta2)) + I1 + I2
        d2 = m2 * (lc2**2 + l1 * lc2 * torch.cos(theta2)) + I2
        phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - math.pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * torch.sin(theta2)
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * torch.sin(theta2)
            + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - math.pi / 2)
            + phi2
        )
        ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * torch.sin(theta2) - phi2) / (
            m2 * lc2**2 + I2 - d2**2 / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return torch.stack((dtheta1, dtheta2, ddtheta1, ddtheta2), dim=-1)

    @staticmethod
    def wrap(x: torch.Tensor, m: float, M: float) -> torch.Tensor:
        """Gymnasium's `wrap` (repeatedly add/subtract M - m until m <= x <= M), in closed form."""
        diff = M - m
        above = x - diff * torch.ceil((x - M) / diff)
        below = x + diff * torch.ceil((m - x) / diff)
        return torch.where(x > M, above, torch.where(x < m, below, x))

    def _transition(self, states, actions):
        torque = (actions - 1).to(states.dtype)  # AVAIL_TORQUE = [-1, 0, +1]
        dt = self.dt
        dt2 = dt / 2.0
        y0 = states
        k1 = self._dsdt(y0, torque)
        k2 = self._dsdt(y0 + dt2 * k1, torque)
        k3 = self._dsdt(y0 + dt2 * k2, torque)
        k4 = self._dsdt(y0 + dt * k3, torque)
        ns = y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        n0, n1, n2, n3 = ns.unbind(-1)
        n0 = self.wrap(n0, -math.pi, math.pi)
        n1 = self.wrap(n1, -math.pi, math.pi)
        n2 = torch.clamp(n2, -self.MAX_VEL_1, self.MAX_VEL_1)
        n3 = torch.clamp(n3, -self.MAX_VEL_2, self.MAX_VEL_2)
        next_states = torch.stack((n0, n1, n2, n3), dim=-1)
        terminated = -torch.cos(n0) - torch.cos(n1 + n0) > 1.0
        reward = torch.where(terminated, 0.0, -1.0).to(states.dtype)
        return next_states, reward, terminated


# =============================================================================== MountainCarContinuous-v0
class MountainCarContinuousTorch(TorchNativeVecEnv):
    """Gymnasium MountainCarContinuous-v0 (power 0.0015, reward 100 at the goal minus 0.1 a^2)."""

    env_id = "torch/MountainCarContinuous-v0"
    state_dim = 2
    default_max_episode_steps = 999
    reset_low = (-0.6, 0.0)  # velocity starts at exactly 0
    reset_high = (-0.4, 0.0)

    min_action = -1.0
    max_action = 1.0
    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07
    goal_position = 0.45
    goal_velocity = 0.0
    power = 0.0015

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        low = np.array([self.min_position, -self.max_speed], dtype=np.float32)
        high = np.array([self.max_position, self.max_speed], dtype=np.float32)
        self.single_observation_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self.single_action_space = spaces.Box(
            low=self.min_action, high=self.max_action, shape=(1,), dtype=np.float32
        )


    def _observe(self, states):
        return states.clone()

    def _prepare_actions(self, actions):
        return self._continuous_actions(actions)

    def _transition(self, states, actions):
        position, velocity = states.unbind(-1)
        action = actions[:, 0]
        force = torch.clamp(action, self.min_action, self.max_action)
        velocity = velocity + (force * self.power - 0.0025 * torch.cos(3 * position))
        velocity = torch.clamp(velocity, -self.max_speed, self.max_speed)
        position = position + velocity
        position = torch.clamp(position, self.min_position, self.max_position)
        velocity = torch.where((position <= self.min_position) & (velocity < 0), torch.zeros_like(velocity), velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        # gymnasium charges the action as given (before its internal clip)
        reward = torch.where(terminated, 100.0, 0.0).to(states.dtype) - action**2 * 0.1
        next_states = torch.stack((position, velocity), dim=-1)
        return next_states, reward, terminated


# =============================================================================== registry
_REGISTRY: dict[str, type[TorchNativeVecEnv]] = {
    cls.env_id: cls for cls in (CartPoleTorch, PendulumTorch, AcrobotTorch, MountainCarContinuousTorch)
}
TORCH_NATIVE_IDS: tuple[str, ...] = tuple(_REGISTRY)


def make_torch_native(
    env_id: str,
    num_envs: int,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    max_episode_steps: int | None = None,
) -> TorchNativeVecEnv:
    """Make `num_envs` batched copies of a torch-native task on `device`.

    `seed` seeds the env's generator at the first `reset()` (a seed passed to `reset` wins);
    `max_episode_steps` overrides Gymnasium's time limit for the id (500, 200, 500, 999).
    """
    cls = _REGISTRY.get(env_id)
    if cls is None:
        hint = ""
        if isinstance(env_id, str) and f"torch/{env_id}" in _REGISTRY:
            hint = f" (did you mean 'torch/{env_id}'?)"
        raise ValueError(
            f"unknown torch-native env id {env_id!r}{hint}; accepted ids: {', '.join(TORCH_NATIVE_IDS)}"
        )
    return cls(num_envs, device=device, seed=seed, dtype=dtype, max_episode_steps=max_episode_steps)
