"""The rollout buffer every rlgeom agent shares, and GAE(λ).

All storage is torch tensors of shape [n_steps, n_envs, ...] on the agent's device.

| field            | shape                     | meaning                                               |
|------------------|---------------------------|-------------------------------------------------------|
| obs              | [T, N, *obs]              | observation the action was taken in (float or uint8)  |
| actions          | [T, N, *act]              | sampled (unclipped) actions                           |
| log_probs        | [T, N]                    | log π_old(a|s), evaluated once after the rollout      |
| values           | [T, N]                    | V_old(s), likewise (the policy is fixed meanwhile)    |
| rewards          | [T, N]                    | r_t                                                   |
| terminated       | [T, N] bool               | s' is terminal: no bootstrap                          |
| dones            | [T, N] bool               | the episode ended (terminated or truncated)           |
| episode_starts   | [T, N] bool               | s_t is the first observation of an episode            |
| next_obs         | [T, N, *obs]              | the true successor s'_t (the final obs when done)     |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch

from rlgeom.training import distributed


def available_memory(device: torch.device) -> tuple[int, str]:
    """(bytes free for new tensors, where): a GPU's free memory, or the host's MemAvailable (Linux; the
    physical memory elsewhere)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]), str(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "this machine (MemAvailable)"
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine (physical memory)"


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(λ) advantages and λ-returns over [T, N] tensors.

    next_values[t] = V(s'_t), the value of the true successor of step t (for a truncated episode,
    its final observation: a time limit is not a terminal state, see SB3 issue #633).
        δ_t = r_t + γ (1 - terminated_t) V(s'_t) - V(s_t)
        A_t = δ_t + γ λ (1 - done_t) A_{t+1}
    `terminated` kills the bootstrap; `done` (terminated or truncated) cuts the λ-trace.
    Not differentiable: pass tensors without autograd history.
    """
    if torch.is_grad_enabled() and any(x.requires_grad for x in (rewards, values, next_values)):
        raise ValueError("compute_gae is not differentiable: call it under torch.no_grad() or on detached tensors")
    not_terminal = (~terminated).to(values.dtype)
    deltas = rewards + gamma * not_terminal * next_values - values
    trace = (gamma * gae_lambda) * (~dones).to(values.dtype)  # the share of A_{t+1} that flows into A_t
    advantages = reverse_linear_scan(deltas, trace)
    return advantages, advantages + values


def reverse_linear_scan(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """y_t = x_t + c_t y_{t+1} along dim 0 (y_T = 0), by recursive doubling: log2(T) rounds of a few
    kernels over the whole [T, ...] tensor instead of T sequential steps (a 2048-step rollout: 11
    rounds, 0.2 ms on a CPU where the step-by-step loop took ~20 ms; on a GPU ~40 launches instead of ~4000).

    After the round of span s, y_t holds Σ_{k<2s} (c_t ⋯ c_{t+k-1}) x_{t+k} and c_t the product
    c_t ⋯ c_{t+2s-1} (both cut at T); each round reads the previous round's values only. The same
    sum as the sequential recursion, added in another order (float rounding differs, ~1e-7 relative).
    """
    y, span, n = x, 1, x.shape[0]
    while span < n:
        # rows t ≥ n - span already hold their whole sum (nothing lies beyond T)
        y = torch.cat([torch.addcmul(y[:-span], c[:-span], y[span:]), y[-span:]])
        if 2 * span < n:  # the last round needs no products
            c = torch.cat([c[:-span] * c[span:], c[-span:]])
        span *= 2
    return y


@dataclass
class Batch:
    """A flat (minibatch or full) view of the rollout: one row per transition."""

    obs: torch.Tensor
    actions: torch.Tensor
    old_log_probs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def __len__(self) -> int:
        return self.obs.shape[0]


class RolloutBuffer:
    """Preallocated on-policy storage for one rollout of n_steps × n_envs transitions."""

    def __init__(
        self,
        n_steps: int,
        n_envs: int,
        obs_shape: tuple[int, ...],
        obs_dtype: torch.dtype,
        action_shape: tuple[int, ...],
        action_dtype: torch.dtype,
        device: torch.device,
    ):
        self.n_steps, self.n_envs, self.device = n_steps, n_envs, device
        shape = (n_steps, n_envs)
        z = dict(device=device)
        self.obs = torch.zeros(shape + tuple(obs_shape), dtype=obs_dtype, **z)
        self.next_obs = torch.zeros_like(self.obs)
        self.actions = torch.zeros(shape + tuple(action_shape), dtype=action_dtype, **z)
        self.log_probs = torch.zeros(shape, **z)
        self.values = torch.zeros(shape, **z)
        self.rewards = torch.zeros(shape, **z)
        self.terminated = torch.zeros(shape, dtype=torch.bool, **z)
        self.dones = torch.zeros(shape, dtype=torch.bool, **z)
        self.episode_starts = torch.zeros(shape, dtype=torch.bool, **z)
        # Finished-episode statistics, read once per rollout (no per-step host sync).
        self.episode_returns = torch.zeros(shape, **z)
        self.episode_lengths = torch.zeros(shape, dtype=torch.long, **z)
        self.advantages = torch.zeros(shape, **z)
        self.returns = torch.zeros(shape, **z)
        self.pos = 0
        self._row_views, self._row_sources = {}, self._per_step_fields()  # step -> its rows, made on first use

    @property
    def full(self) -> bool:
        return self.pos == self.n_steps

    @classmethod
    def check_fits(cls, n_steps: int, n_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                   action_shape: tuple[int, ...], action_dtype: torch.dtype, device: torch.device) -> int:
        """The bytes a buffer of these sizes takes on `device` (the same constructor, on torch's meta device:
        nothing allocated); ValueError naming the sizes, the bytes and what is available if it cannot fit."""
        meta = cls(n_steps, n_envs, obs_shape, obs_dtype, action_shape, action_dtype, torch.device("meta"))
        needed = sum(t.numel() * t.element_size() for t in vars(meta).values() if isinstance(t, torch.Tensor))
        available, where = available_memory(device)
        if needed > available:
            raise ValueError(
                f"n_steps={n_steps:,} x n_envs={n_envs:,} asks for a rollout buffer of {needed:,} bytes "
                f"({needed / 2**30:,.1f} GiB) on {device}, but {where} has {available:,} bytes "
                f"({available / 2**30:,.1f} GiB) available; accepted: a smaller n_steps or n_envs")
        return needed

    def reset(self) -> None:
        self.pos = 0
        fields = self._per_step_fields()
        if any(a is not b for a, b in zip(fields, self._row_sources)):  # a field was replaced: drop its views
            self._row_views, self._row_sources = {}, fields

    def _per_step_fields(self) -> list[torch.Tensor]:
        """The tensors `add` writes one row of, in its order."""
        return [self.obs, self.actions, self.episode_starts, self.rewards, self.terminated, self.dones, self.next_obs,
                self.episode_returns, self.episode_lengths]

    def add(self, obs, actions, episode_starts, step) -> None:
        """Store one vector step; `step` is the envs.base.StepResult that followed the action. log π_old and
        V_old are filled for the whole rollout afterwards (`evaluate_policy_terms`)."""
        t = self.pos
        rows = self._row_views.get(t)
        if rows is None:  # made once per row and kept: indexing nine tensors costs more than the copy
            rows = self._row_views[t] = [x[t] for x in self._row_sources]
        sources = [obs, actions.reshape(self.actions.shape[1:]), episode_starts, step.reward, step.terminated, step.done,
                   step.final_obs, step.episode_return, step.episode_length]
        # Private torch, kept for a measured reason: one multi-tensor copy took 29-36 µs per step against 60-69 µs
        # for nine copy_ calls (CPU, one thread, a loaded 2-core machine, 2026-12-04), ~15% of a CartPole PPO
        # step. Without it (a torch release that drops it) the public loop runs; tests/test_buffer.py runs both.
        foreach_copy = getattr(torch, "_foreach_copy_", None)
        if foreach_copy is not None:
            foreach_copy(rows, sources)
        else:
            for row, source in zip(rows, sources):
                row.copy_(source)
        self.pos += 1

    def evaluate_policy_terms(self, policy_terms) -> None:
        """Fill log_probs and values of the stored transitions: `policy_terms(obs [B, *obs], actions [B, *act])`
        gives (log π(a|s) [B], V(s) [B]). Evaluated once per rollout in batches rather than at each step:
        the policy does not change during a rollout, so the numbers are the same (to float rounding) and
        the per-step path runs the actor alone."""
        if not self.full:
            raise RuntimeError(f"evaluate_policy_terms needs a full rollout; the buffer holds {self.pos} of "
                               f"{self.n_steps} steps")
        with torch.no_grad():
            log_probs, values = _in_chunks(policy_terms, self.obs.flatten(0, 1), self.actions.flatten(0, 1))
        self.log_probs.copy_(log_probs.view(self.n_steps, self.n_envs))
        self.values.copy_(values.view(self.n_steps, self.n_envs))

    def add_terms(self, log_probs: torch.Tensor, values: torch.Tensor) -> None:
        """log π_old and V_old of the step just added, where the policy gives them at each step (an SB3 policy
        class's forward, as SB3's rollout takes them); otherwise `evaluate_policy_terms` fills them afterwards."""
        self.log_probs[self.pos - 1] = log_probs
        self.values[self.pos - 1] = values

    def compute_advantages(self, value_fn, gamma: float, gae_lambda: float, logged_successors: bool = False) -> None:
        """Fill advantages and returns; `value_fn` maps observations [B, *obs] to values [B]. With
        `logged_successors`, V(s_{t+1}) within an episode is the value logged at step t+1 (SB3's GAE over the
        values its policy's forward gave), and `value_fn` (SB3's predict_values) gives only the rollout's last
        successors and a truncated episode's final observation. Otherwise `value_fn` gives every successor's
        value: the same numbers where the logged values are the critic's."""
        with torch.no_grad():
            next_values = _in_chunks(value_fn, self.next_obs.flatten(0, 1)).reshape(self.n_steps, self.n_envs)
            if logged_successors:
                next_values[:-1] = torch.where(self.dones[:-1], next_values[:-1], self.values[1:])
        self.advantages, self.returns = compute_gae(
            self.rewards, self.values, next_values, self.terminated, self.dones, gamma, gae_lambda
        )

    def finished_episodes(self) -> tuple[list[float], list[int]]:
        """Returns and lengths of the episodes that ended in this rollout (one host transfer)."""
        mask = self.dones[: self.pos]
        returns = self.episode_returns[: self.pos][mask]
        lengths = self.episode_lengths[: self.pos][mask]
        return returns.tolist(), lengths.tolist()

    def full_batch(self, normalize_advantage: bool = False) -> Batch:
        """Every transition at once (the second-order agents' view)."""
        flat = lambda x: x.flatten(0, 1)  # noqa: E731
        advantages = flat(self.advantages)
        if normalize_advantage:
            advantages = normalize(advantages)
        return Batch(
            flat(self.obs), flat(self.actions), flat(self.log_probs), flat(self.values), advantages, flat(self.returns)
        )

    def minibatches(
        self, batch_size: int, generator: torch.Generator | None = None, normalize_advantage: bool = False
    ) -> Iterator[Batch]:
        """One shuffled pass over the rollout: every transition exactly once.

        Advantages are normalised per minibatch when asked (as SB3's PPO does).
        """
        full = self.full_batch()
        n = len(full)
        order = torch.randperm(n, generator=generator, device="cpu")
        # to a GPU from pinned memory without waiting: a pageable copy would sync the host once per epoch
        order = order.pin_memory().to(self.device, non_blocking=True) if torch.device(self.device).type == "cuda" else order
        # One gather per field per pass, then contiguous slices: the same minibatches as indexing
        # each one by order[start:start + batch_size], with 6 kernels per pass instead of per minibatch.
        fields = [x.index_select(0, order) for x in (
            full.obs, full.actions, full.old_log_probs, full.old_values, full.advantages, full.returns)]
        if normalize_advantage:
            fields[4] = normalize_per_minibatch(fields[4], batch_size)
        for start in range(0, n, batch_size):
            yield Batch(*(x[start : start + batch_size] for x in fields))


def normalize_per_minibatch(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """x [n] with each run of `batch_size` consecutive entries (the last may be shorter) normalised on
    its own, every full run at once (the columns of one [batch_size, n // batch_size] view). A run of
    one entry stays as it is (SB3 normalises a minibatch only when it has more than one)."""
    full = x.shape[0] - x.shape[0] % batch_size
    parts = []
    if full:
        parts.append(x[:full] if batch_size == 1 else normalize(x[:full].view(-1, batch_size).t()).t().reshape(-1))
    if full < x.shape[0]:
        parts.append(x[full:] if x.shape[0] - full == 1 else normalize(x[full:]))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


#: rows per call of a network evaluated over a whole rollout (bounds the memory of image batches)
EVALUATION_CHUNK = 4096


def _in_chunks(fn, *rows: torch.Tensor):
    """fn over the rows in chunks of EVALUATION_CHUNK, its outputs (a tensor or a tuple of them) concatenated."""
    n = rows[0].shape[0]
    if n <= EVALUATION_CHUNK:
        return fn(*rows)
    parts = [fn(*(x[start:start + EVALUATION_CHUNK] for x in rows)) for start in range(0, n, EVALUATION_CHUNK)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts))
    return torch.cat(parts)


def normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit std (the sample std) along dim 0, each column on its own; a single sample has no
    spread, so it is only centred (to 0). Under torchrun the moments are those of every rank's rows
    together (rlgeom.training.distributed)."""
    mean, variance, count = distributed.moments(x)
    if count < 2:
        return x - mean
    return (x - mean) / ((variance * (count / (count - 1))).sqrt() + eps)
