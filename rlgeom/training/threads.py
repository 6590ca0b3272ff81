"""How many intra-op CPU threads torch uses while an agent learns.

torch's default, one intra-op thread per core, suits large matrix products. An on-policy agent with a small
MLP spends its rollout in per-step calls on a few rows, where more threads only add synchronisation, and on a
busy machine a thread waiting for a taken core makes every kernel wait for it: PPO on CartPole-v1 ran at 318
steps/s with torch's default against 3,973 with one thread on a loaded 2-core machine (issue 27). A CNN on
image batches may gain from threads. So `learn` (on the CPU) uses, in this order:

1. `threads=N` given to the agent (the CLI's --threads);
2. what the user chose: `torch.set_num_threads` called after rlgeom was imported, or OMP_NUM_THREADS /
   MKL_NUM_THREADS in the environment (a count set before importing rlgeom looks like torch's default);
3. else the faster of 1 thread and the current count for this policy, measured once per process for each
   (architecture, n_envs, batch size): the policy's rollout step on n_envs rows and a minibatch
   forward + backward, timed alternately at both counts (medians, so a co-tenant's load counts) and weighted
   by how often a rollout and an update run them. More threads must win by `MARGIN` to be chosen.

The previous count is restored when `learn` returns: the setting is process-wide, and a library call should
not leave it changed. The measurement draws no random numbers (deterministic actions, torch's generator forked) and runs the policy
in eval mode, so a batch norm's running statistics stay as they were.
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

#: the intra-op thread count when rlgeom was imported: a different count later is the user's own choice
THREADS_AT_IMPORT = torch.get_num_threads()
#: more threads must be at least this much faster than one to be chosen (the measurement's noise)
MARGIN = 1.1
#: measurement budget per choice: at least MIN_ROUNDS alternating rounds, then stop after BUDGET_S seconds
MIN_ROUNDS, MAX_ROUNDS, BUDGET_S = 3, 15, 0.5
_CHOSEN: dict[tuple, tuple[int, str]] = {}


def users_choice() -> str | None:
    """Why the current thread count is the user's (set after import, or by an environment variable), or None."""
    if torch.get_num_threads() != THREADS_AT_IMPORT:
        return "set by torch.set_num_threads"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    return None


def _timer(work: Callable[[], object]) -> Callable[[], float]:
    def timed() -> float:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start
    return timed


def measure(step: Callable[[], object], minibatch: Callable[[], object], steps_per_rollout: int,
            minibatches_per_rollout: int, candidates: tuple[int, ...]) -> dict[int, float]:
    """Estimated seconds per rollout (steps × a step + minibatches × a minibatch's forward and backward) at
    each thread count, from medians of alternating rounds."""
    before = torch.get_num_threads()
    times: dict[int, list[tuple[float, float]]] = {n: [] for n in candidates}
    timed_step, timed_minibatch = _timer(step), _timer(minibatch)
    try:
        for n in candidates:  # warm-up: a new thread pool, first-call allocations
            torch.set_num_threads(n)
            step(), minibatch()
        start = time.perf_counter()
        for round_ in range(MAX_ROUNDS):
            for n in candidates:
                torch.set_num_threads(n)
                times[n].append((min(timed_step() for _ in range(5)), timed_minibatch()))
            if round_ + 1 >= MIN_ROUNDS and time.perf_counter() - start > BUDGET_S:
                break
    finally:
        torch.set_num_threads(before)
    return {n: steps_per_rollout * statistics.median(s for s, _ in rows)
            + minibatches_per_rollout * statistics.median(m for _, m in rows) for n, rows in times.items()}


def policy_workloads(policy, n_envs: int, batch_size: int) -> tuple[Callable[[], object], Callable[[], object]]:
    """(the rollout's step on n_envs rows, a minibatch's forward and backward on batch_size rows) of `policy`,
    on an observation drawn from its space (no gradient is kept, no parameter changes)."""
    rows, _ = policy._observation_rows(policy.observation_space.sample())
    obs = torch.as_tensor(rows)
    obs = (obs.float() if obs.is_floating_point() else obs).to(policy.device)
    step_obs = obs.expand(n_envs, *obs.shape[1:]).contiguous()
    batch_obs = obs.expand(batch_size, *obs.shape[1:]).contiguous()
    params = [p for p in policy.parameters() if p.requires_grad]

    def step():
        return policy.draw(step_obs, deterministic=True)

    def minibatch():
        out = policy.outputs(batch_obs)
        loss = out.dist_params.square().mean() + out.values.square().mean()
        return torch.autograd.grad(loss, params, allow_unused=True)

    return step, minibatch


@contextmanager
def learning_threads(policy, n_envs: int, n_steps: int, batch_size: int, requested: int | None,
                     say: Callable[[str], None]) -> Iterator[int]:
    """Run the body with the thread count chosen as the module docstring says (`requested`: the agent's
    `threads`), then restore the previous count. On a GPU the count is left as it is."""
    before = torch.get_num_threads()
    if requested is not None:
        chosen, why = requested, "threads= given"
    elif policy.device.type != "cpu":
        chosen, why = before, "the policy is not on the CPU"
    elif users_choice() is not None:
        chosen, why = before, users_choice()
    elif before == 1:
        chosen, why = 1, "torch's default is 1"
    else:
        key = (repr(policy), tuple(policy.observation_space.shape or ()), n_envs, batch_size, before)
        if key not in _CHOSEN:
            step, minibatch = policy_workloads(policy, n_envs, batch_size)
            training = policy.training
            policy.train(False)  # eval mode: a batch norm's running statistics are not moved by the measurement
            try:
                with torch.random.fork_rng(devices=[]):
                    cost = measure(step, minibatch, n_steps, max(1, n_steps * n_envs // batch_size), (1, before))
            finally:
                policy.train(training)
            chosen = before if cost[before] * MARGIN < cost[1] else 1
            _CHOSEN[key] = chosen, (f"measured for this policy: {1e3 * cost[1]:.0f} ms per rollout's steps and "
                                    f"minibatches at 1 thread, {1e3 * cost[before]:.0f} ms at {before}")
            say(f"rlgeom: {chosen} CPU thread{'s' * (chosen > 1)} while learning ({_CHOSEN[key][1]}); "
                "set threads= on the agent, or torch.set_num_threads, to choose")
        chosen, why = _CHOSEN[key]
    if chosen != before:
        torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        if chosen != before:
            torch.set_num_threads(before)
